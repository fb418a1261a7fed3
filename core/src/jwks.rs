//! The issuer's signing keys: a JWKS document (RFC 7517) read into a [`KeySet`], the JWS
//! algorithms the filter accepts ([`Alg`]), and the signature check of one key. Pure: the glue
//! fetches the document, this module only reads it. Every big-number and signature operation is
//! RustCrypto's `rsa` crate (PKCS#1 v1.5 verification, key checks); nothing of it is written
//! here.
//!
//! A key set is read strictly but forgivingly: the document must be a JSON object with a `keys`
//! array within the limits below, and each key that cannot be used for verifying signatures
//! (another `kty`, `use: enc`, an algorithm we do not do, a modulus outside 2048–4096 bits, no
//! `kid`, a repeated `kid`, bad base64url) is skipped and counted, so the caller can log one
//! warning and go on with the keys it can use.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::BoxedUint;
use rsa::Pkcs1v15Sign;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::verdict::header_safe;

/// Largest key set document read.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Most keys a document may list (Okta publishes two or three).
pub const MAX_KEYS: usize = 32;
/// RSA modulus sizes accepted, in bits.
pub const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;
/// Longest `kid` accepted (Okta's are 43 characters).
pub const MAX_KID_LEN: usize = 256;

/// A JWS algorithm the filter can verify. There is deliberately no `none` and no HMAC variant:
/// a key set holds public keys, and an HMAC "verified" with a public key proves nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
}

impl Alg {
    pub const ALL: [Alg; 3] = [Alg::RS256, Alg::RS384, Alg::RS512];

    /// The JOSE name (`RS256`, ...); `None` for anything else, `none` and `HS256` included.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
        }
    }

    /// The `kty` of the keys this algorithm uses.
    pub fn kty(self) -> &'static str {
        match self {
            Alg::RS256 | Alg::RS384 | Alg::RS512 => "RSA",
        }
    }
}

/// One verification key from the set.
#[derive(Clone)]
pub struct Jwk {
    kid: String,
    /// The key's own `alg`, when it states one: then only that algorithm may use it.
    alg: Option<Alg>,
    key: PublicKey,
}

#[derive(Clone)]
enum PublicKey {
    /// With its Montgomery parameters, computed once when the set is read.
    Rsa(rsa::PublicKey),
}

#[cfg(test)]
thread_local! {
    /// Signature checks made on this thread (tests: which refusals come before any).
    pub(crate) static SIGNATURE_CHECKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Jwk {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Option<Alg> {
        self.alg
    }

    pub fn kty(&self) -> &'static str {
        match self.key {
            PublicKey::Rsa(_) => "RSA",
        }
    }

    /// Whether a token signed with `alg` may be checked with this key: same key type, and the
    /// key's own `alg` if it has one.
    pub fn allows(&self, alg: Alg) -> bool {
        alg.kty() == self.kty() && self.alg.is_none_or(|a| a == alg)
    }

    /// Whether `signature` is `alg`'s signature of `message` under this key. Also false when
    /// the key does not allow `alg`.
    pub fn verifies(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        if !self.allows(alg) {
            return false;
        }
        #[cfg(test)]
        SIGNATURE_CHECKS.with(|c| c.set(c.get() + 1));
        match &self.key {
            PublicKey::Rsa(key) => {
                let (scheme, hashed) = match alg {
                    Alg::RS256 => (
                        Pkcs1v15Sign::new::<Sha256>(),
                        Sha256::digest(message).to_vec(),
                    ),
                    Alg::RS384 => (
                        Pkcs1v15Sign::new::<Sha384>(),
                        Sha384::digest(message).to_vec(),
                    ),
                    Alg::RS512 => (
                        Pkcs1v15Sign::new::<Sha512>(),
                        Sha512::digest(message).to_vec(),
                    ),
                };
                key.verify(scheme, &hashed, signature).is_ok()
            }
        }
    }
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("kty", &self.kty())
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The verification keys of one JWKS document, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

/// Why a whole document was refused (the caller keeps the last good set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksError {
    /// Larger than [`MAX_JWKS_BYTES`].
    TooLarge,
    /// Not a JSON object with a `keys` array.
    Malformed,
    /// More than [`MAX_KEYS`] keys.
    TooManyKeys,
    /// Every key was skipped: a set that can verify nothing is no good set.
    NoUsableKey,
}

