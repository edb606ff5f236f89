//! The status columns of the marketplace tables as enums. Each is stored as the text the
//! migration's CHECK constraint allows (`jobs.status IN ('validating', …)`), so the database
//! and the code agree on one spelling; an unknown value read back is an error, never a default.

use diesel::deserialize::{self, FromSql};
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;

use crate::DbError;

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
            diesel::AsExpression, diesel::FromSqlRow,
        )]
        #[diesel(sql_type = Text)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in the migration's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = DbError;
            fn from_str(s: &str) -> Result<Self, DbError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(DbError::Refused(format!(
                        "{other:?} is not a {} (expected one of {})",
                        stringify!($name),
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
            }
        }

        impl FromSql<Text, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
                Ok(text.parse::<$name>()?)
            }
        }
    };
}

text_enum! {
    /// `jobs.status`.
    JobStatus {
        /// Reserved: uploads are validated when they arrive, so jobs start `queued`.
        Validating = "validating",
        /// The bid is on the book; nothing assigned yet.
        Queued = "queued",
        /// At least one assignment exists.
        Running = "running",
        /// Nothing left to assign or run; the output file is being assembled.
        Verifying = "verifying",
        Completed = "completed",
        Failed = "failed",
        Expired = "expired",
        Cancelled = "cancelled",
        /// The engine refused the job's bid (`jobs.reject_reason`, e.g. `fok_unfillable`), or an
        /// IOC job of which nothing filled: nothing ran, everything reserved was released.
        Rejected = "rejected",
    }
}

text_enum! {
    /// `jobs.time_in_force`: how long the job's bid may wait on the book.
    JobTimeInForce {
        /// Until the job's deadline (the engine's GTD at the deadline).
        Gtc = "gtc",
        /// Immediate or cancel: what fills at once runs, the rest is released.
        Ioc = "ioc",
        /// Fill or kill: every unit at once, or the job is rejected (`fok_unfillable`).
        Fok = "fok",
    }
}

impl JobStatus {
    /// A job in one of these states never changes again.
    pub const TERMINAL: [JobStatus; 5] = [
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Expired,
        JobStatus::Cancelled,
        JobStatus::Rejected,
    ];

    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }
}

text_enum! {
    /// `job_assignments.status`.
    AssignmentStatus {
        /// Sent to the node; no result yet.
        Assigned = "assigned",
        Verifying = "verifying",
        /// Verified; the escrow posted for the verified units.
        Completed = "completed",
        /// Failed, overdue or refused; the escrow voided.
        Failed = "failed",
    }
}

text_enum! {
    /// `nodes.status`.
    NodeStatus {
        /// A new identity with small caps (`limits.probation_ask_qty`).
        Probation = "probation",
        Active = "active",
        /// Suspended by an admin: its credentials are revoked, it cannot connect or post asks.
        Suspended = "suspended",
        /// Retired by its owner (`DELETE /v1/nodes/{id}`): revoked like a suspended node, for good.
        Deleted = "deleted",
    }
}

text_enum! {
    /// `nodes.challenge_status`.
    ChallengeStatus {
        Pending = "pending",
        Passed = "passed",
        Failed = "failed",
    }
}

text_enum! {
    /// `nodes.challenge_timing`: the market's timing verdict on a passed challenge (NULL while
    /// pending, after a failure, or for a challenge never timed).
    ChallengeTiming {
        /// The commitment arrived within the class's bound.
        Fits = "fits",
        /// It arrived later: the node may trade within the probation caps, never leaves
        /// probation.
        TooSlow = "too_slow",
    }
}

text_enum! {
    /// `asks.status`.
    AskStatus {
        Open = "open",
        /// The API queued a Cancel; the worker closes the ask on the engine's event.
        CancelRequested = "cancel_requested",
        Closed = "closed",
    }
}

text_enum! {
    /// `token_orders.side`.
    TokenSide {
        /// Pays credits for tokens.
        Buy = "buy",
        /// Delivers tokens for credits.
        Sell = "sell",
    }
}

text_enum! {
    /// `token_orders.time_in_force`.
    TokenTimeInForce {
        /// Rests until filled or cancelled.
        Gtc = "gtc",
        /// Takes what it can at once; the rest is cancelled by the engine.
        Ioc = "ioc",
    }
}

text_enum! {
    /// `token_orders.status`.
    TokenOrderStatus {
        /// Queued for, or resting on, the engine.
        Open = "open",
        /// The API queued a Cancel; the worker closes the order on the engine's event.
        CancelRequested = "cancel_requested",
        /// Every lot traded.
        Filled = "filled",
        /// Closed with lots unfilled (cancel, IOC remainder, self-trade prevention, expiry);
        /// their escrow released.
        Cancelled = "cancelled",
        /// The engine refused the place; everything reserved released.
        Rejected = "rejected",
    }
}

