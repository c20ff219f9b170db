//! Printing: a table, or the object as JSON or YAML.

use serde::Serialize;
use webmesh_api::v1::{Rule, RuleResource, RuleVerb, Subject, SubjectType};
use webmesh_client::names::{resource_name, subject_type_name, verb_name};

use crate::cli::Output;
use crate::context::{Fail, local};

/// Prints `v` as `out` asks; a table comes from `table` (its first row the header).
pub fn print<T: Serialize>(
    out: Output,
    v: &T,
    table: impl FnOnce() -> Vec<Vec<String>>,
) -> Result<(), Fail> {
    match out {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(v).map_err(|e| local(e.to_string()))?
        ),
        Output::Yaml => print!(
            "{}",
            serde_norway::to_string(v).map_err(|e| local(e.to_string()))?
        ),
        Output::Table => {
            let rows = table();
            let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
            let widths: Vec<usize> = (0..cols)
                .map(|c| {
                    rows.iter()
                        .filter_map(|r| r.get(c))
                        .map(String::len)
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for r in rows {
                let line: Vec<String> = r
                    .iter()
                    .enumerate()
                    .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
                    .collect();
                println!("{}", line.join("  ").trim_end());
            }
        }
    }
    Ok(())
}

pub fn subjects_text(s: &[Subject]) -> String {
    s.iter()
        .map(|s| {
            let ty = SubjectType::try_from(s.r#type).unwrap_or(SubjectType::SubjectUnknown);
            format!("{}:{}", subject_type_name(ty), s.name)
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub fn list_or_star(v: &[String]) -> String {
    if v.is_empty() {
        "*".into()
    } else {
        v.join(",")
    }
}

pub fn rules_text(rules: &[Rule]) -> String {
    rules
        .iter()
        .map(|r| {
            let res: Vec<&str> = r
                .resources
                .iter()
                .map(|x| {
                    resource_name(
                        RuleResource::try_from(*x).unwrap_or(RuleResource::ResourceUnknown),
                    )
                })
                .collect();
            let verbs: Vec<&str> = r
                .verbs
                .iter()
                .map(|v| verb_name(RuleVerb::try_from(*v).unwrap_or(RuleVerb::VerbUnknown)))
                .collect();
            let mut t = format!("{} {}", verbs.join("/"), res.join(","));
            if !r.resource_names.is_empty() {
                t.push_str(&format!(" [{}]", r.resource_names.join(",")));
            }
            t
        })
        .collect::<Vec<_>>()
        .join("; ")
}
