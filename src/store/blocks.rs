//! Sealed blocks of file content, stored once per block id.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};
use crate::crypto::BlockId;

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
        let (id, sealed) = self.keys.seal_block(plaintext);
        self.connection.execute(
            "INSERT OR IGNORE INTO blocks (id, data) VALUES (?1, ?2)",
            params![id.0, sealed],
        )?;
        self.block_cache.insert(id, Arc::new(plaintext.to_vec()));
        Ok(id)
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
