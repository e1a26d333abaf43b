//! One round of sync: push the pending local changes, then pull the remote
//! ones. Store calls run on tokio's blocking pool, never on the runtime's
//! worker threads, and no store lock is held across an await.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::client::{Client, ClientError, PushOutcome};
use crate::crypto::{BlockId, NodeId};
use crate::fs::{SharedStore, lock_store};
use crate::protocol::{self, Document, DocumentWrite, PushBatch};
use crate::store::{AppliedChange, PendingDocument, RemoteDocument, Store, StoreError};

/// Documents per push batch.
const PUSH_BATCH_DOCUMENTS: usize = 200;

/// Ciphertext bytes per push batch, well inside the server's body limit
/// once base64 and JSON are added.
const PUSH_BATCH_BYTES: usize = protocol::MAX_PUSH_BODY_BYTES / 3;

/// Documents per page of changes.
const PULL_PAGE_DOCUMENTS: usize = 500;

/// Conflicting pushes resolved in one round before giving up until the next.
const MAX_CONFLICT_ROUNDS: usize = 20;

/// Blobs fetched or uploaded at the same time.
const PARALLEL_BLOBS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Client(#[from] ClientError),

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("the server sent a malformed reply: {0}")]
    Protocol(String),

    #[error("pushes kept conflicting with changes from other devices; the next round retries")]
    TooManyConflicts,

    #[error(
        "the server has changes only up to generation {server}, but this device has seen up \
         to {local}: its data is older than before, as when server.db is restored from an \
         older copy. Sync is stopped so that this device does not take the old state for the \
         current one; restore the server's latest data, then run `syn sync`"
    )]
    ServerBehind { server: u64, local: u64 },

    #[error(
        "block {id} from the server failed authentication: the server's copy was altered or \
         damaged. The documents that need it cannot be applied; restore the server's data"
    )]
    DamagedBlock { id: String },

    #[error("a sync task failed unexpectedly: {0}")]
    Task(String),
}

impl SyncError {
    /// True when retrying later may succeed without the user's help.
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Client(error) => error.is_retryable(),
            SyncError::Store(StoreError::DiskFull) => true,
            SyncError::Store(_)
            | SyncError::Protocol(_)
            | SyncError::Task(_)
            | SyncError::ServerBehind { .. }
            | SyncError::DamagedBlock { .. } => false,
            SyncError::TooManyConflicts => true,
        }
    }
}

/// Documents pushed and pulled in one round.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundReport {
    pub pushed: usize,
    pub pulled: usize,
    /// Documents left pending because they exceed the server's size limit;
    /// `None` for a long-poll, which pushes nothing.
    pub too_large: Option<usize>,
}

/// Called with the nodes that remote changes touched, after they are
/// committed and with no lock held, to invalidate the kernel's caches.
pub type Invalidate = Arc<dyn Fn(&[AppliedChange]) + Send + Sync>;

/// The sync engine of one store.
pub struct Engine {
    store: SharedStore,
    client: Arc<Client>,
    invalidate: Option<Invalidate>,
}

async fn with_store<T, F>(store: &SharedStore, work: F) -> Result<T, SyncError>
where
    T: Send + 'static,
    F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || work(&mut lock_store(&store)))
        .await
        .map_err(|error| SyncError::Task(error.to_string()))?
        .map_err(SyncError::from)
}

fn write_id(document: &PendingDocument) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&document.id.0);
    hasher.update(&document.generation.to_le_bytes());
    hasher.update(&document.sealed);
    let hash = hasher.finalize();
    hash.as_bytes()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Fails when the server's current generation is below the cursor this
/// device already reached: the server lost changes it had acknowledged.
///
/// NOTE: a restored server that takes as many new generations as it lost,
/// before this device requests changes, reuses the generation numbers and
/// is not detected. This device then misses the changes at those numbers.
/// A fingerprint of the write at the cursor, checked with the server, would
/// catch that too.
fn check_server_not_behind(page: &protocol::ChangesPage, cursor: u64) -> Result<(), SyncError> {
    match page.latest {
        Some(latest) if latest < cursor => Err(SyncError::ServerBehind {
            server: latest,
            local: cursor,
        }),
        _ => Ok(()),
    }
}

fn parse_document(document: &Document) -> Result<Option<RemoteDocument>, SyncError> {
    let id = NodeId::from_hex(&document.id)
        .ok_or_else(|| SyncError::Protocol(format!("invalid document id {:?}", document.id)))?;
    if document.data.is_empty() {
        return Ok(None);
    }
    let sealed = BASE64.decode(&document.data).map_err(|_| {
        SyncError::Protocol(format!("document {} is not valid base64", document.id))
    })?;
    Ok(Some(RemoteDocument {
        id,
        generation: document.generation,
        sealed,
    }))
}

