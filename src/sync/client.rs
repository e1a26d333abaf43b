//! HTTP client of the sync protocol in [`crate::protocol`].
//!
//! Every method sends one request (except [`Client::missing_blobs`], which
//! splits long lists) and maps failures to [`ClientError`], whose
//! [`ClientError::is_retryable`] tells the sync engine whether to try again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::protocol::{
    BlobList, ChangesPage, CreateVault, DeviceEnrolled, EnrollDevice, ErrorBody, MAX_BLOB_BYTES,
    MAX_BLOB_LIST_IDS, MAX_PUSH_BODY_BYTES, MAX_WAIT_SECONDS, PushAccepted, PushBatch,
    PushConflict, VaultInfo,
};

/// Time allowed for one request, on top of any long-poll wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed to open a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest JSON reply the client reads. A page of changes contains whole push
/// batches, and one batch in a reply is smaller than the push body that
/// carried it, so twice the push limit leaves room.
const MAX_JSON_REPLY_BYTES: usize = 2 * MAX_PUSH_BODY_BYTES;

/// Largest error body the client reads. Longer ones are cut.
const MAX_ERROR_REPLY_BYTES: usize = 64 * 1024;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("invalid token: {0}")]
    InvalidToken(String),

    #[error(
        "could not reach the server at {url}: {source}; check the URL and that `syn serve` runs \
         there"
    )]
    Unreachable { url: String, source: reqwest::Error },

    #[error("the connection to {url} failed during the request: {source}")]
    Transport { url: String, source: reqwest::Error },

    #[error("the request to {url} timed out: the server sent no complete reply within {seconds} s")]
    TimedOut { url: String, seconds: u64 },

    #[error(
        "the server rejected this device's token ({message}); enroll the device again with \
         the account token"
    )]
    Unauthorized { message: String },

    #[error("the server could not find {what}")]
    NotFound { what: String },

    #[error("the account has a vault already; join it instead of creating one")]
    VaultExists,

    #[error("the server returned {status} ({code}): {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },

    #[error("the server sent an unexpected reply: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Returns true for failures that a later retry may not hit: network
    /// errors, timeouts, 5xx replies, 408 and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Transport { .. }
            | ClientError::TimedOut { .. } => true,
            ClientError::Server { status, .. } => {
                *status >= 500
                    || *status == StatusCode::REQUEST_TIMEOUT.as_u16()
                    || *status == StatusCode::TOO_MANY_REQUESTS.as_u16()
            }
            ClientError::InvalidUrl { .. }
            | ClientError::InvalidToken(_)
            | ClientError::Unauthorized { .. }
            | ClientError::NotFound { .. }
            | ClientError::VaultExists
            | ClientError::Protocol(_) => false,
        }
    }
}

/// Reply of [`Client::push`].
#[derive(Debug, Clone)]
pub enum PushOutcome {
    Accepted(PushAccepted),
    Conflict(PushConflict),
}

/// A connection to one server with one token (account or device).
///
/// Cloning the inner `reqwest::Client` is cheap, but a `Client` keeps its
/// byte counters, so share it behind an `Arc` instead of cloning it.
pub struct Client {
    http: reqwest::Client,
    /// Server URL whose path ends in `/`, so that joining `v1/...` appends.
    base: Url,
    authorization: HeaderValue,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    blobs_uploaded: AtomicU64,
}

