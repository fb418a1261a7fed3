//! The code stays in pieces a reader can hold: no type has more than 30 methods over all its
//! `impl` blocks (the gate coordinates owners, it does not own everything), and no function
//! outside tests is longer than 60 lines. This test reads the core's and the glue's sources.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::sources;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

const MAX_METHODS: usize = 30;
const MAX_FN_LINES: usize = 60;

/// A file's code before its `#[cfg(test)]` module; none for test-only files.
fn production_code(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    if name.contains("tests") || name == "fake.rs" {
        return None;
    }
    let text = fs::read_to_string(path).ok()?;
    Some(match text.find("#[cfg(test)]") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    })
}

/// The type an `impl` line is for (`impl Gate {`, `impl Trait for Type {`).
fn impl_type(line: &str) -> Option<String> {
    let rest = line.strip_prefix("impl")?;
    if !line.trim_end().ends_with('{') {
        return None;
    }
    let rest = rest.trim_start_matches(|c: char| c == '<' || c.is_whitespace());
    let head = rest.trim_end_matches('{').trim();
    let ty = head.rsplit(" for ").next()?;
    let ty: String = ty
        .trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!ty.is_empty()).then_some(ty)
}

fn is_fn(line: &str) -> Option<(usize, &str)> {
    let indent = line.len() - line.trim_start().len();
    let rest = line.trim_start();
    let rest = rest
        .strip_prefix("pub(super) ")
        .or_else(|| rest.strip_prefix("pub(crate) "))
        .or_else(|| rest.strip_prefix("pub "))
        .unwrap_or(rest);
    let rest = rest.strip_prefix("fn ")?;
    Some((indent, rest.split(['(', '<']).next().unwrap_or(rest)))
}

/// A function without a body (`fn f(..) -> u32;` in an `extern` block): its signature ends
/// with `;` before any `{`.
fn is_declaration(from: &[&str]) -> bool {
    for line in from {
        let code = line.split("//").next().unwrap_or(line);
        match (code.find('{'), code.find(';')) {
            (Some(_), None) => return false,
            (None, Some(_)) => return true,
            (Some(b), Some(s)) => return s < b,
            (None, None) => {}
        }
    }
    false
}

#[test]
fn no_type_has_more_than_30_methods_and_no_function_more_than_60_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("../src"), &mut files);
    let mut methods: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(code) = production_code(file) else {
            continue;
        };
        let lines: Vec<&str> = code.lines().collect();
        let mut current: Option<String> = None;
        for (i, line) in lines.iter().enumerate() {
            if let Some(ty) = impl_type(line) {
                current = Some(ty);
                continue;
            }
            if *line == "}" {
                current = None;
            }
            let Some((indent, name)) = is_fn(line) else {
                continue;
            };
            if let (Some(ty), 4) = (&current, indent) {
                *methods.entry(ty.clone()).or_default() += 1;
            }
            if is_declaration(&lines[i..]) {
                continue;
            }
            let close = format!("{}}}", " ".repeat(indent));
            let end = lines[i..].iter().position(|l| *l == close).map(|n| i + n);
            if let Some(end) = end.filter(|end| end - i + 1 > MAX_FN_LINES) {
                wrong.push(format!(
                    "{}: fn {name} is {} lines",
                    file.display(),
                    end - i + 1
                ));
            }
        }
    }
    for (ty, n) in &methods {
        if *n > MAX_METHODS {
            wrong.push(format!("{ty} has {n} methods"));
        }
    }
    assert!(
        methods.contains_key("Gate"),
        "the gate was not found: {methods:?}"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
