//! Persistent state of `syn serve`: accounts, device tokens, documents, push
//! records and blobs.
//!
//! [`Storage`] is synchronous so that a blocking database driver fits behind
//! it; the HTTP handlers call it from `tokio::task::spawn_blocking`.
//! [`SqliteStorage`] is the only implementation so far.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::ServerError;

/// Schema version stored in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

/// File name of the SQLite database inside the data directory.
pub const DATABASE_FILE: &str = "server.db";

/// How long a connection waits for another process (such as one adding an
/// account next to a running server) to release the database lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash BLOB NOT NULL UNIQUE,
    vault_id TEXT,
    wrapped_key BLOB,
    generation INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
);
CREATE TABLE devices (
    token_hash BLOB PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    label TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE documents (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    batch_end INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE UNIQUE INDEX documents_by_generation ON documents(account_id, generation);
-- NOTE: rows here are never deleted, so the table grows by about 100 bytes
-- per accepted write; pruning old rows would bound it at the cost of
-- recognising only recent retries.
CREATE TABLE writes (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    write_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (account_id, write_id)
) WITHOUT ROWID;
CREATE TABLE blobs (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    id TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (account_id, id)
);
";

/// Row id of an account.
pub type AccountId = i64;

/// BLAKE3 hash of a bearer token, the only form in which tokens are stored.
pub type TokenHash = [u8; 32];

/// Whom a bearer token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// The account token printed by `add_account`.
    Account(AccountId),
    /// A device token issued by `POST /v1/devices`.
    Device(AccountId),
}

impl Principal {
    pub fn account_id(self) -> AccountId {
        match self {
            Principal::Account(id) | Principal::Device(id) => id,
        }
    }
}

/// Vault parameters that the account's first device uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultRecord {
    pub vault_id: String,
    pub wrapped_key: Vec<u8>,
}

/// One validated write of a push batch, with the ciphertext decoded.
#[derive(Debug, Clone)]
pub struct NewWrite {
    pub doc_id: String,
    pub base_generation: u64,
    pub write_id: String,
    pub data: Vec<u8>,
}

/// A document version with its ciphertext decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDocument {
    pub id: String,
    pub generation: u64,
    pub data: Vec<u8>,
}

/// Result of [`Storage::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// Every write is stored. `accepted` pairs each document id with its
    /// generation, in request order. `generation` is the account's new
    /// generation, or `None` when every write had been accepted before.
    Accepted {
        accepted: Vec<(String, u64)>,
        generation: Option<u64>,
    },
    /// Nothing was stored: these are the current versions of the documents
    /// whose base generation did not match. A document the server does not
    /// have appears with generation 0 and empty data.
    Conflict(Vec<StoredDocument>),
    /// The write id was accepted before for another document, which only a
    /// client bug can cause. Nothing was stored.
    WriteIdReused { write_id: String, doc_id: String },
}

/// One page of the changes feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesPage {
    pub documents: Vec<StoredDocument>,
    pub more: bool,
    /// The account's current generation.
    pub latest: u64,
}

/// A failure inside the database.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("an account named {0:?} already exists")]
    AccountExists(String),
    #[error("the database contains an invalid value: {0}")]
    Corrupt(String),
    #[error("the database lock is poisoned because an earlier query panicked")]
    Poisoned,
}

