//! The root context's tick: when it next has work, and what it does then (discovery retries,
//! the key set's periodic refresh, waking followers and requests waiting for keys, deadlines).

use super::{ContextId, Deferred, Gate, Host, Parked, Resume, Stage, Step};
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
        let root_work = discovery.into_iter().chain(keys).chain(deferred).min();
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
        if self.discovery.due(now) && !self.adopt_shared_endpoints(now, host) {
            let doc = DiscoveryDocument::OAuthAuthorizationServer;
            self.dispatch_discovery(self.root, doc, now, host);
        }
        for call in self.calls.take_deferred() {
            match call {
                Deferred::Keys(why) => self.send_deferred_fetch(why, now, host),
                Deferred::Verdict {
                    key,
                    credential,
                    class,
                } => self.send_deferred_verdict((key, credential, class), now, host),
            }
        }
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
        steps
    }

    fn on_tick_due(
        &mut self,
        ctx: ContextId,
        parked: Parked,
        ready: bool,
        now: u64,
        host: &dyn Host,
    ) -> Step {
        match parked {
            Parked::Leader { req, call, .. } => {
                self.calls.answered(call);
                self.no_verdict(ctx, &req, None, None, now, host)
            }
            Parked::Discovery { req, .. } if !ready => {
                self.no_verdict(ctx, &req, None, None, now, host)
            }
            Parked::Discovery { req, .. } => self.advance(ctx, self.root, req, now, host),
            Parked::Follower {
                mut req,
                deadline_ms,
            } => {
                req.stage = Stage::Following { deadline_ms };
                self.advance(ctx, self.root, req, now, host)
            }
            Parked::Keys { req, deadline_ms } if now > deadline_ms => {
                self.without_new_keys(ctx, req, now, host)
            }
            Parked::Keys { req, .. } => self.advance(ctx, self.root, req, now, host),
        }
    }
}
