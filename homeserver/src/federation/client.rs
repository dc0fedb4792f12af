//! Outgoing federation requests: Ruma's request types, signed with `X-Matrix` (origin,
//! destination, key, signature), sent through the injected transport, refused for servers the
//! federation scope does not allow.

use std::sync::Arc;

use bytes::Bytes;
use ruma::{
    OwnedServerName, ServerName,
    api::{
        IncomingResponse, OutgoingRequest, OutgoingRequestExt,
        auth_scheme::NoAuthentication,
        federation::authentication::{ServerSignatures, XMatrixSigningInput},
        path_builder::SinglePath,
    },
    signatures::Ed25519KeyPair,
};

use super::transport::{MAX_RESPONSE_BYTES, Transport, TransportError};
use crate::{
    error::Error,
    policy::federation::{FederationScope, may_federate_with},
};

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("federation with {0} is not allowed")]
    NotAllowed(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{server} answered {status}: {errcode}: {message}")]
    Remote {
        server: String,
        status: u16,
        errcode: String,
        message: String,
    },
    #[error("{server} sent an unreadable answer: {reason}")]
    BadResponse { server: String, reason: String },
    #[error("the request could not be built: {0}")]
    Request(String),
}

impl From<FederationError> for Error {
    fn from(e: FederationError) -> Self {
        match e {
            FederationError::NotAllowed(_) => Error::forbidden(e.to_string()),
            FederationError::Remote {
                status: 404,
                message,
                ..
            } => Error::not_found(message),
            FederationError::Remote {
                status: 403,
                message,
                ..
            } => Error::forbidden(message),
            FederationError::Request(reason) => Error::internal(reason),
            other => Error::Remote(other.to_string()),
        }
    }
}

pub struct FederationClient {
    origin: OwnedServerName,
    key: Arc<Ed25519KeyPair>,
    transport: Arc<dyn Transport>,
    scope: FederationScope,
}

impl FederationClient {
    pub fn new(
        origin: OwnedServerName,
        key: Arc<Ed25519KeyPair>,
        transport: Arc<dyn Transport>,
        scope: FederationScope,
    ) -> Self {
        Self {
            origin,
            key,
            transport,
            scope,
        }
    }

    pub fn origin(&self) -> &ServerName {
        &self.origin
    }

    /// Sends a signed request to `destination`.
    pub async fn request<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        self.request_at_most(destination, request, MAX_RESPONSE_BYTES)
            .await
    }

    /// The same, the answer at most `max_bytes` long.
    pub async fn request_at_most<R>(
        &self,
        destination: &ServerName,
        request: R,
        max_bytes: usize,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        self.allowed(destination)?;
        let http = request
            .try_into_http_request::<Vec<u8>>(
                &format!("https://{destination}"),
                XMatrixSigningInput::new(self.origin.clone(), destination.to_owned(), &self.key),
                (),
            )
            .map_err(|e| FederationError::Request(e.to_string()))?;
        let response = self.transport.send(destination, http, max_bytes).await?;
        answer::<R::IncomingResponse>(destination, response)
    }

    /// Sends a request that carries no signature (the server key look-up).
    pub async fn request_unsigned<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = NoAuthentication, PathBuilder = SinglePath>,
    {
        self.allowed(destination)?;
        let http = request
            .try_into_http_request::<Vec<u8>>(&format!("https://{destination}"), (), ())
            .map_err(|e| FederationError::Request(e.to_string()))?;
        let response = self
            .transport
            .send(destination, http, MAX_RESPONSE_BYTES)
            .await?;
        answer::<R::IncomingResponse>(destination, response)
    }

    fn allowed(&self, destination: &ServerName) -> Result<(), FederationError> {
        if *destination == self.origin || !may_federate_with(&self.scope, destination) {
            return Err(FederationError::NotAllowed(destination.to_string()));
        }
        Ok(())
    }
}

/// The typed answer, or the Matrix error the server sent.
fn answer<T: IncomingResponse>(
    server: &ServerName,
    response: http::Response<Bytes>,
) -> Result<T, FederationError> {
    let status = response.status().as_u16();
    if status >= 400 {
        #[derive(serde::Deserialize, Default)]
        struct MatrixError {
            #[serde(default)]
            errcode: String,
            #[serde(default)]
            error: String,
        }
        let body: MatrixError = serde_json::from_slice(response.body()).unwrap_or_default();
        return Err(FederationError::Remote {
            server: server.to_string(),
            status,
            errcode: body.errcode,
            message: body.error,
        });
    }
    let (parts, body) = response.into_parts();
    T::try_from_http_response_inner(http::Response::from_parts(parts, body.as_ref())).map_err(|e| {
        FederationError::BadResponse {
            server: server.to_string(),
            reason: e.to_string(),
        }
    })
}
