//! Registrations: which Dev Portal applications hold an approved registration for the API
//! product this filter guards. The registrations document (inline in the configuration, or
//! published at `registrations_uri`) lists every application by its DCR client id with its
//! registrations; [`Registrations::parse`] reads it for ONE product into a compact index, and
//! [`Registrations::lookup`] answers a request with one hash lookup.
//!
//! The document (JSON, unknown fields ignored everywhere):
//!
//! ```json
//! {"applications": [
//!   {"client_id": "0oa1b2c3d4EXAMPLE", "application_id": "app-123", "developer_id": "dev-9",
//!    "name": "Payments dashboard",
//!    "registrations": [{"product": "payments-v1", "status": "approved"},
//!                      {"product": "orders-v2", "status": "pending"}]}
//! ]}
//! ```
//!
//! Decisions:
//! - **Structure is strict, values are lenient.** A document that is not JSON, is larger than
//!   [`MAX_DOCUMENT_BYTES`], has no `applications` array (or two), or a field of the wrong type
//!   (`client_id: 5`, `registrations: {}`) is refused whole: a producer that writes the wrong
//!   shape is broken, and the last good copy keeps serving. Odd *values* only affect their own
//!   application, because refusing a whole document for one entry would freeze every other
//!   app's revocations until the producer is fixed:
//!   - a missing, empty, over-long (> [`MAX_ID_LEN`] bytes) or control-character `client_id`:
//!     the entry is skipped (that client is unknown: 401), counted in [`Summary::skipped`];
//!   - a `status` other than the four known ones (exact, lowercase): not approved
//!     ([`NotApproved::UnknownStatus`]); only the exact string `approved` grants;
//!   - a client id listed twice: that id is not approved ([`NotApproved::Ambiguous`]), counted
//!     in [`Summary::duplicates`]: there is no telling which entry the portal meant, and
//!     forwarding the wrong `application_id` upstream would be worse than a 403;
//!   - several registrations of one app for this product: approved only when every one says
//!     `approved` (the least permissive wins);
//!   - `application_id`, `developer_id` that are not 1..=[`MAX_ID_LEN`] bytes of visible ASCII
//!     (what a header value can carry unchanged): left out of the context (counted in
//!     [`Summary::dropped_context`]), the app is still approved. `name` is not kept (free text,
//!     not header-safe, not needed per request).
//! - **Matching is exact and case-sensitive** (Okta client ids are case-sensitive), byte for
//!   byte on the UTF-8 string: no trimming, no case folding, no `%`-decoding here. The Basic
//!   path compares the id *after* its single RFC 6749 2.3.1 form-decoding (what Okta itself
//!   compares: `credentials::form_decode`), so `0oa%41` in a Basic credential is looked up as
//!   `0oaA`; the document's ids are taken literally (a `%` in the document is a `%`). A Bearer
//!   token's app is the claim's string value as is.
//! - **Memory**: one string arena for every kept id and context value, a 25-byte entry per
//!   application and a `u32` hash slot per half-filled table slot (no allocation per app);
//!   not-approved applications keep only their id and status. [`Registrations::memory_bytes`]
//!   reports it; `core/benches/registrations.rs` and a unit test measure 100,000 apps.
//! - **Shared form**: [`Registrations::encode`] / [`Registrations::decode`] are a compact binary
//!   form for shared data (this product only, no JSON to parse again): the worker that fetched
//!   the document parses it once, the others decode this. Decoding checks everything and never
//!   panics on foreign bytes. The revalidation rules (single flight, `ETag`, maximum age) are in
//!   [`record`].

use std::borrow::Cow;
use std::fmt;
use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

pub mod record;

/// The largest registrations document read (inline or fetched). A realistic Konnect entry (a
/// 20-character Okta client id, UUID application and developer ids, a name, one or two
/// registrations with UUID product version ids) takes 250 to 350 bytes of JSON, so 100,000
/// applications take 25 to 35 MB: 64 MiB leaves room for 180,000 such apps or long names,
/// while bounding what one worker buffers and parses (the compact form kept afterwards is about
/// a third of that, see [`Registrations::memory_bytes`]).
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;
/// The longest client id, application id, developer id or product kept (Okta client ids are 20
/// characters, Konnect ids 36).
pub const MAX_ID_LEN: usize = 256;

const HASH_SEED: u64 = 0x6f6b_7461_2d72_6567;

/// A registration's status in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Approved,
    Pending,
    Revoked,
    Rejected,
    /// Any other value (statuses are exact and lowercase): never grants.
    Unknown,
}

