//! The requests the gate is deciding about: what each carries ([`Pending`]), how far it has
//! come ([`Stage`]), and the table of paused ones by what they wait for ([`Paused`]). A
//! request is in the table from the moment it waits until a step for it is handed back, or it
//! goes away.

use std::collections::HashMap;

use super::{CallToken, ContextId, Host, Step};
use crate::cache::CacheKey;
use crate::credentials::Credential;
use crate::metrics::Counter;

/// A request the gate is deciding about.
#[derive(Debug)]
pub(super) struct Pending {
    /// The `Authorization` value exactly as sent: the worker-local copies are found by it.
    pub raw: Box<[u8]>,
    pub credential: Credential,
    pub key: CacheKey,
    pub arrived_ms: u64,
    pub stage: Stage,
    /// Whether the host lets it wait for an IdP answer (ngx_wasm_module: only a connection's
    /// first request). One that may not is answered at once; a call it needs is made by the
    /// root instead, so that its retry finds the verdict.
    pub can_wait: bool,
}

/// How far a request has come. It only moves forward: a request that goes on again after a
/// wait never counts its cache lookup twice, never asks for a second key set fetch, and never
/// verifies its token twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Not yet looked up in shared data: its hit or miss is not counted yet.
    Arrived,
    /// Missed the cache (counted).
    Missed,
    /// Missed, and waited once for the key set: it never asks for another fetch.
    KeysAwaited,
    /// Past the local checks (a Bearer token verified in `jwt+introspection`, a credential
    /// that was following another call): it goes to the IdP path as it is.
    ToIdp,
    /// Waited for another request's call for the same key, until `deadline_ms`: a failure of
    /// that call ends its wait.
    Following { deadline_ms: u64 },
}

impl Stage {
    /// Whether its cache lookup was counted (hit or miss).
    pub fn counted(self) -> bool {
        self != Stage::Arrived
    }

    /// Whether the local checks are behind it.
    pub fn past_local_checks(self) -> bool {
        matches!(self, Stage::ToIdp | Stage::Following { .. })
    }
}

impl Pending {
    /// When it gives up waiting: a follower's deadline, or its lease's.
    pub fn deadline_ms(&self, lease_ms: u64) -> u64 {
        match self.stage {
            Stage::Following { deadline_ms } => deadline_ms,
            _ => self.arrived_ms + lease_ms,
        }
    }

    /// Its lookup missed the cache: counted once.
    pub fn missed(&mut self, host: &dyn Host) {
        if self.stage == Stage::Arrived {
            host.count(Counter::CacheMiss);
            self.stage = Stage::Missed;
        }
    }
}

/// A paused request, by what it waits for.
#[derive(Debug)]
pub(super) enum Parked {
    /// The issuer's endpoints, until `deadline_ms`.
    Discovery { req: Pending, deadline_ms: u64 },
    /// Its own IdP call; its lease on the key ends at `lease_until_ms`.
    Leader {
        req: Pending,
        call: CallToken,
        lease_until_ms: u64,
    },
    /// Another request's call for the same key (since `req.arrived_ms`), until `deadline_ms`.
    Follower { req: Pending, deadline_ms: u64 },
    /// The issuer's key set (its token names a `kid` this worker does not know), until
    /// `deadline_ms`.
    Keys { req: Pending, deadline_ms: u64 },
}

impl Parked {
    pub fn req(&self) -> &Pending {
        match self {
            Parked::Discovery { req, .. }
            | Parked::Leader { req, .. }
            | Parked::Follower { req, .. }
            | Parked::Keys { req, .. } => req,
        }
    }

    pub fn into_req(self) -> Pending {
        match self {
            Parked::Discovery { req, .. }
            | Parked::Leader { req, .. }
            | Parked::Follower { req, .. }
            | Parked::Keys { req, .. } => req,
        }
    }
}

/// The paused requests of one gate (one worker, one configuration), by context.
#[derive(Debug, Default)]
pub(super) struct Paused {
    by_context: HashMap<ContextId, Parked>,
}

impl Paused {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_context.is_empty()
    }

    /// Parks a request: its step is to wait.
    pub fn park(&mut self, ctx: ContextId, parked: Parked) -> Step {
        self.by_context.insert(ctx, parked);
        Step::Wait
    }

    /// Takes a request out of the table (it goes on, or it went away).
    pub fn take(&mut self, ctx: ContextId) -> Option<Parked> {
        self.by_context.remove(&ctx)
    }

    /// The requests `pick` chooses.
    pub fn ids(&self, pick: impl Fn(ContextId, &Parked) -> bool) -> Vec<ContextId> {
        self.by_context
            .iter()
            .filter(|(id, p)| pick(**id, p))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn any(&self, pick: impl Fn(&Parked) -> bool) -> bool {
        self.by_context.values().any(pick)
    }

    /// The leader and every request waiting on the same key (not for discovery), leader first;
    /// with `own_only`, only the leader.
    pub fn waiting_on(&self, key: CacheKey, leader: ContextId, own_only: bool) -> Vec<ContextId> {
        let mut ids = self.ids(|id, p| {
            p.req().key == key
                && !matches!(p, Parked::Discovery { .. })
                && (!own_only || id == leader)
        });
        ids.sort_unstable_by_key(|id| *id != leader);
        ids
    }

    /// When a tick next has work for a paused request (0: at the next tick), `None` when none
    /// waits. `ready`: discovery is done; `timeout`: the IdP call timeout.
    pub fn next_deadline(&self, ready: bool, timeout: u64) -> Option<u64> {
        self.by_context
            .values()
            .map(|p| match p {
                Parked::Follower { .. } | Parked::Keys { .. } => 0,
                Parked::Discovery { .. } if ready => 0,
                Parked::Discovery { deadline_ms, .. } => deadline_ms + 1,
                Parked::Leader { lease_until_ms, .. } => lease_until_ms + timeout + 1,
            })
            .min()
    }

    /// The requests a tick at `now` moves on: followers (to look again), those waiting for
    /// discovery once it is done, for keys once they moved, and any past its deadline (the
    /// host always answers a call, if only with its timeout: this is a backstop).
    pub fn due(&self, now: u64, ready: bool, keys_moved: bool, timeout: u64) -> Vec<ContextId> {
        self.ids(|_, p| match p {
            Parked::Leader { lease_until_ms, .. } => now > lease_until_ms + timeout,
            Parked::Discovery { deadline_ms, .. } => ready || now > *deadline_ms,
            Parked::Follower { .. } => true,
            Parked::Keys { deadline_ms, .. } => keys_moved || now > *deadline_ms,
        })
    }
}
