use std::collections::HashSet;

use super::run::Run;
use super::*;

/// Uniform 128-bit keys, like xxh3 hashes (splitmix64, deterministic).
pub(crate) fn keys(seed: u64, n: usize) -> Vec<u128> {
    let mut state = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| (u128::from(next()) << 64) | u128::from(next()))
        .collect()
}

/// An index in `dir` holding `keys`, each new to it.
fn index_holding(dir: &Path, keys: &[u128]) -> KeyIndex {
    let mut index = KeyIndex::open(dir, LiveKeys::default()).unwrap();
    for key in keys {
        assert!(index.insert(*key).unwrap());
    }
    index
}

fn run_files(journal_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(journal_dir.join(RUNS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn range(first: u64, last: u64) -> SeqRange {
    SeqRange { first, last }
}

#[test]
fn a_run_finds_every_key_it_holds_and_none_it_does_not() {
    let dir = tempfile::tempdir().unwrap();
    // More than one block, and a last block that is not full.
    let held = keys(1, 3 * 256 + 17);
    let run = Run::write(dir.path(), range(1, 9), &held).unwrap();
    assert_eq!(run.count, held.len() as u64);
    for key in &held {
        assert!(run.contains(*key).unwrap());
    }
    // Absent keys, including ones below the first and above the last key; the filter lets a
    // few through to the block read, which must then say no.
    let mut absent = keys(2, 20_000);
    absent.extend([0, u128::MAX]);
    assert!(absent.iter().all(|k| !run.contains(*k).unwrap()));
    // Reopened from the file: same answers.
    let reopened = Run::open(&run.path, run.range).unwrap();
    assert!(held.iter().all(|k| reopened.contains(*k).unwrap()));
    assert!(absent.iter().all(|k| !reopened.contains(*k).unwrap()));
}

#[test]
fn merging_runs_keeps_every_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = keys(3, 1_000);
    let mut b = keys(4, 700);
    b.extend_from_slice(&a[..50]); // a key in both (a crash before segments were deleted)
    let run_a = Run::write(dir.path(), range(1, 10), &a).unwrap();
    let run_b = Run::write(dir.path(), range(11, 20), &b).unwrap();
    let merged = Run::merge(dir.path(), &[run_a.input(), run_b.input()]).unwrap();
    assert_eq!(merged.range, range(1, 20));
    assert_eq!(merged.count, 1_700);
    assert!(a.iter().chain(&b).all(|k| merged.contains(*k).unwrap()));
    let reopened = Run::open(&merged.path, merged.range).unwrap();
    assert_eq!(reopened.count, 1_700);
}

#[test]
fn a_damaged_run_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(range(1, 2).file_name());
    let mut bytes = b"KITHDDK1".to_vec();
    bytes.extend(5u128.to_le_bytes());
    bytes.extend(3u128.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let err = Run::open(&path, range(1, 2)).unwrap_err();
    assert!(err.to_string().contains("ascending"), "{err}");
    fs::write(&path, &bytes[..20]).unwrap();
    let err = Run::open(&path, range(1, 2)).unwrap_err();
    assert!(err.to_string().contains("whole number"), "{err}");
    fs::write(&path, b"NOTARUN!").unwrap();
    let err = Run::open(&path, range(1, 2)).unwrap_err();
    assert!(err.to_string().contains("magic"), "{err}");
}

#[test]
fn retired_keys_leave_memory_and_stay_known_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let first = keys(5, 500);
    let mut index = index_holding(dir.path(), &first);
    assert!(!index.insert(first[7]).unwrap(), "a repeat within memory");
    index.retire(range(1, 500), first.clone()).unwrap();
    assert_eq!(index.live_count(), 0);
    assert!(
        !index.insert(first[9]).unwrap(),
        "a repeat of a retired key"
    );
    assert_eq!(index.live_count(), 0, "a refused key is not recorded");
    drop(index);

    let index = KeyIndex::open(dir.path(), LiveKeys::default()).unwrap();
    assert!(first.iter().all(|k| index.contains(*k).unwrap()));
    assert!(!keys(6, 1_000).iter().any(|k| index.contains(*k).unwrap()));
}

#[test]
fn retired_keys_leave_memory_a_slice_at_a_time_and_are_found_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let retired = keys(7, 1_000);
    let mut index = index_holding(dir.path(), &retired);
    let run = write_run(index.dir(), range(1, 1_000), &retired).unwrap();
    index.add_retired(Some(run), retired.clone()).unwrap();
    assert_eq!(index.live_count(), 1_000, "nothing leaves memory at once");
    let mut steps = 0;
    while index.forget_retired(300) {
        steps += 1;
        assert_eq!(index.live_count(), 1_000 - 300 * steps);
        assert!(retired.iter().all(|k| index.contains(*k).unwrap()));
        assert!(!index.insert(retired[steps * 11]).unwrap());
    }
    assert_eq!((steps, index.live_count()), (3, 0));
    assert!(retired.iter().all(|k| index.contains(*k).unwrap()));
}

