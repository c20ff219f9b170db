//! Records the commit and build date shown by `--version` and `v1.Node/GetStatus`.
use std::process::Command;

fn main() {
    let commit = std::env::var("WEBMESH_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    // SOURCE_DATE_EPOCH keeps builds reproducible when set; otherwise the build time.
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map(|secs| format!("@{secs}"))
        .unwrap_or_else(|| "now".into());
    let build_date = Command::new("date")
        .args(["-u", "-d", &date, "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    println!(
        "cargo:rustc-env=WEBMESH_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
    println!(
        "cargo:rustc-env=WEBMESH_BUILD_DATE={}",
        build_date.unwrap_or_else(|| "unknown".into())
    );
    println!("cargo:rerun-if-env-changed=WEBMESH_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
}
