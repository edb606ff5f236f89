//! Settling a token market (`GRID-CREDITS`, `catalog::MarketKind::Token`): delivery versus
//! payment, and the protocol's buyback order.
//!
//! A token market has no workload, nodes, assignments, verification or canaries: `settle`
//! hands its frames here instead of to `decide`. Per event, in the message's transaction (a
//! savepoint each, as for compute markets), with its `processed_events` row:
//! - **fill** of a buy against a sell (both in `token_orders`): the buyer's credit escrow pays
//!   `qty × price` to the seller's credits account and `⌈qty × price × fee⌉` to the protocol fee
//!   account, the price improvement goes back to the buyer (`token_escrow::on_buy_fill`), and
//!   the seller's GRID hold delivers `qty × 10^6` base units to the buyer's GRID account
//!   (`token_escrow::on_sell_fill`): both legs or neither; the fill is recorded in
//!   `token_fills` and both orders' `filled` move. Idempotent per engine event (the fill id
//!   `decide::fill_id`, every transfer id derived from it).
//! - **cancel / expiry / IOC remainder / self-trade prevention**: the order's unfilled lots are
//!   released (credits back to the buyer, or the GRID hold voided), the order `cancelled`.
//! - **rejected place**: everything it reserved released, the order `rejected`.
//! - A fill between one of ours and an order the marketplace does not know, a fill of an
//!   account with itself (the engine's STP prevents it; this is the backstop), or an effect a
//!   ledger rule refuses: a dead letter, and the lots the engine took off our orders released
//!   (never re-offered), so nothing reserved stays open.
//!
//! The buyback hook ([`place_protocol_buy`]) places an IOC buy for the protocol from
//! `USD:buyback_treasury` through the same outbox as the API; its fills deliver to
//! `GRID:buyback_treasury` and the unspent credits return to `USD:buyback_treasury`.
//! [`vwap`] and [`protocol_buys`] read the settled fills.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use diesel::prelude::*;
use gridbook_db::market_orders;
use gridbook_db::status::{DeadLetterReason, TokenOrderStatus, TokenSide, TokenTimeInForce};
use gridbook_db::token_orders::{self, PROTOCOL_ENGINE_ACCOUNT, TokenOrderRow};
use gridbook_ledger::escrow::{self, Bid};
use gridbook_ledger::{AccountId, events, token_escrow};
use gridbook_wire::catalog::{self, TokenPair};
use gridbook_wire::market::EventFrame;
use gridbook_wire::subjects;
use matching_core::{Event, EventKind, Side};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::dead_letter::{self, DeadLetter, Escrow, Source};
use crate::decide;
use crate::error::{Result, SettlementError};
use crate::schema::token_fills;
use crate::settle::Outcome;

/// The system account code the buyback spends from (`USD`) and delivers into (`GRID`).
pub const BUYBACK_TREASURY: &str = "buyback_treasury";

/// Namespace of the protocol order ids (UUIDv5 of `protocol-buy/<epoch>`).
const NAMESPACE: Uuid = Uuid::from_u128(0x9c41_7e0a_52d3_4f1b_8a66_2e90_d4c3_71b5);

/// The escrow order id of the protocol's buy for `epoch`.
pub fn protocol_order_id(epoch: i64) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("protocol-buy/{epoch}").as_bytes())
}

/// `USD:buyback_treasury`: what the buyback spends.
pub fn buyback_credits_account(pair: &TokenPair) -> AccountId {
    AccountId::system(pair.quote_ledger, BUYBACK_TREASURY)
}

/// `GRID:buyback_treasury`: where the GRID it buys lands.
pub fn buyback_token_account(pair: &TokenPair) -> AccountId {
    AccountId::system(pair.base_ledger, BUYBACK_TREASURY)
}

