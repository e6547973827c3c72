//! Customer 360: `GET /v1/profiles/{type}:{value}` and its timeline, and the `profiles` and
//! `profile_identities` SQL tables.

use std::sync::{Arc, LazyLock, OnceLock};

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use kith_analytics::identities::IdentityIndex;
use kith_analytics::segment::ProfilePath;
use kith_analytics::{Data, ProfileSource};
use kith_core::MessageType;
use kith_identity::Lookup;
use kith_lake::{ExtraTable, QueryError, QueryLimits, TimelineQuery, output};
use kith_profiles::{LookupError, ProfileStore, ProfileView};
use kith_state::KeyScope;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::app::AppState;
use crate::auth::key_from_headers;
use crate::errors::{ApiError, ErrorCode};
use crate::ingest::json_body;
use crate::merge::{MergeError, merge_profiles};
use crate::query::query_error;

fn lookup_error(err: LookupError) -> ApiError {
    match err {
        LookupError::Unreadable(_) => storage_error(&err),
        _ => ApiError::new(ErrorCode::InvalidProfileLookup, err.to_string()),
    }
}

/// `profiles.db` could not be read: not the request's fault, and worth retrying.
fn storage_error(err: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %err, "reading profiles failed");
    ApiError::new(
        ErrorCode::StorageUnavailable,
        format!("{err}; try again shortly, and see the server log if it persists"),
    )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// Two `type:value` lookups, one for each profile.
    profiles: Vec<String>,
}

/// `POST /v1/profiles/merge`: a person confirms two profiles are one customer.
#[utoipa::path(post, path = "/v1/profiles/merge", tag = "profiles",
    request_body = MergeRequest,
    description = "Merges the profiles holding two identifiers, as confirmed by a person (e.g. a duplicate candidate). The merge is recorded with reason `manual` and survives restarts. The identity guards still apply. Auth: admin key.",
    responses((status = 200, description = "`{merged, profile}`; `merged` is false, with a `reason`, when both already named one profile"), (status = 400, description = "malformed body or lookup"), (status = 404, description = "no profile holds an identifier"), (status = 409, description = "the guards refuse the merge")))]
pub async fn merge(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Admin)?;
    let request: MergeRequest = json_body(
        &headers,
        body,
        r#"{"profiles": ["email:ana@example.com", "user_id:u-1"]}"#,
    )
    .await?;
    let [first, second] = request.profiles.as_slice() else {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!(
                "`profiles` must list exactly two `type:value` lookups, got {}",
                request.profiles.len()
            ),
        ));
    };
    let merged = merge_profiles(&app.pipeline, first, second)
        .await
        .map_err(merge_error)?;
    let mut answer = json!({
        "merged": merged.changed,
        "profile": profile_json(&app.pipeline.profiles, &merged.profile),
    });
    if !merged.changed {
        // Said in words too: `merged: false` alone reads like a refusal.
        answer["reason"] = json!(format!(
            "`{first}` and `{second}` already name one profile; nothing was changed"
        ));
    }
    Ok(Json(answer))
}

fn merge_error(err: MergeError) -> ApiError {
    match err {
        MergeError::Lookup(LookupError::Unreadable(_)) => storage_error(&err),
        MergeError::Malformed(..) | MergeError::Lookup(_) => {
            ApiError::new(ErrorCode::InvalidProfileLookup, err.to_string())
        }
        MergeError::NotFound(_) => ApiError::new(ErrorCode::ProfileNotFound, err.to_string()),
        MergeError::Refused(_) => ApiError::new(ErrorCode::MergeRefused, err.to_string()),
        MergeError::Journal(e) => crate::ingest::journal_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DuplicateParams {
    /// Lowest score listed, 0–1 (default 0.5).
    min_score: Option<f64>,
    /// Most candidates listed, 1–1000 (default 100).
    limit: Option<usize>,
}

/// `GET /v1/profiles/duplicates`.
#[utoipa::path(get, path = "/v1/profiles/duplicates", tag = "profiles",
    params(
        ("min_score" = Option<f64>, Query, description = "lowest score listed, 0–1 (default 0.5)"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "most candidates listed, 1–1000 (default 100)")),
    description = "Likely duplicates the identity rules do not merge (the same name in the same city, a mailbox name at two domains, the same phone digits under another name, a refused merge), best first, each with a score and the evidence. Confirm one with `POST /v1/profiles/merge`. Auth: read key.",
    responses((status = 200, description = "`{candidates: [{score, first, second, evidence}], total}`: the best `limit`, and how many scored `min_score` or more"), (status = 400, description = "bad parameter"), (status = 429, description = "no query thread was free to start the search within 10 s; retry after `Retry-After` seconds")))]
