//! The GRID supply is bounded: [`MAX_SUPPLY`] base units exist, minted once by the genesis
//! transfer out of the token supply account into the emission reserve. The database refuses any
//! further debit of the token supply account beyond the cap (constraint `grid_supply_bounded`)
//! and any debit of a burned account (`burned_never_debited`), so no code path can mint more or
//! un-burn. Every GRID in circulation left the reserve by a ledger transfer (an epoch emission).

use diesel::PgConnection;
use serde::{Deserialize, Serialize};

use crate::error::{LedgerError, Result};
use crate::ids::{AccountId, TransferId};
use crate::model::{AccountCode, Amount, NewAccount, NewTransfer};
use crate::store;
use crate::token::{LEDGER, UNIT};

/// Every GRID that will ever exist: one billion tokens (the migration's constraint says the same).
pub const MAX_SUPPLY: Amount = 1_000_000_000 * UNIT;

/// A GRID system account.
pub fn account(code: AccountCode) -> AccountId {
    AccountId::system(LEDGER, code.as_str())
}

/// The genesis transfer's id (one per ledger, so a retry cannot mint twice).
pub fn genesis_id() -> TransferId {
    TransferId::derived(&["genesis", LEDGER])
}

/// Creates the GRID system accounts and mints [`MAX_SUPPLY`] into the emission reserve, once
/// (idempotent: a second call finds the transfer and does nothing).
pub fn genesis(conn: &mut PgConnection) -> Result<()> {
    let codes = [
        AccountCode::TokenSupply,
        AccountCode::EmissionReserve,
        AccountCode::RewardsPool,
        AccountCode::BuybackTreasury,
        AccountCode::Burned,
    ];
    let news: Vec<NewAccount> = codes
        .into_iter()
        .map(|c| NewAccount::system(LEDGER, c))
        .collect();
    store::create_accounts(conn, &news)?;
    if store::get_transfer(conn, genesis_id())?.is_none() {
        store::create_transfer(
            conn,
            &NewTransfer::posted(
                genesis_id(),
                account(AccountCode::TokenSupply),
                account(AccountCode::EmissionReserve),
                MAX_SUPPLY,
                "genesis",
            ),
        )?;
    }
    Ok(())
}

/// The supply figures, read from the accounts (base units; see `token::DECIMALS`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supply {
    pub max_supply: Amount,
    /// Minted by genesis (= `max_supply` once genesis ran).
    pub minted: Amount,
    /// Not yet emitted.
    pub reserve: Amount,
    /// Emitted and not yet paid out.
    pub rewards_pool: Amount,
    /// Bought back and not yet burned.
    pub buyback_treasury: Amount,
    pub burned: Amount,
    /// Held by users: minted − reserve − rewards pool − treasury − burned.
    pub circulating: Amount,
}

/// An account's posted balance; 0 before genesis created it.
fn posted(conn: &mut PgConnection, code: AccountCode) -> Result<Amount> {
    match store::get_account(conn, account(code)) {
        Ok(a) => Amount::try_from(a.balances.posted()).map_err(|_| LedgerError::Overflow),
        Err(LedgerError::AccountNotFound(_)) => Ok(0),
        Err(e) => Err(e),
    }
}

/// The supply now (read only: all zero before [`genesis`]).
pub fn supply(conn: &mut PgConnection) -> Result<Supply> {
    let minted = -posted(conn, AccountCode::TokenSupply)?;
    let reserve = posted(conn, AccountCode::EmissionReserve)?;
    let rewards_pool = posted(conn, AccountCode::RewardsPool)?;
    let buyback_treasury = posted(conn, AccountCode::BuybackTreasury)?;
    let burned = posted(conn, AccountCode::Burned)?;
    Ok(Supply {
        max_supply: MAX_SUPPLY,
        minted,
        reserve,
        rewards_pool,
        buyback_treasury,
        burned,
        circulating: minted - reserve - rewards_pool - buyback_treasury - burned,
    })
}
