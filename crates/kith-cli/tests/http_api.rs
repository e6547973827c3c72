//! The collection and query API, end to end: the real binary on loopback, real files on disk.

mod common;

use common::*;
use serde_json::{Value, json};

fn ingest(server: &KithServer, path: &str, body: &Value) -> (u16, Value) {
    post_json(
        &server.url(path),
        &[("Authorization", &basic(&server.write_key))],
        &body.to_string(),
    )
}

#[test]
fn every_tracking_path_stores_its_call_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let calls = [
        (
            "/v1/identify",
            json!({"userId": "u1", "traits": {"email": "Ana@Example.com", "plan": "pro"}, "messageId": "identify-1"}),
        ),
        (
            "/v1/track",
            json!({"userId": "u1", "event": "Order Completed", "properties": {"revenue": 349.5, "currency": "MXN", "order_id": "o-1"}, "messageId": "track-1", "timestamp": "2024-03-01T10:00:00-06:00"}),
        ),
        (
            "/v1/page",
            json!({"anonymousId": "a1", "name": "Home", "properties": {"url": "https://tienda.mx/", "path": "/"}, "messageId": "page-1"}),
        ),
        (
            "/v1/screen",
            json!({"userId": "u1", "name": "Cart", "messageId": "screen-1"}),
        ),
        (
            "/v1/group",
            json!({"userId": "u1", "groupId": "acme", "traits": {"name": "Acme"}, "messageId": "group-1"}),
        ),
        (
            "/v1/alias",
            json!({"userId": "u1", "previousId": "a1", "messageId": "alias-1"}),
        ),
        (
            "/v1/i",
            json!({"anonymousId": "a2", "traits": {"name": "Bea"}, "messageId": "i-1"}),
        ),
        (
            "/v1/t",
            json!({"anonymousId": "a2", "event": "Viewed", "messageId": "t-1"}),
        ),
        ("/v1/p", json!({"anonymousId": "a2", "messageId": "p-1"})),
        ("/v1/s", json!({"anonymousId": "a2", "messageId": "s-1"})),
        (
            "/v1/g",
            json!({"anonymousId": "a2", "groupId": "g2", "messageId": "g-1"}),
        ),
        (
            "/v1/a",
            json!({"userId": "u2", "previousId": "a2", "messageId": "a-1"}),
        ),
    ];
    for (path, body) in &calls {
        let (status, response) = ingest(&server, path, body);
        assert_eq!(status, 200, "{path}: {response}");
        assert_eq!(response["accepted"], 1, "{path}: {response}");
    }
    let batch = json!({"batch": [{"type": "track", "userId": "u3", "event": "B1", "messageId": "batch-1"}]});
    for (path, id) in [
        ("/v1/batch", "batch-1"),
        ("/v1/b", "b-1"),
        ("/v1/import", "import-1"),
    ] {
        let mut body = batch.clone();
        body["batch"][0]["messageId"] = json!(id);
        let (status, response) = ingest(&server, path, &body);
        assert_eq!(
            (status, response["accepted"].clone()),
            (200, json!(1)),
            "{path}"
        );
    }

    let rows = server.rows(
        "SELECT message_id, type, event, user_id, anonymous_id, group_id, previous_id, source, \
         revenue, currency, order_id, email, page_url, page_path, timestamp, received_at, \
         json_get_str(traits, 'plan') AS plan, properties FROM events ORDER BY message_id",
    );
    let by_id = |id: &str| {
        rows.iter()
            .find(|r| r["message_id"] == id)
            .unwrap_or_else(|| panic!("{id} stored"))
    };
    assert_eq!(rows.len(), 15);
    let track = by_id("track-1");
    assert_eq!(track["type"], "track");
    assert_eq!(track["event"], "Order Completed");
    assert_eq!(track["user_id"], "u1");
    assert_eq!(track["source"], "web");
    assert_eq!(track["revenue"], 349.5);
    assert_eq!(track["currency"], "MXN");
    assert_eq!(track["order_id"], "o-1");
    assert_eq!(
        track["timestamp"], "2024-03-01T16:00:00Z",
        "explicit timestamps are kept, in UTC"
    );
    let properties: Value = serde_json::from_str(track["properties"].as_str().unwrap()).unwrap();
    assert_eq!(
        properties,
        json!({"revenue": 349.5, "currency": "MXN", "order_id": "o-1"})
    );
    let identify = by_id("identify-1");
    assert_eq!(identify["type"], "identify");
    assert_eq!(identify["email"], "Ana@Example.com");
    assert_eq!(identify["plan"], "pro");
    let page = by_id("page-1");
    assert_eq!(
        (page["type"].clone(), page["event"].clone()),
        (json!("page"), json!("Home"))
    );
    assert_eq!(page["page_url"], "https://tienda.mx/");
    assert_eq!(page["page_path"], "/");
    assert_eq!(by_id("screen-1")["event"], "Cart");
    assert_eq!(by_id("group-1")["group_id"], "acme");
    assert_eq!(by_id("alias-1")["previous_id"], "a1");
    for (id, kind) in [
        ("i-1", "identify"),
        ("t-1", "track"),
        ("p-1", "page"),
        ("s-1", "screen"),
        ("g-1", "group"),
        ("a-1", "alias"),
    ] {
        assert_eq!(by_id(id)["type"], kind, "{id}");
    }
    assert!(rows.iter().all(|r| r["received_at"].is_string()));
}

#[test]
fn write_key_in_body_text_plain_gzip_and_cors_work_as_browsers_send_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    // analytics.js: text/plain, writeKey in the body, no Authorization header.
    let body = json!({"writeKey": server.write_key, "anonymousId": "a1", "event": "Clicked", "messageId": "m-plain"});
    let (status, response, _) = post(
        &server.url("/v1/t"),
        &[("Content-Type", "text/plain")],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{response}");
    // A byte order mark before the JSON (Windows tools write one) is read past.
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(
        json!({"writeKey": server.write_key, "anonymousId": "a1", "event": "Marked", "messageId": "m-bom"})
            .to_string()
            .as_bytes(),
    );
    let (status, response, _) = post(
        &server.url("/v1/t"),
        &[("Content-Type", "text/plain")],
        &with_bom,
    );
    assert_eq!(
        (status, response["accepted"].clone()),
        (200, json!(1)),
        "{response}"
    );

    let batch = json!({"batch": [{"type": "track", "anonymousId": "a1", "event": "Zipped", "messageId": "m-gzip"}]});
    let (status, response, _) = post(
        &server.url("/v1/batch"),
        &[
            ("Authorization", &basic(&server.write_key)),
            ("Content-Encoding", "gzip"),
            ("Content-Type", "application/json"),
        ],
        &gzip(batch.to_string().as_bytes()),
    );
    assert_eq!(status, 200, "{response}");

    let (status, response, _) = post(
        &server.url("/v1/batch"),
        &[
            ("Authorization", &basic(&server.write_key)),
            ("Content-Encoding", "gzip"),
        ],
        b"not gzip at all",
    );
    assert_eq!(status, 400);
    assert_eq!(response["code"], "invalid_gzip");
    // Bytes after the gzip data: refused (never half-read), and said so.
    let mut spliced = gzip(batch.to_string().as_bytes());
    spliced.extend_from_slice(b"{\"batch\": []}");
    let (status, response, _) = post(
        &server.url("/v1/batch"),
        &[
            ("Authorization", &basic(&server.write_key)),
            ("Content-Encoding", "gzip"),
        ],
        &spliced,
    );
    assert_eq!(
        (status, response["message"].clone()),
        (
            400,
            json!(
                "`Content-Encoding: gzip` was sent but its gzip data is followed by bytes that are not gzip; send the compressed body alone"
            )
        )
    );

    // `x-gzip` is gzip's old name; any other coding is refused, never read as if it were JSON.
    let old_name = json!({"batch": [{"type": "track", "anonymousId": "a1", "event": "Zipped", "messageId": "m-x-gzip"}]});
    let (status, response, _) = post(
        &server.url("/v1/batch"),
        &[
            ("Authorization", &basic(&server.write_key)),
            ("Content-Encoding", "x-gzip"),
        ],
        &gzip(old_name.to_string().as_bytes()),
    );
    assert_eq!(status, 200, "{response}");
    for coding in ["br", "deflate", "gzip, br"] {
        let (status, response, headers) = post(
            &server.url("/v1/batch"),
            &[
                ("Authorization", &basic(&server.write_key)),
                ("Content-Encoding", coding),
            ],
            batch.to_string().as_bytes(),
        );
        assert_eq!(
            (
                status,
                response["code"].clone(),
                response["message"].clone()
            ),
            (
                415,
                json!("unsupported_encoding"),
                json!(format!(
                    "`Content-Encoding: {coding}` is not a coding Kith reads: send the body as it is, \
                     or gzip-compressed with `Content-Encoding: gzip`"
                ))
            )
        );
        assert_eq!(
            headers.get("accept-encoding").map(|v| v.to_str().unwrap()),
            Some("gzip, identity")
        );
    }

    let preflight = agent()
        .options(server.url("/v1/t"))
        .header("Origin", "https://tienda.mx")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .call()
        .unwrap();
    assert!(preflight.status().is_success());
    let allowed = |name: &str| {
        preflight
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(allowed("access-control-allow-origin").as_deref(), Some("*"));
    // Named, not `*`: the wildcard does not cover `Authorization` in the Fetch standard.
    assert_eq!(
        allowed("access-control-allow-headers").as_deref(),
        Some("authorization,content-type")
    );

    let settings = agent()
        .get(server.url(&format!("/v1/projects/{}/settings", server.write_key)))
        .call()
        .unwrap()
        .into_body()
        .read_json::<Value>()
        .unwrap();
    assert_eq!(
        settings["integrations"]["Segment.io"]["apiKey"],
        server.write_key.as_str()
    );
    assert_eq!(
        settings["integrations"]["Segment.io"]["apiHost"],
        format!("{}/v1", server.base.trim_start_matches("http://"))
    );
    assert_eq!(settings["integrations"]["Segment.io"]["protocol"], "http");
    // Behind a proxy that terminates TLS, the SDK is sent to the address the browser used.
    let (_, proxied) = get(
        &server.url(&format!("/v1/projects/{}/settings", server.write_key)),
        &[
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "collect.tienda.mx"),
        ],
    );
    assert_eq!(
        (
            &proxied["integrations"]["Segment.io"]["protocol"],
            &proxied["integrations"]["Segment.io"]["apiHost"]
        ),
        (&json!("https"), &json!("collect.tienda.mx/v1"))
    );
    let unknown = agent()
        .get(server.url("/v1/projects/nope/settings"))
        .call()
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 401);

    let ids: Vec<String> = server
        .rows("SELECT message_id FROM events ORDER BY message_id")
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["m-bom", "m-gzip", "m-plain", "m-x-gzip"]);
}

