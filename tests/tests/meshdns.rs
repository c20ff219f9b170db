//! Mesh DNS against real nodes in network namespaces, read with `dig` (dnsutils): every
//! record kind, answers following joins, leaves and a leader's death, forwarding to a
//! stub upstream (dnsmasq) in another namespace, and malformed packets. Needs root.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use webmesh_api::v1::Feature;
use webmesh_e2e::netns::{Host, TestNet, v4, v6};
use webmesh_e2e::{KillOnDrop, wait_for};

const READY: Duration = Duration::from_secs(60);
const PORT: &str = "5353";
const DOMAIN: &str = "webmesh.internal";

/// `dig` run in `from`'s namespace against `server`; returns the answer lines
/// (`+short`), or with `status` the whole output.
fn dig(from: &Host, server: &str, args: &[&str]) -> Result<String> {
    let mut cmd = vec!["dig", "+time=2", "+tries=1", "-p", PORT];
    let at = format!("@{server}");
    cmd.push(&at);
    cmd.extend_from_slice(args);
    let out = from.exec(&cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn short(from: &Host, server: &str, name: &str, qtype: &str) -> Result<Vec<String>> {
    let out = dig(from, server, &["+short", name, qtype])?;
    Ok(out
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

fn status(from: &Host, server: &str, args: &[&str]) -> Result<String> {
    let out = dig(from, server, args)?;
    Ok(out
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or("(no answer)")
        .to_string())
}

fn fqdn(id: &str) -> String {
    format!("{id}.{DOMAIN}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mesh_dns_answers_for_the_mesh_follows_it_and_forwards_the_rest() -> Result<()> {
    let mut net = TestNet::new()?;
    // The upstream resolver: dnsmasq with one name, in a namespace of its own.
    let up = net.add_host("up")?;
    let up_ip = up.ip.to_string();
    let _dnsmasq = KillOnDrop(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &up.ns,
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
            ])
            .args([
                "--bind-interfaces",
                "--listen-address",
                &up_ip,
                "--port",
                "53",
            ])
            .args(["--address=/stub.example/192.0.2.77", "--log-facility=-"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("dnsmasq (apt-get install dnsmasq)")?,
    );

    net.bootstrap(
        "h1",
        &["--meshdns-listen", ":5353", "--meshdns-forwarder", &up_ip],
    )
    .await?;
    let via = net.grpc("h1");
    net.join(
        &["h2"],
        "h1",
        true,
        &["--meshdns-listen", ":5353", "--meshdns-no-forward"],
    )
    .await?;
    net.join(&["h3"], "h1", true, &[]).await?;
    net.promote("h1", &["h2", "h3"]).await?;
    let nodes = net.hosts["h1"].nodes().await?;

    // What each node advertises: the port, and exactly the DNS features it serves.
    let feats = |id: &str| nodes[id].features.clone();
    ensure!(
        nodes["h1"].meshdns_port == 5353 && nodes["h2"].meshdns_port == 5353,
        "{nodes:?}"
    );
    ensure!(nodes["h3"].meshdns_port == 0);
    ensure!(
        feats("h1").contains(&(Feature::MeshDns as i32))
            && feats("h1").contains(&(Feature::ForwardMeshDns as i32))
    );
    ensure!(
        feats("h2").contains(&(Feature::MeshDns as i32))
            && !feats("h2").contains(&(Feature::ForwardMeshDns as i32))
    );
    ensure!(!feats("h3").contains(&(Feature::MeshDns as i32)));
    let st = net.hosts["h1"].status().await?;
    ensure!(st.features.contains(&(Feature::MeshDns as i32)), "{st:?}");
    // The joiners were told where mesh DNS is.
    let h1_dns = format!("{}:5353", v4(&nodes["h1"]));
    ensure!(
        net.hosts["h3"].log_text().contains(&h1_dns),
        "h3 was given {h1_dns}: {}",
        net.hosts["h3"].log_text()
    );

    // h3 (no DNS of its own) asks h1 and h2 over the mesh.
    let h3 = &net.hosts["h3"];
    let (s1, s2) = (v4(&nodes["h1"]), v6(&nodes["h2"]));
    for server in [s1.as_str(), s2.as_str()] {
        wait_for("mesh DNS through the tunnel", READY, || async {
            short(h3, server, &fqdn("h2"), "A")
                .ok()
                .filter(|a| !a.is_empty())
        })
        .await
        .with_context(|| net.logs())?;
        ensure!(short(h3, server, &fqdn("h2"), "A")? == [v4(&nodes["h2"])]);
        ensure!(short(h3, server, &fqdn("H2"), "AAAA")? == [v6(&nodes["h2"])]);
        let txt = short(h3, server, &fqdn("h2"), "TXT")?.join(" ");
        ensure!(
            txt.contains("\"id=h2\"")
                && txt.contains(&format!("primary_endpoint={}", net.hosts["h2"].ip)),
            "{txt}"
        );
        ensure!(
            txt.contains("grpc_port=") && txt.contains("meshdns_port=5353"),
            "{txt}"
        );
        let leader = short(h3, server, &format!("leader.{DOMAIN}"), "A")?;
        ensure!(
            leader == [format!("{}.", fqdn("h1")), v4(&nodes["h1"])],
            "{leader:?}"
        );
        let mut voters = short(h3, server, &format!("voters.{DOMAIN}"), "A")?;
        voters.sort();
        let mut want: Vec<String> = ["h1", "h2", "h3"]
            .iter()
            .map(|id| v4(&nodes[*id]))
            .collect();
        want.sort();
        ensure!(voters == want, "{voters:?}");
        ensure!(status(h3, server, &[&fqdn("nobody"), "A"])? == "NXDOMAIN");
        ensure!(status(h3, server, &["+tcp", &fqdn("h1"), "A"])? == "NOERROR");
        let axfr = dig(h3, server, &[DOMAIN, "AXFR"])?;
        ensure!(
            axfr.contains("Transfer failed") && !axfr.contains("\tIN\t"),
            "{axfr}"
        );
    }
    let ptr = dig(h3, &s1, &["+short", "-x", &v4(&nodes["h2"])])?;
    ensure!(ptr.trim() == format!("{}.", fqdn("h2")), "{ptr}");

    // Other names: h1 forwards to dnsmasq; h2 forwards nothing.
    ensure!(
        short(h3, &s1, "stub.example", "A")? == ["192.0.2.77"],
        "{}",
        net.logs()
    );
    ensure!(
        short(h3, &s1, "stub.example", "A")? == ["192.0.2.77"],
        "again, from the cache"
    );
    ensure!(status(h3, &s1, &["+tcp", "stub.example", "A"])? == "NOERROR");
    ensure!(status(h3, &s2, &["stub.example", "A"])? == "REFUSED");
    // A host that is not a member gets nothing from the underlay, mesh names included.
    let stranger = &net.hosts["up"];
    let underlay = net.hosts["h1"].ip.to_string();
    ensure!(status(stranger, &underlay, &[&fqdn("h2"), "A"])? == "REFUSED");
    ensure!(
        status(stranger, &underlay, &["stub.example", "A"])? == "REFUSED",
        "not an open resolver"
    );

    // Malformed packets from outside: a header alone, a question cut short, a name
    // whose compression pointer loops, 64 KiB of noise, a response. Answered with
    // FORMERR or dropped; the server keeps serving.
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let to = format!("{underlay}:{PORT}");
    let mut loopy = vec![0x11, 0x22, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    loopy.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let mut noise = vec![0x33, 0x44, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    noise.resize(65_000, 0xc0);
    let bad: [&[u8]; 5] = [
        &[0u8; 5],
        &[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'a'],
        &loopy,
        &noise,
        &[0x55, 0x66, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0],
    ];
    for b in bad {
        sock.send_to(b, &to)?;
        let mut buf = [0u8; 512];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            ensure!(n >= 12 && buf[2] & 0x80 != 0, "a reply is a DNS response");
            ensure!(buf[..2] == b[..2], "with the query's ID");
        }
    }
    ensure!(
        short(h3, &s1, &fqdn("h3"), "A")? == [v4(&nodes["h3"])],
        "still serving after the noise"
    );

    // A join is answered within one apply; a leave likewise.
    let h4 = net.add_host("h4")?;
    h4.args = vec!["--join".into(), via.clone(), "--leave-on-shutdown".into()];
    let started = Instant::now();
    h4.start()?;
    let h3 = &net.hosts["h3"];
    wait_for("h4 in mesh DNS", READY, || async {
        short(h3, &s2, &fqdn("h4"), "A")
            .ok()
            .filter(|a| a.len() == 1)
    })
    .await?;
    let joined_after = started.elapsed();
    net.host("h4").wait_ready(READY).await?;
    let removed = Instant::now();
    net.host("h4").signal_term();
    let h3 = &net.hosts["h3"];
    wait_for("h4 gone from mesh DNS", Duration::from_secs(15), || async {
        (status(h3, &s2, &[&fqdn("h4"), "A"]).ok()? == "NXDOMAIN").then_some(())
    })
    .await
    .with_context(|| net.logs())?;
    eprintln!(
        "h4 resolvable {joined_after:?} after its start; gone {:?} after SIGTERM",
        removed.elapsed()
    );
    net.host("h4").stop(Duration::from_secs(10));

    // The leader dies: leader.<domain> names the new one.
    net.host("h1").kill9();
    let h3 = &net.hosts["h3"];
    let new = wait_for(
        "a new leader in mesh DNS",
        Duration::from_secs(30),
        || async {
            let a = short(h3, &s2, &format!("leader.{DOMAIN}"), "CNAME").ok()?;
            a.first().filter(|l| !l.starts_with("h1.")).cloned()
        },
    )
    .await
    .with_context(|| net.logs())?;
    ensure!(
        new == format!("{}.", fqdn("h2")) || new == format!("{}.", fqdn("h3")),
        "{new}"
    );
    Ok(())
}

/// Removes the namespace's own /etc/netns files when dropped.
struct NetnsEtc(std::path::PathBuf);

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn use_meshdns_points_the_host_at_mesh_dns_and_puts_resolv_conf_back() -> Result<()> {
    let mut net = TestNet::new()?;
    net.bootstrap("h1", &["--meshdns-listen", ":53", "--meshdns-no-forward"])
        .await?;
    let via = net.grpc("h1");
    let h2 = net.add_host("h2")?;
    // `ip netns exec` gives the namespace /etc/netns/<ns>/resolv.conf as /etc/resolv.conf:
    // the node's and the test's view of the file, apart from the machine's.
    let etc = NetnsEtc(std::path::Path::new("/etc/netns").join(&h2.ns));
    std::fs::create_dir_all(&etc.0)?;
    let file = etc.0.join("resolv.conf");
    let original = "nameserver 192.0.2.1\nsearch corp.example\noptions timeout:1\n";
    std::fs::write(&file, original)?;
    h2.args = vec!["--join".into(), via, "--use-meshdns".into()];
    h2.start()?;
    h2.wait_ready(READY).await?;
    let nodes = net.hosts["h1"].nodes().await?;
    let h1v4 = v4(&nodes["h1"]);
    let text = std::fs::read_to_string(&file)?;
    ensure!(
        text.lines().next().is_some_and(|l| l.starts_with('#')),
        "{text}"
    );
    ensure!(
        text.contains(&format!("nameserver {h1v4}\n")) && text.contains("nameserver 192.0.2.1"),
        "{text}"
    );
    ensure!(
        text.contains("search webmesh.internal corp.example"),
        "{text}"
    );
    // The host's own resolver (glibc) finds mesh names, short ones through the search list.
    let h2 = &net.hosts["h2"];
    for name in [fqdn("h1"), "h1".into()] {
        let out = wait_for(
            &format!("getent hosts {name}"),
            Duration::from_secs(15),
            || async {
                let o = h2.exec(&["getent", "ahostsv4", &name]).ok()?;
                let s = String::from_utf8_lossy(&o.stdout).into_owned();
                s.contains(&h1v4).then_some(s)
            },
        )
        .await
        .with_context(|| net.logs())?;
        ensure!(out.contains(&h1v4), "{out}");
    }
    // A clean stop puts the file back.
    net.host("h2").stop(Duration::from_secs(10));
    ensure!(
        std::fs::read_to_string(&file)? == original,
        "restored on exit"
    );
    // A crash leaves it changed; the next start puts it back before anything else.
    net.host("h2").start()?;
    net.host("h2").wait_ready(READY).await?;
    ensure!(std::fs::read_to_string(&file)?.contains(&h1v4));
    net.host("h2").kill9();
    ensure!(
        std::fs::read_to_string(&file)?.contains(&h1v4),
        "a crash cannot restore"
    );
    net.host("h2").args.retain(|a| a != "--use-meshdns");
    net.host("h2").start()?;
    net.host("h2").wait_ready(READY).await?;
    ensure!(
        std::fs::read_to_string(&file)? == original,
        "restored after the crash"
    );
    let log = net.hosts["h2"].log_text();
    ensure!(log.contains("restored /etc/resolv.conf"), "{log}");
    // Restarted with mesh DNS on, the node's record says so (an Update on resume).
    net.host("h2").stop(Duration::from_secs(10));
    net.host("h2")
        .args
        .extend(["--meshdns-listen".to_string(), ":5353".into()]);
    net.host("h2").start()?;
    net.host("h2").wait_ready(READY).await?;
    let h1 = &net.hosts["h1"];
    wait_for(
        "h2's record to advertise mesh DNS",
        Duration::from_secs(30),
        || async {
            let n = h1.nodes().await.ok()?.remove("h2")?;
            (n.meshdns_port == 5353 && n.features.contains(&(Feature::MeshDns as i32)))
                .then_some(())
        },
    )
    .await
    .with_context(|| net.logs())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn use_meshdns_goes_through_systemd_resolved_when_it_runs() -> Result<()> {
    let mut net = TestNet::new()?;
    net.bootstrap("h1", &["--meshdns-listen", ":5353", "--meshdns-no-forward"])
        .await?;
    let via = net.grpc("h1");
    // A resolvectl that answers and writes down what it is asked: resolved, as far as
    // the node can tell, without touching this machine's resolver.
    let fake = net.path().join("fake-bin");
    std::fs::create_dir_all(&fake)?;
    let calls = net.path().join("resolvectl.calls");
    let script = fake.join("resolvectl");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$*\" >> {}\n", calls.display()),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let h2 = net.add_host("h2")?;
    let etc = NetnsEtc(std::path::Path::new("/etc/netns").join(&h2.ns));
    std::fs::create_dir_all(&etc.0)?;
    let file = etc.0.join("resolv.conf");
    std::fs::write(&file, "nameserver 192.0.2.1\n")?;
    h2.args = vec!["--join".into(), via, "--use-meshdns".into()];
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    h2.env.push(("PATH".into(), path));
    h2.start()?;
    h2.wait_ready(READY).await?;
    let nodes = net.hosts["h1"].nodes().await?;
    let iface = net.hosts["h2"].ifname.clone();
    let said = std::fs::read_to_string(&calls)?;
    for want in [
        format!(
            "dns {iface} {}:5353 [{}]:5353",
            v4(&nodes["h1"]),
            v6(&nodes["h1"])
        ),
        format!("domain {iface} ~{DOMAIN}"),
        format!("default-route {iface} false"),
    ] {
        ensure!(
            said.lines().any(|l| l == want),
            "resolvectl {want:?} in:\n{said}"
        );
    }
    ensure!(
        std::fs::read_to_string(&file)? == "nameserver 192.0.2.1\n",
        "resolv.conf left alone"
    );
    net.host("h2").stop(Duration::from_secs(10));
    let said = std::fs::read_to_string(&calls)?;
    ensure!(
        said.lines().any(|l| l == format!("revert {iface}")),
        "{said}"
    );
    Ok(())
}
