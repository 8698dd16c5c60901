//! Deciding when to terminate running JavaScript, and whose it is.
//!
//! The JS thread cannot read the channel while user code spins, so cancels
//! are also seen by the control thread, which may terminate V8 execution through
//! a thread-safe isolate handle. Both threads meet here, under one lock, so a
//! termination can only be requested while the JS thread is inside V8 and is
//! always cleared when it leaves (a stale termination would otherwise kill the
//! next, innocent invocation).
//!
//! During the synchronous part of a call the running invocation is known
//! exactly. During an event-loop turn (timers, promise reactions) it is not,
//! so the control thread asks V8 for an interrupt, and the interrupt reads the
//! invocation id that setup.js keeps in the async context of the code that
//! is running at that instant: only a cancelled invocation's own code is ever
//! terminated.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an event-loop turn may run while some cancelled invocation
/// exists before the control thread looks at whose code it is.
pub const PROBE_AFTER: Duration = Duration::from_millis(20);

/// Cancelled ids remembered, so that their leftover timers can still be
/// stopped when they spin after the cancel was answered.
const REMEMBERED_CANCELS: usize = 1024;

/// How long a cancelled id is remembered. Only while some are remembered
/// does the control thread keep checking on the JS thread: an idle worker
/// costs no wake-ups.
const REMEMBER_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    Idle,
    /// Inside the synchronous part of one invocation.
    Call(u64),
    /// Inside an event-loop turn: timers, promise reactions, op callbacks.
    Loop,
}

/// Why V8 execution was terminated, as learned by the JS thread on exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminated {
    /// The synchronous part of this invocation; nothing else was affected.
    Call(u64),
    /// Code of this cancelled invocation inside an event-loop turn; V8 may
    /// have dropped other invocations' queued continuations with it.
    Loop(u64),
}

struct State {
    running: Running,
    since: Instant,
    terminated: Option<Terminated>,
    cancelled: HashSet<u64>,
    cancel_order: VecDeque<(u64, Instant)>,
    probe_pending: bool,
}

pub struct Interrupt {
    state: Mutex<State>,
    /// Terminates V8 execution from any thread.
    terminate: Box<dyn Fn() + Send + Sync>,
    /// Asks V8 to run [`Interrupt::probe`] on the JS thread.
    request_probe: Box<dyn Fn(Arc<Interrupt>) + Send + Sync>,
}

