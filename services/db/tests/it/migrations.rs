use diesel::RunQueryDsl;
use diesel_migrations::MigrationHarness;
use gridbook_db::testing::TestDb;

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

fn objects(c: &mut diesel::PgConnection) -> Vec<Name> {
    diesel::sql_query(
        "SELECT relname::text AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND left(relname::text, 8) <> '__diesel'
         UNION ALL SELECT proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
         ORDER BY 1",
    )
    .load(c)
    .unwrap()
}

/// Every migration's down is tested: up, down (to nothing), up again, and each step's redo.
#[test]
fn migrations_up_down_redo() {
    let db = TestDb::empty();
    let c = &mut db.conn();
    let applied = gridbook_db::run_migrations(c).unwrap();
    assert!(!applied.is_empty());
    let after_up = objects(c);
    assert!(!after_up.is_empty());
    c.revert_all_migrations(gridbook_db::MIGRATIONS)
        .unwrap();
    assert_eq!(objects(c), vec![], "down removes everything up created");
    gridbook_db::run_migrations(c).unwrap();
    assert_eq!(objects(c), after_up);
    // redo, one migration at a time from the newest
    for _ in 0..applied.len() {
        c.revert_last_migration(gridbook_db::MIGRATIONS)
            .unwrap();
    }
    gridbook_db::run_migrations(c).unwrap();
    assert_eq!(objects(c), after_up);
    assert!(
        gridbook_db::run_migrations(c).unwrap().is_empty(),
        "idempotent at start-up"
    );
}
