//! Log-in and -out, who am I, markets, balance, statement, admin credits.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Ctx;
use crate::config::{self, Credentials};
use crate::output::{self, i, s};

const SESSION_COOKIE: &str = "gridbook_session";

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Your account's email [default: asked].
    #[arg(long, env = "GRIDBOOK_EMAIL")]
    email: Option<String>,
    /// Read the password from the first line of stdin (else GRIDBOOK_PASSWORD, else asked
    /// without echo).
    #[arg(long)]
    password_stdin: bool,
    /// The name of the API key to create [default: gridbook CLI on <host>].
    #[arg(long)]
    key_name: Option<String>,
}

/// Asks on the terminal (stderr) and reads a line from stdin; `hidden` turns echo off.
fn prompt(question: &str, hidden: bool) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "{question} is needed but stdin is not a terminal: pass it as an option (see `gridbook login --help`)"
        );
    }
    eprint!("{question}: ");
    std::io::stderr().flush().ok();
    let echo_off = hidden
        && std::process::Command::new("stty")
            .arg("-echo")
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success());
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if echo_off {
        let _ = std::process::Command::new("stty")
            .arg("echo")
            .stdin(std::process::Stdio::inherit())
            .status();
        eprintln!();
    }
    read.context("reading from the terminal")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn password(args: &LoginArgs) -> anyhow::Result<String> {
    if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    if let Ok(p) = std::env::var("GRIDBOOK_PASSWORD")
        && !p.is_empty()
    {
        return Ok(p);
    }
    prompt("password", true)
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.chars().all(|c| !c.is_control()))
        .map(|h| h.chars().take(60).collect())
        .unwrap_or_else(|| "this machine".into())
}

/// The value of the session cookie in a log-in answer.
fn session_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim() == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_owned())
}