/// Server state behind the HTTP API.
///
/// Every method is blocking. Methods that change several rows do so in one
/// transaction.
pub trait Storage: Send + Sync + 'static {
    /// Creates an account whose token hashes to `token_hash`.
    fn create_account(&self, name: &str, token_hash: &TokenHash)
    -> Result<AccountId, StorageError>;

    /// Looks up the owner of a token, checking accounts and devices.
    fn principal(&self, token_hash: &TokenHash) -> Result<Option<Principal>, StorageError>;

    /// Stores the vault of an account. Returns false, changing nothing, when
    /// the account has one already.
    fn create_vault(&self, account: AccountId, vault: &VaultRecord) -> Result<bool, StorageError>;

    fn vault(&self, account: AccountId) -> Result<Option<VaultRecord>, StorageError>;

    fn add_device(
        &self,
        account: AccountId,
        token_hash: &TokenHash,
        label: &str,
    ) -> Result<(), StorageError>;

    /// Applies a push batch all-or-nothing with compare-and-swap on each
    /// document's generation; see [`PushResult`]. Writes whose write id was
    /// accepted before count as done and keep their recorded generation.
    /// The caller has checked that ids and write ids are distinct.
    fn push(&self, account: AccountId, writes: &[NewWrite]) -> Result<PushResult, StorageError>;

    /// Returns documents with a generation above `since`, in generation
    /// order, without splitting the documents of one push batch across
    /// pages. A page contains at most `max_documents` documents and
    /// `max_bytes` of ciphertext, except that its first batch is always
    /// whole so that a reader always makes progress.
    fn changes(
        &self,
        account: AccountId,
        since: u64,
        max_documents: usize,
        max_bytes: usize,
    ) -> Result<ChangesPage, StorageError>;

    /// Returns the ids in `ids` that the account has no blob for, in the
    /// order given.
    fn missing_blobs(
        &self,
        account: AccountId,
        ids: &[String],
    ) -> Result<Vec<String>, StorageError>;

    /// Stores a blob. Storing an id that exists already changes nothing.
    fn put_blob(&self, account: AccountId, id: &str, data: &[u8]) -> Result<(), StorageError>;

    fn blob(&self, account: AccountId, id: &str) -> Result<Option<Vec<u8>>, StorageError>;
}

/// [`Storage`] in one SQLite file in WAL mode, behind one connection.
///
/// NOTE: one connection serialises every request. That suits a server for a
/// handful of devices; a read pool would be the next step under more load.
pub struct SqliteStorage {
    connection: Mutex<Connection>,
}

