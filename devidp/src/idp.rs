//! The Okta-compatible custom authorization server (`/oauth2/default`).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Map, Value};

use crate::keys::{self, KeyRing, Signing};
use crate::serve::{self, ResetConnection, Resp, ServerThread};

mod admin;
mod portal;
mod ratelimit;
use crate::util::{
    self, client_auth, is_form, json_response, method_not_allowed, no_store, not_found,
    oauth_error, okta_error, param, parse_form, response, ClientAuth,
};
pub use portal::Application;
pub use ratelimit::RateLimit;

/// Where the registrations document is served (the Dev Portal side, not Okta's).
pub const REGISTRATIONS_PATH: &str = "/_portal/registrations";

/// The path of the authorization server; the issuer is `http://HOST:PORT` followed by it.
pub const AUTH_SERVER_PATH: &str = "/oauth2/default";

/// How many [`TokenRequestRecord`]s are kept (the most recent ones), so a long soak stays bounded.
pub const MAX_TOKEN_REQUEST_RECORDS: usize = 10_000;

/// Issued tokens kept for introspection before expired ones are pruned.
const MAX_TOKENS: usize = 100_000;

/// The endpoints that count calls and take faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Both `.well-known` documents.
    Discovery,
    /// `/v1/token`.
    Token,
    /// `/v1/introspect`.
    Introspect,
    /// `/v1/keys`.
    Keys,
    /// `/_portal/registrations`: the registrations document (the portal's, not Okta's: it is
    /// outside the concurrency limit and the latency).
    Registrations,
}

impl Endpoint {
    /// Every endpoint, in the order of the admin API's listings.
    pub const ALL: [Endpoint; 5] = [
        Endpoint::Discovery,
        Endpoint::Token,
        Endpoint::Introspect,
        Endpoint::Keys,
        Endpoint::Registrations,
    ];

    fn index(self) -> usize {
        match self {
            Endpoint::Discovery => 0,
            Endpoint::Token => 1,
            Endpoint::Introspect => 2,
            Endpoint::Keys => 3,
            Endpoint::Registrations => 4,
        }
    }

    /// The name used by the admin API: `discovery`, `token`, `introspect`, `keys`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Discovery => "discovery",
            Endpoint::Token => "token",
            Endpoint::Introspect => "introspect",
            Endpoint::Keys => "keys",
            Endpoint::Registrations => "registrations",
        }
    }

    /// The inverse of [`Endpoint::name`].
    pub fn from_name(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// A fault: wait `delay`, then give `answer`. Persists until cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub delay: Duration,
    pub answer: FaultAnswer,
}

impl Fault {
    /// `answer` at once.
    pub fn answer(answer: FaultAnswer) -> Fault {
        Fault {
            delay: Duration::ZERO,
            answer,
        }
    }

    /// The usual answer, after `delay`.
    pub fn delay(delay: Duration) -> Fault {
        Fault {
            delay,
            answer: FaultAnswer::Normal,
        }
    }
}

/// What a faulted endpoint answers (after the fault's delay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAnswer {
    /// Answer as usual (after the delay).
    Normal,
    /// That status, with an Okta-style JSON error body (OAuth `error` for 400/401/403 on
    /// `/v1/token` and `/v1/introspect`, `errorCode` otherwise; 429 as [`FaultAnswer::RateLimited`]
    /// with a 60 s reset).
    Status(u16),
    /// 200, `Content-Type: application/json`, a body that is not JSON.
    Garbage,
    /// 200, an HTML page.
    Html,
    /// 200, empty body.
    EmptyOk,
    /// 429 with `X-Rate-Limit-Limit`, `X-Rate-Limit-Remaining: 0`, `X-Rate-Limit-Reset`
    /// (epoch seconds, now + `reset_in_secs`) and Okta's E0000047 body.
    RateLimited { reset_in_secs: u64 },
    /// Exactly this answer (an invalid status becomes 500; invalid headers are skipped; an
    /// empty `content_type` sends none).
    Custom {
        status: u16,
        content_type: String,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// Close the TCP connection (with a RST) without any HTTP answer.
    ResetConnection,
    /// The usual answer with its body padded with spaces to at least `bytes` (a JSON document
    /// stays valid JSON): a document too large to be read.
    Padded { bytes: usize },
}

/// One request received at `/v1/token`, decoded (RFC 6749 2.3.1). Fields the request did not
/// carry (or that could not be decoded) are empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequestRecord {
    pub client_id: String,
    pub client_secret: String,
    pub grant_type: String,
    pub scope: Option<String>,
    /// The scheme word of the `Authorization` header as sent (`Basic`, `basic`, ...), or empty.
    pub authorization_scheme: String,
}

