//! The columns of Kith's tables, and the conversion of stored records into Arrow batches.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use kith_core::{Event, Rejection};

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `events`: one row per accepted event. JSON objects are text (query them with `json_get_str`
/// and friends); the most used fields also have typed columns.
pub static EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("ingest_seq", DataType::Int64, false),
        Field::new("message_id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, true),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("anonymous_id", DataType::Utf8, true),
        Field::new("group_id", DataType::Utf8, true),
        Field::new("previous_id", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, false),
        Field::new("timestamp", timestamp_type(), false),
        Field::new("original_timestamp", timestamp_type(), true),
        Field::new("sent_at", timestamp_type(), true),
        Field::new("received_at", timestamp_type(), false),
        Field::new("properties", DataType::Utf8, true),
        Field::new("context", DataType::Utf8, true),
        Field::new("traits", DataType::Utf8, true),
        Field::new("integrations", DataType::Utf8, true),
        Field::new("extra", DataType::Utf8, true),
        Field::new("revenue", DataType::Float64, true),
        Field::new("currency", DataType::Utf8, true),
        Field::new("order_id", DataType::Utf8, true),
        Field::new("page_url", DataType::Utf8, true),
        Field::new("page_path", DataType::Utf8, true),
        Field::new("referrer", DataType::Utf8, true),
        Field::new("email", DataType::Utf8, true),
        Field::new("library_name", DataType::Utf8, true),
    ]))
});

/// `rejected_events`: every event Kith refused, with the reason and the event as it arrived.
pub static REJECTED_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("ingest_seq", DataType::Int64, false),
        Field::new("received_at", timestamp_type(), false),
        Field::new("source", DataType::Utf8, false),
        Field::new("batch_index", DataType::Int64, false),
        Field::new("code", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("field", DataType::Utf8, true),
        Field::new("message_id", DataType::Utf8, true),
        Field::new("raw", DataType::Utf8, false),
    ]))
});

/// Columns whose min/max statistics Delta may keep in its log. Personal identifiers (user ids,
/// emails, raw JSON) are deliberately absent: erasure must not leave them behind in the log.
pub const EVENTS_STATS_COLUMNS: &str =
    "ingest_seq,type,event,source,timestamp,received_at,revenue,currency";
pub const REJECTED_STATS_COLUMNS: &str = "ingest_seq,received_at,source,code";

/// Columns of long or unique free text (raw JSON, ids): dictionary encoding only wastes work on
/// them and min/max statistics say nothing useful (and would copy personal data into file footers).
pub const FREE_TEXT_COLUMNS: &[&str] = &[
    "message_id",
    "user_id",
    "anonymous_id",
    "previous_id",
    "email",
    "properties",
    "context",
    "traits",
    "integrations",
    "extra",
    "page_url",
    "referrer",
    "message",
    "raw",
];

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Builds an `events` batch from `(seq, event)` pairs.
pub fn events_batch(events: &[(u64, Event)]) -> RecordBatch {
    let n = events.len();
    let mut seq = Int64Builder::with_capacity(n);
    let mut strings: Vec<StringBuilder> = (0..7)
        .map(|_| StringBuilder::with_capacity(n, n * 16))
        .collect();
    let [
        message_id,
        kind,
        event_name,
        user_id,
        anonymous_id,
        group_id,
        previous_id,
    ] = &mut strings[..]
    else {
        unreachable!("seven builders")
    };
    let mut source = StringBuilder::with_capacity(n, n * 8);
    let mut timestamp = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut original = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut sent_at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut received = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut json_columns: Vec<StringBuilder> = (0..5)
        .map(|_| StringBuilder::with_capacity(n, n * 128))
        .collect();
    let mut revenue = Float64Builder::with_capacity(n);
    let mut typed_columns: Vec<StringBuilder> = (0..7)
        .map(|_| StringBuilder::with_capacity(n, n * 16))
        .collect();

    for (s, e) in events {
        seq.append_value(*s as i64);
        message_id.append_value(&e.message_id);
        kind.append_value(e.kind.as_str());
        event_name.append_option(e.event.as_deref());
        user_id.append_option(e.user_id.as_deref());
        anonymous_id.append_option(e.anonymous_id.as_deref());
        group_id.append_option(e.group_id.as_deref());
        previous_id.append_option(e.previous_id.as_deref());
        source.append_value(&e.source);
        timestamp.append_value(micros(e.timestamp));
        original.append_option(e.original_timestamp.map(micros));
        sent_at.append_option(e.sent_at.map(micros));
        received.append_value(micros(e.received_at));
        for (builder, value) in json_columns.iter_mut().zip([
            &e.properties,
            &e.context,
            &e.traits,
            &e.integrations,
            &e.extra,
        ]) {
            builder.append_option(value.as_deref());
        }
        let typed = &e.typed;
        revenue.append_option(typed.revenue);
        for (builder, value) in typed_columns.iter_mut().zip([
            &typed.currency,
            &typed.order_id,
            &typed.page_url,
            &typed.page_path,
            &typed.referrer,
            &typed.email,
            &typed.library_name,
        ]) {
            builder.append_option(value.as_deref());
        }
    }

    let mut columns: Vec<ArrayRef> = vec![Arc::new(seq.finish())];
    columns.extend(strings.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.push(Arc::new(source.finish()));
    for builder in [&mut timestamp, &mut original, &mut sent_at, &mut received] {
        columns.push(Arc::new(builder.finish()));
    }
    columns.extend(
        json_columns
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef),
    );
    columns.push(Arc::new(revenue.finish()));
    columns.extend(
        typed_columns
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef),
    );
    RecordBatch::try_new(EVENTS_SCHEMA.clone(), columns).expect("columns match the events schema")
}

/// Builds a `rejected_events` batch.
pub fn rejected_batch(rejections: &[(u64, Rejection)]) -> RecordBatch {
    let n = rejections.len();
    let mut seq = Int64Builder::with_capacity(n);
    let mut received = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut source = StringBuilder::new();
    let mut index = Int64Builder::with_capacity(n);
    let mut code = StringBuilder::new();
    let mut message = StringBuilder::new();
    let mut field = StringBuilder::new();
    let mut message_id = StringBuilder::new();
    let mut raw = StringBuilder::new();
    for (s, r) in rejections {
        seq.append_value(*s as i64);
        received.append_value(micros(r.received_at));
        source.append_value(&r.source);
        index.append_value(r.index as i64);
        code.append_value(&r.code);
        message.append_value(&r.message);
        field.append_option(r.field.as_deref());
        message_id.append_option(r.message_id.as_deref());
        raw.append_value(&r.raw);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(seq.finish()),
        Arc::new(received.finish()),
        Arc::new(source.finish()),
        Arc::new(index.finish()),
        Arc::new(code.finish()),
        Arc::new(message.finish()),
        Arc::new(field.finish()),
        Arc::new(message_id.finish()),
        Arc::new(raw.finish()),
    ];
    RecordBatch::try_new(REJECTED_SCHEMA.clone(), columns)
        .expect("columns match the rejected_events schema")
}
