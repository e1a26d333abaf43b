//! POSIX details on a real mount: directory link counts, fallocate,
//! SEEK_DATA and SEEK_HOLE, and access by other users with --allow-other.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::process::Command;

use common::{Device, run_ok, syn};

const BLOCK: u64 = 64 * 1024;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn directory_link_count_counts_subdirectories() {
    let mut device = Device::local();
    device.mount();
    let top = device.path("top");
    fs::create_dir(&top).unwrap();
    assert_eq!(fs::metadata(&top).unwrap().nlink(), 2, "empty directory");
    fs::create_dir(top.join("a")).unwrap();
    fs::create_dir(top.join("b")).unwrap();
    fs::write(top.join("file"), b"x").unwrap();
    assert_eq!(
        fs::metadata(&top).unwrap().nlink(),
        4,
        "two subdirectories, one file"
    );
    fs::remove_dir(top.join("a")).unwrap();
    assert_eq!(fs::metadata(&top).unwrap().nlink(), 3, "after rmdir");
}

#[test]
fn fallocate_grows_or_keeps_size() {
    let mut device = Device::local();
    device.mount();
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(device.path("f"))
        .unwrap();
    // SAFETY: fallocate on a descriptor this test owns.
    let grown = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, 100_000) };
    assert_eq!(grown, 0, "plain fallocate: errno {}", errno());
    assert_eq!(
        file.metadata().unwrap().len(),
        100_000,
        "plain fallocate grows the file"
    );

    // SAFETY: as above.
    let kept = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 500_000) };
    assert_eq!(kept, 0, "KEEP_SIZE: errno {}", errno());
    assert_eq!(
        file.metadata().unwrap().len(),
        100_000,
        "KEEP_SIZE leaves the size"
    );
    assert_eq!(
        fs::read(device.path("f")).unwrap(),
        vec![0u8; 100_000],
        "allocated bytes read as zeros"
    );
}

#[test]
fn punch_hole_zeros_the_range() {
    let mut device = Device::local();
    device.mount();
    let path = device.path("holey");
    let content = common::pseudo_random_bytes(4 * BLOCK as usize, 7);
    fs::write(&path, &content).unwrap();
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a descriptor this test owns.
    let punched = unsafe { libc::fallocate(file.as_raw_fd(), mode, 1000, (2 * BLOCK) as i64) };
    assert_eq!(punched, 0, "punch hole: errno {}", errno());
    drop(file);

    let mut expected = content.clone();
    expected[1000..1000 + 2 * BLOCK as usize].fill(0);
    let actual = fs::read(&path).unwrap();
    assert_eq!(actual.len(), expected.len(), "size is kept");
    assert!(
        actual == expected,
        "the punched range reads as zeros and the rest is intact"
    );
}

#[test]
fn seek_data_and_hole_find_the_sparse_parts() {
    let mut device = Device::local();
    device.mount();
    let path = device.path("sparse");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"data at the start", 0).unwrap();
    file.write_all_at(b"data far away", 10 * BLOCK).unwrap();
    file.sync_all().unwrap();
    let fd = file.as_raw_fd();
    // SAFETY: lseek on a descriptor this test owns.
    let seek = |offset: i64, whence: i32| unsafe { libc::lseek(fd, offset, whence) };

    assert_eq!(seek(0, libc::SEEK_DATA), 0, "data at the start");
    assert_eq!(
        seek(0, libc::SEEK_HOLE),
        BLOCK as i64,
        "hole after the first block"
    );
    assert_eq!(
        seek(BLOCK as i64, libc::SEEK_DATA),
        (10 * BLOCK) as i64,
        "next data far away"
    );
    let size = (10 * BLOCK + 13) as i64;
    assert_eq!(
        seek(10 * BLOCK as i64, libc::SEEK_HOLE),
        size,
        "the end counts as a hole"
    );
    assert_eq!(seek(size, libc::SEEK_DATA), -1, "no data past the end");
    assert_eq!(errno(), libc::ENXIO, "ENXIO past the end");
}

