//! TLS for calls to a mesh's API: to join addresses (verified against a CA, or not at
//! all when asked), to other members, and `unix://` admin sockets.
//!
//! Calls between members travel inside the WireGuard mesh, which already encrypts both
//! ends; there TLS only has to be spoken, so those channels do not verify the server's
//! name (who is calling is proved by a signature, see [`crate::proof`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// TLS of the API (server side) and of calls to join addresses.
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
    /// The API listens with TLS.
    pub fn server(&self) -> bool {
        self.cert.is_some()
    }

    /// Calls to join addresses use TLS.
    pub fn client(&self) -> bool {
        self.ca.is_some() || self.client_cert.is_some() || self.skip_verify
    }
}

/// A PEM file's bytes; the error names the setting.
pub fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("invalid {key} {:?}: {e}", path.display()))
}

/// Accepts any server certificate: `--tls-skip-verify`, and member-to-member calls.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn unverified_config(
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut cfg = match identity {
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls_pemfile_certs(&cert)?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| format!("invalid tls-client-key: {e}"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("invalid tls-client-cert: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

fn rustls_pemfile_certs(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid tls-client-cert: {e}"))
}

/// How this node dials: plain, TLS verified against a CA, or TLS unverified.
#[derive(Clone, Default)]
pub enum Dialer {
    #[default]
    Plain,
    Verified(ClientTlsConfig),
    Unverified(Arc<rustls::ClientConfig>),
}

impl Dialer {
    /// For calls to join addresses.
    pub fn for_joining(s: &TlsSettings) -> Result<Dialer, String> {
        if !s.client() {
            return Ok(Dialer::Plain);
        }
        let identity = match (&s.client_cert, &s.client_key) {
            (Some(c), Some(k)) => Some((read("tls-client-cert", c)?, read("tls-client-key", k)?)),
            _ => None,
        };
        if s.skip_verify {
            return Ok(Dialer::Unverified(unverified_config(identity)?));
        }
        let mut cfg = ClientTlsConfig::new();
        if let Some(ca) = &s.ca {
            cfg = cfg.ca_certificate(Certificate::from_pem(read("tls-ca", ca)?));
        }
        if let Some((c, k)) = identity {
            cfg = cfg.identity(Identity::from_pem(c, k));
        }
        Ok(Dialer::Verified(cfg))
    }

    /// For calls to other members (inside the mesh): TLS when our own API speaks it,
    /// unverified (see the module notes).
    pub fn for_members(s: &TlsSettings) -> Result<Dialer, String> {
        if s.server() {
            Ok(Dialer::Unverified(unverified_config(None)?))
        } else {
            Ok(Dialer::Plain)
        }
    }

    /// A lazily connected channel to `addr` (`host:port`).
    pub fn channel(&self, addr: &str, timeout: Option<Duration>) -> Result<Channel, String> {
        if let Some(path) = addr.strip_prefix("unix://") {
            return unix_channel(path, timeout);
        }
        let addr = addr
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        let scheme = match self {
            Dialer::Verified(_) => "https",
            _ => "http",
        };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("{addr}: {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        if let Some(t) = timeout {
            ep = ep.timeout(t);
        }
        match self {
            Dialer::Plain => Ok(ep.connect_lazy()),
            Dialer::Verified(cfg) => Ok(ep
                .tls_config(cfg.clone())
                .map_err(|e| format!("{addr}: {e}"))?
                .connect_lazy()),
            Dialer::Unverified(cfg) => {
                let connector = tokio_rustls::TlsConnector::from(cfg.clone());
                let host = addr
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                    .unwrap_or_else(|| addr.clone());
                let name = rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| format!("{addr}: {e}"))?;
                let target = addr.clone();
                Ok(
                    ep.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                        let (connector, name, target) =
                            (connector.clone(), name.clone(), target.clone());
                        async move {
                            let tcp = tokio::net::TcpStream::connect(&target).await?;
                            let _ = tcp.set_nodelay(true);
                            let tls = connector.connect(name, tcp).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(tls))
                        }
                    })),
                )
            }
        }
    }
}

/// A channel over a unix socket (`unix:///run/webmesh/webmesh.sock`): the node's admin
/// socket, plaintext (the file's permissions and the peer's credentials guard it).
pub fn unix_channel(path: &str, timeout: Option<Duration>) -> Result<Channel, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "unix://{path}: needs an absolute path (unix:///run/webmesh/webmesh.sock)"
        ));
    }
    let mut ep = Endpoint::from_static("http://localhost").connect_timeout(Duration::from_secs(3));
    if let Some(t) = timeout {
        ep = ep.timeout(t);
    }
    let path = path.to_string();
    Ok(
        ep.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        })),
    )
}