#[test]
fn bad_requests_get_exact_errors_and_never_cost_valid_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let auth = basic(&server.write_key);
    let headers = [("Authorization", auth.as_str())];

    let (status, body) = post_json(&server.url("/v1/batch"), &headers, "{\"batch\": [");
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid_json");
    assert_eq!(body["type"], "invalid_request");
    assert_eq!(body["link"], "/docs/errors#invalid_json");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("the body is not valid JSON")
    );

    let (status, body) = post_json(&server.url("/v1/batch"), &headers, "[]");
    assert_eq!(
        (status, body),
        (
            400,
            json!({"code": "invalid_body", "type": "invalid_request", "link": "/docs/errors#invalid_body",
                      "message": "the body must be a JSON object, found an array"})
        )
    );

    let huge = json!({"batch": [{"type": "track", "userId": "u", "event": "x", "properties": {"blob": "x".repeat(600 * 1024)}}]});
    // Refused as too large, with `advice` last.
    let too_large = |(status, body): (u16, Value), advice: &str| {
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("payload_too_large"))
        );
        let message = body["message"].as_str().unwrap();
        assert!(message.ends_with(advice), "{body}");
    };
    too_large(
        post_json(&server.url("/v1/batch"), &headers, &huge.to_string()),
        "send events in more, smaller batches",
    );
    // A few KB of gzip that expand past the limit: what was sent is small, so the answer says
    // the limit is on what it holds.
    let gzip_headers = [headers[0], ("Content-Encoding", "gzip")];
    let (status, body, _) = post(
        &server.url("/v1/batch"),
        &gzip_headers,
        &gzip(huge.to_string().as_bytes()),
    );
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().starts_with(
            "the body, once its gzip is undone, is over 512000 bytes, the most one request may carry"
        ),
        "{body}"
    );
    // A single call holds one event: smaller batches are not the way out.
    too_large(
        post_json(
            &server.url("/v1/track"),
            &headers,
            &huge["batch"][0].to_string(),
        ),
        "a call carries one event, of at most 32 KB: send less in its `properties`, `traits` or \
         `context`",
    );
    // Off the ingest path the advice is the endpoint's own.
    let long_sql = json!({"sql": format!("SELECT 1 -- {}", "x".repeat(600 * 1024))}).to_string();
    let (status, body) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &format!("Bearer {}", server.read_key))],
        &long_sql,
    );
    assert_eq!(
        (status, body["message"].clone()),
        (
            400,
            json!(
                "the body is over 512000 bytes, the most one request may carry; send {\"sql\": \"...\"} within it"
            )
        )
    );

    let many = json!({"batch": vec![json!({"type": "track", "userId": "u", "event": "x"}); 2501]});
    let (status, body) = post_json(&server.url("/v1/batch"), &headers, &many.to_string());
    assert_eq!(
        (status, body),
        (
            400,
            json!({"code": "too_many_events", "type": "invalid_request", "link": "/docs/errors#too_many_events",
                      "message": "the batch holds 2501 events; at most 2500 are allowed per request"})
        )
    );

    let event = json!({"userId": "u", "event": "x"}).to_string();
    let (status, body) = post_json(
        &server.url("/v1/track"),
        &[("Authorization", &basic("kith_ingest_wrong"))],
        &event,
    );
    assert_eq!(
        (status, body["code"].clone(), body["type"].clone()),
        (401, json!("invalid_api_key"), json!("auth"))
    );
    let (status, body) = post_json(&server.url("/v1/track"), &[], &event);
    assert_eq!(
        (status, body["code"].clone()),
        (401, json!("missing_api_key"))
    );
    // A header and a body naming different keys: neither is guessed, and nothing is stored.
    let disagreeing = json!({"writeKey": "kith_ingest_other", "userId": "u", "event": "Disagreed"});
    let (status, body) = post_json(
        &server.url("/v1/track"),
        &[("Authorization", &basic(&server.write_key))],
        &disagreeing.to_string(),
    );
    assert_eq!(
        (status, body["code"].clone()),
        (401, json!("invalid_api_key")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("name different keys")),
        "{body}"
    );
    // The URL's `writeKey` is a place a key is named on every tracking path, not only beacons'.
    for path in ["/v1/track", "/v1/batch", "/v1/import"] {
        let body = if path == "/v1/track" {
            json!({"userId": "u", "event": "Disagreed"})
        } else {
            json!({"batch": [{"type": "track", "userId": "u", "event": "Disagreed"}]})
        };
        let (status, answer) = post_json(
            &server.url(&format!("{path}?writeKey=kith_ingest_other")),
            &[("Authorization", &basic(&server.write_key))],
            &body.to_string(),
        );
        assert_eq!(status, 401, "{path}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|m| m.contains("name different keys")),
            "{path}: {answer}"
        );
    }
    let in_the_url = json!({"userId": "u", "event": "Keyed In The URL", "messageId": "url-key"});
    let (status, answer) = post_json(
        &server.url(&format!("/v1/track?writeKey={}", server.write_key)),
        &[],
        &in_the_url.to_string(),
    );
    assert_eq!(
        (status, answer["accepted"].clone()),
        (200, json!(1)),
        "{answer}"
    );
    // An empty one is none, as in a body, and other parameters are not read at all.
    let beside = json!({"userId": "u", "event": "Keyed In The Header", "messageId": "url-empty"});
    let (status, answer) = post_json(
        &server.url("/v1/track?writeKey=&utm=%FF"),
        &[("Authorization", &basic(&server.write_key))],
        &beside.to_string(),
    );
    assert_eq!(
        (status, answer["accepted"].clone()),
        (200, json!(1)),
        "{answer}"
    );
    let (status, answer) = post_json(
        &server.url("/v1/track?writeKey=a&writeKey=b"),
        &[],
        &beside.to_string(),
    );
    assert_eq!(
        (status, answer["code"].clone()),
        (400, json!("invalid_parameter")),
        "{answer}"
    );
    // A body's `writeKey` that is no text is no key: refused, not passed over for the header's.
    let numbered = json!({"writeKey": 123, "userId": "u", "event": "Disagreed"});
    let (status, answer) = post_json(
        &server.url("/v1/track"),
        &[("Authorization", &basic(&server.write_key))],
        &numbered.to_string(),
    );
    assert_eq!(
        (status, answer["code"].clone()),
        (401, json!("invalid_api_key")),
        "{answer}"
    );
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("`writeKey` is a number")),
        "{answer}"
    );
    let (status, body) = post_json(
        &server.url("/v1/track"),
        &[("Authorization", &basic(&server.read_key))],
        &event,
    );
    assert_eq!(
        (status, body["code"].clone(), body["message"].clone()),
        (
            403,
            json!("insufficient_scope"),
            json!(format!(
                "this call needs an ingest key; the key `{}` is a read key",
                &server.read_key[10..20]
            ))
        )
    );
    // A query takes an admin key too, and says so.
    let (status, body) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &basic(&server.write_key))],
        r#"{"sql": "SELECT 1"}"#,
    );
    assert_eq!(
        (status, body["message"].clone()),
        (
            403,
            json!(format!(
                "this call needs a read or admin key; the key `{}` is an ingest key",
                &server.write_key[12..22]
            ))
        ),
        "{body}"
    );

    // A known path with a method it does not take: our JSON error, and axum's `Allow` header.
    let response = agent()
        .get(server.url("/v1/track"))
        .header("Authorization", basic(&server.write_key))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let allow = response
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(allow.as_deref(), Some("POST"));
    let body: Value =
        serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(
        (
            body["code"].clone(),
            body["type"].clone(),
            body["link"].clone()
        ),
        (
            json!("method_not_allowed"),
            json!("invalid_request"),
            json!("/docs/errors#method_not_allowed")
        )
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("`/v1/track` does not take GET"),
        "{body}"
    );

    // `/v1/NAME` for a NAME that is no tracking call does not exist, whatever the method.
    let (status, body) = get(&server.url("/v1/nope"), &[]);
    assert_eq!(
        (status, body["code"].clone(), body["message"].clone()),
        (
            404,
            json!("not_found"),
            json!(
                "`/v1/nope` is not a tracking call; use identify, track, page, screen, group, \
                 alias, batch or import (or their one-letter forms i, t, p, s, g, a and b); \
                 /openapi.json lists every endpoint"
            )
        )
    );
    // The API's collections have no listing: the answer says where their members are.
    for (path, pointer) in [
        (
            "/v1/models",
            "; a model's status is at GET /v1/models/{clv|rfm|risk|preferences}",
        ),
        (
            "/v1/analytics",
            "; analyses run at POST /v1/analytics/{rfm|cohorts|funnel|paths|preferences|risk|trends}",
        ),
        ("/v1/sql", "; SQL queries go to POST /v1/query"),
    ] {
        let (status, body) = get(&server.url(path), &[]);
        assert_eq!(status, 404, "{body}");
        assert!(
            body["message"].as_str().unwrap().ends_with(pointer),
            "{body}"
        );
    }

    // A batch with good and bad events: the good are stored, the bad explained and kept.
    let mixed = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "Good", "messageId": "good-1"},
        {"type": "track", "event": "No identity", "messageId": "bad-identity"},
        {"type": "track", "userId": "u2", "messageId": "bad-event"},
        {"type": "track", "userId": "u3", "event": "Huge", "messageId": "bad-size", "properties": {"blob": "y".repeat(33 * 1024)}},
        {"type": "identify", "userId": 7, "traits": "not an object", "messageId": "bad-traits"},
        {"type": "track", "userId": "u4", "event": "When?", "timestamp": "31/02/2024", "messageId": "bad-time"},
        {"type": "page", "anonymousId": "a9", "messageId": "good-2"}
    ]});
    let (status, body) = post_json(&server.url("/v1/batch"), &headers, &mixed.to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["accepted"].clone(), body["rejected"].clone()),
        (json!(2), json!(5))
    );
    let codes: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "missing_identity",
            "missing_event",
            "event_too_large",
            "wrong_type",
            "invalid_timestamp"
        ]
    );
    assert_eq!(body["errors"][0]["index"], 1);
    assert_eq!(body["errors"][4]["field"], "timestamp");

    // A single call whose only event is invalid is a 400 with the reason.
    let (status, body) = post_json(
        &server.url("/v1/track"),
        &headers,
        &json!({"userId": "u"}).to_string(),
    );
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid_event");
    assert_eq!(
        body["message"],
        "the event was rejected: a track call needs a non-empty `event` name"
    );
    assert_eq!(body["errors"][0]["code"], "missing_event");

    // Admin imports arrive in the stored shape; what the parser would refuse is refused there
    // too, by event and field, and none of the request is stored.
    let admin_key = create_key(&server.data_dir, "admin", None);
    let stored_shape = |message_id: &str, timestamp_micros: i64| {
        json!({"message_id": message_id, "kind": "track", "event": "Imported", "user_id": "u",
               "anonymous_id": null, "group_id": null, "previous_id": null, "source": "crm",
               "timestamp": timestamp_micros, "original_timestamp": null, "sent_at": null,
               "received_at": 1_714_564_800_000_000i64, "properties": null, "context": null,
               "traits": null, "integrations": null, "extra": null, "typed": {}})
    };
    let year_one_micros = -62_135_596_800_000_000i64;
    let (status, body) = post_json(
        &server.url("/v1/imports"),
        &[("Authorization", &format!("Bearer {admin_key}"))],
        &json!({"events": [stored_shape("imp-ok", 1_714_564_800_000_000), stored_shape("imp-year-one", year_one_micros)]})
            .to_string(),
    );
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("invalid_body")),
        "{body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| m.starts_with(
            "events[1] (message_id `imp-year-one`) cannot be stored: `timestamp` (0001-01-01"
        )),
        "{body}"
    );
    // Sources are held to the names keys and `kith import --source` are.
    for source in ["crm\nfake", "kith\u{200B}", &"s".repeat(5_000)] {
        let mut event = stored_shape("imp-source", 1_714_564_800_000_000);
        event["source"] = json!(source);
        let (status, body) = post_json(
            &server.url("/v1/imports"),
            &[("Authorization", &format!("Bearer {admin_key}"))],
            &json!({"events": [stored_shape("imp-ok", 1_714_564_800_000_000), event]}).to_string(),
        );
        assert_eq!(status, 400, "{source:?}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("events[1] cannot be stored: the source name")),
            "{body}"
        );
    }
    let (status, body) = post_json(
        &server.url("/v1/models/clv/fit"),
        &[("Authorization", &format!("Bearer {admin_key}"))],
        &json!({"horizon_days": 30, "padding": "x".repeat(600 * 1024)}).to_string(),
    );
    assert_eq!(
        (status, body["message"].clone()),
        (
            400,
            json!(
                "the body is over 512000 bytes, the most one request may carry; a clv definition is a small JSON object (docs/models.md)"
            )
        )
    );

    let stored: Vec<String> = server
        .rows("SELECT message_id FROM events ORDER BY message_id")
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect();
    // And the one keyed in its URL; none of the refused ones.
    assert_eq!(stored, ["good-1", "good-2", "url-empty", "url-key"]);
    let rejected = server.rows("SELECT code, field, message_id, source, batch_index, raw FROM rejected_events ORDER BY ingest_seq");
    assert_eq!(rejected.len(), 6);
    assert_eq!(rejected[0]["code"], "missing_identity");
    assert_eq!(rejected[0]["message_id"], "bad-identity");
    assert_eq!(rejected[0]["source"], "web");
    assert_eq!(rejected[0]["batch_index"], 1);
    let raw: Value = serde_json::from_str(rejected[0]["raw"].as_str().unwrap()).unwrap();
    assert_eq!(
        raw["event"], "No identity",
        "the event is kept as it arrived"
    );
    assert_eq!(rejected[5]["code"], "missing_event");

    let (status, body) = post_json(&server.url("/v1/nope"), &headers, "{}");
    assert_eq!((status, body["code"].clone()), (404, json!("not_found")));
}

#[test]
fn a_message_id_is_stored_once_however_often_and_however_late_it_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let body = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "Paid", "messageId": "once"},
        {"type": "track", "userId": "u1", "event": "Paid", "messageId": "once"}
    ]});
    let (_, first) = ingest(&server, "/v1/batch", &body);
    assert_eq!(
        (first["accepted"].clone(), first["duplicates"].clone()),
        (json!(1), json!(1))
    );
    let (_, second) = ingest(&server, "/v1/batch", &body);
    assert_eq!(
        (second["accepted"].clone(), second["duplicates"].clone()),
        (json!(0), json!(2))
    );

    // Restart (the buffer is flushed to Delta on a clean stop), then retry again.
    let (write_key, read_key) = (server.write_key.clone(), server.read_key.clone());
    server.stop();
    let server = KithServer::start_with_keys(dir.path(), write_key, read_key, &[]);
    let (_, third) = ingest(&server, "/v1/batch", &body);
    assert_eq!(
        (third["accepted"].clone(), third["duplicates"].clone()),
        (json!(0), json!(2))
    );
    let count = server.query("SELECT count(*) FROM events WHERE message_id = 'once'");
    assert_eq!(count["rows"], json!([[1]]));
}

#[test]
fn clock_skew_is_corrected_and_received_at_is_the_servers() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let now = chrono::Utc::now();
    // The device clock runs two hours fast.
    let device_now = now + chrono::Duration::hours(2);
    let happened = device_now - chrono::Duration::minutes(10);
    let body = json!({"batch": [{"type": "track", "userId": "u", "event": "Skewed", "messageId": "skew",
        "originalTimestamp": happened.to_rfc3339(), "sentAt": device_now.to_rfc3339(),
        "receivedAt": "1999-01-01T00:00:00Z"}]});
    let (status, _) = ingest(&server, "/v1/batch", &body);
    assert_eq!(status, 200);
    let row =
        &server.rows("SELECT timestamp, received_at, original_timestamp, sent_at FROM events")[0];
    let parse = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let received = parse(&row["received_at"]);
    assert!(
        (received.timestamp() - now.timestamp()).abs() < 30,
        "receivedAt is set by the server"
    );
    let corrected = parse(&row["timestamp"]);
    assert_eq!(
        (received - corrected).num_seconds(),
        600,
        "timestamp = receivedAt - (sentAt - originalTimestamp)"
    );
    assert_eq!(
        parse(&row["original_timestamp"]).timestamp(),
        happened.timestamp()
    );

    // Browser and server SDKs send the call's time as `timestamp`, not `originalTimestamp`:
    // Segment corrects it just the same (analytics.js's one-letter path, text/plain).
    let browser = json!({"writeKey": server.write_key, "anonymousId": "a", "event": "Clicked",
        "messageId": "skew-browser", "timestamp": happened.to_rfc3339(),
        "sentAt": device_now.to_rfc3339()});
    let (status, response, _) = post(
        &server.url("/v1/t"),
        &[("Content-Type", "text/plain")],
        browser.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{response}");
    let row = &server.rows(
        "SELECT timestamp, received_at, original_timestamp FROM events \
         WHERE message_id = 'skew-browser'",
    )[0];
    assert_eq!(
        (parse(&row["received_at"]) - parse(&row["timestamp"])).num_seconds(),
        600,
        "timestamp = receivedAt - (sentAt - timestamp as sent)"
    );
    assert_eq!(
        parse(&row["original_timestamp"]).timestamp(),
        happened.timestamp()
    );
}

