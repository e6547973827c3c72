//! The write path every writer shares: the journal, its sink into the event tables and the unify
//! thread, and the data directory's lock. `kith serve` runs one behind its HTTP API; offline
//! commands (imports, manual merges) open one of their own when no server holds the directory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kith_core::{Event, Stored};
use kith_journal::{
    Appended, Durable, DurableEntries, Entry, Journal, JournalError, JournalOptions,
};
use kith_lake::{Lake, LakeError};
use kith_profiles::{
    ChangeTally, ComputedTraitDef, DeclareError, Extractor, ProfileSettings, ProfileStore,
    TallyHandle,
};

use crate::app::ServerError;
use crate::unify::{Ingested, Unifier};

/// The open write path of one data directory.
pub struct Pipeline {
    /// Held (shared) from extracting an event's facts until its append is queued, and
    /// (exclusively) while computed-trait definitions change: so every event before a change is
    /// queued before the change's journal barrier, and every event after it is extracted with the
    /// new definitions.
    extraction: std::sync::RwLock<()>,
    pub lake: Arc<Lake>,
    pub profiles: Arc<ProfileStore>,
    pub unifier: Arc<Unifier>,
    pub journal: Journal<Ingested>,
    /// One permit: computed traits' pasts are computed one after another.
    backfills: Arc<tokio::sync::Semaphore>,
    _lock: File,
}

/// Why a computed trait cannot be declared.
#[derive(Debug, thiserror::Error)]
pub enum TraitError {
    #[error(transparent)]
    Declare(#[from] DeclareError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// What became of events written with [`Pipeline::write`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Journal seq of each stored event, `None` for one already stored (same messageId).
    pub seqs: Vec<Option<u64>>,
}

impl Written {
    pub fn stored(&self) -> usize {
        self.seqs.iter().filter(|s| s.is_some()).count()
    }

    pub fn duplicates(&self) -> usize {
        self.seqs.len() - self.stored()
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.seqs.iter().flatten().max().copied()
    }
}

/// The journal entry of one accepted event: its identity facts are extracted here, on the
/// writer's thread, so the unify thread only applies them.
pub fn event_entry(
    extractor: &Extractor,
    event: Event,
    tally: Option<&Arc<ChangeTally>>,
) -> Entry<Ingested> {
    let dedup_key = Some(event.dedup_key());
    // Encoded first, so the facts can take what they keep from the event instead of copying
    // it; the rest of the event is freed here, on the thread that made it (the tables read the
    // encoded record).
    let payload = Stored::encode_event(&event);
    let mut facts = extractor.into_facts(event);
    facts.tally = tally.map(|t| TallyHandle(t.clone()));
    Entry {
        dedup_key,
        payload,
        item: Ingested { facts: Some(facts) },
    }
}

impl Pipeline {
    /// Locks the data directory, opens the stores, replays the journal into them, recomputes
    /// changed computed traits and opens the journal for writing.
    pub async fn open(
        data_dir: &Path,
        profile_settings: ProfileSettings,
        journal_options: JournalOptions,
    ) -> Result<Pipeline, ServerError> {
        let lock = lock_data_dir(data_dir)?;
        let lake = Arc::new(Lake::open(data_dir).await?);
        lake.create_missing_tables().await?;
        lake.name_tables_built_on_request(&crate::profiles::PROFILE_TABLE_NAMES);
        let profiles = Arc::new(ProfileStore::open(data_dir, profile_settings)?);
        // Recovered before the replay, which must see the records recovery saves from past
        // damage; replayed before the journal opens for writing: the unify thread must not see
        // newer events before the replayed ones.
        let recovered = kith_journal::recover(&journal_dir(data_dir))?;
        let replayed = replay_into(&lake, Some(&profiles), &journal_dir(data_dir))?;
        tracing::info!(
            replayed,
            "journal replayed into the event buffers and profiles"
        );
        backfill_computed_traits(&lake, &profiles).await?;
        let unifier = Arc::new(
            Unifier::start(profiles.clone(), Duration::from_secs(1))
                .map_err(ServerError::Thread)?,
        );
        let (sink_lake, sink_unifier) = (lake.clone(), unifier.clone());
        // A journal removed, or damaged past what the stores hold, must not number new events
        // as ones they have (they would skip them).
        let stores_hold = lake.highest_committed_seq().max(profiles.applied_seq());
        let journal = Journal::open_recovered(
            recovered.number_after(stores_hold),
            journal_options,
            Box::new(move |items: DurableEntries<Ingested>| {
                let mut records = Vec::with_capacity(items.len());
                let mut facts = Vec::with_capacity(items.len());
                for Durable { seq, payload, item } in items {
                    if let Some(f) = item.facts {
                        facts.push((seq, f));
                    }
                    records.push((seq, payload));
                }
                sink_lake.ingest(records);
                sink_unifier.send(facts);
            }),
        )?;
        Ok(Pipeline {
            extraction: std::sync::RwLock::new(()),
            lake,
            profiles,
            unifier,
            journal,
            backfills: Arc::new(tokio::sync::Semaphore::new(1)),
            _lock: lock,
        })
    }

