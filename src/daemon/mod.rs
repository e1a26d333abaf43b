//! The mounted daemon: one process per mounted store, holding the store
//! lock, the FUSE session, the sync thread and the control socket.

pub mod control;
pub mod detach;
pub mod mountinfo;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fuser::{Config, INodeNo, MountOption, Notifier, Session, SessionACL};

use crate::crypto::Passphrase;
use crate::fs::fuse::SynFs;
use crate::fs::{Caller, FsCore, SharedStore, lock_store};
use crate::store::{AppliedChange, Store, StoreError, StoreLock, summarize};
use crate::sync::client::{Client, ClientError};
use crate::sync::{Engine, Invalidate, RoundReport, SyncHandle, SyncStatus};
use control::{DaemonStatus, Reply, Request};

/// FUSE worker threads.
const FUSE_THREADS: usize = 2;

/// How long the daemon tries to push at exit when nobody asked for longer.
const EXIT_PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the exiting daemon waits for control replies still being sent.
const CONTROL_REPLY_GRACE: Duration = Duration::from_secs(5);

/// Name of the daemon's log file inside the store directory.
pub const LOG_FILE: &str = "daemon.log";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("mount point {path}: {reason}")]
    MountPoint { path: PathBuf, reason: String },

    #[error("mounting on {path} failed: {source} (is fuse3 installed and /dev/fuse present?)")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("the server settings in the store are invalid: {0}")]
    Client(#[from] ClientError),

    #[error("{action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
}

fn io_error(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let action = action.into();
    move |source| DaemonError::Io { action, source }
}

/// Resolves the mount point and checks that syn can mount there.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, DaemonError> {
    let invalid = |reason: &str| DaemonError::MountPoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let stale = || {
        invalid(&format!(
            "is a stale mount left by a daemon that stopped; run `fusermount3 -u {}` first",
            path.display()
        ))
    };
    let resolved = path.canonicalize().map_err(|error| {
        if error.raw_os_error() == Some(libc::ENOTCONN) {
            stale()
        } else {
            invalid("does not exist; create it with mkdir first")
        }
    })?;
    // Resolving a stale mount point can succeed, since it needs no reply
    // from the dead daemon, but reading its attributes fails with ENOTCONN.
    let metadata = std::fs::metadata(&resolved).map_err(|error| {
        if error.raw_os_error() == Some(libc::ENOTCONN) {
            stale()
        } else {
            invalid(&format!("cannot be read: {error}"))
        }
    })?;
    if !metadata.is_dir() {
        return Err(invalid("is not a directory"));
    }
    let mounted =
        mountinfo::mount_at(&resolved).map_err(io_error("cannot read /proc/self/mountinfo"))?;
    if mounted.is_some() {
        return Err(invalid(
            "is busy: something is already mounted there; unmount it first",
        ));
    }
    Ok(resolved)
}

/// State shared by the control socket and the signal thread.
struct Daemon {
    store_dir: PathBuf,
    mountpoint: PathBuf,
    store: SharedStore,
    core: Arc<FsCore>,
    sync: Mutex<Option<SyncHandle>>,
    insecure_kdf: bool,
    /// Set once `syn unmount` has pushed within its own timeout, so the
    /// exit does not spend [`EXIT_PUSH_TIMEOUT`] on the same changes again.
    pushed_at_unmount: AtomicBool,
    /// The sync status as the sync thread was being stopped, reported
    /// until the daemon exits instead of "no server".
    stopping_sync_status: Mutex<Option<SyncStatus>>,
}

impl Daemon {
    fn status(&self) -> DaemonStatus {
        let sync = self
            .sync
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(SyncHandle::status)
            .or_else(|| {
                self.stopping_sync_status
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone()
            });
        let pending_changes = lock_store(&self.store).pending_count().unwrap_or(0);
        let conflicts = summarize(&self.store_dir)
            .map(|summary| summary.conflicts)
            .unwrap_or(0);
        DaemonStatus {
            store: self.store_dir.clone(),
            mountpoint: self.mountpoint.clone(),
            pid: std::process::id(),
            sync,
            pending_changes,
            conflicts,
            insecure_kdf: self.insecure_kdf,
        }
    }

