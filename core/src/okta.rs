//! The conversation with Okta: the requests the filter sends (discovery, client-credentials
//! grant, RFC 7662 introspection) and how each answer is read into an outcome. No I/O here:
//! the glue sends an `IdpRequest` and hands back an `IdpAnswer`.

use serde::Deserialize;
use serde_json::Value;

use crate::config::{client_secret_basic, Config, Endpoints, RegistrationsEndpoint};
use crate::credentials::ClientCredentials;
use crate::registrations::{DocumentError, Registrations};
use crate::verdict::{header_safe, Denial, Grant};

/// One HTTP call to the IdP, exactly as the host will send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpRequest {
    pub method: &'static str,
    pub path: String,
    /// Every header, pseudo-headers first (`:method`, `:scheme`, `:path`, `:authority`), then
    /// `user-agent` and the exchange's own.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// Sent with every IdP call, so Okta's logs and rate-limit reports name the gateway.
pub const USER_AGENT: &str = concat!("okta-dcr-auth/", env!("CARGO_PKG_VERSION"));

impl IdpRequest {
    /// A request to the issuer's origin: `:scheme` follows the issuer (Kong picks TLS from it),
    /// `:authority` is `idp_authority`.
    fn new(
        config: &Config,
        method: &'static str,
        path: String,
        own: Vec<(&'static str, String)>,
        body: Vec<u8>,
    ) -> IdpRequest {
        let scheme = if config.issuer_url.https {
            "https"
        } else {
            "http"
        };
        let mut headers = vec![
            (":method", method.to_string()),
            (":scheme", scheme.to_string()),
            (":path", path.clone()),
            (":authority", config.idp_authority.clone()),
            ("user-agent", USER_AGENT.to_string()),
        ];
        headers.extend(own);
        IdpRequest {
            method,
            path,
            headers,
            body,
        }
    }

    /// The value of a header (the first, by exact lowercase name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What came back. `status` is `None` when the call failed: refused, reset, or timed out.
#[derive(Debug, Clone, Copy)]
pub struct IdpAnswer<'a> {
    pub status: Option<u16>,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl IdpAnswer<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why the IdP gave no verdict. Never cached; always a 503 unless a stale verdict may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdpFailure {
    /// No answer: connection refused or reset, timeout, unknown cluster.
    NoAnswer,
    /// 429, with when Okta says calls may resume (epoch seconds), when it said.
    RateLimited {
        until_s: Option<u64>,
    },
    ServerError(u16),
    /// A status this exchange never answers with (3xx, unexpected 4xx).
    UnexpectedStatus(u16),
    /// 2xx or a known error status with a body that is not the JSON Okta sends.
    Unreadable,
    /// The introspection endpoint refused the gateway's own client.
    GatewayRejected,
    /// An answer the local proxy made itself; the call never got an answer from Okta. Not
    /// Okta's failure: only a failed connection counts toward the quota guard's pause.
    Local(LocalCause),
}

/// Why the local proxy (Envoy) answered an IdP call itself. Recognised by what Envoy's own
/// replies carry (`x-envoy-overloaded`, its plain-text 503 bodies) and never when the answer
/// carries Okta's `x-okta-request-id`, so an Envoy in front of Okta's edge is still Okta.
///
/// Seen in Envoy 1.40 (V8): a failed connection arrives as such an answer (`ConnectFailure`);
/// a circuit-breaker overflow, and no healthy host, are decided while the call is sent, so the
/// dispatch itself fails (the gate's `DispatchError`, which never pauses) and the answer forms
/// are for other hosts and versions. A call that waited in Envoy's queue past the timeout gets
/// Envoy's 504 `upstream request timeout`, which cannot be told from a slow Okta and stays
/// [`IdpFailure::ServerError`]: the filter's own in-flight cap, kept under the cluster's
/// circuit breakers, is what keeps calls out of that queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalCause {
    /// A circuit breaker of the `idp_upstream` cluster overflowed, or the proxy is overloaded.
    Overloaded,
    /// The proxy knows no healthy host for `idp_upstream`.
    NoHealthyUpstream,
    /// The proxy could not connect to the IdP, or lost the connection before any answer.
    ConnectFailure,
}

impl IdpFailure {
    pub fn describe(self) -> String {
        match self {
            IdpFailure::NoAnswer => "no answer (refused, reset or timed out)".into(),
            IdpFailure::RateLimited { .. } => "rate limited (429)".into(),
            IdpFailure::ServerError(504) => "no answer in time, or a gateway timeout (504)".into(),
            IdpFailure::ServerError(s) => format!("server error ({s})"),
            IdpFailure::UnexpectedStatus(s) => format!("unexpected status ({s})"),
            IdpFailure::Unreadable => "unreadable answer".into(),
            IdpFailure::GatewayRejected => {
                "the gateway's introspection client was refused (check introspection_client_id/secret)".into()
            }
            IdpFailure::Local(LocalCause::Overloaded) => {
                "refused by the proxy itself: circuit breaker overflow or overload (not the IdP)".into()
            }
            IdpFailure::Local(LocalCause::NoHealthyUpstream) => {
                "refused by the proxy itself: no healthy host for idp_upstream".into()
            }
            IdpFailure::Local(LocalCause::ConnectFailure) => {
                "the proxy could not connect to the IdP, or lost the connection".into()
            }
        }
    }
}

/// How an exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Valid; the token's expiry (epoch seconds) bounds how long the verdict may be reused.
    Granted {
        grant: Grant,
        expires_at_s: Option<u64>,
    },
    /// A definite no.
    Denied(Denial),
    Failed(IdpFailure),
}

