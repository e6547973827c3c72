use chrono::{TimeZone, Utc};
use kith_core::event::TypedFields;
use kith_core::{Event, MessageType, Rejection, Stored};
use serde_json::json;

use super::*;

pub(crate) fn event(id: &str, user: &str, revenue: f64) -> Event {
    let at = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
    Event {
        message_id: id.into(),
        kind: MessageType::Track,
        event: Some("Order Completed".into()),
        user_id: Some(user.into()),
        anonymous_id: None,
        group_id: None,
        previous_id: None,
        source: "web".into(),
        timestamp: at,
        original_timestamp: None,
        sent_at: None,
        received_at: at,
        properties: Some(json!({"revenue": revenue, "currency": "MXN"}).to_string()),
        context: None,
        traits: None,
        integrations: None,
        extra: None,
        typed: TypedFields {
            revenue: Some(revenue),
            currency: Some("MXN".into()),
            ..TypedFields::default()
        },
    }
}

fn rejection(seq_hint: usize) -> Rejection {
    Rejection {
        index: seq_hint,
        code: "missing_identity".into(),
        message: "the event needs a non-empty `userId` or `anonymousId`".into(),
        field: Some("userId".into()),
        source: "web".into(),
        received_at: Utc::now(),
        message_id: None,
        raw: "{}".into(),
    }
}

async fn scalar(lake: &Lake, sql: &str) -> String {
    let result = lake.query(sql, &QueryLimits::default()).await.unwrap();
    arrow::util::pretty::pretty_format_batches(&result.batches)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn events_are_queryable_before_and_after_a_flush_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    lake.ingest(vec![
        (1, Stored::Event(event("m1", "ana", 10.0)).encode()),
        (2, Stored::Rejected(rejection(1)).encode()),
        (3, Stored::Event(event("m3", "ana", 5.5)).encode()),
    ]);
    let sql = "SELECT user_id, count(*) AS n, sum(revenue) AS total, \
               max(json_get_str(properties, 'currency')) AS cur FROM events GROUP BY user_id";
    let before = scalar(&lake, sql).await;
    assert!(before.contains("| ana     | 2 | 15.5  | MXN |"), "{before}");
    assert_eq!(lake.durable_through(), 0, "nothing is in Delta yet");

    assert_eq!(lake.flush().await.unwrap(), 3);
    assert_eq!(lake.durable_through(), 3);
    lake.ingest(vec![(4, Stored::Event(event("m4", "ben", 1.0)).encode())]);
    let after = scalar(&lake, "SELECT count(*) AS n FROM events").await;
    assert!(
        after.contains("| 3 |"),
        "delta and buffer both counted, once: {after}"
    );
    assert_eq!(lake.durable_through(), 3, "seq 4 is only buffered");

    let reopened = Lake::open(dir.path()).await.unwrap();
    assert_eq!(reopened.events.committed_seq(), 3);
    assert_eq!(reopened.rejected.committed_seq(), 2);
    assert_eq!(reopened.replay_after(), 2);
    // Replaying from 2 must not duplicate event 3, which Delta already holds.
    reopened.ingest(vec![
        (3, Stored::Event(event("m3", "ana", 5.5)).encode()),
        (4, Stored::Event(event("m4", "ben", 1.0)).encode()),
    ]);
    let counted = scalar(
        &reopened,
        "SELECT count(*) AS n, count(DISTINCT message_id) AS d FROM events",
    )
    .await;
    assert!(counted.contains("| 3 | 3 |"), "{counted}");
    let rejected = scalar(&reopened, "SELECT code, field FROM rejected_events").await;
    assert!(rejected.contains("missing_identity"), "{rejected}");
}

#[tokio::test]
async fn personal_identifiers_stay_out_of_delta_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let mut e = event("m1", "ana-secret-user", 10.0);
    e.traits = Some(json!({"email": "ana.secret@example.com"}).to_string());
    e.typed.email = Some("ana.secret@example.com".into());
    lake.ingest(vec![(1, Stored::Event(e).encode())]);
    lake.flush().await.unwrap();
    let log_dir = dir.path().join("tables/events/_delta_log");
    for entry in std::fs::read_dir(log_dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        assert!(
            !text.contains("ana-secret-user"),
            "user id leaked into the log: {text}"
        );
        assert!(
            !text.contains("ana.secret@example.com"),
            "email leaked into the log"
        );
    }
}

#[tokio::test]
async fn bad_sql_is_a_clear_invalid_error_and_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits::default();
    for sql in [
        "SELEC 1",
        "SELECT nope FROM events",
        "SELECT * FROM missing_table",
        "CREATE TABLE t AS SELECT 1",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "INSERT INTO events SELECT * FROM events",
        "SET datafusion.execution.batch_size = 1",
    ] {
        match lake.query(sql, &limits).await {
            Err(QueryError::Invalid(message)) => assert!(!message.is_empty(), "{sql}"),
            Err(other) => panic!("{sql}: expected invalid, got {other:?}"),
            Ok(_) => panic!("{sql}: expected an error"),
        }
    }
    // A syntax error reads as one, with where it is, not as Rust's debug form of it.
    match lake.query("SELEC 1", &limits).await {
        Err(QueryError::Invalid(message)) => assert_eq!(
            message,
            "the SQL does not parse: Expected: an SQL statement, found: SELEC at Line: 1, Column: 1"
        ),
        Err(other) => panic!("expected invalid, got {other:?}"),
        Ok(_) => panic!("expected a syntax error"),
    }
    for (sql, expected) in [
        (
            "  ",
            "the SQL is empty: send one query, such as `SELECT count(*) FROM events`",
        ),
        (
            "SELECT 1; SELECT 2",
            "the SQL holds 2 statements: send one at a time",
        ),
    ] {
        match lake.query(sql, &limits).await {
            Err(QueryError::Invalid(message)) => assert_eq!(message, expected, "{sql}"),
            Err(other) => panic!("{sql}: expected invalid, got {other:?}"),
            Ok(_) => panic!("{sql}: expected an error"),
        }
    }
    // The messages say what was wrong in the query's terms, without DataFusion's prefixes.
    for (sql, expected) in [
        (
            "SELECT * FROM missing_table",
            "there is no table `missing_table`; the tables are events, rejected_events",
        ),
        (
            "DROP TABLE events",
            "queries only read here, and this one creates, changes or drops a table or view; \
             events are added by sending them (POST /v1/batch)",
        ),
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "queries only read here, and this one creates, changes or drops a table or view; \
             events are added by sending them (POST /v1/batch)",
        ),
        (
            "INSERT INTO events SELECT * FROM events",
            "queries only read here, and this one writes rows (INSERT, UPDATE, DELETE or COPY); \
             events are added by sending them (POST /v1/batch)",
        ),
        (
            "SET datafusion.execution.batch_size = 1",
            "queries only read here, and this one is a statement (SET, a transaction or a \
             prepared statement); events are added by sending them (POST /v1/batch)",
        ),
        ("SELECT 1/0", "Divide by zero error"),
    ] {
        match lake.query(sql, &limits).await {
            Err(QueryError::Invalid(message)) => assert_eq!(message, expected, "{sql}"),
            Err(other) => panic!("{sql}: expected invalid, got {other:?}"),
            Ok(_) => panic!("{sql}: expected an error"),
        }
    }
    // Tables the caller builds only for the queries that read them are named too.
    lake.name_tables_built_on_request(&["profiles", "profile_identities"]);
    match lake.query("SELECT * FROM nope", &limits).await {
        Err(QueryError::Invalid(message)) => assert_eq!(
            message,
            "there is no table `nope`; the tables are events, profile_identities, profiles, \
             rejected_events"
        ),
        other => panic!("{:?}", other.map(|r| r.num_rows())),
    }
    // Nested inside EXPLAIN a write is still refused.
    assert!(matches!(
        lake.query("EXPLAIN INSERT INTO events SELECT * FROM events", &limits)
            .await,
        Err(QueryError::Invalid(_))
    ));
    // One statement with the semicolon people end it with is one statement.
    let answer = lake.query("SELECT 1 AS one;", &limits).await.unwrap();
    assert_eq!(answer.num_rows(), 1);
    match lake.query("SELECT 'open", &limits).await {
        Err(QueryError::Invalid(message)) => {
            assert!(
                message.starts_with("the SQL does not parse: Unterminated string literal"),
                "{message}"
            );
            assert!(!message.contains("Error("), "{message}");
        }
        Err(other) => panic!("expected invalid, got {other:?}"),
        Ok(_) => panic!("expected a syntax error"),
    }
    let tight = QueryLimits {
        max_rows: 5,
        ..QueryLimits::default()
    };
    let result = lake
        .query("SELECT * FROM generate_series(1, 100)", &tight)
        .await
        .unwrap();
    assert_eq!(result.num_rows(), 5);
    assert!(result.truncated);
}

/// A condition that fails on a row of a table file is the query's mistake, said as the engine
/// says it elsewhere: the file reader tests conditions itself, and its errors came back as
/// internal ones (a 500 over HTTP).
#[tokio::test]
async fn a_condition_failing_on_a_row_of_a_file_is_the_querys_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    lake.ingest(vec![(1, Stored::Event(event("m1", "ana", 10.0)).encode())]);
    lake.flush().await.unwrap();
    let limits = QueryLimits::default();
    for (sql, expected) in [
        (
            "SELECT count(*) FROM events WHERE CAST(user_id AS INT) > 0",
            "Cast error: Cannot cast string 'ana' to value of Int32 type",
        ),
        (
            "SELECT count(*) FROM events WHERE 1 / (ingest_seq - ingest_seq) > 0",
            "Divide by zero error",
        ),
    ] {
        match lake.query(sql, &limits).await {
            Err(QueryError::Invalid(message)) => assert_eq!(
                message,
                format!("{expected} (in a condition of the query, on a row it was tested on)"),
                "{sql}"
            ),
            Err(other) => panic!("{sql}: expected invalid, got {other:?}"),
            Ok(_) => panic!("{sql}: expected an error"),
        }
    }
}

/// A table file whose data is damaged is our fault, not the query's: it is answered as an
/// internal error (a 500, logged), where Parquet's complaint reached the client as a mistake in
/// its SQL ("Parquet argument error: External: Data corruption detected").
#[tokio::test]
async fn a_damaged_table_file_is_not_the_querys_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let events: Vec<_> = (1..=2_000u64)
        .map(|seq| {
            let mut e = event(&format!("m{seq}"), &format!("u{}", seq % 7), seq as f64);
            e.properties = Some(json!({"note": format!("{seq:0>400}")}).to_string());
            (seq, Stored::Event(e).encode())
        })
        .collect();
    lake.ingest(events);
    lake.flush().await.unwrap();
    let file = events_files(&lake).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 4096].fill(0xAB);
    std::fs::write(&file, bytes).unwrap();
    let reopened = Lake::open(dir.path()).await.unwrap();
    match reopened
        .query(
            "SELECT sum(length(properties)) FROM events",
            &QueryLimits::default(),
        )
        .await
    {
        Err(QueryError::Internal(message)) => assert!(!message.is_empty()),
        Err(other) => panic!("expected an internal error, got {other:?}"),
        Ok(_) => panic!("a damaged file read without an error"),
    }
}

