//! Traits Kith writes itself: scores from models and analyses (CLV, RFM segment, risk signals,
//! preferences), as opposed to the traits customers' events carry.
//!
//! Each model writes its whole set at once: a run replaces every row the model wrote before, in
//! one transaction, so a profile never shows half of one run and half of another, and a profile
//! the new run no longer scores loses the old score instead of keeping a stale one. The rows live
//! in `model_traits.db` beside `profiles.db` (not in memory: a million profiles' scores would
//! cost as much again as the profiles), keyed by the `profile_id` the run saw; a lookup by any
//! other identifier of a merged profile still finds them (see [`ModelTraitStore::for_profile`]).
//! A separate file keeps these bulk writes out of the way of the profile persister, and lets
//! `kith models ...` write while a server runs (WAL, busy timeout).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::ProfileError;

pub const DB_FILE: &str = "model_traits.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    model TEXT PRIMARY KEY,
    computed_at INTEGER NOT NULL,
    profiles INTEGER NOT NULL,
    trait_names TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS model_traits (
    profile_id TEXT NOT NULL,
    model TEXT NOT NULL,
    traits TEXT NOT NULL,
    PRIMARY KEY (profile_id, model)
) WITHOUT ROWID;
";

/// The last run of one model: when, how many profiles it scored, which traits it writes, and
/// what the model reported (fitted parameters, settings).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRun {
    pub model: String,
    pub computed_at: String,
    #[serde(skip)]
    pub computed_at_micros: i64,
    pub profiles: u64,
    pub trait_names: Vec<String>,
    pub details: Value,
}

pub struct ModelTraitStore {
    conn: Mutex<Connection>,
}

