use kith_core::Stored;

use crate::{Lake, QueryLimits};

/// Journal records of one event each, at `seqs`.
fn records(seqs: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
    seqs.map(|seq| {
        let event = crate::tests::event(&format!("m{seq}"), "ana", 1.0);
        (seq, Stored::Event(event).encode())
    })
    .collect()
}

async fn count_events(lake: &Lake) -> serde_json::Value {
    let result = lake
        .query("SELECT count(*) FROM events", &QueryLimits::default())
        .await
        .unwrap();
    crate::output::to_json(&result).unwrap()["rows"][0][0].clone()
}

/// A flush whose write failed may still have committed (delta-rs reports an error from after
/// its commit, say); when reading the log to find out fails too, the rows stay buffered. The
/// next flush must read the log first: written again from the buffer, they would be in the
/// table twice.
#[tokio::test]
async fn rows_of_a_flush_whose_commit_was_unknown_are_not_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path()).await.unwrap();
    lake.ingest(records(1..=100));
    lake.seal();
    let buffered = lake.events.read().buffer.batches.clone();
    assert_eq!(lake.events.flush().await.unwrap(), 100);

    // As that failed flush leaves the table: committed on disk, still buffered in memory.
    {
        let mut inner = lake.events.write();
        inner.committed_seq = 0;
        inner.buffer.rows = buffered.iter().map(|(_, b)| b.num_rows()).sum();
        inner.buffer.batches = buffered;
        inner.commit_unknown = true;
    }
    assert_eq!(
        lake.events.flush().await.unwrap(),
        0,
        "nothing is written again"
    );
    assert_eq!(lake.events.committed_seq(), 100);
    assert_eq!(lake.events.pending().0, 0);
    assert_eq!(count_events(&lake).await, 100);

    // Rows that came after the unknown commit are still flushed.
    lake.ingest(records(101..=110));
    lake.flush().await.unwrap();
    assert_eq!(count_events(&lake).await, 110);
}
