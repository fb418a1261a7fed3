//! `form_decode`: `credentials::form_decode`, the RFC 6749 2.3.1 decoding of a Basic id or secret.
//!
//! Input: any bytes. As UTF-8 (when they are), they are the encoded text to decode; read
//! lossily and stripped of control characters, they are the plain text `s` of a round trip.
//!
//! Properties: never panics; a result is non-empty, without control characters, only for a
//! well-formed input (every `%` followed by two hex digits), and equal to what the WHATWG
//! decoder of `form_urlencoded` makes of the same text; for every non-empty `s` without control
//! characters, `form_decode(byte_serialize(s)) == s` (what any RFC 6749 client sends decodes
//! back to the secret it holds).

use okta_dcr_auth_core::credentials::form_decode;

use crate::header_safe;

pub fn check(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        decodes_strictly(text);
    }
    let plain: String = String::from_utf8_lossy(data)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let encoded: String = form_urlencoded::byte_serialize(plain.as_bytes()).collect();
    let expected = (!plain.is_empty()).then_some(plain);
    assert_eq!(form_decode(&encoded), expected, "encoded as {encoded:?}");
}

fn decodes_strictly(text: &str) {
    let Some(decoded) = form_decode(text) else {
        return;
    };
    assert!(!decoded.is_empty());
    assert!(header_safe(&decoded), "control character in {decoded:?}");
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('%') {
        assert!(
            bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit),
            "a stray % accepted in {text:?}"
        );
    }
    // `&` and `=` would split a WHATWG form; they are plain characters in one value.
    let escaped = text.replace('&', "%26").replace('=', "%3D");
    let whatwg = form_urlencoded::parse(format!("v={escaped}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned());
    assert_eq!(whatwg.as_deref(), Some(decoded.as_str()), "input {text:?}");
}