// More workers than the query has partitions (one per core): a worker that parks drives the
// timer, as the server's own runtime does while queries run on theirs. With every worker inside
// CPU-bound operators the time limit would be noticed only when one yields.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runaway_query_is_stopped_by_its_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits {
        timeout: std::time::Duration::from_millis(200),
        ..QueryLimits::default()
    };
    let started = std::time::Instant::now();
    let result = lake
        .query(
            "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b",
            &limits,
        )
        .await;
    assert!(
        matches!(result, Err(QueryError::Timeout(_))),
        "{:?}",
        result.err()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // A query whose time runs out while it is still being planned is told so: narrowing what
    // it reads would not help. (256 branches of a union take far longer than 5 ms to plan.)
    let limits = QueryLimits {
        timeout: std::time::Duration::from_millis(5),
        ..QueryLimits::default()
    };
    let result = lake
        .query(&doubled_union(" SELECT count(*) FROM t8"), &limits)
        .await;
    let Err(err @ QueryError::PlanningTimeout(_)) = result else {
        panic!("{:?}", result.map(|r| r.num_rows()));
    };
    assert!(
        err.to_string()
            .starts_with("planning the query took longer than the 5ms limit, before it read"),
        "{err}"
    );
}

/// A query that is slow to plan: 256 branches of a union (eight CTEs, each the one before
/// twice) take far longer than 5 ms to plan. `select` reads the last, `t8`.
fn doubled_union(select: &str) -> String {
    let mut doubled = "WITH t0 AS (SELECT value AS x FROM generate_series(1, 3))".to_string();
    for level in 1..=8 {
        let before = level - 1;
        doubled +=
            &format!(", t{level} AS (SELECT x FROM t{before} UNION ALL SELECT x FROM t{before})");
    }
    doubled + select
}

// Queries whose answer is handed on batch by batch (analyses, model runs) are told the same:
// running out of time while running, or while still planning. (More workers than partitions,
// as in the test above, so the timer is driven.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_query_out_of_time_is_told_whether_it_was_still_planning() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits {
        timeout: std::time::Duration::from_secs(1),
        ..QueryLimits::default()
    };
    let mut batches = 0;
    let started = std::time::Instant::now();
    let result = lake
        .query_each(
            "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b",
            &limits,
            Vec::new(),
            |_| batches += 1,
        )
        .await;
    assert!(matches!(result, Err(QueryError::Timeout(_))), "{result:?}");
    assert_eq!(batches, 0);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let limits = QueryLimits {
        timeout: std::time::Duration::from_millis(5),
        ..QueryLimits::default()
    };
    let result = lake
        .query_each(
            &doubled_union(" SELECT x FROM t8"),
            &limits,
            Vec::new(),
            |_| {},
        )
        .await;
    assert!(
        matches!(result, Err(QueryError::PlanningTimeout(_))),
        "{result:?}"
    );
}

// A time no calendar reaches is an error that names the value, not an error message written
// into the answer as if it were the value (or a CSV cut short when it came to it).
#[tokio::test]
async fn a_value_that_cannot_be_written_is_an_error_before_the_answer_starts() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits::default();
    let result = lake
        .query(
            "SELECT from_unixtime(value) AS t FROM (VALUES (0), (9223372036854775807)) v(value)",
            &limits,
        )
        .await;
    let Err(QueryError::Invalid(message)) = result else {
        panic!("expected a refusal, got {:?}", result.map(|r| r.num_rows()));
    };
    assert!(
        message.starts_with("the value of `t` in row 2 cannot be written as a Timestamp"),
        "{message}"
    );
    let shown = lake
        .query("SELECT from_unixtime(0) AS t", &limits)
        .await
        .unwrap();
    assert_eq!(
        crate::output::to_json(&shown).unwrap()["rows"],
        serde_json::json!([["1970-01-01T00:00:00"]])
    );
    // Inside a list, a struct or a map too: the JSON answer would show such a time as null.
    let far = "to_timestamp_seconds(9223372036854775807)";
    for (sql, column, row) in [
        (
            format!("SELECT [to_timestamp_seconds(0), {far}] AS l"),
            "l",
            1,
        ),
        (
            format!(
                "SELECT named_struct('ok', 1, 'at', CASE WHEN value = 2 THEN {far} END) AS s \
                 FROM (VALUES (1), (2)) v(value)"
            ),
            "s",
            2,
        ),
        (format!("SELECT map(['k'], [[{far}]]) AS m"), "m", 1),
    ] {
        let result = lake.query(&sql, &limits).await;
        let Err(QueryError::Invalid(message)) = result else {
            panic!("{sql}: {:?}", result.map(|r| r.num_rows()));
        };
        assert!(
            message.starts_with(&format!("the value of `{column}` in row {row} (")),
            "{message}"
        );
        assert!(
            message.contains("holds a time that cannot be written"),
            "{message}"
        );
    }
    // A null list spans no values: nothing in it is looked at, and times that can be written
    // nested are shown.
    let shown = lake
        .query(
            "SELECT CASE WHEN value = 1 THEN [to_timestamp_seconds(0)] END AS l \
             FROM (VALUES (1), (2)) v(value)",
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(
        crate::output::to_json(&shown).unwrap()["rows"],
        serde_json::json!([[["1970-01-01T00:00:00"]], [null]])
    );
}

#[tokio::test]
async fn a_query_over_its_memory_limit_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits {
        memory_bytes: 4 << 20,
        ..QueryLimits::default()
    };
    let result = lake
        .query(
            "SELECT value % 1000000 AS k, count(*) FROM generate_series(1, 3000000) GROUP BY k ORDER BY k",
            &limits,
        )
        .await;
    let Err(err @ QueryError::OutOfMemory(_)) = result else {
        panic!("{:?}", result.err());
    };
    // The message says what the limit is and names the usual cause and its rewrite.
    let message = err.to_string();
    assert!(message.contains("more than the 4 MiB"), "{message}");
    assert!(
        message.contains("COUNT(DISTINCT x) beside other aggregates")
            && message.contains("SELECT count(*) FROM (SELECT DISTINCT x FROM"),
        "{message}"
    );
}

// The answer is memory too: it is counted in the queries' shared limit while it is collected and
// until it is dropped (for the API, once it has been sent), and queries running at once share
// the limit instead of each having its own.
#[tokio::test]
async fn answers_count_in_the_memory_the_queries_running_at_once_share() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits {
        memory_bytes: 16 << 20,
        max_rows: 1_000_000,
        ..QueryLimits::default()
    };
    // 160,000 rows of 60 bytes: about 10 MB, under the 16 MiB limit alone but not twice.
    let ten_mb = "SELECT repeat('x', 60) AS r FROM generate_series(1, 160000)";
    let held = lake.query(ten_mb, &limits).await.unwrap();
    assert_eq!(held.num_rows(), 160_000);

    // While it is held, the same answer again does not fit: it would have alone, so the query
    // is told to come back rather than that it asks too much.
    let Err(err @ QueryError::Crowded(_)) = lake.query(ten_mb, &limits).await else {
        panic!("a second answer fitted beside the first");
    };
    assert_eq!(
        err.to_string(),
        "the queries running now hold the memory this one needs (they share 16 MiB); try again \
         in a moment"
    );

    // Given back when the first is dropped; a copy made for output is not counted.
    let copy = held.uncounted();
    drop(held);
    let again = lake.query(ten_mb, &limits).await.unwrap();
    assert_eq!((again.num_rows(), copy.num_rows()), (160_000, 160_000));
    drop(again);

    // An answer larger than the whole limit is refused as too large. (Beside another query it
    // would be crowded out first: how large it is becomes known only as it grows.)
    let result = lake
        .query(
            "SELECT repeat('x', 60) AS r FROM generate_series(1, 300000)",
            &limits,
        )
        .await;
    let Err(err @ QueryError::AnswerTooLarge(_)) = result else {
        panic!("{:?}", result.map(|r| r.num_rows()));
    };
    let message = err.to_string();
    assert!(
        message.starts_with("the answer is larger than the 16 MiB") && message.contains("LIMIT"),
        "{message}"
    );

    // One row is written out whole, in JSON several times its size: a row may hold a
    // sixteenth of the limit (1 MiB here), however small the answer is in all.
    let result = lake
        .query(
            "SELECT k, CASE WHEN k = 2 THEN range(k * 80000) END AS all_values FROM \
             (VALUES (1), (2), (3)) AS t(k)",
            &limits,
        )
        .await;
    let Err(err @ QueryError::RowTooLarge { .. }) = result else {
        panic!("{:?}", result.map(|r| r.num_rows()));
    };
    let message = err.to_string();
    assert!(
        message.starts_with("row 2 of the answer holds ")
            && message.contains("MiB, more than the 1 MiB one row may"),
        "{message}"
    );
    let fits = lake
        .query(
            "SELECT cardinality(array_agg(value)) AS n FROM generate_series(1, 100000)",
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(fits.num_rows(), 1);
}

// A list- or text-building aggregate over a window gives each row its whole frame's result: over
// every row, n rows ask for n lists of n values, which once aborted the process on a failed
// allocation. Refused unless the frame is a bounded number of rows.
#[tokio::test]
async fn list_aggregates_over_unbounded_windows_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits::default();
    for (sql, name) in [
        (
            "SELECT array_agg(value) OVER () FROM generate_series(1, 300000)",
            "array_agg",
        ),
        (
            "SELECT string_agg(CAST(value AS VARCHAR), ',') OVER (ORDER BY value) \
             FROM generate_series(1, 300000)",
            "string_agg",
        ),
        (
            "SELECT array_agg(value) OVER (ORDER BY value ROWS BETWEEN 5000 PRECEDING AND \
             CURRENT ROW) FROM generate_series(1, 300000)",
            "array_agg",
        ),
        (
            "SELECT x FROM (SELECT array_agg(value) OVER (PARTITION BY value % 2) AS x \
             FROM generate_series(1, 10)) WHERE x IS NOT NULL",
            "array_agg",
        ),
    ] {
        let result = lake.query(sql, &limits).await;
        let Err(QueryError::Invalid(message)) = result else {
            panic!("{sql}: {:?}", result.map(|r| r.num_rows()));
        };
        assert!(
            message.starts_with(&format!("{name} over a window gives each row the"))
                && message.contains("ROWS BETWEEN 99 PRECEDING AND CURRENT ROW"),
            "{sql}: {message}"
        );
    }
    // A bounded frame is fine: the last three values on each row.
    let result = lake
        .query(
            "SELECT array_agg(value) OVER (ORDER BY value ROWS BETWEEN 2 PRECEDING AND \
             CURRENT ROW) AS recent FROM generate_series(1, 4) ORDER BY value DESC LIMIT 1",
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(
        crate::output::to_json(&result).unwrap()["rows"],
        serde_json::json!([[[2, 3, 4]]])
    );
    // string_agg's frame cannot slide in this engine: the advice for it, followed, answers.
    let result = lake
        .query(
            "SELECT string_agg(CAST(value AS VARCHAR), ',') OVER (ORDER BY value) \
             FROM generate_series(1, 4)",
            &limits,
        )
        .await;
    let Err(QueryError::Invalid(message)) = result else {
        panic!("{:?}", result.map(|r| r.num_rows()));
    };
    assert!(
        message.contains(
            "(`array_to_string(array_agg(x) OVER (ORDER BY … ROWS BETWEEN 99 PRECEDING AND \
             CURRENT ROW), ',')`)"
        ),
        "{message}"
    );
    let result = lake
        .query(
            "SELECT array_to_string(array_agg(value) OVER (ORDER BY value ROWS BETWEEN 2 \
             PRECEDING AND CURRENT ROW), ',') AS recent FROM generate_series(1, 4) \
             ORDER BY value DESC LIMIT 1",
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(
        crate::output::to_json(&result).unwrap()["rows"],
        serde_json::json!([["2,3,4"]])
    );
}

/// A `profiles` table built for one query: `rows` rows of 60 bytes of text (about 10 MB for
/// 160,000), counted in the query's memory.
fn table_of(rows: usize) -> ExtraTable {
    use arrow::array::{ArrayRef, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, false)]));
    let column: ArrayRef = std::sync::Arc::new(StringArray::from(vec!["y".repeat(60); rows]));
    ExtraTable {
        name: "profiles".into(),
        schema: schema.clone(),
        batches: vec![RecordBatch::try_new(schema, vec![column]).unwrap()],
        shared: false,
    }
}

