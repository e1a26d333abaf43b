//! The daemon or the server killed with SIGKILL in the middle of a push or a
//! pull. After a killed daemon's stale mount is cleared and `syn mount`
//! starts a new one, or after the server starts again, every file arrives
//! exactly once.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::fault_proxy::{Fault, FaultProxy};
use common::{Device, Server, pseudo_random_bytes, run_ok, syn, wait_until, wait_until_within};

/// Deadline for a device to catch up on all the files of a test.
const CATCH_UP: Duration = Duration::from_secs(60);

fn pending(device: &Device) -> u64 {
    device.status_json()["pending_changes"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

fn conflicts(device: &Device) -> u64 {
    device.status_json()["conflicts"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Returns every file under `dir` in the mount, by path relative to the
/// mount point, with its contents.
fn files_under(device: &Device, dir: &str) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut directories = vec![device.path(dir)];
    while let Some(directory) = directories.pop() {
        let Ok(listing) = fs::read_dir(&directory) else {
            continue;
        };
        for entry in listing.flatten() {
            let path = entry.path();
            if path.is_dir() {
                directories.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(&device.mountpoint)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            files.insert(relative, fs::read(&path).unwrap_or_default());
        }
    }
    files
}

/// Names in the listing that differ from the expected ones, for messages
/// that do not print megabytes of contents.
fn name_difference(
    actual: &BTreeMap<String, Vec<u8>>,
    expected: &BTreeMap<String, Vec<u8>>,
) -> (Vec<String>, Vec<String>) {
    let extra = actual
        .keys()
        .filter(|name| !expected.contains_key(*name))
        .cloned()
        .collect();
    let missing = expected
        .keys()
        .filter(|name| !actual.contains_key(*name))
        .cloned()
        .collect();
    (extra, missing)
}

/// Asserts that `device` contains exactly the `expected` files under `dir`:
/// none missing, no conflict copy or other extra file, the same bytes.
fn assert_files(device: &Device, dir: &str, expected: &BTreeMap<String, Vec<u8>>) {
    let actual = files_under(device, dir);
    let (extra, missing) = name_difference(&actual, expected);
    let copies: Vec<&String> = extra
        .iter()
        .filter(|name| name.contains("(conflict"))
        .collect();
    assert!(copies.is_empty(), "conflict copies: {copies:?}");
    assert!(extra.is_empty(), "files that should not exist: {extra:?}");
    assert!(missing.is_empty(), "missing files: {missing:?}");
    for (name, contents) in expected {
        assert!(
            actual[name] == *contents,
            "{name} has {} bytes that differ from the {} written",
            actual[name].len(),
            contents.len()
        );
    }
}

/// Runs SQLite's own consistency check on a store that no daemon has open.
fn assert_store_intact(store: &Path) {
    let connection = rusqlite::Connection::open_with_flags(
        store.join("store.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let result: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(result, "ok", "SQLite integrity check of the killed store");
}

/// Clears the stale mount of a killed daemon with `syn unmount --store`,
/// first checking that `syn status` reports it and that `syn mount` rejects
/// it with advice instead of hanging.
fn unmount_stale(device: &mut Device) {
    let status = device.status_json();
    assert_eq!(status["running"], serde_json::json!(false), "{status}");
    assert_eq!(
        status["stale_mounts"],
        serde_json::json!([device.mountpoint]),
        "status names the stale mount"
    );

    let output = syn()
        .args(["mount", "--store"])
        .arg(&device.store)
        .arg(&device.mountpoint)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "mounting over the stale mount fails"
    );
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("stale mount"),
        "the error names the stale mount: {message}"
    );
    run_ok(syn().args(["unmount", "--store"]).arg(&device.store));
    device.mark_unmounted();
    assert!(
        !common::is_mounted(&device.mountpoint),
        "`syn unmount --store` clears the stale mount"
    );
}

#[test]
fn daemon_killed_mid_push() {
    let server = Server::start();
    let token = server.add_account("alice");
    let proxy = FaultProxy::start(&server);
    let mut a = Device::create_at(&proxy.url, &token, "A");
    let mut b = Device::join(&server, &token, "B");
    a.mount();
    b.mount();

    // While every request fails, the files queue up, so that the next push
    // carries them all in one batch.
    proxy.set(Fault::Error500);
    fs::create_dir(a.path("pushed")).unwrap();
    let mut expected = BTreeMap::new();
    for index in 0..40u64 {
        // Every tenth file spans several 64 KiB blocks.
        let size = if index % 10 == 0 { 300_000 } else { 1_000 };
        let name = format!("pushed/file-{index:02}");
        let contents = pseudo_random_bytes(size + index as usize, index + 1);
        fs::write(a.path(&name), &contents).unwrap();
        expected.insert(name, contents);
    }
    wait_until("A to queue the directory and 40 files", || {
        pending(&a) >= 41
    });

    // A new write wakes the loop out of its backoff. Blocks go through, and
    // the server applies the batch of documents, but A gets no reply.
    proxy.set(Fault::HoldReply {
        request: "POST /v1/documents",
        after: 0,
    });
    fs::write(a.path("pushed/last"), b"written last").unwrap();
    expected.insert("pushed/last".to_string(), b"written last".to_vec());
    wait_until("the proxy to hold the reply to A's push", || {
        !proxy.held_replies().is_empty()
    });
    let held = proxy.held_replies();
    assert_eq!(
        held[0].status, 200,
        "the server accepted the push: {held:?}"
    );
    let mut applied = expected.clone();
    applied.remove("pushed/last");
    wait_until("B to receive the files of the unanswered push", || {
        let on_b = files_under(&b, "pushed");
        applied
            .iter()
            .all(|(name, contents)| on_b.get(name) == Some(contents))
    });
    assert!(
        pending(&a) >= 41,
        "A still counts the pushed files as pending, since it had no reply"
    );
    // A file edited after the unanswered push has that push as its base,
    // which A learns only from the server after the restart.
    let edited = pseudo_random_bytes(1_500, 77);
    fs::write(a.path("pushed/file-01"), &edited).unwrap();
    expected.insert("pushed/file-01".to_string(), edited);

    a.kill_daemon();
    assert_store_intact(&a.store);
    unmount_stale(&mut a);
    proxy.set(Fault::Pass);
    a.mount();

    wait_until_within(CATCH_UP, "A to push everything", || pending(&a) == 0);
    wait_until_within(CATCH_UP, "B to hold every file", || {
        files_under(&b, "pushed") == expected
    });
    assert_files(&b, "pushed", &expected);
    assert_files(&a, "pushed", &expected);
    assert_eq!(conflicts(&a), 0, "A created no conflict copies");
    assert_eq!(conflicts(&b), 0, "B created no conflict copies");
}

/// A device B in the middle of a pull: A wrote and pushed a tree while B
/// heard nothing, and B has fetched part of its blocks and waits for a
/// reply that the proxy holds back. Returns the files B must end up with.
///
/// Fields drop in declaration order: the devices unmount while the proxy
/// and the server still run, so their final push does not wait on a dead
/// server.
struct HeldPull {
    a: Device,
    b: Device,
    proxy: FaultProxy,
    server: Server,
    expected: BTreeMap<String, Vec<u8>>,
}

fn start_held_pull() -> HeldPull {
    let server = Server::start();
    let token = server.add_account("alice");
    let proxy = FaultProxy::start(&server);
    let mut a = Device::create(&server, &token, "A");
    let mut b = Device::join_at(&proxy.url, &token, "B");
    a.mount();
    b.mount();

    // B hears nothing while A writes and pushes, so that B later pulls all
    // of it in one page.
    proxy.set(Fault::Stall);
    fs::create_dir(a.path("pulled")).unwrap();
    let mut expected = BTreeMap::new();
    for index in 0..5u64 {
        let name = format!("pulled/large-{index}");
        let contents = pseudo_random_bytes(2 * 1024 * 1024 + index as usize, 100 + index);
        fs::write(a.path(&name), &contents).unwrap();
        expected.insert(name, contents);
    }
    for index in 0..300u64 {
        let name = format!("pulled/small-{index:03}");
        let contents = pseudo_random_bytes(200 + index as usize, 1_000 + index);
        fs::write(a.path(&name), &contents).unwrap();
        expected.insert(name, contents);
    }
    wait_until_within(CATCH_UP, "A to push everything", || pending(&a) == 0);

    // B pulls the page, fetches 40 blocks, and then waits for a reply to
    // its next block request that the proxy holds back.
    proxy.set(Fault::HoldReply {
        request: "GET /v1/blobs/",
        after: 40,
    });
    wait_until("B to wait on a block", || !proxy.held_replies().is_empty());
    // A page is applied only once all its blocks are in, so none of it shows.
    assert!(
        !b.path("pulled").exists(),
        "B applied part of a page whose blocks it lacks"
    );
    HeldPull {
        a,
        b,
        proxy,
        server,
        expected,
    }
}

/// Waits for B to have exactly the expected files, and checks that no device
/// made a conflict copy and B has no change pending.
fn assert_pull_completes(pull: &HeldPull) {
    wait_until_within(CATCH_UP, "B to hold every file", || {
        files_under(&pull.b, "pulled").len() == pull.expected.len()
    });
    assert_files(&pull.b, "pulled", &pull.expected);
    assert_eq!(pending(&pull.b), 0, "B has nothing to push");
    assert_eq!(conflicts(&pull.b), 0, "B created no conflict copies");
    assert_eq!(conflicts(&pull.a), 0, "A created no conflict copies");
}

#[test]
fn daemon_killed_mid_pull() {
    let mut pull = start_held_pull();

    pull.b.kill_daemon();
    assert_store_intact(&pull.b.store);
    unmount_stale(&mut pull.b);
    pull.proxy.set(Fault::Pass);
    pull.b.mount();

    assert_pull_completes(&pull);
}

#[test]
fn server_killed_mid_pull() {
    let mut pull = start_held_pull();

    pull.server.stop();
    // Letting the held reply go closes its connection, so B's request
    // fails, and its retries find no server until it starts again.
    pull.proxy.set(Fault::Pass);
    wait_until("B to report the failed pull", || {
        !pull.b.status_json()["sync"]["last_error"].is_null()
    });
    pull.server.restart();

    assert_pull_completes(&pull);
}
