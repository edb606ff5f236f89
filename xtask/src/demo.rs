//! The demo market `cargo xtask run` seeds once the API answers: a studio, a provider and an
//! admin account (a sign-up that meets an existing account reuses it), API keys in files under
//! `.gridbook/run/` (mode 0600), development credits for the studio through the admin path, the
//! demo providers' node configurations, and the demo jobs from `xtask/demo/`.
//!
//! Everything goes through the public HTTP API, as the `gridbook` CLI and the README do. The API
//! is local plain HTTP, so the client is a few lines over `TcpStream` (HTTP/1.0, one request
//! per connection, so a reply is delimited by the connection closing) rather than a dependency.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use crate::Result;

/// The demo accounts. Local development only: the API listens on 127.0.0.1, and the passwords
/// are fixed so that every run (and the README) can sign in again.
pub const STUDIO: Account = Account {
    email: "demo-studio@example.com",
    password: "gridbook demo studio",
    role: "studio",
};
pub const PROVIDER: Account = Account {
    email: "demo-provider@example.com",
    password: "gridbook demo provider",
    role: "provider",
};
pub const ADMIN: Account = Account {
    email: "demo-admin@example.com",
    password: "gridbook demo admin",
    role: "admin",
};

/// The demo providers: (node name, embedding ask price, terrain ask price). Different prices, so
/// the book has levels and one job fills at several.
pub const NODES: &[(&str, u64, u64)] = &[
    ("demo-node-1", 60, 20),
    ("demo-node-2", 70, 25),
    ("demo-node-3", 80, 30),
];
/// Units each demo node offers per market: a 3-unit embedding job takes one from each node.
const EMBED_ASK_QTY: u64 = 1;
const TERRAIN_ASK_QTY: u64 = 3;

pub const EMBED_MARKET: &str = "EMBED-MINILM-L6";
pub const TERRAIN_MARKET: &str = "RENDER-TERRAIN-128";
/// The demo studio's limit prices: above every demo ask.
const EMBED_LIMIT: u64 = 100;
const TERRAIN_LIMIT: u64 = 40;
/// The studio is topped up to this when its available balance falls under a tenth of it.
const STUDIO_CREDIT: i64 = 1_000_000;

#[derive(Clone, Copy)]
pub struct Account {
    pub email: &'static str,
    pub password: &'static str,
    pub role: &'static str,
}

// -------------------------------------------------------------------- HTTP

pub struct Api {
    addr: SocketAddr,
}

