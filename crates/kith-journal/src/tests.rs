use std::sync::{Arc, Mutex};

use super::*;

fn entry(key: u128, text: &str) -> Entry<String> {
    Entry {
        dedup_key: Some(key),
        payload: text.as_bytes().to_vec(),
        item: text.to_string(),
    }
}

/// Appends and waits for the journal's answer.
fn answer<T: Send + 'static>(journal: &Journal<T>, entries: Vec<Entry<T>>) -> AppendResult {
    journal
        .append(entries)
        .blocking_recv()
        .expect("the journal answers every append")
}

/// Options under which every append closes its segment and starts the next.
fn a_segment_per_append() -> JournalOptions {
    JournalOptions {
        segment_bytes: 1,
        ..JournalOptions::default()
    }
}

type Seen = Arc<Mutex<Vec<(u64, String)>>>;

fn open(dir: &Path, options: JournalOptions) -> (Journal<String>, Seen) {
    open_hooked(dir, options, Hooks::default())
}

/// [`open`] with `hooks` replacing parts of the journal's workings.
fn open_hooked(dir: &Path, options: JournalOptions, hooks: Hooks) -> (Journal<String>, Seen) {
    let seen: Seen = Arc::default();
    let sink_seen = seen.clone();
    let journal = Journal::open_with(
        crate::recover(dir).unwrap(),
        options,
        Box::new(move |items: DurableEntries<String>| {
            // The sink gets each entry's own payload back (every test payload is its item's text).
            sink_seen.lock().unwrap().extend(items.into_iter().map(|d| {
                let item = if d.payload == d.item.as_bytes() {
                    d.item
                } else {
                    format!("payload {:?} handed over with {}", d.payload, d.item)
                };
                (d.seq, item)
            }))
        }),
        hooks,
    )
    .unwrap();
    (journal, seen)
}

fn replayed(dir: &Path, after: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    read_after(dir, after, |r| {
        out.push((r.seq, String::from_utf8(r.payload).unwrap()));
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn appends_are_durable_ordered_and_deduplicated_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (journal, seen) = open(dir.path(), JournalOptions::default());
        let first = answer(
            &journal,
            vec![entry(1, "a"), entry(2, "b"), entry(1, "a again")],
        )
        .unwrap();
        assert_eq!(
            first,
            [
                Appended::Stored { seq: 1 },
                Appended::Stored { seq: 2 },
                Appended::Duplicate
            ]
        );
        assert_eq!(
            *seen.lock().unwrap(),
            [(1, "a".to_string()), (2, "b".to_string())]
        );
    }
    let (journal, seen) = open(dir.path(), JournalOptions::default());
    assert_eq!(journal.last_seq_at_open(), 2);
    let second = answer(&journal, vec![entry(2, "b retried"), entry(3, "c")]).unwrap();
    assert_eq!(second, [Appended::Duplicate, Appended::Stored { seq: 3 }]);
    assert_eq!(*seen.lock().unwrap(), [(3, "c".to_string())]);
    assert_eq!(
        replayed(dir.path(), 1),
        [(2, "b".to_string()), (3, "c".to_string())]
    );
}

#[test]
fn a_torn_tail_is_cut_and_everything_before_it_survives() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (journal, _) = open(dir.path(), JournalOptions::default());
        answer(&journal, vec![entry(1, "kept"), entry(2, "also kept")]).unwrap();
    }
    // Simulate a crash in the middle of the next write: half a record at the end.
    let segment = segment::segment_path(dir.path(), 1);
    let mut torn = Vec::new();
    record::encode(&mut torn, 3, Some(3), b"never acknowledged");
    let mut bytes = std::fs::read(&segment).unwrap();
    let good_len = bytes.len();
    bytes.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&segment, &bytes).unwrap();

    let (journal, _) = open(dir.path(), JournalOptions::default());
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), good_len as u64);
    let result = answer(&journal, vec![entry(3, "the retry")]).unwrap();
    assert_eq!(
        result,
        [Appended::Stored { seq: 3 }],
        "the torn key is not a duplicate"
    );
    assert_eq!(
        replayed(dir.path(), 0)
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>(),
        ["kept", "also kept", "the retry"]
    );
}

/// The texts of the records `replayed` finds after `after`.
fn replayed_texts(dir: &Path) -> Vec<String> {
    replayed(dir, 0).into_iter().map(|(_, t)| t).collect()
}