/// A token for [`IdpHandle::mint_token`].
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSpec {
    /// `cid`, `sub` and the introspection's `client_id` and `username`.
    pub client_id: String,
    /// `scp` (and the introspection's `scope`).
    pub scopes: Vec<String>,
    /// `aud`; `None`: the server's audience ([`IdpOptions::audience`]).
    pub audience: Option<String>,
    /// `iss`; `None`: the server's issuer.
    pub issuer: Option<String>,
    /// `exp` = now + this; may be negative (already expired).
    pub expires_in_secs: i64,
    /// Added last, so they may override the standard claims; a JSON `null` removes that claim.
    pub claims: Map<String, Value>,
    /// Introspection answers `active: true` (with the past `exp`) even once the token expired.
    pub introspect_active_even_if_expired: bool,
    /// Header parameters added last to `{"kid": <signing kid>, "alg": <signing's alg>}`, so they
    /// may override those two (`jku`, another `kid`, `crit`, ...); a JSON `null` removes one.
    pub header: Map<String, Value>,
    /// How the token is signed. Only [`Signing::Genuine`] tokens are registered as issued
    /// (introspection answers `active: false` for the others, as Okta would).
    pub signing: Signing,
}

impl TokenSpec {
    /// Audience `api://default`, 3600 s, claims `{"app_id": client_id}`.
    pub fn for_client(client_id: &str, scopes: &[&str]) -> TokenSpec {
        let mut claims = Map::new();
        claims.insert("app_id".into(), Value::String(client_id.into()));
        TokenSpec {
            client_id: client_id.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            audience: Some("api://default".into()),
            issuer: None,
            expires_in_secs: 3600,
            claims,
            introspect_active_even_if_expired: false,
            header: Map::new(),
            signing: Signing::Genuine,
        }
    }
}

/// Server settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpOptions {
    /// Granted when a client-credentials request names no scope (those the client may have);
    /// empty: such a request is `invalid_scope`, as on an Okta server without default scopes.
    pub default_scopes: Vec<String>,
    /// `aud` of issued tokens.
    pub audience: String,
    /// `expires_in` of issued tokens.
    pub token_ttl_secs: u64,
}

impl Default for IdpOptions {
    fn default() -> Self {
        IdpOptions {
            default_scopes: Vec::new(),
            audience: "api://default".into(),
            token_ttl_secs: 3600,
        }
    }
}

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub secret: String,
    /// The scopes it may be granted.
    pub scopes: Vec<String>,
}

struct IssuedToken {
    claims: Map<String, Value>,
    active_even_if_expired: bool,
    revoked: bool,
}

struct State {
    clients: HashMap<String, Client>,
    faults: HashMap<Endpoint, Fault>,
    calls: [u64; Endpoint::ALL.len()],
    /// Answers given (after any fault's delay): calls whose caller stayed for them.
    answered: [u64; Endpoint::ALL.len()],
    token_requests: VecDeque<TokenRequestRecord>,
    tokens: HashMap<String, IssuedToken>,
    introspections: HashMap<String, u64>,
    limits: ratelimit::Limits,
    concurrency: ratelimit::Concurrency,
    /// How long every answer of an Okta endpoint takes (before any fault's own delay).
    latency: Duration,
    keys: KeyRing,
    portal: portal::Portal,
}

impl State {
    fn new() -> State {
        State {
            clients: HashMap::new(),
            faults: HashMap::new(),
            calls: [0; Endpoint::ALL.len()],
            answered: [0; Endpoint::ALL.len()],
            token_requests: VecDeque::new(),
            tokens: HashMap::new(),
            introspections: HashMap::new(),
            limits: ratelimit::Limits::default(),
            concurrency: ratelimit::Concurrency::default(),
            latency: Duration::ZERO,
            keys: KeyRing::new(),
            portal: portal::Portal::default(),
        }
    }
}

struct Shared {
    issuer: String,
    opts: IdpOptions,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register_client(&self, id: &str, secret: &str, scopes: &[String]) {
        self.lock().clients.insert(
            id.to_string(),
            Client {
                id: id.to_string(),
                secret: secret.to_string(),
                scopes: scopes.to_vec(),
            },
        );
    }

    /// Builds, signs and (if genuine) registers a token.
    fn issue(&self, spec: &TokenSpec) -> String {
        let now = util::now();
        let mut claims = Map::new();
        claims.insert("ver".into(), json!(1));
        claims.insert("jti".into(), json!(format!("AT.{}", util::random_id(43))));
        claims.insert(
            "iss".into(),
            json!(spec.issuer.clone().unwrap_or_else(|| self.issuer.clone())),
        );
        claims.insert(
            "aud".into(),
            json!(spec
                .audience
                .clone()
                .unwrap_or_else(|| self.opts.audience.clone())),
        );
        claims.insert("iat".into(), json!(now));
        claims.insert(
            "exp".into(),
            json!(now.saturating_add(spec.expires_in_secs)),
        );
        claims.insert("cid".into(), json!(spec.client_id));
        claims.insert("scp".into(), json!(spec.scopes));
        claims.insert("sub".into(), json!(spec.client_id));
        for (k, v) in &spec.claims {
            if v.is_null() {
                claims.remove(k);
            } else {
                claims.insert(k.clone(), v.clone());
            }
        }
        let (kid, key) = self.lock().keys.signing_key();
        let mut header = Map::new();
        header.insert("kid".into(), json!(kid));
        header.insert("alg".into(), json!(spec.signing.alg()));
        for (k, v) in &spec.header {
            if v.is_null() {
                header.remove(k);
            } else {
                header.insert(k.clone(), v.clone());
            }
        }
        // Signing is slow in debug builds: never under the lock.
        let token = keys::sign(
            &Value::Object(header),
            &Value::Object(claims.clone()),
            &spec.signing,
            key,
        );
        if spec.signing != Signing::Genuine {
            return token;
        }
        let mut state = self.lock();
        if state.tokens.len() >= MAX_TOKENS {
            state.tokens.retain(|_, t| {
                t.active_even_if_expired || exp_of(&t.claims).is_none_or(|e| e > now)
            });
        }
        state.tokens.insert(
            token.clone(),
            IssuedToken {
                claims,
                active_even_if_expired: spec.introspect_active_even_if_expired,
                revoked: false,
            },
        );
        token
    }
}

