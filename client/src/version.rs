//! Build information shown by `--version` and `v1.Node/GetStatus`.

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the binary was built from ("unknown" outside a checkout).
pub const COMMIT: &str = env!("WEBMESH_COMMIT");
/// UTC build date, RFC 3339.
pub const BUILD_DATE: &str = env!("WEBMESH_BUILD_DATE");
/// `--version` text.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WEBMESH_COMMIT"),
    ", built ",
    env!("WEBMESH_BUILD_DATE"),
    ")"
);