/// Creates `GRID:buyback_treasury` when missing (credit-normal: only the supply account may go
/// negative on the token's ledger, so not `escrow::ensure_system_accounts`, whose boundary
/// accounts may).
fn ensure_buyback_token_account(c: &mut PgConnection, pair: &TokenPair) -> Result<()> {
    let new = gridbook_ledger::NewAccount::system(pair.base_ledger, gridbook_ledger::AccountCode::BuybackTreasury);
    debug_assert_eq!(new.id, buyback_token_account(pair));
    gridbook_ledger::store::create_account(c, &new)?;
    Ok(())
}

// ------------------------------------------------------------------------------ decisions

/// Lots to give back to one of our orders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub order: Uuid,
    pub side: TokenSide,
    pub release_id: Uuid,
    /// At most this many lots (never more than the order's escrow holds open).
    pub qty: i64,
}

/// A fill between our buy and our sell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fill {
    pub fill_id: Uuid,
    pub event_seq: u64,
    pub buy: TokenOrderRow,
    pub sell: TokenOrderRow,
    pub qty: i64,
    pub price: i64,
}

/// What one event of a token market does (pure: [`decide_token`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenEffect {
    /// Nothing of ours, or nothing to do; `why` is for the debug log.
    Skip { why: &'static str },
    /// The engine accepted our order (no ledger effect).
    Accepted { order: Uuid },
    /// Boxed: two order rows.
    Fill(Box<Fill>),
    /// The engine closed the order with `qty` lots unfilled (`release` of them, exactly) and it
    /// becomes `status`; `release` is `None` when no lot was left.
    Close {
        order: Uuid,
        status: TokenOrderStatus,
        release: Option<Release>,
    },
    /// The event cannot settle: a dead letter, and these lots released.
    Refuse {
        reason: DeadLetterReason,
        why: String,
        releases: Vec<Release>,
    },
}

fn lots(v: u64) -> Option<i64> {
    i64::try_from(v).ok()
}

