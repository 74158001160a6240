//! The client's rate limiter against the emulator (issue 12 §3): calls made through the real
//! `claid::Client` draw no 429 from a sliding-window server nor from a fixed-window one, while
//! the limits bind.

use std::time::Duration;

use claid_hotfolder::claid::{Client, ClientConfig};
use claid_hotfolder::emulator::{self, RateWindow, Scenario};

/// The emulator's and the client's limits: small, so that a few seconds spend the minute's
/// quota and cross several one-second windows.
const RPS: u32 = 5;
const RPM: u32 = 20;
/// Concurrent callers sharing one client (and so one limiter): enough to fill each second.
const CALLERS: usize = 5;

/// Makes `RPM` calls from `CALLERS` tasks through one client against an emulator counting in
/// `window`; returns the emulator's 429 count, the client's, the calls answered OK and how
/// many calls the limiter made wait.
async fn spend_the_minute_quota(window: RateWindow) -> (u64, u64, u64, u64) {
    let emulator = emulator::spawn(Scenario::default().rps(RPS).rpm(RPM).rate_window(window))
        .await
        .expect("emulator");
    let client = Client::new(ClientConfig {
        base_url: emulator.base_url(),
        api_key: "sk-test-limiter".to_owned(),
        requests_per_second: RPS.try_into().expect("nonzero"),
        requests_per_minute: RPM.try_into().expect("nonzero"),
        request_timeout: Duration::from_secs(10),
        upload_timeout: Duration::from_secs(10),
        max_download_bytes: 1024,
    })
    .expect("client");
    let per_caller = usize::try_from(RPM).expect("small") / CALLERS;
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..per_caller {
                    if client.probe().await.is_ok() {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for caller in callers {
        ok += caller.await.expect("caller");
    }
    let stats = client.stats();
    let server = emulator.stats();
    emulator.shutdown().await;
    (
        server.rate_limited,
        stats.rate_limited,
        ok,
        stats.limiter_pressure,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn issue12_the_client_draws_no_429_from_a_sliding_or_a_fixed_window_server() {
    let (sliding, fixed) = tokio::join!(
        spend_the_minute_quota(RateWindow::Sliding),
        spend_the_minute_quota(RateWindow::Fixed)
    );
    for (mode, (server_429s, client_429s, answered, waited)) in
        [("sliding", sliding), ("fixed", fixed)]
    {
        assert_eq!(
            answered,
            u64::from(RPM),
            "{mode}: every call was answered OK"
        );
        assert_eq!((server_429s, client_429s), (0, 0), "{mode}: no 429");
        // The limits bound: in each second after the first, calls waited for their slot.
        assert!(
            waited >= u64::from(RPM / RPS - 1),
            "{mode}: only {waited} calls waited in the limiter"
        );
    }
}

/// A config that allows more than the account does (`requests_per_second: 20` against Claid's
/// 5/s here): the first answer's `RateLimit-Limit` policies lower the client's quotas to the
/// server's, so the calls that follow draw no 429, instead of 429s every second (which failed jobs once a submit had waited out 20 of them).
#[tokio::test(flavor = "multi_thread")]
async fn a_config_above_the_accounts_limits_keeps_to_the_servers_announced_quotas() {
    let emulator = emulator::spawn(Scenario::default().rps(RPS).rpm(600))
        .await
        .expect("emulator");
    let client = Client::new(ClientConfig {
        base_url: emulator.base_url(),
        api_key: "sk-test-limiter".to_owned(),
        requests_per_second: (RPS * 4).try_into().expect("nonzero"),
        requests_per_minute: 6000.try_into().expect("nonzero"),
        request_timeout: Duration::from_secs(10),
        upload_timeout: Duration::from_secs(10),
        max_download_bytes: 1024,
    })
    .expect("client");
    // One call teaches the client the server's quotas.
    client.probe().await.expect("the first call");
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..6 {
                    let _ = client.probe().await;
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller");
    }
    let server = emulator.stats();
    emulator.shutdown().await;
    assert_eq!(
        server.rate_limited, 0,
        "429s after the quotas were announced"
    );
}