/// The files in `dir` whose names end with `suffix`, sorted.
fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

#[test]
fn damage_inside_a_closed_segment_keeps_what_is_readable_and_a_copy_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let options = a_segment_per_append();
    {
        let (journal, _) = open(dir.path(), options.clone());
        for (key, text) in [(1u128, "one"), (2, "two"), (3, "three")] {
            answer(&journal, vec![entry(key, text)]).unwrap();
        }
    }
    let first = segment::segment_path(dir.path(), 1);
    let original = std::fs::read(&first).unwrap();
    let mut bytes = original.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&first, &bytes).unwrap();

    // The server starts; the damaged record is gone, the others are all there.
    let (journal, _) = open(dir.path(), options);
    assert_eq!(replayed_texts(dir.path()), ["two", "three"]);
    assert_eq!(std::fs::metadata(&first).unwrap().len(), 0);
    // Its key is not remembered, so a retry of it is stored; the others' still deduplicate.
    let result = answer(&journal, vec![entry(1, "one again"), entry(2, "two again")]).unwrap();
    assert_eq!(result, [Appended::Stored { seq: 4 }, Appended::Duplicate]);
    // The damaged file is kept as it was found, under a name no listing takes for a segment.
    let copies = files_ending(dir.path(), ".damaged");
    assert_eq!(copies, ["00000000000000000001.seg.damaged"]);
    assert_eq!(std::fs::read(dir.path().join(&copies[0])).unwrap(), bytes);
    drop(journal);
    let (_journal, _) = open(dir.path(), JournalOptions::default());
    assert_eq!(replayed_texts(dir.path()), ["two", "three", "one again"]);
}

/// Writes six records to one segment, lets `damage` change its bytes (given where each record
/// starts), and reopens the journal.
fn damage_the_active_segment(damage: impl FnOnce(&mut Vec<u8>, &[usize])) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    {
        let (journal, _) = open(dir.path(), JournalOptions::default());
        for (key, text) in [
            (1u128, "a"),
            (2, "bb"),
            (3, "ccc"),
            (4, "dddd"),
            (5, "eeeee"),
        ] {
            answer(&journal, vec![entry(key, text)]).unwrap();
        }
        answer(&journal, vec![entry(6, "ffffff")]).unwrap();
    }
    let segment = segment::segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut starts = Vec::new();
    let mut offset = 0;
    for text in ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"] {
        starts.push(offset);
        offset += record::HEADER_BYTES + text.len();
    }
    assert_eq!(offset, bytes.len(), "one segment holds the six records");
    damage(&mut bytes, &starts);
    std::fs::write(&segment, &bytes).unwrap();
    dir
}

#[test]
fn damage_in_the_middle_of_the_active_segment_is_not_taken_for_a_torn_tail() {
    // A flipped bit in the second record's payload: its length still leads to the third.
    let dir = damage_the_active_segment(|bytes, starts| {
        bytes[starts[1] + record::HEADER_BYTES] ^= 0x01;
    });
    let (journal, seen) = open(dir.path(), JournalOptions::default());
    assert_eq!(
        replayed_texts(dir.path()),
        ["a", "ccc", "dddd", "eeeee", "ffffff"],
        "only the damaged record is lost"
    );
    assert!(seen.lock().unwrap().is_empty(), "nothing is appended twice");
    // What follows the damage went to a segment of its own, named by its first seq.
    assert_eq!(
        files_ending(dir.path(), ".seg"),
        ["00000000000000000001.seg", "00000000000000000003.seg"]
    );
    assert_eq!(files_ending(dir.path(), ".damaged").len(), 1);
    let result = answer(
        &journal,
        vec![entry(2, "bb again"), entry(5, "eeeee again"), entry(7, "g")],
    )
    .unwrap();
    assert_eq!(
        result,
        [
            Appended::Stored { seq: 7 },
            Appended::Duplicate,
            Appended::Stored { seq: 8 }
        ]
    );
    drop(journal);
    let (_journal, _) = open(dir.path(), JournalOptions::default());
    assert_eq!(
        replayed_texts(dir.path()),
        ["a", "ccc", "dddd", "eeeee", "ffffff", "bb again", "g"]
    );
}

