//! The proxy-wasm glue: turns host events into calls on the [`Gate`] (with the time, read once
//! per event) and the gate's decisions into host calls: header edits (`upstream`), prebuilt
//! local replies (`verdict::Replies`), resumes. Nothing is decided here.
//!
//! Host calls go through `proxy_wasm::hostcalls` with their errors handled, not through the
//! SDK's trait helpers, which unwrap (and a panic aborts the VM).
//!
//! An IdP call's answer arrives in the context that was active when it was sent; the gate maps
//! the call to its request by token. Answers are read before the effective context is switched
//! to another request, since the host serves them only to the context that received them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::abi;
use okta_dcr_auth_core::config::Config;
use okta_dcr_auth_core::gate::registrations::BODY_SIZE;
use okta_dcr_auth_core::gate::{
    CallToken, ContextId, DispatchError, Gate, Host, Resume, SharedData, SharedError, Step, TICK_MS,
};
use okta_dcr_auth_core::metrics::{Counter, Gauge, IDP_LATENCY};
use okta_dcr_auth_core::okta::{IdpAnswer, IdpRequest};
use okta_dcr_auth_core::upstream::{
    is_context_header, is_identity_header, Forward, HeaderEdit, APPLICATION_HEADER,
    DEVELOPER_HEADER, IDENTITY_HEADER, SCOPE_HEADER,
};
use okta_dcr_auth_core::verdict::{Denial, LocalReply, Replies};

/// IdP answers larger than this are not read (and so are unreadable): Okta's are a few KiB.
const MAX_IDP_BODY: usize = 256 * 1024;

const VERSION: &str = env!("CARGO_PKG_VERSION");

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, plugin: None, ticking: false, host: None })
    });
}}

/// One plugin configuration in this VM: its gate, its replies and the host's ids of its
/// metrics.
struct Plugin {
    gate: RefCell<Gate>,
    host: HostKind,
    replies: Replies,
    metrics: Metrics,
    /// `product` is set: the application context headers are the filter's, and client-sent
    /// copies are removed.
    context_headers: bool,
}

/// Host metric ids, by `Counter::index`. A metric the host refused to define is skipped.
///
/// Counts are kept here and handed to the host on the next tick (every `TICK_MS`), in one call
/// per counter that moved: a warm request then makes no metric host call at all. Where the
/// host has no tick, each count goes to the host at once.
struct Metrics {
    counters: Vec<Option<u32>>,
    pending: Vec<Cell<u64>>,
    batched: Cell<bool>,
    idp_latency: Option<u32>,
    /// By `Gauge::index`.
    gauges: Vec<Option<u32>>,
}

impl Metrics {
    fn define() -> Metrics {
        let counters: Vec<Option<u32>> = Counter::all()
            .into_iter()
            .map(|c| abi::define_counter(&c.name()))
            .collect();
        Metrics {
            pending: counters.iter().map(|_| Cell::new(0)).collect(),
            counters,
            batched: Cell::new(false),
            idp_latency: abi::define_histogram(IDP_LATENCY),
            gauges: Gauge::ALL
                .into_iter()
                .map(|g| abi::define_gauge(g.name()))
                .collect(),
        }
    }

    fn count(&self, counter: Counter) {
        let i = counter.index();
        if self.batched.get() {
            if let Some(n) = self.pending.get(i) {
                n.set(n.get() + 1);
            }
        } else if let Some(Some(id)) = self.counters.get(i) {
            abi::increment_metric(*id, 1);
        }
    }

    /// Hands the counts kept since the last flush to the host.
    fn flush(&self) {
        for (n, id) in self.pending.iter().zip(&self.counters) {
            let moved = n.take();
            if let (true, Some(id)) = (moved > 0, id) {
                abi::increment_metric(*id, i64::try_from(moved).unwrap_or(i64::MAX));
            }
        }
    }
}

struct Root {
    id: u32,
    plugin: Option<Rc<Plugin>>,
    ticking: bool,
    /// Which host this is, found once per VM.
    host: Option<HostKind>,
}

