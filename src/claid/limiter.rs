//! The one rate limiter shared by every Claid API call (submit, poll, upload, probe): a
//! sliding-window log of the calls it admitted, checked against the per-second and the
//! per-minute quota, plus a gate and a cap steered by the server's `RateLimit-*` headers.
//! Runs on tokio time so tests can pause it.
//!
//! # The log
//!
//! The log keeps the instants of the last `rpm` admissions, and of those only the ones younger
//! than [`LOG_HORIZON`] (two minute windows): its memory is bounded by the quota and by the
//! traffic of two minutes, never by how many calls a drop makes (an account with a huge quota
//! sending 100,000 calls kept all of them, 1.6 MB, before).
//! A call is admitted at `t` only if fewer than `rps` admissions lie in
//! `(t - 1 s - JITTER_MARGIN, t]` and fewer than `rpm` in `(t - 60 s - JITTER_MARGIN, t]`.
//! So any `rps + 1` admissions span at least `1 s +` [`JITTER_MARGIN`], and any `rpm + 1` at
//! least `60 s +` [`JITTER_MARGIN`]; within that, calls go as soon as they come. A drop smaller
//! than the minute quota goes out in bursts of `rps` every `1 s + JITTER_MARGIN` until the
//! minute's quota is spent (120 calls at 4 rps / 120 rpm: the last leaves 30.45 s after the
//! first), where governor's refilling quotas (this module until issue 12) let the minute's
//! quota trickle back at `rpm / 60` per second after a burst of `rps` and took twice as long.
//!
//! # Why the log is safe against sliding and fixed server windows
//!
//! The server counts a request when it arrives: its admission instant plus a network delay.
//! - A sliding-window server refuses a request when it has already counted `limit` requests in
//!   the window's length before it, so it refuses only if `limit + 1` arrivals fall within one
//!   window length. Any `limit + 1` admissions span at least `length + JITTER_MARGIN`; as long
//!   as the delays of two requests differ by less than [`JITTER_MARGIN`], their arrivals span
//!   more than `length`. Never refused.
//! - A fixed-window server counts from one boundary to the next and forgets at the boundary.
//!   To refuse, it needs `limit + 1` arrivals inside one fixed window, which is a span shorter
//!   than the window's length: the same thing the argument above rules out, wherever the
//!   boundaries lie. So the log needs neither the server's clock nor its boundaries.
//!
//! A larger spread of delays than the margin (a cold TLS handshake ahead of calls on warm
//! connections) is caught by the server's own word: its `RateLimit-Remaining: 0` answer closes
//! the gate from the moment the answer arrives, which is after the server counted the call.
//!
//! # The server's word
//!
//! Every answer's headers are handed to [`Limiter::observe`]:
//! - a 429, or `RateLimit-Remaining <= 0`, closes the gate for everyone for `RateLimit-Reset`
//!   ([`Limiter::block_for`]);
//! - `RateLimit-Remaining` lower than what the log has left (another client spends the same
//!   key) caps the limiter: at most that many more calls until `RateLimit-Reset` has passed.
//!   Caps only tighten until they expire, so an answer that was overtaken by later ones cannot
//!   loosen them;
//! - the quota policies (`RateLimit-Limit: 120, 120;w=60, 4;w=1`, or `RateLimit-Policy`) lower
//!   the per-second and per-minute quotas at once when the account allows less than the config
//!   says, and raise them again (never above the config) once every answer has announced more
//!   for a minute ([`Limiter::learn`]).
//!
//! Callers are admitted in the order they asked (a fair queue): only the first in line sleeps
//! for its slot.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Longest pause a `RateLimit-Reset` header may impose; a bogus huge value must not stall the
/// daemon for hours (the longest documented window is 60 s).
pub const MAX_RESET: Duration = Duration::from_secs(120);

/// A closure of the gate this long or longer is told (a WARN, at most once a minute) when a
/// call waits for it: one that ends a run, with nothing more to send, is not.
const LONG_BLOCK: Duration = Duration::from_secs(10);

/// Tells a closure of the gate of `wait` ([`LONG_BLOCK`] or more).
fn tell_long_block(wait: Duration) {
    tracing::warn!(
        wait_s = wait.as_secs(),
        "Claid says no request is left for a while (429, or RateLimit-Remaining: 0 with RateLimit-Reset); every call waits (a Reset past 120 s is cut to 120 s); if this goes on, check the account's limits with Claid or lower api.requests_per_minute"
    );
}

/// Pause used after a 429 or `Remaining <= 0` when the server sent no usable `RateLimit-Reset`.
pub const DEFAULT_RESET: Duration = Duration::from_secs(1);

/// How much each window is widened beyond its length: the largest difference in network delay
/// between two calls that the log alone absorbs (see the module doc). 50 ms covers calls on
/// warm connections over a continent; it costs 5% of the per-second rate.
pub const JITTER_MARGIN: Duration = Duration::from_millis(50);

/// Length of the per-second window.
pub const SECOND_WINDOW: Duration = Duration::from_secs(1);

/// Length of the per-minute window.
pub const MINUTE_WINDOW: Duration = Duration::from_secs(60);

/// How long the log keeps an admission: two minute windows. An admission older than one
/// window ([`MINUTE_WINDOW`] + [`JITTER_MARGIN`]) binds no later call; the second window is
/// what [`Limiter::observe`] needs to judge an answer whose call went up to a window ago (an
/// answer older than that sets no cap).
pub const LOG_HORIZON: Duration = MINUTE_WINDOW
    .saturating_add(JITTER_MARGIN)
    .saturating_mul(2);

/// How long one `acquire` was made to wait by the log, the cap and the gate: zero when it went
/// straight through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waited(pub Duration);

