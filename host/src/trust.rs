//! Proofs of key as this node makes and checks them (the format is
//! `webmesh_client::proof`): its own signer; the keys the mesh's node records register
//! (and, until this node holds the state, the voters' keys its join answer named); the
//! clock window; and the nonces already taken.
//!
//! Architecture invariant: identity comes from here, from a key, never from the
//! address a connection comes from.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use webmesh_client::proof::{self, Proof, ProofError, Purpose, ReplayGuard, Signer};

use crate::mesh::members::Members;

/// Nonces remembered at most (a proof is good for the clock window; only verified
/// proofs are recorded, so filling this takes a member's key).
const REPLAY_CAPACITY: usize = 100_000;

/// A verified proof: `node` holds the private half of `key`. `registered`: the state
/// (or a join's pin) gives `node` exactly this key; otherwise it is a claim, such as a
/// first join's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub node: String,
    pub key: String,
    pub registered: bool,
}

pub struct Trust {
    signer: Arc<Signer>,
    members: Arc<RwLock<Members>>,
    pinned: RwLock<HashMap<String, String>>,
    replay: Mutex<ReplayGuard>,
    max_skew_ms: u64,
}

impl Trust {
    pub fn new(signer: Arc<Signer>, members: Arc<RwLock<Members>>, max_skew: Duration) -> Trust {
        let max_skew_ms = max_skew.as_millis() as u64;
        Trust {
            signer,
            members,
            pinned: RwLock::new(HashMap::new()),
            replay: Mutex::new(ReplayGuard::new(max_skew_ms, REPLAY_CAPACITY)),
            max_skew_ms,
        }
    }

    /// This node's signer.
    pub fn signer(&self) -> &Arc<Signer> {
        &self.signer
    }

    pub fn name(&self) -> &str {
        self.signer.node()
    }

    /// The key `node` registered (or was pinned with, until the state has it).
    pub fn key_of(&self, node: &str) -> Option<String> {
        let m = self.members.read().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = m.key_of(node) {
            return Some(k.to_string());
        }
        drop(m);
        let p = self.pinned.read().unwrap_or_else(|p| p.into_inner());
        p.get(node).cloned()
    }

    /// The node that registered `key`.
    pub fn owner_of(&self, key: &str) -> Option<String> {
        let m = self.members.read().unwrap_or_else(|p| p.into_inner());
        m.owner_of(key).map(str::to_string)
    }

    /// Keys to believe for nodes this node's state does not hold yet: the voters a
    /// join answer named, so a fresh joiner can check its first Raft messages.
    pub fn pin(&self, keys: impl IntoIterator<Item = (String, String)>) {
        let mut p = self.pinned.write().unwrap_or_else(|p| p.into_inner());
        p.extend(keys);
    }

    /// The nodes pinned by a join answer.
    pub fn pinned(&self) -> Vec<String> {
        let p = self.pinned.read().unwrap_or_else(|p| p.into_inner());
        p.keys().cloned().collect()
    }

    /// Checks a proof header: its form, time and signature, and, when `replay`, that its
    /// nonce is new. Whether the key is the node's is in [`Claim::registered`].
    pub fn check(
        &self,
        header: &str,
        purpose: Purpose,
        path: &str,
        digest: &[u8; 32],
        extra: &[&str],
        replay: bool,
    ) -> Result<Claim, ProofError> {
        let p = Proof::parse(header)?;
        let now = proof::now_ms();
        p.verify(purpose, path, digest, extra, now, self.max_skew_ms)?;
        if replay {
            let mut g = self.replay.lock().unwrap_or_else(|p| p.into_inner());
            g.check(&p, now)?;
        }
        let registered = self.key_of(&p.node).is_some_and(|k| k == p.key);
        Ok(Claim {
            node: p.node,
            key: p.key,
            registered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webmesh_api::v1::MeshNode;

    // `wg genkey | tee k | wg pubkey`, twice.
    const PRIV_A: &str = "MF4qvQuCyInGs9aq8CMGKQwbZAZmi75Q1olNwW9og1M=";
    const PUB_A: &str = "vUHodc9Go9tbq5yLKZrbfrU+nMNZPogD16qOWv5TFxU=";
    const PRIV_B: &str = "eBAIZCV/idFvXEcPcD9yqrXOzqcNSGLgdtlrNjo+tkU=";
    const PUB_B: &str = "XJWwAGPx6RCS9sbUT83DE418349AiNbWhBk/H90Tjlk=";

    fn trust_with(nodes: &[(&str, &str)]) -> Trust {
        let mut m = Members::default();
        for (id, key) in nodes {
            m.insert(&MeshNode {
                id: id.to_string(),
                public_key: key.to_string(),
                ..Default::default()
            });
        }
        let me = Arc::new(Signer::new("me", PRIV_B, PUB_B).unwrap());
        Trust::new(me, Arc::new(RwLock::new(m)), Duration::from_secs(300))
    }

    fn proof_by(node: &str, private: &str, public: &str, body: &[u8]) -> String {
        Signer::new(node, private, public)
            .unwrap()
            .sign(Purpose::Call, "/p", body, &[])
    }

    #[test]
    fn a_registered_key_names_its_node_and_another_key_only_claims() {
        let t = trust_with(&[("a", PUB_A)]);
        let d = proof::body_digest(b"x");
        let c = t
            .check(
                &proof_by("a", PRIV_A, PUB_A, b"x"),
                Purpose::Call,
                "/p",
                &d,
                &[],
                true,
            )
            .unwrap();
        assert!(c.registered && c.node == "a");
        // Key B signing as "a": a valid signature, but not a's key.
        let c = t
            .check(
                &proof_by("a", PRIV_B, PUB_B, b"x"),
                Purpose::Call,
                "/p",
                &d,
                &[],
                true,
            )
            .unwrap();
        assert!(!c.registered);
        // A node the state does not know: a claim, until a join's pin names it.
        let h = proof_by("new", PRIV_A, PUB_A, b"x");
        assert!(
            !t.check(&h, Purpose::Call, "/p", &d, &[], false)
                .unwrap()
                .registered
        );
        t.pin([("new".to_string(), PUB_A.to_string())]);
        assert!(
            t.check(&h, Purpose::Call, "/p", &d, &[], false)
                .unwrap()
                .registered
        );
    }

    #[test]
    fn a_replayed_or_altered_proof_is_refused() {
        let t = trust_with(&[("a", PUB_A)]);
        let d = proof::body_digest(b"x");
        let h = proof_by("a", PRIV_A, PUB_A, b"x");
        t.check(&h, Purpose::Call, "/p", &d, &[], true).unwrap();
        assert_eq!(
            t.check(&h, Purpose::Call, "/p", &d, &[], true),
            Err(ProofError::Replayed)
        );
        let other = proof::body_digest(b"y");
        let h = proof_by("a", PRIV_A, PUB_A, b"x");
        assert!(t.check(&h, Purpose::Call, "/p", &other, &[], true).is_err());
    }
}
