//! What the sync task reads from and writes to the store: the pending
//! changes, the cursor, and remote documents applied with merges.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::merge::merge;
use super::node::{NodeDoc, NodeKind};
use super::{
    DATABASE_FILE, Store, StoreError, free_conflict_name, ino_of, node_at, sealed_document,
    sealed_document_and_base, write_node, write_node_tagged,
};
use crate::crypto::{BlockId, NodeId};

/// Longest name a conflict copy may get, the limit of Linux file systems.
const MAX_NAME_BYTES: usize = 255;

/// A node whose local changes wait to be pushed.
#[derive(Debug, Clone)]
pub struct PendingDocument {
    pub id: NodeId,
    /// Highest change-log sequence number this push covers.
    pub seq: i64,
    /// Server generation the document is based on.
    pub generation: u64,
    pub sealed: Vec<u8>,
    /// Blocks the document refers to, which the server must have first.
    pub blocks: Vec<BlockId>,
}

/// A document pulled from the server.
#[derive(Debug, Clone)]
pub struct RemoteDocument {
    pub id: NodeId,
    pub generation: u64,
    pub sealed: Vec<u8>,
}

/// A node that a remote change touched, for kernel cache invalidation.
#[derive(Debug, Clone)]
pub struct AppliedChange {
    pub ino: u64,
    /// Directory inode and name before and after, where the node had one.
    pub entries: Vec<(u64, Vec<u8>)>,
}

/// What `syn status` can read from a store without unlocking it.
#[derive(Debug, Clone, Default)]
pub struct StoreSummary {
    pub pending_changes: u64,
    pub cursor: u64,
    pub last_sync: Option<u64>,
    pub last_error: Option<String>,
    pub conflicts: u64,
    pub server_url: Option<String>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

fn meta_u64(connection: &Connection, key: &str) -> Result<Option<u64>, StoreError> {
    let bytes: Option<Vec<u8>> = connection
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()?;
    Ok(bytes.and_then(|bytes| Some(u64::from_le_bytes(bytes.as_slice().try_into().ok()?))))
}

fn set_meta_u64(connection: &Connection, key: &str, value: u64) -> Result<(), StoreError> {
    connection.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value.to_le_bytes().to_vec()],
    )?;
    Ok(())
}

