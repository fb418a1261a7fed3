//! No request, IdP answer or configuration may reach a proxy-wasm SDK helper that panics on
//! what it reads: the SDK's header map getters unwrap a UTF-8 conversion of every header name
//! (proxy-wasm 0.2.5, `hostcalls::get_map` and `get_map_bytes`), its trait helpers
//! (`get_http_request_header(s)`, ...) go through them, and its other host calls panic on a status
//! they do not expect (a full shared-data zone, ...). The filter makes its host calls through its
//! own `abi` wrappers, statuses as numbers; only `dispatch_http_call` goes through the SDK, whose
//! dispatcher must know the call's token. This test fails when another SDK helper is called.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

/// Calls that reach `String::from_utf8(..).unwrap()` on a header name or value.
const PANICKING: &[&str] = &[
    "get_map_bytes",
    "hostcalls::get_map(",
    "get_map_value",
    "get_http_request_header",
    "get_http_response_header",
    "get_http_call_response_header",
    "get_http_request_trailer",
    "get_http_response_trailer",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_sdk_helper_that_unwraps_header_bytes_is_called() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("filter.rs")),
        "the glue was not found"
    );
    let mut found = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let sdk_call = code
                .match_indices("hostcalls::")
                .any(|(i, _)| !code[i..].starts_with("hostcalls::dispatch_http_call"));
            if sdk_call || PANICKING.iter().any(|call| code.contains(call)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "SDK helpers that panic on header bytes that are not UTF-8 (use the abi wrappers):\n{}",
        found.join("\n")
    );
}
