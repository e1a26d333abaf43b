//! Detaching the daemon: fork before any thread exists, mount in the child,
//! and report readiness or the startup error to the parent through a pipe.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// The child's end of the readiness pipe.
pub struct Readiness {
    pipe: File,
}

impl Readiness {
    /// Tells the parent the mount is ready; the parent exits with success.
    pub fn ready(mut self) {
        let _ = self.pipe.write_all(b"ok\n");
    }

    /// Tells the parent why the daemon could not start.
    pub fn failed(mut self, message: &str) {
        let _ = self
            .pipe
            .write_all(format!("error: {message}\n").as_bytes());
    }
}

/// The side of the fork that the caller is on.
pub enum Side {
    /// The original process; holds the child's report (`Ok` once mounted).
    Parent(Result<(), String>),
    /// The daemon, detached from the terminal, logging to the log file.
    Child(Readiness),
}

fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(read), File::from(write)))
}

/// Forks. Must be called while the process has a single thread, since only
/// the calling thread survives in the child.
pub fn fork(log_path: &Path) -> std::io::Result<Side> {
    let (mut read_end, write_end) = pipe()?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    let null = File::open("/dev/null")?;

    // SAFETY: the process is single-threaded here (the caller's contract),
    // so the child gets a consistent copy of every lock and allocator.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }

    if pid > 0 {
        drop(write_end);
        let mut report = String::new();
        let _ = read_end.read_to_string(&mut report);
        let report = report.trim();
        let outcome = if report == "ok" {
            Ok(())
        } else if let Some(message) = report.strip_prefix("error: ") {
            Err(message.to_string())
        } else {
            Err(format!(
                "the daemon exited before the mount was ready; see {}",
                log_path.display()
            ))
        };
        return Ok(Side::Parent(outcome));
    }

    drop(read_end);
    // SAFETY: plain system calls on descriptors this process owns.
    unsafe {
        libc::setsid();
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(log.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
    Ok(Side::Child(Readiness { pipe: write_end }))
}
