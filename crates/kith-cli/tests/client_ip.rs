//! `context.ip`: recorded from the request only when the operator turns it on (`--client-ip`,
//! `KITH_CLIENT_IP`, `[ingest] client_ip`), full or truncated, and never over what the client
//! sent. Against the real binary on loopback.

mod common;

use common::{KithServer, basic, create_key, get_raw, kith, post_json};
use serde_json::{Value, json};

/// Sends the calls every case below looks at: a track from the connection itself, one relayed
/// by a proxy (`X-Forwarded-For`), one whose client set its own `ip`, a batch with a batch-level
/// `context` (and one naming `ip` there), an import of historical events, and a pixel.
fn send_calls(server: &KithServer) {
    let auth = basic(&server.write_key);
    let track = |message_id: &str, extra: &[(&str, &str)], context: Value| {
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        let body = json!({"userId": "ana", "event": "Product Viewed", "messageId": message_id,
                          "context": context});
        let (status, answer) = post_json(&server.url("/v1/track"), &headers, &body.to_string());
        assert_eq!(
            (status, answer["accepted"].clone()),
            (200, json!(1)),
            "{answer}"
        );
    };
    track("direct", &[], json!({"locale": "es-MX"}));
    track(
        "proxied",
        &[("X-Forwarded-For", "189.203.45.201, 10.0.0.7")],
        json!({"locale": "es-MX"}),
    );
    track(
        "client-set",
        &[("X-Forwarded-For", "189.203.45.201")],
        json!({"ip": "201.141.9.9", "locale": "es-MX"}),
    );
    let batch = json!({
        "batch": [{"type": "page", "anonymousId": "anon-1", "messageId": "batched", "name": "Inicio"}],
        "context": {"library": {"name": "analytics-python", "version": "2.3.4"}}
    });
    let (status, answer) = post_json(
        &server.url("/v1/batch"),
        &[
            ("Authorization", &auth),
            (
                "Forwarded",
                "for=\"[2806:10be:7:2a1f::5]:51000\";proto=https",
            ),
        ],
        &batch.to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    // A batch-level `ip` is the client's own for every item.
    let batch = json!({
        "batch": [{"type": "track", "userId": "ana", "event": "Paid", "messageId": "batch-ip"}],
        "context": {"ip": "200.57.0.1"}
    });
    let (status, answer) = post_json(
        &server.url("/v1/batch"),
        &[
            ("Authorization", &auth),
            ("X-Forwarded-For", "189.203.45.201"),
        ],
        &batch.to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    // Historical events: the importer's address is not the customer's.
    let import = json!({
        "batch": [{"type": "track", "userId": "ana", "event": "Paid", "messageId": "imported",
                   "timestamp": "2023-05-01T10:00:00Z", "context": {"locale": "es-MX"}}]
    });
    let (status, answer) = post_json(
        &server.url("/v1/import"),
        &[
            ("Authorization", &auth),
            ("X-Forwarded-For", "189.203.45.201"),
        ],
        &import.to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    let (status, _, _, body) = get_raw(
        &server.url(&format!(
            "/pixel/v1/track?writeKey={}&event=Email%20Opened&userId=ana&messageId=pixel",
            server.write_key
        )),
        &[("X-Forwarded-For", "187.190.1.2")],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Each event's `context`, parsed, by message id.
fn contexts(server: &KithServer) -> serde_json::Map<String, Value> {
    let rows = server.rows("SELECT message_id, context FROM events ORDER BY message_id");
    assert_eq!(rows.len(), 7, "{rows:#?}");
    rows.into_iter()
        .map(|row| {
            let id = row["message_id"].as_str().unwrap().to_string();
            let context = row["context"]
                .as_str()
                .map(|text| serde_json::from_str(text).unwrap())
                .unwrap_or(Value::Null);
            (id, context)
        })
        .collect()
}

#[test]
fn no_ip_is_recorded_unless_the_operator_turns_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    send_calls(&server);
    let contexts = contexts(&server);
    for (id, context) in &contexts {
        match id.as_str() {
            "client-set" => assert_eq!(context["ip"], "201.141.9.9"),
            "batch-ip" => assert_eq!(context["ip"], "200.57.0.1"),
            _ => assert!(
                context.get("ip").is_none(),
                "{id} got an address: {context}"
            ),
        }
    }
    assert_eq!(contexts["direct"], json!({"locale": "es-MX"}));
}

#[test]
fn the_full_address_is_the_proxys_first_hop_or_the_connections() {
    let dir = tempfile::tempdir().unwrap();
    let write_key = create_key(dir.path(), "ingest", Some("web"));
    let read_key = create_key(dir.path(), "read", None);
    let server =
        KithServer::start_with_keys(dir.path(), write_key, read_key, &["--client-ip", "full"]);
    send_calls(&server);
    let contexts = contexts(&server);
    assert_eq!(
        contexts["direct"],
        json!({"ip": "127.0.0.1", "locale": "es-MX"})
    );
    assert_eq!(
        contexts["proxied"],
        json!({"ip": "189.203.45.201", "locale": "es-MX"})
    );
    // The client's own `ip` is kept.
    assert_eq!(
        contexts["client-set"],
        json!({"ip": "201.141.9.9", "locale": "es-MX"})
    );
    // Added to the batch-level context each item took.
    assert_eq!(
        contexts["batched"],
        json!({"ip": "2806:10be:7:2a1f::5",
               "library": {"name": "analytics-python", "version": "2.3.4"}})
    );
    assert_eq!(contexts["pixel"], json!({"ip": "187.190.1.2"}));
    assert_eq!(contexts["batch-ip"], json!({"ip": "200.57.0.1"}));
    assert_eq!(contexts["imported"], json!({"locale": "es-MX"}));
}

#[test]
fn a_truncated_address_names_the_network_not_the_household() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _config) =
        KithServer::start_with_config(dir.path(), "[ingest]\nclient_ip = \"Truncated\"\n");
    send_calls(&server);
    let contexts = contexts(&server);
    assert_eq!(contexts["direct"]["ip"], "127.0.0.0");
    assert_eq!(contexts["proxied"]["ip"], "189.203.45.0");
    assert_eq!(contexts["client-set"]["ip"], "201.141.9.9");
    assert_eq!(contexts["batched"]["ip"], "2806:10be::");
    assert_eq!(contexts["pixel"]["ip"], "187.190.1.0");
    assert_eq!(contexts["batch-ip"]["ip"], "200.57.0.1");
    assert!(contexts["imported"].get("ip").is_none());
}

#[test]
fn an_unknown_policy_stops_start_up_and_names_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (ok, _, stderr) = kith(&["serve", "--data-dir", data, "--client-ip", "anonymized"]);
    assert!(!ok);
    assert!(
        stderr.contains("`anonymized` is not a client IP policy") && stderr.contains("truncated"),
        "{stderr}"
    );

    let config = dir.path().join("kith.toml");
    std::fs::write(&config, "[ingest]\nclient_ip = \"yes\"\n").unwrap();
    let (ok, _, stderr) = kith(&[
        "serve",
        "--data-dir",
        data,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("client_ip") && stderr.contains("`yes` is not a client IP policy"),
        "{stderr}"
    );
}

#[test]
fn only_trusted_proxies_are_believed() {
    let dir = tempfile::tempdir().unwrap();
    // Loopback is a trusted proxy by default; here no proxy is.
    let (server, _config) = KithServer::start_with_config(
        dir.path(),
        "[ingest]\nclient_ip = \"full\"\ntrusted_proxies = []\n",
    );
    let auth = basic(&server.write_key);
    let spoofing = [
        ("Authorization", auth.as_str()),
        ("X-Forwarded-For", "189.203.45.201"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
    ];
    let body = json!({"userId": "ana", "event": "Paid", "messageId": "spoofed"});
    let (status, answer) = post_json(&server.url("/v1/track"), &spoofing, &body.to_string());
    assert_eq!(status, 200, "{answer}");
    let rows = server.rows("SELECT context FROM events WHERE message_id = 'spoofed'");
    let context: Value = serde_json::from_str(rows[0]["context"].as_str().unwrap()).unwrap();
    assert_eq!(context, json!({"ip": "127.0.0.1"}));

    // Nor does analytics.js get sent elsewhere, nor the welcome page's commands.
    let (status, settings) = common::get(
        &server.url(&format!("/v1/projects/{}/settings", server.write_key)),
        &spoofing[1..],
    );
    assert_eq!(status, 200, "{settings}");
    let own_host = server.base.trim_start_matches("http://");
    assert_eq!(
        settings["integrations"]["Segment.io"]["apiHost"],
        format!("{own_host}/v1")
    );
    assert_eq!(settings["integrations"]["Segment.io"]["protocol"], "http");
    let (status, welcome) = common::get(&server.url("/"), &spoofing[1..]);
    assert_eq!(status, 200);
    let send = welcome["first_steps"][1]["command"].as_str().unwrap();
    assert!(
        send.contains(&format!("{}/v1/track", server.base)),
        "{send}"
    );
}

#[test]
fn a_trusted_proxy_that_is_not_an_address_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, _, stderr) = kith(&[
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--trusted-proxies",
        "10.0.0.0/8,nginx",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("`nginx` is not an address or a network"),
        "{stderr}"
    );
}
