//! The real JavaScript SDKs from the npm registry, pointed at Kith as their documentation says.
//! In a real browser (Debian's Chromium, driven by playwright-core): Segment's analytics.js
//! (`@segment/analytics-next`, settings loaded from Kith as its CDN) and RudderStack's JavaScript
//! SDK (source configuration from Kith as its control plane, events by XHR and by
//! `navigator.sendBeacon`); the page is served from another origin than Kith's, as a shop's pages
//! are, so CORS is part of what is tested. In Node: `@segment/analytics-node` and
//! `@rudderstack/rudder-sdk-node`. `scripts/setup-js-kit.sh` prepares the kit (tests/js holds its
//! files).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Map, Value, json};

/// The kit `scripts/setup-js-kit.sh` prepared (it runs again here; a complete kit is reused).
fn kit() -> PathBuf {
    run_setup(
        "setup-js-kit.sh",
        "Chromium, which needs root, and the SDKs from the npm registry",
    );
    std::env::var_os("KITH_JS_KIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/js-kit"))
}

/// Runs the kit's `script` with Node; what it printed, as JSON.
fn run_node(script: &str, args: &[&str]) -> Value {
    run_script(
        Command::new("node").arg(kit().join(script)).args(args),
        script,
    )
}

/// Loads the page of `sdk` in Chromium and waits for `posts` answered POSTs to Kith; the driver's
/// report (the page's results, Kith's requests and answers, failed requests, the console).
fn drive(server: &KithServer, sdk: &str, posts: usize) -> Value {
    let posts = posts.to_string();
    let report = run_node("drive.mjs", &[&server.base, &server.write_key, sdk, &posts]);
    assert_eq!(report["results"]["errors"], json!([]), "{report:#}");
    assert_eq!(report["failed"], json!([]), "{report:#}");
    report
}

/// The requests the page made to Kith, as `STATUS METHOD PATH` without the query.
fn requests(report: &Value) -> Vec<String> {
    report["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let text = r.as_str().unwrap();
            text.split('?').next().unwrap().to_string()
        })
        .collect()
}

/// The rows of `sql` once there are `n` of them (the SDKs' last sends may still be on their way
/// when the driver returns).
fn rows_when(server: &KithServer, sql: &str, n: usize) -> Vec<Map<String, Value>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = server.rows(sql);
        if rows.len() >= n || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const COLUMNS: &str = "message_id, type, event, user_id, anonymous_id, email, revenue, currency, \
     library_name, page_url, source, json_get_str(extra, 'channel') AS channel, \
     json_get_str(extra, 'category') AS category";

#[test]
fn analytics_js_loads_its_settings_from_kith_and_delivers_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let report = drive(&server, "segment", 3);
    assert_eq!(
        report["results"]["delivered"],
        json!(["seg-identify", "seg-track", "seg-page"]),
        "{report:#}"
    );
    let settings = format!("200 GET /v1/projects/{}/settings", server.write_key);
    assert_eq!(
        requests(&report),
        vec![
            settings.as_str(),
            "200 POST /v1/i",
            "200 POST /v1/t",
            "200 POST /v1/p"
        ],
        "{report:#}"
    );

    let rows = rows_when(
        &server,
        &format!("SELECT {COLUMNS} FROM events ORDER BY message_id"),
        3,
    );
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let origin = report["origin"].as_str().unwrap();
    let anonymous_id = rows[0]["anonymous_id"].clone();
    assert!(
        anonymous_id.is_string(),
        "analytics.js sends its anonymous id"
    );
    for row in &rows {
        assert_eq!(row["user_id"], "seg-user");
        assert_eq!(
            row["anonymous_id"], anonymous_id,
            "one browser, one anonymous id"
        );
        assert_eq!(row["library_name"], "analytics.js");
        assert_eq!(row["source"], "web");
        let page_url = row["page_url"].as_str().unwrap();
        assert!(
            page_url.starts_with(&format!("{origin}/index.html")),
            "{page_url}"
        );
    }
    let by_id = |id: &str| rows.iter().find(|r| r["message_id"] == id).unwrap();
    assert_eq!(
        (
            &by_id("seg-identify")["type"],
            &by_id("seg-identify")["email"]
        ),
        (&json!("identify"), &json!("eva@example.com"))
    );
    let track = by_id("seg-track");
    assert_eq!(
        (&track["event"], &track["revenue"], &track["currency"]),
        (&json!("Product Viewed"), &json!(10.0), &json!("MXN"))
    );
    let page = by_id("seg-page");
    assert_eq!(
        (&page["type"], &page["event"], &page["category"]),
        (&json!("page"), &json!("Pricing"), &json!("Docs"))
    );
}

