//! Every filter configuration the repository ships is parsed by the filter's own code
//! ([`Config::from_json`], what `on_configure` runs), so that no example drifts from the rules.
//!
//! The whole tree is walked (build output, tools and fuzzing data aside) and configurations are
//! taken from:
//! - YAML (`*.yaml`, `*.yml`): Envoy's Wasm filter (`envoy.extensions.filters.http.wasm.v3.Wasm`
//!   loading `okta_dcr_auth.wasm`: its `configuration`, a `google.protobuf.StringValue`), Kong's
//!   `filter_chains` and `plugins` entries named `okta_dcr_auth` (their `config`: a string, given to
//!   the filter as is, or a map, which Kong serializes to JSON), Istio's `WasmPlugin` whose image
//!   is ours (its `pluginConfig`, a map Istio hands over as JSON), and Envoy Gateway's
//!   `EnvoyExtensionPolicy` `wasm[]` entries whose code is ours (their `config`, likewise);
//! - JSON files whose top-level object has an `issuer` or `idp_upstream` field;
//! - Markdown: fenced `yaml` blocks as above, and fenced `json` blocks that are marked
//!   (```` ```json okta-dcr-auth ````) or have an `issuer` or `idp_upstream` field;
//! - templates (`NAME.yaml.tmpl`, ...), as their inner type, once their `${VAR}` placeholders are
//!   given sample values.
//!
//! Hidden folders (`.git`, `.venv`, tools' caches) and build output are not walked. The test fails
//! when a configuration does not parse, when a YAML file under `envoy/`, `kong/` or `deploy/` holds
//! none (its layout changed under the extractor), or when nothing is found at all.
//!
//! Every configuration that parses must also pass the JSON Schema Kong (3.6+) validates filter
//! configurations with, `kong/okta_dcr_auth.meta.json`; and configurations the filter refuses
//! must fail it ([`the_kong_schema_refuses_what_the_filter_refuses`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use okta_dcr_auth_core::config::Config;
use serde::Deserialize;
use serde_norway::Value;

const ENVOY_WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
/// The module an Envoy Wasm filter must load to be ours.
const WASM_FILE: &str = "okta_dcr_auth.wasm";
/// The filter's name on Kong: its file name in `wasm_filters_path`, without `.wasm`.
const KONG_FILTER: &str = "okta_dcr_auth";
/// Folders whose files must each hold at least one filter configuration.
const CONFIG_DIRS: &[&str] = &["envoy", "kong", "deploy"];
/// Text in an Istio `WasmPlugin` `url` or an Envoy Gateway Wasm `code` URL that makes it ours
/// (the image, or the module's file name).
const IMAGE_NAMES: &[&str] = &["okta-dcr-auth", "okta_dcr_auth"];
/// Folders never walked, at any depth, besides hidden ones: build output, fuzzing data.
const SKIPPED_DIRS: &[&str] = &[
    "target",
    "node_modules",
    "corpus",
    "artifacts",
    "regressions",
];
/// Text that makes a block or file ours even when it does not parse.
const MARKERS: &[&str] = &["okta_dcr_auth", "okta-dcr-auth", "envoy.filters.http.wasm"];
/// Sample values for template placeholders (`${NAME}`); `${NAME:-default}` takes its default.
const SAMPLES: &[(&str, &str)] = &[
    (
        "OKTA_ISSUER",
        "https://dev-12345678.okta.com/oauth2/default",
    ),
    ("OKTA_HOST", "dev-12345678.okta.com"),
    (
        "OKTA_INTROSPECTION_CLIENT_ID",
        "0oaEXAMPLEintrospectionClient",
    ),
    (
        "OKTA_INTROSPECTION_CLIENT_SECRET",
        "EXAMPLE-introspection-client-secret",
    ),
    ("OKTA_SCOPES", "api:read"),
    ("IDP_UPSTREAM", "okta"),
    ("PORT", "8080"),
    ("ADMIN_PORT", "9901"),
];

/// The VM environment the shipped configurations expect (`introspection_client_secret_env`).
fn sample_env(name: &str) -> Option<String> {
    (name == "OKTA_INTROSPECTION_CLIENT_SECRET")
        .then(|| "EXAMPLE-introspection-client-secret".into())
}

/// One filter configuration found in a file: where, and its bytes (or why there are none).
#[derive(Debug)]
struct Found {
    origin: String,
    bytes: Result<Vec<u8>, String>,
}