pub async fn duplicates(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<DuplicateParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Read)?;
    let Query(params) = params.map_err(|e| crate::params::typed_query_error(&e))?;
    let min_score = params.min_score.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&min_score) {
        return Err(parameter_error(format!(
            "`min_score` must be between 0 and 1, got {min_score}"
        )));
    }
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(parameter_error(format!(
            "`limit` must be between 1 and 1000, got {limit}"
        )));
    }
    let profiles = app.pipeline.profiles.clone();
    // Reading every profile is heavy work: on the query runtime, which gives the memory back
    // when it ends.
    let found = crate::runtimes::run_query_for_request("duplicate search", async move {
        profiles.find_duplicates(min_score, limit)
    })
    .await?
    .map_err(|e| storage_error(&e))?;
    let (candidates, total) = (found.candidates, found.total);
    Ok(Json(json!({"candidates": candidates, "total": total})))
}

/// Resolves the `{type}:{value}` path to a profile, or the API error saying why not.
fn find(app: &AppState, path: &str) -> Result<ProfileView, ApiError> {
    let lookup = Lookup::parse(path)
        .map_err(|e| ApiError::new(ErrorCode::InvalidProfileLookup, e.to_string()))?;
    app.pipeline
        .profiles
        .find(&lookup)
        .map_err(lookup_error)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::ProfileNotFound,
                format!("no profile holds {}:{}", lookup.type_name, lookup.value),
            )
        })
}

/// The profile as JSON, with its trait history.
pub fn profile_json(store: &ProfileStore, view: &ProfileView) -> Value {
    let mut body = serde_json::to_value(view).unwrap_or_default();
    let history = match store.trait_history(view) {
        Ok(history) => history
            .into_iter()
            .map(|h| {
                json!({
                    "trait": h.name,
                    "value": serde_json::from_str::<Value>(&h.json).unwrap_or(Value::Null),
                    "at": kith_profiles::view::format_micros(h.time_micros),
                    "message_id": h.message_id,
                    "identifier": h.identifier,
                })
            })
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "reading trait history failed");
            Vec::new()
        }
    };
    if let Some(map) = body.as_object_mut() {
        map.insert("trait_history".into(), Value::Array(history));
    }
    body
}

/// `GET /v1/profiles/{type}:{value}`.
#[utoipa::path(get, path = "/v1/profiles/{lookup}", tag = "profiles",
    params(("lookup" = String, Path, description = "`{type}:{value}`: type is profile_id, user_id, anonymous_id, email, phone or a declared external id type")),
    description = "The customer 360: identifiers, traits (last write wins by event time) and their history, built-in computed traits, consent, merge history and refused merges. Auth: read key.",
    responses((status = 200, description = "the profile"), (status = 400, description = "malformed lookup"), (status = 404, description = "no profile holds the identifier")))]
