//! TLS of the public API (rustls, through tonic). The dialing side — joins, members,
//! admin sockets — is `webmesh_client::tls`, shared with `wmctl`.

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

pub use webmesh_client::tls::{Dialer, TlsSettings, read, unix_channel};

/// The API listener's TLS, if configured. Client certificates are asked for and
/// verified when `--tls-client-ca` is set, but not required: callers without one (a
/// node with basic credentials, say) still reach the AUTH plugin, which decides.
pub fn server_config(s: &TlsSettings) -> Result<Option<ServerTlsConfig>, String> {
    let (Some(cert), Some(key)) = (&s.cert, &s.key) else {
        return Ok(None);
    };
    let identity = Identity::from_pem(read("tls-cert", cert)?, read("tls-key", key)?);
    let mut cfg = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &s.client_ca {
        cfg = cfg
            .client_ca_root(Certificate::from_pem(read("tls-client-ca", ca)?))
            .client_auth_optional(true);
    }
    Ok(Some(cfg))
}
