//! `syn serve`: the sync server, which stores only ciphertext, ids and
//! generations.
//!
//! [`run`] is the blocking entry point of the command; [`bind`] and
//! [`BoundServer::serve_until`] let tests run the server inside their own
//! runtime. The HTTP routes are in `api` and follow [`crate::protocol`].

mod api;
mod auth;
pub mod storage;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;

use storage::{SqliteStorage, Storage, StorageError};

/// Settings of `syn serve`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory that contains `server.db`, created if missing.
    pub data_dir: PathBuf,
    /// Address to listen on, such as `127.0.0.1:8080`. Port 0 picks a free
    /// port.
    pub listen: String,
}

/// A failure to set up or run the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("failed to create the server data directory {path}: {source}")]
    CreateDataDir {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("failed to open the server database {path}: {source}")]
    OpenDatabase {
        path: PathBuf,
        source: rusqlite::Error,
    },

    #[error(
        "the server data directory {path} is from a newer syn (schema {found}, this binary \
         knows {supported}): upgrade syn"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    #[error(
        "invalid account name {name:?}: use 1 to {max} ASCII letters, digits, '.', '_' or '-'",
        max = MAX_ACCOUNT_NAME_BYTES
    )]
    InvalidAccountName { name: String },

    #[error("an account named {name:?} already exists in {path}: choose another name")]
    AccountExists { name: String, path: PathBuf },

    #[error("a database operation failed in {path}: {source}")]
    Storage { path: PathBuf, source: StorageError },

    #[error("failed to listen on {address}: {source}; check that the address is valid and free")]
    Bind {
        address: String,
        source: std::io::Error,
    },

    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),

    #[error("failed to install the SIGINT and SIGTERM handlers: {0}")]
    Signal(std::io::Error),

    #[error("failed to write the listening address to standard output: {0}")]
    Stdout(std::io::Error),

    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Maximum length of an account name in bytes, kept short because names
/// appear in logs and on the command line.
pub const MAX_ACCOUNT_NAME_BYTES: usize = 64;

/// Creates the account and returns its account token (printed once by the CLI).
///
/// Works while a server runs on the same data directory, because both use
/// SQLite locking.
pub fn add_account(data_dir: &Path, name: &str) -> Result<String, ServerError> {
    let valid_name = !name.is_empty()
        && name.len() <= MAX_ACCOUNT_NAME_BYTES
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
    if !valid_name {
        return Err(ServerError::InvalidAccountName {
            name: name.to_string(),
        });
    }

    let storage = SqliteStorage::open(data_dir)?;
    let token = auth::generate_token();
    let id = storage
        .create_account(name, &auth::hash_token(&token))
        .map_err(|source| match source {
            StorageError::AccountExists(name) => ServerError::AccountExists {
                name,
                path: data_dir.to_path_buf(),
            },
            source => ServerError::Storage {
                path: data_dir.to_path_buf(),
                source,
            },
        })?;
    log::info!("created account {name:?} (id {id})");
    Ok(token)
}

/// Builds its own tokio runtime, binds, prints exactly one line
/// `listening on http://ADDR` to stdout (flushed) once bound, and serves
/// until SIGINT or SIGTERM.
pub fn run(config: ServerConfig) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;

    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let server = bind(config).await?;

        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{}", server.local_addr())
            .and_then(|()| stdout.flush())
            .map_err(ServerError::Stdout)?;
        drop(stdout);

        server.serve_until(shutdown).await
    })
}

/// Returns a future that completes on SIGINT or SIGTERM. The handlers are
/// installed before it returns, so a signal that arrives early is not lost.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, ServerError> {
    use tokio::signal::unix::{SignalKind, signal};

    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => log::info!("received SIGINT, shutting down"),
            _ = terminate.recv() => log::info!("received SIGTERM, shutting down"),
        }
    })
}

/// Opens the data directory and binds the listening socket, for callers
/// that run their own tokio runtime, such as in-process tests.
pub async fn bind(config: ServerConfig) -> Result<BoundServer, ServerError> {
    let data_dir = config.data_dir.clone();
    let storage = tokio::task::spawn_blocking(move || SqliteStorage::open(&data_dir))
        .await
        .map_err(|error| ServerError::Runtime(std::io::Error::other(error)))??;

    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            address: config.listen.clone(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        address: config.listen.clone(),
        source,
    })?;
    log::info!(
        "listening on http://{local_addr} with data directory {}",
        config.data_dir.display()
    );

    Ok(BoundServer {
        listener,
        local_addr,
        storage: Arc::new(storage),
    })
}

/// A server whose socket is bound but which does not accept requests yet.
pub struct BoundServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    storage: Arc<dyn Storage>,
}

impl BoundServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves requests until `shutdown` completes, then ends pending
    /// long-polls, lets running requests finish, and returns.
    pub async fn serve_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (stop_sender, stop_receiver) = tokio::sync::watch::channel(false);
        let router = api::router(self.storage, stop_receiver);

        axum::serve(self.listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                stop_sender.send_replace(true);
            })
            .await
            .map_err(ServerError::Serve)?;

        log::info!("server on http://{} stopped", self.local_addr);
        Ok(())
    }
}
