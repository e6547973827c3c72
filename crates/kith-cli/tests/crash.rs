//! Durability under `kill -9`: clients send batches and retry whatever was not acknowledged, while
//! the server is killed again and again (flushing often, so kills also land mid-flush). In the end
//! every acknowledged `messageId` is stored exactly once, and nothing sent is missing.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const BATCH: usize = 50;
const BATCHES: usize = 3000;
const CLIENTS: usize = 4;
const KILLS: usize = 6;

fn batch_body(batch: usize) -> String {
    let events: Vec<Value> = (0..BATCH)
        .map(|i| {
            json!({"type": "track", "userId": format!("user-{}", (batch * 7 + i) % 97),
                   "event": "Order Completed", "messageId": format!("crash-{batch}-{i}"),
                   "properties": {"revenue": i as f64 + 0.5, "note": "x".repeat(200)}})
        })
        .collect();
    json!({ "batch": events }).to_string()
}

/// Sends one batch; true only when the server acknowledged every event in it.
fn send(base: &str, write_key: &str, batch: usize) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let Ok(mut response) = agent
        .post(format!("{base}/v1/batch"))
        .header("Authorization", &basic(write_key))
        .header("Content-Type", "application/json")
        .send(batch_body(batch).as_bytes())
    else {
        return false;
    };
    if response.status().as_u16() != 200 {
        return false;
    }
    let Ok(body) = response.body_mut().read_json::<Value>() else {
        return false;
    };
    let handled = body["accepted"].as_u64().unwrap_or(0) + body["duplicates"].as_u64().unwrap_or(0);
    handled == BATCH as u64
}

#[test]
fn acknowledged_events_survive_repeated_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let write_key = create_key(dir.path(), "ingest", Some("web"));
    let read_key = create_key(dir.path(), "read", None);
    let pending: Arc<Mutex<VecDeque<usize>>> = Arc::new(Mutex::new((0..BATCHES).collect()));
    let acked: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
    let flush_often = ["--flush-interval-ms", "50"];

    for round in 0..KILLS {
        let server = KithServer::start_with_keys(
            dir.path(),
            write_key.clone(),
            read_key.clone(),
            &flush_often,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (pending, acked, stop) = (pending.clone(), acked.clone(), stop.clone());
                let (base, key) = (server.base.clone(), write_key.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let Some(batch) = pending.lock().unwrap().pop_front() else {
                            break;
                        };
                        if send(&base, &key, batch) {
                            acked.lock().unwrap().insert(batch);
                        } else {
                            // Not acknowledged: retry later, as SDKs do.
                            pending.lock().unwrap().push_back(batch);
                        }
                    }
                })
            })
            .collect();
        // Kill at a different moment each round.
        std::thread::sleep(Duration::from_millis(150 + 97 * round as u64));
        let still_pending = pending.lock().unwrap().len();
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        assert!(
            still_pending > 0,
            "round {round}: the kill must land while clients are sending"
        );
        for client in clients {
            client.join().unwrap();
        }
    }

    // Restart and let the clients finish everything that was never acknowledged.
    let server = KithServer::start_with_keys(
        dir.path(),
        write_key.clone(),
        read_key.clone(),
        &flush_often,
    );
    let leftover: Vec<usize> = pending.lock().unwrap().drain(..).collect();
    for batch in leftover {
        assert!(
            send(&server.base, &write_key, batch),
            "batch {batch} is accepted after recovery"
        );
        acked.lock().unwrap().insert(batch);
    }
    assert_eq!(acked.lock().unwrap().len(), BATCHES);

    let counts = server.query(
        "SELECT count(*) AS n, count(DISTINCT message_id) AS distinct_ids FROM events WHERE message_id LIKE 'crash-%'",
    );
    let expected = (BATCHES * BATCH) as u64;
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
