//! Preferences: what each profile keeps choosing — category (or product, or any property)
//! affinity from the events that show interest, weighted by how strong the signal is (a view, an
//! add to cart, a purchase) and by how recent it is (a half-life), with what they come back to
//! on several days.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::scope::{FieldRef, Scope, instant_sql, sql_string};
use arrow::array::{Array, AsArray, Int64Array};
use arrow::datatypes::{Float64Type, Int64Type};

use crate::{AnalyticsError, Data};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PreferenceDefinition {
    #[serde(flatten)]
    pub scope: Scope,
    /// What a preference is for [default: properties.category].
    #[serde(default = "default_property")]
    pub property: String,
    /// The events that show interest and their weights [default: Product Viewed 1, Product
    /// Added 3].
    #[serde(default = "default_events")]
    pub events: BTreeMap<String, f64>,
    /// Interest halves every this many days [default: 90].
    #[serde(default = "default_half_life")]
    pub half_life_days: f64,
    /// Recency is measured back from here [default: `to`, else now].
    #[serde(default)]
    pub as_of: Option<String>,
    /// Preferences kept per profile [default: 3].
    #[serde(default = "default_top")]
    pub top: usize,
    /// Profiles listed [default: 50].
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_property() -> String {
    "properties.category".into()
}
fn default_events() -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("Product Viewed".into(), 1.0),
        ("Product Added".into(), 3.0),
    ])
}
fn default_half_life() -> f64 {
    90.0
}
fn default_top() -> usize {
    3
}
fn default_limit() -> usize {
    50
}

pub const FIELDS: &[&str] = &[
    "property",
    "events",
    "half_life_days",
    "as_of",
    "top",
    "limit",
];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PreferenceReport {
    pub as_of: String,
    /// Profiles with at least one event of interest.
    pub profiles: u64,
    /// How many profiles have each value as their first preference.
    pub first_choices: Vec<(String, u64)>,
    /// Profiles with the most interest first, up to `limit`.
    pub top_profiles: Vec<ProfilePreferences>,
    /// With a breakdown by a field of the profile: profiles and first choices per value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_breakdown: Vec<PreferenceGroup>,
}

/// The profiles with one breakdown value.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PreferenceGroup {
    pub breakdown: String,
    pub profiles: u64,
    pub first_choices: Vec<(String, u64)>,
}