/// A slot the limiter gave a call: how long it asked the caller to wait, and the instant the
/// admission was logged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub waited: Waited,
    pub at: Instant,
}

/// What one answer's rate-limit headers said, for [`Limiter::observe`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerWord {
    /// The answer was a 429.
    pub rate_limited: bool,
    /// `RateLimit-Remaining` (Claid sends `-1` once exceeded); `None` when absent.
    pub remaining: Option<i64>,
    /// `RateLimit-Reset` (or `Retry-After`); `None` when absent or unusable.
    pub reset: Option<Duration>,
}

/// The shared limiter. Cloned behind an `Arc` by [`super::Client`].
pub struct Limiter {
    /// Callers wait here for their turn, first come first served (tokio's mutex is fair): only
    /// the holder sleeps for a slot, so a burst of callers is admitted in the order it asked.
    /// Released when `acquire` returns (or its future is dropped).
    turn: tokio::sync::Mutex<()>,
    /// The log, the gate and the cap. A std mutex: held only to read or update them, never
    /// across an await.
    state: Mutex<State>,
    /// Calls per second window: `rps`, at most `rpm` (a higher `rps` could never bind);
    /// lowered to the server's own quota when it announces a lower one ([`Limiter::learn`]).
    per_second: AtomicUsize,
    /// Calls per minute window; also the most instants the log holds. Lowered as `per_second`.
    per_minute: AtomicUsize,
    /// The config's quotas (per second, per minute): never exceeded, whatever the server says.
    configured: (usize, usize),
}

/// What the limiter knows.
#[derive(Debug, Default)]
struct State {
    /// Admission instants, oldest first; at most `per_minute`, none older than [`LOG_HORIZON`].
    admitted: VecDeque<Instant>,
    /// Until when nobody may call: set from `RateLimit-Reset` after a 429 or
    /// `RateLimit-Remaining <= 0`. Never shortened.
    blocked_until: Option<Instant>,
    /// The server has fewer calls left than the log thinks.
    cap: Option<Cap>,
    /// Higher quotas (at most the config's) every answer has announced since then: applied
    /// once they have been announced for [`RAISE_AFTER`] without a lower one in between.
    raise: Option<(Instant, (usize, usize))>,
    /// When a long closure was last told (at most one WARN a minute).
    long_block_told: Option<Instant>,
}

/// How long the server must keep announcing higher quotas (an account whose plan was raised)
/// before the limiter follows: a full minute window and its margin, so that one answer from a
/// differently limited endpoint or an overtaken answer does not loosen it.
pub const RAISE_AFTER: Duration = Duration::from_secs(61);

/// What [`Limiter::learn`] changed: the quotas now in force, per second and per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The server allows less than the quotas in force.
    Lowered(usize, usize),
    /// The server has allowed more (up to the config's) for [`RAISE_AFTER`].
    Raised(usize, usize),
}

