//! [`Store`] on a single SQLite file, `registry.db`, in the supervisor's data directory.
//!
//! Durability: WAL with `synchronous=FULL`, so a write has reached the disk before the call
//! returns and the API answers. Atomicity: every write is one `BEGIN IMMEDIATE` transaction,
//! so a crash leaves each function wholly at its old or wholly at its new version.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::{ActivationRecord, FunctionDef, Store, StoreError, StoredFunction, VersionInfo};

/// Name of the database file inside the directory given to [`SqliteStore::open`].
pub const DB_FILE: &str = "registry.db";

/// Schema steps in order: step `i` takes `PRAGMA user_version` from `i` to `i + 1`. A released
/// step is never edited; a schema change is a new entry at the end.
const MIGRATIONS: &[&str] = &[SCHEMA_V1];

/// The schema version this build writes; a database with a higher one is refused.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Outlasts a backup tool or the `sqlite3` shell holding the lock briefly.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const RUNNING: &str = "running";

// Large text columns (`code`, `json`) come last in their rows so that listing versions or
// summing record sizes never reads their overflow pages.
//
// functions -> versions is deferred so a deploy may point `current_version` at the row it
// inserts next; it also makes a commit fail rather than lose the current version.
//
// id_versions survives `delete` so version numbers of an id never repeat.
//
// activation_functions is the lookup index for "records of function F, newest first"; it
// copies `started_at_ms` so that query walks one index in order and stops at the limit.
const SCHEMA_V1: &str = "
CREATE TABLE functions (
    id              TEXT PRIMARY KEY NOT NULL,
    current_version INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    FOREIGN KEY (id, current_version) REFERENCES versions (id, version)
        DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE versions (
    id            TEXT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    code_bytes    INTEGER NOT NULL,
    config        TEXT NOT NULL,
    code          TEXT NOT NULL,
    PRIMARY KEY (id, version)
);
CREATE TABLE secrets (
    id    TEXT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    name  TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (id, name)
) WITHOUT ROWID;
CREATE TABLE id_versions (
    id          TEXT PRIMARY KEY NOT NULL,
    max_version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE activations (
    activation_id TEXT PRIMARY KEY NOT NULL,
    hook          TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    status        TEXT NOT NULL,
    functions     TEXT NOT NULL,
    json_bytes    INTEGER NOT NULL,
    json          TEXT NOT NULL
);
CREATE INDEX activations_by_age
    ON activations (started_at_ms, activation_id, status, json_bytes);
CREATE TABLE activation_functions (
    activation_id TEXT NOT NULL REFERENCES activations (activation_id) ON DELETE CASCADE,
    function      TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    PRIMARY KEY (activation_id, function)
) WITHOUT ROWID;
CREATE INDEX activation_functions_by_function
    ON activation_functions (function, started_at_ms, activation_id);
";

/// The SQLite store. Holds one connection; not `Sync`, meant for the store thread.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/registry.db` and migrates its schema forward.
    /// The directory and file are created private to the owner: they hold secrets.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        create_private_dir(dir)?;
        let path = dir.join(DB_FILE);
        create_private_file(&path)?;
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Refuse before changing anything (even the journal mode) in a newer release's file.
        let found = user_version(&conn)?;
        check_not_newer(found)?;

        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{}: cannot use WAL journal mode (got {mode})",
                    path.display()
                ),
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        let enforced: bool = conn.pragma_query_value(None, "foreign_keys", |row| row.get(0))?;
        if !enforced {
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "this SQLite build does not enforce foreign keys",
            )));
        }

        if found < SCHEMA_VERSION {
            migrate(&mut conn)?;
            tracing::info!(
                path = %path.display(),
                from = found,
                to = SCHEMA_VERSION,
                "migrated store schema"
            );
        }
        Ok(SqliteStore { conn, path })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[cfg(test)]
    pub(super) fn connection(&self) -> &Connection {
        &self.conn
    }

    fn write(&mut self) -> rusqlite::Result<Transaction<'_>> {
        // IMMEDIATE takes the write lock up front, so another process (a backup, the sqlite3
        // shell) makes us wait out the busy timeout instead of failing halfway through.
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| with_path(e, dir))?;
    Ok(())
}

