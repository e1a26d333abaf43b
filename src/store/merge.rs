//! Three-way merge of a node's document: the base the device last synced,
//! the local version and the remote one. A pure function, so the rules are
//! tested without a store or a server.

use super::node::{NodeDoc, NodeKind};

/// What a merge decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The node's new document.
    pub doc: NodeDoc,
    /// The local version, to be kept as a new node beside the merged one,
    /// when both sides changed the content.
    pub conflict_copy: Option<NodeDoc>,
}

/// Extra hard links as (directory, name).
type Links = [(crate::crypto::NodeId, Vec<u8>)];

fn location(doc: &NodeDoc) -> (&[u8], &[u8], &Links) {
    (&doc.parent.0, &doc.name, &doc.extra_links)
}

fn attributes(doc: &NodeDoc) -> (u32, u32, u32, &std::collections::BTreeMap<Vec<u8>, Vec<u8>>) {
    (doc.mode, doc.uid, doc.gid, &doc.xattrs)
}

fn content(doc: &NodeDoc) -> (&super::Content, &[u8], super::Timestamp) {
    (&doc.content, &doc.target, doc.mtime)
}

/// Returns true when `doc` differs from `base` in more than its times. A
/// directory's times change whenever an entry comes or goes, as when the
/// other device moves files out of a directory this one deletes, and that
/// must not keep the directory alive.
fn changed_beyond_times(base: &NodeDoc, doc: &NodeDoc) -> bool {
    let without_times = |doc: &NodeDoc| {
        let mut doc = doc.clone();
        doc.atime = Default::default();
        doc.ctime = Default::default();
        if doc.kind == NodeKind::Directory {
            doc.mtime = Default::default();
        }
        doc
    };
    without_times(base) != without_times(doc)
}

