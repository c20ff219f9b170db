//! Decoded views of the local replica: the mesh objects ([`load_view`]) and the RBAC
//! policy, compiled once per change of the RBAC objects ([`PolicyCache`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use tracing::warn;

use super::engine::{Engine, StoreError};
use crate::mesh::keys;
use crate::mesh::rbac::{Compiled, Policy};
use crate::mesh::view::MeshView;

/// Loads every mesh object of the local replica into a view.
pub fn load_view(engine: &Engine) -> MeshView {
    let entries = match engine.list("/registry/") {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "cannot read the state");
            return MeshView::default();
        }
    };
    let (view, errors) =
        MeshView::from_entries(entries.iter().map(|e| (e.key.as_str(), e.value.as_str())));
    for e in errors {
        warn!(error = %e, "skipping an undecodable record");
    }
    view
}

/// Every record under `prefix`, decoded from proto3 JSON, with its key. A record that
/// does not decode is skipped (and logged): one bad record must not hide the others.
pub fn read_all<M: DeserializeOwned>(
    engine: &Engine,
    prefix: &str,
) -> Result<Vec<(String, M)>, StoreError> {
    Ok(engine
        .list(prefix)?
        .into_iter()
        .filter_map(|e| match serde_json::from_str(&e.value) {
            Ok(m) => Some((e.key, m)),
            Err(err) => {
                warn!(key = %e.key, error = %err, "skipping an undecodable record");
                None
            }
        })
        .collect())
}

/// The mesh's RBAC objects, or `None` when the mesh runs with RBAC off.
pub fn load_policy(engine: &Engine) -> Result<Option<Policy>, StoreError> {
    if engine
        .get(keys::RBAC_DISABLED)?
        .is_some_and(|e| e.value == "true")
    {
        return Ok(None);
    }
    // Keyed by the object's name: the last segment of its key.
    fn by_name<M: DeserializeOwned>(
        engine: &Engine,
        prefix: &str,
    ) -> Result<BTreeMap<String, M>, StoreError> {
        Ok(read_all(engine, prefix)?
            .into_iter()
            .map(|(k, m)| (k[prefix.len()..].to_string(), m))
            .collect())
    }
    Ok(Some(Policy {
        roles: by_name(engine, keys::ROLES)?,
        bindings: by_name(engine, keys::ROLE_BINDINGS)?,
        groups: by_name(engine, keys::GROUPS)?,
    }))
}

/// Whether a change to `key` changes the policy.
pub fn is_rbac_key(key: &str) -> bool {
    key.starts_with("/registry/rbac/") || key == keys::RBAC_DISABLED
}

/// The compiled policy, rebuilt only when the state machine says the RBAC objects
/// changed (it bumps the version it shares with this cache in the same step).
pub struct PolicyCache {
    version: Arc<AtomicU64>,
    compiled: Mutex<Option<(u64, Option<Arc<Compiled>>)>>,
}

impl PolicyCache {
    pub fn new(version: Arc<AtomicU64>) -> PolicyCache {
        PolicyCache {
            version,
            compiled: Mutex::new(None),
        }
    }

    /// The current policy (`None`: RBAC is off).
    pub fn get(&self, engine: &Engine) -> Result<Option<Arc<Compiled>>, StoreError> {
        let v = self.version.load(Ordering::Acquire);
        let mut c = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, p)) = &*c
            && *at == v
        {
            return Ok(p.clone());
        }
        let p = load_policy(engine)?.map(|p| Arc::new(p.compile()));
        *c = Some((v, p.clone()));
        Ok(p)
    }
}
