//! The sync side of the daemon: a thread that owns its own tokio runtime and
//! runs the sync loop, woken by local changes and by the server's long-poll.
//!
//! FUSE threads never enter this runtime: they only call [`SyncHandle::wake`],
//! which does not block.

pub mod client;
mod engine;

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::mpsc as std_mpsc;

use tokio::sync::{Notify, mpsc};

pub use engine::{Engine, Invalidate, RoundReport, SyncError};

/// Seconds one long-poll request waits for remote changes.
const LONG_POLL_SECONDS: u64 = 25;

/// Time [`SyncHandle::stop`] waits beyond its push timeout for the loop to
/// take the command.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// First and last delay between failed rounds, before jitter.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Returns the backoff after `failures` failed attempts in a row, before
/// jitter: [`BACKOFF_START`], doubled for each failure after the first, and
/// at most [`BACKOFF_CAP`].
fn backoff_base(failures: u32) -> Duration {
    // 2^16 half-seconds is far above the cap, so larger exponents change
    // nothing and the shift cannot overflow.
    let exponent = failures.saturating_sub(1).min(16);
    BACKOFF_START.saturating_mul(1 << exponent).min(BACKOFF_CAP)
}

/// Returns the wait before the next attempt after `failures` failed ones in
/// a row: the base backoff times a random factor in [0.5, 1.0), so devices
/// that lost the server together do not all retry at the same moment.
fn backoff_delay(failures: u32, rng: &mut impl Rng) -> Duration {
    backoff_base(failures).mul_f64(rng.gen_range(0.5..1.0))
}

/// The sync state that `syn status` reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncStatus {
    pub server: Option<String>,
    /// Unix time of the last round that completed.
    pub last_sync: Option<u64>,
    pub last_error: Option<SyncErrorReport>,
    /// Documents pushed and pulled since the daemon started.
    pub pushed_total: u64,
    pub pulled_total: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Blocks uploaded since the daemon started; blocks the server already
    /// has (dedup by block id) are not sent again.
    pub blocks_uploaded: u64,
    /// Files the last round left pending because their documents exceed the
    /// server's size limit.
    #[serde(default)]
    pub too_large: u64,
    /// Rounds and long-polls that failed in a row, reset to 0 by a success.
    #[serde(default)]
    pub failures: u32,
    /// Backoff in milliseconds, jitter included, that the loop waits after
    /// the last failure. `None` while it is not backing off.
    #[serde(default)]
    pub retry_delay_ms: Option<u64>,
    /// Unix time in milliseconds when the next attempt is due. `None` while
    /// the loop is not backing off. A local change or `syn sync` starts the
    /// attempt sooner.
    #[serde(default)]
    pub next_retry_at_ms: Option<u64>,
}

/// The last failure of the sync loop, kept until a round succeeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncErrorReport {
    /// Unix time of the failure.
    pub time: u64,
    pub message: String,
    /// False when the loop stopped retrying on its own, as for a revoked token.
    pub retrying: bool,
}

/// Returns the message that explains files too large to sync.
pub fn too_large_message(count: u64) -> String {
    format!(
        "{count} files cannot sync and stay pending: a file's list of blocks must fit in one \
         {} MiB document, which holds about 7 GiB of file data (an estimate); split or shrink them",
        crate::protocol::MAX_DOCUMENT_BYTES / (1024 * 1024)
    )
}

/// Returns the Unix time in seconds, or 0 if the clock is before 1970.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Returns the Unix time in milliseconds, or 0 if the clock is before 1970.
pub(crate) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

enum Command {
    /// Run a round now and send its outcome back.
    SyncNow(std_mpsc::Sender<Result<RoundReport, String>>),
    /// Push what is pending within the timeout, then stop the loop.
    Stop {
        timeout: Duration,
        done: std_mpsc::Sender<Result<(), String>>,
    },
}

/// The daemon's handle on the sync thread.
pub struct SyncHandle {
    wake: Arc<Notify>,
    commands: mpsc::UnboundedSender<Command>,
    status: Arc<Mutex<SyncStatus>>,
    /// The engine's client, read for live traffic counters.
    client: Arc<client::Client>,
    thread: Option<JoinHandle<()>>,
}