    fn sync_now(&self, timeout: Duration) -> Result<RoundReport, String> {
        let sync = self
            .sync
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(sync) = sync.as_ref() else {
            return Err("this store has no server to sync with".into());
        };
        self.core.flush_all().map_err(|error| error.to_string())?;
        sync.sync_now(timeout)
    }

    /// Commits open files, pushes what is pending within `timeout`, then
    /// unmounts, which ends the FUSE session and so the daemon.
    fn unmount(&self, timeout: Duration, lazy: bool) -> Reply {
        let mut warning = None;
        if let Err(error) = self.core.flush_all() {
            warning = Some(format!("committing open files failed: {error}"));
        }
        if self
            .sync
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some()
        {
            match self.sync_now(timeout) {
                Err(error) => {
                    let pending = lock_store(&self.store).pending_count().unwrap_or(0);
                    warning = Some(if pending == 0 {
                        format!("the last sync before unmounting failed: {error}")
                    } else {
                        format!(
                            "the last sync before unmounting failed, and {pending} changes stay \
                             queued for the next mount: {error}"
                        )
                    });
                }
                Ok(report) if report.too_large.unwrap_or(0) > 0 => {
                    let count = report.too_large.unwrap_or(0) as u64;
                    warning = Some(crate::sync::too_large_message(count));
                }
                Ok(_) => {}
            }
        }
        match unmount_kernel(&self.mountpoint, lazy) {
            Ok(()) => {
                self.pushed_at_unmount.store(true, Ordering::SeqCst);
                log::info!("unmount requested");
                Reply::Unmounted { warning }
            }
            Err(error) => Reply::Error {
                code: "unmount_failed".into(),
                message: format!("unmounting {} failed: {error}", self.mountpoint.display()),
            },
        }
    }

    fn handle(&self, request: Request) -> Reply {
        match request {
            Request::Status => Reply::Status(self.status()),
            Request::Sync { timeout_seconds } => {
                match self.sync_now(Duration::from_secs(timeout_seconds)) {
                    Ok(report) => Reply::Synced {
                        pushed: report.pushed,
                        pulled: report.pulled,
                        too_large: report.too_large.unwrap_or(0),
                    },
                    Err(message) => Reply::Error {
                        code: "sync_failed".into(),
                        message,
                    },
                }
            }
            Request::Unmount { timeout_seconds } => {
                self.unmount(Duration::from_secs(timeout_seconds), false)
            }
        }
    }
}

