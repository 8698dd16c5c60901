mod crash;
mod handle;

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::Connection;
use serde_json::json;
use tempfile::TempDir;

use super::*;

fn def(id: &str, version: u64, code: &str) -> FunctionDef {
    FunctionDef {
        id: id.to_owned(),
        version,
        code: code.to_owned(),
        config: json!({ "timeout_ms": 1000, "hooks": ["http"], "tag": version }),
        created_at_ms: 1_000 * version,
    }
}

fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn record(id: &str, started_at_ms: u64, status: &str, functions: &[&str]) -> ActivationRecord {
    ActivationRecord {
        activation_id: id.to_owned(),
        hook: "http".to_owned(),
        started_at_ms,
        status: status.to_owned(),
        functions: functions.iter().map(|f| (*f).to_owned()).collect(),
        json: format!(r#"{{"id":"{id}","status":"{status}"}}"#),
    }
}

fn open() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    (dir, store)
}

fn raw(dir: &Path) -> Connection {
    Connection::open(dir.join(DB_FILE)).unwrap()
}

fn ids(records: &[ActivationRecord]) -> Vec<&str> {
    records.iter().map(|r| r.activation_id.as_str()).collect()
}

fn version_numbers(store: &mut SqliteStore, id: &str) -> Vec<u64> {
    store
        .versions(id)
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect()
}

#[test]
fn deploy_and_load_round_trip_with_secrets() {
    let (_dir, mut store) = open();
    assert!(store.load().unwrap().is_empty());
    store.deploy(&def("zeta", 1, "z1"), 5).unwrap();
    store.deploy(&def("alpha", 1, "a1"), 5).unwrap();
    store.deploy(&def("alpha", 2, "a2"), 5).unwrap();
    store
        .set_secrets("alpha", &secrets(&[("TOKEN", "t0p"), ("DB_URL", "pg://x")]))
        .unwrap();

    let loaded = store.load().unwrap();
    let loaded_ids: Vec<_> = loaded.iter().map(|f| f.def.id.as_str()).collect();
    assert_eq!(loaded_ids, ["alpha", "zeta"]);
    assert_eq!(loaded[0].def, def("alpha", 2, "a2"));
    assert_eq!(
        loaded[0].secrets,
        secrets(&[("DB_URL", "pg://x"), ("TOKEN", "t0p")])
    );
    assert!(loaded[0].updated_at_ms >= 2_000);
    assert_eq!(loaded[1].def, def("zeta", 1, "z1"));
    assert!(loaded[1].secrets.is_empty());
    assert_eq!(loaded[1].updated_at_ms, 1_000);
    assert_eq!(
        store.version("alpha", 1).unwrap(),
        Some(def("alpha", 1, "a1"))
    );
    assert_eq!(store.version("alpha", 9).unwrap(), None);
    assert_eq!(export_all(&mut store).unwrap(), loaded);
}

#[test]
fn debug_output_hides_secret_values() {
    let function = StoredFunction {
        def: def("f", 1, "code"),
        secrets: secrets(&[("TOKEN", "hunter2")]),
        updated_at_ms: 0,
    };
    let shown = format!("{function:?}");
    assert!(shown.contains("TOKEN"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn set_secrets_replaces_the_whole_set() {
    let (_dir, mut store) = open();
    store.deploy(&def("f", 1, "c"), 5).unwrap();
    store
        .set_secrets("f", &secrets(&[("A", "1"), ("B", "2")]))
        .unwrap();
    store.set_secrets("f", &secrets(&[("B", "3")])).unwrap();
    assert_eq!(store.load().unwrap()[0].secrets, secrets(&[("B", "3")]));
    // A new version keeps the function's secrets: they belong to the id, not the code.
    store.deploy(&def("f", 2, "c2"), 5).unwrap();
    assert_eq!(store.load().unwrap()[0].secrets, secrets(&[("B", "3")]));
}

#[test]
fn set_secrets_on_unknown_id_is_not_found() {
    let (_dir, mut store) = open();
    let err = store
        .set_secrets("ghost", &secrets(&[("A", "1")]))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(ref what) if what.contains("ghost")),
        "{err}"
    );
    let secret_rows: i64 = raw(_dir.path())
        .query_row("SELECT count(*) FROM secrets", [], |r| r.get(0))
        .unwrap();
    assert_eq!(secret_rows, 0);
}

#[test]
fn keeps_at_most_n_versions_newest_first() {
    let (_dir, mut store) = open();
    for v in 1..=6 {
        store
            .deploy(&def("f", v, &format!("code {v} é")), 3)
            .unwrap();
    }
    let versions = store.versions("f").unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [6, 5, 4]
    );
    assert_eq!(
        versions.iter().map(|v| v.current).collect::<Vec<_>>(),
        [true, false, false]
    );
    // Bytes, not characters: "é" is two bytes.
    assert_eq!(versions[0].code_bytes, "code 6 é".len() as u64);
    assert_eq!(versions[0].created_at_ms, 6_000);
    assert!(store.versions("nobody").unwrap().is_empty());

    // Zero means "only the current one", never "none".
    store.deploy(&def("f", 7, "seven"), 0).unwrap();
    assert_eq!(version_numbers(&mut store, "f"), [7]);
    assert_eq!(store.load().unwrap()[0].def.version, 7);
}