/// At most `left` more admissions before `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cap {
    left: usize,
    until: Instant,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("per_second", &self.per_second.load(Ordering::Relaxed))
            .field("per_minute", &self.per_minute.load(Ordering::Relaxed))
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    pub fn new(rps: NonZeroU32, rpm: NonZeroU32) -> Limiter {
        let per_minute = usize::try_from(rpm.get()).unwrap_or(usize::MAX);
        let per_second = usize::try_from(rps.get())
            .unwrap_or(usize::MAX)
            .min(per_minute);
        Limiter {
            turn: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                admitted: VecDeque::with_capacity(per_minute.min(1024)),
                ..State::default()
            }),
            per_second: AtomicUsize::new(per_second),
            per_minute: AtomicUsize::new(per_minute),
            configured: (per_second, per_minute),
        }
    }

    /// The quotas in force: (per second, per minute).
    pub fn quotas(&self) -> (usize, usize) {
        (
            self.per_second.load(Ordering::Relaxed),
            self.per_minute.load(Ordering::Relaxed),
        )
    }

    /// Takes in the server's quota policies (`RateLimit-Limit: 120, 120;w=60, 4;w=1`, or
    /// `RateLimit-Policy: 120;w=60, 4;w=1`). A one-second or one-minute quota lower than the
    /// one in force replaces it at once (the account allows less than the config says, and
    /// sending faster would only earn 429s). Higher ones (an account whose plan was raised) are
    /// followed, never above the config, once every answer has announced them for
    /// [`RAISE_AFTER`]. Returns what changed.
    pub fn learn(&self, policies: &str) -> Option<Learned> {
        let (mut per_second, mut per_minute) = (None, None);
        for item in policies.split(',') {
            let mut parts = item.split(';').map(str::trim);
            let Some(Ok(limit)) = parts.next().map(str::parse::<usize>) else {
                continue;
            };
            let window =
                parts.find_map(|p| p.strip_prefix("w=").and_then(|w| w.parse::<u64>().ok()));
            // A quota of 0 is no quota to keep to (a misconfigured gateway, not an account).
            match window {
                _ if limit == 0 => {}
                Some(1) => per_second = Some(limit),
                Some(60) => per_minute = Some(limit),
                _ => {}
            }
        }
        let current = self.quotas();
        let (configured_s, configured_m) = self.configured;
        let minute = per_minute.map_or(current.1, |m| m.min(configured_m));
        // A per-second quota above the per-minute one could never bind.
        let second = per_second
            .map_or(current.0, |s| s.min(configured_s))
            .min(minute);
        let mut state = self.lock();
        if second < current.0 || minute < current.1 {
            // Lower at once, each quota only downwards.
            state.raise = None;
            let lowered = (second.min(current.0), minute.min(current.1));
            self.per_second.store(lowered.0, Ordering::Relaxed);
            self.per_minute.store(lowered.1, Ordering::Relaxed);
            return Some(Learned::Lowered(lowered.0, lowered.1));
        }
        if (second, minute) == current {
            state.raise = None;
            return None;
        }
        let now = Instant::now();
        match state.raise {
            Some((since, to)) if to == (second, minute) => {
                if now.saturating_duration_since(since) < RAISE_AFTER {
                    return None;
                }
                state.raise = None;
                self.per_second.store(second, Ordering::Relaxed);
                self.per_minute.store(minute, Ordering::Relaxed);
                Some(Learned::Raised(second, minute))
            }
            _ => {
                state.raise = Some((now, (second, minute)));
                None
            }
        }
    }

    /// Waits for this caller's turn, then until the gate is open, the cap allows a call and
    /// the log has room in both windows; then takes the slot. Returns how long the limiter
    /// asked this caller to wait: from the call to the slot its rules gave it, not the time it
    /// took (a busy machine wakes timers late, and that is no rate limit).
    pub async fn acquire(&self) -> Waited {
        self.acquire_slot().await.waited
    }

    /// [`Limiter::acquire`], with the instant the slot was logged at (for [`Limiter::release`]
    /// and [`Limiter::observe`]).
    pub async fn acquire_slot(&self) -> Slot {
        let called = Instant::now();
        let _turn = self.turn.lock().await;
        loop {
            let now = Instant::now();
            let (ready, told) = {
                let mut state = self.lock();
                let (per_second, per_minute) = self.quotas();
                let earliest = state.earliest(per_second, per_minute, now);
                match earliest {
                    Some(at) if at > now => {
                        let told = state
                            .blocked_until
                            .filter(|until| *until > now)
                            .and_then(|until| Self::long_block_to_tell(&mut state, now, until));
                        (at, told)
                    }
                    _ => {
                        state.admit(now, per_minute);
                        let slot = earliest.unwrap_or(called);
                        return Slot {
                            waited: Waited(slot.saturating_duration_since(called)),
                            at: now,
                        };
                    }
                }
            };
            // Told once the lock is let go: a log write that stalls holds no other caller.
            if let Some(wait) = told {
                tell_long_block(wait);
            }
            tokio::time::sleep_until(ready).await;
        }
    }

    /// A call answered 429 waits for the gate's closure by itself (its retry sleeps until the
    /// reset before it asks for a turn, and finds the gate open): a long closure is told as
    /// when a call waits for it. (A lone image's submit waited 120 s after a 429 without a
    /// word above DEBUG; acceptance run.)
    pub fn tell_if_long_closed(&self) {
        let now = Instant::now();
        let told = {
            let mut state = self.lock();
            state
                .blocked_until
                .filter(|until| *until > now)
                .and_then(|until| Self::long_block_to_tell(&mut state, now, until))
        };
        if let Some(wait) = told {
            tell_long_block(wait);
        }
    }

    /// Gives back the slot logged at `at` whose call was not made: the log forgets it, so it
    /// binds no later call.
    pub fn release(&self, at: Instant) {
        let mut state = self.lock();
        if let Some(index) = state.admitted.iter().rposition(|t| *t == at) {
            state.admitted.remove(index);
            // Nor does it spend the server's announced cap (polls held by a pause gave
            // their turns back one by one, and emptied it).
            if let Some(cap) = &mut state.cap
                && cap.until > Instant::now()
            {
                cap.left = cap.left.saturating_add(1);
            }
        }
    }

    /// Takes in one answer's rate-limit headers. `sent_at` is when the answered call was
    /// admitted (the instant `acquire` returned), so calls admitted after it, which the
    /// server may not have counted yet, are taken into account. An answer to a call older than
    /// one minute window sets no cap (a 429 or `Remaining <= 0` still closes the gate).
    pub fn observe(&self, sent_at: Instant, word: ServerWord) {
        let reset = word.reset.unwrap_or(DEFAULT_RESET).min(MAX_RESET);
        // A closure of less than a second is one: the reset is told in whole seconds, and `0`
        // (a window about to roll over) or a date already past (a server clock behind this
        // one) would let every caller straight back in, at the full rate, for as long as the
        // 429s last.
        let closure = reset.max(DEFAULT_RESET);
        match word.remaining {
            _ if word.rate_limited => self.block_for(closure),
            Some(remaining) if remaining <= 0 => self.block_for(closure),
            Some(remaining) => {
                let remaining = usize::try_from(remaining).unwrap_or(usize::MAX);
                self.cap_from(sent_at, remaining, reset);
            }
            None => {}
        }
    }

    /// Closes the gate for everyone for `reset` (capped at [`MAX_RESET`]); never shortens an
    /// existing closure.
    pub fn block_for(&self, reset: Duration) {
        let now = Instant::now();
        let until = now + reset.min(MAX_RESET);
        let mut state = self.lock();
        if state.blocked_until.is_none_or(|current| current < until) {
            state.blocked_until = Some(until);
        }
    }

    /// A call waits for the gate's closure until `until`: a long wait is to be told (with
    /// every answer saying no request is left for minutes, the daemon sat idle for hours
    /// without a word), once a minute at most. The wait to tell, when it is.
    fn long_block_to_tell(state: &mut State, now: Instant, until: Instant) -> Option<Duration> {
        let wait = until.saturating_duration_since(now);
        let due = wait >= LONG_BLOCK
            && state
                .long_block_told
                .is_none_or(|told| now.duration_since(told) >= Duration::from_secs(60));
        if due {
            state.long_block_told = Some(now);
        }
        due.then_some(wait)
    }

    /// Caps the limiter when the server has fewer calls left than the log: the log counts
    /// only this client's calls, the server every call made with the key.
    fn cap_from(&self, sent_at: Instant, remaining: usize, reset: Duration) {
        let now = Instant::now();
        if now.saturating_duration_since(sent_at) > MINUTE_WINDOW + JITTER_MARGIN {
            // The log no longer holds the window before so old a call.
            return;
        }
        let mut state = self.lock();
        // Calls admitted after the answered one: the server may or may not have counted them.
        let after = state.admitted.len() - state.admitted.partition_point(|&t| t <= sent_at);
        // What the log had left when the answered call went: the server, counting only this
        // client's calls, would say at least that, less the calls made since.
        let (per_second, per_minute) = self.quotas();
        let left_then = state.left_at(per_second, per_minute, sent_at);
        if remaining.saturating_add(after) >= left_then {
            return;
        }
        let fresh = Cap {
            left: remaining.saturating_sub(after),
            until: now + reset,
        };
        state.cap = Some(match state.cap {
            Some(cap) if cap.until > now => Cap {
                left: cap.left.min(fresh.left),
                until: cap.until.max(fresh.until),
            },
            _ => fresh,
        });
    }

    /// The share (0 to 1) of the minute's quota that calls admitted in the last minute took.
    pub fn minute_used(&self) -> f64 {
        let now = Instant::now();
        let from = now.checked_sub(MINUTE_WINDOW);
        let used = self
            .lock()
            .admitted
            .iter()
            .rev()
            .take_while(|t| from.is_none_or(|from| **t >= from))
            .count();
        used as f64 / self.quotas().1.max(1) as f64
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many instants the log holds (tests check its bound).
    #[cfg(test)]
    fn logged(&self) -> usize {
        self.lock().admitted.len()
    }
}

