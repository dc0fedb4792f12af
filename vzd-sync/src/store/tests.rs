//! The store's behaviour, on SQLite and on PostgreSQL (127.0.0.1:5432).

use serde_json::json;

use super::*;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

async fn each_store(check: impl AsyncFn(&dyn Store)) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = open(
        &format!("sqlite://{}", dir.path().join("s.db").display()),
        "",
    )
    .await
    .unwrap();
    check(sqlite.as_ref()).await;
    sqlite.close().await;
    let schema = format!(
        "vzd_store_test_{}_{}",
        std::process::id(),
        rand::random::<u32>()
    );
    let pg = open(PG_URL, &schema).await.unwrap();
    let second = open(PG_URL, &schema).await.err().unwrap();
    assert!(second.contains("another tim-vzd-sync"), "{second}");
    check(pg.as_ref()).await;
    pg.close().await;
    drop_pg_schema(PG_URL, &schema).await.unwrap();
}

#[tokio::test]
async fn changes_stay_pending_until_applied() {
    each_store(async |s: &dyn Store| {
        let k = Kind::Domain;
        let d = "praxis.example.de";
        assert_eq!(
            s.put_entry(k, d, "", &json!({"telematikID": "1-1"}), 100)
                .await
                .unwrap(),
            Some(1)
        );
        assert_eq!(s.next_due().await.unwrap(), Some(100));
        assert!(s.due_entries(99, 10).await.unwrap().is_empty());
        let due = s.due_entries(100, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert!(due[0].pending() && due[0].wanted);
        // A failed attempt waits for its next time.
        s.entry_failed(k, d, 1, "directory unreachable", 200)
            .await
            .unwrap();
        assert!(s.due_entries(150, 10).await.unwrap().is_empty());
        let row = s.entry(k, d).await.unwrap().unwrap();
        assert_eq!(
            (row.attempts, row.last_error.as_deref()),
            (1, Some("directory unreachable"))
        );
        // Progress survives; a change while an attempt is under way stays pending.
        s.set_remote(k, d, &json!({"id": "x"})).await.unwrap();
        assert_eq!(
            s.put_entry(k, d, "", &json!({"telematikID": "1-2"}), 160)
                .await
                .unwrap(),
            Some(2)
        );
        s.entry_applied(k, d, 1, 170).await.unwrap();
        let row = s.entry(k, d).await.unwrap().unwrap();
        assert!(row.pending());
        assert_eq!(
            (row.body["telematikID"].as_str(), row.remote["id"].as_str()),
            (Some("1-2"), Some("x"))
        );
        s.entry_applied(k, d, 2, 180).await.unwrap();
        assert!(!s.entry(k, d).await.unwrap().unwrap().pending());
        assert_eq!(s.next_due().await.unwrap(), None);
        // Kinds and owners keep entries apart.
        s.put_entry(Kind::Service, "svc-1", "1-1", &json!({}), 190)
            .await
            .unwrap();
        assert_eq!(
            s.entries(Kind::Service, Some("1-1")).await.unwrap().len(),
            1
        );
        assert!(
            s.entries(Kind::Service, Some("1-2"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.entries(Kind::Domain, None).await.unwrap().len(), 1);
        // Removal: pending until the directory dropped it, then the row goes.
        assert!(s.remove_entry(k, d, 200).await.unwrap());
        assert!(!s.remove_entry(k, d, 200).await.unwrap(), "already going");
        assert!(!s.remove_entry(k, "unknown.example.de", 200).await.unwrap());
        let due: Vec<_> = s
            .due_entries(200, 10)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == k)
            .collect();
        assert_eq!((due.len(), due[0].wanted), (1, false));
        s.entry_applied(k, d, due[0].revision, 210).await.unwrap();
        assert!(s.entry(k, d).await.unwrap().is_none());
        // Organisations.
        assert_eq!(s.organization("1-1").await.unwrap(), None);
        s.put_organization("1-1", "1.2.276.0.76.4.50", 1)
            .await
            .unwrap();
        s.put_organization("1-1", "1.2.276.0.76.4.51", 2)
            .await
            .unwrap();
        assert_eq!(
            s.organization("1-1").await.unwrap().as_deref(),
            Some("1.2.276.0.76.4.51")
        );
    })
    .await;
}
