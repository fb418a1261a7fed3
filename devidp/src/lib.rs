//! `okta-dev-idp`: an Okta-compatible development authorization server and an echo upstream,
//! for the okta-dcr-auth filter's tests, `make run`, soak and bench.
//!
//! Both servers run on their own thread with their own tokio runtime, so every method here is
//! plain synchronous code that `#[test]` functions can call. Dropping a handle stops its server.
//!
//! The IdP behaves like an Okta custom authorization server at `/oauth2/default`:
//! discovery (`/.well-known/oauth-authorization-server`, `/.well-known/openid-configuration`),
//! `/v1/token` (client credentials, `client_secret_basic` per RFC 6749 2.3.1), `/v1/introspect`
//! (RFC 7662), `/v1/revoke`, `/v1/keys` (the JWKS of the RS256 keys access tokens are signed
//! with; rotation through the admin API or [`IdpHandle::rotate_keys`]), plus an admin API under `/_dev/` (see the `admin`
//! module docs) for out-of-process use, and the Dev Portal side: the registrations document at
//! `/_portal/registrations` with its admin endpoints. Faults (delay, status, garbage, HTML, empty, 429, custom,
//! connection reset) can be set per endpoint, and so can Okta-like rate limits (`X-Rate-Limit-*`
//! headers, 429 `E0000047` beyond the limit); Okta's concurrent-request limit per org
//! ([`IdpHandle::set_concurrency_limit`]) and a latency for every endpoint
//! ([`IdpHandle::set_latency`]) are set for the whole server. It never logs, so it never logs a
//! secret or token.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod echo;
mod idp;
mod keys;
mod serve;
mod util;

pub use echo::{EchoHandle, EchoRequest, MAX_ECHO_RECORDS};
pub use idp::{
    Application, Client, Endpoint, Fault, FaultAnswer, IdpHandle, IdpOptions, RateLimit,
    TokenRequestRecord, TokenSpec, AUTH_SERVER_PATH, MAX_TOKEN_REQUEST_RECORDS, REGISTRATIONS_PATH,
};
pub use keys::Signing;

/// The demo client `--demo` seeds (a DCR app of the Konnect Dev Portal).
pub const DEMO_CLIENT_ID: &str = "0oa6demoDcrClient4kong";
/// The demo client's secret.
pub const DEMO_CLIENT_SECRET: &str = "demo-Secret_4kong-DCR";
/// The demo client's scopes.
pub const DEMO_CLIENT_SCOPES: &[&str] = &["api:read", "api:write"];
/// The gateway's own introspection client that `--demo` seeds.
pub const DEMO_INTROSPECTION_CLIENT_ID: &str = "0oa6gatewayIntrospect";
/// Its secret.
pub const DEMO_INTROSPECTION_CLIENT_SECRET: &str = "gateway-Introspection_Secret";

/// The API product the demo app holds an approved registration for.
pub const DEMO_PRODUCT: &str = "payments-v1";
/// The API product the demo app registered for, still pending approval.
pub const DEMO_PENDING_PRODUCT: &str = "orders-v2";
/// The demo app's portal application id (`x-application-id` upstream).
pub const DEMO_APPLICATION_ID: &str = "app-demo-4kong";
/// The demo app's developer.
pub const DEMO_DEVELOPER_ID: &str = "dev-demo";

/// Registers the demo clients on `idp`, and the demo app in the portal: approved for
/// [`DEMO_PRODUCT`], pending for [`DEMO_PENDING_PRODUCT`].
pub fn seed_demo(idp: &IdpHandle) {
    idp.register_client(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_CLIENT_SCOPES);
    idp.register_client(
        DEMO_INTROSPECTION_CLIENT_ID,
        DEMO_INTROSPECTION_CLIENT_SECRET,
        &[],
    );
    idp.add_application(Application {
        client_id: DEMO_CLIENT_ID.into(),
        application_id: DEMO_APPLICATION_ID.into(),
        developer_id: Some(DEMO_DEVELOPER_ID.into()),
        name: "Demo app".into(),
    });
    idp.set_registration(DEMO_CLIENT_ID, DEMO_PRODUCT, "approved");
    idp.register(DEMO_CLIENT_ID, DEMO_PENDING_PRODUCT);
}