#[test]
fn revoking_a_key_with_the_cli_takes_effect_on_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let event = json!({"userId": "u", "event": "x"});
    assert_eq!(ingest(&server, "/v1/track", &event).0, 200);
    let (ok, listed, _) = kith(&["key", "list", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(ok);
    assert!(
        !listed.contains(&server.write_key),
        "secrets are never listed"
    );
    let id = listed
        .lines()
        .find(|l| l.contains(" ingest "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    // For scripts, the same as JSON, never with the secrets either.
    let (ok, json_listed, _) = kith(&[
        "key",
        "list",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(ok);
    assert!(!json_listed.contains(&server.write_key));
    let keys: Vec<Value> = serde_json::from_str(&json_listed).unwrap();
    let ingest_key = keys.iter().find(|k| k["scope"] == "ingest").unwrap();
    assert_eq!(ingest_key["id"], json!(id));
    assert_eq!(ingest_key["source"], "web");
    assert_eq!(ingest_key["revoked_at"], Value::Null);
    assert!(ingest_key["created_at"].as_str().is_some());
    let (ok, _, stderr) = kith(&[
        "key",
        "revoke",
        "--data-dir",
        dir.path().to_str().unwrap(),
        &id,
    ]);
    assert!(ok, "{stderr}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (status, body) = ingest(&server, "/v1/track", &event);
    assert_eq!(
        (status, body["code"].clone()),
        (401, json!("revoked_api_key"))
    );
}

// An answer is counted in the memory the queries running at once share ([query] memory_mb)
// until it has been sent, and it is written out in pieces as the client reads it, so a large
// one is never held twice. One larger than the limit is refused with the reason.
#[test]
fn large_answers_are_streamed_within_the_query_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _config) =
        KithServer::start_with_config(dir.path(), "[query]\nmemory_mb = 16\nmax_rows = 1000000\n");
    let auth = format!("Bearer {}", server.read_key);
    // About 10 MB as Arrow: it fits.
    let fits = json!({"sql": "SELECT value, repeat('x', 60) AS r FROM generate_series(1, 160000)"})
        .to_string();
    let (status, result) = post_json(&server.url("/v1/query"), &[("Authorization", &auth)], &fits);
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["row_count"], 160_000);
    let rows = result["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 160_000);
    assert_eq!(rows[159_999], json!([160_000, "x".repeat(60)]));

    let mut csv = agent()
        .post(server.url("/v1/query"))
        .header("Authorization", &auth)
        .header("Accept", "text/csv")
        .send(fits.as_bytes())
        .unwrap();
    let text = whole_body(&mut csv).unwrap();
    assert_eq!(text.lines().count(), 160_001);
    assert_eq!(
        text.lines().last().unwrap(),
        format!("160000,{}", "x".repeat(60))
    );

    // About 20 MB: more than the whole limit.
    let (status, error) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        &json!({"sql": "SELECT value, repeat('x', 60) AS r FROM generate_series(1, 300000)"})
            .to_string(),
    );
    assert_eq!(
        (status, error["code"].clone()),
        (400, json!("query_memory_exceeded"))
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("the answer is larger than the 16 MiB"),
        "{error}"
    );
    // What was held for the refused answer was given back.
    let (status, _) = post_json(&server.url("/v1/query"), &[("Authorization", &auth)], &fits);
    assert_eq!(status, 200);
}

// An answer still being sent holds its memory: a query that would fit alone but not beside it
// is told to retry (429 with Retry-After), and runs once the first answer has been read. An
// answer its client stops reading is given up after the query time limit, and its memory
// given back.
#[test]
fn a_query_crowded_out_by_an_answer_still_being_sent_is_told_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _config) = KithServer::start_with_config(
        dir.path(),
        "[query]\nmemory_mb = 64\nmax_rows = 10000000\ntimeout_secs = 5\n",
    );
    let auth = format!("Bearer {}", server.read_key);
    // About 43 MB as Arrow and 50 MB as JSON: more than the sockets between hold, so the
    // answer cannot be sent until it is read.
    let large =
        json!({"sql": "SELECT value, repeat('x', 60) AS r FROM generate_series(1, 600000)"})
            .to_string();
    let mut unread = agent()
        .post(server.url("/v1/query"))
        .header("Authorization", &auth)
        .send(large.as_bytes())
        .unwrap();
    assert_eq!(unread.status(), 200);

    let (status, error, headers) = post(
        &server.url("/v1/query"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        large.as_bytes(),
    );
    assert_eq!(
        (status, error["code"].clone()),
        (429, json!("overloaded")),
        "{error}"
    );
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert_eq!(
        error["message"],
        "the queries running now hold the memory this one needs (they share 64 MiB); try again \
         in a moment"
    );

    let text = whole_body(&mut unread).unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["rows"].as_array().unwrap().len(), 600_000);
    let (status, _, _) = post(
        &server.url("/v1/query"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        large.as_bytes(),
    );
    assert_eq!(status, 200);

    // A client that stops reading: after the 5 s limit its answer is given up, the memory is
    // free for the next query, and what the client reads is a broken body, not a short one.
    let mut stalled = agent()
        .post(server.url("/v1/query"))
        .header("Authorization", &auth)
        .send(large.as_bytes())
        .unwrap();
    assert_eq!(stalled.status(), 200);
    std::thread::sleep(std::time::Duration::from_secs(7));
    assert_eq!(
        metric(&server.base, "kith_query_answers_abandoned_total"),
        Some(1.0)
    );
    let (status, _, _) = post(
        &server.url("/v1/query"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        large.as_bytes(),
    );
    assert_eq!(status, 200);
    let read = whole_body(&mut stalled);
    assert!(read.is_err(), "the given-up answer read as whole");
}

/// CPU the server `pid` and its live children (query workers) have used, in seconds (Linux:
/// utime + stime from /proc, in clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let pid = pid.to_string();
    let ticks: u64 = proc_stats()
        .into_iter()
        .filter(|(own, fields)| own.to_string() == pid || fields[1] == pid)
        .map(|(_, fields)| fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap())
        .sum();
    ticks as f64 / 100.0
}

// A query past its time limit is answered at the limit, and its work stops there: it does not
// go on using a core (and one of the query threads) after the client has its answer, and other
// queries are answered meanwhile.
#[test]
fn a_query_past_its_time_limit_stops_working() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _config) =
        KithServer::start_with_config(dir.path(), "[query]\ntimeout_secs = 2\n");
    let auth = format!("Bearer {}", server.read_key);
    // Forty billion pairs: hours of work.
    let endless = json!({"sql": "SELECT sum(a.value * b.value) FROM generate_series(1, 200000) a, \
                                 generate_series(1, 200000) b"})
    .to_string();
    let started = std::time::Instant::now();
    let (status, error) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        &endless,
    );
    assert_eq!(
        (status, error["code"].clone()),
        (400, json!("query_timeout"))
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (status, answer) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        &json!({"sql": "SELECT 1 AS one"}).to_string(),
    );
    assert_eq!((status, answer["rows"].clone()), (200, json!([[1]])));
    assert_goes_idle(&server, "the timeout");
}

/// Gives a stop a moment, then watches the server: idle, it uses next to no CPU.
fn assert_goes_idle(server: &KithServer, after: &str) {
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = cpu_seconds(server.child.id());
    std::thread::sleep(std::time::Duration::from_secs(3));
    let used = cpu_seconds(server.child.id()) - before;
    assert!(
        used < 1.0,
        "the server used {used} s of CPU in 3 s after {after}"
    );
}

#[test]
fn a_query_whose_client_hangs_up_stops_working() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let endless = json!({"sql": "SELECT sum(a.value * b.value) FROM generate_series(1, 200000) a, \
                                 generate_series(1, 200000) b"})
    .to_string();
    let mut client =
        std::net::TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    write!(
        client,
        "POST /v1/query HTTP/1.1\r\nHost: kith\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{endless}",
        server.read_key,
        endless.len()
    )
    .unwrap();
    // The query works for a second, then its client gives up.
    std::thread::sleep(std::time::Duration::from_secs(1));
    drop(client);
    assert_goes_idle(&server, "its client hung up");
}

#[test]
fn long_queries_are_planned_or_refused_and_never_take_the_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _config) =
        KithServer::start_with_config(dir.path(), "[ingest]\nflush_interval_ms = 50\n");
    let batch: Vec<Value> = (0..3)
        .map(|i| json!({"type": "track", "userId": format!("u{i}"), "event": "Viewed"}))
        .collect();
    assert_eq!(
        ingest(&server, "/v1/batch", &json!({ "batch": batch })).0,
        200
    );
    // In a Delta file: the scan is handed the query's filter, which is where a long IN list
    // once became as deep a recursion as it was long.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while events_metric(&server, "kith_lake_flushes_total") < Some(1.0) {
        assert!(std::time::Instant::now() < deadline, "no flush in 30 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ids: Vec<String> = (0..5_000).map(|i| format!("'u{}'", i * 2)).collect();
    let listed = server.query(&format!(
        "SELECT count(*) AS n FROM events WHERE user_id IN ({})",
        ids.join(", ")
    ));
    assert_eq!(listed["rows"], json!([[2]]), "{listed}");
    // A thousand terms added in one chain: planned by a recursion a thousand deep.
    let chain = format!("SELECT {} AS n", vec!["1"; 1_000].join(" + "));
    assert_eq!(server.query(&chain)["rows"], json!([[1000]]));
    let (ok, out, err) = kith(&[
        "sql",
        "--data-dir",
        server.data_dir.to_str().unwrap(),
        "--format",
        "csv",
        &chain,
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "n\n1000");
    // Past the bound, a clear refusal.
    let (status, refused) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &format!("Bearer {}", server.read_key))],
        &json!({"sql": format!("SELECT {}", vec!["1"; 1_500].join(" + "))}).to_string(),
    );
    assert_eq!((status, &refused["code"]), (400, &json!("invalid_sql")));
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("1499 operators"), "{message}");
    assert_eq!(get(&server.url("/healthz"), &[]).0, 200);
}

/// The most resident memory process `pid` has held, in MiB (`VmHWM`).
fn peak_resident_mib(pid: u32) -> u64 {
    process_memory_kib(pid, "VmHWM") >> 10
}

/// A join that builds one batch of 8,192 copies of a 120 KB row: about 1 GB that no limit in
/// the engine counts (each row is under the copied-row bound, the batch is built in one step).
const WIDE_JOIN: &str = "WITH a AS (SELECT 1 AS k, repeat('x', 119999 + \
    length(CAST(value AS VARCHAR))) AS t FROM generate_series(1, 1)), \
    b AS (SELECT 1 AS k FROM generate_series(1, 8192)) \
    SELECT sum(length(a.t)) AS n FROM a JOIN b ON a.k = b.k";

// Each query runs in a worker process whose memory is capped: memory the engine does not count
// as it goes ends the worker, answered as the query's memory, and the server neither grows nor
// stops. Run in the server's own threads (`isolation = "in-process"`), the same query is
// answered, and the server holds the gigabyte meanwhile: what the worker spares it.
#[test]
fn memory_a_query_takes_where_the_engine_does_not_count_ends_its_worker_not_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _config) = KithServer::start_with_config(dir.path(), "[query]\nmemory_mb = 64\n");
    ingest(
        &server,
        "/v1/track",
        &json!({"userId": "u1", "event": "Signed Up", "messageId": "w1"}),
    );
    // A worker that answered waits for the next query: the wide join runs in that one, and its
    // memory is watched there as in a fresh one.
    assert_eq!(server.query("SELECT 1 AS one")["rows"], json!([[1]]));
    let auth = format!("Bearer {}", server.read_key);
    let (status, refused) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        &json!({ "sql": WIDE_JOIN }).to_string(),
    );
    assert_eq!(
        (status, &refused["code"]),
        (400, &json!("query_memory_exceeded")),
        "{refused}"
    );
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "the query needed more memory than its process may have (twice the 64 MiB query \
             memory limit"
        ),
        "{message}"
    );
    assert_eq!(
        metric(&server.base, "kith_query_workers_out_of_memory_total"),
        Some(1.0)
    );
    // The server answers the next query, with the event just sent, and never held the batch.
    assert_eq!(
        server.query("SELECT count(*) AS n FROM events")["rows"],
        json!([[1]])
    );
    assert_eq!(
        metric(&server.base, "kith_query_workers_started_total"),
        Some(2.0),
        "one worker before the join, a fresh one after"
    );
    let server_peak = peak_resident_mib(server.child.id());
    assert!(server_peak < 400, "the server held {server_peak} MiB");

    let in_process = tempfile::tempdir().unwrap();
    let (threads, _config) = KithServer::start_with_config(
        in_process.path(),
        "[query]\nmemory_mb = 64\nisolation = \"in-process\"\n",
    );
    assert_eq!(
        threads.query(WIDE_JOIN)["rows"],
        json!([[8192_u64 * 120_000]])
    );
    let threads_peak = peak_resident_mib(threads.child.id());
    assert!(
        threads_peak > server_peak + 500,
        "in its own threads the server held {threads_peak} MiB, with workers {server_peak}"
    );
}

