//! The market catalogue (the engine's `[[markets]]` joined with `gridbook_wire::catalog`) and
//! the trader routes (REST snapshot/trades/candles, WebSocket feed).
//!
//! Market data is public: none of these routes needs a session or an API key.
//!
//! WebSocket protocol (`GET /v1/markets/{market}/ws`), server → client, JSON text messages:
//! - `{"type":"snapshot","market","seq","time","bids":[{price,qty,orders}],"asks":[...],
//!   "trades":[{seq,time,price,qty,taker_side}],"bbo":{"bid","ask"}}` — first message, and again
//!   whenever the server resynchronised with the engine: it replaces the client's book.
//! - `{"type":"delta","market","first","last","time","changes":[{side,price,qty,orders}],
//!   "trades":[...],"bbo":{...}}` — `first` is always the previous `seq`/`last` + 1; otherwise the
//!   client has missed something and reconnects. `qty: 0` removes a level. Apply in order.
//! - WebSocket pings every 15 s; a client silent for 45 s is closed. A client that does not read
//!   fast enough (1,024 messages queued) is closed with code 1008 and reason "slow consumer: ...".

use std::collections::BTreeMap;
use std::path::Path;

use gridbook_wire::catalog::{MarketKind, Work};
use matching_core::MarketConfig;
use serde::Deserialize;

/// One market as the API serves it.
#[derive(Clone, Debug)]
pub struct Market {
    pub config: MarketConfig,
    /// What it trades: units of work (a compute market) or a token (`GRID-CREDITS`).
    pub kind: MarketKind,
}

impl Market {
    /// The market's work; a token market (no workload) is refused naming `field` (the request
    /// field that chose the market), never given a default.
    pub fn compute(&self, field: &str) -> crate::error::ApiResult<Work> {
        match self.kind {
            MarketKind::Compute(w) => Ok(w),
            MarketKind::Token(_) => Err(crate::error::ApiError::invalid(
                field,
                format!(
                    "{} is a token market: it runs no work (trade it with POST /v1/token/orders)",
                    self.config.market.0
                ),
            )),
        }
    }
}

/// All markets, by symbol.
#[derive(Clone, Debug, Default)]
pub struct Markets {
    pub by_symbol: BTreeMap<String, Market>,
}

#[derive(Deserialize)]
struct EngineFile {
    markets: Vec<MarketConfig>,
}

impl Markets {
    /// Reads the engine's configuration file. A market the catalogue does not know is an error
    /// (the API could not run its jobs), and so is a token market whose `fee_bps` is not the
    /// catalogue's (the settlement worker charges the catalogue's).
    pub fn load(path: &Path) -> anyhow::Result<Markets> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let file: EngineFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut by_symbol = BTreeMap::new();
        for config in file.markets {
            let symbol = config.market.0.clone();
            let kind = gridbook_wire::catalog::kind(&symbol).ok_or_else(|| {
                anyhow::anyhow!("{}: market {symbol} is not in the catalogue (no known workload or token)", path.display())
            })?;
            if let MarketKind::Token(pair) = kind
                && pair.fee_bps != config.fee_bps
            {
                anyhow::bail!(
                    "{}: token market {symbol} has fee_bps {}, the catalogue charges {}",
                    path.display(),
                    config.fee_bps,
                    pair.fee_bps
                );
            }
            by_symbol.insert(symbol, Market { config, kind });
        }
        Ok(Markets { by_symbol })
    }

    pub fn get(&self, symbol: &str) -> Option<&Market> {
        self.by_symbol.get(symbol)
    }
}


// ------------------------------------------------------------------------------------ routes

use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use tracing::{debug, info};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::feed::{Bbo, BookLevel, BookView, Feeds, Trade};
use crate::state::AppState;

/// Default and largest `depth` of `GET /v1/markets/{market}/book`.
pub const DEFAULT_DEPTH: usize = 50;
pub const MAX_DEPTH: usize = 1_000;
/// Default `limit` of `GET /v1/markets/{market}/trades` (the largest is what the tape keeps).
pub const DEFAULT_TRADES: usize = 50;
/// WebSocket heartbeat: a ping this often; a client silent for `CLIENT_TIMEOUT` is closed.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a dropped client's close frame may wait behind its unread backlog.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Trader routes (mounted under `/v1`). Public: no login. Resources (not `cfg.route`), so that
/// another method on these paths is 405, not 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/markets").route(web::get().to(list_markets)))
        .service(web::resource("/markets/{market}").route(web::get().to(get_market)))
        .service(web::resource("/markets/{market}/book").route(web::get().to(get_book)))
        .service(web::resource("/markets/{market}/trades").route(web::get().to(get_trades)))
        .service(web::resource("/markets/{market}/candles").route(web::get().to(get_candles)))
        .service(web::resource("/markets/{market}/ws").route(web::get().to(market_ws)));
}

