//! `kith.toml`, the lowest layer of configuration (environment and flags override it).

use std::path::{Path, PathBuf};

use anyhow::Context;
use kith_identity::{IdType, Normalizer};
use kith_profiles::{ComputedTraitDef, ProfileSettings};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    /// Seconds a connection may keep the server waiting for a request (its first, its head, or
    /// a kept-alive one's next) or for the next part of a body (default 75).
    pub idle_connection_secs: Option<u64>,
    /// Megabytes that the requests being received (bodies, and HTTP/2 heads) may hold at once,
    /// over all connections (default 256); past it a request is answered `429 overloaded`.
    pub max_receiving_mb: Option<u64>,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub query: QueryConfig,
    #[serde(default)]
    pub tables: TablesConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub profiles: ProfilesConfig,
    /// `[[computed_traits]]`: traits computed from events on every profile.
    #[serde(default)]
    pub computed_traits: Vec<ComputedTraitDef>,
    /// `[models.clv]`: the CLV definition scheduled runs use, and how often they run.
    #[serde(default)]
    pub models: ModelsConfig,
}

/// `[models.clv]`, `[models.rfm]`, `[models.risk]`, `[models.preferences]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// Seconds after start-up before the first scheduled check (default 60).
    pub first_check_after_secs: Option<u64>,
    /// The memory a model run's queries may use together, in MiB (default: the larger of
    /// `[query] memory_mb` and 4096).
    pub memory_mb: Option<usize>,
    pub clv: Option<ModelConfig>,
    pub rfm: Option<ModelConfig>,
    pub risk: Option<ModelConfig>,
    pub preferences: Option<ModelConfig>,
}

/// `refresh_hours` (0 turns scheduled runs off; default 24) and any field of the model's
/// definition (CLV: `purchase_event`, `horizon_days`, ...; the others: their analysis's fields).
#[derive(Debug, Default, Deserialize)]
pub struct ModelConfig {
    pub refresh_hours: Option<f64>,
    #[serde(flatten)]
    pub definition: serde_json::Map<String, serde_json::Value>,
}

/// The longest `refresh_hours` of a model: a year.
const MOST_REFRESH_HOURS: f64 = 24.0 * 365.0;