// Events not yet in Delta reach a query's worker over its pipe; tens of MB of them count in the
// worker's room, not against the query memory limit (an address-space cap once failed plain
// counts this way while events arrived).
#[test]
fn a_worker_is_handed_the_buffered_events_and_counts_them_beside_a_small_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _config) = KithServer::start_with_config(
        dir.path(),
        "[query]\nmemory_mb = 16\n[ingest]\nflush_interval_ms = 600000\nflush_rows = 1000000\n",
    );
    let note = "x".repeat(400);
    for batch in 0..25 {
        let events: Vec<Value> = (0..1000)
            .map(|i| {
                json!({"type": "track", "userId": format!("u{i}"), "event": "Viewed",
                       "messageId": format!("b{batch}-{i}"),
                       "properties": {"revenue": 2, "note": note}})
            })
            .collect();
        let (status, _) = ingest(&server, "/v1/batch", &json!({ "batch": events }));
        assert_eq!(status, 200);
    }
    for _ in 0..3 {
        assert_eq!(
            server.query("SELECT count(*) AS n, sum(revenue) AS r FROM events")["rows"],
            json!([[25_000, 50_000.0]])
        );
    }
    let parquet_files = std::fs::read_dir(server.data_dir.join("tables/events"))
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "parquet"))
        .count();
    assert_eq!(parquet_files, 0, "the events were all still buffered");
}

// Query workers are the running binary itself: when an upgrade replaces the file on disk while
// the server runs, queries still run, in workers of the server's own version.
#[test]
fn queries_still_run_after_the_binary_on_disk_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("kith");
    std::fs::copy(kith_bin(), &binary).unwrap();
    let data_dir = dir.path().join("data");
    let write_key = create_key(&data_dir, "ingest", Some("web"));
    let read_key = create_key(&data_dir, "read", None);
    let server = KithServer::start_binary(&binary, &data_dir, write_key, read_key, &[]);
    assert_eq!(server.query("SELECT 41 + 1 AS n")["rows"], json!([[42]]));
    std::fs::remove_file(&binary).unwrap();
    std::fs::write(&binary, "#!/bin/sh\nexit 1\n").unwrap();
    assert_eq!(server.query("SELECT 41 + 2 AS n")["rows"], json!([[43]]));
    // A refused query ends its worker; the next query starts a fresh one, of the same version.
    let (status, _) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &format!("Bearer {}", server.read_key))],
        &json!({"sql": "SELECT nope"}).to_string(),
    );
    assert_eq!(status, 400);
    assert_eq!(server.query("SELECT 41 + 3 AS n")["rows"], json!([[44]]));
    assert_eq!(
        metric(&server.base, "kith_query_workers_started_total"),
        Some(2.0)
    );
}

