//! Deciding when to terminate running JavaScript.
//!
//! The JS thread cannot read the channel while user code spins, so cancels
//! are also seen by the I/O thread, which may terminate V8 execution through
//! a thread-safe isolate handle. Both threads meet here, under one lock, so a
//! termination can only be requested while the JS thread is inside V8 and is
//! always cleared when it leaves (a stale termination would otherwise kill the
//! next, innocent invocation).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the JS thread may stay inside one event-loop turn, while a
/// cancelled invocation waits, before it is assumed to be that invocation
/// spinning after an `await`.
pub const LOOP_STUCK_AFTER: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    Idle,
    /// Inside the synchronous part of one invocation.
    Call(u64),
    /// Inside an event-loop turn: timers, promise reactions, op callbacks.
    Loop,
}

struct State {
    running: Running,
    since: Instant,
    terminate_requested: bool,
    /// Cancels the I/O thread has seen that the JS thread has not handled.
    pending_cancels: HashSet<u64>,
}

pub struct Interrupt {
    state: Mutex<State>,
    terminate: Box<dyn Fn() + Send + Sync>,
}

/// What the I/O thread should do about a pending cancel.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The JS thread handled it (or will): nothing to do.
    Handled,
    /// Terminated the running JavaScript.
    Terminated,
    /// Not yet decidable; check again shortly.
    Wait,
}

impl Interrupt {
    pub fn new(terminate: Box<dyn Fn() + Send + Sync>) -> Self {
        Self {
            state: Mutex::new(State {
                running: Running::Idle,
                since: Instant::now(),
                terminate_requested: false,
                pending_cancels: HashSet::new(),
            }),
            terminate,
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

    /// Leaves V8. True if a termination was requested meanwhile: the caller
    /// must cancel it before running any more JavaScript.
    #[must_use]
    pub fn exit(&self) -> bool {
        let mut s = self.lock();
        s.running = Running::Idle;
        std::mem::take(&mut s.terminate_requested)
    }

    /// Called by the I/O thread when a cancel arrives.
    pub fn cancel_seen(&self, request_id: u64) {
        self.lock().pending_cancels.insert(request_id);
    }

    /// Called by the JS thread once it processed the cancel message.
    pub fn cancel_handled(&self, request_id: u64) {
        self.lock().pending_cancels.remove(&request_id);
    }

    /// Called repeatedly by the I/O thread until it returns something other
    /// than `Wait`.
    pub fn check_cancel(&self, request_id: u64) -> Verdict {
        let mut s = self.lock();
        if !s.pending_cancels.contains(&request_id) {
            return Verdict::Handled;
        }
        let stuck = match s.running {
            Running::Call(id) => id == request_id,
            Running::Loop => s.since.elapsed() >= LOOP_STUCK_AFTER,
            Running::Idle => false,
        };
        if stuck && !s.terminate_requested {
            s.terminate_requested = true;
            (self.terminate)();
            return Verdict::Terminated;
        }
        Verdict::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn counting() -> (Arc<AtomicUsize>, Interrupt) {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let i = Interrupt::new(Box::new(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        }));
        (n, i)
    }

    #[test]
    fn terminates_only_the_cancelled_synchronous_call() {
        let (n, i) = counting();
        i.cancel_seen(7);
        i.enter(Running::Call(3));
        assert_eq!(i.check_cancel(7), Verdict::Wait);
        assert!(!i.exit());
        i.enter(Running::Call(7));
        assert_eq!(i.check_cancel(7), Verdict::Terminated);
        assert!(i.exit(), "the JS thread must learn it has to cancel");
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn never_terminates_while_idle_or_after_handling() {
        let (n, i) = counting();
        i.cancel_seen(1);
        assert_eq!(i.check_cancel(1), Verdict::Wait);
        i.cancel_handled(1);
        assert_eq!(i.check_cancel(1), Verdict::Handled);
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_long_event_loop_turn_is_terminated() {
        let (n, i) = counting();
        i.cancel_seen(2);
        i.enter(Running::Loop);
        assert_eq!(i.check_cancel(2), Verdict::Wait);
        std::thread::sleep(LOOP_STUCK_AFTER + Duration::from_millis(20));
        assert_eq!(i.check_cancel(2), Verdict::Terminated);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