/// Asks the kernel to unmount; the FUSE session then ends by itself. A lazy
/// unmount detaches at once and lets open files finish; otherwise open files
/// make it fail with "busy". Success is confirmed from mountinfo, since
/// the return value alone does not prove the mount is gone.
fn unmount_kernel(mountpoint: &Path, lazy: bool) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    if is_root {
        let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
            .map_err(|_| "the mount point contains a NUL byte".to_string())?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: umount2 reads the NUL-terminated path.
        if unsafe { libc::umount2(path.as_ptr(), flags) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EBUSY) {
                return Err(
                    "files or directories on it are still in use; close them and try again".into(),
                );
            }
            return Err(error.to_string());
        }
    } else {
        let mut command = std::process::Command::new("fusermount3");
        command.arg("-u");
        if lazy {
            command.arg("-z");
        }
        let output = command
            .arg(mountpoint)
            .output()
            .map_err(|error| format!("cannot run fusermount3 (install fuse3): {error}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
    }
    match mountinfo::mount_at(mountpoint) {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err("the mount is still listed in /proc/self/mountinfo".into()),
        Err(error) => Err(format!("cannot read /proc/self/mountinfo: {error}")),
    }
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts, so
/// that a dedicated thread can take them with sigwait.
fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: the signal set is initialised by sigemptyset before use, and
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_termination(set: libc::sigset_t, daemon: Arc<Daemon>) {
    let mut signal = 0;
    // SAFETY: sigwait reads the initialised set and writes the signal number.
    unsafe { libc::sigwait(&set, &mut signal) };
    log::info!("signal {signal} received: unmounting");
    if let Reply::Error { message, .. } = daemon.unmount(EXIT_PUSH_TIMEOUT, true) {
        log::error!("{message}");
    }
}

fn invalidator(notifier: Arc<OnceLock<Notifier>>, core: Arc<OnceLock<Arc<FsCore>>>) -> Invalidate {
    Arc::new(move |changes: &[AppliedChange]| {
        let notifier = notifier.get();
        // The kernel first writes back dirty pages of a shared mapping, and
        // only then may an open file's working copy move to the remote
        // version. In the other order those pages would land on the remote
        // version as if written after it, and no conflict copy would keep it.
        if let Some(notifier) = notifier {
            invalidate_kernel_caches(notifier, changes);
        }
        let Some(core) = core.get() else {
            return;
        };
        for change in changes {
            match core.refresh_after_remote_change(change.ino) {
                // The kernel may have read the old working copy in between.
                Ok(true) => {
                    if let Some(notifier) = notifier {
                        let _ = notifier.inval_inode(INodeNo(change.ino), 0, 0);
                    }
                }
                Ok(false) => {}
                Err(error) => {
                    log::warn!("refreshing an open file after a remote change failed: {error}")
                }
            }
        }
    })
}

/// Drops what the kernel caches of the changed nodes and their old and new
/// names. The kernel returns ENOENT for what it has not cached; that is fine.
fn invalidate_kernel_caches(notifier: &Notifier, changes: &[AppliedChange]) {
    for change in changes {
        let _ = notifier.inval_inode(INodeNo(change.ino), 0, 0);
        for (parent, name) in &change.entries {
            let _ = notifier.inval_entry(INodeNo(*parent), std::ffi::OsStr::from_bytes(name));
        }
    }
}

fn start_sync(
    store: &SharedStore,
    notifier: Arc<OnceLock<Notifier>>,
    core: Arc<OnceLock<Arc<FsCore>>>,
) -> Result<Option<SyncHandle>, DaemonError> {
    let (server, token) = {
        let store = lock_store(store);
        (store.server_url()?, store.device_token()?)
    };
    let (Some(server), Some(token)) = (server, token) else {
        log::info!("this store has no server: sync is off");
        return Ok(None);
    };
    let client = Client::new(&server, &token)?;
    let engine = Engine::new(store.clone(), client, Some(invalidator(notifier, core)));
    let handle =
        SyncHandle::start(engine, server).map_err(io_error("cannot start the sync thread"))?;
    Ok(Some(handle))
}

/// Checks that FUSE lets this user open the mount to others: root always
/// may; other users need `user_allow_other` in /etc/fuse.conf.
pub fn check_allow_other() -> Result<(), DaemonError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let config = std::fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    let allowed = config.lines().any(|line| line.trim() == "user_allow_other");
    if allowed {
        return Ok(());
    }
    Err(DaemonError::MountPoint {
        path: PathBuf::from("/etc/fuse.conf"),
        reason: "--allow-other needs the line user_allow_other in /etc/fuse.conf for users other than root; add it as root".into(),
    })
}

fn mount_config(store_dir: &Path, allow_other: bool) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!(
            "{}{}",
            mountinfo::SOURCE_PREFIX,
            store_dir.display()
        )),
        MountOption::Subtype("syn".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.n_threads = Some(FUSE_THREADS);
    if allow_other {
        config.acl = SessionACL::All;
    }
    config
}

