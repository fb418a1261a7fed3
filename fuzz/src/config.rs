//! `config`: `config::Config::from_json` on arbitrary bytes (seeds: the configurations the
//! repository ships, and refusals of each kind).
//!
//! Properties: never panics; a refusal's reason (the log line `on_configure` writes, after the
//! field it names) never contains 8 consecutive characters of a string value of the input, as
//! written or as serde quotes it; an accepted configuration keeps the documented bounds.
//!
//! The leak check is best effort: string literals are found by a lexer that does not need the
//! input to be valid JSON, object keys are not values (an unknown field is named on purpose),
//! and a window that also occurs in the filter's own messages (`src/config.rs`, `src/url.rs`)
//! or in serde's wording of what it expected is not a leak.

use std::sync::OnceLock;

use okta_dcr_auth_core::config::Config;
use okta_dcr_auth_core::url::HttpUrl;

use crate::{checked, header_safe};

/// The length of a value fragment that counts as a leak.
const WINDOW: usize = 8;

pub fn check(data: &[u8]) {
    match Config::from_json(data) {
        Ok(config) => accepted(&config),
        Err(_) if !checked("error-echoes-value") => {}
        Err(e) => {
            // The syntax-error reason is a fixed text with a line and column: nothing to leak.
            if e.field == "(configuration)" && e.reason.starts_with("is not valid JSON (line ") {
                return;
            }
            let literals = string_literals(data);
            let keys: Vec<&str> = literals
                .iter()
                .filter(|(_, key)| *key)
                .map(|(s, _)| s.as_str())
                .collect();
            for (value, _) in literals.iter().filter(|(_, key)| !key) {
                let quoted = format!("{value:?}");
                for form in [value.as_str(), &quoted[1..quoted.len() - 1]] {
                    if let Some(w) = leaked_window(form, &e.reason, &keys) {
                        panic!(
                            "configuration error `{e}` repeats {w:?} of the string value {value:?}"
                        );
                    }
                }
            }
        }
    }
}

fn leaked_window(value: &str, reason: &str, keys: &[&str]) -> Option<String> {
    let chars: Vec<char> = value.chars().collect();
    chars.windows(WINDOW).find_map(|w| {
        let w: String = w.iter().collect();
        (reason.contains(&w) && !vocabulary().contains(&w) && !keys.iter().any(|k| k.contains(&w)))
            .then_some(w)
    })
}

/// Text a reason may contain without it coming from the input.
fn vocabulary() -> &'static str {
    static VOCABULARY: OnceLock<String> = OnceLock::new();
    VOCABULARY.get_or_init(|| {
        let serde = [
            "invalid type: ",
            "invalid value: ",
            "invalid length ",
            "expected a string",
            "expected a boolean",
            "expected a sequence",
            "expected a map",
            "expected u32",
            "expected u64",
            "expected struct RawConfig",
            "expected variant identifier",
            "expected unit",
            "expected enum Scheme",
            "expected `basic` or `bearer`",
            "expected one of `basic`, `bearer`",
            "expected value",
            "must be at most 86400",
            "must be between 1 and 262144",
            "must be between 1 and 60000",
        ];
        [
            include_str!("../../core/src/config.rs"),
            include_str!("../../core/src/url.rs"),
            include_str!("../../core/src/registrations.rs"),
            &serde.join("\n"),
        ]
        .join("\n")
    })
}

/// Every `"…"` in the input, decoded when it is a valid JSON string, and whether it is an
/// object key (followed by `:`).
fn string_literals(input: &[u8]) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < input.len() && input[i] != b'"' {
            i += if input[i] == b'\\' { 2 } else { 1 };
        }
        if i >= input.len() {
            break;
        }
        let token = &input[start..=i];
        i += 1;
        let text = serde_json::from_slice::<String>(token)
            .unwrap_or_else(|_| String::from_utf8_lossy(&token[1..token.len() - 1]).into_owned());
        let is_key = input[i..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b':');
        out.push((text, is_key));
    }
    out
}

/// The bounds `Config` promises to the rest of the filter.
fn accepted(c: &Config) {
    assert!(!c.issuer.ends_with('/'));
    let issuer = HttpUrl::parse(&c.issuer).expect("accepted issuer is a URL");
    assert!(issuer.https || issuer.is_loopback());
    assert_eq!(issuer, c.issuer_url);
    assert!(!c.idp_upstream.trim().is_empty());
    assert!(!c.idp_authority.is_empty());
    assert!(!c
        .idp_authority
        .bytes()
        .any(|b| b <= b' ' || b == b'/' || b == 0x7f));
    for path in [&c.endpoints.token_path, &c.endpoints.introspection_path]
        .into_iter()
        .flatten()
    {
        assert!(path.starts_with('/') && !path.bytes().any(|b| b <= b' ' || b == 0x7f));
    }
    assert!(c.accepted.basic || c.accepted.bearer);
    assert!(!c.accepted.bearer || c.introspection_authorization.is_some());
    for scope in &c.scopes {
        assert!(!scope.is_empty() && scope != "openid");
        assert!(!scope
            .bytes()
            .any(|b| b <= b' ' || b == b'"' || b == b'\\' || b >= 0x7f));
    }
    assert!(!c.app_claim.is_empty() && header_safe(&c.app_claim));
    assert!(c.audience.as_deref().is_none_or(|a| !a.is_empty()));
    assert!(c.cache_ttl_ms <= 86_400_000 && c.negative_cache_ttl_ms <= 86_400_000);
    assert!(c.stale_if_error_ms <= 86_400_000);
    assert!((1..=262_144).contains(&c.cache_slots));
    assert!((1..=60_000).contains(&c.idp_timeout_ms));
    assert!(!c.realm.is_empty());
    assert!(!c
        .realm
        .bytes()
        .any(|b| b < b' ' || b == 0x7f || b == b'"' || b == b'\\'));
}
