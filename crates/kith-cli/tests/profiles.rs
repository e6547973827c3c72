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
    // Paging works the same over events already flushed to Delta.
    let (_, page) = server.get("/v1/profiles/email:ana@example.com/events?limit=3");
    assert_eq!(ids(&page), ["m6", "m5", "m4"]);
    let cursor = page["next_before"]
        .as_str()
        .expect("a cursor over Delta rows");
    let (_, next) = server.get(&format!(
        "/v1/profiles/email:ana@example.com/events?limit=3&before={cursor}"
    ));
    assert_eq!(ids(&next), ["m3", "m2", "m1"]);
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
    // A type no event can have, and an empty number, are refused by name.
    for (query, message) in [
        (
            "type=track,bogus",
            "`type` `bogus` is not a message type; use identify, track, page, screen, group, alias, comma-separated",
        ),
        (
            "limit=",
            "the query parameter `limit` is not valid: it is empty; give a whole number",
        ),
        ("limit=-1", "`limit` must be between 1 and 500, got -1"),
        (
            "since=last-week",
            "`since` `last-week` is not a time; use RFC 3339 (2024-05-01T00:00:00Z) or a date \
             (2024-05-01)",
        ),
    ] {
        let (status, body) = server.get(&format!("/v1/profiles/user_id:u1/events?{query}"));
        assert_eq!(
            (status, body["code"].as_str(), body["message"].as_str()),
            (400, Some("invalid_parameter"), Some(message)),
            "{query}"
        );
    }
    // A date is its midnight in UTC, as an RFC 3339 time at that moment is.
    let (_, by_date) = server.get("/v1/profiles/user_id:u1/events?since=2000-01-01");
    let (_, by_time) = server.get("/v1/profiles/user_id:u1/events?since=2000-01-01T00:00:00Z");
    assert!(
        !by_date["events"].as_array().unwrap().is_empty(),
        "{by_date}"
    );
    assert_eq!(by_date["events"], by_time["events"]);
    let (_, after_all) = server.get("/v1/profiles/user_id:u1/events?since=2999-01-01");
    assert_eq!(after_all["events"], json!([]), "{after_all}");
    let (status, body) = server.get("/v1/profiles/user_id:u1/events?type=IDENTIFY");
    assert_eq!(
        (status, body["events"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{body}"
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

/// Numbers equal up to rounding; anything else exactly.
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        _ => a == b,
    }
}

#[test]
fn declared_computed_traits_kept_on_ingest_match_a_batch_recomputation_in_sql() {
    use kith_profiles::ComputedTraitDef;

    let dir = tempfile::tempdir().unwrap();
    let declared = r#"
[[computed_traits]]
name = "orders_30d"
kind = "count"
event = "Order Completed"
window_days = 30

[[computed_traits]]
name = "revenue_30d"
kind = "sum"
event = "Order Completed"
property = "revenue"
window_days = 30

[[computed_traits]]
name = "average_price"
kind = "avg"
property = "price"

[[computed_traits]]
name = "highest_price"
kind = "max"
property = "price"

[[computed_traits]]
name = "cheapest_price_7d"
kind = "min"
property = "price"
window_days = 7

[[computed_traits]]
name = "favourite_category"
kind = "most_frequent"
property = "category"

[[computed_traits]]
name = "categories"
kind = "unique_values"
property = "category"

[[computed_traits]]
name = "category_count"
kind = "unique_count"
property = "category"

[[computed_traits]]
name = "first_category"
kind = "first_value"
property = "category"

[[computed_traits]]
name = "last_category"
kind = "last_value"
property = "category"

[[computed_traits]]
name = "last_order_at"
kind = "last_seen"
event = "Order Completed"

[[computed_traits]]
name = "first_page_at"
kind = "first_seen"
type = "page"

[[computed_traits]]
name = "days_since_order"
kind = "days_since"
event = "Order Completed"

[[computed_traits]]
name = "pages_7d"
kind = "count"
type = "page"
window_days = 7
"#;
    let (server, config) = KithServer::start_with_config(dir.path(), declared);

    // Three customers; events spread over 100 days, some before the customer signed up (they
    // count once the anonymous id is merged), some outside the windows.
    let now = chrono::Utc::now();
    let at =
        |days_ago: f64| (now - chrono::Duration::minutes((days_ago * 1440.0) as i64)).to_rfc3339();
    let categories = ["zapatos", "bolsas", "relojes"];
    let mut items = Vec::new();
    let mut n = 0;
    for customer in 0..3 {
        let anon = format!("anon-{customer}");
        let user = format!("user-{customer}");
        for (k, days_ago) in [100.2, 40.5, 20.5, 10.5, 3.5, 2.5, 1.5].iter().enumerate() {
            n += 1;
            let who = if k < 3 {
                json!({"anonymousId": anon})
            } else {
                json!({"userId": user})
            };
            let category = categories[(customer + k * k) % 3];
            let price = 100.0 * (customer as f64 + 1.0) + 10.0 * k as f64;
            let mut item = json!({"type": "track", "event": "Product Viewed", "messageId": format!("v{n}"),
                "timestamp": at(*days_ago), "properties": {"category": category, "price": price}});
            item.as_object_mut()
                .unwrap()
                .extend(who.as_object().unwrap().clone());
            items.push(item);
            if k % 2 == 0 {
                let mut order = json!({"type": "track", "event": "Order Completed", "messageId": format!("o{n}"),
                    "timestamp": at(*days_ago - 0.01), "properties": {"revenue": format!("{}.50", 100 + n)}});
                order
                    .as_object_mut()
                    .unwrap()
                    .extend(who.as_object().unwrap().clone());
                items.push(order);
            }
            let mut page = json!({"type": "page", "name": "Producto", "messageId": format!("p{n}"),
                "timestamp": at(*days_ago + 0.02)});
            page.as_object_mut()
                .unwrap()
                .extend(who.as_object().unwrap().clone());
            items.push(page);
        }
        items.push(
            json!({"type": "identify", "userId": user, "anonymousId": anon,
            "messageId": format!("id{customer}"), "timestamp": at(5.0)}),
        );
    }
    send(&server, Value::Array(items));
    for customer in 0..3 {
        profile(&server, &format!("user_id:user-{customer}"));
    }
    std::thread::sleep(Duration::from_millis(300));

    let defs: Vec<ComputedTraitDef> =
        toml::from_str::<toml::Table>(declared).unwrap()["computed_traits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.clone().try_into().unwrap())
            .collect();
    let now_micros = chrono::Utc::now().timestamp_micros();
    for def in &defs {
        let batch = server.rows(&def.batch_sql(now_micros));
        assert_eq!(batch.len(), 3, "{}: {batch:?}", def.name);
        for row in batch {
            let (status, live) = server.get(&format!(
                "/v1/profiles/profile_id:{}",
                row["profile_id"].as_str().unwrap()
            ));
            assert_eq!(status, 200);
            let live = &live["computed_traits"][&def.name];
            // Batch answers JSON text for property values and RFC 3339 for sightings.
            let batch_value = match &row["value"] {
                Value::String(text) if text.starts_with('"') || text.starts_with('[') => {
                    serde_json::from_str(text).unwrap()
                }
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .map(|i| serde_json::from_str(i.as_str().unwrap()).unwrap())
                        .collect(),
                ),
                other => other.clone(),
            };
            let live_value = match (def.name.as_str(), live) {
                ("last_order_at" | "first_page_at", Value::String(t)) => Value::from(
                    t.replace(".000000Z", "Z")
                        .replace('Z', "")
                        .replace('T', " "),
                ),
                _ => live.clone(),
            };
            let batch_value = match (def.name.as_str(), &batch_value) {
                ("last_order_at" | "first_page_at", Value::String(t)) => {
                    Value::from(t.replace('T', " ").trim_end_matches('Z').to_string())
                }
                _ => batch_value,
            };
            assert!(
                same(&live_value, &batch_value),
                "{}: live {live_value} vs batch {batch_value}",
                def.name
            );
        }
    }
    // Spot checks against the data itself, for one customer.
    let ana = profile(&server, "user_id:user-0")["computed_traits"].clone();
    // Orders 20.5, 3.5 and 1.5 days ago (the one 100 days ago is outside the window).
    assert_eq!(ana["orders_30d"], 3, "{ana}");
    assert_eq!(ana["revenue_30d"], 103.5 + 105.5 + 107.5, "{ana}");
    assert_eq!(ana["pages_7d"], 3, "{ana}");
    assert_eq!(ana["categories"], json!(["bolsas", "zapatos"]), "{ana}");
    assert_eq!(ana["days_since_order"], 1, "{ana}");

    // Declaring a new trait and changing one later recomputes them from the stored events.
    let redeclared = declared.replace(
        "name = \"pages_7d\"\nkind = \"count\"\ntype = \"page\"\nwindow_days = 7",
        "name = \"pages_7d\"\nkind = \"count\"\ntype = \"page\"\nwindow_days = 30",
    ) + "\n[[computed_traits]]\nname = \"views\"\nkind = \"count\"\nevent = \"Product Viewed\"\n";
    assert_ne!(redeclared, declared);
    std::fs::write(&config, &redeclared).unwrap();
    let server = server.restart_with_config(&config);
    let ana = profile(&server, "user_id:user-0")["computed_traits"].clone();
    assert_eq!(ana["views"], 7, "{ana}");
    assert_eq!(
        ana["pages_7d"], 5,
        "pages 20.5, 10.5, 3.5, 2.5 and 1.5 days ago: {ana}"
    );
    assert_eq!(
        ana["orders_30d"], 3,
        "unchanged traits keep their state: {ana}"
    );
}

#[test]
fn computed_traits_declared_through_the_api_count_past_and_new_events_exactly_once() {
    use kith_profiles::ComputedTraitDef;

    let dir = tempfile::tempdir().unwrap();
    let config = "[[computed_traits]]\nname = \"orders_30d\"\nkind = \"count\"\nevent = \"Order Completed\"\nwindow_days = 30\n";
    let (server, config_path) = KithServer::start_with_config(dir.path(), config);
    let admin = create_key(&server.data_dir, "admin", None);
    let order = |user: usize, n: usize| {
        json!({"type": "track", "event": "Order Completed", "userId": format!("u-{user}"),
               "messageId": format!("o-{user}-{n}"), "timestamp": "2025-06-01T10:00:00Z",
               "properties": {"revenue": (n % 7) as f64 + 0.25}})
    };
    send(
        &server,
        Value::Array((0..200).map(|n| order(n % 5, n)).collect()),
    );

    // Orders keep arriving while the traits are declared: each must count exactly once, whether
    // it was stored before the declaration, in flight during it, or after it.
    let (url, write_key) = (server.url("/v1/batch"), server.write_key.clone());
    let sender = std::thread::spawn(move || {
        for round in 0..40 {
            let batch: Vec<Value> = (0..25)
                .map(|i| order(i % 5, 1000 + round * 25 + i))
                .collect();
            let (status, body) = post_json(
                &url,
                &[("Authorization", &basic(&write_key))],
                &json!({ "batch": batch }).to_string(),
            );
            assert_eq!(status, 200, "{body}");
        }
    });
    let declare = |body: Value, key: &str| {
        post_json(
            &server.url("/v1/computed-traits"),
            &[("Authorization", &format!("Bearer {key}"))],
            &body.to_string(),
        )
    };
    let revenue = json!({"name": "revenue_all", "kind": "sum", "event": "Order Completed", "property": "revenue"});
    let count = json!({"name": "orders_all", "kind": "count", "event": "Order Completed"});
    std::thread::sleep(Duration::from_millis(30));
    let (status, declared) = declare(revenue.clone(), &admin);
    assert_eq!(status, 202, "{declared}");
    assert_eq!(declared["computed_trait"]["declared_in"], "api");
    std::thread::sleep(Duration::from_millis(30));
    let (status, declared) = declare(count.clone(), &admin);
    assert_eq!(status, 202, "{declared}");
    sender.join().unwrap();

    // Wrong declarations, each with its reason.
    let expect = |body: Value, key: &str, status: u16, code: &str, message: &str| {
        let (got, answer) = declare(body, key);
        assert_eq!(
            (got, answer),
            (
                status,
                json!({"code": code, "message": message, "type": if status == 403 { "auth" } else { "invalid_request" },
                       "link": format!("/docs/errors#{code}")})
            )
        );
    };
    expect(
        revenue.clone(),
        &admin,
        409,
        "computed_trait_exists",
        "a computed trait named `revenue_all` exists already; remove it first or choose another name",
    );
    expect(
        json!({"name": "orders_30d", "kind": "count"}),
        &admin,
        409,
        "computed_trait_in_config",
        "`orders_30d` is declared in kith.toml; change it there",
    );
    expect(
        json!({"name": "spend", "kind": "sum"}),
        &admin,
        400,
        "invalid_computed_trait",
        "`spend`: kind `sum` needs `property` (the properties field to read)",
    );
    expect(
        json!(["spend", "sum"]),
        &admin,
        400,
        "invalid_body",
        "the body must be {\"name\": \"orders_30d\", \"kind\": \"count\", \"event\": \"Order Completed\", \"window_days\": 30}, an object, not an array",
    );
    expect(
        json!({"name": "spend", "kind": "count", "event": ""}),
        &admin,
        400,
        "invalid_computed_trait",
        "`spend`: `event` must be 1–1024 characters without control characters, as event names and property names are",
    );
    expect(
        json!({"kind": "count"}),
        &admin,
        400,
        "invalid_computed_trait",
        "the computed trait definition is not valid: missing field `name`",
    );
    expect(
        json!({"name": "spend", "kind": "median"}),
        &admin,
        400,
        "invalid_computed_trait",
        "the computed trait definition is not valid: `kind`: unknown variant `median`, expected one of `count`, `sum`, `avg`, `min`, `max`, `first_value`, `last_value`, `most_frequent`, `unique_values`, `unique_count`, `first_seen`, `last_seen`, `days_since`",
    );
    expect(
        revenue.clone(),
        &server.read_key,
        403,
        "insufficient_scope",
        &format!(
            "this call needs an admin key; the key `{}` is a read key",
            &server.read_key[10..20]
        ),
    );

    let wait_ready = |server: &KithServer| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, list) = server.get("/v1/computed-traits");
            assert_eq!(status, 200, "{list}");
            let traits = list["computed_traits"].as_array().unwrap().clone();
            if traits.iter().all(|t| t["status"] == "ready") {
                return traits;
            }
            assert!(Instant::now() < deadline, "{list}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let traits = wait_ready(&server);
    assert_eq!(
        traits
            .iter()
            .map(|t| (
                t["name"].as_str().unwrap(),
                t["declared_in"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        vec![
            ("orders_30d", "kith.toml"),
            ("revenue_all", "api"),
            ("orders_all", "api")
        ]
    );
    // Every order is in the events table now; wait until profiles hold them all too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while profile(&server, "user_id:u-0")["computed_traits"]["event_count"] != 240 {
        assert!(Instant::now() < deadline, "profiles did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let now_micros = chrono::Utc::now().timestamp_micros();
    let check = |server: &KithServer| {
        for def in [&revenue, &count] {
            let def: ComputedTraitDef = serde_json::from_value(def.clone()).unwrap();
            let batch = server.rows(&def.batch_sql(now_micros));
            assert_eq!(batch.len(), 5, "{batch:?}");
            for row in batch {
                let (_, live) = server.get(&format!(
                    "/v1/profiles/profile_id:{}",
                    row["profile_id"].as_str().unwrap()
                ));
                let live = &live["computed_traits"][&def.name];
                assert!(
                    same(live, &row["value"]),
                    "{}: live {live} vs batch {}",
                    def.name,
                    row["value"]
                );
            }
        }
    };
    check(&server);
    let u0 = profile(&server, "user_id:u-0");
    assert_eq!(u0["computed_traits"]["orders_all"], 240);
    // SQL reads the declared traits too, in the profiles table.
    let rows = server.rows(&format!(
        "SELECT json_get_int(computed_traits, 'orders_all') AS value FROM profiles \
         WHERE profile_id = '{}'",
        u0["profile_id"].as_str().unwrap()
    ));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["value"], 240, "{rows:?}");

    // Declarations outlive restarts; removal is for API traits only, and takes the values along.
    let server = server.restart_with_config(&config_path);
    wait_ready(&server);
    check(&server);
    let delete = |name: &str| {
        let mut response = agent()
            .delete(&server.url(&format!("/v1/computed-traits/{name}")))
            .header("Authorization", &format!("Bearer {admin}"))
            .call()
            .unwrap();
        let status = response.status().as_u16();
        let body: Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        (status, body)
    };
    assert_eq!(delete("orders_30d").0, 409);
    assert_eq!(
        delete("nope"),
        (
            404,
            json!({"code": "computed_trait_not_found", "message": "no computed trait is named `nope`",
                   "type": "invalid_request", "link": "/docs/errors#computed_trait_not_found"})
        )
    );
    assert_eq!(
        delete("orders_all"),
        (200, json!({"removed": "orders_all"}))
    );
    let computed = profile(&server, "user_id:u-0")["computed_traits"].clone();
    assert!(computed.get("orders_all").is_none(), "{computed}");
    assert!(computed.get("revenue_all").is_some(), "{computed}");
    let server = server.restart_with_config(&config_path);
    assert_eq!(wait_ready(&server).len(), 2);
}

/// The server's `kith_profile_facts_resident` gauge, once it has been set.
fn resident_facts(server: &KithServer) -> Option<f64> {
    metric(&server.base, "kith_profile_facts_resident")
}

#[test]
fn profiles_whose_facts_left_memory_answer_the_same_through_api_and_sql_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server, config) =
        KithServer::start_with_config(dir.path(), "[profiles]\nresident_facts = 2\n");
    let customers = 30;
    let first: Vec<Value> = (0..customers)
        .flat_map(|n| {
            [
                json!({"type": "identify", "userId": format!("u-{n}"), "anonymousId": format!("a-{n}"),
                       "messageId": format!("id-{n}"), "timestamp": "2025-03-01T10:00:00Z",
                       "traits": {"email": format!("c{n}@example.com"), "name": format!("Cliente {n}"), "plan": "free"}}),
                json!({"type": "track", "anonymousId": format!("a-{n}"), "event": "Order Completed",
                       "messageId": format!("order-{n}"), "timestamp": "2025-03-02T10:00:00Z",
                       "properties": {"revenue": 100.0 + n as f64}}),
            ]
        })
        .collect();
    send(&server, Value::Array(first));
    // Persisted each second, after which all but one identifier's facts leave memory.
    let deadline = Instant::now() + Duration::from_secs(20);
    while resident_facts(&server).is_none_or(|held| held > 2.0) {
        assert!(
            Instant::now() < deadline,
            "facts never left memory: {:?}",
            resident_facts(&server)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Later events for identifiers whose facts are only on disk: read back, never restarted.
    send(
        &server,
        json!([
            {"type": "identify", "userId": "u-3", "messageId": "up-3", "timestamp": "2025-03-05T10:00:00Z",
             "traits": {"plan": "premium"}},
            {"type": "track", "anonymousId": "a-5", "event": "Order Completed", "messageId": "order-5b",
             "timestamp": "2025-03-06T10:00:00Z", "properties": {"revenue": 1000.0}}
        ]),
    );
    let check = |server: &KithServer| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let upgraded = profile(server, "email:c3@example.com");
            let buyer = profile(server, "user_id:u-5");
            if upgraded["traits"]["plan"] == "premium"
                && buyer["computed_traits"]["order_count"] == 2
            {
                break;
            }
            assert!(Instant::now() < deadline, "{upgraded}\n{buyer}");
            std::thread::sleep(Duration::from_millis(50));
        }
        for n in 0..customers {
            let p = profile(server, &format!("email:c{n}@example.com"));
            assert_eq!(p["traits"]["name"], format!("Cliente {n}"), "{p}");
            assert_eq!(
                p["traits"]["plan"],
                if n == 3 { "premium" } else { "free" },
                "{p}"
            );
            let (orders, revenue) = if n == 5 {
                (2, 1105.0)
            } else {
                (1, 100.0 + n as f64)
            };
            assert_eq!(p["computed_traits"]["order_count"], orders, "{p}");
            assert_eq!(p["computed_traits"]["total_revenue"], revenue, "{p}");
            let events = if n == 3 || n == 5 { 3 } else { 2 };
            assert_eq!(p["computed_traits"]["event_count"], events, "{p}");
        }
        let rows = server.rows(
            "SELECT count(*) AS profiles, sum(total_revenue) AS revenue, \
             count(*) FILTER (WHERE traits LIKE '%premium%') AS premium FROM profiles",
        );
        let expected_revenue: f64 = (0..customers).map(|n| 100.0 + n as f64).sum::<f64>() + 1000.0;
        assert_eq!(rows[0]["profiles"], customers, "{rows:?}");
        assert_eq!(rows[0]["revenue"], expected_revenue, "{rows:?}");
        assert_eq!(rows[0]["premium"], 1, "{rows:?}");
    };
    check(&server);
    let server = server.restart_with_config(&config);
    check(&server);
}
