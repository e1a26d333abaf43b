//! Property test of the sync engine and the store, without FUSE: random
//! file system operations on two or three simulated devices, random sync
//! interleavings, injected faults and restarts. After a final sync every
//! device must hold the same tree, and every content that was written and
//! that no device later read and replaced must be in some file or conflict
//! copy.
//!
//! Each device has its own [`FsCore`] and [`Engine`] over its own store, and
//! talks to a real `syn serve` on 127.0.0.1 through an HTTP proxy of the
//! test's own that can refuse a request or forward it and drop the reply.
//! A dropped reply followed by a restart is what a daemon killed right after
//! the server replied leaves behind.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use proptest::prelude::*;
use proptest::test_runner::Config;

use syn::crypto::{KdfParams, MasterKey, NodeId, Passphrase, VaultId, WrappedKey};
use syn::fs::{Caller, FsCore, FsError, SetAttr, SharedStore};
use syn::protocol::CreateVault;
use syn::server::{self, ServerConfig};
use syn::store::{
    AppliedChange, NewStore, NodeDoc, NodeKind, ROOT_INO, Store, VAULT_OWNER, conflict_name,
};
use syn::sync::client::Client;
use syn::sync::{Engine, Invalidate};

const PASSPHRASE: &str = "property test passphrase";

/// Number of random cases; `PROPTEST_CASES` overrides it.
const DEFAULT_CASES: u32 = 128;

/// Full passes over all devices allowed for the final sync to settle.
const MAX_SETTLE_PASSES: usize = 10;

const ROOT_USER: Caller = Caller { uid: 0, gid: 0 };

/// Returns the one runtime that runs the server, the proxies and the
/// engines of every case.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("cannot build the test runtime")
    })
}

// ---------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    /// The proxy returns 503 without forwarding the request.
    Refuse,
    /// The proxy forwards the request, so the server applies it, and then
    /// returns 503 in place of the server's reply.
    LoseReply,
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    /// Requests of the round that pass before the faulty one.
    after_requests: u32,
    kind: FaultKind,
}

#[derive(Debug, Clone)]
enum Operation {
    Write {
        device: usize,
        path: String,
        append: bool,
        large: bool,
    },
    /// Writes through a handle that stays open while the device syncs, and
    /// closes it after: a remote change that arrived meanwhile must not be
    /// overwritten.
    WriteAcrossSync {
        device: usize,
        path: String,
    },
    Chmod {
        device: usize,
        path: String,
        mode: u32,
    },
    /// Removes a file, or a directory with everything in it.
    Remove {
        device: usize,
        path: String,
    },
    Mkdir {
        device: usize,
        path: String,
    },
    /// Adds a hard link at `to` to the file at `from`.
    Link {
        device: usize,
        from: String,
        to: String,
    },
    Rename {
        device: usize,
        from: String,
        to: String,
    },
    Sync {
        device: usize,
        fault: Option<Fault>,
    },
    /// Drops the device's file system and engine and opens its store again
    /// from disk, as a daemon restart does.
    Restart {
        device: usize,
    },
}

/// Directory paths of up to two levels over the names `a` and `b`, so that
/// devices can move `a` into `b` and `b` into `a` at the same time.
fn directory_path(min_depth: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b"]), min_depth..=2)
        .prop_map(|parts| parts.join("/"))
}

fn file_path() -> impl Strategy<Value = String> {
    (directory_path(0), prop::sample::select(vec!["x", "y", "z"])).prop_map(|(directory, name)| {
        if directory.is_empty() {
            name.to_string()
        } else {
            format!("{directory}/{name}")
        }
    })
}

fn any_path() -> impl Strategy<Value = String> {
    prop_oneof![file_path(), directory_path(1)]
}

fn fault() -> impl Strategy<Value = Option<Fault>> {
    prop_oneof![
        2 => Just(None),
        1 => (0u32..6, prop_oneof![Just(FaultKind::Refuse), Just(FaultKind::LoseReply)])
            .prop_map(|(after_requests, kind)| Some(Fault { after_requests, kind })),
    ]
}

