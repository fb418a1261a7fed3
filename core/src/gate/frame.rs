//! How a value sits in the host's shared data: as a frame that tells a torn copy from a whole
//! one, and whose length never shrinks, because of how ngx_wasm_module copies a value out.
//!
//! ngx_wasm_module (9136e463, `ngx_proxy_wasm_hfuncs_get_shared_data`) looks a key up under the
//! zone's lock and keeps a pointer to the node's value, unlocks, then asks the module's
//! allocator for `value->len` bytes and copies `value->len` bytes: it reads the length again
//! after the lock is gone. Meanwhile another nginx worker may write the key. A write that fits
//! the node overwrites it in place (the copy may be torn: part old, part new); a longer one
//! allocates a new node and frees the old one, whose memory the next write of any key may take
//! over with a larger length. The copy then runs past the buffer the module allocated and
//! corrupts its heap (seen under an anonymous flood: "memory fault" in `dlfree`, a 500, the
//! wasm instance replaced). So here:
//!
//! - **A frame never shrinks.** [`seal`] pads the payload to at least the length of the frame
//!   it replaces (and to a multiple of [`GRAIN`]), so a key's node is only ever replaced while
//!   the key grows, never while its value changes size back and forth: the call-deadline
//!   record, whose length moves with every call, stops reallocating once it has held its
//!   largest list. (A key still grows up to its largest value: that window is left, and
//!   reported upstream in kong/README.md.)
//! - **A frame carries its payload's length and a checksum** ([`open`]): a torn copy fails the
//!   check and is read again; a value that never checks (written by another build, or not a
//!   frame at all) reads as empty, so the next write replaces it.
//!
//! Envoy copies a value under its lock, so there a frame always checks; the format is the same
//! on both hosts.

use std::hash::BuildHasher;

use foldhash::fast::FixedState;

/// Frames are padded to a multiple of this many bytes.
pub const GRAIN: usize = 64;
/// The payload's length and checksum after it (and its padding).
const TRAILER: usize = 8;
/// Reads of one value whose copy was torn before it counts as unreadable.
const READS: usize = 4;
const SEED: u64 = 0x6672_616d_652d_7631;

/// A frame for `payload` at least `at_least` bytes long (the length of the frame it replaces).
pub fn seal(payload: &[u8], at_least: usize) -> Vec<u8> {
    let len = (payload.len() + TRAILER).div_ceil(GRAIN) * GRAIN;
    let len = len.max(at_least);
    let mut frame = Vec::with_capacity(len);
    frame.extend_from_slice(payload);
    frame.resize(len - TRAILER, 0);
    // A payload is at most a shared-data value, far below 4 GiB on a 32-bit module.
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&check(payload).to_le_bytes());
    frame
}

/// The payload of a whole frame; `None` for a torn copy or bytes that are no frame.
pub fn open(mut frame: Vec<u8>) -> Option<Vec<u8>> {
    let body = frame.len().checked_sub(TRAILER)?;
    let trailer = frame.get(body..)?;
    let len = u32::from_le_bytes(trailer.get(..4)?.try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(trailer.get(4..)?.try_into().ok()?);
    if len > body {
        return None;
    }
    frame.truncate(len);
    (check(&frame) == sum).then_some(frame)
}

/// A value read through [`read`].
pub struct Read {
    pub payload: Vec<u8>,
    pub cas: u32,
    /// The length of the frame read: the next frame for the key is at least this long.
    pub frame_len: usize,
}

/// Reads `key` through `get` (the host's bytes and CAS), again when the copy was torn. `None`
/// when the key does not exist; an unreadable value reads as empty with its CAS.
pub fn read(get: impl Fn() -> Option<(Vec<u8>, u32)>) -> Option<Read> {
    let mut last = None;
    for _ in 0..READS {
        let (bytes, cas) = get()?;
        let frame_len = bytes.len();
        if let Some(payload) = open(bytes) {
            return Some(Read {
                payload,
                cas,
                frame_len,
            });
        }
        last = Some((cas, frame_len));
    }
    last.map(|(cas, frame_len)| Read {
        payload: Vec::new(),
        cas,
        frame_len,
    })
}

fn check(payload: &[u8]) -> u32 {
    FixedState::with_seed(SEED).hash_one(payload) as u32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_frame_gives_back_its_payload_whatever_its_padding() {
        for payload in [
            &b""[..],
            b"\0",
            b"abc",
            &[7u8; 56],
            &[9u8; 57],
            &[1u8; 5000],
        ] {
            let frame = seal(payload, 0);
            assert_eq!(frame.len() % GRAIN, 0);
            assert!(frame.len() >= payload.len() + TRAILER);
            assert_eq!(open(frame).unwrap(), payload);
            let padded = seal(payload, 8192);
            assert_eq!(padded.len(), 8192);
            assert_eq!(open(padded).unwrap(), payload);
        }
    }

    #[test]
    fn a_frame_is_never_shorter_than_the_one_it_replaces() {
        let long = seal(&[1u8; 500], 0);
        let short = seal(b"x", long.len());
        assert_eq!(short.len(), long.len());
        // And a longer payload grows it.
        assert!(seal(&[1u8; 600], long.len()).len() > long.len());
    }

    #[test]
    fn a_torn_copy_or_foreign_bytes_do_not_open() {
        let old = seal(&[1u8; 100], 0);
        let new = seal(&[2u8; 100], 0);
        // The first half of the new value over the old one: what a copy taken while another
        // worker writes in place can hold.
        let mut torn = old.clone();
        torn[..60].copy_from_slice(&new[..60]);
        assert_eq!(open(torn), None);
        // Lengths that point past the frame, short and empty values, values of an older format.
        let mut lying = seal(b"abc", 0);
        let at = lying.len() - TRAILER;
        lying[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(open(lying), None);
        for foreign in [&b""[..], b"\0", b"1234567", &[0u8; 64], &[0xffu8; 64]] {
            assert_eq!(open(foreign.to_vec()), None, "{foreign:?}");
        }
    }

    #[test]
    fn a_torn_copy_is_read_again_and_a_value_that_never_checks_reads_as_empty() {
        let whole = seal(b"verdict", 0);
        let mut torn = whole.clone();
        torn[0] ^= 1;
        let reads = Cell::new(0);
        let got = read(|| {
            reads.set(reads.get() + 1);
            Some((
                if reads.get() < 3 {
                    torn.clone()
                } else {
                    whole.clone()
                },
                9,
            ))
        })
        .unwrap();
        assert_eq!(
            (got.payload.as_slice(), got.cas, reads.get()),
            (&b"verdict"[..], 9, 3)
        );

        reads.set(0);
        let got = read(|| {
            reads.set(reads.get() + 1);
            Some((torn.clone(), 9))
        })
        .unwrap();
        assert_eq!(
            (got.payload.len(), got.cas, got.frame_len),
            (0, 9, torn.len())
        );
        assert_eq!(reads.get(), READS);

        assert!(read(|| None).is_none());
    }
}
