//! `auth-basic`: authenticates callers by username and password against an htpasswd
//! file of bcrypt hashes (`htpasswd -B`, or `auth-basic hash PASSWORD`). The file is
//! read again whenever it changes.
//!
//! Config: `htpasswd` (path, required). Headers: `x-webmesh-basic-auth-username`,
//! `x-webmesh-basic-auth-password`. The identity is the username.
//!
//! Against guessing: bcrypt runs on the blocking pool (a slow hash never stalls the
//! plugin's other calls); an unknown user costs the same bcrypt as a known one (no
//! timing oracle for user names); and failures are limited per user and per source
//! address (the node's `x-webmesh-remote-addr`): past the limit, attempts are refused
//! without running bcrypt until the window passes.

mod basic;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("hash") {
        let usage = "usage: auth-basic hash [--cost 4-31] PASSWORD";
        let (cost, password) = match &args[1..] {
            [flag, cost, pw] if flag == "--cost" => (cost.parse().ok(), pw),
            [pw] => (Some(bcrypt::DEFAULT_COST), pw),
            _ => (None, &String::new()),
        };
        let Some(cost) = cost.filter(|c| (4..=31).contains(c)) else {
            eprintln!("{usage}");
            return std::process::ExitCode::from(2);
        };
        return match bcrypt::hash(password, cost) {
            Ok(h) => {
                println!("{h}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    webmesh_plugin_sdk::serve(basic::Basic::default())
}