impl FileConfig {
    /// The model schedules `kith serve` runs, checked so a mistake stops start-up with a clear
    /// message instead of silently turning a schedule off.
    pub fn model_schedules(&self) -> anyhow::Result<kith_server::models::ModelSchedules> {
        let mut schedules = kith_server::models::ModelSchedules::default();
        if let Some(secs) = self.models.first_check_after_secs {
            schedules.first_check_after = std::time::Duration::from_secs(secs);
        }
        schedules.memory_bytes = self.model_memory_bytes()?;
        let configured = [
            ("clv", &self.models.clv),
            ("rfm", &self.models.rfm),
            ("risk", &self.models.risk),
            ("preferences", &self.models.preferences),
        ];
        for (name, config) in configured {
            let (Some(config), Some(schedule)) = (config, schedules.models.get_mut(name)) else {
                continue;
            };
            schedule.definition = serde_json::Value::Object(config.definition.clone());
            kith_analytics::ProfileModel::parse(name, &schedule.definition)
                .map_err(|e| anyhow::anyhow!("[models.{name}] in kith.toml: {e}"))?;
            match config.refresh_hours {
                Some(hours)
                    if !(hours.is_finite() && (0.0..=MOST_REFRESH_HOURS).contains(&hours)) =>
                {
                    anyhow::bail!(
                        "[models.{name}] refresh_hours must be a number of hours from 0 (scheduled runs off) to {MOST_REFRESH_HOURS} (a year), got {hours}"
                    )
                }
                Some(0.0) => schedule.refresh = None,
                Some(hours) => {
                    schedule.refresh = Some(std::time::Duration::from_secs_f64(hours * 3600.0))
                }
                None => {}
            }
        }
        Ok(schedules)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Write buffered events to Delta at least this often.
    pub flush_interval_ms: Option<u64>,
    /// ...or as soon as this many rows wait.
    pub flush_rows: Option<usize>,
    /// Answer 429 while this many rows wait in memory for Delta.
    pub max_buffered_rows: Option<usize>,
    /// Answer 429 while this many MiB of events wait for the journal's disk write.
    pub max_queued_mb: Option<usize>,
    /// Close a journal segment once it holds this many MiB. Segments are deleted once the event
    /// tables and profiles hold their events, so smaller ones give disk back sooner.
    pub journal_segment_mb: Option<u64>,
    /// Record the client's IP address in `context.ip`: "off" (the default), "truncated" or
    /// "full".
    pub client_ip: Option<kith_server::caller::ClientIpPolicy>,
    /// Proxies whose `Forwarded` / `X-Forwarded-*` headers are believed: addresses or CIDR
    /// networks (default: loopback and private networks; `[]` trusts none).
    pub trusted_proxies: Option<Vec<String>>,
}

impl IngestConfig {
    /// `journal_segment_mb` in bytes, when set.
    pub fn journal_segment_bytes(&self) -> anyhow::Result<Option<u64>> {
        match self.journal_segment_mb {
            Some(0) => anyhow::bail!(
                "[ingest] journal_segment_mb in kith.toml must be at least 1 (MiB), got 0"
            ),
            Some(mb) => Ok(Some(mb.saturating_mul(1 << 20))),
            None => Ok(None),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    pub timeout_secs: Option<u64>,
    pub memory_mb: Option<usize>,
    pub max_rows: Option<usize>,
    /// Where `kith serve` runs `POST /v1/query`: `process` (the default on Linux) or
    /// `in-process` (the default elsewhere).
    pub isolation: Option<QueryIsolation>,
    /// How long a query worker that answered waits for the next query before it exits and
    /// gives back what it holds (default 60; 0: a worker exits as soon as it has answered).
    pub worker_idle_secs: Option<u64>,
}

/// Where the server runs SQL queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueryIsolation {
    /// Each query in a worker process, under a hard memory limit and killed when its time is
    /// up: no query can take the server down. A worker that answered waits for the next query.
    Process,
    /// In the server's own query threads, held by the engine's limits alone (no worker: what
    /// a query misbehaving in ways the bounds do not model takes, the server loses).
    InProcess,
}

/// The longest a query may run: a day.
const MOST_QUERY_SECS: u64 = 86_400;

/// The most rows one answer may hold: far more than fit in the query memory limit anyway.
pub(crate) const MOST_ANSWER_ROWS: usize = 1_000_000_000;

/// `value` of the setting `name`, refused when over `most`, which `what_most_is` explains.
fn at_most<T: Copy + PartialOrd + std::fmt::Display>(
    name: &str,
    value: Option<T>,
    most: T,
    what_most_is: &str,
) -> anyhow::Result<Option<T>> {
    match value {
        Some(value) if value > most => {
            anyhow::bail!("{name} = {value} in kith.toml is over {most}, {what_most_is}")
        }
        _ => Ok(value),
    }
}

/// `value` of the setting `name`, refused when 0: every such setting would then stop Kith
/// from working (every query timing out, every event answered 429) without saying why.
fn nonzero<T: Copy + PartialEq + Default>(
    name: &str,
    value: Option<T>,
    what_zero_would_do: &str,
) -> anyhow::Result<Option<T>> {
    if value == Some(T::default()) {
        anyhow::bail!("{name} in kith.toml must be at least 1, got 0: {what_zero_would_do}");
    }
    Ok(value)
}

impl FileConfig {
    /// The query limits: `[query]` over the defaults.
    pub fn query_limits(&self) -> anyhow::Result<kith_lake::QueryLimits> {
        let mut limits = kith_lake::QueryLimits::default();
        let query = &self.query;
        let timeout_secs = at_most(
            "[query] timeout_secs",
            query.timeout_secs,
            MOST_QUERY_SECS,
            "a day, the longest a query may run; give fewer seconds (default 30)",
        )?;
        if let Some(secs) = nonzero(
            "[query] timeout_secs",
            timeout_secs,
            "every query would time out",
        )? {
            limits.timeout = std::time::Duration::from_secs(secs);
        }
        if let Some(mb) = nonzero(
            "[query] memory_mb",
            query.memory_mb,
            "every query would run out of memory",
        )? {
            limits.memory_bytes = mb.saturating_mul(1 << 20);
        }
        let max_rows = at_most(
            "[query] max_rows",
            query.max_rows,
            MOST_ANSWER_ROWS,
            "the most rows one answer may hold; give fewer (default 100000)",
        )?;
        if let Some(rows) = nonzero("[query] max_rows", max_rows, "every answer would be empty")? {
            limits.max_rows = rows;
        }
        Ok(limits)
    }

    /// `[models] memory_mb` in bytes, if given.
    fn model_memory_bytes(&self) -> anyhow::Result<Option<usize>> {
        Ok(nonzero(
            "[models] memory_mb",
            self.models.memory_mb,
            "every model run would run out of memory",
        )?
        .map(|mb| mb.saturating_mul(1 << 20)))
    }

    /// The limits a model run reads events under (see `kith_server::models::run_limits`), for
    /// the commands that run models without a server.
    pub fn model_run_limits(&self) -> anyhow::Result<kith_lake::QueryLimits> {
        Ok(kith_server::models::run_limits(
            &self.query_limits()?,
            self.model_memory_bytes()?,
        ))
    }

