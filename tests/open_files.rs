//! Open files: metadata changes while a file is open, and content visible
//! through handles.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, UNIX_EPOCH};

use common::Device;

#[test]
fn metadata_change_while_open_keeps_written_data() {
    let mut device = Device::local();
    device.mount();
    let path = device.path("copied.txt");

    // What cp -a does: write, then set times and mode through the open file.
    let mut file = fs::File::create(&path).unwrap();
    file.write_all(b"content written before futimens").unwrap();
    let stamp = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    file.set_times(fs::FileTimes::new().set_modified(stamp).set_accessed(stamp))
        .unwrap();
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    drop(file);

    assert_eq!(fs::read(&path).unwrap(), b"content written before futimens");
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), stamp);

    device.unmount();
    device.mount();
    assert_eq!(
        fs::read(&path).unwrap(),
        b"content written before futimens",
        "after remount"
    );
    assert_eq!(
        fs::metadata(&path).unwrap().modified().unwrap(),
        stamp,
        "mtime after remount"
    );
}

#[test]
fn handle_reads_its_own_unflushed_writes() {
    let mut device = Device::local();
    device.mount();
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(device.path("rw"))
        .unwrap();
    file.write_all(&vec![7u8; 200_000]).unwrap();
    file.seek(SeekFrom::Start(70_000)).unwrap();
    file.write_all(b"middle").unwrap();
    file.seek(SeekFrom::Start(69_998)).unwrap();
    let mut window = [0u8; 10];
    file.read_exact(&mut window).unwrap();
    assert_eq!(&window, b"\x07\x07middle\x07\x07");
    assert_eq!(file.metadata().unwrap().len(), 200_000);
}

#[test]
fn file_unlinked_while_open_stays_readable() {
    let mut device = Device::local();
    device.mount();
    let path = device.path("doomed");
    fs::write(&path, b"still here").unwrap();
    let mut file = fs::File::open(&path).unwrap();
    fs::remove_file(&path).unwrap();
    assert!(!path.exists(), "the name is gone");
    let mut content = Vec::new();
    file.read_to_end(&mut content).unwrap();
    assert_eq!(content, b"still here");
}
