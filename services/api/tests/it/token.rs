//! The GRID token market (`GRID-CREDITS`) through the real processes: a private nats-server,
//! the real engine serving dev.toml's markets, the settlement worker and the API. GRID is bought
//! and sold for credits; every fill moves both legs exactly (credits buyer → seller + fee, GRID
//! seller → buyer), refusals reserve nothing, cancels release exactly the unfilled rest, the
//! protocol's buyback (`settlement::token::place_protocol_buy`) fills once per epoch, and the
//! ledger's invariants hold throughout.

use std::time::{Duration, Instant};

use gridbook_ledger::{AccountCode, AccountId, NewTransfer, TransferId};
use gridbook_testkit::settlement::token as settlement_token;
use gridbook_testkit::{Stack, TestApp, TestUser, error_code};
use serde_json::{Value, json};
use uuid::Uuid;

const MARKET: &str = "GRID-CREDITS";
const UNIT: i64 = gridbook_ledger::token::UNIT;

/// Gives `user` `units` GRID base units: the genesis supply credits the emission reserve, the
/// reserve pays the user (the lead's `supply` module replaces this set-up later).
async fn fund_grid(app: &TestApp, user: Uuid, units: i64) {
    let pool = app.app.db.clone();
    tokio::task::spawn_blocking(move || {
        use gridbook_ledger::{store, supply};
        let mut c = pool.get().unwrap();
        // GRID exists only out of the bounded supply's reserve (what an epoch's emission and
        // reward do, in one transfer here).
        supply::genesis(&mut c).unwrap();
        let holder = gridbook_ledger::token::ensure_user_account(&mut c, user).unwrap();
        let reserve = supply::account(AccountCode::EmissionReserve);
        store::create_transfer(&mut c, &NewTransfer::posted(TransferId::new(), reserve, holder, units, "reward")).unwrap();
    })
    .await
    .unwrap();
}

/// Runs `f` with a connection of the stack's database.
async fn with_db<T: Send + 'static>(
    app: &TestApp,
    f: impl FnOnce(&mut diesel::PgConnection) -> T + Send + 'static,
) -> T {
    let pool = app.app.db.clone();
    tokio::task::spawn_blocking(move || f(&mut pool.get().unwrap())).await.unwrap()
}

async fn invariants(app: &TestApp) -> Vec<String> {
    with_db(app, |c| {
        gridbook_ledger::store::check_invariants(c)
            .unwrap()
            .into_iter()
            .map(|v| format!("{}: {}", v.invariant, v.detail))
            .collect()
    })
    .await
}

/// Posted balance of a ledger account (0 when it does not exist).
async fn posted(app: &TestApp, account: AccountId) -> i128 {
    with_db(app, move |c| gridbook_ledger::store::get_account(c, account).map_or(0, |a| a.balances.posted())).await
}

async fn grid(app: &TestApp, user: &TestUser) -> (i64, i64) {
    let r = app.get_as(user, "/v1/token/balance").await;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    (b["available"].as_i64().unwrap(), b["held"].as_i64().unwrap())
}

async fn credits(app: &TestApp, user: &TestUser) -> i64 {
    app.balance(user).await["available"].as_i64().unwrap()
}

