//! Reading the client's credentials out of `Authorization`: Basic client credentials (base64,
//! or the raw `ID:SECRET` form the Konnect docs print) and Bearer tokens. Everything is refused
//! here that the IdP should never be asked about.

use base64::Engine as _;

/// Longest credential we read: far above any Okta token or DCR secret, far below a
/// header size that would let one request cost much.
/// An `Authorization` scheme the filter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Basic,
    Bearer,
}

pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// A DCR app's client id and secret, decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic(ClientCredentials),
    Bearer(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic(c) => c.fmt(f),
            Credential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credential {
    pub fn scheme(&self) -> Scheme {
        match self {
            Credential::Basic(_) => Scheme::Basic,
            Credential::Bearer(_) => Scheme::Bearer,
        }
    }
}

/// Why no credential could be read. Each maps to exactly one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// No `Authorization` header, an empty one, or a scheme this filter does not speak
    /// (or was configured not to accept).
    Missing,
    /// More than one `Authorization` header.
    Duplicate,
    /// `Basic` whose value cannot be a client id and secret.
    MalformedBasic,
    /// `Bearer` whose value is not an RFC 6750 `b64token`.
    MalformedBearer,
}

/// What the filter accepts, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub basic: bool,
    pub bearer: bool,
    pub raw_basic: bool,
}

/// Reads every `Authorization` value the request carries, as the bytes the client sent.
pub fn parse_authorization(
    values: &[&[u8]],
    accepted: Accepted,
) -> Result<Credential, CredentialError> {
    let value = match values {
        [] => return Err(CredentialError::Missing),
        [one] => *one,
        _ => return Err(CredentialError::Duplicate),
    };
    let value = value.trim_ascii();
    if value.contains(&b',') && names_our_scheme_twice(value) {
        return Err(CredentialError::Duplicate);
    }
    let split = value.iter().position(|&b| b == b' ' || b == b'\t');
    let (scheme, param) = match split {
        Some(i) => (&value[..i], value[i..].trim_ascii_start()),
        None => (value, &[][..]),
    };
    // Invalid UTF-8 in the credential is malformed, not missing.
    let param = std::str::from_utf8(param);
    if scheme.eq_ignore_ascii_case(b"basic") && accepted.basic {
        let param = param.map_err(|_| CredentialError::MalformedBasic)?;
        parse_basic(param, accepted.raw_basic).map(Credential::Basic)
    } else if scheme.eq_ignore_ascii_case(b"bearer") && accepted.bearer {
        let param = param.map_err(|_| CredentialError::MalformedBearer)?;
        parse_bearer(param).map(Credential::Bearer)
    } else {
        Err(CredentialError::Missing)
    }
}

