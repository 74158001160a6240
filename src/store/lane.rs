//! The store's own thread: the job steps and the bulk writes (registrations, releases) of the
//! async face run on it (and the report scans, which then reuse what the writes freed), so
//! sled's write churn stays in one of glibc's per-thread arenas. sled copies a B-tree node on
//! every write and frees the old one later; run from the tokio workers and the blocking pool,
//! that churn spread over as many arenas, each keeping its own high-water mark (a
//! 100,000-image run's RSS climbed from 104 to 160 MB while the jobs ran and the report was
//! written, though the live heap had peaked at registration; on two threads of its own, one
//! for steps and one for bulk writes, it still climbed). On one thread, the memory one write
//! frees is what the next one reuses. Single-record reads and manifest-record updates stay on
//! their callers' threads; other read-only scans run on the blocking pool.
//!
//! Two kinds of work share the thread: a job's step (short) and long work (a registration,
//! a release, a report's scan). Long work lets waiting steps in at its slice points
//! ([`let_steps_in`], after each write batch and every few hundred jobs of a scan), up to
//! [`STEPS_PER_SLICE`] at a time so that the long work itself also moves on under a steady
//! stream of steps.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, PoisonError};

use crate::store::StoreError;

type Work = Box<dyn FnOnce() + Send>;

/// A lane thread's side of its queue, and the long work put aside at a slice point.
type ThreadQueue = (Receiver<(Kind, Work)>, VecDeque<Work>);

/// Which queue a piece of work joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A job's transition: runs next, even at a slice point of long work.
    Step,
    /// A registration or a scan: runs in turn, and lets steps in at its slice points.
    Long,
}

thread_local! {
    /// On a lane's thread: its queue, and the long work taken off the queue at a slice point
    /// (it runs next, in order, once the current long work ends).
    static QUEUE: RefCell<Option<ThreadQueue>> = const { RefCell::new(None) };
}

/// A dedicated thread taking work from a queue; started with the first piece of work, ended
/// once the lane is dropped and its queue is empty.
#[derive(Debug)]
pub struct Lane {
    name: &'static str,
    queue: Mutex<Option<Sender<(Kind, Work)>>>,
}

impl Lane {
    pub fn new(name: &'static str) -> Lane {
        Lane {
            name,
            queue: Mutex::new(None),
        }
    }

    /// Runs `work` on the lane's thread and returns its result. A panic in `work` is an
    /// error for this caller only; the thread goes on with the next piece of work.
    pub async fn run<T: Send + 'static>(
        &self,
        kind: Kind,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(
            kind,
            Box::new(move || {
                // `work` and what it holds are dropped before the answer goes out: a caller
                // that drops its store after the answer can reopen the database at once.
                let out = std::panic::catch_unwind(AssertUnwindSafe(work));
                let _ = tx.send(out.map_err(|panic| panic_text(panic.as_ref())));
            }),
        )?;
        match rx.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(why)) => Err(StoreError::Worker(format!(
                "the store thread panicked: {why}"
            ))),
            Err(_) => Err(StoreError::Worker("the store thread ended".to_owned())),
        }
    }

    /// Queues `work` on the lane's thread without waiting for it (a step: it runs next).
    /// `work` catches its own panics: one that escapes ends the thread, and the next piece of
    /// work starts another.
    pub fn spawn(&self, work: impl FnOnce() + Send + 'static) -> Result<(), StoreError> {
        self.send(Kind::Step, Box::new(work))
    }

    fn send(&self, kind: Kind, work: Work) -> Result<(), StoreError> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let work = match queue.as_ref() {
            Some(tx) => match tx.send((kind, work)) {
                Ok(()) => return Ok(()),
                Err(err) => err.0.1,
            },
            None => work,
        };
        let (tx, rx) = channel::<(Kind, Work)>();
        std::thread::Builder::new()
            .name(self.name.to_owned())
            .spawn(move || serve(rx))
            .map_err(|err| StoreError::Worker(format!("cannot start {}: {err}", self.name)))?;
        tx.send((kind, work))
            .map_err(|_| StoreError::Worker("the store thread ended".to_owned()))?;
        *queue = Some(tx);
        Ok(())
    }
}