// `kith sql` runs queries in its own process: one out of time is answered when its time is up,
// even inside an operator that works for seconds between two yields (a nested-loop join whose
// filter matches nothing), and the command ends then.
#[test]
fn kith_sql_answers_a_runaway_query_when_its_time_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    let (ok, _, err) = kith(&["key", "create", "--data-dir", data, "--scope", "read"]);
    assert!(ok, "{err}");
    let config = dir.path().join("kith.toml");
    std::fs::write(&config, "[query]\ntimeout_secs = 1\n").unwrap();
    let started = std::time::Instant::now();
    let (ok, _, err) = kith(&[
        "--config",
        config.to_str().unwrap(),
        "sql",
        "--data-dir",
        data,
        "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b \
         WHERE a.value > b.value + 100000",
    ]);
    assert!(!ok && err.contains("ran longer than the 1s limit"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// `levels` CTEs, each built from the one before it by `step` (where `{p}` names that one).
fn doubling_ctes(levels: usize, step: &str, last: &str) -> String {
    let mut sql = "WITH t0 AS (SELECT 1 AS x)".to_string();
    for level in 1..=levels {
        let body = step.replace("{p}", &format!("t{}", level - 1));
        sql += &format!(", t{level} AS ({body})");
    }
    sql + &last.replace("{p}", &format!("t{levels}"))
}

/// Twenty short lines whose plan doubles at each level once written out took minutes of
/// planning and gigabytes (neither of which the time and memory limits reach) before a
/// helper's server was killed. They are refused before planning, and the server is free.
#[test]
fn queries_whose_plans_double_at_each_level_are_refused_and_the_server_stays_free() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let auth = format!("Bearer {}", server.read_key);
    let shapes = [
        (
            doubling_ctes(
                20,
                "SELECT x FROM {p} UNION ALL SELECT x FROM {p}",
                " SELECT count(*) FROM {p}",
            ),
            "reads CTEs more than 1000 times",
        ),
        (
            doubling_ctes(
                20,
                "SELECT (SELECT max(x) FROM {p}) + (SELECT min(x) FROM {p}) AS x",
                " SELECT x FROM {p}",
            ),
            "reads CTEs more than 1000 times",
        ),
        (
            doubling_ctes(
                20,
                "SELECT struct(x AS a, x AS b) AS x FROM {p}",
                " SELECT x FROM {p}",
            ),
            "the column `x` holds more than 10000 values side by side",
        ),
    ];
    for (sql, expected) in &shapes {
        let (status, refused) = post_json(
            &server.url("/v1/query"),
            &[("Authorization", &auth)],
            &json!({ "sql": sql }).to_string(),
        );
        assert_eq!((status, &refused["code"]), (400, &json!("invalid_sql")));
        let message = refused["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
    assert_goes_idle(&server, "refusing plans that double");
    // A few levels of the same shape are an ordinary query.
    let eight = doubling_ctes(
        8,
        "SELECT x FROM {p} UNION ALL SELECT x FROM {p}",
        " SELECT count(*) AS n FROM {p}",
    );
    assert_eq!(server.query(&eight)["rows"], json!([[256]]));
    // The command line refuses them as well, with the same message.
    let (ok, _out, err) = kith(&[
        "sql",
        "--data-dir",
        server.data_dir.to_str().unwrap(),
        &shapes[0].0,
    ]);
    assert!(!ok && err.contains(shapes[0].1), "{err}");
}

#[test]
fn queries_answer_json_csv_and_arrow_and_explain_bad_sql() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let body = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 10}, "messageId": "q1"},
        {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 5.5}, "messageId": "q2"}
    ]});
    ingest(&server, "/v1/batch", &body);
    let sql = json!({"sql": "SELECT user_id, count(*) AS orders, sum(revenue) AS total FROM events GROUP BY user_id"}).to_string();
    let auth = format!("Bearer {}", server.read_key);

    let (status, result) = post_json(&server.url("/v1/query"), &[("Authorization", &auth)], &sql);
    assert_eq!(status, 200);
    assert_eq!(result["columns"], json!(["user_id", "orders", "total"]));
    assert_eq!(result["rows"], json!([["u1", 2, 15.5]]));

    let mut csv = agent()
        .post(server.url("/v1/query"))
        .header("Authorization", &auth)
        .header("Accept", "text/csv")
        .send(sql.as_bytes())
        .unwrap();
    assert_eq!(
        csv.body_mut().read_to_string().unwrap(),
        "user_id,orders,total\nu1,2,15.5\n"
    );

    let mut arrow_response = agent()
        .post(server.url("/v1/query"))
        .header("Authorization", &auth)
        .header("Accept", "application/vnd.apache.arrow.stream")
        .send(sql.as_bytes())
        .unwrap();
    assert_eq!(
        arrow_response.headers().get("content-type").unwrap(),
        "application/vnd.apache.arrow.stream"
    );
    let bytes = arrow_response.body_mut().read_to_vec().unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 1);

    let (status, error) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        &json!({"sql": "SELECT nope FROM events"}).to_string(),
    );
    assert_eq!(status, 400);
    assert_eq!(error["code"], "invalid_sql");
    // The columns there are come with it (DataFusion puts them on a line of their own).
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("no column `nope` in the tables the query reads")
            && !message.contains("did you mean")
            && message.contains("(its columns: ingest_seq, message_id, type, event,"),
        "{error}"
    );
    // The same when the planner finds the name wrong twice at once.
    let (status, error) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        &json!({"sql": "SELECT sum(evnt), count(*) FILTER (WHERE evnt > 0) FROM events"})
            .to_string(),
    );
    assert_eq!(status, 400);
    let message = error["message"].as_str().unwrap();
    assert!(
        message
            .starts_with("no column `evnt` in the tables the query reads; did you mean `event`?"),
        "{error}"
    );
    // A time written another way is told the ways the engine reads.
    let (status, error) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        &json!({"sql": "SELECT count(*) FROM events WHERE timestamp > '07/12/2026'"}).to_string(),
    );
    assert_eq!((status, &error["code"]), (400, &json!("invalid_sql")));
    assert!(
        error["message"].as_str().unwrap().starts_with(
            "Error parsing timestamp from '07/12/2026': error parsing date; write times as \
             '2026-12-07', '2026-12-07 13:00:00' or '2026-12-07T13:00:00Z' (ISO 8601), or read \
             other forms with to_timestamp(text, '%d/%m/%Y')"
        ),
        "{error}"
    );
    // JSON text read as a struct, or with another engine's JSON function, is told how Kith's
    // JSON columns are read; following the advice gives the value.
    for sql in [
        "SELECT properties.revenue FROM events",
        "SELECT properties['revenue'] FROM events",
        "SELECT json_extract(properties, '$.revenue') FROM events",
        "SELECT JSON_VALUE(properties, '$.revenue') FROM events",
    ] {
        let (status, error) = post_json(
            &server.url("/v1/query"),
            &[("Authorization", &auth)],
            &json!({ "sql": sql }).to_string(),
        );
        assert_eq!((status, &error["code"]), (400, &json!("invalid_sql")));
        assert!(
            error["message"].as_str().unwrap().ends_with(
                "; the JSON columns (properties, context, traits, integrations, extra) are text, \
                 read with functions: properties->>'revenue' or json_as_text(properties, \
                 'revenue') (any value, as text), json_get_float(properties, 'revenue') \
                 (numbers), json_get_str(context, 'page', 'url') (strings, nested)"
            ),
            "{sql}: {error}"
        );
    }
    let advised = server.rows(
        "SELECT properties->>'revenue' AS a, json_as_text(properties, 'revenue') AS b, \
         json_get_float(properties, 'revenue') AS c FROM (SELECT '{\"revenue\": 12.5}' AS properties)",
    );
    assert_eq!(
        (&advised[0]["a"], &advised[0]["b"], &advised[0]["c"]),
        (&json!("12.5"), &json!("12.5"), &json!(12.5))
    );
    // The body is an object: serde would read `["SELECT 1"]` as one too.
    let (status, error) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        r#"["SELECT 1"]"#,
    );
    assert_eq!(
        (status, &error["code"]),
        (400, &json!("invalid_body")),
        "{error}"
    );
    // An answer depends on `Accept`, and says so to caches.
    let (status, _, answered_headers) = post(
        &server.url("/v1/query"),
        &[("Authorization", &auth), ("Accept", "text/csv")],
        json!({"sql": "SELECT 1 AS one"}).to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let varies: Vec<String> = answered_headers
        .get_all("vary")
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap()
                .split(',')
                .map(|s| s.trim().to_lowercase())
        })
        .collect();
    assert!(varies.contains(&"accept".to_string()), "{varies:?}");
    // A regular expression that does not compile is the query's mistake, not the server's.
    for sql in [
        "SELECT 'x' ~ '['",
        "SELECT regexp_replace('a', '(', 'b')",
        "SELECT regexp_like(event, '(?<x>a)\\k<x>') FROM events",
    ] {
        let (status, error) = post_json(
            &server.url("/v1/query"),
            &[("Authorization", &auth)],
            &json!({ "sql": sql }).to_string(),
        );
        assert_eq!(
            (status, &error["code"]),
            (400, &json!("invalid_sql")),
            "{sql}: {error}"
        );
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with(
                "a regular expression in the query does not compile: regex parse error:"
            ) || message.contains("Regular expression did not compile"),
            "{sql}: {message}"
        );
    }
    let (status, error) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        &json!({"sql": "DROP TABLE events"}).to_string(),
    );
    assert_eq!((status, error["code"].clone()), (400, json!("invalid_sql")));
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("queries only read here"),
        "{error}"
    );
    // A misspelt table is answered with the tables there are, the profile tables among them,
    // and the catalog lists them too.
    let (status, error) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        &json!({"sql": "SELECT * FROM profils"}).to_string(),
    );
    assert_eq!(
        (status, error["message"].clone()),
        (
            400,
            json!(
                "there is no table `profils`; the tables are events, profile_identities, \
                 profiles, rejected_events"
            )
        )
    );
    let (status, result) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        &json!({"sql": "SELECT table_name FROM information_schema.tables \
                         WHERE table_schema = 'public' ORDER BY table_name"})
        .to_string(),
    );
    assert_eq!(
        (status, result["rows"].clone()),
        (
            200,
            json!([
                ["events"],
                ["profile_identities"],
                ["profiles"],
                ["rejected_events"]
            ])
        )
    );
    // A function that would make a value of gigabytes is refused before it runs, and the
    // server answers the next query at once.
    let (status, error) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        &json!({"sql": "SELECT repeat('a', 2000000000)"}).to_string(),
    );
    assert_eq!((status, error["code"].clone()), (400, json!("invalid_sql")));
    assert!(
        error["message"].as_str().unwrap().starts_with(
            "repeat(…) could make a result of 1.9 GiB here, more than the 128.0 MiB one \
                 function call may make"
        ),
        "{error}"
    );
    let (status, error) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &auth)],
        "{\"query\": 1}",
    );
    assert_eq!(
        (status, error["code"].clone()),
        (400, json!("invalid_body"))
    );
    let (status, error) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &basic(&server.write_key))],
        &sql,
    );
    assert_eq!(
        (status, error["code"].clone()),
        (403, json!("insufficient_scope"))
    );

    // `Accept` is read by its weights; one that allows no format we answer in is a 406.
    let (status, result, headers) = post(
        &server.url("/v1/query"),
        &[
            ("Authorization", &auth),
            ("Accept", "text/csv;q=0, application/json;q=0.5, */*;q=0.1"),
        ],
        sql.as_bytes(),
    );
    assert_eq!(
        (status, result["rows"].clone()),
        (200, json!([["u1", 2, 15.5]]))
    );
    assert_eq!(
        headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
    let (status, error, _) = post(
        &server.url("/v1/query"),
        &[("Authorization", &auth), ("Accept", "application/xml")],
        sql.as_bytes(),
    );
    assert_eq!(
        (status, error["code"].clone(), error["message"].clone()),
        (
            406,
            json!("not_acceptable"),
            json!(
                "`Accept: application/xml` allows none of the formats a query answers in: \
                 application/json (the default), text/csv or application/vnd.apache.arrow.stream"
            )
        )
    );

    // The CLI answers the same from the data directory, while the server runs.
    let data_dir = dir.path().to_str().unwrap();
    let (ok, out, err) = kith(&[
        "sql",
        "--data-dir",
        data_dir,
        "--format",
        "csv",
        "SELECT count(*) AS n FROM events",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "n\n2\n");
    let (ok, out, _) = kith(&[
        "sql",
        "--data-dir",
        data_dir,
        "--format",
        "json",
        "SELECT event FROM events LIMIT 1",
    ]);
    assert!(ok);
    let parsed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed["rows"], json!([["Order Completed"]]));
    let (ok, out, _) = kith(&[
        "sql",
        "--data-dir",
        data_dir,
        "SELECT count(*) AS n FROM events",
    ]);
    assert!(ok);
    assert!(out.contains("| n |") && out.contains("| 2 |"), "{out}");
    // `json_get`'s values show as the JSON answer shows them, not as Arrow's union text.
    let (ok, out, err) = kith(&[
        "sql",
        "--data-dir",
        data_dir,
        r#"SELECT json_get(properties, 'nope') AS missing, json_get('{"a": 1.5}', 'a') AS a,
                  json_get('{"a": "x"}', 'a') AS s, json_get('{"a": [1, 2]}', 'a') AS l
           FROM events LIMIT 1"#,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("|         | 1.5 | x | [1, 2] |"), "{out}");
    let (ok, _, err) = kith(&["sql", "--data-dir", data_dir, "SELEC 1"]);
    assert!(!ok);
    assert!(err.contains("SELEC"), "{err}");

    // CSV has no place to say that rows were cut, or to hold a list: the headers and stderr
    // say the first, and a list column is refused before anything is written.
    let mut csv = agent()
        .post(server.url("/v1/query"))
        .header("Authorization", &auth)
        .header("Accept", "text/csv")
        .send(json!({"sql": "SELECT value FROM generate_series(1, 200000)"}).to_string())
        .unwrap();
    assert_eq!(
        (
            csv.headers()
                .get("kith-row-count")
                .unwrap()
                .to_str()
                .unwrap(),
            csv.headers()
                .get("kith-truncated")
                .unwrap()
                .to_str()
                .unwrap()
        ),
        ("100000", "true")
    );
    let text = whole_body(&mut csv).unwrap();
    assert_eq!(text.lines().count(), 100_001);
    let (status, error, _) = post(
        &server.url("/v1/query"),
        &[("Authorization", &auth), ("Accept", "text/csv")],
        json!({"sql": "SELECT [1, 2] AS a"}).to_string().as_bytes(),
    );
    assert_eq!(
        (status, error["code"].clone()),
        (406, json!("not_acceptable"))
    );
    assert_eq!(
        error["message"],
        "the column `a` holds list values (List(Int64)), which CSV cannot hold; cast it to text \
         (`CAST(\"a\" AS VARCHAR)`) or ask for JSON or Arrow"
    );
    // For JSON values of several kinds, structs and maps the advice is another, and following it
    // gives a CSV.
    for (nested, advice, followed, expected) in [
        (
            "SELECT json_get('{\"a\": 1}', 'a') AS j",
            "holds JSON values of several kinds (Union(null, bool, int, float, str, array, object)), \
             which CSV cannot hold; use `json_as_text` (any value as text)",
            "SELECT json_as_text('{\"a\": 1}', 'a') AS j",
            "j\n1\n",
        ),
        (
            "SELECT named_struct('a', 1, 'b', 'x') AS s",
            "(`\"s\"['a']`)",
            "SELECT \"s\"['a'] AS a FROM (SELECT named_struct('a', 1, 'b', 'x') AS s)",
            "a\n1\n",
        ),
        (
            "SELECT map(['k'], [7]) AS m",
            "(`\"m\"['key']`)",
            "SELECT \"m\"['k'] AS k FROM (SELECT map(['k'], [7]) AS m)",
            "k\n7\n",
        ),
    ] {
        let (status, error, _) = post(
            &server.url("/v1/query"),
            &[("Authorization", &auth), ("Accept", "text/csv")],
            json!({ "sql": nested }).to_string().as_bytes(),
        );
        assert_eq!(status, 406, "{nested}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(advice), "{message}");
        let mut answer = agent()
            .post(server.url("/v1/query"))
            .header("Authorization", &auth)
            .header("Accept", "text/csv")
            .send(json!({ "sql": followed }).to_string())
            .unwrap();
        assert_eq!(whole_body(&mut answer).unwrap(), expected, "{followed}");
    }
    let (ok, out, err) = kith(&[
        "sql",
        "--data-dir",
        data_dir,
        "--format",
        "csv",
        "SELECT value FROM generate_series(1, 200000)",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 100_001);
    assert!(
        err.contains("100000 row(s) (truncated: ") && err.contains("pass --max-rows"),
        "{err}"
    );
    // An export of every row: `--max-rows` raises the cap for one command, and nothing is cut.
    let (ok, out, err) = kith(&[
        "sql",
        "--data-dir",
        data_dir,
        "--format",
        "csv",
        "--max-rows",
        "200000",
        "SELECT value FROM generate_series(1, 200000)",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 200_001);
    assert_eq!(out.lines().last(), Some("200000"));
    assert!(err.is_empty(), "{err}");
    let (ok, _, err) = kith(&["sql", "--data-dir", data_dir, "--max-rows", "0", "SELECT 1"]);
    assert!(!ok && err.contains("--max-rows"), "{err}");
    let (ok, out, err) = kith(&[
        "sql",
        "--data-dir",
        data_dir,
        "--format",
        "csv",
        "SELECT [1, 2] AS a",
    ]);
    assert!(!ok && out.is_empty(), "{out}");
    // The way out named is the command's own.
    assert!(
        err.contains("the column `a` holds list values") && err.contains("use `--format json`"),
        "{err}"
    );
}

// Errors the HTTP layer answers before a handler runs (a path that is not UTF-8) have the same
// JSON shape as every other error.
#[test]
fn errors_from_the_http_layer_are_json_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let mut response = agent()
        .get(server.url("/v1/profiles/%FF"))
        .header("Authorization", &format!("Bearer {}", server.read_key))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["code"], "invalid_parameter");
    assert_eq!(body["link"], "/docs/errors#invalid_parameter");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("the request cannot be read: Invalid URL"),
        "{body}"
    );
}

#[test]
fn operations_endpoints_report_health_metrics_and_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    ingest(
        &server,
        "/v1/batch",
        &json!({"batch": [
            {"type": "track", "userId": "u", "event": "x", "messageId": "m1"},
            {"type": "track", "userId": "u", "messageId": "m2"}
        ]}),
    );
    ingest(
        &server,
        "/v1/batch",
        &json!({"batch": [{"type": "track", "userId": "u", "event": "x", "messageId": "m1"}]}),
    );
    server.query("SELECT 1");
    let (status, _) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &format!("Bearer {}", server.read_key))],
        &json!({"sql": "SELECT nope"}).to_string(),
    );
    assert_eq!(status, 400);
    // Collection requests refused before any event is read count no event: they are counted
    // by the code they were answered with.
    let (status, _) = post_json(
        &server.url("/v1/batch"),
        &[("Authorization", &basic("no-such-key"))],
        r#"{"batch": []}"#,
    );
    assert_eq!(status, 401);
    let (status, _) = post_json(
        &server.url("/v1/track"),
        &[("Authorization", &basic(&server.write_key))],
        "{not json",
    );
    assert_eq!(status, 400);
    let nobody = agent()
        .get(server.url("/v1/profiles/user_id:nobody"))
        .header("Authorization", &format!("Bearer {}", server.read_key))
        .call()
        .unwrap();
    assert_eq!(nobody.status().as_u16(), 404);
    let get = |path: &str| -> (u16, String) {
        let mut response = agent().get(server.url(path)).call().unwrap();
        (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap(),
        )
    };
    assert_eq!(get("/healthz").0, 200);
    let (status, ready) = get("/readyz");
    assert_eq!(status, 200);
    assert!(ready.contains("\"status\":\"ready\""));
    let (_, metrics) = get("/metrics");
    for needle in [
        "kith_events_received_total{source=\"web\"} 3",
        "kith_events_accepted_total{source=\"web\"} 1",
        "kith_events_rejected_total{reason=\"missing_event\"} 1",
        "kith_events_deduplicated_total 1",
        "kith_journal_fsyncs_total",
        "kith_query_seconds",
        "kith_queries_total{outcome=\"answered\"} 1",
        "kith_queries_total{outcome=\"invalid_sql\"} 1",
        // The read API by route (the pattern, not the path sent), method and status.
        "kith_api_requests_total{route=\"/v1/query\",method=\"POST\",status=\"200\"} 1",
        "kith_api_requests_total{route=\"/v1/query\",method=\"POST\",status=\"400\"} 1",
        "kith_api_requests_total{route=\"/v1/profiles/{lookup}\",method=\"GET\",status=\"404\"} 1",
        "kith_api_request_seconds_count{route=\"/v1/query\",method=\"POST\"} 2",
        // Timings are histograms with buckets, which Prometheus can sum over servers.
        "# TYPE kith_query_seconds histogram",
        "kith_api_request_seconds_bucket{route=\"/v1/query\",method=\"POST\",le=\"600\"} 2",
        "kith_http_error_responses_total{code=\"invalid_api_key\"} 1",
        "kith_http_error_responses_total{code=\"invalid_json\"} 1",
        "kith_http_error_responses_total{code=\"invalid_sql\"} 1",
        "kith_http_error_responses_total{code=\"profile_not_found\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack `{needle}`:\n{metrics}"
        );
    }
    // Collection is counted by event, not in the API's request counts.
    assert!(!metrics.contains("route=\"/v1/batch\""), "{metrics}");
    // Each metric says what it is, and a counter without labels is there before its first
    // event, so alerts on it work from the start.
    assert!(
        metrics.contains(
            "# HELP kith_events_rejected_total Events refused one by one inside a readable request"
        ) && metrics.contains("\nkith_ingest_backpressure_total 0\n"),
        "{metrics}"
    );
    // So is each refusal reason and error code no request has met yet.
    for needle in [
        "kith_events_rejected_total{reason=\"missing_previous_id\"} 0",
        "kith_http_error_responses_total{code=\"revoked_api_key\"} 0",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack `{needle}`:\n{metrics}"
        );
    }
    let (_, openapi) = get("/openapi.json");
    let doc: Value = serde_json::from_str(&openapi).unwrap();
    for path in [
        "/v1/batch",
        "/v1/{call}",
        "/v1/query",
        "/v1/projects/{write_key}/settings",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs/errors",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
    // How each endpoint is authorised, and the error body every error answers, are described.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(
        (
            &schemes["writeKey"]["scheme"],
            &schemes["bearerKey"]["scheme"]
        ),
        (&json!("basic"), &json!("bearer"))
    );
    assert_eq!(
        doc["components"]["schemas"]["Error"]["required"],
        json!(["message", "code", "type", "link"])
    );
    let query = &doc["paths"]["/v1/query"]["post"];
    // A read key is taken as a bearer token, or as Basic auth's user name.
    assert_eq!(
        query["security"],
        json!([{"bearerKey": []}, {"basicKey": []}])
    );
    // What the server takes is what the document says: the limits, and a body it may omit.
    let duplicates = &doc["paths"]["/v1/profiles/duplicates"]["get"]["parameters"];
    let limit = duplicates
        .as_array()
        .and_then(|params| params.iter().find(|p| p["name"] == "limit"))
        .expect("duplicates documents its limit");
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&json!(1), &json!(1000))
    );
    assert_eq!(
        doc["paths"]["/v1/models/{model}/fit"]["post"]["requestBody"]["required"],
        json!(false)
    );
    for status in ["400", "401", "403"] {
        assert_eq!(
            query["responses"][status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error",
            "/v1/query {status}"
        );
    }
    let track = &doc["paths"]["/v1/{call}"]["post"];
    assert_eq!(track["security"], json!([{"writeKey": []}]));
    // A key in the URL is for beacons and pixels, which cannot send headers.
    assert_eq!(
        doc["paths"]["/v1/pixel/{call}"]["get"]["security"],
        json!([{"writeKey": []}, {"writeKeyQuery": []}])
    );
    for alias in ["/v1/b", "/v1/import"] {
        let described = &doc["paths"][alias]["post"];
        assert_eq!(described["security"], json!([{"writeKey": []}]), "{alias}");
        assert_ne!(
            described["operationId"], doc["paths"]["/v1/batch"]["post"]["operationId"],
            "{alias}"
        );
    }
    assert!(
        query["responses"]["415"].is_object(),
        "/v1/query lacks 415: {query}"
    );
    for status in ["401", "403", "429", "503"] {
        assert!(
            track["responses"][status].is_object(),
            "/v1/{{call}} lacks {status}"
        );
    }
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([{}]));
    let (_, errors) = get("/docs/errors");
    let errors: Value = serde_json::from_str(&errors).unwrap();
    let too_large = errors["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["code"] == "payload_too_large")
        .unwrap();
    // The meaning is docs/errors.md's own.
    assert_eq!(
        too_large["meaning"],
        "the body is over 500 KB after decompression"
    );
    // What a browser asking for `path` is given: a page.
    let page_for_a_browser = |path: &str| -> String {
        let mut response = agent()
            .get(server.url(path))
            .header("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .call()
            .unwrap();
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/html; charset=utf-8"
        );
        // Or JSON, at the same address: caches must tell them apart.
        let varies = response.headers().get("vary").map(|v| v.to_str().unwrap());
        assert_eq!(varies, Some("accept"), "{path}");
        response.body_mut().read_to_string().unwrap()
    };
    // A browser following an error's `link` gets a page whose rows are the anchors.
    let page = page_for_a_browser("/docs/errors");
    assert!(
        page.contains("<tr id=\"invalid_body\">")
            && page.contains("not an object, no <code>batch</code> array"),
        "{page}"
    );

    // Whoever opens the server's address learns what it is and how to start, with this
    // server's address in the commands: JSON for programs, a page for a browser.
    assert!(doc["paths"]["/"].is_object(), "openapi lacks /");
    let (status, welcome) = get("/");
    assert_eq!(status, 200);
    let welcome: Value = serde_json::from_str(&welcome).unwrap();
    assert_eq!(welcome["name"], "Kith");
    assert_eq!(welcome["version"], env!("CARGO_PKG_VERSION"));
    let commands: Vec<&str> = welcome["first_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["command"].as_str().unwrap())
        .collect();
    assert!(
        commands[1].contains(&format!("{}/v1/track", server.base)),
        "{commands:?}"
    );
    // The server was given its own data directory: the commands say to name it, without
    // showing its path to whoever opens the page.
    assert_eq!(
        commands[0],
        "WRITE_KEY=$(kith key create --data-dir DATA_DIR --scope ingest --source web)"
    );
    assert!(
        !welcome
            .to_string()
            .contains(&*server.data_dir.to_string_lossy()),
        "{welcome}"
    );
    let page = page_for_a_browser("/");
    assert!(page.contains("is running</h1>"), "{page}");
    assert!(page.contains("<a href=\"/openapi.json\">"), "{page}");
    assert!(
        page.contains(&format!("{}/v1/query", server.base)),
        "{page}"
    );
}

/// Output that cannot be written is never a panic: a reader that stops early (`| head`) ends
/// the command quietly, and a new key that cannot be printed is revoked, since nobody has it.
#[test]
fn output_that_cannot_be_written_ends_the_command_without_a_panic() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let output = Command::new(kith_bin())
        .args(["key", "create", "--data-dir", data, "--scope", "read"])
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{err}");
    assert!(
        err.contains("was revoked, since it could not be printed") && !err.contains("panicked"),
        "{err}"
    );
    // Into /dev/null (where a closed stdout goes too) the key would be lost: none is made.
    let output = Command::new(kith_bin())
        .args(["key", "create", "--data-dir", data, "--scope", "read"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && err.contains("none was created"),
        "{err}"
    );
    let (ok, listed, _) = kith(&["key", "list", "--data-dir", data]);
    assert!(ok);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed
            .lines()
            .nth(1)
            .is_some_and(|l| l.ends_with("revoked")),
        "{listed}"
    );

    for format in ["table", "csv", "json"] {
        let mut child = Command::new(kith_bin())
            .args(["sql", "--data-dir", data, "--format", format])
            .arg("SELECT * FROM generate_series(1, 100000)")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 16];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The pipe is closed here, with most of the answer unread.
        let output = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && !err.contains("panicked") && !err.contains("error"),
            "{format}: {err}"
        );
    }
}