fn exp_of(claims: &Map<String, Value>) -> Option<i64> {
    claims.get("exp").and_then(Value::as_i64)
}

/// A running dev IdP. Dropping it stops the server. Clones share one server (the same clients,
/// tokens, faults, limits and counters), which stops when the last of them is dropped: for
/// several gateways in front of one IdP.
#[derive(Clone)]
pub struct IdpHandle {
    shared: Arc<Shared>,
    server: Arc<ServerThread>,
}

impl IdpHandle {
    /// Starts a server with [`IdpOptions::default`] on `listen` (`"127.0.0.1:0"` picks a port).
    pub fn spawn(listen: &str) -> io::Result<IdpHandle> {
        IdpHandle::spawn_with(listen, IdpOptions::default())
    }

    /// Starts a server on `listen`.
    pub fn spawn_with(listen: &str, opts: IdpOptions) -> io::Result<IdpHandle> {
        let listener = serve::bind(listen)?;
        let shared = Arc::new(Shared {
            issuer: issuer_for(listener.local_addr()?),
            opts,
            state: Mutex::new(State::new()),
        });
        let for_server = shared.clone();
        let server = serve::spawn(listener, "okta-dev-idp", move |req| {
            handle(for_server.clone(), req)
        })?;
        Ok(IdpHandle {
            shared,
            server: Arc::new(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://HOST:PORT/oauth2/default` (an unspecified listen address is named as loopback).
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// Registers (or replaces) a client that may be granted `scopes`.
    pub fn register_client(&self, id: &str, secret: &str, scopes: &[&str]) {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        self.shared.register_client(id, secret, &scopes);
    }

    pub fn remove_client(&self, id: &str) {
        self.shared.lock().clients.remove(id);
    }

    /// Replaces a registered client's secret (rotation); nothing happens for an unknown client.
    pub fn set_client_secret(&self, id: &str, secret: &str) {
        if let Some(c) = self.shared.lock().clients.get_mut(id) {
            c.secret = secret.to_string();
        }
    }

    /// Requests received at `ep` (faulted ones too) since start or [`IdpHandle::reset_counters`].
    pub fn calls(&self, ep: Endpoint) -> u64 {
        self.shared.lock().calls[ep.index()]
    }

    /// Answers `ep` gave (faulted ones too, resets aside) since start or
    /// [`IdpHandle::reset_counters`]: a call whose caller hung up before the answer was ready
    /// (during a fault's delay) is counted by [`IdpHandle::calls`] only.
    pub fn answered(&self, ep: Endpoint) -> u64 {
        self.shared.lock().answered[ep.index()]
    }

    /// Every `/v1/token` request received (the most recent [`MAX_TOKEN_REQUEST_RECORDS`]), decoded.
    pub fn token_requests(&self) -> Vec<TokenRequestRecord> {
        self.shared.lock().token_requests.iter().cloned().collect()
    }

    pub fn set_fault(&self, ep: Endpoint, fault: Fault) {
        self.shared.lock().faults.insert(ep, fault);
    }

    pub fn clear_fault(&self, ep: Endpoint) {
        self.shared.lock().faults.remove(&ep);
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Every answer of an Okta endpoint (discovery, token, introspect, keys, revoke), 429s
    /// included, comes `latency` after the request was read, before any fault's own delay; an
    /// admitted request is in progress meanwhile (see [`IdpHandle::set_concurrency_limit`]).
    /// `Duration::ZERO` (the default) answers at once.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// The latency [`IdpHandle::set_latency`] set.
    pub fn latency(&self) -> Duration {
        self.shared.lock().latency
    }

    /// An access token as the spec says; a [`Signing::Genuine`] one is registered as issued (so
    /// introspection knows it).
    pub fn mint_token(&self, spec: TokenSpec) -> String {
        self.shared.issue(&spec)
    }

    /// A compact JWS of exactly this header and payload (any JSON, objects or not), signed as
    /// `signing` says; never registered. For tokens no [`TokenSpec`] can describe.
    pub fn mint_raw(&self, header: &Value, claims: &Value, signing: Signing) -> String {
        let (_, key) = self.shared.lock().keys.signing_key();
        keys::sign(header, claims, &signing, key)
    }

    /// `token` with its payload replaced by `claims` and its signature kept: a token changed
    /// after signing.
    pub fn with_payload(token: &str, claims: &Value) -> String {
        let mut parts = token.split('.');
        let header = parts.next().unwrap_or_default();
        let _ = parts.next();
        let signature = parts.next().unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{header}.{payload}.{signature}")
    }

    /// The `kid` access tokens are signed with now.
    pub fn signing_kid(&self) -> String {
        self.shared.lock().keys.signing_kid()
    }

    /// The `kid`s `/v1/keys` publishes, in publication order.
    pub fn published_kids(&self) -> Vec<String> {
        self.shared.lock().keys.published_kids()
    }

    /// The JWKS document `/v1/keys` serves.
    pub fn jwks(&self) -> Value {
        self.shared.lock().keys.jwks()
    }

    /// Rotation step 1: publishes the next key, without signing with it yet. Its `kid`.
    pub fn publish_next_key(&self) -> String {
        self.shared.lock().keys.publish_next()
    }

    /// Rotation step 2: signs with the most recently published key from now on. Its `kid`.
    pub fn switch_signing_key(&self) -> String {
        self.shared.lock().keys.switch_to_newest()
    }

    /// Rotation step 3: stops publishing every key but the signing one. The retired `kid`s.
    pub fn retire_old_keys(&self) -> Vec<String> {
        self.shared.lock().keys.retire_others()
    }

    /// The three steps at once (Okta's rotation, compressed). The new signing `kid`.
    pub fn rotate_keys(&self) -> String {
        self.shared.lock().keys.rotate().0
    }

    /// The signing key's public key as SPKI PEM (what an HS256 algorithm-confusion forgery uses
    /// as its secret; see [`Signing::Hs256WithPublicKey`]).
    pub fn public_key_pem(&self) -> String {
        let (_, key) = self.shared.lock().keys.signing_key();
        key.map(keys::public_key_pem).unwrap_or_default()
    }

    /// `/v1/keys` requests received: [`IdpHandle::calls`] of [`Endpoint::Keys`].
    pub fn jwks_fetches(&self) -> u64 {
        self.calls(Endpoint::Keys)
    }

    /// `/v1/keys` answers given: [`IdpHandle::answered`] of [`Endpoint::Keys`].
    pub fn jwks_answers(&self) -> u64 {
        self.answered(Endpoint::Keys)
    }

    /// Introspection answers `{"active":false}` for this token from now on.
    pub fn revoke(&self, token: &str) {
        if let Some(t) = self.shared.lock().tokens.get_mut(token) {
            t.revoked = true;
        }
    }

    /// `/v1/introspect` requests received for that token (faulted and unauthenticated ones too).
    pub fn introspections(&self, token: &str) -> u64 {
        self.shared
            .lock()
            .introspections
            .get(token)
            .copied()
            .unwrap_or(0)
    }

    /// Zeroes the call counters and the per-token introspection counters, forgets the token
    /// request records, and restarts [`IdpHandle::max_in_flight`] from the requests in progress.
    /// Clients, tokens, faults and limits (and their counts of 429s) stay.
    pub fn reset_counters(&self) {
        let mut state = self.shared.lock();
        state.calls = [0; Endpoint::ALL.len()];
        state.answered = [0; Endpoint::ALL.len()];
        state.token_requests.clear();
        state.introspections.clear();
        state.concurrency.reset_max();
        state.portal.not_modified = 0;
    }

    /// The registered clients.
    pub fn clients(&self) -> Vec<Client> {
        self.shared.lock().clients.values().cloned().collect()
    }

    // ---- the Dev Portal: applications and their registrations ----

    /// `http://HOST:PORT/_portal/registrations`: the registrations document.
    pub fn registrations_uri(&self) -> String {
        let issuer = self.issuer();
        let origin = issuer.strip_suffix(AUTH_SERVER_PATH).unwrap_or(&issuer);
        format!("{origin}{REGISTRATIONS_PATH}")
    }

    /// Adds (or replaces, keeping its registrations) a portal application.
    pub fn add_application(&self, app: Application) {
        self.shared.lock().portal.add_application(app);
    }

    /// Removes an application and its registrations; false if unknown.
    pub fn remove_application(&self, client_id: &str) -> bool {
        self.shared.lock().portal.remove_application(client_id)
    }

    /// The app registers for `product` (status `pending`, as in the portal); the application is
    /// created (with a generated `application_id`) if unknown.
    pub fn register(&self, client_id: &str, product: &str) {
        self.set_registration(client_id, product, "pending");
    }

    /// Sets a registration's status, any string (`approved`, `pending`, `revoked`, `rejected`,
    /// or one the filter does not know), creating the registration and application if needed.
    pub fn set_registration(&self, client_id: &str, product: &str, status: &str) {
        self.shared
            .lock()
            .portal
            .set_registration(client_id, product, status);
    }

    /// An admin approves an existing registration; false without one.
    pub fn approve(&self, client_id: &str, product: &str) -> bool {
        self.shared
            .lock()
            .portal
            .change_status(client_id, product, "approved")
    }

    /// An admin revokes an existing registration; false without one.
    pub fn revoke_registration(&self, client_id: &str, product: &str) -> bool {
        self.shared
            .lock()
            .portal
            .change_status(client_id, product, "revoked")
    }

    /// An admin rejects an existing registration; false without one.
    pub fn reject(&self, client_id: &str, product: &str) -> bool {
        self.shared
            .lock()
            .portal
            .change_status(client_id, product, "rejected")
    }

    /// Deletes a registration (the app stays, known but unregistered); false without one.
    pub fn remove_registration(&self, client_id: &str, product: &str) -> bool {
        self.shared
            .lock()
            .portal
            .remove_registration(client_id, product)
    }

    /// A registration's status, if there is one.
    pub fn registration_status(&self, client_id: &str, product: &str) -> Option<String> {
        self.shared.lock().portal.status(client_id, product)
    }

    /// The generated registrations document.
    pub fn registrations_document(&self) -> Value {
        self.shared.lock().portal.document()
    }

    /// The `ETag` the document is served with now.
    pub fn registrations_etag(&self) -> String {
        self.shared.lock().portal.body_and_etag().1
    }

    /// Serves exactly these bytes instead of the generated document (a large, odd or
    /// malformed one); `None`: the generated document again.
    pub fn set_registrations_body(&self, body: Option<Vec<u8>>) {
        self.shared.lock().portal.set_raw(body);
    }

    /// Requests received at `/_portal/registrations`: [`IdpHandle::calls`] of
    /// [`Endpoint::Registrations`].
    pub fn registrations_fetches(&self) -> u64 {
        self.calls(Endpoint::Registrations)
    }

    /// 304s answered at `/_portal/registrations` since start or the last reset.
    pub fn registrations_not_modified(&self) -> u64 {
        self.shared.lock().portal.not_modified
    }
}

impl std::fmt::Debug for IdpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpHandle")
            .field("issuer", &self.shared.issuer)
            .finish_non_exhaustive()
    }
}

fn issuer_for(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into()),
            SocketAddr::V6(_) => addr.set_ip(std::net::Ipv6Addr::LOCALHOST.into()),
        }
    }
    format!("http://{addr}{AUTH_SERVER_PATH}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Discovery { openid: bool },
    Token,
    Introspect,
    Keys,
    Revoke,
    Registrations,
    Admin,
    NotFound,
}

fn route(path: &str) -> Route {
    if path.starts_with("/_dev/") {
        return Route::Admin;
    }
    if path == REGISTRATIONS_PATH {
        return Route::Registrations;
    }
    let rest = path.strip_prefix(AUTH_SERVER_PATH).unwrap_or(path);
    match rest {
        "/.well-known/oauth-authorization-server" => Route::Discovery { openid: false },
        "/.well-known/openid-configuration" => Route::Discovery { openid: true },
        "/v1/token" if rest != path => Route::Token,
        "/v1/introspect" if rest != path => Route::Introspect,
        "/v1/keys" if rest != path => Route::Keys,
        "/v1/revoke" if rest != path => Route::Revoke,
        _ => Route::NotFound,
    }
}

/// What the handler needs of a request once its body is read.
struct Req {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, ResetConnection> {
    let (parts, body) = req.into_parts();
    // A registrations document may be far larger than any other body (a portal of 100,000
    // applications is 30 MB; the filter's cap is 64 MiB).
    let limit = if parts.uri.path() == portal::DOCUMENT_ADMIN_PATH {
        portal::MAX_DOCUMENT_UPLOAD
    } else {
        serve::MAX_BODY
    };
    let body = serve::read_body_up_to(body, limit)
        .await
        .map(|b| b.to_vec());
    let req = Req {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    };
    let route = route(&req.path);
    let endpoint = match route {
        Route::Discovery { .. } => Some(Endpoint::Discovery),
        Route::Token => Some(Endpoint::Token),
        Route::Introspect => Some(Endpoint::Introspect),
        Route::Keys => Some(Endpoint::Keys),
        Route::Registrations => Some(Endpoint::Registrations),
        Route::Revoke | Route::Admin | Route::NotFound => None,
    };
    let okta = route != Route::Registrations;
    let mut fault = None;
    let mut limit = None;
    let mut latency = Duration::ZERO;
    let mut over_concurrency = false;
    // Held until the answer is ready: the request is in progress for the concurrency limit.
    let mut _in_progress = None;
    if (endpoint.is_some() && okta) || route == Route::Revoke {
        let mut state = shared.lock();
        if state.concurrency.admit() {
            _in_progress = Some(InProgress(shared.clone()));
        } else {
            over_concurrency = true;
        }
        latency = state.latency;
    }
    if let Some(ep) = endpoint {
        let mut state = shared.lock();
        state.calls[ep.index()] += 1;
        if !over_concurrency {
            limit = state.limits.check(ep, util::now());
        }
        match ep {
            Endpoint::Token => {
                let record = token_record(&req);
                if state.token_requests.len() >= MAX_TOKEN_REQUEST_RECORDS {
                    state.token_requests.pop_front();
                }
                state.token_requests.push_back(record);
            }
            Endpoint::Introspect => {
                if let Some(token) = introspected_token(&req) {
                    if let Some(n) = state.introspections.get_mut(&token) {
                        *n += 1;
                    } else if state.introspections.len() < MAX_TOKENS {
                        state.introspections.insert(token, 1);
                    }
                }
            }
            Endpoint::Discovery | Endpoint::Keys | Endpoint::Registrations => {}
        }
        fault = state.faults.get(&ep).cloned();
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if over_concurrency {
        return Ok(ratelimit::concurrency_refusal(util::now()));
    }
    if let Some(resp) = ratelimit::refusal(limit.as_ref()) {
        count_answer(&shared, endpoint);
        return Ok(resp);
    }
    let mut pad_to = None;
    if let (Some(ep), Some(fault)) = (endpoint, fault) {
        if !fault.delay.is_zero() {
            // Dropped here (never counted as answered) when the caller hangs up meanwhile.
            tokio::time::sleep(fault.delay).await;
        }
        match fault.answer {
            FaultAnswer::Normal => {}
            FaultAnswer::Padded { bytes } => pad_to = Some(bytes),
            FaultAnswer::ResetConnection => return Err(ResetConnection),
            answer => {
                count_answer(&shared, endpoint);
                return Ok(fault_answer(ep, &answer));
            }
        }
    }
    count_answer(&shared, endpoint);
    let mut resp = match route {
        Route::Discovery { openid } => discovery(&shared, &req, openid),
        Route::Token => token(&shared, &req),
        Route::Introspect => introspect(&shared, &req),
        Route::Keys => jwks(&shared, &req),
        Route::Revoke => revoke(&shared, &req),
        Route::Registrations => portal::serve(&shared, &req),
        Route::Admin => admin::handle(&shared, &req),
        Route::NotFound => not_found(&req.path),
    };
    if let Some(bytes) = pad_to {
        resp = padded(resp, bytes).await;
    }
    if okta {
        util::set_header(&mut resp, "x-okta-request-id", &util::random_id(27));
    }
    ratelimit::annotate(&mut resp, limit.as_ref());
    Ok(resp)
}

/// `resp` with its body padded with spaces to at least `bytes`.
async fn padded(resp: Resp, bytes: usize) -> Resp {
    use http_body_util::BodyExt as _;
    let (mut parts, body) = resp.into_parts();
    let mut body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(never) => match never {},
    };
    if body.len() < bytes {
        body.resize(bytes, b' ');
    }
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    hyper::Response::from_parts(parts, http_body_util::Full::new(body.into()))
}

/// A request in progress, for the concurrent-request limit: released when dropped, once its
/// answer is ready (or when its connection's task ends first).
struct InProgress(Arc<Shared>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.lock().concurrency.release();
    }
}

fn count_answer(shared: &Shared, endpoint: Option<Endpoint>) {
    if let Some(ep) = endpoint {
        shared.lock().answered[ep.index()] += 1;
    }
}

fn token_record(req: &Req) -> TokenRequestRecord {
    let auth = client_auth(&req.headers);
    let params = req
        .body
        .as_deref()
        .map(|b| form_urlencoded::parse(b).into_owned().collect::<Vec<_>>())
        .unwrap_or_default();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (client_id, client_secret) = match &auth {
        ClientAuth::Basic { id, secret, .. } => (id.clone(), secret.clone()),
        _ => (String::new(), String::new()),
    };
    TokenRequestRecord {
        client_id,
        client_secret,
        grant_type: get("grant_type").unwrap_or_default(),
        scope: get("scope"),
        authorization_scheme: auth.scheme().to_string(),
    }
}

fn introspected_token(req: &Req) -> Option<String> {
    let body = req.body.as_deref()?;
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

fn fault_answer(ep: Endpoint, answer: &FaultAnswer) -> Resp {
    match answer {
        FaultAnswer::Normal | FaultAnswer::ResetConnection | FaultAnswer::Padded { .. } => {
            // Handled by the caller; answer something sane anyway.
            okta_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "E0000009",
                "Internal Server Error",
            )
        }
        FaultAnswer::Status(code) => status_answer(ep, *code),
        FaultAnswer::Garbage => response(
            StatusCode::OK,
            Some(util::JSON),
            "{\"token_type\":\"Bearer\",\"active\":tr<<not json>>",
        ),
        FaultAnswer::Html => response(
            StatusCode::OK,
            Some("text/html;charset=utf-8"),
            "<!DOCTYPE html>\n<html><head><title>Okta</title></head>\
             <body><h1>Service temporarily unavailable</h1>\
             <p>Okta is performing maintenance. Please try again later.</p></body></html>\n",
        ),
        FaultAnswer::EmptyOk => response(StatusCode::OK, Some(util::JSON), ""),
        FaultAnswer::RateLimited { reset_in_secs } => util::rate_limited(*reset_in_secs),
        FaultAnswer::Custom {
            status,
            content_type,
            body,
            headers,
        } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let ct = (!content_type.is_empty()).then_some(content_type.as_str());
            let mut resp = response(status, ct, body.clone());
            for (name, value) in headers {
                util::set_header(&mut resp, name, value);
            }
            resp
        }
    }
}