/// A market's configuration and its live top of book.
#[derive(Serialize, ToSchema)]
pub struct MarketInfo {
    pub symbol: String,
    /// Decimal string: credits per tick.
    pub tick_size: String,
    /// Decimal string: units of work per lot.
    pub lot_size: String,
    /// Lowest limit price, ticks.
    pub min_price: u64,
    pub max_price: u64,
    /// Largest order, lots.
    pub max_qty: u64,
    pub fee_bps: u32,
    /// Anti-whale cap: most share of the window's matched volume one owner may take, bps.
    pub whale_cap_bps: u32,
    /// The anti-whale window, ms.
    pub whale_window_ms: u64,
    /// `compute` (units of work run by provider nodes) or `token` (a token for credits:
    /// `POST /v1/token/orders`).
    pub kind: String,
    /// The executor workload that runs this market's units; absent for a token market.
    pub workload: Option<String>,
    /// Input lines per unit; absent for a token market.
    pub items_per_unit: Option<u32>,
    /// A token market: the token's ledger (`GRID`) and its base units per lot (10^6).
    pub token: Option<String>,
    pub token_units_per_lot: Option<i64>,
    /// Event sequence of the live data below (absent while the feed is not in sync).
    pub seq: Option<u64>,
    pub bbo: Bbo,
    /// WebSocket clients streaming this market from this API process now.
    pub ws_clients: usize,
    /// Who supplies this market, in aggregate (`GET /v1/markets/{market}` of a compute market
    /// only; absent in the list).
    pub providers: Option<ProviderAggregate>,
}

/// The supply side of a compute market as a studio may judge it: the nodes with an open ask
/// now, their reliability scores and uptime, and the market's verification outcomes of the
/// last 24 hours. No node or provider is named.
#[derive(Serialize, ToSchema, Default, Clone)]
pub struct ProviderAggregate {
    /// Distinct nodes with an open ask.
    pub nodes_offering: i64,
    /// Of them: off probation (`active`), and on probation.
    pub active: i64,
    pub probation: i64,
    /// Their reliability scores, bps: lowest and median (absent without nodes).
    pub reliability_min_bps: Option<i32>,
    pub reliability_median_bps: Option<i32>,
    /// Their mean uptime over the last 24 hours, bps (heartbeat minutes / minutes).
    pub uptime_24h_mean_bps: Option<i32>,
    /// Assignments of this market verified in the last 24 hours: passed and failed.
    pub verified_24h_passed: i64,
    pub verified_24h_failed: i64,
}

#[derive(diesel::QueryableByName)]
struct AggregateRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    nodes_offering: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    active: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    probation: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    reliability_min_bps: Option<i32>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    reliability_median_bps: Option<i32>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    uptime_24h_mean_bps: Option<i32>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    verified_24h_passed: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    verified_24h_failed: i64,
}

/// How long one market's aggregate is served from memory: the route is public, and the query
/// scans a day of uptime minutes of every offering node.
pub const AGGREGATE_TTL: Duration = Duration::from_secs(30);

/// Per API process: market → (read at, aggregate). One entry per configured market.
pub type AggregateCache = std::sync::Mutex<std::collections::HashMap<String, (Instant, ProviderAggregate)>>;

/// `market`'s aggregate, at most [`AGGREGATE_TTL`] old (one entry per configured market).
async fn cached_aggregate(state: &AppState, market: &str) -> ApiResult<ProviderAggregate> {
    let fresh = |(at, a): &(Instant, ProviderAggregate)| (at.elapsed() < AGGREGATE_TTL).then(|| a.clone());
    if let Some(a) = state.aggregates.lock().ok().and_then(|m| m.get(market).and_then(fresh)) {
        return Ok(a);
    }
    let symbol = market.to_owned();
    let a = crate::db::run(&state.db, move |c| provider_aggregate(c, &symbol)).await?;
    if let Ok(mut m) = state.aggregates.lock() {
        m.insert(market.to_owned(), (Instant::now(), a.clone()));
    }
    Ok(a)
}