impl SyncHandle {
    /// Starts the sync thread with a runtime of its own.
    pub fn start(engine: Engine, server: String) -> std::io::Result<SyncHandle> {
        let wake = Arc::new(Notify::new());
        let (commands, receiver) = mpsc::unbounded_channel();
        let status = Arc::new(Mutex::new(SyncStatus {
            server: Some(server),
            ..SyncStatus::default()
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("syn-sync")
            .enable_all()
            .build()?;
        let client = engine.client().clone();
        let sync_loop = SyncLoop {
            engine,
            wake: wake.clone(),
            commands: receiver,
            status: status.clone(),
            retry_at: tokio::time::Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("syn-sync".into())
            .spawn(move || runtime.block_on(sync_loop.run()))?;
        Ok(SyncHandle {
            wake,
            commands,
            status,
            client,
            thread: Some(thread),
        })
    }

    /// A cheap, non-blocking wake-up for the FUSE side.
    pub fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let wake = self.wake.clone();
        move || wake.notify_one()
    }

    pub fn status(&self) -> SyncStatus {
        let mut status = lock(&self.status).clone();
        status.bytes_sent = self.client.bytes_sent();
        status.bytes_received = self.client.bytes_received();
        status.blocks_uploaded = self.client.blobs_uploaded();
        status
    }

    /// Runs a round now and waits at most `timeout` for its outcome.
    pub fn sync_now(&self, timeout: Duration) -> Result<RoundReport, String> {
        let (reply, outcome) = std_mpsc::channel();
        self.commands
            .send(Command::SyncNow(reply))
            .map_err(|_| "the sync task has stopped".to_string())?;
        match outcome.recv_timeout(timeout) {
            Ok(result) => result,
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "sync did not finish within {} s; pending changes stay queued",
                timeout.as_secs()
            )),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Err("the sync task stopped before it answered".into())
            }
        }
    }

    /// Pushes what is pending, waiting at most `timeout`, and stops the
    /// thread. Changes that could not be pushed stay in the change log.
    pub fn stop(mut self, timeout: Duration) -> Result<(), String> {
        let (done, outcome) = std_mpsc::channel();
        if self.commands.send(Command::Stop { timeout, done }).is_err() {
            self.join();
            return Ok(());
        }
        // The loop takes the command only between rounds, and a round whose
        // request gets no reply lasts the client's whole request timeout.
        // Waiting for it would break the caller's timeout, so the thread is
        // left to end with the process instead.
        match outcome.recv_timeout(timeout + STOP_GRACE) {
            Ok(result) => {
                self.join();
                result
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "the sync task did not stop within {} s, as a request to the server is still \
                 waiting for a reply; pending changes stay queued for the next mount",
                (timeout + STOP_GRACE).as_secs()
            )),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                self.join();
                Err("the sync task stopped before it answered".into())
            }
        }
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(status: &Mutex<SyncStatus>) -> MutexGuard<'_, SyncStatus> {
    status
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct SyncLoop {
    engine: Engine,
    wake: Arc<Notify>,
    commands: mpsc::UnboundedReceiver<Command>,
    status: Arc<Mutex<SyncStatus>>,
    /// When the backoff after the last failure ends.
    retry_at: tokio::time::Instant,
}

enum Event {
    Wake,
    Command(Option<Command>),
    Polled(Result<usize, SyncError>),
    BackoffOver,
}