    /// `[ingest]`'s flush and back-pressure settings over `config`'s defaults.
    pub fn apply_ingest_limits(
        &self,
        config: &mut kith_server::ServerConfig,
    ) -> anyhow::Result<()> {
        let ingest = &self.ingest;
        if let Some(rows) = nonzero(
            "[ingest] flush_rows",
            ingest.flush_rows,
            "there would be a flush for every event",
        )? {
            config.flush_rows = rows;
        }
        if let Some(rows) = nonzero(
            "[ingest] max_buffered_rows",
            ingest.max_buffered_rows,
            "every event would be answered 429",
        )? {
            config.max_buffered_rows = rows;
        }
        if let Some(mb) = nonzero(
            "[ingest] max_queued_mb",
            ingest.max_queued_mb,
            "every event would be answered 429",
        )? {
            config.journal.queue_bytes = mb.saturating_mul(1 << 20);
        }
        if let Some(bytes) = self.ingest.journal_segment_bytes()? {
            config.journal.segment_bytes = bytes;
        }
        Ok(())
    }
}

impl FileConfig {
    /// `idle_connection_secs` and `max_receiving_mb` over `limits`' defaults.
    pub fn apply_connection_limits(
        &self,
        limits: &mut kith_server::connections::ConnectionLimits,
    ) -> anyhow::Result<()> {
        if let Some(secs) = nonzero(
            "idle_connection_secs",
            self.idle_connection_secs,
            "it would close every connection before its first request arrives (default 75)",
        )? {
            let idle = std::time::Duration::from_secs(secs);
            if idle > kith_server::connections::MOST_IDLE_CONNECTION {
                anyhow::bail!(
                    "idle_connection_secs = {secs} in kith.toml is over a day, the most a \
                     connection may keep the server waiting; give fewer seconds (default 75)"
                );
            }
            limits.idle = idle;
        }
        if let Some(mb) = nonzero(
            "max_receiving_mb",
            self.max_receiving_mb,
            "it would refuse every request that has a body (default 256)",
        )? {
            limits.receiving_bytes = usize::try_from(mb)
                .ok()
                .and_then(|mb| mb.checked_mul(1 << 20))
                .with_context(|| {
                    format!(
                        "max_receiving_mb = {mb} in kith.toml is more bytes than this machine \
                         can address; give at most the memory the server may use (default 256)"
                    )
                })?;
        }
        Ok(())
    }
}

/// The shortest `replaced_files_kept_minutes` accepted.
const MIN_REPLACED_FILES_KEPT: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// The shortest `log_entries_kept_minutes` accepted.
const MIN_LOG_ENTRIES_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

/// `[tables]`: how long the event tables keep what no current version needs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesConfig {
    /// Data files compaction replaced are deleted this many minutes later (default 60): long
    /// enough for anything still reading an older version (DuckDB, Spark, a long query).
    pub replaced_files_kept_minutes: Option<u64>,
    /// Delta log entries before the newest checkpoint are deleted this many minutes later
    /// (default 2). Kith offers no time travel, and every entry kept slows each commit down.
    pub log_entries_kept_minutes: Option<u64>,
}

impl FileConfig {
    /// How long the event tables keep replaced files and old log entries, checked against the
    /// query time limit: a query must not outlive the files it reads.
    pub fn housekeeping(
        &self,
        query_timeout: std::time::Duration,
    ) -> anyhow::Result<kith_lake::Housekeeping> {
        let minutes = |m: u64| std::time::Duration::from_secs(m.saturating_mul(60));
        let mut policy = kith_lake::Housekeeping::default();
        if let Some(m) = self.tables.replaced_files_kept_minutes {
            policy.replaced_files_kept = minutes(m);
        }
        if let Some(m) = self.tables.log_entries_kept_minutes {
            policy.log_entries_kept = minutes(m);
        }
        // Files a flush or a compaction is writing are not referenced until its commit lands,
        // and queries read the files of the version they started on.
        let floor = query_timeout.max(MIN_REPLACED_FILES_KEPT);
        if policy.replaced_files_kept < floor {
            anyhow::bail!(
                "[tables] replaced_files_kept_minutes is {} but must be at least {} (10 minutes, \
                 and no less than the query time limit of {} s): files still being written or \
                 read could be deleted",
                policy.replaced_files_kept.as_secs() / 60,
                floor.as_secs().div_ceil(60),
                query_timeout.as_secs(),
            );
        }
        // A commit that lost a race reads the entries that landed since its version to check
        // for conflicts; a minute is far longer than any flush takes.
        if policy.log_entries_kept < MIN_LOG_ENTRIES_KEPT {
            anyhow::bail!(
                "[tables] log_entries_kept_minutes must be at least 1: a commit in progress may \
                 still need the entries just before it"
            );
        }
        Ok(policy)
    }
}

/// `[profiles]`: how much of the profile state memory holds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesConfig {
    /// Identifiers whose facts (traits, consent, figures) stay in memory besides those not yet
    /// written to `profiles.db`; the others are read from it when needed (default 100,000).
    pub resident_facts: Option<usize>,
}

