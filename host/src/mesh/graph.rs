//! The mesh graph as Graphviz DOT (pure): what `GetMeshGraph` returns and
//! `wmctl get graph` draws.

use webmesh_api::v1::MeshEdge;

/// DOT for an undirected graph of `nodes` and `edges`, in the order given. Node IDs are
/// validated names (letters, digits, `.`, `_`, `-`), but quoting keeps any string safe.
pub fn dot(nodes: &[String], edges: &[MeshEdge]) -> String {
    fn q(s: &str) -> String {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
    let mut out = String::from("graph mesh {\n  node [shape=box, style=rounded];\n");
    for n in nodes {
        out.push_str(&format!("  {};\n", q(n)));
    }
    for e in edges {
        let mut attrs = vec![format!("weight={}", e.weight.max(0))];
        if e.weight != 0 {
            attrs.push(format!("label={}", q(&e.weight.to_string())));
        }
        let mut extra: Vec<_> = e.attributes.iter().collect();
        extra.sort();
        if !extra.is_empty() {
            let text = extra
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            attrs.push(format!("tooltip={}", q(&text)));
        }
        out.push_str(&format!(
            "  {} -- {} [{}];\n",
            q(&e.source),
            q(&e.target),
            attrs.join(", ")
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nodes_and_weighted_edges() {
        let edges = vec![
            MeshEdge {
                source: "a".into(),
                target: "b".into(),
                weight: 0,
                attributes: Default::default(),
            },
            MeshEdge {
                source: "b".into(),
                target: "c\"x".into(),
                weight: 7,
                attributes: [("ice".to_string(), "true".to_string())].into(),
            },
        ];
        let d = dot(&["a".into(), "b".into(), "c\"x".into()], &edges);
        assert!(d.starts_with("graph mesh {\n"), "{d}");
        assert!(d.contains("  \"a\" -- \"b\" [weight=0];\n"), "{d}");
        assert!(
            d.contains("  \"b\" -- \"c\\\"x\" [weight=7, label=\"7\", tooltip=\"ice=true\"];\n"),
            "{d}"
        );
        assert!(d.ends_with("}\n"));
    }
}