#[test]
fn allow_other_admits_other_users_under_permissions() {
    let device = Device::local();
    let mut device = device;
    run_ok(
        syn()
            .args(["mount", "--allow-other", "--store"])
            .arg(&device.store)
            .arg(&device.mountpoint),
    );
    device.mark_mounted();
    fs::set_permissions(&device.mountpoint, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(device.path("public"), b"readable by all").unwrap();
    fs::set_permissions(device.path("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(device.path("private"), b"owner only").unwrap();
    fs::set_permissions(device.path("private"), fs::Permissions::from_mode(0o600)).unwrap();

    // The temp dir above the mount point must let nobody through.
    let parent = device.mountpoint.parent().unwrap();
    fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).unwrap();
    let read_as_nobody = |name: &str| {
        Command::new("runuser")
            .args(["-u", "nobody", "--", "cat"])
            .arg(device.path(name))
            .output()
            .expect("cannot run runuser")
    };
    let public = read_as_nobody("public");
    assert!(
        public.status.success(),
        "nobody reads a 0644 file: {}",
        String::from_utf8_lossy(&public.stderr)
    );
    assert_eq!(public.stdout, b"readable by all");
    let private = read_as_nobody("private");
    assert!(
        !private.status.success(),
        "nobody must not read a 0600 file"
    );
    assert!(
        String::from_utf8_lossy(&private.stderr).contains("Permission denied"),
        "EACCES for the 0600 file"
    );
}

#[test]
fn petabyte_sparse_file_costs_nothing() {
    let mut device = Device::local();
    device.mount();
    let path = device.path("huge");
    const PETABYTE: u64 = 1 << 50;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.set_len(PETABYTE).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"tail", PETABYTE - 4).unwrap();
    file.write_all_at(b"past 4 GiB", 5 << 30).unwrap();
    drop(file);

    device.unmount();
    device.mount();
    let file = fs::File::open(&path).unwrap();
    assert_eq!(
        file.metadata().unwrap().len(),
        PETABYTE,
        "size after remount"
    );
    let allocated = file.metadata().unwrap().blocks() * 512;
    assert!(
        allocated < 1 << 20,
        "stat counts only stored blocks: {allocated} bytes"
    );
    let mut tail = [0u8; 4];
    file.read_exact_at(&mut tail, PETABYTE - 4).unwrap();
    assert_eq!(&tail, b"tail");
    let mut middle = [0u8; 10];
    file.read_exact_at(&mut middle, 5 << 30).unwrap();
    assert_eq!(&middle, b"past 4 GiB");
    let mut hole = [1u8; 4096];
    file.read_exact_at(&mut hole, 1 << 40).unwrap();
    assert!(hole.iter().all(|&byte| byte == 0), "a hole reads as zeros");
    // SAFETY: lseek on a descriptor this test owns.
    let next_data = unsafe { libc::lseek(file.as_raw_fd(), 6 << 30, libc::SEEK_DATA) };
    assert_eq!(
        next_data,
        (PETABYTE - 4) as i64 / (64 * 1024) * (64 * 1024),
        "SEEK_DATA jumps the hole"
    );

    let store_bytes: u64 = fs::read_dir(&device.store)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        store_bytes < 64 << 20,
        "the store stays small: {store_bytes} bytes"
    );
}

#[test]
fn o_direct_is_rejected_cleanly() {
    let mut device = Device::local();
    device.mount();
    fs::write(device.path("f"), b"x").unwrap();
    use std::os::unix::fs::OpenOptionsExt;
    let result = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device.path("f"));
    assert_eq!(
        result.unwrap_err().raw_os_error(),
        Some(libc::EINVAL),
        "O_DIRECT gives EINVAL"
    );
}

#[test]
fn names_in_both_normalization_forms_stay_distinct() {
    let mut device = Device::local();
    device.mount();
    let composed = "caf\u{e9}";
    let decomposed = "cafe\u{301}";
    fs::write(device.path(composed), b"composed").unwrap();
    fs::write(device.path(decomposed), b"decomposed").unwrap();
    assert_eq!(fs::read(device.path(composed)).unwrap(), b"composed");
    assert_eq!(fs::read(device.path(decomposed)).unwrap(), b"decomposed");
    let mut names: Vec<String> = fs::read_dir(&device.mountpoint)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected = vec![composed.to_string(), decomposed.to_string()];
    expected.sort();
    assert_eq!(names, expected, "both names kept byte for byte");
}

