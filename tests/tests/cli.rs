//! The `webmesh` command line: settings, errors, and generic gRPC clients.

use std::process::Command;

use webmesh_e2e::{LocalNode, bin};

fn webmesh(args: &[&str]) -> std::process::Output {
    Command::new(bin("webmesh"))
        .args(args)
        .env_remove("WEBMESH_NODE_ID")
        .output()
        .expect("run webmesh")
}

/// Flags, environment, and what the error line must contain.
type Case = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn bad_settings_exit_nonzero_with_one_line_naming_key_and_value() {
    let cases: &[Case] = &[
        (&["--raft-port", "99999"], &[], "raft-port \"99999\""),
        (
            &["--ipv4-network", "300.1.0.0/16"],
            &[],
            "ipv4-network \"300.1.0.0/16\"",
        ),
        (
            &["--ipv6-network", "fd00::/64"],
            &[],
            "ipv6-network \"fd00::/64\"",
        ),
        (
            &["--bootstrap-default-policy", "allow"],
            &[],
            "bootstrap-default-policy \"allow\"",
        ),
        (&["--no-such-flag"], &[], "--no-such-flag"),
        (
            &[],
            &[("WEBMESH_GRPC_LISTEN", "nowhere")],
            "grpc-listen \"nowhere\"",
        ),
        (
            &["--config", "/nonexistent/webmesh.yaml"],
            &[],
            "/nonexistent/webmesh.yaml",
        ),
    ];
    for (args, env, want) in cases {
        let out = Command::new(bin("webmesh"))
            .args(*args)
            .envs(env.iter().copied())
            .output()
            .expect("run webmesh");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line, got {err:?}"
        );
        assert!(err.contains(want), "{args:?}: {err:?} should name {want}");
    }
}

#[test]
fn print_config_shows_the_layered_settings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("webmesh.yaml");
    std::fs::write(
        &file,
        "node-id: from-file\nraft-port: 7001\nmesh-domain: file.example\n",
    )
    .unwrap();
    let out = Command::new(bin("webmesh"))
        .args([
            "--config",
            file.to_str().unwrap(),
            "--raft-port",
            "7002",
            "--print-config",
        ])
        .env("WEBMESH_MESH_DOMAIN", "env.example")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(yaml.contains("node-id: from-file"), "{yaml}");
    assert!(yaml.contains("raft-port: 7002"), "flag beats file: {yaml}");
    assert!(
        yaml.contains("mesh-domain: env.example"),
        "env beats file: {yaml}"
    );
}

#[test]
fn version_names_the_build() {
    let out = webmesh(&["--version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with("webmesh 0.") && text.contains("commit"),
        "{text}"
    );
}

/// A generic gRPC tool (Python grpcio, not tonic) lists the services through server
/// reflection and calls `/v1.Node/GetStatus` with descriptors it fetched at run time.
#[tokio::test]
async fn an_independent_grpc_client_reads_status_via_reflection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node =
        LocalNode::start("reflect-1", dir.path(), &["--bootstrap", "--no-wireguard"]).await?;
    // Read at run time: a test binary reused from a clone elsewhere (shared target dir)
    // must not point into that clone.
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let script = format!("{root}/scripts/grpc_status.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(node.grpc.to_string())
        .output()
        .await?;
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let services: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    // Exactly what the port serves: no AppDaemon, WebRTC, Campfire or plugin services.
    let mut services = services;
    services.sort();
    assert_eq!(
        services,
        [
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "v1.Admin",
            "v1.Mesh",
            "v1.Node",
            "v1.PeerDiscovery"
        ]
    );
    assert_eq!(v["status"]["id"], "reflect-1");
    assert_eq!(v["status"]["clusterStatus"], "CLUSTER_LEADER");
    assert!(
        v["status"]["version"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    Ok(())
}
