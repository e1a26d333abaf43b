//! Sync through a fault-injecting TCP proxy of the test's own, on loopback:
//! dropped connections, truncated replies and 500s. Sync must back off,
//! recover, and show what happened in `syn status`.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use common::{Device, Server, read_if_exists, run_ok, syn, wait_until};

const PASS: u8 = 0;
const DROP: u8 = 1;
const ERROR_500: u8 = 2;
const TRUNCATE: u8 = 3;

/// A proxy that forwards to the server or injects the fault `mode` names.
/// The mode applies per connection, so changing it closes the open ones:
/// the client's pooled keep-alive connections would bypass a new fault.
struct FaultProxy {
    url: String,
    mode: Arc<AtomicU8>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl FaultProxy {
    fn start(server: &Server) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = server.url.trim_start_matches("http://").to_string();
        let mode = Arc::new(AtomicU8::new(PASS));
        let proxy_mode = mode.clone();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let proxy_connections = connections.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else {
                    continue;
                };
                if let Ok(copy) = client.try_clone() {
                    proxy_connections.lock().unwrap().push(copy);
                }
                let upstream = upstream.clone();
                let mode = proxy_mode.clone();
                std::thread::spawn(move || handle(client, &upstream, mode.load(Ordering::SeqCst)));
            }
        });
        FaultProxy {
            url,
            mode,
            connections,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

fn handle(mut client: TcpStream, upstream: &str, mode: u8) {
    match mode {
        DROP => {
            let _ = client.shutdown(Shutdown::Both);
        }
        ERROR_500 => {
            let mut buffer = [0u8; 4096];
            let _ = client.read(&mut buffer);
            let body = r#"{"code":"internal","message":"injected fault"}"#;
            let reply = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(reply.as_bytes());
        }
        _ => forward(client, upstream, mode == TRUNCATE),
    }
}

/// Copies bytes both ways; with `truncate` the reply is cut after its first
/// 40 bytes and the connection closed.
fn forward(client: TcpStream, upstream: &str, truncate: bool) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (mut client_read, mut server_write) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    if truncate {
        let mut head = [0u8; 40];
        if let Ok(count) = server_read.read(&mut head) {
            let _ = client_write.write_all(&head[..count]);
        }
        let _ = client_write.shutdown(Shutdown::Both);
        return;
    }
    let _ = std::io::copy(&mut server_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Write);
}

fn last_error(device: &Device) -> Option<String> {
    device.status_json()["sync"]["last_error"]["message"]
        .as_str()
        .map(str::to_string)
}

fn device_through(proxy: &FaultProxy, token: &str, name: &str, create: bool) -> Device {
    let device = Device::unconfigured();
    let command = if create { "init" } else { "join" };
    let mut arguments = vec![
        command,
        "--device-name",
        name,
        "--server",
        &proxy.url,
        "--token",
        token,
    ];
    if create {
        arguments.push("--insecure-test-kdf");
    }
    run_ok(syn().args(&arguments).arg("--store").arg(&device.store));
    device
}

#[test]
fn sync_recovers_from_each_injected_fault() {
    let server = Server::start();
    let token = server.add_account("alice");
    let proxy = FaultProxy::start(&server);
    let mut a = device_through(&proxy, &token, "A", true);
    let mut b = device_through(&proxy, &token, "B", false);
    a.mount();
    b.mount();

    for (round, mode) in [DROP, ERROR_500, TRUNCATE].into_iter().enumerate() {
        proxy.set(mode);
        let name = format!("during-fault-{round}.txt");
        fs::write(a.path(&name), format!("written during fault {mode}")).unwrap();
        wait_until("A to report the fault", || last_error(&a).is_some());
        let status = a.status_json();
        assert_eq!(
            status["sync"]["last_error"]["retrying"],
            serde_json::json!(true),
            "fault {mode} is retried: {status}"
        );
        assert!(
            status["pending_changes"].as_u64().unwrap_or(0) >= 1,
            "the change waits: {status}"
        );

        proxy.set(PASS);
        wait_until("the file on B after the fault", || {
            read_if_exists(&b.path(&name)).as_deref()
                == Some(format!("written during fault {mode}").as_bytes())
        });
        wait_until("A's error to clear", || last_error(&a).is_none());
    }
    // A push whose reply was lost comes back as A's own write, not as a
    // conflict with itself.
    let names: Vec<_> = fs::read_dir(&b.mountpoint)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "three files and no conflict copies: {names:?}"
    );
    assert_eq!(
        a.status_json()["conflicts"],
        serde_json::json!(0),
        "no conflicts on A"
    );
}
