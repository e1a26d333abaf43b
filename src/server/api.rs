//! HTTP routes of `syn serve`, as listed in [`crate::protocol`].
//!
//! Every error reply, including axum's own rejections of malformed requests,
//! carries an [`ErrorBody`]. Database work runs on the blocking thread pool.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::auth::{bearer_token, generate_token, hash_token};
use super::storage::{
    AccountId, NewWrite, Principal, PushResult, Storage, StorageError, StoredDocument, VaultRecord,
};
use crate::protocol::{
    Accepted, BlobList, ChangesPage, CreateVault, DeviceEnrolled, Document, EnrollDevice,
    ErrorBody, MAX_BATCH_DOCUMENTS, MAX_BLOB_BYTES, MAX_BLOB_LIST_IDS, MAX_DOCUMENT_BYTES,
    MAX_PUSH_BODY_BYTES, MAX_WAIT_SECONDS, PushAccepted, PushBatch, PushConflict, VaultInfo,
    is_hex_id,
};

/// Body limit of routes whose bodies are small JSON objects.
const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// Body limit of `POST /v1/blobs/missing`: [`MAX_BLOB_LIST_IDS`] quoted ids
/// of 64 characters with separators, and room for whitespace.
const BLOB_LIST_BODY_LIMIT: usize = MAX_BLOB_LIST_IDS * 80;

/// Ciphertext bytes after which a page of changes stops taking more
/// batches, which bounds a reply to about this size in base64 unless its
/// first batch alone is larger.
const MAX_PAGE_DATA_BYTES: usize = 32 * 1024 * 1024;

/// Largest wrapped master key: a sealed 32-byte key with its KDF parameters
/// is far smaller.
const MAX_WRAPPED_KEY_BYTES: usize = 4096;

/// Maximum length of a device label, in bytes.
const MAX_LABEL_BYTES: usize = 128;

/// Maximum number of characters of a client-supplied value that an error
/// message repeats.
const MAX_ECHO_CHARS: usize = 80;

#[derive(Clone)]
struct AppState {
    storage: Arc<dyn Storage>,
    pushes: Arc<PushNotifier>,
    /// Becomes true when the server shuts down, so long-polls end early.
    stop: watch::Receiver<bool>,
}

/// Wakes long-polls of an account when a push to it commits.
#[derive(Default)]
struct PushNotifier {
    /// The latest generation of each account that has been polled or pushed
    /// to since the server started.
    senders: Mutex<HashMap<AccountId, watch::Sender<u64>>>,
}

impl PushNotifier {
    fn subscribe(&self, account: AccountId) -> watch::Receiver<u64> {
        let mut senders = self
            .senders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        senders
            .entry(account)
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    fn notify(&self, account: AccountId, generation: u64) {
        let mut senders = self
            .senders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        senders
            .entry(account)
            .or_insert_with(|| watch::Sender::new(0))
            .send_replace(generation);
    }
}

/// Builds the router. `stop` becomes true when the server shuts down.
pub(super) fn router(storage: Arc<dyn Storage>, stop: watch::Receiver<bool>) -> Router {
    let state = AppState {
        storage,
        pushes: Arc::default(),
        stop,
    };

    Router::new()
        .route("/v1/vault", post(create_vault).get(get_vault))
        .route("/v1/devices", post(enroll_device))
        .route("/v1/changes", get(changes))
        .route(
            "/v1/documents",
            post(push).layer(DefaultBodyLimit::max(MAX_PUSH_BODY_BYTES)),
        )
        .route(
            "/v1/blobs/missing",
            post(missing_blobs).layer(DefaultBodyLimit::max(BLOB_LIST_BODY_LIMIT)),
        )
        .route(
            "/v1/blobs/{id}",
            put(put_blob)
                .get(get_blob)
                .layer(DefaultBodyLimit::max(MAX_BLOB_BYTES)),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(SMALL_BODY_LIMIT))
        .with_state(state)
}

/// An error reply: a status and an [`ErrorBody`].
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle the request; its log has the details, and a retry \
             may succeed",
        )
    }

    /// Turns an axum extractor rejection into our JSON form. Malformed JSON
    /// of either kind (syntax or shape) becomes 400.
    fn from_rejection(status: StatusCode, text: String) -> ApiError {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(text),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::new(status, "unsupported_media_type", text)
            }
            _ => ApiError::bad_request(text),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Client errors are the client's to report; the server keeps them
        // out of its default log level.
        if self.status.is_client_error() {
            log::debug!(
                "rejected a request with {} ({}): {}",
                self.status,
                self.code,
                self.message
            );
        }
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if unauthorized {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> ApiError {
        log::error!("storage operation failed: {error}");
        ApiError::internal()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        ApiError::from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> ApiError {
        ApiError::from_rejection(rejection.status(), rejection.body_text())
    }
}

/// Quotes a client-supplied value for an error message, cut to a length
/// that keeps replies and logs small.
fn quote(value: &str) -> String {
    if value.chars().count() <= MAX_ECHO_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX_ECHO_CHARS).collect();
        format!("{head:?}...")
    }
}

