//! What the filter counts. The glue defines one host metric per name (proxy-wasm
//! `define_metric`), so they appear in Envoy's `/stats` and `/stats/prometheus`; the gate
//! only says which one to bump.

/// Why a request was refused, as operators want it split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    NoCredentials,
    /// Refused without asking the IdP: unreadable `Authorization`, or several of them.
    Malformed,
    /// The IdP (or a cached verdict from it) said no.
    Invalid,
    InsufficientScope,
    IdpUnavailable,
    /// `product` set: a Basic client id, or a Bearer token's app, not in the registrations
    /// document (Basic: no IdP call).
    Unregistered,
    /// `product` set: an app in the document without an approved registration for it.
    NotApproved,
    /// `product` set: no registrations document may answer (none fetched yet, or past
    /// `registrations_max_age_s`).
    RegistrationsUnavailable,
    /// A token's signature not checked now: the worker's bound on signature checks.
    Busy,
}

/// The IdP's endpoints, each with its own metrics and its own quota guard (Okta rate-limits
/// each endpoint separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdpEndpoint {
    Token,
    Introspection,
    Discovery,
}

impl IdpEndpoint {
    pub const COUNT: usize = ENDPOINTS.len();

    /// Its position in `0..COUNT`.
    pub fn index(self) -> usize {
        ENDPOINTS.iter().position(|(e, _)| *e == self).unwrap_or(0)
    }

    /// Its name in metrics and shared-data keys.
    pub fn name(self) -> &'static str {
        ENDPOINTS
            .iter()
            .find(|(e, _)| *e == self)
            .map_or("", |(_, n)| *n)
    }
}

/// How an IdP call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Ok,
    ClientError,
    RateLimited,
    ServerError,
    Timeout,
    /// Not sent, connection refused or reset, or a status no exchange expects (1xx, 3xx).
    Failure,
}

impl CallResult {
    /// Classifies an answer. Envoy answers a call that ran out of time with its own 504, other
    /// hosts with no answer at all: either is a timeout when it took the whole timeout.
    pub fn of(status: Option<u16>, elapsed_ms: u64, timeout_ms: u64) -> CallResult {
        let took_it_all = elapsed_ms + 5 >= timeout_ms;
        match status {
            None | Some(504) if took_it_all => CallResult::Timeout,
            None => CallResult::Failure,
            Some(200..=299) => CallResult::Ok,
            Some(429) => CallResult::RateLimited,
            Some(400..=499) => CallResult::ClientError,
            Some(500..=599) => CallResult::ServerError,
            Some(_) => CallResult::Failure,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Allowed,
    Denied(DenyReason),
    CacheHit,
    CacheMiss,
    CacheStale,
    CacheNegativeHit,
    IdpCall(IdpEndpoint, CallResult),
    /// A fetch of `registrations_uri` ended so.
    Registrations(RegistrationsFetch),
}

/// How a fetch of `registrations_uri` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationsFetch {
    /// A 200 with a usable document (a new one in use).
    Fetched,
    /// A 304: the document in use is confirmed.
    NotModified,
    /// No answer, an error status, or a document refused (malformed, too large).
    Failed,
}

/// Values the filter sets rather than counts (per host: the last worker's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// Seconds since the registrations document in use was last confirmed (a 200 or a 304).
    RegistrationsAgeS,
    /// Bytes of the last registrations document read (its JSON).
    RegistrationsBytes,
    /// Applications in the registrations document in use.
    RegistrationsApplications,
}

impl Gauge {
    pub const ALL: [Gauge; 3] = [
        Gauge::RegistrationsAgeS,
        Gauge::RegistrationsBytes,
        Gauge::RegistrationsApplications,
    ];

    pub fn index(self) -> usize {
        Gauge::ALL.iter().position(|g| *g == self).unwrap_or(0)
    }

    pub fn name(self) -> &'static str {
        match self {
            Gauge::RegistrationsAgeS => "okta_dcr_auth_registrations_age_s",
            Gauge::RegistrationsBytes => "okta_dcr_auth_registrations_bytes",
            Gauge::RegistrationsApplications => "okta_dcr_auth_registrations_applications",
        }
    }
}

const FETCHES: [(RegistrationsFetch, &str); 3] = [
    (RegistrationsFetch::Fetched, "fetched"),
    (RegistrationsFetch::NotModified, "not_modified"),
    (RegistrationsFetch::Failed, "failed"),
];

const DENY_REASONS: [(DenyReason, &str); 9] = [
    (DenyReason::NoCredentials, "no_credentials"),
    (DenyReason::Malformed, "malformed"),
    (DenyReason::Invalid, "invalid"),
    (DenyReason::InsufficientScope, "insufficient_scope"),
    (DenyReason::IdpUnavailable, "idp_unavailable"),
    (DenyReason::Unregistered, "unregistered"),
    (DenyReason::NotApproved, "not_approved"),
    (
        DenyReason::RegistrationsUnavailable,
        "registrations_unavailable",
    ),
    (DenyReason::Busy, "signature_checks_busy"),
];
const ENDPOINTS: [(IdpEndpoint, &str); 3] = [
    (IdpEndpoint::Token, "token"),
    (IdpEndpoint::Introspection, "introspect"),
    (IdpEndpoint::Discovery, "discovery"),
];
const RESULTS: [(CallResult, &str); 6] = [
    (CallResult::Ok, "ok"),
    (CallResult::ClientError, "4xx"),
    (CallResult::RateLimited, "429"),
    (CallResult::ServerError, "5xx"),
    (CallResult::Timeout, "timeout"),
    (CallResult::Failure, "failure"),
];