fn status_answer(ep: Endpoint, code: u16) -> Resp {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let oauth = matches!(ep, Endpoint::Token | Endpoint::Introspect);
    match status.as_u16() {
        400 if oauth => oauth_error(status, "invalid_request", "The request is invalid."),
        401 if oauth => oauth_error(
            status,
            "invalid_client",
            "Client authentication failed. Either the client or the client credentials are invalid.",
        ),
        403 if oauth => oauth_error(
            status,
            "access_denied",
            "The resource owner or authorization server denied the request.",
        ),
        401 => okta_error(status, "E0000011", "Invalid token provided"),
        403 => okta_error(
            status,
            "E0000006",
            "You do not have permission to perform the requested action",
        ),
        404 => okta_error(status, "E0000007", "Not found: Resource not found"),
        405 => method_not_allowed("GET, POST"),
        429 => util::rate_limited(60),
        500..=599 => okta_error(status, "E0000009", "Internal Server Error"),
        _ => okta_error(
            status,
            "E0000001",
            status.canonical_reason().unwrap_or("Api validation failed"),
        ),
    }
}

fn discovery(shared: &Shared, req: &Req, openid: bool) -> Resp {
    if req.method != Method::GET && req.method != Method::HEAD {
        return method_not_allowed("GET");
    }
    let iss = &shared.issuer;
    let origin = iss.strip_suffix(AUTH_SERVER_PATH).unwrap_or(iss);
    let mut doc = json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/v1/authorize"),
        "token_endpoint": format!("{iss}/v1/token"),
        "registration_endpoint": format!("{origin}/oauth2/v1/clients"),
        "jwks_uri": format!("{iss}/v1/keys"),
        "response_types_supported": ["code", "token", "id_token", "code id_token", "code token", "id_token token", "code id_token token"],
        "response_modes_supported": ["query", "fragment", "form_post", "okta_post_message"],
        "grant_types_supported": ["authorization_code", "implicit", "refresh_token", "password", "client_credentials", "urn:ietf:params:oauth:grant-type:device_code", "urn:ietf:params:oauth:grant-type:token-exchange"],
        "subject_types_supported": ["public"],
        "scopes_supported": ["openid", "profile", "email", "address", "phone", "offline_access", "device_sso"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt", "none"],
        "claims_supported": ["ver", "jti", "iss", "aud", "iat", "exp", "cid", "uid", "scp", "sub"],
        "code_challenge_methods_supported": ["S256"],
        "introspection_endpoint": format!("{iss}/v1/introspect"),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt", "none"],
        "revocation_endpoint": format!("{iss}/v1/revoke"),
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt", "none"],
        "end_session_endpoint": format!("{iss}/v1/logout"),
        "request_parameter_supported": true,
        "request_object_signing_alg_values_supported": ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"],
        "device_authorization_endpoint": format!("{iss}/v1/device/authorize"),
    });
    if openid {
        if let Value::Object(map) = &mut doc {
            map.insert(
                "userinfo_endpoint".into(),
                json!(format!("{iss}/v1/userinfo")),
            );
            map.insert(
                "id_token_signing_alg_values_supported".into(),
                json!(["RS256"]),
            );
        }
    }
    json_response(StatusCode::OK, &doc)
}