/// Runs `work` on the blocking thread pool, where it may use the database.
async fn blocking<T, F>(state: &AppState, work: F) -> Result<T, ApiError>
where
    F: FnOnce(&dyn Storage) -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    let storage = Arc::clone(&state.storage);
    tokio::task::spawn_blocking(move || work(storage.as_ref()))
        .await
        .map_err(|error| {
            log::error!("a blocking storage task failed: {error}");
            ApiError::internal()
        })?
}

/// Kind of token that a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Account,
    Device,
    AccountOrDevice,
}

/// Checks the bearer token and returns the account it belongs to.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    required: TokenKind,
) -> Result<AccountId, ApiError> {
    let Some(token) = bearer_token(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or malformed token: send `Authorization: Bearer <token>` with a 64-character \
             hex token",
        ));
    };
    let token_hash = hash_token(token);
    let principal = blocking(state, move |storage| Ok(storage.principal(&token_hash)?)).await?;

    match (required, principal) {
        (_, None) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown token: check the account token, or enroll this device again",
        )),
        (TokenKind::Account, Some(Principal::Device(_))) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route requires the account token, not a device token",
        )),
        (TokenKind::Device, Some(Principal::Account(_))) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route requires a device token: enroll a device with the account token and \
             use the device token it returns",
        )),
        (_, Some(principal)) => Ok(principal.account_id()),
    }
}

async fn create_vault(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CreateVault>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let account = authenticate(&state, &headers, TokenKind::Account).await?;
    let Json(request) = body?;

    if !is_hex_id(&request.vault_id, 16) {
        return Err(ApiError::bad_request(format!(
            "invalid vault_id {}: expected 32 lowercase hex characters",
            quote(&request.vault_id)
        )));
    }
    let wrapped_key = BASE64
        .decode(&request.wrapped_key)
        .map_err(|error| ApiError::bad_request(format!("wrapped_key is not base64: {error}")))?;
    if wrapped_key.is_empty() || wrapped_key.len() > MAX_WRAPPED_KEY_BYTES {
        return Err(ApiError::bad_request(format!(
            "wrapped_key is {} bytes: expected 1 to {MAX_WRAPPED_KEY_BYTES}",
            wrapped_key.len()
        )));
    }

    let vault = VaultRecord {
        vault_id: request.vault_id,
        wrapped_key,
    };
    let created = blocking(&state, move |storage| {
        Ok(storage.create_vault(account, &vault)?)
    })
    .await?;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "vault_exists",
            "this account has a vault already: join it with the passphrase instead",
        ));
    }

    log::info!("created the vault of account {account}");
    Ok(StatusCode::CREATED)
}

async fn get_vault(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<VaultInfo>, ApiError> {
    let account = authenticate(&state, &headers, TokenKind::AccountOrDevice).await?;
    let vault = blocking(&state, move |storage| Ok(storage.vault(account)?)).await?;
    match vault {
        Some(vault) => Ok(Json(VaultInfo {
            vault_id: vault.vault_id,
            wrapped_key: BASE64.encode(vault.wrapped_key),
        })),
        None => Err(ApiError::not_found(
            "this account has no vault yet: create one first",
        )),
    }
}

async fn enroll_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<EnrollDevice>, JsonRejection>,
) -> Result<Json<DeviceEnrolled>, ApiError> {
    let account = authenticate(&state, &headers, TokenKind::Account).await?;
    let Json(request) = body?;

    let label = request.label;
    if label.is_empty() || label.len() > MAX_LABEL_BYTES || label.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "invalid device label {}: expected 1 to {MAX_LABEL_BYTES} bytes without control \
             characters",
            quote(&label)
        )));
    }

    let device_token = generate_token();
    let token_hash = hash_token(&device_token);
    blocking(&state, move |storage| {
        Ok(storage.add_device(account, &token_hash, &label)?)
    })
    .await?;

    log::info!("enrolled a device for account {account}");
    Ok(Json(DeviceEnrolled { device_token }))
}