/// Creates the file before SQLite does so it gets owner-only permissions; SQLite gives its
/// `-wal` and `-shm` files the same permissions as the database file.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| with_path(e, path))?;
    Ok(())
}

fn with_path(err: io::Error, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

fn check_not_newer(found: i64) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(StoreError::Corrupt(format!(
            "negative schema version {found}"
        )));
    }
    Ok(())
}

/// Applies the missing steps in one transaction: a crash mid-migration leaves the old schema.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read again under the write lock: another process may have migrated meanwhile.
    let from = user_version(&tx)?;
    check_not_newer(from)?;
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", step as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// SQLite integers are signed; a limit past `i64::MAX` means "no limit" anyway.
fn sql_limit(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// rusqlite maps u64 only with its `fallible_uint` feature; these two do the same checks.
fn int(n: u64) -> rusqlite::Result<i64> {
    i64::try_from(n).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn get_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// Highest version ever stored for `id`, 0 if none.
fn latest_version(conn: &Connection, id: &str) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT max(
             coalesce((SELECT max_version FROM id_versions WHERE id = ?1), 0),
             coalesce((SELECT max(version) FROM versions WHERE id = ?1), 0))",
    )?
    .query_row([id], |row| get_u64(row, 0))
}

fn parse_config(id: &str, version: u64, config: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(config).map_err(|e| {
        StoreError::Corrupt(format!(
            "config of function {id} version {version} is not JSON: {e}"
        ))
    })
}