impl SyncLoop {
    async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut round_due = true;
        loop {
            if round_due {
                let outcome = self.engine.round().await;
                failures = self.record(outcome.as_ref().copied(), failures).await;
                round_due = false;
            }

            let event = if self.stalled() {
                self.wait_for_request().await
            } else if failures > 0 {
                self.wait_backoff().await
            } else {
                tokio::select! {
                    _ = self.wake.notified() => Event::Wake,
                    command = self.commands.recv() => Event::Command(command),
                    polled = self.engine.long_poll(LONG_POLL_SECONDS) => Event::Polled(polled),
                }
            };

            match event {
                Event::Wake | Event::BackoffOver => round_due = true,
                Event::Polled(Ok(pulled)) => {
                    let report = RoundReport {
                        pushed: 0,
                        pulled,
                        too_large: None,
                    };
                    failures = self.record(Ok(report), failures).await;
                    // Applying remote changes can leave merges to push.
                    round_due = pulled > 0;
                }
                Event::Polled(Err(error)) => failures = self.record(Err(&error), failures).await,
                Event::Command(None) => return,
                Event::Command(Some(Command::SyncNow(reply))) => {
                    let outcome = self.engine.round().await;
                    failures = self.record(outcome.as_ref().copied(), failures).await;
                    let _ = reply.send(outcome.map_err(|error| error.to_string()));
                }
                Event::Command(Some(Command::Stop { timeout, done })) => {
                    if timeout.is_zero() {
                        let _ = done.send(Ok(()));
                        return;
                    }
                    let outcome = tokio::time::timeout(timeout, self.engine.round()).await;
                    let result = match outcome {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(error)) => Err(error.to_string()),
                        Err(_) => Err(format!(
                            "pushing pending changes timed out after {} s; they stay queued for the next mount",
                            timeout.as_secs()
                        )),
                    };
                    let _ = done.send(result);
                    return;
                }
            }
        }
    }

    /// True when the last failure needs the user (a rejected token, a
    /// tampered document), so retrying on a timer would only repeat it.
    fn stalled(&self) -> bool {
        lock(&self.status)
            .last_error
            .as_ref()
            .is_some_and(|error| !error.retrying)
    }

    /// Waits for a local change or a command, with no timer.
    async fn wait_for_request(&mut self) -> Event {
        tokio::select! {
            _ = self.wake.notified() => Event::Wake,
            command = self.commands.recv() => Event::Command(command),
        }
    }

    /// Sleeps until the backoff that [`SyncLoop::record`] set ends, or less
    /// if a wake-up or command comes.
    async fn wait_backoff(&mut self) -> Event {
        tokio::select! {
            _ = tokio::time::sleep_until(self.retry_at) => Event::BackoffOver,
            _ = self.wake.notified() => Event::Wake,
            command = self.commands.recv() => Event::Command(command),
        }
    }

    /// Updates the status after a round or poll and, after a retryable
    /// failure, starts the next backoff; returns the new failure count.
    async fn record(&mut self, outcome: Result<RoundReport, &SyncError>, failures: u32) -> u32 {
        if let Err(error) = outcome {
            if let Err(store_error) = self.engine.record_error(error.to_string()).await {
                log::warn!("recording the sync error in the store failed: {store_error}");
            }
        }
        let mut status = lock(&self.status);
        match outcome {
            Ok(report) => {
                if failures > 0 {
                    log::info!("sync recovered");
                }
                if report.pushed + report.pulled > 0 {
                    log::debug!(
                        "synced: pushed {} changes, pulled {}",
                        report.pushed,
                        report.pulled
                    );
                }
                status.pushed_total += report.pushed as u64;
                status.pulled_total += report.pulled as u64;
                if let Some(too_large) = report.too_large {
                    let too_large = too_large as u64;
                    if too_large > status.too_large {
                        log::warn!(
                            "{too_large} files are too large to sync and stay pending; \
                             see `syn status`"
                        );
                    }
                    status.too_large = too_large;
                }
                status.last_sync = Some(unix_now());
                status.last_error = None;
                status.failures = 0;
                status.retry_delay_ms = None;
                status.next_retry_at_ms = None;
                0
            }
            Err(error) => {
                let failures = failures.saturating_add(1);
                let retrying = error.is_retryable();
                if failures == 1 || !retrying {
                    log::warn!("sync failed: {error}");
                }
                status.last_error = Some(SyncErrorReport {
                    time: unix_now(),
                    message: error.to_string(),
                    retrying,
                });
                status.failures = failures;
                if retrying {
                    let delay = backoff_delay(failures, &mut rand::thread_rng());
                    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    log::debug!(
                        "sync attempt {failures} in a row failed; retrying in {delay_ms} ms"
                    );
                    self.retry_at = tokio::time::Instant::now() + delay;
                    status.retry_delay_ms = Some(delay_ms);
                    status.next_retry_at_ms = Some(unix_now_ms().saturating_add(delay_ms));
                } else {
                    status.retry_delay_ms = None;
                    status.next_retry_at_ms = None;
                }
                failures
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn backoff_base_doubles_per_failure() {
        assert_eq!(
            backoff_base(1),
            BACKOFF_START,
            "the first failure waits the start delay"
        );
        for failures in 1..6 {
            assert_eq!(
                backoff_base(failures + 1),
                backoff_base(failures) * 2,
                "failure {} doubles the base of failure {failures}",
                failures + 1
            );
        }
    }

    #[test]
    fn backoff_base_treats_zero_failures_as_one() {
        assert_eq!(backoff_base(0), BACKOFF_START);
    }

    #[test]
    fn backoff_delay_stays_in_jitter_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        for failures in 1..=12 {
            let base = backoff_base(failures);
            for _ in 0..200 {
                let delay = backoff_delay(failures, &mut rng);
                assert!(
                    delay >= base / 2,
                    "failure {failures}: {delay:?} is below half the base {base:?}"
                );
                assert!(
                    delay < base,
                    "failure {failures}: {delay:?} is not below the base {base:?}"
                );
            }
        }
    }

    #[test]
    fn backoff_delay_varies() {
        let mut rng = StdRng::seed_from_u64(11);
        let delays: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff_delay(3, &mut rng)).collect();
        assert!(
            delays.len() > 40,
            "50 draws gave only {} distinct delays",
            delays.len()
        );
    }

    #[test]
    fn backoff_never_exceeds_cap() {
        let mut rng = StdRng::seed_from_u64(13);
        for failures in [7, 8, 17, 18, 64, 1_000, u32::MAX] {
            assert_eq!(
                backoff_base(failures),
                BACKOFF_CAP,
                "failure {failures} waits the cap"
            );
            for _ in 0..100 {
                let delay = backoff_delay(failures, &mut rng);
                assert!(
                    delay <= BACKOFF_CAP,
                    "failure {failures}: {delay:?} exceeds the cap"
                );
                assert!(
                    delay >= BACKOFF_CAP / 2,
                    "failure {failures}: {delay:?} is below half the cap"
                );
            }
        }
    }
}
