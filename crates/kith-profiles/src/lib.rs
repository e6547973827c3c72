//! Customer profiles: one per person, kept current as events arrive.
//!
//! Events reach [`ProfileStore::apply`] in journal order (the server calls it from its unify
//! thread within milliseconds of the ack). Each event's identifiers go through the resolver
//! ([`kith_identity`]); its traits, consent and figures are kept per identifier and folded into the
//! profile when read, so merges never rewrite anything. [`ProfileStore::persist`] writes the
//! changes to `profiles.db` with the journal seq they reach.

pub mod computed;
pub mod duplicates;
pub mod extract;
pub mod facts;
pub mod model_traits;
pub mod persist;
mod resident;
pub mod tally;
pub mod view;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use hashbrown::HashSet;
use kith_core::Event;
use kith_identity::{
    IdType, Identifier, IdentityRules, Lookup, Normalizer, Observation, ProfileRef, Resolver,
};
use rusqlite::Connection;
use serde_json::Value;
use thiserror::Error;

pub use computed::{ComputedTraitDef, DefinitionError};
pub use duplicates::{DuplicateCandidate, DuplicateFinder, Duplicates, find_duplicates};
pub use extract::{
    EventFacts, Extractor, KITH_SOURCE, MANUAL_MERGE_EVENT, MANUAL_MERGE_ID_PREFIX, TallyHandle,
    is_manual_merge,
};
pub use facts::{IdentifierFacts, ProfileFacts, TraitMap, TraitValue};
pub use model_traits::{ModelRun, ModelTraitStore};
pub use resident::DEFAULT_RESIDENT_FACTS;
pub use tally::{ChangeCounts, ChangeTally, ProfileChange};
pub use view::ProfileView;

#[derive(Debug, Error)]
pub enum ProfileError {
    #[error("profile store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("i/o error on {0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("profile store is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    ModelTraits(String),
}

/// How profiles are resolved in a workspace.
#[derive(Debug, Clone)]
pub struct ProfileSettings {
    pub normalizer: Normalizer,
    pub rules: IdentityRules,
    pub identifier_traits: Vec<String>,
    pub order_event: String,
    /// Declared computed traits (validated).
    pub computed: Vec<ComputedTraitDef>,
    /// How many identifiers' facts (traits, consent, figures) memory holds besides those not
    /// persisted yet; the others are read from `profiles.db` when needed.
    pub resident_facts: usize,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        ProfileSettings {
            normalizer: Normalizer::new("MX", Vec::new()).expect("MX is a region"),
            rules: IdentityRules::default(),
            identifier_traits: Vec::new(),
            order_event: "Order Completed".to_string(),
            computed: Vec::new(),
            resident_facts: DEFAULT_RESIDENT_FACTS,
        }
    }
}

/// How many distinct profiles hold the known ones among `identifiers`.
fn distinct_profiles(resolver: &Resolver, identifiers: &[Identifier]) -> usize {
    let mut profiles: Vec<ProfileRef> = identifiers
        .iter()
        .filter_map(|i| resolver.profile_of(i))
        .collect();
    profiles.sort_unstable();
    profiles.dedup();
    profiles.len()
}

/// What applying an event did, given how many profiles its identifiers were spread over before.
fn classify(
    resolver: &Resolver,
    facts: &EventFacts,
    profiles_before: usize,
    changed: bool,
) -> ProfileChange {
    if facts.identifiers.is_empty() {
        return ProfileChange::Unattributed;
    }
    match profiles_before {
        0 => ProfileChange::Created,
        1 if changed => ProfileChange::Updated,
        1 => ProfileChange::Unchanged,
        _ if distinct_profiles(resolver, &facts.identifiers) == 1 => ProfileChange::Merged,
        _ => ProfileChange::Conflict,
    }
}

/// A computed trait as the API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeclaredTrait {
    #[serde(flatten)]
    pub definition: ComputedTraitDef,
    /// `kith.toml` or `api`.
    pub declared_in: &'static str,
    /// `computing` while its past is being computed, then `ready`.
    pub status: &'static str,
}

/// Why a computed trait cannot be declared or removed.
#[derive(Debug, Error)]
pub enum DeclareError {
    #[error(transparent)]
    Invalid(#[from] DefinitionError),
    #[error("a computed trait named `{0}` exists already; remove it first or choose another name")]
    Exists(String),
    #[error("`{0}` is declared in kith.toml; change it there")]
    InConfig(String),
    #[error("no computed trait is named `{0}`")]
    NotFound(String),
    #[error("the profile store is open read-only")]
    ReadOnly,
    #[error(transparent)]
    Store(#[from] ProfileError),
}

/// Why a lookup found nothing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LookupError {
    #[error(
        "`{0}` is not an identifier type here; use profile_id, user_id, anonymous_id, email, phone{1}"
    )]
    UnknownType(String, String),
    #[error("`{value}` is not a valid {id_type}: {reason}")]
    InvalidValue {
        id_type: String,
        value: String,
        reason: String,
    },
    /// The profile's facts could not be read back from `profiles.db`.
    #[error("the profile store could not be read: {0}")]
    Unreadable(String),
}

struct State {
    resolver: Resolver,
    /// Per-identifier facts in memory; every identifier missing here has its latest facts in
    /// `profiles.db` (see [`resident`]).
    facts: resident::ResidentFacts,
    pending: persist::Pending,
    dirty_facts: HashSet<Identifier>,
    /// External identifier types seen so far.
    external_types: HashSet<String>,
    /// History being written by [`ProfileStore::persist`] right now: readers see it here until
    /// it is committed.
    history_in_flight: Vec<(Identifier, facts::TraitChange)>,
}

/// How many profiles [`ProfileStore::for_each_view`] reads under one hold of the store's lock
/// (about 60 ms of a pass at hundreds of thousands of profiles).
const VIEWS_PER_LOCK: usize = 1024;