/// What checking one file gave.
#[derive(Debug, Default)]
struct Checked {
    parsed: Vec<String>,
    failures: Vec<String>,
}

impl Checked {
    fn add(&mut self, found: Vec<Found>) {
        for f in found {
            match f.bytes {
                Err(why) => self.failures.push(format!("{}: {why}", f.origin)),
                Ok(bytes) => match Config::from_json_with_env(&bytes, &sample_env) {
                    Ok(_) => match schema_errors(&bytes) {
                        None => self.parsed.push(f.origin),
                        Some(why) => self.failures.push(format!(
                            "{}: parses, but Kong's schema (kong/okta_dcr_auth.meta.json) refuses it: {why}",
                            f.origin
                        )),
                    },
                    Err(e) => self
                        .failures
                        .push(format!("{}: configuration refused: {e}", f.origin)),
                },
            }
        }
    }
}

/// The `config_schema` of `kong/okta_dcr_auth.meta.json`, compiled once.
fn kong_schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = root().join("kong/okta_dcr_auth.meta.json");
        let text = fs::read_to_string(&path).unwrap();
        let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
        jsonschema::draft7::new(&meta["config_schema"]).unwrap()
    })
}

/// Why the schema refuses this configuration (None when it accepts it, or it is not JSON:
/// Config::from_json reports that).
fn schema_errors(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let errors: Vec<String> = kong_schema()
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if !name.starts_with('.') && !SKIPPED_DIRS.contains(&name.as_str()) {
                walk(&path, out);
            }
        } else if kind.is_file() && kind_of(&name).is_some() {
            out.push(path);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Yaml,
    Json,
    Markdown,
}

/// The kind of a file by its name; a template (`x.yaml.tmpl`) is read as its inner kind.
fn kind_of(name: &str) -> Option<Kind> {
    let name = name.strip_suffix(".tmpl").unwrap_or(name);
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    match ext.as_str() {
        "yaml" | "yml" => Some(Kind::Yaml),
        "json" => Some(Kind::Json),
        "md" => Some(Kind::Markdown),
        _ => None,
    }
}

/// Gives `${NAME}` and `${NAME:-default}` their sample or default value; an unknown name with no
/// default is an error, so that a new template comes with a sample value here.
fn substitute(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "an unterminated ${ placeholder".to_string())?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let value = SAMPLES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .or(default)
            .ok_or_else(|| {
                format!("placeholder ${{{name}}} has no sample value (add one to SAMPLES in tests/examples.rs)")
            })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks one file's text, `origin` naming it in messages. A template's placeholders get sample
/// values first; `must_parse`: a YAML file that does not parse is a failure even without a marker.
fn check_text(origin: &str, kind: Kind, text: &str, must_parse: bool) -> Checked {
    let mut checked = Checked::default();
    let text = if origin.ends_with(".tmpl") {
        match substitute(text) {
            Ok(t) => t,
            Err(why) => {
                checked.failures.push(format!("{origin}: {why}"));
                return checked;
            }
        }
    } else {
        text.to_string()
    };
    match kind {
        Kind::Yaml => match yaml_documents(&text) {
            Ok(docs) => {
                for doc in &docs {
                    checked.add(configs_in_yaml(origin, doc));
                }
            }
            Err(e) if must_parse || MARKERS.iter().any(|m| text.contains(m)) => checked
                .failures
                .push(format!("{origin}: not valid YAML: {e}")),
            Err(_) => {}
        },
        Kind::Json => {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                if looks_like_filter_config(&value) {
                    checked.add(vec![Found {
                        origin: origin.to_string(),
                        bytes: Ok(text.into_bytes()),
                    }]);
                }
            }
        }
        Kind::Markdown => {
            for block in fenced_blocks(&text) {
                check_block(origin, &block, &mut checked);
            }
        }
    }
    checked
}

fn yaml_documents(text: &str) -> Result<Vec<Value>, serde_norway::Error> {
    serde_norway::Deserializer::from_str(text)
        .map(Value::deserialize)
        .collect()
}

fn looks_like_filter_config(value: &serde_json::Value) -> bool {
    value
        .as_object()
        .is_some_and(|o| o.contains_key("issuer") || o.contains_key("idp_upstream"))
}

/// Walks a YAML document for Envoy Wasm filters and Kong filter entries that are ours, and reads
/// it as an Istio `WasmPlugin` or an Envoy Gateway `EnvoyExtensionPolicy` when it is one.
fn configs_in_yaml(origin: &str, doc: &Value) -> Vec<Found> {
    let mut found = Vec::new();
    kubernetes_configs(origin, doc, &mut found);
    visit(origin, doc, &mut found);
    found
}