impl JwksError {
    pub fn describe(self) -> &'static str {
        match self {
            JwksError::TooLarge => "the key set is larger than 64 KiB",
            JwksError::Malformed => "the key set is not a JSON object with a \"keys\" array",
            JwksError::TooManyKeys => "the key set has more than 32 keys",
            JwksError::NoUsableKey => "the key set has no usable signature key",
        }
    }
}

impl KeySet {
    /// Reads a JWKS document. On success, also how many keys were skipped as unusable.
    pub fn parse(body: &[u8]) -> Result<(KeySet, usize), JwksError> {
        if body.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(body) else {
            return Err(JwksError::Malformed);
        };
        let Some(Value::Array(entries)) = doc.remove("keys") else {
            return Err(JwksError::Malformed);
        };
        if entries.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys);
        }
        let mut keys: Vec<Jwk> = Vec::with_capacity(entries.len());
        let mut skipped = 0;
        for entry in &entries {
            match entry.as_object().and_then(read_key) {
                Some(key) if !keys.iter().any(|k| k.kid == key.kid) => keys.push(key),
                // A repeated `kid` is ambiguous: the first one stays, the others are skipped.
                _ => skipped += 1,
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok((KeySet { keys }, skipped))
    }

    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }
}

/// A `kid` the filter can name in a log line and look up: non-empty, short, no control
/// characters.
pub fn kid_ok(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= MAX_KID_LEN && header_safe(kid)
}

/// One key, or `None` when it cannot verify signatures.
fn read_key(jwk: &Map<String, Value>) -> Option<Jwk> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    let kid = text("kid").filter(|k| kid_ok(k))?;
    if jwk.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
        return None;
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops.as_array()?;
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return None;
        }
    }
    let alg = match jwk.get("alg") {
        None => None,
        Some(a) => Some(Alg::from_name(a.as_str()?)?),
    };
    let key = match text("kty")? {
        "RSA" => PublicKey::Rsa(read_rsa(jwk)?),
        _ => return None,
    };
    let jwk = Jwk {
        kid: kid.to_string(),
        alg,
        key,
    };
    // An `alg` for another key type (`RS256` on an EC key) makes the key unusable.
    if alg.is_some_and(|a| a.kty() != jwk.kty()) {
        return None;
    }
    Some(jwk)
}

