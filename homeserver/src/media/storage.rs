//! Where media bytes live. `FsStorage` keeps one file per media id under the tenant's media
//! folder (sharded by the id's first characters) and its thumbnails in a folder beside it;
//! the trait lets an object store take its place.

use std::{
    io,
    path::{Path, PathBuf},
    pin::Pin,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("more bytes than allowed")]
    TooLarge,
    /// The body stream failed (client went away, sent less than announced).
    #[error("body: {0}")]
    Body(io::Error),
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

/// Keys are `{media id}` for the file and `{media id}/{name}` for its thumbnails; media ids are
/// checked to be `[A-Za-z0-9_-]` before they get here.
#[async_trait]
pub trait MediaStorage: Send + Sync {
    /// Streams `body` into `key`, durable when this returns; its size. Beyond `limit` bytes it
    /// stops with `TooLarge` (the rest of `body` unread), and a failed put leaves nothing behind.
    async fn put(&self, key: &str, body: &mut ByteStream, limit: u64) -> Result<u64, PutError>;
    /// The bytes under `key` as a stream, and their length.
    async fn get(&self, key: &str) -> io::Result<Option<(ByteStream, u64)>>;
    /// All bytes under `key`, when there are at most `max`.
    async fn read_all(&self, key: &str, max: u64) -> io::Result<Option<Vec<u8>>>;
    /// Removes the media's file and all its thumbnails.
    async fn delete(&self, media_id: &str) -> io::Result<()>;
}

pub struct FsStorage {
    root: PathBuf,
}

impl FsStorage {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn media_dir(&self, id: &str) -> PathBuf {
        let shard = |r: std::ops::Range<usize>| id.get(r).unwrap_or("_").to_owned();
        self.root.join(shard(0..2)).join(shard(2..4))
    }

    fn path(&self, key: &str) -> PathBuf {
        match key.split_once('/') {
            None => self.media_dir(key).join(key),
            Some((id, thumb)) => self.media_dir(id).join(format!("{id}.thumbs")).join(thumb),
        }
    }
}

/// A partial upload, removed unless it was moved into place (also when the request is dropped
/// mid-way).
struct TempFile(PathBuf, bool);

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

#[async_trait]
impl MediaStorage for FsStorage {
    async fn put(&self, key: &str, body: &mut ByteStream, limit: u64) -> Result<u64, PutError> {
        let tmp_dir = self.root.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir).await?;
        let mut tmp = TempFile(
            tmp_dir.join(format!("{}.part", crate::accounts::random_string(16))),
            false,
        );
        let result: Result<u64, PutError> = async {
            let mut file = tokio::fs::File::create(&tmp.0).await?;
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(PutError::Body)?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(PutError::TooLarge);
                }
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            // On disk before the upload is acknowledged.
            file.sync_all().await?;
            Ok(size)
        }
        .await;
        let size = result?;
        let dest = self.path(key);
        let dir = dest.parent().expect("media paths have a parent");
        tokio::fs::create_dir_all(dir).await?;
        tokio::fs::rename(&tmp.0, &dest).await?;
        tmp.1 = true;
        sync_dir(dir).await?;
        Ok(size)
    }

    async fn get(&self, key: &str) -> io::Result<Option<(ByteStream, u64)>> {
        let file = match tokio::fs::File::open(self.path(key)).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata().await?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
        Ok(Some((Box::pin(stream), len)))
    }

    async fn read_all(&self, key: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(key);
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.len() > max => Ok(None),
            Ok(_) => Ok(Some(tokio::fs::read(&path).await?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, media_id: &str) -> io::Result<()> {
        let file = self.path(media_id);
        match tokio::fs::remove_file(&file).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let thumbs = self.media_dir(media_id).join(format!("{media_id}.thumbs"));
        match tokio::fs::remove_dir_all(&thumbs).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(parts: Vec<&'static [u8]>) -> ByteStream {
        Box::pin(futures::stream::iter(
            parts.into_iter().map(|p| Ok(Bytes::from_static(p))),
        ))
    }

    #[tokio::test]
    async fn put_get_delete_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::new(dir.path().to_owned());
        assert_eq!(
            s.put("abcdef", &mut stream(vec![b"hel", b"lo"]), 5)
                .await
                .unwrap(),
            5
        );
        let (body, len) = s.get("abcdef").await.unwrap().unwrap();
        assert_eq!(len, 5);
        let bytes: Vec<Bytes> = body.map(|b| b.unwrap()).collect().await;
        assert_eq!(bytes.concat(), b"hello");
        s.put("abcdef/32x32-crop", &mut stream(vec![b"t"]), 10)
            .await
            .unwrap();
        assert!(matches!(
            s.put("other", &mut stream(vec![b"123456"]), 5).await,
            Err(PutError::TooLarge)
        ));
        assert!(s.get("other").await.unwrap().is_none());
        s.delete("abcdef").await.unwrap();
        assert!(s.get("abcdef").await.unwrap().is_none());
        assert!(s.get("abcdef/32x32-crop").await.unwrap().is_none());
        // Nothing is left in the temp folder.
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
