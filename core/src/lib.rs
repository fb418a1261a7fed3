//! okta-dcr-auth's core: every decision of the proxy-wasm filter that authenticates API clients
//! registered in Okta through Dynamic Client Registration (the Kong Konnect Dev Portal flow), in
//! plain Rust with no proxy-wasm dependency, testable natively. The filter crate (the
//! repository's root package, `src/`) is the thin glue between a proxy-wasm host and [`gate`].
//!
//! - [`config`]: the plugin configuration and its checks;
//! - [`credentials`]: reading `Authorization` (Basic client credentials, Bearer tokens);
//! - [`okta`]: the requests to Okta and how its answers are read;
//! - [`registrations`]: which apps hold an approved registration for the product, and the
//!   revalidation rules of the shared document;
//! - [`verdict`]: grants, denials and the reply for each;
//! - [`jwt`], [`jwks`]: Bearer JWT access tokens checked locally against the issuer's key set;
//! - [`upstream`]: what an allowed request carries upstream, and which client headers go;
//! - [`cache`]: cache keys and the entry encoding in shared data;
//! - [`local`]: each worker's copies of verdicts, by the exact `Authorization` bytes;
//! - [`budget`]: the IdP call budget per route and Okta endpoint, shared by all workers, paced;
//! - [`inflight`]: the IdP calls the gateway has out to an Okta org, all workers together;
//! - [`throttle`]: the per-client-id failure throttle for Basic credentials;
//! - [`metrics`]: the counters and histogram the filter exposes;
//! - [`header_map`]: the ABI's header map encoding, names and values as bytes;
//! - [`gate`]: the request state machine over a small [`gate::Host`] trait, with its parts:
//!   the shared-slot protocol, discovery, the quota guard, admission (budget, guard,
//!   throttle).

pub mod budget;
pub mod cache;
pub mod config;
pub mod credentials;
pub mod gate;
pub mod header_map;
pub mod inflight;
pub mod jwks;
pub mod jwt;
pub mod local;
pub mod metrics;
pub mod okta;
pub mod registrations;
pub mod signatures;
pub mod throttle;
pub mod upstream;
pub mod url;
pub mod verdict;
