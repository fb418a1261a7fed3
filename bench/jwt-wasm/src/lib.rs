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

/// One candidate RSA library's RS256 check alone: the key is parsed once (`candidate_setup`), then
/// each run hashes the signing input and checks the signature, as `Jwk::verifies` does.
#[cfg(any(feature = "rsa010", feature = "rsa09", feature = "ring"))]
mod candidate {
    use std::cell::RefCell;

    #[cfg(feature = "rsa010")]
    mod lib {
        use rsa010::{BoxedUint, Pkcs1v15Sign, PublicKey};
        use sha2::{Digest, Sha256};
        pub type Key = PublicKey;
        pub fn parse(n: &[u8], e: &[u8]) -> Option<Key> {
            let (n, e) = (
                BoxedUint::from_be_slice_vartime(n),
                BoxedUint::from_be_slice_vartime(e),
            );
            PublicKey::new_with_size_limits(n, e, 2048..=4096).ok()
        }
        pub fn verify(key: &Key, message: &[u8], signature: &[u8]) -> bool {
            let hashed = Sha256::digest(message);
            key.verify(Pkcs1v15Sign::new::<Sha256>(), &hashed, signature)
                .is_ok()
        }
    }

    #[cfg(feature = "rsa09")]
    mod lib {
        use rsa09::{BigUint, Pkcs1v15Sign, RsaPublicKey};
        use sha2_010::{Digest, Sha256};
        pub type Key = RsaPublicKey;
        pub fn parse(n: &[u8], e: &[u8]) -> Option<Key> {
            let (n, e) = (BigUint::from_bytes_be(n), BigUint::from_bytes_be(e));
            RsaPublicKey::new_with_max_size(n, e, 4096).ok()
        }
        pub fn verify(key: &Key, message: &[u8], signature: &[u8]) -> bool {
            let hashed = Sha256::digest(message);
            key.verify(Pkcs1v15Sign::new::<Sha256>(), &hashed, signature)
                .is_ok()
        }
    }

    /// ring has no parsed RSA public key for verification: `RsaPublicKeyComponents::verify`
    /// reads the modulus and computes its Montgomery constants on every call.
    #[cfg(feature = "ring")]
    mod lib {
        use ring::signature::{RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256};
        pub type Key = RsaPublicKeyComponents<Vec<u8>>;
        pub fn parse(n: &[u8], e: &[u8]) -> Option<Key> {
            Some(RsaPublicKeyComponents {
                n: n.to_vec(),
                e: e.to_vec(),
            })
        }
        pub fn verify(key: &Key, message: &[u8], signature: &[u8]) -> bool {
            key.verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok()
        }
    }

    /// The parsed key, the signing input, the signature.
    type State = (lib::Key, Vec<u8>, Vec<u8>);

    thread_local! {
        static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
    }

    /// The buffer holds four fields, each a 4-byte little-endian length and its bytes: the
    /// modulus, the exponent (big-endian), the signing input, the signature. 1 when it verifies.
    #[no_mangle]
    pub extern "C" fn candidate_setup() -> u32 {
        let input = super::INPUT.with(|b| b.borrow().clone());
        let mut fields = Vec::new();
        let mut rest = &input[..];
        while rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let Some(field) = rest.get(4..4 + len) else {
                return 0;
            };
            fields.push(field.to_vec());
            rest = &rest[4 + len..];
        }
        let [n, e, message, signature] = &fields[..] else {
            return 0;
        };
        let Some(key) = lib::parse(n, e) else {
            return 0;
        };
        let ok = lib::verify(&key, message, signature);
        STATE.with(|s| *s.borrow_mut() = Some((key, message.clone(), signature.clone())));
        u32::from(ok)
    }

    /// Checks the signature `n` times; how many verified.
    #[no_mangle]
    pub extern "C" fn candidate_run(n: u32) -> u32 {
        STATE.with(|s| {
            let s = s.borrow();
            let Some((key, message, signature)) = s.as_ref() else {
                return 0;
            };
            (0..n)
                .filter(|_| lib::verify(key, std::hint::black_box(message), signature))
                .count() as u32
        })
    }
}
