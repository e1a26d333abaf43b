//! Real programs on a real mount: git, SQLite in both journal modes, an
//! editor's safe save seen from another device, and shared writable mmap.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{Device, Server, read_if_exists, wait_until};

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
    let server = Server::start();
    let token = server.add_account("alice");
    let mut a = Device::create(&server, &token, "A");
    let mut b = Device::join(&server, &token, "B");
    a.mount();
    b.mount();
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
