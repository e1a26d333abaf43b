//! Sync through a fault-injecting TCP proxy of the test's own, on loopback:
//! dropped connections, truncated replies, 500s and a server that never
//! replies. Sync must back off, recover, and show what happened in
//! `syn status`.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::fault_proxy::{Fault, FaultProxy};
use common::{Device, Server, read_if_exists, run_ok, syn, wait_until, wait_until_within};

fn last_error(device: &Device) -> Option<String> {
    device.status_json()["sync"]["last_error"]["message"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn sync_recovers_from_each_injected_fault() {
    let server = Server::start();
    let token = server.add_account("alice");
    let proxy = FaultProxy::start(&server);
    let mut a = Device::create_at(&proxy.url, &token, "A");
    let mut b = Device::join_at(&proxy.url, &token, "B");
    a.mount();
    b.mount();

    for (round, fault) in [Fault::Drop, Fault::Error500, Fault::Truncate]
        .into_iter()
        .enumerate()
    {
        proxy.set(fault);
        let name = format!("during-fault-{round}.txt");
        fs::write(a.path(&name), format!("written during fault {fault:?}")).unwrap();
        wait_until("A to report the fault", || last_error(&a).is_some());
        let status = a.status_json();
        assert_eq!(
            status["sync"]["last_error"]["retrying"],
            serde_json::json!(true),
            "fault {fault:?} is retried: {status}"
        );
        assert!(
            status["pending_changes"].as_u64().unwrap_or(0) >= 1,
            "the change waits: {status}"
        );

        proxy.set(Fault::Pass);
        wait_until("the file on B after the fault", || {
            read_if_exists(&b.path(&name)).as_deref()
                == Some(format!("written during fault {fault:?}").as_bytes())
        });
        wait_until("A's error to clear", || last_error(&a).is_none());
    }
    // A push whose reply was lost comes back as A's own write, not as a
    // conflict with itself.
    let names: Vec<_> = fs::read_dir(&b.mountpoint)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "three files and no conflict copies: {names:?}"
    );
    assert_eq!(
        a.status_json()["conflicts"],
        serde_json::json!(0),
        "no conflicts on A"
    );
}

/// Long enough for the client's 30 s request timeout to fire, with room for
/// a slow machine.
const PAST_REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// First backoff after a failure, before jitter. `src/sync/mod.rs` doubles
/// it per further failure, up to [`BACKOFF_CAP_MS`].
const BACKOFF_START_MS: u64 = 500;
const BACKOFF_CAP_MS: u64 = 30_000;

/// Returns the backoff after `failures` failed attempts in a row, before
/// jitter. The jittered delay lies in [base / 2, base).
fn backoff_base_ms(failures: u64) -> u64 {
    let exponent = failures.saturating_sub(1).min(16);
    (BACKOFF_START_MS << exponent).min(BACKOFF_CAP_MS)
}

fn pending(device: &Device) -> u64 {
    device.status_json()["pending_changes"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Starts a server and a proxy in front of it, and mounts device A, which
/// syncs through the proxy, and device B, which syncs directly.
fn pair_behind_proxy() -> (Server, FaultProxy, Device, Device) {
    let server = Server::start();
    let token = server.add_account("alice");
    let proxy = FaultProxy::start(&server);
    let mut a = Device::create_at(&proxy.url, &token, "A");
    let mut b = Device::join(&server, &token, "B");
    a.mount();
    b.mount();
    (server, proxy, a, b)
}

#[test]
fn stalled_server_times_out_then_recovers() {
    let (_server, proxy, a, b) = pair_behind_proxy();

    proxy.set(Fault::Stall);
    fs::write(a.path("stalled.txt"), b"written while the server stalls").unwrap();
    wait_until_within(PAST_REQUEST_TIMEOUT, "A to report a timeout", || {
        last_error(&a).is_some_and(|message| message.contains("timed out"))
    });
    let status = a.status_json();
    assert_eq!(
        status["sync"]["last_error"]["retrying"],
        serde_json::json!(true),
        "a timeout is retried: {status}"
    );
    assert!(
        status["pending_changes"].as_u64().unwrap_or(0) >= 1,
        "the change waits: {status}"
    );
    assert!(
        !proxy.stalled_requests().is_empty(),
        "the proxy left a request unanswered"
    );
    assert_eq!(
        read_if_exists(&b.path("stalled.txt")),
        None,
        "nothing reached the server"
    );

    proxy.set(Fault::Pass);
    wait_until("the file on B after the stall", || {
        read_if_exists(&b.path("stalled.txt")).as_deref()
            == Some(b"written while the server stalls".as_slice())
    });
    wait_until("A's error to clear", || last_error(&a).is_none());
    wait_until("A to push everything", || pending(&a) == 0);
}

#[test]
fn backoff_grows_and_shows_in_status() {
    let (_server, proxy, a, b) = pair_behind_proxy();
    wait_until("A's first sync", || {
        a.status_json()["sync"]["last_sync"].is_u64()
    });

    // Each commit of the file wakes the loop, which would cut a backoff
    // short. Writing it while a request stalls leaves at most one wake-up
    // pending when the 500s begin, and nothing on A changes after that.
    proxy.set(Fault::Stall);
    fs::write(a.path("during-500s.txt"), b"written while the server fails").unwrap();
    wait_until("A to wait on a stalled request", || {
        !proxy.stalled_requests().is_empty()
    });
    proxy.set(Fault::Error500);

    let mut observed: Vec<(u64, u64)> = Vec::new();
    wait_until_within(
        Duration::from_secs(60),
        "A to fail 6 times in a row",
        || {
            let status = a.status_json();
            let sync = &status["sync"];
            let failures = sync["failures"].as_u64().unwrap_or(0);
            if failures > 0 {
                let delay = sync["retry_delay_ms"].as_u64();
                let delay = delay.unwrap_or_else(|| panic!("no retry delay: {status}"));
                let due = sync["next_retry_at_ms"].as_u64();
                let due = due.unwrap_or_else(|| panic!("no next retry time: {status}"));
                let failed_at = sync["last_error"]["time"].as_u64();
                let failed_at = failed_at.unwrap_or_else(|| panic!("no error time: {status}"));
                let failed_at_ms = failed_at * 1000;
                assert!(
                    due >= failed_at_ms + delay,
                    "the next retry is due a delay after the failure: {status}"
                );
                assert_eq!(
                    sync["last_error"]["retrying"],
                    serde_json::json!(true),
                    "the failure is retried: {status}"
                );
                if observed.last() != Some(&(failures, delay)) {
                    observed.push((failures, delay));
                }
            }
            failures >= 6
        },
    );

    let counts: Vec<u64> = observed.iter().map(|(failures, _)| *failures).collect();
    assert!(
        counts.windows(2).all(|pair| pair[0] <= pair[1]),
        "the failure count only rises: {counts:?}"
    );
    assert!(
        counts.len() >= 3,
        "status showed the count rising step by step: {counts:?}"
    );
    for (failures, delay) in &observed {
        let base = backoff_base_ms(*failures);
        assert!(
            *delay >= base / 2,
            "failure {failures}: delay {delay} ms is below half the base {base} ms"
        );
        assert!(
            *delay <= base,
            "failure {failures}: delay {delay} ms exceeds the base {base} ms"
        );
    }

    // The j-th 500 leaves at least j failures in a row, so the attempt
    // after it waits at least half of base(j). Only the first 500 may have
    // come early, from the wake-up left pending by the write.
    let attempts: Vec<Instant> = proxy
        .accepted()
        .iter()
        .filter(|accepted| accepted.fault == Fault::Error500)
        .map(|accepted| accepted.time)
        .collect();
    for (index, pair) in attempts.windows(2).enumerate() {
        let failures = index as u64 + 1;
        let gap = pair[1] - pair[0];
        let lower = Duration::from_millis(backoff_base_ms(failures) / 2);
        assert!(
            gap >= lower,
            "500 number {} came {gap:?} after number {failures}, less than {lower:?}",
            failures + 1
        );
    }
    assert!(
        attempts.len() >= 4,
        "too few attempts to measure the backoff: {}",
        attempts.len()
    );

    proxy.set(Fault::Pass);
    wait_until_within(
        Duration::from_secs(60),
        "the file on B after the 500s",
        || {
            read_if_exists(&b.path("during-500s.txt")).as_deref()
                == Some(b"written while the server fails".as_slice())
        },
    );
    wait_until("A's failures to clear", || {
        a.status_json()["sync"]["failures"].as_u64() == Some(0)
    });
    let status = a.status_json();
    assert!(
        status["sync"]["retry_delay_ms"].is_null(),
        "no retry delay after recovering: {status}"
    );
    assert!(
        status["sync"]["next_retry_at_ms"].is_null(),
        "no retry due after recovering: {status}"
    );
    assert!(
        status["sync"]["last_error"].is_null(),
        "no error after recovering: {status}"
    );
    assert_eq!(
        status["pending_changes"],
        serde_json::json!(0),
        "nothing pending: {status}"
    );
}

/// `syn unmount --timeout 1` while a request to the server hangs: the
/// unmount keeps its timeout instead of waiting for the client's 30 s request
/// timeout, and the change stays queued for the next mount.
#[test]
fn unmount_during_stall_keeps_its_timeout() {
    let (_server, proxy, mut a, b) = pair_behind_proxy();

    proxy.set(Fault::Stall);
    fs::write(a.path("queued.txt"), b"queued while the server stalls").unwrap();
    wait_until("a request to stall", || {
        !proxy.stalled_requests().is_empty()
    });

    let started = Instant::now();
    run_ok(syn().args(["unmount", "--timeout", "1"]).arg(&a.mountpoint));
    let took = started.elapsed();
    a.mark_unmounted();
    // A bound on a timeout the command promises, far above the 1 s asked
    // for and far below the 30 s a stalled request would add.
    assert!(
        took < Duration::from_secs(20),
        "unmount took {took:?} with --timeout 1"
    );
    assert!(!common::is_mounted(&a.mountpoint), "the mount is gone");
    assert!(pending(&a) >= 1, "the change stays queued in the store");

    proxy.set(Fault::Pass);
    a.mount();
    wait_until("the queued file on B", || {
        read_if_exists(&b.path("queued.txt")).as_deref()
            == Some(b"queued while the server stalls".as_slice())
    });
}
