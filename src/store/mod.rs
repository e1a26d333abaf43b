//! The local store: one SQLite database per device holding the vault's sealed
//! node documents, sealed blocks and the change log that sync reads.
//!
//! Plain-text columns hold only what the server could see anyway (ids,
//! generations, ciphertext) plus local inode numbers and keyed-hash tags.
//! NOTE: the directory tag lets someone with the store file see which rows
//! are siblings (not their names or their directory); a store-wide index
//! sealed as one document would hide that too.

mod blocks;
mod merge;
mod node;
mod schema;
mod sync_state;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::crypto::{CryptoError, KdfParams, MasterKey, NodeId, Passphrase, VaultKeys, WrappedKey};

pub use node::{Content, DEFAULT_BLOCK_SIZE, NodeDoc, NodeKind, Timestamp, VAULT_OWNER};
pub use schema::SCHEMA_VERSION;
pub use sync_state::{
    AppliedChange, PendingDocument, RemoteDocument, StoreSummary, conflict_name, format_utc,
    format_utc_readable, numbered_conflict_name, summarize,
};

const DATABASE_FILE: &str = "store.db";
const LOCK_FILE: &str = "lock";

/// Inode number of the root directory, fixed by FUSE.
pub const ROOT_INO: u64 = 1;

/// Failures of the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "no syn store at {0}: create one with `syn init --store {0}` or `syn join --store {0}`"
    )]
    Missing(PathBuf),

    #[error("a syn store already exists at {0}: choose another --store directory")]
    AlreadyExists(PathBuf),

    #[error("{path} is not a usable syn store: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    #[error(
        "the store was written by a newer syn (schema {found}, this binary knows {known}): upgrade syn to open it"
    )]
    TooNew { found: i64, known: i64 },

    #[error("the store is in use by another syn process (a mount or a sync): unmount it first")]
    Locked,

    #[error("the disk that holds the store is full: free some space and try again")]
    DiskFull,

    #[error(transparent)]
    Crypto(#[from] CryptoError),

    #[error("store database error: {0}")]
    Database(rusqlite::Error),

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(failure, _) = &error {
            if failure.code == rusqlite::ErrorCode::DiskFull {
                return StoreError::DiskFull;
            }
        }
        StoreError::Database(error)
    }
}

/// Settings of a new store.
pub struct NewStore<'a> {
    pub wrapped_key: &'a WrappedKey,
    pub master: &'a MasterKey,
    /// Label used in conflict copies' names; it stays on this device.
    pub device_label: &'a str,
    pub server_url: Option<&'a str>,
    pub device_token: Option<&'a str>,
}

/// One node as the store holds it, decrypted.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub id: NodeId,
    pub ino: u64,
    pub doc: NodeDoc,
    pub remote_revision: u64,
}

/// An exclusive lock on a store directory, held while a process writes it.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl StoreLock {
    /// Takes the lock or fails with [`StoreError::Locked`] at once.
    pub fn acquire(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                action: "cannot open the lock file",
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on a file descriptor we own; it has no memory effects.
        let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if result != 0 {
            return Err(StoreError::Locked);
        }
        Ok(StoreLock { _file: file })
    }
}

/// The store of one device, unlocked with the vault's keys.
pub struct Store {
    connection: Connection,
    keys: VaultKeys,
    dir: PathBuf,
    block_cache: blocks::BlockCache,
}

impl Store {
    /// Creates a store in `dir`, which must not hold one yet.
    pub fn create(dir: &Path, new: NewStore<'_>) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            action: "cannot create the store directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let database = dir.join(DATABASE_FILE);
        if database.exists() {
            return Err(StoreError::AlreadyExists(dir.to_path_buf()));
        }

        let mut connection = open_connection(&database)?;
        // Lets collected blocks give their space back to the disk; SQLite
        // takes this setting only before the first table exists.
        connection.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        schema::migrate(&mut connection)?;
        let keys = VaultKeys::derive(new.wrapped_key.vault_id, new.master);
        let mut store = Store {
            connection,
            keys,
            dir: dir.to_path_buf(),
            block_cache: blocks::BlockCache::default(),
        };
        store.write_initial_meta(&new)?;
        Ok(store)
    }