/// The histogram of IdP call latency, in milliseconds.
pub const IDP_LATENCY: &str = "okta_dcr_auth_idp_latency_ms";

impl Counter {
    /// Every counter, in `index` order.
    pub fn all() -> Vec<Counter> {
        let mut all = vec![Counter::Allowed];
        all.extend(DENY_REASONS.iter().map(|(r, _)| Counter::Denied(*r)));
        all.extend([
            Counter::CacheHit,
            Counter::CacheMiss,
            Counter::CacheStale,
            Counter::CacheNegativeHit,
        ]);
        for (endpoint, _) in ENDPOINTS {
            all.extend(
                RESULTS
                    .iter()
                    .map(|(result, _)| Counter::IdpCall(endpoint, *result)),
            );
        }
        all.extend(FETCHES.iter().map(|(f, _)| Counter::Registrations(*f)));
        all
    }

    pub fn index(self) -> usize {
        let position =
            |list: &[(DenyReason, &str)], r| list.iter().position(|(x, _)| *x == r).unwrap_or(0);
        let cache = 1 + DENY_REASONS.len();
        let calls = cache + 4;
        match self {
            Counter::Allowed => 0,
            Counter::Denied(r) => 1 + position(&DENY_REASONS, r),
            Counter::CacheHit => cache,
            Counter::CacheMiss => cache + 1,
            Counter::CacheStale => cache + 2,
            Counter::CacheNegativeHit => cache + 3,
            Counter::IdpCall(e, r) => {
                let e = ENDPOINTS.iter().position(|(x, _)| *x == e).unwrap_or(0);
                let r = RESULTS.iter().position(|(x, _)| *x == r).unwrap_or(0);
                calls + e * RESULTS.len() + r
            }
            Counter::Registrations(f) => {
                let f = FETCHES.iter().position(|(x, _)| *x == f).unwrap_or(0);
                calls + ENDPOINTS.len() * RESULTS.len() + f
            }
        }
    }

    pub fn name(self) -> String {
        let label = |list: &[(DenyReason, &'static str)], r| {
            list.iter().find(|(x, _)| *x == r).map_or("", |(_, n)| *n)
        };
        match self {
            Counter::Allowed => "okta_dcr_auth_requests_allowed".into(),
            Counter::Denied(r) => {
                format!("okta_dcr_auth_requests_denied_{}", label(&DENY_REASONS, r))
            }
            Counter::CacheHit => "okta_dcr_auth_cache_hits".into(),
            Counter::CacheMiss => "okta_dcr_auth_cache_misses".into(),
            Counter::CacheStale => "okta_dcr_auth_cache_stale_serves".into(),
            Counter::CacheNegativeHit => "okta_dcr_auth_cache_negative_hits".into(),
            Counter::IdpCall(e, r) => {
                let e = ENDPOINTS
                    .iter()
                    .find(|(x, _)| *x == e)
                    .map_or("", |(_, n)| *n);
                let r = RESULTS
                    .iter()
                    .find(|(x, _)| *x == r)
                    .map_or("", |(_, n)| *n);
                format!("okta_dcr_auth_idp_{e}_{r}")
            }
            Counter::Registrations(f) => {
                let f = FETCHES
                    .iter()
                    .find(|(x, _)| *x == f)
                    .map_or("", |(_, n)| *n);
                format!("okta_dcr_auth_registrations_{f}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_its_own_index_and_name() {
        let all = Counter::all();
        assert_eq!(all.len(), 14 + 3 * 6 + 3);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
            assert!(c.name().starts_with("okta_dcr_auth_"));
        }
        let mut names: Vec<String> = all.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert_eq!(
            Counter::IdpCall(IdpEndpoint::Introspection, CallResult::RateLimited).name(),
            "okta_dcr_auth_idp_introspect_429"
        );
        assert_eq!(
            Counter::Registrations(RegistrationsFetch::NotModified).name(),
            "okta_dcr_auth_registrations_not_modified"
        );
        for (i, g) in Gauge::ALL.iter().enumerate() {
            assert_eq!(g.index(), i);
            assert!(!names.iter().any(|n| n == g.name()));
        }
    }

    #[test]
    fn call_results() {
        assert_eq!(CallResult::of(Some(200), 5, 3000), CallResult::Ok);
        assert_eq!(CallResult::of(Some(401), 5, 3000), CallResult::ClientError);
        assert_eq!(CallResult::of(Some(429), 5, 3000), CallResult::RateLimited);
        assert_eq!(CallResult::of(Some(503), 5, 3000), CallResult::ServerError);
        assert_eq!(CallResult::of(Some(302), 5, 3000), CallResult::Failure);
        assert_eq!(CallResult::of(None, 3000, 3000), CallResult::Timeout);
        assert_eq!(CallResult::of(Some(504), 3001, 3000), CallResult::Timeout);
        assert_eq!(CallResult::of(Some(504), 20, 3000), CallResult::ServerError);
        assert_eq!(CallResult::of(None, 3, 3000), CallResult::Failure);
    }
}