impl std::fmt::Debug for Client {
    // Leaves out the token, which must not reach logs.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Client")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// A response body read in full, with its status.
struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl Client {
    /// Creates a client for the server at `base_url` (http or https).
    pub fn new(base_url: &str, token: &str) -> Result<Client, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let mut base = Url::parse(base_url).map_err(|error| invalid(&error.to_string()))?;
        if base.scheme() != "http" && base.scheme() != "https" {
            return Err(invalid("the scheme must be http or https"));
        }
        if base.host().is_none() || base.cannot_be_a_base() {
            return Err(invalid("the URL has no host"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("the URL must not have a query or fragment"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }

        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                ClientError::InvalidToken("the token contains invalid characters".into())
            })?;
        authorization.set_sensitive(true);

        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // The server never redirects, and following one could send the
            // token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| invalid(&format!("failed to build the HTTP client: {error}")))?;

        Ok(Client {
            http,
            base,
            authorization,
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            blobs_uploaded: AtomicU64::new(0),
        })
    }

    /// Request body bytes sent since the client was created.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// Blobs uploaded since the client was created.
    pub fn blobs_uploaded(&self) -> u64 {
        self.blobs_uploaded.load(Ordering::Relaxed)
    }

    /// Response body bytes received since the client was created.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    /// Uploads the vault parameters, which requires the account token.
    pub async fn create_vault(&self, vault: &CreateVault) -> Result<(), ClientError> {
        let reply = self
            .send_json(Method::POST, "v1/vault", vault, REQUEST_TIMEOUT)
            .await?;
        match reply.status {
            status if status.is_success() => Ok(()),
            StatusCode::CONFLICT => Err(ClientError::VaultExists),
            _ => Err(error_from_reply(&reply, "the vault")),
        }
    }

    /// Fetches the vault parameters. Fails with `NotFound` before the
    /// account has a vault.
    pub async fn get_vault(&self) -> Result<VaultInfo, ClientError> {
        let reply = self
            .send(
                Method::GET,
                "v1/vault",
                None,
                REQUEST_TIMEOUT,
                MAX_ERROR_REPLY_BYTES,
            )
            .await?;
        expect_json(&reply, "the vault")
    }

    /// Creates a device token, which requires the account token.
    pub async fn enroll_device(&self, label: &str) -> Result<String, ClientError> {
        let request = EnrollDevice {
            label: label.to_string(),
        };
        let reply = self
            .send_json(Method::POST, "v1/devices", &request, REQUEST_TIMEOUT)
            .await?;
        let enrolled: DeviceEnrolled = expect_json(&reply, "the device route")?;
        Ok(enrolled.device_token)
    }

    /// Fetches documents changed after generation `since`, waiting up to
    /// `wait_secs` seconds (at most [`MAX_WAIT_SECONDS`]) for one to appear.
    pub async fn changes(
        &self,
        since: u64,
        limit: usize,
        wait_secs: u64,
    ) -> Result<ChangesPage, ClientError> {
        let wait_secs = wait_secs.min(MAX_WAIT_SECONDS);
        let path = format!("v1/changes?since={since}&limit={limit}&wait={wait_secs}");
        let timeout = REQUEST_TIMEOUT + Duration::from_secs(wait_secs);
        let reply = self
            .send(Method::GET, &path, None, timeout, MAX_JSON_REPLY_BYTES)
            .await?;
        expect_json(&reply, "the changes route")
    }

    /// Pushes a batch. A 409 reply is a normal outcome, not an error.
    pub async fn push(&self, batch: &PushBatch) -> Result<PushOutcome, ClientError> {
        let reply = self
            .send_json(Method::POST, "v1/documents", batch, REQUEST_TIMEOUT)
            .await?;
        if reply.status == StatusCode::CONFLICT {
            if let Ok(conflict) = serde_json::from_slice::<PushConflict>(&reply.body) {
                return Ok(PushOutcome::Conflict(conflict));
            }
        }
        expect_json(&reply, "the documents route").map(PushOutcome::Accepted)
    }

    /// Returns the ids in `ids` that the server has no blob for, asking in
    /// chunks of [`MAX_BLOB_LIST_IDS`].
    pub async fn missing_blobs(&self, ids: &[String]) -> Result<Vec<String>, ClientError> {
        let mut missing = Vec::new();
        for chunk in ids.chunks(MAX_BLOB_LIST_IDS) {
            let request = BlobList {
                ids: chunk.to_vec(),
            };
            let reply = self
                .send_json(Method::POST, "v1/blobs/missing", &request, REQUEST_TIMEOUT)
                .await?;
            let list: BlobList = expect_json(&reply, "the blob route")?;
            missing.extend(list.ids);
        }
        Ok(missing)
    }

    /// Uploads a blob. Uploading one that the server has already succeeds.
    pub async fn put_blob(&self, id: &str, data: Vec<u8>) -> Result<(), ClientError> {
        if data.len() > MAX_BLOB_BYTES {
            return Err(ClientError::Server {
                status: StatusCode::PAYLOAD_TOO_LARGE.as_u16(),
                code: "payload_too_large".to_string(),
                message: format!(
                    "blob {id} is {} bytes, more than the {MAX_BLOB_BYTES} the server accepts",
                    data.len()
                ),
            });
        }
        let path = format!("v1/blobs/{id}");
        let reply = self
            .send(
                Method::PUT,
                &path,
                Some(Body::Raw(data)),
                REQUEST_TIMEOUT,
                MAX_ERROR_REPLY_BYTES,
            )
            .await?;
        if reply.status.is_success() {
            self.blobs_uploaded.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            Err(error_from_reply(&reply, &format!("blob {id}")))
        }
    }

    /// Downloads a blob. Fails with `NotFound` when the server lacks it.
    pub async fn get_blob(&self, id: &str) -> Result<Vec<u8>, ClientError> {
        let path = format!("v1/blobs/{id}");
        let reply = self
            .send(Method::GET, &path, None, REQUEST_TIMEOUT, MAX_BLOB_BYTES)
            .await?;
        if reply.status.is_success() {
            Ok(reply.body)
        } else {
            Err(error_from_reply(&reply, &format!("blob {id}")))
        }
    }

    async fn send_json<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let json = serde_json::to_vec(body).map_err(|error| {
            ClientError::Protocol(format!("failed to encode the request: {error}"))
        })?;
        self.send(
            method,
            path,
            Some(Body::Json(json)),
            timeout,
            MAX_JSON_REPLY_BYTES,
        )
        .await
    }

