use super::*;
use kith_lake::QueryLimits;

/// The bytes before a record's payload in a journal segment (kith-journal's record format:
/// length, checksum, seq, key flag, key).
const RECORD_HEADER_BYTES: usize = 4 + 4 + 8 + 1 + 16;

fn tracks(ids: std::ops::Range<u32>) -> Vec<Event> {
    let items: Vec<serde_json::Value> = ids
        .map(|i| serde_json::json!({"type": "track", "event": "Viewed", "userId": "ana", "messageId": format!("m-{i}")}))
        .collect();
    let body = serde_json::json!({ "batch": items }).to_string();
    kith_core::parse::parse_batch_request(&body)
        .unwrap()
        .normalize("web", chrono::Utc::now())
        .events
}

async fn stored_message_ids(pipeline: &Pipeline) -> Vec<String> {
    let result = pipeline
        .lake
        .query(
            "SELECT message_id FROM events ORDER BY message_id",
            &QueryLimits::default(),
        )
        .await
        .unwrap();
    let rows = kith_lake::output::to_json(&result).unwrap()["rows"].clone();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_str().unwrap().to_string())
        .collect()
}

/// Where each record of a segment starts.
fn record_starts(segment: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while at < segment.len() {
        starts.push(at);
        let length = u32::from_le_bytes(segment[at..at + 4].try_into().unwrap()) as usize;
        at += RECORD_HEADER_BYTES + length;
    }
    assert_eq!(at, segment.len(), "the segment is whole records");
    starts
}

/// A record damaged on disk (a page lost to a power cut, a bad sector) is lost, but the records
/// after it are recovered and must reach the event tables like every other record. Recovery
/// moves them to a segment of their own and their ids deduplicate from then on; a replay that
/// ran before recovery read the damaged segment only up to the damage, so those events were in
/// no table, their retries were answered as duplicates, and the next flush let the journal
/// retire them for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_recovered_from_past_damage_in_the_journal_are_replayed_into_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    {
        // Acknowledged, then the server dies before any flush: the journal alone holds them.
        let pipeline = Pipeline::open(data, ProfileSettings::default(), JournalOptions::default())
            .await
            .unwrap();
        assert_eq!(
            pipeline.write(tracks(0..10), None).await.unwrap().stored(),
            10
        );
    }
    let segments: Vec<PathBuf> = std::fs::read_dir(journal_dir(data))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    let starts = record_starts(&bytes);
    assert_eq!(starts.len(), 10);
    // A flipped bit in the third record's payload (m-2).
    bytes[starts[2] + RECORD_HEADER_BYTES + 5] ^= 0x01;
    std::fs::write(&segments[0], &bytes).unwrap();

    let everything_but_the_damaged = [
        "m-0", "m-1", "m-3", "m-4", "m-5", "m-6", "m-7", "m-8", "m-9",
    ];
    let pipeline = Pipeline::open(data, ProfileSettings::default(), JournalOptions::default())
        .await
        .unwrap();
    assert_eq!(
        stored_message_ids(&pipeline).await,
        everything_but_the_damaged,
        "every readable record is replayed"
    );
    // A retry of a recovered event is a duplicate; the damaged one is stored again.
    let retried = pipeline.write(tracks(2..6), None).await.unwrap();
    assert_eq!((retried.stored(), retried.duplicates()), (1, 3));
    pipeline.close().await.unwrap();

    // Flushed, the journal retired: the tables hold them for good.
    let pipeline = Pipeline::open(data, ProfileSettings::default(), JournalOptions::default())
        .await
        .unwrap();
    let all: Vec<String> = (0..10).map(|i| format!("m-{i}")).collect();
    assert_eq!(stored_message_ids(&pipeline).await, all);
    pipeline.close().await.unwrap();
}

/// The tables and profiles skip journal seqs they hold. A journal removed after a flush (or
/// damaged past what they hold) must not number new events from 1 again: each would be
/// acknowledged, then skipped by both, and lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_after_the_journal_was_removed_are_numbered_after_what_the_stores_hold() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let pipeline = Pipeline::open(data, ProfileSettings::default(), JournalOptions::default())
        .await
        .unwrap();
    pipeline.write(tracks(0..10), None).await.unwrap();
    pipeline.close().await.unwrap();
    std::fs::remove_dir_all(journal_dir(data)).unwrap();

    let pipeline = Pipeline::open(data, ProfileSettings::default(), JournalOptions::default())
        .await
        .unwrap();
    let written = pipeline.write(tracks(10..15), None).await.unwrap();
    assert_eq!(written.stored(), 5);
    assert!(
        written.seqs.iter().flatten().all(|seq| *seq > 10),
        "{:?}",
        written.seqs
    );
    let all: Vec<String> = (0..15).map(|i| format!("m-{i}")).collect();
    let mut stored = stored_message_ids(&pipeline).await;
    stored.sort_by_key(|id| id[2..].parse::<u32>().unwrap());
    assert_eq!(stored, all);
    pipeline
        .wait_for_profiles(written.last_seq().unwrap())
        .await;
    let profile = pipeline
        .profiles
        .find(&kith_identity::Lookup::parse("user_id:ana").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(profile.computed_traits.event_count, 15);
    pipeline.close().await.unwrap();
}