fn operation() -> impl Strategy<Value = Operation> {
    let device = 0usize..3;
    prop_oneof![
        5 => (device.clone(), file_path(), any::<bool>(), prop::bool::weighted(0.1)).prop_map(
            |(device, path, append, large)| Operation::Write { device, path, append, large }
        ),
        1 => (device.clone(), file_path())
            .prop_map(|(device, path)| Operation::WriteAcrossSync { device, path }),
        1 => (device.clone(), any_path(), prop::sample::select(vec![0o600, 0o644, 0o700, 0o755]))
            .prop_map(|(device, path, mode)| Operation::Chmod { device, path, mode }),
        1 => (device.clone(), any_path()).prop_map(|(device, path)| Operation::Remove { device, path }),
        2 => (device.clone(), directory_path(1)).prop_map(|(device, path)| Operation::Mkdir { device, path }),
        2 => (device.clone(), any_path(), any_path())
            .prop_map(|(device, from, to)| Operation::Rename { device, from, to }),
        1 => (device.clone(), file_path(), file_path())
            .prop_map(|(device, from, to)| Operation::Link { device, from, to }),
        4 => (device.clone(), fault()).prop_map(|(device, fault)| Operation::Sync { device, fault }),
        1 => device.prop_map(|device| Operation::Restart { device }),
    ]
}

// ---------------------------------------------------------------------------
// The fault-injecting proxy

#[derive(Default)]
struct FaultPlan {
    pending: Option<Fault>,
}

impl FaultPlan {
    /// Counts one request and returns the fault to inject into it, if any.
    fn next_request(&mut self) -> Option<FaultKind> {
        let fault = self.pending.as_mut()?;
        if fault.after_requests == 0 {
            let kind = fault.kind;
            self.pending = None;
            return Some(kind);
        }
        fault.after_requests -= 1;
        None
    }
}

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    plan: Mutex<FaultPlan>,
}

fn injected_failure() -> Response {
    let body = r#"{"code":"unavailable","message":"fault injected by the test proxy"}"#;
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a static response is valid")
}

async fn relay(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let fault = proxy
        .plan
        .lock()
        .expect("the fault plan lock is not poisoned")
        .next_request();
    // The body is read even for a refused request. A reply sent before the
    // body is read can make hyper close the connection, and the client's
    // next request on that pooled connection then fails as a network error.
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return injected_failure();
    };
    if fault == Some(FaultKind::Refuse) {
        return injected_failure();
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    let mut forwarded = proxy
        .http
        .request(parts.method, format!("{}{path}", proxy.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            forwarded = forwarded.header(name, value);
        }
    }
    let Ok(reply) = forwarded.send().await else {
        return injected_failure();
    };

    let status = reply.status();
    let content_type = reply.headers().get(header::CONTENT_TYPE).cloned();
    let Ok(bytes) = reply.bytes().await else {
        return injected_failure();
    };
    if fault == Some(FaultKind::LoseReply) {
        return injected_failure();
    }
    let mut response = Response::builder().status(status);
    if let Some(content_type) = content_type {
        response = response.header(header::CONTENT_TYPE, content_type);
    }
    response
        .body(Body::from(bytes))
        .expect("a copied response is valid")
}

/// Starts a proxy to `upstream` on a free loopback port.
fn start_proxy(upstream: &str) -> (String, Arc<Proxy>, tokio::task::JoinHandle<()>) {
    let proxy = Arc::new(Proxy {
        upstream: upstream.to_string(),
        http: reqwest::Client::new(),
        plan: Mutex::new(FaultPlan::default()),
    });
    let router = axum::Router::new()
        .fallback(relay)
        .with_state(proxy.clone());
    let listener = runtime()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("cannot bind the proxy");
    let address: SocketAddr = listener.local_addr().expect("the proxy has an address");
    let task = runtime().spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{address}"), proxy, task)
}

// ---------------------------------------------------------------------------
// Simulated devices

struct Device {
    store_dir: PathBuf,
    proxy: Arc<Proxy>,
    proxy_url: String,
    token: String,
    core: Arc<FsCore>,
    engine: Engine,
}

