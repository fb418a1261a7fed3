//! Registrations as the gate enforces them (`product` set): which app may pass, and where this
//! worker's copy of the registrations document comes from. [`Registry`] owns that state; the
//! gate hands it every request before any IdP work ([`Registry::precheck`]) and every step
//! before it leaves ([`Registry::settle`]), so that no path (a worker-local copy, a shared
//! verdict, a fresh IdP answer, a stale verdict, a locally verified token) forwards an app
//! without an approved registration.
//!
//! - **Basic**: the client id (after its form-decoding) is looked up before the cache and the
//!   IdP: unknown, 401 as an invalid client; known but not approved, 403; neither costs an IdP
//!   call nor checks the secret.
//! - **Every grant** is looked up again, by the app it names (`Forward::identity`: the Basic
//!   client id, a token's `app_claim`, else `cid`), when it leaves the gate: one hash lookup. A
//!   cached positive verdict therefore stops at the next document that revokes the app.
//! - **Fetched documents** (`registrations_uri`): the root's tick looks at the shared record
//!   every [`LOOK_MS`] ([`Fetcher::look`]): it adopts a newer document another worker fetched,
//!   takes a 304's confirmation, and, when the record allows a fetch, takes the single-flight
//!   lease and sends it from the root context (no request owns it). The answer is parsed once;
//!   the compact form goes to shared data before the record that names its generation.
//! - **No document** (none yet, or past `registrations_max_age_s`): Basic and Bearer requests
//!   get 503 with `Retry-After`.

use std::sync::Arc;

use super::slots::{update, Update};
use super::steps::{refuse, Warnings};
use super::{CallToken, ContextId, Host, Step, LEASE_MARGIN_MS};
use crate::cache::{Names, NotWritten};
use crate::config::{Config, RegistrationsEndpoint, RegistrationsSource};
use crate::credentials::{Credential, Scheme};
use crate::metrics::{Counter, DenyReason, Gauge, RegistrationsFetch};
use crate::okta::{self, IdpAnswer};
use crate::registrations::record::{Adopted, Held, RegistrationsRecord, Unavailable};
use crate::registrations::{
    DocumentError, NotApproved, Registrations, Standing, MAX_DOCUMENT_BYTES,
};
use crate::verdict::Denial;

/// How often a worker looks at the shared record: adopts another worker's document, sees a
/// 304, and takes its turn to fetch. It adds to `registrations_refresh_s` in the revocation
/// bound.
pub const LOOK_MS: u64 = 100;
/// A fetch may take this long at least (`idp_timeout_ms` when longer): a large document takes
/// longer to arrive than an Okta answer.
pub const FETCH_TIMEOUT_MS: u64 = 10_000;
/// The answer to a fetch whose body the host did not hand over because it is larger than
/// [`MAX_DOCUMENT_BYTES`] carries its size in this pseudo-header (set by the glue).
pub const BODY_SIZE: &str = ":body-size";

/// What the gate knows of registrations in one worker, for one configuration.
pub(super) struct Registry {
    root: ContextId,
    source: Source,
}

enum Source {
    /// No `product`: nobody is checked.
    Off,
    Inline(Arc<Registrations>),
    Fetched(Box<Fetcher>),
}

/// This worker's side of the document at `registrations_uri`.
struct Fetcher {
    product: String,
    endpoint: RegistrationsEndpoint,
    refresh_ms: u64,
    max_age_ms: u64,
    timeout_ms: u64,
    record_name: String,
    body_name: String,
    held: Held,
    /// This worker's fetch out: its token, when it was sent.
    call: Option<(CallToken, u64)>,
    next_look_ms: u64,
    warnings: Warnings,
}

/// A standing as the decision needs it, owning the context that goes upstream.
enum Found {
    Approved(Option<String>, Option<String>),
    Unknown,
    NotApproved(NotApproved),
    Unavailable(u64),
}

