//! `okta_answers`: the three readers of Okta answers (`okta::read_token_answer`,
//! `read_introspection`, `read_discovery`) on arbitrary statuses, headers and bodies, against
//! fixed configurations, at a fixed time.
//!
//! Input: an HTTP-like answer, so real Okta answers are seeds as they are:
//!
//! ```text
//! introspect 200 0          <- reader (token | introspect | discovery), status (`-`: no
//! content-type: application/json   answer), configuration (0 or 1, default 0)
//!                           <- a blank line ends the headers (none without it)
//! {"active":true,...}       <- the body, bytes as they are
//! ```
//!
//! Configuration 0 requires scope `api:read` and audience `api://default`; 1 requires neither.
//!
//! Properties: never panics; only a 200 yields a grant (token, introspection) or endpoints
//! (discovery), and only from a JSON object; an introspection without `active` the JSON boolean
//! `true` is never granted (`false` is a denial, anything else no verdict); every granted
//! introspection satisfies the contract (`exp` in the future, `iss`, `aud`, every scope, the
//! identity claim in order); a granted Basic exchange names the client; what a grant puts in
//! upstream headers (identity, scope, token) has no control characters; discovered endpoints
//! are paths on the issuer's origin; a 429 pauses calls for an hour at most.

use std::sync::OnceLock;

use okta_dcr_auth_core::config::Config;
use okta_dcr_auth_core::credentials::ClientCredentials;
use okta_dcr_auth_core::okta::{
    read_discovery, read_introspection, read_token_answer, DiscoveryError, IdpAnswer, IdpFailure,
    Outcome,
};
use okta_dcr_auth_core::verdict::Denial;
use serde_json::Value;

use crate::{checked, header_safe};

/// 2023-11-14T22:13:20Z: the seeds' `exp` values are relative to it.
pub const NOW_S: u64 = 1_700_000_000;

const ISSUER: &str = "https://dev-12345678.okta.com/oauth2/default";

fn configs() -> &'static [Config; 2] {
    static CONFIGS: OnceLock<[Config; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let base = format!(
            r#""issuer":"{ISSUER}/","idp_upstream":"okta","introspection_client_id":"0oaGatewayIntrospect","introspection_client_secret":"gateway-introspection-secret","bearer_validation":"introspection""#
        );
        [
            format!(r#"{{{base},"scopes":["api:read"],"audience":"api://default"}}"#),
            format!(r#"{{{base},"app_claim":"app_id"}}"#),
        ]
        .map(|json| Config::from_json(json.as_bytes()).expect("fixed configuration"))
    })
}

fn client() -> ClientCredentials {
    ClientCredentials {
        client_id: "0oa8dcrAppClientId".into(),
        client_secret: "dcr-App-Secret".into(),
    }
}

#[derive(Debug, Clone, Copy)]
enum Reader {
    Token,
    Introspection,
    Discovery,
}

pub fn check(data: &[u8]) {
    let (first, rest) = split_line(data);
    let first = String::from_utf8_lossy(first);
    let mut words = first.split(' ');
    let reader = match words.next().unwrap_or_default() {
        "token" => Reader::Token,
        "introspect" => Reader::Introspection,
        "discovery" => Reader::Discovery,
        other => [Reader::Token, Reader::Introspection, Reader::Discovery][other.len() % 3],
    };
    let status = words.next().and_then(|s| s.parse::<u16>().ok());
    let config_index = words
        .next()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0)
        % 2;
    let config = &configs()[config_index];
    let (headers, body) = headers_and_body(rest);
    let answer = IdpAnswer {
        status,
        headers: &headers,
        body,
    };
    match reader {
        Reader::Token => token(answer),
        Reader::Introspection => introspection(config, answer),
        Reader::Discovery => discovery(config, answer),
    }
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// `name: value` lines up to a blank line, then the body; without a blank line, all body.
fn headers_and_body(mut rest: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let all = rest;
    let mut headers = Vec::new();
    loop {
        if rest.is_empty() {
            return (Vec::new(), all);
        }
        let (line, tail) = split_line(rest);
        rest = tail;
        if line.is_empty() {
            return (headers, rest);
        }
        let line = String::from_utf8_lossy(line);
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        headers.push((name.to_string(), value.trim().to_string()));
    }
}

/// What every reader does with a status that is not its own.
fn common_failure(status: Option<u16>, failure: IdpFailure) {
    match status {
        None => assert_eq!(failure, IdpFailure::NoAnswer),
        Some(429) => match failure {
            IdpFailure::RateLimited { until_s } => {
                assert!(until_s.is_none_or(|u| u <= NOW_S + 3600), "{until_s:?}")
            }
            other => panic!("429 read as {other:?}"),
        },
        Some(s) if s >= 500 => assert_eq!(failure, IdpFailure::ServerError(s)),
        Some(_) => {}
    }
}

/// Okta answers with JSON objects; a verdict or endpoints read from anything else (serde's
/// derived `Deserialize` also takes a struct from a JSON array, field by field) is an
/// unreadable answer taken for an answer. Whether to check the rest of the answer.
fn answer_is_object(json: &Value) -> bool {
    if checked("answer-is-object") {
        assert!(
            json.is_object(),
            "a verdict or endpoints from the JSON {json}"
        );
    }
    json.is_object()
}