#[test]
fn rollback_makes_an_old_version_current_and_keeps_it() {
    let (_dir, mut store) = open();
    for v in 1..=3 {
        store.deploy(&def("f", v, &format!("v{v}")), 3).unwrap();
    }
    let back = store.set_current("f", 1).unwrap();
    assert_eq!(back, def("f", 1, "v1"));
    assert_eq!(store.load().unwrap()[0].def, def("f", 1, "v1"));
    let current: Vec<_> = store
        .versions("f")
        .unwrap()
        .iter()
        .filter(|v| v.current)
        .map(|v| v.version)
        .collect();
    assert_eq!(current, [1]);

    // Rolling back does not reuse numbers: the next deploy is 4, not 2.
    assert_eq!(store.next_version("f").unwrap(), 4);
    store.deploy(&def("f", 4, "v4"), 3).unwrap();
    assert_eq!(version_numbers(&mut store, "f"), [4, 3, 2]);

    let err = store.set_current("f", 1).unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let err = store.set_current("ghost", 1).unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(store.load().unwrap()[0].def.version, 4);
}

#[test]
fn next_version_never_repeats_after_delete() {
    let (_dir, mut store) = open();
    assert_eq!(store.next_version("f").unwrap(), 1);
    store.deploy(&def("f", 1, "a"), 5).unwrap();
    store.deploy(&def("f", 2, "b"), 5).unwrap();
    assert_eq!(store.next_version("f").unwrap(), 3);
    assert!(store.delete("f").unwrap());
    assert_eq!(store.next_version("f").unwrap(), 3);
    let err = store.deploy(&def("f", 1, "again"), 5).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    store.deploy(&def("f", 3, "c"), 5).unwrap();
    assert_eq!(version_numbers(&mut store, "f"), [3]);
}

#[test]
fn delete_removes_versions_and_secrets_but_not_activations() {
    let (dir, mut store) = open();
    store.deploy(&def("f", 1, "a"), 5).unwrap();
    store.deploy(&def("f", 2, "b"), 5).unwrap();
    store.deploy(&def("other", 1, "o"), 5).unwrap();
    store.set_secrets("f", &secrets(&[("K", "v")])).unwrap();
    store.set_secrets("other", &secrets(&[("K", "w")])).unwrap();
    store
        .put_activation(&record("act-1", 10, "ok", &["f"]))
        .unwrap();

    assert!(store.delete("f").unwrap());
    assert!(!store.delete("f").unwrap());
    assert!(store.versions("f").unwrap().is_empty());
    assert_eq!(store.version("f", 1).unwrap(), None);
    let loaded = store.load().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].secrets, secrets(&[("K", "w")]));
    let left: i64 = raw(dir.path())
        .query_row("SELECT count(*) FROM secrets WHERE id = 'f'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(left, 0);
    assert!(store.activation("act-1").unwrap().is_some());
    assert_eq!(ids(&store.activations_for("f", 10).unwrap()), ["act-1"]);
}

#[test]
fn stale_deploy_is_a_conflict_and_changes_nothing() {
    let (_dir, mut store) = open();
    store.deploy(&def("f", 1, "one"), 5).unwrap();
    store.deploy(&def("f", 2, "two"), 5).unwrap();
    for stale in [0, 1, 2] {
        let err = store.deploy(&def("f", stale, "stale"), 1).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    }
    assert_eq!(store.load().unwrap()[0].def, def("f", 2, "two"));
    assert_eq!(version_numbers(&mut store, "f"), [2, 1]);
}