#[test]
fn a_damaged_header_is_read_past_to_the_next_whole_record() {
    // The second record's seq is damaged: where the third starts can only be found by looking
    // for it. A second damage, in the fifth record's checksum, is read past as well.
    let dir = damage_the_active_segment(|bytes, starts| {
        bytes[starts[1] + 9] ^= 0x40;
        bytes[starts[4] + 5] ^= 0x10;
    });
    let (_journal, _) = open(dir.path(), JournalOptions::default());
    assert_eq!(replayed_texts(dir.path()), ["a", "ccc", "dddd", "ffffff"]);
    assert_eq!(
        files_ending(dir.path(), ".seg"),
        [
            "00000000000000000001.seg",
            "00000000000000000003.seg",
            "00000000000000000006.seg"
        ]
    );
}

#[test]
fn a_record_cut_short_is_a_torn_tail_even_with_what_seems_to_follow_it() {
    // The second record's length now reaches past the end of the file, as an unfinished write
    // would. What follows is not replayed (it could be text inside that record), but the file
    // is kept as found.
    let dir = damage_the_active_segment(|bytes, starts| {
        bytes[starts[1]] = 0xee;
    });
    let (_journal, _) = open(dir.path(), JournalOptions::default());
    assert_eq!(replayed_texts(dir.path()), ["a"]);
    assert_eq!(files_ending(dir.path(), ".damaged").len(), 1);
}

#[test]
fn a_salvage_cut_short_by_a_crash_is_done_again_without_taking_records_twice() {
    let dir = damage_the_active_segment(|bytes, starts| {
        bytes[starts[1] + record::HEADER_BYTES] ^= 0x01;
    });
    // A first recovery wrote segment 3 and was stopped before it cut segment 1: put segment 1
    // back as it was found.
    let damaged = std::fs::read(segment::segment_path(dir.path(), 1)).unwrap();
    drop(open(dir.path(), JournalOptions::default()));
    std::fs::write(segment::segment_path(dir.path(), 1), &damaged).unwrap();
    let recovered = segment::recover(dir.path()).unwrap();
    let paths: Vec<_> = recovered.segments.iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        [
            segment::segment_path(dir.path(), 1),
            segment::segment_path(dir.path(), 3)
        ],
        "segment 3 is taken once"
    );
    assert_eq!(recovered.last_seq, 6);
    let (journal, _) = open(dir.path(), JournalOptions::default());
    assert_eq!(
        replayed_texts(dir.path()),
        ["a", "ccc", "dddd", "eeeee", "ffffff"]
    );
    assert_eq!(
        answer(&journal, vec![entry(7, "g")]).unwrap(),
        [Appended::Stored { seq: 7 }]
    );
}

#[test]
fn records_after_damage_are_not_salvaged_into_the_next_segments_seqs() {
    // Segment 1 holds seqs 1 to 3 and segment 4 holds seq 4. After damage in segment 1 comes a
    // valid record claiming seq 4 (a reused file's leftover, say): taking it would replace
    // segment 4.
    let dir = tempfile::tempdir().unwrap();
    let mut first = Vec::new();
    for (seq, text) in [(1u64, "one"), (2, "two"), (3, "three")] {
        record::encode(&mut first, seq, Some(u128::from(seq)), text.as_bytes());
    }
    let damaged_at = record::HEADER_BYTES + "one".len() + record::HEADER_BYTES;
    first[damaged_at] ^= 0x01;
    record::encode(&mut first, 4, Some(99), b"not segment 4's");
    std::fs::write(segment::segment_path(dir.path(), 1), &first).unwrap();
    let mut fourth = Vec::new();
    record::encode(&mut fourth, 4, Some(4), b"four");
    std::fs::write(segment::segment_path(dir.path(), 4), &fourth).unwrap();

    let (_journal, _) = open(dir.path(), JournalOptions::default());
    assert_eq!(replayed_texts(dir.path()), ["one", "three", "four"]);
    assert_eq!(
        std::fs::read(segment::segment_path(dir.path(), 4)).unwrap(),
        fourth
    );
}