impl Status {
    pub fn parse(text: &str) -> Status {
        match text {
            "approved" => Status::Approved,
            "pending" => Status::Pending,
            "revoked" => Status::Revoked,
            "rejected" => Status::Rejected,
            _ => Status::Unknown,
        }
    }
}

/// Why a known application may not use this product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotApproved {
    /// The application has no registration for this product.
    Unregistered,
    Pending,
    Revoked,
    Rejected,
    /// A status the filter does not know.
    UnknownStatus,
    /// The client id is listed more than once.
    Ambiguous,
}

impl NotApproved {
    /// For log lines and metrics labels.
    pub fn reason(self) -> &'static str {
        match self {
            NotApproved::Unregistered => "unregistered",
            NotApproved::Pending => "pending",
            NotApproved::Revoked => "revoked",
            NotApproved::Rejected => "rejected",
            NotApproved::UnknownStatus => "unknown_status",
            NotApproved::Ambiguous => "ambiguous",
        }
    }
}

/// What an approved application carries upstream (only values that are header-safe: visible
/// ASCII, 1..=[`MAX_ID_LEN`] bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppContext<'a> {
    /// `x-application-id`.
    pub application_id: Option<&'a str>,
    pub developer_id: Option<&'a str>,
}

/// A client id's standing for the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing<'a> {
    /// Not in the document: Basic gets 401 without an IdP call.
    Unknown,
    /// In the document, not approved for this product: 403.
    NotApproved(NotApproved),
    Approved(AppContext<'a>),
}

/// What a parse kept and left out, for a log line and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Distinct client ids indexed.
    pub applications: u32,
    /// Of which approved for the product.
    pub approved: u32,
    /// Entries left out for their client id (missing, empty, too long, control characters).
    pub skipped: u32,
    /// Client ids listed more than once (each now not approved).
    pub duplicates: u32,
    /// Context values left out (not header-safe or too long).
    pub dropped_context: u32,
}

/// Why a document was refused. The description never contains a value from the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentError {
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    TooLarge { bytes: usize },
    /// Not the document's shape: where, and what kind of problem (serde's wording, without the
    /// values it would quote).
    Malformed {
        line: usize,
        column: usize,
        what: &'static str,
    },
}

impl DocumentError {
    pub fn describe(&self) -> String {
        match self {
            DocumentError::TooLarge { bytes } => {
                format!("is too large ({bytes} bytes; at most {MAX_DOCUMENT_BYTES})")
            }
            DocumentError::Malformed { line, column, what } => {
                format!("is not a registrations document: {what} (line {line}, column {column})")
            }
        }
    }
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

fn malformed(e: &serde_json::Error) -> DocumentError {
    let what = match e.classify() {
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Eof => "truncated JSON",
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Data => {
            let msg = e.to_string();
            if msg.starts_with("missing field") {
                "the `applications` array is missing"
            } else if msg.starts_with("duplicate field") {
                "`applications` is given twice"
            } else {
                "a field has the wrong type (`applications` must be an array of objects; ids, names, products and statuses strings; `registrations` an array of objects)"
            }
        }
    };
    DocumentError::Malformed {
        line: e.line(),
        column: e.column(),
        what,
    }
}

/// A string of the arena: `len` 0 is "none" (ids are never empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    start: u32,
    len: u32,
}

/// Standing codes in [`Entry::standing`] and the compact form.
const APPROVED: u8 = 0;
const DEAD: u8 = 0xff;

fn standing_code(n: Option<NotApproved>) -> u8 {
    match n {
        None => APPROVED,
        Some(NotApproved::Unregistered) => 1,
        Some(NotApproved::Pending) => 2,
        Some(NotApproved::Revoked) => 3,
        Some(NotApproved::Rejected) => 4,
        Some(NotApproved::UnknownStatus) => 5,
        Some(NotApproved::Ambiguous) => 6,
    }
}