/// RFC 7518 6.3.1: `n` and `e`, base64url big-endian unsigned integers.
fn read_rsa(jwk: &Map<String, Value>) -> Option<rsa::PublicKey> {
    let number = |name: &str| -> Option<BoxedUint> {
        let bytes = URL_SAFE_NO_PAD.decode(jwk.get(name)?.as_str()?).ok()?;
        // RFC 7518 says no leading zero octets; some publishers add one anyway.
        let start = bytes.iter().position(|&b| b != 0)?;
        let bytes = &bytes[start..];
        if bytes.len() > RSA_BITS.end() / 8 {
            return None;
        }
        Some(BoxedUint::from_be_slice_vartime(bytes))
    };
    let (n, e) = (number("n")?, number("e")?);
    rsa::PublicKey::new_with_size_limits(n, e, RSA_BITS).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    use rsa::traits::PublicKeyParts as _;
    use rsa::PrivateKey;

    /// A 1024-bit modulus: too weak to be accepted.
    pub(crate) const N_1024: &str = "uvI8rtiD64mVl-aEBwwswUIOVpYNsqMMYFwVejX2iov2QoP510sFvc0-7lbzc0qkvr-yLJ88F2fOR0A2u6b0KpKsk7PRKUcaRtR1R4Q5HNbuDujCd5DRLGSs8wagX2lc50tsX5gcjiWuKTMF3-3rFRXEPsFKnXPElaQhIHoOELU";
    /// A 4160-bit modulus: above the 4096-bit limit.
    pub(crate) const N_4160: &str = "wLbgYaXuylca4_Hgzi__AOkB1toddaSIRM8rhyZTqUT13m5cx3C5DiTzPOGLjXoeW5kkEafCJc9NNvUia65HAAutefZaXyXMp4fznyxVb69bkCg19eGlAXhFx9IX2T5lV53aEBpiuxdXe0j_hym8VYYTXpvXyS2l81JvX4Umb7RylesGX2yon1WcshoKxeuxm1XRrxG7UiB77pw2HbvcVA0cFmcAijp_xG3H3Bckv41CE9jIzn94k8oSha7UBy13oo3W3Jr4JHA_-q0tlv8IHLYAX3ElVRKP5nDuI4TrDjhNeWGQXi5650U66y20FjjoHTsEu-yVNqGSESic4s7vYi52nwNwkBqBpF2iFwWXRuB7uxjxxbTU2_gPZso89OUKUKh-jJqqkaPioOEF_Qx8DeKoPEsXklsh0uXAgkwaViAugTbnFz6dkZXJpRgPFfUnAS4ijbax9vdlvAj38yKnP9fiaHSU7JYqCjMWdWCTu-UJHlmPYx6iUlXpxGqLSIc3GYzwh7g0FVa_5GqqfVoioM0SK_Gz6h682RPfggM3kvXpT1xQh11iKKjItcdsRjjITRqHzXONesyNWb9PNAbkSFaCAJpj0GJqQdEruwUZXgIPRzubrQRYkO7JIrWKFv3wt-o9CsHOWglpHb7ojghmERr1lCvDsxcS0DuOWorLBda3DszUj_oHAQ";

    pub(crate) fn dev_key(name: &str) -> PrivateKey {
        let pem = match name {
            "1" => include_str!("../../devidp/keys/dev-rsa-1.pem"),
            "2" => include_str!("../../devidp/keys/dev-rsa-2.pem"),
            "unpublished" => include_str!("../../devidp/keys/dev-rsa-unpublished.pem"),
            "4096" => include_str!("../../devidp/keys/test-rsa-4096.pem"),
            "e3" => include_str!("../../devidp/keys/test-rsa-e3.pem"),
            other => panic!("no dev key {other}"),
        };
        PrivateKey::from_pkcs1_pem(pem).unwrap()
    }

    /// The key's modulus as a JWK `n`.
    pub(crate) fn n_of(key: &PrivateKey) -> String {
        let bytes = key.n().to_be_bytes();
        let start = bytes.iter().position(|&b| b != 0).unwrap();
        URL_SAFE_NO_PAD.encode(&bytes[start..])
    }

    /// An RSA signature JWK with modulus `n` (base64url) and `e` = 65537.
    pub(crate) fn jwk_json(kid: &str, n: &str, extra: &str) -> String {
        format!(r#"{{"kty":"RSA","kid":"{kid}","use":"sig","e":"AQAB","n":"{n}"{extra}}}"#)
    }

    pub(crate) fn doc(keys: &[String]) -> Vec<u8> {
        format!(r#"{{"keys":[{}]}}"#, keys.join(",")).into_bytes()
    }

    #[test]
    fn reads_rsa_keys_and_skips_what_cannot_verify() {
        let n_2048 = n_of(&dev_key("1"));
        let body = doc(&[
            jwk_json("k1", &n_2048, r#","alg":"RS256""#),
            jwk_json("k2", &n_2048, ""),
            // skipped: encryption key, weak modulus, too large, no kid, unsupported alg,
            // HMAC key, EC key, repeated kid, bad base64url, key_ops without verify
            jwk_json("enc", &n_2048, "").replace(r#""use":"sig""#, r#""use":"enc""#),
            jwk_json("weak", N_1024, ""),
            jwk_json("huge", N_4160, ""),
            jwk_json("", &n_2048, ""),
            jwk_json("rsa-oaep", &n_2048, r#","alg":"RSA-OAEP""#),
            r#"{"kty":"oct","kid":"h","k":"c2VjcmV0"}"#.to_string(),
            r#"{"kty":"EC","kid":"ec","crv":"P-256","x":"AA","y":"AA"}"#.to_string(),
            jwk_json("k1", &n_2048, ""),
            jwk_json("pad", &format!("{n_2048}=="), ""),
            jwk_json("ops", &n_2048, r#","key_ops":["encrypt"]"#),
            "17".to_string(),
        ]);
        let (set, skipped) = KeySet::parse(&body).unwrap();
        assert_eq!(set.kids().collect::<Vec<_>>(), ["k1", "k2"]);
        assert_eq!(skipped, 11);
        assert_eq!(set.get("k1").unwrap().alg(), Some(Alg::RS256));
        assert!(set.get("k1").unwrap().allows(Alg::RS256));
        assert!(!set.get("k1").unwrap().allows(Alg::RS512));
        assert!(set.get("k2").unwrap().allows(Alg::RS512));
        assert!(set.get("enc").is_none());
        assert!(!format!("{:?}", set).contains(&n_2048));
    }

    /// Keys at the bounds of what is read (sizes, parity, exponents): `rsa` refuses the others
    /// when the set is read, and they are skipped.
    #[test]
    fn rsa_components_at_the_bounds() {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let odd = |mut n: Vec<u8>| {
            *n.last_mut().unwrap() |= 1;
            n
        };
        let n_2048 = n_of(&dev_key("1"));
        let mut even = URL_SAFE_NO_PAD.decode(&n_2048).unwrap();
        *even.last_mut().unwrap() &= 0xfe;
        let with_e = |kid: &str, n: &str, e: &str| jwk_json(kid, n, "").replace("AQAB", e);
        let cases = [
            // (kid, n, e, accepted)
            ("dev", n_2048.clone(), "AQAB", true),
            (
                "leading-zero",
                b64(&[&[0u8][..], &URL_SAFE_NO_PAD.decode(&n_2048).unwrap()].concat()),
                "AQAB",
                true,
            ),
            (
                "2048-min",
                b64(&odd([&[0x80u8][..], &[0u8; 255]].concat())),
                "AQAB",
                true,
            ),
            (
                "2047",
                b64(&[&[0x7fu8][..], &[0xffu8; 255]].concat()),
                "AQAB",
                false,
            ),
            ("4096-max", b64(&[0xffu8; 512]), "AQAB", true),
            (
                "4097",
                b64(&[&[1u8][..], &[0xffu8; 512]].concat()),
                "AQAB",
                false,
            ),
            ("even", b64(&even), "AQAB", false),
            ("zero", b64(&[0u8; 256]), "AQAB", false),
            ("empty-n", String::new(), "AQAB", false),
            ("e3", n_2048.clone(), "Aw", true),
            ("e5", n_2048.clone(), "BQ", true),
            (
                "e2^33-1",
                n_2048.clone(),
                &b64(&[1, 0xff, 0xff, 0xff, 0xff]),
                true,
            ),
            ("e-leading-zero", n_2048.clone(), "AAEAAQ", true),
            ("e0", n_2048.clone(), "AA", false),
            ("e1", n_2048.clone(), "AQ", false),
            ("e2", n_2048.clone(), "Ag", false),
            ("e4", n_2048.clone(), "BA", false),
            ("e2^33+1", n_2048.clone(), &b64(&[2, 0, 0, 0, 1]), false),
            ("e-huge", n_2048.clone(), &n_2048, false),
            ("e-empty", n_2048.clone(), "", false),
        ];
        for (kid, n, e, accepted) in cases {
            let body = doc(&[with_e(kid, &n, e)]);
            assert_eq!(KeySet::parse(&body).is_ok(), accepted, "{kid}");
        }
    }

    #[test]
    fn whole_documents_refused() {
        assert_eq!(
            KeySet::parse(&vec![b' '; MAX_JWKS_BYTES + 1]).unwrap_err(),
            JwksError::TooLarge
        );
        for bad in [
            &b""[..],
            b"[]",
            b"{}",
            b"{\"keys\":{}}",
            b"<html>",
            b"{\"keys\":[]",
        ] {
            assert_eq!(KeySet::parse(bad).unwrap_err(), JwksError::Malformed);
        }
        assert_eq!(
            KeySet::parse(b"{\"keys\":[]}").unwrap_err(),
            JwksError::NoUsableKey
        );
        let n_2048 = n_of(&dev_key("1"));
        let many: Vec<String> = (0..=MAX_KEYS)
            .map(|i| jwk_json(&format!("k{i}"), &n_2048, ""))
            .collect();
        assert_eq!(
            KeySet::parse(&doc(&many)).unwrap_err(),
            JwksError::TooManyKeys
        );
        let (set, skipped) = KeySet::parse(&doc(&many[..MAX_KEYS])).unwrap();
        assert_eq!((set.len(), skipped), (MAX_KEYS, 0));
    }

    #[test]
    fn algorithm_names() {
        for a in Alg::ALL {
            assert_eq!(Alg::from_name(a.name()), Some(a));
        }
        for never in [
            "none", "None", "HS256", "HS384", "HS512", "rs256", "", "PS256",
        ] {
            assert_eq!(Alg::from_name(never), None, "{never}");
        }
    }
}