/// Merges field groups (location, attributes, content) independently: a
/// group changed on one side only takes that side's value. Content changed
/// on both sides keeps the remote content in the node and the local one in
/// a conflict copy. An edit wins over a deletion.
pub fn merge(base: Option<&NodeDoc>, local: &NodeDoc, remote: &NodeDoc) -> Merged {
    let keep = |doc: &NodeDoc| Merged {
        doc: doc.clone(),
        conflict_copy: None,
    };
    let local_changed_content = base.is_none_or(|base| content(base) != content(local));
    let remote_changed_content = base.is_none_or(|base| content(base) != content(remote));
    // Any change (content, a rename, a chmod) wins over a deletion, so a
    // deletion never takes away what the other device still worked on.
    let local_changed = base.is_none_or(|base| changed_beyond_times(base, local));
    let remote_changed = base.is_none_or(|base| changed_beyond_times(base, remote));

    match (local.kind, remote.kind) {
        (NodeKind::Deleted, NodeKind::Deleted) => return keep(remote),
        (_, NodeKind::Deleted) if local_changed => return keep(local),
        (_, NodeKind::Deleted) => return keep(remote),
        (NodeKind::Deleted, _) if remote_changed => return keep(remote),
        (NodeKind::Deleted, _) => return keep(local),
        _ => {}
    }

    let mut doc = remote.clone();
    let mut conflict_copy = None;
    let changed = |group: &dyn Fn(&NodeDoc) -> bool| base.is_none_or(group);

    if changed(&|base| location(base) != location(local)) {
        doc.parent = local.parent;
        doc.name = local.name.clone();
        doc.extra_links = local.extra_links.clone();
    }
    if changed(&|base| attributes(base) != attributes(local)) {
        doc.mode = local.mode;
        doc.uid = local.uid;
        doc.gid = local.gid;
        doc.xattrs = local.xattrs.clone();
    }
    if doc.kind == NodeKind::Directory {
        // A directory's only content is its mtime: the later one wins.
        doc.mtime = local.mtime.max(remote.mtime);
    } else if local_changed_content && content(local) != content(remote) {
        if remote_changed_content {
            conflict_copy = Some(local.clone());
        } else {
            doc.content = local.content.clone();
            doc.target = local.target.clone();
            doc.mtime = local.mtime;
        }
    }
    doc.atime = local.atime.max(remote.atime);
    doc.ctime = local.ctime.max(remote.ctime);

    Merged { doc, conflict_copy }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{BlockId, NodeId};
    use crate::store::node::{Content, Timestamp};

    fn file(name: &str, block: u8) -> NodeDoc {
        let mut doc = NodeDoc::new(NodeKind::File, NodeId::ROOT, name.as_bytes(), 0o644, 0, 0);
        doc.content = Content {
            size: 10,
            block_size: 65536,
            blocks: [(0, BlockId([block; 32]))].into(),
        };
        doc.mtime = Timestamp {
            seconds: block as i64,
            nanos: 0,
        };
        doc.atime = Timestamp::default();
        doc.ctime = Timestamp::default();
        doc
    }

    #[test]
    fn rename_and_edit_combine() {
        let base = file("a", 1);
        let mut local = base.clone();
        local.name = b"b".to_vec();
        let remote = file("a", 2);

        let merged = merge(Some(&base), &local, &remote);
        assert_eq!(merged.doc.name, b"b");
        assert_eq!(merged.doc.content, remote.content);
        assert_eq!(merged.conflict_copy, None);
    }

    #[test]
    fn chmod_and_edit_combine() {
        let base = file("a", 1);
        let mut local = base.clone();
        local.mode = 0o600;
        let remote = file("a", 2);

        let merged = merge(Some(&base), &local, &remote);
        assert_eq!(merged.doc.mode, 0o600);
        assert_eq!(merged.doc.content, remote.content);
    }

    #[test]
    fn both_edits_keep_a_conflict_copy() {
        let base = file("a", 1);
        let local = file("a", 2);
        let remote = file("a", 3);

        let merged = merge(Some(&base), &local, &remote);
        assert_eq!(merged.doc.content, remote.content);
        assert_eq!(
            merged.conflict_copy.map(|copy| copy.content),
            Some(local.content)
        );
    }

    #[test]
    fn edit_wins_over_remote_delete() {
        let base = file("a", 1);
        let local = file("a", 2);
        let merged = merge(Some(&base), &local, &NodeDoc::tombstone());
        assert_eq!(merged.doc, local);
    }

    #[test]
    fn remote_edit_wins_over_local_delete() {
        let base = file("a", 1);
        let remote = file("a", 2);
        let merged = merge(Some(&base), &NodeDoc::tombstone(), &remote);
        assert_eq!(merged.doc, remote);
    }

    #[test]
    fn rename_wins_over_delete() {
        let base = file("a", 1);
        let mut remote = base.clone();
        remote.name = b"renamed".to_vec();
        let merged = merge(Some(&base), &NodeDoc::tombstone(), &remote);
        assert_eq!(merged.doc, remote);
    }

    #[test]
    fn delete_wins_over_an_untouched_node() {
        let base = file("a", 1);
        let merged = merge(Some(&base), &NodeDoc::tombstone(), &base);
        assert!(merged.doc.is_deleted());
    }

    #[test]
    fn directories_never_get_conflict_copies() {
        let mut base = NodeDoc::new(NodeKind::Directory, NodeId::ROOT, b"d", 0o755, 0, 0);
        base.mtime = Timestamp {
            seconds: 1,
            nanos: 0,
        };
        let mut local = base.clone();
        local.mtime = Timestamp {
            seconds: 3,
            nanos: 0,
        };
        let mut remote = base.clone();
        remote.mtime = Timestamp {
            seconds: 2,
            nanos: 0,
        };

        let merged = merge(Some(&base), &local, &remote);
        assert_eq!(merged.conflict_copy, None);
        assert_eq!(merged.doc.mtime, local.mtime);
    }

    #[test]
    fn local_only_edit_is_kept() {
        let base = file("a", 1);
        let local = file("a", 2);
        let merged = merge(Some(&base), &local, &base);
        assert_eq!(merged.doc.content, local.content);
        assert_eq!(merged.conflict_copy, None);
    }
}
