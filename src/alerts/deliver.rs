//! Delivery of one sink's messages: a bounded queue ([`QUEUE`] messages; a message that finds it
//! full is dropped and counted, never waited for) and one sender task that POSTs them in order.
//! A message that meets a connection error, a timeout, a 408, a 429 or a 5xx is tried again
//! with full-jitter backoff until the sink's `retry_for` has passed, then dropped; another
//! answer outside 2xx drops it at once. Every drop is counted in
//! `claid_hotfolder_alerts_dropped_total{sink,reason}` and logged with the sink's name and the
//! event, never the URL (it is a secret: reqwest's errors are stripped of it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::web::AlertEvent;
use crate::metrics::{Metrics, SinkLabel};

/// Messages a sink holds before new ones are dropped.
pub const QUEUE: usize = 64;
/// Timeout of one POST.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First backoff; it doubles up to [`BACKOFF_CAP`], with full jitter.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// The shortest wait between two tries (full jitter can draw zero).
const BACKOFF_FLOOR: Duration = Duration::from_millis(100);

/// A formatted message on its way.
#[derive(Debug, Clone)]
pub struct Message {
    pub event: AlertEvent,
    /// The JSON body.
    pub body: Bytes,
}

/// The sending side of one sink's queue.
#[derive(Clone)]
pub struct Queue {
    pub name: String,
    sender: mpsc::Sender<Message>,
    /// Messages queued or being delivered (for the count of what a shutdown drops).
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// Queues a message; a full queue drops it (counted, logged), never waits.
    pub fn push(&self, message: Message) {
        let event = message.event;
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.sender.try_send(message).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.metrics.alert_dropped(&self.name, "queue-full", 1);
            warn!(
                sink = %self.name,
                event = event.as_str(),
                queue = QUEUE,
                "Alert dropped: the sink's queue is full"
            );
        }
    }

    /// Messages not yet delivered or dropped.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }
}

/// Where one sink posts, and for how long a message is tried.
pub struct Target {
    pub name: String,
    pub url: reqwest::Url,
    pub retry_for: Duration,
}

/// Starts the sender task of one sink; it ends when every [`Queue`] clone is dropped and the
/// queue is empty.
pub fn spawn(
    target: Target,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
) -> (Queue, tokio::task::JoinHandle<()>) {
    let (sender, mut receiver) = mpsc::channel::<Message>(QUEUE);
    let pending = Arc::new(AtomicUsize::new(0));
    let queue = Queue {
        name: target.name.clone(),
        sender,
        pending: pending.clone(),
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(async move {
        while let Some(message) = receiver.recv().await {
            let outcome = deliver(&client, &target, &message).await;
            match outcome {
                Outcome::Sent => {
                    metrics
                        .alerts_sent
                        .get_or_create(&SinkLabel {
                            sink: target.name.clone(),
                        })
                        .inc();
                }
                Outcome::Dropped { reason, why } => {
                    metrics.alert_dropped(&target.name, reason, 1);
                    warn!(
                        sink = %target.name,
                        event = message.event.as_str(),
                        reason,
                        error = %why,
                        "Alert dropped"
                    );
                }
            }
            pending.fetch_sub(1, Ordering::SeqCst);
        }
    });
    (queue, task)
}

enum Outcome {
    Sent,
    Dropped { reason: &'static str, why: String },
}

/// What one attempt got.
enum Attempt {
    Sent,
    /// Worth another try (after at least the given wait, when the sink asked for one).
    Again {
        why: String,
        after: Option<Duration>,
    },
    /// Not worth another try.
    Refused {
        why: String,
    },
}

async fn deliver(client: &reqwest::Client, target: &Target, message: &Message) -> Outcome {
    let deadline = Instant::now() + target.retry_for;
    let mut failures: u32 = 0;
    loop {
        match attempt(client, &target.url, &message.body).await {
            Attempt::Sent => return Outcome::Sent,
            Attempt::Refused { why } => {
                return Outcome::Dropped {
                    reason: "refused",
                    why,
                };
            }
            Attempt::Again { why, after } => {
                failures += 1;
                let wait =
                    crate::retry::backoff(failures, BACKOFF_BASE, BACKOFF_CAP, &mut rand::rng())
                        .max(BACKOFF_FLOOR)
                        .max(after.unwrap_or_default());
                if Instant::now() + wait > deadline {
                    return Outcome::Dropped {
                        reason: "gave-up",
                        why: format!("{why} (tried {failures} times)"),
                    };
                }
                debug!(sink = %target.name, event = message.event.as_str(), error = %why, wait = ?wait, "Alert not delivered; trying again");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn attempt(client: &reqwest::Client, url: &reqwest::Url, body: &Bytes) -> Attempt {
    let sent = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.clone())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        // `without_url`: the webhook URL is a secret and must not reach a log line.
        Err(err) => {
            return Attempt::Again {
                why: crate::daemon::error_chain(&err.without_url()),
                after: None,
            };
        }
    };
    let status = response.status();
    if status.is_success() {
        return Attempt::Sent;
    }
    let why = format!("the sink answered {status}");
    if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        let after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs.min(BACKOFF_CAP.as_secs())));
        Attempt::Again { why, after }
    } else {
        Attempt::Refused { why }
    }
}
