//! Durability under `kill -9`: clients send batches and retry whatever was not acknowledged, while
//! the server is killed again and again (flushing often, so kills also land mid-flush). In the end
//! every acknowledged `messageId` is stored exactly once, and nothing sent is missing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::retrying_clients::{Progress, Workload, acknowledged_by};
use common::*;
use serde_json::json;

const BATCHES: usize = 3000;
const CLIENTS: usize = 4;
const KILLS: usize = 6;
const WORKLOAD: Workload = Workload {
    prefix: "crash",
    events_per_batch: 50,
    users: 97,
    note_bytes: 200,
    timeout: Duration::from_secs(5),
};

#[test]
fn acknowledged_events_survive_repeated_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let write_key = create_key(dir.path(), "ingest", Some("web"));
    let read_key = create_key(dir.path(), "read", None);
    let progress = Progress::new(BATCHES);
    let flush_often = ["--flush-interval-ms", "50"];

    for round in 0..KILLS {
        let server = KithServer::start_with_keys(
            dir.path(),
            write_key.clone(),
            read_key.clone(),
            &flush_often,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let clients = progress.start_clients(WORKLOAD, CLIENTS, &server.base, &write_key, &stop);
        // Kill at a different moment each round.
        std::thread::sleep(Duration::from_millis(150 + 97 * round as u64));
        let still_pending = progress.pending();
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        assert!(
            still_pending > 0,
            "round {round}: the kill must land while clients are sending"
        );
        acknowledged_by(clients);
    }

    // Restart and let the clients finish everything that was never acknowledged.
    let server = KithServer::start_with_keys(
        dir.path(),
        write_key.clone(),
        read_key.clone(),
        &flush_often,
    );
    let leftover: Vec<usize> = progress.pending.lock().unwrap().drain(..).collect();
    for batch in leftover {
        assert!(
            WORKLOAD.send(&server.base, &write_key, batch),
            "batch {batch} is accepted after recovery"
        );
        progress.acked.lock().unwrap().insert(batch);
    }
    assert_eq!(progress.acked(), BATCHES);

    let counts = server.query(
        "SELECT count(*) AS n, count(DISTINCT message_id) AS distinct_ids FROM events WHERE message_id LIKE 'crash-%'",
    );
    let expected = (BATCHES * WORKLOAD.events_per_batch) as u64;
    assert_eq!(
        counts["rows"],
        json!([[expected, expected]]),
        "every message stored once"
    );
    // The same holds in Delta alone after a clean shutdown flushes the buffer.
    server.stop();
    let (ok, out, err) = kith(&[
        "sql",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--format",
        "csv",
        "SELECT count(*) AS n, count(DISTINCT message_id) AS d FROM events",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("n,d\n{expected},{expected}\n"));
}