/// `[identity]`: how identifiers are normalised and when profiles merge.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// ISO country whose numbers may be written without a country code (default MX).
    pub default_region: Option<String>,
    /// Values that are never identities here (besides null, undefined, guest, 0, ...).
    #[serde(default)]
    pub blocked_values: Vec<String>,
    /// Traits that are identifiers (e.g. `customer_number`).
    #[serde(default)]
    pub identifier_traits: Vec<String>,
    /// The event counted as a purchase by the built-in order traits (default `Order Completed`).
    pub order_event: Option<String>,
    pub max_identifiers: Option<usize>,
    pub max_merges: Option<usize>,
    /// Most identifiers of a type per profile, e.g. `{ user_id = 1, email = 5 }`.
    #[serde(default)]
    pub limits: std::collections::BTreeMap<String, usize>,
}

/// The identifier types Kith knows by name (see `IdType::from_name`).
const BUILT_IN_ID_TYPES: [&str; 4] = ["user_id", "anonymous_id", "email", "phone"];

/// The built-in identifier type a limit's name is a letter or two away from, when it is not
/// one and not a declared identifier trait: likely a typo that leaves the intended limit unset.
/// Only likely: external id types are open-ended (`context.externalIds` may bring any), so a
/// name such as `phone2` may be meant, and is said rather than refused.
fn likely_typo<'a>(name: &str, identifier_traits: &[String]) -> Option<&'a str> {
    if identifier_traits.iter().any(|t| t == name) {
        return None;
    }
    BUILT_IN_ID_TYPES
        .iter()
        .find(|t| **t != name && strsim::damerau_levenshtein(t, name) <= 2)
        .copied()
}

impl IdentityConfig {
    pub fn settings(&self) -> anyhow::Result<ProfileSettings> {
        let mut settings = ProfileSettings::default();
        let region = self.default_region.as_deref().unwrap_or("MX");
        settings.normalizer = Normalizer::new(region, self.blocked_values.clone())
            .with_context(|| "invalid [identity] default_region in the config file")?;
        for name in &self.identifier_traits {
            let why = if name.trim().is_empty() {
                Some("it is empty")
            } else {
                kith_identity::why_not_an_external_type(name)
            };
            if let Some(why) = why {
                anyhow::bail!(
                    "[identity] identifier_traits cannot list `{name}`: {why}. List traits that \
                     hold ids of your own, such as `customer_number` (emails and phones in \
                     traits identify people already)"
                );
            }
        }
        settings.identifier_traits = self.identifier_traits.clone();
        if let Some(event) = &self.order_event {
            settings.order_event = event.clone();
        }
        if let Some(n) = self.max_identifiers {
            if n == 0 {
                anyhow::bail!(
                    "[identity] max_identifiers must be at least 1: every profile holds an identifier"
                );
            }
            settings.rules.max_identifiers = n;
        }
        if let Some(n) = self.max_merges {
            settings.rules.max_merges = n;
        }
        for (name, limit) in &self.limits {
            if *limit == 0 {
                anyhow::bail!("[identity.limits] {name} must be at least 1");
            }
            if let Some(meant) = likely_typo(name, &self.identifier_traits) {
                tracing::warn!(
                    "[identity.limits] `{name}` is not a built-in identifier type: did you mean \
                     `{meant}`? It is taken as an external id type (from identifier_traits or \
                     context.externalIds), and `{meant}` keeps its default limit"
                );
            }
            settings
                .rules
                .limits
                .insert(IdType::from_name(name), *limit);
        }
        Ok(settings)
    }
}

pub use kith_server::app::DEFAULT_DATA_DIR;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8417";

/// A relative `data_dir` in a config file names a directory beside the file, as a relative path
/// in a `Cargo.toml` or a compose file does: the same file then means the same data wherever
/// `kith` is started from (a service manager's working directory is often `/`).
fn beside_the_file(config_file: &Path, dir: PathBuf) -> PathBuf {
    match config_file.parent() {
        Some(parent) if dir.is_relative() => parent.join(dir),
        _ => dir,
    }
}

/// The sections of `kith.toml` that hold settings by name.
const SECTIONS: [&str; 6] = [
    "ingest", "query", "tables", "identity", "profiles", "models",
];