fn is_ours(url: Option<&str>) -> bool {
    url.is_some_and(|u| IMAGE_NAMES.iter().any(|n| u.contains(n)))
}

/// A Kubernetes object's filter configurations: an Istio `WasmPlugin`'s `spec.pluginConfig` when
/// its `spec.url` is our image; each Envoy Gateway `EnvoyExtensionPolicy` `spec.wasm[]` entry's
/// `config` when its code (`code.image.url` or `code.http.url`) is ours. Both control planes
/// serialize the map to JSON for the filter; a missing or non-map configuration is a failure.
fn kubernetes_configs(origin: &str, doc: &Value, found: &mut Vec<Found>) {
    let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = doc
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let spec = doc.get("spec");
    let map_config = |config: Option<&Value>, field: &str| match config {
        Some(map @ Value::Mapping(_)) => {
            serde_json::to_vec(map).map_err(|e| format!("`{field}` does not convert to JSON: {e}"))
        }
        None | Some(Value::Null) => Err(format!("no `{field}`: the filter would get none")),
        Some(_) => Err(format!("`{field}` is not a map")),
    };
    if api.starts_with("extensions.istio.io/") && kind == "WasmPlugin" {
        if is_ours(spec.and_then(|s| s.get("url")).and_then(Value::as_str)) {
            found.push(Found {
                origin: format!("{origin} (Istio WasmPlugin \"{name}\")"),
                bytes: map_config(spec.and_then(|s| s.get("pluginConfig")), "pluginConfig"),
            });
        }
    } else if api.starts_with("gateway.envoyproxy.io/") && kind == "EnvoyExtensionPolicy" {
        let wasms = spec
            .and_then(|s| s.get("wasm"))
            .and_then(Value::as_sequence);
        for (i, wasm) in wasms.into_iter().flatten().enumerate() {
            let code = wasm.get("code");
            let url = ["image", "http"]
                .iter()
                .find_map(|k| code.and_then(|c| c.get(*k)).and_then(|s| s.get("url")))
                .and_then(Value::as_str);
            if is_ours(url) {
                found.push(Found {
                    origin: format!(
                        "{origin} (Envoy Gateway EnvoyExtensionPolicy \"{name}\", wasm[{i}])"
                    ),
                    bytes: map_config(wasm.get("config"), "config"),
                });
            }
        }
    }
}

fn visit(origin: &str, value: &Value, found: &mut Vec<Found>) {
    match value {
        Value::Mapping(map) => {
            if map.get("@type").and_then(Value::as_str) == Some(ENVOY_WASM_TYPE) {
                if let Some(f) = envoy_config(origin, value) {
                    found.push(f);
                }
            }
            for key in ["filter_chains", "plugins"] {
                if let Some(Value::Sequence(entries)) = map.get(key) {
                    kong_configs(origin, key, entries, found);
                }
            }
            for (_, v) in map {
                visit(origin, v, found);
            }
        }
        Value::Sequence(items) => {
            for v in items {
                visit(origin, v, found);
            }
        }
        Value::Tagged(tagged) => visit(origin, &tagged.value, found),
        _ => {}
    }
}

/// The `configuration` of an Envoy Wasm filter, `None` when it loads another module.
fn envoy_config(origin: &str, wasm: &Value) -> Option<Found> {
    let config = wasm.get("config");
    let filename = config
        .and_then(|c| c.get("vm_config"))
        .and_then(|v| v.get("code"))
        .and_then(|c| c.get("local"))
        .and_then(|l| l.get("filename"))
        .and_then(Value::as_str);
    if filename.is_some_and(|f| !f.ends_with(WASM_FILE)) {
        return None;
    }
    let name = config
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let origin = format!("{origin} (Envoy Wasm filter \"{name}\")");
    let bytes = match config.and_then(|c| c.get("configuration")) {
        None => Err("the Wasm filter has no configuration".to_string()),
        Some(conf) => match conf.get("@type").and_then(Value::as_str) {
            Some(STRING_VALUE_TYPE) => match conf.get("value") {
                Some(Value::String(s)) => Ok(s.clone().into_bytes()),
                _ => Err("the StringValue has no string `value`".to_string()),
            },
            other => Err(format!(
                "configuration of type {other:?}: the filter reads JSON from a {STRING_VALUE_TYPE}"
            )),
        },
    };
    Some(Found { origin, bytes })
}

