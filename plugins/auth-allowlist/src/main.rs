//! `auth-allowlist` as a process plugin; see the library for the policy.

fn main() -> std::process::ExitCode {
    webmesh_plugin_sdk::serve(auth_allowlist::Allowlist::default())
}
