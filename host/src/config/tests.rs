//! Unit tests of the settings.

use std::path::Path;

use super::*;

fn flags(args: &[&str]) -> clap::ArgMatches {
    let mut v = vec!["webmesh"];
    v.extend_from_slice(args);
    command().try_get_matches_from(v).expect("flags parse")
}

#[test]
fn defaults_match_the_reference() {
    let c = Config::from_matches(&flags(&[])).unwrap();
    assert_eq!(c.grpc_listen.to_string(), "[::]:8443");
    assert_eq!(c.raft_port, 9443);
    assert_eq!(c.ipv4_network.to_string(), "172.16.0.0/12");
    assert_eq!(c.mesh_domain, "webmesh.internal");
    assert!(!c.bootstrap);
    assert_eq!(c.bootstrap_default_policy, DefaultPolicy::Accept);
}

#[test]
fn plugins_come_from_the_file_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "plugins:\n  auth:\n    target: /usr/lib/webmesh/auth-basic\n    config:\n      \
         htpasswd: /etc/webmesh/htpasswd\n      reload: true\n  store:\n    target: \
         unix:///run/store.sock\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let c = Config::from_matches(&flags(&[
        "--config",
        p,
        "--plugin",
        "ipam=./ipam-sqlite",
        "--plugin",
        "wasm=./allow.wasm",
        "--plugin",
        "remote=grpcs://plugins.example:7443",
        "--plugin-config",
        "ipam.path=/var/lib/ipam.db",
        "--plugin-config",
        "auth.htpasswd=/other",
    ]))
    .unwrap();
    let auth = &c.plugins["auth"];
    assert_eq!(
        auth.target,
        PluginTarget::Process("/usr/lib/webmesh/auth-basic".into())
    );
    assert_eq!(auth.config["htpasswd"], "/other");
    assert_eq!(auth.config["reload"], true);
    assert_eq!(
        c.plugins["store"].target,
        PluginTarget::Unix("/run/store.sock".into())
    );
    assert_eq!(
        c.plugins["ipam"].target,
        PluginTarget::Process("./ipam-sqlite".into())
    );
    assert_eq!(c.plugins["ipam"].config["path"], "/var/lib/ipam.db");
    assert_eq!(
        c.plugins["wasm"].target,
        PluginTarget::Wasm("./allow.wasm".into())
    );
    assert_eq!(
        c.plugins["remote"].target,
        PluginTarget::Grpc {
            addr: "plugins.example:7443".into(),
            tls: true
        }
    );
}

#[test]
fn tls_settings_come_in_pairs() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--tls-cert", "/c.pem"],
            "invalid tls-cert \"/c.pem\": needs --tls-key",
        ),
        (
            &["--tls-key", "/k.pem"],
            "invalid tls-key \"/k.pem\": needs --tls-cert",
        ),
        (&["--tls-client-cert", "/c.pem"], "needs --tls-client-key"),
        (&["--tls-client-ca", "/ca.pem"], "need a TLS listener"),
        (&["--tls-skip-verify", "perhaps"], "invalid tls-skip-verify"),
    ];
    for (args, want) in cases {
        let err = Config::from_matches(&flags(args)).unwrap_err().to_string();
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let c = Config::from_matches(&flags(&["--tls-cert", "/c", "--tls-key", "/k"])).unwrap();
    assert!(c.tls().server() && !c.tls().client());
    let c = Config::from_matches(&flags(&["--tls-skip-verify"])).unwrap();
    assert!(c.tls().client());
}

#[test]
fn bad_plugin_settings_name_the_key() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--plugin", "ipam"],
            "invalid plugin \"ipam\": must be NAME=TARGET",
        ),
        (&["--plugin", "Bad Name=x"], "invalid plugin \"Bad Name=x\""),
        (&["--plugin", "a=http://x:1"], "unknown scheme"),
        (&["--plugin", "a=unix://rel.sock"], "absolute socket path"),
        (
            &["--plugin", "a=grpc://nohost"],
            "invalid plugin \"a=grpc://nohost\"",
        ),
        (
            &["--plugin-config", "a.k=v"],
            "no plugin \"a\" is configured",
        ),
        (
            &["--plugin", "a=/x", "--plugin-config", "a=v"],
            "NAME.KEY=VALUE",
        ),
    ];
    for (args, want) in cases {
        let err = Config::from_matches(&flags(args)).unwrap_err().to_string();
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "node-id: from-file\nraft-port: 7000\nbootstrap: true\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let c = Config::from_matches(&flags(&["--config", p, "--node-id", "from-flag"])).unwrap();
    assert_eq!(c.node_id.as_deref(), Some("from-flag"));
    assert_eq!(c.raft_port, 7000);
    assert!(c.bootstrap);
    let c = Config::from_matches(&flags(&["--config", p, "--bootstrap=false"])).unwrap();
    assert!(!c.bootstrap);
}

