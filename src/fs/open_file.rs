//! The working copy of a file's content while it is open: writes land in
//! block buffers, full blocks go to the store as they fill, and the manifest
//! is committed at flush, fsync or close.

use std::collections::BTreeMap;

use super::error::{FsError, FsResult};
use crate::crypto::NodeId;
use crate::store::{Content, Store, Timestamp};

/// Dirty blocks held in memory before they are sealed into the store even
/// without a flush: 256 blocks, 16 MiB at the default block size.
const MAX_DIRTY_BLOCKS: usize = 256;

/// Largest file size: what fits in a signed 64-bit offset.
const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// The open state of one file, shared by all its handles.
#[derive(Debug)]
pub struct OpenFile {
    pub id: NodeId,
    pub handles: u32,
    /// Handles opened for writing; while any is open, remote changes do
    /// not replace the working copy.
    pub writers: u32,
    pub content: Content,
    pub mtime: Timestamp,
    /// Blocks written since the last commit, by index; shorter than a block
    /// where the file ends inside it.
    dirty_blocks: BTreeMap<u64, Vec<u8>>,
    /// True when `content` or `mtime` differ from what was last committed.
    pub dirty: bool,
    /// Content as of open or the last commit, to tell a concurrent remote
    /// change from our own.
    pub committed_content: Content,
    /// The node's remote revision as of open or the last commit.
    pub remote_revision: u64,
}

impl OpenFile {
    pub fn new(id: NodeId, content: Content, mtime: Timestamp, remote_revision: u64) -> Self {
        OpenFile {
            id,
            handles: 0,
            writers: 0,
            committed_content: content.clone(),
            content,
            mtime,
            dirty_blocks: BTreeMap::new(),
            dirty: false,
            remote_revision,
        }
    }

