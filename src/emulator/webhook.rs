//! The emulator's webhook sender: when an async task or a batch reaches DONE or ERROR, the
//! server hands its result object (the `data` of a poll answer, bare or wrapped) to an
//! [`Outbox`]; one background task POSTs it to the scenario's `webhook_url` with
//! `X-Claid-Hmac-SHA256` = HMAC-SHA256(secret, raw body), hex or base64.
//!
//! The queue is bounded and fed with `try_send`, so request handling never waits for a
//! receiver; what does not fit is counted (`webhooks_overflow`) and lost. Deliveries go out one
//! at a time in completion order, unless a fault says otherwise (drop, duplicate, delay,
//! reorder, forged copy: the decisions are rolled when the task ends, from the scenario's seeded
//! RNG, and carried in a [`Plan`]). Claid's retry policy is not documented; the emulator does
//! not retry, it counts the failure (`webhooks_failed`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderName, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::emulator::scenario::{Scenario, WebhookDigest};
use crate::emulator::stats::{Recorder, Stats};

/// The signature header Claid sends.
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("x-claid-hmac-sha256");
/// Deliveries waiting to be sent; more are counted as overflow and lost.
const QUEUE_CAPACITY: usize = 4096;
/// Longest one POST may take before it counts as failed.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// The key forged deliveries are signed with (never the scenario's secret).
const FORGED_KEY: &[u8] = b"not-the-webhook-secret";

/// HMAC-SHA256 of `body` under `secret`, encoded as `digest` says.
pub fn signature(secret: &[u8], body: &[u8], digest: WebhookDigest) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    match digest {
        WebhookDigest::Hex => hex::encode(bytes),
        WebhookDigest::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
    }
}

/// What the faults do to one delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    /// Never sent.
    pub drop: bool,
    /// A forged copy goes first.
    pub forge: bool,
    /// Sent `webhook_delay` late (outside the queue's order).
    pub delay: bool,
    /// Held until the next delivery was sent.
    pub reorder: bool,
    /// Sent twice.
    pub duplicate: bool,
}

/// One announcement of a finished task or batch.
#[derive(Debug)]
pub struct Delivery {
    /// The exact bytes to POST and sign.
    pub body: Bytes,
    /// The forged variant (status ERROR), present when `plan.forge`.
    pub forged_body: Option<Bytes>,
    pub plan: Plan,
}

/// The sending end of the delivery queue; dropping the last one ends the sender task.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Delivery>,
    recorder: Arc<Recorder>,
}

impl Outbox {
    /// Starts the sender task when the scenario has a webhook URL; it stops when `shutdown` is
    /// cancelled or the outbox is dropped. Must be called inside a tokio runtime.
    pub fn start(
        scenario: &Scenario,
        recorder: Arc<Recorder>,
        shutdown: CancellationToken,
    ) -> Option<Outbox> {
        let url = scenario.webhook_url.as_deref()?;
        let uri = match url.parse::<hyper::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => uri,
            _ => {
                tracing::warn!(
                    url,
                    "Webhook URL is not an http:// URL; the emulator sends no webhooks"
                );
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let sender = Arc::new(Sender {
            client: Client::builder(TokioExecutor::new()).build_http(),
            uri,
            secret: scenario
                .webhook_secret
                .as_ref()
                .map(|s| s.as_bytes().to_vec()),
            digest: scenario.webhook_digest,
            delay: scenario.webhook_delay,
            reorder_hold: scenario.webhook_reorder_hold,
            recorder: Arc::clone(&recorder),
            shutdown,
        });
        tokio::spawn(run(sender, rx));
        Some(Outbox { tx, recorder })
    }

    /// Queues `delivery` without waiting; a full queue loses it (counted).
    pub fn send(&self, delivery: Delivery) {
        if self.tx.try_send(delivery).is_err() {
            self.recorder.update(|s| s.webhooks_overflow += 1);
        }
    }
}

/// Everything one POST needs; shared with the tasks of delayed deliveries.
struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: hyper::Uri,
    /// `None`: deliveries carry no signature header.
    secret: Option<Vec<u8>>,
    digest: WebhookDigest,
    delay: Duration,
    reorder_hold: Duration,
    recorder: Arc<Recorder>,
    /// The emulator's end: stops the loop, delayed deliveries and POSTs in flight.
    shutdown: CancellationToken,
}

