//! Durable store of deployed functions, their versions and secrets, and activation records.
//!
//! The API layer only sees the types here and a [`StoreHandle`]; SQL stays behind the
//! [`Store`] trait so a shared PostgreSQL store can be added later without touching callers.
//! Database calls block, so every one of them runs on a dedicated `fn-store` thread and the
//! async side awaits the answer; a tokio worker never waits on SQLite or on `fsync`.

mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use sqlite::{SqliteStore, DB_FILE, SCHEMA_VERSION};

/// One deployed version of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    pub id: String,
    pub version: u64,
    pub code: String,
    /// Timeout, memory, hooks, net rules, concurrency...: opaque to the store, which keeps
    /// whatever the supervisor puts here so new settings need no schema change.
    pub config: serde_json::Value,
    pub created_at_ms: u64,
}

/// Summary of one stored version, without its code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u64,
    pub created_at_ms: u64,
    pub current: bool,
    /// Size of the code in bytes (not characters).
    pub code_bytes: u64,
}

/// A function as it is served: its current version and its secrets.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFunction {
    /// The current version.
    pub def: FunctionDef,
    pub secrets: BTreeMap<String, String>,
    pub updated_at_ms: u64,
}

// Written by hand so that `{:?}` in a log line shows which secrets exist, never their values.
impl fmt::Debug for StoredFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredFunction")
            .field("def", &self.def)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("updated_at_ms", &self.updated_at_ms)
            .finish()
    }
}

/// One activation (a hook run through one or more functions), kept for inspection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationRecord {
    pub activation_id: String,
    pub hook: String,
    pub started_at_ms: u64,
    /// `"running"` while in flight; running records are never pruned.
    pub status: String,
    /// The functions it ran, in order.
    pub functions: Vec<String>,
    /// The whole record as JSON text; opaque to the store.
    pub json: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("not found: {0}")]
    NotFound(String),
    /// A deploy raced another one for the same id (its version is not the newest); the
    /// caller may take a fresh `next_version` and retry.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error(
        "database schema version {found} is newer than this fn-supervisor supports \
         ({supported}); upgrade fn-supervisor or restore a backup"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("store i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store thread is gone")]
    Closed,
    /// The closure passed to [`StoreHandle::call`] panicked; any transaction it had open was
    /// rolled back and the store keeps serving other calls.
    #[error("store call panicked: {0}")]
    Panicked(String),
}

/// Persistence for the supervisor. Synchronous: implementations are driven from the single
/// `fn-store` thread of a [`StoreHandle`], so they need not be `Sync`.
pub trait Store: Send + 'static {
    /// Every function at its current version, with its secrets, sorted by id.
    fn load(&mut self) -> Result<Vec<StoredFunction>, StoreError>;

    /// Adds `def` as a new version and makes it current, in one transaction; keeps at most
    /// `keep_versions` versions of the id (never dropping the current one; 0 counts as 1).
    /// `def.version` must be greater than every version ever stored for the id, else
    /// [`StoreError::Conflict`].
    fn deploy(&mut self, def: &FunctionDef, keep_versions: usize) -> Result<(), StoreError>;

    /// Next version number for `id`: 1 + the highest ever stored for it (1 for a new id).
    /// Numbers survive `delete`, so a re-created id continues where it left off and a version
    /// number never names two different deployments.
    fn next_version(&mut self, id: &str) -> Result<u64, StoreError>;

    /// Makes an existing stored version current (rollback) and returns it; `NotFound` if the
    /// function or that version is not stored.
    fn set_current(&mut self, id: &str, version: u64) -> Result<FunctionDef, StoreError>;

    fn version(&mut self, id: &str, version: u64) -> Result<Option<FunctionDef>, StoreError>;

    /// Stored versions, newest first; empty for an unknown id.
    fn versions(&mut self, id: &str) -> Result<Vec<VersionInfo>, StoreError>;

    /// Removes the function, all its versions and its secrets; activation records stay.
    /// Returns whether it existed.
    fn delete(&mut self, id: &str) -> Result<bool, StoreError>;

    /// Replaces the whole secret set of `id`; `NotFound` for an unknown id.
    fn set_secrets(
        &mut self,
        id: &str,
        secrets: &BTreeMap<String, String>,
    ) -> Result<(), StoreError>;

    /// Inserts, or replaces by `activation_id`.
    fn put_activation(&mut self, record: &ActivationRecord) -> Result<(), StoreError>;

    fn activation(&mut self, id: &str) -> Result<Option<ActivationRecord>, StoreError>;

    /// Records that ran `function`, newest first, at most `limit`.
    fn activations_for(
        &mut self,
        function: &str,
        limit: usize,
    ) -> Result<Vec<ActivationRecord>, StoreError>;

    /// Deletes the oldest finished records until at most `max_count` remain, their `json`
    /// totals at most `max_bytes`, and none is older than `now_ms - max_age_ms`. Records with
    /// status `"running"` are never pruned but do count toward the limits. Returns how many
    /// were removed.
    fn prune_activations(
        &mut self,
        max_count: usize,
        max_bytes: u64,
        max_age_ms: u64,
        now_ms: u64,
    ) -> Result<usize, StoreError>;
}