fn jwks(shared: &Shared, req: &Req) -> Resp {
    if req.method != Method::GET && req.method != Method::HEAD {
        return method_not_allowed("GET");
    }
    let jwks = shared.lock().keys.jwks();
    let mut resp = json_response(StatusCode::OK, &jwks);
    // What Okta sends with its key set.
    util::set_header(&mut resp, "cache-control", "max-age=3600, must-revalidate");
    resp
}

/// Form parameters of an OAuth endpoint request, or the error answer.
fn oauth_params(req: &Req) -> Result<Vec<(String, String)>, Box<Resp>> {
    if req.method != Method::POST {
        return Err(Box::new(no_store(method_not_allowed("POST"))));
    }
    if !is_form(&req.headers) {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Endpoint only supports the 'application/x-www-form-urlencoded' content type.",
        )));
    }
    let Some(body) = req.body.as_deref() else {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request body could not be read.",
        )));
    };
    parse_form(body).map_err(|name| {
        Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("The '{name}' parameter was included more than once."),
        ))
    })
}

/// The authenticated client, or Okta's answer.
fn authenticate(
    shared: &Shared,
    req: &Req,
    params: &[(String, String)],
) -> Result<Client, Box<Resp>> {
    let invalid = |desc: &str| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", desc);
    match client_auth(&req.headers) {
        ClientAuth::Basic { id, secret, .. } => {
            if param(params, "client_secret").is_some() || param(params, "client_assertion").is_some() {
                return Err(Box::new(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Cannot supply multiple client credentials. Use one of the following: credentials in the Authorization header, credentials in the post body, or a client_assertion in the post body.",
                )));
            }
            let state = shared.lock();
            match state.clients.get(&id) {
                Some(client) if util::secrets_equal(&client.secret, &secret) => Ok(client.clone()),
                Some(_) => Err(Box::new(invalid(
                    "The client secret supplied for a confidential client is invalid.",
                ))),
                None => Err(Box::new(invalid(
                    "Client authentication failed. Either the client or the client credentials are invalid.",
                ))),
            }
        }
        ClientAuth::Multiple => Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Multiple Authorization headers are not allowed.",
        ))),
        ClientAuth::Missing => Err(Box::new(invalid(
            "Client authentication failed. Either the client or the client credentials are invalid.",
        ))),
        ClientAuth::Malformed { .. } => Err(Box::new(invalid(
            "Client authentication failed. Either the client or the client credentials are invalid.",
        ))),
    }
}