#[test]
fn a_torn_write_over_a_reused_files_old_records_is_still_a_torn_tail() {
    // The tail of a reused file holds an earlier segment's records, with lower seqs than any
    // record of this one: after a torn record they are not taken for the writer's own.
    let dir = tempfile::tempdir().unwrap();
    // Segment 10 reuses the file of a retired segment that held seqs 3 to 5.
    let segment = segment::segment_path(dir.path(), 10);
    let mut bytes = Vec::new();
    record::encode(&mut bytes, 10, Some(10), b"kept");
    let mut torn = Vec::new();
    record::encode(&mut torn, 11, Some(11), b"torn");
    bytes.extend_from_slice(&torn[..torn.len() - 1]);
    bytes.push(torn[torn.len() - 1] ^ 0xff);
    for seq in 3..=5 {
        record::encode(&mut bytes, seq, Some(u128::from(seq)), b"old");
    }
    std::fs::write(&segment, &bytes).unwrap();
    let (_journal, _) = open(dir.path(), JournalOptions::default());
    assert_eq!(replayed_texts(dir.path()), ["kept"]);
    assert!(files_ending(dir.path(), ".damaged").is_empty());
    assert_eq!(
        files_ending(dir.path(), ".seg"),
        ["00000000000000000010.seg"]
    );
    let expected = record::HEADER_BYTES + "kept".len();
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), expected as u64);
}

#[test]
fn retired_segments_keep_deduplicating_and_sequence_numbers_keep_rising() {
    let dir = tempfile::tempdir().unwrap();
    let options = a_segment_per_append();
    {
        let (journal, _) = open(dir.path(), options.clone());
        for key in 1..=4u128 {
            answer(&journal, vec![entry(key, "x")]).unwrap();
        }
        // Segments roll over on every append; all but the active one can go.
        let retired = journal.retire_through(4).blocking_recv().unwrap().unwrap();
        assert_eq!(retired, 3);
    }
    let (journal, _) = open(dir.path(), options);
    assert_eq!(journal.last_seq_at_open(), 4);
    let result = answer(&journal, vec![entry(1, "late retry"), entry(5, "new")]).unwrap();
    assert_eq!(result, [Appended::Duplicate, Appended::Stored { seq: 5 }]);
    assert_eq!(
        replayed(dir.path(), 3)
            .into_iter()
            .map(|(s, _)| s)
            .collect::<Vec<_>>(),
        [4, 5]
    );
    // Segment 4 was found at startup, not written by this process: retiring it reads its keys
    // back from the file.
    let retired = journal.retire_through(5).blocking_recv().unwrap().unwrap();
    assert_eq!(retired, 1);
    drop(journal);
    let (journal, _) = open(dir.path(), JournalOptions::default());
    let result = answer(
        &journal,
        vec![entry(4, "late"), entry(6, "a"), entry(6, "same group")],
    )
    .unwrap();
    assert_eq!(
        result,
        [
            Appended::Duplicate,
            Appended::Stored { seq: 6 },
            Appended::Duplicate
        ]
    );
}

#[test]
fn a_full_queue_answers_overloaded_at_once_and_accepts_again_once_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    // The sink holds the sync thread until the test lets it go, so appends stay unanswered.
    let (entered, sync_busy) = std::sync::mpsc::channel::<()>();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let journal: Journal<String> = Journal::open(
        dir.path(),
        JournalOptions {
            queue_bytes: 20,
            ..JournalOptions::default()
        },
        Box::new(move |_| {
            let _ = entered.send(());
            let _ = gate.recv();
        }),
    )
    .unwrap();
    // 12 of the 20 bytes: written, synced, and held in the sink, so still counted.
    let first = journal.append(vec![entry(1, "twelve bytes")]);
    sync_busy.recv().unwrap();
    // This one fits beside it and waits...
    let second = journal.append(vec![entry(2, "eight by")]);
    // ...and this one would take the queue past its 20 bytes.
    let refused = answer(&journal, vec![entry(3, "five!")]);
    assert!(
        matches!(refused, Err(JournalError::Overloaded)),
        "{refused:?}"
    );
    drop(release);
    assert_eq!(
        first.blocking_recv().unwrap().unwrap(),
        [Appended::Stored { seq: 1 }]
    );
    assert_eq!(
        second.blocking_recv().unwrap().unwrap(),
        [Appended::Stored { seq: 2 }]
    );
    let retried = answer(&journal, vec![entry(3, "five!")]);
    assert_eq!(retried.unwrap(), [Appended::Stored { seq: 3 }]);
}

