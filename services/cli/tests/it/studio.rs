//! The commands against the real API (`TestApp`): log-in and the stored key, errors as the API
//! states them, `--json` for scripts. No matching: nothing here needs the engine.

use gridbook_testkit::TEST_PASSWORD;
use gridbook_testkit::TestApp;
use serde_json::Value;

use crate::cli::{Gridbook, corpus};

const MARKET: &str = "EMBED-MINILM-L6";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_stores_a_private_key_that_later_commands_use_and_logout_revokes() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    let mut gb = Gridbook::new("login", &app.address);

    // A wrong password: the API's message, a non-zero exit, no file.
    let out = gb
        .run_with_stdin(
            &["login", "--email", &studio.email, "--password-stdin"],
            Some("not the password\n"),
        )
        .await;
    assert!(
        out.expect_err().contains("error: wrong email or password"),
        "{out:?}"
    );
    assert!(!gb.credentials_file().exists());

    // The right one: a key stored with mode 0600 in $XDG_CONFIG_HOME/gridbook, the secret never
    // printed.
    let out = gb
        .run_with_stdin(
            &["login", "--email", &studio.email, "--password-stdin"],
            Some(&format!("{TEST_PASSWORD}\n")),
        )
        .await;
    let text = out.expect_ok();
    assert!(
        text.contains(&format!("logged in as {} (studio)", studio.email)),
        "{out:?}"
    );
    let file = gb.credentials_file();
    let stored = std::fs::read_to_string(&file).unwrap();
    let stored: toml::Table = toml::from_str(&stored).unwrap();
    let key = stored["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("gbk_"), "{stored:?}");
    assert_eq!(stored["api"].as_str(), Some(app.address.as_str()));
    assert!(
        !out.stdout.contains(&key) && !out.stderr.contains(&key),
        "the secret was printed: {out:?}"
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(file.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }

    // Later commands use the stored key and the stored API address (no GRIDBOOK_API now).
    gb.api = None;
    let me = gb.run(&["whoami", "--json"]).await.json();
    assert_eq!(me["email"], studio.email.as_str());
    assert_eq!(me["auth"], "api_key");
    app.credit(&studio, 5_000).await;
    let b = gb.run(&["balance", "--json"]).await.json();
    assert_eq!(b["available"], 5_000, "{b}");
    let out = gb.run(&["balance"]).await;
    assert!(
        out.expect_ok().contains("available  5000 credits"),
        "{out:?}"
    );

    // A second log-in replaces the key and revokes the one it replaces.
    let out = gb
        .run_with_stdin(
            &["login", "--email", &studio.email, "--password-stdin"],
            Some(&format!("{TEST_PASSWORD}\n")),
        )
        .await;
    out.expect_ok();
    let keys: Value = app.get_as(&studio, "/v1/keys").await.json().await.unwrap();
    let live = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["revoked_at"].is_null())
        .count();
    assert_eq!(live, 2, "the test's key and the CLI's newest: {keys}");
    let old = app
        .http
        .get(app.url("/v1/me"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401, "the replaced key still works");

    // GRIDBOOK_API_KEY overrides the stored key.
    gb.key = Some(app.signup("provider").await.key);
    let me = gb.run(&["whoami", "--json"]).await.json();
    assert_eq!(me["role"], "provider");
    gb.key = None;

    // Log-out revokes the key and deletes the file; then commands say how to log in.
    let stored: toml::Table =
        toml::from_str(&std::fs::read_to_string(gb.credentials_file()).unwrap()).unwrap();
    let key = stored["key"].as_str().unwrap().to_owned();
    gb.run(&["logout"]).await.expect_ok();
    assert!(!gb.credentials_file().exists());
    let r = app
        .http
        .get(app.url("/v1/me"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let out = gb.run(&["balance"]).await;
    assert!(
        out.expect_err()
            .contains("not logged in: run `gridbook login`"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_shows_the_apis_line_errors() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 1_000_000).await;
    let gb = Gridbook::new("badfile", &app.address).with_key(&studio.key);
    let bad = gb.file(
        "bad.jsonl",
        "{\"custom_id\":\"a\",\"input\":\"fine\"}\nnot json at all\n{\"custom_id\":\"a\",\"input\":\"same id\"}\n",
    );
    let bad = bad.to_str().unwrap();
    let out = gb
        .run(&[
            "jobs",
            "submit",
            bad,
            "--market",
            MARKET,
            "--limit",
            "100",
            "--deadline",
            "1h",
        ])
        .await;
    let err = out.expect_err();
    assert!(err.contains("error: the file has invalid lines"), "{out:?}");
    assert!(err.contains("  line 2: "), "{out:?}");
    assert!(err.contains("  line 3: "), "{out:?}");
    // Nothing was submitted.
    let jobs: Value = app.get_as(&studio, "/v1/jobs").await.json().await.unwrap();
    assert_eq!(jobs["data"].as_array().unwrap().len(), 0, "{jobs}");

    // --json: the API's error object on stdout, still a non-zero exit.
    let out = gb
        .run(&[
            "--json",
            "jobs",
            "submit",
            bad,
            "--market",
            MARKET,
            "--limit",
            "100",
            "--deadline",
            "1h",
        ])
        .await;
    out.expect_err();
    let e = out.json();
    assert_eq!(e["error"]["code"], "invalid_file", "{e}");
    assert_eq!(e["error"]["details"][0]["line"], 2, "{e}");

    // An empty file is refused before any upload.
    let empty = gb.file("empty.jsonl", "\n");
    let out = gb
        .run(&[
            "jobs",
            "submit",
            empty.to_str().unwrap(),
            "--market",
            MARKET,
            "--limit",
            "100",
            "--deadline",
            "1h",
        ])
        .await;
    assert!(out.expect_err().contains("is empty"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_market_a_past_deadline_and_a_short_balance_are_clear_errors() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    let gb = Gridbook::new("errors", &app.address).with_key(&studio.key);
    let f = gb.file("in.jsonl", &corpus(10));
    let f = f.to_str().unwrap();

    let out = gb
        .run(&[
            "jobs",
            "submit",
            f,
            "--market",
            "NOPE-1",
            "--limit",
            "100",
            "--deadline",
            "1h",
        ])
        .await;
    let err = out.expect_err();
    assert!(
        err.contains("error: unknown market \"NOPE-1\"; the markets are EMBED-MINILM-L6"),
        "{out:?}"
    );
    assert!(err.contains("(field market)"), "{out:?}");

    let out = gb
        .run(&[
            "jobs",
            "submit",
            f,
            "--market",
            MARKET,
            "--limit",
            "100",
            "--deadline",
            "2020-01-01T00:00:00Z",
        ])
        .await;
    let err = out.expect_err();
    assert!(
        err.contains("error: deadline 2020-01-01T00:00:00Z is in the past"),
        "{out:?}"
    );
    assert!(err.contains("(field deadline)"), "{out:?}");

    let out = gb
        .run(&[
            "jobs",
            "submit",
            f,
            "--market",
            MARKET,
            "--limit",
            "100",
            "--deadline",
            "soon",
        ])
        .await;
    assert!(
        out.expect_err().contains("neither a duration from now"),
        "{out:?}"
    );

    // The API's own check (at least 60 s ahead) comes back as the API states it.
    let out = gb
        .run(&[
            "jobs",
            "submit",
            f,
            "--market",
            MARKET,
            "--limit",
            "100",
            "--deadline",
            "30s",
        ])
        .await;
    let err = out.expect_err();
    assert!(
        err.contains("error: deadline must be at least 60 s in the future (field deadline)"),
        "{out:?}"
    );

    // No credits: the API's insufficient_funds, with the hint.
    let out = gb
        .run(&[
            "jobs",
            "submit",
            f,
            "--market",
            MARKET,
            "--limit",
            "100",
            "--deadline",
            "2h",
        ])
        .await;
    let err = out.expect_err();
    assert!(
        err.contains("error: the job reserves 103 minor units"),
        "{out:?}"
    );
    assert!(err.contains("(field limit_price)"), "{out:?}");
    assert!(err.contains("hint: see `gridbook balance`"), "{out:?}");
    assert!(
        out.stdout
            .contains("not enough: the API will refuse the job"),
        "{out:?}"
    );

    // Not a job id; a job that is not yours (or does not exist).
    let out = gb.run(&["jobs", "get", "42"]).await;
    assert!(
        out.expect_err().contains("\"42\" is not a job id"),
        "{out:?}"
    );
    let out = gb.run(&["jobs", "get", &uuid_v4()]).await;
    assert!(out.expect_err().contains("error: job not found"), "{out:?}");

    // A studio is not an admin.
    let out = gb
        .run(&[
            "credit",
            &studio.id.to_string(),
            "100",
            "--reference",
            "r-1",
        ])
        .await;
    assert!(out.expect_err().starts_with("error: "), "{out:?}");

    // Nothing listens there.
    let gone = Gridbook::new("errors-gone", "http://127.0.0.1:9").with_key(&studio.key);
    let out = gone.run(&["balance"]).await;
    assert!(
        out.expect_err()
            .contains("cannot reach the API at http://127.0.0.1:9"),
        "{out:?}"
    );
}

fn uuid_v4() -> String {
    // Any id no job has.
    "0190a0a0-0000-7000-8000-000000000000".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_parses_for_scripts() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    let admin = app.admin().await;
    let gb = Gridbook::new("json", &app.address).with_key(&studio.key);
    let ad = Gridbook::new("json-admin", &app.address).with_key(&admin.key);

    // An admin credits the studio (idempotent by reference).
    let c = ad
        .run(&[
            "--json",
            "credit",
            &studio.id.to_string(),
            "250000",
            "--reference",
            "wire-1",
        ])
        .await
        .json();
    assert_eq!(c["amount"], 250_000, "{c}");
    let again = ad
        .run(&[
            "--json",
            "credit",
            &studio.id.to_string(),
            "250000",
            "--reference",
            "wire-1",
        ])
        .await
        .json();
    assert_eq!(again["transfer_id"], c["transfer_id"]);
    let out = ad
        .run(&[
            "credit",
            &studio.id.to_string(),
            "1",
            "--reference",
            "wire-1",
        ])
        .await;
    assert!(out.expect_err().contains("(field reference)"), "{out:?}");

    let b = gb.run(&["--json", "balance"]).await.json();
    assert_eq!(b["available"], 250_000);
    let st = gb.run(&["--json", "statement"]).await.json();
    assert_eq!(st["entries"][0]["code"], "deposit", "{st}");
    let out = gb.run(&["statement"]).await;
    assert!(out.expect_ok().contains("deposit"), "{out:?}");
    let m = gb.run(&["--json", "markets"]).await.json();
    assert!(
        m["markets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["symbol"] == MARKET),
        "{m}"
    );

    // A dry run uploads and estimates (an empty book: all 3 units rest at the limit).
    let f = gb.file("in.jsonl", &corpus(2_500));
    let d = gb
        .run(&[
            "--json",
            "jobs",
            "submit",
            f.to_str().unwrap(),
            "--market",
            MARKET,
            "--limit",
            "100",
            "--deadline",
            "2h",
            "--dry-run",
        ])
        .await
        .json();
    assert_eq!(d["file"]["lines"], 2_500, "{d}");
    assert_eq!(d["estimate"]["units"], 3, "{d}");
    assert_eq!(d["estimate"]["rest_units"], 3, "{d}");
    assert_eq!(d["estimate"]["reserved"], 309, "{d}");
    assert!(d["job"].is_null());

    // Submitted for real (queued: no engine here), listed, fetched, cancelled.
    let s = gb
        .run(&[
            "--json",
            "jobs",
            "submit",
            f.to_str().unwrap(),
            "--market",
            MARKET,
            "--limit",
            "100",
            "--deadline",
            "2h",
        ])
        .await
        .json();
    let id = s["job"]["id"].as_str().unwrap().to_owned();
    assert_eq!(s["job"]["status"], "queued", "{s}");
    assert_eq!(s["job"]["escrow"]["reserved"], 309, "{s}");
    let l = gb.run(&["--json", "jobs", "list"]).await.json();
    assert_eq!(l["data"][0]["id"], id.as_str());
    let g = gb.run(&["--json", "jobs", "get", &id]).await.json();
    assert_eq!(g["units"], 3);
    let out = gb.run(&["jobs", "get", &id]).await;
    assert!(
        out.expect_ok().contains("escrow    reserved 309"),
        "{out:?}"
    );
    let out = gb.run(&["jobs", "download", &id]).await;
    assert!(out.expect_err().contains("not ready"), "{out:?}");
    let x = gb.run(&["--json", "jobs", "cancel", &id]).await.json();
    assert!(x["cancel_requested_at"].is_string(), "{x}");
    let w = gb
        .run(&[
            "--json",
            "jobs",
            "watch",
            &id,
            "--timeout",
            "1",
            "--interval",
            "0.2",
        ])
        .await;
    assert_eq!(w.code, Some(4), "{w:?}");
    assert_eq!(w.json()["id"], id.as_str());

    // A provider's views parse too (no nodes yet).
    let provider = app.signup("provider").await;
    let pv = Gridbook::new("json-provider", &app.address).with_key(&provider.key);
    assert_eq!(
        pv.run(&["--json", "nodes", "list"]).await.json()["data"],
        serde_json::json!([])
    );
    assert_eq!(
        pv.run(&["--json", "asks", "list"]).await.json()["data"],
        serde_json::json!([])
    );
    assert_eq!(pv.run(&["--json", "earnings"]).await.json()["earned"], 0);
    let out = pv
        .run(&[
            "asks", "place", "--market", MARKET, "--price", "40", "--qty", "5",
        ])
        .await;
    assert!(out.expect_err().contains("you have no node"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_with_a_time_in_force_and_raise_a_jobs_limit() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 10_000).await;
    let gb = Gridbook::new("tif", &app.address).with_key(&studio.key);
    let f = gb.file("in.jsonl", &corpus(10));
    let f = f.to_str().unwrap();
    let submit = |tif: &'static str| {
        let gb = &gb;
        async move {
            gb.run(&[
                "--json", "jobs", "submit", f, "--market", MARKET, "--limit", "100", "--deadline",
                "1h", "--tif", tif,
            ])
            .await
        }
    };
    let fok = submit("fok").await.json();
    assert_eq!(fok["job"]["time_in_force"], "fok", "{fok}");
    let out = submit("gtd").await;
    assert!(out.expect_err().contains("--tif"), "{out:?}");
    let gtc = submit("gtc").await.json();
    let id = gtc["job"]["id"].as_str().unwrap_or_else(|| panic!("{gtc}")).to_owned();

    // Lower: the API's error naming the field; higher: the new limit and the larger reservation.
    let out = gb.run(&["jobs", "amend", &id, "--limit", "90"]).await;
    let err = out.expect_err();
    assert!(err.contains("limit_price can only be raised"), "{out:?}");
    assert!(err.contains("(field limit_price)"), "{out:?}");
    let j = gb.run(&["--json", "jobs", "amend", &id, "--limit", "120"]).await.json();
    assert_eq!(j["limit_price"], 120, "{j}");
    let open = j["escrow"]["open"].as_i64().unwrap();
    let bps = j["fee_bps"].as_i64().unwrap();
    assert_eq!(open, 120 + (120 * bps + 9_999) / 10_000, "1 unit at the new limit: {j}");
    let out = gb.run(&["jobs", "amend", &id, "--limit", "1000000000"]).await;
    assert!(out.expect_err().contains("limit_price"), "{out:?}");
    // An FOK job's bid never waits: nothing to raise.
    let out = gb.run(&["jobs", "amend", fok["job"]["id"].as_str().unwrap(), "--limit", "150"]).await;
    assert!(out.expect_err().contains("not_amendable") || out.expect_err().contains("never waits"), "{out:?}");
}