impl Registry {
    pub fn new(config: &Config, names: &Names, root: ContextId, host: &dyn Host) -> Registry {
        let Some(regs) = &config.registrations else {
            return Registry {
                root,
                source: Source::Off,
            };
        };
        let source = match &regs.source {
            RegistrationsSource::Inline(parsed) => {
                host.gauge(Gauge::RegistrationsApplications, parsed.len() as u64);
                Source::Inline(parsed.clone())
            }
            RegistrationsSource::Fetched(endpoint) => {
                let key = format!(
                    "{}\n{}\n{}\n{}",
                    endpoint.upstream, endpoint.authority, endpoint.path, regs.product
                );
                Source::Fetched(Box::new(Fetcher {
                    product: regs.product.clone(),
                    endpoint: endpoint.clone(),
                    refresh_ms: regs.refresh_ms,
                    max_age_ms: regs.max_age_ms,
                    timeout_ms: config.idp_timeout_ms.max(FETCH_TIMEOUT_MS),
                    record_name: names.registrations(&key, "record"),
                    body_name: names.registrations(&key, "body"),
                    held: Held::default(),
                    call: None,
                    next_look_ms: 0,
                    warnings: Warnings::default(),
                }))
            }
        };
        Registry { root, source }
    }

    /// Whether `product` is set: context headers are then the filter's.
    pub fn enforced(&self) -> bool {
        !matches!(self.source, Source::Off)
    }

    /// Before any cache lookup or IdP work: a credential gets 503 while no document answers;
    /// a Basic client id that is unknown (401) or not approved (403) is refused here. `None`:
    /// the request goes on.
    pub fn precheck(
        &mut self,
        ctx: ContextId,
        credential: &Credential,
        now: u64,
        host: &dyn Host,
    ) -> Option<Step> {
        if !self.enforced() {
            return None;
        }
        let found = match credential {
            Credential::Basic(client) => self.find(&client.client_id, now, host),
            Credential::Bearer(_) => match self.available(now, host) {
                Ok(()) => return None,
                Err(retry_after_s) => Found::Unavailable(retry_after_s),
            },
        };
        match found {
            Found::Approved(..) => None,
            refused => Some(refusal(ctx, Scheme::Basic, refused, host)),
        }
    }

    /// A step on its way out: a grant goes upstream only for an app approved now (with its
    /// context), and is counted as allowed only then.
    pub fn settle(&mut self, ctx: ContextId, step: Step, now: u64, host: &dyn Host) -> Step {
        let Step::Forward(mut forward) = step else {
            return step;
        };
        if self.enforced() {
            match self.find(&forward.identity, now, host) {
                Found::Approved(application_id, developer_id) => {
                    forward.application_id = application_id;
                    forward.developer_id = developer_id;
                    forward.context = true;
                }
                refused => return refusal(ctx, forward.scheme(), refused, host),
            }
        }
        host.count(Counter::Allowed);
        Step::Forward(forward)
    }

    /// [`Registry::settle`] for each step.
    pub fn settle_all(
        &mut self,
        steps: Vec<(ContextId, Step)>,
        now: u64,
        host: &dyn Host,
    ) -> Vec<(ContextId, Step)> {
        steps
            .into_iter()
            .map(|(ctx, step)| (ctx, self.settle(ctx, step, now, host)))
            .collect()
    }

    /// `app`'s standing now; a worker whose copy cannot answer looks at the shared record first.
    fn find(&mut self, app: &str, now: u64, host: &dyn Host) -> Found {
        let found = match &mut self.source {
            Source::Off => return Found::Approved(None, None),
            Source::Inline(regs) => Ok(regs.lookup(app)),
            Source::Fetched(f) => {
                if f.serving(now).is_err() {
                    f.catch_up(self.root, now, host);
                }
                f.held.lookup(app, now, f.max_age_ms)
            }
        };
        match found {
            Ok(Standing::Approved(c)) => Found::Approved(
                c.application_id.map(str::to_string),
                c.developer_id.map(str::to_string),
            ),
            Ok(Standing::Unknown) => Found::Unknown,
            Ok(Standing::NotApproved(why)) => Found::NotApproved(why),
            Err(why) => Found::Unavailable(self.retry_after_s(why)),
        }
    }

