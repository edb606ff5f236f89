//! Domain types: accounts, balances and transfers. Amounts are `i64` minor units (cents, or
//! token base units); every sum is checked and overflow is `LedgerError::Overflow`. `i64` is what
//! PostgreSQL's `bigint` stores, 9.2e18 minor units — products (quantity × price) are computed in
//! `i128` and narrowed with a check.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{LedgerError, Result};
use crate::ids::{AccountId, TransferId};

/// Minor units (integer). `rust_decimal` only at the edges (`to_decimal` / `from_decimal`).
pub type Amount = i64;

/// Converts minor units to a decimal with `scale` fractional digits (e.g. cents: scale 2).
pub fn to_decimal(amount: Amount, scale: u32) -> rust_decimal::Decimal {
    rust_decimal::Decimal::new(amount, scale)
}

/// Converts a decimal to minor units; refuses fractions of a minor unit and overflow.
pub fn from_decimal(value: rust_decimal::Decimal, scale: u32) -> Result<Amount> {
    use rust_decimal::prelude::ToPrimitive;
    let factor =
        rust_decimal::Decimal::from(10i64.checked_pow(scale).ok_or(LedgerError::Overflow)?);
    let scaled = value.checked_mul(factor).ok_or(LedgerError::Overflow)?;
    if !scaled.fract().is_zero() {
        return Err(LedgerError::Invalid(format!(
            "{value} has more than {scale} decimal places"
        )));
    }
    scaled.to_i64().ok_or(LedgerError::Overflow)
}

/// What an account is for. Stored as its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountCode {
    Studio,
    Provider,
    Escrow,
    ProtocolFee,
    BuybackTreasury,
    TokenSupply,
    Burned,
    RewardsPool,
    /// The operator's side of deposits and withdrawals (money entering/leaving the platform).
    Operator,
    /// A node's earnings withheld for its next `withhold_assignments` verified assignments (one
    /// per ledger and node; reference: the node).
    Withheld,
    /// Withheld earnings a proven cheat forfeited; funds verification (one per ledger).
    VerificationFund,
    /// A user's token balance (`token::user_account`).
    TokenHolder,
    /// The bounded supply not yet emitted (`supply`): every token leaves it by a ledger transfer.
    EmissionReserve,
}

impl AccountCode {
    pub const ALL: [AccountCode; 13] = [
        Self::Studio,
        Self::Provider,
        Self::Escrow,
        Self::ProtocolFee,
        Self::BuybackTreasury,
        Self::TokenSupply,
        Self::Burned,
        Self::RewardsPool,
        Self::Operator,
        Self::Withheld,
        Self::VerificationFund,
        Self::TokenHolder,
        Self::EmissionReserve,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Studio => "studio",
            Self::Provider => "provider",
            Self::Escrow => "escrow",
            Self::ProtocolFee => "protocol_fee",
            Self::BuybackTreasury => "buyback_treasury",
            Self::TokenSupply => "token_supply",
            Self::Burned => "burned",
            Self::RewardsPool => "rewards_pool",
            Self::Operator => "operator",
            Self::Withheld => "withheld",
            Self::VerificationFund => "verification_fund",
            Self::TokenHolder => "token_holder",
            Self::EmissionReserve => "emission_reserve",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| LedgerError::Invalid(format!("unknown account code {s}")))
    }

    /// The usual flags: balances held for someone may not go negative; the operator (credits
    /// entering and leaving) and the token supply (bounded by the database: `supply`) are the
    /// system's boundary with the outside and may.
    pub fn default_flags(self) -> AccountFlags {
        match self {
            Self::Operator | Self::TokenSupply => AccountFlags::NONE,
            _ => AccountFlags::CREDIT_NORMAL,
        }
    }
}

/// May a balance go negative? (TigerBeetle's flags.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccountFlags {
    pub debits_must_not_exceed_credits: bool,
    pub credits_must_not_exceed_debits: bool,
}

impl AccountFlags {
    pub const NONE: Self = Self {
        debits_must_not_exceed_credits: false,
        credits_must_not_exceed_debits: false,
    };
    /// Holds money for someone: debits (pending + posted) never exceed posted credits.
    pub const CREDIT_NORMAL: Self = Self {
        debits_must_not_exceed_credits: true,
        credits_must_not_exceed_debits: false,
    };
}

/// Pending and posted debits and credits (never negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Balances {
    pub debits_pending: Amount,
    pub debits_posted: Amount,
    pub credits_pending: Amount,
    pub credits_posted: Amount,
}

