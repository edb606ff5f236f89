//! The GRID token on the ledger: its constants and the account each user holds it in.
//!
//! GRID is ledger `GRID`, in base units (10^[`DECIMALS`] per whole token). Its supply is bounded
//! (`supply`): every GRID that exists came out of the genesis reserve. A user's GRID account is
//! derived from the user id (one per user, created on first use), so no table maps it.

use diesel::PgConnection;
use uuid::Uuid;

use crate::error::Result;
use crate::ids::AccountId;
use crate::model::{AccountCode, NewAccount};
use crate::store;

/// The token's ledger.
pub const LEDGER: &str = "GRID";
/// Base units per whole token: 10^DECIMALS.
pub const DECIMALS: u32 = 6;
/// Base units in one whole token.
pub const UNIT: i64 = 1_000_000;

/// The GRID account of user `user` (derived; see [`ensure_user_account`]).
pub fn user_account(user: Uuid) -> AccountId {
    AccountId::derived(&["user-token-account", LEDGER, &user.to_string()])
}

/// Creates user `user`'s GRID account if it does not exist (idempotent); returns its id.
/// Credit-normal: its balance can never go negative.
pub fn ensure_user_account(conn: &mut PgConnection, user: Uuid) -> Result<AccountId> {
    let id = user_account(user);
    let mut new = NewAccount::new(id, LEDGER, AccountCode::TokenHolder);
    new.reference = Some(user);
    store::create_account(conn, &new)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_accounts_are_distinct_per_user_and_stable() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(user_account(a), user_account(a));
        assert_ne!(user_account(a), user_account(b));
        assert_ne!(user_account(a), AccountId::system(LEDGER, "provider"));
        assert_eq!(UNIT, 10i64.pow(DECIMALS));
    }
}
