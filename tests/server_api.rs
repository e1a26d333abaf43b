//! Drives a real `syn serve` on 127.0.0.1 through the sync client and raw
//! HTTP requests.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::RngCore;
use reqwest::StatusCode;
use syn::protocol::{
    CreateVault, Document, DocumentWrite, ErrorBody, MAX_BATCH_DOCUMENTS, MAX_BLOB_BYTES, PushBatch,
};
use syn::server::{ServerConfig, ServerError, add_account, bind};
use syn::sync::client::{Client, ClientError, PushOutcome};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Deadline for anything that should finish at once, generous so that a
/// loaded machine does not fail the tests.
const DEADLINE: Duration = Duration::from_secs(30);

struct TestServer {
    url: String,
    account_token: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
    _data_dir: TempDir,
}

impl TestServer {
    async fn start() -> TestServer {
        let data_dir = tempfile::tempdir().unwrap();
        let account_token = add_account(data_dir.path(), "alice").unwrap();
        let server = bind(ServerConfig {
            data_dir: data_dir.path().to_path_buf(),
            listen: "127.0.0.1:0".to_string(),
        })
        .await
        .unwrap();
        let url = format!("http://{}", server.local_addr());

        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve_until(async move {
            let _ = stopped.await;
        }));

        TestServer {
            url,
            account_token,
            stop: Some(stop),
            task,
            _data_dir: data_dir,
        }
    }

    fn account(&self) -> Client {
        Client::new(&self.url, &self.account_token).unwrap()
    }

    async fn device(&self) -> Client {
        let token = self.account().enroll_device("device").await.unwrap();
        Client::new(&self.url, &token).unwrap()
    }

    async fn device_token(&self) -> String {
        self.account().enroll_device("device").await.unwrap()
    }

    async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("server did not stop in time")
            .unwrap();
        served.unwrap();
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buffer);
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn doc_id(n: u8) -> String {
    format!("{n:032x}")
}

fn blob_id(n: u8) -> String {
    format!("{n:064x}")
}

fn write(id: &str, base_generation: u64, data: &[u8]) -> DocumentWrite {
    DocumentWrite {
        id: id.to_string(),
        base_generation,
        write_id: random_hex(16),
        data: BASE64.encode(data),
    }
}

async fn push_accepted(client: &Client, writes: Vec<DocumentWrite>) -> Vec<(String, u64)> {
    match client.push(&PushBatch { writes }).await.unwrap() {
        PushOutcome::Accepted(accepted) => accepted
            .accepted
            .into_iter()
            .map(|accepted| (accepted.id, accepted.generation))
            .collect(),
        PushOutcome::Conflict(conflict) => panic!("unexpected conflict: {conflict:?}"),
    }
}

async fn push_conflict(client: &Client, writes: Vec<DocumentWrite>) -> Vec<Document> {
    match client.push(&PushBatch { writes }).await.unwrap() {
        PushOutcome::Conflict(conflict) => conflict.current,
        PushOutcome::Accepted(accepted) => panic!("unexpected acceptance: {accepted:?}"),
    }
}

fn document(id: &str, generation: u64, data: &[u8]) -> Document {
    Document {
        id: id.to_string(),
        generation,
        data: BASE64.encode(data),
    }
}