/// Decides what event `ev` of token market `market` does. `orders`: the `token_orders` rows of
/// the market for the engine order ids the event names. `None`: the kind never matters here.
pub fn decide_token(
    market: &str,
    ev: &Event,
    orders: &BTreeMap<u64, TokenOrderRow>,
) -> Option<TokenEffect> {
    let skip = |why| Some(TokenEffect::Skip { why });
    let refused = decide::refused_release_id(market, ev.seq);
    let give_back = |o: &TokenOrderRow, qty: i64| Release { order: o.id, side: o.side, release_id: refused, qty };
    match ev.kind {
        EventKind::Delta { .. } | EventKind::Rejected { id: None, .. } => None,
        EventKind::Accepted { id, .. } => match orders.get(&id.0) {
            Some(o) if o.accepted_seq.is_none() => Some(TokenEffect::Accepted { order: o.id }),
            _ => None,
        },
        EventKind::Fill { maker, taker, taker_side, price, qty, .. } => {
            let (bid_id, ask_id) = match taker_side {
                Side::Ask => (maker.0, taker.0),
                Side::Bid => (taker.0, maker.0),
            };
            let buy = orders.get(&bid_id).filter(|o| o.side == TokenSide::Buy);
            let sell = orders.get(&ask_id).filter(|o| o.side == TokenSide::Sell);
            let q = lots(qty).unwrap_or(i64::MAX);
            let (buy, sell) = match (buy, sell) {
                (None, None) => return skip("fill of orders not in token_orders"),
                (Some(o), None) | (None, Some(o)) => {
                    return Some(TokenEffect::Refuse {
                        reason: DeadLetterReason::UnknownOrder,
                        why: format!(
                            "fill of bid {bid_id} against ask {ask_id}: only {} is in token_orders",
                            o.engine_order_id
                        ),
                        releases: vec![give_back(o, q)],
                    });
                }
                (Some(b), Some(s)) => (b, s),
            };
            let (Some(qty), Some(price)) = (lots(qty), lots(price)) else {
                return Some(TokenEffect::Refuse {
                    reason: DeadLetterReason::InvalidEvent,
                    why: "fill quantity or price exceeds i64".into(),
                    releases: vec![give_back(buy, q), give_back(sell, q)],
                });
            };
            let same_owner = buy.owner.is_some() && buy.owner == sell.owner;
            if same_owner
                || buy.engine_account == sell.engine_account
                || buy.credit_account_id == sell.credit_account_id
                || buy.token_account_id == sell.token_account_id
            {
                return Some(TokenEffect::Refuse {
                    reason: DeadLetterReason::InvalidEvent,
                    why: format!("self-trade: bid {bid_id} and ask {ask_id} belong to one account"),
                    releases: vec![give_back(buy, qty), give_back(sell, qty)],
                });
            }
            Some(TokenEffect::Fill(Box::new(Fill {
                fill_id: decide::fill_id(market, ev.seq),
                event_seq: ev.seq,
                buy: buy.clone(),
                sell: sell.clone(),
                qty,
                price,
            })))
        }
        EventKind::Cancelled { id, qty, .. } | EventKind::Expired { id, qty } => {
            let Some(o) = orders.get(&id.0) else {
                return skip("cancel/expiry of an order not in token_orders");
            };
            let Some(qty) = lots(qty) else {
                return Some(TokenEffect::Refuse {
                    reason: DeadLetterReason::InvalidEvent,
                    why: "cancelled quantity exceeds i64".into(),
                    releases: vec![give_back(o, i64::MAX)],
                });
            };
            Some(TokenEffect::Close {
                order: o.id,
                status: TokenOrderStatus::Cancelled,
                release: (qty > 0).then(|| Release {
                    order: o.id,
                    side: o.side,
                    release_id: decide::release_id(market, ev.seq),
                    qty,
                }),
            })
        }
        EventKind::Rejected { id: Some(id), reason } => {
            let Some(o) = orders.get(&id.0) else {
                return skip("rejection of an order not in token_orders");
            };
            if o.accepted_seq.is_some() || decide::rejects_existing_order(reason) {
                return skip("rejected cancel of our token order");
            }
            Some(TokenEffect::Close {
                order: o.id,
                status: TokenOrderStatus::Rejected,
                release: Some(Release {
                    order: o.id,
                    side: o.side,
                    release_id: decide::release_id(market, ev.seq),
                    // Everything it reserved: a rejected place never traded.
                    qty: o.quantity,
                }),
            })
        }
        EventKind::Amended { id, .. } => {
            let Some(o) = orders.get(&id.0) else {
                return skip("amend of an order not in token_orders");
            };
            Some(TokenEffect::Refuse {
                reason: DeadLetterReason::InvalidEvent,
                why: format!(
                    "amend of token order {}: token orders are never amended (cancel and place again)",
                    o.id
                ),
                releases: Vec::new(),
            })
        }
    }
}

/// What to release when `effect` (of event `seq` in `market`) failed to apply: a fill gives
/// back what it took from both orders, a close everything still open.
pub fn releases_after_failure(market: &str, seq: u64, effect: &TokenEffect) -> Vec<Release> {
    let release_id = decide::refused_release_id(market, seq);
    match effect {
        TokenEffect::Fill(f) => vec![
            Release { order: f.buy.id, side: TokenSide::Buy, release_id, qty: f.qty },
            Release { order: f.sell.id, side: TokenSide::Sell, release_id, qty: f.qty },
        ],
        TokenEffect::Close { order, release: Some(r), .. } => {
            vec![Release { order: *order, side: r.side, release_id, qty: i64::MAX }]
        }
        TokenEffect::Refuse { releases, .. } => releases.clone(),
        TokenEffect::Close { release: None, .. } | TokenEffect::Skip { .. } | TokenEffect::Accepted { .. } => {
            Vec::new()
        }
    }
}

// ------------------------------------------------------------------------------ the edge