    /// `Err(retry_after_s)` while no document may answer.
    fn available(&mut self, now: u64, host: &dyn Host) -> Result<(), u64> {
        let root = self.root;
        let Source::Fetched(f) = &mut self.source else {
            return Ok(());
        };
        if f.serving(now).is_err() {
            f.catch_up(root, now, host);
        }
        f.serving(now).map_err(|why| self.retry_after_s(why))
    }

    fn retry_after_s(&self, why: Unavailable) -> u64 {
        let Source::Fetched(f) = &self.source else {
            return 1;
        };
        let ms = match why {
            Unavailable::NoDocument => {
                crate::registrations::record::RETRY_WITHOUT_DOCUMENT_MS.min(f.refresh_ms)
            }
            Unavailable::Expired => f.refresh_ms,
        };
        ms.div_ceil(1000).max(1)
    }

    /// When the root's tick next has work here.
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.source {
            Source::Fetched(f) => Some(f.next_look_ms),
            _ => None,
        }
    }

    /// The root's tick: look at the shared record, adopt, fetch when it is this worker's turn.
    pub fn on_tick(&mut self, now: u64, host: &dyn Host) {
        let root = self.root;
        if let Source::Fetched(f) = &mut self.source {
            if now >= f.next_look_ms {
                f.next_look_ms = now + LOOK_MS;
                f.look(root, now, host);
            }
        }
    }

    /// The largest answer body this call may have read (`None`: not a registrations fetch).
    pub fn answer_limit(&self, token: CallToken) -> Option<usize> {
        match &self.source {
            Source::Fetched(f) if f.call.is_some_and(|(t, _)| t == token) => {
                Some(MAX_DOCUMENT_BYTES)
            }
            _ => None,
        }
    }

    /// An answer: whether it was this worker's registrations fetch (then it is handled).
    pub fn on_answer(
        &mut self,
        token: CallToken,
        answer: IdpAnswer<'_>,
        now: u64,
        host: &dyn Host,
    ) -> bool {
        let root = self.root;
        let Source::Fetched(f) = &mut self.source else {
            return false;
        };
        let Some((_, sent_ms)) = f.call.filter(|(t, _)| *t == token) else {
            return false;
        };
        f.call = None;
        f.on_answer(root, answer, sent_ms, now, host);
        true
    }
}

/// The refusal for a standing that does not pass: Basic unknown is an invalid client (401);
/// any other app without an approved registration 403; no document 503.
fn refusal(ctx: ContextId, scheme: Scheme, found: Found, host: &dyn Host) -> Step {
    match found {
        Found::Unavailable(retry_after_s) => {
            host.count(Counter::Denied(DenyReason::RegistrationsUnavailable));
            log::debug!("[{ctx}] no registrations document answers: 503");
            Step::NoRegistrations { retry_after_s }
        }
        Found::Unknown if scheme == Scheme::Basic => refuse(
            ctx,
            None,
            Denial::InvalidClient,
            DenyReason::Unregistered,
            host,
        ),
        Found::Unknown => refuse(
            ctx,
            None,
            Denial::NotRegistered,
            DenyReason::Unregistered,
            host,
        ),
        Found::NotApproved(why) => {
            log::debug!("[{ctx}] application not approved: {}", why.reason());
            refuse(
                ctx,
                None,
                Denial::NotRegistered,
                DenyReason::NotApproved,
                host,
            )
        }
        // Not a refusal: never asked for.
        Found::Approved(..) => Step::NoRegistrations { retry_after_s: 1 },
    }
}

impl Fetcher {
    fn serving(&self, now: u64) -> Result<(), Unavailable> {
        match self.held.registrations() {
            _ if self.held.serves(now, self.max_age_ms) => Ok(()),
            Some(_) => Err(Unavailable::Expired),
            None => Err(Unavailable::NoDocument),
        }
    }

    fn read_record(&self, host: &dyn Host) -> RegistrationsRecord {
        host.shared_get(&self.record_name)
            .and_then(|(bytes, _)| RegistrationsRecord::decode(&bytes))
            .unwrap_or_default()
    }