    /// Sends one request and reads at most `max_reply_bytes` of its reply
    /// (error replies are cut to [`MAX_ERROR_REPLY_BYTES`] instead). Maps 401
    /// and 403 to `Unauthorized`; other statuses are for the caller.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
        timeout: Duration,
        max_reply_bytes: usize,
    ) -> Result<Reply, ClientError> {
        let url = self.base.join(path).map_err(|error| {
            ClientError::Protocol(format!("invalid request path {path:?}: {error}"))
        })?;
        let shown_url = url.to_string();
        let transport_error = |source: reqwest::Error| {
            // reqwest's message for a timeout does not say that it timed out.
            if source.is_timeout() && !source.is_connect() {
                ClientError::TimedOut {
                    url: shown_url.clone(),
                    seconds: timeout.as_secs(),
                }
            } else if source.is_connect() || source.is_timeout() {
                ClientError::Unreachable {
                    url: shown_url.clone(),
                    source,
                }
            } else {
                ClientError::Transport {
                    url: shown_url.clone(),
                    source,
                }
            }
        };

        let mut request = self
            .http
            .request(method, url)
            .timeout(timeout)
            .header(AUTHORIZATION, self.authorization.clone());
        let mut sent = 0;
        match body {
            Some(Body::Json(json)) => {
                sent = json.len();
                request = request
                    .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                    .body(json);
            }
            Some(Body::Raw(data)) => {
                sent = data.len();
                request = request
                    .header(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    )
                    .body(data);
            }
            None => {}
        }

        let mut response = request.send().await.map_err(transport_error)?;
        self.bytes_sent.fetch_add(sent as u64, Ordering::Relaxed);

        let status = response.status();
        let limit = if status.is_success() {
            max_reply_bytes
        } else {
            MAX_ERROR_REPLY_BYTES
        };
        if let Some(length) = response.content_length() {
            if status.is_success() && length > limit as u64 {
                return Err(ClientError::Protocol(format!(
                    "the reply to {shown_url} is {length} bytes, more than the {limit} allowed"
                )));
            }
        }

        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            self.bytes_received
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if body.len() + chunk.len() > limit {
                if !status.is_success() {
                    // Keep enough of an error body to show and drop the rest.
                    let room = limit - body.len();
                    body.extend_from_slice(&chunk[..room]);
                    break;
                }
                return Err(ClientError::Protocol(format!(
                    "the reply to {shown_url} is more than the {limit} bytes allowed"
                )));
            }
            body.extend_from_slice(&chunk);
        }

        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let message = parse_error_body(&body)
                .map(|error| error.message)
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(ClientError::Unauthorized { message });
        }
        Ok(Reply { status, body })
    }
}

enum Body {
    Json(Vec<u8>),
    Raw(Vec<u8>),
}

fn parse_error_body(body: &[u8]) -> Option<ErrorBody> {
    serde_json::from_slice(body).ok()
}

/// Decodes a successful JSON reply, or turns any other reply into an error.
fn expect_json<T: DeserializeOwned>(reply: &Reply, what: &str) -> Result<T, ClientError> {
    if !reply.status.is_success() {
        return Err(error_from_reply(reply, what));
    }
    serde_json::from_slice(&reply.body)
        .map_err(|error| ClientError::Protocol(format!("invalid JSON from {what}: {error}")))
}

/// Builds the error for an unsuccessful reply. `what` names the resource for
/// `NotFound`.
fn error_from_reply(reply: &Reply, what: &str) -> ClientError {
    let parsed = parse_error_body(&reply.body);
    if reply.status == StatusCode::NOT_FOUND {
        // A 404 with another code (such as `no_route`) means the URL is
        // wrong, not that the resource is missing.
        if parsed
            .as_ref()
            .is_some_and(|error| error.code == "not_found")
        {
            return ClientError::NotFound {
                what: what.to_string(),
            };
        }
    }
    match parsed {
        Some(error) => ClientError::Server {
            status: reply.status.as_u16(),
            code: error.code,
            message: error.message,
        },
        None => ClientError::Server {
            status: reply.status.as_u16(),
            code: "unknown".to_string(),
            message: String::from_utf8_lossy(&reply.body)
                .trim()
                .chars()
                .take(200)
                .collect(),
        },
    }
}