impl State {
    /// The earliest instant the next call may go by every rule (possibly in the past), or
    /// `None` when no rule has a say yet.
    fn earliest(&self, per_second: usize, per_minute: usize, now: Instant) -> Option<Instant> {
        let nth_last = |n: usize| {
            self.admitted
                .len()
                .checked_sub(n)
                .and_then(|i| self.admitted.get(i))
                .copied()
        };
        let second = nth_last(per_second).map(|t| t + SECOND_WINDOW + JITTER_MARGIN);
        let minute = nth_last(per_minute).map(|t| t + MINUTE_WINDOW + JITTER_MARGIN);
        let cap = self
            .cap
            .filter(|cap| cap.left == 0 && cap.until > now)
            .map(|cap| cap.until);
        [self.blocked_until, second, minute, cap]
            .into_iter()
            .flatten()
            .max()
    }

    /// Records an admission at `now`.
    fn admit(&mut self, now: Instant, per_minute: usize) {
        while self.admitted.len() >= per_minute
            || self
                .admitted
                .front()
                .is_some_and(|&t| now.checked_sub(LOG_HORIZON).is_some_and(|from| t < from))
        {
            self.admitted.pop_front();
        }
        self.admitted.push_back(now);
        match &mut self.cap {
            Some(cap) if cap.until > now => cap.left = cap.left.saturating_sub(1),
            Some(_) => self.cap = None,
            None => {}
        }
    }

    /// What the log had left at `at` in its tighter window (admissions at `at` included).
    fn left_at(&self, per_second: usize, per_minute: usize, at: Instant) -> usize {
        let end = self.admitted.partition_point(|&t| t <= at);
        let within = |window: Duration| match at.checked_sub(window + JITTER_MARGIN) {
            Some(from) => end - self.admitted.partition_point(|&t| t <= from),
            None => end,
        };
        per_second
            .saturating_sub(within(SECOND_WINDOW))
            .min(per_minute.saturating_sub(within(MINUTE_WINDOW)))
    }
}

/// A `RateLimit-Reset` this large is a point in time (Unix seconds, as some servers send),
/// not a delay: no window is 30 years long.
const EPOCH_FROM: f64 = 1.0e9;

/// And one this large is a point in time in Unix milliseconds (as other servers send).
const EPOCH_MS_FROM: f64 = 1.0e12;

/// Reads `RateLimit-Reset`: seconds until the reset (whole or fractional), or the reset's
/// Unix time in seconds or milliseconds (then the seconds left until it); at most [`MAX_RESET`]. `None` when absent or
/// unusable.
pub fn parse_reset(value: Option<&str>) -> Option<Duration> {
    let secs: f64 = value?.trim().parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    let secs = if secs >= EPOCH_MS_FROM {
        return parse_reset(Some(&(secs / 1000.0).to_string()));
    } else if secs >= EPOCH_FROM {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        (secs - now).max(0.0)
    } else {
        secs
    };
    Some(Duration::from_secs_f64(secs.min(MAX_RESET.as_secs_f64())))
}

/// Reads `Retry-After`: seconds (as [`parse_reset`]) or an HTTP date (RFC 9110 §10.2.3), then
/// the time left until it; at most [`MAX_RESET`].
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let value = value?;
    parse_reset(Some(value)).or_else(|| {
        let at = httpdate::parse_http_date(value.trim()).ok()?;
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Some(left.min(MAX_RESET))
    })
}

