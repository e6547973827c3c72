//! RudderStack's clients, pointed at Kith: the real `rudder-sdk-python` SDK from PyPI (installed by
//! `scripts/setup-test-env.sh`), and the calls RudderStack's JavaScript and mobile SDKs make
//! beyond the Segment API (beacon batches, the source configuration), sent over HTTP to the real
//! binary on loopback. Its pixels are tested in `pixels.rs`.

mod common;

use common::*;
use serde_json::{Value, json};

#[test]
fn the_rudderstack_python_sdk_delivers_every_call_plain_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let sent = run_python(
        "send_with_sdk.py",
        &["rudderstack", &server.base, &server.write_key],
    );
    assert_eq!(sent["errors"], json!([]), "the SDK reported errors");
    assert_nan_events_refused_alone(&server, "rs");

    let rows = server.rows(
        "SELECT message_id, type, event, user_id, anonymous_id, group_id, previous_id, source, \
         revenue, currency, email, page_url, timestamp, original_timestamp, library_name, \
         json_get_str(extra, 'channel') AS channel, json_get_str(extra, 'category') AS category, \
         json_get_int(properties, 'step') AS step, \
         json_get_str(context, 'traits', 'plan') AS context_plan, \
         json_get_str(traits, 'plan') AS plan \
         FROM events ORDER BY message_id",
    );
    assert_eq!(rows.len(), 14, "{rows:#?}");
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["message_id"] == id)
            .unwrap_or_else(|| panic!("{id} was not stored: {rows:#?}"))
            .clone()
    };
    for suffix in ["", "-gzip"] {
        let identify = row(&format!("rs-identify{suffix}"));
        assert_eq!(identify["type"], "identify");
        assert_eq!(identify["user_id"], "rs-user");
        assert_eq!(
            identify["email"], "ana@example.com",
            "the email column reads RudderStack's context.traits"
        );
        assert_eq!(identify["context_plan"], "pro");
        assert_eq!(
            identify["plan"], "pro",
            "the traits column holds an identify's traits whichever SDK sent them"
        );
        assert_eq!(identify["source"], "web");
        assert_eq!(
            identify["channel"], "server",
            "RudderStack's `channel` is kept"
        );
        assert_eq!(identify["library_name"], "analytics-python");

        let track = row(&format!("rs-track{suffix}"));
        assert_eq!(track["event"], "Order Completed");
        assert_eq!(track["revenue"], 349.5);
        assert_eq!(track["currency"], "MXN");
        assert_sdk_time_corrected(&track, "2024-03-01T16:00:00Z");

        let page = row(&format!("rs-page{suffix}"));
        assert_eq!(
            (&page["type"], &page["event"], &page["category"]),
            (&json!("page"), &json!("Pricing"), &json!("Docs"))
        );
        assert_eq!(page["page_url"], "https://tienda.mx/precios");

        let screen = row(&format!("rs-screen{suffix}"));
        assert_eq!(
            (&screen["type"], &screen["step"]),
            (&json!("screen"), &json!(3))
        );

        let group = row(&format!("rs-group{suffix}"));
        assert_eq!(group["group_id"], "acme");

        let alias = row(&format!("rs-alias{suffix}"));
        assert_eq!(
            (&alias["previous_id"], &alias["user_id"]),
            (&json!("rs-anon-1"), &json!("rs-user"))
        );

        let anonymous = row(&format!("rs-anon{suffix}"));
        assert_eq!(
            (&anonymous["anonymous_id"], &anonymous["user_id"]),
            (&json!("rs-anon-2"), &Value::Null)
        );
    }

    // The traits RudderStack sends in context.traits reach the profile.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let profile = loop {
        let (status, body) = server.get("/v1/profiles/user_id:rs-user");
        if status == 200 && body["traits"]["plan"] == "pro" {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no profile with the SDK's traits: {status} {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(profile["traits"]["email"], "ana@example.com", "{profile}");
}

