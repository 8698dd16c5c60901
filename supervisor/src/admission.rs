//! Admission control: a function runs at most `max_concurrency` invocations
//! at once, a few more may wait briefly, and beyond that callers get 429 at
//! once instead of a timeout. A global cap protects the supervisor itself.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    #[error("function '{id}' is at its concurrency limit ({limit} in flight, {queued} waiting)")]
    Function { id: String, limit: u32, queued: u32 },
    #[error("the supervisor is at its limit of {0} invocations in flight")]
    Global(u32),
}

pub struct Admission {
    id: String,
    permits: Arc<Semaphore>,
    limit: AtomicU32,
    queued: AtomicU32,
    queue_depth: u32,
    queue_wait: Duration,
}

/// Held for the duration of one invocation.
pub struct Ticket {
    _function: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(id: &str, limit: u32, queue_depth: u32, queue_wait: Duration) -> Self {
        Self {
            id: id.to_owned(),
            permits: Arc::new(Semaphore::new(limit as usize)),
            limit: AtomicU32::new(limit),
            queued: AtomicU32::new(0),
            queue_depth,
            queue_wait,
        }
    }

    /// A redeploy may change the limit; permits in use stay valid.
    pub fn set_limit(&self, limit: u32) {
        let old = self.limit.swap(limit, Ordering::SeqCst);
        if limit > old {
            self.permits.add_permits((limit - old) as usize);
        } else if limit < old {
            let permits = self.permits.clone();
            let shrink = old - limit;
            // Taken as they come free, so the limit drops once in-flight work ends.
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(shrink).await {
                    p.forget();
                }
            });
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.limit
            .load(Ordering::SeqCst)
            .saturating_sub(self.permits.available_permits() as u32)
    }

    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::SeqCst)
    }

    pub async fn admit(
        &self,
        global: &Arc<Semaphore>,
        global_limit: u32,
    ) -> Result<Ticket, Rejected> {
        let global = global
            .clone()
            .try_acquire_owned()
            .map_err(|_| Rejected::Global(global_limit))?;
        let reject = || Rejected::Function {
            id: self.id.clone(),
            limit: self.limit.load(Ordering::SeqCst),
            queued: self.queued.load(Ordering::SeqCst),
        };
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(Ticket {
                _function: p,
                _global: global,
            });
        }
        // A short queue absorbs bursts; past it, answer at once.
        let waiting = self.queued.fetch_add(1, Ordering::SeqCst);
        let _leave = Leave(&self.queued);
        if waiting >= self.queue_depth {
            return Err(reject());
        }
        match tokio::time::timeout(self.queue_wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Ticket {
                _function: p,
                _global: global,
            }),
            _ => Err(reject()),
        }
    }
}

struct Leave<'a>(&'a AtomicU32);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_the_limit_and_queue_is_rejected_quickly() {
        let global = Arc::new(Semaphore::new(100));
        let a = Admission::new("f", 2, 1, Duration::from_millis(50));
        let t1 = a.admit(&global, 100).await.unwrap();
        let _t2 = a.admit(&global, 100).await.unwrap();
        assert_eq!(a.in_flight(), 2);
        let started = std::time::Instant::now();
        let queued = a.admit(&global, 100);
        let rejected = a.admit(&global, 100);
        let (q, r) = tokio::join!(queued, rejected);
        assert!(
            matches!(r, Err(Rejected::Function { .. })),
            "queue of 1 is full"
        );
        assert!(q.is_err(), "waited 50 ms and gave up");
        assert!(started.elapsed() < Duration::from_millis(500));
        drop(t1);
        assert!(a.admit(&global, 100).await.is_ok());
    }

    #[tokio::test]
    async fn the_global_cap_applies_across_functions() {
        let global = Arc::new(Semaphore::new(1));
        let a = Admission::new("a", 10, 0, Duration::ZERO);
        let b = Admission::new("b", 10, 0, Duration::ZERO);
        let _t = a.admit(&global, 1).await.unwrap();
        assert_eq!(b.admit(&global, 1).await.err(), Some(Rejected::Global(1)));
    }
}
