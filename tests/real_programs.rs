//! Real programs on a real mount: git, SQLite in both journal modes, an
//! editor's safe save seen from another device, and shared writable mmap.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{Device, read_if_exists, wait_until};

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn git(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command.arg("-C").arg(dir).args([
        "-c",
        "user.name=Test",
        "-c",
        "user.email=test@example.invalid",
        "-c",
        "init.defaultBranch=main",
    ]);
    command
}

/// A repository outside the mount with a few commits of history.
fn origin_repository(root: &Path) -> std::path::PathBuf {
    let origin = root.join("origin");
    fs::create_dir(&origin).unwrap();
    run(git(&origin).arg("init").arg("-q"));
    for round in 0..5 {
        fs::write(
            origin.join(format!("file{round}.txt")),
            format!("round {round}\n").repeat(100),
        )
        .unwrap();
        fs::create_dir_all(origin.join("src/nested")).unwrap();
        fs::write(
            origin.join("src/nested/code.rs"),
            format!("fn round_{round}() {{}}\n"),
        )
        .unwrap();
        run(git(&origin).args(["add", "-A"]));
        run(git(&origin)
            .args(["commit", "-q", "-m"])
            .arg(format!("round {round}")));
    }
    origin
}

#[test]
fn git_clone_commit_gc_fsck() {
    let scratch = common::temp_dir();
    let origin = origin_repository(scratch.path());
    let mut device = Device::local();
    device.mount();
    let clone = device.path("clone");
    run(Command::new("git")
        .args(["clone", "-q"])
        .arg(&origin)
        .arg(&clone));

    assert_eq!(
        run(git(&clone).args(["status", "--porcelain"])),
        "",
        "clean right after clone"
    );
    fs::write(clone.join("new.txt"), b"a change made on the mount\n").unwrap();
    run(git(&clone).args(["add", "new.txt"]));
    run(git(&clone).args(["commit", "-q", "-m", "on the mount"]));
    run(git(&clone).args(["gc", "-q"]));
    run(git(&clone).args(["fsck", "--strict"]));
    assert_eq!(
        run(git(&clone).args(["status", "--porcelain"])),
        "",
        "clean after commit and gc"
    );

    device.unmount();
    device.mount();
    run(git(&clone).args(["fsck", "--strict"]));
    assert_eq!(
        run(git(&clone).args(["status", "--porcelain"])),
        "",
        "clean after remount"
    );
    assert_eq!(
        run(git(&clone).args(["rev-list", "--count", "HEAD"])).trim(),
        "6"
    );
}

fn sqlite(database: &Path, sql: &str) -> String {
    run(Command::new("sqlite3")
        .arg(database)
        .args([".timeout 10000", sql]))
}

