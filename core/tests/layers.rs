//! The core's modules form layers, and no module uses one above it: leaf parsers and types at
//! the bottom, then the configuration, the Okta protocol, cache and state, and the gate on top
//! (the glue, in the filter crate, is above them all). This test reads the sources and fails on
//! a `crate::<module>` path that points up a layer, or sideways into a cycle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::sources;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Each top-level module's layer, lowest first. A module may use modules of its own layer or
/// below, as long as that makes no cycle.
const LAYERS: &[&[&str]] = &[
    // leaf parsers and types
    &[
        "url",
        "header_map",
        "credentials",
        "verdict",
        "metrics",
        "budget",
        "throttle",
        "inflight",
        "jwks",
        "jwt",
        "registrations",
        "signatures",
    ],
    // configuration
    &["config"],
    // the Okta protocol, and what a verdict becomes upstream
    &["okta", "upstream"],
    // cache and state
    &["cache", "local"],
    // the request gate
    &["gate"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a source file belongs to (`gate/flow.rs` is `gate`; `jwt_tests.rs` is
/// `jwt`'s test module).
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    let name = first.trim_end_matches(".rs");
    name.strip_suffix("_tests").unwrap_or(name).to_string()
}

/// `crate::x` paths in code, comments left out.
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn no_module_uses_one_above_it_and_there_is_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(file.strip_prefix(&src).unwrap());
        if module == "lib" {
            continue;
        }
        let used = uses(&fs::read_to_string(file).unwrap());
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(used.into_iter().filter(|u| *u != module));
    }
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        let Some(mine) = layer_of(module) else {
            wrong.push(format!("{module}: in no layer (add it to LAYERS)"));
            continue;
        };
        for u in used {
            match layer_of(u) {
                Some(theirs) if theirs > mine => wrong.push(format!("{module} uses {u}, above it")),
                None => wrong.push(format!("{module} uses {u}, in no layer")),
                _ => {}
            }
        }
    }
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = graph[start].iter().collect();
        while let Some(m) = stack.pop() {
            if m == start {
                wrong.push(format!("{start} is in an import cycle"));
                break;
            }
            if seen.insert(m.clone()) {
                stack.extend(graph.get(m).into_iter().flatten());
            }
        }
    }
    assert!(wrong.is_empty(), "layers broken:\n{}", wrong.join("\n"));
    assert!(graph.len() >= 15, "the sources were not found: {graph:?}");
}
