//! A file held open and written on device A while B's change to it
//! arrives: when A closes it, A's content becomes the conflict copy and B's
//! keeps the name. The same holds for writes to a shared mapping.
//!
//! These tests have a binary of their own and run one at a time. The kernel sends FUSE a
//! flush whenever any copy of a descriptor closes, and a process that another
//! test thread forks keeps a copy of every open descriptor until its exec
//! closes them. Such a flush would commit A's file before B's change lands,
//! and then B's version would become the conflict copy instead.

mod common;

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};

use common::{Device, read_if_exists, settle, wait_until};

/// Taken by each test for its whole run, so that no test forks while
/// another has its file open.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn pulled_total(device: &Device) -> u64 {
    device.status_from_socket()["sync"]["pulled_total"]
        .as_u64()
        .unwrap_or(0)
}

fn names_in(device: &Device) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(&device.mountpoint)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn open_file_becomes_conflict_copy() {
    let _serial = one_at_a_time();
    let (_server, _token, a, b) = common::mounted_pair();
    fs::write(a.path("shared.txt"), b"base").unwrap();
    wait_until("the file on B", || {
        read_if_exists(&b.path("shared.txt")).as_deref() == Some(b"base")
    });
    settle(&[&a, &b]);

    // From here until `open_file` closes, nothing in this process may fork: the
    // status comes from the control socket, not from a `syn` child.
    let pulled_before = pulled_total(&a);
    let mut open_file = fs::OpenOptions::new()
        .write(true)
        .open(a.path("shared.txt"))
        .unwrap();
    open_file.write_all(b"A's unsaved work").unwrap();
    fs::write(b.path("shared.txt"), b"B's version").unwrap();
    wait_until("B to push its version", || {
        b.status_from_socket()["pending_changes"].as_u64() == Some(0)
    });
    wait_until("B's change to reach A", || pulled_total(&a) > pulled_before);
    assert_eq!(
        a.status_from_socket()["conflicts"].as_u64(),
        Some(0),
        "no conflict while A's file is still open"
    );
    drop(open_file);

    settle(&[&a, &b]);
    for device in [&a, &b] {
        let names = names_in(device);
        assert_eq!(names.len(), 2, "the file and one conflict copy: {names:?}");
        assert_eq!(
            fs::read(device.path("shared.txt")).unwrap(),
            b"B's version",
            "B's version keeps the name"
        );
        let copy = names
            .iter()
            .find(|name| name.starts_with("shared (conflict "))
            .unwrap_or_else(|| panic!("a conflict copy exists: {names:?}"));
        assert!(
            copy.ends_with(".txt"),
            "the copy keeps the extension: {copy}"
        );
        assert_eq!(
            fs::read(device.path(copy)).unwrap(),
            b"A's unsaved work",
            "A's work is in the conflict copy"
        );
    }
    assert_eq!(
        a.status_from_socket()["conflicts"].as_u64(),
        Some(1),
        "A counts the conflict it created"
    );
}

// NOTE: with the kernel invalidated after the working copy is refreshed
// (the wrong order), this test failed in about half of the runs with the
// daemon's debug logging on and passed without it. It catches that order
// only under some timings.
#[test]
fn mapped_writes_become_conflict_copy() {
    let _serial = one_at_a_time();
    let (_server, _token, a, b) = common::mounted_pair();
    let page = 4096;
    let mut base = b"base".to_vec();
    base.resize(page, b'.');
    fs::write(a.path("mapped.bin"), &base).unwrap();
    wait_until("the file on B", || {
        read_if_exists(&b.path("mapped.bin")).as_deref() == Some(&base[..])
    });
    settle(&[&a, &b]);

    let pulled_before = pulled_total(&a);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(a.path("mapped.bin"))
        .unwrap();
    // SAFETY: a shared mapping of one page of a file this test owns; it is
    // written only through `mapped` and unmapped below.
    let mapped = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(mapped, libc::MAP_FAILED, "mmap failed");
    let work = b"A's mapped work";
    // SAFETY: `mapped` is a writable mapping of `page` bytes.
    unsafe { std::ptr::copy_nonoverlapping(work.as_ptr(), mapped.cast::<u8>(), work.len()) };

    fs::write(b.path("mapped.bin"), b"B's version").unwrap();
    wait_until("B to push its version", || {
        b.status_from_socket()["pending_changes"].as_u64() == Some(0)
    });
    wait_until("B's change to reach A", || pulled_total(&a) > pulled_before);

    // SAFETY: `mapped` came from the mmap above and is unmapped once.
    unsafe {
        assert_eq!(libc::msync(mapped, page, libc::MS_SYNC), 0, "msync failed");
        assert_eq!(libc::munmap(mapped, page), 0, "munmap failed");
    }
    drop(file);

    settle(&[&a, &b]);
    let mut expected_copy = base.clone();
    expected_copy[..work.len()].copy_from_slice(work);
    for device in [&a, &b] {
        let names = names_in(device);
        assert_eq!(
            fs::read(device.path("mapped.bin")).unwrap(),
            b"B's version",
            "B's version keeps the name: {names:?}"
        );
        let copy = names
            .iter()
            .find(|name| name.starts_with("mapped (conflict "))
            .unwrap_or_else(|| panic!("a conflict copy exists: {names:?}"));
        assert_eq!(
            fs::read(device.path(copy)).unwrap(),
            expected_copy,
            "A's mapped work is in the conflict copy"
        );
    }
}

/// A program holding the file open for appending writes after B's change
/// lands. The kernel places the append at the size it knew, so writing it
/// into B's version would overwrite part of it; A's version becomes the
/// conflict copy instead.
#[test]
fn append_after_remote_change_becomes_conflict_copy() {
    let _serial = one_at_a_time();
    let (_server, _token, a, b) = common::mounted_pair();
    fs::write(a.path("log.txt"), b"base\n").unwrap();
    wait_until("the file on B", || {
        read_if_exists(&b.path("log.txt")).as_deref() == Some(b"base\n")
    });
    settle(&[&a, &b]);

    let pulled_before = pulled_total(&a);
    let mut appender = fs::OpenOptions::new()
        .append(true)
        .open(a.path("log.txt"))
        .unwrap();
    fs::write(b.path("log.txt"), b"B wrote a longer line\n").unwrap();
    wait_until("B to push its version", || {
        b.status_from_socket()["pending_changes"].as_u64() == Some(0)
    });
    wait_until("B's change to reach A", || pulled_total(&a) > pulled_before);
    appender.write_all(b"A appended\n").unwrap();
    drop(appender);

    settle(&[&a, &b]);
    for device in [&a, &b] {
        let names = names_in(device);
        assert_eq!(
            fs::read(device.path("log.txt")).unwrap(),
            b"B wrote a longer line\n",
            "B's version keeps the name: {names:?}"
        );
        let copy = names
            .iter()
            .find(|name| name.starts_with("log (conflict "))
            .unwrap_or_else(|| panic!("a conflict copy exists: {names:?}"));
        assert_eq!(
            fs::read(device.path(copy)).unwrap(),
            b"base\nA appended\n",
            "A's append is in the conflict copy"
        );
    }
}