/// Builds a raw HTTP client, for requests that `Client` would never send.
fn raw_http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Checks that a reply has `status` and an `ErrorBody` with `code`.
async fn assert_error(response: reqwest::Response, status: StatusCode, code: &str, case: &str) {
    assert_eq!(response.status(), status, "{case}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(content_type, "application/json", "{case}");
    let body: ErrorBody = response.json().await.unwrap();
    assert_eq!(body.code, code, "{case}: {}", body.message);
    assert!(!body.message.is_empty(), "{case}");
}

#[tokio::test]
async fn vault_and_device_enrolment() {
    let server = TestServer::start().await;
    let account = server.account();

    assert!(matches!(
        account.get_vault().await,
        Err(ClientError::NotFound { .. })
    ));

    let vault = CreateVault {
        vault_id: random_hex(16),
        wrapped_key: BASE64.encode(b"wrapped master key"),
    };
    account.create_vault(&vault).await.unwrap();
    assert!(matches!(
        account.create_vault(&vault).await,
        Err(ClientError::VaultExists)
    ));

    let info = account.get_vault().await.unwrap();
    assert_eq!(info.vault_id, vault.vault_id);
    assert_eq!(info.wrapped_key, vault.wrapped_key);

    let device = server.device().await;
    let info = device.get_vault().await.unwrap();
    assert_eq!(info.vault_id, vault.vault_id);
    assert_eq!(info.wrapped_key, vault.wrapped_key);

    let error = device.enroll_device("another").await.unwrap_err();
    assert!(matches!(error, ClientError::Unauthorized { .. }), "{error}");
    assert!(!error.is_retryable());
    let error = device.create_vault(&vault).await.unwrap_err();
    assert!(matches!(error, ClientError::Unauthorized { .. }), "{error}");

    let error = account.changes(0, 10, 0).await.unwrap_err();
    assert!(matches!(error, ClientError::Unauthorized { .. }), "{error}");

    server.shut_down().await;
}

#[tokio::test]
async fn push_and_pull_round_trip() {
    let server = TestServer::start().await;
    let device = server.device().await;
    let (a, b) = (doc_id(1), doc_id(2));

    let accepted = push_accepted(&device, vec![write(&a, 0, b"a1"), write(&b, 0, b"b1")]).await;
    assert_eq!(accepted, vec![(a.clone(), 1), (b.clone(), 2)]);

    let page = device.changes(0, 100, 0).await.unwrap();
    assert_eq!(
        page.documents,
        vec![document(&a, 1, b"a1"), document(&b, 2, b"b1")]
    );
    assert_eq!(page.cursor, 2);
    assert!(!page.more);

    let accepted = push_accepted(&device, vec![write(&a, 1, b"a2")]).await;
    assert_eq!(accepted, vec![(a.clone(), 3)]);

    let page = device.changes(2, 100, 0).await.unwrap();
    assert_eq!(page.documents, vec![document(&a, 3, b"a2")]);
    assert_eq!(page.cursor, 3);

    let page = device.changes(3, 100, 0).await.unwrap();
    assert!(page.documents.is_empty());
    assert_eq!(page.cursor, 3);
    assert!(!page.more);

    // A reader from the start sees only the latest version of each document.
    let other = server.device().await;
    let page = other.changes(0, 100, 0).await.unwrap();
    assert_eq!(
        page.documents,
        vec![document(&b, 2, b"b1"), document(&a, 3, b"a2")]
    );

    assert!(device.bytes_sent() > 0);
    assert!(device.bytes_received() > 0);
    server.shut_down().await;
}

#[tokio::test]
async fn stale_base_generation_conflicts() {
    let server = TestServer::start().await;
    let device = server.device().await;
    let a = doc_id(1);

    push_accepted(&device, vec![write(&a, 0, b"first")]).await;

    let current = push_conflict(&device, vec![write(&a, 0, b"second")]).await;
    assert_eq!(current, vec![document(&a, 1, b"first")]);

    // A base the server never issued, for a document it does not have.
    let missing = doc_id(9);
    let current = push_conflict(&device, vec![write(&missing, 5, b"ghost")]).await;
    assert_eq!(current, vec![document(&missing, 0, b"")]);

    let page = device.changes(0, 100, 0).await.unwrap();
    assert_eq!(page.documents, vec![document(&a, 1, b"first")]);
    server.shut_down().await;
}

#[tokio::test]
async fn retried_batch_is_accepted_again() {
    let server = TestServer::start().await;
    let device = server.device().await;
    let batch = PushBatch {
        writes: vec![write(&doc_id(1), 0, b"a"), write(&doc_id(2), 0, b"b")],
    };

    let first = match device.push(&batch).await.unwrap() {
        PushOutcome::Accepted(accepted) => accepted.accepted,
        PushOutcome::Conflict(conflict) => panic!("unexpected conflict: {conflict:?}"),
    };
    let second = match device.push(&batch).await.unwrap() {
        PushOutcome::Accepted(accepted) => accepted.accepted,
        PushOutcome::Conflict(conflict) => panic!("retry conflicted: {conflict:?}"),
    };
    assert_eq!(first, second);

    let page = device.changes(0, 100, 0).await.unwrap();
    assert_eq!(page.cursor, 2, "the retry must not create generations");
    server.shut_down().await;
}

#[tokio::test]
async fn partly_retried_batch_applies_new_writes() {
    let server = TestServer::start().await;
    let device = server.device().await;
    let (a, b) = (doc_id(1), doc_id(2));

    let known = write(&a, 0, b"a");
    push_accepted(&device, vec![known.clone()]).await;

    let accepted = push_accepted(&device, vec![known, write(&b, 0, b"b")]).await;
    assert_eq!(accepted, vec![(a, 1), (b, 2)]);
    server.shut_down().await;
}

#[tokio::test]
async fn reused_write_id_is_rejected() {
    let server = TestServer::start().await;
    let device = server.device().await;

    let first = write(&doc_id(1), 0, b"a");
    push_accepted(&device, vec![first.clone()]).await;

    let mut reused = write(&doc_id(2), 0, b"b");
    reused.write_id = first.write_id;
    let error = device
        .push(&PushBatch {
            writes: vec![reused],
        })
        .await
        .unwrap_err();
    match error {
        ClientError::Server { status, code, .. } => {
            assert_eq!(status, 400);
            assert_eq!(code, "write_id_reused");
        }
        other => panic!("unexpected error: {other}"),
    }
    server.shut_down().await;
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let server = TestServer::start().await;
    let device = server.device().await;
    let (a, b) = (doc_id(1), doc_id(2));

    push_accepted(&device, vec![write(&a, 0, b"a1")]).await;

    let current = push_conflict(&device, vec![write(&b, 0, b"b1"), write(&a, 0, b"a2")]).await;
    assert_eq!(current, vec![document(&a, 1, b"a1")]);

    let page = device.changes(0, 100, 0).await.unwrap();
    assert_eq!(page.documents, vec![document(&a, 1, b"a1")]);
    assert_eq!(page.cursor, 1);

    // The next accepted batch continues right after generation 1.
    let accepted = push_accepted(&device, vec![write(&b, 0, b"b1")]).await;
    assert_eq!(accepted, vec![(b, 2)]);
    server.shut_down().await;
}

#[tokio::test]
async fn changes_pages_keep_batches_whole() {
    let server = TestServer::start().await;
    let device = server.device().await;

    let first: Vec<_> = (1..=3).map(|n| write(&doc_id(n), 0, b"x")).collect();
    let second: Vec<_> = (4..=5).map(|n| write(&doc_id(n), 0, b"y")).collect();
    push_accepted(&device, first).await;
    push_accepted(&device, second).await;

    // A limit inside the first batch stretches the page to the batch end.
    let page = device.changes(0, 2, 0).await.unwrap();
    assert_eq!(page.documents.len(), 3);
    assert_eq!(page.cursor, 3);
    assert!(page.more);

    // A limit inside the second batch stops the page before it.
    let page = device.changes(0, 4, 0).await.unwrap();
    assert_eq!(page.documents.len(), 3);
    assert!(page.more);

    let page = device.changes(3, 2, 0).await.unwrap();
    assert_eq!(page.documents.len(), 2);
    assert_eq!(page.cursor, 5);
    assert!(!page.more);
    server.shut_down().await;
}

#[tokio::test]
async fn long_poll_wakes_on_push() {
    let server = TestServer::start().await;
    let reader = server.device().await;
    let writer = server.device().await;

    let mut poll = tokio::spawn(async move { reader.changes(0, 100, 60).await });

    // With nothing to return, the poll must still be waiting after a short
    // while. This also gives the request time to reach the server, so that
    // the push below usually lands during the wait.
    let early = tokio::time::timeout(Duration::from_millis(500), &mut poll).await;
    assert!(
        early.is_err(),
        "the poll returned without a change: {early:?}"
    );

    let a = doc_id(1);
    push_accepted(&writer, vec![write(&a, 0, b"news")]).await;

    // The poll returns the document well before its 60-second wait ends.
    let page = tokio::time::timeout(DEADLINE, poll)
        .await
        .expect("long-poll did not wake")
        .unwrap()
        .unwrap();
    assert_eq!(page.documents, vec![document(&a, 1, b"news")]);
    server.shut_down().await;
}

#[tokio::test]
async fn long_poll_expires_with_empty_page() {
    let server = TestServer::start().await;
    let device = server.device().await;

    let page = tokio::time::timeout(DEADLINE, device.changes(7, 100, 1))
        .await
        .unwrap()
        .unwrap();
    assert!(page.documents.is_empty());
    assert_eq!(page.cursor, 7);
    assert!(!page.more);
    server.shut_down().await;
}

#[tokio::test]
async fn shutdown_ends_pending_long_poll() {
    let server = TestServer::start().await;
    let device = server.device().await;

    let mut poll = tokio::spawn(async move { device.changes(0, 100, 60).await });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut poll).await;
    assert!(
        early.is_err(),
        "the poll returned without a change: {early:?}"
    );

    // The server stops well before the 60-second wait ends, and the poll
    // gets an empty page rather than a broken connection.
    server.shut_down().await;
    let page = tokio::time::timeout(DEADLINE, poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(page.documents.is_empty());
}

#[tokio::test]
async fn blobs_missing_put_and_get() {
    let server = TestServer::start().await;
    let device = server.device().await;
    let (a, b) = (blob_id(1), blob_id(2));

    let missing = device.missing_blobs(&[a.clone(), b.clone()]).await.unwrap();
    assert_eq!(missing, vec![a.clone(), b.clone()]);

    device.put_blob(&a, b"ciphertext".to_vec()).await.unwrap();
    device.put_blob(&a, b"ciphertext".to_vec()).await.unwrap();

    let missing = device.missing_blobs(&[a.clone(), b.clone()]).await.unwrap();
    assert_eq!(missing, vec![b.clone()]);

    assert_eq!(device.get_blob(&a).await.unwrap(), b"ciphertext");
    let error = device.get_blob(&b).await.unwrap_err();
    assert!(matches!(error, ClientError::NotFound { .. }), "{error}");

    let largest = vec![7u8; MAX_BLOB_BYTES];
    device.put_blob(&b, largest.clone()).await.unwrap();
    assert_eq!(device.get_blob(&b).await.unwrap(), largest);

    // Blobs belong to an account, so another account cannot read them.
    let other_token = add_account(server._data_dir.path(), "bob").unwrap();
    let other_device = Client::new(&server.url, &other_token)
        .unwrap()
        .enroll_device("bob device")
        .await
        .unwrap();
    let other = Client::new(&server.url, &other_device).unwrap();
    assert!(matches!(
        other.get_blob(&a).await,
        Err(ClientError::NotFound { .. })
    ));
    server.shut_down().await;
}

#[tokio::test]
async fn oversize_blob_gets_413() {
    let server = TestServer::start().await;
    let token = server.device_token().await;
    let http = raw_http();

    let response = http
        .put(format!("{}/v1/blobs/{}", server.url, blob_id(1)))
        .bearer_auth(&token)
        .body(vec![0u8; MAX_BLOB_BYTES + 1])
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "blob",
    )
    .await;

    let device = Client::new(&server.url, &token).unwrap();
    let error = device
        .put_blob(&blob_id(1), vec![0u8; MAX_BLOB_BYTES + 1])
        .await
        .unwrap_err();
    assert!(!error.is_retryable(), "{error}");

    assert!(matches!(
        device.get_blob(&blob_id(1)).await,
        Err(ClientError::NotFound { .. })
    ));
    server.shut_down().await;
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let server = TestServer::start().await;
    let device_token = server.device_token().await;
    let account_token = server.account_token.clone();
    let http = raw_http();
    let url = |path: &str| format!("{}{path}", server.url);

    let bad_id_write = serde_json::json!({"writes": [{
        "id": "XYZ", "base_generation": 0, "write_id": random_hex(16), "data": ""
    }]});
    let bad_base64_write = serde_json::json!({"writes": [{
        "id": doc_id(1), "base_generation": 0, "write_id": random_hex(16), "data": "!!!"
    }]});
    let duplicate_writes = serde_json::json!({"writes": [
        {"id": doc_id(1), "base_generation": 0, "write_id": random_hex(16), "data": ""},
        {"id": doc_id(1), "base_generation": 0, "write_id": random_hex(16), "data": ""},
    ]});
    let too_many_writes = PushBatch {
        writes: (0..=MAX_BATCH_DOCUMENTS)
            .map(|_| write(&random_hex(16), 0, b""))
            .collect(),
    };

    let unknown_token = "ab".repeat(32);
    let json = "application/json";
    // (case, method, path, token, content type, body, status, code)
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Option<&'a str>,
        &'a str,
        Vec<u8>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "truncated JSON",
            "POST",
            url("/v1/documents"),
            Some(&device_token),
            json,
            b"{\"writes\": [".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "JSON of the wrong shape",
            "POST",
            url("/v1/devices"),
            Some(&account_token),
            json,
            b"{\"name\": 3}".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "bad document id",
            "POST",
            url("/v1/documents"),
            Some(&device_token),
            json,
            bad_id_write.to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "bad base64",
            "POST",
            url("/v1/documents"),
            Some(&device_token),
            json,
            bad_base64_write.to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "document written twice in a batch",
            "POST",
            url("/v1/documents"),
            Some(&device_token),
            json,
            duplicate_writes.to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "too many writes",
            "POST",
            url("/v1/documents"),
            Some(&device_token),
            json,
            serde_json::to_vec(&too_many_writes).unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "bad blob id",
            "GET",
            url("/v1/blobs/XYZ"),
            Some(&device_token),
            json,
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "bad blob id in a list",
            "POST",
            url("/v1/blobs/missing"),
            Some(&device_token),
            json,
            b"{\"ids\": [\"abc\"]}".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "non-numeric since",
            "GET",
            url("/v1/changes?since=abc"),
            Some(&device_token),
            json,
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "zero limit",
            "GET",
            url("/v1/changes?limit=0"),
            Some(&device_token),
            json,
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "bad vault id",
            "POST",
            url("/v1/vault"),
            Some(&account_token),
            json,
            b"{\"vault_id\": \"nothex\", \"wrapped_key\": \"AAAA\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "push without a JSON content type",
            "POST",
            url("/v1/documents"),
            Some(&device_token),
            "text/plain",
            b"{\"writes\": []}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "wrong content type",
            "POST",
            url("/v1/vault"),
            Some(&account_token),
            "text/plain",
            b"{}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "oversize JSON body",
            "POST",
            url("/v1/devices"),
            Some(&account_token),
            json,
            format!("{{\"label\": \"{}\"}}", "x".repeat(100 * 1024)).into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "missing token",
            "GET",
            url("/v1/changes"),
            None,
            json,
            Vec::new(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "malformed token",
            "GET",
            url("/v1/changes"),
            Some("not-a-token"),
            json,
            Vec::new(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "unknown token",
            "GET",
            url("/v1/changes"),
            Some(&unknown_token),
            json,
            Vec::new(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "account token on a device route",
            "GET",
            url("/v1/changes"),
            Some(&account_token),
            json,
            Vec::new(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "unknown route",
            "GET",
            url("/v1/nothing"),
            Some(&device_token),
            json,
            Vec::new(),
            StatusCode::NOT_FOUND,
            "no_route",
        ),
        (
            "wrong method",
            "DELETE",
            url("/v1/vault"),
            Some(&account_token),
            json,
            Vec::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];

    for (case, method, url, token, content_type, body, status, code) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = http
            .request(method, &url)
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_error(response, status, code, case).await;
    }

    // The server keeps working after all of that.
    let device = Client::new(&server.url, &device_token).unwrap();
    let accepted = push_accepted(&device, vec![write(&doc_id(1), 0, b"ok")]).await;
    assert_eq!(accepted, vec![(doc_id(1), 1)]);
    server.shut_down().await;
}

#[tokio::test]
async fn unreachable_server_is_retryable() {
    // Bind and drop a listener to get a loopback port that nothing serves.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);

    let client = Client::new(&format!("http://{address}"), &"ab".repeat(32)).unwrap();
    let error = client.get_vault().await.unwrap_err();
    assert!(matches!(error, ClientError::Unreachable { .. }), "{error}");
    assert!(error.is_retryable());
}

#[test]
fn client_rejects_invalid_urls() {
    let token = "ab".repeat(32);
    for url in [
        "ftp://127.0.0.1/",
        "not a url",
        "127.0.0.1:8080",
        "http://127.0.0.1/?x=1",
    ] {
        let result = Client::new(url, &token);
        assert!(
            matches!(result, Err(ClientError::InvalidUrl { .. })),
            "{url}"
        );
    }
    assert!(Client::new("https://127.0.0.1:8443/sync", &token).is_ok());
}

fn set_schema_version(data_dir: &Path, version: i64) {
    let connection = rusqlite::Connection::open(data_dir.join("server.db")).unwrap();
    connection
        .pragma_update(None, "user_version", version)
        .unwrap();
}

#[tokio::test]
async fn newer_schema_is_rejected() {
    let data_dir = tempfile::tempdir().unwrap();
    add_account(data_dir.path(), "alice").unwrap();
    set_schema_version(data_dir.path(), 5);

    let result = bind(ServerConfig {
        data_dir: data_dir.path().to_path_buf(),
        listen: "127.0.0.1:0".to_string(),
    })
    .await;
    let Err(error) = result else {
        panic!("a database from a newer syn was opened");
    };
    assert!(
        matches!(error, ServerError::NewerSchema { found: 5, .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("newer syn"), "{message}");
    assert!(message.contains("upgrade syn"), "{message}");

    assert!(matches!(
        add_account(data_dir.path(), "bob"),
        Err(ServerError::NewerSchema { .. })
    ));
}

#[test]
fn account_names_are_checked() {
    let data_dir = tempfile::tempdir().unwrap();
    for name in ["", "with space", "slash/name", &"x".repeat(65)] {
        assert!(
            matches!(
                add_account(data_dir.path(), name),
                Err(ServerError::InvalidAccountName { .. })
            ),
            "{name:?}"
        );
    }

    add_account(data_dir.path(), "alice").unwrap();
    assert!(matches!(
        add_account(data_dir.path(), "alice"),
        Err(ServerError::AccountExists { .. })
    ));
}

#[test]
fn missing_data_dir_is_created() {
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("a").join("b");
    let token = add_account(&data_dir, "alice").unwrap();
    assert_eq!(token.len(), 64);
    assert!(data_dir.join("server.db").is_file());
}
