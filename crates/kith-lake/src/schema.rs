//! The columns of Kith's tables, and the conversion of stored records into Arrow batches.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use kith_core::{Event, EventView, RejectionView};

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

/// Columns whose values rarely repeat within a file (sequence numbers, times to the
/// microsecond, order ids): a dictionary would hash every value only to be abandoned once it
/// outgrows its page. Their statistics stay (they are what prunes files).
pub const UNIQUE_VALUE_COLUMNS: &[&str] = &[
    "ingest_seq",
    "timestamp",
    "original_timestamp",
    "sent_at",
    "received_at",
    "order_id",
    "batch_index",
];

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

/// The string columns before the timestamps, in schema order.
fn id_strings<'a>(e: &EventView<'a>) -> [Option<&'a str>; 8] {
    [
        Some(e.message_id),
        Some(e.kind.as_str()),
        e.event,
        e.user_id,
        e.anonymous_id,
        e.group_id,
        e.previous_id,
        Some(e.source),
    ]
}

/// The JSON text columns, in schema order.
fn json_texts<'a>(e: &EventView<'a>) -> [Option<&'a str>; 5] {
    [e.properties, e.context, e.traits, e.integrations, e.extra]
}

/// The typed string columns after `revenue`, in schema order.
fn typed_strings<'a>(e: &EventView<'a>) -> [Option<&'a str>; 7] {
    let t = &e.typed;
    [
        t.currency,
        t.order_id,
        t.page_url,
        t.page_path,
        t.referrer,
        t.email,
        t.library_name,
    ]
}

/// One builder per column, sized exactly: growing a builder copies everything appended so far,
/// and at hundreds of thousands of rows per seal that copying was a large share of the work.
fn sized_builders<'a, const N: usize>(
    events: &[(u64, EventView<'a>)],
    columns: impl Fn(&EventView<'a>) -> [Option<&'a str>; N],
) -> [StringBuilder; N] {
    let mut bytes = [0usize; N];
    for (_, e) in events {
        for (total, value) in bytes.iter_mut().zip(columns(e)) {
            *total += value.map_or(0, str::len);
        }
    }
    bytes.map(|total| StringBuilder::with_capacity(events.len(), total))
}

fn append_all<const N: usize>(builders: &mut [StringBuilder; N], values: [Option<&str>; N]) {
    for (builder, value) in builders.iter_mut().zip(values) {
        builder.append_option(value);
    }
}

/// Builds an `events` batch from `(seq, event)` pairs.
pub fn events_batch(events: &[(u64, EventView<'_>)]) -> RecordBatch {
    let n = events.len();
    let mut seq = Int64Builder::with_capacity(n);
    let mut ids = sized_builders(events, id_strings);
    let mut timestamp = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut original = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut sent_at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut received = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut json = sized_builders(events, json_texts);
    let mut revenue = Float64Builder::with_capacity(n);
    let mut typed = sized_builders(events, typed_strings);

    for (s, e) in events {
        seq.append_value(*s as i64);
        append_all(&mut ids, id_strings(e));
        timestamp.append_value(e.timestamp);
        original.append_option(e.original_timestamp);
        sent_at.append_option(e.sent_at);
        received.append_value(e.received_at);
        append_all(&mut json, json_texts(e));
        revenue.append_option(e.typed.revenue);
        append_all(&mut typed, typed_strings(e));
    }

    let mut columns: Vec<ArrayRef> = vec![Arc::new(seq.finish())];
    columns.extend(ids.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    for builder in [&mut timestamp, &mut original, &mut sent_at, &mut received] {
        columns.push(Arc::new(builder.finish()));
    }
    columns.extend(json.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.push(Arc::new(revenue.finish()));
    columns.extend(typed.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    RecordBatch::try_new(EVENTS_SCHEMA.clone(), columns).expect("columns match the events schema")
}

/// Builds a `rejected_events` batch.
pub fn rejected_batch(rejections: &[(u64, RejectionView<'_>)]) -> RecordBatch {
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
        received.append_value(r.received_at);
        source.append_value(r.source);
        index.append_value(r.index as i64);
        code.append_value(r.code);
        message.append_value(r.message);
        field.append_option(r.field);
        message_id.append_option(r.message_id);
        raw.append_value(r.raw);
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

/// The inverse of [`events_batch`]: events read back from the table (for recomputations such as
/// backfilling a newly declared computed trait). Rows that do not fit the schema are skipped.
pub fn events_from_batch(batch: &RecordBatch) -> Vec<(u64, Event)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
    use kith_core::{MessageType, TypedFields};

    // Parquet scans may hand strings back as views; read them all as plain UTF-8.
    let columns: Option<Vec<ArrayRef>> = batch
        .columns()
        .iter()
        .map(|column| match column.data_type() {
            DataType::Utf8View | DataType::LargeUtf8 => {
                arrow::compute::cast(column, &DataType::Utf8).ok()
            }
            _ => Some(column.clone()),
        })
        .collect();
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View | DataType::LargeUtf8 => {
                Field::new(f.name(), DataType::Utf8, f.is_nullable())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    let Some(batch) =
        columns.and_then(|c| RecordBatch::try_new(Arc::new(Schema::new(fields)), c).ok())
    else {
        return Vec::new();
    };
    let batch = &batch;

    let text = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
    };
    let time = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
    };
    let (Some(seq), Some(message_id), Some(kind), Some(timestamp), Some(received)) = (
        batch
            .column_by_name("ingest_seq")
            .and_then(|c| c.as_primitive_opt::<Int64Type>()),
        text("message_id"),
        text("type"),
        time("timestamp"),
        time("received_at"),
    ) else {
        return Vec::new();
    };
    let optional = |name: &str, row: usize| {
        text(name).and_then(|c| (!c.is_null(row)).then(|| c.value(row).to_string()))
    };
    let optional_time = |name: &str, row: usize| {
        time(name)
            .and_then(|c| (!c.is_null(row)).then(|| c.value(row)))
            .and_then(DateTime::<Utc>::from_timestamp_micros)
    };
    let revenue = batch
        .column_by_name("revenue")
        .and_then(|c| c.as_primitive_opt::<Float64Type>());
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let Some(kind) = MessageType::from_name(kind.value(row)) else {
            continue;
        };
        let (Some(at), Some(received_at)) = (
            DateTime::<Utc>::from_timestamp_micros(timestamp.value(row)),
            DateTime::<Utc>::from_timestamp_micros(received.value(row)),
        ) else {
            continue;
        };
        let event = Event {
            message_id: message_id.value(row).to_string(),
            kind,
            event: optional("event", row),
            user_id: optional("user_id", row),
            anonymous_id: optional("anonymous_id", row),
            group_id: optional("group_id", row),
            previous_id: optional("previous_id", row),
            source: optional("source", row).unwrap_or_default(),
            timestamp: at,
            original_timestamp: optional_time("original_timestamp", row),
            sent_at: optional_time("sent_at", row),
            received_at,
            properties: optional("properties", row),
            context: optional("context", row),
            traits: optional("traits", row),
            integrations: optional("integrations", row),
            extra: optional("extra", row),
            typed: TypedFields {
                revenue: revenue.and_then(|c| (!c.is_null(row)).then(|| c.value(row))),
                currency: optional("currency", row),
                order_id: optional("order_id", row),
                page_url: optional("page_url", row),
                page_path: optional("page_path", row),
                referrer: optional("referrer", row),
                email: optional("email", row),
                library_name: optional("library_name", row),
                context_identity: None,
                context_names_ip: false,
            },
        };
        out.push((seq.value(row) as u64, event));
    }
    out
}
