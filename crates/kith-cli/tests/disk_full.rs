//! A full disk: Kith answers 503 with `Retry-After` instead of acknowledging what it cannot make
//! durable, keeps every event it did acknowledge, and resumes once there is room again.
//! Needs root to mount a small tmpfs (CI runs as root); elsewhere it says so and does nothing.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn a_full_disk_is_a_503_with_retry_after_and_acknowledged_events_are_kept() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount_point = dir.path().join("small");
    std::fs::create_dir_all(&mount_point).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&mount_point)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    let _guard = Tmpfs(mount_point.clone());

    let server = KithServer::start(&mount_point);
    let auth = basic(&server.write_key);
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for batch in 0..400 {
        let events: Vec<_> = (0..20)
            .map(|i| json!({"type": "track", "userId": "u", "event": "Filler", "messageId": format!("fill-{batch}-{i}"),
                            "properties": {"blob": "z".repeat(2000)}}))
            .collect();
        let (status, body, headers) = post(
            &server.url("/v1/batch"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            json!({ "batch": events }).to_string().as_bytes(),
        );
        match status {
            200 => acknowledged.push(batch),
            503 => {
                refusal = Some((body, headers));
                break;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    let (body, headers) = refusal.expect("a 3 MB disk fills up");
    assert_eq!(body["code"], "storage_unavailable");
    assert_eq!(body["type"], "system");
    assert_eq!(headers.get("retry-after").unwrap(), "5");
    assert!(
        body["message"].as_str().unwrap().contains("disk is full"),
        "{body}"
    );
    assert!(!acknowledged.is_empty());

    // Not ready while the disk stays full: a load balancer sends its events elsewhere.
    let mut readiness = agent().get(server.url("/readyz")).call().unwrap();
    let status = readiness.status().as_u16();
    let retry_after = readiness.headers().get("retry-after").cloned();
    let body: serde_json::Value =
        serde_json::from_str(&readiness.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "storage_unavailable");
    assert!(
        body["message"].as_str().unwrap().contains("is full"),
        "{body}"
    );
    assert_eq!(retry_after.unwrap(), "5");

    // Still alive, and everything acknowledged is there.
    let health = agent().get(server.url("/healthz")).call().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let expected = acknowledged.len() * 20;
    let counted = server.query("SELECT count(*) FROM events WHERE message_id LIKE 'fill-%'");
    assert_eq!(counted["rows"], json!([[expected]]));

    // Room again: ingestion resumes without a restart.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mount_point)
        .status()
        .unwrap();
    assert!(grown.success());
    // Ready again before any event has been tried: readiness looks at the disk itself.
    let (status, body) = get(&server.url("/readyz"), &[]);
    assert_eq!(status, 200, "{body}");
    let retry = json!({"batch": [{"type": "track", "userId": "u", "event": "After", "messageId": "after-full"}]});
    let (status, body, _) = post(
        &server.url("/v1/batch"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        retry.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    server.stop();
}