fn token(shared: &Shared, req: &Req) -> Resp {
    let params = match oauth_params(req) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let client = match authenticate(shared, req, &params) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    match param(&params, "grant_type") {
        None | Some("") => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The 'grant_type' parameter is required.",
            )
        }
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "The authorization grant type is not supported by the authorization server. Configured grant types: [client_credentials].",
            )
        }
    }
    let mut requested: Vec<String> = Vec::new();
    for s in param(&params, "scope").unwrap_or("").split(' ') {
        if !s.is_empty() && !requested.iter().any(|r| r == s) {
            requested.push(s.to_string());
        }
    }
    let invalid_scope = |desc: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", desc);
    if requested.iter().any(|s| s == "openid") {
        return invalid_scope("Client Credentials requests cannot contain OpenID scopes.");
    }
    let granted: Vec<String> = if requested.is_empty() {
        if shared.opts.default_scopes.is_empty() {
            return invalid_scope(
                "The authorization server resource does not have any configured default scopes, 'scope' must be provided.",
            );
        }
        let allowed: Vec<String> = shared
            .opts
            .default_scopes
            .iter()
            .filter(|s| client.scopes.contains(s))
            .cloned()
            .collect();
        if allowed.is_empty() {
            return invalid_scope("The requested scope is invalid, unknown, or malformed.");
        }
        allowed
    } else {
        if requested.iter().any(|s| !client.scopes.contains(s)) {
            return invalid_scope("The requested scope is invalid, unknown, or malformed.");
        }
        requested
    };
    let ttl = i64::try_from(shared.opts.token_ttl_secs).unwrap_or(i64::MAX);
    let mut spec = TokenSpec::for_client(&client.id, &[]);
    spec.scopes = granted.clone();
    spec.audience = None;
    spec.expires_in_secs = ttl;
    let access_token = shared.issue(&spec);
    no_store(json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": shared.opts.token_ttl_secs,
            "access_token": access_token,
            "scope": granted.join(" "),
        }),
    ))
}