    /// Takes what the shared record says: a newer document's body, or a confirmation.
    fn catch_up(&mut self, root: ContextId, now: u64, host: &dyn Host) -> RegistrationsRecord {
        let record = self.read_record(host);
        if !self.held.wants_body(&record) {
            self.held.saw(&record);
            return record;
        }
        let Some((body, _)) = host.shared_get(&self.body_name) else {
            return record;
        };
        match self.held.adopt(&body, &self.product, &record) {
            Adopted::New { .. } => {
                if let Some(regs) = self.held.registrations() {
                    host.gauge(Gauge::RegistrationsApplications, regs.len() as u64);
                }
            }
            Adopted::Unchanged => self.held.saw(&record),
            Adopted::Unusable => self.warnings.warn(
                now,
                format_args!("[{root}] the shared registrations document is unusable: this worker keeps its own"),
            ),
        }
        record
    }

    /// The tick's work: catch up, report the age, fetch when the record allows it.
    fn look(&mut self, root: ContextId, now: u64, host: &dyn Host) {
        let record = self.catch_up(root, now, host);
        if let Some(age) = record.age_ms(now) {
            host.gauge(Gauge::RegistrationsAgeS, age / 1000);
        }
        if let Some((_, sent_ms)) = self.call {
            if now < sent_ms + self.timeout_ms + LEASE_MARGIN_MS {
                return;
            }
            // Its answer never came (ngx_wasm_module reports no answer for a call it could not
            // read to the end, e.g. a document over its socket buffers): a failed attempt, so
            // that this worker fetches again. A late answer is then no longer this call's.
            self.call = None;
            self.failed(
                root,
                "no answer within the fetch's timeout",
                sent_ms,
                now,
                host,
            );
            return;
        }
        if !record.may_fetch(now, self.refresh_ms) {
            return;
        }
        let until = now + self.timeout_ms + LEASE_MARGIN_MS;
        let mut leased = None;
        let written = update(host, &self.record_name, |bytes| {
            let current = bytes
                .and_then(RegistrationsRecord::decode)
                .unwrap_or_default();
            if !current.may_fetch(now, self.refresh_ms) {
                return Err(NotWritten::Declined);
            }
            let record = current.leased(until);
            let value = record.encode();
            leased = Some(record);
            Ok(value)
        });
        if let (Update::Written, Some(record)) = (written, leased) {
            self.send(root, &record, now, host);
        }
    }

    /// Sends the fetch under the lease just taken (`If-None-Match` when the document in use
    /// has an `ETag`).
    fn send(&mut self, root: ContextId, record: &RegistrationsRecord, now: u64, host: &dyn Host) {
        let e = &self.endpoint;
        let request = okta::registrations_request(e, record.if_none_match());
        match host.dispatch(root, &e.upstream, &request, self.timeout_ms) {
            Ok(token) => self.call = Some((token, now)),
            Err(_) => {
                let why = "the call could not be sent (is registrations_upstream a known cluster, or host:port?)";
                self.failed(root, why, now, now, host);
            }
        }
    }

    fn on_answer(
        &mut self,
        root: ContextId,
        answer: IdpAnswer<'_>,
        sent_ms: u64,
        now: u64,
        host: &dyn Host,
    ) {
        match answer.status {
            Some(304) => self.not_modified(root, sent_ms, now, host),
            Some(200) => match document_of(&answer, &self.product) {
                Ok((regs, bytes)) => {
                    host.gauge(Gauge::RegistrationsBytes, bytes as u64);
                    let etag = header(&answer, "etag");
                    self.fetched(root, regs, etag, sent_ms, now, host);
                }
                Err(e) => {
                    let why = format!("the document {}", e.describe());
                    self.failed(root, &why, sent_ms, now, host);
                }
            },
            Some(status) => {
                let why = format!("status {status}");
                self.failed(root, &why, sent_ms, now, host);
            }
            None => self.failed(
                root,
                "no answer (a timeout, a connection failure, or a document larger than the host \
                 hands over: about 32 MiB on Envoy 1.40)",
                sent_ms,
                now,
                host,
            ),
        }
    }

