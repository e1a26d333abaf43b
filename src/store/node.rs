//! The plaintext of a node's document: what a node is, where it sits, its
//! attributes and its content manifest. It exists only in memory; the store
//! and the server hold it sealed.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::crypto::{BlockId, NodeId};

/// Stored in place of the uid or gid of the user who mounts, so that a file
/// of the vault's owner shows as owned by whoever mounts on each device.
pub const VAULT_OWNER: u32 = u32::MAX;

/// Version of the serialized document, its first byte, so later versions can
/// add fields and still read old documents.
const DOCUMENT_FORMAT: u8 = 1;

/// Block size of new files: 64 KiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    File,
    Directory,
    Symlink,
    /// Named pipes, sockets and device nodes: metadata only, no content.
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    /// A deleted node: its document stays so the deletion syncs.
    Deleted,
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        Timestamp::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Timestamp {
                seconds: after.as_secs() as i64,
                nanos: after.subsec_nanos(),
            },
            Err(before) => {
                let before = before.duration();
                let mut seconds = -(before.as_secs() as i64);
                let mut nanos = before.subsec_nanos();
                if nanos > 0 {
                    seconds -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { seconds, nanos }
            }
        }
    }

    pub fn to_system_time(self) -> SystemTime {
        let nanos = std::time::Duration::new(0, self.nanos.min(999_999_999));
        if self.seconds >= 0 {
            UNIX_EPOCH + std::time::Duration::from_secs(self.seconds as u64) + nanos
        } else {
            UNIX_EPOCH - std::time::Duration::from_secs(self.seconds.unsigned_abs()) + nanos
        }
    }
}

/// A file's bytes: its size and the blocks that hold them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Content {
    pub size: u64,
    pub block_size: u32,
    /// Block ids by block index; a missing index is a hole that reads as
    /// zeros, so a sparse file costs nothing for its holes.
    pub blocks: BTreeMap<u64, BlockId>,
}

impl Content {
    pub fn empty() -> Self {
        Content {
            size: 0,
            block_size: DEFAULT_BLOCK_SIZE,
            blocks: BTreeMap::new(),
        }
    }

    /// Length of block `index`'s plaintext for the current size.
    pub fn block_len(&self, index: u64) -> usize {
        let start = index * self.block_size as u64;
        self.size.saturating_sub(start).min(self.block_size as u64) as usize
    }

    pub fn block_count(&self) -> u64 {
        self.size.div_ceil(self.block_size as u64)
    }
}

/// The decrypted document of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDoc {
    pub kind: NodeKind,
    pub parent: NodeId,
    /// Raw bytes of the name: any byte string without '/' or NUL.
    pub name: Vec<u8>,
    /// Further hard links of a file, as (directory, name), beside the
    /// primary one above.
    pub extra_links: Vec<(NodeId, Vec<u8>)>,
    /// Permission bits (07777), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// File content; empty for other kinds.
    pub content: Content,
    /// Symlink target; empty for other kinds.
    pub target: Vec<u8>,
    /// Device number of a device node; 0 for other kinds.
    pub rdev: u32,
    /// Extended attributes by full name (such as `user.comment`).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl NodeDoc {
    pub fn new(kind: NodeKind, parent: NodeId, name: &[u8], mode: u32, uid: u32, gid: u32) -> Self {
        let now = Timestamp::now();
        NodeDoc {
            kind,
            parent,
            name: name.to_vec(),
            extra_links: Vec::new(),
            mode: mode & 0o7777,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            content: Content::empty(),
            target: Vec::new(),
            rdev: 0,
            xattrs: BTreeMap::new(),
        }
    }

    /// The document of a deleted node: every field blank, so a deletion
    /// reveals nothing of what was deleted.
    pub fn tombstone() -> Self {
        NodeDoc {
            kind: NodeKind::Deleted,
            parent: NodeId::ROOT,
            name: Vec::new(),
            extra_links: Vec::new(),
            mode: 0,
            uid: 0,
            gid: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            content: Content::default(),
            target: Vec::new(),
            rdev: 0,
            xattrs: BTreeMap::new(),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.kind == NodeKind::Deleted
    }

    /// Every (directory, name) that names this node, the primary link first.
    pub fn links(&self) -> Vec<(NodeId, &[u8])> {
        let mut links = vec![(self.parent, self.name.as_slice())];
        links.extend(
            self.extra_links
                .iter()
                .map(|(parent, name)| (*parent, name.as_slice())),
        );
        links
    }

    pub fn has_link(&self, parent: &NodeId, name: &[u8]) -> bool {
        self.links()
            .iter()
            .any(|(link_parent, link_name)| link_parent == parent && *link_name == name)
    }

    pub fn link_count(&self) -> u32 {
        1 + self.extra_links.len() as u32
    }

    /// Removes the link (`parent`, `name`); when it was the primary one, the
    /// first extra link takes its place. Returns false when it was the last.
    pub fn remove_link(&mut self, parent: &NodeId, name: &[u8]) -> bool {
        if self.parent == *parent && self.name == name {
            if self.extra_links.is_empty() {
                return false;
            }
            let (new_parent, new_name) = self.extra_links.remove(0);
            self.parent = new_parent;
            self.name = new_name;
            return true;
        }
        self.extra_links
            .retain(|(link_parent, link_name)| !(link_parent == parent && link_name == name));
        true
    }

    /// Points the link (`parent`, `name`) at (`new_parent`, `new_name`).
    pub fn move_link(&mut self, parent: &NodeId, name: &[u8], new_parent: NodeId, new_name: &[u8]) {
        if self.parent == *parent && self.name == name {
            self.parent = new_parent;
            self.name = new_name.to_vec();
            return;
        }
        for link in &mut self.extra_links {
            if link.0 == *parent && link.1 == name {
                *link = (new_parent, new_name.to_vec());
                return;
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![DOCUMENT_FORMAT];
        bytes.extend(postcard::to_stdvec(self).expect("a node document always serializes"));
        bytes
    }

    /// Parses a document, or `None` for bytes of an unknown format.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (&format, rest) = bytes.split_first()?;
        if format != DOCUMENT_FORMAT {
            return None;
        }
        postcard::from_bytes(rest).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_before_epoch_round_trip() {
        for (seconds, nanos) in [(-1, 500), (0, 1), (1_700_000_000, 999_999_999), (-5, 0)] {
            let stamp = Timestamp { seconds, nanos };
            assert_eq!(Timestamp::from_system_time(stamp.to_system_time()), stamp);
        }
    }

    #[test]
    fn block_len_of_last_partial_block() {
        let content = Content {
            size: 100_000,
            block_size: 65536,
            blocks: BTreeMap::new(),
        };
        assert_eq!(content.block_count(), 2);
        assert_eq!(content.block_len(0), 65536);
        assert_eq!(content.block_len(1), 100_000 - 65536);
        assert_eq!(content.block_len(2), 0);
    }
}