/// The two hosts, which differ in what a callback may act on (and in a few ABI details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKind {
    Envoy,
    /// ngx_wasm_module: `set_effective_context` accepts any id and does nothing, so a request
    /// can only be answered from its own callbacks; a request may pause only when it is its
    /// connection's first (see `abi::first_request_on_connection`).
    NgxWasmModule,
}

impl HostKind {
    /// Envoy refuses to switch to a context that does not exist (and changes nothing);
    /// ngx_wasm_module accepts anything. Called once per VM, in the root context.
    fn detect(root: u32) -> HostKind {
        let accepts_anything = abi::set_effective_context(u32::MAX);
        abi::set_effective_context(root);
        if accepts_anything {
            HostKind::NgxWasmModule
        } else {
            HostKind::Envoy
        }
    }

    fn resume(self) -> Resume {
        match self {
            HostKind::Envoy => Resume::AnyRequest,
            HostKind::NgxWasmModule => Resume::OwnRequestOnly,
        }
    }

    fn is_ngx(self) -> bool {
        self == HostKind::NgxWasmModule
    }
}

impl Root {
    fn host(&mut self) -> HostKind {
        let id = self.id;
        *self.host.get_or_insert_with(|| HostKind::detect(id))
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(plugin) = &self.plugin {
            deliver(plugin, self.id, token, headers, body_size);
        }
    }

    /// The plugin is going away (a new configuration, or the VM stopping): its last counts
    /// still reach the host.
    fn on_done(&mut self) -> bool {
        if let Some(plugin) = &self.plugin {
            plugin.metrics.flush();
        }
        true
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.host();
        log::info!("[{}] okta-dcr-auth {VERSION} starting", self.id);
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = abi::plugin_configuration();
        let config = match Config::from_json_with_env(&bytes, &abi::env_var) {
            Ok(config) => config,
            Err(e) => {
                log::error!("[{}] okta-dcr-auth: configuration refused: {e}", self.id);
                // ngx_wasm_module ends the worker on false and starts no other: the whole server
                // then hangs. There, stay up unconfigured: this route answers 503.
                return self.host().is_ngx();
            }
        };
        let metrics = Metrics::define();
        let host = self.host();
        let resume = host.resume();
        // The host's log level is not read: ngx_wasm_module declares `proxy_get_log_level`
        // with another signature than Envoy, and a module importing it does not load there.
        if resume == Resume::OwnRequestOnly {
            log::info!(
                "[{}] host cannot resume other requests: no cross-request waiting",
                self.id
            );
        }
        let replies = Replies::new(&config.reply_terms());
        let context_headers = config.registrations.is_some();
        let gate = Gate::new(
            config,
            ContextId(self.id),
            resume,
            now_ms(),
            &HostCalls(&metrics),
        );
        if let Some(old) = &self.plugin {
            old.metrics.flush();
        }
        self.plugin = Some(Rc::new(Plugin {
            gate: RefCell::new(gate),
            host,
            replies,
            metrics,
            context_headers,
        }));
        // Some hosts (ngx_wasm_module) allow the tick period to be set once only.
        if !self.ticking {
            self.ticking = abi::set_tick_period_ms(u32::try_from(TICK_MS).unwrap_or(u32::MAX));
        }
        if let Some(plugin) = &self.plugin {
            plugin.metrics.batched.set(self.ticking);
        }
        log::info!("[{}] okta-dcr-auth {VERSION} configured", self.id);
        true
    }

    fn on_tick(&mut self) {
        let Some(plugin) = &self.plugin else {
            return;
        };
        plugin.metrics.flush();
        // Most ticks have nothing to do: they do not even ask the time.
        let Some(due) = plugin.gate.borrow().next_deadline() else {
            return;
        };
        let now = now_ms();
        if now < due {
            return;
        }
        let steps = plugin
            .gate
            .borrow_mut()
            .on_tick(now, &HostCalls(&plugin.metrics));
        apply_elsewhere(plugin, steps, false);
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            id,
            plugin: self.plugin.clone(),
            host: self.host.unwrap_or(HostKind::Envoy),
            parked: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    id: u32,
    /// `None` when the configuration was refused: every request is then answered 503.
    plugin: Option<Rc<Plugin>>,
    host: HostKind,
    parked: bool,
}

impl Context for Request {
    fn on_http_call_response(
        &mut self,
        token: u32,
        headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(plugin) = &self.plugin {
            deliver(plugin, self.id, token, headers, body_size);
        }
    }

