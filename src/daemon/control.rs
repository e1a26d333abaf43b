//! The control socket: a Unix socket through which `syn status`, `syn sync`
//! and `syn unmount` ask the running daemon. One JSON request per
//! connection, one JSON reply.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sync::SyncStatus;

/// Longest socket path that fits `sockaddr_un` on Linux, less a margin.
const MAX_SOCKET_PATH: usize = 100;

/// How long a client waits for a reply beyond the request's own timeout.
const REPLY_MARGIN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Sync { timeout_seconds: u64 },
    Unmount { timeout_seconds: u64 },
}

impl Request {
    fn timeout(&self) -> Duration {
        match self {
            Request::Status => Duration::ZERO,
            Request::Sync { timeout_seconds } | Request::Unmount { timeout_seconds } => {
                Duration::from_secs(*timeout_seconds)
            }
        }
    }
}

/// Status report of a running daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub pid: u32,
    /// Sync state; `None` for a store without a server.
    pub sync: Option<SyncStatus>,
    pub pending_changes: u64,
    pub conflicts: u64,
    /// True when the vault's key was wrapped with test-only KDF costs.
    pub insecure_kdf: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Status(DaemonStatus),
    Synced {
        pushed: usize,
        pulled: usize,
        /// Files left pending because they are too large to sync.
        #[serde(default)]
        too_large: usize,
    },
    Unmounted {
        warning: Option<String>,
    },
    Error {
        code: String,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no daemon is running for this store")]
    NoDaemon,
    #[error("the daemon did not answer: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent a malformed reply: {0}")]
    Malformed(String),
}

/// Path of the control socket of the store in `store_dir`: inside the store
/// when short enough, else in /tmp under a hash of the store path.
pub fn socket_path(store_dir: &Path) -> PathBuf {
    let inside = store_dir.join("control.sock");
    if inside.as_os_str().len() <= MAX_SOCKET_PATH {
        return inside;
    }
    let hash = blake3::hash(store_dir.as_os_str().as_encoded_bytes());
    let short: String = hash.as_bytes()[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/syn-{uid}-{short}.sock"))
}

/// Sends one request to the daemon of `store_dir` and waits for its reply.
pub fn request(store_dir: &Path, request: &Request) -> Result<Reply, ControlError> {
    let path = socket_path(store_dir);
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NoDaemon);
        }
        Err(error) => return Err(error.into()),
    };
    stream.set_read_timeout(Some(request.timeout() + REPLY_MARGIN))?;

    let mut line = serde_json::to_string(request)
        .map_err(|error| ControlError::Malformed(error.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;

    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(|error| ControlError::Malformed(error.to_string()))
}

/// Binds the control socket, replacing a stale one left by a daemon that
/// died (the store lock, held by the caller, proves no daemon is using it).
pub fn bind(store_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(store_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Counts the control requests being answered, so the daemon can let the
/// reply to `unmount` go out before the process exits.
#[derive(Default)]
pub struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

impl InFlight {
    fn enter(&self) {
        *self
            .count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
    }

    fn leave(&self) {
        let mut count = self
            .count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *count = count.saturating_sub(1);
        self.idle.notify_all();
    }

    /// Waits until no request is being answered, at most `timeout`.
    pub fn wait_idle(&self, timeout: Duration) {
        let count = self
            .count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = self
            .idle
            .wait_timeout_while(count, timeout, |count| *count > 0);
    }
}

/// Serves requests on `listener` until the process ends, one thread per
/// connection so a long `sync` does not hold up `status`.
pub fn serve<F>(listener: UnixListener, in_flight: Arc<InFlight>, handle: F)
where
    F: Fn(Request) -> Reply + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            continue;
        };
        let handle = handle.clone();
        let in_flight = in_flight.clone();
        in_flight.enter();
        let spawned = std::thread::Builder::new()
            .name("syn-control".into())
            .spawn({
                let in_flight = in_flight.clone();
                move || {
                    answer(stream, handle.as_ref());
                    in_flight.leave();
                }
            });
        if let Err(error) = spawned {
            in_flight.leave();
            log::error!("cannot start a thread for a control request: {error}");
        }
    }
}

fn answer(stream: UnixStream, handle: &dyn Fn(Request) -> Reply) {
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    if let Err(error) = reader.read_line(&mut line) {
        log::warn!("reading a control request failed: {error}");
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(request),
        Err(error) => Reply::Error {
            code: "bad_request".into(),
            message: format!("malformed control request: {error}"),
        },
    };
    let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    if let Err(error) = (&stream).write_all(text.as_bytes()) {
        log::warn!("sending a control reply failed: {error}");
    }
}
