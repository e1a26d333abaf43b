//! Wire types of the sync protocol, shared by `syn serve` and the client.
//!
//! Every route lives under `/v1/`. Control messages are JSON; blobs travel as
//! raw bytes. Binary fields inside JSON (document ciphertext, the wrapped
//! master key) are standard base64. The server sees only ids, generations
//! and ciphertext.
//!
//! | method | path | token | body | reply |
//! |---|---|---|---|---|
//! | POST | /v1/vault | account | [`CreateVault`] | 201, or 409 if the account has a vault |
//! | GET | /v1/vault | account or device | - | [`VaultInfo`] |
//! | POST | /v1/devices | account | [`EnrollDevice`] | [`DeviceEnrolled`] |
//! | GET | /v1/changes?since=G&limit=N&wait=S | device | - | [`ChangesPage`] |
//! | POST | /v1/documents | device | [`PushBatch`] | [`PushAccepted`], or 409 [`PushConflict`] |
//! | POST | /v1/blobs/missing | device | [`BlobList`] | [`BlobList`] of ids the server lacks |
//! | PUT | /v1/blobs/{id} | device | raw ciphertext | 204 |
//! | GET | /v1/blobs/{id} | device | - | raw ciphertext, or 404 |
//!
//! Errors are a 4xx or 5xx status with an [`ErrorBody`].

use serde::{Deserialize, Serialize};

/// Largest blob the server accepts: a 64 KiB block padded and sealed fits
/// well inside, and so does the largest block size a vault may choose (1 MiB).
pub const MAX_BLOB_BYTES: usize = 2 * 1024 * 1024;

/// Largest document ciphertext the server accepts.
///
/// NOTE: a file's manifest lives inside its document, about 35 bytes per
/// stored block, and documents are padded to a power of two. So this caps a
/// file's stored data at about 7 GiB with 64 KiB blocks (an estimate). A
/// larger file stays pending, and `syn status` reports it, while other
/// changes sync. A manifest split into a tree of blocks would lift the limit.
pub const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;

/// Largest number of documents in one push batch or one page of changes.
pub const MAX_BATCH_DOCUMENTS: usize = 1000;

/// Longest long-poll wait the server honours, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;

/// Largest body of `POST /v1/documents`, in bytes of JSON. It fits one
/// document of [`MAX_DOCUMENT_BYTES`] in base64 several times over, and a
/// client splits larger pushes into several batches.
pub const MAX_PUSH_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Largest number of ids in one `POST /v1/blobs/missing` request.
pub const MAX_BLOB_LIST_IDS: usize = 10_000;

/// Body of `POST /v1/vault`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateVault {
    /// 16-byte vault id, lowercase hex.
    pub vault_id: String,
    /// The master key wrapped under the passphrase, base64.
    pub wrapped_key: String,
}

/// Reply of `GET /v1/vault`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaultInfo {
    pub vault_id: String,
    pub wrapped_key: String,
}

/// Body of `POST /v1/devices`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollDevice {
    /// A label for the device, chosen by the client. The client sends an
    /// opaque random label, never the host name, so the server learns nothing.
    pub label: String,
}

/// Reply of `POST /v1/devices`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceEnrolled {
    /// Bearer token of the new device; the server keeps only its hash.
    pub device_token: String,
}

/// One document as the server stores it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Document {
    /// 16-byte document id, lowercase hex.
    pub id: String,
    /// Generation the server assigned to this version.
    pub generation: u64,
    /// Sealed document, base64.
    pub data: String,
}

/// Reply of `GET /v1/changes`: documents in generation order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesPage {
    pub documents: Vec<Document>,
    /// Generation to ask from next time (the last one in this page, or the
    /// `since` of the request when the page is empty).
    pub cursor: u64,
    /// True when more changes follow this page.
    pub more: bool,
    /// The vault's current generation. A client whose cursor is above it
    /// talks to a server that lost changes, such as one restored from an
    /// older copy. Absent from servers that predate the field.
    #[serde(default)]
    pub latest: Option<u64>,
}

/// One write in a push batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentWrite {
    pub id: String,
    /// Generation this write is based on; 0 for a document the client
    /// believes the server has never seen.
    pub base_generation: u64,
    /// Random id of this write, so a retried batch is recognised: 16 bytes,
    /// lowercase hex.
    pub write_id: String,
    /// Sealed document, base64.
    pub data: String,
}

/// Body of `POST /v1/documents`: writes that the server accepts or rejects
/// whole, with consecutive generations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushBatch {
    pub writes: Vec<DocumentWrite>,
}

/// One accepted write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    pub generation: u64,
}

/// Reply of an accepted push.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushAccepted {
    pub accepted: Vec<Accepted>,
}

/// Reply (status 409) of a push whose base generations are stale: the
/// current version of every document in the batch whose base did not match.
/// A document the server does not have is listed with generation 0 and empty
/// data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushConflict {
    pub current: Vec<Document>,
}

/// A list of blob ids (64 lowercase hex characters each).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobList {
    pub ids: Vec<String>,
}

/// Body of every error reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, such as `unauthorized` or `bad_request`.
    pub code: String,
    /// A sentence for a person.
    pub message: String,
}

/// Returns true when `id` is `bytes` bytes of lowercase hex.
pub fn is_hex_id(id: &str, bytes: usize) -> bool {
    id.len() == bytes * 2
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
