//! Function id -> current version. Never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::function::Function;

#[derive(Default)]
pub struct Registry {
    functions: RwLock<HashMap<String, Arc<Function>>>,
    /// Serialises deploys and deletes of one id, so that two concurrent
    /// redeploys cannot both replace the same version.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<Arc<Function>> {
        self.read().get(id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Function>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Installs `function`, returning the version it replaced.
    pub fn insert(&self, function: Arc<Function>) -> Option<Arc<Function>> {
        self.write().insert(function.id.clone(), function)
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Function>> {
        self.write().remove(id)
    }

    pub fn drain(&self) -> Vec<Arc<Function>> {
        self.write().drain().map(|(_, f)| f).collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn id_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Function>>> {
        self.functions.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Function>>> {
        self.functions.write().unwrap_or_else(|p| p.into_inner())
    }
}
