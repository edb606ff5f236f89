use gridbook_db::testing::TestDb;
use gridbook_ledger::events;

#[test]
fn processed_events_and_outbox() {
    let db = TestDb::new();
    let c = &mut db.conn();
    assert!(events::record_processed_event(c, "settlement", "e1").unwrap());
    assert!(!events::record_processed_event(c, "settlement", "e1").unwrap());
    assert!(events::record_processed_event(c, "other", "e1").unwrap());
    let a = events::enqueue_outbox(c, "job.settled", &serde_json::json!({"job": 1})).unwrap();
    let b = events::enqueue_outbox(c, "job.settled", &serde_json::json!({"job": 2})).unwrap();
    let msgs = events::fetch_unpublished(c, 10).unwrap();
    assert_eq!(msgs.iter().map(|m| m.id).collect::<Vec<_>>(), vec![a, b]);
    assert_eq!(msgs[1].payload, serde_json::json!({"job": 2}));
    assert_eq!(events::mark_published(c, &[a]).unwrap(), 1);
    assert_eq!(events::mark_published(c, &[a]).unwrap(), 0);
    assert_eq!(events::fetch_unpublished(c, 10).unwrap().len(), 1);
}