impl Interrupt {
    pub fn new(
        terminate: Box<dyn Fn() + Send + Sync>,
        request_probe: Box<dyn Fn(Arc<Interrupt>) + Send + Sync>,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                running: Running::Idle,
                since: Instant::now(),
                terminated: None,
                cancelled: HashSet::new(),
                cancel_order: VecDeque::new(),
                probe_pending: false,
            }),
            terminate,
            request_probe,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enter(&self, running: Running) {
        let mut s = self.lock();
        s.running = running;
        s.since = Instant::now();
    }

    /// Leaves V8. `Some` if a termination was requested meanwhile: the caller
    /// must cancel it before running any more JavaScript.
    #[must_use]
    pub fn exit(&self) -> Option<Terminated> {
        let mut s = self.lock();
        s.running = Running::Idle;
        s.terminated.take()
    }

    /// Called by the control thread when a cancel arrives.
    pub fn cancel_seen(self: &Arc<Self>, request_id: u64) {
        {
            let mut s = self.lock();
            if s.cancelled.insert(request_id) {
                s.cancel_order.push_back((request_id, Instant::now()));
                if s.cancel_order.len() > REMEMBERED_CANCELS {
                    if let Some((old, _)) = s.cancel_order.pop_front() {
                        s.cancelled.remove(&old);
                    }
                }
            }
        }
        self.tick();
    }

    /// Whether the control thread must keep checking (some cancelled
    /// invocation's code may still run); forgets old cancels.
    pub fn watching(&self) -> bool {
        let mut s = self.lock();
        while let Some((id, at)) = s.cancel_order.front().copied() {
            if at.elapsed() < REMEMBER_FOR {
                break;
            }
            s.cancel_order.pop_front();
            s.cancelled.remove(&id);
        }
        !s.cancelled.is_empty()
    }

    /// Called by the control thread periodically (and on every cancel).
    pub fn tick(self: &Arc<Self>) {
        let mut s = self.lock();
        if s.terminated.is_some() {
            return;
        }
        match s.running {
            Running::Idle => {}
            Running::Call(id) => {
                if s.cancelled.contains(&id) {
                    s.terminated = Some(Terminated::Call(id));
                    (self.terminate)();
                }
            }
            Running::Loop => {
                if !s.cancelled.is_empty() && !s.probe_pending && s.since.elapsed() >= PROBE_AFTER {
                    s.probe_pending = true;
                    drop(s);
                    (self.request_probe)(self.clone());
                }
            }
        }
    }

    /// Runs on the JS thread inside a V8 interrupt, with the id found in the
    /// async context of the code running at that instant.
    pub fn probe(&self, running_request: Option<u64>) {
        let mut s = self.lock();
        s.probe_pending = false;
        let Some(id) = running_request else { return };
        if s.terminated.is_none() && s.running != Running::Idle && s.cancelled.contains(&id) {
            s.terminated = Some(match s.running {
                Running::Call(call) if call == id => Terminated::Call(id),
                _ => Terminated::Loop(id),
            });
            (self.terminate)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counts {
        terminated: Arc<AtomicUsize>,
        probes: Arc<AtomicUsize>,
    }

    fn interrupt() -> (Counts, Arc<Interrupt>) {
        let terminated = Arc::new(AtomicUsize::new(0));
        let probes = Arc::new(AtomicUsize::new(0));
        let (t, p) = (terminated.clone(), probes.clone());
        let i = Interrupt::new(
            Box::new(move || {
                t.fetch_add(1, Ordering::SeqCst);
            }),
            Box::new(move |_| {
                p.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (Counts { terminated, probes }, Arc::new(i))
    }

    #[test]
    fn terminates_only_the_cancelled_synchronous_call() {
        let (n, i) = interrupt();
        i.cancel_seen(7);
        i.enter(Running::Call(3));
        i.tick();
        assert_eq!(i.exit(), None);
        i.enter(Running::Call(7));
        i.tick();
        assert_eq!(i.exit(), Some(Terminated::Call(7)));
        assert_eq!(n.terminated.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn never_terminates_while_idle() {
        let (n, i) = interrupt();
        i.cancel_seen(1);
        i.tick();
        assert_eq!(n.terminated.load(Ordering::SeqCst), 0);
        assert_eq!(n.probes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_long_loop_turn_is_probed_and_only_a_cancelled_owner_terminated() {
        let (n, i) = interrupt();
        i.cancel_seen(2);
        i.enter(Running::Loop);
        i.tick();
        assert_eq!(n.probes.load(Ordering::SeqCst), 0, "probed too early");
        std::thread::sleep(PROBE_AFTER + Duration::from_millis(5));
        i.tick();
        i.tick();
        assert_eq!(n.probes.load(Ordering::SeqCst), 1, "one probe at a time");
        // The spinning code belongs to invocation 5, which is legitimately busy.
        i.probe(Some(5));
        assert_eq!(n.terminated.load(Ordering::SeqCst), 0);
        i.tick();
        assert_eq!(n.probes.load(Ordering::SeqCst), 2);
        i.probe(Some(2));
        assert_eq!(n.terminated.load(Ordering::SeqCst), 1);
        assert_eq!(i.exit(), Some(Terminated::Loop(2)));
    }

    #[test]
    fn a_probe_landing_after_the_turn_ended_does_nothing() {
        let (n, i) = interrupt();
        i.cancel_seen(2);
        i.enter(Running::Loop);
        std::thread::sleep(PROBE_AFTER + Duration::from_millis(5));
        i.tick();
        assert_eq!(i.exit(), None);
        i.probe(Some(2));
        assert_eq!(n.terminated.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn cancelled_ids_are_bounded() {
        let (_, i) = interrupt();
        for id in 0..(REMEMBERED_CANCELS as u64 * 3) {
            i.cancel_seen(id);
        }
        assert_eq!(i.lock().cancelled.len(), REMEMBERED_CANCELS);
    }
}