/// One query: the nodes offering in `market` and its last day's verification outcomes.
fn provider_aggregate(c: &mut diesel::PgConnection, market: &str) -> ApiResult<ProviderAggregate> {
    use diesel::RunQueryDsl;
    let r: AggregateRow = diesel::sql_query(
        "WITH offering AS (
           SELECT DISTINCT n.id, n.status, n.reputation FROM asks a JOIN nodes n ON n.id = a.node_id
            WHERE a.market = $1 AND a.status = 'open'),
         up AS (
           SELECT o.id, (SELECT count(*) FROM node_uptime u
                          WHERE u.node_id = o.id AND u.minute >= now() - interval '24 hours') AS minutes
             FROM offering o)
         SELECT (SELECT count(*) FROM offering)::bigint AS nodes_offering,
                (SELECT count(*) FROM offering WHERE status = 'active')::bigint AS active,
                (SELECT count(*) FROM offering WHERE status = 'probation')::bigint AS probation,
                (SELECT min(reputation) FROM offering)::int AS reliability_min_bps,
                (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY reputation) FROM offering)::int AS reliability_median_bps,
                (SELECT avg(least(minutes, 1440) * 10000 / 1440) FROM up)::int AS uptime_24h_mean_bps,
                (SELECT count(*) FROM assignment_verifications v
                  WHERE v.market = $1 AND v.outcome = 'passed' AND v.created_at >= now() - interval '24 hours')::bigint AS verified_24h_passed,
                (SELECT count(*) FROM assignment_verifications v
                  WHERE v.market = $1 AND v.outcome = 'failed' AND v.created_at >= now() - interval '24 hours')::bigint AS verified_24h_failed",
    )
    .bind::<diesel::sql_types::Text, _>(market)
    .get_result(c)?;
    Ok(ProviderAggregate {
        nodes_offering: r.nodes_offering,
        active: r.active,
        probation: r.probation,
        reliability_min_bps: r.reliability_min_bps,
        reliability_median_bps: r.reliability_median_bps,
        uptime_24h_mean_bps: r.uptime_24h_mean_bps,
        verified_24h_passed: r.verified_24h_passed,
        verified_24h_failed: r.verified_24h_failed,
    })
}

fn info(m: &Market, feeds: &Feeds) -> MarketInfo {
    let c = &m.config;
    let feed = feeds.get(&c.market.0);
    let live = feed.and_then(|f| f.bbo());
    MarketInfo {
        symbol: c.market.0.clone(),
        tick_size: c.tick_size.clone(),
        lot_size: c.lot_size.clone(),
        min_price: c.min_price,
        max_price: c.max_price,
        max_qty: c.max_qty,
        fee_bps: c.fee_bps,
        whale_cap_bps: c.whale_cap_bps,
        whale_window_ms: c.whale_window,
        kind: m.kind.as_str().to_owned(),
        workload: m.kind.work().map(|w| w.kind.as_str().to_owned()),
        items_per_unit: m.kind.work().map(|w| w.items_per_unit),
        token: match m.kind {
            MarketKind::Token(t) => Some(t.base_ledger.to_owned()),
            MarketKind::Compute(_) => None,
        },
        token_units_per_lot: match m.kind {
            MarketKind::Token(t) => Some(t.base_units_per_lot),
            MarketKind::Compute(_) => None,
        },
        seq: live.map(|(s, _)| s),
        bbo: live.map(|(_, b)| b).unwrap_or_default(),
        ws_clients: feed.map_or(0, |f| f.clients()),
        providers: None,
    }
}

#[derive(Serialize, ToSchema)]
pub struct MarketList {
    pub markets: Vec<MarketInfo>,
}

fn market<'a>(state: &'a AppState, symbol: &str) -> ApiResult<&'a Market> {
    state.markets.get(symbol).ok_or_else(|| ApiError::not_found("market"))
}

/// Every market with its configuration. Public.
#[utoipa::path(get, path = "/v1/markets", tag = "markets",
    responses((status = 200, body = MarketList)))]
pub async fn list_markets(state: web::Data<AppState>, feeds: web::Data<Feeds>) -> HttpResponse {
    let markets = state.markets.by_symbol.values().map(|m| info(m, &feeds)).collect();
    HttpResponse::Ok().json(MarketList { markets })
}

