//! Every file system operation on a real FUSE mount of one device without a
//! server, checked against what Linux file systems do.

mod common;

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use common::{Device, is_mounted, pseudo_random_bytes, syn, wait_until};

/// Size of one block of file content in the store. Writes across this
/// boundary change two blocks at once.
const STORE_BLOCK: u64 = 64 * 1024;

fn mounted_device() -> Device {
    let mut device = Device::local();
    device.mount();
    device
}

fn remount(device: &mut Device) {
    device.unmount();
    device.mount();
}

/// Asserts that `result` failed with the errno `expected`.
#[track_caller]
fn assert_errno<T: std::fmt::Debug>(result: io::Result<T>, expected: i32, operation: &str) {
    let expected_error = io::Error::from_raw_os_error(expected);
    match result {
        Ok(value) => panic!("{operation} succeeded with {value:?}, expected {expected_error}"),
        Err(error) => assert_eq!(
            error.raw_os_error(),
            Some(expected),
            "{operation} failed with {error}, expected {expected_error}"
        ),
    }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("test paths contain no NUL byte")
}

/// A directory stream read with libc `readdir`, which unlike
/// `std::fs::read_dir` also returns `.` and `..`.
struct DirStream {
    stream: *mut libc::DIR,
    path: PathBuf,
}

impl DirStream {
    fn open(path: &Path) -> DirStream {
        let c_path = c_path(path);
        // SAFETY: opendir reads the NUL-terminated path and returns null or
        // a stream that Drop closes exactly once.
        let stream = unsafe { libc::opendir(c_path.as_ptr()) };
        assert!(
            !stream.is_null(),
            "opendir {} failed: {}",
            path.display(),
            io::Error::last_os_error()
        );
        DirStream {
            stream,
            path: path.to_path_buf(),
        }
    }

    /// Returns the next entry's name and `d_type`, or `None` at the end.
    fn next_entry(&mut self) -> Option<(Vec<u8>, u8)> {
        // SAFETY: readdir signals errors only through errno, so it is reset
        // first. The entry it returns stays valid until the next readdir on
        // this stream, and its name is copied out before that.
        unsafe {
            *libc::__errno_location() = 0;
            let entry = libc::readdir(self.stream);
            if entry.is_null() {
                let error = io::Error::last_os_error();
                assert_eq!(
                    error.raw_os_error(),
                    Some(0),
                    "readdir {} failed: {error}",
                    self.path.display()
                );
                return None;
            }
            let name = CStr::from_ptr((*entry).d_name.as_ptr()).to_bytes().to_vec();
            Some((name, (*entry).d_type))
        }
    }

    /// Returns the remaining entry names, sorted.
    fn remaining_names(&mut self) -> Vec<OsString> {
        let mut names = Vec::new();
        while let Some((name, _)) = self.next_entry() {
            names.push(OsString::from_vec(name));
        }
        names.sort();
        names
    }

    fn rewind(&mut self) {
        // SAFETY: the stream is open until Drop.
        unsafe { libc::rewinddir(self.stream) };
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the stream came from opendir and is closed only here.
        unsafe { libc::closedir(self.stream) };
    }
}

/// Returns every name that libc `readdir` lists in `dir`, `.` and `..`
/// included, sorted.
fn raw_entry_names(dir: &Path) -> Vec<OsString> {
    DirStream::open(dir).remaining_names()
}

/// Returns the names `std::fs::read_dir` lists in `dir`, sorted.
fn entry_names(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("read_dir {} failed: {error}", dir.display()))
        .map(|entry| entry.expect("read_dir entry").file_name())
        .collect();
    names.sort();
    names
}

/// Returns `names` as sorted `OsString`s, to compare with a listing.
fn sorted_names(names: &[&[u8]]) -> Vec<OsString> {
    let mut names: Vec<OsString> = names
        .iter()
        .map(|name| OsStr::from_bytes(name).to_os_string())
        .collect();
    names.sort();
    names
}

/// Removes the tree at `dir`, deleting each entry as soon as readdir
/// returns it, while the directory is still being listed.
fn remove_tree_while_listing(dir: &Path) {
    let mut stream = DirStream::open(dir);
    while let Some((name, kind)) = stream.next_entry() {
        if name == b"." || name == b".." {
            continue;
        }
        let child = dir.join(OsStr::from_bytes(&name));
        if kind == libc::DT_DIR {
            remove_tree_while_listing(&child);
        } else {
            fs::remove_file(&child)
                .unwrap_or_else(|error| panic!("unlink {} failed: {error}", child.display()));
        }
    }
    drop(stream);
    fs::remove_dir(dir).unwrap_or_else(|error| panic!("rmdir {} failed: {error}", dir.display()));
}

/// Applies a write to an in-memory model of a file's content.
fn write_model(model: &mut Vec<u8>, offset: usize, data: &[u8]) {
    if model.len() < offset + data.len() {
        model.resize(offset + data.len(), 0);
    }
    model[offset..offset + data.len()].copy_from_slice(data);
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file =
        File::open(path).unwrap_or_else(|error| panic!("open {} failed: {error}", path.display()));
    let mut buffer = vec![0; len];
    let mut filled = 0;
    while filled < len {
        let read = file
            .read_at(&mut buffer[filled..], offset + filled as u64)
            .expect("pread failed");
        if read == 0 {
            break;
        }
        filled += read;
    }
    buffer.truncate(filled);
    buffer
}

fn time_of(seconds: i64, nanos: u32) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH + Duration::new(seconds as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
            + Duration::from_nanos(nanos.into())
    }
}

fn set_times(path: &Path, accessed: SystemTime, modified: SystemTime) {
    let file =
        File::open(path).unwrap_or_else(|error| panic!("open {} failed: {error}", path.display()));
    file.set_times(
        FileTimes::new()
            .set_accessed(accessed)
            .set_modified(modified),
    )
    .unwrap_or_else(|error| panic!("utimens {} failed: {error}", path.display()));
}

fn mtime_of(path: &Path) -> (i64, i64) {
    let meta = fs::symlink_metadata(path)
        .unwrap_or_else(|error| panic!("stat {} failed: {error}", path.display()));
    (meta.mtime(), meta.mtime_nsec())
}

fn mode_of(path: &Path) -> u32 {
    let meta = fs::symlink_metadata(path)
        .unwrap_or_else(|error| panic!("stat {} failed: {error}", path.display()));
    meta.mode() & 0o7777
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let from = c_path(from);
    let to = c_path(to);
    // SAFETY: both paths are NUL-terminated and outlive the call.
    let result = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Returns true while a process holds the store's lock file, as the mount
/// daemon does from start to exit.
fn store_is_locked(store: &Path) -> bool {
    // NOTE: "lock" is the lock file name that syn's store uses today.
    let file = OpenOptions::new()
        .write(true)
        .open(store.join("lock"))
        .expect("cannot open the store's lock file");
    // SAFETY: flock acts on a descriptor this function owns. Closing it on
    // return releases a lock taken here.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// Reads this process's umask from /proc without changing it, since other
/// test threads create files at the same time.
fn current_umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("cannot read /proc/self/status");
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("Umask:"))
        .expect("/proc/self/status has no Umask line");
    u32::from_str_radix(line.trim(), 8).expect("the umask is octal")
}

fn name_of_len(byte: u8, len: usize) -> String {
    String::from_utf8(vec![byte; len]).expect("ASCII")
}

// lookup and getattr