    fn on_done(&mut self) -> bool {
        if self.parked {
            if let Some(plugin) = &self.plugin {
                plugin.gate.borrow_mut().on_request_gone(
                    ContextId(self.id),
                    now_ms(),
                    &HostCalls(&plugin.metrics),
                );
            }
        }
        true
    }
}

/// Wall-clock time, ms since the epoch; read once per host event.
fn now_ms() -> u64 {
    abi::now_ms()
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // ngx_wasm_module: one request per connection through this filter, so that every
        // request that must wait for the IdP is the first on its connection (see
        // `abi::first_request_on_connection`).
        if self.host.is_ngx() && !abi::close_connection_after_request() {
            log::debug!("[{}] the host kept the connection open", self.id);
        }
        let headers = abi::request_headers();
        let context = self.plugin.as_ref().is_some_and(|p| p.context_headers);
        let (authorization, spoofed) = credentials_and_spoofed(&headers, context);
        let scrubbed = scrub(&spoofed);
        let Some(plugin) = &self.plugin else {
            send_reply(self.host, &LocalReply::not_configured(), None);
            return Action::Pause;
        };
        if !scrubbed {
            // Only on ngx_wasm_module: several copies of one identity header, or one nginx
            // cannot edit (see `abi::scrub_request_headers`). Their values would go upstream.
            log::debug!(
                "[{}] request refused: identity headers the host cannot remove",
                self.id
            );
            send_reply(
                self.host,
                plugin.replies.get(Denial::UnremovableHeaders),
                None,
            );
            return Action::Pause;
        }
        let host = HostCalls(&plugin.metrics);
        // ngx_wasm_module: only a connection's first request may wait for an IdP answer (see
        // `abi::first_request_on_connection`); the gate answers the others at once, and the
        // root makes the call they need, so that their retry finds the verdict.
        let can_wait = !self.host.is_ngx() || abi::first_request_on_connection();
        let step = plugin.gate.borrow_mut().on_request(
            ContextId(self.id),
            &authorization,
            can_wait,
            now_ms(),
            &host,
        );
        match step {
            Step::Forward(forward) => {
                if apply_forward(&forward, Some(&spoofed)) {
                    return Action::Continue;
                }
                send_unavailable(plugin, 1, true);
            }
            Step::Deny(denial) => send_reply(self.host, plugin.replies.get(denial), None),
            Step::Unavailable { retry_after_s } => send_unavailable(plugin, retry_after_s, true),
            Step::NoRegistrations { retry_after_s } => {
                no_registrations(plugin, retry_after_s, true)
            }
            // The gate never parks a request that may not wait; should it, the request must not
            // go on (nginx could forward it before its answer).
            Step::Wait if !can_wait => refuse_on_reused_connection(plugin, self.id, &host),
            Step::Wait => self.parked = true,
        }
        Action::Pause
    }
}

/// Every `Authorization` value of a request and the names of the identity headers (and, with
/// `context`, the application context headers) the client sent, from all its headers read in
/// one host call: every spelling of our headers must be found and removed, and every
/// `Authorization` seen (Envoy folds repeats into one value, joined by commas; a host that does
/// not would hand over several).
fn credentials_and_spoofed(headers: &[abi::HeaderPair], context: bool) -> (Vec<&[u8]>, Vec<&str>) {
    let mut authorization: Vec<&[u8]> = Vec::new();
    let mut spoofed: Vec<&str> = Vec::new();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"authorization") {
            authorization.push(value);
        } else if let Some(name) = std::str::from_utf8(name)
            .ok()
            .filter(|n| is_identity_header(n) || (context && is_context_header(n)))
        {
            // Identity header spellings are ASCII: a name that is not UTF-8 is none of them.
            spoofed.push(name);
        }
    }
    (authorization, spoofed)
}

