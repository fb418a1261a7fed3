//! The registrations document fetched from `registrations_uri`, as the gateway shares it: one
//! worker fetches for all (single flight), revalidates every `registrations_refresh_s` with
//! `If-None-Match`, and keeps the last good copy when a fetch fails. No I/O here: the gate reads
//! and writes the records through the slot protocol and sends the calls this allows (the model
//! is `gate::keys::KeysRecord`).
//!
//! Two shared-data values per configuration, because a host copies a whole value on every
//! read:
//! - the [`RegistrationsRecord`], a few dozen bytes, read whenever a worker looks at the state
//!   (tick, a request without a usable copy): timestamps, the lease, the `ETag`, and the
//!   `generation` of the document in use;
//! - the body: [`Registrations::encode`](super::Registrations::encode) of the parsed document
//!   for this product, tagged with its generation, read by a worker only when the record's
//!   generation is newer than its own copy's. A 304 changes only the record (`validated_at_ms`):
//!   no parse, no body copied to any worker. The fetching worker writes the body before the
//!   record, so a worker that sees a generation finds a body at least that new.
//!
//! When a fetch may go out ([`RegistrationsRecord::may_fetch`]):
//! - no document yet: at once, then at most every [`RETRY_WITHOUT_DOCUMENT_MS`] (requests get
//!   503 with `Retry-After` meanwhile: fail closed);
//! - otherwise once the last completed attempt is `registrations_refresh_s` old.
//!
//! An attempt counts when it completes (200, 304, an error status, no answer, a document
//! refused as too large or malformed), stamped with the time it was sent. A fetch that never
//! completed leaves no mark: its lease runs out and another worker tries.
//!
//! **When the source stays down.** The last good document keeps serving for
//! `registrations_max_age_s` (default 24 hours) after it was last validated (a 200 or a 304);
//! past that, [`RegistrationsRecord::serves`] is false and requests get 503 as before the first
//! document. Keeping it forever would let a registration revoked during a long outage of the
//! publisher work indefinitely; failing at the first missed refresh would turn every blip of the
//! publisher into an API outage. A day covers a night's outage; an operator who prefers the
//! other trade-off sets the field (between `registrations_refresh_s` and 30 days).

use super::Registrations;

/// While no document was ever fetched, attempts are this far apart at least (or
/// `registrations_refresh_s`, when shorter).
pub const RETRY_WITHOUT_DOCUMENT_MS: u64 = 2_000;
/// The longest `ETag` kept (longer ones are not sent back: the next fetch is unconditional).
pub const MAX_ETAG_LEN: usize = 256;

/// The shared record (one shared-data key per configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationsRecord {
    /// The document in use: when it was fetched (a 200), strictly increasing; 0: none yet.
    pub generation: u64,
    /// When the document in use was last confirmed (a 200 or a 304).
    pub validated_at_ms: u64,
    /// When the last completed fetch was sent.
    pub last_attempt_ms: u64,
    /// A worker's fetch is out until then.
    pub lease_until_ms: u64,
    /// The document's `ETag` as the source sent it (empty: none), for `If-None-Match`.
    pub etag: String,
}

const HEADER: usize = 4 * 8;