// Tables built for one query (the profile tables) are memory too: counted in the shared limit
// while the query works, refused when they cannot fit even alone, and told to come back when
// other queries hold what they need.
#[tokio::test]
async fn tables_built_for_a_query_count_in_the_shared_memory() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits {
        memory_bytes: 16 << 20,
        max_rows: 1_000_000,
        ..QueryLimits::default()
    };
    let count = "SELECT count(*) AS n FROM profiles";
    // About 10 MB: fits alone, and is given back when the query ends.
    let answer = lake
        .query_with(count, &limits, vec![table_of(160_000)])
        .await
        .unwrap();
    assert_eq!(answer.num_rows(), 1);
    let again = lake
        .query_with(count, &limits, vec![table_of(160_000)])
        .await;
    assert!(again.is_ok(), "the first query's table was not given back");

    // About 19 MB: more than the whole limit.
    let Err(err @ QueryError::TablesTooLarge { .. }) = lake
        .query_with(count, &limits, vec![table_of(300_000)])
        .await
    else {
        panic!("a table larger than the limit was queried");
    };
    let message = err.to_string();
    assert!(
        message.starts_with(
            "the table `profiles` (with the tables before it, 18 MiB) is larger than the 16 MiB"
        ) && message.contains("[query] memory_mb"),
        "{message}"
    );

    // Beside an answer still held, a table that would fit alone is told to come back.
    let held = lake
        .query(
            "SELECT repeat('x', 60) AS r FROM generate_series(1, 160000)",
            &limits,
        )
        .await
        .unwrap();
    let Err(QueryError::Crowded(_)) = lake
        .query_with(count, &limits, vec![table_of(160_000)])
        .await
    else {
        panic!("a table fitted beside an answer that holds most of the limit");
    };
    // A table a cache holds for many queries is not counted in each: beside the same answer,
    // and even larger than the whole limit, it is queried.
    let shared = ExtraTable {
        shared: true,
        ..table_of(300_000)
    };
    let answer = lake.query_with(count, &limits, vec![shared]).await.unwrap();
    assert_eq!(answer.num_rows(), 1);
    drop(held);
    lake.query_with(count, &limits, vec![table_of(160_000)])
        .await
        .unwrap();
}

// Model runs count their memory apart from interactive queries, even with the same amount: a
// run holding most of its memory crowds out other runs, never a query.
#[tokio::test]
async fn model_runs_and_queries_never_share_memory() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let queries = QueryLimits {
        memory_bytes: 16 << 20,
        max_rows: 1_000_000,
        ..QueryLimits::default()
    };
    let runs = QueryLimits {
        purpose: MemoryPurpose::ModelRuns,
        ..queries.clone()
    };
    let held = lake
        .query(
            "SELECT repeat('x', 60) AS r FROM generate_series(1, 160000)",
            &runs,
        )
        .await
        .unwrap();
    let count = "SELECT count(*) AS n FROM profiles";
    let answer = lake
        .query_with(count, &queries, vec![table_of(160_000)])
        .await
        .unwrap();
    assert_eq!(answer.num_rows(), 1);
    let Err(QueryError::Crowded(_)) = lake.query_with(count, &runs, vec![table_of(160_000)]).await
    else {
        panic!("a run's table fitted beside another run's answer that holds most of the limit");
    };
    drop(held);
}