/// How many of a profile's identifiers are tried when it has no model traits under its own id.
const MODEL_TRAIT_FALLBACK_IDS: usize = 32;

pub struct ProfileStore {
    /// Swapped whole when computed traits are declared or removed through the API; every event
    /// is extracted with one consistent set of definitions.
    extractor: RwLock<Arc<Extractor>>,
    /// Names of the computed traits `kith.toml` declares (the API cannot change those).
    config_traits: Vec<String>,
    /// Traits declared through the API whose past is still being computed, each with the number
    /// of its declaration: a trait removed and declared again under the same name while the
    /// first declaration's past was still waiting is a new declaration, which the first one's
    /// recomputation must not touch.
    computing: Mutex<HashMap<String, u64>>,
    /// Declarations numbered so far.
    declarations: AtomicU64,
    /// Held from reading the computed-trait definitions to installing the changed ones, so two
    /// declarations (or a declaration and a removal) at once do not each install their own
    /// change to the same definitions, losing the other's.
    changing_definitions: Mutex<()>,
    state: RwLock<State>,
    writer: Mutex<Option<Connection>>,
    reader: Mutex<Connection>,
    /// What passes over every profile ([`ProfileStore::for_each_view`]) read through, one read
    /// transaction per range, so point lookups never wait behind a range.
    scan_reader: Mutex<Connection>,
    applied_seq: AtomicU64,
    persisted_seq: AtomicU64,
    backfill: Mutex<Option<Backfill>>,
    /// Scores models and analyses write (`model_traits.db`), shown with each profile.
    model_traits: ModelTraitStore,
    /// Computed traits whose states read from `profiles.db` are left out: a read-only store's
    /// traits declared differently from how the states were kept (a writable store rewrote
    /// them on disk instead).
    discarded_on_read: HashSet<String>,
    /// Run by a pass over every profile each time it has let go of the store's lock between
    /// ranges: how tests change the store in the middle of a pass.
    #[cfg(test)]
    between_ranges: Mutex<Option<BetweenRanges>>,
}

#[cfg(test)]
type BetweenRanges = Box<dyn FnMut(&ProfileStore) + Send>;

struct Backfill {
    names: Vec<String>,
    through_seq: u64,
}

impl ProfileStore {
    /// Opens `profiles.db` in `data_dir` and rebuilds the profiles from it.
    pub fn open(data_dir: &Path, settings: ProfileSettings) -> Result<ProfileStore, ProfileError> {
        Self::open_with(data_dir, settings, true)
    }

    /// Opens `profiles.db` to read beside a running server, which owns it: nothing is ever
    /// written to it, also not when the computed traits declared here differ from those its
    /// states were kept for (their states are left out as they are read, instead of dropped
    /// on disk: the server's would be lost).
    pub fn open_read_only(
        data_dir: &Path,
        settings: ProfileSettings,
    ) -> Result<ProfileStore, ProfileError> {
        Self::open_with(data_dir, settings, false)
    }

    fn open_with(
        data_dir: &Path,
        settings: ProfileSettings,
        writable: bool,
    ) -> Result<ProfileStore, ProfileError> {
        // A reader of a directory without the stores' files yet reads empty ones, and creates
        // none: `kith sql` on a directory holding only keys left two databases behind.
        let absent = |file: &str| !writable && !data_dir.join(file).exists();
        let open = || {
            if absent(persist::DB_FILE) {
                persist::open_empty()
            } else {
                persist::open(data_dir)
            }
        };
        let mut writer = open()?;
        let reader = open()?;
        let scan_reader = open()?;
        let model_traits = if absent(model_traits::DB_FILE) {
            ModelTraitStore::open_empty()?
        } else {
            ModelTraitStore::open(data_dir)?
        };
        let mut resolver = Resolver::new(settings.rules.clone());
        let mut external_types = HashSet::new();
        let loaded = persist::load(&writer, |row| match row {
            persist::GraphRow::Identifier(identifier, key) => {
                if let IdType::External(name) = &identifier.id_type
                    && !external_types.contains(name)
                {
                    external_types.insert(name.clone());
                }
                resolver.load_identifier(&identifier, &key);
            }
            persist::GraphRow::Link(link) => {
                resolver.observe(&link);
            }
        })?;
        // Identifiers no link names become profiles of their own; slots of profiles merged
        // away go.
        resolver.compact();
        let config_traits: Vec<String> = settings.computed.iter().map(|d| d.name.clone()).collect();
        let mut settings = settings;
        for def in persist::load_api_defs(&writer)? {
            if config_traits.contains(&def.name) {
                tracing::warn!(name = %def.name, "a computed trait declared through the API is also in kith.toml; the kith.toml definition is used");
                continue;
            }
            settings.computed.push(def);
        }
        // Computed traits declared or changed since the states were kept must be recomputed from
        // the stored events; traits no longer declared are dropped.
        let stale: Vec<String> = settings
            .computed
            .iter()
            .filter(|def| !loaded.computed_defs.contains(def))
            .map(|def| def.name.clone())
            .collect();
        let removed: Vec<String> = loaded
            .computed_defs
            .iter()
            .filter(|kept| !settings.computed.iter().any(|d| d.name == kept.name))
            .map(|kept| kept.name.clone())
            .collect();
        let mut discarded_on_read = HashSet::new();
        if !writable {
            discarded_on_read.extend(stale.iter().chain(&removed).cloned());
        } else if !stale.is_empty() || !removed.is_empty() {
            // Their stored states go now, on disk, a chunk at a time: a crash before the
            // recomputed ones are written finds the old definitions recorded and does this again.
            let cleared = persist::rewrite_facts(
                &mut writer,
                |_| false,
                |identifier_facts| {
                    let before = identifier_facts.computed.len();
                    identifier_facts.computed.retain(|name, _| {
                        !stale.contains(name) && settings.computed.iter().any(|d| &d.name == name)
                    });
                    identifier_facts.computed.len() != before
                },
            )?;
            tracing::info!(
                identifiers = cleared,
                "stored states of changed or removed computed traits dropped"
            );
        }
        let mut pending = persist::Pending::default();
        let backfill = if !stale.is_empty() && loaded.applied_seq > 0 {
            tracing::info!(traits = ?stale, "computed traits changed; they will be recomputed from the stored events");
            Some(Backfill {
                names: stale,
                through_seq: loaded.applied_seq,
            })
        } else {
            if settings.computed != loaded.computed_defs {
                pending.computed_defs = Some(settings.computed.clone());
            }
            None
        };
        let resident_facts = settings.resident_facts;
        tracing::info!(
            profiles = resolver.profile_count(),
            identifiers = resolver.identifier_count(),
            applied_seq = loaded.applied_seq,
            "profiles loaded"
        );
        Ok(ProfileStore {
            extractor: RwLock::new(Arc::new(Extractor {
                normalizer: settings.normalizer,
                identifier_traits: settings.identifier_traits,
                order_event: settings.order_event,
                computed: settings.computed,
            })),
            config_traits,
            computing: Mutex::new(HashMap::new()),
            declarations: AtomicU64::new(0),
            changing_definitions: Mutex::new(()),
            state: RwLock::new(State {
                resolver,
                facts: resident::ResidentFacts::new(resident_facts),
                pending,
                dirty_facts: HashSet::new(),
                external_types,
                history_in_flight: Vec::new(),
            }),
            writer: Mutex::new(writable.then_some(writer)),
            reader: Mutex::new(reader),
            scan_reader: Mutex::new(scan_reader),
            applied_seq: AtomicU64::new(loaded.applied_seq),
            persisted_seq: AtomicU64::new(loaded.applied_seq),
            backfill: Mutex::new(backfill),
            model_traits,
            discarded_on_read,
            #[cfg(test)]
            between_ranges: Mutex::new(None),
        })
    }

