//! Authorisation-bypass suite. Two users of each role; user A of each role owns one object of
//! every kind (key, file, job, node, ask). For EVERY route of the table below:
//! - without credentials → 401 (public routes: never 401);
//! - with a role the route does not allow → 403 (or 404 on another user's object);
//! - user B (same role as A) on A's object → 404 or 403, never A's data;
//! - A on A's object (GET routes) → 2xx, so the 404s above are not a broken route.
//!
//! The table is data: add a row when you add a route (`ROUTES`). `{key}`, `{file}`, `{job}`,
//! `{node}`, `{ask}` in a path or body stand for A's object of that kind, `{user}` for A's id.
//! Objects are inserted directly in the database so the suite tests ownership checks, not the
//! creation flows (those have their own tests).

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use gridbook_testkit::{TestApp, TestUser};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credentials needed.
    Public,
    /// Any authenticated user (own objects only).
    Any,
    /// Only these roles.
    Roles(&'static [&'static str]),
    /// Only a provider node's own credential or an assignment grant (`node_access`): every
    /// user's key or session is refused with 401. The node's side is `attacks.rs`.
    NodeOnly,
}

/// The object a route acts on (its path names A's object).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Obj {
    None,
    Key,
    File,
    Job,
    Node,
    Ask,
}

#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub object: Obj,
    /// A well-formed JSON body (placeholders substituted), or none.
    pub body: Option<&'static str>,
}

const fn r(
    method: &'static str,
    path: &'static str,
    access: Access,
    object: Obj,
    body: Option<&'static str>,
) -> Route {
    Route {
        method,
        path,
        access,
        object,
        body,
    }
}

use Access::{Any, NodeOnly, Public, Roles};

const STUDIO: Access = Roles(&["studio"]);
const PROVIDER: Access = Roles(&["provider"]);
const ADMIN: Access = Roles(&["admin"]);
/// Every signed-in user but an admin (the token market).
const TRADERS: Access = Roles(&["studio", "provider", "trader"]);