#[test]
fn one_append_larger_than_the_queue_gets_in_when_nothing_else_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, seen) = open(
        dir.path(),
        JournalOptions {
            queue_bytes: 4,
            ..JournalOptions::default()
        },
    );
    let outcome = answer(&journal, vec![entry(1, "far more than four bytes")]);
    assert_eq!(outcome.unwrap(), [Appended::Stored { seq: 1 }]);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn concurrent_appenders_share_fsyncs_and_get_distinct_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, seen) = open(dir.path(), JournalOptions::default());
    let journal = Arc::new(journal);
    let threads: Vec<_> = (0..8u128)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                for i in 0..50u128 {
                    let key = t * 1000 + i;
                    let outcome = answer(&journal, vec![entry(key, &key.to_string())]).unwrap();
                    assert!(matches!(outcome[0], Appended::Stored { .. }));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=400).collect::<Vec<_>>(),
        "the sink sees every entry in order"
    );
}

proptest::proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
        let _ = record::decode(&bytes);
    }
}

#[test]
fn a_barrier_runs_after_everything_queued_before_it_and_before_anything_after() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, seen) = open(dir.path(), JournalOptions::default());
    let before: Vec<_> = (0..50u128)
        .map(|i| journal.append(vec![entry(i, &format!("before {i}"))]))
        .collect();
    let at_barrier: Arc<Mutex<Option<(u64, usize)>>> = Arc::default();
    let (record, sink_view) = (at_barrier.clone(), seen.clone());
    journal
        .barrier(Box::new(move |last_seq| {
            *record.lock().unwrap() = Some((last_seq, sink_view.lock().unwrap().len()));
        }))
        .unwrap();
    let after = journal.append(vec![entry(1000, "after")]);
    for receiver in before {
        receiver.blocking_recv().unwrap().unwrap();
    }
    assert_eq!(
        after.blocking_recv().unwrap().unwrap(),
        [Appended::Stored { seq: 51 }]
    );
    // The barrier saw all 50 earlier entries in the sink, and the later one not yet.
    assert_eq!(*at_barrier.lock().unwrap(), Some((50, 50)));
}

#[test]
fn after_a_failed_sync_nothing_more_is_acknowledged_and_a_restart_recovers_what_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        // The first sync succeeds; every later one fails, as after a disk error.
        let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failing_sync: syncer::SyncData = Box::new(move |file: &std::fs::File| {
            if syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                file.sync_data()
            } else {
                Err(std::io::Error::other("injected EIO"))
            }
        });
        let (journal, seen) = open_hooked(
            dir.path(),
            JournalOptions::default(),
            Hooks {
                sync_data: failing_sync,
                ..Hooks::default()
            },
        );
        let append = |key, text: &str| answer(&journal, vec![entry(key, text)]);
        assert_eq!(append(1, "a").unwrap(), [Appended::Stored { seq: 1 }]);
        let failed = append(2, "b").unwrap_err();
        assert!(failed.to_string().contains("injected EIO"), "{failed}");
        // A retry must not be answered "duplicate": the first try was never made durable.
        let retry = append(2, "b").unwrap_err();
        assert!(retry.to_string().contains("restart the server"), "{retry}");
        assert!(append(3, "c").is_err());
        assert!(
            journal.has_failed(),
            "the failure is visible to readiness checks"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            [(1, "a".to_string())],
            "the sink sees only what was synced"
        );
    }
    // The failed record did reach the file here (only its sync was refused), so after a restart
    // it is stored once: the client's retry is a duplicate, and new messages go on after it.
    let (journal, seen) = open(dir.path(), JournalOptions::default());
    let append = |key, text: &str| answer(&journal, vec![entry(key, text)]);
    assert_eq!(append(2, "b").unwrap(), [Appended::Duplicate]);
    assert_eq!(append(3, "c").unwrap(), [Appended::Stored { seq: 3 }]);
    assert_eq!(*seen.lock().unwrap(), [(3, "c".to_string())]);
    assert_eq!(
        replayed(dir.path(), 0),
        [
            (1, "a".to_string()),
            (2, "b".to_string()),
            (3, "c".to_string())
        ]
    );
}