/// Claims an introspection answer never copies as custom claims (they are mapped or left out).
const STANDARD_CLAIMS: &[&str] = &[
    "ver", "jti", "iss", "aud", "iat", "exp", "cid", "uid", "scp", "sub",
];

fn introspect(shared: &Shared, req: &Req) -> Resp {
    let params = match oauth_params(req) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    if let Err(resp) = authenticate(shared, req, &params) {
        return *resp;
    }
    let token = match param(&params, "token") {
        Some(t) if !t.is_empty() => t,
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The 'token' parameter is required.",
            )
        }
    };
    if let Some(hint) = param(&params, "token_type_hint") {
        if !matches!(
            hint,
            "access_token" | "id_token" | "refresh_token" | "device_secret"
        ) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The 'token_type_hint' parameter value is not supported.",
            );
        }
    }
    let inactive = || no_store(json_response(StatusCode::OK, &json!({ "active": false })));
    let now = util::now();
    let state = shared.lock();
    let Some(issued) = state.tokens.get(token) else {
        return inactive();
    };
    let expired = exp_of(&issued.claims).is_some_and(|exp| exp <= now);
    if issued.revoked || (expired && !issued.active_even_if_expired) {
        return inactive();
    }
    let c = &issued.claims;
    let mut out = Map::new();
    out.insert("active".into(), json!(true));
    if let Some(scp) = c.get("scp") {
        let scope = match scp {
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.insert("scope".into(), json!(scope));
    }
    if let Some(sub) = c.get("sub") {
        out.insert("username".into(), sub.clone());
    }
    for name in ["exp", "iat", "sub", "aud", "iss", "jti"] {
        if let Some(v) = c.get(name) {
            out.insert(name.into(), v.clone());
        }
    }
    out.insert("token_type".into(), json!("Bearer"));
    if let Some(cid) = c.get("cid") {
        out.insert("client_id".into(), cid.clone());
    }
    if let Some(uid) = c.get("uid") {
        out.insert("uid".into(), uid.clone());
    }
    for (k, v) in c {
        if !STANDARD_CLAIMS.contains(&k.as_str()) && !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    no_store(json_response(StatusCode::OK, &Value::Object(out)))
}

fn revoke(shared: &Shared, req: &Req) -> Resp {
    let params = match oauth_params(req) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    if let Err(resp) = authenticate(shared, req, &params) {
        return *resp;
    }
    let Some(token) = param(&params, "token").filter(|t| !t.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The 'token' parameter is required.",
        );
    };
    if let Some(t) = shared.lock().tokens.get_mut(token) {
        t.revoked = true;
    }
    no_store(response(StatusCode::OK, None, ""))
}
