//! Proof of key: a node proves in a request that it holds the private half of its
//! WireGuard key by signing the request with that X25519 key through XEdDSA (the scheme
//! Signal uses to sign with X25519 keys; signatures verify as Ed25519).
//!
//! A proof travels in one header, `v1;<node>;<unix ms>;<nonce>;<public key>;<signature>`,
//! and signs
//! the purpose, the node ID, the key, the time, a random nonce, the gRPC path, the
//! SHA-256 of the exact request body and, for a forwarder, what it vouches for. The key
//! rides along so that a node's first join can be checked before the key is registered;
//! for a registered node the verifier compares it with the registered one. Anyone holding the
//! public key can check it, so a proof survives forwarding from a follower to the
//! leader; the time bounds how long a captured proof is good for, and a verifier that
//! remembers nonces ([`ReplayGuard`]) takes each one once.

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use xeddsa::{Sign, Verify};

/// The caller's own proof (a node acting for itself).
pub const PROOF_HEADER: &str = "x-webmesh-proof";
/// A member's proof that it forwarded this request, and what it vouches for.
pub const FORWARDER_HEADER: &str = "x-webmesh-forwarder-proof";

/// Longest header value we parse: a 63-byte ID plus the fixed fields, with room.
pub const MAX_HEADER_LEN: usize = 320;

/// Methods whose request is a stream that stays open (bidirectional): their proof
/// signs the call (method, time, nonce) with the digest of an empty body, since the
/// body is not whole before the answer must start. What the stream carries is
/// protected by the transport (TLS, or WireGuard inside the mesh), not by the proof.
pub const STREAMING_METHODS: [&str; 2] = [
    "/v1.Node/NegotiateDataChannel",
    "/v1.WebRTC/StartDataChannel",
];

/// Whether a proof for `path` signs the body (false for [`STREAMING_METHODS`]).
pub fn signs_body(path: &str) -> bool {
    !STREAMING_METHODS.contains(&path)
}

/// What a proof is for: a proof made for one purpose never verifies for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// An API call made by the node itself (join, update, leave, reads).
    Call,
    /// A request a member forwards for someone else.
    Forward,
    /// A Raft message.
    Raft,
}

impl Purpose {
    fn tag(self) -> &'static str {
        match self {
            Purpose::Call => "call",
            Purpose::Forward => "forward",
            Purpose::Raft => "raft",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("malformed proof header: {0}")]
    Malformed(&'static str),
    #[error(
        "the proof is {skew_s} s off this node's clock (at most {max_s} s allowed); check the clocks (NTP)"
    )]
    Stale { skew_s: i64, max_s: u64 },
    #[error("the proof's signature does not verify with node {node:?}'s key")]
    BadSignature { node: String },
    #[error("the proof was used before (a replay)")]
    Replayed,
    #[error("invalid key: {0}")]
    Key(&'static str),
}

/// A WireGuard key pair that signs proofs for node `node`.
#[derive(Clone)]
pub struct Signer {
    node: String,
    private: [u8; 32],
    public: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// From the base64 key pair as WireGuard writes it.
    pub fn new(node: &str, private_b64: &str, public_b64: &str) -> Result<Signer, ProofError> {
        let private = decode_key(private_b64)?;
        decode_key(public_b64)?;
        Ok(Signer {
            node: node.to_string(),
            private,
            public: public_b64.trim().to_string(),
        })
    }

    /// The public key proofs name.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// A proof header value for a request to `path` with this exact `body`.
    pub fn sign(&self, purpose: Purpose, path: &str, body: &[u8], extra: &[&str]) -> String {
        self.sign_at(purpose, path, &body_digest(body), extra, now_ms())
    }