/// Where settings written at the top of the file belong (`flush_interval_ms` above `[ingest]`
/// rather than under it), said as `: `flush_interval_ms` belongs under [ingest]`; empty when
/// every top-level setting is one or none fits a section.
fn section_of_misplaced_keys(text: &str) -> String {
    let Ok(table) = text.parse::<toml::Table>() else {
        return String::new();
    };
    let fits = |section: &str, key: &str, value: &toml::Value| {
        let mut moved = toml::Table::new();
        let mut inner = toml::Table::new();
        inner.insert(key.to_string(), value.clone());
        moved.insert(section.to_string(), toml::Value::Table(inner));
        FileConfig::deserialize(toml::Value::Table(moved)).is_ok()
    };
    let misplaced: Vec<String> = table
        .iter()
        .filter(|(key, value)| {
            let mut alone = toml::Table::new();
            alone.insert(key.to_string(), (*value).clone());
            FileConfig::deserialize(toml::Value::Table(alone)).is_err()
        })
        .filter_map(|(key, value)| {
            // `memory_mb` is a setting of [query] and of [models]: each is named.
            let sections: Vec<String> = SECTIONS
                .iter()
                .filter(|section| fits(section, key, value))
                .map(|section| format!("[{section}]"))
                .collect();
            (!sections.is_empty())
                .then(|| format!("`{key}` belongs under {}", sections.join(" or ")))
        })
        .collect();
    if misplaced.is_empty() {
        String::new()
    } else {
        format!(" ({})", misplaced.join(", "))
    }
}

