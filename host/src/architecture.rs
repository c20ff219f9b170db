//! The module graph, checked: which top-level modules of the node each one uses (its
//! `crate::` paths), that this graph has no cycle, and that ARCHITECTURE.md shows
//! exactly this graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MODULES: &[&str] = &[
    "version",
    "config",
    "mesh",
    "store",
    "trust",
    "turn",
    "ice",
    "raft",
    "net",
    "tls",
    "plugins",
    "services",
    "node",
    "fuzzing",
    "dns",
    "metrics",
    "datachannel",
    "campfire",
];

fn sources(p: &Path) -> Vec<PathBuf> {
    if p.is_file() {
        return vec![p.to_path_buf()];
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        out.extend(sources(&e.path()));
    }
    out
}

/// Module → the other top-level modules its code names.
fn graph() -> BTreeMap<&'static str, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g = BTreeMap::new();
    for m in MODULES {
        let dir = src.join(m);
        let path = if dir.is_dir() {
            dir
        } else {
            src.join(format!("{m}.rs"))
        };
        let mut deps = BTreeSet::new();
        for f in sources(&path) {
            let text = std::fs::read_to_string(&f).expect("source");
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + 7..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name != *m && MODULES.contains(&name.as_str()) {
                    deps.insert(name);
                }
            }
        }
        g.insert(*m, deps);
    }
    g
}

#[test]
fn every_module_of_the_crate_is_in_the_graph() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("lib.rs");
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .collect();
    let listed: BTreeSet<&str> = MODULES.iter().copied().collect();
    assert_eq!(
        declared, listed,
        "lib.rs's modules and the checked list differ"
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph();
    // Kahn: peel off modules with no remaining dependencies.
    let mut left = g.clone();
    while !left.is_empty() {
        let free: Vec<&str> = left
            .iter()
            .filter(|(_, d)| d.iter().all(|x| !left.contains_key(x.as_str())))
            .map(|(m, _)| *m)
            .collect();
        assert!(!free.is_empty(), "a cycle among {:?}", left.keys());
        for m in free {
            left.remove(m);
        }
    }
}

#[test]
fn architecture_md_shows_the_module_graph_as_it_is() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md"))
            .expect("ARCHITECTURE.md");
    let start = doc
        .find("<!-- module graph -->")
        .expect("the module graph block");
    let block = &doc[start..];
    let block = &block[..block.find("```\n\n").expect("end of the block")];
    let mut shown = BTreeMap::new();
    for line in block.lines().filter(|l| l.contains(" -> ")) {
        let (m, deps) = line.split_once(" -> ").expect("m -> deps");
        let deps: BTreeSet<String> = deps
            .split(',')
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty() && d != "(nothing)")
            .collect();
        shown.insert(m.trim().to_string(), deps);
    }
    let actual: BTreeMap<String, BTreeSet<String>> = graph()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let render = |g: &BTreeMap<String, BTreeSet<String>>| {
        g.iter()
            .map(|(m, d)| {
                let d: Vec<&str> = d.iter().map(String::as_str).collect();
                format!(
                    "{m:<9}-> {}",
                    if d.is_empty() {
                        "(nothing)".into()
                    } else {
                        d.join(", ")
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        shown,
        actual,
        "ARCHITECTURE.md's module graph is out of date; it is now:\n{}",
        render(&actual)
    );
}
