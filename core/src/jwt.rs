//! Bearer access tokens checked locally (contract, "Bearer, `jwt` modes"): a compact JWS
//! (RFC 7515) signed by one of the issuer's keys ([`KeySet`]), whose claims (RFC 7519, RFC 9068,
//! Okta's access token) name this issuer, this API, a live lifetime, the scopes and the app.
//!
//! Pure: the caller passes the token, the key set it holds and the time, and maps the answer to a
//! reply: [`JwtError::UnknownKid`] asks it to refresh the key set (at most once per 30 s) and try
//! again; everything else is definite. Nothing here ever puts a token or a claim value in an error.
//!
//! Header parameters that would fetch or carry keys (`jku`, `x5u`, `jwk`, `x5c`) are never read:
//! keys only ever come from the key set. A `crit` header is refused (RFC 7515 4.1.11: we
//! understand no extension).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::jwks::kid_ok;
pub use crate::jwks::{Alg, Jwk, JwksError, KeySet};
use crate::verdict::header_safe;
use crate::verdict::{Denial, Grant};

/// Longest token read: the filter's limit for any credential.
pub const MAX_TOKEN_LEN: usize = crate::credentials::MAX_CREDENTIAL_LEN;

/// What a token must satisfy, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtPolicy {
    /// `iss`, compared as the introspection path does (a trailing `/` ignored on both sides).
    pub issuer: String,
    /// Must be in `aud` (a string or an array of strings).
    pub audience: String,
    /// The `alg` values accepted. [`Alg`] has no `none` and no HMAC, so no configuration can
    /// allow them.
    pub algorithms: Vec<Alg>,
    /// Leeway for `exp`, `nbf` and `iat`.
    pub clock_skew_s: u64,
    /// All required in the granted scopes.
    pub scopes: Vec<String>,
    /// The claim naming the DCR app; then `cid`, then `client_id`.
    pub app_claim: String,
}

/// What [`peek`] saw: enough to decide whether a key set is needed, nothing verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    pub kid: Option<String>,
    /// As the header says (header-safe, at most 16 characters); not checked against any list.
    pub alg: String,
    /// `exp`, epoch seconds.
    pub exp: u64,
}

/// A token that passed every check.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified {
    /// `app_claim`, else `cid`, else `client_id`: header-safe, non-empty.
    pub identity: String,
    /// The granted scopes, space-separated: header-safe.
    pub scope: String,
    /// `exp`, epoch seconds: a verdict must not outlive it.
    pub exp: u64,
}