// DataFusion does not count what a scalar function allocates against the memory limit, and it
// folds constant calls while planning, where the time limit cannot stop it: each function whose
// result can dwarf its arguments is refused before it runs once the result could pass an eighth
// of the limit (128 MiB by default).
#[tokio::test]
async fn functions_that_make_huge_values_are_refused_before_they_run() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits::default();
    let refused = [
        ("SELECT repeat('a', 2000000000)", "repeat"),
        ("SELECT lpad('7', 1000000000, '0')", "lpad"),
        ("SELECT rpad('7', 100000000, 'ñ')", "rpad"),
        (
            "SELECT replace(repeat('a', value * 1000), 'a', repeat('b', value * 1000)) \
             FROM generate_series(1, 100)",
            "replace",
        ),
        (
            "SELECT regexp_replace(repeat('a', value * 1000), '', repeat('b', value * 1000), 'g') \
             FROM generate_series(1, 100)",
            "regexp_replace",
        ),
        ("SELECT array_repeat(1, 1000000000)", "array_repeat"),
        ("SELECT array_resize([1], 1000000000, 0)", "array_resize"),
        ("SELECT range(10000000000)", "range"),
        (
            "SELECT generate_series(1, 10000000000, 1)",
            "generate_series",
        ),
        (
            "SELECT range(TIMESTAMP '2020-01-01', TIMESTAMP '2021-01-01', INTERVAL '1 nanosecond')",
            "range",
        ),
        // Over a column: each row is modest, the batch is not.
        (
            "SELECT repeat('x', value * 100000000) FROM generate_series(1, 3)",
            "repeat",
        ),
        // One large row among small ones is counted at its own size, not the average.
        (
            &format!(
                "SELECT array_repeat(CASE WHEN value = 1 THEN '{}' ELSE '' END, \
                 CASE WHEN value = 1 THEN 100000 ELSE 0 END) FROM generate_series(1, 100)",
                "a".repeat(10_000)
            ),
            "array_repeat",
        ),
        // Composing `||` doubles a value at each step; each step is held to the bound.
        (
            &format!(
                "WITH s0 AS (SELECT repeat('x', value * 1000) AS s FROM generate_series(1, 2)), {} \
                 SELECT length(s) FROM s30",
                (1..=30)
                    .map(|i| format!("s{i} AS (SELECT s || s AS s FROM s{})", i - 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "||",
        ),
        (
            // Each repeat makes 30 MB, within its third of the bound; concat would make both.
            "SELECT concat(repeat('x', value * 5000000), repeat('y', value * 5000000)) \
             FROM generate_series(1, 3)",
            "concat(…)",
        ),
        // So do encode (twice its value as hex) and joining lists, composed.
        (
            &format!(
                "WITH s0 AS (SELECT CAST(value AS VARCHAR) AS s FROM generate_series(1, 2)), {} \
                 SELECT length(s) FROM s30",
                (1..=30)
                    .map(|i| format!("s{i} AS (SELECT encode(s, 'hex') AS s FROM s{})", i - 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "encode",
        ),
        // DataFusion's planners call the unbounded originals directly: `||` on lists is
        // `array_concat`, and an array literal `[a, b]` is `make_array`.
        (
            &format!(
                "WITH a0 AS (SELECT make_array(value) AS c FROM generate_series(1, 2)), {} \
                 SELECT cardinality(c) FROM a30",
                (1..=30)
                    .map(|i| format!("a{i} AS (SELECT c || c AS c FROM a{})", i - 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "array_concat",
        ),
        (
            &format!(
                "WITH a0 AS (SELECT repeat('x', value * 1000) AS c FROM generate_series(1, 2)), \
                 {} SELECT cardinality(c) FROM a30",
                (1..=30)
                    .map(|i| format!("a{i} AS (SELECT [c, c] AS c FROM a{})", i - 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "make_array",
        ),
        (
            &format!(
                "WITH s0 AS (SELECT repeat('x', value * 1000) AS s FROM generate_series(1, 2)), {} \
                 SELECT length(s) FROM s30",
                (1..=30)
                    .map(|i| format!(
                        "s{i} AS (SELECT overlay(s PLACING s FROM 1 FOR 0) AS s FROM s{})",
                        i - 1
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "overlay",
        ),
        // A text split into its characters: a part for each.
        (
            "SELECT cardinality(string_to_array(repeat('x', 2000 + value % 2), NULL)) \
             FROM generate_series(1, 8192)",
            "string_to_array",
        ),
        // A million small values joined by a long delimiter: a million delimiters.
        (
            "SELECT array_to_string(range(value * 1000000), repeat('-', 1000)) \
             FROM generate_series(1, 2)",
            "array_to_string",
        ),
        (
            &format!(
                "WITH a0 AS (SELECT make_array(value) AS c FROM generate_series(1, 2)), {} \
                 SELECT cardinality(c) FROM a30",
                (1..=30)
                    .map(|i| format!("a{i} AS (SELECT array_concat(c, c) AS c FROM a{})", i - 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "array_concat",
        ),
        // The fill of array_resize is what each new element holds.
        (
            "SELECT array_resize(make_array(range(value)), 100000, range(value * 10000)) \
             FROM generate_series(1, 3)",
            "array_resize",
        ),
    ];
    for (sql, function) in refused {
        let started = std::time::Instant::now();
        let result = lake.query(sql, &limits).await;
        let sql = &sql[..sql.len().min(120)];
        let Err(QueryError::Invalid(message)) = result else {
            panic!(
                "{sql}: expected a refusal, got {:?}",
                result.map(|r| r.num_rows())
            );
        };
        // One call may make the whole bound; several share it.
        assert!(
            (message.starts_with(&format!("{function}(…) could make a result of"))
                || message.starts_with(&format!("{function} could make a result of")))
                && (message.contains("more than the 128.0 MiB one function call may make")
                    || message
                        .contains("calls of functions that can make large values share 128.0 MiB")),
            "{sql}: {message}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{sql} took {:?}",
            started.elapsed()
        );
    }
    // An interval step that can be zero would never end (DataFusion checks only for all three
    // parts being zero): refused whatever the distance.
    for step in [
        "INTERVAL '1 day' - INTERVAL '86400 seconds'",
        "INTERVAL '1 month' - INTERVAL '30 days'",
    ] {
        let sql = format!("SELECT range(TIMESTAMP '2020-01-01', TIMESTAMP '2020-01-02', {step})");
        let result = lake.query(&sql, &limits).await;
        let Err(QueryError::Invalid(message)) = result else {
            panic!(
                "{sql}: expected a refusal, got {:?}",
                result.map(|r| r.num_rows())
            );
        };
        assert!(
            message.starts_with("range(…) has a step that can be zero"),
            "{sql}: {message}"
        );
    }
    // A call of constants is folded into one value while planning; that value is then a
    // constant, copied onto every row of a batch it is projected over, and held to the
    // constants' bound. A large value used only to compute a small one is fine.
    let result = lake
        .query(
            "SELECT repeat('x', 100000) FROM generate_series(1, 10)",
            &limits,
        )
        .await;
    let Err(QueryError::Invalid(message)) = result else {
        panic!("a large constant: {:?}", result.map(|r| r.num_rows()));
    };
    assert!(
        message.starts_with("the query holds a constant of 100064 bytes; a constant is copied"),
        "{message}"
    );
    let result = lake
        .query("SELECT length(repeat('-', 20000)) AS n", &limits)
        .await
        .unwrap();
    assert_eq!(
        crate::output::to_json(&result).unwrap()["rows"],
        json!([[20000]])
    );
    // levenshtein makes nothing large but takes time with the product of the two lengths.
    let result = lake
        .query(
            "SELECT levenshtein(repeat('a', value * 40000), repeat('b', value * 30000)) \
             FROM generate_series(1, 1)",
            &limits,
        )
        .await;
    let Err(QueryError::Invalid(message)) = result else {
        panic!("long texts compared: {:?}", result.map(|r| r.num_rows()));
    };
    assert!(
        message.starts_with(
            "levenshtein(…) would compare 1200000000 pairs of characters here (the product of \
             the two lengths, summed over the rows), more than the 1000000000 one call may"
        ),
        "{message}"
    );
    let result = lake
        .query(
            "SELECT levenshtein('kitten', name) AS d FROM (VALUES ('sitting'), ('kitten')) \
             AS t(name)",
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(
        crate::output::to_json(&result).unwrap()["rows"],
        json!([[3], [0]])
    );
    let result = lake
        .query("SELECT array_resize(make_array(1), -5)", &limits)
        .await;
    let Err(QueryError::Invalid(message)) = result else {
        panic!("a negative size: {:?}", result.map(|r| r.num_rows()));
    };
    assert!(
        message.starts_with("array_resize(…) has a negative size (-5)"),
        "{message}"
    );
    // `||` on text is DataFusion's operator still: null when either side is, named as before,
    // over columns and constants; on lists it is array_concat.
    let result = lake
        .query(
            "SELECT 'a' || 'b', 'a' || NULL IS NULL AS n, \
             concat('a', NULL) AS c, concat_ws('-', 'a', 'b') AS w, [1] || [2] AS l, \
             (SELECT string_agg(v, ',') FROM (SELECT 'v' || value AS v FROM generate_series(1, 3))) AS col",
            &limits,
        )
        .await
        .unwrap();
    let json = crate::output::to_json(&result).unwrap();
    assert_eq!(json["columns"][0], "Utf8(\"a\") || Utf8(\"b\")");
    assert_eq!(
        json["rows"][0],
        serde_json::json!(["ab", true, "a", "a-b", [1, 2], "v1,v2,v3"])
    );
    // Within the bound they are DataFusion's own functions, aliases included.
    let result = lake
        .query(
            "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS l, rpad('7', 3) AS p, \
             replace('banana', 'a', 'o') AS s, regexp_replace('banana', 'a', 'o', 'g') AS x, \
             array_repeat(1, 2) AS ar, list_repeat(2, 2) AS lr, array_resize([1], 3, 0) AS rs, \
             range(3) AS rg, generate_series(1, 3) AS gs, \
             range(DATE '2026-01-01', DATE '2026-01-03', INTERVAL '1 day') AS days, \
             length(repeat('-', 80)) AS rule, encode('ab', 'hex') AS hex, \
             array_concat([1], [2, 3]) AS joined, make_array(1, 2) AS made",
            &limits,
        )
        .await
        .unwrap();
    let json = crate::output::to_json(&result).unwrap();
    assert_eq!(
        json["rows"][0],
        serde_json::json!([
            "ababab",
            "007",
            "7  ",
            "bonono",
            "bonono",
            [1, 1],
            [2, 2],
            [1, 0, 0],
            [0, 1, 2],
            [1, 2, 3],
            ["2026-01-01", "2026-01-02"],
            80,
            "6162",
            [1, 2, 3],
            [1, 2]
        ]),
        "{json:?}"
    );
}

// The calls in one query share the bound: forty calls side by side, each of which alone is
// well within it, are refused together, with the share each may make.
#[tokio::test]
async fn the_calls_in_a_query_share_the_bound_on_what_functions_make() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    // An eighth of 64 MiB: 8 MiB for the query's calls together.
    let limits = QueryLimits {
        memory_bytes: 64 << 20,
        ..QueryLimits::default()
    };
    // About 3 MB for a batch of 4,096 rows.
    // Each call differs, or the optimizer would compute one for all.
    let call = |i: usize| format!("repeat(CAST(value AS VARCHAR), {}) AS c{i}", 200 + i);
    let alone = format!("SELECT {} FROM generate_series(1, 4096)", call(0));
    let result = lake.query(&alone, &limits).await.unwrap();
    assert_eq!(result.num_rows(), 4096);
    drop(result);

    let forty = format!(
        "SELECT {} FROM generate_series(1, 4096)",
        (0..40).map(call).collect::<Vec<_>>().join(", ")
    );
    let result = lake.query(&forty, &limits).await;
    let Err(QueryError::Invalid(message)) = result else {
        panic!("forty calls ran: {:?}", result.map(|r| r.num_rows()));
    };
    assert!(
        message.starts_with("repeat(…) could make a result of")
            && message.contains("more than the 204.8 KiB each call may make")
            && message.contains(
                "the query's 40 calls of functions that can make large values share 8.0 MiB"
            ),
        "{message}"
    );
    // A filter over a union is copied into each branch, and with it the call it reads; each
    // copy works on its own branch's batches, so the copies share nothing and count once.
    let branches = "SELECT count(*) AS n FROM (SELECT repeat(CAST(value AS VARCHAR), 400) AS c \
                    FROM (SELECT value FROM generate_series(1, 4096) UNION ALL \
                    SELECT value FROM generate_series(1, 4096))) WHERE length(c) > 0";
    let result = lake.query(branches, &limits).await.unwrap();
    assert_eq!(
        crate::output::to_json(&result).unwrap()["rows"],
        json!([[8192]])
    );
}

#[test]
fn events_read_back_from_a_batch_are_the_events_written() {
    let mut original = event("m1", "u1", 12.5);
    original.properties = Some(r#"{"category":"zapatos"}"#.into());
    original.original_timestamp = Some(original.timestamp);
    let mut sparse = event("m2", "u2", 0.0);
    sparse.typed = kith_core::TypedFields::default();
    sparse.user_id = None;
    sparse.anonymous_id = Some("a2".into());
    let written = vec![(7u64, original), (9u64, sparse)];
    let encoded: Vec<(u64, Vec<u8>)> = written
        .iter()
        .map(|(s, e)| (*s, Stored::encode_event(e)))
        .collect();
    let views: Vec<(u64, kith_core::EventView)> = encoded
        .iter()
        .map(
            |(s, bytes)| match kith_core::StoredView::decode(bytes).unwrap() {
                kith_core::StoredView::Event(view) => (*s, view),
                other => panic!("decoded {other:?}"),
            },
        )
        .collect();
    let batch = crate::schema::events_batch(&views);
    assert_eq!(crate::schema::events_from_batch(&batch), written);
}

// `json_get` answers a union of JSON's kinds; the JSON answer gives the value it holds.
#[tokio::test]
async fn json_get_values_come_back_as_json_values() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let result = lake
        .query(
            r#"SELECT json_get('{"a": 1}', 'a') AS i, json_get('{"a": "x"}', 'a') AS s, json_get('{"a": true}', 'a') AS b, json_get('{}', 'a') AS n"#,
            &QueryLimits::default(),
        )
        .await
        .unwrap();
    let json = crate::output::to_json(&result).unwrap();
    assert_eq!(json["rows"], serde_json::json!([[1, "x", true, null]]));
}

/// Flushed rows come from Parquet as Utf8View, buffered ones as Utf8: queries whose expressions
/// the optimizer pushes into both sides of the union (JSON functions, joins) once failed to plan.
#[tokio::test]
async fn json_functions_and_joins_work_over_flushed_and_buffered_events_together() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    lake.ingest(vec![(1, Stored::Event(event("a", "u-1", 2.0)).encode())]);
    lake.flush().await.unwrap();
    lake.ingest(vec![(2, Stored::Event(event("b", "u-2", 3.0)).encode())]);
    let table = |sql: &str| {
        let sql = sql.to_string();
        let lake = &lake;
        async move { scalar(lake, &sql).await }
    };
    assert_eq!(
        table("SELECT json_get_json(e.properties, 'revenue') AS j, e.message_id FROM events e ORDER BY e.message_id").await,
        "+-----+------------+\n| j   | message_id |\n+-----+------------+\n| 2.0 | a          |\n| 3.0 | b          |\n+-----+------------+"
    );
    assert_eq!(
        table("SELECT count(*) AS n FROM (SELECT json_get_json(e.properties, 'revenue') AS j FROM events e) WHERE j IS NOT NULL AND j <> 'null'").await,
        "+---+\n| n |\n+---+\n| 2 |\n+---+"
    );
    assert_eq!(
        table("SELECT a.message_id AS x, b.user_id AS y FROM events a JOIN events b ON a.user_id = b.user_id ORDER BY x").await,
        "+---+-----+\n| x | y   |\n+---+-----+\n| a | u-1 |\n| b | u-2 |\n+---+-----+"
    );
    // The JSON answer names text columns one way, whichever layout Arrow gave them.
    let result = lake
        .query(
            "SELECT message_id, 'literal' AS l, revenue, array_agg(message_id) \
             OVER (ORDER BY message_id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS ids FROM events",
            &QueryLimits::default(),
        )
        .await
        .unwrap();
    let types = crate::output::to_json(&result).unwrap()["types"].clone();
    assert_eq!(
        [&types[0], &types[1], &types[2]],
        [
            &serde_json::json!("Utf8"),
            &serde_json::json!("Utf8"),
            &serde_json::json!("Float64")
        ]
    );
    let list = types[3].as_str().unwrap();
    assert!(
        list.starts_with("List(") && !list.contains("View"),
        "{list}"
    );
}

#[tokio::test]
async fn explain_and_explain_analyze_show_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    lake.ingest(vec![(1, Stored::Event(event("m1", "u1", 10.0)).encode())]);
    lake.flush().await.unwrap();
    let plan = scalar(
        &lake,
        "EXPLAIN SELECT user_id, sum(revenue) FROM events GROUP BY user_id",
    )
    .await;
    assert!(
        plan.contains("logical_plan") && plan.contains("Aggregate"),
        "{plan}"
    );
    let analyzed = scalar(&lake, "EXPLAIN ANALYZE SELECT count(*) FROM events").await;
    assert!(analyzed.contains("output_rows"), "{analyzed}");
}

/// The journal checksums what it hands over, so only a bug could bring bytes that do not decode;
/// they must not take their neighbours (or the server) down with them.
#[tokio::test]
async fn a_record_that_does_not_decode_is_left_out_and_its_neighbours_kept() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let mut truncated = Stored::Event(event("m2", "ana", 1.0)).encode();
    truncated.truncate(truncated.len() / 2);
    lake.ingest(vec![
        (1, Stored::Event(event("m1", "ana", 10.0)).encode()),
        (2, truncated),
        (3, vec![0xff; 3]),
        (4, Stored::Event(event("m4", "ben", 5.5)).encode()),
    ]);
    let stored = scalar(
        &lake,
        "SELECT string_agg(message_id, ',' ORDER BY message_id) AS ids FROM events",
    )
    .await;
    assert!(stored.contains("| m1,m4 |"), "{stored}");
    assert_eq!(lake.flush().await.unwrap(), 2);
    assert_eq!(
        lake.unflushed_rows(),
        0,
        "the bad records are not held either"
    );
}

#[tokio::test]
async fn a_large_seal_is_cut_into_batches_that_keep_every_record_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    // Two full batches and a few more; every 1,000th record is a rejection.
    let total = 2 * SEAL_BATCH_ROWS as u64 + 1_500;
    let records: Vec<_> = (1..=total)
        .map(|seq| {
            let stored = if seq % 1_000 == 0 {
                Stored::Rejected(rejection(seq as usize))
            } else {
                Stored::Event(event(&format!("m{seq}"), "ana", 1.0))
            };
            (seq, stored.encode())
        })
        .collect();
    lake.ingest(records);
    lake.seal();

    let rejections = total / 1_000;
    let batches = lake.events.view().buffered;
    let sizes: Vec<usize> = batches.iter().map(|b| b.num_rows()).collect();
    assert_eq!(
        sizes,
        [
            SEAL_BATCH_ROWS,
            SEAL_BATCH_ROWS,
            (total - rejections) as usize - 2 * SEAL_BATCH_ROWS
        ]
    );
    let seqs: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            let column = b.column_by_name("ingest_seq").unwrap();
            let seq = column
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            seq.values().to_vec()
        })
        .collect();
    let expected: Vec<i64> = (1..=total as i64).filter(|s| s % 1_000 != 0).collect();
    assert_eq!(seqs, expected, "every event once, in journal order");
    assert_eq!(
        lake.rejected
            .view()
            .buffered
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        rejections as usize
    );
    assert_eq!(lake.flush().await.unwrap(), total as usize);
    assert_eq!(lake.durable_through(), total);
    let counted = scalar(
        &lake,
        "SELECT count(*) AS n, count(DISTINCT message_id) AS d FROM events",
    )
    .await;
    let n = total - rejections;
    assert!(counted.contains(&format!("| {n} | {n} |")), "{counted}");
}

// Recomputations read every stored event a batch at a time, never all of them at once: events
// in Delta and in the buffer each come once, and none past the seq asked for.
#[tokio::test]
async fn stored_events_are_handed_over_a_batch_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let stored = |seqs: std::ops::RangeInclusive<u64>| {
        seqs.map(|seq| {
            (
                seq,
                Stored::Event(event(&format!("m{seq}"), "ana", 1.0)).encode(),
            )
        })
        .collect::<Vec<_>>()
    };
    let flushed = 3 * SEAL_BATCH_ROWS as u64;
    lake.ingest(stored(1..=flushed));
    assert_eq!(lake.flush().await.unwrap(), flushed as usize);
    lake.ingest(stored(flushed + 1..=flushed + 5_000));
    let through = flushed + 4_000;

    let mut seen = Vec::new();
    let mut largest_batch = 0;
    let mut batches = 0;
    lake.each_stored_event(through, |events| {
        batches += 1;
        largest_batch = largest_batch.max(events.len());
        seen.extend(events.into_iter().map(|(seq, event)| {
            assert_eq!(event.message_id, format!("m{seq}"));
            seq
        }));
    })
    .await
    .unwrap();
    seen.sort_unstable();
    assert_eq!(seen, (1..=through).collect::<Vec<_>>());
    assert!(
        batches > 3 && largest_batch <= SEAL_BATCH_ROWS,
        "{batches} batches, the largest of {largest_batch} events"
    );
}

/// The Parquet files of the events table's current Delta snapshot.
fn events_files(lake: &Lake) -> Vec<std::path::PathBuf> {
    lake.events
        .view()
        .delta
        .unwrap()
        .get_file_uris()
        .unwrap()
        .map(|uri| std::path::PathBuf::from(uri.trim_start_matches("file://")))
        .collect()
}

/// The footer of a Parquet file: (column name, compression, has statistics) per column chunk.
fn parquet_columns(file: &std::path::Path) -> Vec<(String, String, bool)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
    let mut columns = Vec::new();
    for row_group in reader.metadata().row_groups() {
        for column in row_group.columns() {
            columns.push((
                column.column_path().string(),
                format!("{:?}", column.compression()),
                column.statistics().is_some(),
            ));
        }
    }
    columns
}

/// Flushes `rows` events (seqs after `*seq`) in one file.
pub(crate) async fn flush_rows(lake: &Lake, seq: &mut u64, rows: u64) {
    let records = (0..rows)
        .map(|_| {
            *seq += 1;
            let e = event(&format!("m{seq}"), &format!("u{}", *seq % 977), 1.0);
            (*seq, Stored::Event(e).encode())
        })
        .collect();
    lake.ingest(records);
    lake.flush().await.unwrap();
}

/// The events table's files as its current snapshot describes them.
async fn file_views(lake: &Lake) -> Vec<deltalake::kernel::LogicalFileView> {
    use futures::TryStreamExt;
    let table = lake.events.view().delta.unwrap();
    table
        .snapshot()
        .unwrap()
        .snapshot()
        .file_views(table.log_store().as_ref(), None)
        .try_collect()
        .await
        .unwrap()
}

/// (path, size, rows in its Delta statistics) of each file of the events table's snapshot.
async fn live_files(lake: &Lake) -> Vec<(String, u64, Option<usize>)> {
    let mut files: Vec<_> = file_views(lake)
        .await
        .iter()
        .map(|view| {
            (
                view.path().into_owned(),
                view.size() as u64,
                view.num_records(),
            )
        })
        .collect();
    files.sort();
    files
}

/// The Delta statistics the events table's log holds for `path`.
async fn file_stats(lake: &Lake, path: &str) -> serde_json::Value {
    let views = file_views(lake).await;
    let view = views.iter().find(|view| view.path() == path).unwrap();
    serde_json::from_str(&view.stats().unwrap()).unwrap()
}

/// A compacted file is merged again only once the files newer than it hold half its rows:
/// a few small flushes are merged among themselves, not into it.
#[tokio::test]
async fn compaction_leaves_a_large_file_alone_until_the_new_files_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let mut seq = 0;
    for _ in 0..3 {
        flush_rows(&lake, &mut seq, 20_000).await;
    }
    let first = lake.events.compact().await.unwrap();
    assert_eq!((first.files_replaced, first.files_written), (3, 1));
    let live = live_files(&lake).await;
    let [(large, large_size, large_rows)] = &live[..] else {
        panic!("one compacted file: {live:?}");
    };
    let (large, large_size, large_rows) = (large.clone(), *large_size, *large_rows);
    assert_eq!(large_rows, Some(60_000), "the statistics count its rows");
    let stats = file_stats(&lake, &large).await;
    assert_eq!(stats["minValues"]["ingest_seq"], 1, "{stats}");
    assert_eq!(stats["maxValues"]["ingest_seq"], 60_000, "{stats}");
    assert!(
        stats["minValues"].get("user_id").is_none(),
        "no identifiers in the log: {stats}"
    );

    for _ in 0..2 {
        flush_rows(&lake, &mut seq, 1).await;
    }
    let second = lake.events.compact().await.unwrap();
    assert_eq!((second.files_replaced, second.files_written), (2, 1));
    let live = live_files(&lake).await;
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(live.contains(&(large.clone(), large_size, Some(60_000))));
    assert_each_event_once(&lake, 60_002).await;
    assert_eq!(
        lake.events.compact().await.unwrap(),
        Compacted::default(),
        "a pass with nothing worth merging commits nothing"
    );

    // A flush of a third of its rows is not enough; with two, the newer files hold more than
    // half its rows, and it is merged with them.
    flush_rows(&lake, &mut seq, 20_000).await;
    assert_eq!(lake.events.compact().await.unwrap(), Compacted::default());
    flush_rows(&lake, &mut seq, 20_000).await;
    let flushed = 2;
    let third = lake.events.compact().await.unwrap();
    assert_eq!(third.files_replaced, 2 + flushed);
    let live = live_files(&lake).await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_ne!(live[0].0, large);
    assert_eq!(live[0].2, Some(seq as usize));
    assert_each_event_once(&lake, seq).await;
    let by_user = scalar(
        &lake,
        "SELECT count(*) AS n FROM events WHERE user_id = 'u5'",
    )
    .await;
    // Seqs 5, 982, 1959, ... are u5's.
    let expected = (seq - 5) / 977 + 1;
    assert!(by_user.contains(&format!("| {expected} |")), "{by_user}");
}

/// Compaction rewrites every file: it must keep free text (emails, ids) out of footer
/// statistics as flushes do. Flushed files are LZ4 (fast to write), compacted ones ZSTD (small).
#[tokio::test]
async fn compacted_files_keep_the_flush_settings_but_compress_harder() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    for seq in 1..=3u64 {
        let mut e = event(&format!("m{seq}"), &format!("u{seq}"), 1.0);
        e.typed.email = Some(format!("person{seq}@example.mx"));
        lake.ingest(vec![(seq, Stored::Event(e).encode())]);
        lake.flush().await.unwrap();
    }
    let flushed: Vec<std::path::PathBuf> = std::fs::read_dir(lake.events.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|x| x == "parquet"))
        .collect();
    assert_eq!(flushed.len(), 3);
    lake.events.compact().await.unwrap();
    let rows = scalar(&lake, "SELECT count(DISTINCT email) AS n FROM events").await;
    assert!(rows.contains("| 3 |"), "{rows}");

    let compacted = events_files(&lake);
    assert_eq!(compacted.len(), 1, "three flushes compacted into one file");
    assert!(!flushed.contains(&compacted[0]));
    for (files, codec) in [(&flushed, "LZ4_RAW"), (&compacted, "ZSTD(ZstdLevel(1))")] {
        for file in files {
            let columns = parquet_columns(file);
            assert!(columns.iter().any(|(name, _, _)| name == "email"));
            for (name, written_with, has_statistics) in &columns {
                assert_eq!(written_with, codec, "{name} in {}", file.display());
                let free_text = crate::schema::FREE_TEXT_COLUMNS.contains(&name.as_str());
                assert_eq!(
                    *has_statistics,
                    !free_text,
                    "{name} in {}: statistics exactly where the settings allow them",
                    file.display()
                );
            }
        }
    }
}

/// The server tidies (compacts, deletes replaced files, trims the log) on its own thread while
/// flushes go on. Whichever commits last, every flushed row stays visible (the table handle
/// never goes back to a version without it), and both kinds of commit land: nothing written
/// twice, nothing replayed after a reopen, and flushes go on while the log is trimmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_go_on_while_a_tidy_runs() {
    let dir = tempfile::tempdir().unwrap();
    let lake = std::sync::Arc::new(Lake::open(dir.path()).await.unwrap());
    let mut seq = 0u64;
    let mut flush_one = async |lake: &Lake| {
        seq += 1;
        let e = event(&format!("m{seq}"), &format!("u{}", seq % 7), 1.0);
        lake.ingest(vec![(seq, Stored::Event(e).encode())]);
        assert_eq!(lake.flush().await.unwrap(), 1);
        seq
    };
    for _ in 0..30 {
        flush_one(&lake).await;
    }
    let small_files = events_files(&lake);
    assert_eq!(small_files.len(), 30);

    let mut flushed_while_compacting = 0;
    let log_dir = lake.events.path().join("_delta_log");
    for _round in 0..3 {
        // As if every commit so far were hours old: the log may be trimmed up to now.
        let hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600);
        for entry in std::fs::read_dir(&log_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let file = std::fs::File::options().write(true).open(&path).unwrap();
                file.set_modified(hours_ago).unwrap();
            }
        }
        let compacting = tokio::spawn({
            let lake = lake.clone();
            async move { lake.events.tidy(&Housekeeping::default()).await }
        });
        while !compacting.is_finished() {
            let written = flush_one(&lake).await;
            flushed_while_compacting += 1;
            let count = scalar(&lake, "SELECT count(*) AS n FROM events").await;
            assert!(
                count.contains(&format!("| {written} ")),
                "after seq {written}: {count}"
            );
        }
        let tidied = compacting.await.unwrap();
        assert!(tidied.failed.is_empty(), "{tidied:?}");
        assert!(tidied.files_compacted > 0, "{tidied:?}");
        assert!(tidied.log_entries_deleted > 0, "{tidied:?}");
        let written = flush_one(&lake).await;
        assert_each_event_once(&lake, written).await;
    }
    assert!(
        flushed_while_compacting > 0,
        "no flush overlapped a compaction"
    );
    let files = events_files(&lake);
    assert!(
        small_files.iter().all(|small| !files.contains(small)),
        "the first 30 flushes' files were compacted away: {files:?}"
    );

    let total = seq;
    drop(lake);
    let reopened = Lake::open(dir.path()).await.unwrap();
    assert_eq!(
        reopened.events.committed_seq(),
        total,
        "the last flush's journal position"
    );
    assert_each_event_once(&reopened, total).await;
}

/// Tidying bounds what a table leaves on disk: the files compaction replaced and log entries
/// before the newest checkpoint go once older than the policy keeps them, files no commit
/// refers to (an interrupted write's) go too, and every row stays, through a reopen.
#[tokio::test]
async fn tidying_deletes_replaced_files_and_old_log_entries_but_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    for seq in 1..=30u64 {
        let e = event(&format!("m{seq}"), &format!("u{seq}"), 1.0);
        lake.ingest(vec![(seq, Stored::Event(e).encode())]);
        lake.flush().await.unwrap();
    }
    let table_dir = lake.events.path().to_path_buf();
    let log_dir = table_dir.join("_delta_log");
    let parquet_on_disk = || {
        let mut files: Vec<_> = std::fs::read_dir(&table_dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|x| x == "parquet"))
            .collect();
        files.sort();
        files
    };
    let log_entries = || std::fs::read_dir(&log_dir).unwrap().count();
    let flushed = parquet_on_disk();
    assert_eq!(flushed.len(), 30);
    assert!(log_entries() >= 30, "a commit per flush");

    // What a flush killed between writing its file and committing leaves behind: one long ago,
    // one just now (perhaps a flush still running).
    let abandoned = table_dir.join("part-00000-abandoned-long-ago.parquet");
    let in_flight = table_dir.join("part-00000-written-just-now.parquet");
    for path in [&abandoned, &in_flight] {
        std::fs::copy(&flushed[0], path).unwrap();
    }
    // And what a write interrupted before it named its file leaves: staging files, which
    // listings (and so Delta's own cleanup) skip.
    let staged_long_ago = table_dir.join("part-00000-staged-long-ago.parquet#1");
    let commit_staged_long_ago = log_dir.join("00000000000000000999.json#1");
    let staged_just_now = table_dir.join("part-00000-staged-just-now.parquet#1");
    for path in [&staged_long_ago, &commit_staged_long_ago, &staged_just_now] {
        std::fs::write(path, b"partly written").unwrap();
    }
    for path in [&abandoned, &staged_long_ago, &commit_staged_long_ago] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600))
            .unwrap();
    }

    // The server's policy, right after a compaction: only the old stray file is old enough.
    let first = lake.events.tidy(&Housekeeping::default()).await;
    assert!(first.failed.is_empty(), "{first:?}");
    assert_eq!(first.files_compacted, 30);
    assert_eq!(first.files_deleted, 3, "{first:?}");
    assert!(!staged_long_ago.exists() && !commit_staged_long_ago.exists());
    assert!(staged_just_now.exists(), "a write may still be filling it");
    assert_eq!(
        first.log_entries_deleted, 0,
        "every entry is younger than kept"
    );
    assert!(!abandoned.exists());
    assert!(in_flight.exists());
    assert!(
        flushed.iter().all(|file| file.exists()),
        "replaced files are kept an hour"
    );
    assert_each_event_once(&lake, 30).await;

    // Once they are old enough: everything but the compacted file and the log's tail goes.
    let keep_nothing = Housekeeping {
        replaced_files_kept: std::time::Duration::ZERO,
        log_entries_kept: std::time::Duration::ZERO,
    };
    let second = lake.events.tidy(&keep_nothing).await;
    assert!(second.failed.is_empty(), "{second:?}");
    assert_eq!(
        second.files_compacted, 0,
        "nothing small is left to compact"
    );
    assert_eq!(second.files_deleted, 31, "{second:?}");
    assert!(
        staged_just_now.exists(),
        "staging files are kept an hour whatever the policy"
    );
    assert_eq!(
        parquet_on_disk(),
        events_files(&lake),
        "only the live file is left"
    );
    assert_eq!(parquet_on_disk().len(), 1);
    assert!(second.log_entries_deleted >= 30, "{second:?}");
    let left: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    // The checkpoint of the version before this tidy, that version's entry, the pointer to the
    // checkpoint, and the two entries deleting the replaced files added.
    assert!(left.len() <= 5, "{left:?}");
    assert_each_event_once(&lake, 30).await;

    // With nothing to compact or delete, no commit moves the table handle on: it must not
    // still read the history the trim deleted. Files already deleted are not counted again.
    for _ in 0..2 {
        let again = lake.events.tidy(&keep_nothing).await;
        assert!(again.failed.is_empty(), "{again:?}");
        assert_eq!((again.files_compacted, again.files_deleted), (0, 0));
        assert_each_event_once(&lake, 30).await;
    }

    // The journal position lives on in the checkpoint, and the table takes new flushes.
    drop(lake);
    let reopened = Lake::open(dir.path()).await.unwrap();
    assert_eq!(reopened.events.committed_seq(), 30);
    assert_each_event_once(&reopened, 30).await;
    let e = event("m31", "u31", 1.0);
    reopened.ingest(vec![(31, Stored::Event(e).encode())]);
    assert_eq!(reopened.flush().await.unwrap(), 1);
    drop(reopened);
    let again = Lake::open(dir.path()).await.unwrap();
    assert_eq!(again.events.committed_seq(), 31);
    assert_each_event_once(&again, 31).await;
}