/// Empties the client-sent copies of our headers; false when the host could not (see
/// `abi::scrub_request_headers`). Ours are overwritten in place later (or removed), so that
/// nginx forwards no emptied copy next to them.
fn scrub(spoofed: &[&str]) -> bool {
    let ours = [
        IDENTITY_HEADER,
        SCOPE_HEADER,
        APPLICATION_HEADER,
        DEVELOPER_HEADER,
    ];
    abi::scrub_request_headers(spoofed, &ours)
}

/// A backstop: ngx_wasm_module could forward a request waiting on a reused connection upstream
/// before its IdP answer (see `abi::first_request_on_connection`). The gate does not park such a
/// request; if it ever did, the request is refused and reported gone.
fn refuse_on_reused_connection(plugin: &Plugin, id: u32, host: &HostCalls<'_>) {
    log::debug!("[{id}] request refused: it would wait on a reused connection");
    plugin
        .gate
        .borrow_mut()
        .on_request_gone(ContextId(id), now_ms(), host);
    send_unavailable(plugin, 1, true);
}

/// Reads an IdP answer in the context that received it, then applies the resulting steps.
fn deliver(plugin: &Rc<Plugin>, caller: u32, token: u32, header_count: usize, body_size: usize) {
    // A failed call has no headers, and asking for them then is an error the SDK panics on.
    // Values as bytes: the SDK's string getter panics on one that is not UTF-8.
    let headers: Vec<(String, String)> = if header_count == 0 {
        Vec::new()
    } else {
        abi::call_response_headers()
            .into_iter()
            .map(|(name, value)| {
                (
                    String::from_utf8_lossy(&name).into_owned(),
                    String::from_utf8_lossy(&value).into_owned(),
                )
            })
            .collect()
    };
    let status = headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| v.parse::<u16>().ok());
    // A registrations fetch may bring a larger body; one over its cap is not read, and its size
    // is handed over instead.
    let limit = plugin.gate.borrow().answer_limit(CallToken(token));
    let mut headers = headers;
    let body = match limit {
        _ if body_size == 0 => Vec::new(),
        Some(limit) if body_size > limit => {
            headers.push((BODY_SIZE.to_string(), body_size.to_string()));
            Vec::new()
        }
        Some(_) => abi::call_response_body(body_size),
        None if body_size <= MAX_IDP_BODY => abi::call_response_body(body_size),
        None => Vec::new(),
    };
    let answer = IdpAnswer {
        status,
        headers: &headers,
        body: &body,
    };
    let host = HostCalls(&plugin.metrics);
    let steps = plugin.gate.borrow_mut().on_idp_answer(
        ContextId(caller),
        CallToken(token),
        answer,
        now_ms(),
        &host,
    );
    let bodyless = body_size == 0 && plugin.host.is_ngx();
    apply_elsewhere(plugin, steps, bodyless);
}

/// Applies steps to paused requests, each in its own context.
fn apply_elsewhere(plugin: &Plugin, steps: Vec<(ContextId, Step)>, bodyless: bool) {
    for (ctx, step) in steps {
        if !abi::set_effective_context(ctx.0) {
            continue;
        }
        match step {
            Step::Forward(forward) => {
                if apply_forward(&forward, None) {
                    abi::continue_request();
                } else {
                    send_unavailable(plugin, 1, !bodyless);
                }
            }
            Step::Deny(denial) => {
                send_reply_with(plugin.host, plugin.replies.get(denial), None, !bodyless)
            }
            Step::Unavailable { retry_after_s } => {
                send_unavailable(plugin, retry_after_s, !bodyless)
            }
            Step::NoRegistrations { retry_after_s } => {
                no_registrations(plugin, retry_after_s, !bodyless)
            }
            Step::Wait => {}
        }
    }
}