/// Envoy joins repeated `Authorization` headers into one value with `,`, so a comma is how a
/// second header shows. Neither base64 nor an RFC 6750 token contains one, so a comma in a Basic
/// or Bearer value, or a Basic or Bearer credential after a comma, means several credentials.
fn names_our_scheme_twice(value: &[u8]) -> bool {
    let is_ours = |piece: &[u8]| {
        let piece = piece.trim_ascii_start();
        let scheme = piece
            .split(|&b| b == b' ' || b == b'\t')
            .next()
            .unwrap_or_default();
        scheme.eq_ignore_ascii_case(b"basic") || scheme.eq_ignore_ascii_case(b"bearer")
    };
    value.split(|&b| b == b',').any(is_ours)
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn parse_basic(param: &str, raw_allowed: bool) -> Result<ClientCredentials, CredentialError> {
    if param.is_empty() || param.len() > MAX_CREDENTIAL_LEN || param.contains(is_ows) {
        return Err(CredentialError::MalformedBasic);
    }
    let decoded;
    // A `:` never occurs in base64, so its presence is what marks the raw form.
    let pair = if param.contains(':') {
        if !raw_allowed {
            return Err(CredentialError::MalformedBasic);
        }
        param
    } else {
        decoded = base64::engine::general_purpose::STANDARD
            .decode(param)
            .map_err(|_| CredentialError::MalformedBasic)?;
        std::str::from_utf8(&decoded).map_err(|_| CredentialError::MalformedBasic)?
    };
    let (id, secret) = pair
        .split_once(':')
        .ok_or(CredentialError::MalformedBasic)?;
    let client_id = form_decode(id).ok_or(CredentialError::MalformedBasic)?;
    let client_secret = form_decode(secret).ok_or(CredentialError::MalformedBasic)?;
    Ok(ClientCredentials {
        client_id,
        client_secret,
    })
}

/// One `application/x-www-form-urlencoded` decoding (RFC 6749 2.3.1), strict where the
/// WHATWG decoder is lenient: a `%` not followed by two hex digits is refused, not kept. The
/// result must be non-empty UTF-8 without control characters.
pub fn form_decode(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if part.is_empty() || !well_formed {
        return None;
    }
    // `+` is a space, and must become one before `%2B` turns into a `+`.
    let spaced: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let decoded: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
    let text = String::from_utf8(decoded).ok()?;
    if text.is_empty() || text.chars().any(char::is_control) {
        return None;
    }
    Some(text)
}

/// RFC 6750 2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub(crate) fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

fn parse_bearer(param: &str) -> Result<String, CredentialError> {
    let valid = param.len() <= MAX_CREDENTIAL_LEN && is_b64token(param);
    if valid {
        Ok(param.to_string())
    } else {
        Err(CredentialError::MalformedBearer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Accepted = Accepted {
        basic: true,
        bearer: true,
        raw_basic: true,
    };

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn basic(id: &str, secret: &str) -> Result<Credential, CredentialError> {
        Ok(Credential::Basic(ClientCredentials {
            client_id: id.into(),
            client_secret: secret.into(),
        }))
    }

    fn parse(value: &str) -> Result<Credential, CredentialError> {
        parse_authorization(&[value.as_bytes()], ALL)
    }

    #[test]
    fn basic_forms_that_pass() {
        let ok = [
            (format!("Basic {}", b64(b"app:secret")), ("app", "secret")),
            ("Basic app:secret".to_string(), ("app", "secret")),
            (format!("bAsIc {}", b64(b"app:secret")), ("app", "secret")),
            (
                format!(" \tBasic \t {} \t", b64(b"app:secret")),
                ("app", "secret"),
            ),
            // split at the first colon; a secret may contain more
            (
                format!("Basic {}", b64(b"app:se:cr:et")),
                ("app", "se:cr:et"),
            ),
            // RFC 6749 2.3.1: each part form-decoded once
            (
                format!("Basic {}", b64(b"app:a%2Bb+c%3Ad%25e%2Ff")),
                ("app", "a+b c:d%e/f"),
            ),
            (format!("Basic {}", b64(b"app:%25252B")), ("app", "%252B")),
            (
                format!("Basic {}", b64("äpp:sécret".as_bytes())),
                ("äpp", "sécret"),
            ),
        ];
        for (header, (id, secret)) in ok {
            assert_eq!(parse(&header), basic(id, secret), "{header}");
        }
    }

    #[test]
    fn basic_forms_refused_without_asking_the_idp() {
        let long = format!(
            "Basic {}",
            b64(format!("app:{}", "x".repeat(10 * 1024)).as_bytes())
        );
        let bad = [
            "Basic".to_string(),
            "Basic ".to_string(),
            "Basic !!!!".to_string(),
            "Basic YXBwOnNlY3JldA".to_string(), // missing padding
            "Basic YXBwOnNlY3JldA===".to_string(),
            format!(
                "Basic {}",
                b64(b"app:se?cret>").replace('/', "_").replace('+', "-")
            ),
            format!("Basic {}", b64(b"app:se?cret>").replace('+', "-")),
            format!("Basic {}\n", b64(b"app:secret")).replacen('X', "\nX", 1),
            format!("Basic {}", b64(b"no-colon")),
            format!("Basic {}", b64(b":secret")),
            format!("Basic {}", b64(b"app:")),
            format!("Basic {}", b64(b"app:%zz")),
            format!("Basic {}", b64(b"app:%2")),
            format!("Basic {}", b64(b"app:a%00b")),
            format!("Basic {}", b64(b"app:a\0b")),
            format!("Basic {}", b64(b"app:a\x1bb")),
            format!("Basic {}", b64(b"app:a%C3")),
            format!("Basic {}", b64(b"app:\xff\xfe")),
            "Basic app :secret".to_string(),
            long,
        ];
        for header in bad {
            assert_eq!(
                parse(&header),
                Err(CredentialError::MalformedBasic),
                "{header:?}"
            );
        }
    }

    #[test]
    fn raw_form_can_be_turned_off() {
        let only_b64 = Accepted {
            raw_basic: false,
            ..ALL
        };
        assert_eq!(
            parse_authorization(&[b"Basic app:secret"], only_b64),
            Err(CredentialError::MalformedBasic)
        );
        let header = format!("Basic {}", b64(b"app:secret"));
        assert_eq!(
            parse_authorization(&[header.as_bytes()], only_b64),
            basic("app", "secret")
        );
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(
            parse("Bearer abc.DEF-_~+/=="),
            Ok(Credential::Bearer("abc.DEF-_~+/==".into()))
        );
        assert_eq!(parse("bearer\tabc"), Ok(Credential::Bearer("abc".into())));
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer \"abc\"",
            "Bearer ==",
            "Bearer a=b",
            "Bearer ab\u{e9}",
        ] {
            assert_eq!(parse(bad), Err(CredentialError::MalformedBearer), "{bad:?}");
        }
        let huge = format!("Bearer {}", "a".repeat(60 * 1024));
        assert_eq!(parse(&huge), Err(CredentialError::MalformedBearer));
    }

    #[test]
    fn missing_duplicate_and_unknown() {
        assert_eq!(parse_authorization(&[], ALL), Err(CredentialError::Missing));
        assert_eq!(parse(""), Err(CredentialError::Missing));
        assert_eq!(parse("Digest abc"), Err(CredentialError::Missing));
        assert_eq!(parse("Basicabc"), Err(CredentialError::Missing));
        assert_eq!(
            parse_authorization(&[b"Basic YTpi", b"Basic YTpi"], ALL),
            Err(CredentialError::Duplicate)
        );
        // Envoy folds repeated headers into one value joined by commas
        for folded in [
            "Basic YTpi,Basic YTpi",
            "Basic YTpi, Bearer abc",
            "Bearer abc,Basic YTpi",
            "Bearer abc,bearer def",
            "Basic a:b,c",
            "Digest x, Basic YTpi",
        ] {
            assert_eq!(parse(folded), Err(CredentialError::Duplicate), "{folded}");
        }
        assert_eq!(
            parse("Digest realm=\"a\", nonce=\"b\""),
            Err(CredentialError::Missing)
        );
        let basic_only = Accepted {
            bearer: false,
            ..ALL
        };
        assert_eq!(
            parse_authorization(&[b"Bearer abc"], basic_only),
            Err(CredentialError::Missing)
        );
        let bearer_only = Accepted {
            basic: false,
            ..ALL
        };
        assert_eq!(
            parse_authorization(&[b"Basic a:b"], bearer_only),
            Err(CredentialError::Missing)
        );
    }

    #[test]
    fn invalid_utf8_is_malformed_not_missing() {
        assert_eq!(
            parse_authorization(&[b"Basic app:s\xffcret"], ALL),
            Err(CredentialError::MalformedBasic)
        );
        assert_eq!(
            parse_authorization(&[b"Bearer ab\xffc"], ALL),
            Err(CredentialError::MalformedBearer)
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = parse("Basic app:hunter2").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let t = parse("Bearer tok3n").unwrap();
        assert!(!format!("{t:?}").contains("tok3n"));
    }
}