#[test]
fn key_create_prints_only_the_key_and_config_layers_apply() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (ok, out, err) = kith(&[
        "key",
        "create",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--scope",
        "admin",
    ]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1);
    assert!(out.starts_with("kith_admin_"));
    // Where the key went is said on stderr, which `$(...)` does not capture; a directory the
    // command made is pointed out (a command run from the wrong place makes one).
    let id = &out.trim()["kith_admin_".len()..][..10];
    let shown = data_dir.display();
    assert_eq!(
        err.trim(),
        format!(
            "created admin key {id} in a new data directory, {shown}: it works only on a server \
             started on that directory (`kith serve --data-dir {shown}`); if the server uses \
             another, create the key there with --data-dir"
        )
    );
    let (ok, second, err) = kith(&[
        "key",
        "create",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--scope",
        "read",
    ]);
    assert!(ok, "{err}");
    let second_id = &second.trim()["kith_read_".len()..][..10];
    assert_eq!(
        err.trim(),
        format!("created read key {second_id} in {shown}")
    );
    // The whole key revokes it, as its id does.
    let (ok, _, err) = kith(&[
        "key",
        "revoke",
        "--data-dir",
        data_dir.to_str().unwrap(),
        out.trim(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(err.trim(), format!("revoked key {id} (admin scope)"));
    let (ok, _, err) = kith(&[
        "key",
        "revoke",
        "--data-dir",
        data_dir.to_str().unwrap(),
        id,
    ]);
    assert!(ok, "{err}");
    assert!(
        err.starts_with(&format!("key {id} (admin scope) was already revoked, on ")),
        "{err}"
    );
    // Listing or revoking in a directory that is not there is an error, not a new directory.
    let missing = dir.path().join("data-typo");
    for action in [&["list"][..], &["revoke", id]] {
        let mut args = vec!["key"];
        args.extend_from_slice(action);
        args.extend(["--data-dir", missing.to_str().unwrap()]);
        let (ok, _, err) = kith(&args);
        assert!(
            !ok && err.contains("no data directory at"),
            "{action:?}: {err}"
        );
        assert!(
            !missing.exists(),
            "{action:?} created {}",
            missing.display()
        );
    }
    let (ok, _, err) = kith(&[
        "key",
        "create",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--scope",
        "ingest",
    ]);
    assert!(!ok);
    assert!(err.contains("--source"), "{err}");
    let (ok, _, err) = kith(&[
        "key",
        "create",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--scope",
        "read",
        "--source",
        "web",
    ]);
    assert!(!ok && err.contains("--source is for ingest keys"), "{err}");

    // kith.toml < KITH_* environment < flags.
    let config = dir.path().join("kith.toml");
    std::fs::write(
        &config,
        format!("data_dir = '{}'\n", dir.path().join("from-toml").display()),
    )
    .unwrap();
    let run = |env: Option<&str>, flag: Option<&str>| {
        let mut command = std::process::Command::new(kith_bin());
        command.args([
            "--config",
            config.to_str().unwrap(),
            "key",
            "create",
            "--scope",
            "read",
        ]);
        if let Some(flag) = flag {
            command.args(["--data-dir", flag]);
        }
        command.env_remove("KITH_DATA_DIR");
        if let Some(env) = env {
            command.env("KITH_DATA_DIR", env);
        }
        assert!(command.output().unwrap().status.success());
    };
    let from_env = dir.path().join("from-env");
    let from_flag = dir.path().join("from-flag");
    run(None, None);
    assert!(dir.path().join("from-toml/state.db").exists());
    run(Some(from_env.to_str().unwrap()), None);
    assert!(from_env.join("state.db").exists());
    run(
        Some(from_env.to_str().unwrap()),
        Some(from_flag.to_str().unwrap()),
    );
    assert!(from_flag.join("state.db").exists());

    std::fs::write(&config, "data_dri = 'typo'\n").unwrap();
    let output = std::process::Command::new(kith_bin())
        .args(["--config", config.to_str().unwrap(), "key", "list"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("data_dri"));
}

#[test]
fn when_events_wait_for_delta_beyond_the_limit_ingest_answers_429_and_stores_nothing_of_it() {
    let dir = tempfile::tempdir().unwrap();
    // Two rows may wait; flushes come after 1.5 s (or never early: flush_rows is far above).
    let (server, _) = KithServer::start_with_config(
        dir.path(),
        "[ingest]\nmax_buffered_rows = 2\nflush_rows = 1000\nflush_interval_ms = 1500\n",
    );
    let batch = |ids: &[&str]| {
        let items: Vec<Value> = ids
            .iter()
            .map(|id| json!({"type": "track", "userId": "u1", "event": "Paid", "messageId": id}))
            .collect();
        json!({ "batch": items }).to_string()
    };
    let send = |ids: &[&str]| {
        post(
            &server.url("/v1/batch"),
            &[
                ("Authorization", &basic(&server.write_key)),
                ("Content-Type", "application/json"),
            ],
            batch(ids).as_bytes(),
        )
    };

    let (status, body, _) = send(&["a", "b"]);
    assert_eq!((status, body["accepted"].clone()), (200, json!(2)));
    let (status, body, headers) = send(&["c"]);
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "overloaded");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("2 events are waiting"),
        "{body}"
    );
    assert_eq!(headers.get("retry-after").unwrap(), "1");

    // Once the flush has written the two rows, the retry goes through.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (status, _, _) = loop {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let answer = send(&["c"]);
        if answer.0 != 429 || std::time::Instant::now() > deadline {
            break answer;
        }
    };
    assert_eq!(status, 200);
    let ids = server.query("SELECT message_id FROM events ORDER BY message_id");
    assert_eq!(ids["rows"], json!([["a"], ["b"], ["c"]]));
}

/// A long-running server must not fill the disk with what compaction replaced, nor let the Delta
/// log grow without bound (delta-rs lists all of it on every commit). The server tidies at
/// start: an interrupted write's file goes once old enough, small files are compacted, the log
/// is trimmed to its newest checkpoint, and every event is still there.
#[test]
fn the_server_tidies_the_event_tables_and_keeps_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let (server, config) =
        KithServer::start_with_config(dir.path(), "[ingest]\nflush_interval_ms = 50\n");
    for round in 0..6 {
        let batch: Vec<Value> = (0..5)
            .map(|i| json!({"type": "track", "userId": format!("u{i}"), "event": "Viewed", "messageId": format!("r{round}-{i}")}))
            .collect();
        let (status, _) = ingest(&server, "/v1/batch", &json!({ "batch": batch }));
        assert_eq!(status, 200);
        // One commit per round: wait for this round's flush.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while events_metric(&server, "kith_lake_flushes_total") < Some(round as f64 + 1.0) {
            assert!(std::time::Instant::now() < deadline, "no flush in 30 s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let table = server.data_dir.join("tables/events");
    let log = table.join("_delta_log");
    let parquet = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "parquet")
            })
            .count()
    };
    assert!(parquet(&table) >= 5, "a file per flush");
    assert!(
        std::fs::read_dir(&log).unwrap().count() >= 5,
        "a log entry per flush"
    );

    let abandoned = table.join("part-00000-from-an-interrupted-flush.parquet");
    std::fs::write(&abandoned, b"PAR1 never committed").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&abandoned)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600))
        .unwrap();

    // Restart as if the flushes had been hours ago: their log entries are old enough to go.
    let (data_dir, write_key, read_key) = (
        server.data_dir.clone(),
        server.write_key.clone(),
        server.read_key.clone(),
    );
    server.stop();
    let hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600);
    for entry in std::fs::read_dir(&log).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(hours_ago).unwrap();
        }
    }
    let server = KithServer::start_with_keys(
        &data_dir,
        write_key,
        read_key,
        &["--config", config.to_str().unwrap()],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let metric = |name: &str| events_metric(&server, name);
    while metric("kith_lake_log_entries_deleted_total").is_none_or(|n| n == 0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "no tidying within a minute of start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !abandoned.exists(),
        "the interrupted flush's file is deleted"
    );
    assert_eq!(metric("kith_lake_files_deleted_total"), Some(1.0));
    assert!(metric("kith_lake_files_compacted_total").is_some_and(|n| n >= 5.0));
    assert!(metric("kith_lake_compacted_bytes_total").is_some_and(|n| n > 0.0));
    // Left: the checkpoint of the version tidying started from, that version's entry and the
    // ones compaction and deletion added after it.
    let entries: Vec<String> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let version = |name: &str| name.split('.').next().unwrap().parse::<u64>().ok();
    let checkpoint = entries
        .iter()
        .filter(|name| name.ends_with(".checkpoint.parquet"))
        .filter_map(|name| version(name))
        .max()
        .expect("a checkpoint");
    assert!(
        entries
            .iter()
            .filter(|name| name.ends_with(".json"))
            .all(|name| version(name).is_some_and(|v| v >= checkpoint)),
        "every entry before the checkpoint is deleted: {entries:?}"
    );
    assert!(metric("kith_lake_log_entries_deleted_total").is_some_and(|n| n >= checkpoint as f64));
    let counts = server.query("SELECT count(*), count(DISTINCT message_id) FROM events");
    assert_eq!(counts["rows"], json!([[30, 30]]));
}