pub async fn show(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(lookup): Path<String>,
) -> Result<Json<Value>, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Read)?;
    let view = find(&app, &lookup)?;
    Ok(Json(profile_json(&app.pipeline.profiles, &view)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineParams {
    /// Events per page (1–500, default 50). Signed, so that a negative one is told the range.
    limit: Option<i64>,
    /// Comma-separated message types.
    #[serde(rename = "type")]
    types: Option<String>,
    event: Option<String>,
    /// The `next_before` cursor of the previous page.
    before: Option<String>,
    /// RFC 3339, or a date (its midnight in UTC): only events at or after this time.
    since: Option<String>,
}

fn parameter_error(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameter, message)
}

/// The message types `type` names (comma-separated, any case), each one Segment's: a type no
/// event can have would answer an empty page that looks like "no such events".
fn message_types(text: Option<&str>) -> Result<Vec<String>, ApiError> {
    let mut types = Vec::new();
    for named in text.iter().flat_map(|t| t.split(',')).map(str::trim) {
        if named.is_empty() {
            continue;
        }
        let Some(message_type) = MessageType::from_name(&named.to_ascii_lowercase()) else {
            let all: Vec<&str> = MessageType::ALL.iter().map(|t| t.as_str()).collect();
            return Err(parameter_error(format!(
                "`type` `{named}` is not a message type; use {}, comma-separated",
                all.join(", ")
            )));
        };
        types.push(message_type.as_str().to_string());
    }
    Ok(types)
}

/// `since` as microseconds: read as analyses read times (RFC 3339, or a date: its midnight in
/// UTC).
fn since_micros(text: &str) -> Result<i64, ApiError> {
    kith_analytics::scope::parse_utc_instant(text, "since")
        .map(|time| time.timestamp_micros())
        .map_err(|e| parameter_error(e.to_string()))
}

/// Cursor text: `{timestamp µs}_{message_id}`.
fn parse_cursor(text: &str) -> Result<(i64, String), ApiError> {
    let bad = || {
        parameter_error(format!(
            "`before` must be the `next_before` value of a previous page, got `{}`",
            kith_identity::excerpt(text)
        ))
    };
    let (micros, message_id) = text.split_once('_').ok_or_else(bad)?;
    let micros = micros.parse::<i64>().map_err(|_| bad())?;
    // Every stored event has a message id, so a cursor without one was not made by a page.
    if message_id.is_empty() {
        return Err(bad());
    }
    Ok((micros, message_id.to_string()))
}

/// `GET /v1/profiles/{type}:{value}/events`.
#[utoipa::path(get, path = "/v1/profiles/{lookup}/events", tag = "profiles",
    params(
        ("lookup" = String, Path, description = "`{type}:{value}` as for the profile"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 500, description = "events per page, 1–500 (default 50)"),
        ("type" = Option<String>, Query, description = "comma-separated message types, e.g. `track,page`"),
        ("event" = Option<String>, Query, description = "only this event name"),
        ("since" = Option<String>, Query, description = "RFC 3339, or a date (its midnight in UTC): only events at or after this time"),
        ("before" = Option<String>, Query, description = "the `next_before` cursor of the previous page")),
    description = "The profile's events (of all its user and anonymous ids, including those before a merge, and the records with neither that carry one of its emails, such as CRM contacts), newest first, a page at a time. Auth: read key.",
    responses((status = 200, description = "`{profile_id, events, next_before}`"), (status = 400, description = "malformed lookup or parameter"), (status = 404, description = "no profile holds the identifier"), (status = 429, description = "no query thread was free to start the timeline within 10 s; retry after `Retry-After` seconds")))]