impl Engine {
    pub fn new(store: SharedStore, client: Client, invalidate: Option<Invalidate>) -> Self {
        Engine {
            store,
            client: Arc::new(client),
            invalidate,
        }
    }

    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Pushes everything pending, then pulls until the server has no more.
    pub async fn round(&self) -> Result<RoundReport, SyncError> {
        let mut report = RoundReport::default();
        let mut too_large = HashSet::new();
        // Applying remote changes can log local ones (a merge, a kept
        // directory, a renamed collision); those go out in the same round.
        for _ in 0..MAX_CONFLICT_ROUNDS {
            report.pushed += self.push_all(&mut too_large).await?;
            report.pulled += self.pull_all().await?;
            let pending = with_store(&self.store, |store| store.pending_count()).await?;
            if pending <= too_large.len() as u64 {
                break;
            }
        }
        report.too_large = Some(too_large.len());
        with_store(&self.store, |store| store.record_sync_success()).await?;
        Ok(report)
    }

    async fn pull_all(&self) -> Result<usize, SyncError> {
        let mut pulled = 0;
        loop {
            let cursor = with_store(&self.store, |store| store.cursor()).await?;
            let page = self.client.changes(cursor, PULL_PAGE_DOCUMENTS, 0).await?;
            check_server_not_behind(&page, cursor)?;
            pulled += self.apply_page(page.documents, page.cursor).await?;
            if !page.more {
                return Ok(pulled);
            }
        }
    }

    /// Waits up to `wait_seconds` for remote changes and applies one page.
    pub async fn long_poll(&self, wait_seconds: u64) -> Result<usize, SyncError> {
        let cursor = with_store(&self.store, |store| store.cursor()).await?;
        let page = self
            .client
            .changes(cursor, PULL_PAGE_DOCUMENTS, wait_seconds)
            .await?;
        check_server_not_behind(&page, cursor)?;
        self.apply_page(page.documents, page.cursor).await
    }

    pub async fn record_error(&self, message: String) -> Result<(), SyncError> {
        with_store(&self.store, move |store| store.record_sync_error(&message)).await
    }

    /// Pushes the pending documents, except those larger than the server
    /// accepts: they go into `too_large` and stay pending, so that one huge
    /// file does not hold back every other change.
    async fn push_all(&self, too_large: &mut HashSet<NodeId>) -> Result<usize, SyncError> {
        let mut pushed = 0;
        let mut conflict_rounds = 0;
        loop {
            let skip = too_large.clone();
            let mut pending = with_store(&self.store, move |store| {
                store.pending_documents(PUSH_BATCH_DOCUMENTS, &skip)
            })
            .await?;
            let fetched = pending.len();
            pending.retain(|document| {
                let fits = document.sealed.len() <= protocol::MAX_DOCUMENT_BYTES;
                if !fits && too_large.insert(document.id) {
                    log::debug!(
                        "a document of {} bytes exceeds the server's limit and stays pending",
                        document.sealed.len()
                    );
                }
                fits
            });
            if pending.is_empty() {
                if fetched == 0 {
                    return Ok(pushed);
                }
                // Every document fetched was too large; look past them.
                continue;
            }
            let batch = Self::cut_batch(pending);
            self.upload_blocks(&batch).await?;
            let attempts = batch.clone();
            with_store(&self.store, move |store| store.record_attempts(&attempts)).await?;

            let writes = batch
                .iter()
                .map(|document| DocumentWrite {
                    id: document.id.to_hex(),
                    base_generation: document.generation,
                    write_id: write_id(document),
                    data: BASE64.encode(&document.sealed),
                })
                .collect();
            match self.client.push(&PushBatch { writes }).await? {
                PushOutcome::Accepted(accepted) => {
                    pushed += self.record_accepted(batch, accepted.accepted).await?;
                }
                PushOutcome::Conflict(conflict) => {
                    conflict_rounds += 1;
                    if conflict_rounds > MAX_CONFLICT_ROUNDS {
                        return Err(SyncError::TooManyConflicts);
                    }
                    self.absorb_conflict(conflict.current).await?;
                }
            }
        }
    }

    /// Keeps the first documents of `pending` that fit in one request.
    fn cut_batch(pending: Vec<PendingDocument>) -> Vec<PendingDocument> {
        let mut bytes = 0;
        let mut batch = Vec::new();
        for document in pending {
            bytes += document.sealed.len();
            if !batch.is_empty() && bytes > PUSH_BATCH_BYTES {
                break;
            }
            batch.push(document);
        }
        batch
    }

    async fn record_accepted(
        &self,
        batch: Vec<PendingDocument>,
        accepted: Vec<protocol::Accepted>,
    ) -> Result<usize, SyncError> {
        if accepted.len() != batch.len() {
            return Err(SyncError::Protocol(format!(
                "the server accepted {} of {} writes in an all-or-nothing batch",
                accepted.len(),
                batch.len()
            )));
        }
        let count = batch.len();
        with_store(&self.store, move |store| {
            let pairs: Vec<(&PendingDocument, u64)> = batch
                .iter()
                .zip(&accepted)
                .map(|(document, accepted)| (document, accepted.generation))
                .collect();
            store.mark_pushed(&pairs)
        })
        .await?;
        Ok(count)
    }

