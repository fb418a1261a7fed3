//! Plugin configuration: the JSON operators write (`RawConfig`, serde with named defaults and
//! unknown fields refused) and the checked form every other module uses (`Config`). Checking
//! happens once, at plugin start; a refusal names the field and never echoes a value.

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::credentials::{Accepted, Scheme};
use crate::jwks::Alg;
use crate::jwt::JwtPolicy;
use crate::registrations::{Registrations, MAX_ID_LEN};
use crate::url::HttpUrl;
use crate::verdict::ReplyTerms;

/// Bounds that keep a typo from becoming an outage or an unbounded table.
const MAX_TTL_S: u64 = 86_400;
const MAX_SLOTS: u32 = 262_144;
const MAX_TIMEOUT_MS: u64 = 60_000;
const MAX_CALLS_IN_FLIGHT: u32 = 10_000;
const MAX_CALLS_PER_MINUTE: u32 = 100_000;
const MAX_SIGNATURE_CHECKS_PER_S: u32 = 100_000;
const MAX_CLIENT_FAILURES: u32 = 1_000;
const MAX_FAILURE_WINDOW_S: u64 = 3_600;
const MAX_CLOCK_SKEW_S: u64 = 300;
const MAX_REGISTRATIONS_REFRESH_S: u64 = 3_600;
/// 30 days: past that a last good copy is not "recent" by any measure.
const MAX_REGISTRATIONS_MAX_AGE_S: u64 = 2_592_000;

/// How a Bearer token is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BearerValidation {
    /// Signature and claims checked locally against the issuer's key set.
    #[serde(rename = "jwt")]
    Jwt,
    /// RFC 7662 introspection at Okta.
    #[serde(rename = "introspection")]
    Introspection,
    /// Checked locally first, then introspected (revocation).
    #[serde(rename = "jwt+introspection")]
    JwtThenIntrospection,
}

impl BearerValidation {
    pub fn checks_jwt(self) -> bool {
        self != BearerValidation::Introspection
    }

    pub fn introspects(self) -> bool {
        self != BearerValidation::Jwt
    }
}

/// What Bearer tokens look like, for the cheap check before an introspection call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BearerFormat {
    Jwt,
    Opaque,
}

/// No `Debug`: it holds the introspection secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub issuer: String,
    pub idp_upstream: String,
    #[serde(default)]
    pub idp_authority: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    #[serde(default)]
    pub introspection_client_id: Option<String>,
    #[serde(default)]
    pub introspection_client_secret: Option<String>,
    /// The name of an environment variable of the VM that holds the secret (Istio's
    /// `vmConfig.env`, Envoy's `vm_config.environment_variables`, Envoy Gateway's
    /// `env.hostKeys`), so that it need not sit in the configuration.
    pub introspection_client_secret_env: Option<String>,
    #[serde(default = "default_accept")]
    pub accept: Vec<Scheme>,
    #[serde(default = "default_true")]
    pub allow_raw_basic: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default = "default_app_claim")]
    pub app_claim: String,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default = "default_cache_ttl_s")]
    pub cache_ttl_s: u64,
    #[serde(default = "default_negative_cache_ttl_s")]
    pub negative_cache_ttl_s: u64,
    #[serde(default = "default_cache_slots")]
    pub cache_slots: u32,
    #[serde(default)]
    pub stale_if_error_s: u64,
    #[serde(default = "default_idp_timeout_ms")]
    pub idp_timeout_ms: u64,
    #[serde(default = "default_realm")]
    pub realm: String,
    #[serde(default = "default_true")]
    pub forward_access_token: bool,
    #[serde(default = "default_max_idp_calls_in_flight")]
    pub max_idp_calls_in_flight: u32,
    #[serde(default = "default_idp_calls_per_minute")]
    pub idp_calls_per_minute: u32,
    #[serde(default = "default_max_client_failures")]
    pub max_client_failures: u32,
    #[serde(default = "default_client_failure_window_s")]
    pub client_failure_window_s: u64,
    #[serde(default = "default_bearer_validation")]
    pub bearer_validation: BearerValidation,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default = "default_jwt_algorithms")]
    pub jwt_algorithms: Vec<String>,
    #[serde(default = "default_clock_skew_s")]
    pub clock_skew_s: u64,
    #[serde(default = "default_max_signature_checks_per_s")]
    pub max_signature_checks_per_s: u32,
    #[serde(default = "default_bearer_format")]
    pub bearer_format: BearerFormat,
    /// The API product (version) this filter instance guards; registrations apply when set.
    #[serde(default)]
    pub product: Option<String>,
    /// The registrations document, inline (kept as written, parsed by `registrations`).
    #[serde(default)]
    pub registrations: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    pub registrations_uri: Option<String>,
    #[serde(default)]
    pub registrations_upstream: Option<String>,
    #[serde(default)]
    pub registrations_authority: Option<String>,
    #[serde(default = "default_registrations_refresh_s")]
    pub registrations_refresh_s: u64,
    #[serde(default = "default_registrations_max_age_s")]
    pub registrations_max_age_s: u64,
}

fn default_registrations_refresh_s() -> u64 {
    10
}
fn default_registrations_max_age_s() -> u64 {
    86_400
}

fn default_bearer_validation() -> BearerValidation {
    BearerValidation::Jwt
}
fn default_jwt_algorithms() -> Vec<String> {
    vec!["RS256".to_string()]
}
fn default_clock_skew_s() -> u64 {
    60
}
fn default_max_signature_checks_per_s() -> u32 {
    1_000
}
fn default_bearer_format() -> BearerFormat {
    BearerFormat::Jwt
}

fn default_accept() -> Vec<Scheme> {
    vec![Scheme::Basic, Scheme::Bearer]
}
fn default_true() -> bool {
    true
}
fn default_app_claim() -> String {
    "app_id".to_string()
}
fn default_cache_ttl_s() -> u64 {
    300
}
fn default_negative_cache_ttl_s() -> u64 {
    30
}
fn default_cache_slots() -> u32 {
    16_384
}
fn default_idp_timeout_ms() -> u64 {
    3_000
}
fn default_max_idp_calls_in_flight() -> u32 {
    64
}
fn default_idp_calls_per_minute() -> u32 {
    600
}
fn default_max_client_failures() -> u32 {
    5
}
fn default_client_failure_window_s() -> u64 {
    60
}
fn default_realm() -> String {
    "api".to_string()
}

/// Why a configuration was refused: the field and a reason that never contains a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}` {}", self.field, self.reason)
    }
}