pub async fn events(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(lookup): Path<String>,
    params: Result<Query<TimelineParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Read)?;
    let Query(params) = params.map_err(|e| crate::params::typed_query_error(&e))?;
    let view = find(&app, &lookup)?;
    let limit = params.limit.unwrap_or(50);
    let Some(limit) = usize::try_from(limit)
        .ok()
        .filter(|l| (1..=500).contains(l))
    else {
        return Err(parameter_error(format!(
            "`limit` must be between 1 and 500, got {limit}"
        )));
    };
    let since_micros = params.since.as_deref().map(since_micros).transpose()?;
    let mut query = TimelineQuery {
        types: message_types(params.types.as_deref())?,
        event: params.event.clone(),
        before: params.before.as_deref().map(parse_cursor).transpose()?,
        since_micros,
        limit,
        ..TimelineQuery::default()
    };
    for identifier in &view.identifiers {
        match identifier.id_type.as_str() {
            "user_id" => query.user_ids.push(identifier.value.clone()),
            "anonymous_id" => query.anonymous_ids.push(identifier.value.clone()),
            "email" => query.emails.push(identifier.value.clone()),
            _ => {}
        }
    }
    let limits = app.config.query_limits.clone();
    let lake = app.pipeline.lake.clone();
    let result = crate::runtimes::run_query_for_request("timeline", async move {
        lake.timeline(&query, &limits).await
    })
    .await?
    .map_err(query_error)?;
    let mut events = Vec::with_capacity(result.num_rows());
    for batch in &result.batches {
        for row in 0..batch.num_rows() {
            let mut object = Map::new();
            for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
                let mut value = output::json_value(column.as_ref(), row);
                // JSON columns come back as JSON, not as text holding JSON.
                if matches!(
                    field.name().as_str(),
                    "properties" | "context" | "traits" | "integrations" | "extra"
                ) && let Value::String(text) = &value
                {
                    value = serde_json::from_str(text).unwrap_or(value);
                }
                object.insert(field.name().clone(), value);
            }
            events.push(Value::Object(object));
        }
    }
    let next_before = if events.len() == limit {
        last_cursor(&result)
    } else {
        None
    };
    Ok(Json(json!({
        "profile_id": view.profile_id,
        "events": events,
        "next_before": next_before,
    })))
}

fn last_cursor(result: &kith_lake::QueryResult) -> Option<String> {
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampMicrosecondType;
    let batch = result.batches.iter().rev().find(|b| b.num_rows() > 0)?;
    let row = batch.num_rows() - 1;
    let timestamp = batch
        .column_by_name("timestamp")?
        .as_primitive_opt::<TimestampMicrosecondType>()?
        .value(row);
    // Through the JSON rendering: Delta scans may return the column as a string view.
    let message_id = output::json_value(batch.column_by_name("message_id")?.as_ref(), row);
    Some(format!("{timestamp}_{}", message_id.as_str()?))
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `profiles`: one row per profile, with the built-in computed traits and traits as JSON.
pub static PROFILES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("identifier_count", DataType::Int64, false),
        Field::new("first_seen", timestamp_type(), true),
        Field::new("last_seen", timestamp_type(), true),
        Field::new("event_count", DataType::Int64, false),
        Field::new("order_count", DataType::Int64, false),
        Field::new("total_revenue", DataType::Float64, false),
        Field::new("average_order_value", DataType::Float64, true),
        Field::new("traits", DataType::Utf8, false),
        Field::new("computed_traits", DataType::Utf8, false),
        Field::new("model_traits", DataType::Utf8, false),
        Field::new("consent", DataType::Utf8, true),
        Field::new("merge_count", DataType::Int64, false),
        Field::new("conflict_count", DataType::Int64, false),
    ]))
});

/// `profile_identities`: every identifier with the profile it belongs to now. Join it to
/// `events` on `user_id` / `anonymous_id` to attribute events to profiles, merges included.
pub static PROFILE_IDENTITIES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("id_type", DataType::Utf8, false),
        Field::new("id_value", DataType::Utf8, false),
        Field::new("first_seen", timestamp_type(), false),
    ]))
});