/// Applies an allowed request's header edits; false when the host refused one: the request
/// must then not go upstream (it would carry the client's credentials, or no identity).
///
/// `sent`: the identity headers the client sent (already emptied by the scrub), when known from
/// this callback's header read. Our identity headers that are not among them are absent: they
/// are added rather than replaced, and not removed at all (fewer, cheaper host calls).
fn apply_forward(forward: &Forward, sent: Option<&[&str]>) -> bool {
    let absent = |name: &str| sent.is_some_and(|s| !s.iter().any(|n| n.eq_ignore_ascii_case(name)));
    forward.edits().into_iter().all(|edit| match edit {
        HeaderEdit::Set(name, value) if name != "authorization" && absent(name) => {
            abi::add_request_header(name, value)
        }
        HeaderEdit::Set(name, value) => abi::set_request_header(name, value),
        HeaderEdit::Remove(name) if name != "authorization" && absent(name) => true,
        HeaderEdit::Remove(name) => abi::remove_request_header(name),
    })
}

fn send_unavailable(plugin: &Plugin, retry_after_s: u64, with_body: bool) {
    let seconds = retry_after_s.to_string();
    send_reply_with(
        plugin.host,
        plugin.replies.get(Denial::IdpUnavailable),
        Some(&seconds),
        with_body,
    );
}

/// 503 (`product` set): no registrations document answers.
fn no_registrations(plugin: &Plugin, retry_after_s: u64, with_body: bool) {
    let seconds = retry_after_s.to_string();
    let reply = plugin.replies.get(Denial::RegistrationsUnavailable);
    send_reply_with(plugin.host, reply, Some(&seconds), with_body);
}

fn send_reply(host: HostKind, reply: &LocalReply, retry_after: Option<&str>) {
    send_reply_with(host, reply, retry_after, true);
}

fn send_reply_with(host: HostKind, reply: &LocalReply, retry_after: Option<&str>, with_body: bool) {
    let body = if with_body {
        reply.body.as_bytes()
    } else {
        &[]
    };
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if !body.is_empty() {
        headers.push(("content-type", "application/json"));
    }
    let joined;
    if reply.challenges.len() > 1 && host.is_ngx() {
        joined = reply.challenges.join(", ");
        headers.push(("www-authenticate", &joined));
    } else {
        for challenge in &reply.challenges {
            headers.push(("www-authenticate", challenge));
        }
    }
    if let Some(seconds) = retry_after {
        headers.push(("retry-after", seconds));
    }
    abi::send_local_response(reply.status, &headers, body);
}

/// The host, for the gate.
struct HostCalls<'a>(&'a Metrics);

impl SharedData for HostCalls<'_> {
    fn host_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        abi::shared_get(key)
    }

    fn host_set(&self, key: &str, bytes: &[u8], cas: u32) -> Result<(), SharedError> {
        match abi::shared_set(key, bytes, cas) {
            Ok(()) => Ok(()),
            Err(abi::SharedWrite::CasMismatch) => Err(SharedError::CasMismatch),
            Err(abi::SharedWrite::Refused) => Err(SharedError::Other),
        }
    }
}

impl Host for HostCalls<'_> {
    fn count(&self, counter: Counter) {
        self.0.count(counter);
    }

    fn observe_idp_latency(&self, ms: u64) {
        if let Some(id) = self.0.idp_latency {
            abi::record_metric(id, ms);
        }
    }

    fn gauge(&self, gauge: Gauge, value: u64) {
        if let Some(Some(id)) = self.0.gauges.get(gauge.index()) {
            abi::record_metric(*id, value);
        }
    }

    fn dispatch(
        &self,
        caller: ContextId,
        upstream: &str,
        request: &IdpRequest,
        timeout_ms: u64,
    ) -> Result<CallToken, DispatchError> {
        // The proxy-wasm SDK makes a context effective for each call answer it delivers, and
        // Envoy keeps it for later callbacks: without this, a request's call could belong to
        // another context, and would neither come back to it nor die with it.
        abi::set_effective_context(caller.0);
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let body = (!request.body.is_empty()).then_some(request.body.as_slice());
        hostcalls::dispatch_http_call(
            upstream,
            headers,
            body,
            Vec::new(),
            Duration::from_millis(timeout_ms),
        )
        .map(CallToken)
        .map_err(|_| DispatchError)
    }
}