    /// Opens an existing store and unlocks it with `passphrase`.
    pub fn open(dir: &Path, passphrase: &Passphrase) -> Result<Store, StoreError> {
        let mut connection = open_existing(dir)?;
        schema::migrate(&mut connection)?;

        let wrapped = read_wrapped_key(&connection, dir)?;
        let master = wrapped.unwrap_key(passphrase)?;
        let keys = VaultKeys::derive(wrapped.vault_id, &master);
        Ok(Store {
            connection,
            keys,
            dir: dir.to_path_buf(),
            block_cache: blocks::BlockCache::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn keys(&self) -> &VaultKeys {
        &self.keys
    }

    fn write_initial_meta(&mut self, new: &NewStore<'_>) -> Result<(), StoreError> {
        let transaction = self.connection.transaction()?;
        let root = NodeDoc::new(
            NodeKind::Directory,
            NodeId::ROOT,
            b"",
            0o755,
            VAULT_OWNER,
            VAULT_OWNER,
        );
        let sealed_root = self.keys.seal_document(&NodeId::ROOT, &root.to_bytes());
        transaction.execute(
            "INSERT INTO nodes (id, ino, document) VALUES (?1, ?2, ?3)",
            params![NodeId::ROOT.0, ROOT_INO as i64, sealed_root],
        )?;

        let mut meta: Vec<(&str, Vec<u8>)> = vec![
            ("vault_id", new.wrapped_key.vault_id.0.to_vec()),
            ("wrapped_key", new.wrapped_key.to_bytes()),
            ("next_ino", (ROOT_INO + 1).to_le_bytes().to_vec()),
            (
                "device_label",
                self.keys
                    .seal_local("device_label", new.device_label.as_bytes()),
            ),
            ("cursor", 0u64.to_le_bytes().to_vec()),
        ];
        if let Some(url) = new.server_url {
            meta.push(("server_url", url.as_bytes().to_vec()));
        }
        if let Some(token) = new.device_token {
            meta.push((
                "device_token",
                self.keys.seal_local("device_token", token.as_bytes()),
            ));
        }
        for (key, value) in meta {
            transaction.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .connection
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.connection.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn server_url(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .meta("server_url")?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    pub fn device_token(&self) -> Result<Option<String>, StoreError> {
        let Some(sealed) = self.meta("device_token")? else {
            return Ok(None);
        };
        let token = self.keys.open_local("device_token", &sealed)?;
        Ok(Some(String::from_utf8_lossy(&token).into_owned()))
    }

    pub fn device_label(&self) -> Result<String, StoreError> {
        let Some(sealed) = self.meta("device_label")? else {
            return Ok("device".into());
        };
        let label = self.keys.open_local("device_label", &sealed)?;
        Ok(String::from_utf8_lossy(&label).into_owned())
    }

    /// True when the vault's key was wrapped with test-only Argon2 costs.
    pub fn has_insecure_kdf(&self) -> Result<bool, StoreError> {
        let wrapped = read_wrapped_key(&self.connection, &self.dir)?;
        Ok(wrapped.kdf.is_below_floor())
    }

    fn open_row(
        &self,
        id: NodeId,
        ino: i64,
        sealed: &[u8],
        revision: i64,
    ) -> Result<NodeRow, StoreError> {
        let plaintext = self.keys.open_document(&id, sealed)?;
        let doc = NodeDoc::from_bytes(&plaintext).ok_or_else(|| StoreError::Corrupt {
            path: self.dir.clone(),
            reason: format!("the document of node {} does not parse", id.to_hex()),
        })?;
        Ok(NodeRow {
            id,
            ino: ino as u64,
            doc,
            remote_revision: revision as u64,
        })
    }

    fn query_row_by(
        &self,
        column: &str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<Option<NodeRow>, StoreError> {
        let sql =
            format!("SELECT id, ino, document, remote_revision FROM nodes WHERE {column} = ?1");
        let found: Option<(Vec<u8>, i64, Vec<u8>, i64)> = self
            .connection
            .query_row(&sql, [value], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .optional()?;
        let Some((id, ino, sealed, revision)) = found else {
            return Ok(None);
        };
        let id = self.parse_node_id(&id)?;
        self.open_row(id, ino, &sealed, revision).map(Some)
    }

    fn parse_node_id(&self, bytes: &[u8]) -> Result<NodeId, StoreError> {
        NodeId::from_slice(bytes).ok_or_else(|| StoreError::Corrupt {
            path: self.dir.clone(),
            reason: "a node id has the wrong length".into(),
        })
    }

    pub fn node_by_ino(&self, ino: u64) -> Result<Option<NodeRow>, StoreError> {
        self.query_row_by("ino", &(ino as i64))
    }

    pub fn node(&self, id: &NodeId) -> Result<Option<NodeRow>, StoreError> {
        self.query_row_by("id", &id.0.as_slice())
    }

    pub fn ino_of(&self, id: &NodeId) -> Result<Option<u64>, StoreError> {
        ino_of(&self.connection, id)
    }

    /// Returns the conflict name for `name` in directory `parent`, numbered
    /// past any that an entry there already has.
    pub fn free_conflict_name(
        &self,
        parent: &NodeId,
        name: &[u8],
        device: &str,
        unix_seconds: u64,
    ) -> Result<Vec<u8>, StoreError> {
        free_conflict_name(
            &self.connection,
            &self.keys,
            parent,
            name,
            device,
            unix_seconds,
        )
    }

    /// Finds the live entry `name` in directory `parent`.
    pub fn lookup(&self, parent: &NodeId, name: &[u8]) -> Result<Option<NodeRow>, StoreError> {
        let tag = self.keys.name_tag(parent, name);
        let Some(node) = node_at(&self.connection, &tag)? else {
            return Ok(None);
        };
        let row = self.node(&node)?;
        // A tag collision or a stale index would show here as another name.
        Ok(row.filter(|row| !row.doc.is_deleted() && row.doc.has_link(parent, name)))
    }

    /// Lists the live entries of directory `parent` as (name, node), in no
    /// particular order; a node with two links there appears twice.
    pub fn children(&self, parent: &NodeId) -> Result<Vec<(Vec<u8>, NodeRow)>, StoreError> {
        let tag = self.keys.directory_tag(parent);
        let mut statement = self
            .connection
            .prepare_cached("SELECT DISTINCT node FROM entries WHERE directory_tag = ?1")?;
        let nodes: Vec<Vec<u8>> = statement
            .query_map([tag.0.as_slice()], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let mut children = Vec::with_capacity(nodes.len());
        for node in nodes {
            let Some(row) = self.node(&self.parse_node_id(&node)?)? else {
                continue;
            };
            if row.doc.is_deleted() {
                continue;
            }
            let names: Vec<Vec<u8>> = row
                .doc
                .links()
                .into_iter()
                .filter(|(link_parent, _)| link_parent == parent)
                .map(|(_, name)| name.to_vec())
                .collect();
            for name in names {
                children.push((name, row.clone()));
            }
        }
        Ok(children)
    }

    pub fn has_children(&self, parent: &NodeId) -> Result<bool, StoreError> {
        let tag = self.keys.directory_tag(parent);
        Ok(self
            .connection
            .query_row(
                "SELECT 1 FROM entries WHERE directory_tag = ?1 LIMIT 1",
                [tag.0.as_slice()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Writes local changes to nodes in one transaction and logs each in the
    /// change log; returns their inode numbers. New nodes get a new inode.
    pub fn commit(&mut self, changes: &[(NodeId, &NodeDoc)]) -> Result<Vec<u64>, StoreError> {
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inos = Vec::with_capacity(changes.len());
        for (id, doc) in changes {
            let ino = write_node(&transaction, &self.keys, id, doc)?;
            // The root is implicit on every device, so its attributes stay local.
            if *id != NodeId::ROOT {
                transaction.execute("INSERT INTO changes (node) VALUES (?1)", [id.0.as_slice()])?;
            }
            inos.push(ino);
        }
        transaction.commit()?;
        Ok(inos)
    }

    /// Makes every committed change durable (fsync).
    ///
    /// In WAL mode with `synchronous=NORMAL` a commit is complete in the WAL
    /// file but not yet flushed; flushing that file makes every commit so far
    /// survive a crash, which is cheaper than a checkpoint.
    pub fn sync_to_disk(&self) -> Result<(), StoreError> {
        let wal = self.dir.join(format!("{DATABASE_FILE}-wal"));
        let io_error = |source| StoreError::Io {
            action: "cannot flush the store's journal",
            path: wal.clone(),
            source,
        };
        match File::open(&wal) {
            Ok(file) => file.sync_data().map_err(io_error),
            // No WAL file means every commit already sits in the database file.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(error)),
        }
    }

    /// Bytes total and free on the file system that holds the store.
    pub fn disk_space(&self) -> std::io::Result<libc::statvfs> {
        let path = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: statvfs writes into the zeroed struct we pass and reads the
        // NUL-terminated path, both valid for the call.
        unsafe {
            let mut stat: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(stat)
        }
    }
}

/// Returns the inode number of node `id`, if the store has the node.
fn ino_of(connection: &Connection, id: &NodeId) -> Result<Option<u64>, StoreError> {
    Ok(connection
        .query_row(
            "SELECT ino FROM nodes WHERE id = ?1",
            [id.0.as_slice()],
            |row| row.get::<_, i64>(0),
        )
        .optional()?
        .map(|ino| ino as u64))
}

/// The node that the entry `tag` names, if any.
fn node_at(
    connection: &Connection,
    tag: &crate::crypto::Tag,
) -> Result<Option<NodeId>, StoreError> {
    let node: Option<Vec<u8>> = connection
        .query_row(
            "SELECT node FROM entries WHERE name_tag = ?1",
            [tag.0.as_slice()],
            |row| row.get(0),
        )
        .optional()?;
    Ok(node.as_deref().and_then(NodeId::from_slice))
}

/// Returns the first conflict name of `name` in directory `parent` that no
/// entry has. Two conflicts of one name on one device within a second would
/// otherwise get the same name, and the second would fail to be indexed.
fn free_conflict_name(
    connection: &Connection,
    keys: &VaultKeys,
    parent: &NodeId,
    name: &[u8],
    device: &str,
    unix_seconds: u64,
) -> Result<Vec<u8>, StoreError> {
    let mut number = 1;
    loop {
        let candidate = numbered_conflict_name(name, device, unix_seconds, number);
        if node_at(connection, &keys.name_tag(parent, &candidate))?.is_none() {
            return Ok(candidate);
        }
        number += 1;
    }
}

/// A node's sealed document, and the sealed document the server last had
/// for it (`None` before its first sync).
type SealedWithBase = (Vec<u8>, Option<Vec<u8>>);

/// Returns node `id`'s sealed document and base, if the store has the node.
fn sealed_document_and_base(
    connection: &Connection,
    id: &NodeId,
) -> Result<Option<SealedWithBase>, StoreError> {
    Ok(connection
        .query_row(
            "SELECT document, base FROM nodes WHERE id = ?1",
            [id.0.as_slice()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

/// The sealed document of node `id`, if the store has the node.
fn sealed_document(connection: &Connection, id: &NodeId) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(connection
        .query_row(
            "SELECT document FROM nodes WHERE id = ?1",
            [id.0.as_slice()],
            |row| row.get(0),
        )
        .optional()?)
}

/// Inserts or updates one node row, keeping its tags in step with its
/// document, and returns its inode number.
fn write_node(
    transaction: &rusqlite::Transaction<'_>,
    keys: &VaultKeys,
    id: &NodeId,
    doc: &NodeDoc,
) -> Result<u64, StoreError> {
    write_node_tagged(transaction, keys, id, doc, true)
}

/// Writes a node row; with `tagged` false it leaves the node out of the
/// name and directory indexes, for a page of remote changes whose
/// intermediate states may briefly share a name.
fn write_node_tagged(
    transaction: &rusqlite::Transaction<'_>,
    keys: &VaultKeys,
    id: &NodeId,
    doc: &NodeDoc,
    tagged: bool,
) -> Result<u64, StoreError> {
    let sealed = keys.seal_document(id, &doc.to_bytes());
    let existing: Option<i64> = transaction
        .query_row(
            "SELECT ino FROM nodes WHERE id = ?1",
            [id.0.as_slice()],
            |row| row.get(0),
        )
        .optional()?;
    let ino = match existing {
        Some(ino) => {
            transaction.execute(
                "UPDATE nodes SET document = ?2 WHERE id = ?1",
                params![id.0, sealed],
            )?;
            ino as u64
        }
        None => {
            let ino = allocate_ino(transaction)?;
            transaction.execute(
                "INSERT INTO nodes (id, ino, document) VALUES (?1, ?2, ?3)",
                params![id.0, ino as i64, sealed],
            )?;
            ino
        }
    };

    transaction.execute("DELETE FROM entries WHERE node = ?1", [id.0.as_slice()])?;
    if tagged && !doc.is_deleted() && *id != NodeId::ROOT {
        for (parent, name) in doc.links() {
            transaction.execute(
                "INSERT INTO entries (name_tag, directory_tag, node) VALUES (?1, ?2, ?3)",
                params![
                    keys.name_tag(&parent, name).0,
                    keys.directory_tag(&parent).0,
                    id.0
                ],
            )?;
        }
    }
    Ok(ino)
}

fn allocate_ino(transaction: &rusqlite::Transaction<'_>) -> Result<u64, StoreError> {
    let bytes: Vec<u8> =
        transaction.query_row("SELECT value FROM meta WHERE key = 'next_ino'", [], |row| {
            row.get(0)
        })?;
    let next = u64::from_le_bytes(bytes.as_slice().try_into().unwrap_or([0; 8])).max(ROOT_INO + 1);
    transaction.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'next_ino'",
        [(next + 1).to_le_bytes().to_vec()],
    )?;
    Ok(next)
}

fn open_connection(database: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open(database)?;
    connection.busy_timeout(Duration::from_secs(10))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    Ok(connection)
}

fn open_existing(dir: &Path) -> Result<Connection, StoreError> {
    let database = dir.join(DATABASE_FILE);
    if !database.exists() {
        return Err(StoreError::Missing(dir.to_path_buf()));
    }
    let connection = open_connection(&database).map_err(|error| match error {
        StoreError::Database(inner) => StoreError::Corrupt {
            path: database.clone(),
            reason: inner.to_string(),
        },
        other => other,
    })?;
    // A foreign SQLite file or a damaged one fails here rather than later.
    let has_meta: bool = connection
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map(|count| count == 1)
        .map_err(|error| StoreError::Corrupt {
            path: database.clone(),
            reason: error.to_string(),
        })?;
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if !has_meta && version <= SCHEMA_VERSION {
        return Err(StoreError::Corrupt {
            path: database,
            reason: "it is an SQLite database, but not one that syn wrote".into(),
        });
    }
    Ok(connection)
}

fn read_wrapped_key(connection: &Connection, dir: &Path) -> Result<WrappedKey, StoreError> {
    let bytes: Option<Vec<u8>> = connection
        .query_row(
            "SELECT value FROM meta WHERE key = 'wrapped_key'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let bytes = bytes.ok_or_else(|| StoreError::Corrupt {
        path: dir.to_path_buf(),
        reason: "the wrapped master key is missing".into(),
    })?;
    Ok(WrappedKey::from_bytes(&bytes)?)
}

/// Parameters for a new vault's key wrapping.
pub fn kdf_params(insecure_for_tests: bool) -> KdfParams {
    if insecure_for_tests {
        KdfParams::insecure_for_tests()
    } else {
        KdfParams::recommended()
    }
}