impl Verified {
    /// The positive verdict (the client's token goes upstream as it came).
    pub fn grant(&self) -> Grant {
        Grant {
            identity: self.identity.clone(),
            scope: self.scope.clone(),
            access_token: None,
        }
    }
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("identity", &self.identity)
            .field("scope", &self.scope)
            .field("exp", &self.exp)
            .finish()
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Every check that needs no key passed, but the key set has no such `kid` (header-safe,
    /// at most 256 characters): refresh the set, if allowed, and verify again.
    UnknownKid(String),
    /// A definite refusal; a short, fixed reason for the debug log.
    Invalid(&'static str),
    /// Genuine, but without a configured scope.
    InsufficientScope,
    /// Its signature was not checked now: the worker's bound on signature checks
    /// (`signatures::SignatureBudget`). Nothing is decided: 503, never a cached verdict.
    Busy,
}

impl JwtError {
    /// The reply once no refresh is due: an unknown `kid` is then an invalid token.
    pub fn denial(&self) -> Denial {
        match self {
            JwtError::UnknownKid(_) | JwtError::Invalid(_) | JwtError::Busy => Denial::InvalidToken,
            JwtError::InsufficientScope => Denial::InsufficientScope,
        }
    }

    /// For the debug log: never a token or claim value; the `kid` is the key's public name.
    pub fn describe(&self) -> String {
        match self {
            JwtError::UnknownKid(kid) => format!("unknown kid \"{kid}\""),
            JwtError::Invalid(reason) => (*reason).to_string(),
            JwtError::InsufficientScope => "a required scope is missing".to_string(),
            JwtError::Busy => "signature checks of this worker at their bound".to_string(),
        }
    }
}

/// The cheap check before any IdP call (`bearer_format: "jwt"`): three base64url segments,
/// header and payload JSON objects, `alg` a string, `kid` (if any) a usable name, `iss` this
/// issuer, `exp` present and not past (with `skew_s`). No signature is checked.
pub fn peek(token: &str, issuer: &str, now_s: u64, skew_s: u64) -> Result<Peeked, JwtError> {
    let jws = Jws::split(token)?;
    let alg = jws.text_header("alg")?;
    if alg.len() > 16 || !header_safe(alg) {
        return Err(JwtError::Invalid("alg is not a JWS algorithm"));
    }
    let kid = jws.kid()?;
    check_issuer(&jws.claims, issuer)?;
    let exp = check_exp(&jws.claims, now_s, skew_s)?;
    Ok(Peeked {
        kid: kid.map(str::to_string),
        alg: alg.to_string(),
        exp,
    })
}

/// The whole check: [`check`], then the signature.
pub fn verify(
    token: &str,
    keys: &KeySet,
    policy: &JwtPolicy,
    now_s: u64,
) -> Result<Verified, JwtError> {
    check(token, keys, policy, now_s)?.verify()
}

/// Everything that can refuse a token without a signature check (shape, `crit`, `alg`, `kid`,
/// `iss`, `aud`, `exp`/`nbf`/`iat`, a malformed scope claim, the identity claim, a `kid` the set
/// has and a key that allows the `alg`), so that a token that could never pass neither makes the
/// caller fetch keys nor costs a signature check. What is left is [`Unverified::verify`]; the
/// caller may refuse before it on what the token claims (the app's registration, a bound on
/// signature checks).
pub fn check<'a>(
    token: &'a str,
    keys: &'a KeySet,
    policy: &JwtPolicy,
    now_s: u64,
) -> Result<Unverified<'a>, JwtError> {
    let jws = Jws::split(token)?;
    if jws.header.contains_key("crit") {
        return Err(JwtError::Invalid("crit header"));
    }
    let alg = Alg::from_name(jws.text_header("alg")?)
        .filter(|a| policy.algorithms.contains(a))
        .ok_or(JwtError::Invalid("alg not allowed"))?;
    let kid = jws.kid()?.ok_or(JwtError::Invalid("no kid"))?;
    check_issuer(&jws.claims, &policy.issuer)?;
    check_audience(&jws.claims, &policy.audience)?;
    let exp = check_exp(&jws.claims, now_s, policy.clock_skew_s)?;
    for (name, reason) in [("nbf", "nbf in the future"), ("iat", "iat in the future")] {
        let latest = now_s.saturating_add(policy.clock_skew_s);
        if numeric_date(&jws.claims, name)?.is_some_and(|t| t > latest) {
            return Err(JwtError::Invalid(reason));
        }
    }
    let scope = granted_scope(&jws.claims)?;
    let identity = identity(&jws.claims, &policy.app_claim)?;
    let key = keys
        .get(kid)
        .ok_or_else(|| JwtError::UnknownKid(kid.to_string()))?;
    if !key.allows(alg) {
        return Err(JwtError::Invalid("alg does not match the key"));
    }
    // Only the missing-scope verdict comes after the signature: a forged token is a 401, never
    // a 403, so a token whose only fault is a missing scope costs a check too.
    let has_scopes = policy
        .scopes
        .iter()
        .all(|s| scope.split(' ').any(|g| g == s));
    Ok(Unverified {
        key,
        alg,
        signing_input: jws.signing_input,
        signature: jws.signature,
        has_scopes,
        claims: Verified {
            identity,
            scope,
            exp,
        },
    })
}

/// A token whose every check passed but its signature's: [`check`]'s result.
#[derive(Debug)]
pub struct Unverified<'a> {
    key: &'a Jwk,
    alg: Alg,
    signing_input: &'a str,
    signature: Vec<u8>,
    has_scopes: bool,
    claims: Verified,
}

impl Unverified<'_> {
    /// The app the token claims to be (`app_claim`, else `cid`, else `client_id`), not verified.
    pub fn claimed_identity(&self) -> &str {
        &self.claims.identity
    }

    /// The one expensive step.
    pub fn verify(self) -> Result<Verified, JwtError> {
        if !self
            .key
            .verifies(self.alg, self.signing_input.as_bytes(), &self.signature)
        {
            return Err(JwtError::Invalid("bad signature"));
        }
        if !self.has_scopes {
            return Err(JwtError::InsufficientScope);
        }
        Ok(self.claims)
    }
}

