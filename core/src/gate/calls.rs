//! The IdP calls of one gate (one worker, one configuration): those out, each with what it is
//! for and who owns it, matched to their answers by token; and those the root sends at its next
//! tick ([`Deferred`]).

use std::collections::HashMap;

use super::keys::Why;
use super::{CallToken, ContextId};
use crate::budget::CallClass;
use crate::cache::CacheKey;
use crate::credentials::Credential;
use crate::okta::DiscoveryDocument;

#[derive(Debug)]
pub(super) enum Purpose {
    Discovery(DiscoveryDocument),
    Verdict {
        key: CacheKey,
        credential: Credential,
        leader: ContextId,
    },
    /// The issuer's key set, fetched for `why`; `leased`: under the shared lease (a request's
    /// own fetch on `OwnRequestOnly` may go without it).
    Keys {
        why: Why,
        leased: bool,
    },
}

/// An IdP call the root sends at its next tick: the root's calls die with no request, and on
/// some hosts (ngx_wasm_module) only the root's own callbacks can make them.
#[derive(Debug)]
pub(super) enum Deferred {
    /// The key set, under the lease already taken.
    Keys(Why),
    /// A verdict, under the slot's lease already taken and the budget already spent.
    Verdict {
        key: CacheKey,
        credential: Credential,
        class: CallClass,
    },
}

#[derive(Debug)]
pub(super) struct Call {
    pub purpose: Purpose,
    pub started_ms: u64,
    /// The deadline of its place among the gateway's calls in flight, given back on its answer.
    pub place_until: u64,
    /// The context the host attributes the call to; if that request goes away, so does the call.
    pub owner: ContextId,
}

impl Purpose {
    pub fn verdict(key: CacheKey, credential: Credential, leader: ContextId) -> Purpose {
        Purpose::Verdict {
            key,
            credential,
            leader,
        }
    }
}

impl Deferred {
    pub fn verdict(key: CacheKey, credential: Credential, class: CallClass) -> Deferred {
        Deferred::Verdict {
            key,
            credential,
            class,
        }
    }
}

/// The calls out, and those deferred to the root's next tick.
#[derive(Debug, Default)]
pub(super) struct Calls {
    out: HashMap<CallToken, Call>,
    deferred: Vec<Deferred>,
}

impl Calls {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.out.is_empty() && self.deferred.is_empty()
    }

    pub fn record(&mut self, token: CallToken, call: Call) {
        self.out.insert(token, call);
    }

    /// The call an answer is for, taken out (`None`: not ours, or no longer awaited).
    pub fn answered(&mut self, token: CallToken) -> Option<Call> {
        self.out.remove(&token)
    }

    /// The calls owned by `ctx`, taken out: their answers will never come back.
    pub fn lost_with(&mut self, ctx: ContextId) -> Vec<Call> {
        let tokens: Vec<CallToken> = self
            .out
            .iter()
            .filter(|(_, c)| c.owner == ctx)
            .map(|(t, _)| *t)
            .collect();
        tokens.iter().filter_map(|t| self.out.remove(t)).collect()
    }

    pub fn defer(&mut self, call: Deferred) {
        self.deferred.push(call);
    }

    pub fn take_deferred(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.deferred)
    }

    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }
}
