//! The real `segment-analytics-python` SDK from PyPI delivers every call type unchanged, plain and
//! gzipped; then independent engines (the Python `deltalake` package, Polars, DuckDB) read what
//! Kith wrote. The virtual environment is made by `scripts/setup-test-env.sh`.

mod common;

use common::*;
use serde_json::{Value, json};

#[test]
fn the_python_sdk_delivers_every_call_and_other_engines_read_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    let sent = run_python(
        "send_with_sdk.py",
        &["segment", &server.base, &server.write_key],
    );
    assert_eq!(sent["errors"], json!([]), "the SDK reported errors");
    assert_nan_events_refused_alone(&server, "py");

    let rows = server.rows(
        "SELECT message_id, type, event, user_id, anonymous_id, group_id, previous_id, source, \
         revenue, currency, order_id, email, page_url, timestamp, original_timestamp, sent_at, \
         library_name, json_get_str(traits, 'plan') AS plan, json_get_str(extra, 'category') AS category, \
         json_get_int(properties, 'step') AS step FROM events ORDER BY message_id",
    );
    assert_eq!(rows.len(), 14, "{rows:#?}");
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["message_id"] == id)
            .unwrap_or_else(|| panic!("{id} was not stored"))
            .clone()
    };
    for suffix in ["", "-gzip"] {
        let identify = row(&format!("py-identify{suffix}"));
        assert_eq!(identify["type"], "identify");
        assert_eq!(identify["user_id"], "user-1");
        assert_eq!(identify["email"], "ana@example.com");
        assert_eq!(identify["plan"], "pro");
        assert_eq!(identify["library_name"], "analytics-python");
        assert_eq!(identify["source"], "web");
        assert!(
            identify["sent_at"].is_string(),
            "the SDK's batch-level sentAt is kept"
        );

        let track = row(&format!("py-track{suffix}"));
        assert_eq!(track["type"], "track");
        assert_eq!(track["event"], "Order Completed");
        assert_eq!(track["revenue"], 349.5);
        assert_eq!(track["currency"], "MXN");
        assert_eq!(track["order_id"], "o-1");
        assert_sdk_time_corrected(&track, "2024-03-01T16:00:00Z");

        let page = row(&format!("py-page{suffix}"));
        assert_eq!(page["type"], "page");
        assert_eq!(page["event"], "Pricing");
        assert_eq!(page["category"], "Docs");
        assert_eq!(page["page_url"], "https://tienda.mx/precios");

        let screen = row(&format!("py-screen{suffix}"));
        assert_eq!(
            (screen["type"].clone(), screen["event"].clone()),
            (json!("screen"), json!("Payment"))
        );
        assert_eq!(screen["step"], 3);

        let group = row(&format!("py-group{suffix}"));
        assert_eq!(
            (group["type"].clone(), group["group_id"].clone()),
            (json!("group"), json!("acme"))
        );

        let alias = row(&format!("py-alias{suffix}"));
        assert_eq!(alias["type"], "alias");
        assert_eq!(alias["previous_id"], "anon-1");
        assert_eq!(alias["user_id"], "user-1");

        let anonymous = row(&format!("py-anon{suffix}"));
        assert_eq!(anonymous["anonymous_id"], "anon-2");
        assert_eq!(anonymous["user_id"], Value::Null);
    }

    // The alias merged the id it retires into the user's profile, as an anonymous id: read as
    // a user id, it would be the profile's second, which the default limit refuses.
    let profile = profile(&server, "anonymous_id:anon-1");
    let mut ids: Vec<String> = profile["identifiers"]
        .as_array()
        .expect("identifiers")
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["type"].as_str().unwrap_or("?"),
                i["value"].as_str().unwrap_or("?")
            )
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "anonymous_id:anon-1",
            "email:ana@example.com",
            "user_id:user-1"
        ],
        "{profile}"
    );
    assert_eq!(profile["conflicts"], json!([]), "{profile}");
    let merged_by_alias = profile["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .any(|merge| merge["reason"] == "alias" && merge["via"] == "anonymous_id:anon-1");
    assert!(merged_by_alias, "{profile}");

    // A clean stop flushes the buffer; then other engines read the same rows.
    server.stop();
    let events_table = dir.path().join("tables/events");
    let read = run_python("read_tables.py", &[events_table.to_str().unwrap()]);
    let expected: Vec<Value> = {
        let mut ids: Vec<Value> = rows.iter().map(|r| r["message_id"].clone()).collect();
        ids.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        ids
    };
    assert_eq!(read["deltalake"], json!(expected));
    assert_eq!(read["polars"], json!(expected));
    assert_eq!(read["duckdb"], json!(expected));
    assert_eq!(read["duckdb_revenue"], json!(699.0));
}

/// Before the first event arrives, other engines already find both tables, with no rows: the
/// server creates them when it first starts, rather than leaving a directory that is not a
/// Delta table until the first flush.
#[test]
fn other_engines_read_the_empty_tables_of_a_server_that_has_stored_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = KithServer::start(dir.path());
    for table in ["events", "rejected_events"] {
        let path = dir.path().join("tables").join(table);
        let read = run_python("read_tables.py", &[path.to_str().unwrap()]);
        assert_eq!(read["version"], json!(0), "{table}: {read}");
        for engine in ["deltalake", "polars", "duckdb"] {
            assert_eq!(read[engine], json!([]), "{table}, {engine}: {read}");
        }
    }
    // The first flush appends to the table created empty.
    let (status, _) = post_json(
        &server.url("/v1/track"),
        &[("Authorization", &basic(&server.write_key))],
        r#"{"userId": "u-1", "event": "Signed Up", "messageId": "first"}"#,
    );
    assert_eq!(status, 200);
    server.stop();
    let path = dir.path().join("tables/events");
    let read = run_python("read_tables.py", &[path.to_str().unwrap()]);
    assert_eq!(read["deltalake"], json!(["first"]), "{read}");
    assert_eq!(read["duckdb"], json!(["first"]), "{read}");
}