/// Closing a full segment syncs it, on the writer thread, while the sync thread may not yet have
/// synced the last groups written to it. Linux tells of a lost write only to the first sync
/// after it: when that is the writer's, the sync thread's next sync succeeds without the data.
/// So a failed sync at rotation fails the journal like the sync thread's own: before, only the
/// group that found the segment full was refused, and the next append closed the segment again,
/// "successfully", and was acknowledged.
#[test]
fn a_failed_sync_while_closing_a_segment_fails_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let closings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = closings.clone();
    let (journal, seen) = open_hooked(
        dir.path(),
        a_segment_per_append(),
        Hooks {
            // The first closing sync reports a lost write; later ones succeed, as Linux's do.
            end_segment: Box::new(move |file: &std::fs::File, records_len: u64| {
                if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    Err(std::io::Error::other("injected EIO"))
                } else {
                    crate::segment::end_at_records(file, records_len)
                }
            }),
            ..Hooks::default()
        },
    );
    let append = |key, text: &str| answer(&journal, vec![entry(key, text)]);
    assert_eq!(append(1, "a").unwrap(), [Appended::Stored { seq: 1 }]);
    // The segment holding "a" is full: closing it fails.
    let failed = append(2, "b").unwrap_err();
    assert!(failed.to_string().contains("injected EIO"), "{failed}");
    assert!(
        journal.has_failed(),
        "the failure is visible to readiness checks"
    );
    let next = append(3, "c").unwrap_err();
    assert!(next.to_string().contains("restart the server"), "{next}");
    assert_eq!(closings.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(*seen.lock().unwrap(), [(1, "a".to_string())]);
}

/// A journal that ends before the seqs its stores hold numbers new records after theirs, in a
/// segment of its own; what it held stays readable, and a later start goes on from there.
#[test]
fn a_journal_ending_before_what_its_stores_hold_numbers_new_records_after_it() {
    let open_after = |dir: &Path, floor: u64| -> Journal<String> {
        Journal::open_recovered(
            crate::recover(dir).unwrap().number_after(floor),
            JournalOptions::default(),
            Box::new(|_: DurableEntries<String>| {}),
        )
        .unwrap()
    };
    // Records 1-3 on disk; the stores hold through 10.
    let dir = tempfile::tempdir().unwrap();
    {
        let (journal, _) = open(dir.path(), JournalOptions::default());
        for (key, text) in [(1u128, "a"), (2, "b"), (3, "c")] {
            answer(&journal, vec![entry(key, text)]).unwrap();
        }
    }
    {
        let journal = open_after(dir.path(), 10);
        assert_eq!(journal.last_seq_at_open(), 10);
        let appended = answer(&journal, vec![entry(4, "d"), entry(1, "a again")]).unwrap();
        assert_eq!(
            appended,
            [Appended::Stored { seq: 11 }, Appended::Duplicate]
        );
    }
    assert_eq!(
        files_ending(dir.path(), ".seg"),
        ["00000000000000000001.seg", "00000000000000000011.seg"]
    );
    let (journal, _) = open(dir.path(), JournalOptions::default());
    assert_eq!(
        answer(&journal, vec![entry(5, "e")]).unwrap(),
        [Appended::Stored { seq: 12 }]
    );
    drop(journal);
    assert_eq!(
        replayed(dir.path(), 0),
        [
            (1, "a".to_string()),
            (2, "b".to_string()),
            (3, "c".to_string()),
            (11, "d".to_string()),
            (12, "e".to_string())
        ]
    );

    // A journal removed: it starts after the stores' seq, with no empty segment left behind.
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), JournalOptions::default()));
    let journal = open_after(dir.path(), 7);
    assert_eq!(
        answer(&journal, vec![entry(1, "a")]).unwrap(),
        [Appended::Stored { seq: 8 }]
    );
    drop(journal);
    assert_eq!(
        files_ending(dir.path(), ".seg"),
        ["00000000000000000008.seg"]
    );
}

/// A sync thread that died (a sink's bug) leaves a journal that acknowledges nothing more:
/// readiness checks see it as not running.
#[test]
fn a_journal_whose_sync_thread_died_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let journal: Journal<String> = Journal::open(
        dir.path(),
        JournalOptions::default(),
        Box::new(|_: DurableEntries<String>| panic!("a sink's bug")),
    )
    .unwrap();
    assert!(journal.is_running());
    // Never answered: the thread that would have answered is gone.
    assert!(journal.append(vec![entry(1, "a")]).blocking_recv().is_err());
    let started = std::time::Instant::now();
    while journal.is_running() && started.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!journal.is_running());
}