/// Kong's entries named `okta_dcr_auth` in `filter_chains[].filters[]` or `plugins[]`.
fn kong_configs(origin: &str, key: &str, entries: &[Value], found: &mut Vec<Found>) {
    let filters: Vec<(String, &Value)> = if key == "filter_chains" {
        entries
            .iter()
            .filter_map(|chain| {
                let chain_name = chain.get("name").and_then(Value::as_str).unwrap_or("?");
                let filters = chain.get("filters")?.as_sequence()?;
                Some(
                    filters
                        .iter()
                        .map(move |f| (format!("filter chain \"{chain_name}\""), f)),
                )
            })
            .flatten()
            .collect()
    } else {
        entries.iter().map(|p| ("plugins".to_string(), p)).collect()
    };
    for (place, filter) in filters {
        if filter.get("name").and_then(Value::as_str) != Some(KONG_FILTER) {
            continue;
        }
        let origin = format!("{origin} (Kong {place}, filter {KONG_FILTER})");
        let bytes = match filter.get("config") {
            None | Some(Value::Null) => Err("the filter has no `config`".to_string()),
            Some(Value::String(s)) => Ok(s.clone().into_bytes()),
            Some(map @ Value::Mapping(_)) => kong_map_config(map),
            Some(_) => Err("`config` is neither a JSON string nor a map".to_string()),
        };
        found.push(Found { origin, bytes });
    }
}

/// A map `config` as Kong hands it over: serialized to JSON. Kong's JSON encoder (lua-cjson) may
/// write an empty list as `{}`, which the filter would refuse, so empty lists are refused here.
fn kong_map_config(map: &Value) -> Result<Vec<u8>, String> {
    fn has_empty_list(v: &Value) -> bool {
        match v {
            Value::Sequence(s) => s.is_empty() || s.iter().any(has_empty_list),
            Value::Mapping(m) => m.iter().any(|(_, v)| has_empty_list(v)),
            Value::Tagged(t) => has_empty_list(&t.value),
            _ => false,
        }
    }
    if has_empty_list(map) {
        return Err(
            "an empty list in a map `config` may reach the filter as `{}` \
                    (Kong's JSON encoder): leave the field out, or give `config` as a JSON string"
                .to_string(),
        );
    }
    serde_json::to_vec(map).map_err(|e| format!("`config` does not convert to JSON: {e}"))
}

#[derive(Debug)]
struct Block {
    line: usize,
    info: String,
    text: String,
}

/// Fenced code blocks (``` or ~~~) of a Markdown text.
fn fenced_blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, Block)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                for fence in ["```", "~~~"] {
                    if let Some(info) = trimmed.strip_prefix(fence) {
                        let marker_len = fence.len()
                            + info.chars().take_while(|c| fence.starts_with(*c)).count();
                        let info = trimmed[marker_len..].trim().to_string();
                        open = Some((
                            trimmed[..marker_len].to_string(),
                            Block {
                                line: i + 1,
                                info,
                                text: String::new(),
                            },
                        ));
                        break;
                    }
                }
            }
            Some((fence, block)) => {
                if trimmed.starts_with(fence.as_str()) && trimmed.trim_end() == fence.as_str() {
                    if let Some((_, block)) = open.take() {
                        blocks.push(block);
                    }
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                }
            }
        }
    }
    blocks
}

fn check_block(origin: &str, block: &Block, checked: &mut Checked) {
    let mut words = block.info.split_whitespace();
    let lang = words.next().unwrap_or("").to_ascii_lowercase();
    let marked = block.info.contains("okta-dcr-auth");
    let origin = format!("{origin}:{} (```{} block)", block.line, block.info);
    match lang.as_str() {
        "yaml" | "yml" => match yaml_documents(&block.text) {
            Ok(docs) => {
                for doc in &docs {
                    checked.add(configs_in_yaml(&origin, doc));
                }
            }
            Err(e) => {
                if marked || MARKERS.iter().any(|m| block.text.contains(m)) {
                    checked
                        .failures
                        .push(format!("{origin}: not valid YAML: {e}"));
                }
            }
        },
        "json" => match serde_json::from_str::<serde_json::Value>(&block.text) {
            Ok(value) if marked || looks_like_filter_config(&value) => checked.add(vec![Found {
                origin,
                bytes: Ok(block.text.clone().into_bytes()),
            }]),
            Ok(_) => {}
            Err(e) if marked => checked
                .failures
                .push(format!("{origin}: not valid JSON: {e}")),
            Err(_) => {}
        },
        _ => {}
    }
}