/// Sends deliveries in queue order, applying each one's plan.
async fn run(sender: Arc<Sender>, mut rx: mpsc::Receiver<Delivery>) {
    // A reordered delivery waiting for the next one to go out first.
    let mut held: Option<(Bytes, Instant)> = None;
    loop {
        let hold_until = held.as_ref().map(|(_, since)| *since + sender.reorder_hold);
        let delivery = tokio::select! {
            () = sender.shutdown.cancelled() => return,
            () = sleep_until_some(hold_until) => {
                if let Some((body, _)) = held.take() {
                    sender.genuine(body).await;
                }
                continue;
            }
            next = rx.recv() => match next {
                Some(delivery) => delivery,
                None => return,
            },
        };
        let Delivery {
            body,
            forged_body,
            plan,
        } = delivery;
        if plan.drop {
            sender.recorder.update(|s| s.webhooks_dropped += 1);
            continue;
        }
        if let Some(forged) = forged_body.filter(|_| plan.forge) {
            sender.forged(forged).await;
        }
        if plan.delay {
            sender.recorder.update(|s| s.webhooks_delayed += 1);
            let late = Arc::clone(&sender);
            tokio::spawn(async move {
                tokio::select! {
                    () = late.shutdown.cancelled() => {}
                    () = tokio::time::sleep(late.delay) => late.genuine(body).await,
                }
            });
            continue;
        }
        if plan.reorder && held.is_none() {
            sender.recorder.update(|s| s.webhooks_reordered += 1);
            held = Some((body, Instant::now()));
            continue;
        }
        if plan.duplicate {
            sender.genuine(body.clone()).await;
            sender.recorder.update(|s| s.webhooks_duplicated += 1);
        }
        sender.genuine(body).await;
        if let Some((body, _)) = held.take() {
            sender.genuine(body).await;
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Sender {
    /// Sends `body` signed with the secret; counts it sent or failed.
    async fn genuine(&self, body: Bytes) {
        let signature = self
            .secret
            .as_ref()
            .map(|secret| signature(secret, &body, self.digest));
        let ok = self.post(body, signature).await;
        self.recorder.update(|s: &mut Stats| {
            if ok {
                s.webhooks_sent += 1;
            } else {
                s.webhooks_failed += 1;
            }
        });
    }

    /// Sends `body` signed with a wrong key; counts it forged (and accepted, if answered 2xx).
    async fn forged(&self, body: Bytes) {
        let signature = signature(FORGED_KEY, &body, self.digest);
        let accepted = self.post(body, Some(signature)).await;
        self.recorder.update(|s| {
            s.webhooks_forged += 1;
            if accepted {
                s.webhooks_forged_accepted += 1;
            }
        });
    }

    /// One POST; true when answered 2xx.
    async fn post(&self, body: Bytes, signature: Option<String>) -> bool {
        let mut request = hyper::Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, "claid-hotfolder-emulator-webhook");
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        let request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(err) => {
                tracing::warn!(error = %err, "Cannot build a webhook request");
                return false;
            }
        };
        let answer = tokio::select! {
            () = self.shutdown.cancelled() => return false,
            answer = tokio::time::timeout(POST_TIMEOUT, self.client.request(request)) => answer,
        };
        match answer {
            Ok(Ok(response)) => {
                let ok = response.status().is_success();
                if !ok {
                    tracing::debug!(status = %response.status(), "Webhook refused");
                }
                ok
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "Webhook delivery failed");
                false
            }
            Err(_) => {
                tracing::debug!("Webhook delivery timed out");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2.
    #[test]
    fn signatures_match_the_rfc_4231_vector_in_both_encodings() {
        let key = b"Jefe";
        let data = b"what do ya want for nothing?";
        assert_eq!(
            signature(key, data, WebhookDigest::Hex),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            signature(key, data, WebhookDigest::Base64),
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
        );
    }
}
