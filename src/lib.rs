//! okta-dcr-auth: a proxy-wasm HTTP filter that authenticates API clients registered in Okta
//! through Dynamic Client Registration (the Kong Konnect Dev Portal flow).
//!
//! This crate is the glue only: `filter` turns proxy-wasm host events into calls on the core's
//! [`okta_dcr_auth_core::gate::Gate`] and its decisions into host calls; `abi` holds the host
//! calls whose SDK wrappers could panic. Every decision is in the core crate (`core/`), which
//! has no proxy-wasm dependency.

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod filter;