    /// The computed traits that must be recomputed from stored events, and through which journal
    /// seq (later events reach them as they arrive), or `None`.
    pub fn backfill_plan(&self) -> Option<(Vec<String>, u64)> {
        self.backfill
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|b| (b.names.clone(), b.through_seq))
    }

    /// Adds the observations of stored events with seq up to `through_seq` to the named traits
    /// (their later events reach them as they arrive; the two commute, so the stored events may
    /// come in any order and in as many calls as the caller likes). Returns how many
    /// observations were added; [`ProfileStore::traits_computed`] ends the recomputation.
    ///
    /// With `declaration` (the number [`ProfileStore::register_trait`] gave), nothing is added
    /// once that declaration is no longer being computed: the trait was removed, and perhaps
    /// declared again.
    pub fn add_past_observations(
        &self,
        names: &[String],
        through_seq: u64,
        events: &[(u64, Event)],
        declaration: Option<u64>,
    ) -> u64 {
        let extractor = self.extractor();
        let mut counted = 0u64;
        // In chunks, so the unify thread is never held up for long.
        for chunk in events.chunks(10_000) {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            // Checked under the state's lock: `remove_trait` ends the declaration before it
            // resets the trait's values (under the same lock), so a chunk either lands before
            // the reset, which clears it, or is not added at all.
            if declaration.is_some_and(|number| !self.still_computing(names, number)) {
                break;
            }
            let state = &mut *state;
            for (seq, event) in chunk {
                if *seq > through_seq {
                    continue;
                }
                let facts = extractor.facts(event);
                let Some(primary) = facts.primary() else {
                    continue;
                };
                let identifier_facts = match state
                    .facts
                    .get_or_try_load(primary, || self.stored_facts(primary))
                {
                    Ok(held) => held,
                    Err(e) => {
                        unreadable_facts(primary, *seq, &e);
                        continue;
                    }
                };
                for (name, observed) in &facts.computed {
                    if !names.contains(name) {
                        continue;
                    }
                    if let Some(def) = extractor.computed.iter().find(|d| &d.name == name) {
                        let trait_state =
                            identifier_facts.computed.entry(name.clone()).or_default();
                        trait_state.add(
                            def,
                            facts.key.time_micros,
                            &facts.key.message_id,
                            observed,
                        );
                        trait_state.prune(def, chrono::Utc::now().timestamp_micros());
                        counted += 1;
                    }
                }
                state.dirty_facts.insert(primary.clone());
            }
        }
        counted
    }

    /// Ends the recomputation of the named traits' past (see
    /// [`ProfileStore::add_past_observations`]): they are no longer `computing`, the traits
    /// that are not are recorded as following their definitions, and a recomputation planned at
    /// opening for exactly these names is done.
    ///
    /// With `declaration`, only if that declaration is still being computed (see
    /// [`ProfileStore::add_past_observations`]); returns whether it was.
    pub fn traits_computed(
        &self,
        names: &[String],
        observations: u64,
        declaration: Option<u64>,
    ) -> bool {
        let mut computing = self.computing.lock().unwrap_or_else(|p| p.into_inner());
        if declaration.is_some_and(|number| !declared_as(&computing, names, number)) {
            return false;
        }
        {
            let mut plan = self.backfill.lock().unwrap_or_else(|p| p.into_inner());
            if plan.as_ref().is_some_and(|plan| plan.names == names) {
                *plan = None;
            }
        }
        for name in names {
            computing.remove(name);
        }
        let settled: Vec<ComputedTraitDef> = self
            .extractor()
            .computed
            .iter()
            .filter(|d| !computing.contains_key(&d.name))
            .cloned()
            .collect();
        drop(computing);
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .computed_defs = Some(settled);
        tracing::info!(traits = ?names, observations, "computed traits recomputed");
        true
    }

    /// Whether every one of `names` is still being computed for declaration `number`.
    fn still_computing(&self, names: &[String], number: u64) -> bool {
        let computing = self.computing.lock().unwrap_or_else(|p| p.into_inner());
        declared_as(&computing, names, number)
    }

    /// The declared computed traits: where each was declared and whether its past is still
    /// being computed.
    pub fn computed_traits(&self) -> Vec<DeclaredTrait> {
        let computing = self.computing.lock().unwrap_or_else(|p| p.into_inner());
        self.extractor()
            .computed
            .iter()
            .map(|def| DeclaredTrait {
                definition: def.clone(),
                declared_in: if self.config_traits.contains(&def.name) {
                    "kith.toml"
                } else {
                    "api"
                },
                status: if computing.contains_key(&def.name) {
                    "computing"
                } else {
                    "ready"
                },
            })
            .collect()
    }

    /// Records a computed trait declared through the API and returns the definitions to install
    /// with [`ProfileStore::install_definitions`] (the caller orders that against the events in
    /// flight; see the server's pipeline).
    pub fn register_trait(&self, def: ComputedTraitDef) -> Result<Registered<'_>, DeclareError> {
        def.validate()?;
        let changing = self
            .changing_definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let current = self.extractor();
        if self.config_traits.contains(&def.name) {
            return Err(DeclareError::InConfig(def.name));
        }
        if current.computed.iter().any(|d| d.name == def.name) {
            return Err(DeclareError::Exists(def.name));
        }
        {
            let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let conn = writer.as_ref().ok_or(DeclareError::ReadOnly)?;
            persist::insert_api_def(conn, &def)?;
        }
        let declaration = self.declarations.fetch_add(1, Ordering::Relaxed) + 1;
        self.computing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(def.name.clone(), declaration);
        let mut definitions = current.computed.clone();
        definitions.push(def);
        Ok(Registered {
            definitions,
            declaration,
            _changing: changing,
        })
    }

    /// Forgets a computed trait declared through the API and its values.
    pub fn remove_trait(&self, name: &str) -> Result<(), DeclareError> {
        if self.config_traits.iter().any(|n| n == name) {
            return Err(DeclareError::InConfig(name.to_string()));
        }
        let _changing = self
            .changing_definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let current = self.extractor();
        if !current.computed.iter().any(|d| d.name == name) {
            return Err(DeclareError::NotFound(name.to_string()));
        }
        {
            let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let conn = writer.as_ref().ok_or(DeclareError::ReadOnly)?;
            persist::delete_api_def(conn, name)?;
        }
        let defs: Vec<ComputedTraitDef> = current
            .computed
            .iter()
            .filter(|d| d.name != name)
            .cloned()
            .collect();
        // Observations of the trait still in flight find no definition and are ignored. Its
        // declaration ends before its values are reset: a recomputation of its past still
        // under way adds nothing after the reset (see `add_past_observations`).
        self.install_definitions(defs.clone());
        self.computing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.reset_trait(name)?;
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .computed_defs = Some(defs);
        Ok(())
    }

    /// Makes `defs` the computed traits every event from now on is extracted with.
    pub fn install_definitions(&self, defs: Vec<ComputedTraitDef>) {
        let mut extractor = self.extractor.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**extractor).clone();
        next.computed = defs;
        *extractor = Arc::new(next);
    }

    /// Drops every value of a computed trait (before its past is computed afresh, or when it is
    /// removed): in memory, and in `profiles.db` for the identifiers memory does not hold.
    ///
    /// Profile reads wait meanwhile: an identifier read back from disk halfway through would
    /// bring its old value back into memory.
    pub fn reset_trait(&self, name: &str) -> Result<(), ProfileError> {
        // The writer before the state, as `persist` takes them.
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        for (identifier, facts) in state.facts.iter_mut() {
            if facts.computed.remove(name).is_some() {
                state.dirty_facts.insert(identifier.clone());
            }
        }
        if let Some(conn) = writer.as_mut() {
            let resident = &state.facts;
            persist::rewrite_facts(
                conn,
                |identifier| resident.contains(identifier),
                |facts| facts.computed.remove(name).is_some(),
            )?;
        }
        Ok(())
    }

    /// The facts `profiles.db` holds for `identifier` (none stored: empty ones).
    fn stored_facts(&self, identifier: &Identifier) -> Result<IdentifierFacts, ProfileError> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.load_facts(&reader, identifier)?.unwrap_or_default())
    }

    /// The facts stored for `identifier`, if any, read through `conn`, without the states of
    /// traits [`ProfileStore::discarded_on_read`].
    fn load_facts(
        &self,
        conn: &rusqlite::Connection,
        identifier: &Identifier,
    ) -> Result<Option<IdentifierFacts>, ProfileError> {
        let mut facts = persist::load_facts(conn, identifier)?;
        if let Some(facts) = facts.as_mut()
            && !self.discarded_on_read.is_empty()
        {
            facts
                .computed
                .retain(|name, _| !self.discarded_on_read.contains(name));
        }
        Ok(facts)
    }

    /// The facts of `identifiers`, in their order: those in memory borrowed, the others read
    /// from `profiles.db` (identifiers without facts are left out).
    fn facts_of<'s>(
        &self,
        state: &'s State,
        identifiers: &[(Identifier, kith_identity::ObservationKey)],
    ) -> Result<Vec<std::borrow::Cow<'s, IdentifierFacts>>, ProfileError> {
        let mut reader = None;
        facts_from(state, identifiers, |identifier| {
            let reader =
                reader.get_or_insert_with(|| self.reader.lock().unwrap_or_else(|p| p.into_inner()));
            self.load_facts(reader, identifier)
        })
    }

    /// The extraction settings of this moment (computed traits change through the API).
    pub fn extractor(&self) -> Arc<Extractor> {
        self.extractor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The journal seq through which events have been applied.
    pub fn applied_seq(&self) -> u64 {
        self.applied_seq.load(Ordering::SeqCst)
    }

    /// The journal seq through which the effects are in `profiles.db`.
    pub fn persisted_seq(&self) -> u64 {
        self.persisted_seq.load(Ordering::SeqCst)
    }

    /// Applies events (with their journal seqs, ascending). Seqs already applied are skipped, so
    /// a replay may overlap.
    pub fn apply(&self, events: &[(u64, EventFacts)]) {
        let extractor = self.extractor();
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        let mut last = self.applied_seq();
        for (seq, facts) in events {
            if *seq <= last {
                continue;
            }
            last = *seq;
            let aliased = facts.with_alias_previous(|id| state.resolver.profile_of(id).is_some());
            let facts = aliased.as_ref().unwrap_or(facts);
            for reason in &facts.refused {
                metrics::counter!("kith_identity_values_refused_total", "reason" => *reason)
                    .increment(1);
            }
            let known_before = facts
                .tally
                .as_ref()
                .map(|_| distinct_profiles(&state.resolver, &facts.identifiers));
            let outcome =
                state
                    .resolver
                    .observe_parts(&facts.key, &facts.identifiers, facts.explicit_merge);
            for identifier in &outcome.new_identifiers {
                if let IdType::External(name) = &identifier.id_type
                    && !state.external_types.contains(name)
                {
                    state.external_types.insert(name.clone());
                }
            }
            for identifier in outcome
                .new_identifiers
                .iter()
                .chain(&outcome.earlier_sightings)
            {
                state
                    .pending
                    .identifiers
                    .push((identifier.clone(), facts.key.clone()));
            }
            if outcome.new_link {
                state.pending.links.push(Observation {
                    key: facts.key.clone(),
                    identifiers: facts.identifiers.clone(),
                    explicit_merge: facts.explicit_merge,
                });
            }
            if outcome.rebuilt {
                metrics::counter!("kith_identity_clusters_rebuilt_total").increment(1);
            }
            let Some(primary) = facts.primary() else {
                if let (Some(tally), Some(before)) = (&facts.tally, known_before) {
                    let change = classify(
                        &state.resolver,
                        facts,
                        before,
                        !outcome.new_identifiers.is_empty(),
                    );
                    tally.0.record(change);
                }
                if facts.identifiers.is_empty() {
                    metrics::counter!("kith_profile_events_unattributed_total").increment(1);
                }
                continue;
            };
            // An identifier the resolver has just met has nothing stored to read back.
            let first_sighting = outcome.new_identifiers.contains(primary);
            let held = state.facts.get_or_try_load(primary, || {
                if first_sighting {
                    Ok(IdentifierFacts::default())
                } else {
                    self.stored_facts(primary)
                }
            });
            let identifier_facts = match held {
                Ok(held) => held,
                Err(e) => {
                    unreadable_facts(primary, *seq, &e);
                    continue;
                }
            };
            let changes = identifier_facts.absorb(facts, &extractor.computed);
            if let (Some(tally), Some(before)) = (&facts.tally, known_before) {
                let changed = !outcome.new_identifiers.is_empty() || !changes.is_empty();
                tally
                    .0
                    .record(classify(&state.resolver, facts, before, changed));
            }
            state
                .pending
                .history
                .extend(changes.into_iter().map(|c| (primary.clone(), c)));
            if !state.dirty_facts.contains(primary) {
                state.dirty_facts.insert(primary.clone());
            }
        }
        state.pending.applied_seq = last;
        self.applied_seq.store(last, Ordering::SeqCst);
    }

    /// Extracts and applies events in one step (replay, imports, tests).
    pub fn apply_events(&self, events: &[(u64, &Event)]) {
        let extractor = self.extractor();
        let facts: Vec<(u64, EventFacts)> = events
            .iter()
            .map(|(seq, event)| (*seq, extractor.facts(event)))
            .collect();
        self.apply(&facts);
    }

    /// Writes what changed since the last call to `profiles.db`. Returns rows written.
    pub fn persist(&self) -> Result<usize, ProfileError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = writer.as_mut() else {
            return Ok(0);
        };
        // Only taking what changed needs the exclusive lock; copying the changed facts (many
        // thousands a second under load) is done under the shared one, so profile lookups go on.
        // No event is applied meanwhile (the unify thread, the only one applying events, is the
        // caller), so the copies match `applied_seq`.
        let (mut pending, dirty) = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            let state = &mut *state;
            let mut pending = std::mem::take(&mut state.pending);
            pending.applied_seq = self.applied_seq();
            state.history_in_flight = pending.history.clone();
            (pending, std::mem::take(&mut state.dirty_facts))
        };
        {
            let state = self.read();
            pending.facts = dirty
                .into_iter()
                .filter_map(|id| state.facts.get(&id).map(|f| (id, f.clone())))
                .collect();
        }
        if pending.is_empty() && pending.applied_seq == self.persisted_seq() {
            return Ok(0);
        }
        let rows = pending.identifiers.len()
            + pending.links.len()
            + pending.facts.len()
            + pending.history.len();
        let written = persist::write(conn, &pending);
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        state.history_in_flight.clear();
        if let Err(e) = written {
            // Put the changes back so the next call retries them.
            state.pending.identifiers.extend(pending.identifiers);
            state.pending.links.extend(pending.links);
            state.pending.history.extend(pending.history);
            if state.pending.computed_defs.is_none() {
                state.pending.computed_defs = pending.computed_defs;
            }
            state
                .dirty_facts
                .extend(pending.facts.into_iter().map(|(id, _)| id));
            return Err(e);
        }
        self.persisted_seq
            .store(pending.applied_seq, Ordering::SeqCst);
        metrics::counter!("kith_profile_rows_persisted_total").increment(rows as u64);
        // What was just written is on disk now: those not changed since may leave memory.
        let evicted = state.facts.evict_clean(&state.dirty_facts);
        if evicted > 0 {
            metrics::counter!("kith_profile_facts_evicted_total").increment(evicted as u64);
        }
        metrics::gauge!("kith_profile_facts_resident").set(state.facts.len() as f64);
        Ok(rows)
    }

    /// Finds the profile a `type:value` lookup names.
    pub fn find(&self, lookup: &Lookup) -> Result<Option<ProfileView>, LookupError> {
        let state = self.read();
        self.profile_named(&state, lookup)?
            .map(|p| self.view_of(&state, p))
            .transpose()
            .map_err(|e| LookupError::Unreadable(e.to_string()))
    }

    /// Why the profiles `a` and `b` name may not be merged now, by the same guards identity
    /// resolution applies to a link between them; `None` when they may, or when either names no
    /// profile or both the same one.
    pub fn merge_refusal(&self, a: &Lookup, b: &Lookup) -> Result<Option<String>, LookupError> {
        let state = self.read();
        let (a, b) = (
            self.profile_named(&state, a)?,
            self.profile_named(&state, b)?,
        );
        Ok(match (a, b) {
            (Some(a), Some(b)) if a != b => state.resolver.merge_refusal(a, b),
            _ => None,
        })
    }

    /// The profile `lookup` names now.
    fn profile_named(
        &self,
        state: &State,
        lookup: &Lookup,
    ) -> Result<Option<ProfileRef>, LookupError> {
        let extractor = self.extractor();
        Ok(match lookup.type_name.as_str() {
            "profile_id" => state.resolver.profile_by_id(&lookup.value),
            name => {
                let id_type = IdType::from_name(name);
                if let IdType::External(external) = &id_type
                    && !extractor.identifier_traits.contains(external)
                    && !self.known_external_type(state, external)
                {
                    let declared =
                        external_types_named(&extractor.identifier_traits, &state.external_types);
                    return Err(LookupError::UnknownType(
                        kith_identity::excerpt(name),
                        declared,
                    ));
                }
                let identifier = extractor
                    .normalizer
                    .normalize(id_type, &lookup.value)
                    .map_err(|e| LookupError::InvalidValue {
                        id_type: name.to_string(),
                        value: lookup.value.clone(),
                        reason: e.to_string(),
                    })?;
                state.resolver.profile_of(&identifier)
            }
        })
    }

    fn known_external_type(&self, state: &State, name: &str) -> bool {
        // External types seen in `context.externalIds` are valid lookups too.
        state.external_types.contains(name)
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn view_of(&self, state: &State, profile: ProfileRef) -> Result<ProfileView, ProfileError> {
        let identifiers = state.resolver.identifiers(profile);
        let facts = self.facts_of(state, &identifiers)?;
        let folded = ProfileFacts::fold(facts.iter().map(|f| f.as_ref()));
        let now = chrono::Utc::now().timestamp_micros();
        let mut view = ProfileView::build(
            &state.resolver,
            profile,
            folded,
            &self.extractor().computed,
            now,
        );
        // Scored under its own id, or (merged since) under one of its identifiers' former ids.
        let mut ids = vec![view.profile_id.clone()];
        ids.extend(
            identifiers
                .iter()
                .take(MODEL_TRAIT_FALLBACK_IDS)
                .map(|(identifier, _)| kith_identity::profile_id_for(identifier)),
        );
        match self.model_traits.for_profile(&ids) {
            Ok(traits) => view.model_traits = traits,
            Err(e) => tracing::error!(error = %e, "reading model traits failed"),
        }
        Ok(view)
    }

    /// The scores models and analyses write onto profiles.
    pub fn model_traits(&self) -> &ModelTraitStore {
        &self.model_traits
    }

    /// The trait history of a profile's identifiers, oldest first: what `profiles.db` holds plus
    /// what is not written yet.
    pub fn trait_history(
        &self,
        view: &ProfileView,
    ) -> Result<Vec<persist::HistoryEntry>, ProfileError> {
        let identifiers: Vec<Identifier> = view
            .identifiers
            .iter()
            .map(|i| Identifier::new(IdType::from_name(&i.id_type), i.value.clone()))
            .collect();
        // Memory first, then the database: an entry committed in between is in both (and
        // deduplicated), never in neither.
        let mut entries: Vec<persist::HistoryEntry> = {
            let state = self.read();
            state
                .pending
                .history
                .iter()
                .chain(&state.history_in_flight)
                .filter(|(identifier, _)| identifiers.contains(identifier))
                .map(|(identifier, change)| persist::HistoryEntry {
                    identifier: identifier.to_string(),
                    name: change.name.clone(),
                    json: change.value.json.clone(),
                    time_micros: change.value.time_micros,
                    message_id: change.value.message_id.clone(),
                })
                .collect()
        };
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        entries.extend(persist::history(&reader, &identifiers)?);
        entries.sort_by(|a, b| {
            (
                a.time_micros,
                &a.message_id,
                &a.name,
                &a.identifier,
                &a.json,
            )
                .cmp(&(
                    b.time_micros,
                    &b.message_id,
                    &b.name,
                    &b.identifier,
                    &b.json,
                ))
        });
        entries.dedup();
        Ok(entries)
    }

    /// Every profile, for the `profiles` table and duplicate detection.
    pub fn all_views(&self) -> Result<Vec<ProfileView>, ProfileError> {
        let mut views = Vec::with_capacity(self.profile_count());
        self.for_each_view(|view| views.push(view))?;
        Ok(views)
    }

    /// Builds every profile's view in turn and hands it to `each`: what [`ProfileStore::all_views`]
    /// returns, without holding them all.
    ///
    /// The store is read [`VIEWS_PER_LOCK`] profiles at a time, its lock let go in between: a
    /// pass over hundreds of thousands of profiles takes tens of seconds, and while it held the
    /// lock, the unify thread waiting to write held up every other reader behind it (profile
    /// lookups included). Profiles that change during the pass are seen as they were when their
    /// range was read. Every profile there when the pass ends is visited once, even one a merge
    /// moved into a range already read (it is visited at the end); a profile merged away during
    /// the pass may be visited too.
    pub fn for_each_view(&self, each: impl FnMut(ProfileView)) -> Result<(), ProfileError> {
        self.for_each_view_until(None, each).map(drop)
    }

    /// [`ProfileStore::for_each_view`], stopping at the first range that starts after
    /// `deadline`: whether every profile was visited. A pass takes about 20 µs a profile, so one
    /// made for a caller that waits (a query's `profiles` table) is held to the caller's time.
    pub fn for_each_view_until(
        &self,
        deadline: Option<std::time::Instant>,
        mut each: impl FnMut(ProfileView),
    ) -> Result<bool, ProfileError> {
        // Unreadable model traits fail the visit: views without them would pass for profiles
        // no model scored.
        let mut scores = self.model_traits.all()?;
        let now = chrono::Utc::now().timestamp_micros();
        let defs = self.extractor().computed.clone();
        self.for_each_profile_by_range(deadline, |state, stored, profile| {
            let identifiers = state.resolver.identifiers(profile);
            // Facts memory does not hold are read per profile: reading them all first held
            // every stored fact at once (gigabytes at hundreds of thousands of profiles).
            // Profiles in slot order read `profiles.db`'s rows nearly in the order they were
            // written; sorting a range's lookups by key instead was slower (measured).
            let facts = facts_from(state, &identifiers, |identifier| {
                self.load_facts(stored, identifier)
            })?;
            let folded = ProfileFacts::fold(facts.iter().map(|f| f.as_ref()));
            let mut view = ProfileView::build(&state.resolver, profile, folded, &defs, now);
            if let Some(traits) = scores.remove(&view.profile_id) {
                view.model_traits = traits;
            }
            each(view);
            Ok(())
        })
    }

    /// Visits every live profile, taking the store's lock for [`VIEWS_PER_LOCK`] profiles at a
    /// time and letting it go in between (see [`ProfileStore::for_each_view`] for why and what
    /// a pass sees of changes made meanwhile).
    fn for_each_profile_by_range(
        &self,
        deadline: Option<std::time::Instant>,
        mut visit: impl FnMut(&State, &Connection, ProfileRef) -> Result<(), ProfileError>,
    ) -> Result<bool, ProfileError> {
        let mut start = 0;
        // Profiles visited, by the identifier their id comes from: a merge between ranges may
        // move a profile (its id with it) into a slot the pass has read already, or one it has
        // yet to read.
        let mut visited: HashSet<u32> = HashSet::new();
        loop {
            let state = self.read();
            if start >= state.resolver.profile_slots() {
                // Those moved behind the pass are visited now, under this hold of the lock:
                // every profile there at the end has been visited, once.
                let mut connection = self.scan_reader.lock().unwrap_or_else(|p| p.into_inner());
                let range = connection.transaction()?;
                for profile in state.resolver.profiles() {
                    if visited.insert(state.resolver.profile_anchor(profile)) {
                        visit(&state, &range, profile)?;
                    }
                }
                range.commit()?;
                return Ok(true);
            }
            if deadline.is_some_and(|deadline| std::time::Instant::now() >= deadline) {
                return Ok(false);
            }
            // `visit` reads `profiles.db` in one read transaction for the range, begun under the
            // store's lock: otherwise SQLite took and let go of its file locks for every
            // statement, a third of a pass's time. Facts persisted after it began stay in
            // memory until the store's lock is let go (eviction takes it for writing), and
            // memory is read first, so nothing read from the transaction is stale.
            // (`visit` must not start another pass: this connection is held until the range ends.)
            let mut connection = self.scan_reader.lock().unwrap_or_else(|p| p.into_inner());
            let range = connection.transaction()?;
            let end = start + VIEWS_PER_LOCK;
            for profile in state.resolver.profiles_in(start..end) {
                if visited.insert(state.resolver.profile_anchor(profile)) {
                    visit(&state, &range, profile)?;
                }
            }
            range.commit()?;
            drop(connection);
            drop(state);
            #[cfg(test)]
            if let Some(change) = self.between_ranges.lock().unwrap().as_mut() {
                change(self);
            }
            start = end;
        }
    }

    /// Every profile's id and model traits (empty for a profile no model scored), without
    /// building its view: what judging a segment on model traits (`rfm_segment`,
    /// `activity_trend`…) needs, at a fraction of the cost of [`ProfileStore::for_each_view`],
    /// which reads every profile's stored facts.
    pub fn for_each_model_traits(
        &self,
        mut each: impl FnMut(&str, BTreeMap<String, Value>),
    ) -> Result<(), ProfileError> {
        let mut scores = self.model_traits.all()?;
        self.for_each_profile_by_range(None, |state, _, profile| {
            let profile_id = state.resolver.profile_id(profile);
            let traits = scores.remove(&profile_id).unwrap_or_default();
            each(&profile_id, traits);
            Ok(())
        })
        .map(drop)
    }

    /// Every profile's id and its values of the traits `names` (last write wins by event time,
    /// as in its view), without building views: the stored facts are read in one sequential
    /// pass keeping only those traits, rather than looked up identifier by identifier. What
    /// judging a segment on traits needs.
    ///
    /// The read of the stored facts holds no lock on the store (facts in memory, newer, are
    /// preferred afterwards), and profiles are then visited a range at a time, as in
    /// [`ProfileStore::for_each_view`].
    pub fn for_each_traits(
        &self,
        names: &[String],
        mut each: impl FnMut(&str, &TraitMap),
    ) -> Result<(), ProfileError> {
        let mut stored: hashbrown::HashMap<Identifier, TraitMap> = hashbrown::HashMap::new();
        {
            let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            persist::for_each_facts(&reader, |identifier, facts| {
                let mut kept = TraitMap::default();
                for name in names {
                    if let Some(value) = facts.traits.get(name) {
                        kept.set(name, value.clone());
                    }
                }
                if !kept.is_empty() {
                    stored.insert(identifier, kept);
                }
            })?;
        }
        let mut folded = TraitMap::default();
        self.for_each_profile_by_range(None, |state, _, profile| {
            folded.clear();
            for (identifier, _) in state.resolver.identifiers(profile) {
                let traits = match state.facts.get(&identifier) {
                    Some(facts) => &facts.traits,
                    None => match stored.get(&identifier) {
                        Some(traits) => traits,
                        None => continue,
                    },
                };
                for name in names {
                    if let Some(value) = traits.get(name) {
                        folded.keep_latest(name, value);
                    }
                }
            }
            each(&state.resolver.profile_id(profile), &folded);
            Ok(())
        })
        .map(drop)
    }

    /// Likely duplicates scoring at least `min_score`, best first (see [`find_duplicates`]),
    /// from the views one at a time.
    pub fn find_duplicates(
        &self,
        min_score: f64,
        limit: usize,
    ) -> Result<Duplicates, ProfileError> {
        let mut finder = DuplicateFinder::default();
        self.for_each_view(|view| finder.add(&view))?;
        Ok(finder.finish(min_score, limit, |visit| {
            self.for_each_identity(|profile_id, id_type, value, _| {
                visit(profile_id, id_type, value)
            })
        }))
    }

    /// Visits every identifier with the profile it belongs to now and when it was first seen
    /// (`profile_id`, type, value, µs): what attributing events needs, without building each
    /// profile's view (traits, facts), which costs a hundred times more.
    pub fn for_each_identity(&self, mut visit: impl FnMut(&str, &str, &str, i64)) {
        let state = self.read();
        for profile in state.resolver.profiles() {
            let profile_id = state.resolver.profile_id(profile);
            state
                .resolver
                .visit_identifiers(profile, |id_type, value, first_seen_micros| {
                    visit(&profile_id, id_type.name(), value, first_seen_micros);
                });
        }
    }

    pub fn profile_count(&self) -> usize {
        self.read().resolver.profile_count()
    }
}