/// The profile tables `sql` may read, as they are now (they are built only for a query that may
/// read them, at a cost that grows with the profiles): those it names, or both when it names the
/// catalog (`SHOW TABLES`, `information_schema`). A misspelt name needs no tables: "no such
/// table" lists them anyway (see `Lake::name_tables_built_on_request`).
///
/// Building `profiles` is held to the query's time limit, on top of the query's own: a query
/// thread building it cannot be stopped from outside, and it takes about 20 µs a profile.
pub fn profile_tables_read_by(
    sql: &str,
    store: &ProfileStore,
    limits: &QueryLimits,
) -> Result<Vec<ExtraTable>, QueryError> {
    let sql = sql.to_ascii_lowercase();
    let catalog = ["show", "information_schema"]
        .iter()
        .any(|word| sql.contains(word));
    let [profiles, identities] = PROFILE_TABLE_NAMES.map(|name| catalog || sql.contains(name));
    let mut tables = Vec::new();
    // `profiles` builds every profile's view (a second at 50,000 profiles); `profile_identities`
    // only walks the identity graph, so a query of it alone is spared that.
    if profiles {
        tables.push(profiles_table(store, limits.timeout)?);
    }
    if identities {
        tables.push(identity_table(store));
    }
    Ok(tables)
}

/// The `profiles` table as it is now, unless building it takes longer than `limit`.
pub fn profiles_table(
    store: &ProfileStore,
    limit: std::time::Duration,
) -> Result<ExtraTable, QueryError> {
    let deadline = std::time::Instant::now().checked_add(limit);
    // One view at a time into the columns: all views at once cost gigabytes at hundreds of
    // thousands of profiles, several times the columns they fill.
    let mut profile_id = StringBuilder::new();
    let mut identifier_count = Int64Builder::new();
    let mut first_seen = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut last_seen = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut event_count = Int64Builder::new();
    let mut order_count = Int64Builder::new();
    let mut total_revenue = Float64Builder::new();
    let mut average_order_value = Float64Builder::new();
    let mut traits = StringBuilder::new();
    let mut computed_traits = StringBuilder::new();
    let mut model_traits = StringBuilder::new();
    let mut consent = StringBuilder::new();
    let mut merge_count = Int64Builder::new();
    let mut conflict_count = Int64Builder::new();
    let whole = store
        .for_each_view_until(deadline, |view| {
            let computed = &view.computed_traits;
            profile_id.append_value(&view.profile_id);
            identifier_count.append_value(view.identifiers.len() as i64);
            first_seen.append_option(computed.first_seen_micros);
            last_seen.append_option(computed.last_seen_micros);
            event_count.append_value(computed.event_count as i64);
            order_count.append_value(computed.order_count as i64);
            total_revenue.append_value(computed.total_revenue);
            average_order_value.append_option(computed.average_order_value);
            traits.append_value(serde_json::to_string(&view.traits).unwrap_or_default());
            // The declared ones (kith.toml or the API); the built-in ones have columns above.
            computed_traits
                .append_value(serde_json::to_string(&computed.declared).unwrap_or_default());
            model_traits
                .append_value(serde_json::to_string(&view.model_traits).unwrap_or_default());
            consent.append_option(view.consent.as_ref().map(|c| c.preferences.to_string()));
            merge_count.append_value(view.merges.len() as i64);
            conflict_count.append_value(view.conflicts.len() as i64);
        })
        .map_err(|e| QueryError::Internal(format!("the profiles could not be read: {e}")))?;
    if !whole {
        return Err(QueryError::TableTooSlow {
            table: PROFILE_TABLE_NAMES[0].into(),
            built: arrow::array::ArrayBuilder::len(&profile_id),
            rows: store.profile_count(),
            limit,
        });
    }
    let profiles: Vec<ArrayRef> = vec![
        Arc::new(profile_id.finish()),
        Arc::new(identifier_count.finish()),
        Arc::new(first_seen.finish()),
        Arc::new(last_seen.finish()),
        Arc::new(event_count.finish()),
        Arc::new(order_count.finish()),
        Arc::new(total_revenue.finish()),
        Arc::new(average_order_value.finish()),
        Arc::new(traits.finish()),
        Arc::new(computed_traits.finish()),
        Arc::new(model_traits.finish()),
        Arc::new(consent.finish()),
        Arc::new(merge_count.finish()),
        Arc::new(conflict_count.finish()),
    ];
    Ok(ExtraTable {
        name: PROFILE_TABLE_NAMES[0].into(),
        schema: PROFILES_SCHEMA.clone(),
        batches: vec![
            RecordBatch::try_new(PROFILES_SCHEMA.clone(), profiles)
                .expect("columns match the profiles schema"),
        ],
        shared: false,
    })
}

