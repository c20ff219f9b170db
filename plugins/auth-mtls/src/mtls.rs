//! The CA bundle and the verification of a caller's chain against it.

use std::sync::RwLock;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webmesh_plugin_sdk::{AuthPlugin, Config, Error, Info, Plugin, Setting, async_trait, v1};

#[derive(Default)]
pub struct Mtls {
    anchors: RwLock<Vec<TrustAnchor<'static>>>,
}

fn anchors(pem: &[u8]) -> Result<Vec<TrustAnchor<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    certs
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// The verified chain's identity: the leaf's common name.
fn verify(anchors: &[TrustAnchor<'_>], chain: &[Vec<u8>], now: UnixTime) -> Result<String, Error> {
    let Some((leaf, rest)) = chain.split_first() else {
        return Err(Error::unauthenticated(
            "a client certificate is required (connect with TLS and present one)",
        ));
    };
    let leaf_der = CertificateDer::from(leaf.as_slice());
    let intermediates: Vec<CertificateDer<'_>> = rest
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let ee = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| Error::unauthenticated(format!("the client certificate is malformed: {e}")))?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        anchors,
        &intermediates,
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| Error::unauthenticated(format!("the client certificate is not trusted: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| Error::unauthenticated(format!("the client certificate is malformed: {e}")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or_else(|| Error::unauthenticated("the client certificate has no common name"))?;
    Ok(cn.to_string())
}

#[async_trait]
impl Plugin for Mtls {
    fn info(&self) -> Info {
        Info::new(
            "auth-mtls",
            env!("CARGO_PKG_VERSION"),
            "client certificates; the identity is the common name",
        )
    }

    fn settings(&self) -> &'static [Setting] {
        &[Setting {
            key: "ca",
            default: "",
            help: "PEM file of the CA certificates that sign client certificates",
        }]
    }

    async fn configure(&self, config: Config) -> Result<(), Error> {
        let path = config.required_str("ca")?;
        let pem = std::fs::read(&path)
            .map_err(|e| Error::invalid_argument(format!("config key ca: {path}: {e}")))?;
        let a = anchors(&pem)
            .map_err(|e| Error::invalid_argument(format!("config key ca: {path}: {e}")))?;
        eprintln!("trusting {} CA certificate(s) from {path}", a.len());
        *self.anchors.write().unwrap_or_else(|p| p.into_inner()) = a;
        Ok(())
    }

    fn auth(&self) -> Option<&dyn AuthPlugin> {
        Some(self)
    }
}

#[async_trait]
impl AuthPlugin for Mtls {
    async fn authenticate(&self, req: v1::AuthenticationRequest) -> Result<String, Error> {
        let anchors = self.anchors.read().unwrap_or_else(|p| p.into_inner());
        if anchors.is_empty() {
            return Err(Error::failed_precondition("auth-mtls is not configured"));
        }
        verify(&anchors, &req.certificates, UnixTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };

    fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(p, key))
    }

    fn client(cn: Option<&str>, issuer: &Issuer<'_, KeyPair>) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        // rcgen's default subject has a common name of its own.
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        } else {
            p.distinguished_name.push(DnType::OrganizationName, "no cn");
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        p.signed_by(&key, issuer).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_of_a_trusted_chain_is_the_identity() {
        let (pem, issuer) = ca("mesh ca");
        let (_, other) = ca("other ca");
        let a = anchors(pem.as_bytes()).unwrap();
        let now = UnixTime::now();
        assert_eq!(
            verify(&a, &[client(Some("node-7"), &issuer)], now).unwrap(),
            "node-7"
        );
        let e = verify(&a, &[client(Some("node-7"), &other)], now).unwrap_err();
        assert!(e.message.contains("not trusted"), "{e}");
        let e = verify(&a, &[], now).unwrap_err();
        assert!(e.message.contains("required"), "{e}");
        let e = verify(&a, &[client(None, &issuer)], now).unwrap_err();
        assert!(e.message.contains("common name"), "{e}");
        let e = verify(&a, &[vec![1, 2, 3]], now).unwrap_err();
        assert!(e.message.contains("malformed"), "{e}");
        assert!(anchors(b"not pem").is_err());
    }
}