#[derive(Debug, Deserialize)]
struct ChangesParams {
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
    #[serde(default)]
    wait: u64,
}

/// A page of changes serialised as JSON, ready to send.
struct EncodedPage {
    empty: bool,
    json: Vec<u8>,
}

fn json_reply(status: StatusCode, json: Vec<u8>) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        json,
    )
        .into_response()
}

fn encode_documents(documents: Vec<StoredDocument>) -> Vec<Document> {
    documents
        .into_iter()
        .map(|document| Document {
            id: document.id,
            generation: document.generation,
            data: BASE64.encode(document.data),
        })
        .collect()
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|error| {
        log::error!("failed to serialise a reply: {error}");
        ApiError::internal()
    })
}

async fn changes(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<ChangesParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let account = authenticate(&state, &headers, TokenKind::Device).await?;
    let Query(params) = params?;

    let limit = match params.limit {
        None => MAX_BATCH_DOCUMENTS,
        Some(0) => return Err(ApiError::bad_request("limit must be at least 1")),
        Some(limit) => limit.min(MAX_BATCH_DOCUMENTS),
    };
    let since = params.since;
    let wait = Duration::from_secs(params.wait.min(MAX_WAIT_SECONDS));
    let deadline = Instant::now() + wait;

    // Subscribing before the first query means a push that commits between
    // the query and the wait still wakes this request.
    let mut pushes = state.pushes.subscribe(account);
    let mut stop = state.stop.clone();

    loop {
        let page = blocking(&state, move |storage| {
            let page = storage.changes(account, since, limit, MAX_PAGE_DATA_BYTES)?;
            let cursor = page.documents.last().map_or(since, |last| last.generation);
            let reply = ChangesPage {
                documents: encode_documents(page.documents),
                cursor,
                more: page.more,
                latest: Some(page.latest),
            };
            Ok(EncodedPage {
                empty: reply.documents.is_empty(),
                json: to_json(&reply)?,
            })
        })
        .await?;

        if !page.empty || Instant::now() >= deadline {
            return Ok(json_reply(StatusCode::OK, page.json));
        }

        tokio::select! {
            changed = pushes.changed() => {
                if changed.is_err() {
                    return Ok(json_reply(StatusCode::OK, page.json));
                }
            }
            () = tokio::time::sleep_until(deadline) => {}
            _ = stop.wait_for(|stopping| *stopping) => {
                return Ok(json_reply(StatusCode::OK, page.json));
            }
        }
    }
}

/// Rejects a body not labelled as JSON, as axum's `Json` extractor does for
/// the other routes.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let media_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::trim);
    match media_type {
        Some(media_type) if media_type.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a body with `Content-Type: application/json`",
        )),
    }
}

/// Checks a push batch and decodes its ciphertext.
fn validate_batch(batch: PushBatch) -> Result<Vec<NewWrite>, ApiError> {
    if batch.writes.len() > MAX_BATCH_DOCUMENTS {
        return Err(ApiError::bad_request(format!(
            "the batch has {} writes but at most {MAX_BATCH_DOCUMENTS} are allowed: split it",
            batch.writes.len()
        )));
    }

    let mut doc_ids = HashSet::new();
    let mut write_ids = HashSet::new();
    let mut writes = Vec::with_capacity(batch.writes.len());
    for (index, write) in batch.writes.into_iter().enumerate() {
        if !is_hex_id(&write.id, 16) {
            return Err(ApiError::bad_request(format!(
                "writes[{index}].id {} is invalid: expected 32 lowercase hex characters",
                quote(&write.id)
            )));
        }
        if !is_hex_id(&write.write_id, 16) {
            return Err(ApiError::bad_request(format!(
                "writes[{index}].write_id {} is invalid: expected 32 lowercase hex characters",
                quote(&write.write_id)
            )));
        }
        if !doc_ids.insert(write.id.clone()) {
            return Err(ApiError::bad_request(format!(
                "document {} appears more than once in the batch: write each document once",
                write.id
            )));
        }
        if !write_ids.insert(write.write_id.clone()) {
            return Err(ApiError::bad_request(format!(
                "write id {} appears more than once in the batch: give each write its own id",
                write.write_id
            )));
        }

        // Base64 is 4 characters per 3 bytes, so a longer text cannot decode
        // within the limit; checking first avoids decoding it.
        if write.data.len() / 4 * 3 > MAX_DOCUMENT_BYTES + 3 {
            return Err(document_too_large(index));
        }
        let data = BASE64.decode(&write.data).map_err(|error| {
            ApiError::bad_request(format!("writes[{index}].data is not base64: {error}"))
        })?;
        if data.len() > MAX_DOCUMENT_BYTES {
            return Err(document_too_large(index));
        }

        writes.push(NewWrite {
            doc_id: write.id,
            base_generation: write.base_generation,
            write_id: write.write_id,
            data,
        });
    }
    Ok(writes)
}