/// Every route of the API. Extend me.
pub const ROUTES: &[Route] = &[
    // identity
    r("POST", "/v1/accounts", Public, Obj::None, None),
    r("POST", "/v1/sessions", Public, Obj::None, None),
    r("GET", "/v1/me", Any, Obj::None, None),
    r("DELETE", "/v1/sessions", Any, Obj::None, None),
    r("GET", "/v1/keys", Any, Obj::None, None),
    r("POST", "/v1/keys", Any, Obj::None, Some(r#"{"name":"authz","scopes":["read"]}"#)),
    r("DELETE", "/v1/keys/{key}", Any, Obj::Key, None),
    // money
    r("GET", "/v1/balance", Any, Obj::None, None),
    r("GET", "/v1/statement", Any, Obj::None, None),
    r("GET", "/v1/statement?limit=5", Any, Obj::None, None),
    r(
        "POST",
        "/v1/admin/credits",
        ADMIN,
        Obj::None,
        Some(r#"{"user_id":"{user}","amount":1,"reference":"authz-{user}"}"#),
    ),
    // files
    r("GET", "/v1/files", Any, Obj::None, None),
    r("POST", "/v1/files?purpose=batch&market=EMBED-MINILM-L6", STUDIO, Obj::None, None),
    r("GET", "/v1/files/{file}", Any, Obj::File, None),
    r("GET", "/v1/files/{file}/content", Any, Obj::File, None),
    // private models (ids that are no model: 404 for every user; the owner's side and another
    // studio's are `private_models.rs`)
    r("GET", "/v1/models", Any, Obj::None, None),
    r("POST", "/v1/models?market=EMBED-MINILM-L6&name=authz", STUDIO, Obj::None, None),
    r("GET", "/v1/models/{node}", Any, Obj::None, None),
    r("GET", "/v1/models/{node}/releases", Any, Obj::None, None),
    // jobs
    r("GET", "/v1/jobs", Any, Obj::None, None),
    r(
        "POST",
        "/v1/jobs",
        STUDIO,
        Obj::None,
        Some(
            r#"{"market":"EMBED-MINILM-L6","input_file":"{file}","limit_price":10,"deadline":"2099-01-01T00:00:00Z"}"#,
        ),
    ),
    r("GET", "/v1/jobs/{job}", Any, Obj::Job, None),
    r("PATCH", "/v1/jobs/{job}", STUDIO, Obj::Job, Some(r#"{"limit_price":11}"#)),
    r("POST", "/v1/jobs/{job}/cancel", STUDIO, Obj::Job, None),
    r("GET", "/v1/jobs/{job}/output", Any, Obj::Job, None),
    r("GET", "/v1/jobs/{job}/errors", Any, Obj::Job, None),
    r("GET", "/v1/jobs/{job}/images/tile-0", Any, Obj::Job, None),
    r("GET", "/v1/jobs/{job}/verifications", Any, Obj::Job, None),
    r("GET", "/v1/jobs/{job}/assignments", Any, Obj::Job, None),
    // nodes, asks, assignments, earnings
    r("GET", "/v1/nodes", PROVIDER, Obj::None, None),
    r("GET", "/v1/cluster", PROVIDER, Obj::None, None),
    r(
        "POST",
        "/v1/nodes",
        PROVIDER,
        Obj::None,
        Some(r#"{"name":"n","gpu_model":"RTX 4090","vram_mb":24000,"region":"eu-west"}"#),
    ),
    r("GET", "/v1/nodes/{node}", PROVIDER, Obj::Node, None),
    r("POST", "/v1/nodes/{node}/credentials", PROVIDER, Obj::Node, None),
    r("DELETE", "/v1/nodes/{node}", PROVIDER, Obj::Node, None),
    // a node's own routes (its credential or a grant as bearer)
    r("POST", "/v1/assignments/{node}/grant", NodeOnly, Obj::None, None),
    r("GET", "/v1/assignments/{node}/input", NodeOnly, Obj::None, None),
    r("GET", "/v1/assignments/{node}/model", NodeOnly, Obj::None, None),
    r("GET", "/v1/assignments/{node}/model-key", NodeOnly, Obj::None, None),
    r("PUT", "/v1/assignments/{node}/output", NodeOnly, Obj::None, None),
    r(
        "POST",
        "/v1/nodes/{node}/challenge/commitment",
        PROVIDER,
        Obj::Node,
        Some(r#"{"nonce":"00","leaves":["0000000000000000000000000000000000000000000000000000000000000000"],"device":"cpu"}"#),
    ),
    r(
        "POST",
        "/v1/nodes/{node}/challenge",
        PROVIDER,
        Obj::Node,
        Some(r#"{"nonce":"00","embeddings":[],"elapsed_ms":1,"device":"cpu"}"#),
    ),
    r("GET", "/v1/asks", PROVIDER, Obj::None, None),
    r(
        "POST",
        "/v1/asks",
        PROVIDER,
        Obj::None,
        Some(r#"{"node_id":"{node}","market":"EMBED-MINILM-L6","price":10,"qty":1}"#),
    ),
    r("GET", "/v1/asks/{ask}", PROVIDER, Obj::Ask, None),
    r("PATCH", "/v1/asks/{ask}", PROVIDER, Obj::Ask, Some(r#"{"qty":1}"#)),
    r("DELETE", "/v1/asks/{ask}", PROVIDER, Obj::Ask, None),
    r("GET", "/v1/assignments", PROVIDER, Obj::None, None),
    r("GET", "/v1/earnings", PROVIDER, Obj::None, None),
    r("GET", "/v1/verification-tasks", PROVIDER, Obj::None, None),
    // an id that is no assignment: 404 for everyone (the owners' side is
    // `verification_outcomes_are_readable_by_the_jobs_studio_and_the_nodes_provider_only`)
    r("GET", "/v1/assignments/{node}/verification", Any, Obj::None, None),
    // the GRID token market (ids that are no order: 404 for every trader; the owner's side is
    // `token.rs`)
    r("GET", "/v1/token/orders", TRADERS, Obj::None, None),
    r(
        "POST",
        "/v1/token/orders",
        TRADERS,
        Obj::None,
        Some(r#"{"side":"buy","price":10,"quantity":1,"time_in_force":"gtc"}"#),
    ),
    r("GET", "/v1/token/orders/{node}", TRADERS, Obj::None, None),
    r("DELETE", "/v1/token/orders/{node}", TRADERS, Obj::None, None),
    r("GET", "/v1/token/balance", TRADERS, Obj::None, None),
    // the protocol's books (public)
    r("GET", "/v1/protocol/supply", Public, Obj::None, None),
    r("GET", "/v1/protocol/fees", Public, Obj::None, None),
    r("GET", "/v1/protocol/epochs", Public, Obj::None, None),
    r("GET", "/v1/protocol/epochs/1", Public, Obj::None, None),
    r("GET", "/v1/protocol/epochs/1/fees", Public, Obj::None, None),
    // markets (public)
    r("GET", "/v1/markets", Public, Obj::None, None),
    r("GET", "/v1/markets/EMBED-MINILM-L6", Public, Obj::None, None),
    r("GET", "/v1/markets/EMBED-MINILM-L6/book", Public, Obj::None, None),
    r("GET", "/v1/markets/EMBED-MINILM-L6/trades", Public, Obj::None, None),
    r("GET", "/v1/markets/EMBED-MINILM-L6/candles", Public, Obj::None, None),
    // probes and docs
    r("GET", "/healthz", Public, Obj::None, None),
    r("GET", "/readyz", Public, Obj::None, None),
    r("GET", "/openapi.json", Public, Obj::None, None),
    r("GET", "/v1/admin/dead-letters", ADMIN, Obj::None, None),
    // last: it suspends A's node
    r("POST", "/v1/admin/nodes/{node}/suspend", ADMIN, Obj::None, None),
];

pub const ROLES: [&str; 4] = ["studio", "provider", "trader", "admin"];

/// One user's objects (ids of rows owned by the user; `None` where the role has none).
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub key: Option<Uuid>,
    pub file: Option<Uuid>,
    pub job: Option<Uuid>,
    pub node: Option<Uuid>,
    pub ask: Option<Uuid>,
}

/// Inserts one file + job (studio) or node + ask (provider) owned by `user`.
pub async fn seed_objects(app: &TestApp, user: &TestUser) -> Objects {
    let mut o = Objects {
        key: Some(user.key_id),
        ..Objects::default()
    };
    let (file, job, node, ask) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let owner = user.id;
    let role = user.role.clone();
    let pool = app.app.db.clone();
    tokio::task::spawn_blocking(move || {
        use diesel::RunQueryDsl;
        use diesel::sql_types::{BigInt, Uuid as U};
        let mut c = pool.get().unwrap();
        let engine_id = || i64::from(rand_u32()) + 1_000_000_000;
        match role.as_str() {
            "studio" => {
                diesel::sql_query(
                    "INSERT INTO files (id, owner, purpose, sha256, bytes, lines) \
                     VALUES ($1, $2, 'batch', repeat('0', 64), 10, 1)",
                )
                .bind::<U, _>(file)
                .bind::<U, _>(owner)
                .execute(&mut c)
                .unwrap();
                diesel::sql_query(
                    "INSERT INTO jobs (id, owner, market, input_file, status, items, \
                     items_per_unit, units, limit_price, fee_bps, deadline, order_id, \
                     engine_order_id) VALUES ($1, $2, 'EMBED-MINILM-L6', $3, 'completed', 1, 1, \
                     1, 10, 0, now() + interval '1 day', $4, $5)",
                )
                .bind::<U, _>(job)
                .bind::<U, _>(owner)
                .bind::<U, _>(file)
                .bind::<U, _>(Uuid::new_v4())
                .bind::<BigInt, _>(engine_id())
                .execute(&mut c)
                .unwrap();
            }
            "provider" => {
                diesel::sql_query(
                    "INSERT INTO nodes (id, owner, name, gpu_model, vram_mb, region, status, \
                     challenge_nonce, challenge_status) VALUES ($1, $2, 'n', 'RTX 4090', 24000, \
                     'eu-west', 'probation', 'abcd', 'pending')",
                )
                .bind::<U, _>(node)
                .bind::<U, _>(owner)
                .execute(&mut c)
                .unwrap();
                diesel::sql_query(
                    "INSERT INTO asks (id, owner, node_id, market, engine_order_id, price, qty, \
                     status) VALUES ($1, $2, $3, 'EMBED-MINILM-L6', $4, 10, 1, 'closed')",
                )
                .bind::<U, _>(ask)
                .bind::<U, _>(owner)
                .bind::<U, _>(node)
                .bind::<BigInt, _>(engine_id())
                .execute(&mut c)
                .unwrap();
            }
            _ => {}
        }
    })
    .await
    .unwrap();
    match user.role.as_str() {
        "studio" => {
            o.file = Some(file);
            o.job = Some(job);
        }
        "provider" => {
            o.node = Some(node);
            o.ask = Some(ask);
        }
        _ => {}
    }
    o
}

fn rand_u32() -> u32 {
    let b = Uuid::new_v4();
    let b = b.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 2
}

/// Substitutes placeholders with `objects` (A's) and `user` (A's id); `None` when the route's
/// object does not exist for A's role.
pub fn fill(template: &str, user: &TestUser, o: &Objects) -> String {
    let nil = Uuid::nil();
    template
        .replace("{user}", &user.id.to_string())
        .replace("{key}", &o.key.unwrap_or(nil).to_string())
        .replace("{file}", &o.file.unwrap_or(nil).to_string())
        .replace("{job}", &o.job.unwrap_or(nil).to_string())
        .replace("{node}", &o.node.unwrap_or(nil).to_string())
        .replace("{ask}", &o.ask.unwrap_or(nil).to_string())
}

/// Which role owns objects of this kind.
pub fn owner_role(obj: Obj) -> Option<&'static str> {
    match obj {
        Obj::None => None,
        Obj::Key => Some("studio"),
        Obj::File | Obj::Job => Some("studio"),
        Obj::Node | Obj::Ask => Some("provider"),
    }
}

pub async fn send(
    app: &TestApp,
    route: &Route,
    who: Option<&TestUser>,
    path: &str,
    body: Option<String>,
) -> reqwest::Response {
    let method = Method::from_bytes(route.method.as_bytes()).unwrap();
    let mut b = app.http.request(method, app.url(path));
    if let Some(u) = who {
        b = b.header("Authorization", u.bearer());
    }
    if let Some(body) = body {
        b = b.header("Content-Type", "application/json").body(body);
    }
    b.send().await.unwrap()
}

pub fn allowed(access: Access, role: &str) -> bool {
    match access {
        Public | Any => true,
        Roles(rs) => rs.contains(&role),
        NodeOnly => false,
    }
}

#[tokio::test]
async fn no_route_lets_a_user_reach_another_users_objects() {
    let app = TestApp::spawn().await;
    // Two users of each role: A owns objects, B tries to reach them.
    let mut a = Vec::new();
    let mut b = Vec::new();
    for role in ROLES {
        let (ua, ub) = if role == "admin" {
            (app.admin().await, app.admin().await)
        } else {
            (app.signup(role).await, app.signup(role).await)
        };
        let objects = seed_objects(&app, &ua).await;
        a.push((ua, objects));
        b.push(ub);
    }
    let by_role = |users: &[(TestUser, Objects)], role: &str| {
        users.iter().find(|(u, _)| u.role == role).cloned().unwrap()
    };

    let mut failures = Vec::new();
    for route in ROUTES {
        let owner_role = owner_role(route.object).unwrap_or("studio");
        let (owner, objects) = by_role(&a, owner_role);
        let path = fill(route.path, &owner, &objects);
        let body = route.body.map(|t| fill(t, &owner, &objects));

        // 1. Without credentials.
        let res = send(&app, route, None, &path, body.clone()).await;
        let s = res.status().as_u16();
        match route.access {
            Public if s == 401 || s == 403 => {
                failures.push(format!("{} {path}: public but {s} without credentials", route.method))
            }
            Public => {}
            _ if s != 401 => failures.push(format!(
                "{} {path}: {s} without credentials, want 401",
                route.method
            )),
            _ => {}
        }
        if route.access == Public {
            continue;
        }

        // 2. Every user that is not the owner: another user of the owner's role (B) and users
        //    of every other role (both A and B of them).
        let mut intruders: Vec<&TestUser> = b.iter().collect();
        intruders.extend(a.iter().map(|(u, _)| u).filter(|u| u.id != owner.id));
        for intruder in intruders {
            let res = send(&app, route, Some(intruder), &path, body.clone()).await;
            let s = res.status().as_u16();
            let text = res.text().await.unwrap_or_default();
            let role_ok = allowed(route.access, &intruder.role);
            let bad = if route.access == NodeOnly {
                s != 401
            } else if !role_ok {
                s != 403 && !(route.object != Obj::None && s == 404)
            } else if route.object != Obj::None {
                s != 404 && s != 403
            } else {
                // Own-data routes (lists, balance, create): must not fail on authorisation,
                // and must not show the owner's objects.
                s == 401 || s == 403 || s >= 500
            };
            let leaks = [objects.file, objects.job, objects.node, objects.ask]
                .iter()
                .flatten()
                .any(|id| text.contains(&id.to_string()))
                && route.object == Obj::None
                && route.method == "GET";
            if bad || leaks {
                failures.push(format!(
                    "{} {path} as {} ({}): {s} {}",
                    route.method,
                    intruder.role,
                    if intruder.id == owner.id { "owner" } else { "intruder" },
                    text.chars().take(200).collect::<String>()
                ));
            }
        }

        // 3. The owner reaches their own object (GET routes), so the 404s above are real.
        if route.object != Obj::None && route.method == "GET" && allowed(route.access, &owner.role) {
            let res = send(&app, route, Some(&owner), &path, None).await;
            let s = res.status().as_u16();
            // Contents (seeded rows have no stored object; a job without outputs has no output
            // file) are only checked for not refusing the owner.
            let content = path.ends_with("/output")
                || path.ends_with("/errors")
                || path.ends_with("/content")
                || path.contains("/images/");
            let ok = if content { s != 401 && s != 403 } else { (200..300).contains(&s) };
            if !ok {
                failures.push(format!(
                    "{} {path} as owner: {s} {}",
                    route.method,
                    res.text().await.unwrap_or_default()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "authorisation failures:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn revoked_keys_and_expired_sessions_get_401_on_every_route() {
    let app = TestApp::spawn().await;
    let mut users = Vec::new();
    for role in ["studio", "provider", "trader"] {
        users.push(app.signup(role).await);
    }
    users.push(app.admin().await);
    for u in &users {
        let r = app
            .http
            .delete(app.url(&format!("/v1/keys/{}", u.key_id)))
            .header("Authorization", u.bearer())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let objects = Objects::default();
    let mut failures = Vec::new();
    for route in ROUTES.iter().filter(|r| r.access != Public) {
        for u in &users {
            let path = fill(route.path, u, &objects);
            let body = route.body.map(|t| fill(t, u, &objects));
            let s = send(&app, route, Some(u), &path, body).await.status().as_u16();
            if s != 401 {
                failures.push(format!("{} {path} with a revoked {} key: {s}", route.method, u.role));
            }
        }
        // A session token that was never issued (with a well-formed body: a malformed body may
        // be refused first, 4xx either way).
        let method = Method::from_bytes(route.method.as_bytes()).unwrap();
        let path = fill(route.path, &users[0], &objects);
        let mut req = app
            .http
            .request(method, app.url(&path))
            .header("Cookie", "gridbook_session=0000");
        if let Some(body) = route.body.map(|t| fill(t, &users[0], &objects)) {
            req = req.header("Content-Type", "application/json").body(body);
        }
        let s = req
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if s != 401 {
            failures.push(format!("{} {path} with an unknown session: {s}", route.method));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every route in the OpenAPI document is in the table above (so new routes get checked).
#[tokio::test]
async fn the_route_table_covers_the_openapi_document() {
    let app = TestApp::spawn().await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let normalise = |p: &str| {
        let p = p.split('?').next().unwrap_or(p);
        p.split('/')
            .map(|seg| {
                let number = !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit());
                if seg.starts_with('{') || seg == "EMBED-MINILM-L6" || seg == "tile-0" || number { "{}" } else { seg }
            })
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut missing = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                continue;
            }
            if path.ends_with("/ws") {
                continue; // WebSocket upgrade: public market data, tested by its module.
            }
            let found = ROUTES
                .iter()
                .any(|r| r.method == method && normalise(r.path) == normalise(path));
            if !found {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(missing.is_empty(), "routes missing from authz::ROUTES: {missing:?}");
    let _ = json!(null);
}

/// `GET /v1/assignments/{id}/verification` and `GET /v1/jobs/{id}/verifications`: the studio
/// that owns the job reads both, the provider that owns the node its assignment's outcome;
/// another studio, another provider, a trader and an admin get 404; nobody anonymous.
#[tokio::test]
async fn verification_outcomes_are_readable_by_the_jobs_studio_and_the_nodes_provider_only() {
    let app = TestApp::spawn().await;
    let (studio, provider) = (app.signup("studio").await, app.signup("provider").await);
    let (sa, pa) = (seed_objects(&app, &studio).await, seed_objects(&app, &provider).await);
    let (job, node, assignment) = (sa.job.unwrap(), pa.node.unwrap(), Uuid::new_v4());
    let pool = app.app.db.clone();
    tokio::task::spawn_blocking(move || {
        use diesel::RunQueryDsl;
        use diesel::sql_types::Uuid as U;
        let mut c = pool.get().unwrap();
        diesel::sql_query(
            "INSERT INTO job_assignments (id, job_id, node_id, market, unit_start, units, item_start, \
             item_count, price, status, deadline, detail) VALUES ($1, $2, $3, 'EMBED-MINILM-L6', 0, 1, \
             0, 1, 10, 'failed', now(), 'verification failed')",
        )
        .bind::<U, _>(assignment)
        .bind::<U, _>(job)
        .bind::<U, _>(node)
        .execute(&mut c)
        .unwrap();
        diesel::sql_query(
            "INSERT INTO assignment_verifications (assignment_id, job_id, node_id, market, outcome, \
             failed_check, detail, sample_seed, sampled_items, item_figures, remedy, node_action) \
             VALUES ($1, $2, $3, 'EMBED-MINILM-L6', 'failed', 'sample_mismatch', 'differs', 'ab', \
             '[\"i0\"]', '[{\"custom_id\":\"i0\",\"node_sha256\":\"11\",\"reference_sha256\":\"22\",\
             \"cosine\":0.5,\"mean_abs_diff\":null,\"ok\":false,\"error\":\"cosine\"}]', 'refunded', 'suspended')",
        )
        .bind::<U, _>(assignment)
        .bind::<U, _>(job)
        .bind::<U, _>(node)
        .execute(&mut c)
        .unwrap();
    })
    .await
    .unwrap();
    let one = format!("/v1/assignments/{assignment}/verification");
    let all = format!("/v1/jobs/{job}/verifications");
    let get = |who: &TestUser, path: &str| {
        let (who, path) = (who.clone(), path.to_owned());
        let app = &app;
        async move { app.get_as(&who, &path).await }
    };
    // The owners.
    for who in [&studio, &provider] {
        let r = get(who, &one).await;
        assert_eq!(r.status(), 200, "{}", who.role);
        let v: Value = r.json().await.unwrap();
        assert_eq!((v["outcome"].as_str(), v["failed_check"].as_str()), (Some("failed"), Some("sample_mismatch")));
        assert_eq!(v["items"][0]["cosine"], json!(0.5));
        assert_eq!(v["sampled_items"], json!(["i0"]));
    }
    let r = get(&studio, &all).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"][0]["assignment_id"], json!(assignment.to_string()));
    assert_eq!(get(&provider, &all).await.status(), 404, "a job's list is its studio's");
    // Everyone else.
    let intruders = [
        app.signup("studio").await,
        app.signup("provider").await,
        app.signup("trader").await,
        app.admin().await,
    ];
    for who in &intruders {
        for path in [&one, &all] {
            let r = get(who, path).await;
            let s = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            assert_eq!(s, 404, "{} on {path}: {text}", who.role);
            assert!(!text.contains("sample_mismatch"), "{text}");
        }
    }
    for path in [&one, &all] {
        assert_eq!(app.http.get(app.url(path)).send().await.unwrap().status(), 401);
    }
    // Not verified yet: 404 not_ready for the owner.
    let pending = Uuid::new_v4();
    let pool = app.app.db.clone();
    tokio::task::spawn_blocking(move || {
        use diesel::RunQueryDsl;
        use diesel::sql_types::Uuid as U;
        let mut c = pool.get().unwrap();
        diesel::sql_query(
            "INSERT INTO job_assignments (id, job_id, node_id, market, unit_start, units, item_start, \
             item_count, price, status, deadline) VALUES ($1, $2, $3, 'EMBED-MINILM-L6', 0, 1, 0, 1, 10, \
             'assigned', now())",
        )
        .bind::<U, _>(pending)
        .bind::<U, _>(job)
        .bind::<U, _>(node)
        .execute(&mut c)
        .unwrap();
    })
    .await
    .unwrap();
    let r = get(&studio, &format!("/v1/assignments/{pending}/verification")).await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("not_ready"));
}