/// Whether an `ETag` value can be kept and sent back as is.
pub fn etag_ok(etag: &str) -> bool {
    !etag.is_empty()
        && etag.len() <= MAX_ETAG_LEN
        && etag.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

impl RegistrationsRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.etag.len());
        for n in [
            self.generation,
            self.validated_at_ms,
            self.last_attempt_ms,
            self.lease_until_ms,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(self.etag.as_bytes());
        out
    }

    /// `None` for anything this did not write (an empty value, a foreign record).
    pub fn decode(bytes: &[u8]) -> Option<RegistrationsRecord> {
        let (header, etag) = bytes.split_at_checked(HEADER)?;
        let etag = std::str::from_utf8(etag).ok()?;
        if !etag.is_empty() && !etag_ok(etag) {
            return None;
        }
        let mut n = header
            .chunks_exact(8)
            .map(|c| <[u8; 8]>::try_from(c).map_or(0, u64::from_le_bytes));
        Some(RegistrationsRecord {
            generation: n.next()?,
            validated_at_ms: n.next()?,
            last_attempt_ms: n.next()?,
            lease_until_ms: n.next()?,
            etag: etag.to_string(),
        })
    }

    /// Whether a fetch may be sent now.
    pub fn may_fetch(&self, now_ms: u64, refresh_ms: u64) -> bool {
        if self.in_flight(now_ms) {
            return false;
        }
        let interval = if self.generation == 0 {
            RETRY_WITHOUT_DOCUMENT_MS.min(refresh_ms)
        } else {
            refresh_ms
        };
        self.last_attempt_ms == 0 || now_ms >= self.last_attempt_ms.saturating_add(interval)
    }

    /// When [`RegistrationsRecord::may_fetch`] will next allow a fetch (ignoring the lease).
    pub fn next_fetch_at(&self, refresh_ms: u64) -> u64 {
        let interval = if self.generation == 0 {
            RETRY_WITHOUT_DOCUMENT_MS.min(refresh_ms)
        } else {
            refresh_ms
        };
        self.last_attempt_ms.saturating_add(interval)
    }

    /// The `If-None-Match` value to send: the `ETag` of the document in use, if any.
    pub fn if_none_match(&self) -> Option<&str> {
        (self.generation != 0 && !self.etag.is_empty()).then_some(self.etag.as_str())
    }

    /// The record with this worker's lease until `until_ms`. Nothing is stamped yet: only a
    /// fetch that completes counts as an attempt.
    pub fn leased(&self, until_ms: u64) -> RegistrationsRecord {
        RegistrationsRecord {
            lease_until_ms: until_ms,
            ..self.clone()
        }
    }

    /// Whether a fetch is out (some worker holds the lease).
    pub fn in_flight(&self, now_ms: u64) -> bool {
        self.lease_until_ms > now_ms
    }

    /// After a 200 with a usable document, for a fetch sent at `sent_ms`, completed at `now_ms`:
    /// a new generation (strictly greater than the last), its `ETag` (one that cannot be sent
    /// back is not kept), the lease released.
    pub fn fetched(&self, etag: Option<&str>, sent_ms: u64, now_ms: u64) -> RegistrationsRecord {
        RegistrationsRecord {
            generation: now_ms.max(self.generation.saturating_add(1)),
            validated_at_ms: now_ms,
            last_attempt_ms: self.last_attempt_ms.max(sent_ms),
            lease_until_ms: 0,
            etag: etag.filter(|e| etag_ok(e)).unwrap_or_default().to_string(),
        }
    }

    /// After a 304: the document in use is confirmed, nothing else changes. A 304 without a
    /// document in use (a confused source) is a failure: see [`RegistrationsRecord::failed`].
    pub fn not_modified(&self, sent_ms: u64, now_ms: u64) -> RegistrationsRecord {
        if self.generation == 0 {
            return self.failed(sent_ms);
        }
        RegistrationsRecord {
            validated_at_ms: now_ms,
            last_attempt_ms: self.last_attempt_ms.max(sent_ms),
            lease_until_ms: 0,
            ..self.clone()
        }
    }

    /// After a fetch that failed (no answer, an error status, a refused document): the last
    /// good document stays, the attempt counts, the lease is released.
    pub fn failed(&self, sent_ms: u64) -> RegistrationsRecord {
        RegistrationsRecord {
            last_attempt_ms: self.last_attempt_ms.max(sent_ms),
            lease_until_ms: 0,
            ..self.clone()
        }
    }

    /// The lease released without an attempt (the call could not be sent at all).
    pub fn released(&self) -> RegistrationsRecord {
        RegistrationsRecord {
            lease_until_ms: 0,
            ..self.clone()
        }
    }

    /// How long ago the document in use was last confirmed; `None` without one.
    pub fn age_ms(&self, now_ms: u64) -> Option<u64> {
        (self.generation != 0).then(|| now_ms.saturating_sub(self.validated_at_ms))
    }

    /// Whether the document in use may answer requests now: there is one, confirmed at most
    /// `max_age_ms` ago.
    pub fn serves(&self, now_ms: u64, max_age_ms: u64) -> bool {
        self.age_ms(now_ms).is_some_and(|age| age <= max_age_ms)
    }
}

/// What [`Held::adopt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// Nothing newer than what this worker holds.
    Unchanged,
    /// The body's generation is in use now.
    New { generation: u64 },
    /// The body is no usable compact form for this product (this worker keeps its own).
    Unusable,
}

/// Why [`Held::lookup`] has no answer: requests get 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// No document was ever fetched (or adopted by this worker).
    NoDocument,
    /// The document in use was last confirmed more than `registrations_max_age_s` ago.
    Expired,
}

/// One worker's copy of the shared document, and what it last saw of the record.
#[derive(Debug, Clone, Default)]
pub struct Held {
    registrations: Option<Registrations>,
    generation: u64,
    validated_at_ms: u64,
}

impl Held {
    /// Whether the record names a newer document than this worker holds: read the body then.
    pub fn wants_body(&self, record: &RegistrationsRecord) -> bool {
        record.generation > self.generation
    }

    /// Takes the record's confirmation time (a 304 seen by another worker): no body needed.
    pub fn saw(&mut self, record: &RegistrationsRecord) {
        if record.generation == self.generation {
            self.validated_at_ms = self.validated_at_ms.max(record.validated_at_ms);
        }
    }

    /// Takes the shared body if it is newer than this worker's copy. `record` is the record
    /// read with it (its confirmation time applies when the generations match).
    pub fn adopt(&mut self, body: &[u8], product: &str, record: &RegistrationsRecord) -> Adopted {
        match Registrations::decode(body, product) {
            Some((generation, _)) if generation <= self.generation => Adopted::Unchanged,
            Some((generation, regs)) => {
                self.registrations = Some(regs);
                self.generation = generation;
                // The body may be newer than the record read before it: then it was fetched
                // (validated) at its generation.
                self.validated_at_ms = if record.generation == generation {
                    record.validated_at_ms
                } else {
                    generation
                };
                Adopted::New { generation }
            }
            None => Adopted::Unusable,
        }
    }

    /// The document this worker just fetched (and shared).
    pub fn install(&mut self, registrations: Registrations, record: &RegistrationsRecord) {
        self.registrations = Some(registrations);
        self.generation = record.generation;
        self.validated_at_ms = record.validated_at_ms;
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn registrations(&self) -> Option<&Registrations> {
        self.registrations.as_ref()
    }

    /// Whether this worker's copy may answer now: there is one, confirmed at most `max_age_ms`
    /// ago (no lookup).
    pub fn serves(&self, now_ms: u64, max_age_ms: u64) -> bool {
        self.registrations.is_some() && now_ms.saturating_sub(self.validated_at_ms) <= max_age_ms
    }

    /// The standing of `client_id`, when this worker's copy may answer (see
    /// [`RegistrationsRecord::serves`]).
    pub fn lookup(
        &self,
        client_id: &str,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Result<super::Standing<'_>, Unavailable> {
        let Some(regs) = &self.registrations else {
            return Err(Unavailable::NoDocument);
        };
        if now_ms.saturating_sub(self.validated_at_ms) > max_age_ms {
            return Err(Unavailable::Expired);
        }
        Ok(regs.lookup(client_id))
    }
}
