//! The `syn` command line: argument parsing and one function per command.
//! Messages for the user go to stderr as sentences; `log` carries
//! diagnostics.

mod commands;
mod passphrase;
mod status;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default seconds that `unmount` and `sync` wait for pending changes to be
/// pushed.
const DEFAULT_TIMEOUT_SECONDS: u64 = 10;

/// A failure reported to the user: one message, with its causes.
#[derive(Debug)]
pub struct CliError {
    message: String,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
        }
    }

    /// Builds the message from an error and its whole source chain.
    pub fn from_error(error: &dyn std::error::Error) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        CliError { message }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

macro_rules! cli_error_from {
    ($($type:ty),*) => {
        $(impl From<$type> for CliError {
            fn from(error: $type) -> Self {
                CliError::from_error(&error)
            }
        })*
    };
}

cli_error_from!(
    crate::store::StoreError,
    crate::crypto::CryptoError,
    crate::daemon::DaemonError,
    crate::daemon::control::ControlError,
    crate::sync::client::ClientError,
    crate::sync::SyncError,
    crate::server::ServerError,
    std::io::Error
);

#[derive(Debug, Parser)]
#[command(
    name = "syn",
    version,
    about = "An encrypted folder that syncs between your devices"
)]
pub struct Cli {
    /// Log debug detail (file names and contents are never logged).
    #[arg(short, long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct StoreArg {
    /// Store directory [default: $XDG_DATA_HOME/syn/default].
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PassphraseArg {
    /// Read the passphrase from this file instead of the terminal (SYN_PASSPHRASE also works).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new vault, and with --server create it on the server too.
    Init {
        #[command(flatten)]
        store: StoreArg,
        /// Server URL, such as http://127.0.0.1:8420.
        #[arg(long, requires = "token")]
        server: Option<String>,
        /// Account token printed by `syn serve add-account`.
        #[arg(long, requires = "server")]
        token: Option<String>,
        /// Name of this device in conflict copies [default: the host name].
        #[arg(long)]
        device_name: Option<String>,
        #[command(flatten)]
        passphrase: PassphraseArg,
        /// Test only: wrap the key with cheap Argon2 costs that make the
        /// passphrase easy to brute-force.
        #[arg(long, hide = true)]
        insecure_test_kdf: bool,
    },
    /// Add this device to a vault that another device created on the server.
    Join {
        #[command(flatten)]
        store: StoreArg,
        /// Server URL, such as http://127.0.0.1:8420.
        #[arg(long)]
        server: String,
        /// Account token printed by `syn serve add-account`.
        #[arg(long)]
        token: String,
        /// Name of this device in conflict copies [default: the host name].
        #[arg(long)]
        device_name: Option<String>,
        #[command(flatten)]
        passphrase: PassphraseArg,
    },
    /// Mount the vault and start syncing; detaches once the mount is ready.
    Mount {
        #[command(flatten)]
        store: StoreArg,
        mountpoint: PathBuf,
        /// Stay in the foreground, logging to stderr.
        #[arg(long)]
        foreground: bool,
        /// Let other users' programs use the mount (FUSE allow_other); file
        /// permissions still apply.
        #[arg(long)]
        allow_other: bool,
        #[command(flatten)]
        passphrase: PassphraseArg,
    },
    /// Push pending changes, unmount and stop the daemon.
    Unmount {
        /// The mount point [or use --store].
        mountpoint: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArg,
        /// Seconds to wait for pending changes to be pushed.
        #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECONDS)]
        timeout: u64,
    },
    /// Show the mount, the sync state and the last error.
    Status {
        #[command(flatten)]
        store: StoreArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sync now and wait for the result; without a running daemon it asks
    /// for the passphrase and syncs in the foreground.
    Sync {
        #[command(flatten)]
        store: StoreArg,
        /// Seconds to wait for the round to finish.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[command(flatten)]
        passphrase: PassphraseArg,
    },
    /// Run the sync server, which stores only ciphertext.
    Serve {
        /// Directory of the server's database.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Address to listen on; port 0 lets the system choose.
        #[arg(long, default_value = "127.0.0.1:8420")]
        listen: String,
        #[command(subcommand)]
        action: Option<ServeAction>,
    },
}

#[derive(Debug, Subcommand)]
enum ServeAction {
    /// Create an account and print its token.
    AddAccount { name: String },
}

fn init_logging(verbose: bool) {
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("SYN_LOG")
        // fuser logs requests, and warnings for unimplemented ones, with
        // their file names in plain text; its session also warns at every
        // unmount that syn did itself.
        .filter_module("fuser", log::LevelFilter::Error)
        // The daemon's stderr is its log file, even when started from a
        // terminal, so no colour codes.
        .write_style(env_logger::WriteStyle::Never)
        .format_timestamp_millis()
        .init();
}

fn default_store() -> Result<PathBuf, CliError> {
    let data_home = match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").ok_or_else(|| {
                CliError::new("neither XDG_DATA_HOME nor HOME is set: pass --store DIR")
            })?;
            PathBuf::from(home).join(".local/share")
        }
    };
    Ok(data_home.join("syn").join("default"))
}

impl StoreArg {
    /// The store directory, made absolute so a detached daemon and its
    /// mount's source name do not depend on the working directory.
    fn resolve(&self) -> Result<PathBuf, CliError> {
        let dir = match &self.store {
            Some(dir) => dir.clone(),
            None => default_store()?,
        };
        if dir.is_absolute() {
            return Ok(dir);
        }
        Ok(std::env::current_dir()?.join(dir))
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("syn: {error}");
            1
        }
    }
}

fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Init {
            store,
            server,
            token,
            device_name,
            passphrase,
            insecure_test_kdf,
        } => commands::init(commands::InitOptions {
            store_dir: store.resolve()?,
            server,
            token,
            device_name,
            passphrase_file: passphrase.passphrase_file,
            insecure_test_kdf,
        }),
        Command::Join {
            store,
            server,
            token,
            device_name,
            passphrase,
        } => commands::join(
            &store.resolve()?,
            &server,
            &token,
            device_name,
            passphrase.passphrase_file.as_deref(),
        ),
        Command::Mount {
            store,
            mountpoint,
            foreground,
            allow_other,
            passphrase,
        } => commands::mount(
            &store.resolve()?,
            &mountpoint,
            foreground,
            allow_other,
            passphrase.passphrase_file.as_deref(),
        ),
        Command::Unmount {
            mountpoint,
            store,
            timeout,
        } => commands::unmount(mountpoint.as_deref(), &store, timeout),
        Command::Status { store, json } => status::status(&store.resolve()?, json),
        Command::Sync {
            store,
            timeout,
            passphrase,
        } => status::sync(
            &store.resolve()?,
            timeout,
            passphrase.passphrase_file.as_deref(),
        ),
        Command::Serve {
            data,
            listen,
            action,
        } => commands::serve(data, listen, action),
    }
}