#[test]
fn other_users_meet_permission_checks() {
    let mut device = Device::local();
    run_ok(
        syn()
            .args(["mount", "--allow-other", "--store"])
            .arg(&device.store)
            .arg(&device.mountpoint),
    );
    device.mark_mounted();
    fs::set_permissions(
        device.mountpoint.parent().unwrap(),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::set_permissions(&device.mountpoint, fs::Permissions::from_mode(0o755)).unwrap();
    let shared = device.path("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(shared.join("roots"), b"owned by root").unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .args(args)
            .current_dir(&shared)
            .output()
            .unwrap()
    };

    let created = as_nobody(&["sh", "-c", "echo mine > nobodys"]);
    assert!(
        created.status.success(),
        "nobody creates a file in a 1777 directory"
    );
    assert_eq!(
        fs::metadata(shared.join("nobodys")).unwrap().uid(),
        65534,
        "owned by nobody"
    );
    assert!(
        !as_nobody(&["rm", "-f", "roots"]).status.success(),
        "the sticky bit protects root's file"
    );
    assert!(shared.join("roots").exists(), "root's file is still there");
    assert!(
        !as_nobody(&["chmod", "666", "roots"]).status.success(),
        "chmod by a non-owner is refused"
    );
    assert!(
        !as_nobody(&["chown", "nobody", "roots"]).status.success(),
        "chown by a non-owner is refused"
    );

    // Writing to a setuid file clears the bit, as on Linux.
    let setuid = shared.join("setuid");
    fs::write(&setuid, b"x").unwrap();
    fs::set_permissions(&setuid, fs::Permissions::from_mode(0o4777)).unwrap();
    let wrote = as_nobody(&["sh", "-c", "echo more >> setuid"]);
    assert!(wrote.status.success(), "nobody writes to a 4777 file");
    assert_eq!(
        fs::metadata(&setuid).unwrap().mode() & 0o7777,
        0o777,
        "the setuid bit is cleared by the write"
    );
}

#[test]
fn inode_numbers_survive_remount() {
    let mut device = Device::local();
    device.mount();
    fs::create_dir(device.path("dir")).unwrap();
    fs::write(device.path("dir/file"), b"x").unwrap();
    let before = (
        fs::metadata(device.path("dir")).unwrap().ino(),
        fs::metadata(device.path("dir/file")).unwrap().ino(),
    );
    device.unmount();
    device.mount();
    let after = (
        fs::metadata(device.path("dir")).unwrap().ino(),
        fs::metadata(device.path("dir/file")).unwrap().ino(),
    );
    assert_eq!(before, after, "inode numbers of the directory and the file");
}

#[test]
fn statfs_reports_the_store_disk() {
    let mut device = Device::local();
    device.mount();
    let statvfs = |path: &std::path::Path| {
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs writes into the zeroed struct and reads the path.
        unsafe {
            let mut stat: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut stat), 0);
            stat
        }
    };
    let mount = statvfs(&device.mountpoint);
    let disk = statvfs(&device.store);
    assert_eq!(
        mount.f_blocks * mount.f_frsize,
        disk.f_blocks * disk.f_frsize,
        "total size of the store's disk"
    );
    assert_eq!(mount.f_namemax, 255);
}

#[test]
fn metadata_changes_update_ctime_only() {
    let mut device = Device::local();
    device.mount();
    let path = device.path("f");
    fs::write(&path, b"x").unwrap();
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::open(&path)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(old).set_accessed(old))
        .unwrap();
    let before = fs::metadata(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let after = fs::metadata(&path).unwrap();
    assert!(
        (after.ctime(), after.ctime_nsec()) >= (before.ctime(), before.ctime_nsec()),
        "chmod moves ctime forward"
    );
    assert_eq!(after.mtime(), 1_000_000_000, "chmod leaves mtime");
    let _ = fs::read(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().atime(),
        1_000_000_000,
        "a read does not write atime"
    );
}