#[test]
fn beacon_batches_carry_the_write_key_in_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let body = json!({"batch": [
        {"type": "track", "event": "Product Viewed", "anonymousId": "beacon-anon",
         "messageId": "beacon-1", "channel": "web", "properties": {"sku": "A-1"}},
        {"type": "track", "anonymousId": "beacon-anon", "messageId": "beacon-2"}
    ], "sentAt": "2026-12-01T10:00:00.000Z"})
    .to_string();
    // sendBeacon posts a text/plain Blob and cannot set headers.
    let beacon = |query: &str| {
        post(
            &server.url(&format!("/beacon/v1/batch{query}")),
            &[("Content-Type", "text/plain;charset=UTF-8")],
            body.as_bytes(),
        )
    };

    let (status, answer, _) = beacon(&format!("?writeKey={}", server.write_key));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (&answer["accepted"], &answer["rejected"]),
        (&json!(1), &json!(1)),
        "{answer}"
    );
    assert_eq!(answer["errors"][0]["code"], "missing_event", "{answer}");

    let (status, answer, _) = beacon("");
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["code"], "missing_api_key");
    assert!(
        answer["message"].as_str().unwrap().contains("URL's query"),
        "{answer}"
    );
    let (status, answer, _) = beacon("?writeKey=not-a-key");
    assert_eq!((status, &answer["code"]), (401, &json!("invalid_api_key")));
    let (status, answer, _) = beacon(&format!("?writeKey={0}&writeKey={0}", server.write_key));
    assert_eq!(
        (status, &answer["code"]),
        (400, &json!("invalid_parameter"))
    );
    // A key in the URL and another in the body: neither is guessed, nothing is stored.
    let other_body = json!({"writeKey": "kith_ingest_other", "batch": [
        {"type": "track", "event": "Conflicted", "anonymousId": "beacon-anon", "messageId": "beacon-3"}
    ]})
    .to_string();
    let (status, answer, _) = post(
        &server.url(&format!("/beacon/v1/batch?writeKey={}", server.write_key)),
        &[("Content-Type", "text/plain;charset=UTF-8")],
        other_body.as_bytes(),
    );
    assert_eq!(
        (status, &answer["code"]),
        (401, &json!("invalid_api_key")),
        "{answer}"
    );
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("the URL's `writeKey` and the body's name different keys")),
        "{answer}"
    );

    let stored = server
        .rows("SELECT message_id, source, json_get_str(extra, 'channel') AS channel FROM events");
    assert_eq!(
        stored,
        vec![
            json!({"message_id": "beacon-1", "source": "web", "channel": "web"})
                .as_object()
                .unwrap()
                .clone()
        ]
    );
    let rejected = server.rows("SELECT message_id, code FROM rejected_events");
    assert_eq!(
        rejected,
        vec![
            json!({"message_id": "beacon-2", "code": "missing_event"})
                .as_object()
                .unwrap()
                .clone()
        ]
    );
}

#[test]
fn the_source_configuration_is_what_rudderstack_sdks_need_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    // The JavaScript SDK v3: `${configUrl}/sourceConfig/?p=…&writeKey=…`, with Basic auth too.
    let (status, content_type, _, body) = get_raw(
        &server.url(&format!(
            "/sourceConfig/?p=npm&v=3.7.0&build=modern&writeKey={}&lockIntegrationsVersion=false",
            server.write_key
        )),
        &[("Authorization", &basic(&server.write_key))],
    );
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let config = json_of(&body);
    // What the SDKs check before they send anything: an id, a config object, a destinations
    // array, and (the mobile SDKs) that the source is enabled.
    assert_eq!(config["source"]["id"], "web", "{config}");
    assert!(config["source"]["config"].is_object(), "{config}");
    // Nor do they report their errors and metrics to RudderStack's cloud.
    assert_eq!(
        config["source"]["config"]["statsCollection"],
        json!({"errors": {"enabled": false}, "metrics": {"enabled": false}}),
        "{config}"
    );
    assert!(config["source"]["updatedAt"].is_string(), "{config}");
    assert!(config["source"]["workspaceId"].is_string(), "{config}");
    assert_eq!(config["source"]["destinations"], json!([]), "{config}");
    assert_eq!(config["source"]["enabled"], true, "{config}");
    assert_eq!(config["source"]["writeKey"], json!(server.write_key));

    // The mobile SDKs: `${controlPlaneUrl}/sourceConfig?p=android…`, Basic auth only.
    let (status, _, _, body) = get_raw(
        &server.url("/sourceConfig?p=android&v=1.20.0"),
        &[("Authorization", &basic(&server.write_key))],
    );
    assert_eq!(
        (status, &json_of(&body)["source"]["name"]),
        (200, &json!("web"))
    );

    let (status, _, _, body) = get_raw(&server.url("/sourceConfig?writeKey=nope"), &[]);
    assert_eq!(
        (status, &json_of(&body)["code"]),
        (401, &json!("invalid_api_key"))
    );
    let (status, _, _, body) = get_raw(&server.url("/sourceConfig"), &[]);
    assert_eq!(
        (status, &json_of(&body)["code"]),
        (401, &json!("missing_api_key"))
    );

    let (_, _, _, body) = get_raw(&server.url("/openapi.json"), &[]);
    let doc = json_of(&body);
    for path in [
        "/beacon/v1/batch",
        "/pixel/v1/track",
        "/pixel/v1/page",
        "/sourceConfig",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
}