// ---- discovery ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryDocument {
    /// RFC 8414, the document Okta custom authorization servers serve first.
    OAuthAuthorizationServer,
    OpenIdConfiguration,
}

pub fn discovery_request(config: &Config, doc: DiscoveryDocument) -> IdpRequest {
    let suffix = match doc {
        DiscoveryDocument::OAuthAuthorizationServer => "/.well-known/oauth-authorization-server",
        DiscoveryDocument::OpenIdConfiguration => "/.well-known/openid-configuration",
    };
    let path = format!("{}{}", config.issuer_url.path.trim_end_matches('/'), suffix);
    IdpRequest::new(
        config,
        "GET",
        path,
        vec![("accept", "application/json".into())],
        Vec::new(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryError {
    Failed(IdpFailure),
    /// 404: try the other document.
    NotFound,
    /// The document names another issuer (RFC 8414 3.3) or endpoints on another origin.
    Mismatch(&'static str),
}

pub fn read_discovery(
    config: &Config,
    answer: IdpAnswer<'_>,
    now_s: u64,
) -> Result<Endpoints, DiscoveryError> {
    #[derive(Deserialize)]
    struct Metadata {
        issuer: String,
        token_endpoint: Option<String>,
        introspection_endpoint: Option<String>,
        jwks_uri: Option<String>,
    }
    match answer.status {
        Some(200) => {}
        Some(404) => return Err(DiscoveryError::NotFound),
        _ => return Err(DiscoveryError::Failed(failure_of(answer, now_s))),
    }
    let meta: Metadata =
        from_json_object(answer.body).ok_or(DiscoveryError::Failed(IdpFailure::Unreadable))?;
    if meta.issuer.trim_end_matches('/') != config.issuer {
        return Err(DiscoveryError::Mismatch(
            "the discovery document names another issuer",
        ));
    }
    let origin = config.issuer_url.origin();
    let path_of = |url: Option<String>| -> Result<Option<String>, DiscoveryError> {
        let Some(url) = url else { return Ok(None) };
        let parsed = crate::url::HttpUrl::parse(&url)
            .map_err(|_| DiscoveryError::Failed(IdpFailure::Unreadable))?;
        if parsed.origin() != origin {
            return Err(DiscoveryError::Mismatch(
                "an endpoint is not on the issuer's origin",
            ));
        }
        Ok(Some(parsed.path))
    };
    Ok(Endpoints {
        token_path: path_of(meta.token_endpoint)?,
        introspection_path: path_of(meta.introspection_endpoint)?,
        jwks_path: path_of(meta.jwks_uri)?,
    })
}

// ---- the key set (Bearer, `jwt` modes) ----

/// `GET` of the issuer's JWKS document.
pub fn jwks_request(config: &Config, jwks_path: &str) -> IdpRequest {
    IdpRequest::new(
        config,
        "GET",
        jwks_path.to_string(),
        vec![("accept", "application/json".into())],
        Vec::new(),
    )
}

/// Why a key set answer is no key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksAnswerError {
    Failed(IdpFailure),
    Unusable(crate::jwks::JwksError),
}

impl JwksAnswerError {
    pub fn describe(self) -> String {
        match self {
            JwksAnswerError::Failed(f) => f.describe(),
            JwksAnswerError::Unusable(e) => e.describe().to_string(),
        }
    }
}

/// A 200 whose body is a usable key set: the set and how many keys it skipped.
pub fn read_jwks(
    answer: IdpAnswer<'_>,
    now_s: u64,
) -> Result<(crate::jwks::KeySet, usize), JwksAnswerError> {
    if answer.status != Some(200) {
        return Err(JwksAnswerError::Failed(failure_of(answer, now_s)));
    }
    crate::jwks::KeySet::parse(answer.body).map_err(JwksAnswerError::Unusable)
}

// ---- the registrations document (`registrations_uri`) ----

/// `GET` of the registrations document, conditional on the `ETag` of the copy in use. It goes
/// to `registrations_upstream` with `registrations_authority`, not to the IdP.
pub fn registrations_request(
    endpoint: &RegistrationsEndpoint,
    if_none_match: Option<&str>,
) -> IdpRequest {
    let scheme = if endpoint.https { "https" } else { "http" };
    let mut headers = vec![
        (":method", "GET".to_string()),
        (":scheme", scheme.to_string()),
        (":path", endpoint.path.clone()),
        (":authority", endpoint.authority.clone()),
        ("user-agent", USER_AGENT.to_string()),
        ("accept", "application/json".to_string()),
    ];
    if let Some(etag) = if_none_match.filter(|e| crate::registrations::record::etag_ok(e)) {
        headers.push(("if-none-match", etag.to_string()));
    }
    IdpRequest {
        method: "GET",
        path: endpoint.path.clone(),
        headers,
        body: Vec::new(),
    }
}

/// A registrations answer that is a document, or says the copy in use is current.
#[derive(Debug)]
pub enum RegistrationsAnswer {
    /// 200: the document, parsed for the product, and its `ETag` (if it sent a usable one).
    Modified {
        registrations: Registrations,
        etag: Option<String>,
    },
    /// 304: the copy in use is current.
    NotModified,
}

/// Why a registrations answer is no document. Either way the last good copy stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationsAnswerError {
    /// No answer, an error status, a status other than 200 and 304.
    Failed(IdpFailure),
    /// A 200 whose body is refused: too large, malformed.
    Unusable(DocumentError),
}

impl RegistrationsAnswerError {
    pub fn describe(&self) -> String {
        match self {
            RegistrationsAnswerError::Failed(f) => f.describe(),
            RegistrationsAnswerError::Unusable(e) => format!("the document {}", e.describe()),
        }
    }
}

/// Reads the answer to [`registrations_request`] for `product`. The glue should not read a
/// body larger than [`crate::registrations::MAX_DOCUMENT_BYTES`] at all (the host says the
/// size first); the parser refuses one anyway.
pub fn read_registrations(
    answer: IdpAnswer<'_>,
    product: &str,
    now_s: u64,
) -> Result<RegistrationsAnswer, RegistrationsAnswerError> {
    match answer.status {
        Some(200) => {
            let registrations = Registrations::parse(answer.body, product)
                .map_err(RegistrationsAnswerError::Unusable)?;
            let etag = answer
                .header("etag")
                .map(str::trim)
                .filter(|e| crate::registrations::record::etag_ok(e))
                .map(str::to_string);
            Ok(RegistrationsAnswer::Modified {
                registrations,
                etag,
            })
        }
        Some(304) => Ok(RegistrationsAnswer::NotModified),
        _ => Err(RegistrationsAnswerError::Failed(failure_of(answer, now_s))),
    }
}

// ---- client credentials (Basic path) ----

/// `grant_type=client_credentials` with the configured scopes, authenticated as the client
/// itself (`client_secret_basic`): Okta answers 200 only for a valid id and secret.
pub fn token_request(config: &Config, token_path: &str, client: &ClientCredentials) -> IdpRequest {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if !config.scopes.is_empty() {
        form.append_pair("scope", &config.scope_string());
    }
    IdpRequest::new(
        config,
        "POST",
        token_path.to_string(),
        vec![
            ("content-type", "application/x-www-form-urlencoded".into()),
            ("accept", "application/json".into()),
            (
                "authorization",
                client_secret_basic(&client.client_id, &client.client_secret),
            ),
        ],
        form.finish().into_bytes(),
    )
}

/// Okta answers with JSON objects. serde's derived `Deserialize` also reads a struct from a
/// JSON array, field by field, so anything else is refused before it gets there.
fn from_json_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Option<T> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(body).ok()
}

#[derive(Deserialize)]
struct OAuthError<'a> {
    #[serde(borrow)]
    error: std::borrow::Cow<'a, str>,
}

