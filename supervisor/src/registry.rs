//! Function id -> its current version and what all its versions share.
//! Never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::admission::Admission;
use crate::function::{Function, Shared};

/// One deployed id.
pub struct Entry {
    pub id: String,
    pub shared: Arc<Shared>,
    pub admission: Admission,
    current: RwLock<Arc<Function>>,
    /// Replaced versions still finishing their invocations.
    draining: Mutex<Vec<Weak<Function>>>,
}

impl Entry {
    pub fn new(function: Arc<Function>, admission: Admission) -> Self {
        Self {
            id: function.id().to_owned(),
            shared: function.shared.clone(),
            admission,
            current: RwLock::new(function),
            draining: Mutex::new(Vec::new()),
        }
    }

    pub fn draining(&self, old: &Arc<Function>) {
        let mut d = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        d.retain(|w| w.strong_count() > 0);
        d.push(Arc::downgrade(old));
    }

    pub fn take_draining(&self) -> Vec<Arc<Function>> {
        let mut d = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        d.drain(..).filter_map(|w| w.upgrade()).collect()
    }

    pub fn current(&self) -> Arc<Function> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs a new version, returning the one it replaced.
    pub fn swap(&self, function: Arc<Function>) -> Arc<Function> {
        std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            function,
        )
    }
}

#[derive(Default)]
pub struct Registry {
    entries: RwLock<HashMap<String, Arc<Entry>>>,
    /// Serialises deploys, rollbacks and deletes per id (also of ids that do
    /// not exist yet); unused locks are removed, so the map stays bounded.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.read().get(id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Entry>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    pub fn insert(&self, entry: Arc<Entry>) {
        self.write().insert(entry.id.clone(), entry);
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Entry>> {
        self.write().remove(id)
    }

    pub fn drain(&self) -> Vec<Arc<Entry>> {
        self.write().drain().map(|(_, e)| e).collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the id's administrative lock.
    pub async fn lock_id(self: &Arc<Self>, id: &str) -> IdLock {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        IdLock {
            registry: self.clone(),
            id: id.to_owned(),
            lock,
            guard: Some(guard),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Entry>>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Entry>>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct IdLock {
    registry: Arc<Registry>,
    id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for IdLock {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self
            .registry
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The map's copy and ours: nobody else waits for it.
        if Arc::strong_count(&self.lock) <= 2 {
            locks.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn id_locks_do_not_accumulate() {
        let r = Arc::new(Registry::default());
        for i in 0..100 {
            let _l = r.lock_id(&format!("f{i}")).await;
        }
        assert!(r.locks.lock().unwrap().is_empty());
    }
}