/// The value of a per-table metric for `events`, when /metrics has it.
fn events_metric(server: &KithServer, name: &str) -> Option<f64> {
    metric(&server.base, &format!("{name}{{table=\"events\"}}"))
}

#[test]
fn a_wrong_or_busy_listen_address_fails_at_once_with_what_to_change_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();

    let (ok, _, err) = kith(&["serve", "--data-dir", data, "--listen", "nonsense"]);
    assert!(!ok);
    assert!(err.contains("cannot listen on `nonsense`"), "{err}");
    assert!(err.contains("give HOST:PORT, e.g. 127.0.0.1:8417"), "{err}");
    assert!(!data_dir.exists(), "nothing is created for a wrong address");
    // A host that does not resolve gets the same advice (an empty one: no name server asked).
    let (ok, _, err) = kith(&["serve", "--data-dir", data, "--listen", ":19223"]);
    assert!(!ok);
    assert!(
        err.contains("give HOST:PORT with a host this machine can look up"),
        "{err}"
    );
    assert!(!data_dir.exists(), "nothing is created for a wrong address");

    // A `./kith.toml` that is a link to nothing is told, not passed over for the defaults.
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/nonexistent/kith.toml", elsewhere.path().join("kith.toml"))
        .unwrap();
    let mut serve = std::process::Command::new(kith_bin());
    serve
        .args(["serve", "--data-dir", data, "--listen", "127.0.0.1:0"])
        .current_dir(elsewhere.path());
    let output = output_of_one_that_ends(serve);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{err}");
    assert!(
        err.contains("cannot read config file kith.toml (a link to /nonexistent/kith.toml, which does not exist)"),
        "{err}"
    );
    assert!(
        !data_dir.exists(),
        "nothing is created for a missing config"
    );

    // A taken port is reported before the demo world is generated and loaded (which takes
    // minutes), and before the data directory is made.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (ok, _, err) = kith(&["serve", "--demo", "--data-dir", data, "--listen", &address]);
    assert!(!ok);
    assert!(
        err.contains(&format!("cannot listen on `{address}`")),
        "{err}"
    );
    assert!(
        err.contains("another program (perhaps another kith)"),
        "{err}"
    );
    assert!(!data_dir.exists(), "nothing is created for a taken port");
}

#[test]
fn an_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let data = dir.path().join("data");
    // Every kind of import, and none makes a data directory for a file that is not there.
    for kind in ["events", "contacts", "transactions", "tickets", "surveys"] {
        let (ok, _, err) = kith(&[
            "import",
            kind,
            missing.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert!(!ok);
        assert!(err.contains("cannot read"), "{kind}: {err}");
        assert_eq!(err.matches("(os error 2)").count(), 1, "{kind}: {err}");
        assert!(!data.exists(), "{kind} made a data directory");
    }
}

#[test]
fn a_bad_setting_is_traced_to_where_it_was_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    // From the environment: clap names the flag, and Kith adds the variable it came from.
    let output = std::process::Command::new(kith_bin())
        .args(["serve", "--data-dir", data])
        .env("KITH_FLUSH_INTERVAL_MS", "abc")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("invalid value 'abc' for '--flush-interval-ms")
            && err.contains(
                "note: the value came from the environment variable KITH_FLUSH_INTERVAL_MS"
            ),
        "{err}"
    );
    // From the flag itself: no such note.
    let (ok, _, err) = kith(&["serve", "--data-dir", data, "--flush-interval-ms", "abc"]);
    assert!(!ok);
    assert!(!err.contains("note:"), "{err}");
    // Another tool's level word would be a module name to the filter, and log nothing.
    let output = std::process::Command::new(kith_bin())
        .args(["key", "create", "--data-dir", data, "--scope", "read"])
        .env("KITH_LOG", "verbose")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains(
            "warning: KITH_LOG=`verbose` would be read as the name of a module (logging nothing \
             else); logging at the default level. Levels are off, error, warn, info, debug and \
             trace: KITH_LOG=debug?"
        ),
        "{err}"
    );
    // A data directory that is a file is named as one, by every command that opens it.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let file = file.to_str().unwrap();
    for args in [
        vec!["serve", "--data-dir", file, "--listen", "127.0.0.1:0"],
        vec!["key", "create", "--data-dir", file, "--scope", "read"],
    ] {
        let (ok, _, err) = kith(&args);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains(&format!(
                "the data directory {file} is a file, not a directory"
            )),
            "{args:?}: {err}"
        );
    }
    let (ok, _, err) = kith(&["sql", "--data-dir", file, "SELECT 1"]);
    assert!(!ok);
    assert!(
        err.contains(&format!("{file} is a file, not a data directory")),
        "{err}"
    );
    // A directory Kith never wrote to is not read as an empty data directory, and nothing is
    // left in it.
    let elsewhere = dir.path().join("photos");
    std::fs::create_dir(&elsewhere).unwrap();
    let elsewhere = elsewhere.to_str().unwrap();
    for args in [
        vec![
            "sql",
            "--data-dir",
            elsewhere,
            "SELECT count(*) FROM events",
        ],
        vec!["key", "list", "--data-dir", elsewhere],
        vec!["analyze", "rfm", "--data-dir", elsewhere],
    ] {
        let (ok, _, err) = kith(&args);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains(&format!("{elsewhere} is not a Kith data directory")),
            "{args:?}: {err}"
        );
    }
    assert_eq!(std::fs::read_dir(elsewhere).unwrap().count(), 0);
    // Nor one that only holds things of the names Kith uses: a `state.db` of another program,
    // an empty `tables`.
    std::fs::write(format!("{elsewhere}/state.db"), "not a database").unwrap();
    std::fs::create_dir(format!("{elsewhere}/tables")).unwrap();
    for args in [
        vec!["sql", "--data-dir", elsewhere, "SELECT 1"],
        vec!["key", "list", "--data-dir", elsewhere],
    ] {
        let (ok, _, err) = kith(&args);
        assert!(!ok);
        // Named as there but not Kith's, not as missing.
        assert!(
            err.contains(&format!(
                "{elsewhere} holds `state.db`, but not as Kith writes it"
            )),
            "{args:?}: {err}"
        );
    }
    assert_eq!(std::fs::read_dir(elsewhere).unwrap().count(), 2);
    // A data directory without keys yet (a server started on it, none made): the list is the
    // header alone, and stderr says how to make one.
    let keyless = dir.path().join("keyless");
    std::fs::create_dir_all(keyless.join("journal")).unwrap();
    let (ok, out, err) = kith(&["key", "list", "--data-dir", keyless.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        err.contains("no keys yet; make one with `kith key create"),
        "{err}"
    );
    assert!(
        err.starts_with(&format!("keys of {}\n", keyless.display())),
        "which data directory is listed: {err}"
    );
}

// A second server on a data directory in use stops at once, naming the process that holds it,
// and the first goes on serving.
#[test]
fn a_second_server_on_a_data_directory_in_use_names_the_one_holding_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let data = server.data_dir.to_str().unwrap();
    let (ok, _, err) = kith(&["serve", "--data-dir", data, "--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the data directory {data} is in use by another kith process (pid {}); stop it, or \
             give this one another data directory",
            server.child.id()
        )),
        "{err}"
    );
    let (status, _) = ingest(
        &server,
        "/v1/track",
        &json!({"userId": "u", "event": "Still Served"}),
    );
    assert_eq!(status, 200);
}

// A data directory this user may not read is named as such, with what to do, not taken for a
// directory Kith never wrote to. Root reads any directory, so as root the commands run as
// `nobody` (uid 65534), from a copy of the binary `nobody` may run.
#[test]
fn a_data_directory_this_user_may_not_read_is_named_as_such() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let open_to_all = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(dir.path(), open_to_all.clone()).unwrap();
    let data = dir.path().join("data");
    create_key(&data, "read", None);
    let binary = dir.path().join("kith");
    std::fs::copy(kith_bin(), &binary).unwrap();
    std::fs::set_permissions(&binary, open_to_all.clone()).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o000)).unwrap();
    let as_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let shown = data.display().to_string();
    for args in [vec!["key", "list"], vec!["sql", "SELECT 1"]] {
        let mut command = if as_root {
            let mut setpriv = std::process::Command::new("setpriv");
            setpriv.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
            setpriv.arg(&binary);
            setpriv
        } else {
            std::process::Command::new(&binary)
        };
        let output = command
            .args(&args)
            .args(["--data-dir", &shown])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "this user may not read the data directory {shown}; run Kith as the user that \
                 owns the data directory, or give this user read and write access to it"
            )),
            "{args:?}: {err}"
        );
    }
    std::fs::set_permissions(&data, open_to_all).unwrap();
}

/// The live child processes of `pid` (a server's query workers).
fn live_children(pid: u32) -> Vec<u32> {
    proc_stats()
        .into_iter()
        .filter(|(_, fields)| fields[1] == pid.to_string() && fields[0] != "Z")
        .map(|(child, _)| child)
        .collect()
}

/// Whether process `pid` is still running (neither gone nor a zombie waiting to be reaped).
fn is_running(pid: u32) -> bool {
    proc_stats()
        .into_iter()
        .any(|(other, fields)| other == pid && fields[0] != "Z")
}

/// Every process's `/proc/PID/stat` fields after the command name (which is in parentheses and
/// may hold spaces): state, parent, …
fn proc_stats() -> Vec<(u32, Vec<String>)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            Some((pid, rest.split_whitespace().map(str::to_string).collect()))
        })
        .collect()
}

// A worker that answered waits for the next query: one process answers query after query,
// each seeing every event sent before it, as new commits reach the Delta table between them.
// One that refused a query (a bad one here) exits, and the next query starts another.
#[test]
fn a_waiting_worker_answers_query_after_query_with_every_new_event() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _config) =
        KithServer::start_with_config(dir.path(), "[ingest]\nflush_interval_ms = 50\n");
    for n in 1..=12 {
        ingest(
            &server,
            "/v1/track",
            &json!({"userId": "u1", "event": "Viewed", "messageId": format!("m{n}")}),
        );
        if n % 3 == 0 {
            // Flushed to Delta in between: the waiting worker reads the table's new commits.
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        assert_eq!(
            server.query("SELECT count(*) AS n FROM events")["rows"],
            json!([[n]])
        );
    }
    let commits = std::fs::read_dir(server.data_dir.join("tables/events/_delta_log"))
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "json"))
        .count();
    assert!(commits >= 4, "{commits} commits");
    assert_eq!(
        metric(&server.base, "kith_query_workers_started_total"),
        Some(1.0)
    );
    let workers = live_children(server.child.id());
    assert_eq!(workers.len(), 1, "{workers:?}");

    let (status, refused) = post_json(
        &server.url("/v1/query"),
        &[("Authorization", &format!("Bearer {}", server.read_key))],
        &json!({"sql": "SELECT nope FROM events"}).to_string(),
    );
    assert_eq!((status, &refused["code"]), (400, &json!("invalid_sql")));
    assert_eq!(
        server.query("SELECT count(*) AS n FROM events")["rows"],
        json!([[12]])
    );
    assert_eq!(
        metric(&server.base, "kith_query_workers_started_total"),
        Some(2.0)
    );
    assert!(!is_running(workers[0]), "the worker that refused has gone");
}

// A waiting worker killed from outside (an operator's `kill`, the kernel's out-of-memory
// killer) is replaced: the query right after is answered by a fresh worker, even when the
// worker dies a moment too late to be passed over and the query reaches it (an audit saw 18
// of 40 such queries answered as out of memory).
#[test]
fn the_query_after_a_waiting_worker_is_killed_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    for round in 0..10 {
        assert_eq!(server.query("SELECT 1 AS one")["rows"], json!([[1]]));
        let signal = if round % 2 == 0 { "-KILL" } else { "-TERM" };
        for worker in live_children(server.child.id()) {
            let pid = worker.to_string();
            let _ = std::process::Command::new("kill")
                .args([signal, &pid])
                .status();
        }
        assert_eq!(
            server.query(&format!("SELECT {round} AS n"))["rows"],
            json!([[round]]),
            "round {round}"
        );
    }
    assert_eq!(
        metric(&server.base, "kith_query_workers_out_of_memory_total"),
        Some(0.0),
        "no query was blamed"
    );
}

