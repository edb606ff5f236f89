//! Connection timeouts (`settings.http`): a body that never arrives, a request head that never
//! ends and an idle kept-alive connection are each cut off after their configured time instead
//! of holding a connection (the attack held one for over 200 s).

use std::time::{Duration, Instant};

use crate::raw;
use gridbook_testkit::TestApp;

/// A JSON request that announces a body and never sends it: 408 with the JSON error after
/// `body_idle_timeout_secs`, and the connection is closed.
#[tokio::test]
async fn a_request_whose_body_never_arrives_is_answered_408_and_closed() {
    let app = TestApp::spawn_with(|s| s.http.body_idle_timeout_secs = 2).await;
    for path in ["/v1/sessions", "/v1/accounts", "/v1/no-such-route"] {
        let mut s = raw::connect(&app).await;
        let head = raw::head(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(100),
        );
        raw::send(&mut s, head.as_bytes()).await;
        let t = Instant::now();
        let r = raw::read_response(&mut s, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let waited = t.elapsed();
        assert_eq!(r.status, 408, "{path}");
        assert_eq!(r.code(), "request_timeout", "{path}");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("stalled"),
            "{:?}",
            r.json()
        );
        assert!(
            waited >= Duration::from_millis(1_500) && waited < Duration::from_secs(10),
            "{path}: answered after {waited:?}"
        );
        assert!(
            raw::closed_within(&mut s, Duration::from_secs(5)).await,
            "{path}: connection kept open"
        );
    }
}

/// A body that keeps trickling one byte at a time is cut off at `body_timeout_secs`.
#[tokio::test]
async fn a_trickling_body_is_cut_off_at_the_body_deadline() {
    let app = TestApp::spawn_with(|s| {
        s.http.body_idle_timeout_secs = 5;
        s.http.body_timeout_secs = 3;
    })
    .await;
    let stream = raw::connect(&app).await;
    let (mut rd, mut wr) = stream.into_split();
    let head = raw::head(
        "POST",
        "/v1/sessions",
        &[("Content-Type", "application/json")],
        Some(1_000),
    );
    raw::send(&mut wr, head.as_bytes()).await;
    let t = Instant::now();
    let writer = async move {
        loop {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut wr, b" ").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let r = tokio::select! {
        r = raw::read_response(&mut rd, Duration::from_secs(30)) => r.expect("a response"),
        () = writer => unreachable!(),
    };
    assert_eq!(r.status, 408);
    assert_eq!(r.code(), "request_timeout");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(2_500) && waited < Duration::from_secs(15),
        "answered after {waited:?}"
    );
}

/// A request head that never ends is dropped after `request_head_timeout_ms` (actix's
/// client request timeout; actix answers it itself, without a body), and an idle kept-alive
/// connection after `keep_alive_secs`. Both are set below actix's defaults (5 s) so the test
/// shows the settings are applied.
#[tokio::test]
async fn a_partial_head_and_an_idle_connection_are_closed_on_time() {
    let app = TestApp::spawn_with(|s| {
        s.http.request_head_timeout_ms = 1_000;
        s.http.keep_alive_secs = 1;
        s.http.disconnect_timeout_ms = 500;
    })
    .await;
    let mut s = raw::connect(&app).await;
    raw::send(&mut s, b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
    let t = Instant::now();
    assert!(
        raw::closed_within(&mut s, Duration::from_millis(3_500)).await,
        "a partial head kept the connection for {:?}",
        t.elapsed()
    );

    let mut s = raw::connect(&app).await;
    raw::send(&mut s, raw::head("GET", "/healthz", &[], None).as_bytes()).await;
    let r = raw::read_response(&mut s, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let t = Instant::now();
    assert!(
        raw::closed_within(&mut s, Duration::from_millis(3_500)).await,
        "an idle keep-alive connection was kept for {:?}",
        t.elapsed()
    );
}
