//! gridbook-db against a real PostgreSQL (`GRIDBOOK_DATABASE_URL`, which `cargo xtask test` sets).

mod migrations;

use diesel::prelude::*;
use gridbook_db::status::{AskStatus, AssignmentStatus, ChallengeStatus, ChallengeTiming, JobStatus, NodeStatus};
use gridbook_db::testing::TestDb;

#[derive(QueryableByName)]
struct Def {
    #[diesel(sql_type = diesel::sql_types::Text)]
    def: String,
}

/// The text values a CHECK constraint on `table.column` allows (`column IN ('a', 'b')`).
fn allowed(c: &mut PgConnection, table: &str, column: &str) -> Vec<String> {
    let defs: Vec<Def> = diesel::sql_query(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint \
         WHERE conrelid = $1::regclass AND contype = 'c'",
    )
    .bind::<diesel::sql_types::Text, _>(table)
    .load(c)
    .unwrap();
    let def = defs
        .into_iter()
        .map(|d| d.def)
        .find(|d| d.contains(&format!("({column} = ANY")) || d.contains(&format!("(({column} = ANY")))
        .unwrap_or_else(|| panic!("no CHECK on {table}.{column}"));
    def.split('\'').skip(1).step_by(2).map(str::to_owned).collect()
}

#[test]
fn every_status_enum_spells_exactly_what_its_check_constraint_allows() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let cases: [(&str, &str, Vec<&str>); 8] = [
        ("jobs", "status", JobStatus::ALL.iter().map(|s| s.as_str()).collect()),
        ("job_assignments", "status", AssignmentStatus::ALL.iter().map(|s| s.as_str()).collect()),
        ("nodes", "status", NodeStatus::ALL.iter().map(|s| s.as_str()).collect()),
        ("nodes", "challenge_status", ChallengeStatus::ALL.iter().map(|s| s.as_str()).collect()),
        ("nodes", "challenge_timing", ChallengeTiming::ALL.iter().map(|s| s.as_str()).collect()),
        // The device classes of `executor::challenge::CLASSES` (gridbook-db does not depend on
        // the executor; its unit test holds the same list).
        ("nodes", "challenge_class", vec!["cpu", "gpu"]),
        ("asks", "status", AskStatus::ALL.iter().map(|s| s.as_str()).collect()),
        ("market_orders", "side", vec!["bid", "ask"]),
    ];
    for (table, column, ours) in cases {
        let theirs = allowed(c, table, column);
        assert_eq!(theirs, ours, "{table}.{column}: the migration and the enum disagree");
    }
}

#[test]
fn token_order_enums_spell_exactly_what_their_check_constraints_allow() {
    use gridbook_db::status::{TokenOrderStatus, TokenSide, TokenTimeInForce};
    let db = TestDb::new();
    let c = &mut db.conn();
    let cases: [(&str, &str, Vec<&str>); 3] = [
        ("token_orders", "side", TokenSide::ALL.iter().map(|s| s.as_str()).collect()),
        ("token_orders", "time_in_force", TokenTimeInForce::ALL.iter().map(|s| s.as_str()).collect()),
        ("token_orders", "status", TokenOrderStatus::ALL.iter().map(|s| s.as_str()).collect()),
    ];
    for (table, column, ours) in cases {
        let theirs = allowed(c, table, column);
        assert_eq!(theirs, ours, "{table}.{column}: the migration and the enum disagree");
    }
}
