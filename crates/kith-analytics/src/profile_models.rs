//! The analyses and models whose answers are written onto every profile as traits, so segments
//! and exports can use them: CLV scores, RFM scores and segment, risk signals with the activity
//! trend, and top categories. Each run gives the report and, per profile, its traits; a caller
//! (the server's model jobs, `kith models ... --write-traits`) replaces the model's traits with
//! them in one go.
//!
//! A run is split in two: [`ProfileModel::gather`] queries (async), [`Gathered::finish`] does
//! the CPU-bound part (the CLV fits), so a server can keep the latter off its async threads.

use serde_json::{Map, Value, json};

use crate::clv::Purchases;
use crate::{
    AnalyticsError, ClvDefinition, Data, PreferenceDefinition, RfmDefinition, RiskDefinition,
    parse_definition,
};

/// The models, by the name the API, the CLI and `kith.toml` use.
pub const PROFILE_MODELS: [&str; 4] = ["clv", "rfm", "risk", "preferences"];

#[derive(Debug, Clone)]
pub enum ProfileModel {
    Clv(ClvDefinition),
    Rfm(RfmDefinition),
    Risk(RiskDefinition),
    Preferences(PreferenceDefinition),
}

/// A finished run: the model's report and every scored profile's traits.
#[derive(Debug, Clone)]
pub struct ProfileModelRun {
    pub report: Value,
    pub traits: Vec<(String, Map<String, Value>)>,
}

/// What [`ProfileModel::gather`] read, waiting for [`Gathered::finish`].
pub enum Gathered {
    Clv(Box<ClvDefinition>, Purchases),
    Done(ProfileModelRun),
}