fn refuse(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// `field`'s value must lie in `low..=high`.
fn between(field: &str, value: u64, low: u64, high: u64) -> Result<(), ConfigError> {
    if (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(refuse(field, format!("must be between {low} and {high}")))
    }
}

/// A value that must never be printed: its `Debug` says so instead.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Without a trailing `/`, compared byte for byte with `iss`.
    pub issuer: String,
    pub issuer_url: HttpUrl,
    pub idp_upstream: String,
    pub idp_authority: String,
    /// The endpoints configured (`:path`s); discovery fills the gaps.
    pub endpoints: Endpoints,
    /// `Basic …` value authenticating the gateway at the introspection endpoint.
    pub introspection_authorization: Option<Redacted>,
    /// Which credentials clients may present.
    pub accepted: Accepted,
    pub scopes: Vec<String>,
    pub app_claim: String,
    pub audience: Option<String>,
    pub cache_ttl_ms: u64,
    pub negative_cache_ttl_ms: u64,
    pub cache_slots: u32,
    pub stale_if_error_ms: u64,
    pub idp_timeout_ms: u64,
    pub realm: String,
    pub forward_access_token: bool,
    /// Per worker: beyond it, credentials without a usable verdict get 503 at once.
    pub max_idp_calls_in_flight: usize,
    /// IdP calls per endpoint per minute, all workers together (a share reserved for
    /// refreshes of credentials that had a positive verdict).
    pub idp_calls_per_minute: u32,
    /// `invalid_client` answers for one client id within the window before its unverified
    /// secrets are refused locally; 0: never.
    pub max_client_failures: u32,
    pub client_failure_window_ms: u64,
    /// How Bearer tokens are checked.
    pub bearer_validation: BearerValidation,
    pub bearer_format: BearerFormat,
    /// Leeway for `exp`, `nbf`, `iat` in local checks.
    pub clock_skew_s: u64,
    /// Per worker: token signatures checked per second at most (`signatures::SignatureBudget`).
    pub max_signature_checks_per_s: u32,
    /// What a token must satisfy locally: `Some` exactly when Bearer tokens are accepted and
    /// `bearer_validation` includes `jwt`.
    pub jwt: Option<JwtPolicy>,
    /// Registrations (`product` set): only apps with an approved registration pass.
    pub registrations: Option<RegistrationsConfig>,
    /// SHA-256 of the configuration as given: it scopes every cache key and shared-data name,
    /// so a verdict reached under one configuration never answers under another.
    pub digest: [u8; 32],
}

/// What `product` and the `registrations*` fields say.
#[derive(Debug, Clone)]
pub struct RegistrationsConfig {
    /// Compared byte for byte with each registration's `product`.
    pub product: String,
    pub source: RegistrationsSource,
    /// `registrations_refresh_s`: how often a fetched document is revalidated (the revocation
    /// bound). Unused for an inline document.
    pub refresh_ms: u64,
    /// `registrations_max_age_s`: how long after its last confirmation a fetched document
    /// still answers while its source fails (then 503). Unused for an inline document.
    pub max_age_ms: u64,
}

/// Where the registrations document comes from.
#[derive(Debug, Clone)]
pub enum RegistrationsSource {
    /// `registrations`: parsed at start for `product`.
    Inline(std::sync::Arc<Registrations>),
    /// `registrations_uri`, fetched by one worker for the gateway.
    Fetched(RegistrationsEndpoint),
}

/// How the document at `registrations_uri` is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationsEndpoint {
    /// `:scheme` (`https`, or `http` for a loopback host).
    pub https: bool,
    /// `:path`.
    pub path: String,
    /// `registrations_upstream` (default `idp_upstream`): the cluster, or Kong's `host:port`.
    pub upstream: String,
    /// `registrations_authority` (default: the URI's `host[:port]`).
    pub authority: String,
}

impl Config {
    /// Parses and checks plugin configuration bytes, in a VM with no environment variables.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        Config::from_json_with_env(bytes, &|_| None)
    }

    /// Parses and checks plugin configuration bytes; `env` reads the VM's environment
    /// variables (for `introspection_client_secret_env`).
    pub fn from_json_with_env(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let mut raw = RawConfig::deserialize(&mut de).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                return refuse(
                    "(configuration)",
                    format!(
                        "is not valid JSON (line {}, column {})",
                        e.line(),
                        e.column()
                    ),
                );
            }
            let reason = describe_json_error(&e);
            let field = reason.field.or_else(|| field_at_fault(bytes));
            refuse(field.as_deref().unwrap_or("(configuration)"), reason.text)
        })?;
        de.end().map_err(|_| {
            refuse(
                "(configuration)",
                "has trailing characters after the JSON object",
            )
        })?;
        raw.introspection_client_secret = raw.secret_from(env)?;
        raw.check(Sha256::digest(bytes).into())
    }

    /// Which endpoints this configuration calls.
    pub fn needs(&self) -> Needs {
        let bearer = self.accepted.bearer;
        Needs {
            token: self.accepted.basic,
            introspection: bearer && self.bearer_validation.introspects(),
            jwks: bearer && self.bearer_validation.checks_jwt(),
        }
    }

    /// Whether the configured endpoints leave a needed one out.
    pub fn needs_discovery(&self) -> bool {
        !self.endpoints.covers(self.needs())
    }

    /// The scopes as one space-separated string (the `scope` parameter and challenge value).
    pub fn scope_string(&self) -> String {
        self.scopes.join(" ")
    }

    /// What this configuration's replies say besides the denial.
    pub fn reply_terms(&self) -> ReplyTerms {
        ReplyTerms {
            realm: self.realm.clone(),
            accepted: self.accepted,
            scope: self.scope_string(),
        }
    }
}

struct JsonReason {
    field: Option<String>,
    text: String,
}

/// serde_json's messages quote the offending value (`invalid type: string "…"`), which may be a
/// secret: keep only what was expected, and the field name for missing or unknown fields.
/// serde_json's type errors name no field: find the one at fault by parsing each field alone
/// (and each element of an array alone) with the required fields filled in. Only ever run for
/// a configuration already refused; `None` when no single field explains the error.
fn field_at_fault(bytes: &[u8]) -> Option<String> {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(bytes) else {
        return None;
    };
    let fails_alone = |name: &str, value: &serde_json::Value| {
        let mut alone = serde_json::Map::new();
        for required in ["issuer", "idp_upstream"] {
            alone.insert(required.into(), serde_json::Value::String(String::new()));
        }
        alone.insert(name.into(), value.clone());
        serde_json::to_vec(&alone)
            .is_ok_and(|text| serde_json::from_slice::<RawConfig>(&text).is_err())
    };
    let (name, value) = fields
        .iter()
        .find(|(name, value)| fails_alone(name, value))?;
    let element = match value {
        serde_json::Value::Array(items) => items
            .iter()
            .position(|item| fails_alone(name, &serde_json::Value::Array(vec![item.clone()]))),
        _ => None,
    };
    Some(match element {
        Some(i) => format!("{name}[{i}]"),
        None => name.clone(),
    })
}

