//! The file system core: POSIX operations on the store by inode number,
//! knowing nothing of FUSE. [`fuse`] adapts it to the kernel.
//!
//! Locks: `state` (open files and handles) is always taken before the store,
//! and the sync task takes only the store, so the two never deadlock.

mod error;
pub mod fuse;
mod open_file;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::crypto::NodeId;
use crate::store::{NodeDoc, NodeKind, NodeRow, ROOT_INO, Store, Timestamp, VAULT_OWNER};

pub use error::{FsError, FsResult};
use open_file::OpenFile;

/// Longest name Linux file systems accept, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Largest extended attribute value, and longest name, that Linux accepts.
const MAX_XATTR_VALUE_BYTES: usize = 64 * 1024;
const MAX_XATTR_NAME_BYTES: usize = 255;

/// Extended attribute namespace that syn stores; others are unsupported.
const USER_XATTR_PREFIX: &[u8] = b"user.";

/// How `setxattr` treats an existing attribute (XATTR_CREATE, XATTR_REPLACE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrMode {
    Either,
    Create,
    Replace,
}

/// The store shared by the file system and the sync task.
pub type SharedStore = Arc<Mutex<Store>>;

/// Locks the store; a panic in another thread while holding it leaves the
/// store itself consistent (SQLite transactions roll back), so the poison is
/// ignored.
pub fn lock_store(store: &SharedStore) -> MutexGuard<'_, Store> {
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The attributes of a node as `stat` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    pub size: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub rdev: u32,
    /// Bytes that hold data, so a sparse file's holes count as free (an
    /// estimate at block granularity).
    pub allocated: u64,
}

/// Changes requested by `setattr`; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: NodeKind,
    pub name: Vec<u8>,
}

/// Numbers for `statfs`, taken from the disk that holds the store.
#[derive(Debug, Clone)]
pub struct FsStats {
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub block_size: u32,
}

/// What kind of node `create_node` makes, with its kind-specific fields.
struct NewNode<'a> {
    kind: NodeKind,
    mode: u32,
    target: &'a [u8],
    rdev: u32,
}

impl NewNode<'_> {
    fn plain(kind: NodeKind, mode: u32) -> Self {
        NewNode {
            kind,
            mode,
            target: b"",
            rdev: 0,
        }
    }
}

/// The caller of an operation that creates a node: its uid and gid.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Default)]
struct FsState {
    open_files: HashMap<u64, OpenFile>,
    /// Open file handles: the inode, and whether the handle may write.
    file_handles: HashMap<u64, (u64, bool)>,
    /// Open directories: their inode and the snapshot of their entries.
    directory_handles: HashMap<u64, (u64, Vec<DirEntry>)>,
    next_handle: u64,
}

impl FsState {
    fn new_handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }
}

/// A directory's document with mtime and ctime set to `now`, as an entry
/// in it was added, removed or renamed.
fn touch(directory: &NodeDoc, now: Timestamp) -> NodeDoc {
    let mut touched = directory.clone();
    touched.mtime = now;
    touched.ctime = now;
    touched
}

/// The mounted file system over one store.
pub struct FsCore {
    store: SharedStore,
    state: Mutex<FsState>,
    /// uid and gid of the user who mounts, shown for the vault owner.
    owner: Caller,
    /// Called after every committed change, to wake the sync task.
    on_change: Box<dyn Fn() + Send + Sync>,
}

impl FsCore {
    pub fn new(store: SharedStore, owner: Caller, on_change: Box<dyn Fn() + Send + Sync>) -> Self {
        FsCore {
            store,
            state: Mutex::new(FsState::default()),
            owner,
            on_change,
        }
    }