/// Checks the three calls one RudderStack page sent as `user`.
fn assert_rudderstack_calls(server: &KithServer, user: &str, origin: &str) {
    let rows = rows_when(
        server,
        &format!("SELECT {COLUMNS} FROM events WHERE user_id = '{user}' ORDER BY type"),
        3,
    );
    let types: Vec<&Value> = rows.iter().map(|r| &r["type"]).collect();
    assert_eq!(types, vec!["identify", "page", "track"], "{rows:#?}");
    for row in &rows {
        assert_eq!(row["library_name"], "RudderLabs JavaScript SDK");
        assert_eq!(row["channel"], "web");
        assert_eq!(row["source"], "web");
        assert!(row["anonymous_id"].is_string());
        let page_url = row["page_url"].as_str().unwrap();
        assert!(
            page_url.starts_with(&format!("{origin}/index.html")),
            "{page_url}"
        );
    }
    // RudderStack sends the identify's traits in context.traits, and every later call carries them.
    let email = format!("{user}@example.com");
    assert!(rows.iter().all(|r| r["email"] == email), "{rows:#?}");
    assert_eq!(
        (&rows[2]["event"], &rows[2]["revenue"], &rows[2]["currency"]),
        (&json!("Checkout Started"), &json!(25.0), &json!("MXN"))
    );
    assert_eq!(
        (&rows[1]["event"], &rows[1]["category"]),
        (&json!("Home"), &json!("Shop"))
    );
}

#[test]
fn the_rudderstack_sdk_loads_its_source_from_kith_and_delivers_by_xhr_and_by_beacon() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());

    let report = drive(&server, "rudderstack", 3);
    // The configuration first; then the three calls, sent concurrently (answered in any order).
    let mut requests_made = requests(&report);
    requests_made[1..].sort();
    assert_eq!(
        requests_made,
        vec![
            "200 GET /sourceConfig/",
            "200 POST /v1/identify",
            "200 POST /v1/page",
            "200 POST /v1/track"
        ],
        "{report:#}"
    );
    let origin = report["origin"].as_str().unwrap().to_string();
    assert_rudderstack_calls(&server, "rs-xhr-user", &origin);

    let report = drive(&server, "rudderstack-beacon", 1);
    let requests = requests(&report);
    assert_eq!(requests[0], "200 GET /sourceConfig/", "{report:#}");
    assert!(
        requests[1..]
            .iter()
            .all(|r| r == "200 POST /beacon/v1/batch")
            && requests.len() > 1,
        "{report:#}"
    );
    assert_rudderstack_calls(
        &server,
        "rs-beacon-user",
        report["origin"].as_str().unwrap(),
    );

    // The traits reached the profile too.
    let (status, profile) = server.get("/v1/profiles/user_id:rs-xhr-user");
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["traits"]["plan"], "pro", "{profile}");
}

#[test]
fn both_node_sdks_deliver_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let sent = run_node("send_node.mjs", &[&server.base, &server.write_key]);
    assert_eq!(sent["errors"], json!([]), "the SDKs reported errors");

    let rows = server.rows(&format!(
        "SELECT {COLUMNS}, previous_id, group_id, timestamp, original_timestamp, json_get_int(properties, 'step') AS step \
         FROM events ORDER BY message_id"
    ));
    assert_eq!(rows.len(), 12, "{rows:#?}");
    // Each SDK's message ids' prefix, its user and the id its alias call retires, the library
    // it names, RudderStack's `channel`, and the values it sent.
    for (prefix, user, previous, library, channel, email, revenue) in [
        (
            "node-",
            "node-user",
            "node-old-id",
            "@segment/analytics-node",
            Value::Null,
            "nico@example.com",
            120.5,
        ),
        (
            "rs-node-",
            "rs-node-user",
            "rs-node-old-id",
            "analytics-node",
            json!("server"),
            "rosa@example.com",
            80.0,
        ),
    ] {
        let row = |call: &str| {
            let id = format!("{prefix}{call}");
            rows.iter()
                .find(|r| r["message_id"] == id)
                .unwrap_or_else(|| panic!("{id} was not stored: {rows:#?}"))
        };
        for call in ["identify", "track", "page", "screen", "group", "alias"] {
            let stored = row(call);
            assert_eq!(stored["type"], call);
            assert_eq!(stored["user_id"], user);
            assert_eq!(stored["library_name"], library);
            assert_eq!(stored["channel"], channel);
            assert_eq!(stored["source"], "web");
        }
        assert_eq!(row("identify")["email"], email);
        let track = row("track");
        assert_eq!(
            (&track["event"], &track["revenue"], &track["currency"]),
            (&json!("Order Completed"), &json!(revenue), &json!("MXN"))
        );
        if prefix == "node-" {
            // Segment's SDK sends the time given as `timestamp`, with `sentAt`: Segment's rule
            // takes it as the device's time and corrects it.
            assert_sdk_time_corrected(track, "2024-03-01T16:00:00Z");
        } else {
            // RudderStack's sends it beside its own `originalTimestamp`: it stands as given.
            assert_eq!(track["timestamp"], "2024-03-01T16:00:00Z");
            assert_ne!(track["original_timestamp"], track["timestamp"]);
        }
        let page = row("page");
        assert_eq!(
            (&page["event"], &page["category"], &page["page_url"]),
            (
                &json!("Pricing"),
                &json!("Docs"),
                &json!("https://tienda.mx/precios")
            )
        );
        assert_eq!(
            (&row("screen")["event"], &row("screen")["step"]),
            (&json!("Payment"), &json!(3))
        );
        assert_eq!(row("group")["group_id"], "acme");
        assert_eq!(row("alias")["previous_id"], previous);
    }
}