/// The last `profile_identities` built, with the profile store's applied seq it reflects: every
/// change to identities (an event, a merge) advances that seq, so an equal seq means the same
/// table. Analyses of a quiet store skip the rebuild (a quarter of a second at 200k profiles).
/// The hash index analyses build from the table on first use is kept with it.
#[derive(Default)]
pub struct IdentityTableCache {
    last: std::sync::Mutex<Option<(u64, IdentityTable)>>,
}

/// `profile_identities`, and its index once an analysis has built it.
pub type IdentityTable = (ExtraTable, Arc<OnceLock<IdentityIndex>>);

impl IdentityTableCache {
    pub fn get(&self, store: &ProfileStore) -> ExtraTable {
        self.get_indexed(store).0
    }

    /// The table with its (lazily built) index.
    pub fn get_indexed(&self, store: &ProfileStore) -> IdentityTable {
        // Read before building: a change during the build leaves a newer table under an older
        // seq, which the next call rebuilds; never an older table under a newer seq.
        let seq = store.applied_seq();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_at, table)) = last.as_ref()
            && *built_at == seq
        {
            return table.clone();
        }
        // Held by this cache for as long as no event changes it, and read by every analysis:
        // not one query's memory.
        let shared = ExtraTable {
            shared: true,
            ..identity_table(store)
        };
        let table = (shared, Arc::default());
        *last = Some((seq, table.clone()));
        table
    }

    /// What analyses read: the event tables, the identity table with its index, and the
    /// profiles segments are judged on.
    pub fn data<'a>(
        &self,
        lake: &'a kith_lake::Lake,
        store: &'a ProfileStore,
        limits: kith_lake::QueryLimits,
    ) -> Data<'a> {
        let (table, index) = self.get_indexed(store);
        Data {
            identities: index,
            ..Data::new(lake, vec![table], limits)
        }
        .with_profiles(Arc::new(ProfileViews(store)))
    }
}

/// The profile store as analyses judge segments on it: each profile as `GET /v1/profiles/{id}`
/// shows it (less its trait history).
pub struct ProfileViews<'a>(pub &'a ProfileStore);

impl ProfileSource for ProfileViews<'_> {
    fn for_each_profile(
        &self,
        fields: &[&ProfilePath],
        visit: &mut dyn FnMut(&str, &Value),
    ) -> Result<(), String> {
        // Segments on model traits and traits need no views: building views reads every
        // profile's stored facts one identifier at a time, several times slower at hundreds of
        // thousands of profiles (bench/README.md).
        let in_sections =
            |sections: &[&str]| fields.iter().all(|f| sections.contains(&f.section()));
        if in_sections(&["model_traits", "profile_id"]) {
            return self
                .0
                .for_each_model_traits(|profile_id, traits| {
                    let profile = json!({"profile_id": profile_id, "model_traits": traits});
                    visit(profile_id, &profile);
                })
                .map_err(|e| e.to_string());
        }
        if in_sections(&["traits", "model_traits", "profile_id"]) {
            let mut names: Vec<String> = fields
                .iter()
                .filter(|f| f.section() == "traits")
                .filter_map(|f| f.parts().get(1).cloned())
                .collect();
            names.sort_unstable();
            names.dedup();
            let mut scores = if fields.iter().any(|f| f.section() == "model_traits") {
                self.0.model_traits().all().map_err(|e| e.to_string())?
            } else {
                Default::default()
            };
            return self
                .0
                .for_each_traits(&names, |profile_id, traits| {
                    let traits: Map<String, Value> = traits
                        .iter()
                        .map(|(name, value)| (name.clone(), value.parsed()))
                        .collect();
                    let model_traits = scores.remove(profile_id).unwrap_or_default();
                    let profile = json!({"profile_id": profile_id, "traits": traits,
                                         "model_traits": model_traits});
                    visit(profile_id, &profile);
                })
                .map_err(|e| e.to_string());
        }
        let mut failed = None;
        self.0
            .for_each_view(|view| match serde_json::to_value(&view) {
                Ok(profile) => visit(&view.profile_id, &profile),
                Err(e) => {
                    failed.get_or_insert_with(|| format!("profile {}: {e}", view.profile_id));
                }
            })
            .map_err(|e| e.to_string())?;
        failed.map_or(Ok(()), Err)
    }
}

