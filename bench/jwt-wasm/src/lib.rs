//! The filter's JWT verification (`okta_dcr_auth_core::jwt::verify`) alone, as a wasm module that
//! `run.mjs` times under V8 (node): what a never-seen token costs inside the VM, without Envoy.
//! The caller writes a token and a key set into memory from `buffer`, calls `setup`, then `run`.

use std::cell::RefCell;

use okta_dcr_auth_core::jwt::{verify, Alg, JwtPolicy, KeySet};

thread_local! {
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static STATE: RefCell<Option<(String, KeySet, JwtPolicy)>> = const { RefCell::new(None) };
}

/// A buffer of `len` bytes for the caller to fill; its address.
#[no_mangle]
pub extern "C" fn buffer(len: usize) -> *mut u8 {
    INPUT.with(|b| {
        let mut b = b.borrow_mut();
        b.resize(len, 0);
        b.as_mut_ptr()
    })
}

/// The buffer holds `token`, a newline, the key set; `issuer` and `audience` as the token has
/// them. 1 when the token verifies.
#[no_mangle]
pub extern "C" fn setup(token_len: usize) -> u32 {
    let input = INPUT.with(|b| b.borrow().clone());
    let (token, jwks) = input.split_at(token_len.min(input.len()));
    let token = String::from_utf8_lossy(token).into_owned();
    let Ok((keys, _)) = KeySet::parse(jwks.get(1..).unwrap_or_default()) else {
        return 0;
    };
    let policy = JwtPolicy {
        issuer: "https://dev-12345678.okta.com/oauth2/default".into(),
        audience: "api://default".into(),
        algorithms: vec![Alg::RS256],
        clock_skew_s: 60,
        scopes: vec!["api:read".into()],
        app_claim: "app_id".into(),
    };
    let ok = verify(&token, &keys, &policy, NOW).is_ok();
    STATE.with(|s| *s.borrow_mut() = Some((token, keys, policy)));
    u32::from(ok)
}

/// The `now` the tokens are checked at (seconds).
const NOW: u64 = 1_800_000_000;

/// Verifies the token `n` times; how many verified.
#[no_mangle]
pub extern "C" fn run(n: u32) -> u32 {
    STATE.with(|s| {
        let s = s.borrow();
        let Some((token, keys, policy)) = s.as_ref() else {
            return 0;
        };
        (0..n)
            .filter(|_| verify(std::hint::black_box(token), keys, policy, NOW).is_ok())
            .count() as u32
    })
}
