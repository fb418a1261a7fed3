//! Small helpers: answers, randomness, time, RFC 6749 2.3.1 client authentication, HMAC-SHA-256.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::serve::Resp;

pub(crate) const JSON: &str = "application/json";

/// Seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// 32 unpredictable bytes (SipHash with the process's random keys, over a counter and the clock,
/// then SHA-256). Good enough for a development server's token ids and signing key.
pub(crate) fn random_bytes() -> [u8; 32] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = Sha256::new();
    for _ in 0..4 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        if let Ok(d) = SystemTime::now().duration_since(UNIX_EPOCH) {
            h.write_u128(d.as_nanos());
        }
        h.write_u32(std::process::id());
        hasher.update(h.finish().to_le_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(hasher.finalize().as_slice());
    out
}

/// A random identifier of `len` characters from Okta's id alphabet (letters and digits).
pub(crate) fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes() {
            if out.len() == len {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
        }
    }
    out
}

/// A response with a body and content type.
pub(crate) fn response(
    status: StatusCode,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        if let Ok(v) = HeaderValue::from_str(ct) {
            resp.headers_mut().insert(CONTENT_TYPE, v);
        }
    }
    resp
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Resp {
    response(status, Some(JSON), body.to_string())
}

pub(crate) fn set_header(resp: &mut Resp, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        resp.headers_mut().append(n, v);
    }
}

/// The headers Okta puts on every answer of its OAuth endpoints.
pub(crate) fn no_store(mut resp: Resp) -> Resp {
    set_header(&mut resp, "cache-control", "no-cache, no-store");
    set_header(&mut resp, "pragma", "no-cache");
    resp
}

/// An OAuth 2.0 error answer (RFC 6749 5.2), as Okta's `/v1/token` and `/v1/introspect` give it.
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Resp {
    let mut resp = no_store(json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    ));
    if status == StatusCode::UNAUTHORIZED {
        set_header(&mut resp, "www-authenticate", "Basic realm=\"okta\"");
    }
    resp
}

/// An Okta management-style error answer (`errorCode`, `errorSummary`, ...).
pub(crate) fn okta_error(status: StatusCode, code: &str, summary: &str) -> Resp {
    json_response(
        status,
        &json!({
            "errorCode": code,
            "errorSummary": summary,
            "errorLink": code,
            "errorId": format!("oae{}", random_id(22)),
            "errorCauses": [],
        }),
    )
}

pub(crate) fn method_not_allowed(allow: &str) -> Resp {
    let mut resp = okta_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "E0000022",
        "The endpoint does not support the provided HTTP method",
    );
    set_header(&mut resp, "allow", allow);
    resp
}

pub(crate) fn not_found(path: &str) -> Resp {
    // The path is echoed like Okta does; it never carries a secret (those travel in headers and bodies).
    okta_error(
        StatusCode::NOT_FOUND,
        "E0000007",
        &format!("Not found: Resource not found: {path} (Page)"),
    )
}

/// Okta's rate-limit answer: 429, the three `X-Rate-Limit-*` headers, the E0000047 body.
pub(crate) fn rate_limited(reset_in_secs: u64) -> Resp {
    let mut resp = okta_error(
        StatusCode::TOO_MANY_REQUESTS,
        "E0000047",
        "API call exceeded rate limit due to too many requests.",
    );
    let reset = now().saturating_add(i64::try_from(reset_in_secs).unwrap_or(i64::MAX));
    set_header(&mut resp, "x-rate-limit-limit", "600");
    set_header(&mut resp, "x-rate-limit-remaining", "0");
    set_header(&mut resp, "x-rate-limit-reset", &reset.to_string());
    resp
}

/// Whether the request's content type is `application/x-www-form-urlencoded` (parameters allowed).
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Form parameters; `Err(name)` when a parameter occurs more than once (RFC 6749 3.2).
pub(crate) fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(body) {
        if params.iter().any(|(seen, _)| *seen == k) {
            return Err(k.into_owned());
        }
        params.push((k.into_owned(), v.into_owned()));
    }
    Ok(params)
}

pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Client credentials from an `Authorization` header, per RFC 6749 2.3.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// No `Authorization` header.
    Missing,
    /// More than one `Authorization` header.
    Multiple,
    /// Present but not usable: `scheme` as sent (may be empty).
    Malformed { scheme: String },
    /// Decoded id and secret.
    Basic {
        scheme: String,
        id: String,
        secret: String,
    },
}

