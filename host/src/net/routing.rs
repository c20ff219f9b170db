//! Kernel routing the WireGuard library does not do for us: removing routes that are
//! no longer advertised, default routes through the mesh (exit nodes) with policy
//! routing as wg-quick does it, and masquerading on the exit node. Thin: `ip` and `nft`.

use std::process::Command;

use super::wireguard::FWMARK;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Brings `iface` up.
pub fn link_up(iface: &str) -> Result<(), String> {
    ip(&["link", "set", "dev", iface, "up"])
}

/// Drops the route for `cidr` through `iface` (it may already be gone).
pub fn remove_route(iface: &str, cidr: &str) -> Result<(), String> {
    match ip(&["route", "del", cidr, "dev", iface]) {
        Err(e) if e.contains("No such process") => Ok(()),
        other => other,
    }
}

/// Sends everything without a more specific route through `iface` (or stops): a
/// default route in a table of its own, used by packets that are not WireGuard's own
/// (those carry the mark), while the main table still answers for every route more
/// specific than a default one.
pub fn exit_route(iface: &str, v6: bool, on: bool) -> Result<(), String> {
    let fam = if v6 { "-6" } else { "-4" };
    let table = FWMARK.to_string();
    let mark = FWMARK.to_string();
    // Rules are not idempotent: clear ours first.
    let _ = ip(&[fam, "rule", "del", "not", "fwmark", &mark, "table", &table]);
    let _ = ip(&[
        fam,
        "rule",
        "del",
        "table",
        "main",
        "suppress_prefixlength",
        "0",
    ]);
    let _ = ip(&[fam, "route", "flush", "table", &table]);
    if !on {
        return Ok(());
    }
    ip(&[
        fam, "route", "replace", "default", "dev", iface, "table", &table,
    ])?;
    ip(&[
        fam, "rule", "add", "not", "fwmark", &mark, "table", &table, "priority", "32000",
    ])?;
    ip(&[
        fam,
        "rule",
        "add",
        "table",
        "main",
        "suppress_prefixlength",
        "0",
        "priority",
        "31999",
    ])?;
    if !v6 {
        // Replies to marked packets must pass reverse-path checks.
        std::fs::write("/proc/sys/net/ipv4/conf/all/src_valid_mark", "1")
            .map_err(|e| format!("src_valid_mark: {e}"))?;
    }
    Ok(())
}

/// The exit node's masquerade: traffic from the mesh leaving through another interface
/// takes this node's address there.
pub fn masquerade(iface: &str, on: bool) -> Result<(), String> {
    let table = format!("{}_nat", super::super::mesh::filter::table_name(iface));
    let mut script = format!("table inet {table}\ndelete table inet {table}\n");
    if on {
        script.push_str(&format!(
            "table inet {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    iifname \"{iface}\" oifname != \"{iface}\" masquerade\n  }}\n}}\n"
        ));
    }
    nft(&script)
}

/// Whether `nft` runs here.
pub fn nft_available() -> bool {
    Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs an `nft -f -` script.
pub fn nft(script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