fn select_version(
    conn: &Connection,
    id: &str,
    version: u64,
) -> Result<Option<FunctionDef>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT created_at_ms, config, code FROM versions WHERE id = ?1 AND version = ?2",
        )?
        .query_row(params![id, int(version)?], |row| {
            Ok((
                get_u64(row, 0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .optional()?;
    row.map(|(created_at_ms, config, code)| {
        Ok(FunctionDef {
            id: id.to_owned(),
            version,
            code,
            config: parse_config(id, version, &config)?,
            created_at_ms,
        })
    })
    .transpose()
}

const ACTIVATION_COLUMNS: &str = "a.activation_id, a.hook, a.started_at_ms, a.status, \
                                  a.functions, a.json";

type ActivationRow = (String, String, u64, String, String, String);

fn activation_row(row: &Row<'_>) -> rusqlite::Result<ActivationRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        get_u64(row, 2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn activation_from_row(row: ActivationRow) -> Result<ActivationRecord, StoreError> {
    let (activation_id, hook, started_at_ms, status, functions, json) = row;
    let functions = serde_json::from_str(&functions).map_err(|e| {
        StoreError::Corrupt(format!(
            "function list of activation {activation_id} is not a JSON array of strings: {e}"
        ))
    })?;
    Ok(ActivationRecord {
        activation_id,
        hook,
        started_at_ms,
        status,
        functions,
        json,
    })
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Vec<StoredFunction>, StoreError> {
        // One read transaction, so functions and secrets come from the same snapshot.
        let tx = self.conn.transaction()?;
        let mut secrets: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        {
            let mut stmt = tx.prepare_cached("SELECT id, name, value FROM secrets")?;
            let rows = stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (id, name, value) = row?;
                secrets.entry(id).or_default().insert(name, value);
            }
        }
        let mut stmt = tx.prepare_cached(
            "SELECT f.id, f.updated_at_ms, v.version, v.created_at_ms, v.config, v.code
             FROM functions f JOIN versions v ON v.id = f.id AND v.version = f.current_version
             ORDER BY f.id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                get_u64(row, 1)?,
                get_u64(row, 2)?,
                get_u64(row, 3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
            ))
        })?;
        let mut functions = Vec::new();
        for row in rows {
            let (id, updated_at_ms, version, created_at_ms, config, code) = row?;
            let config = parse_config(&id, version, &config)?;
            functions.push(StoredFunction {
                secrets: secrets.remove(&id).unwrap_or_default(),
                def: FunctionDef {
                    id,
                    version,
                    code,
                    config,
                    created_at_ms,
                },
                updated_at_ms,
            });
        }
        Ok(functions)
    }

    fn deploy(&mut self, def: &FunctionDef, keep_versions: usize) -> Result<(), StoreError> {
        let tx = self.write()?;
        let latest = latest_version(&tx, &def.id)?;
        if def.version <= latest {
            return Err(StoreError::Conflict(format!(
                "function {} already has version {latest}; a new version must be greater than {}",
                def.id, def.version
            )));
        }
        tx.prepare_cached(
            "INSERT INTO functions (id, current_version, updated_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET current_version = excluded.current_version,
                                            updated_at_ms = excluded.updated_at_ms",
        )?
        .execute(params![def.id, int(def.version)?, int(def.created_at_ms)?])?;
        tx.prepare_cached(
            "INSERT INTO versions (id, version, created_at_ms, code_bytes, config, code)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            def.id,
            int(def.version)?,
            int(def.created_at_ms)?,
            int(def.code.len() as u64)?,
            def.config.to_string(),
            def.code,
        ])?;
        tx.prepare_cached(
            "INSERT INTO id_versions (id, max_version) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET max_version = max(max_version, excluded.max_version)",
        )?
        .execute(params![def.id, int(def.version)?])?;
        let keep = sql_limit(keep_versions.max(1) as u64);
        let dropped = tx
            .prepare_cached(
                "DELETE FROM versions WHERE id = ?1 AND version <> ?2 AND version NOT IN
                     (SELECT version FROM versions WHERE id = ?1 ORDER BY version DESC LIMIT ?3)",
            )?
            .execute(params![def.id, int(def.version)?, keep])?;
        tx.commit()?;
        tracing::debug!(id = %def.id, version = def.version, dropped, "stored deploy");
        Ok(())
    }

    fn next_version(&mut self, id: &str) -> Result<u64, StoreError> {
        Ok(latest_version(&self.conn, id)? + 1)
    }

    fn set_current(&mut self, id: &str, version: u64) -> Result<FunctionDef, StoreError> {
        let tx = self.write()?;
        let def = select_version(&tx, id, version)?.ok_or_else(|| {
            StoreError::NotFound(format!("function {id} has no stored version {version}"))
        })?;
        tx.prepare_cached(
            "UPDATE functions SET current_version = ?2, updated_at_ms = ?3 WHERE id = ?1",
        )?
        .execute(params![id, int(version)?, int(now_ms())?])?;
        tx.commit()?;
        Ok(def)
    }

    fn version(&mut self, id: &str, version: u64) -> Result<Option<FunctionDef>, StoreError> {
        select_version(&self.conn, id, version)
    }

    fn versions(&mut self, id: &str) -> Result<Vec<VersionInfo>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT v.version, v.created_at_ms, v.version = f.current_version, v.code_bytes
             FROM versions v JOIN functions f ON f.id = v.id
             WHERE v.id = ?1 ORDER BY v.version DESC",
        )?;
        let rows = stmt.query_map([id], |row| {
            Ok(VersionInfo {
                version: get_u64(row, 0)?,
                created_at_ms: get_u64(row, 1)?,
                current: row.get(2)?,
                code_bytes: get_u64(row, 3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delete(&mut self, id: &str) -> Result<bool, StoreError> {
        let tx = self.write()?;
        // Explicit rather than left to ON DELETE CASCADE alone, so a connection opened
        // without foreign_keys (the sqlite3 shell) could not strand secrets.
        tx.prepare_cached("DELETE FROM secrets WHERE id = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM versions WHERE id = ?1")?
            .execute([id])?;
        let existed = tx
            .prepare_cached("DELETE FROM functions WHERE id = ?1")?
            .execute([id])?
            > 0;
        tx.commit()?;
        Ok(existed)
    }

    fn set_secrets(
        &mut self,
        id: &str,
        secrets: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let tx = self.write()?;
        let touched = tx
            .prepare_cached("UPDATE functions SET updated_at_ms = ?2 WHERE id = ?1")?
            .execute(params![id, int(now_ms())?])?;
        if touched == 0 {
            return Err(StoreError::NotFound(format!("function {id}")));
        }
        tx.prepare_cached("DELETE FROM secrets WHERE id = ?1")?
            .execute([id])?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO secrets (id, name, value) VALUES (?1, ?2, ?3)")?;
            for (name, value) in secrets {
                insert.execute(params![id, name, value])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn put_activation(&mut self, record: &ActivationRecord) -> Result<(), StoreError> {
        let functions = serde_json::to_string(&record.functions)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode function list: {e}")))?;
        let tx = self.write()?;
        tx.prepare_cached(
            "INSERT INTO activations
                 (activation_id, hook, started_at_ms, status, functions, json_bytes, json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (activation_id) DO UPDATE SET
                 hook = excluded.hook, started_at_ms = excluded.started_at_ms,
                 status = excluded.status, functions = excluded.functions,
                 json_bytes = excluded.json_bytes, json = excluded.json",
        )?
        .execute(params![
            record.activation_id,
            record.hook,
            int(record.started_at_ms)?,
            record.status,
            functions,
            int(record.json.len() as u64)?,
            record.json,
        ])?;
        // A replacement may name other functions or another start time: rebuild its index rows.
        tx.prepare_cached("DELETE FROM activation_functions WHERE activation_id = ?1")?
            .execute([&record.activation_id])?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO activation_functions (activation_id, function, started_at_ms)
                 VALUES (?1, ?2, ?3)",
            )?;
            for function in &record.functions {
                insert.execute(params![
                    record.activation_id,
                    function,
                    int(record.started_at_ms)?
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn activation(&mut self, id: &str) -> Result<Option<ActivationRecord>, StoreError> {
        let row = self
            .conn
            .prepare_cached(&format!(
                "SELECT {ACTIVATION_COLUMNS} FROM activations a WHERE a.activation_id = ?1"
            ))?
            .query_row([id], activation_row)
            .optional()?;
        row.map(activation_from_row).transpose()
    }

    fn activations_for(
        &mut self,
        function: &str,
        limit: usize,
    ) -> Result<Vec<ActivationRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ACTIVATION_COLUMNS}
             FROM activation_functions af JOIN activations a ON a.activation_id = af.activation_id
             WHERE af.function = ?1
             ORDER BY af.started_at_ms DESC, af.activation_id DESC
             LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![function, sql_limit(limit as u64)], activation_row)?;
        let mut records = Vec::new();
        for row in rows {
            records.push(activation_from_row(row?)?);
        }
        Ok(records)
    }

    fn prune_activations(
        &mut self,
        max_count: usize,
        max_bytes: u64,
        max_age_ms: u64,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let tx = self.write()?;
        let cutoff = sql_limit(now_ms.saturating_sub(max_age_ms));
        let mut removed = tx
            .prepare_cached("DELETE FROM activations WHERE started_at_ms < ?1 AND status <> ?2")?
            .execute(params![cutoff, RUNNING])?;

        // Counts and sizes come from the covering index, never from the records themselves.
        let (count, bytes): (u64, u64) = tx
            .prepare_cached("SELECT count(*), coalesce(sum(json_bytes), 0) FROM activations")?
            .query_row([], |row| Ok((get_u64(row, 0)?, get_u64(row, 1)?)))?;
        let mut excess_count = count.saturating_sub(max_count as u64);
        let mut excess_bytes = bytes.saturating_sub(max_bytes);
        if excess_count > 0 || excess_bytes > 0 {
            let mut victims = Vec::new();
            {
                let mut oldest = tx.prepare_cached(
                    "SELECT activation_id, json_bytes FROM activations WHERE status <> ?1
                     ORDER BY started_at_ms, activation_id",
                )?;
                let mut rows = oldest.query([RUNNING])?;
                while excess_count > 0 || excess_bytes > 0 {
                    let Some(row) = rows.next()? else { break };
                    let size = get_u64(row, 1)?;
                    victims.push(row.get::<_, String>(0)?);
                    excess_count = excess_count.saturating_sub(1);
                    excess_bytes = excess_bytes.saturating_sub(size);
                }
            }
            let mut delete =
                tx.prepare_cached("DELETE FROM activations WHERE activation_id = ?1")?;
            for id in &victims {
                removed += delete.execute([id])?;
            }
        }
        tx.commit()?;
        if removed > 0 {
            tracing::debug!(removed, "pruned activation records");
        }
        Ok(removed)
    }
}