fn describe_json_error(e: &serde_json::Error) -> JsonReason {
    let msg = e.to_string();
    // serde_json appends " at line L column C"; the value itself may contain that text.
    let msg = msg
        .rsplit_once(" at line ")
        .map_or(msg.as_str(), |(m, _)| m);
    let quoted = |prefix: &str| {
        msg.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('`'))
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
    };
    if let Some(field) = quoted("missing field ") {
        return JsonReason {
            field: Some(field),
            text: "is required".into(),
        };
    }
    if let Some(field) = quoted("unknown field ") {
        return JsonReason {
            field: Some(field),
            text: "is not a configuration field".into(),
        };
    }
    if let Some(field) = quoted("duplicate field ") {
        return JsonReason {
            field: Some(field),
            text: "is given twice".into(),
        };
    }
    if msg.starts_with("unknown variant") {
        // `unknown variant `<value>`, expected one of ...`: only serde's list is shown.
        let text = match msg.rfind(", expected ") {
            Some(i) => format!("must be {}", &msg[i + ", expected ".len()..]),
            None => "is not one of the allowed values".into(),
        };
        return JsonReason { field: None, text };
    }
    // `invalid type: string "<value>", expected <what>`: the value may contain ", expected "
    // too, so only serde's own, the last one, starts the part that is safe to show.
    let text = match msg.rfind(", expected ") {
        Some(i) => format!("has the wrong type or value: {}", &msg[i + 2..]),
        None => "has the wrong type or value".into(),
    };
    JsonReason { field: None, text }
}

impl RawConfig {
    /// Checks each group of fields in turn; the first refusal names its field.
    fn check(self, digest: [u8; 32]) -> Result<Config, ConfigError> {
        let issuer = self.issuer.trim_end_matches('/').to_string();
        let issuer_url = checked_url("issuer", &issuer)?;
        let idp_authority = self.check_upstream(&issuer_url)?;
        let accepted = self.check_accept()?;
        let endpoints = self.check_endpoints()?;
        let introspection_authorization = self.check_introspection_client(accepted)?;
        self.check_claims()?;
        self.check_limits()?;
        check_realm(&self.realm)?;
        let jwt = self.check_jwt(accepted, &issuer)?;
        let registrations = self.check_registrations()?;
        Ok(Config {
            issuer,
            issuer_url,
            idp_upstream: self.idp_upstream,
            idp_authority,
            endpoints,
            introspection_authorization,
            accepted,
            scopes: self.scopes,
            app_claim: self.app_claim,
            audience: self.audience,
            cache_ttl_ms: self.cache_ttl_s * 1000,
            negative_cache_ttl_ms: self.negative_cache_ttl_s * 1000,
            cache_slots: self.cache_slots,
            stale_if_error_ms: self.stale_if_error_s * 1000,
            idp_timeout_ms: self.idp_timeout_ms,
            realm: self.realm,
            forward_access_token: self.forward_access_token,
            max_idp_calls_in_flight: self.max_idp_calls_in_flight as usize,
            idp_calls_per_minute: self.idp_calls_per_minute,
            max_client_failures: self.max_client_failures,
            client_failure_window_ms: self.client_failure_window_s * 1000,
            bearer_validation: self.bearer_validation,
            bearer_format: self.bearer_format,
            clock_skew_s: self.clock_skew_s,
            max_signature_checks_per_s: self.max_signature_checks_per_s,
            jwt,
            registrations,
            digest,
        })
    }

    /// `product` and the registrations fields: with `product`, exactly one of `registrations`
    /// and `registrations_uri`; without it, neither (nor the fetch's upstream and authority).
    fn check_registrations(&self) -> Result<Option<RegistrationsConfig>, ConfigError> {
        between(
            "registrations_refresh_s",
            self.registrations_refresh_s,
            1,
            MAX_REGISTRATIONS_REFRESH_S,
        )?;
        between(
            "registrations_max_age_s",
            self.registrations_max_age_s,
            self.registrations_refresh_s,
            MAX_REGISTRATIONS_MAX_AGE_S,
        )?;
        let Some(product) = &self.product else {
            // The registrations fields mean nothing without the product they are for.
            let set = [
                ("registrations", self.registrations.is_some()),
                ("registrations_uri", self.registrations_uri.is_some()),
                (
                    "registrations_upstream",
                    self.registrations_upstream.is_some(),
                ),
                (
                    "registrations_authority",
                    self.registrations_authority.is_some(),
                ),
            ];
            return match set.into_iter().find(|(_, set)| *set) {
                Some((field, _)) => Err(refuse(field, "needs product (the API product it is for)")),
                None => Ok(None),
            };
        };
        if product.is_empty() || product.len() > MAX_ID_LEN || has_control(product) {
            return Err(refuse(
                "product",
                format!("must be 1 to {MAX_ID_LEN} bytes without control characters"),
            ));
        }
        let source = self.registrations_source(product)?;
        Ok(Some(RegistrationsConfig {
            product: product.clone(),
            source,
            refresh_ms: self.registrations_refresh_s * 1000,
            max_age_ms: self.registrations_max_age_s * 1000,
        }))
    }

    /// Where the registrations document of `product` comes from: inline (parsed now), or a URL.
    fn registrations_source(&self, product: &str) -> Result<RegistrationsSource, ConfigError> {
        Ok(match (&self.registrations, &self.registrations_uri) {
            (Some(_), Some(_)) => {
                return Err(refuse(
                    "registrations_uri",
                    "and registrations are both set: set one",
                ))
            }
            (None, None) => {
                return Err(refuse(
                    "registrations",
                    "or registrations_uri is required when product is set",
                ))
            }
            (Some(doc), None) => {
                let uri_only = [
                    (
                        "registrations_upstream",
                        self.registrations_upstream.is_some(),
                    ),
                    (
                        "registrations_authority",
                        self.registrations_authority.is_some(),
                    ),
                ];
                if let Some((field, _)) = uri_only.into_iter().find(|(_, set)| *set) {
                    return Err(refuse(field, "applies to registrations_uri only"));
                }
                let parsed = Registrations::parse(doc.get().as_bytes(), product)
                    .map_err(|e| refuse("registrations", e.describe()))?;
                RegistrationsSource::Inline(std::sync::Arc::new(parsed))
            }
            (None, Some(uri)) => RegistrationsSource::Fetched(self.check_registrations_uri(uri)?),
        })
    }

