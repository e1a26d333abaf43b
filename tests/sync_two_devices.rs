//! Two devices of one vault, each with a real mount, converging through a
//! real server on loopback.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{Device, Server, read_if_exists, settle, wait_until};

fn two_devices() -> (Server, Device, Device) {
    let (server, _token, a, b) = common::mounted_pair();
    (server, a, b)
}

#[test]
fn each_kind_of_change_reaches_the_other_device() {
    let (_server, a, b) = two_devices();

    fs::write(a.path("created.txt"), b"first version").unwrap();
    wait_until("the new file on B", || {
        read_if_exists(&b.path("created.txt")).as_deref() == Some(b"first version")
    });

    fs::write(a.path("created.txt"), b"second, longer version").unwrap();
    wait_until("the rewrite on B", || {
        read_if_exists(&b.path("created.txt")).as_deref() == Some(b"second, longer version")
    });

    fs::OpenOptions::new()
        .write(true)
        .open(a.path("created.txt"))
        .unwrap()
        .set_len(6)
        .unwrap();
    wait_until("the truncation on B", || {
        read_if_exists(&b.path("created.txt")).as_deref() == Some(b"second")
    });

    fs::create_dir(a.path("folder")).unwrap();
    wait_until("the directory on B", || b.path("folder").is_dir());

    fs::rename(a.path("created.txt"), a.path("folder/moved.txt")).unwrap();
    wait_until("the rename on B", || {
        !b.path("created.txt").exists()
            && read_if_exists(&b.path("folder/moved.txt")).as_deref() == Some(b"second")
    });

    fs::set_permissions(
        a.path("folder/moved.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    wait_until("the chmod on B", || {
        fs::metadata(b.path("folder/moved.txt"))
            .map(|meta| meta.permissions().mode() & 0o777)
            .ok()
            == Some(0o600)
    });

    std::os::unix::fs::symlink("folder/moved.txt", a.path("link")).unwrap();
    wait_until("the symlink on B", || {
        fs::read_link(b.path("link")).ok() == Some("folder/moved.txt".into())
    });

    fs::remove_file(a.path("folder/moved.txt")).unwrap();
    wait_until("the deletion on B", || !b.path("folder/moved.txt").exists());

    fs::remove_dir(a.path("folder")).unwrap();
    wait_until("the rmdir on B", || !b.path("folder").exists());

    fs::write(b.path("from-b.txt"), b"the other way round").unwrap();
    wait_until("B's file on A", || {
        read_if_exists(&a.path("from-b.txt")).as_deref() == Some(b"the other way round")
    });
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn last_error(device: &Device) -> Option<String> {
    device.status_json()["sync"]["last_error"]["message"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn offline_edits_converge_when_the_server_returns() {
    let (mut server, a, b) = two_devices();
    fs::write(a.path("before.txt"), b"synced while online").unwrap();
    wait_until("the first file on B", || b.path("before.txt").exists());
    settle(&[&a, &b]);

    server.stop();
    fs::write(a.path("offline-a.txt"), b"written on A offline").unwrap();
    fs::write(b.path("offline-b.txt"), b"written on B offline").unwrap();
    fs::remove_file(b.path("before.txt")).unwrap();
    assert_eq!(
        fs::read(a.path("offline-a.txt")).unwrap(),
        b"written on A offline",
        "A's mount works offline"
    );

    wait_until("A to report the unreachable server", || {
        last_error(&a).is_some()
    });
    let message = last_error(&a).unwrap();
    assert!(
        message.contains("127.0.0.1"),
        "the error names the server: {message}"
    );
    assert!(
        a.status_json()["pending_changes"].as_u64().unwrap() >= 1,
        "A counts its pending change"
    );

    server.restart();
    wait_until("A's offline file on B", || {
        read_if_exists(&b.path("offline-a.txt")).as_deref() == Some(b"written on A offline")
    });
    wait_until("B's offline file on A", || {
        read_if_exists(&a.path("offline-b.txt")).as_deref() == Some(b"written on B offline")
    });
    wait_until("B's offline deletion on A", || {
        !a.path("before.txt").exists()
    });
    wait_until("the error to clear on A", || last_error(&a).is_none());
    wait_until("A to have nothing pending", || {
        a.status_json()["pending_changes"].as_u64() == Some(0)
    });
}

#[test]
fn concurrent_edits_keep_both_versions() {
    let (mut server, a, b) = two_devices();
    fs::write(a.path("shared.txt"), b"base").unwrap();
    wait_until("the base on B", || {
        read_if_exists(&b.path("shared.txt")).as_deref() == Some(b"base")
    });
    settle(&[&a, &b]);

    server.stop();
    fs::write(a.path("shared.txt"), b"edited on A").unwrap();
    fs::write(b.path("shared.txt"), b"edited on B").unwrap();
    server.restart();

    for device in [&a, &b] {
        wait_until("two versions on each device", || {
            names_in(&device.mountpoint).len() == 2
        });
        let names = names_in(&device.mountpoint);
        assert!(
            names.contains(&"shared.txt".to_string()),
            "the original name stays: {names:?}"
        );
        let copy = names
            .iter()
            .find(|name| name.contains("(conflict "))
            .expect("a conflict copy exists");
        assert!(
            copy.starts_with("shared (conflict ") && copy.ends_with(".txt"),
            "conflict copy name: {copy}"
        );
        let mut contents: Vec<Vec<u8>> = names
            .iter()
            .map(|name| fs::read(device.path(name)).unwrap())
            .collect();
        contents.sort();
        assert_eq!(
            contents,
            vec![b"edited on A".to_vec(), b"edited on B".to_vec()],
            "both edits survive"
        );
    }
    assert!(
        a.status_json()["conflicts"].as_u64().unwrap()
            + b.status_json()["conflicts"].as_u64().unwrap()
            >= 1
    );
}

#[test]
fn status_reports_an_unreachable_server() {
    let server = Server::start();
    let token = server.add_account("alice");
    let mut a = Device::create(&server, &token, "A");
    drop(server);
    a.mount();
    fs::write(a.path("queued.txt"), b"waits for the server").unwrap();
    wait_until("the daemon to report the failure", || {
        last_error(&a).is_some()
    });
    let status = a.status_json();
    let message = status["sync"]["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("could not reach the server"),
        "message: {message}"
    );
    assert_eq!(status["running"], serde_json::json!(true));

    let sync = a.sync();
    assert!(
        !sync.status.success(),
        "syn sync fails while the server is down"
    );
    let stderr = String::from_utf8_lossy(&sync.stderr);
    assert!(stderr.contains("sync failed"), "stderr: {stderr}");
}

#[test]
fn nothing_is_stored_in_plain_text() {
    const MARKER: &str = "PlainTextMarker7f3a";
    let (server, mut a, mut b) = two_devices();
    fs::create_dir(a.path(&format!("{MARKER}-directory"))).unwrap();
    let content = format!("{MARKER} inside the content, {MARKER} again\n").repeat(100);
    fs::write(
        a.path(&format!("{MARKER}-directory/{MARKER}-file.txt")),
        &content,
    )
    .unwrap();
    wait_until("the file on B", || {
        read_if_exists(&b.path(&format!("{MARKER}-directory/{MARKER}-file.txt"))).as_deref()
            == Some(content.as_bytes())
    });
    a.unmount();
    b.unmount();

    for root in [&a.store, &b.store, &server.data] {
        for entry in walk(root) {
            let bytes = fs::read(&entry).unwrap();
            let found = bytes
                .windows(MARKER.len())
                .any(|window| window == MARKER.as_bytes());
            assert!(
                !found,
                "{} contains the marker in plain text",
                entry.display()
            );
            assert!(
                !entry.to_string_lossy().contains(MARKER),
                "a path contains the marker: {}",
                entry.display()
            );
        }
    }
}

fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "{} holds no files", root.display());
    files
}

#[test]
fn status_and_sync_work_without_a_daemon() {
    let (_server, a, mut b) = two_devices();
    b.unmount();
    fs::write(a.path("while-b-is-down.txt"), b"for B").unwrap();
    wait_until("A to push", || {
        a.status_json()["pending_changes"].as_u64() == Some(0)
    });

    let status = b.status_json();
    assert_eq!(
        status["running"],
        serde_json::json!(false),
        "no daemon runs for B"
    );
    assert!(
        status["last_sync"].as_u64().is_some(),
        "B remembers its last sync: {status}"
    );

    let output = b.sync();
    assert!(
        output.status.success(),
        "syn sync without a daemon: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    b.mount();
    assert_eq!(fs::read(b.path("while-b-is-down.txt")).unwrap(), b"for B");
}

#[test]
fn rejected_token_reaches_status() {
    let (server, a, _b) = two_devices();
    fs::write(a.path("before.txt"), b"pushed").unwrap();
    wait_until("the first push", || {
        a.status_json()["pending_changes"].as_u64() == Some(0)
    });

    // Revoke every device token on the server, as an administrator would.
    let connection = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    connection.execute("DELETE FROM devices", []).unwrap();
    drop(connection);

    fs::write(a.path("after.txt"), b"rejected").unwrap();
    wait_until("the rejection in status", || {
        last_error(&a).is_some_and(|message| message.contains("token"))
    });
    let error = &a.status_json()["sync"]["last_error"];
    assert_eq!(
        error["retrying"],
        serde_json::json!(false),
        "a rejected token is not retried on a timer: {error}"
    );
    assert_eq!(
        fs::read(a.path("after.txt")).unwrap(),
        b"rejected",
        "the mount keeps working"
    );
}

#[test]
fn remote_change_reaches_open_handle_and_listing() {
    use std::io::{Read, Seek, SeekFrom};
    let (_server, a, b) = two_devices();
    fs::write(a.path("watched.txt"), b"first").unwrap();
    wait_until("the file on B", || {
        read_if_exists(&b.path("watched.txt")).as_deref() == Some(b"first")
    });

    let mut handle = fs::File::open(b.path("watched.txt")).unwrap();
    let mut content = Vec::new();
    handle.read_to_end(&mut content).unwrap();
    assert_eq!(content, b"first");

    fs::write(a.path("watched.txt"), b"second version").unwrap();
    fs::write(a.path("new-entry.txt"), b"listed").unwrap();
    wait_until("the change through B's open handle", || {
        let mut content = Vec::new();
        handle.seek(SeekFrom::Start(0)).unwrap();
        handle.read_to_end(&mut content).unwrap();
        content == b"second version"
    });
    wait_until("the new entry in B's listing", || {
        names_in(&b.mountpoint).contains(&"new-entry.txt".to_string())
    });
}

fn sync_counter(device: &Device, name: &str) -> u64 {
    device.status_json()["sync"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no sync.{name}"))
}

#[test]
fn small_edits_and_copies_upload_few_blocks() {
    use std::io::{Seek, SeekFrom, Write};
    const MIB: usize = 1024 * 1024;
    let (_server, a, b) = two_devices();
    let big = common::pseudo_random_bytes(256 * MIB, 99);
    fs::write(a.path("big.bin"), &big).unwrap();
    wait_until("the big file pushed", || {
        a.status_json()["pending_changes"].as_u64() == Some(0)
    });
    let blocks_before = sync_counter(&a, "blocks_uploaded");
    let bytes_before = sync_counter(&a, "bytes_sent");
    assert!(
        blocks_before >= 4096,
        "256 MiB is at least 4096 blocks of 64 KiB: {blocks_before}"
    );

    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(a.path("big.bin"))
        .unwrap();
    file.seek(SeekFrom::Start(100 * MIB as u64 + 12_345))
        .unwrap();
    file.write_all(b"!").unwrap();
    drop(file);
    wait_until("the one-byte edit pushed", || {
        a.status_json()["pending_changes"].as_u64() == Some(0)
    });
    let edit_blocks = sync_counter(&a, "blocks_uploaded") - blocks_before;
    assert!(
        edit_blocks <= 2,
        "a one-byte edit uploaded {edit_blocks} blocks"
    );
    let edit_bytes = sync_counter(&a, "bytes_sent") - bytes_before;
    // NOTE: the manifest is one document, about 48 bytes per block, so most
    // of these bytes are the 256 MiB file's manifest, not its content.
    assert!(
        edit_bytes < 2 * MIB as u64,
        "a one-byte edit sent {edit_bytes} bytes"
    );

    let blocks_before_copy = sync_counter(&a, "blocks_uploaded");
    let copy = std::process::Command::new("cp")
        .arg(a.path("big.bin"))
        .arg(a.path("copy.bin"))
        .status()
        .unwrap();
    assert!(copy.success());
    wait_until("the copy pushed", || {
        a.status_json()["pending_changes"].as_u64() == Some(0)
    });
    let copy_blocks = sync_counter(&a, "blocks_uploaded") - blocks_before_copy;
    assert_eq!(
        copy_blocks, 0,
        "copying a file inside the mount uploads no new blocks"
    );

    let mut expected = big;
    expected[100 * MIB + 12_345] = b'!';
    wait_until("the copy on B", || {
        fs::metadata(b.path("copy.bin")).map(|meta| meta.len()).ok() == Some(expected.len() as u64)
    });
    assert!(
        fs::read(b.path("copy.bin")).unwrap() == expected,
        "B's copy has the edited bytes"
    );
}

/// Sends one HTTP/1.1 POST with a JSON body to the test server and returns
/// the status code and body.
fn post_json(server: &Server, path: &str, token: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let address = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn forged_document_is_skipped_and_sync_goes_on() {
    let (server, token, a, b) = common::mounted_pair();

    let (status, enrolled) = post_json(&server, "/v1/devices", &token, r#"{"label":"intruder"}"#);
    assert_eq!(status, 200, "enrolment: {enrolled}");
    let device_token: serde_json::Value = serde_json::from_str(&enrolled).unwrap();
    let device_token = device_token["device_token"].as_str().unwrap();
    let forged = format!(
        r#"{{"writes":[{{"id":"{}","base_generation":0,"write_id":"{}","data":"{}"}}]}}"#,
        "00112233445566778899aabbccddeeff",
        "ffeeddccbbaa99887766554433221100",
        "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5eg=="
    );
    let (status, body) = post_json(&server, "/v1/documents", device_token, &forged);
    assert_eq!(status, 200, "the server stores what it cannot read: {body}");

    fs::write(a.path("after-forgery.txt"), b"still syncing").unwrap();
    wait_until("A's file on B past the forged document", || {
        read_if_exists(&b.path("after-forgery.txt")).as_deref() == Some(b"still syncing")
    });
    assert!(
        last_error(&b).is_none(),
        "the skipped document is not a sync failure"
    );
}

/// Copies the server's database files (the database, its WAL and shared
/// memory file) from `from` to `to`, replacing what `to` had.
fn copy_server_database(from: &std::path::Path, to: &std::path::Path) {
    fs::create_dir_all(to).unwrap();
    for name in ["server.db", "server.db-wal", "server.db-shm"] {
        let _ = fs::remove_file(to.join(name));
        if from.join(name).exists() {
            fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }
}

#[test]
fn server_restored_from_older_copy_is_reported() {
    let (mut server, a, b) = two_devices();
    fs::write(a.path("before-backup.txt"), b"in the backup").unwrap();
    wait_until("the first file on B", || {
        b.path("before-backup.txt").exists()
    });
    settle(&[&a, &b]);

    server.stop();
    let backup = common::temp_dir();
    copy_server_database(&server.data, backup.path());
    server.restart();
    // Three pushes after the backup, so that the one push after the restore
    // leaves the server's generation below the devices' cursors.
    for index in 0..3 {
        let name = format!("after-backup-{index}.txt");
        fs::write(a.path(&name), b"not in the backup").unwrap();
        wait_until("the file on B", || b.path(&name).exists());
        settle(&[&a, &b]);
    }

    server.stop();
    copy_server_database(backup.path(), &server.data);
    server.restart();
    fs::write(a.path("after-restore.txt"), b"pushed to the old copy").unwrap();
    for device in [&a, &b] {
        wait_until("the device to report the older server", || {
            last_error(device).is_some_and(|message| message.contains("older copy"))
        });
        let status = device.status_json();
        assert_eq!(
            status["sync"]["last_error"]["retrying"],
            serde_json::json!(false),
            "sync stops instead of going on with the old state: {status}"
        );
    }
    assert!(
        !b.path("after-restore.txt").exists(),
        "B took nothing from the older server"
    );
}