async fn order(app: &TestApp, user: &TestUser, body: Value) -> Value {
    let r = app.post_as(user, "/v1/token/orders", &body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    v
}

/// Waits until `user`'s order `id` satisfies `done` (the worker settled the engine's events).
async fn wait_order(stack: &Stack, user: &TestUser, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o: Value = stack.app.get_as(user, &format!("/v1/token/orders/{id}")).await.json().await.unwrap();
        if done(&o) {
            return o;
        }
        assert!(Instant::now() < deadline, "order {id} stuck at {o}; {}", stack.logs());
        assert!(!stack.worker_stopped(), "the settlement worker stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the API's book of the market shows `asks` (price, qty) levels.
async fn wait_asks(stack: &Stack, asks: &[(u64, u64)]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let book: Value = stack.app.http.get(stack.app.url(&format!("/v1/markets/{MARKET}/book"))).send().await.unwrap().json().await.unwrap();
        let got: Vec<(u64, u64)> = book["asks"]
            .as_array()
            .map(|a| a.iter().map(|l| (l["price"].as_u64().unwrap(), l["qty"].as_u64().unwrap())).collect())
            .unwrap_or_default();
        if got == asks {
            return book;
        }
        assert!(Instant::now() < deadline, "book asks {got:?}, want {asks:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

async fn token_orders(app: &TestApp) -> i64 {
    with_db(app, |c| {
        use diesel::prelude::*;
        gridbook_db::schema::token_orders::table.count().get_result::<i64>(c).unwrap()
    })
    .await
}

#[tokio::test]
async fn grid_trades_move_both_legs_exactly_and_cancels_release_the_rest() {
    let stack = Stack::start("api-token").await;
    let app = &stack.app;
    let fee_account = AccountId::system("USD", "protocol_fee");
    // A (a provider) holds 10 GRID; B (a studio) has credits; C (a trader) has neither.
    let a = app.signup("provider").await;
    let b = app.signup("studio").await;
    let trader = app.signup("trader").await;
    fund_grid(app, a.id, 10 * UNIT).await;
    app.credit(&b, 100_000).await;
    app.credit(&a, 10_000).await;
    assert_eq!(grid(app, &a).await, (10 * UNIT, 0));
    assert_eq!(grid(app, &trader).await, (0, 0), "no GRID account yet: zeros");

    // The market is a token market: no workload, and jobs and asks cannot use it.
    let m: Value = app.http.get(app.url(&format!("/v1/markets/{MARKET}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!((m["kind"].as_str(), m["token"].as_str(), m["workload"].is_null()), (Some("token"), Some("GRID"), true));
    assert_eq!(m["fee_bps"], 250);
    assert_eq!(m["whale_cap_bps"], 0);
    let r = app
        .post_as(&a, "/v1/asks", &json!({"node_id": Uuid::new_v4(), "market": MARKET, "price": 10, "qty": 1}))
        .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["field"], "market", "{e}");

    // Refusals name the field and reserve nothing: more GRID than held, credits beyond the
    // balance, a price off the market's band, an admin.
    let before = token_orders(app).await;
    let r = app.post_as(&a, "/v1/token/orders", &json!({"side": "sell", "price": 250, "quantity": 11, "time_in_force": "gtc"})).await;
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!((e["error"]["code"].as_str(), e["error"]["field"].as_str()), (Some("insufficient_tokens"), Some("quantity")), "{e}");
    let r = app.post_as(&trader, "/v1/token/orders", &json!({"side": "buy", "price": 250, "quantity": 1, "time_in_force": "gtc"})).await;
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!((e["error"]["code"].as_str(), e["error"]["field"].as_str()), (Some("insufficient_funds"), Some("quantity")), "{e}");
    let r = app.post_as(&b, "/v1/token/orders", &json!({"side": "buy", "price": 0, "quantity": 1, "time_in_force": "gtc"})).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["field"], "price");
    let admin = app.admin().await;
    let r = app.post_as(&admin, "/v1/token/orders", &json!({"side": "buy", "price": 10, "quantity": 1, "time_in_force": "gtc"})).await;
    assert_eq!(error_code(r).await, "forbidden");
    assert_eq!(token_orders(app).await, before, "no order row for a refusal");
    assert_eq!(grid(app, &a).await, (10 * UNIT, 0), "nothing held by a refused sell");
    assert_eq!(credits(app, &b).await, 100_000);

    // A sells 4 GRID at 250 (GTC): 4 GRID held.
    let sell = order(app, &a, json!({"side": "sell", "price": 250, "quantity": 4, "time_in_force": "gtc", "client_order_id": "a-1"})).await;
    assert_eq!((sell["status"].as_str(), sell["fee_bps"].as_u64()), (Some("open"), Some(0)));
    assert_eq!(grid(app, &a).await, (6 * UNIT, 4 * UNIT));
    let r = app.post_as(&a, "/v1/token/orders", &json!({"side": "sell", "price": 250, "quantity": 1, "time_in_force": "gtc", "client_order_id": "a-1"})).await;
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["field"], "client_order_id");
    wait_asks(&stack, &[(250, 4)]).await;

    // B buys 3 at up to 300: it trades 3 at the resting 250.
    let buy = order(app, &b, json!({"side": "buy", "price": 300, "quantity": 3, "time_in_force": "gtc"})).await;
    assert_eq!(buy["fee_bps"], 250);
    wait_order(&stack, &b, &id(&buy), |o| o["status"] == "filled").await;
    let s = wait_order(&stack, &a, &id(&sell), |o| o["filled"] == 3).await;
    assert_eq!(s["status"], "open", "one GRID still rests");
    // Credits: B paid 3 × 250 + ⌈750 × 2.5 %⌉ = 769 (its reservation at 300 came back but for
    // that); A got 750; the protocol fee 19. GRID: 3 from A to B, A's last lot still held.
    let gross: i64 = 3 * 250;
    let fee = (gross * 250 + 9_999) / 10_000;
    assert_eq!(fee, 19);
    assert_eq!(credits(app, &b).await, 100_000 - gross - fee);
    assert_eq!(credits(app, &a).await, 10_000 + gross);
    assert_eq!(posted(app, fee_account).await, i128::from(fee));
    assert_eq!(grid(app, &b).await, (3 * UNIT, 0));
    assert_eq!(grid(app, &a).await, (6 * UNIT, UNIT));
    assert!(invariants(app).await.is_empty(), "{:?}", invariants(app).await);
    // The book and the tape show it.
    wait_asks(&stack, &[(250, 1)]).await;
    let tape: Value = app.http.get(app.url(&format!("/v1/markets/{MARKET}/trades"))).send().await.unwrap().json().await.unwrap();
    let trades = tape["trades"].as_array().unwrap();
    assert!(trades.iter().any(|t| t["price"] == 250 && t["qty"] == 3), "{tape}");
    let mine: Value = app.get_as(&b, "/v1/token/orders").await.json().await.unwrap();
    assert_eq!(mine["data"].as_array().unwrap().len(), 1);
    assert_eq!(mine["data"][0]["id"], buy["id"]);

    // The partly filled GTC sell, cancelled: exactly its last GRID comes back.
    let r = app.http.delete(app.url(&format!("/v1/token/orders/{}", id(&sell)))).header("Authorization", a.bearer()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let s = wait_order(&stack, &a, &id(&sell), |o| o["status"] == "cancelled").await;
    assert_eq!(s["filled"], 3);
    assert_eq!(grid(app, &a).await, (7 * UNIT, 0));
    let r = app.http.delete(app.url(&format!("/v1/token/orders/{}", id(&sell)))).header("Authorization", a.bearer()).send().await.unwrap();
    assert_eq!(error_code(r).await, "order_not_open");
    // Another user cannot see or cancel it.
    let r = app.http.delete(app.url(&format!("/v1/token/orders/{}", id(&sell)))).header("Authorization", b.bearer()).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // A resting buy, cancelled: its reservation comes back whole. An IOC with nothing to take:
    // released at once by the engine's cancel of the remainder.
    let before = credits(app, &b).await;
    let rest = order(app, &b, json!({"side": "buy", "price": 100, "quantity": 2, "time_in_force": "gtc"})).await;
    assert_eq!(credits(app, &b).await, before - 2 * (100 + 3));
    let ioc = order(app, &b, json!({"side": "buy", "price": 100, "quantity": 5, "time_in_force": "ioc"})).await;
    wait_order(&stack, &b, &id(&ioc), |o| o["status"] == "cancelled").await;
    let r = app.http.delete(app.url(&format!("/v1/token/orders/{}", id(&rest)))).header("Authorization", b.bearer()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    wait_order(&stack, &b, &id(&rest), |o| o["status"] == "cancelled").await;
    assert_eq!(credits(app, &b).await, before);

    // An account never trades with itself: A's buy meets A's own sell and the engine cancels
    // the newest (the buy), nothing moves but the holds, which come back.
    let own_sell = order(app, &a, json!({"side": "sell", "price": 200, "quantity": 1, "time_in_force": "gtc"})).await;
    wait_asks(&stack, &[(200, 1)]).await;
    let a_credits = credits(app, &a).await;
    let own_buy = order(app, &a, json!({"side": "buy", "price": 200, "quantity": 1, "time_in_force": "gtc"})).await;
    let o = wait_order(&stack, &a, &id(&own_buy), |o| o["status"] != "open").await;
    assert_eq!((o["status"].as_str(), o["filled"].as_i64()), (Some("cancelled"), Some(0)), "{o}");
    assert_eq!(credits(app, &a).await, a_credits);
    let r = app.http.delete(app.url(&format!("/v1/token/orders/{}", id(&own_sell)))).header("Authorization", a.bearer()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    wait_order(&stack, &a, &id(&own_sell), |o| o["status"] == "cancelled").await;
    assert_eq!(grid(app, &a).await, (7 * UNIT, 0));

    // Nothing created or destroyed: the 10 GRID are A's 7 and B's 3; no escrow holds anything.
    assert_eq!(grid(app, &a).await.0 + grid(app, &b).await.0, 10 * UNIT);
    let dead: i64 = with_db(app, |c| {
        use diesel::prelude::*;
        gridbook_db::schema::dead_letters::table.count().get_result(c).unwrap()
    })
    .await;
    assert_eq!(dead, 0, "no event was refused");
    assert!(invariants(app).await.is_empty(), "{:?}", invariants(app).await);
}

#[tokio::test]
async fn the_protocol_buy_fills_against_a_resting_sell_once_per_epoch() {
    let stack = Stack::start("api-token-buyback").await;
    let app = &stack.app;
    let a = app.signup("trader").await;
    fund_grid(app, a.id, 10 * UNIT).await;
    let sell = order(app, &a, json!({"side": "sell", "price": 200, "quantity": 5, "time_in_force": "gtc"})).await;
    wait_asks(&stack, &[(200, 5)]).await;

    // The treasury's credits (the epoch closer moves fees there; here the operator does).
    let (usd_treasury, grid_treasury) = (AccountId::system("USD", "buyback_treasury"), AccountId::system("GRID", "buyback_treasury"));
    with_db(app, move |c| {
        gridbook_ledger::escrow::ensure_system_accounts(c, "USD").unwrap();
        let operator = AccountId::system("USD", "operator");
        gridbook_ledger::store::create_transfer(c, &NewTransfer::posted(TransferId::new(), operator, usd_treasury, 1_000, "deposit")).unwrap();
    })
    .await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);

    // Too small a budget buys nothing and places nothing.
    let none = with_db(app, |c| settlement_token::place_protocol_buy(c, 8, 100, 210).unwrap()).await;
    assert_eq!(none, None);
    // 1,000 at a limit of 210 (the protocol pays itself no fee): 4 GRID.
    let placed = with_db(app, |c| settlement_token::place_protocol_buy(c, 7, 1_000, 210).unwrap()).await.expect("a buy");
    assert_eq!((placed.quantity, placed.limit_price, placed.reserved, placed.fee_bps), (4, 210, 840, 0));
    assert_eq!(placed.order_id, settlement_token::protocol_order_id(7));
    let deadline = Instant::now() + Duration::from_secs(30);
    let fills = loop {
        let fills = with_db(app, |c| settlement_token::protocol_buys(c, 7).unwrap()).await;
        if !fills.is_empty() {
            break fills;
        }
        assert!(Instant::now() < deadline, "the protocol buy never filled; {}", stack.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(fills.len(), 1);
    assert_eq!((fills[0].qty, fills[0].price, fills[0].fee), (4, 200, 0));
    assert_eq!(fills[0].sell_order.to_string(), id(&sell));
    // GRID landed in the treasury; the credits not spent (the improvement) went back to it.
    assert_eq!(posted(app, grid_treasury).await, i128::from(4 * UNIT));
    assert_eq!(posted(app, usd_treasury).await, 1_000 - 800);
    assert_eq!(credits(app, &a).await, 800);
    assert_eq!(grid(app, &a).await, (5 * UNIT, UNIT));
    let vwap = with_db(app, move |c| settlement_token::vwap(c, since, chrono::Utc::now() + chrono::Duration::minutes(1)).unwrap()).await;
    assert_eq!(vwap, Some((200, 4)));
    let empty = with_db(app, move |c| settlement_token::vwap(c, since - chrono::Duration::days(1), since).unwrap()).await;
    assert_eq!(empty, None);

    // A second call for the same epoch returns the same order and places nothing new.
    let outbox_before: i64 = with_db(app, |c| {
        use diesel::prelude::*;
        gridbook_db::schema::outbox::table.count().get_result(c).unwrap()
    })
    .await;
    let again = with_db(app, |c| settlement_token::place_protocol_buy(c, 7, 5_000, 250).unwrap()).await.expect("the same buy");
    assert_eq!(again, placed);
    let outbox_after: i64 = with_db(app, |c| {
        use diesel::prelude::*;
        gridbook_db::schema::outbox::table.count().get_result(c).unwrap()
    })
    .await;
    assert_eq!(outbox_after, outbox_before);
    let protocol_orders: i64 = with_db(app, |c| {
        use diesel::prelude::*;
        use gridbook_db::schema::token_orders;
        token_orders::table.filter(token_orders::epoch.is_not_null()).count().get_result(c).unwrap()
    })
    .await;
    assert_eq!(protocol_orders, 1);
    assert_eq!(with_db(app, |c| settlement_token::protocol_buys(c, 7).unwrap()).await.len(), 1);
    assert!(invariants(app).await.is_empty(), "{:?}", invariants(app).await);
}
