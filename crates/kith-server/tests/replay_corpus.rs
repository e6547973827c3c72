//! Replays a corpus of recorded SDK requests (Python, Node, Go, browser analytics.js, RudderStack;
//! gzip and not) through the router and compares what is stored with reviewed snapshots.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use chrono::{DateTime, Utc};
use kith_lake::QueryLimits;
use kith_lake::output::to_json;
use kith_server::app::{AppState, router};
use kith_server::{Server, ServerConfig};
use kith_state::KeyScope;
use serde_json::{Map, Value, json};
use tower::ServiceExt;

async fn start(dir: &Path) -> (Arc<AppState>, String) {
    let config = ServerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    let server = Server::start(config).await.unwrap();
    let app = server.state();
    let key = app
        .state
        .create_key(KeyScope::Ingest, Some("corpus"))
        .unwrap()
        .secret;
    (app, key)
}

fn request_for(case: &Value, write_key: &str) -> Request<Body> {
    let mut body = case["body"].to_string().replace("__WRITE_KEY__", write_key);
    if case["auth"] == "body" && !body.contains(write_key) {
        let mut value: Value = serde_json::from_str(&body).unwrap();
        value["writeKey"] = json!(write_key);
        body = value.to_string();
    }
    let bytes = if case["gzip"] == true {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(body.as_bytes()).unwrap();
        encoder.finish().unwrap()
    } else {
        body.into_bytes()
    };
    // A key in the query (RudderStack's beacon) is written into the path as `__WRITE_KEY__`.
    let path = case["path"]
        .as_str()
        .unwrap()
        .replace("__WRITE_KEY__", write_key);
    let mut builder = Request::post(path);
    for (name, value) in case["headers"].as_object().unwrap() {
        builder = builder.header(name.as_str(), value.as_str().unwrap());
    }
    if case["auth"] == "basic" {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:"));
        builder = builder.header("Authorization", format!("Basic {token}"));
    }
    builder.body(Body::from(bytes)).unwrap()
}

/// The stored rows, with what depends on the wall clock made stable: `received_at` is redacted,
/// and a timestamp derived from it is shown as its offset from `received_at`.
fn stable_rows(result: &Value) -> Vec<Map<String, Value>> {
    let columns: Vec<String> = result["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let parse = |v: &Value| {
        v.as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    result["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let mut map: Map<String, Value> = columns
                .iter()
                .cloned()
                .zip(row.as_array().unwrap().iter().cloned())
                .collect();
            let received = parse(&map["received_at"]).unwrap();
            let timestamp = parse(&map["timestamp"]).unwrap();
            if (received - timestamp).num_days().abs() < 2 {
                let offset = (received - timestamp).num_milliseconds();
                map.insert(
                    "timestamp".into(),
                    json!(format!("[received_at - {offset} ms]")),
                );
            }
            map.insert("received_at".into(), json!("[received_at]"));
            for json_column in ["properties", "context", "traits", "integrations", "extra"] {
                if let Some(text) = map[json_column].as_str() {
                    let parsed: Value = serde_json::from_str(text).unwrap();
                    map.insert(json_column.into(), parsed);
                }
            }
            map
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_sdk_requests_are_stored_as_reviewed() {
    let corpus_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut cases: Vec<_> = std::fs::read_dir(&corpus_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 8,
        "the corpus is in {}",
        corpus_dir.display()
    );

    for path in cases {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let case: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (app, key) = start(dir.path()).await;
        let response = router(app.clone())
            .oneshot(request_for(&case, &key))
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "{name}: {}",
            String::from_utf8_lossy(&body)
        );
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["rejected"], 0, "{name}: {answer}");

        let result = app
            .pipeline
            .lake
            .query(
                "SELECT * EXCEPT (ingest_seq) FROM events ORDER BY ingest_seq",
                &QueryLimits::default(),
            )
            .await
            .unwrap();
        let rows = stable_rows(&to_json(&result).unwrap());
        assert_eq!(
            rows.len(),
            answer["accepted"].as_u64().unwrap() as usize,
            "{name}"
        );
        insta::assert_json_snapshot!(name, json!({"sdk": case["sdk"], "stored": rows}));
    }
}
