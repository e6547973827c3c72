//! Every metric Kith records, with what it measures. `/metrics` gives each its `# HELP` line,
//! and the counters without labels (and those whose labels take a known set of values, such as
//! refusal reasons) are there at 0 from the start, so that an alert on `rate()` or `absent()`
//! works before the first event of its kind. A test keeps the list and the code
//! in step.

/// What a metric is, as Prometheus says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: its name, kind, labels and meaning.
pub(crate) struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn metric(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

pub(crate) const METRICS: &[Metric] = &[
    // Collection.
    metric(
        "kith_events_received_total",
        Counter,
        &["source"],
        "Events received in requests that were read, valid or not, by the source of the write key.",
    ),
    metric(
        "kith_events_accepted_total",
        Counter,
        &["source"],
        "Events made durable and acknowledged, by source.",
    ),
    metric(
        "kith_events_rejected_total",
        Counter,
        &["reason"],
        "Events refused one by one inside a readable request (kept in rejected_events), by reason.",
    ),
    metric(
        "kith_events_deduplicated_total",
        Counter,
        &[],
        "Events whose messageId was already stored: acknowledged, stored once.",
    ),
    metric(
        "kith_ingest_backpressure_total",
        Counter,
        &[],
        "Requests answered 429 because identity resolution or the event tables were too far behind.",
    ),
    metric(
        "kith_pixel_parameters_ignored_total",
        Counter,
        &[],
        "Pixel query parameters beside `data` that were ignored.",
    ),
    metric(
        "kith_import_events_stored_total",
        Counter,
        &[],
        "Events stored by imports (POST /v1/imports).",
    ),
    // HTTP.
    metric(
        "kith_http_error_responses_total",
        Counter,
        &["code"],
        "Error answers, by error code (docs/errors.md): refused collection requests show here.",
    ),
    metric(
        "kith_http_unreadable_requests_total",
        Counter,
        &["status"],
        "Requests that were not readable HTTP, answered by the HTTP layer (400, 414, 431).",
    ),
    metric(
        "kith_http_heads_over_budget_total",
        Counter,
        &[],
        "HTTP/2 request heads refused because the requests being received held max_receiving_mb.",
    ),
    metric(
        "kith_http_bodies_over_budget_total",
        Counter,
        &[],
        "Request bodies refused because the bodies being received held max_receiving_mb.",
    ),
    metric(
        "kith_http_connections_at_limit_total",
        Counter,
        &[],
        "Times the server held all the connections it may serve, so new ones waited.",
    ),
    metric(
        "kith_http_connections_timed_out_total",
        Counter,
        &[],
        "Connections closed for keeping the server waiting past idle_connection_secs.",
    ),
    metric(
        "kith_http_accept_errors_total",
        Counter,
        &[],
        "Errors accepting connections (e.g. out of file descriptors).",
    ),
    metric(
        "kith_api_requests_total",
        Counter,
        &["route", "method", "status"],
        "Calls of the read and management API, by route pattern, method and status.",
    ),
    metric(
        "kith_api_request_seconds",
        Histogram,
        &["route", "method"],
        "Time to the answer's head of read and management API calls.",
    ),
    // The journal.
    metric(
        "kith_journal_fsyncs_total",
        Counter,
        &[],
        "fdatasync calls of the journal (each makes a group of events durable).",
    ),
    metric(
        "kith_journal_commit_seconds",
        Histogram,
        &[],
        "Time from a group of events being written to the journal to its fdatasync ending.",
    ),
    metric(
        "kith_journal_bytes_written_total",
        Counter,
        &[],
        "Bytes written to the journal.",
    ),
    metric(
        "kith_journal_write_errors_total",
        Counter,
        &[],
        "Failed journal writes (nothing they held was acknowledged).",
    ),
    metric(
        "kith_journal_overloaded_total",
        Counter,
        &[],
        "Appends refused because the journal's queue was full (answered 429).",
    ),
    metric(
        "kith_journal_segments_retired_total",
        Counter,
        &[],
        "Journal segments let go of once the event tables and profiles held their events.",
    ),
    metric(
        "kith_journal_segments_reused_total",
        Counter,
        &[],
        "Journal segment files written over instead of made anew.",
    ),
    metric(
        "kith_journal_damaged_segments_total",
        Counter,
        &[],
        "Journal segments found damaged on replay (their readable records kept).",
    ),
    metric(
        "kith_dedup_index_bytes",
        Gauge,
        &[],
        "Memory held by the messageId index that deduplicates events.",
    ),
    metric(
        "kith_dedup_runs_merged_total",
        Counter,
        &[],
        "Merges of the messageId index's runs on disk.",
    ),
    // The event tables.
    metric(
        "kith_lake_flushes_total",
        Counter,
        &["table"],
        "Flushes of buffered rows to the Delta tables, by table.",
    ),
    metric(
        "kith_lake_rows_flushed_total",
        Counter,
        &["table"],
        "Rows flushed to the Delta tables, by table.",
    ),
    metric(
        "kith_lake_flush_seconds",
        Histogram,
        &["table"],
        "Time one flush takes, by table.",
    ),
    metric(
        "kith_lake_flush_errors_total",
        Counter,
        &[],
        "Failed flushes (retried; the journal keeps the rows meanwhile).",
    ),
    metric(
        "kith_lake_compactions_total",
        Counter,
        &["table"],
        "Compactions of small Delta files, by table.",
    ),
    metric(
        "kith_lake_files_compacted_total",
        Counter,
        &["table"],
        "Delta files replaced by compaction, by table.",
    ),
    metric(
        "kith_lake_compacted_bytes_total",
        Counter,
        &["table"],
        "Bytes rewritten by compaction, by table.",
    ),
    metric(
        "kith_lake_compaction_seconds",
        Histogram,
        &["table"],
        "Time one compaction takes, by table.",
    ),
    metric(
        "kith_lake_files_deleted_total",
        Counter,
        &["table"],
        "Replaced Delta files deleted once no reader may need them, by table.",
    ),
    metric(
        "kith_lake_log_entries_deleted_total",
        Counter,
        &["table"],
        "Delta log entries deleted once checkpointed and old enough, by table.",
    ),
    metric(
        "kith_lake_undecodable_records_total",
        Counter,
        &[],
        "Journal records the event tables could not decode (a bug: the journal checksums every record).",
    ),
    // Queries.
    metric(
        "kith_query_seconds",
        Histogram,
        &[],
        "Time of answered queries a person waits for: SQL, and the queries analyses make (not model runs or recomputations).",
    ),
    metric(
        "kith_queries_total",
        Counter,
        &["outcome"],
        "SQL queries (POST /v1/query), by outcome: answered, or the error code.",
    ),
    metric(
        "kith_queries_turned_away_total",
        Counter,
        &[],
        "Requests turned away because no query thread was free to start them within 10 s.",
    ),
    metric(
        "kith_query_answers_abandoned_total",
        Counter,
        &[],
        "Answers given up because their client stopped reading.",
    ),
    metric(
        "kith_query_workers_started_total",
        Counter,
        &[],
        "Query worker processes started.",
    ),
    metric(
        "kith_query_workers_killed_total",
        Counter,
        &[],
        "Query worker processes killed for running past their query's time.",
    ),
    metric(
        "kith_query_workers_out_of_memory_total",
        Counter,
        &[],
        "Query worker processes that passed their memory cap.",
    ),
    metric(
        "kith_query_workers_idle_exits_total",
        Counter,
        &[],
        "Waiting query worker processes that left after idling.",
    ),
    metric(
        "kith_query_workers_gone_while_waiting_total",
        Counter,
        &[],
        "Waiting query worker processes found gone when a query came.",
    ),
    // Profiles and models.
    metric(
        "kith_profile_events_applied_total",
        Counter,
        &[],
        "Events applied to profiles by identity resolution.",
    ),
    metric(
        "kith_profile_events_unattributed_total",
        Counter,
        &[],
        "Events with no identifier a profile could hold.",
    ),
    metric(
        "kith_identity_values_refused_total",
        Counter,
        &["reason"],
        "Identifier values refused by the identity guards, by reason.",
    ),
    metric(
        "kith_identity_clusters_rebuilt_total",
        Counter,
        &[],
        "Identity clusters rebuilt from their links (after a limit was reached or a merge undone).",
    ),
    metric(
        "kith_profile_rows_persisted_total",
        Counter,
        &[],
        "Profile rows written to profiles.db.",
    ),
    metric(
        "kith_profile_persist_errors_total",
        Counter,
        &[],
        "Failed writes of profiles to profiles.db (retried).",
    ),
    metric(
        "kith_profile_facts_resident",
        Gauge,
        &[],
        "Identifiers whose facts are held in memory.",
    ),
    metric(
        "kith_profile_facts_evicted_total",
        Counter,
        &[],
        "Identifiers' facts let go of from memory (they stay on disk).",
    ),
    metric(
        "kith_profile_facts_unreadable_total",
        Counter,
        &[],
        "Identifiers' stored facts that could not be read (the event was left out of their figures).",
    ),
    metric(
        "kith_model_runs_total",
        Counter,
        &["model", "outcome"],
        "Model runs, by model and outcome.",
    ),
];

/// Says what each metric is, and puts the counters without labels, and each known label value
/// of the others, at 0. Called once the recorder is installed.
pub(crate) fn describe_all() {
    for m in METRICS {
        match m.kind {
            Counter => {
                metrics::describe_counter!(m.name, m.help);
                if m.labels.is_empty() {
                    metrics::counter!(m.name).increment(0);
                }
            }
            Gauge => metrics::describe_gauge!(m.name, m.help),
            Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
    // Counters whose labels take a known set of values start at 0 for each, so that
    // `rate(kith_events_rejected_total{reason="missing_identity"}[5m])` has a series from the
    // first scrape and an alert on it can fire at the first refusal.
    for reason in kith_core::REJECTION_CODES {
        metrics::counter!(REJECTED_EVENTS, "reason" => reason).increment(0);
    }
    for code in crate::errors::ErrorCode::ALL {
        metrics::counter!(ERROR_RESPONSES, "code" => code.describe().0).increment(0);
    }
    for status in crate::unreadable_requests::UNREADABLE_STATUSES {
        metrics::counter!(UNREADABLE_REQUESTS, "status" => status).increment(0);
    }
}

/// Counters whose every label value is known in advance (see [`describe_all`]).
const REJECTED_EVENTS: &str = "kith_events_rejected_total";
const ERROR_RESPONSES: &str = "kith_http_error_responses_total";
const UNREADABLE_REQUESTS: &str = "kith_http_unreadable_requests_total";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `kith_…` name a `counter!`, `gauge!` or `histogram!` records anywhere in the
    /// workspace's sources, with the kind that records it.
    fn recorded_in_the_code() -> Vec<(String, Kind)> {
        let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut found = Vec::new();
        let mut folders = vec![crates];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for (macro_name, kind) in [
                        ("counter!(", Counter),
                        ("gauge!(", Gauge),
                        ("histogram!(", Histogram),
                    ] {
                        for (at, _) in text.match_indices(macro_name) {
                            let rest = text[at + macro_name.len()..].trim_start();
                            if let Some(name) = rest
                                .strip_prefix("\"kith_")
                                .and_then(|r| r.split('"').next())
                            {
                                found.push((format!("kith_{name}"), kind));
                            }
                        }
                    }
                }
            }
        }
        found
    }

    #[test]
    fn every_metric_the_code_records_is_described_and_none_other() {
        let recorded = recorded_in_the_code();
        assert!(recorded.len() > 40, "{recorded:?}");
        for (name, kind) in &recorded {
            let described = METRICS.iter().find(|m| m.name == name);
            assert!(
                described.is_some_and(|m| m.kind == *kind),
                "{name} ({kind:?}) is recorded but not described as such in METRICS"
            );
        }
        for m in METRICS {
            assert!(
                recorded.iter().any(|(name, _)| name == m.name),
                "{} is described but nothing records it",
                m.name
            );
        }
        // The series started at 0 are of counters the code increments, with those labels.
        for (name, label) in [(REJECTED_EVENTS, "reason"), (ERROR_RESPONSES, "code")] {
            assert!(
                recorded.iter().any(|(recorded, _)| recorded == name),
                "{name} is started at 0 but nothing increments it"
            );
            let described = METRICS.iter().find(|m| m.name == name);
            assert!(described.is_some_and(|m| m.labels == [label]), "{name}");
        }
    }
}
