//! The commands that create, join, mount and unmount a vault, and `serve`.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{CliError, ServeAction, StoreArg, passphrase};
use crate::crypto::{MasterKey, VaultId, WrappedKey};
use crate::daemon::{self, LOG_FILE, control, detach, mountinfo};
use crate::protocol::CreateVault;
use crate::store::{NewStore, Store, StoreError, StoreLock, kdf_params};
use crate::sync::client::{Client, ClientError};

/// How long `unmount` waits for the daemon to exit after the unmount.
const DAEMON_EXIT_DEADLINE: Duration = Duration::from_secs(30);

pub struct InitOptions {
    pub store_dir: PathBuf,
    pub server: Option<String>,
    pub token: Option<String>,
    pub device_name: Option<String>,
    pub passphrase_file: Option<PathBuf>,
    pub insecure_test_kdf: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most the buffer's length into it.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&byte| byte == 0).unwrap_or(0);
    if result != 0 || end == 0 {
        return "device".into();
    }
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

fn device_label(name: Option<String>) -> Result<String, CliError> {
    let label = name.unwrap_or_else(host_name);
    if label.is_empty() || label.len() > 64 || label.contains(['/', '\0']) {
        return Err(CliError::new(
            "invalid --device-name: use 1 to 64 bytes without '/'",
        ));
    }
    Ok(label)
}

fn check_no_store(dir: &Path) -> Result<(), CliError> {
    if dir.join("store.db").exists() {
        return Err(StoreError::AlreadyExists(dir.to_path_buf()).into());
    }
    Ok(())
}

/// A random label for the server's record of a device: the host name
/// stays private.
fn opaque_device_label() -> String {
    format!("device-{}", VaultId::random().to_hex())
}

pub fn init(options: InitOptions) -> Result<(), CliError> {
    check_no_store(&options.store_dir)?;
    let label = device_label(options.device_name)?;
    let passphrase = passphrase::read_new(options.passphrase_file.as_deref())?;

    let master = MasterKey::generate();
    let vault_id = VaultId::random();
    let wrapped = WrappedKey::wrap(
        &master,
        vault_id,
        &passphrase,
        kdf_params(options.insecure_test_kdf),
    )?;

    let mut device_token = None;
    if let (Some(server), Some(token)) = (&options.server, &options.token) {
        let client = Client::new(server, token)?;
        let request = CreateVault {
            vault_id: vault_id.to_hex(),
            wrapped_key: BASE64.encode(wrapped.to_bytes()),
        };
        let enrolled = runtime()?.block_on(async {
            match client.create_vault(&request).await {
                Err(ClientError::VaultExists) => Err(CliError::new(
                    "this server account already has a vault: add this device with `syn join` instead",
                )),
                Err(error) => Err(error.into()),
                Ok(()) => Ok(client.enroll_device(&opaque_device_label()).await?),
            }
        })?;
        device_token = Some(enrolled);
    }

    Store::create(
        &options.store_dir,
        NewStore {
            wrapped_key: &wrapped,
            master: &master,
            device_label: &label,
            server_url: options.server.as_deref(),
            device_token: device_token.as_deref(),
        },
    )?;
    eprintln!("Created a vault in {}.", options.store_dir.display());
    if options.insecure_test_kdf {
        eprintln!("Warning: its key uses test-only Argon2 costs; never keep real files in it.");
    }
    eprintln!(
        "Mount it with: syn mount --store {} MOUNTPOINT",
        options.store_dir.display()
    );
    Ok(())
}

pub fn join(
    store_dir: &Path,
    server: &str,
    token: &str,
    device_name: Option<String>,
    passphrase_file: Option<&Path>,
) -> Result<(), CliError> {
    check_no_store(store_dir)?;
    let label = device_label(device_name)?;
    let client = Client::new(server, token)?;
    let runtime = runtime()?;

    let vault = runtime.block_on(client.get_vault()).map_err(|error| match error {
        ClientError::NotFound { .. } => CliError::new(
            "this server account has no vault yet: create one with `syn init --server URL --token TOKEN`",
        ),
        ClientError::Unauthorized { .. } => CliError::new(
            "the server rejected the account token: pass the token that `syn serve add-account` printed",
        ),
        other => other.into(),
    })?;
    let wrapped_bytes = BASE64
        .decode(&vault.wrapped_key)
        .map_err(|_| CliError::new("the server sent a wrapped key that is not valid base64"))?;
    let wrapped = WrappedKey::from_bytes(&wrapped_bytes)?;
    if wrapped.vault_id.to_hex() != vault.vault_id {
        return Err(CliError::new(
            "the server's vault id does not match its wrapped key: the server data is damaged",
        ));
    }

    let passphrase = passphrase::read(passphrase_file)?;
    let master = wrapped.unwrap_key(&passphrase)?;
    let device_token = runtime.block_on(client.enroll_device(&opaque_device_label()))?;

    let store = Store::create(
        store_dir,
        NewStore {
            wrapped_key: &wrapped,
            master: &master,
            device_label: &label,
            server_url: Some(server),
            device_token: Some(&device_token),
        },
    )?;
    drop(store);
    eprintln!(
        "Joined the vault in {}; fetching its files.",
        store_dir.display()
    );
    super::status::sync_in_foreground(store_dir, &passphrase, Duration::from_secs(600))?;
    eprintln!(
        "Mount it with: syn mount --store {} MOUNTPOINT",
        store_dir.display()
    );
    Ok(())
}

pub fn mount(
    store_dir: &Path,
    mountpoint: &Path,
    foreground: bool,
    allow_other: bool,
    passphrase_file: Option<&Path>,
) -> Result<(), CliError> {
    if !store_dir.join("store.db").exists() {
        return Err(StoreError::Missing(store_dir.to_path_buf()).into());
    }
    let mountpoint = daemon::check_mountpoint(mountpoint)?;
    if allow_other {
        daemon::check_allow_other()?;
    }
    let passphrase = passphrase::read(passphrase_file)?;

    if foreground {
        daemon::run(store_dir, &mountpoint, allow_other, &passphrase, || {
            eprintln!(
                "Mounted on {}; press Ctrl-C to unmount.",
                mountpoint.display()
            );
        })?;
        return Ok(());
    }

    let log_path = store_dir.join(LOG_FILE);
    match detach::fork(&log_path)? {
        detach::Side::Parent(Ok(())) => {
            eprintln!(
                "Mounted {} on {}.",
                store_dir.display(),
                mountpoint.display()
            );
            Ok(())
        }
        detach::Side::Parent(Err(message)) => Err(CliError::new(message)),
        detach::Side::Child(readiness) => {
            let readiness = Cell::new(Some(readiness));
            let outcome = daemon::run(store_dir, &mountpoint, allow_other, &passphrase, || {
                if let Some(readiness) = readiness.take() {
                    readiness.ready();
                }
            });
            let code = match outcome {
                Ok(()) => 0,
                Err(error) => {
                    let error = CliError::from(error);
                    log::error!("{error}");
                    if let Some(readiness) = readiness.take() {
                        readiness.failed(&error.to_string());
                    }
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

/// Finds the store behind a mount point, from the mount's source name.
fn store_of_mountpoint(mountpoint: &Path) -> Result<(PathBuf, PathBuf), CliError> {
    let resolved = mountpoint
        .canonicalize()
        .map_err(|error| CliError::new(format!("mount point {}: {error}", mountpoint.display())))?;
    let entry = mountinfo::mount_at(&resolved)?
        .ok_or_else(|| CliError::new(format!("nothing is mounted on {}", resolved.display())))?;
    let store = mountinfo::store_of(&entry)
        .ok_or_else(|| CliError::new(format!("{} is not a syn mount", resolved.display())))?;
    Ok((store, resolved))
}

fn lazy_unmount(mountpoint: &Path) -> Result<(), CliError> {
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status()
        .map_err(|error| {
            CliError::new(format!("cannot run fusermount3 (install fuse3): {error}"))
        })?;
    if !status.success() {
        return Err(CliError::new(format!(
            "fusermount3 -u {} failed",
            mountpoint.display()
        )));
    }
    Ok(())
}

/// Waits until the daemon has released the store, so a following mount or
/// sync finds it free.
fn wait_for_daemon_exit(store_dir: &Path) -> Result<(), CliError> {
    let deadline = Instant::now() + DAEMON_EXIT_DEADLINE;
    loop {
        match StoreLock::acquire(store_dir) {
            Ok(_) => return Ok(()),
            Err(StoreError::Locked) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(StoreError::Locked) => {
                return Err(CliError::new(
                    "the file system is unmounted, but the daemon is still running: a file may still be open",
                ));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

pub fn unmount(mountpoint: Option<&Path>, store: &StoreArg, timeout: u64) -> Result<(), CliError> {
    let (store_dir, mountpoint) = match mountpoint {
        Some(path) => {
            let (store, resolved) = store_of_mountpoint(path)?;
            (store, Some(resolved))
        }
        None => (store.resolve()?, None),
    };

    let request = control::Request::Unmount {
        timeout_seconds: timeout,
    };
    match control::request(&store_dir, &request) {
        Ok(control::Reply::Unmounted { warning }) => {
            if let Some(warning) = warning {
                eprintln!("Warning: {warning}");
            }
        }
        Ok(control::Reply::Error { message, .. }) => return Err(CliError::new(message)),
        Ok(other) => {
            return Err(CliError::new(format!(
                "unexpected reply from the daemon: {other:?}"
            )));
        }
        Err(control::ControlError::NoDaemon) => {
            let stale = match mountpoint {
                Some(mountpoint) => vec![mountpoint],
                None => mountinfo::mounts_of_store(&store_dir).unwrap_or_default(),
            };
            if stale.is_empty() {
                return Err(CliError::new(format!(
                    "no daemon is running for the store {}: nothing to unmount",
                    store_dir.display()
                )));
            }
            eprintln!("The daemon is gone; unmounting with fusermount3.");
            for mountpoint in stale {
                lazy_unmount(&mountpoint)?;
            }
        }
        Err(error) => return Err(error.into()),
    }
    wait_for_daemon_exit(&store_dir)?;
    eprintln!("Unmounted.");
    Ok(())
}

pub fn serve(data: PathBuf, listen: String, action: Option<ServeAction>) -> Result<(), CliError> {
    match action {
        Some(ServeAction::AddAccount { name }) => {
            let token = crate::server::add_account(&data, &name)?;
            eprintln!("Created account {name:?}. Its token, shown only this once:");
            println!("{token}");
            Ok(())
        }
        None => {
            crate::server::run(crate::server::ServerConfig {
                data_dir: data,
                listen,
            })?;
            Ok(())
        }
    }
}