/// A failure after some rows of a deploy were written must roll back all of them.
#[test]
fn failure_mid_deploy_leaves_the_old_version_current() {
    let (dir, mut store) = open();
    store.deploy(&def("f", 1, "one"), 1).unwrap();
    store.set_secrets("f", &secrets(&[("K", "v")])).unwrap();
    let before = store.load().unwrap();

    // id_versions is written after functions and versions, and the trigger fires on both
    // the insert and the upsert path.
    raw(dir.path())
        .execute_batch(
            "CREATE TRIGGER fail_deploy BEFORE INSERT ON id_versions
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
    let err = store.deploy(&def("f", 2, "two"), 1).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    let err = store.deploy(&def("g", 1, "new"), 1).unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err}");

    assert_eq!(store.load().unwrap(), before);
    assert_eq!(version_numbers(&mut store, "f"), [1]);
    assert_eq!(store.next_version("f").unwrap(), 2);
    assert!(store.versions("g").unwrap().is_empty());

    raw(dir.path())
        .execute_batch("DROP TRIGGER fail_deploy")
        .unwrap();
    store.deploy(&def("f", 2, "two"), 1).unwrap();
    assert_eq!(store.load().unwrap()[0].def, def("f", 2, "two"));
}

#[test]
fn corrupt_config_is_reported_not_panicked() {
    let (dir, mut store) = open();
    store.deploy(&def("f", 1, "one"), 1).unwrap();
    raw(dir.path())
        .execute_batch("UPDATE versions SET config = '{not json'")
        .unwrap();
    let err = store.load().unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt(ref m) if m.contains("function f")),
        "{err}"
    );
}

#[test]
fn activations_put_replace_get_and_list_newest_first() {
    let (_dir, mut store) = open();
    assert_eq!(store.activation("nope").unwrap(), None);
    store
        .put_activation(&record("a", 100, "ok", &["f"]))
        .unwrap();
    store
        .put_activation(&record("b", 300, "ok", &["f", "g"]))
        .unwrap();
    store
        .put_activation(&record("c", 200, "running", &["g", "f", "g"]))
        .unwrap();
    store
        .put_activation(&record("d", 300, "ok", &["f"]))
        .unwrap();

    let c = store.activation("c").unwrap().unwrap();
    assert_eq!(c, record("c", 200, "running", &["g", "f", "g"]));
    assert_eq!(
        ids(&store.activations_for("f", 10).unwrap()),
        ["d", "b", "c", "a"]
    );
    assert_eq!(ids(&store.activations_for("f", 2).unwrap()), ["d", "b"]);
    assert_eq!(ids(&store.activations_for("g", 10).unwrap()), ["b", "c"]);
    assert!(store.activations_for("f", 0).unwrap().is_empty());
    assert!(store.activations_for("h", 10).unwrap().is_empty());
    assert_eq!(store.activations_for("f", usize::MAX).unwrap().len(), 4);

    // Replacing moves the record in time and changes the functions it belongs to.
    let mut finished = record("c", 50, "error", &["h"]);
    finished.json = r#"{"id":"c","status":"error","detail":"boom"}"#.to_owned();
    store.put_activation(&finished).unwrap();
    assert_eq!(store.activation("c").unwrap().unwrap(), finished);
    assert_eq!(
        ids(&store.activations_for("f", 10).unwrap()),
        ["d", "b", "a"]
    );
    assert_eq!(ids(&store.activations_for("g", 10).unwrap()), ["b"]);
    assert_eq!(ids(&store.activations_for("h", 10).unwrap()), ["c"]);
}

fn remaining(store: &mut SqliteStore) -> Vec<String> {
    let mut all: Vec<String> = store
        .activations_for("f", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.activation_id)
        .collect();
    all.sort();
    all
}

#[test]
fn prune_by_count_removes_oldest_finished() {
    let (_dir, mut store) = open();
    for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        store
            .put_activation(&record(id, 100 + i as u64, "ok", &["f"]))
            .unwrap();
    }
    assert_eq!(
        store
            .prune_activations(10, u64::MAX, u64::MAX, 1_000)
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .prune_activations(3, u64::MAX, u64::MAX, 1_000)
            .unwrap(),
        2
    );
    assert_eq!(remaining(&mut store), ["c", "d", "e"]);
    assert_eq!(
        store
            .prune_activations(0, u64::MAX, u64::MAX, 1_000)
            .unwrap(),
        3
    );
    assert!(remaining(&mut store).is_empty());
    // Their index rows went with them.
    let orphans: i64 = raw(_dir.path())
        .query_row("SELECT count(*) FROM activation_functions", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(orphans, 0);
}