#[test]
fn retired_segment_files_are_reused_and_their_old_records_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        segment_bytes: 250,
        ..JournalOptions::default()
    };
    // Every record is the same size (100 bytes on disk), so a reused file holds whole old
    // records, with valid checksums, right after the new ones.
    let text = |name: &str| format!("{name:<67}");
    let append = |journal: &Journal<String>, key: u128, name: &str| {
        answer(journal, vec![entry(key, &text(name))]).unwrap()
    };
    {
        let (journal, _) = open(dir.path(), options.clone());
        for key in 1..=6u128 {
            append(&journal, key, &format!("old {key}"));
        }
        // Segment 1 holds seqs 1-3, segment 4 seqs 4-6 (the active one).
        assert_eq!(
            journal.retire_through(3).blocking_recv().unwrap().unwrap(),
            1
        );
    }
    let spare = segment::spare_path(&segment::segment_path(dir.path(), 1));
    assert_eq!(
        std::fs::metadata(&spare).unwrap().len(),
        300,
        "kept, not deleted"
    );

    let (journal, _) = open(dir.path(), options.clone());
    assert_eq!(append(&journal, 7, "new 7"), [Appended::Stored { seq: 7 }]);
    let reused = segment::segment_path(dir.path(), 7);
    assert!(!spare.exists(), "the spare became segment 7");
    assert_eq!(
        std::fs::metadata(&reused).unwrap().len(),
        300,
        "written over, old records 2 and 3 still after the new one"
    );
    assert_eq!(
        append(&journal, 2, "old 2 retried"),
        [Appended::Duplicate],
        "a retired key still deduplicates"
    );
    let expected: Vec<(u64, String)> = vec![
        (4, text("old 4")),
        (5, text("old 5")),
        (6, text("old 6")),
        (7, text("new 7")),
    ];
    assert_eq!(replayed(dir.path(), 0), expected, "read while written");
    let before_close = std::fs::read(&reused).unwrap();
    drop(journal);
    assert_eq!(
        std::fs::metadata(&reused).unwrap().len(),
        100,
        "a clean close cuts the old records off the tail"
    );
    // What a crash leaves instead: the old records still there.
    std::fs::write(&reused, &before_close).unwrap();

    let (journal, seen) = open(dir.path(), options);
    assert_eq!(journal.last_seq_at_open(), 7);
    assert_eq!(
        std::fs::metadata(&reused).unwrap().len(),
        100,
        "recovery after a crash cuts the old records off the tail"
    );
    assert_eq!(replayed(dir.path(), 0), expected, "after a restart");
    assert_eq!(append(&journal, 8, "new 8"), [Appended::Stored { seq: 8 }]);
    assert_eq!(*seen.lock().unwrap(), [(8, text("new 8"))]);
}

#[test]
fn a_file_already_at_the_next_segment_name_does_not_stop_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let options = a_segment_per_append();
    let (journal, _) = open(dir.path(), options);
    let append = |key: u128, text: &str| answer(&journal, vec![entry(key, text)]).unwrap();
    assert_eq!(append(1, "first"), [Appended::Stored { seq: 1 }]);
    // What a rotation leaves when it renamed a spare into place and could not open it: a file
    // with old, lower-seq records where segment 2 goes.
    let mut old = Vec::new();
    record::encode(&mut old, 1, Some(9), b"an old record");
    std::fs::write(segment::segment_path(dir.path(), 2), &old).unwrap();
    assert_eq!(append(2, "second"), [Appended::Stored { seq: 2 }]);
    assert_eq!(append(3, "third"), [Appended::Stored { seq: 3 }]);
    assert_eq!(
        replayed(dir.path(), 0),
        [
            (1, "first".to_string()),
            (2, "second".to_string()),
            (3, "third".to_string())
        ]
    );
}

/// A gate a test opens: until then, whoever waits at it waits.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// Appends and waits at most ten seconds for the answer.
fn answer_soon(journal: &Journal<String>, entries: Vec<Entry<String>>) -> AppendResult {
    let mut receiver = journal.append(entries);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match receiver.try_recv() {
            Ok(answer) => return answer,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no answer within ten seconds: the journal is blocked"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(closed) => panic!("the journal dropped an append: {closed}"),
        }
    }
}