fn not_approved_of(code: u8) -> Option<NotApproved> {
    Some(match code {
        1 => NotApproved::Unregistered,
        2 => NotApproved::Pending,
        3 => NotApproved::Revoked,
        4 => NotApproved::Rejected,
        5 => NotApproved::UnknownStatus,
        6 => NotApproved::Ambiguous,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: Span,
    application_id: Span,
    developer_id: Span,
    standing: u8,
}

/// The registrations of one product, indexed by client id.
#[derive(Clone, PartialEq, Eq)]
pub struct Registrations {
    product: String,
    /// Every kept string, back to back.
    arena: String,
    entries: Vec<Entry>,
    /// Open addressing, linear probing: `entry index + 1`, 0 for an empty slot. Its length is
    /// a power of two at least twice the entries (or 0 for none), so a probe always ends.
    table: Vec<u32>,
    summary: Summary,
}

impl fmt::Debug for Registrations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registrations")
            .field("product", &self.product)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// Whether `s` can be a client id: 1..=[`MAX_ID_LEN`] bytes without control characters (what
/// the Basic path's form decoding can produce).
pub fn valid_client_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && !s.chars().any(char::is_control)
}

/// Whether `s` may go upstream as a context header value as is.
fn header_value_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

impl Registrations {
    /// Reads a registrations document for `product`.
    pub fn parse(body: &[u8], product: &str) -> Result<Registrations, DocumentError> {
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(DocumentError::TooLarge { bytes: body.len() });
        }
        // JSON is UTF-8 (RFC 8259); serde_json does not check the strings it skips.
        if let Err(e) = std::str::from_utf8(body) {
            let before = body.get(..e.valid_up_to()).unwrap_or_default();
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            return Err(DocumentError::Malformed {
                line,
                column,
                what: "not UTF-8",
            });
        }
        let mut builder = Builder::new(product, body.len());
        let mut de = serde_json::Deserializer::from_slice(body);
        DocumentSeed(&mut builder)
            .deserialize(&mut de)
            .map_err(|e| malformed(&e))?;
        de.end().map_err(|e| malformed(&e))?;
        Ok(builder.finish())
    }

    /// An empty index (no application is known).
    pub fn empty(product: &str) -> Registrations {
        Builder::new(product, 0).finish()
    }

    pub fn product(&self) -> &str {
        &self.product
    }

    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// Distinct client ids known.
    pub fn len(&self) -> usize {
        self.summary.applications as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes this index holds (capacities, not lengths).
    pub fn memory_bytes(&self) -> usize {
        self.product.capacity()
            + self.arena.capacity()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.table.capacity() * std::mem::size_of::<u32>()
    }

    fn text(&self, span: Span) -> Option<&str> {
        if span.len == 0 {
            return None;
        }
        let start = span.start as usize;
        self.arena.get(start..start.checked_add(span.len as usize)?)
    }

    fn slot_of(&self, client_id: &str) -> usize {
        // The table's length is a power of two.
        (FixedState::with_seed(HASH_SEED).hash_one(client_id) as usize) & (self.table.len() - 1)
    }

    /// The index of the live entry for `client_id`.
    fn find(&self, client_id: &str) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let mask = self.table.len() - 1;
        let mut slot = self.slot_of(client_id);
        for _ in 0..self.table.len() {
            let i = (*self.table.get(slot)? as usize).checked_sub(1)?;
            let entry = self.entries.get(i)?;
            if self.text(entry.id) == Some(client_id) {
                return Some(i);
            }
            slot = (slot + 1) & mask;
        }
        None
    }

    /// `client_id`'s standing for the product: exact, case-sensitive comparison.
    pub fn lookup(&self, client_id: &str) -> Standing<'_> {
        let Some(entry) = self.find(client_id).and_then(|i| self.entries.get(i)) else {
            return Standing::Unknown;
        };
        match not_approved_of(entry.standing) {
            Some(why) => Standing::NotApproved(why),
            None if entry.standing == APPROVED => Standing::Approved(AppContext {
                application_id: self.text(entry.application_id),
                developer_id: self.text(entry.developer_id),
            }),
            None => Standing::Unknown,
        }
    }

    /// Builds the hash table over `entries`; a second entry with an id already in it makes the
    /// first one [`NotApproved::Ambiguous`] and is dropped.
    /// The number of entries dropped.
    fn index(&mut self) -> usize {
        let live = self.entries.len();
        let mut dropped = 0;
        let size = (live.max(4) * 2).next_power_of_two();
        self.table = vec![0; if live == 0 { 0 } else { size }];
        let mut duplicates = 0u32;
        for i in 0..live {
            let Some(id) = self.entries.get(i).and_then(|e| self.text(e.id)) else {
                continue;
            };
            let mask = self.table.len() - 1;
            let mut slot = self.slot_of(id);
            while let Some(&held) = self.table.get(slot) {
                if held == 0 {
                    if let Some(s) = self.table.get_mut(slot) {
                        *s = u32::try_from(i + 1).unwrap_or(0);
                    }
                    break;
                }
                let j = held as usize - 1;
                let same = self.entries.get(j).and_then(|e| self.text(e.id)) == Some(id);
                if same {
                    if let Some(first) = self.entries.get_mut(j) {
                        if first.standing != standing_code(Some(NotApproved::Ambiguous)) {
                            duplicates += 1;
                        }
                        first.standing = standing_code(Some(NotApproved::Ambiguous));
                        first.application_id = Span::default();
                        first.developer_id = Span::default();
                    }
                    if let Some(dup) = self.entries.get_mut(i) {
                        dup.standing = DEAD;
                        dropped += 1;
                    }
                    break;
                }
                slot = (slot + 1) & mask;
            }
        }
        let kept = self.entries.iter().filter(|e| e.standing != DEAD);
        self.summary.applications = u32::try_from(kept.clone().count()).unwrap_or(u32::MAX);
        self.summary.approved =
            u32::try_from(kept.filter(|e| e.standing == APPROVED).count()).unwrap_or(u32::MAX);
        self.summary.duplicates = duplicates;
        dropped
    }
}

