//! Merge rules between two devices on real mounts: changes made while the
//! server is down meet when it returns.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{Device, Server, read_if_exists, settle, wait_until};

struct Pair {
    server: Server,
    a: Device,
    b: Device,
}

fn pair() -> Pair {
    let (server, _token, a, b) = common::mounted_pair();
    Pair { server, a, b }
}

fn pending(device: &Device) -> u64 {
    device.status_json()["pending_changes"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Waits until both devices pushed everything and see the same tree.
fn converge(pair: &Pair) {
    wait_until("both devices to push", || {
        pending(&pair.a) == 0 && pending(&pair.b) == 0
    });
    wait_until("both trees to match", || tree(&pair.a) == tree(&pair.b));
    settle(&[&pair.a, &pair.b]);
}

fn tree(device: &Device) -> Vec<(String, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut pending_dirs = vec![device.mountpoint.clone()];
    while let Some(dir) = pending_dirs.pop() {
        let Ok(listing) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in listing.flatten() {
            let path = entry.path();
            let relative = path
                .strip_prefix(&device.mountpoint)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                pending_dirs.push(path);
                entries.push((relative + "/", Vec::new()));
            } else {
                entries.push((relative, fs::read(&path).unwrap_or_default()));
            }
        }
    }
    entries.sort();
    entries
}

#[test]
fn rename_on_one_and_edit_on_other_combine() {
    let mut pair = pair();
    fs::write(pair.a.path("report.txt"), b"draft").unwrap();
    fs::set_permissions(pair.a.path("report.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    wait_until("the file on B", || pair.b.path("report.txt").exists());
    converge(&pair);

    pair.server.stop();
    fs::rename(pair.a.path("report.txt"), pair.a.path("final.txt")).unwrap();
    fs::set_permissions(pair.b.path("report.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(pair.b.path("report.txt"), b"edited on B").unwrap();
    pair.server.restart();

    converge(&pair);
    for device in [&pair.a, &pair.b] {
        assert!(!device.path("report.txt").exists(), "the old name is gone");
        assert_eq!(
            fs::read(device.path("final.txt")).unwrap(),
            b"edited on B",
            "renamed file with B's content"
        );
        let mode = fs::metadata(device.path("final.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "B's chmod is kept too");
    }
}

#[test]
fn edit_wins_over_delete() {
    let mut pair = pair();
    fs::write(pair.a.path("kept.txt"), b"original").unwrap();
    wait_until("the file on B", || pair.b.path("kept.txt").exists());
    converge(&pair);

    pair.server.stop();
    fs::remove_file(pair.a.path("kept.txt")).unwrap();
    fs::write(pair.b.path("kept.txt"), b"edited after the delete").unwrap();
    pair.server.restart();

    converge(&pair);
    for device in [&pair.a, &pair.b] {
        assert_eq!(
            read_if_exists(&device.path("kept.txt")).as_deref(),
            Some(&b"edited after the delete"[..]),
            "the edit brings the file back"
        );
    }
}

#[test]
fn deleted_directory_keeps_a_file_added_elsewhere() {
    let mut pair = pair();
    fs::create_dir(pair.a.path("project")).unwrap();
    fs::write(pair.a.path("project/old.txt"), b"old").unwrap();
    wait_until("the directory on B", || {
        pair.b.path("project/old.txt").exists()
    });
    converge(&pair);

    pair.server.stop();
    fs::remove_dir_all(pair.a.path("project")).unwrap();
    fs::write(pair.b.path("project/new.txt"), b"added on B").unwrap();
    pair.server.restart();

    converge(&pair);
    for device in [&pair.a, &pair.b] {
        assert_eq!(
            read_if_exists(&device.path("project/new.txt")).as_deref(),
            Some(&b"added on B"[..]),
            "B's new file survives with its directory"
        );
    }
}

/// Deletes the tree `p` on A while B moves its folder `q` and its file
/// out of it, all while the server is down. `first` is the device that
/// pushes first once the server is back; the other is unmounted until it
/// has synced once in the foreground.
fn delete_tree_while_moving_out_of_it(first: &str) {
    let mut pair = pair();
    fs::create_dir_all(pair.a.path("p/q")).unwrap();
    fs::write(pair.a.path("p/q/one"), b"1").unwrap();
    fs::write(pair.a.path("p/q/two"), b"2").unwrap();
    fs::write(pair.a.path("p/file"), b"f").unwrap();
    wait_until("the tree on B", || pair.b.path("p/file").exists());
    converge(&pair);

    pair.server.stop();
    fs::remove_dir_all(pair.a.path("p")).unwrap();
    fs::rename(pair.b.path("p/q"), pair.b.path("q2")).unwrap();
    fs::rename(pair.b.path("p/file"), pair.b.path("file2")).unwrap();
    let (pusher, later) = if first == "A" {
        (&pair.a, &mut pair.b)
    } else {
        (&pair.b, &mut pair.a)
    };
    later.unmount();
    pair.server.restart();
    wait_until("the first device to push", || pending(pusher) == 0);
    let output = later.sync();
    assert!(
        output.status.success(),
        "the later device syncs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    later.mount();

    converge(&pair);
    for device in [&pair.a, &pair.b] {
        let files = tree(device);
        let expected = [
            ("file2".to_string(), b"f".to_vec()),
            ("q2/".to_string(), Vec::new()),
            ("q2/one".to_string(), b"1".to_vec()),
            ("q2/two".to_string(), b"2".to_vec()),
        ];
        assert_eq!(files, expected, "the moved folder keeps its files");
    }
}

#[test]
fn moved_folder_survives_tree_deletion_pushed_first() {
    delete_tree_while_moving_out_of_it("A");
}

#[test]
fn moved_folder_survives_tree_deletion_pushed_later() {
    delete_tree_while_moving_out_of_it("B");
}

#[test]
fn same_name_created_on_both_keeps_both() {
    let mut pair = pair();
    pair.server.stop();
    fs::write(pair.a.path("notes.txt"), b"from A").unwrap();
    fs::write(pair.b.path("notes.txt"), b"from B").unwrap();
    pair.server.restart();

    converge(&pair);
    let contents: Vec<Vec<u8>> = tree(&pair.a)
        .into_iter()
        .map(|(_, content)| content)
        .collect();
    assert_eq!(contents.len(), 2, "two files: {:?}", tree(&pair.a));
    assert!(contents.contains(&b"from A".to_vec()), "A's file is kept");
    assert!(contents.contains(&b"from B".to_vec()), "B's file is kept");
}

#[test]
fn crossed_directory_moves_make_no_cycle() {
    let mut pair = pair();
    fs::create_dir(pair.a.path("x")).unwrap();
    fs::create_dir(pair.a.path("y")).unwrap();
    fs::write(pair.a.path("x/in-x.txt"), b"x's file").unwrap();
    fs::write(pair.a.path("y/in-y.txt"), b"y's file").unwrap();
    wait_until("both directories on B", || {
        pair.b.path("y/in-y.txt").exists()
    });
    converge(&pair);

    pair.server.stop();
    fs::rename(pair.a.path("x"), pair.a.path("y/x")).unwrap();
    fs::rename(pair.b.path("y"), pair.b.path("x/y")).unwrap();
    pair.server.restart();

    converge(&pair);
    let files: Vec<(String, Vec<u8>)> = tree(&pair.a)
        .into_iter()
        .filter(|(name, _)| !name.ends_with('/'))
        .collect();
    let contents: Vec<&[u8]> = files
        .iter()
        .map(|(_, content)| content.as_slice())
        .collect();
    assert!(
        contents.contains(&&b"x's file"[..]),
        "x's subtree is reachable: {files:?}"
    );
    assert!(
        contents.contains(&&b"y's file"[..]),
        "y's subtree is reachable: {files:?}"
    );
}

#[test]
fn file_in_a_subfolder_of_a_deleted_tree_survives() {
    let mut pair = pair();
    fs::create_dir_all(pair.a.path("tree/sub")).unwrap();
    fs::write(pair.a.path("tree/sub/old.txt"), b"old").unwrap();
    wait_until("the tree on B", || pair.b.path("tree/sub/old.txt").exists());
    converge(&pair);

    pair.server.stop();
    fs::remove_dir_all(pair.a.path("tree")).unwrap();
    fs::write(pair.b.path("tree/sub/new.txt"), b"nested addition").unwrap();
    pair.server.restart();

    converge(&pair);
    for device in [&pair.a, &pair.b] {
        assert_eq!(
            read_if_exists(&device.path("tree/sub/new.txt")).as_deref(),
            Some(&b"nested addition"[..]),
            "the nested new file survives with its directories"
        );
    }
}

/// Syncs f1 (x) and f2 (y) to both devices, stops the server, and swaps
/// their names on A through a temporary name.
fn swap_two_files_offline_on_a(pair: &mut Pair) {
    fs::write(pair.a.path("f1"), b"x").unwrap();
    fs::write(pair.a.path("f2"), b"y").unwrap();
    wait_until("both files on B", || pair.b.path("f2").exists());
    converge(pair);

    pair.server.stop();
    fs::rename(pair.a.path("f1"), pair.a.path("tmp")).unwrap();
    fs::rename(pair.a.path("f2"), pair.a.path("f1")).unwrap();
    fs::rename(pair.a.path("tmp"), pair.a.path("f2")).unwrap();
}

#[test]
fn offline_swap_of_two_names_syncs_as_a_swap() {
    let mut pair = pair();
    swap_two_files_offline_on_a(&mut pair);
    pair.server.restart();

    converge(&pair);
    for device in [&pair.a, &pair.b] {
        assert_eq!(
            read_if_exists(&device.path("f1")).as_deref(),
            Some(&b"y"[..]),
            "f1 holds y"
        );
        assert_eq!(
            read_if_exists(&device.path("f2")).as_deref(),
            Some(&b"x"[..]),
            "f2 holds x"
        );
        assert_eq!(
            tree(device).len(),
            2,
            "no conflict copies: {:?}",
            tree(device)
        );
    }
}

#[test]
fn swap_on_one_and_edit_on_other_combine() {
    let mut pair = pair();
    swap_two_files_offline_on_a(&mut pair);
    fs::write(pair.b.path("f1"), b"x edited on B").unwrap();
    pair.b.unmount();
    // A pushes the swap first, so B's push of its edit conflicts, and B
    // takes in the server's version of that one file before the rest of
    // the swap reaches it.
    pair.server.restart();
    wait_until("A to push the swap", || pending(&pair.a) == 0);
    let output = pair.b.sync();
    assert!(
        output.status.success(),
        "B syncs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    pair.b.mount();

    converge(&pair);
    for device in [&pair.a, &pair.b] {
        let files = tree(device);
        assert_eq!(files.len(), 2, "no conflict copies: {files:?}");
        assert_eq!(
            read_if_exists(&device.path("f2")).as_deref(),
            Some(&b"x edited on B"[..]),
            "the moved file has B's edit: {files:?}"
        );
        assert_eq!(
            read_if_exists(&device.path("f1")).as_deref(),
            Some(&b"y"[..]),
            "f1 holds y: {files:?}"
        );
    }
}

#[test]
fn delete_on_one_and_rename_on_other_keeps_the_file() {
    let mut pair = pair();
    fs::write(pair.a.path("moving.txt"), b"keep me").unwrap();
    wait_until("the file on B", || pair.b.path("moving.txt").exists());
    converge(&pair);

    pair.server.stop();
    fs::remove_file(pair.a.path("moving.txt")).unwrap();
    fs::rename(pair.b.path("moving.txt"), pair.b.path("moved.txt")).unwrap();
    pair.server.restart();

    converge(&pair);
    for device in [&pair.a, &pair.b] {
        assert_eq!(
            read_if_exists(&device.path("moved.txt")).as_deref(),
            Some(&b"keep me"[..]),
            "the rename wins"
        );
    }
}

#[test]
fn three_devices_converge_on_concurrent_changes() {
    let mut server = Server::start();
    let token = server.add_account("alice");
    let mut devices = vec![
        Device::create(&server, &token, "A"),
        Device::join(&server, &token, "B"),
        Device::join(&server, &token, "C"),
    ];
    for device in &mut devices {
        device.mount();
    }
    fs::create_dir(devices[0].path("shared")).unwrap();
    fs::write(devices[0].path("shared/common.txt"), b"base").unwrap();
    wait_until("the base on every device", || {
        devices
            .iter()
            .all(|device| device.path("shared/common.txt").exists())
    });
    settle(&devices.iter().collect::<Vec<_>>());

    server.stop();
    fs::write(devices[0].path("shared/common.txt"), b"edited on A").unwrap();
    fs::write(devices[1].path("shared/common.txt"), b"edited on B").unwrap();
    fs::rename(
        devices[2].path("shared/common.txt"),
        devices[2].path("shared/renamed.txt"),
    )
    .unwrap();
    for (index, device) in devices.iter().enumerate() {
        fs::write(
            device.path(&format!("own-{index}.txt")),
            format!("device {index}"),
        )
        .unwrap();
    }
    server.restart();

    wait_until("every device to push", || {
        devices.iter().all(|device| pending(device) == 0)
    });
    wait_until("the same tree everywhere", || {
        let first = tree(&devices[0]);
        devices.iter().all(|device| tree(device) == first)
    });
    let files = tree(&devices[0]);
    let contents: Vec<&[u8]> = files
        .iter()
        .map(|(_, content)| content.as_slice())
        .collect();
    for expected in [
        &b"edited on A"[..],
        b"edited on B",
        b"device 0",
        b"device 1",
        b"device 2",
    ] {
        assert!(
            contents.contains(&expected),
            "{:?} survives: {files:?}",
            String::from_utf8_lossy(expected)
        );
    }
}

#[test]
fn server_killed_mid_push_loses_and_duplicates_nothing() {
    let mut pair = pair();
    fs::create_dir(pair.a.path("many")).unwrap();
    for index in 0..600 {
        fs::write(
            pair.a.path(&format!("many/file-{index:04}")),
            format!("content {index}").repeat(200),
        )
        .unwrap();
    }
    wait_until("part of the push to land", || {
        pair.a.status_from_socket()["sync"]["pushed_total"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    pair.server.stop();
    pair.server.restart();

    converge(&pair);
    let names: Vec<String> = fs::read_dir(pair.b.path("many"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 600, "every file once, no conflict copies");
    for index in [0, 299, 599] {
        assert_eq!(
            fs::read(pair.b.path(&format!("many/file-{index:04}"))).unwrap(),
            format!("content {index}").repeat(200).into_bytes()
        );
    }
}

#[test]
fn offline_device_catches_up_on_ten_thousand_files() {
    let (_server, _token, a, mut b) = common::mounted_pair();
    b.unmount();
    for directory in 0..100 {
        let path = a.path(&format!("batch-{directory:03}"));
        fs::create_dir(&path).unwrap();
        for index in 0..100 {
            fs::write(
                path.join(format!("file-{index:03}")),
                format!("{directory}/{index}"),
            )
            .unwrap();
        }
    }
    wait_until("A to push all 10,000 files", || pending(&a) == 0);

    let output = b.sync();
    assert!(
        output.status.success(),
        "one resumed sync: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    b.mount();
    let mut count = 0;
    for directory in 0..100 {
        count += fs::read_dir(b.path(&format!("batch-{directory:03}")))
            .unwrap()
            .count();
    }
    assert_eq!(count, 10_000, "every file arrived");
    assert_eq!(fs::read(b.path("batch-042/file-017")).unwrap(), b"42/17");
}