/// The events table holds `events` rows, each with its own messageId.
async fn assert_each_event_once(lake: &Lake, events: u64) {
    let counts = scalar(
        lake,
        "SELECT count(*) AS n, count(DISTINCT message_id) AS d FROM events",
    )
    .await;
    assert!(
        counts.contains(&format!("| {events} | {events} |")),
        "{counts}"
    );
}

/// (event, ingest_seq) of every row of a Parquet file, in the file's order.
fn parquet_event_order(file: &std::path::Path) -> Vec<(String, u64)> {
    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::Int64Type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let event = batch.column_by_name("event").unwrap();
        let event = arrow::compute::cast(event, &arrow::datatypes::DataType::Utf8).unwrap();
        let event: &StringArray = event.as_string();
        let seq = batch.column_by_name("ingest_seq").unwrap();
        let seq = seq.as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            rows.push((event.value(row).to_string(), seq.value(row) as u64));
        }
    }
    rows
}

/// Bulk loads write each flush's rows in runs of one event name (journal order within a run),
/// so a scan for a few names can skip the other names' pages; the server's flushes keep journal
/// order.
#[tokio::test]
async fn clustered_flushes_write_rows_in_runs_of_event_names() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let names = ["Product Viewed", "Order Completed", "Cart Viewed"];
    let ingest = |first: u64| {
        let records = (first..first + 30)
            .map(|seq| {
                let mut e = event(&format!("m{seq}"), "u1", 1.0);
                e.event = Some(names[seq as usize % 3].to_string());
                (seq, Stored::Event(e).encode())
            })
            .collect();
        lake.ingest(records);
    };

    lake.events.cluster_flushes(true);
    ingest(1);
    lake.flush().await.unwrap();
    let clustered = parquet_event_order(&events_files(&lake)[0]);
    let mut expected: Vec<(String, u64)> = (1..=30)
        .map(|seq| (names[seq as usize % 3].to_string(), seq))
        .collect();
    expected.sort();
    assert_eq!(clustered, expected);

    lake.events.cluster_flushes(false);
    ingest(31);
    lake.flush().await.unwrap();
    let second = events_files(&lake)
        .into_iter()
        .map(|file| parquet_event_order(&file))
        .find(|rows| rows[0].1 == 31)
        .expect("the second flush's file");
    let in_journal_order: Vec<u64> = second.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(in_journal_order, (31..=60).collect::<Vec<_>>());
    let rows = scalar(&lake, "SELECT count(*) AS n FROM events").await;
    assert!(rows.contains("| 60 |"), "{rows}");
}

