//! Uploads under attack: stalled and trickling bodies (per-account and process-wide upload
//! bounds, body timeouts with nothing stored) and `Idempotency-Key` on `POST /v1/files`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::raw::{self, RawResponse};
use crate::studio::{EMBED, count, embed_lines, upload};
use gridbook_testkit::{TestApp, TestUser, error_code};

/// An upload over a raw connection that announces `announced` bytes, sends a few, then one
/// byte every 500 ms while `trickle` is set (and nothing once it is cleared). Its response,
/// whenever it comes, is sent on `done`.
fn slow_upload(
    app: &TestApp,
    user: &TestUser,
    announced: usize,
    trickle: Arc<AtomicBool>,
    done: mpsc::UnboundedSender<Result<RawResponse, String>>,
) {
    let port = app.port;
    let bearer = user.bearer();
    tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let head = raw::head(
            "POST",
            &format!("/v1/files?purpose=batch&market={EMBED}"),
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/jsonl"),
            ],
            Some(announced),
        );
        raw::send(&mut wr, head.as_bytes()).await;
        raw::send(&mut wr, b"{\"custom_id\":\"a\",").await;
        let writer = async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if trickle.load(Ordering::Acquire) {
                    // The server may have answered and closed: ignore write errors.
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut wr, b" ").await;
                }
            }
        };
        let response = tokio::select! {
            r = raw::read_response(&mut rd, Duration::from_secs(120)) => r,
            () = writer => unreachable!(),
        };
        let _ = done.send(response);
    });
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<Result<RawResponse, String>>,
    within: Duration,
) -> RawResponse {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no upload answered within {within:?}"))
        .expect("channel open")
        .unwrap_or_else(|e| panic!("upload: {e}"))
}

async fn files_of(app: &TestApp, user: &TestUser) -> Vec<Value> {
    let r = app.get_as(user, "/v1/files?limit=100").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["data"].as_array().unwrap().clone()
}

