//! `auth-mtls`: authenticates API callers by their TLS client certificate. The chain the
//! node passes along is verified against a CA bundle for client authentication, at the
//! current time; the identity is the leaf's subject common name.
//!
//! Run the node with `--tls-cert`, `--tls-key` and `--tls-client-ca` so it asks for
//! client certificates. Config: `ca` (PEM bundle of trusted CAs).

mod mtls;

fn main() -> std::process::ExitCode {
    webmesh_plugin_sdk::serve(mtls::Mtls::default())
}
