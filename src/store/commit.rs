//! Group commit for the store's durability points: a write is durable once a flush that
//! *started after it* has completed, so jobs that reach a durability point together share one
//! flush (one `fsync`) instead of paying one each. The one implementation, async: callers
//! wait without blocking the runtime; flushes run on one long-lived thread of their own.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::store::StoreError;
use crate::store::lane::Lane;

/// Shared by every clone of a `Store`.
#[derive(Debug)]
pub struct GroupCommit {
    state: Mutex<GateState>,
    /// Wakes every waiter when a flush ends.
    flushed: tokio::sync::Notify,
    /// The flush thread, started with the first flush; it ends when this gate is dropped.
    flusher: Lane,
}

impl Default for GroupCommit {
    fn default() -> GroupCommit {
        GroupCommit {
            state: Mutex::default(),
            flushed: tokio::sync::Notify::new(),
            flusher: Lane::new("claid-store-flush"),
        }
    }
}

#[derive(Debug, Default)]
struct GateState {
    /// Flushes started so far; the running one, if any, is number `started`.
    started: u64,
    /// The last flush that completed successfully.
    completed: u64,
    running: bool,
    /// The last flush that failed, and why: it fails the waiters whose writes it had to cover.
    failed: Option<(u64, String)>,
}

impl GroupCommit {
    /// Returns once everything written before the call is on disk. A failed flush fails its
    /// waiters; the next caller starts a new one.
    pub async fn durable(self: &Arc<Self>, db: &sled::Db) -> Result<(), StoreError> {
        // A flush already running may have started before our write: we need the next one.
        let needed = self.lock().started + 1;
        loop {
            let flushed = self.flushed.notified();
            tokio::pin!(flushed);
            // Registered before the state is read, so a flush ending in between still wakes us.
            flushed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.completed >= needed {
                    return Ok(());
                }
                if let Some((n, why)) = &state.failed
                    && *n >= needed
                {
                    return Err(StoreError::Flush(why.clone()));
                }
                if !state.running {
                    state.running = true;
                    state.started += 1;
                    let this = state.started;
                    drop(state);
                    self.start_flush(db.clone(), this);
                }
            }
            flushed.await;
        }
    }

    /// Flushes completed so far by this process: a diagnostic, and how tests see that a write
    /// was made durable.
    pub fn completed(&self) -> u64 {
        self.lock().completed
    }

    /// Runs flush `this` on the flush thread: never queued behind other work that may itself
    /// be waiting for it, and never stranded by a waiter that goes away. One thread
    /// for every flush, not one per flush: a 100,000-image run flushes tens of thousands of
    /// times, and sled allocates while it flushes (a new thread may take any of glibc's
    /// arenas; this one keeps to one).
    fn start_flush(self: &Arc<Self>, db: sled::Db, this: u64) {
        let gate: Weak<GroupCommit> = Arc::downgrade(self);
        let sent = self.flusher.spawn(move || {
            // A panic in sled fails this flush's waiters instead of leaving them (and every
            // later flush) waiting for ever.
            let res = std::panic::catch_unwind(AssertUnwindSafe(|| db.flush()));
            // Let go of the database before any waiter can return: a caller that drops its
            // store after a durable write can reopen it at once.
            drop(db);
            let Some(gate) = gate.upgrade() else {
                return;
            };
            let err = match res {
                Ok(Ok(_)) => None,
                Ok(Err(err)) => Some(super::DbCause(&err).to_string()),
                Err(_) => Some("the flush panicked".to_owned()),
            };
            gate.finish(this, err);
        });
        if let Err(err) = sent {
            self.finish(this, Some(err.to_string()));
        }
    }

    fn finish(&self, this: u64, err: Option<String>) {
        {
            let mut state = self.lock();
            state.running = false;
            match err {
                None => state.completed = this,
                Some(why) => state.failed = Some((this, why)),
            }
        }
        self.flushed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