// ---- the compact form for shared data ----

const MAGIC: &[u8; 4] = b"ODR1";
const ENTRY_BYTES: usize = 6 * 4 + 1;

impl Registrations {
    /// The compact form, tagged with `generation` (the shared record's, so a worker can tell
    /// which fetch it holds). Only live entries go in.
    pub fn encode(&self, generation: u64) -> Vec<u8> {
        let live: Vec<&Entry> = self.entries.iter().filter(|e| e.standing != DEAD).collect();
        let mut out = Vec::with_capacity(
            64 + self.product.len() + live.len() * ENTRY_BYTES + self.arena.len(),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&generation.to_le_bytes());
        let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
        out.extend_from_slice(&u32_of(self.product.len()));
        out.extend_from_slice(self.product.as_bytes());
        for n in [
            self.summary.skipped,
            self.summary.duplicates,
            self.summary.dropped_context,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&u32_of(live.len()));
        for e in live {
            for span in [e.id, e.application_id, e.developer_id] {
                out.extend_from_slice(&span.start.to_le_bytes());
                out.extend_from_slice(&span.len.to_le_bytes());
            }
            out.push(e.standing);
        }
        out.extend_from_slice(&u32_of(self.arena.len()));
        out.extend_from_slice(self.arena.as_bytes());
        out
    }

    /// Reads what [`Registrations::encode`] wrote for `product`: its generation and the index.
    /// `None` for anything else (another product, a truncated or foreign value).
    pub fn decode(bytes: &[u8], product: &str) -> Option<(u64, Registrations)> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return None;
        }
        let generation = r.u64()?;
        let product_len = r.u32()? as usize;
        if r.take(product_len)? != product.as_bytes() {
            return None;
        }
        let skipped = r.u32()?;
        let duplicates = r.u32()?;
        let dropped_context = r.u32()?;
        let n = r.u32()? as usize;
        let entries = read_entries(&mut r, n)?;
        let arena_len = r.u32()? as usize;
        let arena = String::from_utf8(r.take(arena_len)?.to_vec()).ok()?;
        if !r.0.is_empty() {
            return None;
        }
        let mut regs = Registrations {
            product: product.to_string(),
            arena,
            entries,
            table: Vec::new(),
            summary: Summary {
                skipped,
                duplicates: 0,
                dropped_context,
                ..Summary::default()
            },
        };
        if !regs.entries.iter().all(|e| regs.entry_is_canonical(e)) {
            return None;
        }
        // A canonical value has no duplicate ids (encode keeps one entry per id).
        if regs.index() != 0 {
            return None;
        }
        regs.summary.duplicates = duplicates;
        Some((generation, regs))
    }
}

impl Registrations {
    /// Whether an entry read back from the compact form holds what `encode` writes: a valid
    /// client id and header-safe context.
    fn entry_is_canonical(&self, e: &Entry) -> bool {
        let id_ok = self.text(e.id).is_some_and(valid_client_id);
        id_ok
            && [e.application_id, e.developer_id]
                .into_iter()
                .all(|span| span.len == 0 || self.text(span).is_some_and(header_value_ok))
    }
}

/// The compact form's `n` entries.
fn read_entries(r: &mut Reader<'_>, n: usize) -> Option<Vec<Entry>> {
    let mut entries = Vec::with_capacity(n.min(r.0.len() / ENTRY_BYTES));
    for _ in 0..n {
        let mut span = || -> Option<Span> {
            Some(Span {
                start: r.u32()?,
                len: r.u32()?,
            })
        };
        let (id, application_id, developer_id) = (span()?, span()?, span()?);
        let standing = *r.take(1)?.first()?;
        if standing != APPROVED && not_approved_of(standing).is_none() {
            return None;
        }
        entries.push(Entry {
            id,
            application_id,
            developer_id,
            standing,
        });
    }
    Some(entries)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    }
}