#[test]
fn stat_reports_kind_size_and_mode() {
    let device = mounted_device();
    fs::write(device.path("file"), b"12345").unwrap();
    fs::set_permissions(device.path("file"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::create_dir(device.path("dir")).unwrap();
    fs::set_permissions(device.path("dir"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("file", device.path("link")).unwrap();

    let file = fs::metadata(device.path("file")).unwrap();
    assert!(
        file.is_file(),
        "file should stat as a regular file: {file:?}"
    );
    assert_eq!(file.len(), 5, "file size");
    assert_eq!(file.mode() & 0o7777, 0o640, "file mode bits");
    assert_eq!(file.mode() & libc::S_IFMT, libc::S_IFREG, "file type bits");
    assert_eq!(file.nlink(), 1, "file link count");
    assert_eq!(file.uid(), 0, "file owner of a file created by root");
    assert_eq!(file.gid(), 0, "file group of a file created by root");

    let dir = fs::metadata(device.path("dir")).unwrap();
    assert!(dir.is_dir(), "dir should stat as a directory: {dir:?}");
    assert_eq!(dir.mode() & 0o7777, 0o750, "directory mode bits");
    assert!(
        dir.nlink() >= 2,
        "a directory has at least 2 links, got {}",
        dir.nlink()
    );

    let link = fs::symlink_metadata(device.path("link")).unwrap();
    assert!(
        link.file_type().is_symlink(),
        "lstat of link should show a symlink: {link:?}"
    );
    assert_eq!(
        link.len(),
        4,
        "a symlink's size is the length of its target \"file\""
    );

    let followed = fs::metadata(device.path("link")).unwrap();
    assert_eq!(
        followed.ino(),
        file.ino(),
        "stat through the symlink should reach the file's inode"
    );

    let root = fs::metadata(&device.mountpoint).unwrap();
    assert!(root.is_dir(), "the mount root should be a directory");
}

#[test]
fn stat_of_missing_name_is_enoent() {
    let device = mounted_device();
    fs::create_dir(device.path("dir")).unwrap();
    fs::write(device.path("file"), b"x").unwrap();

    assert_errno(
        fs::metadata(device.path("missing")),
        libc::ENOENT,
        "stat of a missing name",
    );
    assert_errno(
        fs::metadata(device.path("dir/missing")),
        libc::ENOENT,
        "stat of a missing name in a subdirectory",
    );
    assert_errno(
        fs::metadata(device.path("missing/child")),
        libc::ENOENT,
        "stat below a missing directory",
    );
    assert_errno(
        fs::metadata(device.path("file/child")),
        libc::ENOTDIR,
        "stat below a regular file",
    );
    assert_errno(
        File::open(device.path("missing")),
        libc::ENOENT,
        "open of a missing name",
    );
}

// setattr

#[test]
fn chmod_changes_mode_bits() {
    let device = mounted_device();
    fs::write(device.path("file"), b"x").unwrap();
    fs::create_dir(device.path("dir")).unwrap();

    for mode in [0o600, 0o755, 0o000, 0o4711, 0o2755] {
        fs::set_permissions(device.path("file"), fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            mode_of(&device.path("file")),
            mode,
            "file mode after chmod {mode:o}"
        );
    }
    fs::set_permissions(device.path("dir"), fs::Permissions::from_mode(0o1777)).unwrap();
    assert_eq!(
        mode_of(&device.path("dir")),
        0o1777,
        "directory mode after chmod 1777"
    );

    let mut file = File::open(device.path("file")).unwrap();
    file.set_permissions(fs::Permissions::from_mode(0o640))
        .unwrap();
    assert_eq!(
        file.metadata().unwrap().mode() & 0o7777,
        0o640,
        "fstat mode after fchmod 640"
    );
    let mut content = Vec::new();
    file.read_to_end(&mut content).unwrap();
    assert_eq!(content, b"x", "chmod must not change the content");
}

#[test]
fn chown_changes_owner_and_group() {
    let device = mounted_device();
    fs::write(device.path("file"), b"x").unwrap();
    fs::set_permissions(device.path("file"), fs::Permissions::from_mode(0o6755)).unwrap();
    fs::write(device.path("target"), b"y").unwrap();
    symlink("target", device.path("link")).unwrap();

    std::os::unix::fs::chown(device.path("file"), Some(1234), Some(5678)).unwrap();
    let meta = fs::metadata(device.path("file")).unwrap();
    assert_eq!(meta.uid(), 1234, "uid after chown 1234:5678");
    assert_eq!(meta.gid(), 5678, "gid after chown 1234:5678");
    assert_eq!(
        meta.mode() & 0o7777,
        0o755,
        "Linux clears setuid and setgid on chown of a file"
    );

    std::os::unix::fs::chown(device.path("file"), None, Some(42)).unwrap();
    let meta = fs::metadata(device.path("file")).unwrap();
    assert_eq!(meta.uid(), 1234, "uid after changing only the group");
    assert_eq!(meta.gid(), 42, "gid after chown :42");

    std::os::unix::fs::chown(device.path("file"), Some(0), Some(0)).unwrap();
    let meta = fs::metadata(device.path("file")).unwrap();
    assert_eq!(meta.uid(), 0, "uid after chown back to root");
    assert_eq!(meta.gid(), 0, "gid after chown back to root");

    std::os::unix::fs::lchown(device.path("link"), Some(777), Some(888)).unwrap();
    let link = fs::symlink_metadata(device.path("link")).unwrap();
    assert_eq!(
        (link.uid(), link.gid()),
        (777, 888),
        "owner of the symlink after lchown"
    );
    let target = fs::metadata(device.path("target")).unwrap();
    assert_eq!(
        (target.uid(), target.gid()),
        (0, 0),
        "lchown must not change the symlink's target"
    );
}

#[test]
fn truncate_down_and_up() {
    let device = mounted_device();
    let path = device.path("file");
    let original = pseudo_random_bytes(3 * STORE_BLOCK as usize + 100, 1);
    fs::write(&path, &original).unwrap();

    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(100).unwrap();
    assert_eq!(
        file.metadata().unwrap().len(),
        100,
        "fstat size after ftruncate to 100"
    );
    drop(file);
    assert_eq!(
        fs::read(&path).unwrap(),
        &original[..100],
        "content after ftruncate down to 100"
    );

    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(2 * STORE_BLOCK + 7).unwrap();
    drop(file);
    let grown = fs::read(&path).unwrap();
    assert_eq!(
        grown.len() as u64,
        2 * STORE_BLOCK + 7,
        "size after ftruncate up"
    );
    assert_eq!(
        &grown[..100],
        &original[..100],
        "bytes before the old end after growing"
    );
    assert!(
        grown[100..].iter().all(|&byte| byte == 0),
        "bytes after the old end must read as zeros after growing"
    );

    // truncate(2) with no handle open reaches the daemon without an open
    // working copy of the file, a separate code path from ftruncate.
    let c_path = c_path(&path);
    // SAFETY: truncate reads the NUL-terminated path.
    assert_eq!(
        unsafe { libc::truncate(c_path.as_ptr(), 10) },
        0,
        "truncate to 10 failed: {}",
        io::Error::last_os_error()
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        &original[..10],
        "content after truncate(2) down to 10"
    );
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::truncate(c_path.as_ptr(), 20) },
        0,
        "truncate to 20 failed: {}",
        io::Error::last_os_error()
    );
    let mut expected = original[..10].to_vec();
    expected.resize(20, 0);
    assert_eq!(
        fs::read(&path).unwrap(),
        expected,
        "content after truncate(2) up to 20"
    );

    let file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    drop(file);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        0,
        "size after open with O_TRUNC"
    );
}

#[test]
fn truncate_of_directory_is_eisdir() {
    let device = mounted_device();
    fs::create_dir(device.path("dir")).unwrap();
    let c_path = c_path(&device.path("dir"));
    // SAFETY: truncate reads the NUL-terminated path.
    let result = unsafe { libc::truncate(c_path.as_ptr(), 0) };
    let outcome = if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    assert_errno(outcome, libc::EISDIR, "truncate of a directory");
}

#[test]
fn utimens_keeps_nanoseconds() {
    let mut device = mounted_device();
    fs::write(device.path("file"), b"x").unwrap();
    fs::create_dir(device.path("dir")).unwrap();
    let accessed = time_of(1_600_000_000, 123_456_789);
    let modified = time_of(1_700_000_000, 987_654_321);
    set_times(&device.path("file"), accessed, modified);
    set_times(&device.path("dir"), modified, accessed);

    let check = |device: &Device, when: &str| {
        let file = fs::metadata(device.path("file")).unwrap();
        assert_eq!(
            (file.mtime(), file.mtime_nsec()),
            (1_700_000_000, 987_654_321),
            "file mtime {when}"
        );
        assert_eq!(
            (file.atime(), file.atime_nsec()),
            (1_600_000_000, 123_456_789),
            "file atime {when}"
        );
        let dir = fs::metadata(device.path("dir")).unwrap();
        assert_eq!(
            (dir.mtime(), dir.mtime_nsec()),
            (1_600_000_000, 123_456_789),
            "directory mtime {when}"
        );
        assert_eq!(
            (dir.atime(), dir.atime_nsec()),
            (1_700_000_000, 987_654_321),
            "directory atime {when}"
        );
    };
    check(&device, "after utimens");
    remount(&mut device);
    check(&device, "after remount");
}

#[test]
fn utimens_with_omit_changes_one_time() {
    let device = mounted_device();
    let path = device.path("file");
    fs::write(&path, b"x").unwrap();
    set_times(&path, time_of(1_000_000_000, 1), time_of(1_100_000_000, 2));

    let file = File::open(&path).unwrap();
    file.set_modified(time_of(1_200_000_000, 3)).unwrap();
    drop(file);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_200_000_000, 3),
        "mtime after setting only the mtime"
    );
    assert_eq!(
        (meta.atime(), meta.atime_nsec()),
        (1_000_000_000, 1),
        "atime must stay when only the mtime is set"
    );
}