/// Counts by value, most first (ties by value).
fn most_first(counts: BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut counts: Vec<(String, u64)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    counts
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProfilePreferences {
    pub profile_id: String,
    /// `top_categories`: best first.
    pub preferences: Vec<Preference>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Preference {
    pub value: String,
    /// Weighted, recency-decayed interest.
    pub score: f64,
    /// Its share of the profile's interest.
    pub share: f64,
    pub events: u64,
    /// Distinct days with interest in it: 2 or more means the person comes back to it.
    pub days: u64,
}

/// The range a weight of interest may have.
const MIN_WEIGHT: f64 = 1e-6;
const MOST_WEIGHT: f64 = 1e6;

/// The range of the half-life of interest: an hour to a century.
const MIN_HALF_LIFE_DAYS: f64 = 1.0 / 24.0;
const MOST_HALF_LIFE_DAYS: f64 = 36_525.0;

impl PreferenceDefinition {
    /// Checks the definition without reading anything: what a run would refuse, it refuses
    /// (so a model fit can be refused before it is accepted).
    pub fn check(&self) -> Result<(), AnalyticsError> {
        let scope = self.scope.resolve()?;
        scope.as_of(self.as_of.as_deref())?;
        if self.events.is_empty() {
            return Err(AnalyticsError::invalid(
                "events",
                "must name at least one event and its weight",
            ));
        }
        // Weights are relative: bounded so that sums of them stay finite (two of 1e308 made
        // every share 0).
        if let Some((name, weight)) = self
            .events
            .iter()
            .find(|(_, w)| !(w.is_finite() && (MIN_WEIGHT..=MOST_WEIGHT).contains(*w)))
        {
            return Err(AnalyticsError::invalid(
                &format!("events.{name}"),
                format!(
                    "must be a weight from {MIN_WEIGHT} to {MOST_WEIGHT} (they are relative: 1 \
                     and 3 weigh as 10 and 30), not {weight}"
                ),
            ));
        }
        // From an hour to a century: a half-life of 1e-300 days made every score 0.
        if !(self.half_life_days.is_finite()
            && (MIN_HALF_LIFE_DAYS..=MOST_HALF_LIFE_DAYS).contains(&self.half_life_days))
        {
            return Err(AnalyticsError::invalid(
                "half_life_days",
                format!(
                    "must be a number of days from {MIN_HALF_LIFE_DAYS:.4} (an hour) to \
                     {MOST_HALF_LIFE_DAYS} (a century)"
                ),
            ));
        }
        if self.top == 0 || self.top > 50 {
            return Err(AnalyticsError::invalid("top", "must be between 1 and 50"));
        }
        scope.profile_breakdown_only()?;
        FieldRef::parse(&self.property, "property")?;
        Ok(())
    }

    pub async fn run(&self, data: &Data<'_>) -> Result<PreferenceReport, AnalyticsError> {
        Ok(self.run_with_all(data).await?.0)
    }

    /// The report, and every profile's preferences (best first, up to `top`).
    pub async fn run_with_all(
        &self,
        data: &Data<'_>,
    ) -> Result<(PreferenceReport, Vec<ProfilePreferences>), AnalyticsError> {
        self.check()?;
        let scope = self.scope.resolve()?;
        let as_of = scope.as_of(self.as_of.as_deref())?;
        let property = FieldRef::parse(&self.property, "property")?;
        let names: Vec<String> = self.events.keys().map(|e| sql_string(e)).collect();
        let weight = self
            .events
            .iter()
            .map(|(event, w)| format!("WHEN {} THEN {w:?}", sql_string(event)))
            .collect::<Vec<_>>()
            .join(" ");
        let base = scope.attributed_events(
            &[
                format!("e.event IN ({})", names.join(", ")),
                format!("e.timestamp <= {}", instant_sql(as_of)),
            ],
            &format!(
                "{} AS value, CASE e.event {weight} ELSE 0.0 END AS weight",
                property.text_sql("e")
            ),
        );
        // The days a profile showed interest in a value are counted as the groups of a first
        // aggregate by day, not with COUNT(DISTINCT day): the engine keeps a boxed accumulator
        // with a hash set for every (profile, value) for that, many small allocations for
        // values nearly unique to a profile (product or message ids). By product on the
        // 20,000-customer demo world, the server's memory rose 240 MB during the analysis
        // instead of 370 (bench/README.md).
        let sql = format!(
            "WITH base AS ({base}), \
             daily AS ( \
               SELECT profile_id, value, \
                      SUM(weight * power(0.5, ({as_of} - CAST(ts AS BIGINT)) / 86400000000.0 / {half_life:?})) AS score, \
                      COUNT(*) AS events, MAX(breakdown) AS breakdown \
               FROM base WHERE value IS NOT NULL \
               GROUP BY profile_id, value, {day}) \
             SELECT profile_id, value, CAST(SUM(score) AS DOUBLE), CAST(SUM(events) AS BIGINT), \
                    CAST(COUNT(*) AS BIGINT), MAX(breakdown) \
             FROM daily GROUP BY profile_id, value",
            as_of = as_of.timestamp_micros(),
            half_life = self.half_life_days,
            // Days as `timezone` cuts them.
            day = scope.bucket_sql("day", "ts"),
        );
        // Events of profiles outside a segment are left out by the SQL (`attributed_events`).
        // The rows stream in (one a profile and value, in no order) and are folded at once: each
        // profile keeps its best `top` (a total order, so pruning early keeps the same ones)
        // and the sum of all its scores, never every value it showed interest in.
        let data = data.with_segment(&scope)?;
        let keep = self.top;
        let with_breakdown = scope.profile_breakdown.is_some();
        let mut by_profile: BTreeMap<String, Interest> = BTreeMap::new();
        let mut unexpected = None;
        data.lake
            .query_each(&sql, &data.limits, data.tables.clone(), |batch| {
                let profile_id = crate::funnel::strings(batch.column(0).as_ref());
                let value = crate::funnel::strings(batch.column(1).as_ref());
                // The SQL casts them to these types; anything else is a fault, not zeros.
                let (Some(score), Some(events), Some(days)) = (
                    batch.column(2).as_primitive_opt::<Float64Type>(),
                    batch.column(3).as_primitive_opt::<Int64Type>(),
                    batch.column(4).as_primitive_opt::<Int64Type>(),
                ) else {
                    unexpected.get_or_insert_with(|| batch.schema().to_string());
                    return;
                };
                let breakdown = crate::funnel::strings(batch.column(5).as_ref());
                for row in 0..batch.num_rows() {
                    let interest = match by_profile.get_mut(profile_id(row)) {
                        Some(interest) => interest,
                        None => by_profile.entry(profile_id(row).to_string()).or_default(),
                    };
                    if with_breakdown {
                        breakdown(row).clone_into(&mut interest.breakdown);
                    }
                    let score = if score.is_valid(row) {
                        score.value(row)
                    } else {
                        0.0
                    };
                    let counted = |column: &Int64Array| {
                        if column.is_valid(row) {
                            column.value(row).max(0) as u64
                        } else {
                            0
                        }
                    };
                    interest.add(
                        Preference {
                            value: value(row).to_string(),
                            score,
                            share: 0.0,
                            events: counted(events),
                            days: counted(days),
                        },
                        keep,
                    );
                }
            })
            .await?;
        if let Some(schema) = unexpected {
            return Err(AnalyticsError::Query(kith_lake::QueryError::Internal(
                format!("the preferences' aggregate came back with unexpected types: {schema}"),
            )));
        }
        let mut first_choices: BTreeMap<String, u64> = BTreeMap::new();
        // Per breakdown value: profiles, and how many have each first preference.
        let mut groups: BTreeMap<String, (u64, BTreeMap<String, u64>)> = BTreeMap::new();
        let mut profiles: Vec<(f64, ProfilePreferences)> = by_profile
            .into_iter()
            .map(|(profile_id, interest)| {
                let total = interest.total;
                let breakdown = interest.breakdown.clone();
                let mut preferences = interest.best(self.top);
                for p in &mut preferences {
                    p.share = if total > 0.0 { p.score / total } else { 0.0 };
                }
                if let Some(first) = preferences.first() {
                    *first_choices.entry(first.value.clone()).or_default() += 1;
                }
                if with_breakdown {
                    let group = groups.entry(breakdown).or_default();
                    group.0 += 1;
                    if let Some(first) = preferences.first() {
                        *group.1.entry(first.value.clone()).or_default() += 1;
                    }
                }
                (
                    total,
                    ProfilePreferences {
                        profile_id,
                        preferences,
                    },
                )
            })
            .collect();
        let count = profiles.len() as u64;
        profiles.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(a.1.profile_id.cmp(&b.1.profile_id))
        });
        let top_profiles = profiles
            .iter()
            .take(self.limit)
            .map(|(_, p)| p.clone())
            .collect();
        let every: Vec<ProfilePreferences> = profiles.into_iter().map(|(_, p)| p).collect();
        let report = PreferenceReport {
            as_of: as_of.to_rfc3339(),
            profiles: count,
            first_choices: most_first(first_choices),
            top_profiles,
            by_breakdown: groups
                .into_iter()
                .map(|(breakdown, (profiles, choices))| PreferenceGroup {
                    breakdown,
                    profiles,
                    first_choices: most_first(choices),
                })
                .collect(),
        };
        Ok((report, every))
    }
}

