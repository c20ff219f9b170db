//! TURN credentials, REST-style (as coturn's `use-auth-secret`): a username
//! `<expiry>:<node id>` and the password base64(HMAC-SHA1(secret, username)). The
//! server keeps no list: it recomputes the password from the username, so any
//! credential it issued works until it expires, and none other does. Sans IO: time is
//! a parameter.

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use ring::hmac;

/// How long issued credentials last.
pub const LIFETIME_SECS: u64 = 3600;
/// The longest username the server considers (an expiry, a colon, a node ID).
const MAX_USERNAME: usize = 20 + 1 + crate::mesh::limits::MAX_NAME_BYTES;

/// The server's secret (32 random bytes, kept in the data dir).
#[derive(Clone)]
pub struct Secret(pub [u8; 32]);

/// Why a username is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a credential this server issued (want <expiry>:<node id>)")]
    Malformed,
    #[error("expired at {0}")]
    Expired(u64),
}

/// Issued credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub username: String,
    pub password: String,
    pub expires: u64,
}

impl Secret {
    fn password(&self, username: &str) -> String {
        // SHA-1 because TURN clients expect it of REST credentials (coturn's
        // use-auth-secret); as an HMAC it is not the weak point.
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.0);
        BASE64_STANDARD.encode(hmac::sign(&key, username.as_bytes()))
    }

    /// Credentials for `node`, valid from `now` (unix seconds) for [`LIFETIME_SECS`].
    pub fn issue(&self, node: &str, now: u64) -> Issued {
        let expires = now + LIFETIME_SECS;
        let username = format!("{expires}:{node}");
        Issued {
            password: self.password(&username),
            username,
            expires,
        }
    }

    /// The node a username was issued to (whatever its validity).
    pub fn node_of(username: &str) -> Option<&str> {
        username
            .split_once(':')
            .map(|(_, n)| n)
            .filter(|n| !n.is_empty())
    }

    /// The password `username` must present at `now`, if the server issued it and it
    /// has not expired.
    pub fn check(&self, username: &str, now: u64) -> Result<String, Refused> {
        if username.len() > MAX_USERNAME {
            return Err(Refused::Malformed);
        }
        let (expiry, node) = username.split_once(':').ok_or(Refused::Malformed)?;
        let expiry: u64 = expiry.parse().map_err(|_| Refused::Malformed)?;
        if node.is_empty() {
            return Err(Refused::Malformed);
        }
        if expiry < now {
            return Err(Refused::Expired(expiry));
        }
        Ok(self.password(username))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credentials_check_until_they_expire() {
        let s = Secret([7; 32]);
        let c = s.issue("n1", 1_000);
        assert_eq!(c.username, format!("{}:n1", 1_000 + LIFETIME_SECS));
        assert_eq!(s.check(&c.username, 1_000), Ok(c.password.clone()));
        assert_eq!(s.check(&c.username, c.expires), Ok(c.password.clone()));
        assert_eq!(
            s.check(&c.username, c.expires + 1),
            Err(Refused::Expired(c.expires))
        );
        // Another server's secret yields another password: the credential is useless there.
        assert_ne!(Secret([8; 32]).check(&c.username, 1_000), Ok(c.password));
    }

    #[test]
    fn usernames_it_did_not_issue_are_refused() {
        let s = Secret([1; 32]);
        for u in [
            "",
            "n1",
            "abc:n1",
            "123:",
            &format!("9:{}", "x".repeat(300)),
        ] {
            assert_eq!(s.check(u, 0), Err(Refused::Malformed), "{u:?}");
        }
    }
}