/// Everything the store holds about functions, for backup or migration to another store.
pub fn export_all(store: &mut dyn Store) -> Result<Vec<StoredFunction>, StoreError> {
    store.load()
}

type Job = Box<dyn FnOnce(&mut dyn Store) + Send>;

/// Bounded so a stalled disk pushes back on callers instead of queueing without limit.
const QUEUE_DEPTH: usize = 256;

/// Async access to a [`Store`] running on its own OS thread. Cheap to clone; the thread
/// ends, closing the store, when the last clone is dropped.
///
/// A call whose future is dropped after it was queued still runs to completion: a write
/// that a disconnected client asked for is either wholly applied or wholly not.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Job>,
}

impl fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreHandle")
            .field("closed", &self.jobs.is_closed())
            .finish()
    }
}

impl StoreHandle {
    /// Starts the `fn-store` thread that owns `store`.
    pub fn spawn(store: Box<dyn Store>) -> Result<StoreHandle, StoreError> {
        let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("fn-store".to_owned())
            .spawn(move || {
                let mut store = store;
                while let Some(job) = queue.blocking_recv() {
                    job(store.as_mut());
                }
                tracing::debug!("every store handle dropped; closing the store");
            })?;
        Ok(StoreHandle { jobs })
    }

    /// Runs `f` on the store thread and returns its result. Calls run one at a time in the
    /// order they were queued, so a closure may combine several store methods atomically
    /// with respect to other calls (though not as one database transaction).
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            // Unwinding drops any open transaction, which rolls it back, so the store is
            // still consistent and one bad call does not take persistence down for good.
            let result =
                panic::catch_unwind(AssertUnwindSafe(|| f(store))).unwrap_or_else(|payload| {
                    let message = panic_message(payload.as_ref());
                    tracing::error!(%message, "store call panicked");
                    Err(StoreError::Panicked(message))
                });
            // An error here only means the caller stopped waiting; the work is done.
            let _ = answer.send(result);
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        answered.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn load(&self) -> Result<Vec<StoredFunction>, StoreError> {
        self.call(|store| store.load()).await
    }

    pub async fn deploy(&self, def: FunctionDef, keep_versions: usize) -> Result<(), StoreError> {
        self.call(move |store| store.deploy(&def, keep_versions))
            .await
    }

    pub async fn next_version(&self, id: &str) -> Result<u64, StoreError> {
        let id = id.to_owned();
        self.call(move |store| store.next_version(&id)).await
    }

    pub async fn set_current(&self, id: &str, version: u64) -> Result<FunctionDef, StoreError> {
        let id = id.to_owned();
        self.call(move |store| store.set_current(&id, version))
            .await
    }

    pub async fn version(&self, id: &str, version: u64) -> Result<Option<FunctionDef>, StoreError> {
        let id = id.to_owned();
        self.call(move |store| store.version(&id, version)).await
    }

    pub async fn versions(&self, id: &str) -> Result<Vec<VersionInfo>, StoreError> {
        let id = id.to_owned();
        self.call(move |store| store.versions(&id)).await
    }

    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |store| store.delete(&id)).await
    }

    pub async fn set_secrets(
        &self,
        id: &str,
        secrets: BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.call(move |store| store.set_secrets(&id, &secrets))
            .await
    }

    pub async fn put_activation(&self, record: ActivationRecord) -> Result<(), StoreError> {
        self.call(move |store| store.put_activation(&record)).await
    }

    pub async fn activation(&self, id: &str) -> Result<Option<ActivationRecord>, StoreError> {
        let id = id.to_owned();
        self.call(move |store| store.activation(&id)).await
    }

    pub async fn activations_for(
        &self,
        function: &str,
        limit: usize,
    ) -> Result<Vec<ActivationRecord>, StoreError> {
        let function = function.to_owned();
        self.call(move |store| store.activations_for(&function, limit))
            .await
    }

    pub async fn prune_activations(
        &self,
        max_count: usize,
        max_bytes: u64,
        max_age_ms: u64,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        self.call(move |store| store.prune_activations(max_count, max_bytes, max_age_ms, now_ms))
            .await
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