/// One profile's interest while the rows are folded: its best preferences so far and the sum of
/// all its scores (shares are of the whole interest, not of the best).
#[derive(Default)]
struct Interest {
    total: f64,
    preferences: Vec<Preference>,
    breakdown: String,
}

impl Interest {
    fn add(&mut self, preference: Preference, keep: usize) {
        self.total += preference.score;
        self.preferences.push(preference);
        // Pruned in runs, so a profile with many values is sorted once every `keep` of them.
        if self.preferences.len() >= 2 * keep.max(1) {
            self.prune(keep);
        }
    }

    fn prune(&mut self, keep: usize) {
        self.preferences
            .sort_by(|a, b| b.score.total_cmp(&a.score).then(a.value.cmp(&b.value)));
        self.preferences.truncate(keep);
    }

    /// The best `keep`, best first.
    fn best(mut self, keep: usize) -> Vec<Preference> {
        self.prune(keep);
        self.preferences
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preference(value: &str, score: f64) -> Preference {
        Preference {
            value: value.into(),
            score,
            share: 0.0,
            events: 1,
            days: 1,
        }
    }

    // Folding values one at a time with early pruning keeps the same best ones, in the same
    // order, as sorting them all at the end, and the total of every score.
    #[test]
    fn interest_folded_in_runs_keeps_the_best_of_all_values_and_their_whole_total() {
        // 40 values in a scrambled order, with ties on score broken by value.
        let values: Vec<(String, f64)> = (0..40u32)
            .map(|i| {
                let n = (i * 17) % 40;
                (format!("v{n:02}"), f64::from(n % 7))
            })
            .collect();
        let mut folded = Interest::default();
        for (value, score) in &values {
            folded.add(preference(value, *score), 3);
        }
        assert!(folded.preferences.len() < 6, "pruned as it went");
        let total = folded.total;
        let best: Vec<(String, f64)> = folded
            .best(3)
            .into_iter()
            .map(|p| (p.value, p.score))
            .collect();

        let mut all = values.clone();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(3);
        assert_eq!(best, all);
        assert_eq!(
            best,
            [
                ("v06".into(), 6.0),
                ("v13".into(), 6.0),
                ("v20".into(), 6.0)
            ]
        );
        assert_eq!(total, values.iter().map(|(_, s)| s).sum::<f64>());
    }
}