/// The position in `synced` of the first sync of `path` or of a staging file for it.
fn synced_at(synced: &[std::path::PathBuf], path: &std::path::Path) -> Option<usize> {
    let staged = format!("{}#", path.display());
    synced
        .iter()
        .position(|p| p == path || p.to_string_lossy().starts_with(&staged))
}

/// A flush's (and a compaction's) files are synced before the commit that names them, and the
/// commit before the call returns: so the journal may let go of the events once it has.
#[tokio::test]
async fn flushed_and_compacted_files_are_on_disk_before_their_commits_and_the_commits_before_return()
 {
    let dir = tempfile::tempdir().unwrap();
    let synced = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = synced.clone();
    let store =
        crate::synced_store::SyncedLocalStore::with_sync(std::sync::Arc::new(move |path, file| {
            seen.lock().unwrap().push(path.to_path_buf());
            file.sync_all()
        }));
    let lake = Lake::open_with_store(dir.path(), store).await.unwrap();
    let table_dir = dir.path().join("tables/events");
    let log_dir = table_dir.join("_delta_log");
    let commit = |version: u64| log_dir.join(format!("{version:020}.json"));

    let mut seq = 0;
    flush_rows(&lake, &mut seq, 5_000).await;
    let first = synced.lock().unwrap().clone();
    let [data] = &events_files(&lake)[..] else {
        panic!("one data file");
    };
    assert!(
        first.starts_with(&[dir.path().to_path_buf(), dir.path().join("tables")]),
        "the new table's directories are synced into their parents first: {first:?}"
    );
    let data_at = synced_at(&first, data).expect("the data file is synced");
    let commit_at = synced_at(&first, &commit(0)).expect("the commit is synced");
    assert!(data_at < commit_at, "{first:?}");
    assert!(
        first[data_at..commit_at].contains(&table_dir),
        "the data file's directory entry is synced before the commit: {first:?}"
    );
    assert!(
        first[commit_at..].contains(&log_dir),
        "the commit's directory entry is synced: {first:?}"
    );
    assert!(
        first[commit_at]
            .to_string_lossy()
            .starts_with(&format!("{}#", commit(0).display())),
        "the commit's contents are synced before it is named: {first:?}"
    );

    flush_rows(&lake, &mut seq, 5_000).await;
    synced.lock().unwrap().clear();
    let compacted = lake.events.compact().await.unwrap();
    assert_eq!((compacted.files_replaced, compacted.files_written), (2, 1));
    let during = synced.lock().unwrap().clone();
    let [merged] = &events_files(&lake)[..] else {
        panic!("one merged file");
    };
    let merged_at = synced_at(&during, merged).expect("the merged file is synced");
    let commit_at = synced_at(&during, &commit(2)).expect("the compaction's commit is synced");
    assert!(merged_at < commit_at, "{during:?}");
    assert_each_event_once(&lake, 10_000).await;
}