impl TokenOrderStatus {
    /// Whether the order can still trade.
    pub fn is_live(self) -> bool {
        matches!(self, TokenOrderStatus::Open | TokenOrderStatus::CancelRequested)
    }
}

text_enum! {
    /// `dead_letters.reason`: why the settlement worker refused an engine event or a result
    /// message (recorded, acked, never retried).
    DeadLetterReason {
        /// The message is not the expected type at all (not JSON, or not an event message /
        /// result).
        Undecodable = "undecodable",
        /// It decodes but breaks the format (an invalid market symbol).
        Malformed = "malformed",
        /// A fill between one of our orders and an engine order the marketplace does not know
        /// (not in `market_orders`: e.g. an order placed on NATS, not through the API).
        UnknownOrder = "unknown_order",
        /// One of our orders lacks what it needs to settle: the bid's escrow order, its job, the
        /// ask's node.
        NoEscrow = "no_escrow",
        /// The event cannot be applied as it is (a quantity beyond i64, units outside the job,
        /// an amend above the reservation).
        InvalidEvent = "invalid_event",
        /// A ledger rule refused the effect.
        LedgerRefused = "ledger_refused",
        /// A result for an assignment that does not exist.
        UnknownAssignment = "unknown_assignment",
        /// A result from a node (or for a job) that does not hold the assignment.
        ForeignResult = "foreign_result",
    }
}

text_enum! {
    /// `dead_letters.escrow_action`: what the worker did about the escrow a refused event
    /// touched.
    DeadLetterEscrow {
        /// The event took no escrow of ours, or left it as it rightly was (an amend above the
        /// reservation changes nothing): nothing reserved is left behind by it.
        Untouched = "untouched",
        /// The units the event took from a bid were released back to the studio.
        Released = "released",
    }
}

text_enum! {
    /// `assignment_verifications.outcome`.
    VerificationOutcome {
        /// The checks passed; the verified units were paid.
        Passed = "passed",
        /// A check failed (`FailedCheck`): the row is the dispute record.
        Failed = "failed",
    }
}

text_enum! {
    /// `assignment_verifications.failed_check`: which check a failed assignment failed.
    FailedCheck {
        /// The node reported that it could not run the assignment.
        NodeFailed = "node_failed",
        /// The result names an output other than the one the node uploaded (or none exists).
        WrongOutput = "wrong_output",
        /// The output file cannot be read as the executor's format.
        OutputFormat = "output_format",
        /// An output line's sha256 does not match its content.
        ItemHash = "item_hash",
        /// Outputs missing, extra, repeated or out of order against the node's report.
        MissingItems = "missing_items",
        /// The Merkle root does not match the outputs.
        MerkleRoot = "merkle_root",
        /// A sampled item's re-run disagrees with the node's output.
        SampleMismatch = "sample_mismatch",
        /// No result before the assignment's deadline.
        Overdue = "overdue",
        /// A canary (an item with a known answer, mixed in by the market) came back wrong or
        /// not at all.
        Canary = "canary",
    }
}

impl FailedCheck {
    /// A failure the node's own result proves (its output is wrong, not merely missing): the
    /// node is suspended. `NodeFailed` and `Overdue` only cancel its open asks.
    pub fn is_proven_cheat(self) -> bool {
        !matches!(self, FailedCheck::NodeFailed | FailedCheck::Overdue)
    }
}

text_enum! {
    /// `assignment_verifications.remedy`: what became of an assignment's units.
    UnitsRemedy {
        /// The verified units were paid (the rest, reported failed by the node, refunded).
        Paid = "paid",
        /// Put back on the book as a re-bid of the same job from the same reservation.
        Reoffered = "reoffered",
        /// Refunded to the studio.
        Refunded = "refunded",
    }
}

text_enum! {
    /// `assignment_verifications.node_action`: what a failure did to the node.
    NodeAction {
        Nothing = "none",
        /// Its open asks were cancelled (before the re-bid reaches the book).
        AsksCancelled = "asks_cancelled",
        /// Suspended: credentials revoked, open asks cancelled, no new asks or grants.
        Suspended = "suspended",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_unknown_text_is_an_error() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), *s);
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!("cancel_requested".parse::<AskStatus>().unwrap(), AskStatus::CancelRequested);
        for s in TokenOrderStatus::ALL {
            assert_eq!(s.as_str().parse::<TokenOrderStatus>().unwrap(), *s);
        }
        assert_eq!("ioc".parse::<TokenTimeInForce>().unwrap(), TokenTimeInForce::Ioc);
        assert_eq!("sell".parse::<TokenSide>().unwrap(), TokenSide::Sell);
        let e = "done".parse::<JobStatus>().unwrap_err().to_string();
        assert!(e.contains("\"done\"") && e.contains("queued"), "{e}");
    }
}