#[test]
fn mtime_before_1970_round_trips() {
    let device = mounted_device();
    let path = device.path("file");
    fs::write(&path, b"x").unwrap();
    set_times(&path, time_of(-86_400, 5), time_of(-1, 500_000_000));

    let meta = fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (-1, 500_000_000),
        "mtime of half a second before 1970"
    );
    assert_eq!(
        (meta.atime(), meta.atime_nsec()),
        (-86_400, 5),
        "atime of a day before 1970"
    );
}

#[test]
fn directory_changes_update_its_mtime() {
    let device = mounted_device();
    let old = time_of(1_000_000_000, 0);
    fs::create_dir(device.path("dir")).unwrap();
    fs::create_dir(device.path("elsewhere")).unwrap();

    let cases: [(&str, &dyn Fn()); 7] = [
        ("creating a file", &|| {
            fs::write(device.path("dir/new"), b"").unwrap()
        }),
        ("creating a subdirectory", &|| {
            fs::create_dir(device.path("dir/sub")).unwrap()
        }),
        ("creating a symlink", &|| {
            symlink("new", device.path("dir/link")).unwrap()
        }),
        ("renaming an entry", &|| {
            fs::rename(device.path("dir/new"), device.path("dir/renamed")).unwrap()
        }),
        ("moving an entry out", &|| {
            fs::rename(device.path("dir/renamed"), device.path("elsewhere/moved")).unwrap()
        }),
        ("unlinking an entry", &|| {
            fs::remove_file(device.path("dir/link")).unwrap()
        }),
        ("removing a subdirectory", &|| {
            fs::remove_dir(device.path("dir/sub")).unwrap()
        }),
    ];
    // Every case runs, so one failure lists all the operations that miss the update.
    let mut stale = Vec::new();
    for (change, apply) in cases {
        set_times(&device.path("dir"), old, old);
        apply();
        if mtime_of(&device.path("dir")) <= (1_000_000_000, 0) {
            stale.push(change);
        }
    }
    assert!(
        stale.is_empty(),
        "the directory's mtime did not advance after: {stale:?}"
    );
}

#[test]
fn file_changes_update_its_mtime() {
    let device = mounted_device();
    let old = time_of(1_000_000_000, 0);
    let path = device.path("file");
    fs::write(&path, b"x").unwrap();

    set_times(&path, old, old);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all(b"y")
        .unwrap();
    assert!(
        mtime_of(&path) > (1_000_000_000, 0),
        "file mtime should advance after a write"
    );

    set_times(&path, old, old);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(
        mtime_of(&path) > (1_000_000_000, 0),
        "file mtime should advance after a truncate"
    );
}

// readdir

#[test]
fn readdir_lists_exactly_created_names() {
    let device = mounted_device();
    fs::write(device.path("file.txt"), b"x").unwrap();
    fs::create_dir(device.path("dir")).unwrap();
    symlink("file.txt", device.path("link")).unwrap();
    fs::write(device.path("dir/inner"), b"y").unwrap();

    assert_eq!(
        entry_names(&device.mountpoint),
        sorted_names(&[b"file.txt", b"dir", b"link"]),
        "read_dir of the root"
    );
    assert_eq!(
        raw_entry_names(&device.mountpoint),
        sorted_names(&[b".", b"..", b"file.txt", b"dir", b"link"]),
        "libc readdir of the root"
    );
    assert_eq!(
        raw_entry_names(&device.path("dir")),
        sorted_names(&[b".", b"..", b"inner"]),
        "libc readdir of a subdirectory"
    );

    for entry in fs::read_dir(&device.mountpoint).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        match entry.file_name().as_bytes() {
            b"file.txt" => assert!(kind.is_file(), "d_type of file.txt: {kind:?}"),
            b"dir" => assert!(kind.is_dir(), "d_type of dir: {kind:?}"),
            b"link" => assert!(kind.is_symlink(), "d_type of link: {kind:?}"),
            other => panic!("unexpected entry {:?}", OsStr::from_bytes(other)),
        }
    }

    fs::remove_file(device.path("file.txt")).unwrap();
    assert_eq!(
        entry_names(&device.mountpoint),
        sorted_names(&[b"dir", b"link"]),
        "read_dir after unlinking file.txt"
    );
}

#[test]
fn readdir_of_empty_directory_lists_dot_entries() {
    let device = mounted_device();
    fs::create_dir(device.path("empty")).unwrap();
    assert_eq!(
        raw_entry_names(&device.path("empty")),
        sorted_names(&[b".", b".."]),
        "libc readdir of an empty directory"
    );
    assert_eq!(
        raw_entry_names(&device.mountpoint),
        sorted_names(&[b".", b"..", b"empty"]),
        "libc readdir of the root"
    );
}

#[test]
fn readdir_of_500_entries() {
    let device = mounted_device();
    fs::create_dir(device.path("many")).unwrap();
    let mut expected = Vec::new();
    for index in 0..500 {
        // Long names make the listing span several readdir requests.
        let name = format!("entry-with-a-fairly-long-name-to-fill-pages-{index:04}");
        if index % 10 == 0 {
            fs::create_dir(device.path(&format!("many/{name}"))).unwrap();
        } else {
            fs::write(device.path(&format!("many/{name}")), index.to_string()).unwrap();
        }
        expected.push(OsString::from(name));
    }
    expected.sort();

    let names = entry_names(&device.path("many"));
    assert_eq!(names.len(), 500, "number of entries listed");
    assert_eq!(names, expected, "names listed");
    assert_eq!(
        raw_entry_names(&device.path("many")).len(),
        502,
        "libc readdir lists the 500 entries plus . and .."
    );
}

#[test]
fn remove_tree_while_listing_removes_everything() {
    let device = mounted_device();
    let tree = device.path("tree");
    for dir in 0..6 {
        let sub = tree.join(format!("directory-number-{dir}/nested"));
        fs::create_dir_all(&sub).unwrap();
        for file in 0..60 {
            fs::write(
                tree.join(format!(
                    "directory-number-{dir}/file-with-a-long-name-{file:03}"
                )),
                b"a",
            )
            .unwrap();
        }
        fs::write(sub.join("deep"), b"b").unwrap();
        symlink("../deep", sub.join("link")).unwrap();
    }
    for file in 0..150 {
        fs::write(
            tree.join(format!("top-level-file-with-a-long-name-{file:03}")),
            b"c",
        )
        .unwrap();
    }

    remove_tree_while_listing(&tree);

    assert_errno(
        fs::metadata(&tree),
        libc::ENOENT,
        "stat of the removed tree",
    );
    assert_eq!(
        entry_names(&device.mountpoint),
        Vec::<OsString>::new(),
        "the root should be empty after the removal"
    );
}