// A worker no query reaches for `[query] worker_idle_secs` exits and gives back what it holds;
// the next query starts a fresh one. Queries that come as the idle time ends, some reaching a
// worker as it leaves, are all answered.
#[test]
fn a_worker_left_idle_exits_and_the_next_query_starts_another() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _config) =
        KithServer::start_with_config(dir.path(), "[query]\nworker_idle_secs = 1\n");
    assert_eq!(server.query("SELECT 1 AS one")["rows"], json!([[1]]));
    let workers = live_children(server.child.id());
    assert_eq!(workers.len(), 1, "{workers:?}");
    let waited = std::time::Instant::now();
    while is_running(workers[0]) && waited.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let gone_after = waited.elapsed();
    assert!(!is_running(workers[0]), "the idle worker still runs");
    assert!(
        gone_after > std::time::Duration::from_millis(700),
        "it left before its idle time: {gone_after:?}"
    );
    // Reaped without waiting for a query: no zombie stays behind.
    let proc = std::path::PathBuf::from(format!("/proc/{}", workers[0]));
    while proc.exists() && waited.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!proc.exists(), "the idle worker is left a zombie");
    assert_eq!(server.query("SELECT 2 AS two")["rows"], json!([[2]]));
    assert_eq!(
        metric(&server.base, "kith_query_workers_idle_exits_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&server.base, "kith_query_workers_started_total"),
        Some(2.0)
    );
    // Around the idle time, a millisecond apart each: every query is answered, none blamed.
    let mut answered = std::time::Instant::now();
    for step in 0..12u64 {
        let pause = std::time::Duration::from_millis(994 + step);
        std::thread::sleep(pause.saturating_sub(answered.elapsed()));
        assert_eq!(
            server.query(&format!("SELECT {step} AS n"))["rows"],
            json!([[step]]),
            "step {step}"
        );
        answered = std::time::Instant::now();
    }
    assert_eq!(
        metric(&server.base, "kith_query_workers_out_of_memory_total"),
        Some(0.0)
    );
}

// A server killed outright leaves no worker behind: a waiting worker's stdin closes, and it
// exits.
#[test]
fn a_server_killed_leaves_no_worker_behind() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    assert_eq!(server.query("SELECT 1 AS one")["rows"], json!([[1]]));
    let workers = live_children(server.child.id());
    assert_eq!(workers.len(), 1, "{workers:?}");
    server.kill9();
    let killed = std::time::Instant::now();
    while is_running(workers[0]) && killed.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!is_running(workers[0]), "the worker outlived its server");
}

// A data directory made beforehand with the shell's umask (0755) is left as it is, but what
// Kith writes in it is this user's alone, and the server says the directory is open. Before,
// `profiles.db` (emails, phones) and the tables were readable by every user (0644).
#[test]
fn what_kith_writes_in_a_data_directory_made_beforehand_is_its_users_alone() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("made-by-hand");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let write_key = create_key(&data, "ingest", Some("web"));
    let mut child = std::process::Command::new(kith_bin())
        .args([
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("KITH_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut before_listening = Vec::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("kith serve printed its address")
            .unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        before_listening.push(line);
    };
    std::thread::spawn(move || lines.for_each(drop));
    let told = before_listening.join("\n");
    assert!(
        told.contains("lets other users of this machine in (mode 755)")
            && told.contains(&format!("chmod 700 {}", data.display())),
        "{told}"
    );
    let (status, body) = post_json(
        &format!("http://{addr}/v1/track"),
        &[("Authorization", &basic(&write_key))],
        r#"{"userId": "u-1", "event": "Signed Up", "traits": {"email": "ana@example.com"}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let pid = child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    child.wait().unwrap();

    let mut open = Vec::new();
    let mut files = 0;
    let mut pending = vec![data.clone()];
    while let Some(path) = pending.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                open.push(format!("{} {mode:o}", entry.path().display()));
            }
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                files += 1;
            }
        }
    }
    assert!(files >= 5, "the server wrote its files ({files})");
    assert_eq!(open, Vec::<String>::new());
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "the directory itself is the user's to change");
}

/// A server whose stderr can no longer be written (its log piped into a reader that quit, a
/// full disk under the log file) keeps collecting: a log line that cannot be written is lost.
/// Before, the failed write was reported with `eprintln!`, whose panic killed the thread that
/// logged (the journal's, identity resolution's), leaving a server that answered nothing more.
#[test]
fn a_server_whose_log_cannot_be_written_keeps_acknowledging_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start_with_stderr_closed(dir.path());
    let send = |from: u32| {
        let batch: Vec<Value> = (from..from + 50)
            .map(|i| json!({"type": "track", "event": "E", "userId": format!("u{}", i % 7), "messageId": format!("closed-log-{i}")}))
            .collect();
        ingest(&server, "/v1/batch", &json!({ "batch": batch }))
    };
    for round in 0..4 {
        let (status, answer) = send(round * 50);
        assert_eq!((status, &answer["accepted"]), (200, &json!(50)), "{answer}");
        // Flushes, profile writes and their debug lines happen meanwhile.
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    let (status, ready) = get(&server.url("/readyz"), &[]);
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        server.query("SELECT count(*) AS n FROM events")["rows"],
        json!([[200]])
    );
    let profile = profile(&server, "user_id:u1");
    assert!(
        profile["computed_traits"]["event_count"].as_u64() > Some(0),
        "{profile}"
    );
    let status = server.stop_with_status().unwrap();
    assert!(status.success(), "{status}");
}

/// The processes whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // `pid (comm) state ppid ...`: the name may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if parent == Some(pid) {
            children.push(child);
        }
    }
    children
}

/// A query worker whose server is killed in the middle of a query stops at once: it read its
/// stdin closing only between queries, so it ran on alone, a core busy until the query's time
/// limit, and a crash loop piled such orphans up.
#[test]
fn query_workers_end_with_their_server_even_in_the_middle_of_a_query() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let (url, key) = (server.url("/v1/query"), server.read_key.clone());
    std::thread::spawn(move || {
        let endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) \
                       SELECT count(*) FROM r";
        // Never answered: the server is killed while it runs.
        let _ = agent()
            .post(&url)
            .header("Authorization", &format!("Bearer {key}"))
            .send(json!({ "sql": endless }).to_string());
    });
    let server_pid = server.child.id();
    let started = std::time::Instant::now();
    let workers = loop {
        let workers = children_of(server_pid);
        if !workers.is_empty() || started.elapsed() > std::time::Duration::from_secs(20) {
            break workers;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!workers.is_empty(), "the query runs in a worker process");
    // Well inside the query's 30-second time limit.
    std::thread::sleep(std::time::Duration::from_millis(500));
    server.kill9();
    let killed = std::time::Instant::now();
    // A zombie (ended, not yet reaped by whoever adopted it) has ended.
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z")
        })
    };
    while workers.iter().any(alive) && killed.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let left: Vec<&u32> = workers.iter().filter(|pid| alive(pid)).collect();
    assert!(
        left.is_empty(),
        "workers still running 10 s after their server was killed: {left:?}"
    );
    assert!(
        killed.elapsed() < std::time::Duration::from_secs(3),
        "the workers ended {:?} after their server",
        killed.elapsed()
    );
}

/// SIGHUP (the terminal the server ran in closing) stops it as cleanly as SIGTERM, its events
/// flushed; a server started under `nohup`, which ignores SIGHUP, keeps running.
#[test]
fn a_hangup_stops_the_server_cleanly_unless_it_was_started_under_nohup() {
    let hangup = |server: &KithServer| {
        let pid = server.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = KithServer::start(dir.path());
    let (status, _) = ingest(
        &server,
        "/v1/track",
        &json!({"userId": "u", "event": "Before Hangup", "messageId": "hup-1"}),
    );
    assert_eq!(status, 200);
    hangup(&server);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    // Flushed to the table as it stopped: read without the journal's help.
    std::fs::remove_dir_all(dir.path().join("journal")).unwrap();
    assert_eq!(
        sql(dir.path(), "SELECT message_id FROM events"),
        [vec!["hup-1".to_string()]]
    );

    let dir = tempfile::tempdir().unwrap();
    let mut nohup = std::process::Command::new("nohup");
    nohup.arg(kith_bin());
    let server = KithServer::start_command(
        nohup,
        dir.path(),
        create_key(dir.path(), "ingest", Some("web")),
        create_key(dir.path(), "read", None),
        &[],
    );
    hangup(&server);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (status, ready) = get(&server.url("/readyz"), &[]);
    assert_eq!(status, 200, "{ready}");
    assert!(server.stop_with_status().unwrap().success());
}

/// Sends `body` as `Transfer-Encoding: chunked` in chunks of `chunk` bytes; the answer's status
/// line and body.
fn send_chunked(server: &KithServer, body: &[u8], chunk: usize) -> (String, Value) {
    use std::io::{Read, Write};
    let mut client =
        std::net::TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    let mut request = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: kith\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        basic(&server.write_key)
    )
    .into_bytes();
    for part in body.chunks(chunk) {
        request.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        request.extend_from_slice(part);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // Written while the answer is read: the server may answer before the body's end.
    let mut writer = client.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    let _ = sending.join();
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    // An answer of unknown length comes chunked itself: its JSON is on the chunk's line.
    let json = body
        .lines()
        .find(|line| line.starts_with('{'))
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// A chunked body is read into one buffer whatever its chunks: sent in many small ones (a
/// client streaming its events) it is stored; in more than 10,000 (one-byte chunks cost the
/// server half a second and 23 MB a request, held outside the receiving budget) it is refused
/// with what to do.
#[test]
fn chunked_bodies_are_read_whole_and_one_in_too_many_pieces_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let batch: Vec<Value> = (0..200)
        .map(|i| json!({"type": "track", "event": "Streamed", "userId": "u", "messageId": format!("chunked-{i}")}))
        .collect();
    let body = json!({ "batch": batch }).to_string();
    let (status, answer) = send_chunked(&server, body.as_bytes(), 100);
    assert!(status.contains(" 200 "), "{status} {answer}");
    assert_eq!(answer["accepted"], 200, "{answer}");

    let (status, answer) = send_chunked(&server, body.as_bytes(), 1);
    assert!(status.contains(" 400 "), "{status} {answer}");
    assert_eq!(answer["code"], "malformed_request", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("the body came in more than 10000 pieces"),
        "{answer}"
    );
    assert_eq!(
        server.query("SELECT count(*) FROM events")["rows"],
        json!([[200]])
    );
}

/// A request whose Authorization header names no valid write key is refused before its body is
/// read: it would be refused whatever the body held, and reading it first let anyone without a
/// key make the server read and parse 500 KB. Here the body never comes, and the answer does.
#[test]
fn a_bad_key_in_the_header_is_refused_before_the_body_is_read() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    for path in ["/v1/batch", "/v1/track"] {
        let mut client =
            std::net::TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            client,
            "POST {path} HTTP/1.1\r\nHost: kith\r\nAuthorization: {}\r\n\
             Content-Type: application/json\r\nContent-Length: 400000\r\n\r\n{{\"batch\": [",
            basic("not-a-key")
        )
        .unwrap();
        let mut answer = [0u8; 512];
        let read = client.read(&mut answer).unwrap_or(0);
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer:?}");
        assert!(answer.contains("invalid_api_key"), "{path}: {answer:?}");
    }
    // A good key in the header still has its body read and stored.
    let (status, answer) = ingest(
        &server,
        "/v1/track",
        &json!({"userId": "u", "event": "E", "messageId": "after-bad-keys"}),
    );
    assert_eq!((status, &answer["accepted"]), (200, &json!(1)), "{answer}");
}

/// The token `kith` commands on the server's machine use works from there only: a request that
/// reaches the server from elsewhere (here through a proxy, which says so) is refused with it,
/// while keys work from anywhere.
#[test]
fn the_local_token_works_only_from_the_servers_machine() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let published: Value = serde_json::from_str(
        &std::fs::read_to_string(server.data_dir.join("kith.server")).unwrap(),
    )
    .unwrap();
    let token = published["token"].as_str().unwrap().to_string();
    let sql = json!({"sql": "SELECT 1 AS one"}).to_string();
    let ask = |key: &str, forwarded_for: Option<&str>| {
        let bearer = format!("Bearer {key}");
        let mut headers = vec![("Authorization", bearer.as_str())];
        if let Some(client) = forwarded_for {
            headers.push(("X-Forwarded-For", client));
        }
        post_json(&server.url("/v1/query"), &headers, &sql)
    };
    let (status, body) = ask(&token, None);
    assert_eq!(status, 200, "{body}");
    // A proxy's word is never taken: not even one that names this machine.
    for forwarded in ["203.0.113.7", "127.0.0.1"] {
        let (status, body) = ask(&token, Some(forwarded));
        assert_eq!(status, 401, "{forwarded}: {body}");
    }
    let (status, body) = ask(&token, Some("203.0.113.7"));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "invalid_api_key");
    assert!(
        body["message"].as_str().unwrap().contains("local token"),
        "{body}"
    );
    // Management routes too.
    let (status, body, _) = post(
        &server.url("/v1/models/clv/fit"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X-Forwarded-For", "203.0.113.7"),
        ],
        b"{}",
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = ask(&server.read_key, Some("203.0.113.7"));
    assert_eq!(status, 200, "{body}");
    server.stop();
}

/// Run as root on another user's data directory, a command warns: the files it makes are
/// root's, and Kith run as the directory's owner could not open them. It still runs, as a
/// container run as root on a directory mounted from the host must.
#[test]
fn root_is_warned_on_another_users_data_directory() {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !is_root {
        eprintln!("skipped: handing a directory to another user needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let data = theirs.to_str().unwrap();
    let (ok, key, err) = kith(&["key", "create", "--data-dir", data, "--scope", "read"]);
    assert!(ok, "{err}");
    assert!(
        key.starts_with("kith_read_"),
        "only the key on stdout: {key}"
    );
    assert_eq!(
        err.matches("belongs to the user with uid 65534, and this runs as root")
            .count(),
        1,
        "warned once: {err}"
    );
    assert!(err.contains("sudo -u '#65534' kith"), "{err}");
    // Root's own directories: no word.
    let ours = dir.path().join("ours");
    let (ok, _, err) = kith(&[
        "key",
        "create",
        "--data-dir",
        ours.to_str().unwrap(),
        "--scope",
        "read",
    ]);
    assert!(ok && !err.contains("runs as root"), "{err}");
}