/// What a power cut leaves of a directory tree, as far as the syncs it saw say: each file with
/// the contents it had when last synced (empty if never), each directory with the entries it had
/// when last synced (none if never). Recorded by a store's sync hook.
#[derive(Default)]
struct SyncedDisk {
    contents: std::collections::HashMap<u64, Vec<u8>>,
    entries: std::collections::HashMap<std::path::PathBuf, Vec<(std::ffi::OsString, u64, bool)>>,
}

impl SyncedDisk {
    fn record(&mut self, path: &std::path::Path, file: &std::fs::File) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata()?;
        if meta.is_dir() {
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(path)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                entries.push((entry.file_name(), meta.ino(), meta.is_dir()));
            }
            self.entries.insert(path.to_path_buf(), entries);
        } else {
            self.contents.insert(meta.ino(), std::fs::read(path)?);
        }
        Ok(())
    }

    /// Writes what would be found under `from` after the cut into `into`.
    fn after_power_cut(&self, from: &std::path::Path, into: &std::path::Path) {
        for (name, ino, is_dir) in self.entries.get(from).into_iter().flatten() {
            if *is_dir {
                std::fs::create_dir(into.join(name)).unwrap();
                self.after_power_cut(&from.join(name), &into.join(name));
            } else {
                let contents = self.contents.get(ino).map_or(&[][..], Vec::as_slice);
                std::fs::write(into.join(name), contents).unwrap();
            }
        }
    }
}

/// A power cut right after flushes and a tidy return loses none of their rows, and the tables it
/// leaves open and read cleanly: no commit names a file that came back empty, and the
/// checkpoint and merged file a trimmed log depends on are there.
#[tokio::test]
async fn what_flushes_and_a_tidy_wrote_survives_a_power_cut_after_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let disk = std::sync::Arc::new(std::sync::Mutex::new(SyncedDisk::default()));
    let recorder = disk.clone();
    let store =
        crate::synced_store::SyncedLocalStore::with_sync(std::sync::Arc::new(move |path, file| {
            file.sync_all()?;
            recorder.lock().unwrap().record(path, file)
        }));
    let lake = Lake::open_with_store(dir.path(), store).await.unwrap();
    let mut seq = 0;
    for rows in [3_000, 2_000, 1] {
        flush_rows(&lake, &mut seq, rows).await;
    }
    lake.ingest(vec![(seq + 1, Stored::Rejected(rejection(1)).encode())]);
    lake.flush().await.unwrap();
    // A tidy that keeps nothing: checkpoint, merge, delete the merged files and the old log
    // entries at once, so only what it wrote is left to read them from.
    let keep_nothing = Housekeeping {
        replaced_files_kept: std::time::Duration::ZERO,
        log_entries_kept: std::time::Duration::ZERO,
    };
    let tidied = lake.events.tidy(&keep_nothing).await;
    assert!(tidied.failed.is_empty(), "{tidied:?}");
    assert!(tidied.files_compacted >= 2, "{tidied:?}");
    assert!(tidied.files_deleted >= 2, "{tidied:?}");
    flush_rows(&lake, &mut seq, 500).await;
    drop(lake);

    let survivor = tempfile::tempdir().unwrap();
    disk.lock()
        .unwrap()
        .after_power_cut(dir.path(), survivor.path());
    let reopened = Lake::open(survivor.path()).await.unwrap();
    assert_each_event_once(&reopened, 5_501).await;
    let rejected = scalar(&reopened, "SELECT count(*) AS n FROM rejected_events").await;
    assert!(rejected.contains("| 1 |"), "{rejected}");
    assert_eq!(reopened.events.committed_seq(), seq);
}

/// A server killed while its first flush created a table leaves `_delta_log` without a commit:
/// empty, or holding only a commit still being written (a temporary file). Such a table was
/// never created, and its rows are still in the journal: opening must treat it as absent (it once
/// refused to start, "Not a Delta table"), and the next flush creates it.
#[tokio::test]
async fn a_table_whose_creation_was_cut_short_is_created_again() {
    let dir = tempfile::tempdir().unwrap();
    let tables = dir.path().join("tables");
    let events_log = tables.join("events").join("_delta_log");
    std::fs::create_dir_all(&events_log).unwrap();
    std::fs::write(
        events_log.join("_commit_6f1e2a0c.json.tmp"),
        br#"{"commitInfo":{"#,
    )
    .unwrap();
    std::fs::create_dir_all(tables.join("rejected_events").join("_delta_log")).unwrap();

    let lake = Lake::open(dir.path())
        .await
        .expect("the data directory opens");
    assert_eq!(lake.replay_after(), 0, "replay starts from the beginning");
    lake.ingest(vec![
        (1, Stored::Event(event("m1", "ana", 10.0)).encode()),
        (2, Stored::Rejected(rejection(1)).encode()),
        (3, Stored::Event(event("m3", "ben", 5.5)).encode()),
    ]);
    assert_eq!(lake.flush().await.unwrap(), 3);

    let reopened = Lake::open(dir.path()).await.unwrap();
    assert_eq!(reopened.events.committed_seq(), 3);
    assert_eq!(reopened.rejected.committed_seq(), 2);
    let counted = scalar(&reopened, "SELECT count(*) AS n FROM events").await;
    assert!(counted.contains("| 2 |"), "{counted}");
}

#[test]
fn delta_log_entries_are_told_from_other_files() {
    use crate::table::is_log_entry;
    for name in [
        "00000000000000000000.json",
        "00000000000000000123.json",
        "00000000000000000010.checkpoint.parquet",
        "00000000000000000010.checkpoint.0000000001.0000000002.parquet",
        "_last_checkpoint",
    ] {
        assert!(is_log_entry(name), "{name}");
    }
    for name in [
        "_commit_6f1e2a0c.json.tmp",
        "0000000000000000000.json",
        "0000000000000000000a.json",
        "00000000000000000000.json.tmp",
        "00000000000000000000.crc",
        "",
        "é",
    ] {
        assert!(!is_log_entry(name), "{name}");
    }
}

/// A damaged commit is not something the server can repair by itself; the error says which
/// table, and where in it to look.
#[tokio::test]
async fn a_damaged_commit_names_its_table() {
    let dir = tempfile::tempdir().unwrap();
    {
        let lake = Lake::open(dir.path()).await.unwrap();
        lake.ingest(vec![(1, Stored::Event(event("m1", "ana", 10.0)).encode())]);
        lake.flush().await.unwrap();
    }
    let table = dir.path().join("tables").join("events");
    let log = table.join("_delta_log");
    let mut commits: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    std::fs::write(commits.last().unwrap(), b"broken{").unwrap();
    let Err(err) = Lake::open(dir.path()).await else {
        panic!("a damaged log opened");
    };
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "delta lake error: the table at {} cannot be read (",
            table.display()
        )) && message.ends_with("a file in its _delta_log may be damaged"),
        "{message}"
    );
}

/// A constant is copied onto each row of a batch: a large one once panicked in Arrow ("offset
/// overflow") or took gigabytes outside the memory limit.
#[tokio::test]
async fn a_constant_too_large_to_copy_onto_a_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits::default();
    let sql = format!(
        "SELECT max(x) FROM (SELECT '{}' AS x, value FROM generate_series(1, 10000)) WHERE value > 0",
        "a".repeat(300_000)
    );
    let result = lake.query(&sql, &limits).await;
    let Err(QueryError::Invalid(message)) = result else {
        panic!("expected a refusal, got {:?}", result.map(|r| r.num_rows()));
    };
    assert!(
        message.starts_with("the query holds a constant of 300")
            && message.contains(
                "bytes; a constant is copied onto each of a batch's 8192 rows, so one may hold \
                 at most 16384 bytes"
            ),
        "{message}"
    );
    // Constants of an ordinary size are untouched.
    let sql = format!("SELECT length('{}') AS n", "a".repeat(10_000));
    let result = lake.query(&sql, &limits).await.unwrap();
    assert_eq!(
        crate::output::to_json(&result).unwrap()["rows"],
        serde_json::json!([[10000]])
    );
}

/// Short queries whose plans double at each level once written out (a CTE read twice by the
/// next, a struct built from the one before twice) took minutes and gigabytes to plan, outside
/// the time and memory limits. They are refused before planning; the same shapes a few levels
/// deep are answered.
#[test]
fn plans_that_double_when_written_out_are_refused_before_planning() {
    on_query_threads(plans_that_double());
}

/// Runs `work` on threads with the stack the server's query threads have: the engine plans
/// nested queries by recursion deeper than a test thread's stack.
fn on_query_threads(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(crate::query::QUERY_THREAD_STACK_BYTES)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(runtime.spawn(work)).unwrap();
}