#[test]
fn rm_rf_removes_large_tree() {
    let device = mounted_device();
    let tree = device.path("tree");
    for dir in 0..4 {
        let sub = tree.join(format!("sub-{dir}/deeper"));
        fs::create_dir_all(&sub).unwrap();
        for file in 0..80 {
            fs::write(sub.join(format!("file-with-a-long-name-{file:03}")), b"x").unwrap();
        }
    }

    let output = Command::new("rm")
        .arg("-rf")
        .arg(&tree)
        .output()
        .expect("cannot run rm");
    assert!(
        output.status.success(),
        "rm -rf failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_errno(
        fs::metadata(&tree),
        libc::ENOENT,
        "stat of the tree after rm -rf",
    );
    assert_eq!(
        entry_names(&device.mountpoint),
        Vec::<OsString>::new(),
        "the root should be empty after rm -rf"
    );
}

#[test]
fn rewinddir_shows_current_entries() {
    let device = mounted_device();
    fs::write(device.path("before"), b"").unwrap();
    let mut stream = DirStream::open(&device.mountpoint);
    assert_eq!(
        stream.remaining_names(),
        sorted_names(&[b".", b"..", b"before"]),
        "first listing"
    );

    fs::write(device.path("added"), b"").unwrap();
    fs::remove_file(device.path("before")).unwrap();
    stream.rewind();
    // POSIX: rewinddir makes the stream refer to the directory's current
    // state, as a new opendir would.
    assert_eq!(
        stream.remaining_names(),
        sorted_names(&[b".", b"..", b"added"]),
        "listing after rewinddir"
    );
}

// create, open, read and write

#[test]
fn write_at_offsets() {
    let device = mounted_device();
    let path = device.path("file");
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut model = Vec::new();
    let block = STORE_BLOCK as usize;
    let writes: [(usize, Vec<u8>); 5] = [
        (0, b"hello".to_vec()),
        (100, b"world".to_vec()),
        (block - 500, pseudo_random_bytes(1000, 2)),
        (3, b"LLO, THERE".to_vec()),
        (2 * block, pseudo_random_bytes(3 * block + 17, 3)),
    ];
    for (offset, data) in &writes {
        file.write_all_at(data, *offset as u64).unwrap();
        write_model(&mut model, *offset, data);
        assert_eq!(
            file.metadata().unwrap().len(),
            model.len() as u64,
            "fstat size after writing at {offset}"
        );
    }
    let mut read_back = Vec::new();
    (&file).seek(SeekFrom::Start(0)).unwrap();
    (&file).read_to_end(&mut read_back).unwrap();
    assert!(
        read_back == model,
        "content read through the same handle differs from what was written"
    );
    drop(file);

    assert!(
        fs::read(&path).unwrap() == model,
        "content after close differs from what was written"
    );
    assert_eq!(read_at(&path, 100, 5), b"world", "pread at offset 100");
    assert_eq!(
        read_at(&path, 13, 87),
        vec![0; 87],
        "gap between writes reads as zeros"
    );
}

#[test]
fn append_twice_adds_to_end() {
    let device = mounted_device();
    let path = device.path("log");
    fs::write(&path, b"start\n").unwrap();

    for line in [b"first\n".as_slice(), b"second\n"] {
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(line).unwrap();
    }
    assert_eq!(
        fs::read(&path).unwrap(),
        b"start\nfirst\nsecond\n",
        "content after two appends"
    );

    let mut first = OpenOptions::new().append(true).open(&path).unwrap();
    let mut second = OpenOptions::new().append(true).open(&path).unwrap();
    first.write_all(b"A\n").unwrap();
    second.write_all(b"B\n").unwrap();
    first.write_all(b"C\n").unwrap();
    drop((first, second));
    assert_eq!(
        fs::read(&path).unwrap(),
        b"start\nfirst\nsecond\nA\nB\nC\n",
        "two handles open with O_APPEND should each write at the current end"
    );
}

#[test]
fn overwrite_in_middle_keeps_rest() {
    let device = mounted_device();
    let path = device.path("file");
    let mut model = pseudo_random_bytes(4 * STORE_BLOCK as usize, 4);
    fs::write(&path, &model).unwrap();

    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(100_000)).unwrap();
    file.write_all(b"0123456789").unwrap();
    write_model(&mut model, 100_000, b"0123456789");
    let across = pseudo_random_bytes(40, 5);
    file.write_all_at(&across, STORE_BLOCK - 20).unwrap();
    write_model(&mut model, STORE_BLOCK as usize - 20, &across);
    drop(file);

    let content = fs::read(&path).unwrap();
    assert_eq!(
        content.len(),
        model.len(),
        "an overwrite inside the file must not change its size"
    );
    assert!(
        content == model,
        "content after two overwrites differs from the expected content"
    );
}

#[test]
fn sparse_write_reads_hole_as_zeros() {
    let mut device = mounted_device();
    let path = device.path("sparse");
    fs::write(&path, b"head").unwrap();
    let far = 100 * 1024 * 1024 + 7;
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"tail", far).unwrap();
    drop(file);

    let check = |path: &Path, when: &str| {
        assert_eq!(
            fs::metadata(path).unwrap().len(),
            far + 4,
            "size after a write 100 MiB beyond the end, {when}"
        );
        assert_eq!(read_at(path, 0, 4), b"head", "data before the hole, {when}");
        assert_eq!(
            read_at(path, far, 100),
            b"tail",
            "data after the hole, {when}"
        );
        for (offset, len) in [
            (4, 2 * STORE_BLOCK as usize),
            (far / 2, 3 * STORE_BLOCK as usize),
            (far - 3 * STORE_BLOCK, 3 * STORE_BLOCK as usize),
        ] {
            let hole = read_at(path, offset, len);
            assert_eq!(
                hole.len(),
                len,
                "bytes read from the hole at {offset}, {when}"
            );
            assert!(
                hole.iter().all(|&byte| byte == 0),
                "the hole at offset {offset} must read as zeros, {when}"
            );
        }
    };
    check(&path, "before remount");
    remount(&mut device);
    check(&path, "after remount");
}

#[test]
fn read_past_eof_returns_zero_bytes() {
    let device = mounted_device();
    let path = device.path("file");
    fs::write(&path, b"0123456789").unwrap();
    let file = File::open(&path).unwrap();
    let mut buffer = [0xAAu8; 100];

    assert_eq!(
        file.read_at(&mut buffer, 10).unwrap(),
        0,
        "pread at the end of file"
    );
    assert_eq!(
        file.read_at(&mut buffer, 1000).unwrap(),
        0,
        "pread far past the end of file"
    );
    assert_eq!(
        file.read_at(&mut buffer, 5).unwrap(),
        5,
        "pread that crosses the end of file returns what is left"
    );
    assert_eq!(&buffer[..5], b"56789", "bytes of the short read");

    let empty = device.path("empty");
    File::create(&empty).unwrap();
    assert_eq!(
        File::open(&empty).unwrap().read(&mut buffer).unwrap(),
        0,
        "read of an empty file"
    );
}

#[test]
fn create_sets_mode_and_opens_for_write() {
    let device = mounted_device();
    let path = device.path("new");
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o640)
        .open(&path)
        .unwrap();
    file.write_all(b"content").unwrap();
    assert_eq!(
        file.metadata().unwrap().len(),
        7,
        "fstat size of the new file before close"
    );
    drop(file);
    assert_eq!(mode_of(&path), 0o640, "mode of a file created with 0640");
    assert_eq!(
        fs::read(&path).unwrap(),
        b"content",
        "content of the new file"
    );

    let node = device.path("node");
    let c_node = c_path(&node);
    // SAFETY: mknod reads the NUL-terminated path.
    let result = unsafe { libc::mknod(c_node.as_ptr(), libc::S_IFREG | 0o600, 0) };
    assert_eq!(
        result,
        0,
        "mknod of a regular file failed: {}",
        io::Error::last_os_error()
    );
    let meta = fs::metadata(&node).unwrap();
    assert!(meta.is_file(), "mknod S_IFREG should make a regular file");
    assert_eq!(meta.len(), 0, "size of the file made by mknod");
}

