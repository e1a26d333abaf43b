//! A TCP proxy of the test's own, on loopback, between syn and `syn serve`.
//! It forwards traffic or injects a fault: dropped connections, 500s,
//! truncated replies, requests that never get a reply, and replies held
//! back after the server applied the request.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::Server;

/// What the proxy does with a connection. It is read when a connection is
/// accepted, so [`FaultProxy::set`] closes the open ones: the client's
/// pooled keep-alive connections would bypass a new fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways.
    Pass,
    /// Close the connection at once.
    Drop,
    /// Reply to every request with a 500 and close.
    Error500,
    /// Forward the request and cut the reply after its first 40 bytes.
    Truncate,
    /// Read the request and never reply, until the fault changes.
    Stall,
    /// Forward every request, but hold back the reply to each one whose
    /// request line starts with `request` once `after` such requests got
    /// their reply since the fault was set. A held connection closes when the
    /// fault changes, so the client never sees that reply although the
    /// server applied the request.
    HoldReply { request: &'static str, after: usize },
}

/// A reply that `HoldReply` kept from the client.
#[derive(Debug, Clone)]
pub struct HeldReply {
    /// The request line, such as `POST /v1/documents HTTP/1.1`.
    pub request: String,
    /// The reply's status code.
    pub status: u16,
}

/// A connection the proxy accepted.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub time: Instant,
    pub fault: Fault,
}

#[derive(Default)]
struct Shared {
    /// Client sides of the connections accepted since the last change of
    /// fault, to be shut down at the next.
    open: Mutex<Vec<TcpStream>>,
    accepted: Mutex<Vec<Accepted>>,
    /// Request lines of the requests that `Stall` left unanswered.
    stalled: Mutex<Vec<String>>,
    held_replies: Mutex<Vec<HeldReply>>,
    /// Requests matching the `HoldReply` filter that got their reply since
    /// the fault was set.
    answered_matches: AtomicUsize,
}

pub struct FaultProxy {
    pub url: String,
    fault: Arc<Mutex<Fault>>,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts a proxy to `server` on a loopback port that the OS chooses,
    /// passing traffic through.
    pub fn start(server: &Server) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = server.url.trim_start_matches("http://").to_string();
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let shared = Arc::new(Shared::default());
        let (proxy_fault, proxy_shared) = (fault.clone(), shared.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else {
                    continue;
                };
                // Holding the fault's lock while registering keeps a
                // connection from slipping past a concurrent `set`.
                let current = proxy_fault.lock().unwrap();
                let fault = *current;
                if let Ok(copy) = client.try_clone() {
                    proxy_shared.open.lock().unwrap().push(copy);
                }
                proxy_shared.accepted.lock().unwrap().push(Accepted {
                    time: Instant::now(),
                    fault,
                });
                drop(current);
                let upstream = upstream.clone();
                let shared = proxy_shared.clone();
                std::thread::spawn(move || handle(client, &upstream, fault, &shared));
            }
        });
        FaultProxy { url, fault, shared }
    }

    /// Switches to `fault` and closes every open connection, including
    /// stalled and held ones.
    pub fn set(&self, fault: Fault) {
        let mut current = self.fault.lock().unwrap();
        *current = fault;
        self.shared.answered_matches.store(0, Ordering::SeqCst);
        for connection in self.shared.open.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }

    /// Connections accepted so far, oldest first.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.shared.accepted.lock().unwrap().clone()
    }

    /// Request lines of the requests that `Stall` left unanswered so far.
    pub fn stalled_requests(&self) -> Vec<String> {
        self.shared.stalled.lock().unwrap().clone()
    }

    /// Returns the replies that `HoldReply` held back so far. The server
    /// had sent each one, so it had handled the request.
    pub fn held_replies(&self) -> Vec<HeldReply> {
        self.shared.held_replies.lock().unwrap().clone()
    }
}