#[test]
fn errors_name_the_key_and_value() {
    let cases: &[(&[&str], &str)] = &[
        (&["--raft-port", "abc"], "invalid raft-port \"abc\""),
        (&["--raft-port", "0"], "invalid raft-port \"0\""),
        (&["--ipv4-network", "10.0.0.1/8"], "did you mean 10.0.0.0/8"),
        (&["--ipv4-network", "nope"], "invalid ipv4-network \"nope\""),
        (&["--ipv6-network", "fd00::/64"], "must be a /48"),
        (
            &["--grpc-listen", "localhost"],
            "invalid grpc-listen \"localhost\"",
        ),
        (&["--node-id", "a/b"], "invalid node-id \"a/b\""),
        (&["--mesh-domain", "bad_domain"], "invalid mesh-domain"),
        (
            &["--bootstrap-default-policy", "maybe"],
            "must be accept or deny",
        ),
        (&["--bootstrap=perhaps"], "invalid bootstrap \"perhaps\""),
        (&["--join", "nohost"], "invalid join \"nohost\""),
        (&["--endpoint", "example.com"], "invalid endpoint"),
        (
            &["--wireguard-endpoint", "10.0.0.1"],
            "invalid wireguard-endpoint",
        ),
        (
            &["--interface", "a-very-long-interface-name"],
            "invalid interface",
        ),
        (&["--mtu", "100"], "invalid mtu \"100\""),
        (&["--zone", "a zone"], "invalid zone"),
    ];
    for (args, want) in cases {
        let err = Config::from_matches(&flags(args)).unwrap_err().to_string();
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[test]
fn file_errors_name_the_file_and_key() {
    let err = Config::from_file_text("raft-port: lots\n", Path::new("x.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.yaml") && err.contains("raft-port"), "{err}");
    let err = Config::from_file_text("no-such-key: 1\n", Path::new("x.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-key"), "{err}");
}

#[test]
fn print_config_round_trips_through_the_file_format() {
    let c = Config::from_matches(&flags(&[
        "--node-id",
        "n1",
        "--ipv6-network",
        "fd12:3456:789a::/48",
        "--tls-cert",
        "/c.pem",
        "--tls-key",
        "/k.pem",
        "--plugin",
        "ipam=/usr/lib/ipam-sqlite",
        "--plugin",
        "remote=grpc://10.0.0.1:7000",
        "--plugin-config",
        "ipam.path=/var/lib/ipam.db",
    ]))
    .unwrap();
    let again = Config::from_file_text(&c.to_yaml(), Path::new("printed.yaml")).unwrap();
    assert_eq!(again.tls(), c.tls());
    assert_eq!(again.plugins, c.plugins);
    assert_eq!(again.node_id.as_deref(), Some("n1"));
    assert_eq!(again.ipv6_network, c.ipv6_network);
    assert_eq!(again.grpc_listen, c.grpc_listen);
}

#[test]
fn every_row_is_a_flag_an_environment_variable_and_a_file_key() {
    let cmd = command();
    for row in settings::ROWS {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(row.key))
            .unwrap_or_else(|| panic!("{} has no flag", row.key));
        let env = format!("WEBMESH_{}", row.key.to_uppercase().replace('-', "_"));
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env.as_str()));
    }
    // Every row prints (unless empty and omitted), and what prints loads back.
    let c = Config::default();
    let printed = c.to_yaml();
    for row in settings::ROWS {
        assert!(
            printed.contains(&format!("{}:", row.key)) || row.omit_empty,
            "{} missing from {printed}",
            row.key
        );
    }
    Config::from_file_text(&printed, Path::new("printed.yaml")).unwrap();
}

