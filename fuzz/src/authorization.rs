//! `authorization`: `credentials::parse_authorization` on arbitrary header values.
//!
//! Input: one flags byte, then the `Authorization` values separated by NUL (the one byte an
//! HTTP header value can never carry, so no real input is lost). Flags: `1` basic accepted,
//! `2` bearer accepted, `4` raw `ID:SECRET` allowed, `8` no header at all. As ASCII digits:
//! `7…` accepts everything, `3…` refuses the raw form, `?` is a request without the header.
//!
//! Properties: never panics; zero values is `Missing`, several are `Duplicate`, and so is one
//! value that folds several (a comma, and Basic or Bearer in any piece); a scheme that is
//! accepted is never reported `Missing` (invalid is not collapsed into missing); a Basic result
//! has a non-empty id and secret without control characters, equal to what a WHATWG form
//! decoder makes of the two halves, and came from the raw form only when it is allowed; a
//! Bearer result is the whole parameter and matches RFC 6750 `b64token`; Debug output never
//! shows the secret or the token.

use base64::Engine as _;
use okta_dcr_auth_core::credentials::{
    parse_authorization, Accepted, Credential, CredentialError, MAX_CREDENTIAL_LEN,
};

use crate::header_safe;

pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let accepted = Accepted {
        basic: flags & 1 != 0,
        bearer: flags & 2 != 0,
        raw_basic: flags & 4 != 0,
    };
    let values: Vec<&[u8]> = if flags & 8 != 0 {
        Vec::new()
    } else {
        rest.split(|&b| b == 0).collect()
    };
    let result = parse_authorization(&values, accepted);

    let value = match values.as_slice() {
        [] => return assert_eq!(result, Err(CredentialError::Missing)),
        [one] => *one,
        _ => return assert_eq!(result, Err(CredentialError::Duplicate)),
    };
    // The check's own reading of RFC 9110 `credentials = auth-scheme [ 1*SP token68 ]`, as
    // lenient on surrounding whitespace as the filter.
    let value = value.trim_ascii();
    let (scheme, param) = match value.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&value[..i], value[i..].trim_ascii_start()),
        None => (value, &[][..]),
    };
    let is_basic = scheme.eq_ignore_ascii_case(b"basic");
    let is_bearer = scheme.eq_ignore_ascii_case(b"bearer");
    // Envoy folds repeated headers into one value joined by `,`: a Basic or Bearer credential
    // in any comma-separated piece means several credentials, whatever is accepted.
    let folded = value.contains(&b',')
        && value.split(|&b| b == b',').any(|piece| {
            let word = piece
                .trim_ascii_start()
                .split(|&b| b == b' ' || b == b'\t')
                .next();
            word.is_some_and(|w| {
                w.eq_ignore_ascii_case(b"basic") || w.eq_ignore_ascii_case(b"bearer")
            })
        });
    if folded {
        return assert_eq!(result, Err(CredentialError::Duplicate), "{value:?}");
    }

    match &result {
        Ok(credential @ Credential::Basic(c)) => {
            assert!(
                accepted.basic && is_basic,
                "Basic credentials from {value:?}"
            );
            assert!(!c.client_id.is_empty() && !c.client_secret.is_empty());
            assert!(header_safe(&c.client_id), "control char in id {c:?}");
            assert!(header_safe(&c.client_secret), "control char in a secret");
            assert!(param.len() <= MAX_CREDENTIAL_LEN);
            let pair: Vec<u8> = if param.contains(&b':') {
                assert!(
                    accepted.raw_basic,
                    "raw ID:SECRET accepted while not allowed"
                );
                param.to_vec()
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(param)
                    .expect("Basic credentials from a parameter that is not base64")
            };
            let colon = pair.iter().position(|&b| b == b':').expect("no colon");
            assert_eq!(c.client_id, whatwg_form_decode(&pair[..colon]));
            assert_eq!(c.client_secret, whatwg_form_decode(&pair[colon + 1..]));
            // Debug output (what a log line would show) is the id and nothing of the secret.
            let debug = format!("{credential:?}");
            let skeleton = debug.replacen(&format!("{:?}", c.client_id), "\"\"", 1);
            assert_eq!(
                skeleton,
                r#"ClientCredentials { client_id: "", client_secret: "<redacted>" }"#
            );
        }
        Ok(credential @ Credential::Bearer(token)) => {
            assert!(accepted.bearer && is_bearer, "Bearer token from {value:?}");
            assert_eq!(token.as_bytes(), param, "the token is the whole parameter");
            assert!(token.len() <= MAX_CREDENTIAL_LEN);
            let body = token.trim_end_matches('=');
            assert!(
                !body.is_empty()
                    && body.bytes().all(|b| b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')),
                "not a b64token: {token:?}"
            );
            assert_eq!(format!("{credential:?}"), "Bearer(<redacted>)");
        }
        Err(CredentialError::Missing) => {
            assert!(
                !(is_basic && accepted.basic || is_bearer && accepted.bearer),
                "an accepted scheme reported as missing: {value:?}"
            );
        }
        Err(CredentialError::MalformedBasic) => assert!(is_basic && accepted.basic),
        Err(CredentialError::MalformedBearer) => assert!(is_bearer && accepted.bearer),
        Err(CredentialError::Duplicate) => panic!("Duplicate for one unfolded value {value:?}"),
    }
}

/// `application/x-www-form-urlencoded` decoding of one value by the WHATWG parser of the
/// `form_urlencoded` crate, not the filter's: the two must agree wherever the filter accepts.
fn whatwg_form_decode(part: &[u8]) -> String {
    // Neither `&` nor `=` may split the value: percent-encode them first (they decode back).
    let mut escaped = b"v=".to_vec();
    for &b in part {
        match b {
            b'&' => escaped.extend_from_slice(b"%26"),
            b'=' => escaped.extend_from_slice(b"%3D"),
            _ => escaped.push(b),
        }
    }
    let mut pairs = form_urlencoded::parse(&escaped);
    let (_, v) = pairs.next().expect("one pair");
    assert!(pairs.next().is_none());
    v.into_owned()
}