impl ModelTraitStore {
    /// Opens (or creates) `model_traits.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<ModelTraitStore, ProfileError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| ProfileError::Io(data_dir.display().to_string(), e))?;
        let conn = Connection::open(data_dir.join(DB_FILE))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute_batch(SCHEMA)?;
        Ok(ModelTraitStore {
            conn: Mutex::new(conn),
        })
    }

    /// An empty store in memory, for a reader of a data directory without `model_traits.db`.
    pub fn open_empty() -> Result<ModelTraitStore, ProfileError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(ModelTraitStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces everything `model` wrote before with `rows` (profile id, its traits). Every
    /// profile's traits must use only names from `trait_names`; names already written by
    /// another model are refused, so two models never fight over one trait.
    pub fn replace<I>(
        &self,
        model: &str,
        trait_names: &[String],
        details: &Value,
        rows: I,
    ) -> Result<ModelRun, ProfileError>
    where
        I: IntoIterator<Item = (String, Map<String, Value>)>,
    {
        let mut conn = self.conn();
        for run in runs(&conn)? {
            if run.model == model {
                continue;
            }
            if let Some(clash) = trait_names.iter().find(|n| run.trait_names.contains(n)) {
                return Err(ProfileError::ModelTraits(format!(
                    "the trait `{clash}` is already written by the model `{}`",
                    run.model
                )));
            }
        }
        let computed_at = chrono::Utc::now().timestamp_micros();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM model_traits WHERE model = ?1", params![model])?;
        let mut profiles = 0u64;
        {
            let mut insert = tx.prepare(
                "INSERT OR REPLACE INTO model_traits (profile_id, model, traits) VALUES (?1, ?2, ?3)",
            )?;
            for (profile_id, traits) in rows {
                if let Some(name) = traits.keys().find(|k| !trait_names.contains(k)) {
                    return Err(ProfileError::ModelTraits(format!(
                        "the model `{model}` wrote the trait `{name}` it does not declare"
                    )));
                }
                let json = Value::Object(traits).to_string();
                insert.execute(params![profile_id, model, json])?;
                profiles += 1;
            }
        }
        let names_json = serde_json::to_string(trait_names).unwrap_or_default();
        tx.execute(
            "INSERT OR REPLACE INTO runs (model, computed_at, profiles, trait_names, details) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                model,
                computed_at,
                profiles as i64,
                names_json,
                details.to_string()
            ],
        )?;
        tx.commit()?;
        Ok(ModelRun {
            model: model.to_string(),
            computed_at: crate::view::format_micros(computed_at),
            computed_at_micros: computed_at,
            profiles,
            trait_names: trait_names.to_vec(),
            details: details.clone(),
        })
    }

    /// Every model's last run, by name.
    pub fn runs(&self) -> Result<Vec<ModelRun>, ProfileError> {
        runs(&self.conn())
    }

    /// The last run of `model`, if it ran.
    pub fn run(&self, model: &str) -> Result<Option<ModelRun>, ProfileError> {
        Ok(runs(&self.conn())?.into_iter().find(|r| r.model == model))
    }

    /// The model traits of a profile. `profile_ids` are the ids it may have been scored under:
    /// its own first, then those of its other identifiers (a profile's id is its anchor
    /// identifier's, so after a merge the absorbed profile's scores are under one of them). For
    /// each model the first id that has a row wins.
    pub fn for_profile(
        &self,
        profile_ids: &[String],
    ) -> Result<BTreeMap<String, Value>, ProfileError> {
        let conn = self.conn();
        let mut statement =
            conn.prepare_cached("SELECT model, traits FROM model_traits WHERE profile_id = ?1")?;
        let mut seen_models: Vec<String> = Vec::new();
        let mut traits = BTreeMap::new();
        for profile_id in profile_ids {
            let rows = statement
                .query_map(params![profile_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            for (model, json) in rows {
                if seen_models.contains(&model) {
                    continue;
                }
                traits.extend(parse_traits(&model, &json)?);
                seen_models.push(model);
            }
        }
        Ok(traits)
    }

    /// Every profile's model traits (for the `profiles` table).
    pub fn all(&self) -> Result<hashbrown::HashMap<String, BTreeMap<String, Value>>, ProfileError> {
        let conn = self.conn();
        let mut statement = conn.prepare("SELECT profile_id, model, traits FROM model_traits")?;
        let mut rows = statement.query([])?;
        let mut all: hashbrown::HashMap<String, BTreeMap<String, Value>> =
            hashbrown::HashMap::new();
        while let Some(row) = rows.next()? {
            let (profile_id, model, json): (String, String, String) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            all.entry(profile_id)
                .or_default()
                .extend(parse_traits(&model, &json)?);
        }
        Ok(all)
    }

    /// Forgets everything `model` wrote (e.g. when a person erases a profile's data, or a model is
    /// switched off).
    pub fn remove_model(&self, model: &str) -> Result<bool, ProfileError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM model_traits WHERE model = ?1", params![model])?;
        let removed = tx.execute("DELETE FROM runs WHERE model = ?1", params![model])?;
        tx.commit()?;
        Ok(removed > 0)
    }

    /// The traits one run wrote for one profile id, exactly as stored.
    pub fn row(&self, model: &str, profile_id: &str) -> Result<Option<Value>, ProfileError> {
        let conn = self.conn();
        let json: Option<String> = conn
            .query_row(
                "SELECT traits FROM model_traits WHERE profile_id = ?1 AND model = ?2",
                params![profile_id, model],
                |r| r.get(0),
            )
            .optional()?;
        json.map(|j| {
            serde_json::from_str(&j)
                .map_err(|e| ProfileError::Corrupt(format!("model traits of `{model}`: {e}")))
        })
        .transpose()
    }
}

fn parse_traits(model: &str, json: &str) -> Result<Map<String, Value>, ProfileError> {
    match serde_json::from_str(json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) | Err(_) => Err(ProfileError::Corrupt(format!(
            "model traits of `{model}` are not a JSON object"
        ))),
    }
}