/// `profile_identities` alone: all that attributing events to profiles needs, built from the
/// resolver without the profiles' views (analyses use it; it is far cheaper than both tables).
pub fn identity_table(store: &ProfileStore) -> ExtraTable {
    // Sizes first, so each column is allocated once and exactly (growing by doubling left up
    // to half of each buffer unused: tens of megabytes at hundreds of thousands of customers).
    // Rows added between the two visits only make a column grow.
    let (mut rows, mut profile_bytes, mut type_bytes, mut value_bytes) = (0, 0, 0, 0);
    store.for_each_identity(|profile_id, kind, value, _| {
        rows += 1;
        profile_bytes += profile_id.len();
        type_bytes += kind.len();
        value_bytes += value.len();
    });
    let mut id_profile = StringBuilder::with_capacity(rows, profile_bytes);
    let mut id_type = StringBuilder::with_capacity(rows, type_bytes);
    let mut id_value = StringBuilder::with_capacity(rows, value_bytes);
    let mut id_first_seen = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
    store.for_each_identity(|profile_id, kind, value, first_seen| {
        id_profile.append_value(profile_id);
        id_type.append_value(kind);
        id_value.append_value(value);
        id_first_seen.append_value(first_seen);
    });
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id_profile.finish()),
        Arc::new(id_type.finish()),
        Arc::new(id_value.finish()),
        Arc::new(id_first_seen.finish()),
    ];
    ExtraTable {
        name: PROFILE_TABLE_NAMES[1].into(),
        schema: PROFILE_IDENTITIES_SCHEMA.clone(),
        batches: vec![
            RecordBatch::try_new(PROFILE_IDENTITIES_SCHEMA.clone(), columns)
                .expect("columns match the profile_identities schema"),
        ],
        shared: false,
    }
}

/// The tables [`profile_tables_read_by`] builds, for a query that may read them.
pub const PROFILE_TABLE_NAMES: [&str; 2] = ["profiles", "profile_identities"];

#[cfg(test)]
mod tests {
    use super::*;
    use kith_profiles::ProfileSettings;

    #[test]
    fn a_cursor_is_a_time_and_a_message_id_and_a_bad_one_is_shown_cut() {
        assert_eq!(
            parse_cursor("1767225600000000_m-1_b").unwrap(),
            (1_767_225_600_000_000, "m-1_b".to_string())
        );
        for text in ["1_", "yesterday", "_m-1", "x_m-1"] {
            let err = parse_cursor(text).unwrap_err().message;
            assert!(
                err.contains(&format!("previous page, got `{text}`")),
                "{text}: {err}"
            );
        }
        let long = format!("1_{}", "m".repeat(5000));
        assert!(parse_cursor(&long).is_ok());
        let err = parse_cursor(&"m".repeat(5000)).unwrap_err().message;
        assert!(
            err.ends_with(&format!("got `{}… (5000 bytes)`", "m".repeat(80))),
            "{err}"
        );
    }

