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

/// A stop asked for while the journal replays (SIGTERM from a supervisor restarting it, say)
/// ends the server cleanly there, exit status 0, and loses nothing: the next start replays it
/// all. The signal's default action used to kill it mid-replay.
#[test]
fn a_stop_asked_for_during_the_replay_ends_it_cleanly_and_loses_nothing() {
    const BATCHES: usize = 60;
    const PER_BATCH: usize = 2_500;
    let dir = tempfile::tempdir().unwrap();
    let write_key = create_key(dir.path(), "ingest", Some("web"));
    let read_key = create_key(dir.path(), "read", None);
    // Nothing reaches the tables before the kill: the next start has all of it to replay.
    let never_flush = ["--flush-interval-ms", "600000"];
    let server = KithServer::start_with_keys(
        dir.path(),
        write_key.clone(),
        read_key.clone(),
        &never_flush,
    );
    let auth = basic(&write_key);
    for batch in 0..BATCHES {
        let events: Vec<_> = (0..PER_BATCH)
            .map(|i| json!({"type": "track", "userId": format!("u{}", i % 500), "event": "Replayed",
                            "messageId": format!("replay-{batch}-{i}"), "properties": {"note": "x".repeat(20)}}))
            .collect();
        let (status, body, _) = post(
            &server.url("/v1/batch"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            json!({ "batch": events }).to_string().as_bytes(),
        );
        assert_eq!(status, 200, "{body}");
    }
    server.kill9();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut replaying = std::process::Command::new(kith_bin())
        .args([
            "serve",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            &address,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The address answers `503 starting` while the journal replays.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "never answered while starting"
        );
        let answered = agent().get(format!("http://{address}/readyz")).call();
        match answered {
            Ok(response) if response.status().as_u16() == 503 => break,
            Ok(response) => panic!(
                "ready before a stop could be asked for: {}",
                response.status()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let pid = replaying.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while replaying.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = replaying.kill();
            panic!("the server did not stop within 30 s of SIGTERM during the replay");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = replaying.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{:?}: {said}", output.status);
    assert!(said.contains("stopped while starting"), "{said}");

    let server = KithServer::start_with_keys(dir.path(), write_key, read_key, &never_flush);
    let counts = server.query(
        "SELECT count(*), count(DISTINCT message_id) FROM events WHERE message_id LIKE 'replay-%'",
    );
    let expected = (BATCHES * PER_BATCH) as u64;
    assert_eq!(counts["rows"], json!([[expected, expected]]));
    server.stop();
}
