//! Build information shown by `--version` and `v1.Node/GetStatus` (shared with `wmctl`).

pub use webmesh_client::version::{BUILD_DATE, COMMIT, LONG, VERSION};