#[test]
fn unlinked_open_file_stays_readable() {
    let device = mounted_device();
    let path = device.path("file");
    fs::write(&path, b"still here").unwrap();
    let mut file = File::open(&path).unwrap();
    fs::remove_file(&path).unwrap();

    assert_errno(
        fs::metadata(&path),
        libc::ENOENT,
        "stat of the unlinked name",
    );
    let mut content = Vec::new();
    file.read_to_end(&mut content).unwrap();
    assert_eq!(
        content, b"still here",
        "an open handle should still read an unlinked file"
    );
    assert_eq!(
        file.metadata().unwrap().nlink(),
        0,
        "fstat link count of an unlinked file"
    );
    drop(file);
    assert_eq!(
        entry_names(&device.mountpoint),
        Vec::<OsString>::new(),
        "the root should be empty after close"
    );
}

// flush, fsync and release

#[test]
fn fsync_of_file_and_directory() {
    let mut device = mounted_device();
    fs::create_dir(device.path("dir")).unwrap();
    let path = device.path("dir/file");
    let mut file = File::create(&path).unwrap();
    file.write_all(b"synced data").unwrap();
    file.sync_all().unwrap();
    file.write_all(b", more").unwrap();
    file.sync_data().unwrap();
    File::open(device.path("dir")).unwrap().sync_all().unwrap();
    File::open(&device.mountpoint).unwrap().sync_all().unwrap();

    assert_eq!(
        fs::read(&path).unwrap(),
        b"synced data, more",
        "content through another handle before close"
    );
    drop(file);
    assert_eq!(
        fs::read(&path).unwrap(),
        b"synced data, more",
        "content after close"
    );

    remount(&mut device);
    assert_eq!(
        fs::read(&path).unwrap(),
        b"synced data, more",
        "content after remount"
    );
}

#[test]
fn fsynced_data_survives_daemon_kill() {
    let mut device = mounted_device();
    // An exec while the file is open closes the descriptor it inherited, and
    // that close commits the file. So the pid is read before the file opens.
    // NOTE: other tests' threads spawn processes too, so a pass does not
    // prove that fsync alone committed the data.
    let pid = device.status_json()["pid"]
        .as_i64()
        .expect("status --json shows the daemon pid");
    let path = device.path("file");
    let mut file = File::create(&path).unwrap();
    file.write_all(b"durable").unwrap();
    file.sync_all().unwrap();

    // SAFETY: kill sends a signal to the daemon this test started.
    assert_eq!(
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) },
        0,
        "kill of the daemon failed"
    );
    wait_until("the killed daemon to release the store", || {
        !store_is_locked(&device.store)
    });
    drop(file);
    let status = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(&device.mountpoint)
        .stderr(Stdio::null())
        .status()
        .expect("cannot run fusermount3");
    assert!(
        status.success(),
        "fusermount3 -u -z of the dead mount failed: {status}"
    );
    wait_until("the dead mount to go", || !is_mounted(&device.mountpoint));

    device.mount();
    assert_eq!(
        fs::read(&path).unwrap(),
        b"durable",
        "fsynced content after the daemon was killed"
    );
}

// mkdir, rmdir and unlink