fn runs(conn: &Connection) -> Result<Vec<ModelRun>, ProfileError> {
    let mut statement = conn.prepare(
        "SELECT model, computed_at, profiles, trait_names, details FROM runs ORDER BY model",
    )?;
    let rows = statement
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(model, computed_at, profiles, names, details)| {
            let corrupt = |what: &str| ProfileError::Corrupt(format!("run of `{model}`: {what}"));
            Ok(ModelRun {
                trait_names: serde_json::from_str(&names).map_err(|_| corrupt("trait names"))?,
                details: serde_json::from_str(&details).map_err(|_| corrupt("details"))?,
                computed_at: crate::view::format_micros(computed_at),
                computed_at_micros: computed_at,
                profiles: profiles.max(0) as u64,
                model,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn traits(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_run_replaces_the_models_previous_rows_and_leaves_other_models_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelTraitStore::open(dir.path()).unwrap();
        let clv = vec!["clv_p_alive".to_string()];
        let rfm = vec!["rfm_segment".to_string()];
        store
            .replace(
                "clv",
                &clv,
                &json!({"r": 0.24}),
                vec![
                    ("p_a".into(), traits(json!({"clv_p_alive": 0.9}))),
                    ("p_b".into(), traits(json!({"clv_p_alive": 0.2}))),
                ],
            )
            .unwrap();
        store
            .replace(
                "rfm",
                &rfm,
                &json!({}),
                vec![("p_a".into(), traits(json!({"rfm_segment": "Champions"})))],
            )
            .unwrap();
        let run = store
            .replace(
                "clv",
                &clv,
                &json!({"r": 0.25}),
                vec![("p_a".into(), traits(json!({"clv_p_alive": 0.8})))],
            )
            .unwrap();
        assert_eq!(run.profiles, 1);
        assert_eq!(
            store.for_profile(&["p_a".into()]).unwrap(),
            BTreeMap::from([
                ("clv_p_alive".to_string(), json!(0.8)),
                ("rfm_segment".to_string(), json!("Champions")),
            ])
        );
        // p_b is no longer scored: its old score is gone, not kept stale.
        assert!(store.for_profile(&["p_b".into()]).unwrap().is_empty());
        let runs = store.runs().unwrap();
        assert_eq!(
            runs.iter().map(|r| r.model.as_str()).collect::<Vec<_>>(),
            ["clv", "rfm"]
        );
        assert_eq!(runs[0].details, json!({"r": 0.25}));
        // Reopened: all of it is on disk.
        drop(store);
        let store = ModelTraitStore::open(dir.path()).unwrap();
        assert_eq!(store.all().unwrap().len(), 1);
        assert_eq!(
            store.row("clv", "p_a").unwrap(),
            Some(json!({"clv_p_alive": 0.8}))
        );
    }

    #[test]
    fn a_merged_profile_finds_scores_under_its_other_ids_its_own_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelTraitStore::open(dir.path()).unwrap();
        let names = vec!["clv_p_alive".to_string()];
        store
            .replace(
                "clv",
                &names,
                &json!({}),
                vec![
                    ("p_old".into(), traits(json!({"clv_p_alive": 0.1}))),
                    ("p_now".into(), traits(json!({"clv_p_alive": 0.7}))),
                ],
            )
            .unwrap();
        let found = |ids: &[&str]| {
            store
                .for_profile(&ids.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap()
        };
        assert_eq!(found(&["p_now", "p_old"])["clv_p_alive"], json!(0.7));
        assert_eq!(found(&["p_new", "p_old"])["clv_p_alive"], json!(0.1));
    }

    #[test]
    fn undeclared_and_clashing_trait_names_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelTraitStore::open(dir.path()).unwrap();
        let err = store
            .replace(
                "clv",
                &["clv_p_alive".to_string()],
                &json!({}),
                vec![("p_a".into(), traits(json!({"rfm_segment": "Lost"})))],
            )
            .unwrap_err();
        assert!(err.to_string().contains("does not declare"), "{err}");
        assert!(store.runs().unwrap().is_empty());
        store
            .replace("rfm", &["rfm_segment".to_string()], &json!({}), vec![])
            .unwrap();
        let err = store
            .replace("clv", &["rfm_segment".to_string()], &json!({}), vec![])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("already written by the model `rfm`")
        );
    }
}
