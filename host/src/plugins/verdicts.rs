//! A short-lived cache of the AUTH plugin's positive verdicts, keyed by the exact
//! credentials it was shown (every header it saw and the client certificate chain).
//!
//! Clients repeat the same credentials on every call, and asking a plugin is a round
//! trip to another process; webhook authenticators elsewhere (Kubernetes' token
//! webhook caches for two minutes) make the same trade. Only successes are kept, so
//! a fixed password works at once; a revoked credential keeps working for at most the
//! TTL (`auth.cache-ttl-ms`, default 10 s, 0 turns the cache off).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use webmesh_api::v1::AuthenticationRequest;

pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Distinct credentials remembered at once; beyond this the oldest half goes.
const CAPACITY: usize = 4096;
const KEY: &str = "auth.cache-ttl-ms";

/// The cache's TTL from the plugin's config (the key is the host's, so it is taken
/// out before the plugin sees its config). Errors name the key and the value.
pub fn ttl_from_config(
    config: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<Duration, String> {
    let Some(v) = config.remove(KEY) else {
        return Ok(DEFAULT_TTL);
    };
    let text = match &v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match text.parse::<u64>() {
        Ok(ms) if ms <= 3_600_000 => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "config key {KEY}: bad value {text:?}: milliseconds from 0 (no cache) to 3600000"
        )),
    }
}

/// The exact bytes a verdict depends on: headers in name order, then certificates,
/// each length-prefixed so that no two different requests share a key.
pub fn key_of(req: &AuthenticationRequest) -> Vec<u8> {
    let mut headers: Vec<_> = req.headers.iter().collect();
    headers.sort();
    let mut k = Vec::with_capacity(256);
    let mut put = |b: &[u8]| {
        k.extend_from_slice(&(b.len() as u32).to_le_bytes());
        k.extend_from_slice(b);
    };
    for (name, value) in headers {
        put(name.as_bytes());
        put(value.as_bytes());
    }
    put(b"--certificates--");
    for c in &req.certificates {
        put(c);
    }
    k
}

pub struct Verdicts {
    ttl: Duration,
    map: Mutex<HashMap<Vec<u8>, (String, Instant)>>,
}

impl Verdicts {
    pub fn new(ttl: Duration) -> Verdicts {
        Verdicts {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// The identity remembered for `key`, if still fresh.
    pub fn get(&self, key: &[u8], now: Instant) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((id, until)) if *until > now => Some(id.clone()),
            _ => None,
        }
    }

    pub fn put(&self, key: Vec<u8>, id: String, now: Instant) {
        if !self.enabled() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= CAPACITY {
                // Still full of live entries: drop those closest to expiry.
                let mut untils: Vec<Instant> = map.values().map(|(_, u)| *u).collect();
                untils.sort();
                let cut = untils[untils.len() / 2];
                map.retain(|_, (_, until)| *until > cut);
            }
        }
        map.insert(key, (id, now + self.ttl));
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)], certs: &[&[u8]]) -> AuthenticationRequest {
        AuthenticationRequest {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            certificates: certs.iter().map(|c| c.to_vec()).collect(),
        }
    }

    #[test]
    fn keys_differ_whenever_the_credentials_do() {
        let a = key_of(&req(&[("authorization", "Bearer x"), ("x-a", "1")], &[]));
        let same = key_of(&req(&[("x-a", "1"), ("authorization", "Bearer x")], &[]));
        assert_eq!(a, same, "header order does not matter");
        let others = [
            key_of(&req(&[("authorization", "Bearer y"), ("x-a", "1")], &[])),
            key_of(&req(&[("authorization", "Bearer x")], &[])),
            key_of(&req(
                &[("authorization", "Bearer x"), ("x-a", "1")],
                &[b"cert"],
            )),
            // Moving bytes between name and value must not collide.
            key_of(&req(&[("authorization", "Bearer x"), ("x-a1", "")], &[])),
        ];
        for o in others {
            assert_ne!(a, o);
        }
    }

    #[test]
    fn verdicts_expire_and_stay_bounded() {
        let t0 = Instant::now();
        let v = Verdicts::new(Duration::from_secs(10));
        v.put(b"k".to_vec(), "alice".into(), t0);
        assert_eq!(
            v.get(b"k", t0 + Duration::from_secs(9)).as_deref(),
            Some("alice")
        );
        assert_eq!(v.get(b"k", t0 + Duration::from_secs(10)), None);
        assert_eq!(v.get(b"other", t0), None);
        for i in 0..(CAPACITY * 2) {
            v.put(
                i.to_le_bytes().to_vec(),
                "x".into(),
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert!(v.len() <= CAPACITY, "{}", v.len());
        // The newest survive.
        let last = (CAPACITY * 2 - 1).to_le_bytes();
        assert!(v.get(&last, t0 + Duration::from_secs(1)).is_some());
        let off = Verdicts::new(Duration::ZERO);
        off.put(b"k".to_vec(), "alice".into(), t0);
        assert!(off.is_empty() && !off.enabled());
    }

    #[test]
    fn the_ttl_key_is_taken_out_and_checked() {
        let mut c = serde_json::json!({"tokens": "a:b", "auth.cache-ttl-ms": "250"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(ttl_from_config(&mut c), Ok(Duration::from_millis(250)));
        assert_eq!(c.keys().collect::<Vec<_>>(), vec!["tokens"]);
        assert_eq!(
            ttl_from_config(&mut serde_json::Map::new()),
            Ok(DEFAULT_TTL)
        );
        let mut bad = serde_json::json!({"auth.cache-ttl-ms": "soon"})
            .as_object()
            .unwrap()
            .clone();
        let e = ttl_from_config(&mut bad).unwrap_err();
        assert!(
            e.starts_with("config key auth.cache-ttl-ms: bad value \"soon\""),
            "{e}"
        );
    }
}