/// Settles the events of one frame of token market `pair` (called by `settle::settle_message`
/// inside the message's transaction).
pub fn settle_frame(
    c: &mut PgConnection,
    consumer: &str,
    source: &Source,
    frame: &EventFrame,
    pair: &TokenPair,
    out: &mut Outcome,
) -> Result<()> {
    let ids: Vec<u64> = frame.events.iter().flat_map(decide::order_ids).collect();
    let mut view = token_orders::load(c, &frame.market, &ids)?;
    for ev in &frame.events {
        let Some(effect) = decide_token(&frame.market, ev, &view) else {
            continue;
        };
        match &effect {
            TokenEffect::Skip { why } => {
                debug!(market = %frame.market, event.seq = ev.seq, why, "event skipped");
                continue;
            }
            TokenEffect::Accepted { order } => {
                token_orders::mark_accepted(c, *order, ev.seq)?;
                if let Some(o) = view.values_mut().find(|o| o.id == *order) {
                    o.accepted_seq = i64::try_from(ev.seq).ok();
                }
                continue;
            }
            _ => {}
        }
        let event_id = decide::event_id(&frame.market, ev.seq);
        if !events::record_processed_event(c, consumer, &event_id)? {
            out.duplicates += 1;
            continue;
        }
        let (reason, why, releases) = match effect {
            TokenEffect::Refuse { reason, why, releases } => (reason, why, releases),
            effect => match c.transaction(|c| apply(c, &effect, frame, pair)) {
                Ok(()) => {
                    out.applied += 1;
                    continue;
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => (
                    reason_of(&e),
                    e.to_string(),
                    releases_after_failure(&frame.market, ev.seq, &effect),
                ),
            },
        };
        out.refused += 1;
        let mut detail = why;
        let escrow = match c.transaction(|c| give_back(c, &releases)) {
            Ok(e) => e,
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                detail.push_str(&format!("; escrow not released: {e}"));
                Escrow { order_id: releases.first().map(|r| r.order), ..Escrow::default() }
            }
        };
        dead_letter::insert(
            c,
            consumer,
            &event_id,
            &DeadLetter {
                source: source.clone(),
                event_seq: Some(ev.seq),
                market: Some(frame.market.clone()),
                reason,
                detail,
                payload: serde_json::to_vec(ev)?,
                escrow,
            },
        )?;
    }
    Ok(())
}

fn reason_of(e: &SettlementError) -> DeadLetterReason {
    match e {
        SettlementError::Unsettleable { reason, .. } => *reason,
        SettlementError::Ledger(l) => match l.root() {
            gridbook_ledger::LedgerError::OrderNotFound(_) => DeadLetterReason::NoEscrow,
            _ => DeadLetterReason::LedgerRefused,
        },
        _ => DeadLetterReason::InvalidEvent,
    }
}

/// Lots open in an order's escrow (credits reserved for a buy, GRID held for a sell).
fn escrow_open(c: &mut PgConnection, order: Uuid, side: TokenSide) -> Result<i64> {
    Ok(match side {
        TokenSide::Buy => escrow::get_order(c, order)?.quantity_open,
        TokenSide::Sell => token_escrow::get_sell(c, order)?.quantity_open,
    })
}

/// Releases `qty` open lots of an order (its escrow's open lots exactly: a release the engine
/// reports beyond them is refused by the ledger).
fn release(c: &mut PgConnection, r: &Release) -> Result<()> {
    match r.side {
        TokenSide::Buy => {
            escrow::release_unfilled(c, r.order, r.release_id, r.qty)?;
        }
        TokenSide::Sell => {
            token_escrow::release_sell(c, r.order, r.release_id, r.qty)?;
        }
    }
    Ok(())
}

/// The remedy of a refused event: each order gets back at most what its escrow holds open,
/// and an order with nothing left open is closed (`cancelled`).
fn give_back(c: &mut PgConnection, releases: &[Release]) -> Result<Escrow> {
    let mut escrow = Escrow::default();
    for r in releases {
        let open = escrow_open(c, r.order, r.side)?;
        let qty = r.qty.clamp(0, open.max(0));
        if qty > 0 {
            release(c, &Release { qty, ..r.clone() })?;
            if escrow.order_id.is_none() {
                let filled = token_orders::get(c, r.order, false)?.map_or(0, |o| o.filled);
                escrow = Escrow {
                    order_id: Some(r.order),
                    job_id: None,
                    unit_start: u64::try_from(filled).ok(),
                    units: qty as u64,
                };
            }
        }
        if open - qty <= 0 {
            token_orders::close(c, r.order, TokenOrderStatus::Cancelled)?;
        }
    }
    Ok(escrow)
}

