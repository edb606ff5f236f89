//! Identifier newtypes. Transfer and account ids are chosen by the client so that a retry is
//! idempotent; ids the ledger derives itself (escrow holds, expiries, system accounts) are
//! UUIDv5 of a fixed namespace and a readable name, so every retry derives the same id.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace of every id the ledger derives (UUIDv5).
const NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_3c2e_9b7d_4e58_a0c4_0d5e_8f21_b7c3);

fn derive(parts: &[&str]) -> Uuid {
    Uuid::new_v5(&NAMESPACE, parts.join("/").as_bytes())
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random (v7, time-ordered) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            /// A deterministic id derived from a name (UUIDv5 in the ledger's namespace).
            pub fn derived(parts: &[&str]) -> Self {
                Self(derive(parts))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

id_type!(
    /// A ledger account.
    AccountId
);
id_type!(
    /// A transfer; chosen by the client, idempotent.
    TransferId
);

impl AccountId {
    /// The single system account of `code` on `ledger` (protocol fee, token supply, ...).
    pub fn system(ledger: &str, code: &str) -> Self {
        Self::derived(&["system-account", ledger, code])
    }
}
