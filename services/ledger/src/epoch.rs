//! Epochs: buyback-and-burn under a published rule, and the rewards-pool payout hook.
//!
//! The rule (`BuybackRule`): at the end of epoch N, `share_bps` of the protocol fee account's
//! available balance buys tokens at the price the `PriceSource` records, and the tokens are
//! burned; `rewards_share_bps` of it funds the rewards pool. Every step is a ledger transfer with
//! an id derived from the epoch, and the `BuybackReport` (stored in `epoch_reports`) lists them, so
//! anyone can recompute the report from the API's transfer history. Idempotent by epoch.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};

use crate::error::{LedgerError, Result};
use crate::ids::{AccountId, TransferId};
use crate::model::{AccountCode, Amount, NewAccount, NewTransfer, Transfer};
use crate::schema::epoch_reports;
use crate::store;

/// A recorded token price: quote-currency minor units per whole token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPrice {
    pub minor_units_per_token: Decimal,
    pub source: String,
    pub observed_at: DateTime<Utc>,
}

/// Where the buyback price comes from (an oracle, a DEX TWAP, ...).
pub trait PriceSource {
    fn price(&self, epoch: i64) -> Result<TokenPrice>;
}

/// A fixed price (until a market price source exists).
#[derive(Clone, Debug)]
pub struct FixedPrice(pub Decimal);

impl PriceSource for FixedPrice {
    fn price(&self, _epoch: i64) -> Result<TokenPrice> {
        Ok(TokenPrice {
            minor_units_per_token: self.0,
            source: "fixed".into(),
            observed_at: crate::store::now(),
        })
    }
}

/// The published rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuybackRule {
    /// Ledger of the fees (e.g. `USD`).
    pub currency_ledger: String,
    /// Ledger of the token (e.g. `GRID`).
    pub token_ledger: String,
    /// Share of the fee account's available balance spent on the buyback.
    pub share_bps: u32,
    /// Share of the fee account's available balance moved to the rewards pool.
    pub rewards_share_bps: u32,
    /// Token base units per whole token = 10^token_decimals.
    pub token_decimals: u32,
}

/// What one epoch did; every amount is backed by the listed transfers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuybackReport {
    pub epoch: i64,
    pub rule: BuybackRule,
    pub fee_account: AccountId,
    pub fee_available_before: Amount,
    pub buyback_spend: Amount,
    pub rewards_allocation: Amount,
    pub price: TokenPrice,
    pub tokens_bought: Amount,
    pub tokens_burned: Amount,
    pub transfers: Vec<Transfer>,
}

fn sys(ledger: &str, code: AccountCode) -> AccountId {
    AccountId::system(ledger, code.as_str())
}

fn bps_of(amount: Amount, bps: u32) -> Amount {
    ((amount as i128 * bps as i128) / 10_000) as Amount
}