    fn state(&self) -> MutexGuard<'_, FsState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock_store(&self.store)
    }

    fn to_stored_owner(&self, caller: Caller) -> (u32, u32) {
        let uid = if caller.uid == self.owner.uid {
            VAULT_OWNER
        } else {
            caller.uid
        };
        let gid = if caller.gid == self.owner.gid {
            VAULT_OWNER
        } else {
            caller.gid
        };
        (uid, gid)
    }

    fn attr_of(&self, state: &FsState, store: &Store, row: &NodeRow) -> FsResult<Attr> {
        let doc = &row.doc;
        let stored = |content: &crate::store::Content| {
            (content.blocks.len() as u64 * content.block_size as u64).min(content.size)
        };
        let allocated = match state.open_files.get(&row.ino) {
            Some(open) => (stored(&open.content) + open.dirty_bytes()).min(open.content.size),
            None if doc.kind == NodeKind::File => stored(&doc.content),
            None => 0,
        };
        let (size, mtime) = match state.open_files.get(&row.ino) {
            Some(open) => (open.content.size, open.mtime),
            None => match doc.kind {
                NodeKind::Symlink => (doc.target.len() as u64, doc.mtime),
                NodeKind::Directory => (4096, doc.mtime),
                _ => (doc.content.size, doc.mtime),
            },
        };
        let shown = |stored: u32, owner: u32| if stored == VAULT_OWNER { owner } else { stored };
        Ok(Attr {
            ino: row.ino,
            kind: doc.kind,
            size,
            mode: doc.mode,
            nlink: Self::link_count(store, row)?,
            uid: shown(doc.uid, self.owner.uid),
            gid: shown(doc.gid, self.owner.gid),
            atime: doc.atime,
            mtime,
            ctime: doc.ctime,
            rdev: doc.rdev,
            allocated: if doc.kind == NodeKind::File {
                allocated
            } else {
                size
            },
        })
    }

    /// The number of names of a file; for a directory 2 plus its
    /// subdirectories, as on ext4.
    ///
    /// NOTE: this decrypts every child of the directory on each call; an
    /// encrypted per-directory count would make it constant time.
    fn link_count(store: &Store, row: &NodeRow) -> FsResult<u32> {
        if row.doc.kind != NodeKind::Directory {
            return Ok(row.doc.link_count());
        }
        let children = store.children(&row.id)?;
        let subdirectories = children
            .iter()
            .filter(|(_, child)| child.doc.kind == NodeKind::Directory)
            .count();
        Ok(2 + subdirectories as u32)
    }

    fn live_node(store: &Store, ino: u64) -> FsResult<NodeRow> {
        match store.node_by_ino(ino)? {
            Some(row) if !row.doc.is_deleted() => Ok(row),
            _ => Err(FsError::NotFound),
        }
    }

    fn directory(store: &Store, ino: u64) -> FsResult<NodeRow> {
        let row = Self::live_node(store, ino)?;
        if row.doc.kind != NodeKind::Directory {
            return Err(FsError::NotDirectory);
        }
        Ok(row)
    }

    fn check_name(name: &[u8]) -> FsResult<()> {
        if name.len() > MAX_NAME_BYTES {
            return Err(FsError::NameTooLong);
        }
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(FsError::InvalidArgument);
        }
        Ok(())
    }

    fn changed(&self) {
        (self.on_change)();
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        if name.len() > MAX_NAME_BYTES {
            return Err(FsError::NameTooLong);
        }
        let state = self.state();
        let store = self.store();
        let directory = Self::directory(&store, parent)?;
        let row = store
            .lookup(&directory.id, name)?
            .ok_or(FsError::NotFound)?;
        self.attr_of(&state, &store, &row)
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let state = self.state();
        let store = self.store();
        if let Some(open) = state.open_files.get(&ino) {
            // A file unlinked while open is still there for its handles.
            if let Some(row) = store.node(&open.id)? {
                let mut attr = self.attr_of(&state, &store, &row)?;
                if row.doc.is_deleted() {
                    attr.kind = NodeKind::File;
                    attr.nlink = 0;
                }
                return Ok(attr);
            }
        }
        let row = Self::live_node(&store, ino)?;
        self.attr_of(&state, &store, &row)
    }

    fn create_node(
        &self,
        parent: u64,
        name: &[u8],
        new: NewNode<'_>,
        caller: Caller,
    ) -> FsResult<Attr> {
        let NewNode {
            kind,
            mode,
            target,
            rdev,
        } = new;
        Self::check_name(name)?;
        let state = self.state();
        let mut store = self.store();
        let directory = Self::directory(&store, parent)?;
        if store.lookup(&directory.id, name)?.is_some() {
            return Err(FsError::Exists);
        }

        let (uid, mut gid) = self.to_stored_owner(caller);
        let mut mode = mode & 0o7777;
        // A setgid directory passes its group on, and its setgid bit to subdirectories.
        if directory.doc.mode & libc::S_ISGID != 0 {
            gid = directory.doc.gid;
            if kind == NodeKind::Directory {
                mode |= libc::S_ISGID;
            }
        }
        let mut doc = NodeDoc::new(kind, directory.id, name, mode, uid, gid);
        doc.target = target.to_vec();
        doc.rdev = rdev;
        let id = NodeId::random();

        let touched = touch(&directory.doc, doc.mtime);
        let inos = store.commit(&[(id, &doc), (directory.id, &touched)])?;
        let row = NodeRow {
            id,
            ino: inos[0],
            doc,
            remote_revision: 0,
        };
        let attr = self.attr_of(&state, &store, &row)?;
        drop(store);
        self.changed();
        Ok(attr)
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, caller: Caller) -> FsResult<Attr> {
        self.create_node(
            parent,
            name,
            NewNode::plain(NodeKind::Directory, mode),
            caller,
        )
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> FsResult<Attr> {
        if target.is_empty() || target.len() > 4096 {
            return Err(FsError::InvalidArgument);
        }
        self.create_node(
            parent,
            name,
            NewNode {
                kind: NodeKind::Symlink,
                mode: 0o777,
                target,
                rdev: 0,
            },
            caller,
        )
    }

    /// Creates a regular file, a named pipe, a socket or a device node from
    /// `mode`'s file type. Special files are metadata only.
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        let kind = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => NodeKind::File,
            libc::S_IFIFO => NodeKind::Fifo,
            libc::S_IFSOCK => NodeKind::Socket,
            libc::S_IFCHR => NodeKind::CharDevice,
            libc::S_IFBLK => NodeKind::BlockDevice,
            _ => return Err(FsError::InvalidArgument),
        };
        let rdev = if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
            rdev
        } else {
            0
        };
        self.create_node(
            parent,
            name,
            NewNode {
                kind,
                mode,
                target: b"",
                rdev,
            },
            caller,
        )
    }

    /// Creates a file and opens it; returns its attributes and handle.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        caller: Caller,
    ) -> FsResult<(Attr, u64)> {
        let attr = self.create_node(parent, name, NewNode::plain(NodeKind::File, mode), caller)?;
        let handle = self.open(attr.ino, true)?;
        Ok((attr, handle))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let store = self.store();
        let row = Self::live_node(&store, ino)?;
        if row.doc.kind != NodeKind::Symlink {
            return Err(FsError::InvalidArgument);
        }
        Ok(row.doc.target)
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &[u8], directory_expected: bool) -> FsResult<()> {
        if name.len() > MAX_NAME_BYTES {
            return Err(FsError::NameTooLong);
        }
        let _state = self.state();
        let mut store = self.store();
        let directory = Self::directory(&store, parent)?;
        let row = store
            .lookup(&directory.id, name)?
            .ok_or(FsError::NotFound)?;
        let is_directory = row.doc.kind == NodeKind::Directory;
        match (directory_expected, is_directory) {
            (true, false) => return Err(FsError::NotDirectory),
            (false, true) => return Err(FsError::IsDirectory),
            _ => {}
        }
        if is_directory && store.has_children(&row.id)? {
            return Err(FsError::NotEmpty);
        }
        let now = Timestamp::now();
        let mut remaining = row.doc.clone();
        let doc = if remaining.remove_link(&directory.id, name) {
            remaining.ctime = now;
            remaining
        } else {
            NodeDoc::tombstone()
        };
        let touched = touch(&directory.doc, now);
        store.commit(&[(row.id, &doc), (directory.id, &touched)])?;
        drop(store);
        self.changed();
        Ok(())
    }

    /// Adds the hard link `new_name` in `new_parent` to the file `ino`.
    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<Attr> {
        Self::check_name(new_name)?;
        let state = self.state();
        let mut store = self.store();
        let row = Self::live_node(&store, ino)?;
        if row.doc.kind == NodeKind::Directory {
            return Err(FsError::NotPermitted);
        }
        let directory = Self::directory(&store, new_parent)?;
        if store.lookup(&directory.id, new_name)?.is_some() {
            return Err(FsError::Exists);
        }

        let now = Timestamp::now();
        let mut doc = row.doc.clone();
        doc.extra_links.push((directory.id, new_name.to_vec()));
        doc.ctime = now;
        let touched = touch(&directory.doc, now);
        store.commit(&[(row.id, &doc), (directory.id, &touched)])?;
        let linked = NodeRow { doc, ..row };
        let attr = self.attr_of(&state, &store, &linked)?;
        drop(store);
        self.changed();
        Ok(attr)
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent`, replacing
    /// what is there as POSIX rename does. `no_replace` and `exchange` are the
    /// RENAME_NOREPLACE and RENAME_EXCHANGE flags.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        no_replace: bool,
        exchange: bool,
    ) -> FsResult<()> {
        if name.len() > MAX_NAME_BYTES {
            return Err(FsError::NameTooLong);
        }
        Self::check_name(new_name)?;
        let _state = self.state();
        let mut store = self.store();
        let from_directory = Self::directory(&store, parent)?;
        let to_directory = Self::directory(&store, new_parent)?;
        let source = store
            .lookup(&from_directory.id, name)?
            .ok_or(FsError::NotFound)?;
        let target = store.lookup(&to_directory.id, new_name)?;

        if source.doc.kind == NodeKind::Directory {
            Self::check_not_into_itself(&store, &source.id, &to_directory.id)?;
        }
        if let Some(target) = &target {
            if target.id == source.id {
                return Ok(());
            }
        }

        let now = Timestamp::now();
        let mut moved = source.doc.clone();
        moved.move_link(&from_directory.id, name, to_directory.id, new_name);
        moved.ctime = now;

        let changes: Vec<(NodeId, NodeDoc)> = match (target, exchange) {
            (None, true) => return Err(FsError::NotFound),
            (Some(target), true) => {
                if target.doc.kind == NodeKind::Directory {
                    Self::check_not_into_itself(&store, &target.id, &from_directory.id)?;
                }
                let mut swapped = target.doc.clone();
                swapped.move_link(&to_directory.id, new_name, from_directory.id, name);
                swapped.ctime = now;
                // Move the target aside first, so the tags never collide.
                let mut aside = target.doc.clone();
                let aside_name =
                    store.free_conflict_name(&to_directory.id, new_name, "exchange", 0)?;
                aside.move_link(&to_directory.id, new_name, to_directory.id, &aside_name);
                vec![(target.id, aside), (source.id, moved), (target.id, swapped)]
            }
            (Some(_), false) if no_replace => return Err(FsError::Exists),
            (Some(target), false) => {
                Self::check_replaceable(&store, &source, &target)?;
                // The target loses this name; with other hard links it lives on.
                let mut replaced = target.doc.clone();
                let replaced = if replaced.remove_link(&to_directory.id, new_name) {
                    replaced.ctime = now;
                    replaced
                } else {
                    NodeDoc::tombstone()
                };
                vec![(target.id, replaced), (source.id, moved)]
            }
            (None, false) => vec![(source.id, moved)],
        };
        let mut changes = changes;
        changes.push((from_directory.id, touch(&from_directory.doc, now)));
        if to_directory.id != from_directory.id {
            changes.push((to_directory.id, touch(&to_directory.doc, now)));
        }
        let borrowed: Vec<(NodeId, &NodeDoc)> =
            changes.iter().map(|(id, doc)| (*id, doc)).collect();
        store.commit(&borrowed)?;
        drop(store);
        self.changed();
        Ok(())
    }

    fn check_replaceable(store: &Store, source: &NodeRow, target: &NodeRow) -> FsResult<()> {
        let source_is_directory = source.doc.kind == NodeKind::Directory;
        let target_is_directory = target.doc.kind == NodeKind::Directory;
        match (source_is_directory, target_is_directory) {
            (true, false) => Err(FsError::NotDirectory),
            (false, true) => Err(FsError::IsDirectory),
            (true, true) if store.has_children(&target.id)? => Err(FsError::NotEmpty),
            _ => Ok(()),
        }
    }

    /// Fails with EINVAL when `directory` is `destination` or one of its
    /// ancestors, since moving a directory into itself would cut it off.
    fn check_not_into_itself(
        store: &Store,
        directory: &NodeId,
        destination: &NodeId,
    ) -> FsResult<()> {
        let mut current = *destination;
        // The depth bound stops a damaged store with a parent cycle from
        // looping forever.
        for _ in 0..4096 {
            if current == *directory {
                return Err(FsError::InvalidArgument);
            }
            if current == NodeId::ROOT {
                return Ok(());
            }
            match store.node(&current)? {
                Some(row) => current = row.doc.parent,
                None => return Ok(()),
            }
        }
        Ok(())
    }

    pub fn setattr(&self, ino: u64, changes: SetAttr) -> FsResult<Attr> {
        let mut state = self.state();
        let mut store = self.store();
        let row = match state.open_files.get(&ino) {
            Some(open) => store.node(&open.id)?.ok_or(FsError::NotFound)?,
            None => Self::live_node(&store, ino)?,
        };

        // Metadata commits carry the open file's content, so its buffered
        // blocks must be sealed first or the commit would record holes.
        if let Some(open) = state.open_files.get_mut(&ino) {
            open.seal_dirty_blocks(&mut store)?;
        }
        let mut doc = row.doc.clone();
        let now = Timestamp::now();
        if let Some(mode) = changes.mode {
            doc.mode = mode & 0o7777;
        }
        if changes.uid.is_some() || changes.gid.is_some() {
            let caller = Caller {
                uid: changes.uid.unwrap_or(self.owner.uid),
                gid: changes.gid.unwrap_or(self.owner.gid),
            };
            let (uid, gid) = self.to_stored_owner(caller);
            if changes.uid.is_some() {
                doc.uid = uid;
            }
            if changes.gid.is_some() {
                doc.gid = gid;
            }
            // Linux clears setuid and setgid when a file changes owner.
            if doc.kind == NodeKind::File {
                doc.mode &= !(libc::S_ISUID | libc::S_ISGID);
            }
        }
        if let Some(atime) = changes.atime {
            doc.atime = atime;
        }
        doc.ctime = now;

        if let Some(size) = changes.size {
            if doc.kind == NodeKind::Directory {
                return Err(FsError::IsDirectory);
            }
            if doc.kind != NodeKind::File {
                return Err(FsError::InvalidArgument);
            }
            let open = state.open_files.entry(ino).or_insert_with(|| {
                OpenFile::new(
                    row.id,
                    row.doc.content.clone(),
                    row.doc.mtime,
                    row.remote_revision,
                )
            });
            open.truncate(&mut store, size)?;
            open.seal_dirty_blocks(&mut store)?;
            doc.content = open.content.clone();
            doc.mtime = changes.mtime.unwrap_or(now);
            open.mtime = doc.mtime;
        } else if let Some(mtime) = changes.mtime {
            doc.mtime = mtime;
            if let Some(open) = state.open_files.get_mut(&ino) {
                open.mtime = mtime;
                doc.content = open.content.clone();
            }
        } else if let Some(open) = state.open_files.get(&ino) {
            doc.content = open.content.clone();
            doc.mtime = open.mtime;
        }

        if !doc.is_deleted() {
            store.commit(&[(row.id, &doc)])?;
        }
        if let Some(open) = state.open_files.get_mut(&ino) {
            open.committed_content = doc.content.clone();
            open.dirty = false;
            if open.handles == 0 {
                state.open_files.remove(&ino);
            }
        }
        let updated = NodeRow { doc, ..row };
        let attr = self.attr_of(&state, &store, &updated)?;
        drop(store);
        self.changed();
        Ok(attr)
    }

    /// Opens a file and returns a new handle; all handles of one inode share
    /// one working copy. `writable` is true unless the file was opened
    /// read-only.
    pub fn open(&self, ino: u64, writable: bool) -> FsResult<u64> {
        let mut state = self.state();
        let store = self.store();
        let row = Self::live_node(&store, ino)?;
        match row.doc.kind {
            NodeKind::Directory => return Err(FsError::IsDirectory),
            NodeKind::File => {}
            _ => return Err(FsError::InvalidArgument),
        }
        drop(store);

        let open = state.open_files.entry(ino).or_insert_with(|| {
            OpenFile::new(
                row.id,
                row.doc.content.clone(),
                row.doc.mtime,
                row.remote_revision,
            )
        });
        open.handles += 1;
        if writable {
            open.writers += 1;
        }
        let handle = state.new_handle();
        state.file_handles.insert(handle, (ino, writable));
        Ok(handle)
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let state = self.state();
        let mut store = self.store();
        if let Some(open) = state.open_files.get(&ino) {
            return open.read(&mut store, offset, size);
        }
        let row = Self::live_node(&store, ino)?;
        let view = OpenFile::new(row.id, row.doc.content, row.doc.mtime, row.remote_revision);
        view.read(&mut store, offset, size)
    }

    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let mut state = self.state();
        let mut store = self.store();
        let open = match state.open_files.entry(ino) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                // Page-cache writeback (mmap) can arrive with a handle already
                // released; it gets a working copy that is committed at once.
                let row = Self::live_node(&store, ino)?;
                entry.insert(OpenFile::new(
                    row.id,
                    row.doc.content,
                    row.doc.mtime,
                    row.remote_revision,
                ))
            }
        };
        open.write(&mut store, offset, data)?;
        let committed_without_handle = open.handles == 0;
        if committed_without_handle {
            Self::commit_open_file(&mut store, open, false)?;
            state.open_files.remove(&ino);
            drop(store);
            self.changed();
        }
        Ok(data.len() as u32)
    }

    /// Implements fallocate: plain (grow the size), KEEP_SIZE (nothing to
    /// reserve in a sparse store) and PUNCH_HOLE; other modes are unsupported.
    pub fn fallocate(&self, ino: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch_hole = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE) != 0
            || (punch_hole && !keep_size)
        {
            return Err(FsError::NotSupported);
        }
        let mut state = self.state();
        let mut store = self.store();
        let open = state.open_files.get_mut(&ino).ok_or(FsError::BadHandle)?;
        if punch_hole {
            open.punch_hole(&mut store, offset, length)?;
        } else if !keep_size {
            open.extend_to(offset.checked_add(length).ok_or(FsError::TooLarge)?)?;
        }
        Ok(())
    }

    /// Finds the next data (`data` true) or hole at or after `offset`.
    pub fn seek_data_or_hole(&self, ino: u64, offset: u64, data: bool) -> FsResult<u64> {
        let state = self.state();
        if let Some(open) = state.open_files.get(&ino) {
            return open.seek(offset, data);
        }
        let store = self.store();
        let row = Self::live_node(&store, ino)?;
        OpenFile::new(row.id, row.doc.content, row.doc.mtime, row.remote_revision)
            .seek(offset, data)
    }

    /// Commits the working copy of `ino` if it changed; `durable` also makes
    /// the store fsync.
    pub fn flush(&self, ino: u64, durable: bool) -> FsResult<()> {
        let mut state = self.state();
        let mut store = self.store();
        let committed = match state.open_files.get_mut(&ino) {
            Some(open) => Self::commit_open_file(&mut store, open, durable)?,
            None => false,
        };
        if durable && !committed {
            store.sync_to_disk()?;
        }
        drop(store);
        if committed {
            self.changed();
        }
        Ok(())
    }

    pub fn release(&self, handle: u64) -> FsResult<()> {
        let mut state = self.state();
        let (ino, writable) = state
            .file_handles
            .remove(&handle)
            .ok_or(FsError::BadHandle)?;
        let mut store = self.store();
        let Some(open) = state.open_files.get_mut(&ino) else {
            return Ok(());
        };
        let committed = Self::commit_open_file(&mut store, open, false);
        // The handle closes even when the commit fails; the program sees the
        // error from close, as with a local disk that fills up.
        open.handles = open.handles.saturating_sub(1);
        if writable {
            open.writers = open.writers.saturating_sub(1);
        }
        if open.handles == 0 {
            state.open_files.remove(&ino);
        }
        drop(store);
        if committed? {
            self.changed();
        }
        Ok(())
    }

    /// Brings the working copy of an open file up to a remote change that
    /// the sync task applied, unless it has local writes of its own (those
    /// become a conflict copy when committed) or a handle that may write.
    /// Such a handle's next write is based on the old content: an append
    /// goes at the old size the kernel has cached, and a write at an offset was
    /// computed from what the program read. Returns true when it replaced
    /// the working copy.
    pub fn refresh_after_remote_change(&self, ino: u64) -> FsResult<bool> {
        let mut state = self.state();
        let Some(open) = state.open_files.get_mut(&ino) else {
            return Ok(false);
        };
        if open.dirty || open.writers > 0 {
            return Ok(false);
        }
        let store = self.store();
        let Some(row) = store.node(&open.id)? else {
            return Ok(false);
        };
        if row.doc.is_deleted() {
            return Ok(false);
        }
        let handles = open.handles;
        *open = OpenFile::new(row.id, row.doc.content, row.doc.mtime, row.remote_revision);
        open.handles = handles;
        Ok(true)
    }

    /// Commits every open file's working copy, as at unmount.
    pub fn flush_all(&self) -> FsResult<()> {
        let mut state = self.state();
        let mut store = self.store();
        let mut committed = false;
        for open in state.open_files.values_mut() {
            committed |= Self::commit_open_file(&mut store, open, false)?;
        }
        store.sync_to_disk()?;
        drop(store);
        if committed {
            self.changed();
        }
        Ok(())
    }

    /// Writes an open file's content into its node. If a remote change to the
    /// content landed since the file was opened, the local content goes to a
    /// conflict copy instead of overwriting it. Returns true if it committed.
    fn commit_open_file(store: &mut Store, open: &mut OpenFile, durable: bool) -> FsResult<bool> {
        if !open.dirty {
            return Ok(false);
        }
        open.seal_dirty_blocks(store)?;
        let current = store.node(&open.id)?;
        let Some(current) = current else {
            open.dirty = false;
            return Ok(false);
        };

        let remote_changed = current.remote_revision != open.remote_revision;
        if current.doc.is_deleted() && !remote_changed {
            // Unlinked here while open: the content goes with the name.
            open.dirty = false;
            return Ok(false);
        }

        let now = Timestamp::now();
        if current.doc.is_deleted()
            || (remote_changed && current.doc.content != open.committed_content)
        {
            Self::commit_conflict_copy(store, open, &current)?;
        } else {
            let mut doc = current.doc.clone();
            doc.content = open.content.clone();
            doc.mtime = open.mtime;
            doc.ctime = now;
            store.commit(&[(open.id, &doc)])?;
        }
        if durable {
            store.sync_to_disk()?;
        }
        open.committed_content = open.content.clone();
        open.remote_revision = current.remote_revision;
        open.dirty = false;
        Ok(true)
    }

    fn commit_conflict_copy(
        store: &mut Store,
        open: &mut OpenFile,
        current: &NodeRow,
    ) -> FsResult<()> {
        let device = store.device_label()?;
        let mut copy = if current.doc.is_deleted() {
            // Deleted remotely while open: the edit wins, in the root if the
            // old place is unknown.
            let mut doc = NodeDoc::new(
                NodeKind::File,
                NodeId::ROOT,
                b"recovered",
                0o644,
                VAULT_OWNER,
                VAULT_OWNER,
            );
            doc.content = open.content.clone();
            doc
        } else {
            current.doc.clone()
        };
        let seconds = open.mtime.seconds.max(0) as u64;
        copy.name = store.free_conflict_name(&copy.parent, &copy.name, &device, seconds)?;
        copy.extra_links.clear();
        copy.content = open.content.clone();
        copy.mtime = open.mtime;
        copy.ctime = Timestamp::now();
        let copy_id = NodeId::random();
        log::warn!(
            "an open file changed on another device; the local version was kept as a conflict copy"
        );
        store.commit(&[(copy_id, &copy)])?;
        store.count_conflict()?;
        // NOTE: later writes through the same handle go to the conflict copy's
        // node id, while the kernel still shows the original inode for it.
        open.id = copy_id;
        Ok(())
    }

    fn check_xattr_name(name: &[u8]) -> FsResult<()> {
        if name.len() > MAX_XATTR_NAME_BYTES {
            return Err(FsError::OutOfRange);
        }
        if !name.starts_with(USER_XATTR_PREFIX) || name.len() == USER_XATTR_PREFIX.len() {
            return Err(FsError::NotSupported);
        }
        Ok(())
    }

    fn xattr_node(store: &Store, state: &FsState, ino: u64) -> FsResult<NodeRow> {
        match state.open_files.get(&ino) {
            Some(open) => store
                .node(&open.id)?
                .filter(|row| !row.doc.is_deleted())
                .ok_or(FsError::NotFound),
            None => Self::live_node(store, ino),
        }
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let state = self.state();
        let store = self.store();
        let row = Self::xattr_node(&store, &state, ino)?;
        if name.len() > MAX_XATTR_NAME_BYTES {
            return Err(FsError::OutOfRange);
        }
        row.doc
            .xattrs
            .get(name)
            .cloned()
            .ok_or(FsError::NoAttribute)
    }

    /// The names of a node's extended attributes, each followed by a NUL.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let state = self.state();
        let store = self.store();
        let row = Self::xattr_node(&store, &state, ino)?;
        let mut names = Vec::new();
        for name in row.doc.xattrs.keys() {
            names.extend_from_slice(name);
            names.push(0);
        }
        Ok(names)
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], mode: XattrMode) -> FsResult<()> {
        Self::check_xattr_name(name)?;
        if value.len() > MAX_XATTR_VALUE_BYTES {
            return Err(FsError::ValueTooLarge);
        }
        let state = self.state();
        let mut store = self.store();
        let row = Self::xattr_node(&store, &state, ino)?;
        let exists = row.doc.xattrs.contains_key(name);
        match mode {
            XattrMode::Create if exists => return Err(FsError::Exists),
            XattrMode::Replace if !exists => return Err(FsError::NoAttribute),
            _ => {}
        }
        let mut doc = row.doc;
        doc.xattrs.insert(name.to_vec(), value.to_vec());
        doc.ctime = Timestamp::now();
        store.commit(&[(row.id, &doc)])?;
        drop(store);
        self.changed();
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        if name.len() > MAX_XATTR_NAME_BYTES {
            return Err(FsError::OutOfRange);
        }
        let state = self.state();
        let mut store = self.store();
        let row = Self::xattr_node(&store, &state, ino)?;
        let mut doc = row.doc;
        if doc.xattrs.remove(name).is_none() {
            return Err(FsError::NoAttribute);
        }
        doc.ctime = Timestamp::now();
        store.commit(&[(row.id, &doc)])?;
        drop(store);
        self.changed();
        Ok(())
    }

    /// Opens a directory. The first readdir takes a snapshot of its entries,
    /// so offsets stay stable while a program removes entries during the
    /// listing.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        Self::directory(&self.store(), ino)?;
        let entries = Vec::new();
        let mut state = self.state();
        let handle = state.new_handle();
        state.directory_handles.insert(handle, (ino, entries));
        Ok(handle)
    }

    fn list_directory(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let store = self.store();
        let directory = Self::directory(&store, ino)?;
        let parent_ino = if ino == ROOT_INO {
            ROOT_INO
        } else {
            store.ino_of(&directory.doc.parent)?.unwrap_or(ROOT_INO)
        };

        let mut entries = vec![
            DirEntry {
                ino,
                kind: NodeKind::Directory,
                name: b".".to_vec(),
            },
            DirEntry {
                ino: parent_ino,
                kind: NodeKind::Directory,
                name: b"..".to_vec(),
            },
        ];
        for (name, child) in store.children(&directory.id)? {
            entries.push(DirEntry {
                ino: child.ino,
                kind: child.doc.kind,
                name,
            });
        }
        Ok(entries)
    }

    /// Entries of an open directory from `offset`; each entry's offset for
    /// the next call is its index plus one. Offset 0 (a new listing, or
    /// rewinddir) takes a fresh snapshot.
    pub fn readdir(&self, handle: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        if offset == 0 {
            let ino = self
                .state()
                .directory_handles
                .get(&handle)
                .map(|(ino, _)| *ino)
                .ok_or(FsError::BadHandle)?;
            let entries = self.list_directory(ino)?;
            if let Some(slot) = self.state().directory_handles.get_mut(&handle) {
                slot.1 = entries;
            }
        }
        let state = self.state();
        let (_, entries) = state
            .directory_handles
            .get(&handle)
            .ok_or(FsError::BadHandle)?;
        Ok(entries.iter().skip(offset as usize).cloned().collect())
    }

    pub fn releasedir(&self, handle: u64) {
        self.state().directory_handles.remove(&handle);
    }

    pub fn fsyncdir(&self) -> FsResult<()> {
        self.store().sync_to_disk()?;
        Ok(())
    }

    pub fn statfs(&self) -> FsResult<FsStats> {
        let store = self.store();
        let stat = store
            .disk_space()
            .map_err(|source| crate::store::StoreError::Io {
                action: "cannot read the free space of",
                path: store.dir().to_path_buf(),
                source,
            })?;
        Ok(FsStats {
            blocks: stat.f_blocks,
            blocks_free: stat.f_bfree,
            blocks_available: stat.f_bavail,
            files: stat.f_files,
            files_free: stat.f_ffree,
            block_size: stat.f_frsize as u32,
        })
    }
}