async fn plans_that_double() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits::default();
    let structs = |levels: usize| {
        let mut sql = "WITH t0 AS (SELECT 1 AS s)".to_string();
        for level in 1..=levels {
            let before = level - 1;
            sql += &format!(", t{level} AS (SELECT struct(s AS a, s AS b) AS s FROM t{before})");
        }
        sql + &format!(" SELECT s FROM t{levels}")
    };
    let unions = |levels: usize, first: &str| {
        let mut sql = format!("WITH t0 AS ({first})");
        for level in 1..=levels {
            let before = level - 1;
            sql += &format!(
                ", t{level} AS (SELECT x FROM t{before} UNION ALL SELECT x FROM t{before})"
            );
        }
        sql + &format!(" SELECT count(*) AS n FROM t{levels}")
    };
    let listed: Vec<String> = (0..5_000).map(|i| i.to_string()).collect();
    let long_first = format!(
        "SELECT value AS x FROM generate_series(1, 3) WHERE value IN ({})",
        listed.join(", ")
    );
    let refused = [
        (
            structs(16),
            "the column `s` holds more than 10000 values side by side",
        ),
        (
            unions(20, "SELECT 1 AS x"),
            "the CTE `t9`, with each CTE it reads written out where it is read, reads CTEs \
             more than 1000 times",
        ),
        // Few readings of a long CTE: the plan written out holds 64 lists of 5,000 values.
        (
            unions(6, &long_first),
            "the query's plan, with each CTE and subquery written out where it is used, holds \
             more than 200000 steps, expressions and columns",
        ),
    ];
    // The optimizer repeats what coalesce and BETWEEN test, and puts a filter's columns' own
    // expressions in their place when it pushes it below the subqueries that made them.
    let nested = |levels: usize, open: &str, close: &str, inner: &str| {
        format!("{}{inner}{}", open.repeat(levels), close.repeat(levels))
    };
    let mut derived = "SELECT value AS a0 FROM generate_series(1, 3)".to_string();
    for level in 1..=21 {
        let before = level - 1;
        derived = format!("SELECT a{before} + a{before} AS a{level} FROM ({derived})");
    }
    let expression = "an expression of the query, with the columns in it written out as the \
                      expressions they stand for, holds more than 100000 parts";
    let derived_column = "the column `a21` stands for an expression of more than 100000 parts \
                          once the expressions it is made from, level by level, are written out";
    let refused = refused.into_iter().chain([
        (
            format!(
                "SELECT count(*) FROM generate_series(1, 3) WHERE 'a' = {}",
                nested(23, "coalesce(", ", 'x')", "CAST(value AS VARCHAR)")
            ),
            expression,
        ),
        (
            format!(
                "SELECT count(*) FROM generate_series(1, 3) WHERE {}",
                nested(20, "(", " BETWEEN false AND true)", "value > 0")
            ),
            expression,
        ),
        (
            format!("SELECT count(*) FROM ({derived}) WHERE a21 > 0"),
            derived_column,
        ),
        // HAVING on a grouping column is pushed down as WHERE is; what ORDER BY compares is
        // pushed into the scan as a filter too.
        (
            format!("SELECT a21, count(*) FROM ({derived}) GROUP BY a21 HAVING a21 > 0"),
            derived_column,
        ),
        (
            format!("SELECT a21 FROM ({derived}) ORDER BY a21 LIMIT 3"),
            derived_column,
        ),
        (
            "SELECT count(*) FROM generate_series(1, 3) GROUP BY CUBE(value, value + 1, \
             value + 2, value + 3, value + 4, value + 5, value + 6, value + 7, value + 8)"
                .to_string(),
            "GROUP BY CUBE of 9 columns groups every row in each of their 512 combinations",
        ),
    ]);
    for (sql, expected) in refused {
        let result = lake.query(&sql, &limits).await;
        let Err(QueryError::Invalid(message)) = result else {
            panic!(
                "{}: expected a refusal, got {:?}",
                &sql[..120],
                result.map(|r| r.num_rows())
            );
        };
        assert!(message.starts_with(expected), "{message}");
    }
    let json = |result: &QueryResult| crate::output::to_json(result).unwrap()["rows"].clone();
    let answered = lake
        .query(&unions(8, "SELECT 1 AS x"), &limits)
        .await
        .unwrap();
    assert_eq!(json(&answered), serde_json::json!([[256]]));
    let answered = lake.query(&unions(3, &long_first), &limits).await.unwrap();
    assert_eq!(json(&answered), serde_json::json!([[24]]));
    // The same shapes, shallow, are ordinary queries.
    let answered = lake
        .query(
            &format!(
                "SELECT count(*) FROM generate_series(1, 3) WHERE '1' = {} AND {}",
                nested(3, "coalesce(", ", 'x')", "CAST(value AS VARCHAR)"),
                nested(3, "(", " BETWEEN false AND true)", "value > 0")
            ),
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(json(&answered), serde_json::json!([[1]]));
    let answered = lake
        .query(
            "SELECT count(*) FROM (SELECT 1 FROM generate_series(1, 3) GROUP BY \
             CUBE(value, value + 1, value + 2)) AS c",
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(json(&answered), serde_json::json!([[22]]));
    let answered = lake.query(&structs(2), &limits).await.unwrap();
    assert_eq!(
        json(&answered),
        serde_json::json!([[{"a": {"a": 1, "b": 1}, "b": {"a": 1, "b": 1}}]])
    );
}

/// The functions held to a bound answer as DataFusion's own do, however they are called: by
/// name, as an array literal, or as `||` on lists.
#[tokio::test]
async fn bounded_functions_answer_within_their_bound() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let result = lake
        .query(
            "SELECT [1, 2] || [3] AS joined, [value, value * 2] AS literal, \
             array_to_string([1, NULL, 3], '-', '?') AS text, \
             array_to_string([[1, 2], [3]], ',') AS nested, \
             string_to_array('a,b', ',') AS parts, string_to_array('ab', NULL) AS letters, \
             overlay('Txxxxas' PLACING 'hom' FROM 2 FOR 4) AS name \
             FROM generate_series(2, 2)",
            &QueryLimits::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        crate::output::to_json(&result).unwrap()["rows"],
        json!([[
            [1, 2, 3],
            [2, 4],
            "1-?-3",
            "1,2,3",
            ["a", "b"],
            ["a", "b"],
            "Thomas"
        ]])
    );
}

/// A join copies a row once for each row it is joined with, and an unnest once for each
/// element, building each batch in one step the memory limit does not see: a list of 5 million
/// values cross joined with a thousand rows took 17 GB before Arrow panicked. Windows and
/// scalar subqueries copy values too. Rows entering them are held to 64 KiB, 128 KiB for a join
/// on equal keys (a scalar subquery's value to what a constant may hold); ordinary rows pass.
#[tokio::test]
async fn large_rows_are_refused_where_joins_and_unnests_would_copy_them() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits::default();
    let refused = [
        (
            "SELECT sum(cardinality(c)) FROM (SELECT range(value * 5000000) AS c \
             FROM generate_series(1, 1)) CROSS JOIN generate_series(1, 1000)",
            "a row of 39062 KiB (row 0 of a batch) enters a join, which copies it once for each \
             row it is joined with; a row there may hold at most 64 KiB",
        ),
        (
            "SELECT sum(length(big)) FROM (SELECT value % 2 AS k, repeat('x', value * 300000) \
             AS big FROM generate_series(1, 3)) a JOIN generate_series(1, 100) b \
             ON a.k = b.value % 2",
            "a row of 878 KiB (row 2 of a batch) enters a join",
        ),
        (
            "SELECT max(length(big)) FROM (SELECT repeat('x', value * 300000) AS big, \
             unnest(range(value * 1000)) AS n FROM generate_series(1, 1))",
            "a row of 300 KiB (row 0 of a batch) enters an unnest, which copies it once for each \
             element it unnests",
        ),
        // A cross join copies every row onto every other: rows entering it are held to less
        // than those entering a join on equal keys (below, answered).
        (
            "SELECT max(length(big)) FROM (SELECT repeat('x', value * 100000) AS big \
             FROM generate_series(1, 1)) CROSS JOIN generate_series(1, 10)",
            "a row of 97 KiB (row 0 of a batch) enters a join, which copies it once for each row \
             it is joined with; a row there may hold at most 64 KiB",
        ),
        // A window copies a value onto the rows of its frame.
        (
            "SELECT max(length(fv)) FROM (SELECT first_value(s) OVER (ORDER BY k ROWS BETWEEN \
             UNBOUNDED PRECEDING AND CURRENT ROW) AS fv FROM (SELECT value AS k, CASE WHEN \
             value = 1 THEN repeat('x', value * 100000) END AS s FROM generate_series(1, 10)))",
            "a row of 97 KiB (row 0 of a batch) enters a window function",
        ),
        // A scalar subquery's value is copied onto each row, as a constant is.
        (
            "SELECT max(length(x)) FROM (SELECT (SELECT max(repeat('x', value * 20000)) \
             FROM generate_series(1, 1)) AS x FROM generate_series(1, 10))",
            "a row of 19 KiB (row 0 of a batch) enters the query as the value of a scalar \
             subquery, which is copied onto each row of every batch it is used in; a row there \
             may hold at most 16 KiB",
        ),
    ];
    for (sql, expected) in refused {
        let result = lake.query(sql, &limits).await;
        let Err(QueryError::Invalid(message)) = result else {
            panic!(
                "{sql}: expected a refusal, got {:?}",
                result.map(|r| r.num_rows())
            );
        };
        assert!(message.starts_with(expected), "{sql}: {message}");
    }
    let json = |result: &QueryResult| crate::output::to_json(result).unwrap()["rows"].clone();
    let answered = lake
        .query(
            "SELECT count(*) AS n, sum(length(big)) AS bytes FROM (SELECT value % 2 AS k, \
             repeat('x', value * 30000) AS big FROM generate_series(1, 2)) a \
             JOIN generate_series(1, 100) b ON a.k = b.value % 2",
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(json(&answered), json!([[100, 4_500_000]]));
    let answered = lake
        .query(
            "SELECT count(*) AS n, sum(length(big)) AS bytes FROM (SELECT value AS k, \
             repeat('x', value * 100000) AS big FROM generate_series(1, 1)) a \
             JOIN generate_series(1, 3) b ON a.k = b.value",
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(json(&answered), json!([[1, 100_000]]));
    let answered = lake
        .query(
            "SELECT (SELECT max(value) FROM generate_series(1, 5)) AS m, \
             first_value(value) OVER (ORDER BY value) AS f FROM generate_series(1, 2)",
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(json(&answered), json!([[5, 1], [5, 1]]));
    let answered = lake
        .query(
            "SELECT count(*) AS n FROM (SELECT unnest(range(value * 1000)) AS n \
             FROM generate_series(1, 3))",
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(json(&answered), json!([[6000]]));
}

/// A filter on a constant column above an aggregate without GROUP BY was moved below it by
/// DataFusion, so the aggregate counted no rows and answered anyway: a funnel written as a
/// UNION ALL of counts, filtered by step, answered every step. The same for the empty grouping
/// set, and for nulls a grouping set makes.
#[tokio::test]
async fn filters_above_aggregates_that_make_their_own_rows_filter_them() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    let limits = QueryLimits::default();
    let rows = |sql: &'static str| {
        let lake = &lake;
        let limits = &limits;
        async move {
            let result = lake.query(sql, limits).await.unwrap();
            crate::output::to_json(&result).unwrap()["rows"].clone()
        }
    };
    let funnel = "SELECT step, n FROM (SELECT 1 AS step, count(*) AS n FROM generate_series(1, 5) \
                  UNION ALL SELECT 2 AS step, count(*) AS n FROM generate_series(1, 3)) \
                  WHERE step = 1";
    assert_eq!(rows(funnel).await, json!([[1, 5]]));
    assert_eq!(
        rows(
            "SELECT * FROM (SELECT 2 AS step, count(*) AS n FROM generate_series(1, 5)) \
              WHERE step = 1"
        )
        .await,
        json!([])
    );
    assert_eq!(
        rows("SELECT count(*) AS n FROM generate_series(1, 5) HAVING 1 = 0").await,
        json!([])
    );
    assert_eq!(
        rows(
            "SELECT a, n FROM (SELECT value % 2 AS a, count(*) AS n FROM generate_series(1, 5) \
              GROUP BY GROUPING SETS ((), (value % 2))) WHERE a IS NOT NULL ORDER BY a"
        )
        .await,
        json!([[0, 2], [1, 3]])
    );
    // Filters on grouping columns of an ordinary GROUP BY still answer as before.
    assert_eq!(
        rows(
            "SELECT a, n FROM (SELECT value % 2 AS a, count(*) AS n FROM generate_series(1, 5) \
              GROUP BY value % 2) WHERE a = 1"
        )
        .await,
        json!([[1, 3]])
    );
}