/// A compact JWS taken apart; nothing checked but its shape.
struct Jws<'a> {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    fn split(token: &'a str) -> Result<Jws<'a>, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Invalid("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Invalid("not three segments"));
        };
        Ok(Jws {
            header: json_object(&base64url(h)?).ok_or(JwtError::Invalid("header"))?,
            claims: json_object(&base64url(p)?).ok_or(JwtError::Invalid("payload"))?,
            signing_input: &token[..h.len() + 1 + p.len()],
            signature: base64url(s)?,
        })
    }

    fn text_header(&self, name: &'static str) -> Result<&str, JwtError> {
        self.header
            .get(name)
            .and_then(Value::as_str)
            .ok_or(JwtError::Invalid(name))
    }

    fn kid(&self) -> Result<Option<&str>, JwtError> {
        match self.header.get("kid") {
            None => Ok(None),
            Some(Value::String(kid)) if kid_ok(kid) => Ok(Some(kid)),
            Some(_) => Err(JwtError::Invalid("kid")),
        }
    }
}

/// RFC 7515 2: base64url without padding, line breaks or other characters; non-empty.
fn base64url(segment: &str) -> Result<Vec<u8>, JwtError> {
    let alphabet = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if segment.is_empty() || !segment.bytes().all(alphabet) {
        return Err(JwtError::Invalid("segment is not base64url"));
    }
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Invalid("segment is not base64url"))
}

fn json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn check_issuer(claims: &Map<String, Value>, issuer: &str) -> Result<(), JwtError> {
    match claims.get("iss").and_then(Value::as_str) {
        Some(iss) if iss.trim_end_matches('/') == issuer.trim_end_matches('/') => Ok(()),
        _ => Err(JwtError::Invalid("wrong or missing iss")),
    }
}

fn check_audience(claims: &Map<String, Value>, audience: &str) -> Result<(), JwtError> {
    let found = match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if found {
        Ok(())
    } else {
        Err(JwtError::Invalid("wrong or missing aud"))
    }
}

fn check_exp(claims: &Map<String, Value>, now_s: u64, skew_s: u64) -> Result<u64, JwtError> {
    match numeric_date(claims, "exp")? {
        Some(exp) if exp.saturating_add(skew_s) > now_s => Ok(exp),
        Some(_) => Err(JwtError::Invalid("expired")),
        None => Err(JwtError::Invalid("no exp")),
    }
}

/// RFC 7519 2 NumericDate: seconds, possibly fractional (cut to whole seconds); a negative or
/// non-numeric value is refused.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, JwtError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    if let Some(n) = value.as_u64() {
        return Ok(Some(n));
    }
    match value.as_f64() {
        // `as` saturates at u64::MAX for huge values.
        Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
        _ => Err(JwtError::Invalid(name)),
    }
}

/// `scp` (Okta: an array of strings; a space-separated string is read too), else the RFC 9068
/// `scope` string; none at all is no scope. Each granted scope is one `scope-token`.
fn granted_scope(claims: &Map<String, Value>) -> Result<String, JwtError> {
    let malformed = JwtError::Invalid("malformed scope claim");
    let scope = match (claims.get("scp"), claims.get("scope")) {
        (Some(Value::Array(items)), _) => {
            let mut scopes = Vec::with_capacity(items.len());
            for item in items {
                match item.as_str() {
                    Some(s) if !s.is_empty() && !s.contains(' ') => scopes.push(s),
                    _ => return Err(malformed),
                }
            }
            scopes.join(" ")
        }
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => s.clone(),
        (None, None) => String::new(),
        _ => return Err(malformed),
    };
    if header_safe(&scope) {
        Ok(scope)
    } else {
        Err(malformed)
    }
}

fn identity(claims: &Map<String, Value>, app_claim: &str) -> Result<String, JwtError> {
    identity_claim(claims, app_claim)
        .map(str::to_string)
        .map_err(JwtError::Invalid)
}

/// Which app a token (or an introspection answer) names: the first of `app_claim`, `cid`,
/// `client_id` that is present (not absent, not `null`). A present claim decides, and must be a
/// non-empty, header-safe string: an app claim of another type (`["0oaA"]`, `5`, `""`) is
/// refused, never skipped for `cid`, so that a token cannot name one app and be taken for
/// another.
pub fn identity_claim<'a>(
    claims: &'a Map<String, Value>,
    app_claim: &str,
) -> Result<&'a str, &'static str> {
    let present = [app_claim, "cid", "client_id"]
        .iter()
        .find_map(|c| claims.get(*c).filter(|v| !v.is_null()));
    match present {
        Some(Value::String(id)) if !id.is_empty() && header_safe(id) => Ok(id),
        Some(Value::String(id)) if !id.is_empty() => Err("identity claim not header-safe"),
        Some(_) => Err("identity claim not a non-empty string"),
        None => Err("no identity claim"),
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
pub(crate) mod tests;