impl FileConfig {
    /// Reads the given file, or `./kith.toml` when none is given and it exists.
    pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let (path, required) = match path {
            Some(path) => (path.to_path_buf(), true),
            None => (PathBuf::from("kith.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // Absent, it is not asked for; a link to nothing is, and pointing nowhere is a
            // mistake to tell, not a file to pass over.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && !required
                    && std::fs::symlink_metadata(&path).is_err() =>
            {
                return Ok(FileConfig::default());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let target = std::fs::read_link(&path)
                    .map(|to| format!(" (a link to {}, which does not exist)", to.display()))
                    .unwrap_or_default();
                return Err(e).with_context(|| {
                    format!("cannot read config file {}{target}", path.display())
                });
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read config file {}", path.display()));
            }
        };
        let mut config: FileConfig = match toml::from_str(&text) {
            Ok(config) => config,
            Err(e) => {
                let hint = section_of_misplaced_keys(&text);
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("invalid config file {}{hint}", path.display()));
            }
        };
        if config
            .data_dir
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            anyhow::bail!(
                "invalid config file {}: data_dir is empty; name a directory, or leave the line \
                 out for the default ({DEFAULT_DATA_DIR})",
                path.display()
            );
        }
        config.data_dir = config.data_dir.map(|dir| beside_the_file(&path, dir));
        Ok(config)
    }

    /// Profile settings: `[identity]` plus the declared `[[computed_traits]]`.
    pub fn profile_settings(&self) -> anyhow::Result<ProfileSettings> {
        let mut settings = self.identity.settings()?;
        let mut names = std::collections::HashSet::new();
        for def in &self.computed_traits {
            def.validate()
                .with_context(|| "invalid [[computed_traits]] in the config file")?;
            if !names.insert(def.name.as_str()) {
                anyhow::bail!("[[computed_traits]] declares `{}` twice", def.name);
            }
        }
        settings.computed = self.computed_traits.clone();
        match self.profiles.resident_facts {
            Some(0) => anyhow::bail!(
                "[profiles] resident_facts must be at least 1 (identifiers whose facts stay in memory)"
            ),
            Some(n) => settings.resident_facts = n,
            None => {}
        }
        Ok(settings)
    }

    /// The data directory: flag or env (already merged by clap) over the file over the default.
    pub fn data_dir(&self, from_cli: Option<PathBuf>) -> PathBuf {
        from_cli
            .or_else(|| self.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_facts_is_read_from_profiles_and_zero_is_refused() {
        let default = FileConfig::default().profile_settings().unwrap();
        assert_eq!(
            default.resident_facts,
            kith_profiles::DEFAULT_RESIDENT_FACTS
        );
        let set: FileConfig = toml::from_str("[profiles]\nresident_facts = 5000\n").unwrap();
        assert_eq!(set.profile_settings().unwrap().resident_facts, 5000);
        let zero: FileConfig = toml::from_str("[profiles]\nresident_facts = 0\n").unwrap();
        let err = format!("{:#}", zero.profile_settings().unwrap_err());
        assert!(err.contains("[profiles] resident_facts"), "{err}");
        assert!(toml::from_str::<FileConfig>("[profiles]\nresident = 5\n").is_err());
    }

    // Values at the top of their type's range wrapped into empty answers or overflowed timers
    // (a panic at start-up for `refresh_hours`, one on every query for `timeout_secs`).
    #[test]
    fn settings_past_their_most_are_refused_by_name() {
        for (text, named) in [
            (
                "[query]\ntimeout_secs = 18446744073709551615\n",
                "[query] timeout_secs = 18446744073709551615 in kith.toml is over 86400, a day",
            ),
            (
                "[query]\nmax_rows = 9223372036854775807\n",
                "[query] max_rows = 9223372036854775807 in kith.toml is over 1000000000",
            ),
        ] {
            let file: FileConfig = toml::from_str(text).unwrap();
            let err = format!("{:#}", file.query_limits().unwrap_err());
            assert!(err.contains(named), "{err}");
        }
        let most: FileConfig =
            toml::from_str("[query]\ntimeout_secs = 86400\nmax_rows = 1000000000\n").unwrap();
        let limits = most.query_limits().unwrap();
        assert_eq!(
            (limits.timeout.as_secs(), limits.max_rows),
            (86_400, 1_000_000_000)
        );
        for model in ["clv", "rfm", "risk", "preferences"] {
            for hours in ["1e300", "8761", "-1", "nan"] {
                let file: FileConfig =
                    toml::from_str(&format!("[models.{model}]\nrefresh_hours = {hours}\n"))
                        .unwrap();
                let err = format!("{:#}", file.model_schedules().unwrap_err());
                assert!(
                    err.contains(&format!("[models.{model}] refresh_hours must be")),
                    "{model} {hours}: {err}"
                );
            }
            let year: FileConfig =
                toml::from_str(&format!("[models.{model}]\nrefresh_hours = 8760\n")).unwrap();
            let schedules = year.model_schedules().unwrap();
            assert_eq!(
                schedules.models[model].refresh,
                Some(std::time::Duration::from_secs(8760 * 3600))
            );
        }
    }

    #[test]
    fn query_isolation_is_read_and_an_unknown_one_refused_with_the_choices() {
        let isolation = |text: &str| {
            toml::from_str::<FileConfig>(&format!("[query]\nisolation = \"{text}\"\n"))
                .map(|file| file.query.isolation)
        };
        assert_eq!(isolation("process").unwrap(), Some(QueryIsolation::Process));
        assert_eq!(
            isolation("in-process").unwrap(),
            Some(QueryIsolation::InProcess)
        );
        let refused = isolation("threads").unwrap_err().to_string();
        assert!(
            refused.contains("unknown variant `threads`, expected `process` or `in-process`"),
            "{refused}"
        );
    }

    #[test]
    fn query_and_ingest_limits_are_read_and_zero_is_refused_by_name() {
        let set: FileConfig = toml::from_str(
            "[query]\ntimeout_secs = 5\nmemory_mb = 64\nmax_rows = 10\n\
             [ingest]\nflush_rows = 100\nmax_buffered_rows = 1000\nmax_queued_mb = 8\n",
        )
        .unwrap();
        let limits = set.query_limits().unwrap();
        assert_eq!(
            (
                limits.timeout.as_secs(),
                limits.memory_bytes,
                limits.max_rows
            ),
            (5, 64 << 20, 10)
        );
        let mut config = kith_server::ServerConfig::default();
        set.apply_ingest_limits(&mut config).unwrap();
        assert_eq!(
            (
                config.flush_rows,
                config.max_buffered_rows,
                config.journal.queue_bytes
            ),
            (100, 1000, 8 << 20)
        );
        // A size too large for the machine is the largest there is, not a wrapped-around 0.
        let huge: FileConfig =
            toml::from_str("[query]\nmemory_mb = 18446744073709551615\n").unwrap();
        assert_eq!(huge.query_limits().unwrap().memory_bytes, usize::MAX);
        for (section, setting, consequence) in [
            ("query", "timeout_secs", "every query would time out"),
            ("query", "memory_mb", "every query would run out of memory"),
            ("query", "max_rows", "every answer would be empty"),
            ("ingest", "flush_rows", "a flush for every event"),
            (
                "ingest",
                "max_buffered_rows",
                "every event would be answered 429",
            ),
            (
                "ingest",
                "max_queued_mb",
                "every event would be answered 429",
            ),
        ] {
            let zero: FileConfig =
                toml::from_str(&format!("[{section}]\n{setting} = 0\n")).unwrap();
            let err = match section {
                "query" => zero.query_limits().map(|_| ()),
                _ => zero.apply_ingest_limits(&mut kith_server::ServerConfig::default()),
            }
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with(&format!(
                    "[{section}] {setting} in kith.toml must be at least 1, got 0"
                )) && err.contains(consequence),
                "{err}"
            );
        }
    }

    #[test]
    fn model_runs_use_their_own_memory_setting_or_at_least_four_gib() {
        let memory = |toml_text: &str| {
            let config: FileConfig = toml::from_str(toml_text).unwrap();
            let limits = config.model_run_limits().unwrap();
            let schedules = config.model_schedules().unwrap();
            (limits.memory_bytes, schedules.memory_bytes)
        };
        // Set: exactly that, below the default and below the query memory alike.
        assert_eq!(
            memory("[models]\nmemory_mb = 512\n[query]\nmemory_mb = 2048\n"),
            (512 << 20, Some(512 << 20))
        );
        // Unset: 4 GiB, or the query memory where that is more.
        assert_eq!(memory(""), (4 << 30, None));
        assert_eq!(memory("[query]\nmemory_mb = 8192\n"), (8 << 30, None));
        let zero: FileConfig = toml::from_str("[models]\nmemory_mb = 0\n").unwrap();
        for err in [
            zero.model_run_limits().unwrap_err().to_string(),
            zero.model_schedules().unwrap_err().to_string(),
        ] {
            assert!(
                err.starts_with("[models] memory_mb in kith.toml must be at least 1, got 0"),
                "{err}"
            );
        }
    }

    #[test]
    fn table_retention_is_read_in_minutes_and_must_outlast_a_query() {
        let limit = std::time::Duration::from_secs(30);
        let default = FileConfig::default().housekeeping(limit).unwrap();
        assert_eq!(default, kith_lake::Housekeeping::default());
        let set: FileConfig = toml::from_str(
            "[tables]\nreplaced_files_kept_minutes = 1440\nlog_entries_kept_minutes = 1\n",
        )
        .unwrap();
        let policy = set.housekeeping(limit).unwrap();
        assert_eq!(policy.replaced_files_kept.as_secs(), 1440 * 60);
        assert_eq!(policy.log_entries_kept.as_secs(), 60);
        let no_log: FileConfig =
            toml::from_str("[tables]\nlog_entries_kept_minutes = 0\n").unwrap();
        let err = format!("{:#}", no_log.housekeeping(limit).unwrap_err());
        assert!(
            err.contains("log_entries_kept_minutes must be at least 1"),
            "{err}"
        );
        let short: FileConfig =
            toml::from_str("[tables]\nreplaced_files_kept_minutes = 9\n").unwrap();
        let err = format!("{:#}", short.housekeeping(limit).unwrap_err());
        assert!(
            err.contains("replaced_files_kept_minutes is 9 but must be at least 10"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            set.housekeeping(std::time::Duration::from_secs(2 * 86_400))
                .unwrap_err()
        );
        assert!(err.contains("is 1440 but must be at least 2880"), "{err}");
        assert!(toml::from_str::<FileConfig>("[tables]\nkeep = 5\n").is_err());
    }

    #[test]
    fn a_setting_written_above_its_section_is_told_where_it_belongs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kith.toml");
        std::fs::write(
            &file,
            "listen = '127.0.0.1:1'\nflush_interval_ms = 100\ntimeout_secs = 5\nnope = 1\n",
        )
        .unwrap();
        let err = format!("{:#}", FileConfig::load(Some(&file)).unwrap_err());
        assert!(
            err.starts_with(&format!(
                "invalid config file {} (`flush_interval_ms` belongs under [ingest], \
                 `timeout_secs` belongs under [query]): TOML parse error",
                file.display()
            )),
            "{err}"
        );
        // A name no section has gets the parser's message alone.
        std::fs::write(&file, "memory_mb = 2048\n").unwrap();
        let err = format!("{:#}", FileConfig::load(Some(&file)).unwrap_err());
        assert!(
            err.contains("(`memory_mb` belongs under [query] or [models])"),
            "{err}"
        );
        std::fs::write(&file, "nope = 1\n").unwrap();
        let err = format!("{:#}", FileConfig::load(Some(&file)).unwrap_err());
        assert!(
            err.starts_with(&format!(
                "invalid config file {}: TOML parse error",
                file.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn an_empty_data_dir_in_a_file_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kith.toml");
        std::fs::write(&file, "data_dir = ''\n").unwrap();
        let err = format!("{:#}", FileConfig::load(Some(&file)).unwrap_err());
        assert_eq!(
            err,
            format!(
                "invalid config file {}: data_dir is empty; name a directory, or leave the line \
                 out for the default (./kith-data)",
                file.display()
            )
        );
    }

    #[test]
    fn a_relative_data_dir_in_a_file_is_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kith.toml");
        std::fs::write(&file, "data_dir = 'datos/kith'\n").unwrap();
        let config = FileConfig::load(Some(&file)).unwrap();
        assert_eq!(config.data_dir(None), dir.path().join("datos/kith"));
        std::fs::write(&file, "data_dir = '/var/lib/kith'\n").unwrap();
        let config = FileConfig::load(Some(&file)).unwrap();
        assert_eq!(config.data_dir(None), PathBuf::from("/var/lib/kith"));
        // The flag (or `KITH_DATA_DIR`) is taken as given, against the working directory.
        assert_eq!(
            config.data_dir(Some(PathBuf::from("here"))),
            PathBuf::from("here")
        );
        // `./kith.toml`, found in the working directory, names the same directory either way.
        assert_eq!(
            beside_the_file(Path::new("kith.toml"), PathBuf::from("data")),
            PathBuf::from("data")
        );
    }

    #[test]
    fn unknown_keys_are_errors_and_known_ones_parse() {
        let config: FileConfig = toml::from_str(
            "data_dir = '/tmp/k'\nlisten = '0.0.0.0:1'\n[ingest]\nflush_interval_ms = 5\n",
        )
        .unwrap();
        assert_eq!(config.data_dir, Some(PathBuf::from("/tmp/k")));
        assert_eq!(config.ingest.flush_interval_ms, Some(5));
        assert_eq!(config.ingest.journal_segment_bytes().unwrap(), None);
        let segments: FileConfig = toml::from_str("[ingest]\njournal_segment_mb = 2\n").unwrap();
        assert_eq!(
            segments.ingest.journal_segment_bytes().unwrap(),
            Some(2 << 20)
        );
        let none: FileConfig = toml::from_str("[ingest]\njournal_segment_mb = 0\n").unwrap();
        let err = format!("{:#}", none.ingest.journal_segment_bytes().unwrap_err());
        assert!(err.contains("journal_segment_mb"), "{err}");
        assert!(toml::from_str::<FileConfig>("data_dri = 'x'").is_err());
        let identity: FileConfig = toml::from_str(
            "[identity]\ndefault_region = 'us'\nidentifier_traits = ['customer_number']\n[identity.limits]\nemail = 2\n",
        )
        .unwrap();
        let settings = identity.identity.settings().unwrap();
        assert_eq!(settings.rules.limit(&IdType::Email), 2);
        assert_eq!(settings.identifier_traits, ["customer_number"]);
        let bad: FileConfig = toml::from_str("[identity]\ndefault_region = 'Mexico'\n").unwrap();
        let err = format!("{:#}", bad.identity.settings().unwrap_err());
        assert!(err.contains("ISO 3166"), "{err}");
        let identity_error = |text: &str| {
            let config: FileConfig = toml::from_str(text).unwrap();
            config
                .identity
                .settings()
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        };
        // A name a letter or two from a built-in type is said (with a warning), not refused:
        // it may be an external id type.
        assert_eq!(identity_error("[identity.limits]\nemial = 5\n"), Ok(()));
        assert_eq!(likely_typo("emial", &[]), Some("email"));
        assert_eq!(likely_typo("userid", &[]), Some("user_id"));
        assert_eq!(likely_typo("email", &[]), None);
        assert_eq!(likely_typo("crm_id", &[]), None);
        assert_eq!(likely_typo("emails", &["emails".to_string()]), None);
        // External id types are open-ended: a name far from the built-in ones is one.
        assert_eq!(identity_error("[identity.limits]\ncrm_id = 1\n"), Ok(()));
        assert_eq!(
            identity_error(
                "[identity]\nidentifier_traits = ['emails']\n[identity.limits]\nemails = 1\n"
            ),
            Ok(())
        );
        let none = identity_error("[identity]\nmax_identifiers = 0\n").unwrap_err();
        assert!(
            none.contains("max_identifiers must be at least 1"),
            "{none}"
        );
        assert_eq!(identity_error("[identity]\nmax_merges = 0\n"), Ok(()));
        // A trait named as a built-in type, or with a `:`, would be read back as another type.
        for (name, why) in [
            ("email", "a built-in type's name"),
            ("user_id", "a built-in type's name"),
            ("crm:id", "holds a `:`"),
            (" ", "it is empty"),
        ] {
            let refused = identity_error(&format!("[identity]\nidentifier_traits = ['{name}']\n"))
                .unwrap_err();
            assert!(
                refused.starts_with(&format!(
                    "[identity] identifier_traits cannot list `{name}`"
                )) && refused.contains(why),
                "{refused}"
            );
        }
        assert_eq!(
            config.data_dir(Some(PathBuf::from("/flag"))),
            PathBuf::from("/flag")
        );
        assert_eq!(
            FileConfig::default().data_dir(None),
            PathBuf::from(DEFAULT_DATA_DIR)
        );
    }
}
