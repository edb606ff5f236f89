//! Identity clusters: provider accounts that the market has seen share something that marks one
//! operator — requests from the same network (an IPv4 /24 or IPv6 /48, as the API sees the
//! peer), or nodes reporting the same hardware fingerprint — are one cluster. The engine's
//! anti-whale owner of an ask is its cluster ([`cluster_owner`]), and probation caps count the
//! whole cluster's open asks. One more sign-up from the same network or machine is therefore
//! not one more identity.
//!
//! A mark never expires: accounts once linked stay linked (a cluster only grows). Loopback and
//! unspecified addresses are not marks: they say nothing about who is behind them.

use std::net::IpAddr;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Uuid as SqlUuid};
use uuid::Uuid;

use crate::schema::identity_marks;

/// The kinds of mark (`identity_marks.kind`).
pub const NETWORK: &str = "network";
pub const FINGERPRINT: &str = "fingerprint";

/// Most accounts one cluster query walks (a bound on the work, far above any real operator).
pub const MAX_CLUSTER_USERS: i64 = 10_000;

/// The network mark of an address: its /24 (IPv4) or /48 (IPv6), `None` for loopback and
/// unspecified addresses. An IPv4-mapped IPv6 address counts as IPv4.
pub fn network_of(ip: IpAddr) -> Option<String> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    Some(match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    })
}

/// Whether `s` is a hardware fingerprint as agents report it: 64 lowercase hex digits.
pub fn valid_fingerprint(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Records that `user` (acting for `node`) was seen with mark `kind` = `value` (once per user,
/// kind and value).
pub fn record(
    c: &mut PgConnection,
    user: Uuid,
    node: Option<Uuid>,
    kind: &str,
    value: &str,
) -> QueryResult<()> {
    diesel::insert_into(identity_marks::table)
        .values((
            identity_marks::user_id.eq(user),
            identity_marks::node_id.eq(node),
            identity_marks::kind.eq(kind),
            identity_marks::value.eq(value),
        ))
        .on_conflict((identity_marks::user_id, identity_marks::kind, identity_marks::value))
        .do_nothing()
        .execute(c)
        .map(drop)
}

#[derive(QueryableByName)]
struct UserRow {
    #[diesel(sql_type = SqlUuid)]
    user_id: Uuid,
}

#[derive(QueryableByName)]
struct OwnerRow {
    #[diesel(sql_type = BigInt)]
    owner: i64,
}

const CLUSTER_SQL: &str = "WITH RECURSIVE c(user_id) AS (
        SELECT $1::uuid
        UNION
        SELECT m2.user_id FROM c
        JOIN identity_marks m1 ON m1.user_id = c.user_id
        JOIN identity_marks m2 ON m2.kind = m1.kind AND m2.value = m1.value
    )";

/// The accounts of `user`'s cluster (`user` included), sorted, at most [`MAX_CLUSTER_USERS`].
pub fn cluster_users(c: &mut PgConnection, user: Uuid) -> QueryResult<Vec<Uuid>> {
    let rows: Vec<UserRow> = diesel::sql_query(format!(
        "{CLUSTER_SQL} SELECT user_id FROM c ORDER BY user_id LIMIT {MAX_CLUSTER_USERS}"
    ))
    .bind::<SqlUuid, _>(user)
    .load(c)?;
    Ok(rows.into_iter().map(|r| r.user_id).collect())
}

/// The engine's anti-whale owner of `user`'s orders: the smallest engine account id in its
/// cluster (stable while the cluster does not grow; a merge moves a cluster to one owner).
pub fn cluster_owner(c: &mut PgConnection, user: Uuid) -> QueryResult<u64> {
    let row: OwnerRow = diesel::sql_query(format!(
        "{CLUSTER_SQL} SELECT min(u.engine_account) AS owner FROM c JOIN users u ON u.id = c.user_id"
    ))
    .bind::<SqlUuid, _>(user)
    .get_result(c)?;
    Ok(u64::try_from(row.owner).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_slash_24_and_slash_48_and_loopback_is_no_mark() {
        let n = |s: &str| network_of(s.parse().unwrap());
        assert_eq!(n("203.0.113.7").as_deref(), Some("203.0.113.0/24"));
        assert_eq!(n("203.0.113.250"), n("203.0.113.1"));
        assert_ne!(n("203.0.114.1"), n("203.0.113.1"));
        assert_eq!(n("2001:db8:abcd:12::1").as_deref(), Some("2001:db8:abcd::/48"));
        assert_eq!(n("2001:db8:abcd:ffff::9"), n("2001:db8:abcd::1"));
        assert_eq!(n("::ffff:198.51.100.4").as_deref(), Some("198.51.100.0/24"));
        assert_eq!(n("127.0.0.1"), None);
        assert_eq!(n("::1"), None);
        assert_eq!(n("0.0.0.0"), None);
        assert!(valid_fingerprint(&"ab".repeat(32)));
        assert!(!valid_fingerprint(&"AB".repeat(32)));
        assert!(!valid_fingerprint("abc"));
    }
}
