//! `syn status` and `syn sync`: ask the running daemon, or read and sync the
//! store directly when no daemon runs.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::{CliError, passphrase};
use crate::crypto::Passphrase;
use crate::daemon::control::{self, ControlError, DaemonStatus, Reply, Request};
use crate::daemon::mountinfo;
use crate::store::{Store, StoreLock, summarize};
use crate::sync::client::Client;
use crate::sync::{Engine, too_large_message, unix_now, unix_now_ms};

fn describe_time(unix_seconds: u64) -> String {
    let age = unix_now().saturating_sub(unix_seconds);
    format!(
        "{} UTC ({age} s ago)",
        crate::store::format_utc_readable(unix_seconds)
    )
}

fn warn_too_large(count: usize) {
    if count > 0 {
        eprintln!("Warning: {}", too_large_message(count as u64));
    }
}

pub fn status(store_dir: &Path, as_json: bool) -> Result<(), CliError> {
    match control::request(store_dir, &Request::Status) {
        Ok(Reply::Status(status)) => {
            print_daemon_status(&status, as_json);
            Ok(())
        }
        Ok(Reply::Error { message, .. }) => Err(CliError::new(message)),
        Ok(other) => Err(CliError::new(format!(
            "unexpected reply from the daemon: {other:?}"
        ))),
        Err(ControlError::NoDaemon) => print_store_status(store_dir, as_json),
        Err(error) => Err(error.into()),
    }
}

fn print_daemon_status(status: &DaemonStatus, as_json: bool) {
    if as_json {
        let mut value = serde_json::to_value(status).unwrap_or_default();
        value["running"] = json!(true);
        println!("{value:#}");
        return;
    }
    println!("Store:       {}", status.store.display());
    println!(
        "Mounted on:  {} (daemon pid {})",
        status.mountpoint.display(),
        status.pid
    );
    match &status.sync {
        None => println!("Server:      none (this store does not sync)"),
        Some(sync) => {
            println!("Server:      {}", sync.server.as_deref().unwrap_or("?"));
            match sync.last_sync {
                Some(time) => println!("Last sync:   {}", describe_time(time)),
                None => println!("Last sync:   never since mounting"),
            }
            if let Some(error) = &sync.last_error {
                let retry = if error.retrying {
                    "retrying"
                } else {
                    "not retrying"
                };
                println!("Last error:  {} ({retry})", describe_time(error.time));
                println!("             {}", error.message);
            }
            if sync.failures > 0 {
                let next = match sync.next_retry_at_ms {
                    Some(due) => {
                        let wait_ms = due.saturating_sub(unix_now_ms());
                        format!("next attempt in {:.1} s", wait_ms as f64 / 1000.0)
                    }
                    None => "next attempt after a local change or `syn sync`".to_string(),
                };
                println!(
                    "Failures:    {} failed attempts in a row; {next}",
                    sync.failures
                );
            }
            if sync.too_large > 0 {
                println!("Too large:   {}", too_large_message(sync.too_large));
            }
            println!(
                "Traffic:     {} bytes sent, {} received",
                sync.bytes_sent, sync.bytes_received
            );
        }
    }
    println!(
        "Pending:     changes waiting to be pushed: {}",
        status.pending_changes
    );
    println!("Conflicts:   conflict copies created: {}", status.conflicts);
    if status.insecure_kdf {
        println!(
            "Warning:     this vault's key uses test-only Argon2 costs; never keep real files in it"
        );
    }
}

fn print_store_status(store_dir: &Path, as_json: bool) -> Result<(), CliError> {
    let summary = summarize(store_dir)?;
    let stale_mounts = mountinfo::mounts_of_store(store_dir).unwrap_or_default();
    if as_json {
        let value = json!({
            "running": false,
            "stale_mounts": stale_mounts,
            "store": store_dir,
            "server": summary.server_url,
            "pending_changes": summary.pending_changes,
            "last_sync": summary.last_sync,
            "last_error": summary.last_error,
            "conflicts": summary.conflicts,
        });
        println!("{value:#}");
        return Ok(());
    }
    println!("Store:       {}", store_dir.display());
    if stale_mounts.is_empty() {
        println!("Mounted:     no (no daemon is running)");
    }
    for mountpoint in &stale_mounts {
        println!(
            "Mounted:     stale mount at {} (its daemon stopped); clear it with `syn unmount {}`",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    println!(
        "Server:      {}",
        summary.server_url.as_deref().unwrap_or("none")
    );
    match summary.last_sync {
        Some(time) => println!("Last sync:   {}", describe_time(time)),
        None => println!("Last sync:   never"),
    }
    if let Some(error) = &summary.last_error {
        println!("Last error:  {error}");
    }
    println!(
        "Pending:     changes waiting to be pushed: {}",
        summary.pending_changes
    );
    println!(
        "Conflicts:   conflict copies created: {}",
        summary.conflicts
    );
    Ok(())
}

pub fn sync(
    store_dir: &Path,
    timeout: u64,
    passphrase_file: Option<&Path>,
) -> Result<(), CliError> {
    let request = Request::Sync {
        timeout_seconds: timeout,
    };
    match control::request(store_dir, &request) {
        Ok(Reply::Synced {
            pushed,
            pulled,
            too_large,
        }) => {
            eprintln!("Synced: pushed {pushed} changes, pulled {pulled}.");
            warn_too_large(too_large);
            Ok(())
        }
        Ok(Reply::Error { message, .. }) => Err(CliError::new(format!("sync failed: {message}"))),
        Ok(other) => Err(CliError::new(format!(
            "unexpected reply from the daemon: {other:?}"
        ))),
        Err(ControlError::NoDaemon) => {
            let passphrase = passphrase::read(passphrase_file)?;
            sync_in_foreground(store_dir, &passphrase, Duration::from_secs(timeout))
        }
        Err(error) => Err(error.into()),
    }
}

/// Runs one sync round in this process, holding the store lock.
pub fn sync_in_foreground(
    store_dir: &Path,
    passphrase: &Passphrase,
    timeout: Duration,
) -> Result<(), CliError> {
    let _lock = StoreLock::acquire(store_dir)?;
    let store = Store::open(store_dir, passphrase)?;
    let (Some(server), Some(token)) = (store.server_url()?, store.device_token()?) else {
        return Err(CliError::new("this store has no server to sync with"));
    };
    let client = Client::new(&server, &token)?;
    let store = Arc::new(Mutex::new(store));
    let engine = Engine::new(store.clone(), client, None);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async { tokio::time::timeout(timeout, engine.round()).await });
    match outcome {
        Ok(Ok(report)) => {
            eprintln!(
                "Synced: pushed {} changes, pulled {}.",
                report.pushed, report.pulled
            );
            warn_too_large(report.too_large.unwrap_or(0));
            Ok(())
        }
        Ok(Err(error)) => {
            let _ = crate::fs::lock_store(&store).record_sync_error(&error.to_string());
            Err(CliError::new(format!(
                "sync failed: {}",
                CliError::from(error)
            )))
        }
        Err(_) => Err(CliError::new(format!(
            "sync did not finish within {} s; run `syn sync` again to go on",
            timeout.as_secs()
        ))),
    }
}