pub fn read_token_answer(client: &ClientCredentials, answer: IdpAnswer<'_>, now_s: u64) -> Outcome {
    #[derive(Deserialize)]
    struct TokenAnswer {
        access_token: String,
        token_type: String,
        expires_in: Option<u64>,
        #[serde(default)]
        scope: String,
    }
    match answer.status {
        Some(200) => match from_json_object::<TokenAnswer>(answer.body) {
            // The token goes upstream as `Authorization: Bearer <token>`, the scope as a header.
            Some(t)
                if t.token_type.eq_ignore_ascii_case("bearer")
                    && crate::credentials::is_b64token(&t.access_token)
                    && header_safe(&t.scope) =>
            {
                Outcome::Granted {
                    grant: Grant {
                        identity: client.client_id.clone(),
                        scope: t.scope,
                        access_token: Some(t.access_token),
                    },
                    expires_at_s: t.expires_in.map(|e| now_s.saturating_add(e)),
                }
            }
            _ => Outcome::Failed(IdpFailure::Unreadable),
        },
        Some(400 | 401) => match from_json_object::<OAuthError<'_>>(answer.body) {
            // `unauthorized_client`: this client may not use the client-credentials grant, a
            // definite no for these credentials (and cached as one, so that retrying them costs
            // no call).
            Some(e) if e.error == "invalid_client" || e.error == "unauthorized_client" => {
                Outcome::Denied(Denial::InvalidClient)
            }
            Some(e) if e.error == "invalid_scope" => Outcome::Denied(Denial::InsufficientScope),
            // invalid_request, unsupported_grant_type: the gateway's request is wrong, not the
            // caller's credentials. No verdict.
            Some(_) => Outcome::Failed(IdpFailure::UnexpectedStatus(answer.status.unwrap_or(400))),
            None => Outcome::Failed(IdpFailure::Unreadable),
        },
        _ => Outcome::Failed(failure_of(answer, now_s)),
    }
}

// ---- introspection (Bearer path) ----