fn token(answer: IdpAnswer<'_>) {
    let client = client();
    let outcome = read_token_answer(&client, answer, NOW_S);
    match outcome {
        Outcome::Granted {
            grant,
            expires_at_s,
        } => {
            assert_eq!(answer.status, Some(200));
            // serde skips ignored fields without checking their escapes (a lone surrogate) or
            // their UTF-8: such a body is not JSON to `Value`, and the checks below have
            // nothing to read.
            let Ok(json) = serde_json::from_slice::<Value>(answer.body) else {
                return;
            };
            if !answer_is_object(&json) {
                return;
            }
            assert!(json["token_type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("bearer")));
            let token = grant.access_token.as_deref().expect("no token");
            assert!(!token.is_empty());
            assert_eq!(json["access_token"].as_str(), Some(token));
            assert_eq!(grant.identity, client.client_id);
            assert!(expires_at_s.is_none_or(|e| e >= NOW_S));
            if checked("grant-header-safe") {
                assert!(
                    header_safe(&grant.scope),
                    "control character in the granted scope {:?}",
                    grant.scope
                );
                assert!(
                    header_safe(token),
                    "control character in the access token forwarded upstream"
                );
            }
        }
        Outcome::Denied(denial) => {
            assert!(matches!(answer.status, Some(400 | 401)), "{answer:?}");
            let expected = match denial {
                Denial::InvalidClient => "invalid_client",
                Denial::InsufficientScope => "invalid_scope",
                other => panic!("token answer read as {other:?}"),
            };
            // As for a grant: a body serde reads but `Value` refuses has nothing to compare.
            if let Ok(json) = serde_json::from_slice::<Value>(answer.body) {
                if answer_is_object(&json) {
                    assert_eq!(json["error"].as_str(), Some(expected), "{json}");
                }
            }
        }
        Outcome::Failed(failure) => common_failure(answer.status, failure),
    }
}

fn introspection(config: &Config, answer: IdpAnswer<'_>) {
    let outcome = read_introspection(config, answer, NOW_S);
    let claims = match serde_json::from_slice::<Value>(answer.body) {
        Ok(Value::Object(claims)) if answer.status == Some(200) => claims,
        _ => {
            assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
            if let Outcome::Failed(f) = outcome {
                match answer.status {
                    Some(401) => assert_eq!(f, IdpFailure::GatewayRejected),
                    Some(200) => assert_eq!(f, IdpFailure::Unreadable),
                    s => common_failure(s, f),
                }
            }
            return;
        }
    };
    match claims.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            return assert_eq!(outcome, Outcome::Denied(Denial::InvalidToken));
        }
        other => {
            return assert_eq!(
                outcome,
                Outcome::Failed(IdpFailure::Unreadable),
                "active: {other:?}"
            );
        }
    }
    let Outcome::Granted {
        grant,
        expires_at_s,
    } = outcome
    else {
        return;
    };
    let exp = claims.get("exp");
    assert_eq!(expires_at_s, exp.and_then(Value::as_u64));
    assert!(exp.is_none() || expires_at_s.is_some_and(|e| e > NOW_S));
    if let Some(iss) = claims.get("iss") {
        assert_eq!(iss.as_str().map(|s| s.trim_end_matches('/')), Some(ISSUER));
    }
    if let Some(audience) = &config.audience {
        let aud = claims.get("aud").unwrap_or(&Value::Null);
        assert!(
            aud.as_str() == Some(audience)
                || aud
                    .as_array()
                    .is_some_and(|l| l.iter().any(|a| a.as_str() == Some(audience))),
            "aud {aud:?}"
        );
    }
    let scope = claims
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert_eq!(grant.scope, scope);
    for required in &config.scopes {
        assert!(grant.scope.split(' ').any(|g| g == required));
    }
    let identity = [config.app_claim.as_str(), "cid", "client_id"]
        .iter()
        .find_map(|c| {
            claims
                .get(*c)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
        });
    assert_eq!(Some(grant.identity.as_str()), identity);
    assert_eq!(grant.access_token, None);
    assert!(header_safe(&grant.identity));
    if checked("grant-header-safe") {
        assert!(
            header_safe(&grant.scope),
            "control character in the granted scope {:?}",
            grant.scope
        );
    }
}

fn discovery(config: &Config, answer: IdpAnswer<'_>) {
    match read_discovery(config, answer, NOW_S) {
        Ok(endpoints) => {
            assert_eq!(answer.status, Some(200));
            let Ok(json) = serde_json::from_slice::<Value>(answer.body) else {
                return; // as for the token answer
            };
            if !answer_is_object(&json) {
                return;
            }
            assert_eq!(
                json["issuer"].as_str().map(|s| s.trim_end_matches('/')),
                Some(ISSUER)
            );
            for (field, path) in [
                ("token_endpoint", &endpoints.token_path),
                ("introspection_endpoint", &endpoints.introspection_path),
            ] {
                let Some(path) = path else {
                    assert!(json[field].is_null());
                    continue;
                };
                let url = json[field].as_str().expect("a path from no URL");
                // The issuer's origin (its host in any case), then exactly this path.
                let origin = "https://dev-12345678.okta.com";
                let (scheme_host, tail) = url.as_bytes().split_at(origin.len().min(url.len()));
                assert!(
                    scheme_host.eq_ignore_ascii_case(origin.as_bytes()),
                    "{url:?}"
                );
                assert!(
                    tail == path.as_bytes() || tail.is_empty() && path == "/",
                    "{path:?} from {url:?}"
                );
                assert!(path.starts_with('/'), "{path:?}");
                assert!(
                    !path
                        .bytes()
                        .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#'),
                    "{path:?} as :path"
                );
            }
        }
        Err(DiscoveryError::NotFound) => assert_eq!(answer.status, Some(404)),
        Err(DiscoveryError::Mismatch(_)) => assert_eq!(answer.status, Some(200)),
        Err(DiscoveryError::Failed(f)) => {
            assert_ne!(answer.status, Some(404));
            common_failure(answer.status, f);
        }
    }
}
