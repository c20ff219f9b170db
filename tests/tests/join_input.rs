//! Bad Join input is refused with InvalidArgument naming the field, and leaves the
//! mesh state unchanged.

use base64::Engine as _;
use prost::Message;
use webmesh_api::internal::StateSnapshot;
use webmesh_api::v1::{JoinRequest, SnapshotRequest};
use webmesh_e2e::LocalNode;

fn good() -> JoinRequest {
    JoinRequest {
        id: "joiner".into(),
        public_key: base64::engine::general_purpose::STANDARD.encode([9u8; 32]),
        raft_port: 9443,
        grpc_port: 8443,
        assign_ipv4: true,
        ..Default::default()
    }
}

/// A change that breaks one field of a good request.
type Mutate = Box<dyn Fn(&mut JoinRequest)>;

#[tokio::test]
async fn malformed_joins_are_refused_naming_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = LocalNode::start("input-1", dir.path(), &["--bootstrap", "--no-wireguard"]).await?;
    let mut client = node.client().await?;
    let state = |s: webmesh_api::v1::SnapshotResponse| {
        StateSnapshot::decode(s.snapshot.as_slice()).map(|s| s.entries)
    };
    let before = state(client.snapshot(SnapshotRequest {}).await?.into_inner())?;

    let cases: Vec<(&str, Mutate)> = vec![
        (
            "public_key",
            Box::new(|r| r.public_key = "not base64!".into()),
        ),
        (
            "public_key",
            Box::new(|r| {
                r.public_key = base64::engine::general_purpose::STANDARD.encode([1u8; 16])
            }),
        ),
        (
            "primary_endpoint",
            Box::new(|r| r.primary_endpoint = "300.1.2.3".into()),
        ),
        (
            "wireguard_endpoints",
            Box::new(|r| r.wireguard_endpoints = vec!["10.0.0.1:0".into()]),
        ),
        (
            "wireguard_endpoints",
            Box::new(|r| r.wireguard_endpoints = vec!["nohost".into()]),
        ),
        (
            "routes",
            Box::new(|r| r.routes = vec!["10.1.0.0/99".into()]),
        ),
        ("routes", Box::new(|r| r.routes = vec!["not-a-cidr".into()])),
        ("id", Box::new(|r| r.id = "a/b".into())),
        ("id", Box::new(|r| r.id = "with space".into())),
        ("id", Box::new(|r| r.id = "x".repeat(64))),
        ("id", Box::new(|r| r.id = String::new())),
    ];
    for (field, mutate) in cases {
        let mut req = good();
        mutate(&mut req);
        let err = client.join(req).await.expect_err(field);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            err.message()
        );
    }
    let after = state(client.snapshot(SnapshotRequest {}).await?.into_inner())?;
    assert_eq!(before, after, "refused joins change nothing");
    Ok(())
}