/// The time of a frame's command.
fn frame_time(frame: &EventFrame) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(i64::try_from(frame.time).unwrap_or(i64::MAX))
        .single()
        .unwrap_or_else(Utc::now)
}

/// Applies one effect (in a savepoint of the message's transaction).
fn apply(c: &mut PgConnection, effect: &TokenEffect, frame: &EventFrame, pair: &TokenPair) -> Result<()> {
    match effect {
        TokenEffect::Skip { .. } | TokenEffect::Accepted { .. } => Ok(()),
        TokenEffect::Refuse { reason, why, .. } => Err(SettlementError::Unsettleable { reason: *reason, why: why.clone() }),
        TokenEffect::Close { order, status, release: r } => {
            if let Some(r) = r {
                release(c, r)?;
            }
            token_orders::close(c, *order, *status)?;
            debug!(market = %frame.market, order.id = %order, status = status.as_str(), lots = r.as_ref().map_or(0, |r| r.qty), "token order closed");
            Ok(())
        }
        TokenEffect::Fill(f) => {
            // The buyer's token account exists before anything lands in it.
            match f.buy.owner {
                Some(user) => {
                    let id = gridbook_ledger::token::ensure_user_account(c, user)?;
                    if id.0 != f.buy.token_account_id {
                        return Err(SettlementError::Unsettleable {
                            reason: DeadLetterReason::NoEscrow,
                            why: format!("token order {} delivers to an account that is not its owner's", f.buy.id),
                        });
                    }
                }
                None => ensure_buyback_token_account(c, pair)?,
            }
            let paid = token_escrow::on_buy_fill(
                c,
                f.buy.id,
                f.fill_id,
                AccountId(f.sell.credit_account_id),
                f.qty,
                f.price,
            )?;
            token_escrow::on_sell_fill(c, f.sell.id, f.fill_id, AccountId(f.buy.token_account_id), f.qty)?;
            token_orders::add_filled(c, f.buy.id, f.qty)?;
            token_orders::add_filled(c, f.sell.id, f.qty)?;
            diesel::insert_into(token_fills::table)
                .values((
                    token_fills::fill_id.eq(f.fill_id),
                    token_fills::market.eq(&frame.market),
                    token_fills::event_seq.eq(i64::try_from(f.event_seq).unwrap_or(i64::MAX)),
                    token_fills::buy_order.eq(f.buy.id),
                    token_fills::sell_order.eq(f.sell.id),
                    token_fills::qty.eq(f.qty),
                    token_fills::price.eq(f.price),
                    token_fills::fee.eq(paid.fee),
                    token_fills::traded_at.eq(frame_time(frame)),
                ))
                .execute(c)?;
            info!(
                market = %frame.market,
                fill.id = %f.fill_id,
                buy.order = %f.buy.id,
                sell.order = %f.sell.id,
                qty = f.qty,
                price = f.price,
                fee = paid.fee,
                protocol = f.buy.epoch.is_some(),
                "token fill settled"
            );
            Ok(())
        }
    }
}

// ------------------------------------------------------------------------- the buyback hook

/// The protocol's buy of one epoch, as placed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlacedBuy {
    pub epoch: i64,
    /// The escrow order id (`protocol_order_id(epoch)`; the `token_orders` row).
    pub order_id: Uuid,
    pub engine_order_id: u64,
    /// Whole GRID.
    pub quantity: i64,
    /// Credits' minor units per GRID, before the fee.
    pub limit_price: i64,
    pub fee_bps: u32,
    /// Credits reserved: `quantity × (limit + ⌈limit × fee⌉)` ≤ the budget.
    pub reserved: i64,
}

fn placed(row: &TokenOrderRow, fee_bps: u32) -> Result<PlacedBuy> {
    let unit = gridbook_ledger::settlement::unit_reserve(row.price, fee_bps)?;
    Ok(PlacedBuy {
        epoch: row.epoch.unwrap_or_default(),
        order_id: row.id,
        engine_order_id: row.engine_id()?,
        quantity: row.quantity,
        limit_price: row.price,
        fee_bps,
        reserved: gridbook_ledger::settlement::cost(row.quantity, unit)?,
    })
}