#[test]
fn appends_are_answered_and_deduplicated_while_a_retirement_is_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let held = gate.clone();
    let journal: Journal<String> = Journal::open_with(
        crate::recover(dir.path()).unwrap(),
        a_segment_per_append(),
        Box::new(|_: DurableEntries<String>| {}),
        Hooks {
            before_retire: Box::new(move || held.wait()),
            ..Hooks::default()
        },
    )
    .unwrap();
    for (key, text) in [(1, "a"), (2, "b"), (3, "c")] {
        answer_soon(&journal, vec![entry(key, text)]).unwrap();
    }
    let mut retiring = journal.retire_through(2);

    // The retirement waits at the gate; the journal goes on writing and answering meanwhile,
    // and the keys of the segments being retired still count as stored.
    assert_eq!(
        answer_soon(&journal, vec![entry(4, "d")]).unwrap(),
        [Appended::Stored { seq: 4 }]
    );
    assert_eq!(
        answer_soon(&journal, vec![entry(1, "a again")]).unwrap(),
        [Appended::Duplicate]
    );
    assert!(
        retiring.try_recv().is_err(),
        "the retirement is answered only once done"
    );
    let segment = |first_seq: u64| dir.path().join(format!("{first_seq:020}.seg"));
    assert!(segment(1).exists());

    gate.open();
    assert_eq!(retiring.blocking_recv().unwrap().unwrap(), 2);
    assert!(!segment(1).exists() && !segment(2).exists());
    // Their keys are in a run now, and still refused.
    assert_eq!(
        answer_soon(&journal, vec![entry(2, "b again"), entry(5, "e")]).unwrap(),
        [Appended::Duplicate, Appended::Stored { seq: 5 }]
    );
    drop(journal);
    let (journal, _) = open(dir.path(), JournalOptions::default());
    assert_eq!(
        answer(&journal, vec![entry(1, "a"), entry(2, "b"), entry(4, "d")]).unwrap(),
        [Appended::Duplicate; 3]
    );
}

#[test]
fn a_retirement_that_fails_keeps_its_segments_and_a_later_one_retires_them() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path(), a_segment_per_append());
    for (key, text) in [(1, "a"), (2, "b"), (3, "c")] {
        answer(&journal, vec![entry(key, text)]).unwrap();
    }
    // A file where the run directory should be: the run cannot be written.
    let runs = dir.path().join("dedup");
    std::fs::remove_dir_all(&runs).unwrap();
    std::fs::write(&runs, b"in the way").unwrap();
    let failed = journal
        .retire_through(2)
        .blocking_recv()
        .unwrap()
        .unwrap_err();
    assert!(failed.to_string().contains("dedup"), "{failed}");
    assert!(dir.path().join("00000000000000000001.seg").exists());
    assert_eq!(
        answer(&journal, vec![entry(1, "a again")]).unwrap(),
        [Appended::Duplicate],
        "the keys of segments that stayed still deduplicate"
    );

    std::fs::remove_file(&runs).unwrap();
    std::fs::create_dir(&runs).unwrap();
    assert_eq!(
        journal.retire_through(2).blocking_recv().unwrap().unwrap(),
        2
    );
    assert!(!dir.path().join("00000000000000000001.seg").exists());
    assert!(!dir.path().join("00000000000000000002.seg").exists());
    assert_eq!(
        answer(&journal, vec![entry(1, "a"), entry(2, "b"), entry(9, "i")]).unwrap(),
        [
            Appended::Duplicate,
            Appended::Duplicate,
            Appended::Stored { seq: 4 }
        ]
    );
}

// An error a person can fix says how; others say what happened only.
#[test]
fn io_errors_a_person_can_fix_say_how() {
    let path = Path::new("/srv/kith/journal");
    let denied = JournalError::io(path, std::io::ErrorKind::PermissionDenied.into());
    assert_eq!(
        denied.to_string(),
        "journal i/o error on /srv/kith/journal: permission denied; run Kith as the user that \
         owns the data directory, or give this user read and write access to it"
    );
    let read_only = JournalError::io(path, std::io::ErrorKind::ReadOnlyFilesystem.into());
    assert!(
        read_only
            .to_string()
            .ends_with("; mount it read-write, or copy the data directory to a writable place"),
        "{read_only}"
    );
    let other = JournalError::io(path, std::io::ErrorKind::UnexpectedEof.into());
    assert_eq!(
        other.to_string(),
        "journal i/o error on /srv/kith/journal: unexpected end of file"
    );
}