    fn apply(store: &ProfileStore, seq: u64, user: &str, anonymous: &str) {
        let body = serde_json::json!({"batch": [
            {"type": "identify", "userId": user, "anonymousId": anonymous}
        ]})
        .to_string();
        let request = kith_core::parse_batch_request(&body).unwrap();
        let events = request.normalize("web", chrono::Utc::now()).events;
        store.apply_events(&[(seq, &events[0])]);
    }

    #[test]
    fn the_profile_tables_are_built_for_queries_that_name_them_or_the_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
        apply(&store, 1, "u-1", "a-1");
        let built = |sql: &str| -> Vec<(String, usize)> {
            profile_tables_read_by(sql, &store, &QueryLimits::default())
                .unwrap()
                .into_iter()
                .map(|table| (table.name, table.batches[0].num_rows()))
                .collect()
        };
        let both = [
            ("profiles".to_string(), 1),
            ("profile_identities".to_string(), 2),
        ];
        assert_eq!(built("SELECT * FROM profiles"), both[..1]);
        // Not the views when only the identities are read.
        assert_eq!(built("select count(*) from PROFILE_IDENTITIES"), both[1..]);
        for sql in [
            "SELECT * FROM profiles p JOIN profile_identities i USING (profile_id)",
            "SHOW TABLES",
            "SELECT * FROM information_schema.columns",
        ] {
            assert_eq!(built(sql), both, "{sql}");
        }
        // A misspelling is told the tables without building them.
        for sql in ["SELECT * FROM profile", "SELECT * FROM profils", "SELECT 1"] {
            assert_eq!(built(sql), [], "{sql}");
        }
    }

    // A query thread building `profiles` cannot be stopped from outside: the build is held to
    // the query's time limit, and a query past it is told which table, how far it got and what
    // to change. `profile_identities` is built all the same.
    #[test]
    fn building_the_profiles_table_is_held_to_the_query_time_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
        for n in 0..3 {
            apply(&store, n + 1, &format!("u-{n}"), &format!("a-{n}"));
        }
        let no_time = QueryLimits {
            timeout: std::time::Duration::ZERO,
            ..QueryLimits::default()
        };
        let Err(err) = profile_tables_read_by("SELECT * FROM profiles", &store, &no_time) else {
            panic!("built in no time");
        };
        let QueryError::TableTooSlow {
            table, built, rows, ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!((table.as_str(), *built, *rows), ("profiles", 0, 3));
        let message = err.to_string();
        for part in ["`profiles`", "0 of 3 rows", "[query] timeout_secs"] {
            assert!(message.contains(part), "{message}");
        }
        assert_eq!(query_error(err).code, ErrorCode::QueryTimeout);
        let identities =
            profile_tables_read_by("SELECT * FROM profile_identities", &store, &no_time).unwrap();
        assert_eq!(identities[0].batches[0].num_rows(), 6);
        let in_time =
            profile_tables_read_by("SELECT * FROM profiles", &store, &QueryLimits::default())
                .unwrap();
        assert_eq!(in_time[0].batches[0].num_rows(), 3);
    }

    #[test]
    fn the_identity_table_is_rebuilt_exactly_when_identities_may_have_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(dir.path(), ProfileSettings::default()).unwrap();
        let cache = IdentityTableCache::default();
        apply(&store, 1, "u-1", "a-1");
        let first = cache.get(&store);
        assert_eq!(first.batches[0].num_rows(), 2);
        // Nothing applied since: the very same table.
        let again = cache.get(&store);
        assert!(Arc::ptr_eq(
            first.batches[0].column(0),
            again.batches[0].column(0)
        ));
        // An event links another device: the next analysis sees it.
        apply(&store, 2, "u-1", "a-2");
        assert_eq!(cache.get(&store).batches[0].num_rows(), 3);
    }
}