/// The attack: four slow uploads by one studio used to take every upload slot of the process,
/// so nobody could upload. Now one account holds at most two slots (the others are 429 at once),
/// other studios keep uploading, and the held ones are cut off (408) once they stall, with
/// nothing stored.
#[tokio::test]
async fn four_slow_uploads_by_one_studio_do_not_block_other_studios() {
    let app = TestApp::spawn_with(|s| {
        s.http.body_idle_timeout_secs = 3;
        s.http.body_timeout_secs = 120;
        s.limits.uploads_per_account = 2;
        s.limits.uploads_total = 8;
    })
    .await;
    let attacker = app.signup("studio").await;
    let other = app.signup("studio").await;
    let trickle = Arc::new(AtomicBool::new(true));
    let (tx, mut rx) = mpsc::unbounded_channel();
    for _ in 0..4 {
        slow_upload(&app, &attacker, 10_000, trickle.clone(), tx.clone());
    }
    // Two of the four are refused at once; the two others hold the attacker's slots and keep
    // trickling.
    for _ in 0..2 {
        let r = next(&mut rx, Duration::from_secs(20)).await;
        assert_eq!(r.status, 429, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.code(), "too_many_uploads");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 2 uploads at once per account"),
            "{:?}",
            r.json()
        );
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    // Everyone else uploads as usual, while the attacker's uploads are still in progress.
    let t = Instant::now();
    let r = upload(&app, &other, EMBED, embed_lines(3)).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // The attacker's own third upload is refused, not queued.
    let r = upload(&app, &attacker, EMBED, embed_lines(3)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(error_code(r).await, "too_many_uploads");
    assert!(
        rx.try_recv().is_err(),
        "the trickling uploads are still running"
    );

    // The attacker stops sending: both held uploads are aborted after the idle timeout.
    trickle.store(false, Ordering::Release);
    let t = Instant::now();
    for _ in 0..2 {
        let r = next(&mut rx, Duration::from_secs(20)).await;
        assert_eq!(r.status, 408, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.code(), "request_timeout");
    }
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    // Nothing of theirs was stored, and their slots are free again.
    assert!(files_of(&app, &attacker).await.is_empty());
    let r = upload(&app, &attacker, EMBED, embed_lines(2)).await;
    assert_eq!(r.status(), 201);
    assert_eq!(files_of(&app, &attacker).await.len(), 1);
    assert_eq!(files_of(&app, &other).await.len(), 1);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM files").await, 2);
}

/// The process-wide bound (uploads buffered at once, all accounts) answers 503 with
/// Retry-After instead of queueing.
#[tokio::test]
async fn the_process_wide_upload_bound_answers_503_instead_of_waiting() {
    let app = TestApp::spawn_with(|s| {
        s.http.body_idle_timeout_secs = 3;
        s.limits.uploads_per_account = 2;
        s.limits.uploads_total = 2;
    })
    .await;
    let a = app.signup("studio").await;
    let b = app.signup("studio").await;
    let trickle = Arc::new(AtomicBool::new(true));
    let (tx, mut rx) = mpsc::unbounded_channel();
    for _ in 0..2 {
        slow_upload(&app, &a, 10_000, trickle.clone(), tx.clone());
    }
    // Wait until both slots are taken (b is refused), at most 20 s. One of a's uploads may
    // arrive while b's holds a slot and be refused itself: then a starts another.
    let t = Instant::now();
    let refused = loop {
        let r = upload(&app, &b, EMBED, embed_lines(1)).await;
        if r.status() == 503 {
            break r;
        }
        assert_eq!(r.status(), 201, "before the slots are taken");
        while let Ok(early) = rx.try_recv() {
            let early = early.unwrap();
            assert_eq!(
                early.status,
                503,
                "{:?}",
                String::from_utf8_lossy(&early.body)
            );
            slow_upload(&app, &a, 10_000, trickle.clone(), tx.clone());
        }
        assert!(t.elapsed() < Duration::from_secs(20), "b was never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    assert_eq!(error_code(refused).await, "uploads_busy");
    trickle.store(false, Ordering::Release);
    for _ in 0..2 {
        assert_eq!(next(&mut rx, Duration::from_secs(20)).await.status, 408);
    }
    let r = upload(&app, &b, EMBED, embed_lines(1)).await;
    assert_eq!(r.status(), 201);
    assert!(files_of(&app, &a).await.is_empty());
}

/// A body that announces more than it sends is aborted after `body_idle_timeout_secs` with 408
/// and the JSON error; no object, no row.
#[tokio::test]
async fn a_stalled_upload_is_aborted_with_408_and_nothing_is_stored() {
    let app = TestApp::spawn_with(|s| s.http.body_idle_timeout_secs = 2).await;
    let studio = app.signup("studio").await;
    let mut s = raw::connect(&app).await;
    let head = raw::head(
        "POST",
        &format!("/v1/files?purpose=batch&market={EMBED}"),
        &[
            ("Authorization", &studio.bearer()),
            ("Content-Type", "application/jsonl"),
        ],
        Some(5_000),
    );
    raw::send(&mut s, head.as_bytes()).await;
    raw::send(&mut s, &embed_lines(3)).await;
    let t = Instant::now();
    let r = raw::read_response(&mut s, Duration::from_secs(20))
        .await
        .expect("a response");
    assert_eq!(r.status, 408);
    assert_eq!(r.code(), "request_timeout");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was stored")
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        t.elapsed()
    );
    assert!(raw::closed_within(&mut s, Duration::from_secs(5)).await);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM files").await, 0);
    assert!(files_of(&app, &studio).await.is_empty());
}

async fn upload_keyed(
    app: &TestApp,
    user: &TestUser,
    query: &str,
    key: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/v1/files?{query}")))
        .header("Authorization", user.bearer())
        .header("Content-Type", "application/jsonl")
        .header("Idempotency-Key", key)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// `POST /v1/files` honours Idempotency-Key like the other creating POSTs: a replay returns the
/// first response (`Idempotent-Replayed: true`) and stores nothing; the same key with another
/// file or another query is 422 `idempotency_key_reused`; concurrent resends create one file.
#[tokio::test]
async fn upload_honours_idempotency_key() {
    let app = TestApp::spawn_with(|s| s.limits.uploads_per_account = 8).await;
    let studio = app.signup("studio").await;
    let q = format!("purpose=batch&market={EMBED}&filename=a.jsonl");
    let first = upload_keyed(&app, &studio, &q, "upload-1", embed_lines(3)).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let again = upload_keyed(&app, &studio, &q, "upload-1", embed_lines(3)).await;
    assert_eq!(again.status(), 201);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);

    let other_file = upload_keyed(&app, &studio, &q, "upload-1", embed_lines(4)).await;
    assert_eq!(other_file.status(), 422);
    assert_eq!(error_code(other_file).await, "idempotency_key_reused");
    let other_name = upload_keyed(
        &app,
        &studio,
        &format!("purpose=batch&market={EMBED}&filename=b.jsonl"),
        "upload-1",
        embed_lines(3),
    )
    .await;
    assert_eq!(other_name.status(), 422);
    assert_eq!(error_code(other_name).await, "idempotency_key_reused");
    // Even an invalid file under a used key is refused as a reused key first.
    let bad = upload_keyed(&app, &studio, &q, "upload-1", b"not json\n".to_vec()).await;
    assert_eq!(bad.status(), 422);
    assert_eq!(files_of(&app, &studio).await.len(), 1);

    // Another user's identical key is independent.
    let other = app.signup("studio").await;
    let r = upload_keyed(&app, &other, &q, "upload-1", embed_lines(3)).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());

    // Concurrent resends with a fresh key: one file, every answer the same.
    let sends = (0..6).map(|_| upload_keyed(&app, &studio, &q, "upload-2", embed_lines(5)));
    let answers = futures::future::join_all(sends).await;
    let mut ids = std::collections::BTreeSet::new();
    for r in answers {
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        ids.insert(v["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(files_of(&app, &studio).await.len(), 2);
}