#[test]
fn file_values_are_checked_like_flags_and_name_the_file() {
    let err = Config::from_file_text("join: [nohost]\n", Path::new("c.yaml"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "config file c.yaml: invalid join \"nohost\": must be HOST:PORT"
    );
    let err = Config::from_file_text("node-id: [a, b]\n", Path::new("c.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be a single value"), "{err}");
    let c = Config::from_file_text(
        "join: 10.0.0.1:8443\nmtu: 1400\nvoter: true\n",
        Path::new("c.yaml"),
    )
    .unwrap();
    assert_eq!(c.join, vec!["10.0.0.1:8443".to_string()]);
    assert_eq!(c.mtu, 1400);
    assert!(c.voter);
}

#[test]
fn a_tcp_app_daemon_needs_tls_an_auth_plugin_and_users() {
    let err = |args: &[&str]| match Config::from_matches(&flags(args)) {
        Err(ConfigError::Invalid { key, reason, .. }) => format!("{key}: {reason}"),
        other => panic!("{args:?}: {other:?}"),
    };
    let tcp = ["--app-daemon-listen", "tcp://[::]:8444"];
    assert!(err(&tcp).contains("app-daemon-listen: tcp:// needs TLS"));
    let tls = [&tcp[..], &["--tls-cert", "/c.pem", "--tls-key", "/k.pem"]].concat();
    assert!(err(&tls).contains("needs an AUTH plugin"));
    let plugin = [&tls[..], &["--plugin", "auth=/bin/auth"]].concat();
    assert!(err(&plugin).contains("--app-daemon-users"));
    let c = Config::from_matches(&flags(
        &[
            &plugin[..],
            &["--app-daemon-users", "alice", "--app-daemon-grpc-web"],
        ]
        .concat(),
    ))
    .unwrap();
    assert_eq!(
        c.app_daemon_listen,
        Some(AppDaemonListen::Tcp("[::]:8444".parse().unwrap()))
    );
    // It prints and reads back as it was given (an AppDaemon's Connect relies on it).
    let again = c.with_overrides(&Default::default()).unwrap();
    assert_eq!(again.app_daemon_listen, c.app_daemon_listen);
    assert_eq!(again.app_daemon_users, ["alice"]);
    let unix =
        Config::from_matches(&flags(&["--app-daemon-listen", "unix:///run/app.sock"])).unwrap();
    assert_eq!(
        unix.app_daemon_listen,
        Some(AppDaemonListen::Unix("/run/app.sock".into()))
    );
    assert!(
        err(&[
            "--app-daemon-listen",
            "unix:///a",
            "--app-daemon-cors-origin",
            "https://x.example"
        ])
        .contains("app-daemon-cors-origin: needs --app-daemon-grpc-web")
    );
}

#[test]
fn app_daemon_addresses_and_origins_are_checked() {
    assert!(values::app_daemon("tcp://host:1").is_err());
    assert!(values::app_daemon("relative/path").is_err());
    assert!(values::app_daemon("/abs").is_ok());
    assert!(values::origin("https://app.example:8443").is_ok());
    assert!(values::origin("https://app.example/path").is_err());
    assert!(values::origin("ftp://x").is_err());
    assert!(values::origin("https://").is_err());
}

#[test]
fn ice_and_campfire_settings_are_checked() {
    let err = |args: &[&str]| match Config::from_matches(&flags(args)) {
        Ok(_) => panic!("{args:?} was taken"),
        Err(e) => e.to_string(),
    };
    let c = Config::from_matches(&flags(&[
        "--ice",
        "--ice-listen",
        "192.0.2.1:0",
        "--direct-peer",
        "a3",
        "--join",
        "camp://BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc@203.0.113.1:3478",
    ]))
    .unwrap();
    assert!(c.ice);
    assert_eq!(c.ice_listen, Some("192.0.2.1:0".parse().unwrap()));
    assert_eq!(c.direct_peer, ["a3"]);
    // A bad camp URL is refused without its key in the message.
    let e = err(&["--join", "camp://BwcHBwcHBwcH@203.0.113.1:3478"]);
    assert!(e.contains("join") && !e.contains("BwcHBwcH"), "{e}");
    // A campfire meets at this node's TURN server: it needs one.
    let e = err(&["--campfire-psk", "generate"]);
    assert!(
        e.contains("campfire-psk") && e.contains("needs --turn-server"),
        "{e}"
    );
    assert!(err(&["--ice-listen", "not-an-address"]).contains("ice-listen"));
}