// ---- parsing: streamed into the builder, one application at a time ----

struct Builder<'p> {
    product: &'p str,
    arena: String,
    entries: Vec<Entry>,
    summary: Summary,
    /// The arena outgrew `u32` offsets (cannot happen under [`MAX_DOCUMENT_BYTES`]).
    overflow: bool,
}

impl<'p> Builder<'p> {
    fn new(product: &'p str, document_len: usize) -> Builder<'p> {
        Builder {
            product,
            // Ids and context are well under half of a document's bytes.
            arena: String::with_capacity(document_len / 3),
            entries: Vec::new(),
            summary: Summary::default(),
            overflow: false,
        }
    }

    fn push(&mut self, s: &str) -> Span {
        let (Ok(start), Ok(len)) = (u32::try_from(self.arena.len()), u32::try_from(s.len())) else {
            self.overflow = true;
            return Span::default();
        };
        if start.checked_add(len).is_none() {
            self.overflow = true;
            return Span::default();
        }
        self.arena.push_str(s);
        Span { start, len }
    }

    fn context(&mut self, value: Option<&Text<'_>>) -> Span {
        match value {
            Some(Text(v)) if header_value_ok(v) => self.push(v),
            Some(_) => {
                self.summary.dropped_context += 1;
                Span::default()
            }
            None => Span::default(),
        }
    }

    fn add(&mut self, app: Application<'_>) {
        let Some(Text(client_id)) = app.client_id.as_ref().filter(|t| valid_client_id(&t.0)) else {
            self.summary.skipped += 1;
            return;
        };
        let mut standing = Some(NotApproved::Unregistered);
        let mut seen = false;
        for Object(reg) in app
            .registrations
            .iter()
            .filter(|r| r.0.product.0 == self.product)
        {
            let this = match Status::parse(&reg.status.0) {
                Status::Approved => None,
                Status::Pending => Some(NotApproved::Pending),
                Status::Revoked => Some(NotApproved::Revoked),
                Status::Rejected => Some(NotApproved::Rejected),
                Status::Unknown => Some(NotApproved::UnknownStatus),
            };
            // The least permissive wins: the first refusal stays.
            standing = match (seen, standing) {
                (false, _) | (true, None) => this,
                (true, refused) => refused,
            };
            seen = true;
        }
        let id = self.push(client_id);
        let (application_id, developer_id) = if standing.is_none() {
            (
                self.context(app.application_id.as_ref()),
                self.context(app.developer_id.as_ref()),
            )
        } else {
            (Span::default(), Span::default())
        };
        self.entries.push(Entry {
            id,
            application_id,
            developer_id,
            standing: standing_code(standing),
        });
    }

    fn finish(self) -> Registrations {
        let mut regs = Registrations {
            product: self.product.to_string(),
            arena: self.arena,
            entries: self.entries,
            table: Vec::new(),
            summary: self.summary,
        };
        if self.overflow {
            regs.entries.clear();
            regs.arena.clear();
        }
        regs.arena.shrink_to_fit();
        regs.entries.shrink_to_fit();
        regs.index();
        regs
    }
}

/// A JSON string, borrowed from the document when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Application<'a> {
    #[serde(borrow, default)]
    client_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    application_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    developer_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    registrations: Vec<Object<Registration<'a>>>,
}

/// A struct read from a JSON object only: serde's derive also takes an array of the fields in
/// order (`["0oaA"]` would be an application), which is no shape of this document.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Registration<'a> {
    #[serde(borrow)]
    product: Text<'a>,
    #[serde(borrow)]
    status: Text<'a>,
}

/// The top-level object: `applications` streamed into the builder, everything else skipped.
struct DocumentSeed<'b, 'p>(&'b mut Builder<'p>);

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a registrations document")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut found = false;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key != "applications" {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if found {
                return Err(de::Error::duplicate_field("applications"));
            }
            found = true;
            map.next_value_seed(ApplicationsSeed(&mut *self.0))?;
        }
        if found {
            Ok(())
        } else {
            Err(de::Error::missing_field("applications"))
        }
    }
}

struct ApplicationsSeed<'b, 'p>(&'b mut Builder<'p>);

impl<'de> DeserializeSeed<'de> for ApplicationsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ApplicationsSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of applications")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(Object(app)) = seq.next_element::<Object<Application<'de>>>()? {
            self.0.add(app);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
