//! Profiles end to end: identity resolution on ingest, the customer 360 API and CLI, the profile
//! tables in SQL, and profiles surviving restarts and crashes. The real binary, real files.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn send(server: &KithServer, items: Value) {
    let (status, body) = post_json(
        &server.url("/v1/batch"),
        &[("Authorization", &basic(&server.write_key))],
        &json!({ "batch": items }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rejected"], 0, "{body}");
}

/// Polls until the profile answers (resolution runs just after the ack).
fn profile(server: &KithServer, lookup: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = server.get(&format!("/v1/profiles/{lookup}"));
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "{lookup}: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn journey() -> Value {
    json!([
        {"type": "page", "anonymousId": "browser-1", "messageId": "m1", "timestamp": "2025-03-01T10:00:00Z",
         "name": "Inicio"},
        {"type": "identify", "userId": "u-100", "anonymousId": "browser-1", "messageId": "m2",
         "timestamp": "2025-03-01T10:05:00Z",
         "traits": {"email": "Ana@Example.com", "phone": "55 1234 5678", "name": "Ana", "plan": "free"}},
        {"type": "track", "anonymousId": "phone-app-7", "event": "Order Completed", "messageId": "m3",
         "timestamp": "2025-03-02T09:00:00Z", "properties": {"revenue": 1500.0, "currency": "MXN"},
         "context": {"traits": {"email": "ana@example.com"},
                     "consent": {"categoryPreferences": {"analytics": true, "marketing": false}}}},
        {"type": "identify", "userId": "u-100", "messageId": "m4", "timestamp": "2025-03-04T00:00:00Z",
         "traits": {"plan": "premium"}},
        {"type": "track", "userId": "u-100", "event": "Order Completed", "messageId": "m5",
         "timestamp": "2025-03-05T09:00:00Z", "properties": {"revenue": 500.0}},
        // A shared kiosk: another user on browser-1 must not join Ana.
        {"type": "identify", "userId": "u-200", "anonymousId": "browser-1", "messageId": "m6",
         "timestamp": "2025-03-06T09:00:00Z", "traits": {"name": "Beto"}}
    ])
}

#[test]
fn a_customer_on_two_devices_becomes_one_profile_visible_through_api_sql_and_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    send(&server, journey());

    // The phone as a Mexican customer types it, URL-encoded.
    let ana = profile(&server, "phone:55%201234%205678");
    let id = ana["profile_id"].as_str().unwrap().to_string();
    for lookup in [
        "email:ANA@example.com".to_string(),
        "user_id:u-100".to_string(),
        "anonymous_id:phone-app-7".to_string(),
        "phone:%2B52%2055%201234%205678".to_string(),
        format!("profile_id:{id}"),
    ] {
        assert_eq!(
            profile(&server, &lookup)["profile_id"],
            id.as_str(),
            "{lookup}"
        );
    }
    let identifiers: Vec<String> = ana["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["type"].as_str().unwrap(),
                i["value"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        identifiers,
        [
            "user_id:u-100",
            "email:ana@example.com",
            "phone:+525512345678",
            "anonymous_id:browser-1",
            "anonymous_id:phone-app-7"
        ]
    );
    // m3 (context.traits, later than m2) wrote the email last.
    assert_eq!(
        ana["traits"],
        json!({"email": "ana@example.com", "name": "Ana", "phone": "55 1234 5678", "plan": "premium"})
    );
    assert_eq!(
        ana["computed_traits"],
        json!({"first_seen": "2025-03-01T10:00:00.000000Z", "last_seen": "2025-03-05T09:00:00.000000Z",
               "event_count": 5, "order_count": 2, "total_revenue": 2000.0, "average_order_value": 1000.0})
    );
    assert_eq!(
        ana["consent"]["preferences"],
        json!({"analytics": true, "marketing": false})
    );
    let plan_history: Vec<&str> = ana["trait_history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["trait"] == "plan")
        .map(|h| h["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(plan_history, ["m2", "m4"]);
    // The kiosk user stays apart, and the refused merge is on record on both sides.
    let beto = profile(&server, "user_id:u-200");
    assert_ne!(beto["profile_id"], ana["profile_id"]);
    assert_eq!(beto["conflicts"][0]["message_id"], "m6");
    assert!(
        beto["conflicts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("user_id"),
        "{beto}"
    );
    assert_eq!(ana["conflicts"][0]["message_id"], "m6");

    // The timeline holds events of both devices, newest first, a page at a time.
    let (status, page) = server.get("/v1/profiles/email:ana@example.com/events?limit=3");
    assert_eq!(status, 200, "{page}");
    let ids = |page: &Value| -> Vec<String> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&page), ["m6", "m5", "m4"]);
    let cursor = page["next_before"].as_str().unwrap();
    let (_, next) = server.get(&format!(
        "/v1/profiles/email:ana@example.com/events?limit=3&before={cursor}"
    ));
    assert_eq!(ids(&next), ["m3", "m2", "m1"]);
    assert_eq!(next["events"][0]["properties"]["revenue"], 1500.0);
    let (_, orders) =
        server.get("/v1/profiles/user_id:u-100/events?type=track&event=Order%20Completed");
    assert_eq!(ids(&orders), ["m5", "m3"]);
    assert_eq!(orders["next_before"], Value::Null);

    // SQL: the profile tables next to events, and events attributed through merges.
    let rows = server.rows(&format!(
        "SELECT profile_id, identifier_count, order_count, total_revenue FROM profiles WHERE profile_id = '{id}'"
    ));
    assert_eq!(rows[0]["identifier_count"], 5);
    assert_eq!(rows[0]["total_revenue"], 2000.0);
    let attributed = server.rows(
        "SELECT coalesce(u.profile_id, a.profile_id) AS profile_id, count(*) AS events
         FROM events e
         LEFT JOIN profile_identities u ON u.id_type = 'user_id' AND u.id_value = e.user_id
         LEFT JOIN profile_identities a ON a.id_type = 'anonymous_id' AND a.id_value = e.anonymous_id
         GROUP BY 1 ORDER BY 2 DESC",
    );
    assert_eq!(attributed[0]["profile_id"], id.as_str());
    assert_eq!(attributed[0]["events"], 5);
    assert_eq!(attributed[1]["events"], 1);

    // The CLI shows the same profile, with or without the server.
    let data_dir = dir.path().to_str().unwrap();
    let (ok, stdout, stderr) = kith(&[
        "profile",
        "show",
        "--data-dir",
        data_dir,
        "email:ana@example.com",
    ]);
    assert!(ok, "{stderr}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["profile_id"], id.as_str());
    assert_eq!(shown["computed_traits"]["order_count"], 2);

    // Profiles survive a crash (journal replay) and a clean restart (profiles.db).
    let (write_key, read_key) = (server.write_key.clone(), server.read_key.clone());
    server.kill9();
    let server = KithServer::start_with_keys(dir.path(), write_key.clone(), read_key.clone(), &[]);
    assert_eq!(profile(&server, "user_id:u-100"), ana);
    server.stop();
    let server = KithServer::start_with_keys(dir.path(), write_key, read_key, &[]);
    assert_eq!(profile(&server, "user_id:u-100"), ana);
    // `kith sql` sees the profile tables too, next to the running server.
    let (ok, stdout, stderr) = kith(&[
        "sql",
        "--data-dir",
        data_dir,
        "--format",
        "json",
        "SELECT count(*) AS n FROM profiles",
    ]);
    assert!(ok, "{stderr}");
    let counted: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(counted["rows"], json!([[2]]));
}

#[test]
fn bad_profile_lookups_get_exact_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    send(
        &server,
        json!([{"type": "identify", "userId": "u1", "messageId": "x"}]),
    );
    profile(&server, "user_id:u1");

    let (status, body) = server.get("/v1/profiles/ana@example.com");
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"message": "expected `type:value` (e.g. `email:ana@example.com`), got `ana@example.com`",
               "code": "invalid_profile_lookup", "type": "invalid_request",
               "link": "/docs/errors#invalid_profile_lookup"})
    );
    let (status, body) = server.get("/v1/profiles/shoe_size:42");
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_profile_lookup"))
    );
    let (status, body) = server.get("/v1/profiles/email:not-an-email");
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_profile_lookup"))
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("is not an email address"),
        "{body}"
    );
    let (status, body) = server.get("/v1/profiles/email:nobody@example.com");
    assert_eq!(
        (status, body),
        (
            404,
            json!({"message": "no profile holds email:nobody@example.com",
                     "code": "profile_not_found", "type": "invalid_request",
                     "link": "/docs/errors#profile_not_found"})
        )
    );
    let (status, body) = server.get("/v1/profiles/user_id:u1/events?limit=0");
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let (status, body) = server.get("/v1/profiles/user_id:u1/events?before=yesterday");
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let (status, body) = server.get("/v1/profiles/user_id:u1/events?colour=red");
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    // A write key cannot read profiles.
    let (status, body) = get(
        &server.url("/v1/profiles/user_id:u1"),
        &[("Authorization", &format!("Bearer {}", server.write_key))],
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("insufficient_scope"))
    );
}