    /// Bytes buffered in blocks not sealed yet.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_blocks
            .values()
            .map(|buffer| buffer.len() as u64)
            .sum()
    }

    fn block_size(&self) -> u64 {
        self.content.block_size as u64
    }

    /// The current plaintext of block `index` as far as the file's size
    /// reaches into it; holes and bytes never written read as zeros.
    fn block(&self, store: &mut Store, index: u64) -> FsResult<Vec<u8>> {
        let len = self.content.block_len(index);
        let mut data = match self.dirty_blocks.get(&index) {
            Some(buffer) => buffer.clone(),
            None => match self.content.blocks.get(&index) {
                Some(id) => store.read_block(id)?.as_ref().clone(),
                None => Vec::new(),
            },
        };
        data.resize(len, 0);
        Ok(data)
    }

    pub fn read(&self, store: &mut Store, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let end = (offset + size as u64).min(self.content.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let block_size = self.block_size();
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut position = offset;
        while position < end {
            let index = position / block_size;
            let block_start = index * block_size;
            let block = self.block(store, index)?;
            let from = (position - block_start) as usize;
            let to = ((end - block_start) as usize).min(block.len());
            out.extend_from_slice(&block[from..to]);
            position = block_start + to as u64;
        }
        Ok(out)
    }

    pub fn write(&mut self, store: &mut Store, offset: u64, data: &[u8]) -> FsResult<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= MAX_FILE_SIZE)
            .ok_or(FsError::TooLarge)?;
        if data.is_empty() {
            return Ok(());
        }
        if end > self.content.size {
            self.resize_manifest(end);
        }

        let block_size = self.block_size();
        let mut position = offset;
        while position < end {
            let index = position / block_size;
            let block_start = index * block_size;
            let from = (position - block_start) as usize;
            let to = ((end - block_start).min(block_size)) as usize;
            let source =
                &data[(position - offset) as usize..(block_start + to as u64 - offset) as usize];

            let mut buffer = match self.dirty_blocks.remove(&index) {
                Some(buffer) => buffer,
                None => self.stored_block(store, index)?,
            };
            if buffer.len() < to {
                buffer.resize(to, 0);
            }
            buffer[from..to].copy_from_slice(source);

            // A write that reaches the end of a full block seals it now, so a
            // large sequential write never piles up in memory.
            if to as u64 == block_size && buffer.len() as u64 == block_size {
                let id = store.put_block(&buffer)?;
                self.content.blocks.insert(index, id);
            } else {
                self.dirty_blocks.insert(index, buffer);
            }
            position = block_start + to as u64;
        }

        self.content.size = self.content.size.max(end);
        self.mtime = Timestamp::now();
        self.dirty = true;
        if self.dirty_blocks.len() > MAX_DIRTY_BLOCKS {
            self.seal_dirty_blocks(store)?;
        }
        Ok(())
    }

    /// The stored plaintext of block `index`, or empty for a hole.
    fn stored_block(&self, store: &mut Store, index: u64) -> FsResult<Vec<u8>> {
        match self.content.blocks.get(&index) {
            Some(id) => Ok(store.read_block(id)?.as_ref().clone()),
            None => Ok(Vec::new()),
        }
    }

    fn resize_manifest(&mut self, size: u64) {
        let count = size.div_ceil(self.block_size());
        self.content.blocks.split_off(&count);
    }

    pub fn truncate(&mut self, store: &mut Store, size: u64) -> FsResult<()> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::TooLarge);
        }
        if size < self.content.size {
            let block_size = self.block_size();
            let kept = size.div_ceil(block_size);
            self.dirty_blocks.retain(|&index, _| index < kept);
            let tail = (size % block_size) as usize;
            if tail != 0 {
                // Cut the last block, so bytes past the new end read as zeros
                // if the file grows again.
                let index = kept - 1;
                let mut buffer = match self.dirty_blocks.remove(&index) {
                    Some(buffer) => buffer,
                    None => self.stored_block(store, index)?,
                };
                buffer.truncate(tail);
                self.dirty_blocks.insert(index, buffer);
            }
        }
        self.content.size = size;
        self.resize_manifest(size);
        self.mtime = Timestamp::now();
        self.dirty = true;
        Ok(())
    }

    /// Zeros `length` bytes from `offset` (fallocate PUNCH_HOLE): whole
    /// blocks become holes, partial ones are rewritten with zeros.
    pub fn punch_hole(&mut self, store: &mut Store, offset: u64, length: u64) -> FsResult<()> {
        let end = offset.saturating_add(length).min(self.content.size);
        let block_size = self.block_size();
        let mut position = offset;
        while position < end {
            let index = position / block_size;
            let block_start = index * block_size;
            let from = (position - block_start) as usize;
            let to = ((end - block_start).min(block_size)) as usize;
            if from == 0 && to as u64 == block_size.min(self.content.size - block_start) {
                self.dirty_blocks.remove(&index);
                self.content.blocks.remove(&index);
            } else {
                let mut buffer = match self.dirty_blocks.remove(&index) {
                    Some(buffer) => buffer,
                    None => self.stored_block(store, index)?,
                };
                let zero_to = to.min(buffer.len());
                if from < zero_to {
                    buffer[from..zero_to].fill(0);
                }
                self.dirty_blocks.insert(index, buffer);
            }
            position = block_start + to as u64;
        }
        self.mtime = Timestamp::now();
        self.dirty = true;
        Ok(())
    }

    /// Grows the file to `size` with a hole, if it is smaller (fallocate
    /// without KEEP_SIZE; syn stores files sparse, so nothing is reserved).
    pub fn extend_to(&mut self, size: u64) -> FsResult<()> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::TooLarge);
        }
        if size > self.content.size {
            self.content.size = size;
            self.resize_manifest(size);
            self.dirty = true;
        }
        Ok(())
    }

    fn is_data(&self, index: u64) -> bool {
        self.dirty_blocks.contains_key(&index) || self.content.blocks.contains_key(&index)
    }

    /// The offset of the first data (`data` true) or hole at or after
    /// `offset`, at block granularity, as lseek SEEK_DATA and SEEK_HOLE
    /// return it. The end of the file counts as a hole.
    pub fn seek(&self, offset: u64, data: bool) -> FsResult<u64> {
        let size = self.content.size;
        if offset >= size {
            return Err(FsError::NoSuchOffset);
        }
        let block_size = self.block_size();
        let first = offset / block_size;
        if data {
            // The first data block is the smaller of the next stored and the
            // next buffered block; holes are never visited one by one.
            let stored = self
                .content
                .blocks
                .range(first..)
                .next()
                .map(|(&index, _)| index);
            let buffered = self
                .dirty_blocks
                .range(first..)
                .next()
                .map(|(&index, _)| index);
            let index = match (stored, buffered) {
                (Some(a), Some(b)) => a.min(b),
                (Some(index), None) | (None, Some(index)) => index,
                (None, None) => return Err(FsError::NoSuchOffset),
            };
            return Ok((index * block_size).max(offset).min(size));
        }
        // Data blocks are few next to a sparse file's holes, so walking past
        // consecutive data blocks is bounded by the data.
        let mut index = first;
        while index < self.content.block_count() && self.is_data(index) {
            index += 1;
        }
        Ok((index * block_size).max(offset).min(size))
    }

    /// Seals every dirty block into the store and records it in the manifest.
    pub fn seal_dirty_blocks(&mut self, store: &mut Store) -> FsResult<()> {
        // A buffer leaves the map only once it is sealed, so a failure (a
        // full disk) keeps the rest for the next attempt.
        while let Some((&index, buffer)) = self.dirty_blocks.first_key_value() {
            if buffer.iter().all(|&byte| byte == 0) || index >= self.content.block_count() {
                self.content.blocks.remove(&index);
            } else {
                let id = store.put_block(buffer)?;
                self.content.blocks.insert(index, id);
            }
            self.dirty_blocks.remove(&index);
        }
        Ok(())
    }
}