#[test]
fn mkdir_and_rmdir() {
    let device = mounted_device();
    fs::create_dir(device.path("dir")).unwrap();
    fs::set_permissions(device.path("dir"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir_all(device.path("dir/a/b/c")).unwrap();
    assert!(
        fs::metadata(device.path("dir/a/b/c")).unwrap().is_dir(),
        "nested directory after mkdir -p"
    );
    assert_eq!(mode_of(&device.path("dir")), 0o700, "mode of the directory");

    fs::remove_dir(device.path("dir/a/b/c")).unwrap();
    assert_errno(
        fs::metadata(device.path("dir/a/b/c")),
        libc::ENOENT,
        "stat after rmdir",
    );
    assert_eq!(
        raw_entry_names(&device.path("dir/a/b")),
        sorted_names(&[b".", b".."]),
        "parent listing after rmdir"
    );

    let c_dir = c_path(&device.path("dir/modes"));
    // SAFETY: mkdir reads the NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkdir(c_dir.as_ptr(), 0o751) },
        0,
        "mkdir failed: {}",
        io::Error::last_os_error()
    );
    let umask = current_umask();
    assert_eq!(
        mode_of(&device.path("dir/modes")),
        0o751 & !umask,
        "mode of a directory made with mkdir 0751 under umask {umask:o}"
    );
}

#[test]
fn rmdir_of_non_empty_directory_is_enotempty() {
    let device = mounted_device();
    fs::create_dir_all(device.path("dir/sub")).unwrap();
    fs::create_dir(device.path("with-file")).unwrap();
    fs::write(device.path("with-file/file"), b"x").unwrap();

    assert_errno(
        fs::remove_dir(device.path("dir")),
        libc::ENOTEMPTY,
        "rmdir of a directory with a subdirectory",
    );
    assert_errno(
        fs::remove_dir(device.path("with-file")),
        libc::ENOTEMPTY,
        "rmdir of a directory with a file",
    );
    assert!(
        device.path("with-file/file").exists(),
        "a failed rmdir must keep the content"
    );
}

#[test]
fn rmdir_of_file_is_enotdir() {
    let device = mounted_device();
    fs::write(device.path("file"), b"x").unwrap();
    assert_errno(
        fs::remove_dir(device.path("file")),
        libc::ENOTDIR,
        "rmdir of a regular file",
    );
    assert_eq!(
        fs::read(device.path("file")).unwrap(),
        b"x",
        "a failed rmdir must keep the file"
    );
    assert_errno(
        fs::remove_dir(device.path("missing")),
        libc::ENOENT,
        "rmdir of a missing name",
    );
}

#[test]
fn unlink_of_directory_is_eisdir() {
    let device = mounted_device();
    fs::create_dir(device.path("dir")).unwrap();
    assert_errno(
        fs::remove_file(device.path("dir")),
        libc::EISDIR,
        "unlink of a directory",
    );
    assert!(
        device.path("dir").is_dir(),
        "a failed unlink must keep the directory"
    );
    assert_errno(
        fs::remove_file(device.path("missing")),
        libc::ENOENT,
        "unlink of a missing name",
    );
}

// rename

#[test]
fn rename_within_directory() {
    let device = mounted_device();
    fs::write(device.path("old"), b"content").unwrap();
    let ino = fs::metadata(device.path("old")).unwrap().ino();

    fs::rename(device.path("old"), device.path("new")).unwrap();
    assert_errno(
        fs::metadata(device.path("old")),
        libc::ENOENT,
        "stat of the old name",
    );
    assert_eq!(
        fs::read(device.path("new")).unwrap(),
        b"content",
        "content under the new name"
    );
    assert_eq!(
        fs::metadata(device.path("new")).unwrap().ino(),
        ino,
        "rename keeps the inode number"
    );
    assert_eq!(
        entry_names(&device.mountpoint),
        sorted_names(&[b"new"]),
        "listing after rename"
    );

    fs::rename(device.path("new"), device.path("new")).unwrap();
    assert_eq!(
        fs::read(device.path("new")).unwrap(),
        b"content",
        "rename onto itself changes nothing"
    );
}

#[test]
fn rename_across_directories() {
    let device = mounted_device();
    fs::create_dir(device.path("from")).unwrap();
    fs::create_dir(device.path("to")).unwrap();
    fs::write(device.path("from/file"), b"moved").unwrap();
    fs::create_dir(device.path("from/sub")).unwrap();
    fs::write(device.path("from/sub/inner"), b"inner").unwrap();

    fs::rename(device.path("from/file"), device.path("to/renamed")).unwrap();
    fs::rename(device.path("from/sub"), device.path("to/sub")).unwrap();

    assert_eq!(
        raw_entry_names(&device.path("from")),
        sorted_names(&[b".", b".."]),
        "source directory after the moves"
    );
    assert_eq!(
        entry_names(&device.path("to")),
        sorted_names(&[b"renamed", b"sub"]),
        "target directory after the moves"
    );
    assert_eq!(
        fs::read(device.path("to/renamed")).unwrap(),
        b"moved",
        "content of the moved file"
    );
    assert_eq!(
        fs::read(device.path("to/sub/inner")).unwrap(),
        b"inner",
        "content inside the moved directory"
    );
}

#[test]
fn rename_over_existing_file_replaces_it() {
    let device = mounted_device();
    fs::write(device.path("source"), b"new content").unwrap();
    fs::write(device.path("target"), b"old content that is longer").unwrap();
    let source_ino = fs::metadata(device.path("source")).unwrap().ino();

    fs::rename(device.path("source"), device.path("target")).unwrap();
    assert_eq!(
        fs::read(device.path("target")).unwrap(),
        b"new content",
        "the target should have the source's content"
    );
    assert_eq!(
        fs::metadata(device.path("target")).unwrap().ino(),
        source_ino,
        "the target should be the source's inode"
    );
    assert_errno(
        fs::metadata(device.path("source")),
        libc::ENOENT,
        "stat of the source name",
    );
    assert_eq!(
        entry_names(&device.mountpoint),
        sorted_names(&[b"target"]),
        "listing after the replacing rename"
    );
}

#[test]
fn rename_over_open_file_keeps_its_handle() {
    let device = mounted_device();
    fs::write(device.path("source"), b"new").unwrap();
    fs::write(device.path("target"), b"old").unwrap();
    let mut old = File::open(device.path("target")).unwrap();

    fs::rename(device.path("source"), device.path("target")).unwrap();
    let mut content = Vec::new();
    old.read_to_end(&mut content).unwrap();
    assert_eq!(
        content, b"old",
        "a handle open on the replaced file still reads its content"
    );
    drop(old);
    assert_eq!(
        fs::read(device.path("target")).unwrap(),
        b"new",
        "the name shows the new file after the handle closes"
    );
}

#[test]
fn rename_directory_onto_directory() {
    let device = mounted_device();
    fs::create_dir(device.path("source")).unwrap();
    fs::write(device.path("source/file"), b"x").unwrap();
    fs::create_dir(device.path("full")).unwrap();
    fs::write(device.path("full/keep"), b"y").unwrap();
    fs::create_dir(device.path("empty")).unwrap();

    assert_errno(
        fs::rename(device.path("source"), device.path("full")),
        libc::ENOTEMPTY,
        "rename of a directory onto a non-empty directory",
    );
    assert_eq!(
        fs::read(device.path("full/keep")).unwrap(),
        b"y",
        "the non-empty target keeps its content"
    );
    assert_eq!(
        fs::read(device.path("source/file")).unwrap(),
        b"x",
        "the source keeps its content"
    );

    fs::rename(device.path("source"), device.path("empty")).unwrap();
    assert_eq!(
        fs::read(device.path("empty/file")).unwrap(),
        b"x",
        "rename onto an empty directory replaces it"
    );
    assert_errno(
        fs::metadata(device.path("source")),
        libc::ENOENT,
        "stat of the source name",
    );
}

#[test]
fn rename_directory_into_own_subdirectory_is_einval() {
    let device = mounted_device();
    fs::create_dir_all(device.path("dir/sub/deeper")).unwrap();

    assert_errno(
        fs::rename(device.path("dir"), device.path("dir/sub/deeper/dir")),
        libc::EINVAL,
        "rename of a directory into its own subdirectory",
    );
    assert_errno(
        fs::rename(device.path("dir"), device.path("dir/inside")),
        libc::EINVAL,
        "rename of a directory into itself",
    );
    assert!(
        device.path("dir/sub/deeper").is_dir(),
        "the tree is unchanged after the failed renames"
    );
}

#[test]
fn rename_between_file_and_directory_fails() {
    let device = mounted_device();
    fs::write(device.path("file"), b"x").unwrap();
    fs::create_dir(device.path("dir")).unwrap();

    assert_errno(
        fs::rename(device.path("file"), device.path("dir")),
        libc::EISDIR,
        "rename of a file onto a directory",
    );
    assert_errno(
        fs::rename(device.path("dir"), device.path("file")),
        libc::ENOTDIR,
        "rename of a directory onto a file",
    );
    assert_errno(
        fs::rename(device.path("missing"), device.path("other")),
        libc::ENOENT,
        "rename of a missing name",
    );
}

#[test]
fn rename_noreplace_and_exchange() {
    let device = mounted_device();
    fs::write(device.path("a"), b"A").unwrap();
    fs::write(device.path("b"), b"B").unwrap();

    assert_errno(
        renameat2(&device.path("a"), &device.path("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
        "RENAME_NOREPLACE onto an existing name",
    );
    assert_eq!(
        fs::read(device.path("b")).unwrap(),
        b"B",
        "RENAME_NOREPLACE must keep the target"
    );

    renameat2(&device.path("a"), &device.path("b"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(
        fs::read(device.path("a")).unwrap(),
        b"B",
        "content under a after RENAME_EXCHANGE"
    );
    assert_eq!(
        fs::read(device.path("b")).unwrap(),
        b"A",
        "content under b after RENAME_EXCHANGE"
    );
    assert_eq!(
        entry_names(&device.mountpoint),
        sorted_names(&[b"a", b"b"]),
        "listing after RENAME_EXCHANGE"
    );
}

// EEXIST

#[test]
fn create_of_existing_name_is_eexist() {
    let device = mounted_device();
    fs::create_dir(device.path("dir")).unwrap();
    fs::write(device.path("file"), b"keep").unwrap();

    assert_errno(
        fs::create_dir(device.path("dir")),
        libc::EEXIST,
        "mkdir of an existing directory",
    );
    assert_errno(
        fs::create_dir(device.path("file")),
        libc::EEXIST,
        "mkdir over an existing file",
    );
    assert_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(device.path("file")),
        libc::EEXIST,
        "O_CREAT|O_EXCL of an existing file",
    );
    assert_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(device.path("dir")),
        libc::EEXIST,
        "O_CREAT|O_EXCL of an existing directory",
    );
    assert_errno(
        symlink("anything", device.path("file")),
        libc::EEXIST,
        "symlink over an existing file",
    );
    assert_eq!(
        fs::read(device.path("file")).unwrap(),
        b"keep",
        "the existing file keeps its content"
    );
}

#[test]
fn open_of_directory_for_writing_is_eisdir() {
    let device = mounted_device();
    fs::create_dir(device.path("dir")).unwrap();
    assert_errno(
        OpenOptions::new().write(true).open(device.path("dir")),
        libc::EISDIR,
        "open of a directory for writing",
    );
}

#[test]
fn hard_link_to_directory_is_eperm() {
    let device = mounted_device();
    fs::create_dir(device.path("dir")).unwrap();
    // link(2) of a directory returns EPERM on Linux.
    assert_errno(
        fs::hard_link(device.path("dir"), device.path("link")),
        libc::EPERM,
        "hard link to a directory",
    );
    assert_eq!(
        entry_names(&device.mountpoint),
        sorted_names(&[b"dir"]),
        "a failed link must leave nothing behind"
    );
}

#[test]
fn cp_a_copies_tree_with_metadata() {
    let device = mounted_device();
    let source = common::temp_dir();
    let tree = source.path().join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("sub/data"), pseudo_random_bytes(150_000, 11)).unwrap();
    fs::write(tree.join("script"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(tree.join("script"), fs::Permissions::from_mode(0o751)).unwrap();
    symlink("sub/data", tree.join("link")).unwrap();
    set_times(
        &tree.join("sub/data"),
        time_of(1_300_000_000, 1),
        time_of(1_300_000_000, 999_999_999),
    );
    set_times(
        &tree.join("sub"),
        time_of(1_200_000_000, 7),
        time_of(1_200_000_000, 8),
    );

    let output = Command::new("cp")
        .arg("-a")
        .arg(&tree)
        .arg(device.path("copy"))
        .output()
        .expect("cannot run cp");
    assert!(
        output.status.success(),
        "cp -a into the mount failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let copy = device.path("copy");
    assert!(
        fs::read(copy.join("sub/data")).unwrap() == pseudo_random_bytes(150_000, 11),
        "content of the copied file"
    );
    assert_eq!(
        mode_of(&copy.join("script")),
        0o751,
        "mode of the copied script"
    );
    assert_eq!(
        fs::read_link(copy.join("link")).unwrap(),
        PathBuf::from("sub/data"),
        "target of the copied symlink"
    );
    assert_eq!(
        mtime_of(&copy.join("sub/data")),
        (1_300_000_000, 999_999_999),
        "mtime of the copied file"
    );
    assert_eq!(
        mtime_of(&copy.join("sub")),
        (1_200_000_000, 8),
        "mtime of the copied directory, which cp -a sets after filling it"
    );
}

// symlink and readlink

#[test]
fn symlink_with_relative_and_absolute_targets() {
    let device = mounted_device();
    fs::create_dir(device.path("dir")).unwrap();
    fs::write(device.path("dir/target"), b"through the link").unwrap();
    fs::create_dir(device.path("other")).unwrap();

    symlink("target", device.path("dir/same-dir")).unwrap();
    symlink("../dir/target", device.path("other/parent-dir")).unwrap();
    let absolute = device.path("dir/target");
    symlink(&absolute, device.path("absolute")).unwrap();
    symlink("nowhere", device.path("dangling")).unwrap();

    let links = [
        ("dir/same-dir", PathBuf::from("target")),
        ("other/parent-dir", PathBuf::from("../dir/target")),
        ("absolute", absolute.clone()),
    ];
    for (link, target) in &links {
        assert_eq!(
            &fs::read_link(device.path(link)).unwrap(),
            target,
            "readlink of {link}"
        );
        assert_eq!(
            fs::read(device.path(link)).unwrap(),
            b"through the link",
            "content read through {link}"
        );
        let meta = fs::symlink_metadata(device.path(link)).unwrap();
        assert_eq!(
            meta.len(),
            target.as_os_str().len() as u64,
            "lstat size of {link}"
        );
    }

    assert_eq!(
        fs::read_link(device.path("dangling")).unwrap(),
        PathBuf::from("nowhere"),
        "readlink of a dangling symlink"
    );
    assert_errno(
        fs::metadata(device.path("dangling")),
        libc::ENOENT,
        "stat through a dangling symlink",
    );
    assert_errno(
        fs::read_link(device.path("dir/target")),
        libc::EINVAL,
        "readlink of a regular file",
    );
}

// statfs

#[test]
fn statfs_reports_blocks_and_name_max() {
    let device = mounted_device();
    let c_mountpoint = c_path(&device.mountpoint);
    // SAFETY: statvfs reads the path and fills the zeroed struct.
    let stats = unsafe {
        let mut stats: libc::statvfs = std::mem::zeroed();
        assert_eq!(
            libc::statvfs(c_mountpoint.as_ptr(), &mut stats),
            0,
            "statvfs failed: {}",
            io::Error::last_os_error()
        );
        stats
    };
    assert!(
        stats.f_blocks > 0,
        "f_blocks should be nonzero, got {}",
        stats.f_blocks
    );
    assert!(
        stats.f_bsize > 0,
        "f_bsize should be nonzero, got {}",
        stats.f_bsize
    );
    assert!(
        stats.f_frsize > 0,
        "f_frsize should be nonzero, got {}",
        stats.f_frsize
    );
    assert!(
        stats.f_bfree <= stats.f_blocks,
        "f_bfree {} exceeds f_blocks {}",
        stats.f_bfree,
        stats.f_blocks
    );
    assert!(
        stats.f_bavail <= stats.f_bfree,
        "f_bavail {} exceeds f_bfree {}",
        stats.f_bavail,
        stats.f_bfree
    );
    assert_eq!(stats.f_namemax, 255, "f_namemax");
}

// name length

#[test]
fn name_of_256_bytes_is_enametoolong() {
    let device = mounted_device();
    let long = name_of_len(b'x', 256);
    fs::write(device.path("short"), b"x").unwrap();

    assert_errno(
        File::create(device.path(&long)),
        libc::ENAMETOOLONG,
        "create of a 256-byte name",
    );
    assert_errno(
        fs::create_dir(device.path(&long)),
        libc::ENAMETOOLONG,
        "mkdir of a 256-byte name",
    );
    assert_errno(
        fs::metadata(device.path(&long)),
        libc::ENAMETOOLONG,
        "stat of a 256-byte name",
    );
    assert_errno(
        fs::rename(device.path("short"), device.path(&long)),
        libc::ENAMETOOLONG,
        "rename to a 256-byte name",
    );
    assert_errno(
        symlink("short", device.path(&long)),
        libc::ENAMETOOLONG,
        "symlink named with 256 bytes",
    );
    assert_errno(
        fs::remove_file(device.path(&long)),
        libc::ENAMETOOLONG,
        "unlink of a 256-byte name",
    );
    assert_eq!(
        entry_names(&device.mountpoint),
        sorted_names(&[b"short"]),
        "failed calls must leave nothing behind"
    );
}

#[test]
fn name_of_255_bytes_works() {
    let device = mounted_device();
    let file = name_of_len(b'f', 255);
    let dir = name_of_len(b'd', 255);
    let renamed = name_of_len(b'r', 255);

    fs::write(device.path(&file), b"long name").unwrap();
    fs::create_dir(device.path(&dir)).unwrap();
    fs::rename(device.path(&file), device.path(&format!("{dir}/{renamed}"))).unwrap();

    assert_eq!(
        fs::read(device.path(&format!("{dir}/{renamed}"))).unwrap(),
        b"long name",
        "content under a 255-byte name"
    );
    assert_eq!(
        entry_names(&device.mountpoint),
        vec![OsString::from(&dir)],
        "listing of the root"
    );
    assert_eq!(
        entry_names(&device.path(&dir)),
        vec![OsString::from(&renamed)],
        "listing of the 255-byte directory"
    );
}

#[test]
fn non_utf8_names_round_trip() {
    let mut device = mounted_device();
    let file = OsStr::from_bytes(b"\xff\xfe-file");
    let dir = OsStr::from_bytes(b"dir-\x80\xc3");
    let renamed = OsStr::from_bytes(b"\xc0\xafrenamed");

    fs::write(device.mountpoint.join(file), b"bytes").unwrap();
    fs::create_dir(device.mountpoint.join(dir)).unwrap();
    fs::write(device.mountpoint.join(dir).join(file), b"inner").unwrap();
    fs::rename(
        device.mountpoint.join(dir).join(file),
        device.mountpoint.join(dir).join(renamed),
    )
    .unwrap();

    let check = |device: &Device, when: &str| {
        assert_eq!(
            entry_names(&device.mountpoint),
            sorted_names(&[file.as_bytes(), dir.as_bytes()]),
            "root listing {when}"
        );
        assert_eq!(
            entry_names(&device.mountpoint.join(dir)),
            sorted_names(&[renamed.as_bytes()]),
            "subdirectory listing {when}"
        );
        assert_eq!(
            fs::read(device.mountpoint.join(file)).unwrap(),
            b"bytes",
            "content under a non-UTF-8 name {when}"
        );
        assert_eq!(
            fs::read(device.mountpoint.join(dir).join(renamed)).unwrap(),
            b"inner",
            "content after a rename to a non-UTF-8 name {when}"
        );
    };
    check(&device, "after creation");
    remount(&mut device);
    check(&device, "after remount");
}

// persistence

#[test]
fn large_file_survives_remount() {
    const SIZE: usize = 64 * 1024 * 1024;
    const CHUNK: usize = 1024 * 1024;
    let mut device = mounted_device();
    let path = device.path("large");
    let data = pseudo_random_bytes(SIZE, 64);
    let expected = Sha256::digest(&data);

    let mut file = File::create(&path).unwrap();
    for chunk in data.chunks(CHUNK) {
        file.write_all(chunk).unwrap();
    }
    drop(file);
    drop(data);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        SIZE as u64,
        "size of the large file before remount"
    );

    remount(&mut device);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        SIZE as u64,
        "size of the large file after remount"
    );
    let mut hasher = Sha256::new();
    let mut file = File::open(&path).unwrap();
    let mut buffer = vec![0; CHUNK];
    loop {
        let read = file.read(&mut buffer).unwrap();
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    assert!(
        hasher.finalize() == expected,
        "SHA-256 of the large file after remount differs from what was written"
    );
}

#[test]
fn everything_survives_remount() {
    let mut device = mounted_device();
    fs::create_dir_all(device.path("docs/nested")).unwrap();
    fs::write(device.path("docs/a.txt"), b"alpha").unwrap();
    fs::write(
        device.path("docs/nested/b.bin"),
        pseudo_random_bytes(200_000, 9),
    )
    .unwrap();
    fs::write(device.path("empty"), b"").unwrap();
    // Cut inside the second block, then grow. The cut bytes must read as zeros.
    let truncated = pseudo_random_bytes(200_000, 10);
    fs::write(device.path("truncated"), &truncated).unwrap();
    let file = OpenOptions::new()
        .write(true)
        .open(device.path("truncated"))
        .unwrap();
    file.set_len(70_000).unwrap();
    file.set_len(100_000).unwrap();
    drop(file);
    symlink("docs/a.txt", device.path("link")).unwrap();
    fs::set_permissions(device.path("docs/a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(
        device.path("docs/nested"),
        fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    std::os::unix::fs::chown(device.path("empty"), Some(1000), Some(1001)).unwrap();
    set_times(
        &device.path("docs/a.txt"),
        time_of(1_500_000_000, 11),
        time_of(1_500_000_001, 22),
    );
    set_times(
        &device.path("docs/nested"),
        time_of(1_400_000_000, 33),
        time_of(1_400_000_001, 44),
    );
    let inode_before = fs::metadata(device.path("docs/a.txt")).unwrap().ino();

    remount(&mut device);

    assert_eq!(
        entry_names(&device.mountpoint),
        sorted_names(&[b"docs", b"empty", b"link", b"truncated"]),
        "root listing after remount"
    );
    assert_eq!(
        entry_names(&device.path("docs")),
        sorted_names(&[b"a.txt", b"nested"]),
        "docs listing after remount"
    );
    assert_eq!(
        fs::read(device.path("docs/a.txt")).unwrap(),
        b"alpha",
        "small file content after remount"
    );
    assert!(
        fs::read(device.path("docs/nested/b.bin")).unwrap() == pseudo_random_bytes(200_000, 9),
        "multi-block file content after remount"
    );
    assert_eq!(
        fs::metadata(device.path("empty")).unwrap().len(),
        0,
        "empty file size after remount"
    );
    let mut expected_truncated = truncated[..70_000].to_vec();
    expected_truncated.resize(100_000, 0);
    assert!(
        fs::read(device.path("truncated")).unwrap() == expected_truncated,
        "a file cut to 70000 bytes and grown to 100000 should read its first 70000 bytes, then zeros, after remount"
    );
    assert_eq!(
        fs::read_link(device.path("link")).unwrap(),
        PathBuf::from("docs/a.txt"),
        "symlink target after remount"
    );
    assert_eq!(
        mode_of(&device.path("docs/a.txt")),
        0o600,
        "file mode after remount"
    );
    assert_eq!(
        mode_of(&device.path("docs/nested")),
        0o751,
        "directory mode after remount"
    );
    let empty = fs::metadata(device.path("empty")).unwrap();
    assert_eq!(
        (empty.uid(), empty.gid()),
        (1000, 1001),
        "owner after remount"
    );
    assert_eq!(
        mtime_of(&device.path("docs/a.txt")),
        (1_500_000_001, 22),
        "file mtime after remount"
    );
    assert_eq!(
        mtime_of(&device.path("docs/nested")),
        (1_400_000_001, 44),
        "directory mtime after remount"
    );
    let atime = fs::metadata(device.path("docs/nested")).unwrap();
    assert_eq!(
        (atime.atime(), atime.atime_nsec()),
        (1_400_000_000, 33),
        "directory atime after remount"
    );
    assert_eq!(
        fs::metadata(device.path("docs/a.txt")).unwrap().ino(),
        inode_before,
        "inode number after remount"
    );
}

// mount errors

#[test]
fn mount_on_missing_mountpoint_fails() {
    let device = Device::local();
    let missing = device.mountpoint.join("does-not-exist");
    let output = syn()
        .arg("mount")
        .arg("--store")
        .arg(&device.store)
        .arg(&missing)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(
        !output.status.success(),
        "mount on a missing mount point should fail; stderr: {stderr}"
    );
    assert!(
        stderr.contains("does not exist"),
        "stderr should say the mount point does not exist: {stderr}"
    );
    assert!(
        stderr.contains("does-not-exist"),
        "stderr should name the mount point: {stderr}"
    );
}

#[test]
fn mount_on_busy_mountpoint_fails() {
    let device = mounted_device();
    fs::write(device.path("file"), b"first mount").unwrap();
    let other = Device::local();

    for (who, store) in [
        ("the same store", &device.store),
        ("another store", &other.store),
    ] {
        let output = syn()
            .arg("mount")
            .arg("--store")
            .arg(store)
            .arg(&device.mountpoint)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "mount of {who} on a busy mount point should fail; stderr: {stderr}"
        );
        assert!(
            stderr.contains("busy"),
            "stderr for {who} should say the mount point is busy: {stderr}"
        );
    }
    assert_eq!(
        fs::read(device.path("file")).unwrap(),
        b"first mount",
        "the first mount keeps working"
    );
}

#[test]
fn mount_of_store_in_use_fails() {
    let device = mounted_device();
    let free_mountpoint = common::temp_dir();
    let output = syn()
        .arg("mount")
        .arg("--store")
        .arg(&device.store)
        .arg(free_mountpoint.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(
        !output.status.success(),
        "a second mount of a mounted store should fail; stderr: {stderr}"
    );
    assert!(
        stderr.contains("in use"),
        "stderr should say the store is in use: {stderr}"
    );
    assert!(
        !is_mounted(free_mountpoint.path()),
        "nothing should be mounted on the second mount point"
    );
}

#[test]
fn mount_with_wrong_passphrase_fails() {
    let device = Device::local();
    let output = syn()
        .env("SYN_PASSPHRASE", "wrong")
        .arg("mount")
        .arg("--store")
        .arg(&device.store)
        .arg(&device.mountpoint)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(
        !output.status.success(),
        "mount with a wrong passphrase should fail; stderr: {stderr}"
    );
    assert!(
        stderr.contains("passphrase"),
        "stderr should mention the passphrase: {stderr}"
    );
    assert!(
        !is_mounted(&device.mountpoint),
        "nothing should be mounted after a wrong passphrase"
    );
}

#[test]
fn fusermount_unmount_keeps_store_consistent() {
    let mut device = mounted_device();
    fs::create_dir(device.path("dir")).unwrap();
    fs::write(device.path("dir/file"), b"before fusermount").unwrap();
    fs::write(device.path("big"), pseudo_random_bytes(300_000, 7)).unwrap();
    symlink("dir/file", device.path("link")).unwrap();

    let output = Command::new("fusermount3")
        .arg("-u")
        .arg(&device.mountpoint)
        .output()
        .expect("cannot run fusermount3");
    assert!(
        output.status.success(),
        "fusermount3 -u failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !is_mounted(&device.mountpoint),
        "the mount should be gone after fusermount3 -u"
    );
    wait_until("the daemon to exit after fusermount3 -u", || {
        !store_is_locked(&device.store)
    });

    device.mount();
    assert_eq!(
        fs::read(device.path("dir/file")).unwrap(),
        b"before fusermount",
        "small file after remount"
    );
    assert!(
        fs::read(device.path("big")).unwrap() == pseudo_random_bytes(300_000, 7),
        "multi-block file after remount"
    );
    assert_eq!(
        fs::read_link(device.path("link")).unwrap(),
        PathBuf::from("dir/file"),
        "symlink after remount"
    );
}