    fn check_registrations_uri(&self, uri: &str) -> Result<RegistrationsEndpoint, ConfigError> {
        let url = checked_url("registrations_uri", uri)?;
        let upstream = match &self.registrations_upstream {
            Some(u) if u.trim().is_empty() || has_control(u) => {
                return Err(refuse("registrations_upstream", "must not be empty"))
            }
            Some(u) => u.clone(),
            None => self.idp_upstream.clone(),
        };
        let authority = match &self.registrations_authority {
            Some(a) if !is_authority(a) => {
                return Err(refuse("registrations_authority", "must be a host[:port]"))
            }
            Some(a) => a.clone(),
            None => url.authority.clone(),
        };
        Ok(RegistrationsEndpoint {
            https: url.https,
            path: url.path,
            upstream,
            authority,
        })
    }

    /// The endpoint overrides: URLs, of which only the `:path` is used.
    fn check_endpoints(&self) -> Result<Endpoints, ConfigError> {
        Ok(Endpoints {
            token_path: endpoint_path("token_endpoint", self.token_endpoint.as_deref())?,
            introspection_path: endpoint_path(
                "introspection_endpoint",
                self.introspection_endpoint.as_deref(),
            )?,
            jwks_path: endpoint_path("jwks_uri", self.jwks_uri.as_deref())?,
        })
    }

    /// Local token checks: the algorithms, the leeway, and the policy when Bearer tokens are
    /// accepted and checked locally (then `audience` is required: a token minted for another
    /// API of the same authorization server must not pass).
    fn check_jwt(
        &self,
        accepted: Accepted,
        issuer: &str,
    ) -> Result<Option<JwtPolicy>, ConfigError> {
        let algorithms = check_algorithms(&self.jwt_algorithms)?;
        if self.clock_skew_s > MAX_CLOCK_SKEW_S {
            return Err(refuse(
                "clock_skew_s",
                format!("must be at most {MAX_CLOCK_SKEW_S}"),
            ));
        }
        between(
            "max_signature_checks_per_s",
            self.max_signature_checks_per_s.into(),
            1,
            MAX_SIGNATURE_CHECKS_PER_S.into(),
        )?;
        if !accepted.bearer || !self.bearer_validation.checks_jwt() {
            return Ok(None);
        }
        let Some(audience) = self.audience.clone() else {
            return Err(refuse(
                "audience",
                "is required when \"bearer\" is accepted and bearer_validation includes \"jwt\"",
            ));
        };
        Ok(Some(JwtPolicy {
            issuer: issuer.to_string(),
            audience,
            algorithms,
            clock_skew_s: self.clock_skew_s,
            scopes: self.scopes.clone(),
            app_claim: self.app_claim.clone(),
        }))
    }

    /// `idp_upstream`, and the `:authority` of IdP calls (the issuer's by default).
    fn check_upstream(&self, issuer_url: &HttpUrl) -> Result<String, ConfigError> {
        if self.idp_upstream.trim().is_empty() {
            return Err(refuse("idp_upstream", "must not be empty"));
        }
        match &self.idp_authority {
            Some(a) if !is_authority(a) => Err(refuse("idp_authority", "must be a host[:port]")),
            Some(a) => Ok(a.clone()),
            None => Ok(issuer_url.authority.clone()),
        }
    }

    fn check_accept(&self) -> Result<Accepted, ConfigError> {
        if self.accept.is_empty() {
            return Err(refuse(
                "accept",
                "must name at least one of \"basic\", \"bearer\"",
            ));
        }
        Ok(Accepted {
            basic: self.accept.contains(&Scheme::Basic),
            bearer: self.accept.contains(&Scheme::Bearer),
            raw_basic: self.allow_raw_basic,
        })
    }

    /// The introspection client's secret: as configured, or read from the VM's environment
    /// variable `introspection_client_secret_env` names (never both).
    fn secret_from(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, ConfigError> {
        const FIELD: &str = "introspection_client_secret_env";
        let Some(name) = self.introspection_client_secret_env.as_deref() else {
            return Ok(self.introspection_client_secret.clone());
        };
        if self.introspection_client_secret.is_some() {
            return Err(refuse(
                FIELD,
                "and introspection_client_secret are both set: set one",
            ));
        }
        let valid = name.bytes().next().is_some_and(|b| !b.is_ascii_digit())
            && name.len() <= 128
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(refuse(
                FIELD,
                "must be an environment variable name (letters, digits, _)",
            ));
        }
        match env(name) {
            Some(secret) if !secret.is_empty() => Ok(Some(secret)),
            _ => Err(refuse(
                FIELD,
                format!("names {name}, which the VM's environment does not have (or has empty)"),
            )),
        }
    }

    /// The gateway's own client at the introspection endpoint: both parts or neither, and both
    /// when Bearer tokens are accepted and introspected.
    fn check_introspection_client(
        &self,
        accepted: Accepted,
    ) -> Result<Option<Redacted>, ConfigError> {
        let id = self.introspection_client_id.as_deref();
        let secret = self.introspection_client_secret.as_deref();
        let required =
            "is required when \"bearer\" is accepted and bearer_validation includes \"introspection\"";
        let needed = accepted.bearer && self.bearer_validation.introspects();
        match (id, secret) {
            (Some(id), Some(secret)) => {
                if id.is_empty() || has_control(id) {
                    return Err(refuse(
                        "introspection_client_id",
                        "must be a non-empty string",
                    ));
                }
                if secret.is_empty() || has_control(secret) {
                    return Err(refuse(
                        "introspection_client_secret",
                        "must be a non-empty string",
                    ));
                }
                Ok(Some(Redacted(client_secret_basic(id, secret))))
            }
            (None, _) if needed => Err(refuse("introspection_client_id", required)),
            (_, None) if needed => Err(refuse("introspection_client_secret", required)),
            _ => Ok(None),
        }
    }

