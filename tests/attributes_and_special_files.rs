//! Extended attributes and special files on a real mount, locally and
//! across two devices.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::{Device, wait_until};

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn set_xattr(path: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let name = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let result = unsafe {
        libc::setxattr(
            c_path(path).as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

fn get_xattr(path: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
    let name = CString::new(name).unwrap();
    let mut buffer = vec![0u8; size];
    // SAFETY: the buffer is valid for `size` bytes.
    let result = unsafe {
        libc::getxattr(
            c_path(path).as_ptr(),
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            size,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buffer.truncate(result as usize);
    Ok(buffer)
}

fn list_xattrs(path: &Path) -> Vec<String> {
    let mut buffer = vec![0u8; 4096];
    // SAFETY: the buffer is valid for its length.
    let result = unsafe {
        libc::listxattr(
            c_path(path).as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    assert!(
        result >= 0,
        "listxattr failed: {}",
        std::io::Error::last_os_error()
    );
    buffer.truncate(result as usize);
    let mut names: Vec<String> = buffer
        .split(|&byte| byte == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect();
    names.sort();
    names
}

fn remove_xattr(path: &Path, name: &str) -> Result<(), i32> {
    let name = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings.
    let result = unsafe { libc::removexattr(c_path(path).as_ptr(), name.as_ptr()) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

#[test]
fn user_xattrs_set_get_list_remove() {
    let mut device = Device::local();
    device.mount();
    let path = device.path("tagged");
    fs::write(&path, b"x").unwrap();

    set_xattr(&path, "user.colour", b"blue", 0).unwrap();
    set_xattr(&path, "user.empty", b"", 0).unwrap();
    assert_eq!(get_xattr(&path, "user.colour", 100), Ok(b"blue".to_vec()));
    assert_eq!(get_xattr(&path, "user.empty", 100), Ok(Vec::new()));
    assert_eq!(list_xattrs(&path), vec!["user.colour", "user.empty"]);

    assert_eq!(
        get_xattr(&path, "user.missing", 100),
        Err(libc::ENODATA),
        "missing attribute"
    );
    assert_eq!(
        get_xattr(&path, "user.colour", 2),
        Err(libc::ERANGE),
        "buffer too small"
    );
    assert_eq!(
        get_xattr(&path, "user.colour", 0),
        Ok(Vec::new()),
        "size query returns no bytes"
    );
    assert_eq!(
        set_xattr(&path, "user.colour", b"red", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    assert_eq!(
        set_xattr(&path, "user.other", b"red", libc::XATTR_REPLACE),
        Err(libc::ENODATA)
    );
    assert_eq!(
        set_xattr(&path, "user.big", &vec![1u8; 65_537], 0),
        Err(libc::E2BIG),
        "value over 64 KiB"
    );
    set_xattr(&path, "user.large", &vec![7u8; 65_536], 0).unwrap();
    assert_eq!(
        get_xattr(&path, "user.large", 70_000).map(|value| value.len()),
        Ok(65_536)
    );

    remove_xattr(&path, "user.colour").unwrap();
    assert_eq!(
        remove_xattr(&path, "user.colour"),
        Err(libc::ENODATA),
        "second removal"
    );
    assert_eq!(list_xattrs(&path), vec!["user.empty", "user.large"]);

    device.unmount();
    device.mount();
    assert_eq!(
        list_xattrs(&path),
        vec!["user.empty", "user.large"],
        "after remount"
    );
    assert_eq!(get_xattr(&path, "user.empty", 10), Ok(Vec::new()));
}

#[test]
fn xattrs_reach_the_other_device() {
    let (_server, _token, a, b) = common::mounted_pair();
    fs::write(a.path("file"), b"x").unwrap();
    set_xattr(&a.path("file"), "user.note", b"synced attribute", 0).unwrap();
    wait_until("the attribute on B", || {
        get_xattr(&b.path("file"), "user.note", 100) == Ok(b"synced attribute".to_vec())
    });
}

#[test]
fn special_files_are_stored_as_metadata() {
    let mut device = Device::local();
    device.mount();
    let fifo = device.path("pipe");
    let socket = device.path("socket");
    let character = device.path("null-like");
    // SAFETY: valid paths; mknod creates nodes only inside the mount.
    unsafe {
        assert_eq!(libc::mkfifo(c_path(&fifo).as_ptr(), 0o644), 0, "mkfifo");
        assert_eq!(
            libc::mknod(c_path(&socket).as_ptr(), libc::S_IFSOCK | 0o600, 0),
            0,
            "mknod socket"
        );
        assert_eq!(
            libc::mknod(
                c_path(&character).as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(1, 3)
            ),
            0,
            "mknod char"
        );
    }

    for _ in 0..2 {
        assert!(
            fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(),
            "fifo type"
        );
        assert!(
            fs::symlink_metadata(&socket)
                .unwrap()
                .file_type()
                .is_socket(),
            "socket type"
        );
        let meta = fs::symlink_metadata(&character).unwrap();
        assert!(meta.file_type().is_char_device(), "char device type");
        assert_eq!(meta.rdev(), libc::makedev(1, 3), "device number");
        assert_eq!(meta.mode() & 0o777, 0o600, "device mode");
        device.unmount();
        device.mount();
    }
}