    /// [`Signer::sign`] with the body's digest and the time given.
    pub fn sign_at(
        &self,
        purpose: Purpose,
        path: &str,
        digest: &[u8; 32],
        extra: &[&str],
        at_ms: u64,
    ) -> String {
        let nonce: [u8; 16] = {
            use rand_xeddsa::RngExt as _;
            rand_xeddsa::rng().random()
        };
        let msg = message(
            purpose,
            &self.node,
            &self.public,
            at_ms,
            &nonce,
            path,
            digest,
            extra,
        );
        let sig: [u8; 64] =
            xeddsa::xed25519::PrivateKey(self.private).sign(&msg, rand_xeddsa::rng());
        format!(
            "v1;{};{at_ms};{};{};{}",
            self.node,
            URL_SAFE_NO_PAD.encode(nonce),
            self.public,
            URL_SAFE_NO_PAD.encode(sig)
        )
    }
}

/// A parsed proof header: who claims to have signed, when, and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub node: String,
    pub at_ms: u64,
    pub nonce: [u8; 16],
    /// The public key that signed (base64, as WireGuard writes it).
    pub key: String,
    sig: [u8; 64],
}

impl Proof {
    pub fn parse(header: &str) -> Result<Proof, ProofError> {
        if header.len() > MAX_HEADER_LEN {
            return Err(ProofError::Malformed("too long"));
        }
        let mut parts = header.split(';');
        let (Some("v1"), Some(node), Some(at), Some(nonce), Some(key), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ProofError::Malformed(
                "expected v1;NODE;MILLIS;NONCE;KEY;SIGNATURE",
            ));
        };
        decode_key(key).map_err(|_| ProofError::Malformed("the key is not a WireGuard key"))?;
        if node.is_empty() || node.len() > 63 {
            return Err(ProofError::Malformed("the node ID must be 1-63 bytes"));
        }
        let at_ms = at
            .parse::<u64>()
            .map_err(|_| ProofError::Malformed("the time is not a number of milliseconds"))?;
        let fixed = |s: &str, what: &'static str| -> Result<Vec<u8>, ProofError> {
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| ProofError::Malformed(what))
        };
        let nonce: [u8; 16] = fixed(nonce, "the nonce is not base64url")?
            .try_into()
            .map_err(|_| ProofError::Malformed("the nonce must be 16 bytes"))?;
        let sig: [u8; 64] = fixed(sig, "the signature is not base64url")?
            .try_into()
            .map_err(|_| ProofError::Malformed("the signature must be 64 bytes"))?;
        Ok(Proof {
            node: node.to_string(),
            at_ms,
            nonce,
            key: key.to_string(),
            sig,
        })
    }

    /// Checks the time against `now_ms` (± `max_skew_ms`) and the signature against
    /// the key the proof names. Whether that key is the node's is the caller's question.
    pub fn verify(
        &self,
        purpose: Purpose,
        path: &str,
        digest: &[u8; 32],
        extra: &[&str],
        now_ms: u64,
        max_skew_ms: u64,
    ) -> Result<(), ProofError> {
        let skew = now_ms as i128 - self.at_ms as i128;
        if skew.unsigned_abs() > u128::from(max_skew_ms) {
            return Err(ProofError::Stale {
                skew_s: (skew / 1000).clamp(i64::MIN as i128, i64::MAX as i128) as i64,
                max_s: max_skew_ms / 1000,
            });
        }
        let public = decode_key(&self.key)?;
        let msg = message(
            purpose,
            &self.node,
            &self.key,
            self.at_ms,
            &self.nonce,
            path,
            digest,
            extra,
        );
        xeddsa::xed25519::PublicKey(public)
            .verify(&msg, &self.sig)
            .map_err(|_| ProofError::BadSignature {
                node: self.node.clone(),
            })
    }
}