#[test]
fn prune_by_bytes_counts_json_bytes() {
    let (_dir, mut store) = open();
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        let mut r = record(id, 100 + i as u64, "ok", &["f"]);
        r.json = "é".repeat(50); // 100 bytes, 50 characters
        store.put_activation(&r).unwrap();
    }
    assert_eq!(
        store.prune_activations(100, 400, u64::MAX, 1_000).unwrap(),
        0
    );
    assert_eq!(
        store.prune_activations(100, 250, u64::MAX, 1_000).unwrap(),
        2
    );
    assert_eq!(remaining(&mut store), ["c", "d"]);
    assert_eq!(
        store.prune_activations(100, 199, u64::MAX, 1_000).unwrap(),
        1
    );
    assert_eq!(remaining(&mut store), ["d"]);
}

#[test]
fn prune_by_age() {
    let (_dir, mut store) = open();
    store
        .put_activation(&record("old", 100, "ok", &["f"]))
        .unwrap();
    store
        .put_activation(&record("edge", 500, "ok", &["f"]))
        .unwrap();
    store
        .put_activation(&record("new", 900, "ok", &["f"]))
        .unwrap();
    assert_eq!(
        store.prune_activations(100, u64::MAX, 500, 1_000).unwrap(),
        1
    );
    assert_eq!(remaining(&mut store), ["edge", "new"]);
    // A max age longer than the clock reading prunes nothing.
    assert_eq!(
        store
            .prune_activations(100, u64::MAX, 5_000, 1_000)
            .unwrap(),
        0
    );
}

#[test]
fn prune_never_removes_running_records() {
    let (_dir, mut store) = open();
    store
        .put_activation(&record("r1", 1, "running", &["f"]))
        .unwrap();
    store
        .put_activation(&record("done", 2, "ok", &["f"]))
        .unwrap();
    store
        .put_activation(&record("r2", 3, "running", &["f"]))
        .unwrap();
    assert_eq!(store.prune_activations(0, 0, 0, 1_000).unwrap(), 1);
    assert_eq!(remaining(&mut store), ["r1", "r2"]);
    // Once finished, an old record goes.
    store
        .put_activation(&record("r1", 1, "ok", &["f"]))
        .unwrap();
    assert_eq!(
        store
            .prune_activations(1, u64::MAX, u64::MAX, 1_000)
            .unwrap(),
        1
    );
    assert_eq!(remaining(&mut store), ["r2"]);
}

#[test]
fn newer_schema_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    raw(dir.path())
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let err = SqliteStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found, supported }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "database schema version {} is newer than this fn-supervisor supports ({}); \
             upgrade fn-supervisor or restore a backup",
            SCHEMA_VERSION + 1,
            SCHEMA_VERSION
        )
    );
}

#[test]
fn migrates_an_empty_file_and_reopens_without_migrating_again() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), b"").unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    store.deploy(&def("f", 1, "one"), 5).unwrap();
    drop(store);
    let conn = raw(dir.path());
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 6);
    drop(conn);
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.load().unwrap().len(), 1);
}

#[test]
fn creates_missing_directories_and_uses_wal_full_sync_and_foreign_keys() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("nested/data");
    let store = SqliteStore::open(&dir).unwrap();
    assert_eq!(store.path(), dir.join(DB_FILE));
    let mode: String = store
        .connection()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let synchronous: i64 = store
        .connection()
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(synchronous, 2, "FULL");
    let foreign_keys: i64 = store
        .connection()
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap();
    assert_eq!(foreign_keys, 1);
    // WAL is a property of the file: a fresh connection sees it too.
    let mode: String = raw(&dir)
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[cfg(unix)]
#[test]
fn database_file_is_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("data");
    let _store = SqliteStore::open(&dir).unwrap();
    let file_mode = std::fs::metadata(dir.join(DB_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(file_mode & 0o077, 0, "file mode {file_mode:o}");
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o077, 0, "dir mode {dir_mode:o}");
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    store.deploy(&def("f", 1, "one"), 5).unwrap();
    store.deploy(&def("f", 2, "two"), 5).unwrap();
    store.set_current("f", 1).unwrap();
    store.set_secrets("f", &secrets(&[("K", "v")])).unwrap();
    store.put_activation(&record("a", 1, "ok", &["f"])).unwrap();
    let before = store.load().unwrap();
    drop(store);

    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.load().unwrap(), before);
    assert_eq!(before[0].def.version, 1);
    assert_eq!(version_numbers(&mut store, "f"), [2, 1]);
    assert_eq!(
        store.activation("a").unwrap(),
        Some(record("a", 1, "ok", &["f"]))
    );
    assert_eq!(store.next_version("f").unwrap(), 3);
}