/// Reads the combined `RateLimit` field of the IETF drafts, which a gateway in front of Claid
/// may send instead of the split `RateLimit-Remaining` / `RateLimit-Reset`: a dictionary
/// `limit=4, remaining=0, reset=20` (drafts 03–06), or a list of policies
/// `"default";r=0;t=20, "burst";r=5;t=1` (drafts 07 and later), of which the one with the
/// fewest requests left binds. `(remaining, reset)`, each `None` when not told.
pub fn parse_combined(value: Option<&str>) -> (Option<i64>, Option<Duration>) {
    let Some(value) = value else {
        return (None, None);
    };
    let member = |text: &str, keys: [&str; 2]| {
        text.split([',', ';']).find_map(|part| {
            let (key, value) = part.split_once('=')?;
            keys.contains(&key.trim().to_ascii_lowercase().as_str())
                .then(|| value.trim().trim_matches('"').to_owned())
        })
    };
    let is_list =
        value.trim_start().starts_with('"') || value.contains(";r=") || value.contains("; r=");
    if !is_list {
        return (
            parse_remaining(member(value, ["remaining", "remaining"]).as_deref()),
            parse_reset(member(value, ["reset", "reset"]).as_deref()),
        );
    }
    // The fewest requests left binds; among policies with none left, the one that frees a
    // request last (a per-second and a per-minute window both spent: the minute's).
    value
        .split(',')
        .filter_map(|item| {
            let remaining = parse_remaining(member(item, ["r", "remaining"]).as_deref())?;
            Some((
                remaining,
                parse_reset(member(item, ["t", "reset"]).as_deref()),
            ))
        })
        .min_by(|a, b| {
            a.0.max(0)
                .cmp(&b.0.max(0))
                .then_with(|| b.1.unwrap_or_default().cmp(&a.1.unwrap_or_default()))
        })
        .map_or((None, None), |(remaining, reset)| (Some(remaining), reset))
}

/// Reads `RateLimit-Remaining` (may be negative: Claid sends `-1` once exceeded).
pub fn parse_remaining(value: Option<&str>) -> Option<i64> {
    value?.trim().parse().ok()
}

#[cfg(test)]
mod reset_tests {
    use super::*;