/// Builds a device's file system and engine over `store`, wired as the
/// daemon wires them: remote changes refresh the working copies of open
/// files.
fn open_device(store: Store, proxy_url: &str, token: &str) -> (Arc<FsCore>, Engine) {
    let shared: SharedStore = Arc::new(Mutex::new(store));
    let core = Arc::new(FsCore::new(shared.clone(), ROOT_USER, Box::new(|| {})));
    let refreshed: Weak<FsCore> = Arc::downgrade(&core);
    let invalidate: Invalidate = Arc::new(move |changes: &[AppliedChange]| {
        let Some(core) = refreshed.upgrade() else {
            return;
        };
        for change in changes {
            core.refresh_after_remote_change(change.ino)
                .expect("an open file refreshes after a remote change");
        }
    });
    let client = Client::new(proxy_url, token).expect("the proxy URL is valid");
    let engine = Engine::new(shared, client, Some(invalidate));
    (core, engine)
}

impl Device {
    fn restart(&mut self) {
        let passphrase = Passphrase::new(PASSPHRASE.to_string());
        let store = Store::open(&self.store_dir, &passphrase).expect("the store opens again");
        // The old connection closes only when the new core and engine
        // replace it; SQLite's locking lets both be open for that moment.
        let (core, engine) = open_device(store, &self.proxy_url, &self.token);
        self.core = core;
        self.engine = engine;
    }

    /// Runs one sync round; returns the documents pushed and pulled.
    fn sync(&self, fault: Option<Fault>) -> Result<usize, String> {
        self.proxy
            .plan
            .lock()
            .expect("the fault plan lock is not poisoned")
            .pending = fault;
        let outcome = runtime().block_on(self.engine.round());
        self.proxy
            .plan
            .lock()
            .expect("the fault plan lock is not poisoned")
            .pending = None;
        match outcome {
            Ok(report) => Ok(report.pushed + report.pulled),
            Err(error) if error.is_retryable() => Err(error.to_string()),
            Err(error) => panic!("a sync round failed with a non-retryable error: {error}"),
        }
    }

    fn pending(&self) -> u64 {
        syn::fs::lock_store(self.engine.store())
            .pending_count()
            .expect("the change log is readable")
    }
}

/// A server, its data, and the devices of one vault.
struct World {
    _data: tempfile::TempDir,
    stop_server: Option<tokio::sync::oneshot::Sender<()>>,
    proxy_tasks: Vec<tokio::task::JoinHandle<()>>,
    devices: Vec<Device>,
    /// Contents that must survive: written, and not read and replaced
    /// since by any device.
    required: BTreeSet<Vec<u8>>,
    next_content: u64,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        for task in &self.proxy_tasks {
            task.abort();
        }
    }
}