    /// What tokens must carry: scopes, the app claim, the audience.
    fn check_claims(&self) -> Result<(), ConfigError> {
        for scope in &self.scopes {
            if scope.is_empty() || !scope.bytes().all(is_scope_char) {
                return Err(refuse(
                    "scopes",
                    "each scope must be a non-empty RFC 6749 scope token",
                ));
            }
            if scope == "openid" {
                return Err(refuse(
                    "scopes",
                    "must not contain \"openid\": Okta refuses client credentials with it",
                ));
            }
        }
        if self.app_claim.is_empty() || has_control(&self.app_claim) {
            return Err(refuse("app_claim", "must be a non-empty claim name"));
        }
        match &self.audience {
            Some(aud) if aud.is_empty() || has_control(aud) => {
                Err(refuse("audience", "must be a non-empty string"))
            }
            _ => Ok(()),
        }
    }

    /// Lifetimes, sizes, timeouts and caps.
    fn check_limits(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("cache_ttl_s", self.cache_ttl_s),
            ("negative_cache_ttl_s", self.negative_cache_ttl_s),
            ("stale_if_error_s", self.stale_if_error_s),
        ] {
            if value > MAX_TTL_S {
                return Err(refuse(field, format!("must be at most {MAX_TTL_S}")));
            }
        }
        between("cache_slots", self.cache_slots.into(), 1, MAX_SLOTS.into())?;
        between("idp_timeout_ms", self.idp_timeout_ms, 1, MAX_TIMEOUT_MS)?;
        self.check_abuse_limits()
    }

    /// The IdP budget, the calls-in-flight cap and the failure throttle.
    fn check_abuse_limits(&self) -> Result<(), ConfigError> {
        between(
            "max_idp_calls_in_flight",
            self.max_idp_calls_in_flight.into(),
            1,
            MAX_CALLS_IN_FLIGHT.into(),
        )?;
        between(
            "idp_calls_per_minute",
            self.idp_calls_per_minute.into(),
            1,
            MAX_CALLS_PER_MINUTE.into(),
        )?;
        between(
            "max_client_failures",
            self.max_client_failures.into(),
            0,
            MAX_CLIENT_FAILURES.into(),
        )?;
        between(
            "client_failure_window_s",
            self.client_failure_window_s,
            1,
            MAX_FAILURE_WINDOW_S,
        )
    }
}

/// The realm goes inside a quoted challenge parameter.
fn check_realm(realm: &str) -> Result<(), ConfigError> {
    let bad = |b: u8| b < b' ' || b == 0x7f || b == b'"' || b == b'\\';
    if realm.is_empty() || realm.bytes().any(bad) {
        return Err(refuse(
            "realm",
            "must be non-empty, without quotes, backslashes or control characters",
        ));
    }
    Ok(())
}

/// `jwt_algorithms`: at least one, each one the filter verifies; `none` and HMAC never (a key
/// set holds public keys: an HMAC "verified" with one proves nothing).
fn check_algorithms(names: &[String]) -> Result<Vec<Alg>, ConfigError> {
    const FIELD: &str = "jwt_algorithms";
    if names.is_empty() {
        return Err(refuse(FIELD, "must name at least one algorithm"));
    }
    let mut algorithms = Vec::with_capacity(names.len());
    for name in names {
        if name.eq_ignore_ascii_case("none") {
            return Err(refuse(
                FIELD,
                "must not allow \"none\": unsigned tokens prove nothing",
            ));
        }
        if name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) {
            return Err(refuse(
                FIELD,
                "must not allow an HMAC algorithm (HS*): the key set holds public keys",
            ));
        }
        match Alg::from_name(name) {
            Some(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
            Some(_) => {}
            None => return Err(refuse(FIELD, "may only name RS256, RS384, RS512")),
        }
    }
    Ok(algorithms)
}

fn checked_url(field: &str, text: &str) -> Result<HttpUrl, ConfigError> {
    let url = HttpUrl::parse(text).map_err(|reason| refuse(field, reason))?;
    if !url.https && !url.is_loopback() {
        return Err(refuse(
            field,
            "must use https (http only for loopback hosts)",
        ));
    }
    Ok(url)
}

fn endpoint_path(field: &str, value: Option<&str>) -> Result<Option<String>, ConfigError> {
    value
        .map(|v| checked_url(field, v).map(|u| u.path))
        .transpose()
}

/// RFC 6749 appendix A.4: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_char(b: u8) -> bool {
    b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
}

/// What an `:authority` may be: non-empty, no whitespace, control characters or `/`.
fn is_authority(a: &str) -> bool {
    !a.is_empty() && !a.bytes().any(|b| b <= b' ' || b == b'/' || b == 0x7f)
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// `Authorization: Basic` for a client, as RFC 6749 2.3.1 asks: each part form-encoded, then base64.
pub fn client_secret_basic(id: &str, secret: &str) -> String {
    let pair = format!(
        "{}:{}",
        form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>(),
        form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
    );
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// The `:path`s of the endpoints: configured, discovered, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub token_path: Option<String>,
    pub introspection_path: Option<String>,
    /// The key set (`jwks_uri`).
    pub jwks_path: Option<String>,
}

/// Which endpoints a configuration calls: the token endpoint for Basic; for Bearer the
/// introspection endpoint and/or the key set, as `bearer_validation` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub token: bool,
    pub introspection: bool,
    pub jwks: bool,
}

impl Endpoints {
    /// Every needed endpoint is known.
    pub fn covers(&self, needs: Needs) -> bool {
        (!needs.token || self.token_path.is_some())
            && (!needs.introspection || self.introspection_path.is_some())
            && (!needs.jwks || self.jwks_path.is_some())
    }

