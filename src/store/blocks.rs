//! Sealed blocks of file content, stored once per block id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Store, StoreError};
use crate::crypto::{BlockId, NodeId};

/// Free space that new blocks leave on the store's disk: deleting files and
/// committing metadata need room in SQLite's WAL, so content writes fail
/// with "disk full" before the disk is truly full.
const RESERVED_BYTES: u64 = 8 * 1024 * 1024;

/// Decrypted blocks kept in memory: 64 blocks, 4 MiB at the default block size.
const CACHE_BLOCKS: usize = 64;

/// A small FIFO cache of decrypted blocks, so that small reads within one
/// block decrypt it once.
#[derive(Default)]
pub(super) struct BlockCache {
    blocks: HashMap<BlockId, Arc<Vec<u8>>>,
    order: VecDeque<BlockId>,
}

impl BlockCache {
    fn get(&self, id: &BlockId) -> Option<Arc<Vec<u8>>> {
        self.blocks.get(id).cloned()
    }

    fn insert(&mut self, id: BlockId, plaintext: Arc<Vec<u8>>) {
        if self.blocks.insert(id, plaintext).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > CACHE_BLOCKS {
            if let Some(oldest) = self.order.pop_front() {
                self.blocks.remove(&oldest);
            }
        }
    }
}

impl Store {
    /// Seals and stores a block; storing the same content twice is a no-op.
    pub fn put_block(&mut self, plaintext: &[u8]) -> Result<BlockId, StoreError> {
        if self.available_bytes()? < RESERVED_BYTES + plaintext.len() as u64 {
            return Err(StoreError::DiskFull);
        }
        let (id, sealed) = self.keys.seal_block(plaintext);
        self.connection.execute(
            "INSERT OR IGNORE INTO blocks (id, data) VALUES (?1, ?2)",
            params![id.0, sealed],
        )?;
        self.block_cache.insert(id, Arc::new(plaintext.to_vec()));
        Ok(id)
    }

    /// Bytes the store can still grow by: free space on its disk plus the
    /// free pages inside the database, which SQLite reuses first.
    fn available_bytes(&self) -> Result<u64, StoreError> {
        let free_pages: i64 = self
            .connection
            .query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
        let page_size: i64 = self
            .connection
            .query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let inside = (free_pages.max(0) as u64).saturating_mul(page_size.max(0) as u64);
        let on_disk = match self.disk_space() {
            Ok(space) => space.f_bavail.saturating_mul(space.f_frsize),
            Err(_) => u64::MAX,
        };
        Ok(on_disk.saturating_add(inside))
    }

    /// Reads and opens a block; a missing block is a corrupt store.
    pub fn read_block(&mut self, id: &BlockId) -> Result<Arc<Vec<u8>>, StoreError> {
        if let Some(plaintext) = self.block_cache.get(id) {
            return Ok(plaintext);
        }
        let sealed = self.sealed_block(id)?.ok_or_else(|| StoreError::Corrupt {
            path: self.dir.clone(),
            reason: format!("block {} is missing", id.to_hex()),
        })?;
        let plaintext = Arc::new(self.keys.open_block(id, &sealed)?);
        self.block_cache.insert(*id, plaintext.clone());
        Ok(plaintext)
    }

    pub fn sealed_block(&self, id: &BlockId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .connection
            .query_row(
                "SELECT data FROM blocks WHERE id = ?1",
                [id.0.as_slice()],
                |row| row.get(0),
            )
            .optional()?)
    }

    pub fn has_block(&self, id: &BlockId) -> Result<bool, StoreError> {
        Ok(self
            .connection
            .query_row(
                "SELECT 1 FROM blocks WHERE id = ?1",
                [id.0.as_slice()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Stores a block fetched from the server after checking that it opens
    /// and matches its id.
    pub fn insert_fetched_block(&mut self, id: &BlockId, sealed: &[u8]) -> Result<(), StoreError> {
        let plaintext = self.keys.open_block(id, sealed)?;
        self.connection.execute(
            "INSERT OR IGNORE INTO blocks (id, data, uploaded) VALUES (?1, ?2, 1)",
            params![id.0, sealed],
        )?;
        self.block_cache.insert(*id, Arc::new(plaintext));
        Ok(())
    }

    /// Of `ids`, those whose upload the server has not confirmed.
    pub fn blocks_not_uploaded(&self, ids: &[BlockId]) -> Result<Vec<BlockId>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT uploaded FROM blocks WHERE id = ?1")?;
        let mut result = Vec::new();
        for id in ids {
            let uploaded: Option<i64> = statement
                .query_row([id.0.as_slice()], |row| row.get(0))
                .optional()?;
            if uploaded == Some(0) {
                result.push(*id);
            }
        }
        Ok(result)
    }

    pub fn mark_uploaded(&self, ids: &[BlockId]) -> Result<(), StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("UPDATE blocks SET uploaded = 1 WHERE id = ?1")?;
        for id in ids {
            statement.execute([id.0.as_slice()])?;
        }
        Ok(())
    }
}

impl Store {
    /// Deletes the blocks that no node's manifest refers to: leftovers of
    /// overwritten content, and blocks sealed for a write that never
    /// committed (a crash, a full disk). Returns how many were deleted.
    /// Only safe while no file is open, so the daemon runs it before mounting.
    pub fn collect_garbage(&mut self) -> Result<usize, StoreError> {
        let mut referenced = HashSet::new();
        {
            let mut statement = self.connection.prepare("SELECT id, document FROM nodes")?;
            let rows = statement.query_map([], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
            })?;
            for row in rows {
                let (id, sealed) = row?;
                let id = NodeId::from_slice(&id).ok_or_else(|| StoreError::Corrupt {
                    path: self.dir.clone(),
                    reason: "a node id has the wrong length".into(),
                })?;
                let doc = self.open_row(id, 0, &sealed, 0)?.doc;
                referenced.extend(doc.content.blocks.into_values());
            }
        }

        let stored: Vec<Vec<u8>> = self
            .connection
            .prepare("SELECT id FROM blocks")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut deleted = 0;
        for id in stored {
            let unused = BlockId::from_slice(&id).is_none_or(|block| !referenced.contains(&block));
            if unused {
                transaction.execute("DELETE FROM blocks WHERE id = ?1", [id.as_slice()])?;
                deleted += 1;
            }
        }
        transaction.commit()?;
        self.block_cache = BlockCache::default();
        if deleted > 0 {
            self.connection.execute_batch("PRAGMA incremental_vacuum")?;
        }
        Ok(deleted)
    }
}