#[test]
fn many_retirements_leave_few_runs_and_lose_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = KeyIndex::open(dir.path(), LiveKeys::default()).unwrap();
    let mut all = Vec::new();
    let mut seq = 0u64;
    for segment in 0..64u64 {
        // Segments of slightly different sizes, as real ones are.
        let batch = keys(100 + segment, 200 + (segment as usize * 37) % 50);
        for key in &batch {
            assert!(index.insert(*key).unwrap());
        }
        let first = seq + 1;
        seq += batch.len() as u64;
        index.retire(range(first, seq), batch.clone()).unwrap();
        all.extend(batch);
        // Merges run in the background; lookups meanwhile see the inputs.
        assert!(all.iter().step_by(97).all(|k| index.contains(*k).unwrap()));
    }
    index.finish_merges().unwrap();
    // A binary counter of 64 similar runs: a handful remain.
    assert!(index.run_count() <= 7, "{} runs", index.run_count());
    assert_eq!(run_files(dir.path()).len(), index.run_count());
    assert!(all.iter().all(|k| index.contains(*k).unwrap()));
    let distinct: HashSet<u128> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len());
    // About 2 bytes a key, whatever the number of keys.
    assert!(
        index.memory_bytes() < all.len() * 3,
        "{}",
        index.memory_bytes()
    );
    drop(index);
    let index = KeyIndex::open(dir.path(), LiveKeys::default()).unwrap();
    assert!(all.iter().all(|k| index.contains(*k).unwrap()));
}

#[test]
fn leftovers_of_an_interrupted_merge_are_cleared_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let runs_dir = dir.path().join(RUNS_DIR);
    fs::create_dir_all(&runs_dir).unwrap();
    let a = keys(7, 300);
    let b = keys(8, 300);
    let run_a = Run::write(&runs_dir, range(1, 300), &a).unwrap();
    let run_b = Run::write(&runs_dir, range(301, 600), &b).unwrap();
    // The merge finished, but the crash came before its inputs were deleted ...
    Run::merge(&runs_dir, &[run_a.input(), run_b.input()]).unwrap();
    // ... and another merge was half written.
    fs::write(
        runs_dir.join("00000000000000000001-00000000000000000900.run.tmp"),
        b"KITH",
    )
    .unwrap();
    drop((run_a, run_b));
    let index = KeyIndex::open(dir.path(), LiveKeys::default()).unwrap();
    assert_eq!(
        run_files(dir.path()),
        ["00000000000000000001-00000000000000000600.run"]
    );
    assert!(a.iter().chain(&b).all(|k| index.contains(*k).unwrap()));
}

#[test]
fn segments_retired_again_after_a_crash_do_not_disturb_their_run() {
    let dir = tempfile::tempdir().unwrap();
    let retired = keys(9, 400);
    let mut index = KeyIndex::open(dir.path(), LiveKeys::default()).unwrap();
    index.retire(range(1, 400), retired.clone()).unwrap();
    drop(index);
    // The crash came before the segments were deleted: at start-up their keys are live again,
    // and they are retired again, whole or in part.
    let live: LiveKeys = retired.iter().copied().collect();
    let mut index = KeyIndex::open(dir.path(), live).unwrap();
    index
        .retire(range(201, 400), retired[200..].to_vec())
        .unwrap();
    index.retire(range(1, 400), retired.clone()).unwrap();
    index.finish_merges().unwrap();
    assert_eq!(index.live_count(), 0);
    assert_eq!(
        run_files(dir.path()),
        ["00000000000000000001-00000000000000000400.run"]
    );
    assert!(retired.iter().all(|k| index.contains(*k).unwrap()));
}

#[test]
fn the_old_single_key_file_becomes_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let old = keys(10, 1_000);
    let mut bytes: Vec<u8> = old.iter().flat_map(|k| k.to_le_bytes()).collect();
    bytes.extend_from_slice(&[1, 2, 3]); // a torn last append
    fs::write(dir.path().join(LEGACY_KEYS_FILE), &bytes).unwrap();
    let index = KeyIndex::open(dir.path(), LiveKeys::default()).unwrap();
    assert!(!dir.path().join(LEGACY_KEYS_FILE).exists());
    assert!(old.iter().all(|k| index.contains(*k).unwrap()));
    assert_eq!(
        run_files(dir.path()),
        ["00000000000000000000-00000000000000000000.run"]
    );
}