/// The lane's thread: long work put aside at a slice point first, then the queue in order.
fn serve(rx: Receiver<(Kind, Work)>) {
    QUEUE.with(|q| *q.borrow_mut() = Some((rx, VecDeque::new())));
    loop {
        // The borrow ends before the work runs: the work may reach a slice point.
        let next = QUEUE.with(|q| {
            let mut q = q.borrow_mut();
            let (rx, put_aside) = q.as_mut()?;
            put_aside
                .pop_front()
                .or_else(|| rx.recv().ok().map(|(_, work)| work))
        });
        match next {
            Some(work) => work(),
            None => return,
        }
    }
}

/// A slice point of long work: on a lane's thread, runs the steps waiting in its queue (long
/// work found there is put aside, in order, for after the current one). Does nothing on any
/// other thread, so the scans it sits in work the same when called directly.
pub fn let_steps_in() {
    for _ in 0..STEPS_PER_SLICE {
        let step = QUEUE.with(|q| {
            let Ok(mut q) = q.try_borrow_mut() else {
                return None;
            };
            let (rx, put_aside) = q.as_mut()?;
            loop {
                match rx.try_recv() {
                    Ok((Kind::Step, work)) => return Some(work),
                    Ok((Kind::Long, work)) => put_aside.push_back(work),
                    Err(_) => return None,
                }
            }
        });
        match step {
            Some(work) => work(),
            None => return,
        }
    }
}

/// Steps run at one slice point at most.
pub const STEPS_PER_SLICE: usize = 64;

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn work_runs_on_one_named_thread_and_a_panic_fails_only_its_caller() {
        let lane = Lane::new("claid-store-test");
        let name = lane
            .run(Kind::Step, || {
                std::thread::current().name().map(str::to_owned)
            })
            .await
            .expect("runs");
        assert_eq!(name.as_deref(), Some("claid-store-test"));
        let first = lane
            .run(Kind::Long, || std::thread::current().id())
            .await
            .expect("runs");
        let panicked = lane.run(Kind::Step, || -> u32 { panic!("boom") }).await;
        match panicked {
            Err(StoreError::Worker(why)) => assert!(why.contains("boom"), "{why}"),
            other => panic!("expected a worker error, got {other:?}"),
        }
        let after = lane
            .run(Kind::Step, || std::thread::current().id())
            .await
            .expect("runs");
        assert_eq!(after, first, "the same thread goes on after a panic");
    }

    /// Long work that reaches slice points lets a step queued after it run before it ends;
    /// long work queued behind it still waits for it, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_step_runs_at_a_slice_point_of_long_work_and_long_work_keeps_its_order() {
        let lane = Arc::new(Lane::new("claid-store-test"));
        let log = Arc::new(Mutex::new(Vec::<&'static str>::new()));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let long = {
            let (lane, log) = (Arc::clone(&lane), Arc::clone(&log));
            tokio::spawn(async move {
                lane.run(Kind::Long, move || {
                    log.lock().expect("log").push("long begins");
                    started_tx.send(()).expect("started");
                    // Slice points until the test says the others are queued.
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while release_rx.try_recv().is_err() && Instant::now() < deadline {
                        let_steps_in();
                        std::thread::yield_now();
                    }
                    let_steps_in();
                    log.lock().expect("log").push("long ends");
                })
                .await
            })
        };
        started_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the long work starts");
        let second_long = {
            let (lane, log) = (Arc::clone(&lane), Arc::clone(&log));
            tokio::spawn(async move {
                lane.run(Kind::Long, move || {
                    log.lock().expect("log").push("second long")
                })
                .await
            })
        };
        let step = {
            let (lane, log) = (Arc::clone(&lane), Arc::clone(&log));
            tokio::spawn(async move {
                lane.run(Kind::Step, move || log.lock().expect("log").push("step"))
                    .await
            })
        };
        step.await.expect("joins").expect("the step runs");
        release_tx.send(()).expect("release");
        long.await.expect("joins").expect("the long work runs");
        second_long
            .await
            .expect("joins")
            .expect("the second long work runs");
        let log = log.lock().expect("log").clone();
        assert_eq!(log, ["long begins", "step", "long ends", "second long"]);
    }

    #[test]
    fn a_slice_point_off_a_lane_does_nothing() {
        let_steps_in();
    }
}