pub fn introspection_request(config: &Config, path: &str, token: &str) -> IdpRequest {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("token_type_hint", "access_token")
        .finish();
    let gateway = config
        .introspection_authorization
        .as_ref()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    IdpRequest::new(
        config,
        "POST",
        path.to_string(),
        vec![
            ("content-type", "application/x-www-form-urlencoded".into()),
            ("accept", "application/json".into()),
            ("authorization", gateway),
        ],
        body.into_bytes(),
    )
}

/// RFC 7662 answer checked against the contract: `active` the JSON `true`, `exp` in the
/// future, `iss` the issuer, `aud` containing the audience, every scope granted.
pub fn read_introspection(config: &Config, answer: IdpAnswer<'_>, now_s: u64) -> Outcome {
    match answer.status {
        Some(200) => {}
        Some(401) => return Outcome::Failed(IdpFailure::GatewayRejected),
        _ => return Outcome::Failed(failure_of(answer, now_s)),
    }
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(answer.body) else {
        return Outcome::Failed(IdpFailure::Unreadable);
    };
    match claims.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Outcome::Denied(Denial::InvalidToken),
        // A missing or non-boolean `active` is not an answer RFC 7662 allows.
        _ => return Outcome::Failed(IdpFailure::Unreadable),
    }
    let exp = match claims.get("exp") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(exp) if exp > now_s => Some(exp),
            _ => return Outcome::Denied(Denial::InvalidToken),
        },
    };
    if let Some(iss) = claims.get("iss") {
        if iss.as_str().map(|s| s.trim_end_matches('/')) != Some(config.issuer.as_str()) {
            return Outcome::Denied(Denial::InvalidToken);
        }
    }
    if let Some(audience) = &config.audience {
        if !audience_contains(claims.get("aud"), audience) {
            return Outcome::Denied(Denial::InvalidToken);
        }
    }
    let scope = claims
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // The scope goes upstream as `x-authenticated-scope`.
    if !header_safe(scope) {
        return Outcome::Failed(IdpFailure::Unreadable);
    }
    if !config
        .scopes
        .iter()
        .all(|s| scope.split(' ').any(|g| g == s))
    {
        return Outcome::Denied(Denial::InsufficientScope);
    }
    let Some(identity) = identity_of(&claims, &config.app_claim) else {
        return Outcome::Denied(Denial::InvalidToken);
    };
    Outcome::Granted {
        grant: Grant {
            identity: identity.to_string(),
            scope: scope.to_string(),
            access_token: None,
        },
        expires_at_s: exp,
    }
}

/// `aud`, a string or an array of strings, contains `audience`.
pub fn audience_contains(aud: Option<&Value>, audience: &str) -> bool {
    match aud {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

/// The app a token belongs to: `app_claim`, then `cid`, then `client_id`; `None` when none is
/// a non-empty string, or the one found is not header-safe.
pub fn identity_of<'a>(
    claims: &'a serde_json::Map<String, Value>,
    app_claim: &str,
) -> Option<&'a str> {
    crate::jwt::identity_claim(claims, app_claim).ok()
}

fn failure_of(answer: IdpAnswer<'_>, now_s: u64) -> IdpFailure {
    if let Some(cause) = local_cause(answer) {
        return IdpFailure::Local(cause);
    }
    match answer.status {
        None => IdpFailure::NoAnswer,
        Some(429) => IdpFailure::RateLimited {
            until_s: rate_limited_until(answer, now_s),
        },
        Some(s) if s >= 500 => IdpFailure::ServerError(s),
        Some(s) if (200..300).contains(&s) => IdpFailure::Unreadable,
        Some(s) => IdpFailure::UnexpectedStatus(s),
    }
}

/// Envoy's plain-text local replies are a few dozen bytes; anything longer is not one.
const MAX_LOCAL_REPLY_BODY: usize = 512;

/// Whether the local proxy answered the call itself (see [`LocalCause`]). An answer carrying
/// `x-okta-request-id` came from Okta, whatever else it says.
fn local_cause(answer: IdpAnswer<'_>) -> Option<LocalCause> {
    if answer.header("x-okta-request-id").is_some() {
        return None;
    }
    if answer.header("x-envoy-overloaded").is_some() {
        return Some(LocalCause::Overloaded);
    }
    if answer.status != Some(503) || answer.body.len() > MAX_LOCAL_REPLY_BODY {
        return None;
    }
    let body = std::str::from_utf8(answer.body).ok()?.trim();
    if body == "no healthy upstream" {
        return Some(LocalCause::NoHealthyUpstream);
    }
    let rest = body.strip_prefix("upstream connect error or disconnect/reset before headers")?;
    if rest.contains("overflow") {
        Some(LocalCause::Overloaded)
    } else {
        Some(LocalCause::ConnectFailure)
    }
}