/// Runs the epoch's buyback-and-burn (idempotent: a second call returns the stored report).
pub fn buyback_and_burn(
    conn: &mut PgConnection,
    epoch: i64,
    rule: &BuybackRule,
    prices: &dyn PriceSource,
) -> Result<BuybackReport> {
    if rule.share_bps + rule.rewards_share_bps > 10_000 {
        return Err(LedgerError::Invalid("shares exceed 100%".into()));
    }
    store::with_retry(conn, |c| {
        let stored: Option<serde_json::Value> = epoch_reports::table
            .find(epoch)
            .select(epoch_reports::report)
            .for_update()
            .first(c)
            .optional()?;
        if let Some(v) = stored {
            return serde_json::from_value(v).map_err(|e| LedgerError::Invalid(e.to_string()));
        }
        let (q, t) = (rule.currency_ledger.as_str(), rule.token_ledger.as_str());
        let accounts = [
            NewAccount::system(q, AccountCode::ProtocolFee),
            NewAccount::system(q, AccountCode::BuybackTreasury),
            NewAccount::system(q, AccountCode::TokenMarket),
            NewAccount::system(q, AccountCode::RewardsPool),
            NewAccount::system(t, AccountCode::TokenMarket),
            NewAccount::system(t, AccountCode::BuybackTreasury),
            NewAccount::system(t, AccountCode::Burned),
        ];
        store::create_accounts(c, &accounts)?;
        let fee_account = sys(q, AccountCode::ProtocolFee);
        let fee_available = store::get_account(c, fee_account)?.balances.available();
        let fee_available = Amount::try_from(fee_available).map_err(|_| LedgerError::Overflow)?;
        let spend = bps_of(fee_available, rule.share_bps);
        let rewards = bps_of(fee_available, rule.rewards_share_bps);
        let price = prices.price(epoch)?;
        if price.minor_units_per_token <= Decimal::ZERO {
            return Err(LedgerError::Invalid("token price must be positive".into()));
        }
        let scale = Decimal::from(
            10i64
                .checked_pow(rule.token_decimals)
                .ok_or(LedgerError::Overflow)?,
        );
        let tokens = (Decimal::from(spend) * scale / price.minor_units_per_token)
            .floor()
            .to_i64()
            .ok_or(LedgerError::Overflow)?;
        let e = epoch.to_string();
        let id = |step: &str| TransferId::derived(&["epoch", &e, step]);
        let mut reqs = Vec::new();
        if spend > 0 {
            reqs.push(NewTransfer::posted(
                id("allocate"),
                fee_account,
                sys(q, AccountCode::BuybackTreasury),
                spend,
                "buyback_allocate",
            ));
            reqs.push(NewTransfer::posted(
                id("pay"),
                sys(q, AccountCode::BuybackTreasury),
                sys(q, AccountCode::TokenMarket),
                spend,
                "buyback_pay",
            ));
        }
        if tokens > 0 {
            reqs.push(NewTransfer::posted(
                id("receive"),
                sys(t, AccountCode::TokenMarket),
                sys(t, AccountCode::BuybackTreasury),
                tokens,
                "buyback_receive",
            ));
            reqs.push(NewTransfer::posted(
                id("burn"),
                sys(t, AccountCode::BuybackTreasury),
                sys(t, AccountCode::Burned),
                tokens,
                "burn",
            ));
        }
        if rewards > 0 {
            reqs.push(NewTransfer::posted(
                id("rewards"),
                fee_account,
                sys(q, AccountCode::RewardsPool),
                rewards,
                "rewards_allocate",
            ));
        }
        let transfers = store::create_transfers(c, &reqs)?;
        let report = BuybackReport {
            epoch,
            rule: rule.clone(),
            fee_account,
            fee_available_before: fee_available,
            buyback_spend: spend,
            rewards_allocation: rewards,
            price,
            tokens_bought: tokens,
            tokens_burned: tokens,
            transfers,
        };
        let json =
            serde_json::to_value(&report).map_err(|e| LedgerError::Invalid(e.to_string()))?;
        diesel::insert_into(epoch_reports::table)
            .values((
                epoch_reports::epoch.eq(epoch),
                epoch_reports::report.eq(json),
            ))
            .execute(c)?;
        Ok(report)
    })
}

/// Splits the rewards pool among providers (the trust issue implements the policy: verified work
/// × quality × availability, capped per identity).
pub trait RewardsPolicy {
    /// Payouts for `epoch` out of `pool_available` minor units; their sum must not exceed it.
    fn payouts(&self, epoch: i64, pool_available: Amount) -> Result<Vec<(AccountId, Amount)>>;
}

/// Pays the epoch's rewards from the pool as one linked batch (idempotent by epoch + account).
pub fn pay_rewards(
    conn: &mut PgConnection,
    epoch: i64,
    ledger: &str,
    policy: &dyn RewardsPolicy,
) -> Result<Vec<Transfer>> {
    let pool = sys(ledger, AccountCode::RewardsPool);
    store::create_account(conn, &NewAccount::system(ledger, AccountCode::RewardsPool))?;
    let available = Amount::try_from(store::get_account(conn, pool)?.balances.available())
        .map_err(|_| LedgerError::Overflow)?;
    let e = epoch.to_string();
    let reqs: Vec<NewTransfer> = policy
        .payouts(epoch, available)?
        .into_iter()
        .filter(|(_, a)| *a > 0)
        .map(|(acct, amount)| {
            NewTransfer::posted(
                TransferId::derived(&["rewards", &e, &acct.to_string()]),
                pool,
                acct,
                amount,
                "rewards_payout",
            )
        })
        .collect();
    store::create_transfers(conn, &reqs)
}
