//! The store and the sync path reject what they cannot trust: a wrong
//! passphrase, a newer or foreign store, and blocks that were swapped or
//! altered on disk or on the server.

mod common;

use std::fs;

use common::{Device, Server, run_ok, syn, wait_until};
use syn::crypto::{MasterKey, NodeId, Passphrase, VaultId, WrappedKey};
use syn::store::{NewStore, NodeDoc, NodeKind, Store, StoreError, VAULT_OWNER, kdf_params};

fn new_store(dir: &std::path::Path, passphrase: &str) -> Store {
    let master = MasterKey::generate();
    let wrapped = WrappedKey::wrap(
        &master,
        VaultId::random(),
        &Passphrase::new(passphrase.into()),
        kdf_params(true),
    )
    .unwrap();
    Store::create(
        dir,
        NewStore {
            wrapped_key: &wrapped,
            master: &master,
            device_label: "test",
            server_url: None,
            device_token: None,
        },
    )
    .unwrap()
}

#[test]
fn store_reopens_with_the_same_content() {
    let dir = common::temp_dir();
    let mut store = new_store(dir.path(), "pass");
    let block = store.put_block(b"block content").unwrap();
    let mut doc = NodeDoc::new(
        NodeKind::File,
        NodeId::ROOT,
        b"name.txt",
        0o640,
        VAULT_OWNER,
        VAULT_OWNER,
    );
    doc.content.size = 13;
    doc.content.blocks = [(0, block)].into();
    let id = NodeId::random();
    store.commit(&[(id, &doc)]).unwrap();
    drop(store);

    let mut reopened = Store::open(dir.path(), &Passphrase::new("pass".into())).unwrap();
    let row = reopened
        .lookup(&NodeId::ROOT, b"name.txt")
        .unwrap()
        .expect("the node is found by name");
    assert_eq!(row.id, id);
    assert_eq!(row.doc, doc);
    assert_eq!(
        reopened.read_block(&block).unwrap().as_slice(),
        b"block content"
    );
}

#[test]
fn wrong_passphrase_is_rejected_clearly() {
    let dir = common::temp_dir();
    drop(new_store(dir.path(), "right"));
    let error = Store::open(dir.path(), &Passphrase::new("wrong".into()))
        .err()
        .expect("a wrong passphrase fails");
    assert!(
        error.to_string().contains("wrong passphrase"),
        "message: {error}"
    );
}

#[test]
fn newer_store_is_refused_with_upgrade_hint() {
    let dir = common::temp_dir();
    drop(new_store(dir.path(), "pass"));
    let connection = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
    connection.pragma_update(None, "user_version", 99).unwrap();
    drop(connection);

    let error = Store::open(dir.path(), &Passphrase::new("pass".into()))
        .err()
        .expect("a newer store fails");
    assert!(
        matches!(error, StoreError::TooNew { found: 99, .. }),
        "error: {error:?}"
    );
    assert!(
        error.to_string().contains("upgrade syn"),
        "message: {error}"
    );
}

#[test]
fn foreign_files_are_not_mistaken_for_a_store() {
    let dir = common::temp_dir();
    fs::write(
        dir.path().join("store.db"),
        b"this is not an SQLite database at all, just text",
    )
    .unwrap();
    let error = Store::open(dir.path(), &Passphrase::new("pass".into()))
        .err()
        .expect("garbage fails");
    assert!(
        matches!(error, StoreError::Corrupt { .. }),
        "error: {error:?}"
    );

    let other = common::temp_dir();
    let connection = rusqlite::Connection::open(other.path().join("store.db")).unwrap();
    connection
        .execute_batch("CREATE TABLE photos (id INTEGER);")
        .unwrap();
    drop(connection);
    let error = Store::open(other.path(), &Passphrase::new("pass".into()))
        .err()
        .expect("a foreign database fails");
    assert!(
        error.to_string().contains("not one that syn wrote"),
        "message: {error}"
    );
}

#[test]
fn block_swapped_on_disk_is_detected() {
    let dir = common::temp_dir();
    let mut store = new_store(dir.path(), "pass");
    let first = store.put_block(b"first block").unwrap();
    let second = store.put_block(b"second block").unwrap();
    drop(store);

    let connection = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
    let second_data: Vec<u8> = connection
        .query_row(
            "SELECT data FROM blocks WHERE id = ?1",
            [second.0.as_slice()],
            |row| row.get(0),
        )
        .unwrap();
    connection
        .execute(
            "UPDATE blocks SET data = ?1 WHERE id = ?2",
            rusqlite::params![second_data, first.0],
        )
        .unwrap();
    drop(connection);

    let mut reopened = Store::open(dir.path(), &Passphrase::new("pass".into())).unwrap();
    assert!(
        reopened.read_block(&first).is_err(),
        "the swapped block must not open"
    );
    assert_eq!(
        reopened.read_block(&second).unwrap().as_slice(),
        b"second block"
    );
}

#[test]
fn mount_with_wrong_passphrase_fails_clearly() {
    let device = Device::local();
    let output = syn()
        .env("SYN_PASSPHRASE", "not the passphrase")
        .arg("mount")
        .arg("--store")
        .arg(&device.store)
        .arg(&device.mountpoint)
        .output()
        .unwrap();
    assert!(!output.status.success(), "the mount must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("wrong passphrase"), "stderr: {stderr}");
    assert!(
        !common::is_mounted(&device.mountpoint),
        "nothing stays mounted"
    );
}

#[test]
fn tampered_block_from_the_server_is_rejected() {
    let server = Server::start();
    let token = server.add_account("alice");
    let mut a = Device::create(&server, &token, "A");
    a.mount();
    fs::write(a.path("one.txt"), vec![1u8; 5000]).unwrap();
    fs::write(a.path("two.txt"), vec![2u8; 5000]).unwrap();
    wait_until("both files pushed", || {
        a.status_json()["pending_changes"].as_u64() == Some(0)
    });
    a.unmount();

    // Serve one block's ciphertext in place of the other's.
    let connection = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    let blobs: Vec<(String, Vec<u8>)> = connection
        .prepare("SELECT id, data FROM blobs")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(blobs.len(), 2, "two distinct blocks on the server");
    connection
        .execute(
            "UPDATE blobs SET data = ?1 WHERE id = ?2",
            rusqlite::params![blobs[1].1, blobs[0].0],
        )
        .unwrap();
    drop(connection);

    let b_dir = common::temp_dir();
    let output = syn()
        .args([
            "join",
            "--device-name",
            "B",
            "--server",
            &server.url,
            "--token",
            &token,
            "--store",
        ])
        .arg(b_dir.path().join("b"))
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "joining with a tampered block must fail"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("block {} ", blobs[0].0)),
        "the error names the block: {stderr}"
    );
    assert!(
        stderr.contains("failed authentication"),
        "the error says why: {stderr}"
    );

    // The first device still has the true content.
    a.mount();
    assert_eq!(fs::read(a.path("one.txt")).unwrap(), vec![1u8; 5000]);
    run_ok(syn().arg("status").arg("--store").arg(&a.store));
}