/// The facts of `identifiers`, in their order: those in `state`'s memory borrowed, the others
/// read from `profiles.db` by `load`.
fn facts_from<'s>(
    state: &'s State,
    identifiers: &[(Identifier, kith_identity::ObservationKey)],
    mut load: impl FnMut(&Identifier) -> Result<Option<IdentifierFacts>, ProfileError>,
) -> Result<Vec<std::borrow::Cow<'s, IdentifierFacts>>, ProfileError> {
    let mut out = Vec::with_capacity(identifiers.len());
    for (identifier, _) in identifiers {
        if let Some(held) = state.facts.get(identifier) {
            out.push(std::borrow::Cow::Borrowed(held));
            continue;
        }
        if let Some(stored) = load(identifier)? {
            out.push(std::borrow::Cow::Owned(stored));
        }
    }
    Ok(out)
}

/// An event's identifier whose facts `profiles.db` could not give back. Applying the event to
/// empty facts would overwrite the stored ones at the next persist, so the event is left out of
/// that identifier's traits, figures and computed traits instead, and said so.
fn unreadable_facts(identifier: &Identifier, seq: u64, error: &ProfileError) {
    metrics::counter!("kith_profile_facts_unreadable_total").increment(1);
    tracing::error!(%identifier, seq, %error, "an identifier's facts could not be read; this event is left out of them");
}