impl ClientAuth {
    pub(crate) fn scheme(&self) -> &str {
        match self {
            ClientAuth::Missing | ClientAuth::Multiple => "",
            ClientAuth::Malformed { scheme } | ClientAuth::Basic { scheme, .. } => scheme,
        }
    }
}

/// Form-urldecodes one part of the credentials: `+` is a space, `%XX` a byte; UTF-8 required.
fn form_decode(part: &str) -> Option<String> {
    let spaced = part.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

pub(crate) fn client_auth(headers: &HeaderMap) -> ClientAuth {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return ClientAuth::Missing;
    };
    if values.next().is_some() {
        return ClientAuth::Multiple;
    }
    let Ok(value) = value.to_str() else {
        return ClientAuth::Malformed {
            scheme: String::new(),
        };
    };
    let value = value.trim();
    let (scheme, rest) = match value.split_once(' ') {
        Some((s, r)) => (s, r.trim()),
        None => (value, ""),
    };
    let malformed = || ClientAuth::Malformed {
        scheme: scheme.to_string(),
    };
    if !scheme.eq_ignore_ascii_case("basic") || rest.is_empty() {
        return malformed();
    }
    let Ok(raw) = STANDARD_PAD_INDIFFERENT.decode(rest) else {
        return malformed();
    };
    let Ok(text) = String::from_utf8(raw) else {
        return malformed();
    };
    let Some((id, secret)) = text.split_once(':') else {
        return malformed();
    };
    match (form_decode(id), form_decode(secret)) {
        (Some(id), Some(secret)) => ClientAuth::Basic {
            scheme: scheme.to_string(),
            id,
            secret,
        },
        _ => malformed(),
    }
}

/// Equality that takes the same time wherever the first difference is.
pub(crate) fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC-SHA-256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(Sha256::digest(key).as_slice());
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= block_key[i];
        opad[i] ^= block_key[i];
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner.as_slice());
    let mut out = [0u8; 32];
    out.copy_from_slice(outer.finalize().as_slice());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn headers(auth: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for a in auth {
            h.append(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn hmac_rfc4231_case_2() {
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_rfc4231_case_6_long_key() {
        let key = [0xaau8; 131];
        assert_eq!(
            hex(&hmac_sha256(
                &key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn basic_is_base64_then_form_decoded() {
        let encoded = STANDARD_PAD_INDIFFERENT.encode("my%3Aid:a+b%2Bc%3Ad%25e%2F");
        assert_eq!(
            client_auth(&headers(&[&format!("basic {encoded}")])),
            ClientAuth::Basic {
                scheme: "basic".into(),
                id: "my:id".into(),
                secret: "a b+c:d%e/".into(),
            }
        );
    }

    #[test]
    fn basic_splits_at_first_colon_and_tolerates_missing_padding() {
        let encoded = URL_SAFE_NO_PAD.encode("id:x:y");
        assert!(!encoded.contains('='));
        assert_eq!(
            client_auth(&headers(&[&format!("Basic {encoded}")])),
            ClientAuth::Basic {
                scheme: "Basic".into(),
                id: "id".into(),
                secret: "x:y".into(),
            }
        );
    }

    #[test]
    fn malformed_basic() {
        assert_eq!(client_auth(&HeaderMap::new()), ClientAuth::Missing);
        assert_eq!(
            client_auth(&headers(&["Basic aWQ6c2VjcmV0", "Basic aWQ6c2VjcmV0"])),
            ClientAuth::Multiple
        );
        for bad in [
            "Basic",
            "Basic !!!",
            "Bearer abc",
            "Basic aWRzZWNyZXQ=",
            "Basic /w==",
        ] {
            assert!(
                matches!(client_auth(&headers(&[bad])), ClientAuth::Malformed { .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn random_ids_differ() {
        let a = random_id(20);
        assert_eq!(a.len(), 20);
        assert_ne!(a, random_id(20));
    }

    #[test]
    fn form_params() {
        let p = parse_form(b"grant_type=client_credentials&scope=a+b%3A").unwrap();
        assert_eq!(param(&p, "scope"), Some("a b:"));
        assert_eq!(parse_form(b"scope=a&scope=b"), Err("scope".to_string()));
    }
}