/// The protocol's own buy pays no fee: a fee it paid itself would come back as next epoch's
/// "revenue" and be half spent on buying back again.
pub const PROTOCOL_FEE_BPS: u32 = 0;
/// Most GRID one protocol buy asks for: the `GRID-CREDITS` market's `max_qty` (dev.toml); more
/// would be refused by the engine and released whole.
pub const MAX_PROTOCOL_BUY: i64 = 1_000_000;

/// Places the protocol's IOC buy of epoch `epoch` on `GRID-CREDITS`: as many whole GRID as
/// `budget` (credits' minor units; no fee, [`PROTOCOL_FEE_BPS`]) covers at `limit_price` (at most
/// [`MAX_PROTOCOL_BUY`]), reserved from
/// `USD:buyback_treasury` like a job's bid and queued through the outbox, in the caller's
/// transaction. Its fills deliver to `GRID:buyback_treasury`; what it does not spend (price
/// improvement, the unfilled remainder the engine cancels) returns to `USD:buyback_treasury`.
///
/// Idempotent by epoch: when the epoch's order exists, it is returned and nothing new is
/// placed (whatever `budget` and `limit_price` say now). `None` when `budget` buys less than
/// one GRID. Errors: the treasury's available credits do not cover the reservation
/// (`LedgerError::ExceedsCredits`), a limit outside the ledger's rules.
pub fn place_protocol_buy(
    conn: &mut PgConnection,
    epoch: i64,
    budget: i64,
    limit_price: i64,
) -> Result<Option<PlacedBuy>> {
    let market = catalog::GRID_CREDITS;
    let pair = catalog::token(market)
        .ok_or_else(|| SettlementError::Refused(format!("{market} is not a token market")))?;
    if epoch < 0 {
        return Err(SettlementError::Refused(format!("epoch {epoch} is negative")));
    }
    if limit_price <= 0 {
        return Err(SettlementError::Refused(format!("limit price {limit_price} must be positive")));
    }
    conn.transaction(|c| {
        if let Some(row) = token_orders::of_epoch(c, epoch)? {
            if row.price != limit_price {
                warn!(epoch, order.id = %row.id, placed_limit = row.price, asked_limit = limit_price, "protocol buy of this epoch exists; nothing new placed");
            }
            return placed(&row, PROTOCOL_FEE_BPS).map(Some);
        }
        let unit = gridbook_ledger::settlement::unit_reserve(limit_price, PROTOCOL_FEE_BPS)?;
        let quantity = (budget.max(0) / unit).min(MAX_PROTOCOL_BUY);
        if quantity < 1 {
            debug!(epoch, budget, limit_price, unit, "buyback budget buys less than one GRID");
            return Ok(None);
        }
        escrow::ensure_system_accounts(c, pair.quote_ledger)?;
        ensure_buyback_token_account(c, &pair)?;
        let order_id = protocol_order_id(epoch);
        let credits = buyback_credits_account(&pair);
        escrow::reserve_bid(
            c,
            &Bid { order_id, studio_account: credits, quantity, limit_price, fee_bps: PROTOCOL_FEE_BPS },
        )?;
        let engine_order_id = market_orders::next_engine_order_id(c)?;
        let now = Utc::now();
        let row = token_orders::insert(
            c,
            &TokenOrderRow {
                id: order_id,
                engine_order_id: i64::try_from(engine_order_id)
                    .map_err(|_| SettlementError::Refused("engine order id exceeds i64".into()))?,
                market: market.to_owned(),
                owner: None,
                epoch: Some(epoch),
                side: TokenSide::Buy,
                price: limit_price,
                quantity,
                filled: 0,
                time_in_force: TokenTimeInForce::Ioc,
                client_order_id: None,
                credit_account_id: credits.0,
                token_account_id: buyback_token_account(&pair).0,
                engine_account: PROTOCOL_ENGINE_ACCOUNT as i64,
                status: TokenOrderStatus::Open,
                accepted_seq: None,
                created_at: now,
                updated_at: now,
            },
        )?;
        events::enqueue_outbox(c, &subjects::market_cmd(market), &serde_json::to_value(row.place_command()?)?)?;
        let out = placed(&row, PROTOCOL_FEE_BPS)?;
        info!(epoch, order.id = %order_id, engine_order_id, quantity, limit_price, reserved = out.reserved, "protocol buy queued");
        Ok(Some(out))
    })
}