pub async fn login(ctx: &Ctx, args: LoginArgs, stored: Option<Credentials>) -> anyhow::Result<()> {
    let email = match &args.email {
        Some(e) => e.clone(),
        None => prompt("email", false)?,
    };
    let password = password(&args)?;
    if password.is_empty() {
        bail!("the password is empty");
    }
    let c = &ctx.client;
    // Not retried: each failed attempt counts towards the account's back-off.
    let r = c
        .send(false, || {
            c.plain(Method::POST, "/v1/sessions")
                .json(&json!({"email": email, "password": password}))
        })
        .await?;
    let cookie = session_cookie(&r).context("the API logged in but sent no session cookie")?;
    let user = crate::client::Client::json(r).await?;
    let with_session = |m: Method, path: &str| {
        c.plain(m, path).header(
            reqwest::header::COOKIE,
            format!("{SESSION_COOKIE}={cookie}"),
        )
    };
    let name = args.key_name.clone().unwrap_or_else(|| {
        format!(
            "gridbook CLI on {} ({})",
            host_name(),
            chrono::Utc::now().format("%Y-%m-%d")
        )
    });
    // Not retried either: a replay answers without the secret.
    let r = c
        .send(false, || {
            with_session(Method::POST, "/v1/keys").json(&json!({"name": name}))
        })
        .await;
    let key = match r {
        Ok(r) => crate::client::Client::json(r).await?,
        Err(e) => {
            let _ = with_session(Method::DELETE, "/v1/sessions").send().await;
            return Err(e);
        }
    };
    let secret = key["key"]
        .as_str()
        .context("the API created a key but did not return it")?;
    let creds = Credentials {
        api: c.base().to_owned(),
        key: secret.to_owned(),
        key_id: s(&key["id"]),
        email: s(&user["email"]),
        role: s(&user["role"]),
    };
    let path = config::store(&creds)?;
    // The key this replaces, when it was this user's on this API: revoke it (best effort).
    if let Some(old) =
        stored.filter(|o| o.api == creds.api && o.email == creds.email && o.key_id != creds.key_id)
    {
        let _ = with_session(
            Method::DELETE,
            &format!("/v1/keys/{}", output::encode(&old.key_id)),
        )
        .send()
        .await;
    }
    let _ = with_session(Method::DELETE, "/v1/sessions").send().await;
    if ctx.json {
        output::print_json(&json!({
            "user": user,
            "api": creds.api,
            "key_id": creds.key_id,
            "key_prefix": key["prefix"],
            "scopes": key["scopes"],
            "credentials_file": path.display().to_string(),
        }));
    } else {
        println!(
            "logged in as {} ({}) at {}",
            creds.email, creds.role, creds.api
        );
        println!(
            "API key {} (scopes {}) stored in {} (mode 0600)",
            s(&key["prefix"]),
            key["scopes"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            path.display()
        );
    }
    Ok(())
}

pub async fn logout(ctx: &Ctx, stored: Option<Credentials>) -> anyhow::Result<()> {
    let Some(creds) = stored else {
        if ctx.json {
            output::print_json(&json!({"logged_out": false, "reason": "no stored credentials"}));
        } else {
            println!("not logged in (no credentials file)");
        }
        return Ok(());
    };
    let client = crate::client::Client::new(&creds.api, Some(creds.key.clone()))?;
    let revoked = client
        .send_json(
            Method::DELETE,
            &format!("/v1/keys/{}", output::encode(&creds.key_id)),
            None,
            None,
        )
        .await;
    config::remove()?;
    let note = match &revoked {
        Ok(_) => "key revoked".to_owned(),
        Err(e) => format!(
            "the key could not be revoked ({e:#}); revoke it with the API's DELETE /v1/keys/{}",
            creds.key_id
        ),
    };
    if ctx.json {
        output::print_json(
            &json!({"logged_out": true, "key_id": creds.key_id, "revoked": revoked.is_ok()}),
        );
    } else {
        println!("logged out of {} ({}); {note}", creds.api, creds.email);
    }
    Ok(())
}

pub async fn whoami(ctx: &Ctx) -> anyhow::Result<()> {
    let me = ctx.client.get("/v1/me").await?;
    if ctx.json {
        output::print_json(&me);
        return Ok(());
    }
    println!("{} ({}) at {}", s(&me["email"]), s(&me["role"]), ctx.api);
    println!("  user      {}", s(&me["id"]));
    println!("  account   {}", s(&me["account_id"]));
    println!(
        "  auth      {} with scopes {}",
        s(&me["auth"]),
        me["scopes"]
            .as_array()
            .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    Ok(())
}

pub async fn markets(ctx: &Ctx) -> anyhow::Result<()> {
    let list = ctx.client.get_public("/v1/markets").await?;
    if ctx.json {
        output::print_json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list["markets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            vec![
                s(&m["symbol"]),
                s(&m["workload"]),
                s(&m["items_per_unit"]),
                format!("{}..{}", s(&m["min_price"]), s(&m["max_price"])),
                output::bps(i(&m["fee_bps"])),
                s(&m["bbo"]["bid"]),
                s(&m["bbo"]["ask"]),
            ]
        })
        .collect();
    output::table(
        &[
            "MARKET",
            "WORKLOAD",
            "LINES/UNIT",
            "PRICE",
            "FEE",
            "BID",
            "ASK",
        ],
        &rows,
    );
    Ok(())
}

pub async fn balance(ctx: &Ctx) -> anyhow::Result<()> {
    let b = ctx.client.get("/v1/balance").await?;
    if ctx.json {
        output::print_json(&b);
        return Ok(());
    }
    let cur = s(&b["currency"]);
    println!("available  {} {cur}", i(&b["available"]));
    println!(
        "held       {} {cur}  (reserved for your open jobs)",
        i(&b["held"])
    );
    println!(
        "pending    {} {cur}  (incoming, not final yet)",
        i(&b["pending_credits"])
    );
    println!("posted     {} {cur}", i(&b["posted"]));
    Ok(())
}

#[derive(Args, Debug)]
pub struct StatementArgs {
    /// How many entries (1 to 500).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Only entries older than this sequence number (the previous page's `next_before`).
    #[arg(long)]
    before: Option<i64>,
}

pub async fn statement(ctx: &Ctx, a: StatementArgs) -> anyhow::Result<()> {
    let mut path = format!("/v1/statement?limit={}", a.limit);
    if let Some(b) = a.before {
        path.push_str(&format!("&before={b}"));
    }
    let page = ctx.client.get(&path).await?;
    if ctx.json {
        output::print_json(&page);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let sign = if e["direction"] == "credit" { "+" } else { "-" };
            vec![
                s(&e["seq"]),
                output::time(&e["created_at"]),
                s(&e["code"]),
                s(&e["kind"]),
                format!("{sign}{}", i(&e["amount"])),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no entries");
    } else {
        output::table(&["SEQ", "TIME", "WHAT", "KIND", "AMOUNT"], &rows);
    }
    if !page["next_before"].is_null() {
        println!(
            "more: gridbook statement --before {}",
            s(&page["next_before"])
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct CreditArgs {
    /// The user to credit.
    user_id: String,
    /// Minor units (credits), 1 to 10^12.
    amount: i64,
    /// The deposit's external reference (1 to 200 characters); a credit is idempotent by it.
    #[arg(long)]
    reference: String,
}

pub async fn credit(ctx: &Ctx, a: CreditArgs) -> anyhow::Result<()> {
    let user_id: uuid::Uuid =
        a.user_id.trim().parse().map_err(|_| {
            anyhow::anyhow!("USER_ID {:?} is not a UUID (field user_id)", a.user_id)
        })?;
    let body: Value = json!({"user_id": user_id, "amount": a.amount, "reference": a.reference});
    let out = ctx.client.post("/v1/admin/credits", &body).await?;
    if ctx.json {
        output::print_json(&out);
    } else {
        println!(
            "credited {} to user {} (reference {:?}, transfer {})",
            i(&out["amount"]),
            s(&out["user_id"]),
            s(&out["reference"]),
            s(&out["transfer_id"])
        );
    }
    Ok(())
}