    /// A usable document: its compact form goes to shared data, then the record naming its
    /// generation; this worker uses it at once.
    fn fetched(
        &mut self,
        root: ContextId,
        regs: Registrations,
        etag: Option<&str>,
        sent_ms: u64,
        now: u64,
        host: &dyn Host,
    ) {
        let current = self.read_record(host);
        if current.generation != 0 && current.last_attempt_ms > sent_ms {
            // A fetch sent after this one (this one outlived its lease) completed first: its
            // document is the newer one.
            log::debug!("[{root}] registrations fetch answered after a newer one: dropped");
            self.catch_up(root, now, host);
            return;
        }
        let record = current.fetched(etag, sent_ms, now);
        let generation = record.generation;
        let body = regs.encode(generation);
        let shared = update(host, &self.body_name, |_| Ok(body.clone()));
        let summary = regs.summary();
        self.held.install(regs, &record);
        host.gauge(
            Gauge::RegistrationsApplications,
            u64::from(summary.applications),
        );
        host.gauge(Gauge::RegistrationsAgeS, 0);
        if shared != Update::Written {
            // The other workers keep their copies; this one tries again in a period.
            let why = "its compact form could not be written to shared data (is it full?)";
            return self.failed(root, why, sent_ms, now, host);
        }
        let written = update(host, &self.record_name, |bytes| {
            let current = bytes
                .and_then(RegistrationsRecord::decode)
                .unwrap_or_default();
            if current.generation >= generation {
                return Err(NotWritten::Declined);
            }
            let mut next = current.fetched(etag, sent_ms, now);
            next.generation = generation;
            Ok(next.encode())
        });
        host.count(Counter::Registrations(RegistrationsFetch::Fetched));
        log::info!(
            "[{root}] registrations document fetched: {} application(s), {} approved for this product; {} skipped, {} duplicate(s), {} context value(s) dropped{}",
            summary.applications,
            summary.approved,
            summary.skipped,
            summary.duplicates,
            summary.dropped_context,
            if written == Update::Written { "" } else { " (a newer one is shared)" },
        );
    }

    fn not_modified(&mut self, root: ContextId, sent_ms: u64, now: u64, host: &dyn Host) {
        let mut confirmed = None;
        update(host, &self.record_name, |bytes| {
            let current = bytes
                .and_then(RegistrationsRecord::decode)
                .unwrap_or_default();
            let next = current.not_modified(sent_ms, now);
            confirmed = Some(next.clone());
            Ok(next.encode())
        });
        if let Some(record) = confirmed.filter(|r| r.generation != 0) {
            self.held.saw(&record);
            host.count(Counter::Registrations(RegistrationsFetch::NotModified));
            host.gauge(Gauge::RegistrationsAgeS, 0);
            log::debug!("[{root}] registrations document unchanged (304)");
        } else {
            // A 304 with no document in use: a confused source.
            self.failed(root, "a 304 before any document", sent_ms, now, host);
        }
    }

    /// A failed attempt: counted, warned about, the lease released; the last good document
    /// stays.
    fn failed(&mut self, root: ContextId, why: &str, sent_ms: u64, now: u64, host: &dyn Host) {
        update(host, &self.record_name, |bytes| {
            let current = bytes
                .and_then(RegistrationsRecord::decode)
                .unwrap_or_default();
            Ok(current.failed(sent_ms).encode())
        });
        host.count(Counter::Registrations(RegistrationsFetch::Failed));
        let keeps = if self.held.registrations().is_some() {
            "the last good document stays in use"
        } else {
            "no document yet: requests with credentials get 503"
        };
        self.warnings.warn(
            now,
            format_args!("[{root}] registrations fetch failed: {why}; {keeps}"),
        );
    }
}

fn header<'a>(answer: &IdpAnswer<'a>, name: &str) -> Option<&'a str> {
    answer
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The document a 200 carries, and its size; a body the host held back for its size is too
/// large.
fn document_of(
    answer: &IdpAnswer<'_>,
    product: &str,
) -> Result<(Registrations, usize), DocumentError> {
    if let Some(bytes) = header(answer, BODY_SIZE).and_then(|v| v.parse::<usize>().ok()) {
        return Err(DocumentError::TooLarge { bytes });
    }
    Registrations::parse(answer.body, product).map(|regs| (regs, answer.body.len()))
}

#[cfg(test)]
mod tests;