/// One market's configuration, top of book and, for a compute market, its providers in
/// aggregate (`providers`). Public.
#[utoipa::path(get, path = "/v1/markets/{market}", tag = "markets",
    params(("market" = String, Path, description = "market symbol, e.g. EMBED-MINILM-L6")),
    responses((status = 200, body = MarketInfo), (status = 404, body = ErrorResponse)))]
pub async fn get_market(
    state: web::Data<AppState>,
    feeds: web::Data<Feeds>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let m = market(&state, &path)?;
    let mut out = info(m, &feeds);
    if m.kind.work().is_some() {
        out.providers = Some(cached_aggregate(&state, &m.config.market.0).await?);
    }
    Ok(HttpResponse::Ok().json(out))
}

#[derive(serde::Deserialize, IntoParams)]
pub struct BookQuery {
    /// Levels per side, 1..=1000 (default 50).
    pub depth: Option<usize>,
}

/// The L2 book with the event sequence it reflects: from the API's live feed, or the engine's
/// snapshot while the feed is resynchronising. Public.
#[utoipa::path(get, path = "/v1/markets/{market}/book", tag = "markets",
    params(("market" = String, Path, description = "market symbol"), BookQuery),
    responses((status = 200, body = BookView), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
pub async fn get_book(
    state: web::Data<AppState>,
    feeds: web::Data<Feeds>,
    path: web::Path<String>,
    query: web::Query<BookQuery>,
) -> ApiResult<HttpResponse> {
    let m = market(&state, &path)?;
    let depth = query.depth.unwrap_or(DEFAULT_DEPTH);
    if !(1..=MAX_DEPTH).contains(&depth) {
        return Err(ApiError::invalid("depth", format!("depth must be 1..={MAX_DEPTH}")));
    }
    if let Some(view) = feeds.get(&m.config.market.0).and_then(|f| f.book(depth)) {
        return Ok(HttpResponse::Ok().json(view));
    }
    let snap = crate::feed::request_snapshot(&state.nats, &m.config.market.0)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(HttpResponse::Ok().json(BookView {
        market: snap.market,
        seq: snap.seq,
        bids: snap.bids.into_iter().take(depth).map(BookLevel::from).collect(),
        asks: snap.asks.into_iter().take(depth).map(BookLevel::from).collect(),
    }))
}

#[derive(serde::Deserialize, IntoParams)]
pub struct TradesQuery {
    /// Trades to return, 1..=200 (default 50).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct TradeList {
    pub market: String,
    /// The event sequence the tape is current to.
    pub seq: u64,
    /// Newest first.
    pub trades: Vec<Trade>,
}

/// The last trades (the API's tape since it started). Public.
#[utoipa::path(get, path = "/v1/markets/{market}/trades", tag = "markets",
    params(("market" = String, Path, description = "market symbol"), TradesQuery),
    responses((status = 200, body = TradeList), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
pub async fn get_trades(
    state: web::Data<AppState>,
    feeds: web::Data<Feeds>,
    path: web::Path<String>,
    query: web::Query<TradesQuery>,
) -> ApiResult<HttpResponse> {
    let m = market(&state, &path)?;
    let limit = query.limit.unwrap_or(DEFAULT_TRADES);
    if !(1..=crate::feed::TRADES_KEPT).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("limit must be 1..={}", crate::feed::TRADES_KEPT)));
    }
    let feed = feeds.get(&m.config.market.0).ok_or_else(|| ApiError::not_found("market"))?;
    let (seq, synced, trades) = feed.trades(limit);
    if !synced && seq == 0 {
        return Err(ApiError::unavailable("market feed not in sync yet"));
    }
    Ok(HttpResponse::Ok().json(TradeList { market: m.config.market.0.clone(), seq, trades }))
}

/// One minute of trades (prices in ticks, volume in lots).
#[derive(Serialize, ToSchema)]
pub struct CandleOut {
    /// Start of the minute, ms since the Unix epoch.
    pub start: u64,
    pub open: u64,
    pub high: u64,
    pub low: u64,
    pub close: u64,
    pub volume: u64,
    pub trades: u64,
}

/// 1-minute candles and the last 24 h, from the engine.
#[derive(Serialize, ToSchema)]
pub struct CandlesView {
    pub market: String,
    pub seq: u64,
    pub last_price: Option<u64>,
    pub volume_24h: u64,
    pub trades_24h: u64,
    pub high_24h: Option<u64>,
    pub low_24h: Option<u64>,
    /// Oldest first, at most 1,440.
    pub candles: Vec<CandleOut>,
}