impl SqliteStorage {
    /// Opens or creates `server.db` in `data_dir`, creating the directory
    /// (mode 0700) if it is missing.
    ///
    /// Rejects a database whose schema version is newer than
    /// [`SCHEMA_VERSION`].
    pub fn open(data_dir: &Path) -> Result<SqliteStorage, ServerError> {
        create_data_dir(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        let open_error = |source| ServerError::OpenDatabase {
            path: path.clone(),
            source,
        };

        let mut connection = Connection::open(&path).map_err(open_error)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        connection
            .pragma_update(None, "foreign_keys", true)
            .map_err(open_error)?;
        migrate(&mut connection, &path)?;

        Ok(SqliteStorage {
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StorageError> {
        self.connection.lock().map_err(|_| StorageError::Poisoned)
    }
}

fn create_data_dir(data_dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt;

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|source| ServerError::CreateDataDir {
            path: data_dir.to_path_buf(),
            source,
        })
}

/// Creates the schema in a new database and rejects a newer one.
fn migrate(connection: &mut Connection, path: &Path) -> Result<(), ServerError> {
    let open_error = |source| ServerError::OpenDatabase {
        path: path.to_path_buf(),
        source,
    };

    // An immediate transaction keeps two processes that open a new data
    // directory at once from both creating the schema.
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_error)?;
    let version: i64 = transaction
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(open_error)?;

    if version > SCHEMA_VERSION {
        return Err(ServerError::NewerSchema {
            path: PathBuf::from(path.parent().unwrap_or(path)),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == 0 {
        transaction.execute_batch(SCHEMA).map_err(open_error)?;
        transaction
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_error)?;
    }
    transaction.commit().map_err(open_error)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Converts a generation from the database, which stores it as INTEGER.
fn generation_from_sql(value: i64) -> Result<u64, StorageError> {
    u64::try_from(value).map_err(|_| StorageError::Corrupt(format!("negative generation {value}")))
}

/// Converts a generation for a query. Values above `i64::MAX` cannot be
/// stored, so clamping them keeps comparisons right.
fn generation_to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Storage for SqliteStorage {
    fn create_account(
        &self,
        name: &str,
        token_hash: &TokenHash,
    ) -> Result<AccountId, StorageError> {
        let connection = self.lock()?;
        let inserted = connection.execute(
            "INSERT INTO accounts (name, token_hash, created) VALUES (?1, ?2, ?3)",
            params![name, token_hash.as_slice(), unix_now()],
        );
        match inserted {
            Ok(_) => Ok(connection.last_insert_rowid()),
            Err(rusqlite::Error::SqliteFailure(error, _))
                if error.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StorageError::AccountExists(name.to_string()))
            }
            Err(error) => Err(error.into()),
        }
    }

    fn principal(&self, token_hash: &TokenHash) -> Result<Option<Principal>, StorageError> {
        let connection = self.lock()?;
        let account: Option<AccountId> = connection
            .query_row(
                "SELECT id FROM accounts WHERE token_hash = ?1",
                [token_hash.as_slice()],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(id) = account {
            return Ok(Some(Principal::Account(id)));
        }

        let device: Option<AccountId> = connection
            .query_row(
                "SELECT account_id FROM devices WHERE token_hash = ?1",
                [token_hash.as_slice()],
                |row| row.get(0),
            )
            .optional()?;
        Ok(device.map(Principal::Device))
    }

    fn create_vault(&self, account: AccountId, vault: &VaultRecord) -> Result<bool, StorageError> {
        let connection = self.lock()?;
        let changed = connection.execute(
            "UPDATE accounts SET vault_id = ?2, wrapped_key = ?3
             WHERE id = ?1 AND vault_id IS NULL",
            params![account, vault.vault_id, vault.wrapped_key],
        )?;
        Ok(changed == 1)
    }

    fn vault(&self, account: AccountId) -> Result<Option<VaultRecord>, StorageError> {
        let connection = self.lock()?;
        let row: Option<(Option<String>, Option<Vec<u8>>)> = connection
            .query_row(
                "SELECT vault_id, wrapped_key FROM accounts WHERE id = ?1",
                [account],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        match row {
            Some((Some(vault_id), Some(wrapped_key))) => Ok(Some(VaultRecord {
                vault_id,
                wrapped_key,
            })),
            _ => Ok(None),
        }
    }

    fn add_device(
        &self,
        account: AccountId,
        token_hash: &TokenHash,
        label: &str,
    ) -> Result<(), StorageError> {
        let connection = self.lock()?;
        connection.execute(
            "INSERT INTO devices (token_hash, account_id, label, created)
             VALUES (?1, ?2, ?3, ?4)",
            params![token_hash.as_slice(), account, label, unix_now()],
        )?;
        Ok(())
    }

    fn push(&self, account: AccountId, writes: &[NewWrite]) -> Result<PushResult, StorageError> {
        let mut connection = self.lock()?;
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;

        // Generations recorded for writes that an earlier request already
        // stored, by position in `writes`.
        let mut recorded: Vec<Option<u64>> = Vec::with_capacity(writes.len());
        let mut conflicts = Vec::new();
        {
            let mut find_write = transaction.prepare_cached(
                "SELECT doc_id, generation FROM writes WHERE account_id = ?1 AND write_id = ?2",
            )?;
            let mut find_document = transaction.prepare_cached(
                "SELECT generation, data FROM documents WHERE account_id = ?1 AND id = ?2",
            )?;

            for write in writes {
                let known: Option<(String, i64)> = find_write
                    .query_row(params![account, write.write_id], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()?;
                if let Some((doc_id, generation)) = known {
                    if doc_id != write.doc_id {
                        return Ok(PushResult::WriteIdReused {
                            write_id: write.write_id.clone(),
                            doc_id: write.doc_id.clone(),
                        });
                    }
                    recorded.push(Some(generation_from_sql(generation)?));
                    continue;
                }
                recorded.push(None);

                let current: Option<(i64, Vec<u8>)> = find_document
                    .query_row(params![account, write.doc_id], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()?;
                match current {
                    Some((generation, data)) => {
                        let generation = generation_from_sql(generation)?;
                        if generation != write.base_generation {
                            conflicts.push(StoredDocument {
                                id: write.doc_id.clone(),
                                generation,
                                data,
                            });
                        }
                    }
                    None if write.base_generation != 0 => {
                        // The client expects a version that the server does
                        // not have, so generation 0 with empty data asks it
                        // to rebase the write on "no document".
                        conflicts.push(StoredDocument {
                            id: write.doc_id.clone(),
                            generation: 0,
                            data: Vec::new(),
                        });
                    }
                    None => {}
                }
            }
        }

        if !conflicts.is_empty() {
            // Dropping the transaction rolls it back, so nothing is written.
            return Ok(PushResult::Conflict(conflicts));
        }
        if recorded.iter().all(Option::is_some) {
            let accepted = writes
                .iter()
                .zip(&recorded)
                .map(|(write, generation)| (write.doc_id.clone(), generation.unwrap_or_default()))
                .collect();
            return Ok(PushResult::Accepted {
                accepted,
                generation: None,
            });
        }

        let current: i64 = transaction.query_row(
            "SELECT generation FROM accounts WHERE id = ?1",
            [account],
            |row| row.get(0),
        )?;
        let current = generation_from_sql(current)?;
        let new_count = recorded
            .iter()
            .filter(|generation| generation.is_none())
            .count();
        let batch_end = current + new_count as u64;

        let mut accepted = Vec::with_capacity(writes.len());
        {
            let mut upsert_document = transaction.prepare_cached(
                "INSERT INTO documents (account_id, id, generation, batch_end, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (account_id, id) DO UPDATE SET
                     generation = excluded.generation,
                     batch_end = excluded.batch_end,
                     data = excluded.data",
            )?;
            let mut insert_write = transaction.prepare_cached(
                "INSERT INTO writes (account_id, write_id, doc_id, generation)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;

            let mut next = current;
            for (write, known) in writes.iter().zip(&recorded) {
                let generation = match known {
                    Some(generation) => *generation,
                    None => {
                        next += 1;
                        upsert_document.execute(params![
                            account,
                            write.doc_id,
                            generation_to_sql(next),
                            generation_to_sql(batch_end),
                            write.data,
                        ])?;
                        insert_write.execute(params![
                            account,
                            write.write_id,
                            write.doc_id,
                            generation_to_sql(next),
                        ])?;
                        next
                    }
                };
                accepted.push((write.doc_id.clone(), generation));
            }
        }

        transaction.execute(
            "UPDATE accounts SET generation = ?2 WHERE id = ?1",
            params![account, generation_to_sql(batch_end)],
        )?;
        transaction.commit()?;

        Ok(PushResult::Accepted {
            accepted,
            generation: Some(batch_end),
        })
    }

    fn changes(
        &self,
        account: AccountId,
        since: u64,
        max_documents: usize,
        max_bytes: usize,
    ) -> Result<ChangesPage, StorageError> {
        let mut connection = self.lock()?;
        let transaction = connection.transaction()?;
        let latest = generation_from_sql(transaction.query_row(
            "SELECT generation FROM accounts WHERE id = ?1",
            [account],
            |row| row.get(0),
        )?)?;

        // First pass without the ciphertext: find the last generation of the
        // page so that it ends on a batch boundary.
        let mut page_end: Option<u64> = None;
        let mut more = false;
        {
            let mut statement = transaction.prepare_cached(
                "SELECT generation, batch_end, length(data) FROM documents
                 WHERE account_id = ?1 AND generation > ?2 ORDER BY generation",
            )?;
            let mut rows = statement.query(params![account, generation_to_sql(since)])?;

            let mut page_documents = 0usize;
            let mut page_bytes = 0usize;
            // The batch being read: its end generation, document count and size.
            let mut group: Option<(u64, usize, usize)> = None;

            loop {
                let row = rows.next()?;
                let next = match row {
                    Some(row) => {
                        let generation = generation_from_sql(row.get(0)?)?;
                        let batch_end = generation_from_sql(row.get(1)?)?;
                        let length: i64 = row.get(2)?;
                        Some((generation, batch_end, usize::try_from(length).unwrap_or(0)))
                    }
                    None => None,
                };

                // A row continues the current batch while its generation is
                // inside that batch's range; later versions of the batch's
                // documents lie past its end.
                if let (Some((end, count, bytes)), Some((generation, _, length))) = (group, next) {
                    if generation <= end {
                        group = Some((end, count + 1, bytes + length));
                        continue;
                    }
                }

                if let Some((end, count, bytes)) = group.take() {
                    let fits =
                        page_documents + count <= max_documents && page_bytes + bytes <= max_bytes;
                    if page_documents > 0 && !fits {
                        more = true;
                        break;
                    }
                    page_documents += count;
                    page_bytes += bytes;
                    page_end = Some(end);
                }

                match next {
                    Some((_, batch_end, length)) => group = Some((batch_end, 1, length)),
                    None => break,
                }
            }
        }

        let Some(page_end) = page_end else {
            return Ok(ChangesPage {
                documents: Vec::new(),
                more: false,
                latest,
            });
        };

        let mut statement = transaction.prepare_cached(
            "SELECT id, generation, data FROM documents
             WHERE account_id = ?1 AND generation > ?2 AND generation <= ?3
             ORDER BY generation",
        )?;
        let mut rows = statement.query(params![
            account,
            generation_to_sql(since),
            generation_to_sql(page_end)
        ])?;
        let mut documents = Vec::new();
        while let Some(row) = rows.next()? {
            documents.push(StoredDocument {
                id: row.get(0)?,
                generation: generation_from_sql(row.get(1)?)?,
                data: row.get(2)?,
            });
        }

        Ok(ChangesPage {
            documents,
            more,
            latest,
        })
    }

    fn missing_blobs(
        &self,
        account: AccountId,
        ids: &[String],
    ) -> Result<Vec<String>, StorageError> {
        let connection = self.lock()?;
        let mut statement =
            connection.prepare_cached("SELECT 1 FROM blobs WHERE account_id = ?1 AND id = ?2")?;
        let mut missing = Vec::new();
        for id in ids {
            if !statement.exists(params![account, id])? {
                missing.push(id.clone());
            }
        }
        Ok(missing)
    }

    fn put_blob(&self, account: AccountId, id: &str, data: &[u8]) -> Result<(), StorageError> {
        let connection = self.lock()?;
        connection.execute(
            "INSERT INTO blobs (account_id, id, data) VALUES (?1, ?2, ?3)
             ON CONFLICT (account_id, id) DO NOTHING",
            params![account, id, data],
        )?;
        Ok(())
    }

    fn blob(&self, account: AccountId, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let connection = self.lock()?;
        let data = connection
            .query_row(
                "SELECT data FROM blobs WHERE account_id = ?1 AND id = ?2",
                params![account, id],
                |row| row.get(0),
            )
            .optional()?;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, SqliteStorage, AccountId) {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(dir.path()).unwrap();
        let account = storage.create_account("alice", &[1; 32]).unwrap();
        (dir, storage, account)
    }

    fn new_write(doc: u8, base_generation: u64, write: u8, data: &[u8]) -> NewWrite {
        NewWrite {
            doc_id: format!("{doc:032x}"),
            base_generation,
            write_id: format!("{write:032x}"),
            data: data.to_vec(),
        }
    }

    fn generations(page: &ChangesPage) -> Vec<u64> {
        page.documents
            .iter()
            .map(|document| document.generation)
            .collect()
    }

    #[test]
    fn changes_never_split_a_batch() {
        let (_dir, storage, account) = open();
        // Batches: generations 1-3, 4, 5-6.
        let batches = [vec![1, 2, 3], vec![4], vec![5, 6]];
        for batch in &batches {
            let writes: Vec<_> = batch.iter().map(|&n| new_write(n, 0, n, b"x")).collect();
            storage.push(account, &writes).unwrap();
        }

        let cases = [
            // (since, max_documents, expected generations, more)
            (0, 1, vec![1, 2, 3], true),
            (0, 3, vec![1, 2, 3], true),
            (0, 4, vec![1, 2, 3, 4], true),
            (0, 5, vec![1, 2, 3, 4], true),
            (0, 6, vec![1, 2, 3, 4, 5, 6], false),
            (4, 1, vec![5, 6], false),
            (6, 10, vec![], false),
        ];
        for (since, max_documents, expected, more) in cases {
            let page = storage
                .changes(account, since, max_documents, usize::MAX)
                .unwrap();
            assert_eq!(
                generations(&page),
                expected,
                "since {since}, max {max_documents}"
            );
            assert_eq!(page.more, more, "since {since}, max {max_documents}");
        }
    }

    #[test]
    fn superseded_batch_member_allows_cut() {
        let (_dir, storage, account) = open();
        storage
            .push(
                account,
                &[new_write(1, 0, 1, b"a"), new_write(2, 0, 2, b"b")],
            )
            .unwrap();
        // Document 1 moves to generation 3, so generation 2 ends what is
        // left of the first batch.
        storage.push(account, &[new_write(1, 1, 3, b"a2")]).unwrap();

        let page = storage.changes(account, 0, 1, usize::MAX).unwrap();
        assert_eq!(generations(&page), vec![2]);
        assert!(page.more);
    }

    #[test]
    fn changes_stop_at_byte_limit() {
        let (_dir, storage, account) = open();
        for n in 1..=3 {
            storage
                .push(account, &[new_write(n, 0, n, &[0; 100])])
                .unwrap();
        }

        let page = storage.changes(account, 0, 100, 250).unwrap();
        assert_eq!(generations(&page), vec![1, 2]);
        assert!(page.more);

        // A first batch larger than the limit still comes whole.
        let page = storage.changes(account, 0, 100, 10).unwrap();
        assert_eq!(generations(&page), vec![1]);
    }

    #[test]
    fn conflicting_push_changes_nothing() {
        let (_dir, storage, account) = open();
        storage.push(account, &[new_write(1, 0, 1, b"a")]).unwrap();

        let result = storage
            .push(
                account,
                &[new_write(2, 0, 2, b"b"), new_write(1, 7, 3, b"a2")],
            )
            .unwrap();
        let PushResult::Conflict(current) = result else {
            panic!("expected a conflict, got {result:?}");
        };
        assert_eq!(current.len(), 1);
        assert_eq!(current[0].generation, 1);
        assert_eq!(current[0].data, b"a");

        let page = storage.changes(account, 0, 100, usize::MAX).unwrap();
        assert_eq!(generations(&page), vec![1]);

        // Neither write id was recorded, so the batch can be sent again.
        let result = storage
            .push(
                account,
                &[new_write(2, 0, 2, b"b"), new_write(1, 1, 3, b"a2")],
            )
            .unwrap();
        assert!(
            matches!(
                result,
                PushResult::Accepted {
                    generation: Some(3),
                    ..
                }
            ),
            "{result:?}"
        );
    }

    #[test]
    fn accounts_do_not_share_documents() {
        let (_dir, storage, alice) = open();
        let bob = storage.create_account("bob", &[2; 32]).unwrap();
        storage.push(alice, &[new_write(1, 0, 1, b"a")]).unwrap();

        // Same document id and write id under another account.
        let result = storage.push(bob, &[new_write(1, 0, 1, b"b")]).unwrap();
        assert!(
            matches!(
                result,
                PushResult::Accepted {
                    generation: Some(1),
                    ..
                }
            ),
            "{result:?}"
        );

        let page = storage.changes(bob, 0, 100, usize::MAX).unwrap();
        assert_eq!(page.documents[0].data, b"b");
        assert_eq!(
            storage.principal(&[2; 32]).unwrap(),
            Some(Principal::Account(bob))
        );
        assert_eq!(storage.principal(&[3; 32]).unwrap(), None);
    }
}