impl ProfileModel {
    /// Reads the definition of `model`, naming the field at fault when it is wrong.
    pub fn parse(model: &str, definition: &Value) -> Result<ProfileModel, AnalyticsError> {
        // A run replaces everything the model wrote before: scoring part of the profiles would
        // erase the others' traits (and a segment on the model's own traits would shrink with
        // every run).
        if definition
            .get("segment")
            .is_some_and(|s| s.as_array().is_none_or(|conditions| !conditions.is_empty()))
        {
            return Err(AnalyticsError::invalid(
                "segment",
                "cannot narrow a model run: each run replaces the traits the model wrote on every profile; look at part of them with the analysis (kith analyze, POST /v1/analytics) instead",
            ));
        }
        Ok(match model {
            "clv" => ProfileModel::Clv(ClvDefinition::parse(definition)?),
            // Checked as a run would check them, so a mistake is refused before a run is
            // accepted rather than failing in the background.
            "rfm" => {
                let rfm: crate::rfm::RfmDefinition =
                    parse_definition(model, crate::rfm::FIELDS, definition)?;
                rfm.aggregates_sql()?;
                ProfileModel::Rfm(rfm)
            }
            "risk" => {
                let risk: crate::risk::RiskDefinition =
                    parse_definition(model, crate::risk::FIELDS, definition)?;
                risk.check()?;
                ProfileModel::Risk(risk)
            }
            "preferences" => {
                let preferences: crate::preferences::PreferenceDefinition =
                    parse_definition(model, crate::preferences::FIELDS, definition)?;
                preferences.check()?;
                ProfileModel::Preferences(preferences)
            }
            other => {
                return Err(AnalyticsError::invalid(
                    "model",
                    format!(
                        "`{other}` is not a model that scores profiles; use one of {}",
                        PROFILE_MODELS.join(", ")
                    ),
                ));
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            ProfileModel::Clv(_) => "clv",
            ProfileModel::Rfm(_) => "rfm",
            ProfileModel::Risk(_) => "risk",
            ProfileModel::Preferences(_) => "preferences",
        }
    }

    /// The traits a run writes, for this definition.
    pub fn trait_names(&self) -> Vec<String> {
        match self {
            ProfileModel::Clv(d) => d.trait_names(),
            ProfileModel::Rfm(_) => [
                "rfm_segment",
                "rfm_r",
                "rfm_f",
                "rfm_m",
                "rfm_recency_days",
                "rfm_frequency",
                "rfm_monetary",
            ]
            .map(String::from)
            .to_vec(),
            ProfileModel::Risk(_) => vec!["activity_trend".into(), "risk_signals".into()],
            ProfileModel::Preferences(d) => vec![preference_trait(&d.property)],
        }
    }

    /// Runs the queries. For RFM, risk and preferences that is the whole run.
    pub async fn gather(&self, data: &Data<'_>) -> Result<Gathered, AnalyticsError> {
        let json = |r: Result<Value, serde_json::Error>| {
            r.map_err(|e| AnalyticsError::invalid("definition", e.to_string()))
        };
        Ok(match self {
            ProfileModel::Clv(d) => Gathered::Clv(Box::new(d.clone()), d.purchases(data).await?),
            ProfileModel::Rfm(d) => {
                let (report, scores) = d.run_with_scores(data, true).await?;
                let traits = scores
                    .into_iter()
                    .filter(|s| attributed(&s.profile_id))
                    .map(|s| {
                        let traits = json!({
                            "rfm_segment": s.segment,
                            "rfm_r": s.r,
                            "rfm_f": s.f,
                            "rfm_m": s.m,
                            "rfm_recency_days": round(s.recency_days, 1),
                            "rfm_frequency": s.frequency,
                            "rfm_monetary": round(s.monetary, 2),
                        });
                        (s.profile_id, object(traits))
                    })
                    .collect();
                Gathered::Done(ProfileModelRun {
                    report: json(serde_json::to_value(report))?,
                    traits,
                })
            }
            ProfileModel::Risk(d) => {
                let (report, every) = d.run_with_all(data).await?;
                let traits = every
                    .into_iter()
                    .filter(|p| attributed(&p.profile_id))
                    .map(|p| {
                        let traits = json!({
                            "activity_trend": round(p.activity_trend, 3),
                            "risk_signals": p.risk_signals,
                        });
                        (p.profile_id, object(traits))
                    })
                    .collect();
                Gathered::Done(ProfileModelRun {
                    report: json(serde_json::to_value(report))?,
                    traits,
                })
            }
            ProfileModel::Preferences(d) => {
                let (report, every) = d.run_with_all(data).await?;
                let name = preference_trait(&d.property);
                let traits = every
                    .into_iter()
                    .filter(|p| attributed(&p.profile_id))
                    .map(|p| {
                        let values: Vec<String> =
                            p.preferences.into_iter().map(|pref| pref.value).collect();
                        let mut traits = Map::new();
                        traits.insert(name.clone(), json!(values));
                        (p.profile_id, traits)
                    })
                    .collect();
                Gathered::Done(ProfileModelRun {
                    report: json(serde_json::to_value(report))?,
                    traits,
                })
            }
        })
    }
}

impl Gathered {
    /// The CPU-bound part (CLV's fits and scoring); immediate for the others.
    pub fn finish(self) -> Result<ProfileModelRun, AnalyticsError> {
        match self {
            Gathered::Done(run) => Ok(run),
            Gathered::Clv(definition, purchases) => {
                let run = definition.score(&purchases)?;
                let report = serde_json::to_value(&run.report)
                    .map_err(|e| AnalyticsError::Model(e.to_string()))?;
                Ok(ProfileModelRun {
                    traits: run.profile_traits().collect(),
                    report,
                })
            }
        }
    }
}

/// `top_categories` for the default `properties.category`, else `top_` and the field's last
/// part (`properties.brand` → `top_brand`).
pub fn preference_trait(property: &str) -> String {
    let last = property.rsplit('.').next().unwrap_or(property);
    if last == "category" {
        "top_categories".into()
    } else {
        let clean: String = last
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("top_{clean}")
    }
}

/// Events of no profile yet are counted under `unattributed:…`; there is no profile to write to.
fn attributed(profile_id: &str) -> bool {
    !profile_id.starts_with("unattributed:")
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_parse_by_name_and_name_their_traits() {
        let rfm = ProfileModel::parse("rfm", &json!({"purchase_event": "Compra"})).unwrap();
        assert_eq!(rfm.name(), "rfm");
        assert!(rfm.trait_names().contains(&"rfm_segment".to_string()));
        let prefs =
            ProfileModel::parse("preferences", &json!({"property": "properties.brand"})).unwrap();
        assert_eq!(prefs.trait_names(), ["top_brand"]);
        let default = ProfileModel::parse("preferences", &json!({})).unwrap();
        assert_eq!(default.trait_names(), ["top_categories"]);
        let error = ProfileModel::parse("churn", &json!({})).unwrap_err();
        assert!(
            error.to_string().contains("clv, rfm, risk, preferences"),
            "{error}"
        );
        let error = ProfileModel::parse("risk", &json!({"recent": 3})).unwrap_err();
        assert_eq!(error.field(), Some("recent"));
    }
}
