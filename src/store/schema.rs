//! The schema of the local store and its forward migrations, keyed by
//! `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Version this binary writes; a store with a higher one is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// Migration `i` takes a store from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first layout.
    "
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    -- One row per node. Names, attributes and the manifest are inside the
    -- sealed document.
    CREATE TABLE nodes (
        id BLOB PRIMARY KEY,
        ino INTEGER NOT NULL UNIQUE,
        document BLOB NOT NULL,
        -- Server generation the local document is based on; 0 if never synced.
        generation INTEGER NOT NULL DEFAULT 0,
        -- Sealed document as of that generation, the base of three-way merges.
        base BLOB,
        -- Counts remote changes applied, so an open handle can tell that the
        -- file changed under it.
        remote_revision INTEGER NOT NULL DEFAULT 0
    );
    -- One row per link (a file with hard links has several), keyed by
    -- keyed hashes of (directory, name) and of the directory.
    CREATE TABLE entries (
        name_tag BLOB PRIMARY KEY,
        directory_tag BLOB NOT NULL,
        node BLOB NOT NULL
    );
    CREATE INDEX entries_by_directory ON entries(directory_tag);
    CREATE INDEX entries_by_node ON entries(node);
    CREATE TABLE blocks (
        id BLOB PRIMARY KEY,
        data BLOB NOT NULL,
        uploaded INTEGER NOT NULL DEFAULT 0
    );
    -- The change log: one row per local change, read by the sync task.
    CREATE TABLE changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        node BLOB NOT NULL
    );
    CREATE INDEX changes_by_node ON changes(node);
    -- Sealed documents pushed without a reply yet: if the server took one
    -- but the reply was lost, it comes back as our own write, not a conflict.
    CREATE TABLE attempts (
        node BLOB NOT NULL,
        document BLOB NOT NULL
    );
    CREATE INDEX attempts_by_node ON attempts(node);
    ",
];

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction, or refuses
/// a store written by a newer binary.
pub fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }

    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for migration in &MIGRATIONS[found as usize..] {
        transaction.execute_batch(migration)?;
    }
    transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    transaction.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_is_idempotent() {
        let mut connection = Connection::open_in_memory().unwrap();
        migrate(&mut connection).unwrap();
        migrate(&mut connection).unwrap();
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn newer_schema_is_refused() {
        let mut connection = Connection::open_in_memory().unwrap();
        connection
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let error = migrate(&mut connection).unwrap_err();
        assert!(matches!(error, StoreError::TooNew { .. }), "{error}");
        assert!(error.to_string().contains("newer"), "{error}");
    }
}