    /// Writes accepted events durably (deduplicated on messageId), counting what they change in
    /// the profiles into `tally` when given. Returns once they are on disk; profiles see them
    /// within milliseconds (see [`Pipeline::wait_for_profiles`]).
    pub async fn write(
        &self,
        events: Vec<Event>,
        tally: Option<&Arc<ChangeTally>>,
    ) -> Result<Written, JournalError> {
        if events.is_empty() {
            return Ok(Written::default());
        }
        let appended = self
            .append_with(|extractor| {
                events
                    .into_iter()
                    .map(|event| event_entry(extractor, event, tally))
                    .collect()
            })
            .await
            .map_err(|_| JournalError::Stopped)??;
        Ok(Written {
            seqs: appended
                .into_iter()
                .map(|a| match a {
                    Appended::Stored { seq } => Some(seq),
                    Appended::Duplicate => None,
                })
                .collect(),
        })
    }

    /// Builds entries with the extraction settings of this moment and queues them on the journal.
    /// Every writer goes through here (see `extraction`).
    pub fn append_with(
        &self,
        build: impl FnOnce(&Extractor) -> Vec<Entry<Ingested>>,
    ) -> tokio::sync::oneshot::Receiver<kith_journal::AppendResult> {
        let _extracting = self.extraction.read().unwrap_or_else(|p| p.into_inner());
        let extractor = self.profiles.extractor();
        let entries = build(&extractor);
        self.journal.append(entries)
    }

    /// Declares a computed trait: from now on every event counts towards it, and its past is
    /// computed from the stored events in the background (its status is `computing` until then).
    ///
    /// Ordering makes this exact while ingestion goes on: under the exclusive extraction lock the
    /// definitions change and a journal barrier is queued. Events queued before the barrier
    /// (seq ≤ S) were extracted without the trait; the barrier then queues the trait's reset on
    /// the unify thread behind them; events after it carry the trait. The background task adds
    /// the events with seq ≤ S read from the event tables, which commutes with the live ones.
    pub fn declare_trait(&self, def: ComputedTraitDef) -> Result<(), TraitError> {
        let name = def.name.clone();
        // Held until the definitions are installed: see `Registered`.
        let registered = self.profiles.register_trait(def)?;
        let (reset_done, reset_seen) = tokio::sync::oneshot::channel();
        let (barrier_seq, barrier_seen) = tokio::sync::oneshot::channel::<u64>();
        {
            let _changing = self.extraction.write().unwrap_or_else(|p| p.into_inner());
            self.profiles
                .install_definitions(registered.definitions.clone());
            let (unifier, reset_name) = (self.unifier.clone(), name.clone());
            self.journal.barrier(Box::new(move |last_seq| {
                unifier.reset_trait(reset_name, reset_done);
                let _ = barrier_seq.send(last_seq);
            }))?;
        }
        let declaration = registered.declaration;
        drop(registered);
        let (lake, profiles) = (self.lake.clone(), self.profiles.clone());
        let backfills = self.backfills.clone();
        tokio::spawn(async move {
            let (Ok(through_seq), Ok(())) = (barrier_seen.await, reset_seen.await) else {
                tracing::error!(trait_name = %name, "the trait's past was not computed: the write path stopped; it is on the next start");
                return;
            };
            // One past at a time: each takes a core for as long as it reads every stored event.
            let Ok(_turn) = backfills.acquire_owned().await else {
                return;
            };
            // Heavy work, on the query runtime as analyses and model runs are: it keeps the
            // request threads free, and gives the memory it used back when it ends.
            let done = crate::runtimes::spawn_query(async move {
                let names = [name];
                let counted = add_stored_observations(
                    &lake,
                    &profiles,
                    &names,
                    through_seq,
                    Some(declaration),
                )
                .await;
                // `None`: the trait was removed meanwhile.
                let finished = counted.map(|counted| {
                    profiles
                        .traits_computed(&names, counted, Some(declaration))
                        .then_some(counted)
                });
                let [name] = names;
                (name, finished)
            })
            .await;
            match done {
                Ok((name, Ok(Some(counted)))) => {
                    tracing::info!(trait_name = %name, observations = counted, "computed trait ready")
                }
                Ok((name, Ok(None))) => {
                    tracing::info!(trait_name = %name, "a computed trait was removed before its past was computed")
                }
                Ok((name, Err(e))) => {
                    tracing::error!(trait_name = %name, error = %e, "reading stored events for a new trait failed: the values it shows count only part of its past until the next start, which computes it again")
                }
                Err(e) => tracing::error!(error = %e, "computing a trait's past failed"),
            }
        });
        Ok(())
    }