/// Candles and 24-hour figures (asked of the engine, `api.market.<m>.stats`). Public.
#[utoipa::path(get, path = "/v1/markets/{market}/candles", tag = "markets",
    params(("market" = String, Path, description = "market symbol")),
    responses((status = 200, body = CandlesView), (status = 404, body = ErrorResponse),
        (status = 503, body = ErrorResponse)))]
pub async fn get_candles(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let m = market(&state, &path)?;
    let s = crate::feed::request_stats(&state.nats, &m.config.market.0)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(HttpResponse::Ok().json(CandlesView {
        market: s.market,
        seq: s.seq,
        last_price: s.last_price,
        volume_24h: s.volume_24h,
        trades_24h: s.trades_24h,
        high_24h: s.high_24h,
        low_24h: s.low_24h,
        candles: s
            .candles
            .iter()
            .map(|c| CandleOut {
                start: c.start,
                open: c.open,
                high: c.high,
                low: c.low,
                close: c.close,
                volume: c.volume,
                trades: c.trades,
            })
            .collect(),
    }))
}

/// The live feed over a WebSocket: a `snapshot` message, then `delta` messages (see the module
/// documentation for the protocol). Public. Unknown market: 404 before the upgrade.
#[utoipa::path(get, path = "/v1/markets/{market}/ws", tag = "markets",
    params(("market" = String, Path, description = "market symbol")),
    responses((status = 101, description = "WebSocket: snapshot then deltas", body = crate::feed::WsDelta),
        (status = 404, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
pub async fn market_ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    feeds: web::Data<Feeds>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let m = market(&state, &path)?;
    let feed = feeds.get(&m.config.market.0).ok_or_else(|| ApiError::not_found("market"))?.clone();
    let (response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::invalid("upgrade", format!("WebSocket upgrade: {e}")))?;
    let sub = feed.subscribe()?;
    info!(market = %feed.market, clients = feed.clients(), "WebSocket client joined");
    actix_web::rt::spawn(client_loop(session, stream, sub, feed.market.clone()));
    Ok(response)
}

async fn client_loop(
    mut session: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
    mut sub: crate::feed::Subscription,
    market: String,
) {
    use actix_ws::{CloseCode, CloseReason, Message};
    let mut ping = tokio::time::interval(HEARTBEAT);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let close_reason: Option<CloseReason> = loop {
        tokio::select! {
            biased;
            reason = &mut sub.kicked => {
                let description = reason.unwrap_or("the feed stopped");
                break Some(CloseReason { code: CloseCode::Policy, description: Some(description.into()) });
            }
            msg = sub.rx.recv() => {
                let Some(text) = msg else {
                    break Some(CloseReason { code: CloseCode::Away, description: Some("the feed stopped".into()) });
                };
                // The send waits while the socket is full; a drop decision must still get through.
                tokio::select! {
                    biased;
                    reason = &mut sub.kicked => {
                        let description = reason.unwrap_or("the feed stopped");
                        break Some(CloseReason { code: CloseCode::Policy, description: Some(description.into()) });
                    }
                    sent = session.text(text) => if sent.is_err() { break None },
                }
            }
            incoming = stream.recv() => match incoming {
                Some(Ok(Message::Ping(bytes))) => {
                    heard = Instant::now();
                    if session.pong(&bytes).await.is_err() { break None }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => heard = Instant::now(),
            },
            _ = ping.tick() => {
                if heard.elapsed() > CLIENT_TIMEOUT {
                    break Some(CloseReason { code: CloseCode::Policy, description: Some("heartbeat timeout".into()) });
                }
                if session.ping(b"").await.is_err() { break None }
            }
        }
    };
    // Free the queue before waiting on the socket.
    drop(sub);
    match close_reason {
        Some(reason) => {
            info!(market = %market, reason = ?reason.description, "WebSocket client closed");
            let _ = tokio::time::timeout(CLOSE_WAIT, session.close(Some(reason))).await;
        }
        None => debug!(market = %market, "WebSocket client left"),
    }
}

/// The OpenAPI paths of this module (merged by `openapi::document`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list_markets, get_market, get_book, get_trades, get_candles, market_ws),
    components(schemas(crate::feed::WsSnapshot)),
    tags((name = "markets", description = "public market data: catalogue, book, trades, candles, the live WebSocket feed"))
)]
pub struct ApiDoc;