/// Runs the daemon until the file system is unmounted. `on_ready` is called
/// once the mount is up, or never if startup fails (the error is returned).
pub fn run(
    store_dir: &Path,
    mountpoint: &Path,
    allow_other: bool,
    passphrase: &Passphrase,
    on_ready: impl FnOnce(),
) -> Result<(), DaemonError> {
    let signals = block_termination_signals();
    let _lock = StoreLock::acquire(store_dir)?;
    let mut store = Store::open(store_dir, passphrase)?;
    let insecure_kdf = store.has_insecure_kdf()?;
    match store.collect_garbage() {
        Ok(0) => {}
        Ok(count) => log::info!("deleted {count} blocks that no file uses"),
        // A full disk can refuse even the deletion; the mount works without it.
        Err(error) => log::warn!("collecting unused blocks failed: {error}"),
    }
    let store: SharedStore = Arc::new(Mutex::new(store));

    let notifier = Arc::new(OnceLock::new());
    let core_cell = Arc::new(OnceLock::new());
    let sync = start_sync(&store, notifier.clone(), core_cell.clone())?;
    let on_change: Box<dyn Fn() + Send + Sync> = match &sync {
        Some(sync) => Box::new(sync.waker()),
        None => Box::new(|| {}),
    };
    // SAFETY: getuid and getgid have no preconditions.
    let owner = unsafe {
        Caller {
            uid: libc::getuid(),
            gid: libc::getgid(),
        }
    };
    let core = Arc::new(FsCore::new(store.clone(), owner, on_change));
    let _ = core_cell.set(core.clone());

    let session = Session::new(
        SynFs::new(core.clone()),
        mountpoint,
        &mount_config(store_dir, allow_other),
    );
    let session = match session {
        Ok(session) => session,
        Err(source) => {
            if let Some(sync) = sync {
                let _ = sync.stop(Duration::ZERO);
            }
            return Err(DaemonError::Mount {
                path: mountpoint.to_path_buf(),
                source,
            });
        }
    };
    let _ = notifier.set(session.notifier());
    let listener =
        control::bind(store_dir).map_err(io_error("cannot create the control socket"))?;
    let daemon = Arc::new(Daemon {
        store_dir: store_dir.to_path_buf(),
        mountpoint: mountpoint.to_path_buf(),
        store: store.clone(),
        core,
        sync: Mutex::new(sync),
        pushed_at_unmount: AtomicBool::new(false),
        stopping_sync_status: Mutex::new(None),
        insecure_kdf,
    });

    let control_daemon = daemon.clone();
    let in_flight = Arc::new(control::InFlight::default());
    let control_in_flight = in_flight.clone();
    std::thread::Builder::new()
        .name("syn-control".into())
        .spawn(move || {
            control::serve(listener, control_in_flight, move |request| {
                control_daemon.handle(request)
            })
        })
        .map_err(io_error("cannot start the control thread"))?;
    let signal_daemon = daemon.clone();
    std::thread::Builder::new()
        .name("syn-signals".into())
        .spawn(move || wait_for_termination(signals, signal_daemon))
        .map_err(io_error("cannot start the signal thread"))?;

    log::info!("mounted on {}", mountpoint.display());
    on_ready();
    let outcome = session.run();
    log::info!("file system unmounted");

    let sync = daemon
        .sync
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(sync) = sync {
        *daemon
            .stopping_sync_status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sync.status());
        let push_timeout = if daemon.pushed_at_unmount.load(Ordering::SeqCst) {
            Duration::ZERO
        } else {
            EXIT_PUSH_TIMEOUT
        };
        if let Err(message) = sync.stop(push_timeout) {
            log::warn!("{message}");
        }
    }
    let _ = std::fs::remove_file(control::socket_path(store_dir));
    in_flight.wait_idle(CONTROL_REPLY_GRACE);
    outcome.map_err(io_error("the FUSE session ended with an error"))
}
