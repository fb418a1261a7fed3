//! The RS256 signing keys and the JWS the IdP writes.
//!
//! The key material is the development keys in `devidp/keys/` (public on purpose, never to be
//! used elsewhere): generating RSA keys at run time is slow in debug builds. Each server names
//! its keys with fresh random `kid`s, so two servers never share a `kid`, and a rotation always
//! publishes a `kid` never seen before (the material wraps around after four rotations).
//!
//! Rotation follows Okta: publish the next key, then sign with it, then retire the old one.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, PrivateKey, PublicKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::util;

const POOL_PEMS: [&str; 4] = [
    include_str!("../keys/dev-rsa-1.pem"),
    include_str!("../keys/dev-rsa-2.pem"),
    include_str!("../keys/dev-rsa-3.pem"),
    include_str!("../keys/dev-rsa-4.pem"),
];

/// The rotation pool, read once per process. `None` if a committed key cannot be read, which
/// the unit tests rule out.
fn pool() -> Option<&'static [PrivateKey]> {
    static POOL: OnceLock<Option<Vec<PrivateKey>>> = OnceLock::new();
    POOL.get_or_init(|| {
        POOL_PEMS
            .iter()
            .map(|pem| PrivateKey::from_pkcs1_pem(pem).ok())
            .collect()
    })
    .as_deref()
}

/// A key the IdP never publishes: what a forger would sign with.
pub(crate) fn unpublished() -> Option<&'static PrivateKey> {
    static KEY: OnceLock<Option<PrivateKey>> = OnceLock::new();
    KEY.get_or_init(|| {
        PrivateKey::from_pkcs1_pem(include_str!("../keys/dev-rsa-unpublished.pem")).ok()
    })
    .as_ref()
}

fn pool_key(index: usize) -> Option<&'static PrivateKey> {
    let pool = pool()?;
    pool.get(index % pool.len())
}

/// One published key: its name and its material.
#[derive(Debug, Clone)]
struct Published {
    kid: String,
    pool_index: usize,
}

/// The published keys and the one that signs.
#[derive(Debug)]
pub(crate) struct KeyRing {
    /// In publication order; the signing key is always among them.
    published: Vec<Published>,
    signing: usize,
    next_pool_index: usize,
}

impl KeyRing {
    /// One key, published and signing.
    pub(crate) fn new() -> KeyRing {
        KeyRing {
            published: vec![Published {
                kid: new_kid(),
                pool_index: 0,
            }],
            signing: 0,
            next_pool_index: 1,
        }
    }

    pub(crate) fn signing_kid(&self) -> String {
        self.published
            .get(self.signing)
            .map(|p| p.kid.clone())
            .unwrap_or_default()
    }

    /// The signing key, by `kid`, for signing outside the lock.
    pub(crate) fn signing_key(&self) -> (String, Option<&'static PrivateKey>) {
        match self.published.get(self.signing) {
            Some(p) => (p.kid.clone(), pool_key(p.pool_index)),
            None => (String::new(), None),
        }
    }

    pub(crate) fn published_kids(&self) -> Vec<String> {
        self.published.iter().map(|p| p.kid.clone()).collect()
    }

    /// Step 1: publish the next key (not signing yet). Its `kid`.
    pub(crate) fn publish_next(&mut self) -> String {
        let kid = new_kid();
        self.published.push(Published {
            kid: kid.clone(),
            pool_index: self.next_pool_index,
        });
        self.next_pool_index += 1;
        kid
    }

    /// Step 2: sign with the most recently published key. Its `kid`.
    pub(crate) fn switch_to_newest(&mut self) -> String {
        self.signing = self.published.len().saturating_sub(1);
        self.signing_kid()
    }

    /// Step 3: stop publishing every key but the signing one. The retired `kid`s.
    pub(crate) fn retire_others(&mut self) -> Vec<String> {
        let signing = self.published.get(self.signing).cloned();
        let retired = self
            .published
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.signing)
            .map(|(_, p)| p.kid.clone())
            .collect();
        self.published = signing.into_iter().collect();
        self.signing = 0;
        retired
    }

    /// The three steps at once: the new signing `kid` and the retired ones.
    pub(crate) fn rotate(&mut self) -> (String, Vec<String>) {
        self.publish_next();
        let kid = self.switch_to_newest();
        (kid, self.retire_others())
    }

    /// The JWKS document, as `/v1/keys` serves it.
    pub(crate) fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .published
            .iter()
            .filter_map(|p| Some(jwk(&p.kid, &PublicKey::from(pool_key(p.pool_index)?))))
            .collect();
        json!({ "keys": keys })
    }
}

/// A `kid` shaped like Okta's (43 base64url characters).
fn new_kid() -> String {
    util::random_id(43)
}

/// Okta's JWK for an RS256 signing key.
pub(crate) fn jwk(kid: &str, key: &PublicKey) -> Value {
    json!({
        "kty": "RSA",
        "alg": "RS256",
        "kid": kid,
        "use": "sig",
        "e": URL_SAFE_NO_PAD.encode(unsigned_be(&key.e().to_be_bytes())),
        "n": URL_SAFE_NO_PAD.encode(unsigned_be(&key.n().to_be_bytes())),
    })
}

/// Big-endian bytes without leading zeros (RFC 7518 6.3.1).
fn unsigned_be(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// The public key as SPKI PEM, what an algorithm-confusion attack uses as an HMAC secret.
pub(crate) fn public_key_pem(key: &PrivateKey) -> String {
    PublicKey::from(key)
        .to_public_key_pem(LineEnding::LF)
        .unwrap_or_default()
}

/// How a token is signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Signing {
    /// RS256 with the current signing key, as Okta does. Only these tokens are known to
    /// introspection.
    #[default]
    Genuine,
    /// RS256 with a key the IdP never publishes (a forgery), under the signing key's `kid`
    /// unless the header says otherwise.
    UnpublishedKey,
    /// `alg: HS256`, keyed with the signing key's public key as SPKI PEM (algorithm confusion).
    Hs256WithPublicKey,
    /// `alg: HS256`, keyed with these bytes.
    Hs256(Vec<u8>),
    /// `alg: none` and an empty signature.
    None,
}

