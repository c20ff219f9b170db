//! A network of the caller's own for tests and benchmarks of the ICE and TURN sockets:
//! a new network namespace for the calling thread (and the threads it starts after),
//! `lo` up with the given addresses. Needs root.

use std::process::Command;

/// Moves the calling thread into a new network namespace with `addrs` (CIDRs) on `lo`.
pub fn private_network(addrs: &[&str]) -> Result<(), String> {
    // SAFETY: unshare changes only the calling thread's namespaces; threads it starts
    // afterwards inherit them.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {} (this needs root)",
            std::io::Error::last_os_error()
        ));
    }
    let ip = |args: &[&str]| -> Result<(), String> {
        let ok = Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(())
            .ok_or_else(|| format!("ip {}", args.join(" ")))
    };
    ip(&["link", "set", "lo", "up"])?;
    for a in addrs {
        ip(&["addr", "add", a, "dev", "lo"])?;
    }
    Ok(())
}
