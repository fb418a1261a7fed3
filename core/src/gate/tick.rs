//! The root context's tick: when it next has work, and what it does then (discovery retries,
//! the key set's periodic refresh, waking followers and requests waiting for keys, deadlines).

use super::answer::endpoint_of;
use super::flow::{idp_request, NOT_SENT};
use super::key_fetch::keys_record_name;
use super::keys::KeysRecord;
use super::slots::update;
use super::{ContextId, Deferred, Gate, Host, NotSent, Parked, Purpose, Resume, Stage, Step};
use crate::inflight::CAP_MEMORY_MS;
use crate::okta::DiscoveryDocument;

impl Gate {
    /// When a tick next has work (ms since the epoch; 0: at the next tick), `None` when idle.
    pub fn next_deadline(&self) -> Option<u64> {
        let discovery = self.discovery.retry_at();
        let keys = self
            .config
            .jwt
            .as_ref()
            .and_then(|_| self.keys.refresh_due_at());
        let deferred = self.calls.has_deferred().then_some(0);
        let announce = Some(self.next_announce_ms);
        let registrations = self.registry.next_deadline();
        let root_work = [discovery, keys, deferred, announce, registrations]
            .into_iter()
            .flatten()
            .min();
        if self.resume == Resume::OwnRequestOnly {
            // Requests are never answered from the root context there: the host could not act.
            return root_work;
        }
        let ready = self.discovery.is_ready();
        let paused = self.paused.next_deadline(ready, self.config.idp_timeout_ms);
        root_work.into_iter().chain(paused).min()
    }

    /// The root context's tick: retries discovery, sends the calls deferred to it, refreshes
    /// keys, wakes followers and requests waiting for keys, enforces deadlines.
    pub fn on_tick(&mut self, now: u64, host: &dyn Host) -> Vec<(ContextId, Step)> {
        if now >= self.next_announce_ms {
            // Holds the org's other configurations to this one's bound of calls in flight, if it
            // is the smallest, for the next CAP_MEMORY_MS; again in half that.
            self.admission.announce_bound(now, host);
            self.next_announce_ms = now + CAP_MEMORY_MS / 2;
        }
        if self.discovery.due(now)
            && !super::adopt_shared_endpoints(&mut self.discovery, &self.names, now, host)
        {
            let doc = DiscoveryDocument::OAuthAuthorizationServer;
            self.dispatch_discovery(self.root, doc, now, host);
        }
        for call in self.calls.take_deferred() {
            self.send_deferred(call, now, host);
        }
        self.registry.on_tick(now, host);
        let own_only = self.resume == Resume::OwnRequestOnly;
        let waiting = !own_only && self.paused.any(|p| matches!(p, Parked::Keys { .. }));
        let keys_moved = self.tick_keys(waiting, now, host);
        if own_only {
            return Vec::new();
        }
        let ready = self.discovery.is_ready();
        let timeout = self.config.idp_timeout_ms;
        let mut steps = Vec::new();
        for ctx in self.paused.due(now, ready, keys_moved, timeout) {
            let Some(parked) = self.paused.take(ctx) else {
                continue;
            };
            let step = self.on_tick_due(ctx, parked, ready, now, host);
            if step != Step::Wait {
                steps.push((ctx, step));
            }
        }
        self.registry.settle_all(steps, now, host)
    }

    /// The root sends a call taken on for a request (its lease, and for a verdict its budget,
    /// were taken then): a key set fetch, whose lease is renewed from now, or a verdict call,
    /// whose answer is cached for the request's retry.
    fn send_deferred(&mut self, call: Deferred, now: u64, host: &dyn Host) {
        let root = self.root;
        match call {
            Deferred::Keys(why) => {
                let (Some(path), Some(name)) = (
                    self.discovery.endpoints().jwks_path.clone(),
                    keys_record_name(&self.discovery, &self.names),
                ) else {
                    return;
                };
                let until = now + self.lease_ms;
                update(host, &name, |bytes| {
                    let record = bytes.and_then(KeysRecord::decode).unwrap_or_default();
                    Ok(record.leased(until).encode())
                });
                self.send_fetch(root, &path, why, true, now, host);
            }
            Deferred::Verdict {
                key,
                credential,
                class,
            } => {
                let Some(request) = idp_request(&self.config, &self.discovery, &credential) else {
                    self.slots.release(host, &key, None);
                    return;
                };
                let endpoint = endpoint_of(&credential);
                let purpose = Purpose::Verdict {
                    key,
                    credential,
                    leader: root,
                };
                match self.send(root, &request, (purpose, class), now, host) {
                    Ok(_) => {}
                    Err(NotSent::AtCap) => self.slots.release(host, &key, None),
                    Err(NotSent::Refused) => {
                        self.health.proxy_refused(endpoint, now);
                        self.warnings.warn(now, format_args!("[{root}] {NOT_SENT}"));
                        self.slots.release(host, &key, Some(now));
                    }
                }
            }
        }
    }

    fn on_tick_due(
        &mut self,
        ctx: ContextId,
        parked: Parked,
        ready: bool,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        // A leader whose call is overdue, or a request whose discovery is: no verdict.
        let req = match parked {
            Parked::Leader { req, call, .. } => {
                self.calls.answered(call);
                req
            }
            Parked::Discovery { req, .. } if !ready => req,
            Parked::Discovery { req, .. } => return self.advance(ctx, self.root, req, now, host),
            Parked::Follower {
                mut req,
                deadline_ms,
            } => {
                req.stage = Stage::Following { deadline_ms };
                return self.advance(ctx, self.root, req, now, host);
            }
            Parked::Keys { req, deadline_ms } if now > deadline_ms => {
                return self.without_new_keys(ctx, req, now, host)
            }
            Parked::Keys { req, .. } => return self.advance(ctx, self.root, req, now, host),
        };
        let entry = self.slots.read(host, &req.key);
        self.answers.no_verdict(ctx, &req, &entry, None, now, host)
    }
}