#[test]
fn every_shipped_filter_configuration_parses() {
    let root = root();
    let mut files = Vec::new();
    walk(&root, &mut files);

    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut total = 0;
    for path in &files {
        let rel = path.strip_prefix(&root).unwrap_or(path);
        let rel_text = rel.display().to_string();
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(kind) = kind_of(&name) else {
            continue;
        };
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{rel_text}: unreadable: {e}"));
                continue;
            }
        };
        let in_config_dir = rel
            .components()
            .next()
            .is_some_and(|c| CONFIG_DIRS.iter().any(|d| c.as_os_str() == *d));
        let checked = check_text(&rel_text, kind, &text, in_config_dir);
        let count = checked.parsed.len() + checked.failures.len();
        if count == 0 && in_config_dir && kind == Kind::Yaml {
            failures.push(format!(
                "{rel_text}: no okta-dcr-auth configuration found (did the file's layout change?)"
            ));
        }
        if count > 0 {
            report.push(format!("{count:3}  {rel_text}"));
        }
        total += checked.parsed.len();
        failures.extend(checked.failures);
    }

    println!(
        "filter configurations found, by file:\n{}",
        report.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} shipped filter configuration(s) do not parse:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    assert!(
        total > 0,
        "no filter configuration found in the repository: the extractor is broken"
    );
}

