//! Shared harness of the integration tests: a real `syn serve` on a loopback
//! port chosen by the OS, and devices with real FUSE mounts in unique
//! temporary directories, unmounted on drop even when a test fails.
#![allow(dead_code)]

pub mod fault_proxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Deadline of every wait for a condition.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub const PASSPHRASE: &str = "integration test passphrase";

/// A `syn` command with the test passphrase in its environment.
pub fn syn() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_syn"));
    command
        .env("SYN_PASSPHRASE", PASSPHRASE)
        .env_remove("SYN_LOG");
    command
}

/// Runs a command and returns its output, panicking with both streams when
/// it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .expect("cannot run syn");
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Polls `condition` every 20 ms until it holds, or panics after
/// [`DEADLINE`] naming what it waited for.
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_until_within(DEADLINE, what, condition);
}

/// Polls `condition` every 20 ms until it holds, or panics after
/// `deadline` naming what it waited for. For waits that include one of
/// syn's own timeouts, which can exceed [`DEADLINE`].
pub fn wait_until_within(deadline: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("syn-test-")
        .tempdir()
        .expect("cannot create a temp dir")
}

/// A running `syn serve`, killed on drop.
pub struct Server {
    child: Option<Child>,
    pub data: PathBuf,
    pub url: String,
    listen: String,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    pub fn start() -> Server {
        let dir = temp_dir();
        let data = dir.path().join("server");
        let mut server = Server {
            child: None,
            data,
            url: String::new(),
            listen: "127.0.0.1:0".into(),
            _dir: Some(dir),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut child = syn()
            .args(["serve", "--data"])
            .arg(&self.data)
            .args(["--listen", &self.listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start syn serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("cannot read the server's address");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from syn serve: {line:?}"))
            .to_string();
        self.listen = url.trim_start_matches("http://").to_string();
        self.url = url;
        self.child = Some(child);
    }

    pub fn add_account(&self, name: &str) -> String {
        let output = run_ok(
            syn()
                .args(["serve", "--data"])
                .arg(&self.data)
                .args(["add-account", name]),
        );
        String::from_utf8(output.stdout)
            .expect("token is text")
            .trim()
            .to_string()
    }

    /// Stops the server as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same address.
    pub fn restart(&mut self) {
        self.stop();
        let start = Instant::now();
        loop {
            // The port may linger for a moment after the kill.
            if std::net::TcpListener::bind(&self.listen).is_ok() {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "port {} stayed busy",
                self.listen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long one device may stay mounted before its watchdog aborts the
/// FUSE connection, so a wedged mount fails its test instead of hanging CI.
const MOUNT_TIME_LIMIT: Duration = Duration::from_secs(300);

/// One device: a store and a mount point in a temp dir of its own.
pub struct Device {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    mounted: bool,
    watchdog: Option<std::sync::mpsc::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Device {
    fn new() -> Device {
        let dir = temp_dir();
        let store = dir.path().join("store");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("cannot create the mount point");
        Device {
            store,
            mountpoint,
            mounted: false,
            watchdog: None,
            _dir: dir,
        }
    }

    /// A device whose store the test creates itself.
    pub fn unconfigured() -> Device {
        Device::new()
    }

    /// A device with a new vault and no server.
    pub fn local() -> Device {
        let device = Device::new();
        run_ok(
            syn()
                .args([
                    "init",
                    "--insecure-test-kdf",
                    "--device-name",
                    "local",
                    "--store",
                ])
                .arg(&device.store),
        );
        device
    }

    /// The first device of a vault on `server`.
    pub fn create(server: &Server, token: &str, name: &str) -> Device {
        Device::create_at(&server.url, token, name)
    }

    /// Creates the first device of a vault on the server at `url`, which
    /// may be a proxy in front of it.
    pub fn create_at(url: &str, token: &str, name: &str) -> Device {
        let device = Device::new();
        run_ok(
            syn()
                .args([
                    "init",
                    "--insecure-test-kdf",
                    "--device-name",
                    name,
                    "--server",
                    url,
                    "--token",
                    token,
                ])
                .arg("--store")
                .arg(&device.store),
        );
        device
    }

    /// Another device of the vault on `server`.
    pub fn join(server: &Server, token: &str, name: &str) -> Device {
        Device::join_at(&server.url, token, name)
    }

    /// Joins another device to the vault on the server at `url`, which may
    /// be a proxy in front of it.
    pub fn join_at(url: &str, token: &str, name: &str) -> Device {
        let device = Device::new();
        run_ok(
            syn()
                .args([
                    "join",
                    "--device-name",
                    name,
                    "--server",
                    url,
                    "--token",
                    token,
                ])
                .arg("--store")
                .arg(&device.store),
        );
        device
    }

    pub fn mount(&mut self) {
        run_ok(
            syn()
                .arg("mount")
                .arg("--store")
                .arg(&self.store)
                .arg(&self.mountpoint),
        );
        self.mounted = true;
    }

    /// Records a mount made by the test itself, so drop unmounts it.
    pub fn mark_mounted(&mut self) {
        self.mounted = true;
        if self.watchdog.is_none() {
            self.watchdog = Some(start_watchdog(self.mountpoint.clone()));
        }
    }

    /// Records an unmount made by the test itself.
    pub fn mark_unmounted(&mut self) {
        self.mounted = false;
    }

    pub fn unmount(&mut self) {
        run_ok(syn().arg("unmount").arg(&self.mountpoint));
        self.mounted = false;
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.mountpoint.join(relative)
    }

    pub fn status_json(&self) -> serde_json::Value {
        let output = run_ok(syn().args(["status", "--json", "--store"]).arg(&self.store));
        serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
    }

    /// Asks the daemon for its status over the control socket, without
    /// starting a process: a child process would inherit, and on exec close,
    /// the test's open files, and FUSE commits a file at every close.
    pub fn status_from_socket(&self) -> serde_json::Value {
        use std::io::{BufRead, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(self.store.join("control.sock"))
            .expect("the daemon's control socket");
        stream.write_all(b"{\"command\":\"status\"}\n").unwrap();
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).expect("the daemon replies with JSON")
    }

    /// Returns the process id of the running daemon, from its status reply.
    pub fn daemon_pid(&self) -> u32 {
        let status = self.status_from_socket();
        let pid = status["pid"].as_u64();
        let pid = pid.unwrap_or_else(|| panic!("the status reply has no pid: {status}"));
        u32::try_from(pid).expect("a pid fits u32")
    }

    /// Kills the daemon with SIGKILL, as a crash would, and waits until it
    /// is gone. Its mount stays behind, stale, until the test unmounts it
    /// or drops the device.
    pub fn kill_daemon(&self) {
        let pid = self.daemon_pid();
        let pid_t = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
        // SAFETY: kill only sends a signal, to the daemon this device started.
        let sent = unsafe { libc::kill(pid_t, libc::SIGKILL) };
        assert_eq!(
            sent,
            0,
            "kill -9 {pid} failed: {}",
            std::io::Error::last_os_error()
        );
        wait_until("the killed daemon to exit", || process_gone(pid));
    }

    /// Runs `syn sync` and returns its output without asserting success.
    pub fn sync(&self) -> Output {
        syn()
            .args(["sync", "--timeout", "120", "--store"])
            .arg(&self.store)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run syn sync")
    }

    /// Unmounts whatever a failed test left: the daemon first, then a lazy
    /// kernel unmount, then an abort of a wedged FUSE connection.
    fn force_unmount(&self) {
        let _ = syn()
            .args(["unmount", "--timeout", "2"])
            .arg(&self.mountpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if is_mounted(&self.mountpoint) {
            abort_connection(&self.mountpoint);
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mountpoint)
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.mounted || is_mounted(&self.mountpoint) {
            self.force_unmount();
        }
    }
}

/// Makes every device push what it has and then pull what the others
/// pushed, through `syn sync`. A device that saw a file appear may not yet
/// have its last revision. Tests that go offline next settle first, so that
/// each device's base is the server's latest.
pub fn settle(devices: &[&Device]) {
    for _pass in 0..2 {
        for device in devices {
            let output = device.sync();
            assert!(
                output.status.success(),
                "syn sync failed on {}: {}",
                device.store.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Aborts the mount's FUSE connection if the device is not dropped within
/// [`MOUNT_TIME_LIMIT`]; dropping the returned sender disarms it.
fn start_watchdog(mountpoint: PathBuf) -> std::sync::mpsc::Sender<()> {
    let (disarm, disarmed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            disarmed.recv_timeout(MOUNT_TIME_LIMIT)
        {
            eprintln!(
                "watchdog: {} outlived {MOUNT_TIME_LIMIT:?}; aborting its FUSE connection",
                mountpoint.display()
            );
            abort_connection(&mountpoint);
        }
    });
    disarm
}

/// A server with one account and two mounted devices of its vault, A
/// (which created it) and B (which joined). Returns the account token too.
pub fn mounted_pair() -> (Server, String, Device, Device) {
    let server = Server::start();
    let token = server.add_account("alice");
    let mut a = Device::create(&server, &token, "A");
    let mut b = Device::join(&server, &token, "B");
    a.mount();
    b.mount();
    (server, token, a, b)
}

/// True when process `pid` has exited: it is gone, or a zombie not reaped
/// yet, since the test is not the detached daemon's parent.
pub fn process_gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X"))
}

fn mount_line(mountpoint: &Path) -> Option<String> {
    let resolved = mountpoint.canonicalize().ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = resolved.to_string_lossy().replace(' ', "\\040");
    text.lines()
        .rfind(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
        .map(str::to_string)
}

pub fn is_mounted(mountpoint: &Path) -> bool {
    mount_line(mountpoint).is_some()
}

/// Aborts the FUSE connection of a wedged mount, so nothing hangs on it.
fn abort_connection(mountpoint: &Path) {
    let Some(line) = mount_line(mountpoint) else {
        return;
    };
    let Some(device) = line.split(' ').nth(2) else {
        return;
    };
    if let Some(minor) = device.split(':').nth(1) {
        let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
    }
}

/// Reads a file, or `None` if it does not exist (yet).
pub fn read_if_exists(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no crate for it.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.max(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