    /// Merges the server's current versions into the local ones, so the next
    /// push is based on them.
    async fn absorb_conflict(&self, current: Vec<Document>) -> Result<(), SyncError> {
        // Pull first: the conflicting documents may have changed together
        // with others (a swap of two names), and applying them alone would
        // make their names collide with the others' old places. What the
        // pull already applied is skipped below as not newer.
        self.pull_all().await?;

        let mut documents = Vec::new();
        for document in &current {
            match parse_document(document)? {
                Some(remote) => documents.push(remote),
                None => {
                    let Some(id) = NodeId::from_hex(&document.id) else {
                        continue;
                    };
                    with_store(&self.store, move |store| store.forget_generation(&id)).await?;
                }
            }
        }
        self.fetch_blocks(&documents).await?;
        let applied = with_store(&self.store, move |store| {
            let cursor = store.cursor()?;
            store.apply_remote(&documents, cursor)
        })
        .await?;
        self.notify_kernel(&applied);
        Ok(())
    }

    async fn upload_blocks(&self, batch: &[PendingDocument]) -> Result<(), SyncError> {
        let mut seen = HashSet::new();
        let ids: Vec<BlockId> = batch
            .iter()
            .flat_map(|document| document.blocks.iter().copied())
            .filter(|id| seen.insert(*id))
            .collect();
        let not_uploaded =
            with_store(&self.store, move |store| store.blocks_not_uploaded(&ids)).await?;
        if not_uploaded.is_empty() {
            return Ok(());
        }

        let hex: Vec<String> = not_uploaded.iter().map(BlockId::to_hex).collect();
        let missing = self.client.missing_blobs(&hex).await?;
        for chunk in missing.chunks(PARALLEL_BLOBS) {
            let mut uploads = tokio::task::JoinSet::new();
            for hex_id in chunk {
                let id = BlockId::from_hex(hex_id)
                    .ok_or_else(|| SyncError::Protocol(format!("invalid blob id {hex_id:?}")))?;
                let sealed = with_store(&self.store, move |store| store.sealed_block(&id)).await?;
                let Some(sealed) = sealed else {
                    return Err(SyncError::Store(StoreError::Corrupt {
                        path: lock_store(&self.store).dir().to_path_buf(),
                        reason: format!("block {hex_id} is missing"),
                    }));
                };
                let client = self.client.clone();
                let hex_id = hex_id.clone();
                uploads.spawn(async move { client.put_blob(&hex_id, sealed).await });
            }
            while let Some(result) = uploads.join_next().await {
                result.map_err(|error| SyncError::Task(error.to_string()))??;
            }
        }
        with_store(&self.store, move |store| store.mark_uploaded(&not_uploaded)).await?;
        Ok(())
    }

    async fn fetch_blocks(&self, documents: &[RemoteDocument]) -> Result<(), SyncError> {
        let documents = documents.to_vec();
        let missing =
            with_store(&self.store, move |store| store.missing_blocks(&documents)).await?;
        for chunk in missing.chunks(PARALLEL_BLOBS) {
            let mut downloads = tokio::task::JoinSet::new();
            for id in chunk {
                let client = self.client.clone();
                let id = *id;
                downloads.spawn(async move {
                    client
                        .get_blob(&id.to_hex())
                        .await
                        .map(|sealed| (id, sealed))
                });
            }
            while let Some(result) = downloads.join_next().await {
                let (id, sealed) = result.map_err(|error| SyncError::Task(error.to_string()))??;
                // Opening the block checks it against its id before it is kept.
                with_store(&self.store, move |store| {
                    store.insert_fetched_block(&id, &sealed)
                })
                .await
                .map_err(|error| match error {
                    SyncError::Store(StoreError::Crypto(_)) => {
                        SyncError::DamagedBlock { id: id.to_hex() }
                    }
                    other => other,
                })?;
            }
        }
        Ok(())
    }

    async fn apply_page(&self, documents: Vec<Document>, cursor: u64) -> Result<usize, SyncError> {
        let mut remote = Vec::with_capacity(documents.len());
        for document in &documents {
            remote.extend(parse_document(document)?);
        }
        self.fetch_blocks(&remote).await?;
        let applied = with_store(&self.store, move |store| {
            store.apply_remote(&remote, cursor)
        })
        .await?;
        self.notify_kernel(&applied);
        // Our own pushes coming back are skipped, so only real changes count.
        Ok(applied.len())
    }

    fn notify_kernel(&self, applied: &[AppliedChange]) {
        if applied.is_empty() {
            return;
        }
        if let Some(invalidate) = &self.invalidate {
            invalidate(applied);
        }
    }
}
