//! Hard links on a real mount: link counts, unlinking one name, renames,
//! remount, and sync to another device.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

use common::{Device, read_if_exists, wait_until};

#[test]
fn links_share_content_and_count() {
    let mut device = Device::local();
    device.mount();
    fs::create_dir(device.path("other")).unwrap();
    fs::write(device.path("original"), b"shared bytes").unwrap();
    fs::hard_link(device.path("original"), device.path("other/second")).unwrap();
    fs::hard_link(device.path("original"), device.path("third")).unwrap();

    let original = fs::metadata(device.path("original")).unwrap();
    let second = fs::metadata(device.path("other/second")).unwrap();
    assert_eq!(original.nlink(), 3, "three names");
    assert_eq!(original.ino(), second.ino(), "one inode");

    fs::OpenOptions::new()
        .append(true)
        .open(device.path("third"))
        .unwrap()
        .write_all(b", appended")
        .unwrap();
    assert_eq!(
        fs::read(device.path("original")).unwrap(),
        b"shared bytes, appended",
        "a write through one name"
    );

    assert_eq!(
        fs::hard_link(device.path("original"), device.path("third"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EEXIST),
        "linking onto an existing name"
    );

    fs::remove_file(device.path("original")).unwrap();
    assert!(
        !device.path("original").exists(),
        "the removed name is gone"
    );
    assert_eq!(
        fs::read(device.path("other/second")).unwrap(),
        b"shared bytes, appended",
        "other names keep it"
    );
    assert_eq!(
        fs::metadata(device.path("third")).unwrap().nlink(),
        2,
        "two names left"
    );

    fs::rename(device.path("third"), device.path("renamed")).unwrap();
    assert_eq!(
        fs::metadata(device.path("renamed")).unwrap().nlink(),
        2,
        "rename keeps the count"
    );

    device.unmount();
    device.mount();
    let renamed = fs::metadata(device.path("renamed")).unwrap();
    let second = fs::metadata(device.path("other/second")).unwrap();
    assert_eq!(renamed.nlink(), 2, "count after remount");
    assert_eq!(renamed.ino(), second.ino(), "still one inode after remount");

    fs::remove_file(device.path("renamed")).unwrap();
    fs::remove_file(device.path("other/second")).unwrap();
    assert_eq!(
        fs::read_dir(device.path("other")).unwrap().count(),
        0,
        "last name removed"
    );
}

#[test]
fn rename_onto_own_hard_link_does_nothing() {
    let mut device = Device::local();
    device.mount();
    fs::write(device.path("a"), b"x").unwrap();
    fs::hard_link(device.path("a"), device.path("b")).unwrap();
    // POSIX: renaming a name onto another link of the same file does nothing.
    fs::rename(device.path("a"), device.path("b")).unwrap();
    assert!(device.path("a").exists(), "both names stay");
    assert!(device.path("b").exists(), "both names stay");
    assert_eq!(fs::metadata(device.path("a")).unwrap().nlink(), 2);
}

#[test]
fn rename_over_a_linked_file_keeps_its_other_name() {
    let mut device = Device::local();
    device.mount();
    fs::write(device.path("target"), b"old").unwrap();
    fs::hard_link(device.path("target"), device.path("keeper")).unwrap();
    fs::write(device.path("new"), b"new").unwrap();
    fs::rename(device.path("new"), device.path("target")).unwrap();
    assert_eq!(fs::read(device.path("target")).unwrap(), b"new");
    assert_eq!(
        fs::read(device.path("keeper")).unwrap(),
        b"old",
        "the other name keeps the old file"
    );
    assert_eq!(fs::metadata(device.path("keeper")).unwrap().nlink(), 1);
}

#[test]
fn hard_links_reach_the_other_device() {
    let (_server, _token, a, b) = common::mounted_pair();
    fs::write(a.path("first"), b"linked").unwrap();
    fs::hard_link(a.path("first"), a.path("second")).unwrap();
    wait_until("both names on B", || {
        read_if_exists(&b.path("second")).as_deref() == Some(b"linked")
    });
    let first = fs::metadata(b.path("first")).unwrap();
    let second = fs::metadata(b.path("second")).unwrap();
    assert_eq!(first.ino(), second.ino(), "one inode on B");
    assert_eq!(first.nlink(), 2, "two names on B");

    fs::remove_file(a.path("first")).unwrap();
    wait_until("the unlink on B", || !b.path("first").exists());
    assert_eq!(
        fs::read(b.path("second")).unwrap(),
        b"linked",
        "the other name survives on B"
    );
}