/// The bytes a proof signs. Fields are length-prefixed so no two requests sign the same
/// bytes.
#[allow(clippy::too_many_arguments)]
fn message(
    purpose: Purpose,
    node: &str,
    key: &str,
    at_ms: u64,
    nonce: &[u8; 16],
    path: &str,
    digest: &[u8; 32],
    extra: &[&str],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(160);
    m.extend_from_slice(b"webmesh-proof-v1\0");
    for field in [
        purpose.tag().as_bytes(),
        node.as_bytes(),
        key.as_bytes(),
        path.as_bytes(),
    ]
    .into_iter()
    .chain(extra.iter().map(|e| e.as_bytes()))
    {
        m.extend_from_slice(&(field.len() as u32).to_be_bytes());
        m.extend_from_slice(field);
    }
    m.extend_from_slice(&at_ms.to_be_bytes());
    m.extend_from_slice(nonce);
    m.extend_from_slice(digest);
    m
}

/// SHA-256 of a request body, as signed.
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn decode_key(b64: &str) -> Result<[u8; 32], ProofError> {
    STANDARD
        .decode(b64.trim())
        .map_err(|_| ProofError::Key("not base64"))?
        .try_into()
        .map_err(|_| ProofError::Key("a WireGuard key is 32 bytes"))
}

/// Nonces seen within the skew window: a verified proof is taken once. Bounded: when
/// full, the oldest entries go first (only verified proofs get in, so filling it takes
/// a member's key).
pub struct ReplayGuard {
    seen: HashMap<[u8; 16], u64>,
    order: VecDeque<([u8; 16], u64)>,
    window_ms: u64,
    capacity: usize,
}