/// One settled fill of a token market.
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[diesel(table_name = token_fills)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct TokenFill {
    pub fill_id: Uuid,
    pub market: String,
    pub event_seq: i64,
    pub buy_order: Uuid,
    pub sell_order: Uuid,
    /// Whole GRID.
    pub qty: i64,
    /// Credits' minor units per GRID.
    pub price: i64,
    /// The buyer's fee, credits' minor units.
    pub fee: i64,
    /// The engine command's time.
    pub traded_at: DateTime<Utc>,
    pub settled_at: DateTime<Utc>,
}

/// The volume-weighted average price of the settled `GRID-CREDITS` fills traded in
/// `[since, until)`, rounded to the nearest minor unit (halves up), with their total quantity;
/// `None` when none traded.
pub fn vwap(conn: &mut PgConnection, since: DateTime<Utc>, until: DateTime<Utc>) -> Result<Option<(i64, i64)>> {
    #[derive(QueryableByName)]
    struct Sums {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        notional: Option<String>,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        qty: Option<String>,
    }
    let s: Sums = diesel::sql_query(
        "SELECT sum(qty::numeric * price)::text AS notional, sum(qty::numeric)::text AS qty \
         FROM token_fills WHERE market = $1 AND traded_at >= $2 AND traded_at < $3",
    )
    .bind::<diesel::sql_types::Text, _>(catalog::GRID_CREDITS)
    .bind::<diesel::sql_types::Timestamptz, _>(since)
    .bind::<diesel::sql_types::Timestamptz, _>(until)
    .get_result(conn)?;
    let parse = |v: Option<String>| -> Result<Option<i128>> {
        v.map(|t| t.parse::<i128>().map_err(|e| SettlementError::Refused(format!("token_fills sum {t:?}: {e}"))))
            .transpose()
    };
    let (Some(notional), Some(qty)) = (parse(s.notional)?, parse(s.qty)?) else {
        return Ok(None);
    };
    if qty <= 0 {
        return Ok(None);
    }
    let price = (2 * notional + qty) / (2 * qty);
    let narrow = |v: i128| i64::try_from(v).map_err(|_| SettlementError::Refused(format!("vwap figure {v} exceeds i64")));
    Ok(Some((narrow(price)?, narrow(qty)?)))
}

/// The settled fills of the protocol's buy of `epoch`, oldest first (empty when it placed none
/// or nothing filled).
pub fn protocol_buys(conn: &mut PgConnection, epoch: i64) -> Result<Vec<TokenFill>> {
    let Some(order) = token_orders::of_epoch(conn, epoch)? else {
        return Ok(Vec::new());
    };
    Ok(token_fills::table
        .filter(token_fills::buy_order.eq(order.id))
        .order(token_fills::event_seq.asc())
        .select(TokenFill::as_select())
        .load(conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use matching_core::{AccountId as EngAcct, CancelReason, OrderId, RejectReason};

    fn row(engine: i64, side: TokenSide, owner: u128) -> TokenOrderRow {
        let now = Utc::now();
        TokenOrderRow {
            id: Uuid::from_u128(engine as u128),
            engine_order_id: engine,
            market: "GRID-CREDITS".into(),
            owner: Some(Uuid::from_u128(owner)),
            epoch: None,
            side,
            price: 100,
            quantity: 5,
            filled: 0,
            time_in_force: TokenTimeInForce::Gtc,
            client_order_id: None,
            credit_account_id: Uuid::from_u128(1000 + owner),
            token_account_id: Uuid::from_u128(2000 + owner),
            engine_account: owner as i64,
            status: TokenOrderStatus::Open,
            accepted_seq: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn view() -> BTreeMap<u64, TokenOrderRow> {
        [(1, row(1, TokenSide::Buy, 10)), (2, row(2, TokenSide::Sell, 20)), (3, row(3, TokenSide::Sell, 10))]
            .into_iter()
            .collect()
    }

    fn fill(maker: u64, taker: u64, taker_side: Side) -> Event {
        Event {
            seq: 9,
            cmd: 1,
            kind: EventKind::Fill {
                maker: OrderId(maker),
                taker: OrderId(taker),
                maker_account: EngAcct(1),
                taker_account: EngAcct(2),
                taker_side,
                price: 90,
                qty: 2,
                fee: 0,
                maker_left: 0,
                taker_left: 0,
            },
        }
    }

    #[test]
    fn a_fill_pairs_the_buy_with_the_sell_whoever_took() {
        for (maker, taker, side) in [(1, 2, Side::Ask), (2, 1, Side::Bid)] {
            let Some(TokenEffect::Fill(f)) = decide_token("GRID-CREDITS", &fill(maker, taker, side), &view()) else {
                panic!("expected a fill");
            };
            assert_eq!((f.buy.engine_order_id, f.sell.engine_order_id, f.qty, f.price), (1, 2, 2, 90));
            assert_eq!(f.fill_id, decide::fill_id("GRID-CREDITS", 9));
        }
    }

    #[test]
    fn a_self_trade_or_a_foreign_counterparty_is_refused_and_gives_the_lots_back() {
        let Some(TokenEffect::Refuse { releases, why, .. }) = decide_token("GRID-CREDITS", &fill(3, 1, Side::Bid), &view()) else {
            panic!("expected a refusal");
        };
        assert!(why.contains("self-trade"), "{why}");
        assert_eq!(releases.iter().map(|r| (r.order, r.qty)).collect::<Vec<_>>(), [(Uuid::from_u128(1), 2), (Uuid::from_u128(3), 2)]);
        let Some(TokenEffect::Refuse { reason, releases, .. }) = decide_token("GRID-CREDITS", &fill(50, 1, Side::Bid), &view()) else {
            panic!("expected a refusal");
        };
        assert_eq!(reason, DeadLetterReason::UnknownOrder);
        assert_eq!(releases.len(), 1);
        assert!(matches!(decide_token("GRID-CREDITS", &fill(50, 51, Side::Bid), &view()), Some(TokenEffect::Skip { .. })));
    }

    #[test]
    fn cancels_release_exactly_and_rejections_release_everything_once() {
        let c = Event { seq: 4, cmd: 1, kind: EventKind::Cancelled { id: OrderId(2), qty: 3, reason: CancelReason::Unfilled } };
        let Some(TokenEffect::Close { status, release: Some(r), .. }) = decide_token("GRID-CREDITS", &c, &view()) else {
            panic!("expected a close");
        };
        assert_eq!((status, r.side, r.qty), (TokenOrderStatus::Cancelled, TokenSide::Sell, 3));
        assert_eq!(r.release_id, decide::release_id("GRID-CREDITS", 4));
        let rej = Event { seq: 5, cmd: 1, kind: EventKind::Rejected { id: Some(OrderId(1)), reason: RejectReason::PriceOutOfRange } };
        assert!(matches!(
            decide_token("GRID-CREDITS", &rej, &view()),
            Some(TokenEffect::Close { status: TokenOrderStatus::Rejected, release: Some(Release { qty: 5, .. }), .. })
        ));
        let mut v = view();
        v.get_mut(&1).unwrap().accepted_seq = Some(1);
        assert!(matches!(decide_token("GRID-CREDITS", &rej, &v), Some(TokenEffect::Skip { .. })));
    }

    #[test]
    fn protocol_order_ids_are_per_epoch() {
        assert_eq!(protocol_order_id(3), protocol_order_id(3));
        assert_ne!(protocol_order_id(3), protocol_order_id(4));
    }
}