fn document_too_large(index: usize) -> ApiError {
    ApiError::too_large(format!(
        "writes[{index}].data decodes to more than {MAX_DOCUMENT_BYTES} bytes"
    ))
}

async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let account = authenticate(&state, &headers, TokenKind::Device).await?;
    let body = body?;
    check_json_content_type(&headers)?;

    // Parsing and decoding up to MAX_PUSH_BODY_BYTES of JSON takes long
    // enough to stall other requests, so it runs on the blocking pool too.
    let (status, json, generation) = blocking(&state, move |storage| {
        let batch: PushBatch = serde_json::from_slice(&body)
            .map_err(|error| ApiError::bad_request(format!("invalid push batch JSON: {error}")))?;
        let writes = validate_batch(batch)?;

        match storage.push(account, &writes)? {
            PushResult::Accepted {
                accepted,
                generation,
            } => {
                let reply = PushAccepted {
                    accepted: accepted
                        .into_iter()
                        .map(|(id, generation)| Accepted { id, generation })
                        .collect(),
                };
                Ok((StatusCode::OK, to_json(&reply)?, generation))
            }
            PushResult::Conflict(current) => {
                let reply = PushConflict {
                    current: encode_documents(current),
                };
                Ok((StatusCode::CONFLICT, to_json(&reply)?, None))
            }
            PushResult::WriteIdReused { write_id, doc_id } => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "write_id_reused",
                format!(
                    "write id {write_id} was accepted earlier for another document than \
                     {doc_id}: use a new random write id for each write"
                ),
            )),
        }
    })
    .await?;

    if let Some(generation) = generation {
        state.pushes.notify(account, generation);
    }
    Ok(json_reply(status, json))
}

fn check_blob_id(id: &str) -> Result<(), ApiError> {
    if is_hex_id(id, 32) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid blob id {}: expected 64 lowercase hex characters",
            quote(id)
        )))
    }
}

async fn missing_blobs(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<BlobList>, JsonRejection>,
) -> Result<Json<BlobList>, ApiError> {
    let account = authenticate(&state, &headers, TokenKind::Device).await?;
    let Json(request) = body?;

    if request.ids.len() > MAX_BLOB_LIST_IDS {
        return Err(ApiError::bad_request(format!(
            "the request lists {} blob ids but at most {MAX_BLOB_LIST_IDS} are allowed: split it",
            request.ids.len()
        )));
    }
    for id in &request.ids {
        check_blob_id(id)?;
    }

    let ids = request.ids;
    let missing = blocking(&state, move |storage| {
        Ok(storage.missing_blobs(account, &ids)?)
    })
    .await?;
    Ok(Json(BlobList { ids: missing }))
}

async fn put_blob(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let account = authenticate(&state, &headers, TokenKind::Device).await?;
    let Path(id) = id?;
    check_blob_id(&id)?;
    let data = body?;

    blocking(&state, move |storage| {
        Ok(storage.put_blob(account, &id, &data)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_blob(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let account = authenticate(&state, &headers, TokenKind::Device).await?;
    let Path(id) = id?;
    check_blob_id(&id)?;

    let lookup_id = id.clone();
    let data = blocking(
        &state,
        move |storage| Ok(storage.blob(account, &lookup_id)?),
    )
    .await?;
    match data {
        Some(data) => Ok((
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            data,
        )
            .into_response()),
        None => Err(ApiError::not_found(format!("no blob {id} on the server"))),
    }
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!(
            "no route for {method} {}: check the server URL and that client and server versions match",
            quote(uri.path())
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", quote(uri.path())),
    )
}
