//! The proxy-wasm ABI's header map encoding, both ways: a count, each pair's sizes, then each
//! name and value with a NUL after it. Names and values are bytes, not necessarily UTF-8: a
//! client can send any byte an HTTP parser lets through, and ngx_wasm_module with
//! `ignore_invalid_headers off` lets through nearly all. (The proxy-wasm SDK's own reader
//! unwraps a UTF-8 conversion of every name, and so panics on the first that is not.)

/// A header as the host hands it over.
pub type HeaderPair = (Vec<u8>, Vec<u8>);

/// The ABI's header map encoding: a count, each pair's sizes, then each name and value with a
/// NUL after it.
pub fn encode(map: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + map
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (name, value) in map {
        bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in map {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    bytes
}

/// The ABI's header map encoding (see [`encode`]) read back; `None` when the bytes do
/// not hold what their counts say.
pub fn decode(bytes: &[u8]) -> Option<Vec<HeaderPair>> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        usize::try_from(n).ok()
    };
    let count = word(0)?;
    // Each pair takes at least 10 bytes (two sizes, two NULs): a count larger than that allows
    // is a lie, and must not size an allocation.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    let mut at = 4usize.checked_add(count.checked_mul(8)?)?;
    for i in 0..count {
        let name_len = word(4 + i * 8)?;
        let value_len = word(8 + i * 8)?;
        let name = bytes.get(at..at.checked_add(name_len)?)?.to_vec();
        at = at.checked_add(name_len)?.checked_add(1)?;
        let value = bytes.get(at..at.checked_add(value_len)?)?.to_vec();
        at = at.checked_add(value_len)?.checked_add(1)?;
        pairs.push((name, value));
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip_with_bytes_that_are_not_utf8() {
        let bytes = encode(&[("a", "1"), ("", ""), ("x-y", "v w")]);
        let pairs = decode(&bytes).unwrap_or_default();
        assert_eq!(
            pairs,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (Vec::new(), Vec::new()),
                (b"x-y".to_vec(), b"v w".to_vec())
            ]
        );
        // Names and values that are not UTF-8 come through as they are.
        let mut raw = Vec::new();
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&4u32.to_le_bytes());
        raw.extend_from_slice(&2u32.to_le_bytes());
        raw.extend_from_slice(b"X-\xff\xfe\0\x80\xc3\0");
        assert_eq!(
            decode(&raw),
            Some(vec![(b"X-\xff\xfe".to_vec(), b"\x80\xc3".to_vec())])
        );
    }

    #[test]
    fn a_header_map_that_lies_about_its_sizes_is_refused_not_read_past() {
        let good = encode(&[("name", "value")]);
        for cut in 0..good.len() - 1 {
            assert_eq!(decode(&good[..cut]), None, "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge), None);
        let mut long_name = good;
        long_name[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&long_name), None);
        assert_eq!(decode(&[]), None);
    }
}