impl Signing {
    /// The `alg` this signing puts in the header (unless the spec's header overrides it).
    pub(crate) fn alg(&self) -> &'static str {
        match self {
            Signing::Genuine | Signing::UnpublishedKey => "RS256",
            Signing::Hs256WithPublicKey | Signing::Hs256(_) => "HS256",
            Signing::None => "none",
        }
    }
}

/// A compact JWS of exactly `header` and `claims` (any JSON), signed as `signing` says with
/// `signing_key` standing for the current signing key.
pub(crate) fn sign(
    header: &Value,
    claims: &Value,
    signing: &Signing,
    signing_key: Option<&PrivateKey>,
) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = match signing {
        Signing::Genuine => rs256(signing_key, &input),
        Signing::UnpublishedKey => rs256(unpublished(), &input),
        Signing::Hs256WithPublicKey => {
            let secret = signing_key.map(public_key_pem).unwrap_or_default();
            util::hmac_sha256(secret.as_bytes(), input.as_bytes()).to_vec()
        }
        Signing::Hs256(secret) => util::hmac_sha256(secret, input.as_bytes()).to_vec(),
        Signing::None => Vec::new(),
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn rs256(key: Option<&PrivateKey>, input: &str) -> Vec<u8> {
    let hashed = Sha256::digest(input.as_bytes());
    key.and_then(|k| k.sign(Pkcs1v15Sign::new::<Sha256>(), &hashed).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifies(jwks: &Value, kid: &str, token: &str) -> bool {
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap();
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
        let key = PublicKey::new(
            rsa::BoxedUint::from_be_slice_vartime(&n),
            rsa::BoxedUint::from_be_slice_vartime(&e),
        )
        .unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        key.verify(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(input.as_bytes()),
            &sig,
        )
        .is_ok()
    }

    #[test]
    fn committed_keys_are_2048_bit_and_distinct() {
        let pool = pool().unwrap();
        let unpublished = unpublished().unwrap();
        let mut moduli: Vec<Vec<u8>> = pool.iter().map(|k| k.n().to_be_bytes().to_vec()).collect();
        moduli.push(unpublished.n().to_be_bytes().to_vec());
        for (i, k) in pool.iter().chain([unpublished]).enumerate() {
            assert_eq!(k.n().bit_width(), 2048, "key {i}");
        }
        moduli.sort();
        moduli.dedup();
        assert_eq!(moduli.len(), 5);
    }

    #[test]
    fn rotation_publishes_then_switches_then_retires() {
        let mut ring = KeyRing::new();
        let first = ring.signing_kid();
        assert_eq!(first.len(), 43);
        assert_eq!(ring.published_kids(), vec![first.clone()]);
        let next = ring.publish_next();
        assert_eq!(ring.signing_kid(), first);
        assert_eq!(ring.published_kids(), [first.clone(), next.clone()]);
        assert_eq!(ring.switch_to_newest(), next);
        assert_eq!(ring.retire_others(), vec![first.clone()]);
        assert_eq!(ring.published_kids(), vec![next.clone()]);
        assert!(ring.retire_others().is_empty());
        // Wrapping around the pool still gives fresh kids.
        let mut kids = vec![first, next];
        for _ in 0..5 {
            ring.publish_next();
            kids.push(ring.switch_to_newest());
            ring.retire_others();
        }
        let mut unique = kids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), kids.len());
    }

    #[test]
    fn genuine_tokens_verify_with_the_published_jwk_and_forgeries_do_not() {
        let mut ring = KeyRing::new();
        let (kid, key) = ring.signing_key();
        let header = json!({"kid": kid, "alg": "RS256"});
        let claims = json!({"iss": "x"});
        let genuine = sign(&header, &claims, &Signing::Genuine, key);
        let jwks = ring.jwks();
        assert_eq!(jwks["keys"][0]["alg"], "RS256");
        assert_eq!(jwks["keys"][0]["e"], "AQAB");
        assert!(verifies(&jwks, &kid, &genuine));
        let forged = sign(&header, &claims, &Signing::UnpublishedKey, key);
        assert!(!verifies(&jwks, &kid, &forged));
        // After a rotation, the old kid is gone and the new one verifies.
        ring.publish_next();
        let (new_kid, new_key) = {
            ring.switch_to_newest();
            ring.signing_key()
        };
        ring.retire_others();
        let jwks = ring.jwks();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        let t = sign(
            &json!({"kid": new_kid, "alg": "RS256"}),
            &claims,
            &Signing::Genuine,
            new_key,
        );
        assert!(verifies(&jwks, &new_kid, &t));
    }

    #[test]
    fn hostile_signings() {
        let ring = KeyRing::new();
        let (_, key) = ring.signing_key();
        let none = sign(&json!({"alg": "none"}), &json!({}), &Signing::None, key);
        assert!(none.ends_with('.'));
        let hs = sign(
            &json!({"alg": "HS256"}),
            &json!({}),
            &Signing::Hs256WithPublicKey,
            key,
        );
        let (input, sig) = hs.rsplit_once('.').unwrap();
        let pem = public_key_pem(key.unwrap());
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(
            URL_SAFE_NO_PAD.decode(sig).unwrap(),
            util::hmac_sha256(pem.as_bytes(), input.as_bytes())
        );
    }
}
