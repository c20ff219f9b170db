//! TLS settings of the API (server side) and of this node's calls to join addresses,
//! gathered from their `tls-*` keys (the type is shared with `wmctl`).

use std::path::PathBuf;

use super::{ConfigError, invalid};

pub use webmesh_client::tls::TlsSettings;

/// Which TLS settings need which others.
pub(super) fn validate(s: &TlsSettings) -> Result<(), ConfigError> {
    let pair =
        |a: &Option<PathBuf>, ak: &'static str, b: &Option<PathBuf>, bk: &'static str| match (a, b)
        {
            (Some(p), None) => Err(invalid(ak, p.display(), format!("needs --{bk}"))),
            (None, Some(p)) => Err(invalid(bk, p.display(), format!("needs --{ak}"))),
            _ => Ok(()),
        };
    pair(&s.cert, "tls-cert", &s.key, "tls-key")?;
    pair(
        &s.client_cert,
        "tls-client-cert",
        &s.client_key,
        "tls-client-key",
    )?;
    if let (Some(ca), None) = (&s.client_ca, &s.cert) {
        return Err(invalid(
            "tls-client-ca",
            ca.display(),
            "client certificates need a TLS listener: set --tls-cert and --tls-key",
        ));
    }
    Ok(())
}