pub struct Reply {
    pub status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The API's error code, or the status and the start of the body.
    fn describe(&self) -> String {
        let v = self.json();
        match (v["error"]["code"].as_str(), v["error"]["message"].as_str()) {
            (Some(code), Some(msg)) => format!("HTTP {} {code}: {msg}", self.status),
            _ => format!(
                "HTTP {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            ),
        }
    }
}

pub enum Auth<'a> {
    None,
    Key(&'a str),
    Cookie(&'a str),
}

impl Api {
    pub fn new(port: u16) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One request; `body` is (content type, bytes).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        extra: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Result<Reply> {
        let what = format!("{method} {}{path}", self.url());
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .map_err(|e| format!("{what}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| format!("{what}: {e}"))?;
        let mut head = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n",
            self.addr
        );
        match auth {
            Auth::None => {}
            Auth::Key(k) => head.push_str(&format!("Authorization: Bearer {k}\r\n")),
            Auth::Cookie(c) => head.push_str(&format!("Cookie: {c}\r\n")),
        }
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let bytes = body.map(|(_, b)| b).unwrap_or_default();
        if let Some((ct, b)) = body {
            head.push_str(&format!(
                "Content-Type: {ct}\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())
            .and_then(|()| s.write_all(bytes))
            .map_err(|e| format!("{what}: sending: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .map_err(|e| format!("{what}: reading the reply: {e}"))?;
        parse_reply(&raw).ok_or_else(|| format!("{what}: not an HTTP reply ({} bytes)", raw.len()))
    }

    pub fn get(&self, path: &str, auth: Auth<'_>) -> Result<Reply> {
        self.call("GET", path, auth, &[], None)
    }

    fn post_json(
        &self,
        path: &str,
        auth: Auth<'_>,
        extra: &[(&str, &str)],
        body: &Value,
    ) -> Result<Reply> {
        self.call(
            "POST",
            path,
            auth,
            extra,
            Some(("application/json", body.to_string().as_bytes())),
        )
    }

    /// `GET /readyz` answers 200 (database and NATS reachable).
    pub fn ready(&self) -> bool {
        self.get("/readyz", Auth::None)
            .is_ok_and(|r| r.status == 200)
    }
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

// -------------------------------------------------------------------- seeding

/// What the seeding left: the key files and the ids the run needs.
pub struct Seeded {
    pub studio_key_file: PathBuf,
    pub studio_key: String,
    pub provider_key_file: PathBuf,
}

/// Signs up (or finds) the studio and the provider, makes (or reuses) their keys, and credits the
/// studio through the admin path. `create_admin` runs `gridbook-api create-admin` for
/// [`ADMIN`] (admins cannot sign up over HTTP); it is called only when the admin cannot sign in.
pub fn seed(
    api: &Api,
    dir: &Path,
    create_admin: impl FnOnce(&Account) -> Result<()>,
) -> Result<Seeded> {
    sign_up(api, &STUDIO)?;
    sign_up(api, &PROVIDER)?;
    let studio_key_file = dir.join("studio.key");
    let studio_key = key(api, &STUDIO, &studio_key_file)?;
    let provider_key_file = dir.join("provider.key");
    key(api, &PROVIDER, &provider_key_file)?;

    let balance = api.get("/v1/balance", Auth::Key(&studio_key))?;
    if balance.status != 200 {
        return Err(format!(
            "reading the demo studio's balance: {}",
            balance.describe()
        ));
    }
    let available = balance.json()["available"].as_i64().unwrap_or(0);
    if available < STUDIO_CREDIT / 10 {
        let admin_key_file = dir.join("admin.key");
        if !admin_key_file.exists() && session(api, &ADMIN).is_err() {
            create_admin(&ADMIN)?;
        }
        let admin_key = key(api, &ADMIN, &admin_key_file)?;
        let me = api.get("/v1/me", Auth::Key(&studio_key))?;
        let user_id = me.json()["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("GET /v1/me: {}", me.describe()))?;
        let amount = STUDIO_CREDIT - available;
        let body = json!({"user_id": user_id, "amount": amount, "reference": format!("xtask-run-demo-{}", unix_secs())});
        let r = api.post_json("/v1/admin/credits", Auth::Key(&admin_key), &[], &body)?;
        if r.status / 100 != 2 {
            return Err(format!("crediting the demo studio: {}", r.describe()));
        }
        println!(
            "xtask:   credited the demo studio {amount} credits (admin {})",
            ADMIN.email
        );
    } else {
        println!("xtask:   the demo studio has {available} credits available");
    }
    Ok(Seeded {
        studio_key_file,
        studio_key,
        provider_key_file,
    })
}

fn sign_up(api: &Api, a: &Account) -> Result<()> {
    let body = json!({"email": a.email, "password": a.password, "role": a.role});
    let r = api.post_json("/v1/accounts", Auth::None, &[], &body)?;
    match r.status {
        200..=299 => println!("xtask:   signed up {} ({})", a.email, a.role),
        409 if r.json()["error"]["code"] == "email_taken" => {
            println!("xtask:   {} exists: reusing it", a.email)
        }
        _ => return Err(format!("signing up {}: {}", a.email, r.describe())),
    }
    Ok(())
}

/// A browser session's cookie (`name=value`).
fn session(api: &Api, a: &Account) -> Result<String> {
    let r = api.post_json(
        "/v1/sessions",
        Auth::None,
        &[],
        &json!({"email": a.email, "password": a.password}),
    )?;
    if r.status / 100 != 2 {
        return Err(format!("signing in as {}: {}", a.email, r.describe()));
    }
    r.header("set-cookie")
        .filter_map(|c| c.split(';').next())
        .find(|c| c.trim_start().starts_with("gridbook_session="))
        .map(|c| c.trim().to_owned())
        .ok_or_else(|| {
            format!(
                "signing in as {}: no gridbook_session cookie in the reply",
                a.email
            )
        })
}

/// The key in `file` when the API still accepts it, else a new one (written there, mode 0600).
fn key(api: &Api, a: &Account, file: &Path) -> Result<String> {
    if let Ok(k) = fs::read_to_string(file) {
        let k = k.trim().to_owned();
        if api
            .get("/v1/me", Auth::Key(&k))
            .is_ok_and(|r| r.status == 200)
        {
            return Ok(k);
        }
    }
    let cookie = session(api, a)?;
    let r = api.post_json(
        "/v1/keys",
        Auth::Cookie(&cookie),
        &[],
        &json!({"name": "cargo xtask run (demo)"}),
    )?;
    let _ = api.call("DELETE", "/v1/sessions", Auth::Cookie(&cookie), &[], None);
    let k = r.json()["key"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("making a key for {}: {}", a.email, r.describe()))?;
    write_private(file, &format!("{k}\n"))?;
    println!("xtask:   new API key for {} in {}", a.email, file.display());
    Ok(k)
}

/// Writes `text` to `path` with mode 0600 (the mode is set on an existing file too).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

// -------------------------------------------------------------------- providers

/// The node configuration of one demo provider (`executor agent --node-config`).
pub fn node_config(
    api: &Api,
    nats_url: &str,
    state_file: &Path,
    name: &str,
    embed_price: u64,
    terrain_price: u64,
) -> String {
    format!(
        "# Written by `cargo xtask run` for its demo provider {name}; rewritten on every run.\n\
         api_url = \"{api}\"\nnats_url = \"{nats_url}\"\nstate_file = \"{state}\"\n\
         name = \"{name}\"\ngpu_model = \"cpu\"\nvram_mb = 0\nregion = \"local\"\n\
         heartbeat_secs = 5\nmax_concurrent = 1\ngrace_secs = 5\npricing_poll_secs = 10\n\n\
         [markets.{EMBED_MARKET}]\nkind = \"fixed\"\nprice = {embed_price}\nqty = {EMBED_ASK_QTY}\n\n\
         [markets.{TERRAIN_MARKET}]\nkind = \"fixed\"\nprice = {terrain_price}\nqty = {TERRAIN_ASK_QTY}\n",
        api = api.url(),
        state = state_file.display(),
    )
}

/// The number of ask levels and their total quantity in `market`'s book.
pub fn asks(api: &Api, market: &str) -> Result<(usize, u64)> {
    let r = api.get(&format!("/v1/markets/{market}/book?depth=20"), Auth::None)?;
    if r.status != 200 {
        return Err(format!("the {market} book: {}", r.describe()));
    }
    let v = r.json();
    let levels = v["asks"].as_array().cloned().unwrap_or_default();
    Ok((
        levels.len(),
        levels.iter().filter_map(|l| l["qty"].as_u64()).sum(),
    ))
}

// -------------------------------------------------------------------- demo jobs

/// A submitted demo job.
pub struct Job {
    pub id: String,
    pub market: &'static str,
    pub lines: u64,
    pub units: u64,
}

/// Uploads `file` and submits it to `market` at the demo limit, deadline in two hours.
/// `run_tag` makes the idempotency keys of one run (so a retry within the run is no new job).
pub fn submit(
    api: &Api,
    key: &str,
    market: &'static str,
    file: &Path,
    run_tag: &str,
) -> Result<Job> {
    let data = fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("demo.jsonl");
    let file_key = format!("{run_tag}-{market}-file");
    let r = api.call(
        "POST",
        &format!("/v1/files?purpose=batch&market={market}&filename={name}"),
        Auth::Key(key),
        &[("Idempotency-Key", &file_key)],
        Some(("application/jsonl", &data)),
    )?;
    if r.status / 100 != 2 {
        return Err(format!("uploading {}: {}", file.display(), r.describe()));
    }
    let f = r.json();
    let file_id = f["id"]
        .as_str()
        .ok_or_else(|| format!("uploading {}: no id in the reply", file.display()))?
        .to_owned();
    let limit = if market == EMBED_MARKET {
        EMBED_LIMIT
    } else {
        TERRAIN_LIMIT
    };
    let body = json!({
        "market": market,
        "input_file": file_id,
        "limit_price": limit,
        "deadline": rfc3339(unix_secs() + 2 * 3600),
    });
    let job_key = format!("{run_tag}-{market}-job");
    let r = api.post_json(
        "/v1/jobs",
        Auth::Key(key),
        &[("Idempotency-Key", &job_key)],
        &body,
    )?;
    if r.status / 100 != 2 {
        return Err(format!(
            "submitting the {market} demo job: {}",
            r.describe()
        ));
    }
    let j = r.json();
    Ok(Job {
        id: j["id"].as_str().unwrap_or_default().to_owned(),
        market,
        lines: f["lines"].as_u64().unwrap_or(0),
        units: j["units"].as_u64().unwrap_or(0),
    })
}

/// A job's status and (completed, failed, total) request counts.
pub fn job_status(api: &Api, key: &str, id: &str) -> Result<(String, u64, u64, u64)> {
    let r = api.get(&format!("/v1/jobs/{id}"), Auth::Key(key))?;
    if r.status != 200 {
        return Err(format!("GET /v1/jobs/{id}: {}", r.describe()));
    }
    let v = r.json();
    let c = &v["request_counts"];
    Ok((
        v["status"].as_str().unwrap_or("?").to_owned(),
        c["completed"].as_u64().unwrap_or(0),
        c["failed"].as_u64().unwrap_or(0),
        c["total"].as_u64().unwrap_or(0),
    ))
}

/// The market's tape as (price, qty) pairs, newest first.
pub fn trades(api: &Api, market: &str) -> Result<Vec<(u64, u64)>> {
    let r = api.get(
        &format!("/v1/markets/{market}/trades?limit=200"),
        Auth::None,
    )?;
    if r.status != 200 {
        return Err(format!("the {market} tape: {}", r.describe()));
    }
    Ok(r.json()["trades"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    (
                        t["price"].as_u64().unwrap_or(0),
                        t["qty"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `secs` since the Unix epoch as an RFC 3339 UTC time (days to civil date: Howard Hinnant's
/// algorithm).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn replies_parse_with_and_without_chunks() {
        let r = super::parse_reply(
            b"HTTP/1.1 409 Conflict\r\nSet-Cookie: a=b; Path=/\r\n\r\n{\"x\":1}",
        )
        .unwrap();
        assert_eq!((r.status, r.json()["x"].as_i64()), (409, Some(1)));
        assert_eq!(r.header("set-cookie").next(), Some("a=b; Path=/"));
        let r = super::parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"x\r\n4\r\n\":2}\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.json()["x"].as_i64(), Some(2));
    }
}
