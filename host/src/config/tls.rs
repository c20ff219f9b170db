//! TLS settings of the API (server side) and of this node's calls to join addresses,
//! gathered from their `tls-*` keys.

use std::path::PathBuf;

use super::{ConfigError, invalid};

/// TLS of the API (server side) and of this node's calls to join addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub skip_verify: bool,
}

impl TlsSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let pair = |a: &Option<PathBuf>,
                    ak: &'static str,
                    b: &Option<PathBuf>,
                    bk: &'static str| match (a, b) {
            (Some(p), None) => Err(invalid(ak, p.display(), format!("needs --{bk}"))),
            (None, Some(p)) => Err(invalid(bk, p.display(), format!("needs --{ak}"))),
            _ => Ok(()),
        };
        pair(&self.cert, "tls-cert", &self.key, "tls-key")?;
        pair(
            &self.client_cert,
            "tls-client-cert",
            &self.client_key,
            "tls-client-key",
        )?;
        if let (Some(ca), None) = (&self.client_ca, &self.cert) {
            return Err(invalid(
                "tls-client-ca",
                ca.display(),
                "client certificates need a TLS listener: set --tls-cert and --tls-key",
            ));
        }
        Ok(())
    }

    /// The API listens with TLS.
    pub fn server(&self) -> bool {
        self.cert.is_some()
    }

    /// This node's calls to join addresses use TLS.
    pub fn client(&self) -> bool {
        self.ca.is_some() || self.client_cert.is_some() || self.skip_verify
    }
}