fn handle(mut client: TcpStream, upstream: &str, fault: Fault, shared: &Shared) {
    match fault {
        Fault::Pass => forward(client, upstream, false),
        Fault::Truncate => forward(client, upstream, true),
        Fault::Drop => {
            let _ = client.shutdown(Shutdown::Both);
        }
        Fault::Error500 => {
            let mut buffer = [0u8; 4096];
            let _ = client.read(&mut buffer);
            let body = r#"{"code":"internal","message":"injected fault"}"#;
            let reply = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(reply.as_bytes());
        }
        Fault::Stall => {
            let mut reader = BufReader::new(client);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            shared
                .stalled
                .lock()
                .unwrap()
                .push(request_line.trim_end().to_string());
            wait_for_close(&mut reader);
        }
        Fault::HoldReply { request, after } => {
            relay_holding(client, upstream, request, after, shared);
        }
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
        let _ = io::copy(&mut client_read, &mut server_write);
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
    let _ = io::copy(&mut server_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Write);
}

/// Relays one HTTP/1.1 exchange at a time, so that the reply to a matching
/// request can be held back while the others pass. A reply is read in full
/// before it is held, so by then the server has applied the request.
fn relay_holding(client: TcpStream, upstream: &str, prefix: &str, after: usize, shared: &Shared) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut client_write), Ok(mut server_write)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    let mut client_read = BufReader::new(client);
    let mut server_read = BufReader::new(server);
    loop {
        let Ok(Some(request)) = read_message(&mut client_read, false) else {
            return;
        };
        if server_write.write_all(&request).is_err() {
            return;
        }
        let Ok(Some(reply)) = read_message(&mut server_read, true) else {
            return;
        };
        let request_line = first_line(&request);
        let matches = request_line.starts_with(prefix);
        if matches && shared.answered_matches.load(Ordering::SeqCst) >= after {
            let status = first_line(&reply)
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(0);
            shared.held_replies.lock().unwrap().push(HeldReply {
                request: request_line,
                status,
            });
            wait_for_close(&mut client_read);
            return;
        }
        if client_write.write_all(&reply).is_err() {
            return;
        }
        if matches {
            shared.answered_matches.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Reads from the client until it closes the connection or
/// [`FaultProxy::set`] shuts it down, discarding what arrives.
fn wait_for_close(reader: &mut impl Read) {
    let mut buffer = [0u8; 4096];
    while matches!(reader.read(&mut buffer), Ok(count) if count > 0) {}
}

fn first_line(message: &[u8]) -> String {
    let end = message
        .iter()
        .position(|&byte| byte == b'\r')
        .unwrap_or(message.len());
    String::from_utf8_lossy(&message[..end]).into_owned()
}

/// Reads one HTTP/1.1 message, head and body, as raw bytes, or `None` at a
/// clean end of stream. Content-Length or chunked encoding frames the body,
/// and a reply with neither runs to the end of the stream.
fn read_message(reader: &mut impl BufRead, is_reply: bool) -> io::Result<Option<Vec<u8>>> {
    let mut message = Vec::new();
    let mut content_length = None;
    let mut chunked = false;
    let mut status = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            if message.is_empty() {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        message.extend_from_slice(line.as_bytes());
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if is_reply && status == 0 {
            status = trimmed
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(0);
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                content_length = value.parse::<usize>().ok();
            } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }

    if chunked {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            message.extend_from_slice(size_line.as_bytes());
            let size_field = size_line.trim_end().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_field.trim(), 16)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            if size == 0 {
                // Trailers, if any, end with an empty line.
                loop {
                    let mut trailer = String::new();
                    if reader.read_line(&mut trailer)? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    message.extend_from_slice(trailer.as_bytes());
                    if trailer.trim_end().is_empty() {
                        return Ok(Some(message));
                    }
                }
            }
            let start = message.len();
            message.resize(start + size + 2, 0);
            reader.read_exact(&mut message[start..])?;
        }
    }
    if let Some(length) = content_length {
        let start = message.len();
        message.resize(start + length, 0);
        reader.read_exact(&mut message[start..])?;
    } else if is_reply && status >= 200 && status != 204 && status != 304 {
        reader.read_to_end(&mut message)?;
    }
    Ok(Some(message))
}
