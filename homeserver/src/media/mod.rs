//! The media repository of one tenant: uploads streamed into storage (never held whole in
//! memory), reserved uploads (`/create` then `PUT`), downloads, cached thumbnails, deletion,
//! and other servers' media, fetched once and kept in the same storage.

pub mod storage;
pub mod thumbnail;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{OwnedMxcUri, ServerName, UserId};
use tokio::sync::Notify;

use self::{
    storage::{ByteStream, MediaStorage, PutError},
    thumbnail::Method,
};
use crate::{
    config::MediaConfig,
    ephemeral::now_ms,
    error::{Error, Result},
    store::{MediaRow, MediaStore, RemoteMediaRow, ThumbnailRow},
};

const MAX_FILENAME_BYTES: usize = 255;
const MAX_CONTENT_TYPE_BYTES: usize = 255;
/// Longest a download waits for a reserved upload to arrive.
const MAX_WAIT: Duration = Duration::from_secs(120);

/// What a client said about an upload.
pub struct UploadMeta {
    pub content_type: Option<String>,
    pub filename: Option<String>,
    /// `Content-Length`, when given.
    pub declared_len: Option<u64>,
}

/// Bytes to send back, with what is known about them.
pub struct Download {
    pub body: ByteStream,
    pub len: u64,
    pub content_type: String,
    pub filename: Option<String>,
}

/// Media of other servers, fetched through federation.
#[async_trait::async_trait]
pub trait RemoteMedia: Send + Sync {
    async fn download(&self, server: &ServerName, id: &str, timeout: Duration) -> Result<Download>;
    async fn thumbnail(
        &self,
        server: &ServerName,
        id: &str,
        (width, height): (u32, u32),
        method: Method,
        timeout: Duration,
    ) -> Result<Download>;
}