#[test]
fn sqlite_wal_and_rollback_journal_survive_remount() {
    let mut device = Device::local();
    device.mount();
    for mode in ["wal", "delete"] {
        let database = device.path(&format!("{mode}.db"));
        sqlite(
            &database,
            &format!("PRAGMA journal_mode={mode}; CREATE TABLE t (n INTEGER, text TEXT);"),
        );
        // Two processes write in turns, each in a transaction.
        let writers: Vec<_> = (0..2)
            .map(|writer| {
                let database = database.clone();
                std::thread::spawn(move || {
                    for batch in 0..10 {
                        let sql = format!(
                            "BEGIN IMMEDIATE; INSERT INTO t VALUES ({writer}, 'batch {batch}'); INSERT INTO t VALUES ({writer}, '{}'); COMMIT;",
                            "x".repeat(3000)
                        );
                        sqlite(&database, &sql);
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("a writer failed");
        }
    }
    device.unmount();
    device.mount();
    for mode in ["wal", "delete"] {
        let database = device.path(&format!("{mode}.db"));
        assert_eq!(
            sqlite(&database, "PRAGMA integrity_check;").trim(),
            "ok",
            "{mode}: integrity"
        );
        assert_eq!(
            sqlite(&database, "SELECT count(*) FROM t;").trim(),
            "40",
            "{mode}: all rows"
        );
    }
}

#[test]
fn safe_save_never_shows_a_missing_file_remotely() {
    let (_server, _token, a, b) = common::mounted_pair();
    fs::write(a.path("document.txt"), b"version 0").unwrap();
    wait_until("the first version on B", || b.path("document.txt").exists());

    for version in 1..=5 {
        let temporary = a.path(".document.txt.swp");
        let content = format!("version {version}");
        let file = fs::File::create(&temporary).unwrap();
        std::io::Write::write_all(&mut &file, content.as_bytes()).unwrap();
        file.sync_all().unwrap();
        drop(file);
        fs::rename(&temporary, a.path("document.txt")).unwrap();
        fs::File::open(&a.mountpoint).unwrap().sync_all().unwrap();

        wait_until("the new version on B", || {
            let seen = read_if_exists(&b.path("document.txt"));
            assert!(
                seen.as_ref().is_some_and(|bytes| !bytes.is_empty()),
                "B saw the document missing or empty"
            );
            seen.as_deref() == Some(content.as_bytes())
        });
    }
}

#[test]
fn shared_writable_mmap_reaches_the_store() {
    let mut device = Device::local();
    device.mount();
    let path = device.path("mapped");
    fs::write(&path, vec![b'.'; 200_000]).unwrap();
    let script = "import mmap, sys\nwith open(sys.argv[1], 'r+b') as f:\n    m = mmap.mmap(f.fileno(), 0)\n    m[0:5] = b'start'\n    m[150000:150003] = b'end'\n    m.flush()\n    m.close()\n";
    run(Command::new("python3").arg("-c").arg(script).arg(&path));

    device.unmount();
    device.mount();
    let content = fs::read(&path).unwrap();
    assert_eq!(&content[0..5], b"start", "first write through the mapping");
    assert_eq!(
        &content[150_000..150_003],
        b"end",
        "second write through the mapping"
    );
    assert_eq!(content.len(), 200_000, "size unchanged");
}

/// A small tree with nested directories, a symlink, a hard link, modes and
/// old mtimes.
fn sample_tree(root: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let tree = root.join("tree");
    fs::create_dir_all(tree.join("docs/deep")).unwrap();
    for index in 0..30 {
        fs::write(
            tree.join(format!("docs/file{index}.txt")),
            format!("line {index}\n").repeat(index * 50 + 1),
        )
        .unwrap();
    }
    fs::write(
        tree.join("docs/deep/binary.bin"),
        common::pseudo_random_bytes(300_000, 11),
    )
    .unwrap();
    fs::write(tree.join("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(tree.join("script.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("docs/file3.txt", tree.join("link")).unwrap();
    fs::hard_link(tree.join("docs/file5.txt"), tree.join("hardlink.txt")).unwrap();
    let old = std::time::UNIX_EPOCH + std::time::Duration::new(1_500_000_000, 123_456_789);
    fs::File::open(tree.join("docs/file1.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    tree
}

/// Compares content with diff and metadata with find; `nanoseconds` false
/// compares mtimes to the second, for tools that skip setting a time that
/// already matches to the second (rsync).
fn assert_same_tree(expected: &Path, actual: &Path, nanoseconds: bool) {
    run(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(expected)
        .arg(actual));
    // A directory's size depends on the file system, so it is left out.
    let format = if nanoseconds {
        "%p\\t%m\\t%n\\t%y%s\\t%T@\\t%l\\n"
    } else {
        "%p\\t%m\\t%n\\t%y%s\\t%Ts\\t%l\\n"
    };
    let listing = |root: &Path| -> Vec<String> {
        let output = run(Command::new("find")
            .arg(".")
            .args(["-printf", format])
            .current_dir(root));
        let mut lines: Vec<String> = output
            .lines()
            // The top directory's own mtime changes as entries are created in it.
            .filter(|line| !line.starts_with(".\t"))
            .map(|line| {
                let mut fields: Vec<String> = line.split('\t').map(str::to_string).collect();
                if fields.len() > 3 && fields[3].starts_with('d') {
                    fields[3] = "d".into();
                }
                fields.join("\t")
            })
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(
        listing(expected),
        listing(actual),
        "paths, modes, link counts, types, sizes, mtimes and link targets"
    );
}

#[test]
fn rsync_twice_transfers_nothing_the_second_time() {
    let scratch = common::temp_dir();
    let tree = sample_tree(scratch.path());
    let mut device = Device::local();
    device.mount();
    let target = device.path("copy");
    let mut source = tree.as_os_str().to_owned();
    source.push("/");
    run(Command::new("rsync").arg("-aHAX").arg(&source).arg(&target));
    assert_same_tree(&tree, &target, false);

    let second = run(Command::new("rsync")
        .args(["-aHAX", "--stats"])
        .arg(&source)
        .arg(&target));
    assert!(
        second.contains("Number of regular files transferred: 0"),
        "the second rsync transferred files:\n{second}"
    );
}

/// A real directory tree of this machine: git's documentation, or the
/// sources of a crate in the cargo registry where the image has no docs.
fn real_tree() -> std::path::PathBuf {
    let docs = std::path::PathBuf::from("/usr/share/doc/git");
    if docs.is_dir() {
        return docs;
    }
    let registry = std::path::PathBuf::from(
        std::env::var("CARGO_HOME")
            .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default())),
    )
    .join("registry/src");
    let index = fs::read_dir(&registry)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::read_dir(index).unwrap().next().unwrap().unwrap().path()
}

#[test]
fn rsync_of_a_real_tree_round_trips() {
    let tree = real_tree();
    let mut device = Device::local();
    device.mount();
    let target = device.path("real");
    let mut source = tree.as_os_str().to_owned();
    source.push("/");
    run(Command::new("rsync").arg("-aHAX").arg(&source).arg(&target));
    assert_same_tree(&tree, &target, false);
    let second = run(Command::new("rsync")
        .args(["-aHAX", "--stats"])
        .arg(&source)
        .arg(&target));
    assert!(
        second.contains("Number of regular files transferred: 0"),
        "second rsync:\n{second}"
    );
}

#[test]
fn cp_and_tar_round_trips_preserve_the_tree() {
    let scratch = common::temp_dir();
    let tree = sample_tree(scratch.path());
    let mut device = Device::local();
    device.mount();

    run(Command::new("cp")
        .arg("-a")
        .arg(&tree)
        .arg(device.path("cp-copy")));
    assert_same_tree(&tree, &device.path("cp-copy"), true);

    let archive = scratch.path().join("tree.tar");
    // The POSIX (pax) format keeps nanosecond mtimes.
    run(Command::new("tar")
        .args(["--format=posix", "-cf"])
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .arg("."));
    fs::create_dir(device.path("untarred")).unwrap();
    run(Command::new("tar")
        .arg("-xpf")
        .arg(&archive)
        .arg("-C")
        .arg(device.path("untarred")));
    assert_same_tree(&tree, &device.path("untarred"), true);

    let back = scratch.path().join("back");
    fs::create_dir(&back).unwrap();
    let mounted_archive = device.path("tree.tar");
    run(Command::new("tar")
        .args(["--format=posix", "-cf"])
        .arg(&mounted_archive)
        .arg("-C")
        .arg(device.path("untarred"))
        .arg("."));
    run(Command::new("tar")
        .arg("-xpf")
        .arg(&mounted_archive)
        .arg("-C")
        .arg(&back));
    assert_same_tree(&tree, &back, true);
}

#[test]
fn gio_file_manager_operations_work() {
    let mut device = Device::local();
    device.mount();
    let gio = |args: &[&str]| {
        run(Command::new("gio")
            .args(args)
            .current_dir(&device.mountpoint))
    };
    fs::write(device.path("a.txt"), b"from a file manager").unwrap();

    gio(&["copy", "a.txt", "b.txt"]);
    assert_eq!(
        fs::read(device.path("b.txt")).unwrap(),
        b"from a file manager",
        "gio copy"
    );
    gio(&["move", "b.txt", "c.txt"]);
    assert!(
        !device.path("b.txt").exists() && device.path("c.txt").exists(),
        "gio move"
    );
    gio(&["rename", "c.txt", "d.txt"]);
    assert!(device.path("d.txt").exists(), "gio rename");
    gio(&["trash", "d.txt"]);
    assert!(!device.path("d.txt").exists(), "gio trash removes the name");
    let trash = fs::read_dir(&device.mountpoint)
        .unwrap()
        .filter_map(|entry| entry.ok())
        .find(|entry| entry.file_name().to_string_lossy().starts_with(".Trash-"))
        .expect("gio trash creates .Trash-UID on the mount");
    let trashed = trash.path().join("files/d.txt");
    assert_eq!(
        fs::read(&trashed).unwrap(),
        b"from a file manager",
        "the trashed file keeps its content"
    );

    let listing = gio(&["list", "."]);
    assert!(
        listing.lines().any(|line| line == "a.txt"),
        "gio list: {listing}"
    );
    let info = gio(&["info", "a.txt"]);
    assert!(info.contains("size:  19"), "gio info: {info}");
    gio(&["remove", "a.txt"]);
    assert!(!device.path("a.txt").exists(), "gio remove");
}

#[test]
fn cargo_builds_a_crate_on_the_mount() {
    let mut device = Device::local();
    device.mount();
    let project = device.path("hello");
    fs::create_dir_all(project.join("src")).unwrap();
    fs::write(
        project.join("Cargo.toml"),
        "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n",
    )
    .unwrap();
    fs::write(
        project.join("src/main.rs"),
        "fn main() {\n    println!(\"built on syn\");\n}\n",
    )
    .unwrap();

    let output = run(Command::new("cargo")
        .args(["run", "--quiet", "--offline"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", project.join("target"))
        .env_remove("RUSTFLAGS"));
    assert_eq!(output.trim(), "built on syn");
    assert!(
        project.join("target/debug/hello").exists(),
        "the binary lies on the mount"
    );
}