    /// Waits until the unify thread has applied every event through `seq`.
    pub async fn wait_for_profiles(&self, seq: u64) {
        let mut pause = Duration::from_millis(1);
        while self.profiles.applied_seq() < seq {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Writes the tables whose buffered rows are due (`flush_rows` of them, or the oldest waiting
    /// `flush_interval`) to Delta, then retires the journal segments both the tables and
    /// `profiles.db` hold. Returns whether anything was written.
    pub async fn flush_due(&self, flush_rows: usize, flush_interval: Duration) -> bool {
        let mut flushed = false;
        self.lake.seal();
        for table in self.lake.tables() {
            let (rows, oldest) = table.pending();
            let due = rows >= flush_rows || oldest.is_some_and(|t| t.elapsed() >= flush_interval);
            if !due {
                continue;
            }
            match table.flush().await {
                Ok(_) => flushed = true,
                Err(e) => {
                    metrics::counter!("kith_lake_flush_errors_total").increment(1);
                    tracing::error!(table = table.name, error = %e, "flush failed; will retry");
                }
            }
        }
        if !flushed {
            return false;
        }
        // A segment may go once both the event tables and profiles.db hold its records.
        let through = self
            .lake
            .durable_through()
            .min(self.profiles.persisted_seq());
        match self.journal.retire_through(through).await {
            Ok(Ok(retired)) if retired > 0 => {
                tracing::debug!(retired, through, "journal segments retired")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "journal retirement failed"),
            _ => {}
        }
        true
    }

    /// Writes every buffered row to Delta, `profiles.db` up to date, and retires the journal
    /// segments both now hold. Call before dropping an offline pipeline.
    pub async fn close(self) -> Result<(), ServerError> {
        let rows = self.lake.flush().await?;
        self.unifier.stop();
        let through = self
            .lake
            .durable_through()
            .min(self.profiles.persisted_seq());
        match self.journal.retire_through(through).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(JournalError::Stopped.into()),
        }
        tracing::info!(
            rows,
            persisted_seq = self.profiles.persisted_seq(),
            "event tables and profiles written"
        );
        Ok(())
    }
}

pub fn lock_data_dir(data_dir: &Path) -> Result<File, ServerError> {
    let io = |source| ServerError::DataDir {
        path: data_dir.display().to_string(),
        source,
    };
    kith_state::create_data_dir(data_dir).map_err(io)?;
    let path = data_dir.join("kith.lock");
    // Not truncated on opening: what the holder wrote stays for the next one to read.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {
            // Which process holds it, for the message another one gives; only a hint, so a
            // full disk that refuses it does not keep the data directory from being used.
            let _ = file
                .set_len(0)
                .and_then(|()| write!(file, "{}", std::process::id()));
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::DataDirLocked {
            path: data_dir.display().to_string(),
            holder: std::fs::read_to_string(&path)
                .ok()
                .and_then(|pid| pid.trim().parse().ok()),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Decodes a journal payload.
pub fn decode_record(seq: u64, payload: &[u8]) -> Result<Stored, ServerError> {
    Stored::decode(payload).map_err(|e| ServerError::BadRecord {
        seq,
        reason: e.to_string(),
    })
}

/// Feeds the journal records the event tables (and, when given, the profiles) miss into them.
pub fn replay_into(
    lake: &Lake,
    profiles: Option<&ProfileStore>,
    journal_dir: &Path,
) -> Result<u64, ServerError> {
    let after = replay_after(lake, profiles);
    let mut chunk = Vec::new();
    let mut replayed = 0u64;
    let mut failure = None;
    kith_journal::read_after(journal_dir, after, |record| {
        chunk.push((record.seq, record.payload));
        replayed += 1;
        if chunk.len() >= REPLAY_CHUNK
            && let Err(e) = replay_chunk(lake, profiles, std::mem::take(&mut chunk))
        {
            failure = Some(e);
            return Err(JournalError::Stopped);
        }
        Ok(())
    })
    .map_err(|e| failure.take().unwrap_or(ServerError::Journal(e)))?;
    replay_chunk(lake, profiles, chunk)?;
    Ok(replayed)
}

/// Where a replay into `lake` (and `profiles`) starts: after the lowest seq one of them may lack.
fn replay_after(lake: &Lake, profiles: Option<&ProfileStore>) -> u64 {
    profiles.map_or(lake.replay_after(), |p| {
        lake.replay_after().min(p.applied_seq())
    })
}

/// The journal's records after `after`, read into memory, for a reader that opens the tables
/// and the profiles only afterwards (`kith sql` beside a running server; see
/// [`replay_records`]).
pub fn read_journal(journal_dir: &Path, after: u64) -> Result<Vec<(u64, Vec<u8>)>, ServerError> {
    let mut records = Vec::new();
    kith_journal::read_after(journal_dir, after, |record| {
        records.push((record.seq, record.payload));
        Ok(())
    })
    .map_err(ServerError::Journal)?;
    Ok(records)
}

/// Feeds records read by [`read_journal`] into the tables (and the profiles): each takes only
/// those it lacks.
pub fn replay_records(
    lake: &Lake,
    profiles: Option<&ProfileStore>,
    records: Vec<(u64, Vec<u8>)>,
) -> Result<u64, ServerError> {
    let replayed = records.len() as u64;
    // In order (profiles skip seqs at or below the last they applied), each chunk a vector of
    // its own size: the tables keep the vectors they are given until they seal.
    let mut records = records.into_iter();
    loop {
        let chunk: Vec<(u64, Vec<u8>)> = records.by_ref().take(REPLAY_CHUNK).collect();
        if chunk.is_empty() {
            return Ok(replayed);
        }
        replay_chunk(lake, profiles, chunk)?;
    }
}

/// Records replayed at a time: their events are decoded for the profiles a chunk at a time.
const REPLAY_CHUNK: usize = 10_000;

fn replay_chunk(
    lake: &Lake,
    profiles: Option<&ProfileStore>,
    chunk: Vec<(u64, Vec<u8>)>,
) -> Result<(), ServerError> {
    // The tables take the bytes; the profiles need the decoded event. Decoding also checks the
    // record, so one that does not decode stops replay with or without profiles.
    let mut events = Vec::with_capacity(if profiles.is_some() { chunk.len() } else { 0 });
    for (seq, payload) in &chunk {
        match decode_record(*seq, payload)? {
            Stored::Event(event) if profiles.is_some() => events.push((*seq, event)),
            _ => {}
        }
    }
    if let Some(profiles) = profiles {
        let events: Vec<(u64, &kith_core::Event)> =
            events.iter().map(|(seq, event)| (*seq, event)).collect();
        profiles.apply_events(&events);
    }
    lake.ingest(chunk);
    Ok(())
}

/// Recomputes computed traits declared or changed since the profiles were kept, from the stored
/// events (before anything new is applied).
pub async fn backfill_computed_traits(
    lake: &Lake,
    profiles: &ProfileStore,
) -> Result<(), ServerError> {
    let Some((names, through_seq)) = profiles.backfill_plan() else {
        return Ok(());
    };
    tracing::info!(traits = ?names, through_seq, "reading stored events to compute new traits");
    let counted = add_stored_observations(lake, profiles, &names, through_seq, None)
        .await
        .map_err(|e| LakeError::Delta(format!("reading events to compute traits: {e}")))?;
    profiles.traits_computed(&names, counted, None);
    Ok(())
}

/// Folds every stored event through `through_seq` into the named traits' past, a batch at a
/// time (for `declaration` only, when given: see `ProfileStore::add_past_observations`);
/// returns how many observations were added.
async fn add_stored_observations(
    lake: &Lake,
    profiles: &ProfileStore,
    names: &[String],
    through_seq: u64,
    declaration: Option<u64>,
) -> Result<u64, kith_lake::QueryError> {
    let mut counted = 0;
    lake.each_stored_event(through_seq, |events| {
        counted += profiles.add_past_observations(names, through_seq, &events, declaration);
    })
    .await?;
    Ok(counted)
}

pub fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("journal")
}

#[cfg(test)]
mod tests;