pub struct Media {
    server_name: ruma::OwnedServerName,
    remote: Arc<dyn RemoteMedia>,
    config: MediaConfig,
    store: Arc<dyn MediaStore>,
    storage: Arc<dyn MediaStorage>,
    /// Reserved ids whose upload is being received, so a second upload is refused at once.
    receiving: Mutex<HashSet<String>>,
    /// Wakes downloads waiting for a reserved upload.
    uploaded: Notify,
    /// Thumbnails rendered at the same time (decoding holds the image in memory): one per core.
    rendering: tokio::sync::Semaphore,
    /// Other servers' media being fetched, by cache id: one fetch each, however many wait.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A fetch of another server's media that requests share; its entry leaves the map with the
/// last of them, however they end.
struct Fetching<'a> {
    map: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Fetching<'a> {
    fn join(map: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>, key: &str) -> Self {
        let lock = map
            .lock()
            .expect("media lock")
            .entry(key.to_owned())
            .or_default()
            .clone();
        Self {
            map,
            key: key.to_owned(),
            lock,
        }
    }
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().expect("media lock");
        // The map's reference and ours: nobody else is waiting.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

/// Which form of another server's media.
#[derive(Clone, Copy)]
enum Variant {
    File,
    Thumbnail(u32, u32, Method),
}

impl Variant {
    fn name(self) -> String {
        match self {
            Variant::File => String::new(),
            Variant::Thumbnail(w, h, method) => format!("{w}x{h}-{}", method.as_str()),
        }
    }
}

/// Where another server's media is kept in our storage: a hash of server, id and variant (64
/// hex digits, so never a local media id, which has 24 characters, nor a path).
fn remote_cache_id(server: &ServerName, id: &str, variant: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(server.as_str())
        .chain_update([0])
        .chain_update(id)
        .chain_update([0])
        .chain_update(variant)
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reserved id being received; released however the upload ends (also when the client goes
/// away and the request is dropped mid-way).
struct Receiving<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl<'a> Receiving<'a> {
    fn start(set: &'a Mutex<HashSet<String>>, id: &str) -> Option<Self> {
        set.lock()
            .expect("media lock")
            .insert(id.to_owned())
            .then(|| Self {
                set,
                id: id.to_owned(),
            })
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("media lock").remove(&self.id);
    }
}

/// Media ids we hand out and accept: letters, digits, `_` and `-` — nothing a path can abuse.
pub fn valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Media {
    pub fn new(
        server_name: ruma::OwnedServerName,
        config: MediaConfig,
        store: Arc<dyn MediaStore>,
        storage: Arc<dyn MediaStorage>,
        remote: Arc<dyn RemoteMedia>,
    ) -> Self {
        Self {
            server_name,
            remote,
            config,
            store,
            storage,
            receiving: Mutex::default(),
            uploaded: Notify::new(),
            rendering: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            fetching: Mutex::default(),
        }
    }

    /// Another server's media from our storage, fetched there first if it is not yet: one
    /// fetch per item at a time, the others waiting for it.
    async fn remote(
        &self,
        server: &ServerName,
        id: &str,
        variant: Variant,
        timeout: Duration,
    ) -> Result<Download> {
        if !valid_media_id(id) {
            return Err(Error::not_found("media not found"));
        }
        let cache_id = remote_cache_id(server, id, &variant.name());
        if let Some(kept) = self.kept(&cache_id).await? {
            return Ok(kept);
        }
        let slot = Fetching::join(&self.fetching, &cache_id);
        // Waiting for another request's fetch is bounded like the fetch itself.
        let _one = tokio::time::timeout(timeout.min(MAX_WAIT), slot.lock.lock())
            .await
            .map_err(|_| Error::Remote(format!("{server} is slow to send that media")))?;
        match self.kept(&cache_id).await? {
            Some(kept) => Ok(kept),
            None => self.fetch(server, id, variant, timeout, &cache_id).await,
        }
    }

    /// Media of another server kept under `cache_id`, if it is.
    async fn kept(&self, cache_id: &str) -> Result<Option<Download>> {
        let Some(row) = self.store.remote_media(cache_id).await? else {
            return Ok(None);
        };
        let Some((body, len)) = self.storage.get(cache_id).await.map_err(Error::internal)? else {
            return Ok(None);
        };
        Ok(Some(Download {
            body,
            len,
            content_type: row.content_type,
            filename: row.filename,
        }))
    }

    async fn fetch(
        &self,
        server: &ServerName,
        id: &str,
        variant: Variant,
        timeout: Duration,
        cache_id: &str,
    ) -> Result<Download> {
        let mut fetched = match variant {
            Variant::File => self.remote.download(server, id, timeout).await?,
            Variant::Thumbnail(w, h, method) => {
                self.remote
                    .thumbnail(server, id, (w, h), method, timeout)
                    .await?
            }
        };
        let size = self
            .storage
            .put(cache_id, &mut fetched.body, u64::MAX)
            .await
            .map_err(Error::internal)?;
        self.store
            .add_remote_media(&RemoteMediaRow {
                cache_id: cache_id.to_owned(),
                server_name: server.to_string(),
                media_id: id.to_owned(),
                variant: variant.name(),
                content_type: fetched.content_type,
                filename: fetched.filename,
                size: size as i64,
                fetched_ts: now_ms(),
            })
            .await?;
        self.kept(cache_id)
            .await?
            .ok_or_else(|| Error::internal("fetched media is not in the storage"))
    }

    pub fn max_upload_bytes(&self) -> u64 {
        self.config.max_upload_bytes
    }

    pub fn legacy_unauthenticated(&self) -> bool {
        self.config.legacy_unauthenticated_media
    }

    fn mxc(&self, id: &str) -> OwnedMxcUri {
        OwnedMxcUri::from(format!("mxc://{}/{id}", self.server_name))
    }

    fn check_meta(&self, meta: &UploadMeta) -> Result<()> {
        if meta
            .declared_len
            .is_some_and(|l| l > self.config.max_upload_bytes)
        {
            return Err(Error::TooLarge);
        }
        if let Some(name) = &meta.filename
            && (name.len() > MAX_FILENAME_BYTES || name.chars().any(char::is_control))
        {
            return Err(Error::invalid_param(
                "filename: at most 255 bytes, no control characters",
            ));
        }
        if let Some(ct) = &meta.content_type
            && (ct.len() > MAX_CONTENT_TYPE_BYTES
                || !ct.contains('/')
                || ct.chars().any(|c| c.is_control() || !c.is_ascii()))
        {
            return Err(Error::invalid_param("invalid content type"));
        }
        Ok(())
    }

    async fn receive(&self, id: &str, meta: &UploadMeta, body: &mut ByteStream) -> Result<i64> {
        let size = self
            .storage
            .put(id, body, self.config.max_upload_bytes)
            .await
            .map_err(|e| match e {
                PutError::TooLarge => Error::TooLarge,
                // The client went away or sent less than it announced: nothing is kept.
                PutError::Body(e) => Error::invalid_param(format!("upload incomplete: {e}")),
                PutError::Io(e) => Error::internal(format!("media storage: {e}")),
            })?;
        if meta.declared_len.is_some_and(|l| l != size) {
            let _ = self.storage.delete(id).await;
            return Err(Error::invalid_param(
                "the body length does not match Content-Length",
            ));
        }
        Ok(size as i64)
    }

    /// `POST /upload`: stores the bytes and returns their `mxc://` URI.
    pub async fn upload(
        &self,
        uploader: &UserId,
        meta: UploadMeta,
        body: &mut ByteStream,
    ) -> Result<OwnedMxcUri> {
        self.check_meta(&meta)?;
        let id = crate::accounts::random_string(24);
        let size = self.receive(&id, &meta, body).await?;
        let now = now_ms();
        let row = MediaRow {
            media_id: id.clone(),
            uploader: uploader.to_string(),
            content_type: meta.content_type,
            filename: meta.filename,
            size: Some(size),
            created_ts: now,
            uploaded_ts: Some(now),
        };
        if let Err(e) = self.store.insert_media(&row).await {
            let _ = self.storage.delete(&id).await;
            return Err(e.into());
        }
        Ok(self.mxc(&id))
    }

    /// `POST /create`: reserves a media id for a later upload.
    pub async fn create(&self, uploader: &UserId) -> Result<(OwnedMxcUri, i64)> {
        let now = now_ms();
        let window = (self.config.pending_upload_secs * 1000) as i64;
        let pending = self
            .store
            .count_pending_media(uploader.as_str(), now - window)
            .await?;
        if pending >= self.config.max_pending_uploads as i64 {
            return Err(Error::LimitExceeded {
                retry_after_ms: 60_000,
            });
        }
        let id = crate::accounts::random_string(24);
        self.store
            .insert_media(&MediaRow {
                media_id: id.clone(),
                uploader: uploader.to_string(),
                content_type: None,
                filename: None,
                size: None,
                created_ts: now,
                uploaded_ts: None,
            })
            .await?;
        Ok((self.mxc(&id), now + window))
    }

    /// `PUT /upload/{serverName}/{mediaId}`: the upload of a reserved id, by its reserver.
    pub async fn upload_reserved(
        &self,
        uploader: &UserId,
        server_name: &ServerName,
        id: &str,
        meta: UploadMeta,
        body: &mut ByteStream,
    ) -> Result<()> {
        self.check_meta(&meta)?;
        let row = self.local_row(server_name, id).await?;
        if row.uploader != uploader.as_str() {
            return Err(Error::forbidden(
                "this media id was reserved by someone else",
            ));
        }
        if row.uploaded_ts.is_some() {
            return Err(Error::CannotOverwriteMedia);
        }
        if now_ms() - row.created_ts > (self.config.pending_upload_secs * 1000) as i64 {
            return Err(Error::not_found("the reservation of this media id expired"));
        }
        let Some(_receiving) = Receiving::start(&self.receiving, id) else {
            return Err(Error::CannotOverwriteMedia);
        };
        let size = self.receive(id, &meta, body).await?;
        if !self
            .store
            .complete_media(
                id,
                meta.content_type.as_deref(),
                meta.filename.as_deref(),
                size,
                now_ms(),
            )
            .await?
        {
            return Err(Error::CannotOverwriteMedia);
        }
        self.uploaded.notify_waiters();
        Ok(())
    }

    async fn local_row(&self, server_name: &ServerName, id: &str) -> Result<MediaRow> {
        if server_name != self.server_name {
            // Only our own media has rows here (other servers' is fetched on each request).
            return Err(Error::not_found("media not found"));
        }
        if !valid_media_id(id) {
            return Err(Error::not_found("media not found"));
        }
        self.store
            .get_media(id)
            .await?
            .ok_or_else(|| Error::not_found("media not found"))
    }

    /// The media's row once uploaded, waiting up to `timeout` for a reserved upload.
    async fn uploaded_row(
        &self,
        server_name: &ServerName,
        id: &str,
        timeout: Duration,
    ) -> Result<MediaRow> {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        loop {
            let notified = self.uploaded.notified();
            let row = self.local_row(server_name, id).await?;
            if row.uploaded_ts.is_some() {
                return Ok(row);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::NotYetUploaded);
            }
        }
    }

    pub async fn download(
        &self,
        server_name: &ServerName,
        id: &str,
        timeout: Duration,
    ) -> Result<Download> {
        if server_name != self.server_name {
            return self.remote(server_name, id, Variant::File, timeout).await;
        }
        let row = self.uploaded_row(server_name, id, timeout).await?;
        let (body, len) = self
            .storage
            .get(id)
            .await
            .map_err(Error::internal)?
            .ok_or_else(|| Error::not_found("media not found"))?;
        Ok(Download {
            body,
            len,
            content_type: row
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
            filename: row.filename,
        })
    }

    /// A thumbnail of an image, made on first request and kept.
    pub async fn thumbnail(
        &self,
        server_name: &ServerName,
        id: &str,
        width: u32,
        height: u32,
        method: Method,
        timeout: Duration,
    ) -> Result<Download> {
        if width == 0 || height == 0 {
            return Err(Error::invalid_param("width and height must be positive"));
        }
        if server_name != self.server_name {
            // Asked for in one of our standard sizes, so that one kept copy serves many.
            let (w, h, method) = thumbnail::pick(width, height, method);
            let variant = Variant::Thumbnail(w, h, method);
            return self.remote(server_name, id, variant, timeout).await;
        }
        let row = self.uploaded_row(server_name, id, timeout).await?;
        let content_type = row.content_type.clone().unwrap_or_default();
        if !thumbnail::supported(&content_type) {
            return Err(Error::Unknown(
                "cannot generate a thumbnail for this content type".into(),
            ));
        }
        let (w, h, method) = thumbnail::pick(width, height, method);
        let name = format!("{w}x{h}-{}", method.as_str());
        let key = format!("{id}/{name}");
        let cached = self.store.thumbnails(id).await?.into_iter().find(|t| {
            (t.width, t.height, t.method.as_str()) == (w as i64, h as i64, method.as_str())
        });
        if let Some(t) = cached
            && let Some((body, len)) = self.storage.get(&key).await.map_err(Error::internal)?
        {
            return Ok(Download {
                body,
                len,
                content_type: t.content_type,
                filename: None,
            });
        }
        let _permit = self.rendering.acquire().await.map_err(Error::internal)?;
        let source = self
            .storage
            .read_all(id, self.config.max_thumbnail_source_bytes)
            .await
            .map_err(Error::internal)?
            .ok_or_else(|| Error::Unknown("the image is too large to thumbnail".into()))?;
        let (bytes, thumb_type) = tokio::task::spawn_blocking(move || {
            thumbnail::render(&source, &content_type, w, h, method)
        })
        .await
        .map_err(Error::internal)?
        .map_err(|e| Error::Unknown(format!("cannot thumbnail this image: {e}")))?;
        let len = bytes.len() as u64;
        let bytes = bytes::Bytes::from(bytes);
        let mut stream: ByteStream = Box::pin(futures::stream::once({
            let b = bytes.clone();
            async move { Ok(b) }
        }));
        self.storage
            .put(&key, &mut stream, u64::MAX)
            .await
            .map_err(Error::internal)?;
        self.store
            .add_thumbnail(
                id,
                &ThumbnailRow {
                    width: w as i64,
                    height: h as i64,
                    method: method.as_str().to_owned(),
                    content_type: thumb_type.to_owned(),
                    size: len as i64,
                },
            )
            .await?;
        Ok(Download {
            body: Box::pin(futures::stream::once(async move { Ok(bytes) })),
            len,
            content_type: thumb_type.to_owned(),
            filename: None,
        })
    }

    /// Deletes the media with its file and thumbnails (admin, retention). False if unknown.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        if !valid_media_id(id) {
            return Ok(false);
        }
        let existed = self.store.delete_media(id).await?;
        self.storage.delete(id).await.map_err(Error::internal)?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_servers_media_is_kept_under_a_hash_of_server_id_and_variant() {
        let server = ruma::server_name!("praxis.example");
        let file = remote_cache_id(server, "abc", "");
        assert_eq!(file.len(), 64);
        assert!(valid_media_id(&file));
        assert_ne!(file, remote_cache_id(server, "abc", "96x96-crop"));
        assert_ne!(
            file,
            remote_cache_id(ruma::server_name!("klinik.example"), "abc", "")
        );
        // Parts cannot run into each other.
        assert_ne!(
            remote_cache_id(server, "ab", "c"),
            remote_cache_id(server, "a", "bc")
        );
    }

    #[test]
    fn media_ids_cannot_walk_paths() {
        assert!(valid_media_id("AbC_12-x"));
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "a\\b",
            "a.b",
            "%2e%2e",
            &"x".repeat(65),
        ] {
            assert!(!valid_media_id(bad), "{bad}");
        }
    }
}