fn start_server(data_dir: PathBuf) -> (String, tokio::sync::oneshot::Sender<()>) {
    let bound = runtime()
        .block_on(server::bind(ServerConfig {
            data_dir,
            listen: "127.0.0.1:0".into(),
        }))
        .expect("the server binds");
    let url = format!("http://{}", bound.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime().spawn(async move {
        let _ = bound
            .serve_until(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (url, stop)
}

impl World {
    fn new(device_count: usize) -> World {
        let data = tempfile::Builder::new()
            .prefix("syn-property-")
            .tempdir()
            .expect("cannot create a temp dir");
        let server_dir = data.path().join("server");
        let account_token =
            server::add_account(&server_dir, "property").expect("the account is created");
        let (server_url, stop_server) = start_server(server_dir);

        let passphrase = Passphrase::new(PASSPHRASE.to_string());
        let master = MasterKey::generate();
        let vault_id = VaultId::random();
        let wrapped = WrappedKey::wrap(
            &master,
            vault_id,
            &passphrase,
            KdfParams::insecure_for_tests(),
        )
        .expect("the key wraps");
        let account = Client::new(&server_url, &account_token).expect("the server URL is valid");
        runtime()
            .block_on(account.create_vault(&CreateVault {
                vault_id: vault_id.to_hex(),
                wrapped_key: base64::engine::general_purpose::STANDARD.encode(wrapped.to_bytes()),
            }))
            .expect("the vault is created");

        let mut devices = Vec::new();
        let mut proxy_tasks = Vec::new();
        for index in 0..device_count {
            let label = format!("device{index}");
            let token = runtime()
                .block_on(account.enroll_device(&label))
                .expect("the device enrolls");
            let (proxy_url, proxy, task) = start_proxy(&server_url);
            proxy_tasks.push(task);
            let store_dir = data.path().join(&label);
            let store = Store::create(
                &store_dir,
                NewStore {
                    wrapped_key: &wrapped,
                    master: &master,
                    device_label: &label,
                    server_url: Some(&proxy_url),
                    device_token: Some(&token),
                },
            )
            .expect("the store is created");
            let (core, engine) = open_device(store, &proxy_url, &token);
            devices.push(Device {
                store_dir,
                proxy,
                proxy_url,
                token,
                core,
                engine,
            });
        }

        World {
            _data: data,
            stop_server: Some(stop_server),
            proxy_tasks,
            devices,
            required: BTreeSet::new(),
            next_content: 0,
        }
    }

    fn new_content(&mut self, device: usize, large: bool) -> Vec<u8> {
        self.next_content += 1;
        let mut content = format!("device {device} write {}\n", self.next_content).into_bytes();
        if large {
            // Several blocks, so that block upload and fetch are exercised.
            let filler = content.clone();
            while content.len() < 150 * 1024 {
                content.extend_from_slice(&filler);
            }
        }
        content
    }

    fn apply(&mut self, operation: &Operation) {
        match operation {
            Operation::Write {
                device,
                path,
                append,
                large,
            } => self.write(*device, path, *append, *large),
            Operation::WriteAcrossSync { device, path } => self.write_across_sync(*device, path),
            Operation::Chmod { device, path, mode } => {
                let core = &self.devices[*device].core;
                if let Some((parent, name)) = resolve_parent(core, path)
                    && let Ok(attr) = core.lookup(parent, name.as_bytes())
                {
                    let changes = SetAttr {
                        mode: Some(*mode),
                        ..SetAttr::default()
                    };
                    core.setattr(attr.ino, changes).expect("chmod succeeds");
                }
            }
            Operation::Remove { device, path } => self.remove(*device, path),
            Operation::Mkdir { device, path } => {
                let core = &self.devices[*device].core;
                if let Some((parent, name)) = resolve_parent(core, path) {
                    let _ = core.mkdir(parent, name.as_bytes(), 0o755, ROOT_USER);
                }
            }
            Operation::Rename { device, from, to } => self.rename(*device, from, to),
            Operation::Link { device, from, to } => {
                let core = &self.devices[*device].core;
                if let (Some((from_parent, from_name)), Some((to_parent, to_name))) =
                    (resolve_parent(core, from), resolve_parent(core, to))
                    && let Ok(attr) = core.lookup(from_parent, from_name.as_bytes())
                {
                    let _ = core.link(attr.ino, to_parent, to_name.as_bytes());
                }
            }
            Operation::Sync { device, fault } => {
                let _ = self.devices[*device].sync(*fault);
            }
            Operation::Restart { device } => self.devices[*device].restart(),
        }
    }

    fn write(&mut self, device: usize, path: &str, append: bool, large: bool) {
        let addition = self.new_content(device, large);
        let core = &self.devices[device].core;
        let Some((ino, handle, old)) = open_for_write(core, path) else {
            return;
        };

        let mut content = Vec::new();
        if append {
            content = old.clone().unwrap_or_default();
        } else if old.is_some() {
            core.setattr(
                ino,
                SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            )
            .expect("truncate succeeds");
        }
        core.write(ino, content.len() as u64, &addition)
            .expect("write succeeds");
        core.flush(ino, false).expect("flush succeeds");
        core.release(handle).expect("release succeeds");
        content.extend_from_slice(&addition);

        if let Some(old) = old {
            self.required.remove(&old);
        }
        self.required.insert(content);
    }

    /// Opens (or creates) the file, replaces its content through the open
    /// handle, syncs the device, and only then flushes and closes.
    fn write_across_sync(&mut self, device: usize, path: &str) {
        let content = self.new_content(device, false);
        let core = self.devices[device].core.clone();
        let Some((ino, handle, old)) = open_for_write(&core, path) else {
            return;
        };
        if old.is_some() {
            let truncate = SetAttr {
                size: Some(0),
                ..SetAttr::default()
            };
            core.setattr(ino, truncate).expect("truncate succeeds");
        }
        core.write(ino, 0, &content).expect("write succeeds");

        let _ = self.devices[device].sync(None);

        core.flush(ino, false).expect("flush succeeds");
        core.release(handle).expect("release succeeds");
        if let Some(old) = old {
            self.required.remove(&old);
        }
        self.required.insert(content);
    }

    fn remove(&mut self, device: usize, path: &str) {
        let core = &self.devices[device].core;
        let Some((parent, name)) = resolve_parent(core, path) else {
            return;
        };
        match core.lookup(parent, name.as_bytes()) {
            Ok(attr) if attr.kind == NodeKind::Directory => {
                // As `rm -rf` does: the entries first, then the directory.
                let handle = core.opendir(attr.ino).expect("a directory opens");
                let listing = core.readdir(handle, 0).expect("a directory lists");
                core.releasedir(handle);
                for entry in listing {
                    if entry.name != b"." && entry.name != b".." {
                        let child = format!("{path}/{}", String::from_utf8_lossy(&entry.name));
                        self.remove(device, &child);
                    }
                }
                let core = &self.devices[device].core;
                core.rmdir(parent, name.as_bytes())
                    .expect("rmdir of an emptied directory succeeds");
            }
            Ok(attr) => {
                let old = read_file(core, attr.ino);
                core.unlink(parent, name.as_bytes())
                    .expect("unlink of an existing file succeeds");
                // Another hard link keeps the content.
                if attr.nlink == 1 {
                    self.required.remove(&old);
                }
            }
            Err(_) => {}
        }
    }

    fn rename(&mut self, device: usize, from: &str, to: &str) {
        if from == to {
            return;
        }
        let core = &self.devices[device].core;
        let (Some((from_parent, from_name)), Some((to_parent, to_name))) =
            (resolve_parent(core, from), resolve_parent(core, to))
        else {
            return;
        };
        let source = core.lookup(from_parent, from_name.as_bytes()).ok();
        // A target that is the source's own link, or that has another link,
        // keeps its content.
        let replaced = match core.lookup(to_parent, to_name.as_bytes()) {
            Ok(attr)
                if attr.kind == NodeKind::File
                    && attr.nlink == 1
                    && source.as_ref().is_none_or(|source| source.ino != attr.ino) =>
            {
                Some(read_file(core, attr.ino))
            }
            _ => None,
        };
        let renamed = core.rename(
            from_parent,
            from_name.as_bytes(),
            to_parent,
            to_name.as_bytes(),
            false,
            false,
        );
        if renamed.is_ok()
            && let Some(replaced) = replaced
        {
            self.required.remove(&replaced);
        }
    }

    /// Syncs every device in turn until a whole pass moves nothing and no
    /// device has changes waiting.
    fn settle(&mut self) {
        for _pass in 0..MAX_SETTLE_PASSES {
            let mut moved = 0;
            for device in &self.devices {
                moved += device
                    .sync(None)
                    .unwrap_or_else(|error| panic!("a sync with no fault failed: {error}"));
            }
            if moved == 0 && self.devices.iter().all(|device| device.pending() == 0) {
                return;
            }
        }
        panic!("sync did not settle within {MAX_SETTLE_PASSES} passes over every device");
    }
}

// ---------------------------------------------------------------------------
// Reading a device's tree

/// Looks up the directory that contains `path` and returns it with the last
/// name, or `None` when a directory on the way is missing.
fn resolve_parent<'a>(core: &FsCore, path: &'a str) -> Option<(u64, &'a str)> {
    let mut parts: Vec<&str> = path.split('/').collect();
    let name = parts.pop()?;
    let mut directory = ROOT_INO;
    for part in parts {
        let attr = core.lookup(directory, part.as_bytes()).ok()?;
        if attr.kind != NodeKind::Directory {
            return None;
        }
        directory = attr.ino;
    }
    Some((directory, name))
}

/// Opens the file at `path`, creating it if it is missing, and returns its
/// inode, the handle and its content before the write (`None` for a new
/// file). Returns `None` when the path cannot hold a file.
fn open_for_write(core: &FsCore, path: &str) -> Option<(u64, u64, Option<Vec<u8>>)> {
    let (parent, name) = resolve_parent(core, path)?;
    match core.lookup(parent, name.as_bytes()) {
        Ok(attr) if attr.kind == NodeKind::File => {
            let old = read_file(core, attr.ino);
            let handle = core.open(attr.ino, true).expect("an existing file opens");
            Some((attr.ino, handle, Some(old)))
        }
        Ok(_) => None,
        Err(FsError::NotFound) => {
            let (attr, handle) = core
                .create(parent, name.as_bytes(), 0o644, ROOT_USER)
                .ok()?;
            Some((attr.ino, handle, None))
        }
        Err(error) => panic!("lookup of {path} failed: {error:?}"),
    }
}

fn read_file(core: &FsCore, ino: u64) -> Vec<u8> {
    let mut content = Vec::new();
    loop {
        let chunk = core
            .read(ino, content.len() as u64, 1 << 20)
            .expect("a file reads");
        if chunk.is_empty() {
            return content;
        }
        content.extend_from_slice(&chunk);
    }
}

/// A tree entry: its path, its permission bits and link count, and the
/// content of a file or `None` for a directory.
type TreeEntry = (Vec<u8>, u32, u32, Option<Vec<u8>>);

fn tree(core: &FsCore) -> Vec<TreeEntry> {
    let mut entries = Vec::new();
    let mut directories = vec![(ROOT_INO, Vec::new())];
    while let Some((ino, prefix)) = directories.pop() {
        let handle = core.opendir(ino).expect("a directory opens");
        let listing = core.readdir(handle, 0).expect("a directory lists");
        core.releasedir(handle);
        for entry in listing {
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let mut path = prefix.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&entry.name);
            let attr = core.getattr(entry.ino).expect("an entry has attributes");
            let mode = attr.mode & 0o7777;
            match entry.kind {
                NodeKind::Directory => {
                    directories.push((entry.ino, path.clone()));
                    entries.push((path, mode, attr.nlink, None));
                }
                _ => entries.push((path, mode, attr.nlink, Some(read_file(core, entry.ino)))),
            }
        }
    }
    entries.sort();
    entries
}

fn describe(tree: &[TreeEntry]) -> Vec<String> {
    tree.iter()
        .map(|(path, mode, links, content)| match content {
            None => format!("{}/ {mode:o} {links}", String::from_utf8_lossy(path)),
            Some(content) => format!(
                "{} {mode:o} {links} = {:?}",
                String::from_utf8_lossy(path),
                String::from_utf8_lossy(&content[..content.len().min(40)])
            ),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The property

fn check_convergence(device_count: usize, operations: &[Operation]) {
    let mut world = World::new(device_count);
    for operation in operations {
        let mut operation = operation.clone();
        retarget(&mut operation, device_count);
        world.apply(&operation);
    }
    world.settle();

    let first = tree(&world.devices[0].core);
    eprintln!(
        "DEBUG entries {} required {} ops {}",
        first.len(),
        world.required.len(),
        operations.len()
    );
    for (index, device) in world.devices.iter().enumerate().skip(1) {
        let other = tree(&device.core);
        assert_eq!(
            describe(&other),
            describe(&first),
            "device {index} and device 0 differ after the final sync"
        );
        assert!(
            other == first,
            "device {index} differs from device 0 in content"
        );
    }

    let present: BTreeSet<&Vec<u8>> = first
        .iter()
        .filter_map(|(_, _, _, content)| content.as_ref())
        .collect();
    for content in &world.required {
        assert!(
            present.contains(content),
            "a written content is lost: {:?}; the tree is {:#?}",
            String::from_utf8_lossy(&content[..content.len().min(40)]),
            describe(&first)
        );
    }
}

/// Maps an operation's device onto the devices this case has.
fn retarget(operation: &mut Operation, device_count: usize) {
    let device = match operation {
        Operation::Write { device, .. }
        | Operation::WriteAcrossSync { device, .. }
        | Operation::Chmod { device, .. }
        | Operation::Remove { device, .. }
        | Operation::Mkdir { device, .. }
        | Operation::Rename { device, .. }
        | Operation::Link { device, .. }
        | Operation::Sync { device, .. }
        | Operation::Restart { device } => device,
    };
    *device %= device_count;
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        max_shrink_iters: 5000,
        ..Config::default()
    })]

    #[test]
    fn devices_converge_and_keep_every_write(
        device_count in 2usize..=3,
        operations in prop::collection::vec(operation(), 1..80),
    ) {
        check_convergence(device_count, &operations);
    }
}

// ---------------------------------------------------------------------------
// Cases the property found, kept as plain tests

/// Two name collisions of one name on one device within a second used to
/// get the same conflict name, and indexing the second failed the sync.
#[test]
fn conflict_names_in_one_second_stay_distinct() {
    let world = World::new(1);
    let store = world.devices[0].engine.store().clone();
    let mut store = syn::fs::lock_store(&store);

    let first = store
        .free_conflict_name(&NodeId::ROOT, b"x.txt", "laptop", 7)
        .unwrap();
    assert_eq!(first, conflict_name(b"x.txt", "laptop", 7));
    let doc = NodeDoc::new(
        NodeKind::File,
        NodeId::ROOT,
        &first,
        0o644,
        VAULT_OWNER,
        VAULT_OWNER,
    );
    store.commit(&[(NodeId::random(), &doc)]).unwrap();

    let second = store
        .free_conflict_name(&NodeId::ROOT, b"x.txt", "laptop", 7)
        .unwrap();
    assert_eq!(
        String::from_utf8(second).unwrap(),
        "x (conflict laptop 1970-01-01 000007 2).txt"
    );
}

// ---------------------------------------------------------------------------
// Plain tests on the same harness

/// A file whose document is larger than the server accepts (a list of
/// 300,000 blocks, all the same block so the test stays small) stays
/// pending while every other change syncs, and syncs once it shrinks.
#[test]
fn oversized_file_waits_while_others_sync() {
    let mut world = World::new(2);
    world.write(0, "small.txt", false, false);

    let huge_id = NodeId::random();
    let mut huge = NodeDoc::new(
        NodeKind::File,
        NodeId::ROOT,
        b"huge.img",
        0o644,
        VAULT_OWNER,
        VAULT_OWNER,
    );
    {
        let store = world.devices[0].engine.store().clone();
        let mut store = syn::fs::lock_store(&store);
        let block = store.put_block(&[7u8; 65536]).unwrap();
        huge.content.block_size = 65536;
        huge.content.size = 300_000 * 65536;
        huge.content.blocks = (0..300_000).map(|index| (index, block)).collect();
        store.commit(&[(huge_id, &huge)]).unwrap();
    }

    let report = runtime()
        .block_on(world.devices[0].engine.round())
        .expect("the round succeeds despite the huge file");
    assert_eq!(report.too_large, Some(1), "the huge file is reported");
    assert_eq!(world.devices[0].pending(), 1, "only the huge file waits");
    world.devices[1].sync(None).unwrap();
    let names: Vec<Vec<u8>> = tree(&world.devices[1].core)
        .into_iter()
        .map(|(path, ..)| path)
        .collect();
    assert_eq!(names, vec![b"small.txt".to_vec()], "the small file synced");

    huge.content.size = 10 * 65536;
    huge.content.blocks.retain(|index, _| *index < 10);
    {
        let store = world.devices[0].engine.store().clone();
        syn::fs::lock_store(&store)
            .commit(&[(huge_id, &huge)])
            .unwrap();
    }
    let report = runtime()
        .block_on(world.devices[0].engine.round())
        .expect("the round succeeds");
    assert_eq!(report.too_large, Some(0), "nothing is too large now");
    assert_eq!(world.devices[0].pending(), 0, "nothing waits");
    world.devices[1].sync(None).unwrap();
    let files = tree(&world.devices[1].core);
    let huge_on_b = files
        .iter()
        .find(|(path, ..)| path == b"huge.img")
        .expect("the shrunk file synced");
    assert_eq!(
        huge_on_b.3.as_ref().map(Vec::len),
        Some(10 * 65536),
        "its content arrived"
    );
}
