//! Log-in under attack: concurrent wrong passwords no longer run an unbounded number of argon2
//! hashes (19 MiB each; the attack grew the API from 435 MB to about 3 GB), and guesses against
//! one account back off exponentially, per account, whatever the client's IP.

use std::time::Duration;

use serde_json::{Value, json};

use crate::studio::with_db;
use gridbook_api::auth::Role;
use gridbook_testkit::{TEST_PASSWORD, TestApp, error_code, unique_email};

async fn log_in(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.http
        .post(app.url("/v1/sessions"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("POST /v1/sessions")
}

fn retry_after(r: &reqwest::Response) -> Option<u64> {
    r.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// An argon2id hash of `password` that takes about a second to verify (t = 100 instead of 2),
/// so that concurrent verifications overlap on any machine.
fn slow_hash(password: &str) -> String {
    use argon2::password_hash::PasswordHasher;
    let params = argon2::Params::new(19_456, 100, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string()
}

/// 150 concurrent wrong-password log-ins (150 accounts, so the per-account back-off plays no
/// part): with one hash slot and a queue of one, two are verified and the rest are refused at
/// once with 503 `busy` and Retry-After; nothing else happens, and log-in works afterwards.
/// Without the bound all 150 verifications ran at once.
#[tokio::test]
async fn concurrent_wrong_password_logins_are_bounded() {
    let app = TestApp::spawn_with(|s| {
        s.limits.password_hashes = 1;
        s.limits.password_queue = 1;
    })
    .await;
    let hash = tokio::task::spawn_blocking(|| slow_hash(TEST_PASSWORD))
        .await
        .unwrap();
    let emails: Vec<String> = (0..150).map(|_| unique_email("hash")).collect();
    {
        let emails = emails.clone();
        with_db(&app, move |c| {
            for e in &emails {
                gridbook_api::accounts::create_user(c, e, &hash, Role::Studio).unwrap();
            }
        })
        .await;
    }
    let attempts = emails
        .iter()
        .map(|e| log_in(&app, e, "a wrong password, long enough"));
    let answers = futures::future::join_all(attempts).await;
    let (mut refused, mut verified) = (0, 0);
    for r in answers {
        match r.status().as_u16() {
            401 => verified += 1,
            503 => {
                assert_eq!(retry_after(&r), Some(1));
                assert_eq!(error_code(r).await, "busy");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text().await.unwrap_or_default()),
        }
    }
    assert!(verified >= 2, "verified {verified}, refused {refused}");
    assert!(refused >= 140, "verified {verified}, refused {refused}");
    // The slots are free again: the right password logs in.
    let r = log_in(&app, &emails[0], TEST_PASSWORD).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

/// Five wrong passwords for one account lock its log-in (429 `login_locked`, Retry-After),
/// even with the right password; the delay doubles with each further failure; other accounts
/// from the same client are unaffected; a success resets the count.
#[tokio::test]
async fn an_account_backs_off_exponentially_after_five_failures() {
    let app = TestApp::spawn_with(|s| {
        s.login.max_failures = 5;
        s.login.base_delay_secs = 1;
        s.login.max_delay_secs = 60;
    })
    .await;
    let victim = app.signup("studio").await;
    let bystander = app.signup("studio").await;
    for i in 0..5 {
        let r = log_in(&app, &victim.email, "wrong password number x").await;
        assert_eq!(r.status(), 401, "failure {i}");
        assert_eq!(error_code(r).await, "invalid_credentials");
    }
    let r = log_in(&app, &victim.email, TEST_PASSWORD).await;
    assert_eq!(r.status(), 429, "locked even with the right password");
    assert_eq!(retry_after(&r), Some(1));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "login_locked");
    // Per account, not per client.
    assert_eq!(
        log_in(&app, &bystander.email, TEST_PASSWORD).await.status(),
        200
    );

    // After the delay, one more failure doubles it.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        log_in(&app, &victim.email, "wrong password number y")
            .await
            .status(),
        401
    );
    let r = log_in(&app, &victim.email, TEST_PASSWORD).await;
    assert_eq!(r.status(), 429);
    assert_eq!(retry_after(&r), Some(2));
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        log_in(&app, &victim.email, TEST_PASSWORD).await.status(),
        429,
        "still locked after half the delay"
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // The right password after the delay logs in and resets the count.
    assert_eq!(
        log_in(&app, &victim.email, TEST_PASSWORD).await.status(),
        200
    );
    for _ in 0..4 {
        assert_eq!(
            log_in(&app, &victim.email, "wrong password number z")
                .await
                .status(),
            401
        );
    }
    // Unknown emails back off the same way (the answer says nothing about existence).
    let ghost = unique_email("ghost");
    for _ in 0..5 {
        assert_eq!(
            log_in(&app, &ghost, "whatever password").await.status(),
            401
        );
    }
    assert_eq!(
        log_in(&app, &ghost, "whatever password").await.status(),
        429
    );
}

/// Concurrent guesses cannot overshoot the budget: of 60 simultaneous wrong passwords for one
/// account at most five are checked, the rest are 429 (or 503 when the hash queue is full).
#[tokio::test]
async fn concurrent_guesses_against_one_account_stop_at_the_budget() {
    let app = TestApp::spawn().await;
    let victim = app.signup("studio").await;
    let guesses = (0..60).map(|i| {
        let email = victim.email.clone();
        let app = &app;
        async move { log_in(app, &email, &format!("guess number {i:04}")).await }
    });
    let answers = futures::future::join_all(guesses).await;
    let mut checked = 0;
    let mut locked = 0;
    for r in answers {
        match r.status().as_u16() {
            401 => checked += 1,
            429 => {
                assert!(retry_after(&r).is_some());
                assert_eq!(error_code(r).await, "login_locked");
                locked += 1;
            }
            503 => assert_eq!(error_code(r).await, "busy"),
            other => panic!("unexpected {other}"),
        }
    }
    assert!((1..=5).contains(&checked), "{checked} guesses were checked");
    assert!(locked >= 50, "{locked} locked");
    assert_eq!(
        log_in(&app, &victim.email, TEST_PASSWORD).await.status(),
        429
    );
}