    /// These endpoints, with `other`'s where these have none (configured ones win).
    pub fn or(&self, other: Endpoints) -> Endpoints {
        Endpoints {
            token_path: self.token_path.clone().or(other.token_path),
            introspection_path: self.introspection_path.clone().or(other.introspection_path),
            jwks_path: self.jwks_path.clone().or(other.jwks_path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"issuer":"https://dev-1.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"]}"#;

    fn refused(json: &str) -> ConfigError {
        Config::from_json(json.as_bytes()).expect_err(json)
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::from_json(MINIMAL.as_bytes()).unwrap();
        assert_eq!(c.issuer, "https://dev-1.okta.com/oauth2/default");
        assert_eq!(c.idp_authority, "dev-1.okta.com");
        assert!(c.accepted.basic && !c.accepted.bearer);
        assert!(c.accepted.raw_basic && c.forward_access_token);
        assert_eq!(c.app_claim, "app_id");
        assert_eq!(c.cache_ttl_ms, 300_000);
        assert_eq!(c.negative_cache_ttl_ms, 30_000);
        assert_eq!(c.cache_slots, 16_384);
        assert_eq!(c.stale_if_error_ms, 0);
        assert_eq!(c.idp_timeout_ms, 3_000);
        assert_eq!(c.realm, "api");
        assert_eq!(c.max_idp_calls_in_flight, 64);
        assert_eq!(c.idp_calls_per_minute, 600);
        assert_eq!(
            (c.max_client_failures, c.client_failure_window_ms),
            (5, 60_000)
        );
        assert!(c.needs_discovery());
    }

    #[test]
    fn both_schemes_by_default_check_jwts_and_need_an_audience() {
        let base = r#""issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta""#;
        let e = refused(&format!("{{{base}}}"));
        assert_eq!(e.field, "audience");
        let c = Config::from_json(format!(r#"{{{base},"audience":"api://default"}}"#).as_bytes())
            .unwrap();
        assert!(c.accepted.basic && c.accepted.bearer);
        assert_eq!(c.bearer_validation, BearerValidation::Jwt);
        assert_eq!(c.bearer_format, BearerFormat::Jwt);
        assert!(c.introspection_authorization.is_none());
        let policy = c.jwt.as_ref().unwrap();
        assert_eq!(policy.algorithms, vec![Alg::RS256]);
        assert_eq!(policy.clock_skew_s, 60);
        assert_eq!(policy.audience, "api://default");
        assert_eq!(policy.issuer, "https://o.okta.com/oauth2/default");
        let needs = c.needs();
        assert!(needs.token && needs.jwks && !needs.introspection);
    }

    #[test]
    fn introspection_modes_need_the_introspection_client() {
        let base = r#""issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","audience":"api://default""#;
        for mode in ["introspection", "jwt+introspection"] {
            let e = refused(&format!(r#"{{{base},"bearer_validation":"{mode}"}}"#));
            assert_eq!(e.field, "introspection_client_id", "{mode}");
            let e = refused(&format!(
                r#"{{{base},"bearer_validation":"{mode}","introspection_client_id":"gw"}}"#
            ));
            assert_eq!(e.field, "introspection_client_secret", "{mode}");
            let c = Config::from_json(
                format!(r#"{{{base},"bearer_validation":"{mode}","introspection_client_id":"gw","introspection_client_secret":"s3"}}"#)
                    .as_bytes(),
            )
            .unwrap();
            assert_eq!(
                c.introspection_authorization.as_ref().map(|r| r.0.as_str()),
                Some("Basic Z3c6czM=")
            );
            assert!(c.needs().introspection);
            assert_eq!(c.needs().jwks, mode != "introspection");
            assert_eq!(c.jwt.is_some(), mode != "introspection");
        }
        // introspection alone: no audience needed, no key set
        let c = Config::from_json(
            br#"{"issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","bearer_validation":"introspection","introspection_client_id":"gw","introspection_client_secret":"s3"}"#,
        )
        .unwrap();
        assert!(c.jwt.is_none() && !c.needs().jwks);
        // basic only: neither the audience nor the introspection client
        let c = Config::from_json(MINIMAL.as_bytes()).unwrap();
        assert!(
            c.jwt.is_none()
                && c.needs()
                    == Needs {
                        token: true,
                        ..Needs::default()
                    }
        );
    }

    #[test]
    fn jwt_fields_are_checked() {
        let base = r#""issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","audience":"api://default""#;
        for (extra, field, says) in [
            (r#""jwt_algorithms":["none"]"#, "jwt_algorithms", "none"),
            (
                r#""jwt_algorithms":["RS256","HS256"]"#,
                "jwt_algorithms",
                "HMAC",
            ),
            (r#""jwt_algorithms":["hs512"]"#, "jwt_algorithms", "HMAC"),
            (r#""jwt_algorithms":["ES256"]"#, "jwt_algorithms", "RS256"),
            (r#""jwt_algorithms":["é"]"#, "jwt_algorithms", "RS256"),
            (r#""jwt_algorithms":[]"#, "jwt_algorithms", "at least one"),
            (r#""clock_skew_s":301"#, "clock_skew_s", "300"),
            (
                r#""max_signature_checks_per_s":0"#,
                "max_signature_checks_per_s",
                "1",
            ),
            (
                r#""max_signature_checks_per_s":100001"#,
                "max_signature_checks_per_s",
                "100000",
            ),
            (
                r#""bearer_validation":"jwks""#,
                "bearer_validation",
                "jwt+introspection",
            ),
            (r#""bearer_format":"jws""#, "bearer_format", "opaque"),
            (r#""jwks_uri":"ftp://o.okta.com/keys""#, "jwks_uri", ""),
            (
                r#""jwks_uri":"http://example.com/keys""#,
                "jwks_uri",
                "https",
            ),
        ] {
            let e = refused(&format!("{{{base},{extra}}}"));
            assert_eq!(e.field, field, "{extra}: {e}");
            assert!(e.reason.contains(says), "{extra}: {e}");
            assert!(
                !e.reason.contains("jwks\"") && !e.reason.contains("jws\""),
                "{e}"
            );
        }
        let c = Config::from_json(
            format!(
                r#"{{{base},"jwt_algorithms":["RS512","RS256","RS256"],"clock_skew_s":300,"jwks_uri":"https://o.okta.com/oauth2/default/v1/keys","bearer_format":"opaque"}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let policy = c.jwt.unwrap();
        assert_eq!(policy.algorithms, vec![Alg::RS512, Alg::RS256]);
        assert_eq!(policy.clock_skew_s, 300);
        assert_eq!(c.bearer_format, BearerFormat::Opaque);
        assert_eq!(
            c.endpoints.jwks_path.as_deref(),
            Some("/oauth2/default/v1/keys")
        );
    }

    #[test]
    fn overrides_take_paths_and_skip_discovery() {
        let c = Config::from_json(
            br#"{"issuer":"http://127.0.0.1:9001/oauth2/default/","idp_upstream":"okta","accept":["basic"],
                "token_endpoint":"http://127.0.0.1:9001/oauth2/default/v1/token","idp_authority":"idp.local"}"#,
        )
        .unwrap();
        assert_eq!(c.issuer, "http://127.0.0.1:9001/oauth2/default");
        assert_eq!(
            c.endpoints.token_path.as_deref(),
            Some("/oauth2/default/v1/token")
        );
        assert_eq!(c.idp_authority, "idp.local");
        assert!(!c.needs_discovery());
    }

    #[test]
    fn each_bad_field_is_named() {
        let base = r#""issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"]"#;
        for (extra, field) in [
            (r#","scopes":["openid"]"#, "scopes"),
            (r#","scopes":["a b"]"#, "scopes"),
            (r#","scopes":[""]"#, "scopes"),
            (r#","idp_timeout_ms":0"#, "idp_timeout_ms"),
            (r#","idp_timeout_ms":-1"#, "idp_timeout_ms"),
            (r#","cache_slots":0"#, "cache_slots"),
            (r#","max_idp_calls_in_flight":0"#, "max_idp_calls_in_flight"),
            (
                r#","max_idp_calls_in_flight":10001"#,
                "max_idp_calls_in_flight",
            ),
            (r#","cache_ttl_s":999999"#, "cache_ttl_s"),
            (r#","realm":"a\"b""#, "realm"),
            (r#","app_claim":"""#, "app_claim"),
            (r#","audience":"""#, "audience"),
            (r#","accept":[]"#, "accept"),
            (r#","accept":["digest"]"#, "accept[0]"),
            (r#","token_endpoint":"ftp://x/y""#, "token_endpoint"),
            (
                r#","introspection_endpoint":"http://example.com/v1/introspect""#,
                "introspection_endpoint",
            ),
            (r#","allow_raw_basic":"yes""#, "allow_raw_basic"),
            (r#","idp_authority":"a/b""#, "idp_authority"),
            (r#","surprise":1"#, "surprise"),
            (r#","realm":"a","realm":"b""#, "realm"),
        ] {
            let json = format!("{{{base}{extra}}}").replacen(
                r#","accept":["basic"],"accept""#,
                r#","accept""#,
                1,
            );
            let e = refused(&json);
            assert_eq!(e.field, field, "{json}: {e}");
        }
        assert_eq!(refused(r#"{"idp_upstream":"okta"}"#).field, "issuer");
        assert_eq!(
            refused(r#"{"issuer":"https://o.okta.com/x"}"#).field,
            "idp_upstream"
        );
        assert_eq!(
            refused(r#"{"issuer":"http://example.com/x","idp_upstream":"o","accept":["basic"]}"#)
                .field,
            "issuer"
        );
        assert_eq!(refused("not json").field, "(configuration)");
        assert_eq!(refused(&format!("{MINIMAL} {{}}")).field, "(configuration)");
    }

    #[test]
    fn refusals_never_echo_values() {
        let secret = "sup3r-s3cret-value";
        for json in [
            format!(
                r#"{{"issuer":"https://o.okta.com/x","idp_upstream":"o","introspection_client_id":"gw","introspection_client_secret":"{secret}","cache_slots":"{secret}"}}"#
            ),
            format!(
                r#"{{"issuer":"https://o.okta.com/x","idp_upstream":"o","introspection_client_id":"gw","introspection_client_secret":"{secret}","realm":"\"{secret}"}}"#
            ),
            format!(
                r#"{{"issuer":"https://o.okta.com/x","idp_upstream":"o","introspection_client_id":"gw","introspection_client_secret":{{"{secret}":1}}}}"#
            ),
            format!(
                r#"{{"issuer":"https://o.okta.com/x","idp_upstream":"o","accept":["{secret}"]}}"#
            ),
            // serde quotes the value before what it expected: a value saying "expected" too
            format!(
                r#"{{"issuer":"https://o.okta.com/x","idp_upstream":"o","accept":["basic"],"cache_slots":"expected {secret}"}}"#
            ),
            format!(
                r#"{{"issuer":"https://o.okta.com/x","idp_upstream":"o","accept":["basic"],"cache_slots":"x, expected {secret} at line 1"}}"#
            ),
            format!(r#""expected {secret}""#),
        ] {
            let e = refused(&json);
            assert!(!e.to_string().contains(secret), "{e}");
        }
    }

    #[test]
    fn digest_tells_configurations_apart() {
        let a = Config::from_json(MINIMAL.as_bytes()).unwrap();
        let b = Config::from_json(
            MINIMAL
                .replace("\"basic\"]", "\"basic\"],\"scopes\":[\"x\"]")
                .as_bytes(),
        )
        .unwrap();
        assert_ne!(a.digest, b.digest);
    }

    #[test]
    fn client_secret_basic_form_encodes_each_part() {
        // RFC 6749 2.3.1: "a:b+c" → "a%3Ab%2Bc"
        let v = client_secret_basic("id", "a:b+c %/");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(v.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"id:a%3Ab%2Bc+%25%2F");
    }

    const REG_BASE: &str =
        r#""issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","accept":["basic"]"#;

    fn with_reg(extra: &str) -> Result<Config, ConfigError> {
        Config::from_json(format!("{{{REG_BASE},{extra}}}").as_bytes())
    }

    #[test]
    fn without_product_there_are_no_registrations() {
        let c = Config::from_json(MINIMAL.as_bytes()).unwrap();
        assert!(c.registrations.is_none());
        // The timings have defaults (Kong's schema may fill them in): accepted, unused.
        assert!(with_reg(r#""registrations_refresh_s":30"#)
            .unwrap()
            .registrations
            .is_none());
        for (extra, field) in [
            (r#""registrations":{"applications":[]}"#, "registrations"),
            (
                r#""registrations_uri":"https://portal.example.com/r.json""#,
                "registrations_uri",
            ),
            (
                r#""registrations_upstream":"portal""#,
                "registrations_upstream",
            ),
            (
                r#""registrations_authority":"portal""#,
                "registrations_authority",
            ),
        ] {
            let e = with_reg(extra).unwrap_err();
            assert_eq!(e.field, field, "{extra}");
            assert!(e.reason.contains("needs product"), "{e}");
        }
    }

    #[test]
    fn an_inline_document_is_parsed_for_the_product() {
        let c = with_reg(
            r#""product":"payments-v1","registrations":{"applications":[
                {"client_id":"0oaA","application_id":"app-1","registrations":[{"product":"payments-v1","status":"approved"}]},
                {"client_id":"0oaB","registrations":[{"product":"payments-v1","status":"pending"}]}]}"#,
        )
        .unwrap();
        let r = c.registrations.unwrap();
        assert_eq!(r.product, "payments-v1");
        assert_eq!((r.refresh_ms, r.max_age_ms), (10_000, 86_400_000));
        let RegistrationsSource::Inline(doc) = r.source else {
            panic!("inline expected");
        };
        assert!(matches!(
            doc.lookup("0oaA"),
            crate::registrations::Standing::Approved(ctx) if ctx.application_id == Some("app-1")
        ));
        assert!(matches!(
            doc.lookup("0oaB"),
            crate::registrations::Standing::NotApproved(_)
        ));
        assert_eq!(doc.lookup("0oaC"), crate::registrations::Standing::Unknown);
    }

    #[test]
    fn a_fetched_document_has_its_endpoint() {
        let c = with_reg(
            r#""product":"p","registrations_uri":"https://portal.example.com:8443/v1/registrations.json","registrations_refresh_s":5,"registrations_max_age_s":600"#,
        )
        .unwrap();
        let r = c.registrations.unwrap();
        assert_eq!((r.refresh_ms, r.max_age_ms), (5_000, 600_000));
        let RegistrationsSource::Fetched(ep) = r.source else {
            panic!("fetched expected");
        };
        assert_eq!(
            ep,
            RegistrationsEndpoint {
                https: true,
                path: "/v1/registrations.json".into(),
                upstream: "okta".into(),
                authority: "portal.example.com:8443".into(),
            }
        );
        let c = with_reg(
            r#""product":"p","registrations_uri":"http://127.0.0.1:9001/_portal/registrations","registrations_upstream":"portal","registrations_authority":"portal.internal""#,
        )
        .unwrap();
        let Some(RegistrationsConfig {
            source: RegistrationsSource::Fetched(ep),
            ..
        }) = c.registrations
        else {
            panic!("fetched expected");
        };
        assert!(!ep.https);
        assert_eq!(
            (ep.upstream.as_str(), ep.authority.as_str()),
            ("portal", "portal.internal")
        );
    }

    #[test]
    fn each_bad_registrations_field_is_named() {
        let uri = r#""registrations_uri":"https://portal.example.com/r""#;
        for (extra, field, says) in [
            (r#""product":"p""#.to_string(), "registrations", "required"),
            (
                format!(r#""product":"p",{uri},"registrations":{{"applications":[]}}"#),
                "registrations_uri",
                "set one",
            ),
            (format!(r#""product":"",{uri}"#), "product", "without control"),
            (format!(r#""product":"a\u0001",{uri}"#), "product", "1 to 256"),
            (
                format!(r#""product":"{}",{uri}"#, "p".repeat(257)),
                "product",
                "256",
            ),
            (format!(r#""product":5,{uri}"#), "product", "wrong type"),
            (
                r#""product":"p","registrations_uri":"http://portal.example.com/r""#.into(),
                "registrations_uri",
                "https",
            ),
            (
                r#""product":"p","registrations_uri":"https://portal.example.com/r?x=1""#.into(),
                "registrations_uri",
                "query",
            ),
            (
                r#""product":"p","registrations_uri":"portal/r""#.into(),
                "registrations_uri",
                "URL",
            ),
            (
                format!(r#""product":"p",{uri},"registrations_upstream":" ""#),
                "registrations_upstream",
                "empty",
            ),
            (
                format!(r#""product":"p",{uri},"registrations_authority":"a/b""#),
                "registrations_authority",
                "host",
            ),
            (
                format!(r#""product":"p",{uri},"registrations_refresh_s":0"#),
                "registrations_refresh_s",
                "between 1 and 3600",
            ),
            (
                format!(r#""product":"p",{uri},"registrations_refresh_s":3601"#),
                "registrations_refresh_s",
                "3600",
            ),
            (
                format!(r#""product":"p",{uri},"registrations_refresh_s":-1"#),
                "registrations_refresh_s",
                "wrong type",
            ),
            (
                format!(r#""product":"p",{uri},"registrations_refresh_s":60,"registrations_max_age_s":59"#),
                "registrations_max_age_s",
                "between 60 and 2592000",
            ),
            (
                format!(r#""product":"p",{uri},"registrations_max_age_s":2592001"#),
                "registrations_max_age_s",
                "2592000",
            ),
            (
                r#""product":"p","registrations":{"applications":[]},"registrations_upstream":"x""#.into(),
                "registrations_upstream",
                "registrations_uri only",
            ),
            (
                r#""product":"p","registrations":{"applications":[]},"registrations_authority":"x""#.into(),
                "registrations_authority",
                "registrations_uri only",
            ),
            (
                r#""product":"p","registrations":{"apps":[]}"#.into(),
                "registrations",
                "`applications` array is missing",
            ),
            (
                r#""product":"p","registrations":{"applications":[{"client_id":"sekret-client-value","registrations":{"product":"p"}}]}"#.into(),
                "registrations",
                "wrong type",
            ),
            (
                r#""product":"p","registrations":[]"#.into(),
                "registrations",
                "wrong type",
            ),
            (
                r#""product":"p","registrations":"{\"applications\":[]}""#.into(),
                "registrations",
                "wrong type",
            ),
        ] {
            let e = with_reg(&extra).unwrap_err();
            assert_eq!(e.field, field, "{extra}: {e}");
            assert!(e.reason.contains(says), "{extra}: {e}");
            assert!(!e.to_string().contains("sekret"), "{e}");
        }
    }

    #[test]
    fn the_introspection_secret_may_come_from_the_vms_environment() {
        let base = r#""issuer":"https://o.okta.com/oauth2/default","idp_upstream":"okta","bearer_validation":"introspection","introspection_client_id":"gw""#;
        let env = |name: &str| (name == "OKTA_SECRET").then(|| "s3cr3t".to_string());
        let c = Config::from_json_with_env(
            format!(r#"{{{base},"introspection_client_secret_env":"OKTA_SECRET"}}"#).as_bytes(),
            &env,
        )
        .unwrap();
        let inline = Config::from_json(
            format!(r#"{{{base},"introspection_client_secret":"s3cr3t"}}"#).as_bytes(),
        )
        .unwrap();
        let header = |c: &Config| c.introspection_authorization.as_ref().map(|r| r.0.clone());
        assert_eq!(header(&c), header(&inline));
        assert!(header(&c).is_some());
        for (extra, why) in [
            (
                r#""introspection_client_secret_env":"MISSING""#,
                "does not have",
            ),
            (
                r#""introspection_client_secret_env":"1BAD""#,
                "variable name",
            ),
            (
                r#""introspection_client_secret_env":"A-B""#,
                "variable name",
            ),
            (
                r#""introspection_client_secret_env":"OKTA_SECRET","introspection_client_secret":"x""#,
                "set one",
            ),
        ] {
            let e = Config::from_json_with_env(format!("{{{base},{extra}}}").as_bytes(), &env)
                .unwrap_err();
            assert_eq!(e.field, "introspection_client_secret_env", "{extra}");
            assert!(e.to_string().contains(why), "{e}");
            assert!(!e.to_string().contains("s3cr3t"));
        }
    }
}