/// `Retry-After` (seconds), else Okta's `X-Rate-Limit-Reset` (epoch seconds). An hour at most,
/// so a wild header cannot switch the IdP off for long.
fn rate_limited_until(answer: IdpAnswer<'_>, now_s: u64) -> Option<u64> {
    let until = match answer
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(s) => now_s.saturating_add(s),
        None => answer
            .header("x-rate-limit-reset")?
            .trim()
            .parse::<u64>()
            .ok()?,
    };
    Some(until.min(now_s.saturating_add(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn config(extra: &str) -> Config {
        Config::from_json(
            format!(
                r#"{{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta",
                    "introspection_client_id":"gw","introspection_client_secret":"gw-s","scopes":["api:read"],
                    "bearer_validation":"introspection"{extra}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn answer<'a>(
        status: Option<u16>,
        headers: &'a [(String, String)],
        body: &'a str,
    ) -> IdpAnswer<'a> {
        IdpAnswer {
            status,
            headers,
            body: body.as_bytes(),
        }
    }

    fn client() -> ClientCredentials {
        ClientCredentials {
            client_id: "0oa-app".into(),
            client_secret: "s".into(),
        }
    }

    #[test]
    fn every_call_carries_the_pseudo_headers_and_user_agent_first() {
        let c = config(r#","idp_authority":"okta.internal""#);
        for r in [
            token_request(&c, "/oauth2/default/v1/token", &client()),
            introspection_request(&c, "/oauth2/default/v1/introspect", "tok"),
            discovery_request(&c, DiscoveryDocument::OAuthAuthorizationServer),
        ] {
            let names: Vec<&str> = r.headers.iter().map(|(k, _)| *k).collect();
            assert_eq!(
                names[..5],
                [":method", ":scheme", ":path", ":authority", "user-agent"]
            );
            assert_eq!(r.header(":method"), Some(r.method));
            assert_eq!(r.header(":path"), Some(r.path.as_str()));
            assert_eq!(r.header(":scheme"), Some("https"));
            assert_eq!(r.header(":authority"), Some("okta.internal"));
            assert_eq!(r.header("user-agent"), Some(USER_AGENT));
            assert!(USER_AGENT.starts_with("okta-dcr-auth/"));
        }
        // a loopback issuer over http (development) is called over http
        let dev = Config::from_json(
            br#"{"issuer":"http://127.0.0.1:9001/oauth2/default","idp_upstream":"okta","accept":["basic"]}"#,
        )
        .unwrap();
        let r = token_request(&dev, "/t", &client());
        assert_eq!(r.header(":scheme"), Some("http"));
        assert_eq!(r.header(":authority"), Some("127.0.0.1:9001"));
    }

    #[test]
    fn token_request_is_a_client_credentials_grant_as_the_client() {
        let r = token_request(&config(""), "/oauth2/default/v1/token", &client());
        assert_eq!(r.method, "POST");
        assert_eq!(r.body, b"grant_type=client_credentials&scope=api%3Aread");
        assert!(r
            .headers
            .contains(&("content-type", "application/x-www-form-urlencoded".into())));
        assert!(r
            .headers
            .contains(&("authorization", client_secret_basic("0oa-app", "s"))));
        let no_scope = Config::from_json(
            br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"]}"#,
        )
        .unwrap();
        assert_eq!(
            token_request(&no_scope, "/t", &client()).body,
            b"grant_type=client_credentials"
        );
    }

    #[test]
    fn token_answers() {
        let ok = r#"{"token_type":"Bearer","expires_in":3600,"access_token":"a.b.c","scope":"api:read"}"#;
        match read_token_answer(&client(), answer(Some(200), &[], ok), NOW) {
            Outcome::Granted {
                grant,
                expires_at_s,
            } => {
                assert_eq!(grant.identity, "0oa-app");
                assert_eq!(grant.scope, "api:read");
                assert_eq!(grant.access_token.as_deref(), Some("a.b.c"));
                assert_eq!(expires_at_s, Some(NOW + 3600));
            }
            other => panic!("{other:?}"),
        }
        let cases = [
            (
                Some(401),
                r#"{"error":"invalid_client","error_description":"x"}"#,
                Outcome::Denied(Denial::InvalidClient),
            ),
            (
                Some(400),
                r#"{"error":"invalid_client"}"#,
                Outcome::Denied(Denial::InvalidClient),
            ),
            (
                Some(400),
                r#"{"error":"invalid_scope","error_description":"x"}"#,
                Outcome::Denied(Denial::InsufficientScope),
            ),
            (
                Some(400),
                r#"{"error":"unsupported_grant_type"}"#,
                Outcome::Failed(IdpFailure::UnexpectedStatus(400)),
            ),
            (Some(401), "<html>", Outcome::Failed(IdpFailure::Unreadable)),
            (Some(200), "", Outcome::Failed(IdpFailure::Unreadable)),
            (
                Some(200),
                "<html></html>",
                Outcome::Failed(IdpFailure::Unreadable),
            ),
            (
                Some(200),
                r#"{"token_type":"Bearer","access_token":""}"#,
                Outcome::Failed(IdpFailure::Unreadable),
            ),
            (
                Some(200),
                r#"{"token_type":"mac","access_token":"x"}"#,
                Outcome::Failed(IdpFailure::Unreadable),
            ),
            (Some(500), "", Outcome::Failed(IdpFailure::ServerError(500))),
            (
                Some(302),
                "",
                Outcome::Failed(IdpFailure::UnexpectedStatus(302)),
            ),
            (None, "", Outcome::Failed(IdpFailure::NoAnswer)),
            // serde reads a struct from a JSON array too; Okta never answers with one
            (
                Some(200),
                r#"["a.b.c","Bearer",3600,"api:read"]"#,
                Outcome::Failed(IdpFailure::Unreadable),
            ),
            (
                Some(400),
                r#"["invalid_client"]"#,
                Outcome::Failed(IdpFailure::Unreadable),
            ),
            // what would go upstream in a header must be one
            (
                Some(200),
                r#"{"token_type":"Bearer","access_token":"a\nb"}"#,
                Outcome::Failed(IdpFailure::Unreadable),
            ),
            (
                Some(200),
                r#"{"token_type":"Bearer","access_token":"a.b.c","scope":"api:read\r\nx-injected: 1"}"#,
                Outcome::Failed(IdpFailure::Unreadable),
            ),
            (
                Some(429),
                "{}",
                Outcome::Failed(IdpFailure::RateLimited { until_s: None }),
            ),
        ];
        for (status, body, expected) in cases {
            assert_eq!(
                read_token_answer(&client(), answer(status, &[], body), NOW),
                expected,
                "{status:?} {body}"
            );
        }
    }

    #[test]
    fn rate_limit_reset_is_honoured_within_bounds() {
        let h = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let until = |headers: &[(String, String)]| match read_token_answer(
            &client(),
            answer(Some(429), headers, ""),
            NOW,
        ) {
            Outcome::Failed(IdpFailure::RateLimited { until_s }) => until_s,
            other => panic!("{other:?}"),
        };
        assert_eq!(until(&h("Retry-After", "2")), Some(NOW + 2));
        assert_eq!(
            until(&h("X-Rate-Limit-Reset", &(NOW + 5).to_string())),
            Some(NOW + 5)
        );
        assert_eq!(
            until(&h("x-rate-limit-reset", "99999999999")),
            Some(NOW + 3600)
        );
        assert_eq!(until(&h("retry-after", "soon")), None);
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// How the token endpoint's answer with this status, headers and body fails.
    fn token_failure(status: u16, pairs: &[(&str, &str)], body: &str) -> Outcome {
        read_token_answer(&client(), answer(Some(status), &headers(pairs), body), NOW)
    }

    const OVERFLOW: &str =
        "upstream connect error or disconnect/reset before headers. reset reason: overflow";
    const REFUSED: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: delayed connect error: 111";

    fn local(cause: LocalCause) -> Outcome {
        Outcome::Failed(IdpFailure::Local(cause))
    }

    #[test]
    fn answers_the_local_proxy_made_itself_are_local_failures() {
        let overloaded = [("x-envoy-overloaded", "true")];
        assert_eq!(
            token_failure(503, &overloaded, OVERFLOW),
            local(LocalCause::Overloaded)
        );
        assert_eq!(
            token_failure(503, &[("X-Envoy-Overloaded", "true")], ""),
            local(LocalCause::Overloaded)
        );
        assert_eq!(
            token_failure(503, &[], OVERFLOW),
            local(LocalCause::Overloaded)
        );
        for body in ["no healthy upstream", "no healthy upstream\n"] {
            assert_eq!(
                token_failure(503, &[], body),
                local(LocalCause::NoHealthyUpstream)
            );
        }
        assert_eq!(
            token_failure(503, &[], REFUSED),
            local(LocalCause::ConnectFailure)
        );
        // the same on the other endpoints
        let cfg = config("");
        assert_eq!(
            read_introspection(&cfg, answer(Some(503), &[], "no healthy upstream"), NOW),
            local(LocalCause::NoHealthyUpstream)
        );
        assert_eq!(
            read_discovery(&cfg, answer(Some(503), &headers(&overloaded), ""), NOW),
            Err(DiscoveryError::Failed(IdpFailure::Local(
                LocalCause::Overloaded
            )))
        );
        assert!(IdpFailure::Local(LocalCause::Overloaded)
            .describe()
            .contains("not the IdP"));
    }

    #[test]
    fn answers_okta_or_anything_beyond_the_proxy_sent_stay_okta_failures() {
        let server_error = |s| Outcome::Failed(IdpFailure::ServerError(s));
        // Okta's request id: Okta (or an Envoy at its edge) answered, whatever else it says
        let okta = [("x-okta-request-id", "abc"), ("x-envoy-overloaded", "true")];
        assert_eq!(token_failure(503, &okta, ""), server_error(503));
        assert_eq!(
            token_failure(503, &okta[..1], "no healthy upstream"),
            server_error(503)
        );
        assert_eq!(
            token_failure(503, &[], r#"{"errorCode":"E0000009"}"#),
            server_error(503)
        );
        assert_eq!(
            token_failure(502, &[], "no healthy upstream"),
            server_error(502)
        );
        let long = format!("no healthy upstream{}", " ".repeat(MAX_LOCAL_REPLY_BODY));
        assert_eq!(token_failure(503, &[], &long), server_error(503));
        // Envoy's own timeout cannot be told from a slow Okta: it stays a 504
        assert_eq!(
            token_failure(504, &[], "upstream request timeout"),
            server_error(504)
        );
        let reset = (NOW + 5).to_string();
        assert_eq!(
            token_failure(429, &[("x-rate-limit-reset", &reset)], "{}"),
            Outcome::Failed(IdpFailure::RateLimited {
                until_s: Some(NOW + 5)
            })
        );
    }

    fn introspect(cfg: &Config, body: &str) -> Outcome {
        read_introspection(cfg, answer(Some(200), &[], body), NOW)
    }

    #[test]
    fn introspection_accepts_only_what_the_contract_allows() {
        let cfg = config(r#","audience":"api://default""#);
        let good = serde_json::json!({
            "active": true, "scope": "api:read api:write", "client_id": "0oa-client", "app_id": "0oa-app",
            "exp": NOW + 60, "iss": "https://o.okta.com/oauth2/default", "aud": "api://default"
        });
        match introspect(&cfg, &good.to_string()) {
            Outcome::Granted {
                grant,
                expires_at_s,
            } => {
                assert_eq!(grant.identity, "0oa-app");
                assert_eq!(grant.scope, "api:read api:write");
                assert_eq!(grant.access_token, None);
                assert_eq!(expires_at_s, Some(NOW + 60));
            }
            other => panic!("{other:?}"),
        }
        let with = |k: &str, v: serde_json::Value| {
            let mut j = good.clone();
            j[k] = v;
            introspect(&cfg, &j.to_string())
        };
        let invalid = Outcome::Denied(Denial::InvalidToken);
        assert_eq!(introspect(&cfg, r#"{"active":false}"#), invalid);
        assert_eq!(
            with("active", "true".into()),
            Outcome::Failed(IdpFailure::Unreadable)
        );
        assert_eq!(
            introspect(&cfg, r#"{"scope":"api:read"}"#),
            Outcome::Failed(IdpFailure::Unreadable)
        );
        assert_eq!(with("exp", (NOW - 1).into()), invalid);
        assert_eq!(with("exp", NOW.into()), invalid);
        assert_eq!(with("exp", "soon".into()), invalid);
        assert_eq!(with("iss", "https://evil/oauth2/default".into()), invalid);
        assert_eq!(with("aud", "api://other".into()), invalid);
        assert!(matches!(
            with("aud", serde_json::json!(["x", "api://default"])),
            Outcome::Granted { .. }
        ));
        assert_eq!(
            with("scope", "api:write".into()),
            Outcome::Denied(Denial::InsufficientScope)
        );
        assert_eq!(
            with("scope", "api:reader".into()),
            Outcome::Denied(Denial::InsufficientScope)
        );
        assert_eq!(
            with("scope", "api:read\nx-injected: 1".into()),
            Outcome::Failed(IdpFailure::Unreadable)
        );
        // identity falls back to cid, then client_id
        let mut j = good.clone();
        j.as_object_mut().unwrap().remove("app_id");
        match introspect(&cfg, &j.to_string()) {
            Outcome::Granted { grant, .. } => assert_eq!(grant.identity, "0oa-client"),
            other => panic!("{other:?}"),
        }
        j["cid"] = "0oa-cid".into();
        match introspect(&cfg, &j.to_string()) {
            Outcome::Granted { grant, .. } => assert_eq!(grant.identity, "0oa-cid"),
            other => panic!("{other:?}"),
        }
        // the gateway's own credentials refused: never the client's fault
        assert_eq!(
            read_introspection(
                &cfg,
                answer(Some(401), &[], r#"{"error":"invalid_client"}"#),
                NOW
            ),
            Outcome::Failed(IdpFailure::GatewayRejected)
        );
        assert_eq!(
            introspect(&cfg, "[]"),
            Outcome::Failed(IdpFailure::Unreadable)
        );
    }

    #[test]
    fn introspection_request_is_rfc_7662() {
        let r = introspection_request(&config(""), "/oauth2/default/v1/introspect", "tok+en/=");
        assert_eq!(r.body, b"token=tok%2Ben%2F%3D&token_type_hint=access_token");
        assert!(r
            .headers
            .contains(&("authorization", client_secret_basic("gw", "gw-s"))));
    }

    #[test]
    fn discovery_documents() {
        let cfg = config("");
        assert_eq!(
            discovery_request(&cfg, DiscoveryDocument::OAuthAuthorizationServer).path,
            "/oauth2/default/.well-known/oauth-authorization-server"
        );
        let doc = r#"{"issuer":"https://o.okta.com/oauth2/default","token_endpoint":"https://o.okta.com/oauth2/default/v1/token","introspection_endpoint":"https://o.okta.com/oauth2/default/v1/introspect","jwks_uri":"https://o.okta.com/oauth2/default/v1/keys"}"#;
        assert_eq!(
            read_discovery(&cfg, answer(Some(200), &[], doc), NOW),
            Ok(Endpoints {
                token_path: Some("/oauth2/default/v1/token".into()),
                introspection_path: Some("/oauth2/default/v1/introspect".into()),
                jwks_path: Some("/oauth2/default/v1/keys".into()),
            })
        );
        let keys_elsewhere = doc.replace(
            "https://o.okta.com/oauth2/default/v1/keys",
            "https://evil.example/keys",
        );
        assert!(matches!(
            read_discovery(&cfg, answer(Some(200), &[], &keys_elsewhere), NOW),
            Err(DiscoveryError::Mismatch(_))
        ));
        let elsewhere = doc.replace(
            "https://o.okta.com/oauth2/default/v1/token",
            "https://evil.example/v1/token",
        );
        assert!(matches!(
            read_discovery(&cfg, answer(Some(200), &[], &elsewhere), NOW),
            Err(DiscoveryError::Mismatch(_))
        ));
        let other_issuer = doc.replacen(
            "https://o.okta.com/oauth2/default",
            "https://o.okta.com/oauth2/other",
            1,
        );
        assert!(matches!(
            read_discovery(&cfg, answer(Some(200), &[], &other_issuer), NOW),
            Err(DiscoveryError::Mismatch(_))
        ));
        assert_eq!(
            read_discovery(&cfg, answer(Some(404), &[], ""), NOW),
            Err(DiscoveryError::NotFound)
        );
        assert_eq!(
            read_discovery(&cfg, answer(Some(200), &[], "nope"), NOW),
            Err(DiscoveryError::Failed(IdpFailure::Unreadable))
        );
        assert_eq!(
            read_discovery(
                &cfg,
                answer(
                    Some(200),
                    &[],
                    r#"["https://o.okta.com/oauth2/default",null,null]"#
                ),
                NOW
            ),
            Err(DiscoveryError::Failed(IdpFailure::Unreadable))
        );
    }

    fn endpoint() -> RegistrationsEndpoint {
        RegistrationsEndpoint {
            https: true,
            path: "/v1/registrations.json".into(),
            upstream: "portal".into(),
            authority: "portal.example.com".into(),
        }
    }

    #[test]
    fn the_registrations_request_is_conditional_on_the_etag() {
        let r = registrations_request(&endpoint(), Some("\"v1\""));
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/v1/registrations.json");
        assert_eq!(r.header(":scheme"), Some("https"));
        assert_eq!(r.header(":authority"), Some("portal.example.com"));
        assert_eq!(r.header(":path"), Some("/v1/registrations.json"));
        assert_eq!(r.header("if-none-match"), Some("\"v1\""));
        assert_eq!(r.header("user-agent"), Some(USER_AGENT));
        assert!(r.body.is_empty());
        let first = registrations_request(&endpoint(), None);
        assert_eq!(first.header("if-none-match"), None);
        let odd = registrations_request(&endpoint(), Some("a\r\nx-injected: 1"));
        assert_eq!(odd.header("if-none-match"), None);
        let plain = registrations_request(
            &RegistrationsEndpoint {
                https: false,
                ..endpoint()
            },
            None,
        );
        assert_eq!(plain.header(":scheme"), Some("http"));
    }

    #[test]
    fn registrations_answers_are_read() {
        let doc = r#"{"applications":[{"client_id":"0oaA","registrations":[{"product":"p","status":"approved"}]}]}"#;
        let etag = [("ETag".to_string(), " \"v2\" ".to_string())];
        match read_registrations(answer(Some(200), &etag, doc), "p", NOW) {
            Ok(RegistrationsAnswer::Modified {
                registrations,
                etag,
            }) => {
                assert_eq!(etag.as_deref(), Some("\"v2\""));
                assert!(matches!(
                    registrations.lookup("0oaA"),
                    crate::registrations::Standing::Approved(_)
                ));
            }
            other => panic!("{other:?}"),
        }
        match read_registrations(answer(Some(200), &[], doc), "p", NOW) {
            Ok(RegistrationsAnswer::Modified { etag, .. }) => assert_eq!(etag, None),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_registrations(answer(Some(304), &etag, ""), "p", NOW),
            Ok(RegistrationsAnswer::NotModified)
        ));
        for (status, body, want) in [
            (
                None,
                "",
                RegistrationsAnswerError::Failed(IdpFailure::NoAnswer),
            ),
            (
                Some(500),
                "",
                RegistrationsAnswerError::Failed(IdpFailure::ServerError(500)),
            ),
            (
                Some(404),
                "",
                RegistrationsAnswerError::Failed(IdpFailure::UnexpectedStatus(404)),
            ),
            (
                Some(204),
                "",
                RegistrationsAnswerError::Failed(IdpFailure::Unreadable),
            ),
        ] {
            assert_eq!(
                read_registrations(answer(status, &[], body), "p", NOW).unwrap_err(),
                want
            );
        }
        let e = read_registrations(answer(Some(200), &[], "<html>"), "p", NOW).unwrap_err();
        assert!(matches!(e, RegistrationsAnswerError::Unusable(_)), "{e:?}");
        assert!(e.describe().contains("not valid JSON"), "{}", e.describe());
        let local = [("x-envoy-overloaded".to_string(), "true".to_string())];
        assert_eq!(
            read_registrations(answer(Some(503), &local, ""), "p", NOW).unwrap_err(),
            RegistrationsAnswerError::Failed(IdpFailure::Local(LocalCause::Overloaded))
        );
    }
}
