//! A fake host for the gate's tests and benchmarks: shared data with either real host's
//! compare-and-swap model ([`CasModel`]), a settable clock, a record of every IdP call and the
//! context it was sent for, counters, and two ways to stage a race with another worker (a write
//! that loses, and another worker's write right after one of ours).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::{CallToken, ContextId, DispatchError, Host, SharedData, SharedError};
use crate::metrics::Counter;
use crate::okta::IdpRequest;

/// How a host's shared data treats compare-and-swap values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasModel {
    /// Envoy: CAS 0 writes unconditionally, and a CAS for a key that does not exist yet is
    /// ignored.
    Envoy,
    /// ngx_wasm_module: CAS 0 only creates, and a CAS for a key that does not exist never
    /// matches.
    CreateOnly,
}

/// Another worker's write, staged to run right after one of ours to a name with a prefix.
type AfterWrite = (String, Box<dyn FnOnce(&FakeHost)>);

/// Shared data, a clock, IdP calls and counters, as the gate sees a host.
pub struct FakeHost {
    pub cas: CasModel,
    data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    now: Cell<u64>,
    /// Every call sent: its token and request.
    pub calls: RefCell<Vec<(u32, IdpRequest)>>,
    /// The context each call in `calls` was sent on behalf of.
    callers: RefCell<Vec<ContextId>>,
    next_token: Cell<u32>,
    /// The proxy refuses to send calls.
    pub refuse_dispatch: Cell<bool>,
    /// Shared-data reads so far.
    pub shared_reads: Cell<usize>,
    counters: RefCell<HashMap<String, u64>>,
    gauges: RefCell<HashMap<&'static str, u64>>,
    pub latencies: RefCell<Vec<u64>>,
    /// Writes so far (won or lost).
    pub writes: Cell<usize>,
    /// The next writes (how many) to a name with this prefix lose their race.
    lose_next: RefCell<Option<(String, usize)>>,
    after_write: RefCell<Option<AfterWrite>>,
}

impl SharedData for FakeHost {
    fn host_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared_reads.set(self.shared_reads.get() + 1);
        self.data.borrow().get(key).cloned()
    }

    fn host_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedError> {
        self.writes.set(self.writes.get() + 1);
        if self.take_lost_race(key) {
            // Another worker wrote first: the value stays, its CAS moves on.
            self.next_cas.set(self.next_cas.get() + 1);
            if let Some((_, c)) = self.data.borrow_mut().get_mut(key) {
                *c = self.next_cas.get();
            }
            return Err(SharedError::CasMismatch);
        }
        {
            let mut data = self.data.borrow_mut();
            let current = data.get(key).map(|(_, c)| *c);
            let matches = match self.cas {
                CasModel::CreateOnly => current.unwrap_or(0) == cas,
                CasModel::Envoy => current.is_none() || cas == 0 || current == Some(cas),
            };
            if !matches {
                return Err(SharedError::CasMismatch);
            }
            self.next_cas.set(self.next_cas.get() + 1);
            data.insert(key.to_string(), (value.to_vec(), self.next_cas.get()));
        }
        let staged = self.after_write.borrow_mut().take();
        match staged {
            Some((prefix, other)) if key.starts_with(&prefix) => other(self),
            staged => *self.after_write.borrow_mut() = staged,
        }
        Ok(())
    }
}

impl Host for FakeHost {
    fn dispatch(
        &self,
        caller: ContextId,
        upstream: &str,
        request: &IdpRequest,
        timeout_ms: u64,
    ) -> Result<CallToken, DispatchError> {
        if upstream.is_empty() || timeout_ms == 0 || self.refuse_dispatch.get() {
            return Err(DispatchError);
        }
        self.next_token.set(self.next_token.get() + 1);
        self.calls
            .borrow_mut()
            .push((self.next_token.get(), request.clone()));
        self.callers.borrow_mut().push(caller);
        Ok(CallToken(self.next_token.get()))
    }

    fn count(&self, counter: Counter) {
        *self
            .counters
            .borrow_mut()
            .entry(counter.name())
            .or_default() += 1;
    }

    fn observe_idp_latency(&self, ms: u64) {
        self.latencies.borrow_mut().push(ms);
    }

    fn gauge(&self, gauge: crate::metrics::Gauge, value: u64) {
        self.gauges.borrow_mut().insert(gauge.name(), value);
    }
}

impl FakeHost {
    /// An empty host with `cas`'s shared-data model, its clock at `now_ms`.
    pub fn at(cas: CasModel, now_ms: u64) -> FakeHost {
        FakeHost {
            cas,
            data: RefCell::default(),
            next_cas: Cell::new(0),
            now: Cell::new(now_ms),
            calls: RefCell::default(),
            callers: RefCell::default(),
            next_token: Cell::new(0),
            refuse_dispatch: Cell::new(false),
            shared_reads: Cell::new(0),
            writes: Cell::new(0),
            counters: RefCell::default(),
            gauges: RefCell::default(),
            latencies: RefCell::default(),
            lose_next: RefCell::default(),
            after_write: RefCell::default(),
        }
    }

    pub fn now(&self) -> u64 {
        self.now.get()
    }

    pub fn advance(&self, ms: u64) {
        self.now.set(self.now.get() + ms);
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.borrow().get(name).copied().unwrap_or(0)
    }

    /// A gauge's last value, `None` when it was never set.
    pub fn gauge_value(&self, gauge: crate::metrics::Gauge) -> Option<u64> {
        self.gauges.borrow().get(gauge.name()).copied()
    }

    pub fn call_count(&self) -> usize {
        self.calls.borrow().len()
    }

    /// The last call sent: its token and request. Panics when none was (a test's mistake).
    #[allow(clippy::expect_used)]
    pub fn last_call(&self) -> (u32, IdpRequest) {
        self.calls
            .borrow()
            .last()
            .cloned()
            .expect("a call was dispatched")
    }

    /// The context the last call was sent on behalf of.
    #[allow(clippy::expect_used)]
    pub fn last_caller(&self) -> ContextId {
        self.callers
            .borrow()
            .last()
            .copied()
            .expect("a call was dispatched")
    }

    /// A copy of everything in shared data, to compare before and after.
    pub fn snapshot(&self) -> HashMap<String, (Vec<u8>, u32)> {
        self.data.borrow().clone()
    }

    /// The next write to a name starting with `prefix` loses its race, as if another worker
    /// had written first.
    pub fn lose_next_write_to(&self, prefix: &str) {
        self.lose_next_writes_to(prefix, 1);
    }

    /// The next `n` writes to names starting with `prefix` lose their race.
    pub fn lose_next_writes_to(&self, prefix: &str, n: usize) {
        *self.lose_next.borrow_mut() = (n > 0).then(|| (prefix.to_string(), n));
    }

    /// Right after the next write to a name starting with `prefix`, `other` runs (another
    /// worker acting then).
    pub fn after_next_write_to(&self, prefix: &str, other: impl FnOnce(&FakeHost) + 'static) {
        *self.after_write.borrow_mut() = Some((prefix.to_string(), Box::new(other)));
    }

    fn take_lost_race(&self, key: &str) -> bool {
        let mut lose = self.lose_next.borrow_mut();
        match lose.as_mut() {
            Some((prefix, n)) if key.starts_with(prefix.as_str()) => {
                *n -= 1;
                if *n == 0 {
                    *lose = None;
                }
                true
            }
            _ => false,
        }
    }
}
