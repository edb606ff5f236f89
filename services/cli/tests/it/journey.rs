//! One job that really runs, driven only through the CLI: a provider's executor agent (real
//! ONNX Runtime and MiniLM) offers 5 units at 40; the studio submits 1,500 lines (2 units) at a
//! limit of 100 and sees the estimate from the book, watches the job to completion and downloads
//! the output; the provider sees its node, its earnings, and places, amends and cancels an ask.

use std::time::{Duration, Instant};

use executor::agent::pricing::Policy;
use gridbook_testkit::Stack;
use serde_json::Value;

use crate::cli::{Gridbook, corpus};

const MARKET: &str = "EMBED-MINILM-L6";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_with_an_estimate_watch_to_completion_and_download() {
    let stack = Stack::start("cli-journey").await;
    let app = &stack.app;

    let provider = app.signup("provider").await;
    let agent = stack.start_agent(&provider, MARKET, Policy::Fixed { price: 40, qty: 5 });
    let started = Instant::now();
    loop {
        let book: Value = app
            .http
            .get(app.url(&format!("/v1/markets/{MARKET}/book")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if book["asks"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            !agent.is_finished(),
            "the agent stopped: {:?}",
            agent.join().await
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no ask on the book: {book}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let studio = app.signup("studio").await;
    app.credit(&studio, 1_000_000).await;
    let gb = Gridbook::new("journey", &app.address).with_key(&studio.key);
    let input = gb.file("in.jsonl", &corpus(1_500));

    // The estimate: 2 units, both available at 40 (≤ the limit 100): 80 + ⌈2 %·80⌉ = 82;
    // reserved 2 × (100 + 3) = 206.
    let out = gb
        .run(&[
            "jobs",
            "submit",
            input.to_str().unwrap(),
            "--market",
            MARKET,
            "--limit",
            "100",
            "--deadline",
            "1h",
        ])
        .await;
    let text = out.expect_ok();
    assert!(text.contains("1500 lines"), "{out:?}");
    assert!(text.contains("1000 lines a unit → 2 units"), "{out:?}");
    assert!(
        text.contains(
            "2 of 2 units available now at ≤ 100 (best ask 40): about 80 + fee 2 = 82 credits"
        ),
        "{out:?}"
    );
    assert!(
        text.contains("reserved now: 2 × (100 + fee 3) = 206 credits"),
        "{out:?}"
    );
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("job "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id in {out:?}"))
        .to_owned();

    // Watch until it ends: progress on stderr, the outcome on stdout, exit 0.
    let out = gb.run(&["jobs", "watch", &id, "--interval", "0.5"]).await;
    let text = out.expect_ok();
    assert!(text.contains(&format!("job {id} completed")), "{out:?}");
    assert!(text.contains("1500 succeeded, 0 failed of 1500"), "{out:?}");
    assert!(
        out.stderr
            .contains("completed: 1500/1500 items (1500 succeeded, 0 failed)"),
        "{out:?}"
    );

    // Download: every custom_id once, in order, a 384-wide embedding each.
    let dest = gb.path("out.jsonl");
    let out = gb
        .run(&[
            "--json",
            "jobs",
            "download",
            &id,
            "-o",
            dest.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.json()["lines"], 1_500, "{out:?}");
    let lines: Vec<Value> = std::fs::read_to_string(&dest)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1_500);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["custom_id"], format!("req-{i:05}"));
        assert_eq!(l["embedding"].as_array().map(Vec::len), Some(384));
    }
    // No failures: the error file is empty, said plainly.
    let errors = gb.path("errors.jsonl");
    let out = gb
        .run(&[
            "jobs",
            "download",
            &id,
            "--errors",
            "-o",
            errors.to_str().unwrap(),
        ])
        .await;
    out.expect_ok();
    assert_eq!(std::fs::read_to_string(&errors).unwrap(), "");

    // Money as the CLI shows it: paid 80 + fee, nothing held.
    let job = gb.run(&["--json", "jobs", "get", &id]).await.json();
    assert_eq!(job["status"], "completed");
    let b = gb.run(&["--json", "balance"]).await.json();
    assert_eq!(b["held"], 0, "{b}");
    let paid = 1_000_000 - b["available"].as_i64().unwrap();
    assert!((80..=84).contains(&paid), "paid {paid}");

    // The provider: its node, its earnings, and an ask by hand on its only node.
    let pv = Gridbook::new("journey-provider", &app.address).with_key(&provider.key);
    let nodes = pv.run(&["--json", "nodes", "list"]).await.json();
    assert_eq!(nodes["data"][0]["challenge_status"], "passed", "{nodes}");
    let out = pv.run(&["nodes", "list"]).await;
    assert!(out.expect_ok().contains("passed"), "{out:?}");
    let e = pv.run(&["--json", "earnings"]).await.json();
    assert_eq!(
        (e["units"].as_i64(), e["earned"].as_i64()),
        (Some(2), Some(80)),
        "{e}"
    );
    let out = pv.run(&["earnings"]).await;
    let text = out.expect_ok();
    assert!(text.contains("earned       80 credits for 2 units"), "{out:?}");
    assert!(text.contains("verifying    0 credits for 0 samples"), "{out:?}");
    let ask = pv
        .run(&[
            "--json", "asks", "place", "--market", MARKET, "--price", "500", "--qty", "1",
        ])
        .await
        .json();
    let ask_id = ask["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{ask}"))
        .to_owned();
    assert_eq!(ask["price"], 500);
    let amended = pv
        .run(&["--json", "asks", "amend", &ask_id, "--price", "450"])
        .await
        .json();
    assert_eq!(amended["price"], 450, "{amended}");
    let out = pv.run(&["asks", "list"]).await;
    assert!(out.expect_ok().contains(&ask_id), "{out:?}");
    let cancelled = pv.run(&["--json", "asks", "cancel", &ask_id]).await.json();
    assert_ne!(cancelled["status"], "open", "{cancelled}");
    // A post-only ask with its own self-trade-prevention mode; an unknown mode is refused
    // before any request.
    let po = pv
        .run(&[
            "--json", "asks", "place", "--market", MARKET, "--price", "500", "--qty", "1",
            "--post-only", "--stp", "cancel_oldest",
        ])
        .await
        .json();
    assert_eq!(
        (po["post_only"].as_bool(), po["stp"].as_str()),
        (Some(true), Some("cancel_oldest")),
        "{po}"
    );
    let out = pv
        .run(&[
            "asks", "place", "--market", MARKET, "--price", "500", "--qty", "1", "--stp", "never",
        ])
        .await;
    assert!(out.expect_err().contains("--stp"), "{out:?}");

    let _ = agent.stop(Duration::from_secs(60)).await;
}