/// Configurations the filter refuses at start: Kong must refuse them first, at the Admin API
/// or in declarative configuration, with the schema. (Each is checked against the filter too,
/// so the list cannot drift from its rules.)
#[test]
fn the_kong_schema_refuses_what_the_filter_refuses() {
    let base = serde_json::json!({
        "issuer": "https://dev-123.okta.com/oauth2/default",
        "idp_upstream": "dev-123.okta.com:443",
        "introspection_client_id": "0oaGateway",
        "introspection_client_secret": "gateway-Secret",
        "audience": "api://default",
        "scopes": ["api:read"],
    });
    let with = |changes: serde_json::Value| {
        let mut c = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        serde_json::to_vec(&c).unwrap()
    };
    let accepted = with(serde_json::json!({}));
    assert!(Config::from_json(&accepted).is_ok());
    assert_eq!(schema_errors(&accepted), None);
    let refused = [
        (
            "unknown field",
            serde_json::json!({ "cache_ttl_seconds": 60 }),
        ),
        ("no issuer", serde_json::json!({ "issuer": null })),
        (
            "no idp_upstream",
            serde_json::json!({ "idp_upstream": null }),
        ),
        (
            "blank idp_upstream",
            serde_json::json!({ "idp_upstream": " " }),
        ),
        (
            "http issuer, not loopback",
            serde_json::json!({ "issuer": "http://dev-123.okta.com/oauth2/default" }),
        ),
        (
            "issuer with a query",
            serde_json::json!({ "issuer": "https://dev-123.okta.com/x?y=1" }),
        ),
        (
            "issuer not a URL",
            serde_json::json!({ "issuer": "dev-123.okta.com" }),
        ),
        (
            "token_endpoint ftp",
            serde_json::json!({ "token_endpoint": "ftp://dev-123.okta.com/t" }),
        ),
        (
            "openid scope",
            serde_json::json!({ "scopes": ["api:read", "openid"] }),
        ),
        (
            "scope with a space",
            serde_json::json!({ "scopes": ["api read"] }),
        ),
        ("empty scope", serde_json::json!({ "scopes": [""] })),
        ("accept empty", serde_json::json!({ "accept": [] })),
        (
            "accept digest",
            serde_json::json!({ "accept": ["basic", "digest"] }),
        ),
        (
            "introspection without introspection client",
            serde_json::json!({ "bearer_validation": "introspection", "introspection_client_id": null, "introspection_client_secret": null }),
        ),
        (
            "jwt+introspection without introspection secret",
            serde_json::json!({ "bearer_validation": "jwt+introspection", "introspection_client_secret": null }),
        ),
        (
            "jwt without audience",
            serde_json::json!({ "audience": null }),
        ),
        (
            "jwt+introspection without audience",
            serde_json::json!({ "bearer_validation": "jwt+introspection", "audience": null }),
        ),
        (
            "alg none",
            serde_json::json!({ "jwt_algorithms": ["none"] }),
        ),
        (
            "alg HS256",
            serde_json::json!({ "jwt_algorithms": ["RS256", "HS256"] }),
        ),
        (
            "clock skew over 300 s",
            serde_json::json!({ "clock_skew_s": 301 }),
        ),
        (
            "unknown mode",
            serde_json::json!({ "bearer_validation": "local" }),
        ),
        (
            "zero budget",
            serde_json::json!({ "idp_calls_per_minute": 0 }),
        ),
        (
            "zero calls in flight",
            serde_json::json!({ "max_idp_calls_in_flight": 0 }),
        ),
        (
            "zero failure window",
            serde_json::json!({ "client_failure_window_s": 0 }),
        ),
        (
            "introspection without introspection secret",
            serde_json::json!({ "bearer_validation": "introspection", "introspection_client_secret": null }),
        ),
        (
            "bearer introspection without introspection id",
            serde_json::json!({ "accept": ["bearer"], "bearer_validation": "introspection", "introspection_client_id": null }),
        ),
        (
            "empty introspection secret",
            serde_json::json!({ "introspection_client_secret": "" }),
        ),
        (
            "zero idp_timeout_ms",
            serde_json::json!({ "idp_timeout_ms": 0 }),
        ),
        (
            "huge idp_timeout_ms",
            serde_json::json!({ "idp_timeout_ms": 60_001 }),
        ),
        (
            "negative cache_ttl_s",
            serde_json::json!({ "cache_ttl_s": -1 }),
        ),
        (
            "cache_ttl_s over a day",
            serde_json::json!({ "cache_ttl_s": 86_401 }),
        ),
        ("zero cache_slots", serde_json::json!({ "cache_slots": 0 })),
        (
            "too many cache_slots",
            serde_json::json!({ "cache_slots": 262_145 }),
        ),
        (
            "cache_slots as a string",
            serde_json::json!({ "cache_slots": "16" }),
        ),
        ("realm with a quote", serde_json::json!({ "realm": "a\"b" })),
        ("empty realm", serde_json::json!({ "realm": "" })),
        ("empty app_claim", serde_json::json!({ "app_claim": "" })),
        (
            "audience with a control character",
            serde_json::json!({ "audience": "api\u{1}" }),
        ),
        (
            "idp_authority with a slash",
            serde_json::json!({ "idp_authority": "a/b" }),
        ),
        (
            "allow_raw_basic as a string",
            serde_json::json!({ "allow_raw_basic": "yes" }),
        ),
        (
            "product without a document",
            serde_json::json!({ "product": "payments-v1" }),
        ),
        (
            "product with both documents",
            serde_json::json!({ "product": "p", "registrations": { "applications": [] }, "registrations_uri": "https://portal.example.com/r" }),
        ),
        (
            "registrations without product",
            serde_json::json!({ "registrations": { "applications": [] } }),
        ),
        (
            "registrations_uri without product",
            serde_json::json!({ "registrations_uri": "https://portal.example.com/r" }),
        ),
        (
            "registrations_upstream without product",
            serde_json::json!({ "registrations_upstream": "portal:443" }),
        ),
        (
            "registrations_authority with an inline document",
            serde_json::json!({ "product": "p", "registrations": { "applications": [] }, "registrations_authority": "portal" }),
        ),
        (
            "empty product",
            serde_json::json!({ "product": "", "registrations": { "applications": [] } }),
        ),
        (
            "product with a control character",
            serde_json::json!({ "product": "p\u{1}", "registrations": { "applications": [] } }),
        ),
        (
            "registrations without applications",
            serde_json::json!({ "product": "p", "registrations": { "apps": [] } }),
        ),
        (
            "registrations with a numeric client id",
            serde_json::json!({ "product": "p", "registrations": { "applications": [{ "client_id": 5 }] } }),
        ),
        (
            "a registration without status",
            serde_json::json!({ "product": "p", "registrations": { "applications": [{ "client_id": "a", "registrations": [{ "product": "p" }] }] } }),
        ),
        (
            "registrations_uri over http, not loopback",
            serde_json::json!({ "product": "p", "registrations_uri": "http://portal.example.com/r" }),
        ),
        (
            "zero registrations_refresh_s",
            serde_json::json!({ "product": "p", "registrations_uri": "https://portal.example.com/r", "registrations_refresh_s": 0 }),
        ),
        (
            "registrations_refresh_s over an hour",
            serde_json::json!({ "product": "p", "registrations_uri": "https://portal.example.com/r", "registrations_refresh_s": 3601 }),
        ),
        (
            "registrations_max_age_s over 30 days",
            serde_json::json!({ "product": "p", "registrations_uri": "https://portal.example.com/r", "registrations_max_age_s": 2_592_001 }),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, changes) in refused {
        let bytes = with(changes);
        if Config::from_json(&bytes).is_ok() {
            wrong.push(format!("{what}: the filter accepts it (fix this list)"));
        }
        if schema_errors(&bytes).is_none() {
            wrong.push(format!("{what}: Kong's schema accepts it"));
        }
    }
    // Basic only: no introspection client needed, for the filter and the schema alike.
    let basic_only = with(serde_json::json!({
        "accept": ["basic"], "introspection_client_id": null, "introspection_client_secret": null,
    }));
    assert!(Config::from_json(&basic_only).is_ok());
    assert_eq!(schema_errors(&basic_only), None);
    let loopback = with(serde_json::json!({ "issuer": "http://127.0.0.1:9001/oauth2/default" }));
    assert!(Config::from_json(&loopback).is_ok());
    assert_eq!(schema_errors(&loopback), None);
    // Registrations: inline, and fetched with every field.
    for changes in [
        serde_json::json!({ "product": "payments-v1", "registrations": { "applications": [
            { "client_id": "0oaA", "application_id": "app-1", "developer_id": null, "name": "A", "extra": 1,
              "registrations": [{ "product": "payments-v1", "status": "approved" }] },
            { "client_id": "0oaB", "registrations": [{ "product": "payments-v1", "status": "suspended" }] }
        ] } }),
        serde_json::json!({ "product": "p", "registrations_uri": "https://portal.example.com/v1/registrations.json",
            "registrations_upstream": "portal.example.com:443", "registrations_authority": "portal.example.com",
            "registrations_refresh_s": 30, "registrations_max_age_s": 3600 }),
        serde_json::json!({ "product": "p", "registrations_uri": "http://127.0.0.1:9001/_portal/registrations" }),
    ] {
        let bytes = with(changes.clone());
        assert!(Config::from_json(&bytes).is_ok(), "{changes}");
        assert_eq!(schema_errors(&bytes), None, "{changes}");
    }
    assert!(wrong.is_empty(), "\n  {}", wrong.join("\n  "));
}

#[cfg(test)]
mod extractor {
    use super::*;

    const GOOD: &str = r#"{"issuer": "https://o.okta.com/oauth2/default", "idp_upstream": "okta", "accept": ["basic"]}"#;

    fn envoy(configuration: &str) -> String {
        format!(
            r#"
static_resources:
  listeners:
  - filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": {ENVOY_WASM_TYPE}
              config:
                name: okta-dcr-auth
                vm_config:
                  code: {{ local: {{ filename: /etc/envoy/okta_dcr_auth.wasm }} }}
                configuration:
                  "@type": {STRING_VALUE_TYPE}
                  value: '{configuration}'
"#
        )
    }

    #[test]
    fn an_envoy_configuration_is_found_and_checked() {
        let ok = check_text("ok.yaml", Kind::Yaml, &envoy(GOOD), true);
        assert_eq!((ok.parsed.len(), ok.failures.len()), (1, 0), "{ok:?}");

        let bad = GOOD.replace("\"basic\"]", "\"basic\"], \"scopes\": [\"openid\"]");
        let bad = check_text("bad.yaml", Kind::Yaml, &envoy(&bad), true);
        assert_eq!(bad.failures.len(), 1, "{bad:?}");
        assert!(bad.failures[0].contains("field `scopes`"), "{bad:?}");
    }

    #[test]
    fn another_wasm_module_is_not_ours() {
        let other = envoy("not json").replace("okta_dcr_auth.wasm", "other.wasm");
        let checked = check_text("other.yaml", Kind::Yaml, &other, true);
        assert_eq!((checked.parsed.len(), checked.failures.len()), (0, 0));
    }

    #[test]
    fn kong_string_and_map_configurations_are_checked() {
        let yaml = format!(
            r#"
_format_version: "3.0"
services:
- name: s
  url: http://echo:9002
  filter_chains:
  - name: c
    filters:
    - name: okta_dcr_auth
      config: '{GOOD}'
    - name: okta_dcr_auth
      config:
        issuer: https://o.okta.com/oauth2/default
        idp_upstream: o.okta.com:443
        accept: [basic]
    - name: some_other_filter
      config: whatever
plugins:
- name: okta_dcr_auth
  config:
    issuer: https://o.okta.com/oauth2/default
    idp_upstream: o.okta.com:443
    accept: [basic]
    scopes: []
"#
        );
        let checked = check_text("kong.yaml", Kind::Yaml, &yaml, true);
        assert_eq!(checked.parsed.len(), 2, "{checked:?}");
        assert_eq!(checked.failures.len(), 1, "{checked:?}");
        assert!(checked.failures[0].contains("empty list"), "{checked:?}");

        let unknown = yaml.replace(
            "accept: [basic]\n    - name: some",
            "acept: [basic]\n    - name: some",
        );
        let checked = check_text("kong.yaml", Kind::Yaml, &unknown, true);
        assert!(
            checked.failures.iter().any(|f| f.contains("field `acept`")),
            "{checked:?}"
        );
    }

    #[test]
    fn istio_and_envoy_gateway_configurations_are_checked() {
        let yaml = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: ours }
spec:
  url: oci://registry.example.com/okta-dcr-auth:0.1.0
  pluginConfig:
    issuer: https://o.okta.com/oauth2/default
    idp_upstream: "outbound|443||o.okta.com"
    accept: [basic]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: other }
spec:
  url: oci://registry.example.com/some-other-filter:1
  pluginConfig: { anything: 1 }
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: unconfigured }
spec:
  url: oci://registry.example.com/okta-dcr-auth:0.1.0
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: { name: eg }
spec:
  wasm:
  - code: { type: Image, image: { url: registry.example.com/okta-dcr-auth:0.1.0 } }
    config:
      issuer: https://o.okta.com/oauth2/default
      idp_upstream: okta
      acept: [basic]
  - code: { type: HTTP, http: { url: https://files.example.com/other.wasm } }
    config: { anything: 1 }
  - code: { type: HTTP, http: { url: https://files.example.com/okta_dcr_auth.wasm } }
    config: '{"issuer": "https://o.okta.com/oauth2/default", "idp_upstream": "okta"}'
"#;
        let checked = check_text("deploy/x.yaml", Kind::Yaml, yaml, true);
        assert_eq!(checked.parsed.len(), 1, "{checked:?}");
        assert!(
            checked.parsed[0].contains("Istio WasmPlugin \"ours\""),
            "{checked:?}"
        );
        assert_eq!(checked.failures.len(), 3, "{checked:?}");
        let failure = |needle: &str| checked.failures.iter().any(|f| f.contains(needle));
        assert!(
            failure("\"unconfigured\")") && failure("no `pluginConfig`"),
            "{checked:?}"
        );
        assert!(
            failure("wasm[0]") && failure("field `acept`"),
            "{checked:?}"
        );
        assert!(
            failure("wasm[2]") && failure("`config` is not a map"),
            "{checked:?}"
        );
    }

    #[test]
    fn markdown_blocks_are_checked() {
        let md = format!(
            "# t\n\n```json okta-dcr-auth\n{GOOD}\n```\n\n```json\n{{\"issuer\": \"http://example.com/x\", \"idp_upstream\": \"o\"}}\n```\n\n```json\n{{\"unrelated\": true}}\n```\n\n```yaml\n{}```\n\n```sh\ncurl -i localhost:8080/\n```\n",
            envoy(GOOD)
        );
        let checked = check_text("README.md", Kind::Markdown, &md, false);
        assert_eq!(checked.parsed.len(), 2, "{checked:?}");
        assert_eq!(checked.failures.len(), 1, "{checked:?}");
        assert!(
            checked.failures[0].starts_with("README.md:7 ")
                && checked.failures[0].contains("field `issuer`"),
            "{checked:?}"
        );
    }

    #[test]
    fn placeholders_take_sample_values_or_are_reported() {
        assert_eq!(
            substitute("a ${OKTA_ISSUER} ${NOPE:-d} b").as_deref(),
            Ok("a https://dev-12345678.okta.com/oauth2/default d b")
        );
        assert!(substitute("${UNKNOWN_THING}")
            .unwrap_err()
            .contains("UNKNOWN_THING"));
        let template = envoy(&GOOD.replace("https://o.okta.com/oauth2/default", "${OKTA_ISSUER}"));
        let checked = check_text("envoy/x.yaml.tmpl", Kind::Yaml, &template, true);
        assert_eq!(checked.parsed.len(), 1, "{checked:?}");
        assert_eq!(kind_of("x.yaml.tmpl"), Some(Kind::Yaml));
        assert_eq!(kind_of("README.md"), Some(Kind::Markdown));
        assert_eq!(kind_of("Makefile"), None);
    }
}