/// A computed trait registered: the definitions to install, every one before it with it. Until
/// it is dropped (once they are installed), no other declaration or removal starts.
pub struct Registered<'a> {
    pub definitions: Vec<ComputedTraitDef>,
    /// This declaration's number, for [`ProfileStore::add_past_observations`].
    pub declaration: u64,
    _changing: std::sync::MutexGuard<'a, ()>,
}

/// Whether `computing` holds every one of `names` for declaration `number`.
fn declared_as(computing: &HashMap<String, u64>, names: &[String], number: u64) -> bool {
    names
        .iter()
        .all(|name| computing.get(name) == Some(&number))
}

/// Most external types an unknown-type message lists.
const MOST_TYPES_LISTED: usize = 20;

/// The external types a lookup may name, for a message (`, hubspot_id, customer_number`): the
/// declared identifier traits, then those seen in events and imports. Anyone with an ingest key
/// can make up types, so only printable names of at most 64 characters are listed, at most
/// [`MOST_TYPES_LISTED`] of them, each once and not the built-in names.
fn external_types_named(declared: &[String], seen: &HashSet<String>) -> String {
    let printable = |t: &&String| t.chars().count() <= 64 && !t.chars().any(char::is_control);
    let built_in = |t: &&String| !matches!(IdType::from_name(t), IdType::External(_));
    let mut seen: Vec<&String> = seen
        .iter()
        .filter(|t| !declared.contains(t) && printable(t) && !built_in(t))
        .collect();
    seen.sort();
    let mut known: Vec<&String> = declared.iter().chain(seen).collect();
    let more = known.len().saturating_sub(MOST_TYPES_LISTED);
    known.truncate(MOST_TYPES_LISTED);
    let mut listed: String = known.iter().map(|t| format!(", {t}")).collect();
    if more > 0 {
        listed.push_str(&format!(" and {more} more"));
    }
    listed
}

#[cfg(test)]
mod tests;
