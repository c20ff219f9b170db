//! `auth-allowlist`: callers present `authorization: Bearer TOKEN`; a token on the list
//! authenticates as the identity it is listed for. The same source builds the process
//! plugin (`src/main.rs`) and the WASM component:
//!
//! ```text
//! cargo build -p auth-allowlist --target wasm32-wasip2
//! webmesh --plugin auth=target/wasm32-wasip2/debug/auth_allowlist.wasm \
//!         --plugin-config auth.tokens=alice:s3cret,bob:hunter2
//! ```
//!
//! Config: `tokens`, either `id:token,id:token` or a map `{id: token}`.

use std::collections::HashMap;
use std::sync::RwLock;

use webmesh_plugin_sdk::{AuthPlugin, Config, Error, Info, Plugin, Setting, async_trait, v1};

/// The plugin: token → identity.
#[derive(Default)]
pub struct Allowlist {
    tokens: RwLock<HashMap<String, String>>,
}

/// `id:token,...` or `{id: token}` into token → id.
pub fn parse_tokens(config: &Config) -> Result<HashMap<String, String>, Error> {
    let bad = |why: String| Error::invalid_argument(format!("config key tokens: {why}"));
    let mut out = HashMap::new();
    let mut add = |id: &str, token: &str| {
        let (id, token) = (id.trim(), token.trim());
        if id.is_empty() || token.is_empty() {
            return Err(bad(format!("empty identity or token in {id:?}")));
        }
        if out.insert(token.to_string(), id.to_string()).is_some() {
            return Err(bad(format!("a token is listed twice (for {id:?})")));
        }
        Ok(())
    };
    match config.get("tokens") {
        Some(serde_json::Value::Object(m)) => {
            for (id, token) in m {
                let token = token
                    .as_str()
                    .ok_or_else(|| bad(format!("the token of {id:?} is not a string")))?;
                add(id, token)?;
            }
        }
        Some(serde_json::Value::String(s)) => {
            for pair in s.split(',').filter(|p| !p.trim().is_empty()) {
                let (id, token) = pair
                    .split_once(':')
                    .ok_or_else(|| bad(format!("{pair:?} is not id:token")))?;
                add(id, token)?;
            }
        }
        Some(other) => return Err(bad(format!("expected id:token,... or a map, got {other}"))),
        None => return Err(bad("is required".into())),
    }
    Ok(out)
}

/// Compares without an early exit, so timing does not tell how much of a token matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl Plugin for Allowlist {
    fn info(&self) -> Info {
        Info::new(
            "auth-allowlist",
            env!("CARGO_PKG_VERSION"),
            "bearer tokens from a list",
        )
    }

    fn settings(&self) -> &'static [Setting] {
        &[Setting {
            key: "tokens",
            default: "",
            help: "the identities and their bearer tokens: id:token,... or a map",
        }]
    }

    async fn configure(&self, config: Config) -> Result<(), Error> {
        let tokens = parse_tokens(&config)?;
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        Ok(())
    }

    fn auth(&self) -> Option<&dyn AuthPlugin> {
        Some(self)
    }
}

#[async_trait]
impl AuthPlugin for Allowlist {
    async fn authenticate(&self, req: v1::AuthenticationRequest) -> Result<String, Error> {
        let token = req
            .headers
            .get("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Error::unauthenticated("send authorization: Bearer TOKEN"))?;
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        for (t, id) in tokens.iter() {
            if same(t.as_bytes(), token.as_bytes()) {
                found = Some(id.clone());
            }
        }
        found.ok_or_else(|| Error::unauthenticated("the token is not on the list"))
    }
}

webmesh_plugin_sdk::wasm_plugin!(Allowlist::default());

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: serde_json::Value) -> Config {
        let mut c = Config::default();
        c.0.insert("tokens".into(), v);
        c
    }

    #[tokio::test]
    async fn listed_tokens_authenticate_as_their_identity() {
        let p = Allowlist::default();
        p.configure(cfg("alice:s3cret, bob:hunter2".into()))
            .await
            .unwrap();
        let req = |h: &str| v1::AuthenticationRequest {
            headers: [("authorization".to_string(), h.to_string())].into(),
            certificates: vec![],
        };
        assert_eq!(p.authenticate(req("Bearer s3cret")).await.unwrap(), "alice");
        assert_eq!(p.authenticate(req("Bearer hunter2")).await.unwrap(), "bob");
        assert!(p.authenticate(req("Bearer nope")).await.is_err());
        assert!(p.authenticate(req("Basic s3cret")).await.is_err());
        assert!(p.authenticate(Default::default()).await.is_err());
        p.configure(cfg(serde_json::json!({"carol": "tok"})))
            .await
            .unwrap();
        assert_eq!(p.authenticate(req("Bearer tok")).await.unwrap(), "carol");
        assert!(p.authenticate(req("Bearer s3cret")).await.is_err());
        for bad in [
            serde_json::json!("alice"),
            serde_json::json!("a:x,b:x"),
            serde_json::json!(5),
            serde_json::json!({"a": 1}),
        ] {
            let e = p.configure(cfg(bad.clone())).await.unwrap_err();
            assert!(e.message.starts_with("config key tokens"), "{bad}: {e}");
        }
    }
}
