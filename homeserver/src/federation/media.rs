//! Media of other servers (`GET /_matrix/federation/v1/media/download/{mediaId}` and
//! `/thumbnail/{mediaId}` at their server): fetched for our users' downloads (the media
//! repository keeps what was fetched), answered in memory up to the transport's size cap. A
//! redirect to another location is not followed (it would be a request to an address the
//! other server picks).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use ruma::{
    ServerName, UInt,
    api::federation::authenticated_media::{
        Content, FileOrLocation, get_content, get_content_thumbnail,
    },
    http_headers::{ContentDisposition, ContentDispositionType},
    media::Method as SpecMethod,
};

use super::{client::FederationClient, transport::MAX_MEDIA_BYTES};
use crate::{
    error::{Error, Result},
    media::{Download, RemoteMedia, thumbnail::Method},
};

pub struct MediaFetcher {
    client: Arc<FederationClient>,
    /// Federation switched off: other servers' media is not fetched.
    enabled: bool,
}

impl MediaFetcher {
    pub fn new(client: Arc<FederationClient>, enabled: bool) -> Self {
        Self { client, enabled }
    }

    fn check_enabled(&self) -> Result<()> {
        if self.enabled {
            Ok(())
        } else {
            Err(Error::forbidden("federation is disabled on this server"))
        }
    }
}

#[async_trait::async_trait]
impl RemoteMedia for MediaFetcher {
    async fn download(&self, server: &ServerName, id: &str, timeout: Duration) -> Result<Download> {
        self.check_enabled()?;
        let mut request = get_content::v1::Request::new(id.to_owned());
        request.timeout_ms = timeout;
        let answer = self
            .client
            .request_at_most(server, request, MAX_MEDIA_BYTES)
            .await?;
        downloaded(server, answer.content)
    }

    async fn thumbnail(
        &self,
        server: &ServerName,
        id: &str,
        (width, height): (u32, u32),
        method: Method,
        timeout: Duration,
    ) -> Result<Download> {
        self.check_enabled()?;
        let mut request = get_content_thumbnail::v1::Request::new(
            id.to_owned(),
            UInt::from(width),
            UInt::from(height),
        );
        request.method = Some(match method {
            Method::Crop => SpecMethod::Crop,
            Method::Scale => SpecMethod::Scale,
        });
        request.timeout_ms = timeout;
        let answer = self
            .client
            .request_at_most(server, request, MAX_MEDIA_BYTES)
            .await?;
        downloaded(server, answer.content)
    }
}

fn downloaded(server: &ServerName, content: FileOrLocation) -> Result<Download> {
    match content {
        FileOrLocation::File(file) => {
            let len = file.file.len() as u64;
            let bytes = Bytes::from(file.file);
            Ok(Download {
                body: Box::pin(futures::stream::once(async move { Ok(bytes) })),
                len,
                content_type: file
                    .content_type
                    .unwrap_or_else(|| "application/octet-stream".into()),
                filename: file.content_disposition.and_then(|d| d.filename),
            })
        }
        FileOrLocation::Location(_) => Err(Error::Remote(format!(
            "{server} answered with a redirect, which is not followed"
        ))),
        _ => Err(Error::Remote(format!(
            "{server} sent media in an unknown form"
        ))),
    }
}

/// Our media as another server receives it: the whole file in one multipart answer.
pub async fn answer(download: Download) -> Result<FileOrLocation> {
    use futures::TryStreamExt;
    let file: Vec<u8> = download
        .body
        .try_fold(
            Vec::with_capacity(download.len as usize),
            |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            },
        )
        .await
        .map_err(Error::internal)?;
    let disposition = ContentDisposition::new(ContentDispositionType::Attachment)
        .with_filename(download.filename);
    Ok(FileOrLocation::File(Content::new(
        file,
        download.content_type,
        disposition,
    )))
}