impl Balances {
    /// Posted credits − posted debits (credit-normal view).
    pub fn posted(&self) -> i128 {
        self.credits_posted as i128 - self.debits_posted as i128
    }
    /// What a credit-normal account can still spend: posted credits − posted and pending debits.
    pub fn available(&self) -> i128 {
        self.credits_posted as i128 - self.debits_posted as i128 - self.debits_pending as i128
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAccount {
    pub id: AccountId,
    pub ledger: String,
    pub code: AccountCode,
    pub flags: AccountFlags,
    /// Who or what the account belongs to (user, order, node).
    pub reference: Option<Uuid>,
}

impl NewAccount {
    pub fn new(id: AccountId, ledger: &str, code: AccountCode) -> Self {
        Self {
            id,
            ledger: ledger.to_owned(),
            code,
            flags: code.default_flags(),
            reference: None,
        }
    }
    /// The single system account of `code` on `ledger`, with its deterministic id.
    pub fn system(ledger: &str, code: AccountCode) -> Self {
        Self::new(AccountId::system(ledger, code.as_str()), ledger, code)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub ledger: String,
    pub code: AccountCode,
    pub flags: AccountFlags,
    pub balances: Balances,
    pub reference: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// The stored kind of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// Single-phase: posted at once.
    Posted,
    /// Phase one: reserves the amount (pending debits/credits).
    Pending,
    /// Phase two: posts all or part of a pending transfer; the remainder returns.
    Post,
    /// Phase two: voids a pending transfer.
    Void,
    /// Phase two, by the ledger: a pending transfer whose timeout passed.
    Expire,
}

impl TransferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Posted => "posted",
            Self::Pending => "pending",
            Self::Post => "post",
            Self::Void => "void",
            Self::Expire => "expire",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "posted" => Self::Posted,
            "pending" => Self::Pending,
            "post" => Self::Post,
            "void" => Self::Void,
            "expire" => Self::Expire,
            _ => return Err(LedgerError::Invalid(format!("unknown transfer kind {s}"))),
        })
    }
}

/// What a new transfer does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferOp {
    Posted {
        debit: AccountId,
        credit: AccountId,
        amount: Amount,
    },
    Pending {
        debit: AccountId,
        credit: AccountId,
        amount: Amount,
        expires_at: Option<DateTime<Utc>>,
    },
    /// `amount: None` posts the full pending amount.
    Post {
        pending: TransferId,
        amount: Option<Amount>,
    },
    Void {
        pending: TransferId,
    },
}

/// A transfer request. Its `id` makes it idempotent: the same id with the same content returns the
/// original transfer; with different content it is rejected (`exists_with_different_content`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTransfer {
    pub id: TransferId,
    pub op: TransferOp,
    /// Why (snake_case): `deposit`, `escrow_reserve`, `settle_provider`, `burn`, ...
    pub code: String,
    pub reference: Option<Uuid>,
}

impl NewTransfer {
    pub fn posted(
        id: TransferId,
        debit: AccountId,
        credit: AccountId,
        amount: Amount,
        code: &str,
    ) -> Self {
        Self {
            id,
            op: TransferOp::Posted {
                debit,
                credit,
                amount,
            },
            code: code.to_owned(),
            reference: None,
        }
    }
    pub fn pending(
        id: TransferId,
        debit: AccountId,
        credit: AccountId,
        amount: Amount,
        expires_at: Option<DateTime<Utc>>,
        code: &str,
    ) -> Self {
        // PostgreSQL keeps microseconds: truncate here so a retry compares equal.
        let expires_at = expires_at.map(|t| t.trunc_subsecs(6));
        Self {
            id,
            op: TransferOp::Pending {
                debit,
                credit,
                amount,
                expires_at,
            },
            code: code.to_owned(),
            reference: None,
        }
    }
    pub fn post(id: TransferId, pending: TransferId, amount: Option<Amount>, code: &str) -> Self {
        Self {
            id,
            op: TransferOp::Post { pending, amount },
            code: code.to_owned(),
            reference: None,
        }
    }
    pub fn void(id: TransferId, pending: TransferId, code: &str) -> Self {
        Self {
            id,
            op: TransferOp::Void { pending },
            code: code.to_owned(),
            reference: None,
        }
    }
    pub fn with_reference(mut self, reference: Uuid) -> Self {
        self.reference = Some(reference);
        self
    }
    /// The pending transfer this request resolves, if any.
    pub fn pending_id(&self) -> Option<TransferId> {
        match self.op {
            TransferOp::Post { pending, .. } | TransferOp::Void { pending } => Some(pending),
            _ => None,
        }
    }
}

/// A stored, immutable transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: TransferId,
    /// Position in the ledger's history (assigned by the database; 0 before insertion).
    pub seq: i64,
    pub kind: TransferKind,
    pub debit_account: AccountId,
    pub credit_account: AccountId,
    pub ledger: String,
    pub amount: Amount,
    pub pending_id: Option<TransferId>,
    pub expires_at: Option<DateTime<Utc>>,
    pub code: String,
    pub reference: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}