impl ReplayGuard {
    pub fn new(window_ms: u64, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            seen: HashMap::new(),
            order: VecDeque::new(),
            window_ms,
            capacity: capacity.max(1),
        }
    }

    /// Records `p`'s nonce; `Replayed` if it was seen within the window.
    pub fn check(&mut self, p: &Proof, now_ms: u64) -> Result<(), ProofError> {
        while let Some(&(n, at)) = self.order.front() {
            if now_ms.saturating_sub(at) <= 2 * self.window_ms && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&n) == Some(&at) {
                self.seen.remove(&n);
            }
        }
        if self.seen.contains_key(&p.nonce) {
            return Err(ProofError::Replayed);
        }
        self.seen.insert(p.nonce, now_ms);
        self.order.push_back((p.nonce, now_ms));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two WireGuard key pairs, made with `wg genkey | tee k | wg pubkey`: the proofs
    // must verify with the public keys WireGuard itself derives.
    const PRIV_A: &str = "MF4qvQuCyInGs9aq8CMGKQwbZAZmi75Q1olNwW9og1M=";
    const PUB_A: &str = "vUHodc9Go9tbq5yLKZrbfrU+nMNZPogD16qOWv5TFxU=";
    const PUB_B: &str = "XJWwAGPx6RCS9sbUT83DE418349AiNbWhBk/H90Tjlk=";
    const SKEW: u64 = 300_000;

    fn signed(purpose: Purpose, path: &str, body: &[u8], at: u64) -> Proof {
        let s = Signer::new("n1", PRIV_A, PUB_A).unwrap();
        Proof::parse(&s.sign_at(purpose, path, &body_digest(body), &["x"], at)).unwrap()
    }

    #[test]
    fn a_proof_verifies_with_the_key_wireguard_derives() {
        let now = 1_700_000_000_000;
        let p = signed(Purpose::Call, "/v1.Node/Join", b"body", now);
        assert_eq!(p.node, "n1");
        p.verify(
            Purpose::Call,
            "/v1.Node/Join",
            &body_digest(b"body"),
            &["x"],
            now,
            SKEW,
        )
        .unwrap();
    }

    #[test]
    fn anything_changed_fails() {
        let now = 1_700_000_000_000;
        let p = signed(Purpose::Call, "/v1.Node/Join", b"body", now);
        let d = body_digest(b"body");
        let bad = |r: Result<(), ProofError>| assert!(r.is_err(), "{r:?}");
        // Another key, body, path, purpose, extra field.
        let mut rekeyed = p.clone();
        rekeyed.key = PUB_B.into();
        bad(rekeyed.verify(Purpose::Call, "/v1.Node/Join", &d, &["x"], now, SKEW));
        bad(p.verify(
            Purpose::Call,
            "/v1.Node/Join",
            &body_digest(b"other"),
            &["x"],
            now,
            SKEW,
        ));
        bad(p.verify(Purpose::Call, "/v1.Node/Leave", &d, &["x"], now, SKEW));
        bad(p.verify(Purpose::Raft, "/v1.Node/Join", &d, &["x"], now, SKEW));
        bad(p.verify(Purpose::Call, "/v1.Node/Join", &d, &["y"], now, SKEW));
        bad(p.verify(Purpose::Call, "/v1.Node/Join", &d, &[], now, SKEW));
        // Another claimed node: the name is signed too.
        let mut other = p.clone();
        other.node = "n2".into();
        bad(other.verify(Purpose::Call, "/v1.Node/Join", &d, &["x"], now, SKEW));
    }

    #[test]
    fn old_and_future_proofs_are_stale() {
        let now = 1_700_000_000_000;
        let d = body_digest(b"");
        for at in [now - SKEW - 1, now + SKEW + 1] {
            let p = signed(Purpose::Call, "/p", b"", at);
            let e = p
                .verify(Purpose::Call, "/p", &d, &["x"], now, SKEW)
                .unwrap_err();
            assert!(matches!(e, ProofError::Stale { .. }), "{e}");
        }
        let p = signed(Purpose::Call, "/p", b"", now - SKEW);
        p.verify(Purpose::Call, "/p", &d, &["x"], now, SKEW)
            .unwrap();
    }

    #[test]
    fn malformed_headers_are_refused_without_panic() {
        for h in [
            "",
            "v1",
            "v2;n1;1;AAAAAAAAAAAAAAAAAAAAAA;vUHodc9Go9tbq5yLKZrbfrU+nMNZPogD16qOWv5TFxU=;AA",
            "v1;;1;AAAAAAAAAAAAAAAAAAAAAA;vUHodc9Go9tbq5yLKZrbfrU+nMNZPogD16qOWv5TFxU=;AA",
            "v1;n1;x;AAAAAAAAAAAAAAAAAAAAAA;vUHodc9Go9tbq5yLKZrbfrU+nMNZPogD16qOWv5TFxU=;AA",
            "v1;n1;1;AAAA;vUHodc9Go9tbq5yLKZrbfrU+nMNZPogD16qOWv5TFxU=;AA",
            "v1;n1;1;AAAAAAAAAAAAAAAAAAAAAA;notakey;AA",
            "v1;n1;1;AAAAAAAAAAAAAAAAAAAAAA;vUHodc9Go9tbq5yLKZrbfrU+nMNZPogD16qOWv5TFxU=;AA;extra",
            &"v1;n1;1;".repeat(100),
        ] {
            assert!(Proof::parse(h).is_err(), "{h}");
        }
    }

    #[test]
    fn a_nonce_is_taken_once_within_the_window() {
        let now = 1_700_000_000_000;
        let p = signed(Purpose::Call, "/p", b"", now);
        let q = signed(Purpose::Call, "/p", b"", now);
        let mut g = ReplayGuard::new(SKEW, 10);
        g.check(&p, now).unwrap();
        assert_eq!(g.check(&p, now + 1), Err(ProofError::Replayed));
        g.check(&q, now + 2).unwrap();
        // Long after the window the entry is gone (the proof itself is stale by then).
        g.check(&p, now + 3 * SKEW).unwrap();
        // Bounded.
        let mut g = ReplayGuard::new(SKEW, 3);
        for _ in 0..10 {
            g.check(&signed(Purpose::Call, "/p", b"", now), now)
                .unwrap();
        }
        assert!(g.len() <= 3);
    }
}