/// Reads the sync state of the store in `dir` without its keys.
pub fn summarize(dir: &Path) -> Result<StoreSummary, StoreError> {
    let database = dir.join(DATABASE_FILE);
    if !database.exists() {
        return Err(StoreError::Missing(dir.to_path_buf()));
    }
    let connection = Connection::open_with_flags(&database, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let pending: i64 =
        connection.query_row("SELECT count(DISTINCT node) FROM changes", [], |row| {
            row.get(0)
        })?;
    let last_error: Option<Vec<u8>> = connection
        .query_row(
            "SELECT value FROM meta WHERE key = 'last_error'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let server_url: Option<Vec<u8>> = connection
        .query_row(
            "SELECT value FROM meta WHERE key = 'server_url'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(StoreSummary {
        pending_changes: pending as u64,
        cursor: meta_u64(&connection, "cursor")?.unwrap_or(0),
        last_sync: meta_u64(&connection, "last_sync")?,
        last_error: last_error.map(|text| String::from_utf8_lossy(&text).into_owned()),
        conflicts: meta_u64(&connection, "conflicts")?.unwrap_or(0),
        server_url: server_url.map(|text| String::from_utf8_lossy(&text).into_owned()),
    })
}

/// The name of a conflict copy: `stem (conflict DEVICE DATE).ext`, cut to
/// fit 255 bytes.
pub fn conflict_name(name: &[u8], device: &str, unix_seconds: u64) -> Vec<u8> {
    numbered_conflict_name(name, device, unix_seconds, 1)
}

/// Returns the conflict name with a `number` after the date when it is
/// above 1, for a second conflict of one name on one device in one second.
pub fn numbered_conflict_name(
    name: &[u8],
    device: &str,
    unix_seconds: u64,
    number: u32,
) -> Vec<u8> {
    let dot = name
        .iter()
        .rposition(|&byte| byte == b'.')
        .filter(|&at| at > 0);
    let (stem, extension) = match dot {
        Some(at) => name.split_at(at),
        None => (name, &b""[..]),
    };
    let date = format_utc(unix_seconds);
    let suffix = if number > 1 {
        format!(" (conflict {device} {date} {number})")
    } else {
        format!(" (conflict {device} {date})")
    };
    let room = MAX_NAME_BYTES.saturating_sub(suffix.len() + extension.len());
    let mut result = stem[..stem.len().min(room)].to_vec();
    result.extend_from_slice(suffix.as_bytes());
    result.extend_from_slice(extension);
    result.truncate(MAX_NAME_BYTES);
    result
}

/// Formats a Unix time as `YYYY-MM-DD HH:MM:SS` in UTC, for people.
pub fn format_utc_readable(unix_seconds: u64) -> String {
    let text = format_utc(unix_seconds);
    let (date, time) = text.split_at(11);
    format!("{date}{}:{}:{}", &time[0..2], &time[2..4], &time[4..6])
}

/// Formats a Unix time as `YYYY-MM-DD HHMMSS` in UTC, a form that fits in
/// file names.
pub fn format_utc(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let seconds_of_day = unix_seconds % 86_400;
    // Civil-from-days conversion for the proleptic Gregorian calendar.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}{:02}{:02}",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    )
}

impl Store {
    /// Nodes with changes to push, oldest change first, at most `limit`,
    /// leaving out the nodes in `skip`.
    pub fn pending_documents(
        &self,
        limit: usize,
        skip: &HashSet<NodeId>,
    ) -> Result<Vec<PendingDocument>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT changes.node, max(changes.seq), nodes.generation, nodes.document
             FROM changes JOIN nodes ON nodes.id = changes.node
             GROUP BY changes.node ORDER BY max(changes.seq) LIMIT ?1",
        )?;
        let rows: Vec<(Vec<u8>, i64, i64, Vec<u8>)> = statement
            .query_map([(limit + skip.len()) as i64], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<Result<_, _>>()?;

        let mut pending = Vec::with_capacity(rows.len());
        for (id, seq, generation, sealed) in rows {
            let id = self.parse_node_id(&id)?;
            if skip.contains(&id) || pending.len() == limit {
                continue;
            }
            let row = self.open_row(id, 0, &sealed, 0)?;
            let blocks = row.doc.content.blocks.values().copied().collect();
            pending.push(PendingDocument {
                id,
                seq,
                generation: generation as u64,
                sealed,
                blocks,
            });
        }
        Ok(pending)
    }

    /// Remembers the documents about to be pushed, so that one the server
    /// takes without the reply arriving is recognised when it comes back.
    pub fn record_attempts(&self, documents: &[PendingDocument]) -> Result<(), StoreError> {
        let mut statement = self.connection.prepare_cached(
            "INSERT INTO attempts (node, document) SELECT ?1, ?2
                 WHERE NOT EXISTS (SELECT 1 FROM attempts WHERE node = ?1 AND document = ?2)",
        )?;
        for document in documents {
            statement.execute(params![document.id.0, document.sealed])?;
        }
        Ok(())
    }

    pub fn pending_count(&self) -> Result<u64, StoreError> {
        let count: i64 =
            self.connection
                .query_row("SELECT count(DISTINCT node) FROM changes", [], |row| {
                    row.get(0)
                })?;
        Ok(count as u64)
    }

    /// Records that the server accepted `pushed` at the given generations;
    /// changes logged after the push began stay pending.
    pub fn mark_pushed(&mut self, pushed: &[(&PendingDocument, u64)]) -> Result<(), StoreError> {
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (document, generation) in pushed {
            transaction.execute(
                "UPDATE nodes SET generation = ?2, base = ?3 WHERE id = ?1",
                params![document.id.0, *generation as i64, document.sealed],
            )?;
            transaction.execute(
                "DELETE FROM changes WHERE node = ?1 AND seq <= ?2",
                params![document.id.0, document.seq],
            )?;
            transaction.execute(
                "DELETE FROM attempts WHERE node = ?1",
                [document.id.0.as_slice()],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    pub fn cursor(&self) -> Result<u64, StoreError> {
        Ok(meta_u64(&self.connection, "cursor")?.unwrap_or(0))
    }

    /// Records a successful sync and clears the last error.
    pub fn record_sync_success(&self) -> Result<(), StoreError> {
        set_meta_u64(&self.connection, "last_sync", unix_now())?;
        self.connection
            .execute("DELETE FROM meta WHERE key = 'last_error'", [])?;
        Ok(())
    }

    pub fn record_sync_error(&self, message: &str) -> Result<(), StoreError> {
        self.set_meta("last_error", message.as_bytes())
    }

    /// Adds a conflict copy made outside sync (a file closed after a
    /// remote change) to the count that `syn status` reports.
    pub fn count_conflict(&self) -> Result<(), StoreError> {
        let total = meta_u64(&self.connection, "conflicts")?.unwrap_or(0) + 1;
        set_meta_u64(&self.connection, "conflicts", total)
    }

    fn open_remote(&self, document: &RemoteDocument) -> Result<NodeDoc, StoreError> {
        let plaintext = self.keys.open_document(&document.id, &document.sealed)?;
        NodeDoc::from_bytes(&plaintext).ok_or_else(|| StoreError::Corrupt {
            path: self.dir.clone(),
            reason: format!("remote document {} does not parse", document.id.to_hex()),
        })
    }

    /// Blocks that `documents` refer to and this store lacks; they must be
    /// fetched before the documents are applied. Documents that fail to open
    /// are left to `apply_remote`, which skips them.
    pub fn missing_blocks(&self, documents: &[RemoteDocument]) -> Result<Vec<BlockId>, StoreError> {
        let mut missing = Vec::new();
        for document in documents {
            let Ok(doc) = self.open_remote(document) else {
                continue;
            };
            for block in doc.content.blocks.into_values() {
                if !missing.contains(&block) && !self.has_block(&block)? {
                    missing.push(block);
                }
            }
        }
        Ok(missing)
    }

    /// Forgets the server generation of a node that the server does not have,
    /// so the next push creates it anew.
    pub fn forget_generation(&self, id: &NodeId) -> Result<(), StoreError> {
        self.connection.execute(
            "UPDATE nodes SET generation = 0, base = NULL WHERE id = ?1",
            [id.0.as_slice()],
        )?;
        Ok(())
    }

    /// Applies one page of remote documents and moves the cursor, all in one
    /// transaction, merging with local changes where there are any.
    pub fn apply_remote(
        &mut self,
        documents: &[RemoteDocument],
        cursor: u64,
    ) -> Result<Vec<AppliedChange>, StoreError> {
        let device = self.device_label()?;
        let mut opened = Vec::with_capacity(documents.len());
        for document in documents {
            // One damaged or forged document must not stop the whole vault's
            // sync: it is left out (nothing of it is trusted) and logged.
            match self.open_remote(document) {
                Ok(doc) => opened.push((document, doc)),
                Err(error) => log::warn!(
                    "skipped remote document {} at generation {}: {error}",
                    document.id.to_hex(),
                    document.generation
                ),
            }
        }

        let mut applied = Vec::new();
        let mut conflicts = 0;
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut context = ApplyContext {
            transaction: &transaction,
            store_dir: &self.dir,
            keys: &self.keys,
            device: &device,
            restored: Vec::new(),
        };
        // Documents are written first without their name tags, then placed,
        // so a page that frees a name and takes it again (a safe save's
        // rename over the old file) is judged by its final state only.
        let mut staged = Vec::new();
        for (document, remote) in opened {
            staged.extend(context.stage(document, remote, &mut conflicts)?);
        }
        let deleted_directories: Vec<(NodeId, u64, NodeDoc)> = staged
            .iter()
            .filter(|node| node.doc.is_deleted())
            .filter_map(|node| match &node.local {
                Some(local) if local.kind == NodeKind::Directory => {
                    Some((node.id, node.ino, local.clone()))
                }
                _ => None,
            })
            .collect();
        for node in staged {
            applied.push(context.place(node)?);
        }
        context.keep_directories_with_entries(deleted_directories)?;
        applied.append(&mut context.restored);
        set_meta_u64(&transaction, "cursor", cursor)?;
        if conflicts > 0 {
            let total = meta_u64(&transaction, "conflicts")?.unwrap_or(0) + conflicts;
            set_meta_u64(&transaction, "conflicts", total)?;
        }
        transaction.commit()?;
        Ok(applied)
    }
}

struct ApplyContext<'a> {
    transaction: &'a rusqlite::Transaction<'a>,
    store_dir: &'a PathBuf,
    keys: &'a crate::crypto::VaultKeys,
    device: &'a str,
    /// Nodes that a kept directory brought back, for invalidation.
    restored: Vec<AppliedChange>,
}

/// A remote change written but not yet placed in the name indexes.
struct StagedNode {
    id: NodeId,
    ino: u64,
    doc: NodeDoc,
    /// True when the node already has a change logged to push.
    logged: bool,
    /// Directory inodes and names the node had before, for invalidation.
    old_entries: Vec<(u64, Vec<u8>)>,
    /// The local document before the page, for the rules that keep it.
    local: Option<NodeDoc>,
}

struct LocalState {
    ino: u64,
    doc: NodeDoc,
    /// The document as stored, sealed.
    sealed: Vec<u8>,
    generation: u64,
    base: Option<NodeDoc>,
    dirty: bool,
    /// Sealed documents pushed without a reply yet.
    attempts: Vec<Vec<u8>>,
}

impl ApplyContext<'_> {
    fn open_doc(&self, id: &NodeId, sealed: &[u8]) -> Result<NodeDoc, StoreError> {
        let plaintext = self.keys.open_document(id, sealed)?;
        NodeDoc::from_bytes(&plaintext).ok_or_else(|| StoreError::Corrupt {
            path: self.store_dir.clone(),
            reason: format!("the document of node {} does not parse", id.to_hex()),
        })
    }

    fn local_state(&self, id: &NodeId) -> Result<Option<LocalState>, StoreError> {
        type Row = (i64, Vec<u8>, i64, Option<Vec<u8>>);
        let row: Option<Row> = self
            .transaction
            .query_row(
                "SELECT ino, document, generation, base FROM nodes WHERE id = ?1",
                [id.0.as_slice()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        let Some((ino, sealed, generation, base)) = row else {
            return Ok(None);
        };
        let attempts: Vec<Vec<u8>> = self
            .transaction
            .prepare_cached("SELECT document FROM attempts WHERE node = ?1")?
            .query_map([id.0.as_slice()], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let dirty = self
            .transaction
            .query_row(
                "SELECT 1 FROM changes WHERE node = ?1 LIMIT 1",
                [id.0.as_slice()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        let base = match base {
            Some(sealed) => Some(self.open_doc(id, &sealed)?),
            None => None,
        };
        Ok(Some(LocalState {
            ino: ino as u64,
            doc: self.open_doc(id, &sealed)?,
            sealed,
            generation: generation as u64,
            base,
            dirty,
            attempts,
        }))
    }

    fn ino_of(&self, id: &NodeId) -> Result<Option<u64>, StoreError> {
        ino_of(self.transaction, id)
    }

    /// The (directory inode, name) of each link of `doc` whose directory
    /// this store has.
    fn entries_of(&self, doc: &NodeDoc) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        if doc.is_deleted() {
            return Ok(Vec::new());
        }
        let mut entries = Vec::new();
        for (parent, name) in doc.links() {
            if let Some(parent) = self.ino_of(&parent)? {
                entries.push((parent, name.to_vec()));
            }
        }
        Ok(entries)
    }

    fn log_change(&self, id: &NodeId) -> Result<(), StoreError> {
        self.transaction
            .execute("INSERT INTO changes (node) VALUES (?1)", [id.0.as_slice()])?;
        Ok(())
    }

    /// Merges one remote document into the store, untagged, and returns the
    /// nodes to place: the node itself and any conflict copy.
    fn stage(
        &mut self,
        document: &RemoteDocument,
        remote: NodeDoc,
        conflicts: &mut u64,
    ) -> Result<Vec<StagedNode>, StoreError> {
        if document.id == NodeId::ROOT {
            return Ok(Vec::new());
        }
        let local = self.local_state(&document.id)?;
        if let Some(local) = &local {
            // Our own accepted push coming back, or a page re-sent after a retry.
            if document.generation <= local.generation {
                return Ok(Vec::new());
            }
            // A push the server took although its reply was lost: it is the
            // new base, and pending only if the node changed since.
            if local.attempts.contains(&document.sealed) {
                self.transaction.execute(
                    "UPDATE nodes SET generation = ?2, base = ?3 WHERE id = ?1",
                    params![document.id.0, document.generation as i64, document.sealed],
                )?;
                self.transaction.execute(
                    "DELETE FROM attempts WHERE node = ?1",
                    [document.id.0.as_slice()],
                )?;
                if local.sealed == document.sealed {
                    self.transaction.execute(
                        "DELETE FROM changes WHERE node = ?1",
                        [document.id.0.as_slice()],
                    )?;
                }
                return Ok(Vec::new());
            }
        }

        let (doc, conflict_copy, old_entry) = match &local {
            None => (remote.clone(), None, Vec::new()),
            Some(local) if !local.dirty => (remote.clone(), None, self.entries_of(&local.doc)?),
            Some(local) => {
                let merged = merge(local.base.as_ref(), &local.doc, &remote);
                (
                    merged.doc,
                    merged.conflict_copy,
                    self.entries_of(&local.doc)?,
                )
            }
        };

        let mut staged = Vec::new();
        if let Some(mut copy) = conflict_copy {
            copy.name = free_conflict_name(
                self.transaction,
                self.keys,
                &copy.parent,
                &copy.name,
                self.device,
                unix_now(),
            )?;
            copy.extra_links.clear();
            let copy_id = NodeId::random();
            let ino = write_node_tagged(self.transaction, self.keys, &copy_id, &copy, false)?;
            self.log_change(&copy_id)?;
            *conflicts += 1;
            staged.push(StagedNode {
                id: copy_id,
                ino,
                doc: copy,
                logged: true,
                old_entries: Vec::new(),
                local: None,
            });
        }

        let ino = write_node_tagged(self.transaction, self.keys, &document.id, &doc, false)?;
        self.transaction.execute(
            "UPDATE nodes SET generation = ?2, base = ?3, remote_revision = remote_revision + 1
             WHERE id = ?1",
            params![document.id.0, document.generation as i64, document.sealed],
        )?;
        let was_dirty = local.as_ref().is_some_and(|local| local.dirty);
        let logged = if doc != remote {
            if !was_dirty {
                self.log_change(&document.id)?;
            }
            true
        } else {
            self.transaction.execute(
                "DELETE FROM changes WHERE node = ?1",
                [document.id.0.as_slice()],
            )?;
            false
        };
        staged.push(StagedNode {
            id: document.id,
            ino: local.as_ref().map_or(ino, |local| local.ino),
            doc,
            logged,
            old_entries: old_entry,
            local: local.map(|local| local.doc),
        });
        Ok(staged)
    }

    /// Puts a staged node into the name indexes, resolving a name collision
    /// that remains once the whole page is applied.
    fn place(&mut self, mut node: StagedNode) -> Result<AppliedChange, StoreError> {
        let kept = self.keep_child_of_kept_directory(&mut node)?;
        let undone = self.undo_move_into_itself(&mut node)?;
        let renamed = self.place_without_collision(&node.id, &mut node.doc)?;
        write_node(self.transaction, self.keys, &node.id, &node.doc)?;
        if (kept || undone || renamed) && !node.logged {
            self.log_change(&node.id)?;
        }
        let revived = node.local.as_ref().is_some_and(|local| local.is_deleted())
            && node.doc.kind == NodeKind::Directory;
        if revived {
            self.restore_deleted_children(&node.id)?;
        }
        let mut entries = node.old_entries;
        entries.extend(self.entries_of(&node.doc)?);
        Ok(AppliedChange {
            ino: node.ino,
            entries,
        })
    }

    /// Keeps each directory among `deleted` (deleted by this page, alive
    /// here before it, as id, inode and local document) that still has
    /// entries once the whole page is placed: entries added here, or moved
    /// into it by the merge. The kept directory is pushed back. It runs after
    /// placement, so the order of the page does not matter, and it repeats
    /// because a kept directory is itself an entry of its parent.
    fn keep_directories_with_entries(
        &mut self,
        mut deleted: Vec<(NodeId, u64, NodeDoc)>,
    ) -> Result<(), StoreError> {
        loop {
            let mut kept_any = false;
            let mut still_deleted = Vec::new();
            for (id, ino, local) in deleted {
                let current = match sealed_document(self.transaction, &id)? {
                    Some(sealed) => self.open_doc(&id, &sealed)?,
                    None => continue,
                };
                if !current.is_deleted() {
                    continue;
                }
                if !self.has_entries(&id)? {
                    still_deleted.push((id, ino, local));
                    continue;
                }
                log::warn!(
                    "a directory deleted on another device still holds entries here; it was kept"
                );
                let mut doc = local;
                self.place_without_collision(&id, &mut doc)?;
                write_node(self.transaction, self.keys, &id, &doc)?;
                self.log_change(&id)?;
                self.restored.push(AppliedChange {
                    ino,
                    entries: self.entries_of(&doc)?,
                });
                kept_any = true;
            }
            if !kept_any {
                return Ok(());
            }
            deleted = still_deleted;
        }
    }

    fn has_entries(&self, directory: &NodeId) -> Result<bool, StoreError> {
        let tag = self.keys.directory_tag(directory);
        Ok(self
            .transaction
            .query_row(
                "SELECT 1 FROM entries WHERE directory_tag = ?1 LIMIT 1",
                [tag.0.as_slice()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Keeps a node that another device deleted, untouched here, when this
    /// device kept its directory against the same deletion (it moved or
    /// changed the directory): a directory that survives a deletion
    /// survives with what it contains. Returns true when it kept the node.
    ///
    /// NOTE: this finds the directory's deletion only when it was applied no
    /// later than the node's, as within one page of changes. Children whose
    /// deletions arrive in an earlier page than their directory's (a tree
    /// of more than 500 nodes) are still deleted.
    fn keep_child_of_kept_directory(&mut self, node: &mut StagedNode) -> Result<bool, StoreError> {
        let Some(local) = &node.local else {
            return Ok(false);
        };
        if !node.doc.is_deleted() || local.is_deleted() || local.parent == NodeId::ROOT {
            return Ok(false);
        }
        let Some((directory, Some(remote_directory))) =
            sealed_document_and_base(self.transaction, &local.parent)?
        else {
            return Ok(false);
        };
        let directory = self.open_doc(&local.parent, &directory)?;
        let remote_directory = self.open_doc(&local.parent, &remote_directory)?;
        if directory.is_deleted() || !remote_directory.is_deleted() {
            return Ok(false);
        }
        log::warn!(
            "another device deleted a directory that this device kept; its entries were kept too"
        );
        node.doc = local.clone();
        Ok(true)
    }

    /// Brings back the entries of `directory` that this device deleted and
    /// has not pushed yet, after the directory itself came back because
    /// another device changed it: the deletion of a tree lost to that
    /// change as a whole. Restored directories bring back their own entries.
    fn restore_deleted_children(&mut self, directory: &NodeId) -> Result<(), StoreError> {
        // One pass over the pending nodes finds those deleted here, keyed
        // by the directory the server last had them in.
        let rows: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = self
            .transaction
            .prepare_cached(
                "SELECT id, document, base FROM nodes
                 WHERE base IS NOT NULL AND id IN (SELECT node FROM changes)",
            )?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let mut deleted_by_directory: HashMap<NodeId, Vec<(NodeId, NodeDoc)>> = HashMap::new();
        for (id, sealed, base) in rows {
            let Some(id) = NodeId::from_slice(&id) else {
                continue;
            };
            if !self.open_doc(&id, &sealed)?.is_deleted() {
                continue;
            }
            let base = self.open_doc(&id, &base)?;
            if !base.is_deleted() {
                deleted_by_directory
                    .entry(base.parent)
                    .or_default()
                    .push((id, base));
            }
        }

        let mut directories = vec![*directory];
        while let Some(directory) = directories.pop() {
            let children = deleted_by_directory.remove(&directory).unwrap_or_default();
            for (id, mut doc) in children {
                let renamed = self.place_without_collision(&id, &mut doc)?;
                let ino = write_node(self.transaction, self.keys, &id, &doc)?;
                if !renamed {
                    // Back to the version the server has: nothing to push.
                    self.transaction
                        .execute("DELETE FROM changes WHERE node = ?1", [id.0.as_slice()])?;
                }
                if doc.kind == NodeKind::Directory {
                    directories.push(id);
                }
                self.restored.push(AppliedChange {
                    ino,
                    entries: self.entries_of(&doc)?,
                });
            }
        }
        Ok(())
    }

    /// Undoes a remote move of a directory into its own subtree (two
    /// devices moving x into y and y into x), which would cut both off:
    /// the directory keeps its local place. Returns true when it undid one.
    fn undo_move_into_itself(&mut self, node: &mut StagedNode) -> Result<bool, StoreError> {
        if node.doc.kind != NodeKind::Directory {
            return Ok(false);
        }
        let mut current = node.doc.parent;
        // The bound stops a damaged store from looping forever.
        for _ in 0..4096 {
            if current == NodeId::ROOT {
                return Ok(false);
            }
            if current == node.id {
                break;
            }
            let Some(sealed) = sealed_document(self.transaction, &current)? else {
                return Ok(false);
            };
            current = self.open_doc(&current, &sealed)?.parent;
        }
        log::warn!("a remote move would have put a directory inside itself; the move was undone");
        match &node.local {
            Some(local) if !local.is_deleted() => {
                node.doc.parent = local.parent;
                node.doc.name = local.name.clone();
            }
            _ => node.doc.parent = NodeId::ROOT,
        }
        Ok(true)
    }

    /// Makes room for each link of `doc`: when another node holds the name,
    /// the node with the higher id gets a conflict name there, so every device
    /// picks the same one. Returns true when `doc` itself was renamed.
    fn place_without_collision(
        &mut self,
        id: &NodeId,
        doc: &mut NodeDoc,
    ) -> Result<bool, StoreError> {
        if doc.is_deleted() {
            return Ok(false);
        }
        let mut renamed = false;
        let links: Vec<(NodeId, Vec<u8>)> = doc
            .links()
            .into_iter()
            .map(|(parent, name)| (parent, name.to_vec()))
            .collect();
        for (parent, name) in links {
            let tag = self.keys.name_tag(&parent, &name);
            let Some(holder_id) = node_at(self.transaction, &tag)? else {
                continue;
            };
            if holder_id == *id {
                continue;
            }
            let new_name = free_conflict_name(
                self.transaction,
                self.keys,
                &parent,
                &name,
                self.device,
                unix_now(),
            )?;
            if *id > holder_id {
                doc.move_link(&parent, &name, parent, &new_name);
                renamed = true;
                continue;
            }
            let Some(sealed) = sealed_document(self.transaction, &holder_id)? else {
                continue;
            };
            let mut holder_doc = self.open_doc(&holder_id, &sealed)?;
            holder_doc.move_link(&parent, &name, parent, &new_name);
            write_node(self.transaction, self.keys, &holder_id, &holder_doc)?;
            self.log_change(&holder_id)?;
        }
        Ok(renamed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_name_keeps_the_extension() {
        let name = conflict_name(b"report.txt", "laptop", 1_764_880_811);
        assert_eq!(
            String::from_utf8(name).unwrap(),
            "report (conflict laptop 2025-12-04 204011).txt"
        );
    }

    #[test]
    fn conflict_name_of_dotfile_has_no_extension() {
        let name = conflict_name(b".bashrc", "pc", 0);
        assert_eq!(
            String::from_utf8(name).unwrap(),
            ".bashrc (conflict pc 1970-01-01 000000)"
        );
    }

    #[test]
    fn conflict_name_fits_255_bytes() {
        let long = vec![b'x'; 255];
        assert_eq!(conflict_name(&long, "device", 0).len(), 255);
    }
}