    /// The IETF drafts' combined `RateLimit` field, in both of its forms; the policy with the
    /// fewest requests left binds.
    #[test]
    fn the_combined_ratelimit_field_is_read_in_both_draft_forms() {
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            parse_combined(Some("limit=4, remaining=0, reset=20")),
            (Some(0), secs(20))
        );
        assert_eq!(
            parse_combined(Some("\"default\";r=0;t=20")),
            (Some(0), secs(20))
        );
        assert_eq!(
            parse_combined(Some("\"minute\";r=50;t=30, \"second\";r=0;t=1")),
            (Some(0), secs(1))
        );
        assert_eq!(
            parse_combined(Some("\"second\";r=0;t=1, \"minute\";r=0;t=30")),
            (Some(0), secs(30)),
            "both spent: the later reset binds"
        );
        assert_eq!(parse_combined(Some("limit=4")), (None, None));
        assert_eq!(parse_combined(None), (None, None));
    }

    /// `RateLimit-Reset` as a delay or as a Unix time, `Retry-After` as a delay or an HTTP
    /// date: each is the time left, never more than `MAX_RESET` (an epoch value read as a delay
    /// closed the gate for two minutes).
    #[test]
    fn resets_are_read_as_delays_or_points_in_time() {
        assert_eq!(parse_reset(Some("2")), Some(Duration::from_secs(2)));
        assert_eq!(parse_reset(Some("0.5")), Some(Duration::from_millis(500)));
        assert_eq!(parse_reset(Some("-1")), None);
        assert_eq!(parse_reset(Some("soon")), None);
        assert_eq!(parse_reset(Some("99999")), Some(MAX_RESET));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let in_ten = parse_reset(Some(&(now + 10).to_string())).unwrap();
        assert!(
            in_ten <= Duration::from_secs(10) && in_ten >= Duration::from_secs(8),
            "{in_ten:?}"
        );
        assert_eq!(
            parse_reset(Some(&(now - 10).to_string())),
            Some(Duration::ZERO)
        );
        // The same point in Unix milliseconds.
        let in_ten_ms = parse_reset(Some(&((now + 10) * 1000).to_string())).unwrap();
        assert!(
            in_ten_ms <= Duration::from_secs(10) && in_ten_ms >= Duration::from_secs(8),
            "{in_ten_ms:?}"
        );
        assert_eq!(parse_retry_after(Some("3")), Some(Duration::from_secs(3)));
        let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(20));
        let left = parse_retry_after(Some(&date)).unwrap();
        assert!(
            left <= Duration::from_secs(20) && left >= Duration::from_secs(18),
            "{left:?}"
        );
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(Some("tomorrow")), None);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A closure of the gate for 10 s or more is told when a call waits for it, once a minute
    /// at most (every answer saying no request was left for minutes kept the daemon idle
    /// without a word); one no call waits for (the answer to a run's last request) is not.
    #[tokio::test(start_paused = true)]
    async fn a_long_closure_of_the_gate_is_told_once_a_minute_when_a_call_waits() {
        let capture = crate::logging::captured::Capture::default();
        let _default = tracing::subscriber::set_default(capture.subscriber());
        let text = || capture.text();
        let limiter = Limiter::new(NonZeroU32::new(4).unwrap(), NonZeroU32::new(120).unwrap());
        limiter.block_for(Duration::from_secs(15));
        assert!(!text().contains("no request is left"), "no call waits yet");
        limiter.acquire().await;
        let told = text();
        assert_eq!(told.matches("no request is left").count(), 1, "{told}");
        assert!(told.contains("wait_s=15"), "{told}");
        // Within the minute after it (15 s, then 45 s in), not told again, short or long.
        limiter.block_for(Duration::from_secs(2));
        limiter.acquire().await;
        limiter.block_for(Duration::from_secs(28));
        limiter.acquire().await;
        limiter.block_for(MAX_RESET);
        limiter.acquire().await;
        assert_eq!(text().matches("no request is left").count(), 1);
        // Over a minute after it, told again.
        limiter.block_for(Duration::from_secs(20));
        limiter.acquire().await;
        assert_eq!(text().matches("no request is left").count(), 2);
    }

    /// A call answered 429 that waits out the reset by itself (its retry sleeps, then finds
    /// the gate open) tells a long closure too, once a minute at most, and a short one not.
    #[tokio::test(start_paused = true)]
    async fn a_long_closure_a_429_waits_out_by_itself_is_told() {
        let capture = crate::logging::captured::Capture::default();
        let _default = tracing::subscriber::set_default(capture.subscriber());
        let count = || capture.text().matches("no request is left").count();
        let limiter = Limiter::new(NonZeroU32::new(4).unwrap(), NonZeroU32::new(120).unwrap());
        limiter.block_for(Duration::from_secs(5));
        limiter.tell_if_long_closed();
        assert_eq!(count(), 0, "5 s is no long closure");
        limiter.block_for(MAX_RESET);
        limiter.tell_if_long_closed();
        assert_eq!(count(), 1);
        assert!(capture.text().contains("wait_s=120"), "{}", capture.text());
        limiter.tell_if_long_closed();
        assert_eq!(count(), 1, "once a minute at most");
    }

    /// The server's quota policies lower the configured quotas at once, from Claid's
    /// `RateLimit-Limit` form and the bare `RateLimit-Policy` one.
    #[test]
    fn the_servers_lower_quotas_are_learned_at_once() {
        let limiter = Limiter::new(NonZeroU32::new(20).unwrap(), NonZeroU32::new(1200).unwrap());
        assert_eq!(
            limiter.learn("120, 120;w=60, 4;w=1"),
            Some(Learned::Lowered(4, 120))
        );
        assert_eq!(limiter.quotas(), (4, 120));
        assert_eq!(limiter.learn("garbage, ;w=, 3;w=3600, 0;w=1"), None);
        assert_eq!(limiter.quotas(), (4, 120));
        let policy = Limiter::new(NonZeroU32::new(20).unwrap(), NonZeroU32::new(1200).unwrap());
        assert_eq!(policy.learn("90;w=60"), Some(Learned::Lowered(20, 90)));
    }

    /// Higher quotas are followed only once announced for a whole minute without a lower one
    /// in between, and never above the config's.
    #[tokio::test(start_paused = true)]
    async fn higher_quotas_announced_for_a_minute_are_followed_up_to_the_config() {
        let limiter = Limiter::new(NonZeroU32::new(20).unwrap(), NonZeroU32::new(1200).unwrap());
        assert!(limiter.learn("120;w=60, 4;w=1").is_some());
        // The plan was raised: announced now, not yet followed.
        assert_eq!(limiter.learn("600;w=60, 10;w=1"), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(limiter.learn("600;w=60, 10;w=1"), None);
        // One answer with the old quotas in between starts the minute again.
        assert_eq!(limiter.learn("120;w=60, 4;w=1"), None);
        assert_eq!(limiter.learn("600;w=60, 10;w=1"), None);
        tokio::time::advance(Duration::from_secs(45)).await;
        assert_eq!(limiter.learn("600;w=60, 10;w=1"), None);
        assert_eq!(limiter.quotas(), (4, 120));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            limiter.learn("600;w=60, 10;w=1"),
            Some(Learned::Raised(10, 600))
        );
        assert_eq!(limiter.quotas(), (10, 600));
        // Never above the config (20 a second, 1,200 a minute).
        assert_eq!(limiter.learn("6000;w=60, 100;w=1"), None);
        tokio::time::advance(RAISE_AFTER).await;
        assert_eq!(
            limiter.learn("6000;w=60, 100;w=1"),
            Some(Learned::Raised(20, 1200))
        );
        assert_eq!(limiter.learn("6000;w=60, 100;w=1"), None);
    }
    use crate::emulator::{RateLimiter, RateWindow};

    fn limiter(rps: u32, rpm: u32) -> Limiter {
        Limiter::new(
            NonZeroU32::new(rps).expect("rps > 0"),
            NonZeroU32::new(rpm).expect("rpm > 0"),
        )
    }

    /// Admits `n` calls one after the other; returns their admission instants.
    async fn admit_n(limiter: &Limiter, n: usize) -> Vec<Instant> {
        let mut at = Vec::with_capacity(n);
        for _ in 0..n {
            limiter.acquire().await;
            at.push(Instant::now());
        }
        at
    }

    #[test]
    fn reset_header_parsing() {
        assert_eq!(parse_reset(Some("1")), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_reset(Some(" 2.5 ")),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(parse_reset(Some("-3")), None);
        assert_eq!(parse_reset(Some("soon")), None);
        assert_eq!(parse_reset(None), None);
        assert_eq!(parse_reset(Some("99999")), Some(MAX_RESET));
        assert_eq!(parse_remaining(Some("-1")), Some(-1));
        assert_eq!(parse_remaining(Some("x")), None);
    }

    /// Issue 12 §3: a drop smaller than the minute quota goes at `rps` calls per second (in
    /// bursts of `rps`, one per widened second) until the minute's quota is spent.
    #[tokio::test(start_paused = true)]
    async fn a_drop_under_the_minute_quota_goes_at_rps_until_the_quota_is_spent() {
        let limiter = limiter(4, 120);
        let start = Instant::now();
        let admitted = admit_n(&limiter, 120).await;
        let second = SECOND_WINDOW + JITTER_MARGIN;
        for (i, at) in admitted.iter().enumerate() {
            let burst = u32::try_from(i / 4).expect("small");
            assert_eq!(*at - start, second * burst, "call {i}");
        }
        // 30 bursts of 4: the last one 29 widened seconds (30.45 s) after the first, where
        // governor's refilling minute quota sent the 120th call at ~59 s.
        assert_eq!(admitted[119] - start, second * 29);
    }

    /// A slot given back (its call was not made) binds no later call: the next goes at once
    /// instead of a widened second later.
    #[tokio::test(start_paused = true)]
    async fn a_released_slot_binds_no_later_call() {
        let limiter = limiter(2, 120);
        let first = limiter.acquire_slot().await;
        let second = limiter.acquire_slot().await;
        assert_eq!(second.at, first.at, "two calls a second go together");
        limiter.release(second.at);
        assert_eq!(limiter.logged(), 1);
        let third = limiter.acquire_slot().await;
        assert_eq!(third.at, first.at, "the slot given back is free at once");
        assert_eq!(third.waited, Waited(Duration::ZERO));
        let fourth = limiter.acquire_slot().await;
        assert_eq!(
            fourth.at - first.at,
            SECOND_WINDOW + JITTER_MARGIN,
            "without a release the third call of the second waits"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_121st_call_waits_until_the_first_leaves_the_minute_window() {
        let limiter = limiter(4, 120);
        let admitted = admit_n(&limiter, 121).await;
        assert_eq!(
            admitted[120] - admitted[0],
            MINUTE_WINDOW + JITTER_MARGIN,
            "the 121st goes when the first leaves the widened minute"
        );
        assert_eq!(limiter.logged(), 120, "the log holds at most rpm instants");
        // The three others of the first burst leave at the same instant: three more go at once.
        let next = admit_n(&limiter, 3).await;
        assert!(next.iter().all(|at| *at == admitted[120]), "{next:?}");
    }

    /// The wait reported is the one the rules asked: calls that go straight through report
    /// zero, and the first call past a full second window reports the time to its slot, even
    /// when it queued behind another waiting caller.
    #[tokio::test(start_paused = true)]
    async fn waited_is_what_the_log_asked() {
        let limiter = Arc::new(limiter(4, 600));
        for _ in 0..4 {
            assert_eq!(limiter.acquire().await, Waited(Duration::ZERO));
        }
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move { limiter.acquire().await })
            })
            .collect();
        for caller in callers {
            let waited = caller.await.expect("caller");
            assert_eq!(waited, Waited(SECOND_WINDOW + JITTER_MARGIN));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_gate_blocks_every_caller() {
        let limiter = Arc::new(limiter(4, 600));
        let start = Instant::now();
        limiter.block_for(Duration::from_secs(3));
        // A shorter closure never shortens the gate.
        limiter.observe(
            start,
            ServerWord {
                rate_limited: true,
                remaining: Some(-1),
                reset: Some(Duration::from_secs(1)),
            },
        );
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move {
                    let waited = limiter.acquire().await;
                    (waited, Instant::now())
                })
            })
            .collect();
        for caller in callers {
            let (waited, at) = caller.await.expect("caller");
            assert_eq!(at - start, Duration::from_secs(3));
            assert_eq!(waited, Waited(Duration::from_secs(3)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_zero_closes_the_gate_for_the_reset() {
        let limiter = limiter(4, 120);
        let start = Instant::now();
        limiter.observe(
            start,
            ServerWord {
                rate_limited: false,
                remaining: Some(0),
                reset: Some(Duration::from_secs(7)),
            },
        );
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(7));
    }

    /// Another client spends the same key: the server says 2 calls remain while the log has
    /// 119 left, so 2 more go and the next waits for the server's reset.
    #[tokio::test(start_paused = true)]
    async fn server_remaining_below_the_log_caps_calls_until_the_reset() {
        let limiter = limiter(4, 120);
        let start = Instant::now();
        limiter.acquire().await;
        limiter.observe(
            start,
            ServerWord {
                rate_limited: false,
                remaining: Some(2),
                reset: Some(Duration::from_secs(20)),
            },
        );
        let admitted = admit_n(&limiter, 3).await;
        assert_eq!(&admitted[..2], &[start, start], "two more go at once");
        assert_eq!(admitted[2] - start, Duration::from_secs(20));
    }

    /// The answer to a call that later calls overtook (the server counted them first) says
    /// fewer calls remain than the log had left when it went: no cap, because those later
    /// calls are this client's own. The log alone decides.
    #[tokio::test(start_paused = true)]
    async fn an_answer_counting_this_clients_later_calls_sets_no_cap() {
        let limiter = limiter(10, 120);
        let start = Instant::now();
        admit_n(&limiter, 1).await;
        tokio::time::advance(Duration::from_millis(100)).await;
        admit_n(&limiter, 4).await;
        // The first call's answer: the server counted all five, 5 left in the second.
        limiter.observe(
            start,
            ServerWord {
                rate_limited: false,
                remaining: Some(5),
                reset: Some(Duration::from_secs(1)),
            },
        );
        let before = Instant::now();
        let admitted = admit_n(&limiter, 6).await;
        assert!(admitted[..5].iter().all(|at| *at == before), "{admitted:?}");
        // The 11th call in the second goes when the first leaves the widened second (a cap
        // would have held it until the answer's reset, 1 s after the answer came).
        assert_eq!(admitted[5] - start, SECOND_WINDOW + JITTER_MARGIN);
    }

    #[tokio::test(start_paused = true)]
    async fn an_rps_above_the_rpm_never_binds_and_the_log_stays_bounded() {
        let limiter = limiter(50, 10);
        let start = Instant::now();
        let admitted = admit_n(&limiter, 25).await;
        assert!(admitted[..10].iter().all(|at| *at == start));
        assert_eq!(admitted[10] - start, MINUTE_WINDOW + JITTER_MARGIN);
        assert_eq!(admitted[20] - start, (MINUTE_WINDOW + JITTER_MARGIN) * 2);
        assert_eq!(limiter.logged(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn the_log_forgets_admissions_older_than_its_horizon_however_large_the_quota() {
        let limiter = limiter(100_000, 6_000_000);
        admit_n(&limiter, 1_000).await;
        assert_eq!(limiter.logged(), 1_000);
        tokio::time::advance(LOG_HORIZON + Duration::from_millis(1)).await;
        admit_n(&limiter, 3).await;
        assert_eq!(limiter.logged(), 3, "the 1,000 older calls are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_older_than_a_window_sets_no_cap() {
        let limiter = limiter(4, 120);
        let sent_at = Instant::now();
        limiter.acquire().await;
        tokio::time::advance(MINUTE_WINDOW + JITTER_MARGIN + Duration::from_secs(1)).await;
        limiter.observe(
            sent_at,
            ServerWord {
                remaining: Some(1),
                reset: Some(Duration::from_secs(30)),
                ..ServerWord::default()
            },
        );
        let start = Instant::now();
        let admitted = admit_n(&limiter, 4).await;
        assert!(admitted.iter().all(|at| *at == start), "{admitted:?}");
    }

    /// Admission instants of random bursts of demand from several callers over six minutes:
    /// idle stretches (long enough for the minute window to empty, sometimes), bursts of up to
    /// 40 calls.
    async fn random_demand(limiter: Arc<Limiter>, seed: u64) -> Vec<Instant> {
        let end = Instant::now() + Duration::from_secs(360);
        let callers: Vec<_> = (0..6)
            .map(|caller| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(seed * 100 + caller);
                    let mut admitted = Vec::new();
                    while Instant::now() < end {
                        let idle = if rng.random_bool(0.1) {
                            rng.random_range(20_000..70_000)
                        } else {
                            rng.random_range(0..4_000)
                        };
                        tokio::time::sleep(Duration::from_millis(idle)).await;
                        for _ in 0..rng.random_range(1..=40) {
                            limiter.acquire().await;
                            admitted.push(Instant::now());
                        }
                    }
                    admitted
                })
            })
            .collect();
        let mut all = Vec::new();
        for caller in callers {
            all.extend(caller.await.expect("caller"));
        }
        all.sort();
        all
    }

    /// Issue 12 §3: the instants the limiter admits, each delayed by a random network delay
    /// below [`JITTER_MARGIN`], never make the emulator's rate limiter answer over-limit, in
    /// sliding and in fixed mode, wherever the fixed windows' boundaries lie.
    #[tokio::test(start_paused = true)]
    async fn admitted_calls_never_exceed_an_emulated_server_in_either_window_mode() {
        for (rps, rpm, seed) in [(4, 120, 1), (4, 120, 2), (10, 30, 3), (3, 200, 4)] {
            let start = Instant::now();
            let admitted = random_demand(Arc::new(limiter(rps, rpm)), seed).await;
            assert!(
                admitted.len() > usize::try_from(rpm * 3).expect("small"),
                "the demand filled the minute quota several times ({} calls)",
                admitted.len()
            );
            let mut rng = StdRng::seed_from_u64(seed);
            let margin_ms = u64::try_from(JITTER_MARGIN.as_millis()).expect("small");
            let mut arrivals: Vec<Instant> = admitted
                .iter()
                .map(|at| *at + Duration::from_micros(rng.random_range(0..margin_ms * 1000)))
                .collect();
            arrivals.sort();
            for mode in [RateWindow::Sliding, RateWindow::Fixed] {
                for offset_ms in [0, 137, 499, 731, 999, 30_001] {
                    let epoch = start - Duration::from_millis(offset_ms);
                    let mut server = RateLimiter::new(Some(rpm), Some(rps), mode, epoch);
                    for (i, at) in arrivals.iter().enumerate() {
                        let verdict = server.check(*at).expect("limits configured");
                        assert!(
                            verdict.allowed,
                            "{mode:?} (rps {rps}, rpm {rpm}, epoch -{offset_ms} ms) refused \
                             call {i} at {:?}",
                            *at - start
                        );
                    }
                }
            }
        }
    }

    /// The same demand with the server's answers fed back (as the client does): the headers
    /// close the gate and cap the log, and the emulated server still never refuses.
    #[tokio::test(start_paused = true)]
    async fn with_the_servers_headers_fed_back_the_emulated_server_never_refuses() {
        for mode in [RateWindow::Sliding, RateWindow::Fixed] {
            let start = Instant::now();
            let limiter = Arc::new(limiter(4, 120));
            let server = Arc::new(Mutex::new(RateLimiter::new(
                Some(120),
                Some(4),
                mode,
                start - Duration::from_millis(400),
            )));
            let callers: Vec<_> = (0..4)
                .map(|caller| {
                    let (limiter, server) = (Arc::clone(&limiter), Arc::clone(&server));
                    tokio::spawn(async move {
                        let mut rng = StdRng::seed_from_u64(caller + 10);
                        let mut answered = 0;
                        while Instant::now() < start + Duration::from_secs(300) {
                            let idle = rng.random_range(0..9_000);
                            tokio::time::sleep(Duration::from_millis(idle)).await;
                            for _ in 0..rng.random_range(1..=30) {
                                limiter.acquire().await;
                                let sent_at = Instant::now();
                                let verdict = server
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .check(sent_at)
                                    .expect("limits configured");
                                assert!(verdict.allowed, "{mode:?} refused a call");
                                let latency = rng.random_range(1..400);
                                tokio::time::sleep(Duration::from_millis(latency)).await;
                                limiter.observe(
                                    sent_at,
                                    ServerWord {
                                        rate_limited: false,
                                        remaining: Some(verdict.remaining),
                                        reset: Some(Duration::from_secs(verdict.reset)),
                                    },
                                );
                                answered += 1;
                            }
                        }
                        answered
                    })
                })
                .collect();
            let mut answered = 0;
            for caller in callers {
                answered += caller.await.expect("caller");
            }
            assert!(answered > 300, "{mode:?}: only {answered} calls were made");
        }
    }
}
