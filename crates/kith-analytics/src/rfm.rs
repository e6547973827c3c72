//! RFM: how recently, how often and for how much each profile bought in a window, scored 1–5
//! against everyone else, and named with the standard segments.
//!
//! Scores are rank-based quintiles with ties kept together: a profile's score is
//! `1 + floor(5 · (rank − 1) / n)`, where rank is its position in ascending order counting ties
//! as one (SQL `RANK()`); so the most recent, most frequent and highest-spending get 5, and all
//! profiles with one purchase share the same frequency score. Monetary is rounded to cents, so
//! engines that sum in another order rank it the same. Segments come from the recency and
//! frequency scores ([`segment`]).

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::identities::OwnerNumbers;
use crate::interner::Interner;
use crate::scope::{FieldRef, Scope, sql_string};
use crate::{AnalyticsError, Data};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RfmDefinition {
    #[serde(flatten)]
    pub scope: Scope,
    /// The event that is a purchase [default: Order Completed].
    #[serde(default = "default_purchase")]
    pub purchase_event: String,
    /// The purchase's value [default: revenue].
    #[serde(default = "default_value")]
    pub value: String,
    /// Recency is measured back from here [default: `to`, else now].
    #[serde(default)]
    pub as_of: Option<String>,
    /// How many profiles to list, highest value first [default: 20]. The segment table always
    /// covers everyone.
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_purchase() -> String {
    "Order Completed".into()
}
fn default_value() -> String {
    "revenue".into()
}
fn default_limit() -> usize {
    20
}

pub const FIELDS: &[&str] = &["purchase_event", "value", "as_of", "limit"];

/// The standard RFM segments by recency score (rows, 1–5) and frequency score (columns, 1–5).
const GRID: [[&str; 5]; 5] = [
    [
        "Lost",
        "Hibernating",
        "At risk",
        "At risk",
        "Can't lose them",
    ],
    [
        "Hibernating",
        "Hibernating",
        "At risk",
        "At risk",
        "Can't lose them",
    ],
    [
        "About to sleep",
        "About to sleep",
        "Need attention",
        "Loyal",
        "Loyal",
    ],
    [
        "Promising",
        "Potential loyalists",
        "Potential loyalists",
        "Loyal",
        "Loyal",
    ],
    [
        "New",
        "Potential loyalists",
        "Potential loyalists",
        "Champions",
        "Champions",
    ],
];

/// The segment named by recency and frequency scores (each 1–5).
pub fn segment(r: u8, f: u8) -> &'static str {
    GRID[(r.clamp(1, 5) - 1) as usize][(f.clamp(1, 5) - 1) as usize]
}

/// Every segment name, best first.
pub const SEGMENTS: [&str; 11] = [
    "Champions",
    "Loyal",
    "Potential loyalists",
    "New",
    "Promising",
    "Need attention",
    "About to sleep",
    "At risk",
    "Can't lose them",
    "Hibernating",
    "Lost",
];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RfmReport {
    pub as_of: String,
    /// Profiles with at least one purchase in the window.
    pub profiles: u64,
    pub segments: Vec<SegmentSummary>,
    /// The highest-value profiles, up to `limit`.
    pub top_profiles: Vec<RfmScore>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SegmentSummary {
    pub segment: String,
    /// The breakdown value of each profile's latest purchase ("all" without a breakdown).
    pub breakdown: String,
    pub profiles: u64,
    /// Share of all scored profiles.
    pub share: f64,
    /// Their purchases' total value in the window.
    pub value: f64,
    pub mean_recency_days: f64,
    pub mean_frequency: f64,
    pub mean_monetary: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RfmScore {
    pub profile_id: String,
    pub recency_days: f64,
    pub frequency: u64,
    pub monetary: f64,
    pub r: u8,
    pub f: u8,
    pub m: u8,
    pub segment: String,
}

/// One buyer's purchases in the window, as the query sums them up.
struct Buyer {
    /// The owner's number ([`OwnerNumbers`]).
    owner: u32,
    last_micros: i64,
    frequency: u64,
    monetary: f64,
    /// The breakdown value of the last purchase, by number.
    breakdown: u32,
}

/// The `limit` most valuable scores, ties by profile id: selected, then only they are sorted
/// (a sort of every buyer was a tenth of an RFM request at 50 million events).
fn most_valuable(scores: &[RfmScore], limit: usize) -> Vec<RfmScore> {
    let by_value = |a: &&RfmScore, b: &&RfmScore| {
        b.monetary
            .total_cmp(&a.monetary)
            .then_with(|| a.profile_id.cmp(&b.profile_id))
    };
    let mut top: Vec<&RfmScore> = scores.iter().collect();
    if limit < top.len() {
        top.select_nth_unstable_by(limit, by_value);
        top.truncate(limit);
    }
    top.sort_by(by_value);
    top.into_iter().cloned().collect()
}

/// Quintile scores of `keys`: `1 + floor(5 · (rank − 1) / n)` with `rank` = 1 + the number of
/// keys strictly below (SQL `RANK()`), so ties share a score. Sorting the keys themselves, paired
/// with their positions, is several times faster than sorting positions by a comparison that
/// looks the keys up.
fn quintiles<K: Ord + Copy>(keys: &[K]) -> Vec<u8> {
    let n = keys.len();
    let mut order: Vec<(K, u32)> = keys
        .iter()
        .enumerate()
        .map(|(i, &key)| (key, i as u32))
        .collect();
    order.sort_unstable();
    let mut scores = vec![0u8; n];
    let mut rank = 1;
    for position in 0..n {
        if position > 0 && order[position - 1].0 != order[position].0 {
            rank = position + 1;
        }
        scores[order[position].1 as usize] = (1 + 5 * (rank - 1) / n) as u8;
    }
    scores
}

/// An integer that orders as [`f64::total_cmp`] orders `x`.
fn total_order_key(x: f64) -> i64 {
    let bits = x.to_bits() as i64;
    bits ^ ((((bits >> 63) as u64) >> 1) as i64)
}

impl RfmDefinition {
    /// Per attribution key (see [`crate::identities`]): the last purchase (µs), purchases, their
    /// value and the breakdown value of the last purchase, as SQL.
    pub fn aggregates_sql(&self) -> Result<(String, DateTime<Utc>), AnalyticsError> {
        let scope = self.scope.resolve()?;
        let as_of = scope.as_of(self.as_of.as_deref())?;
        if self.purchase_event.trim().is_empty() {
            return Err(AnalyticsError::invalid(
                "purchase_event",
                "must not be empty",
            ));
        }
        let value = FieldRef::parse_number(&self.value, "value")?;
        let base = scope.keyed_events(
            &[format!("e.event = {}", sql_string(&self.purchase_event))],
            &[format!(
                "e.timestamp <= {}",
                crate::scope::instant_sql(as_of)
            )],
            &format!("{} AS value", value.number_sql("e")),
        );
        // The breakdown value of the last purchase; an ordered aggregate, so only when asked.
        let breakdown = if scope.breakdown.is_some() {
            "first_value(breakdown ORDER BY ts DESC) FILTER (WHERE keep)"
        } else {
            "'all'"
        };
        let sql = format!(
            "WITH base AS ({base}) \
             SELECT id_type, id_value, CAST(MAX(ts) FILTER (WHERE keep) AS BIGINT) AS last_micros, \
                    COUNT(*) FILTER (WHERE keep) AS frequency, \
                    CAST(SUM(value) FILTER (WHERE keep) AS DOUBLE) AS value, \
                    {breakdown} AS breakdown \
             FROM base GROUP BY id_type, id_value"
        );
        Ok((sql, as_of))
    }

    pub async fn run(&self, data: &Data<'_>) -> Result<RfmReport, AnalyticsError> {
        Ok(self.run_with_scores(data, false).await?.0)
    }

    /// The report, and with `every_profile` every scored profile's scores (for writing them
    /// onto profiles as traits).
    ///
    /// One scan of the purchases aggregates them per buyer; the three rankings, the segments and
    /// their summaries are done here, on one row per buyer (three window sorts in SQL cost more
    /// than the scan itself).
    pub async fn run_with_scores(
        &self,
        data: &Data<'_>,
        every_profile: bool,
    ) -> Result<(RfmReport, Vec<RfmScore>), AnalyticsError> {
        let (sql, as_of) = self.aggregates_sql()?;
        let profiles = data.segment(&self.scope.resolve()?)?;
        let mut owners = OwnerNumbers::new(data.identity_index());
        // Per owner (by number): last purchase, purchases, value, breakdown of the last purchase
        // (numbered in `breakdowns`).
        let mut bought: Vec<Option<(i64, u64, f64, u32)>> = Vec::new();
        let mut breakdowns = Interner::default();
        // Buyers with a number at `value` (a sum over none is null): none at all means the
        // field named is not where amounts are.
        let mut with_amounts = 0usize;
        data.lake
            .query_each(&sql, &data.limits, data.tables.clone(), |batch| {
                let id_type = crate::funnel::strings(batch.column(0).as_ref());
                let id_value = crate::funnel::strings(batch.column(1).as_ref());
                let last = batch.column(2).as_primitive::<Int64Type>();
                let frequency = batch.column(3).as_primitive::<Int64Type>();
                let value = batch.column(4).as_primitive::<Float64Type>();
                let breakdown = crate::funnel::strings(batch.column(5).as_ref());
                for row in 0..batch.num_rows() {
                    // Keys whose purchases all fall outside the scope.
                    if frequency.value(row) <= 0 || last.is_null(row) {
                        continue;
                    }
                    // No identifier at all, or an email no profile holds: left out.
                    let id_value = batch.column(1).is_valid(row).then(|| id_value(row));
                    let Some(owner) = owners.number(id_type(row), id_value) else {
                        continue;
                    };
                    if !profiles.admits(owner) {
                        continue;
                    }
                    let value = if value.is_null(row) {
                        0.0
                    } else {
                        with_amounts += 1;
                        value.value(row)
                    };
                    let (last, frequency) = (last.value(row), frequency.value(row).max(0) as u64);
                    let breakdown = breakdowns.number(profiles.breakdown(owner, breakdown(row)));
                    if bought.len() <= owner as usize {
                        bought.resize(owners.bound().max(owner as usize + 1), None);
                    }
                    match &mut bought[owner as usize] {
                        // A profile several identifiers lead to (merged): the groups combine.
                        Some(entry) => {
                            if last > entry.0 {
                                entry.0 = last;
                                entry.3 = breakdown;
                            }
                            entry.1 += frequency;
                            entry.2 += value;
                        }
                        slot => *slot = Some((last, frequency, value, breakdown)),
                    }
                }
            })
            .await?;
        crate::scope::amounts_found(
            self.value != default_value(),
            bought.iter().flatten().count(),
            with_amounts,
            &self.purchase_event,
            &self.value,
        )?;
        // Value rounded to cents, so engines summing in another order rank it the same.
        let buyers: Vec<Buyer> = bought
            .into_iter()
            .enumerate()
            .filter_map(|(number, entry)| {
                let (last_micros, frequency, value, breakdown) = entry?;
                Some(Buyer {
                    owner: number as u32,
                    last_micros,
                    frequency,
                    monetary: (value * 100.0).round() / 100.0,
                    breakdown,
                })
            })
            .collect();
        let n = buyers.len();
        let r = quintiles(&buyers.iter().map(|b| b.last_micros).collect::<Vec<_>>());
        let f = quintiles(&buyers.iter().map(|b| b.frequency).collect::<Vec<_>>());
        let m = quintiles(
            &buyers
                .iter()
                .map(|b| total_order_key(b.monetary))
                .collect::<Vec<_>>(),
        );
        let as_of_micros = as_of.timestamp_micros();
        let recency_days = |b: &Buyer| (as_of_micros - b.last_micros) as f64 / 86_400_000_000.0;
        // A buyer's scores; profile ids are looked up only for the buyers listed.
        let score = |i: usize| {
            let b = &buyers[i];
            RfmScore {
                profile_id: owners.name(b.owner),
                recency_days: recency_days(b),
                frequency: b.frequency,
                monetary: b.monetary,
                r: r[i],
                f: f[i],
                m: m[i],
                segment: segment(r[i], f[i]).to_string(),
            }
        };
        // Per segment and breakdown value: profiles, value, and the sums the means come from.
        let mut groups: BTreeMap<(usize, u32), (u64, f64, f64, f64)> = BTreeMap::new();
        for (i, buyer) in buyers.iter().enumerate() {
            let name = segment(r[i], f[i]);
            let order = SEGMENTS
                .iter()
                .position(|s| *s == name)
                .unwrap_or(SEGMENTS.len());
            let group = groups.entry((order, buyer.breakdown)).or_default();
            group.0 += 1;
            group.1 += buyer.monetary;
            group.2 += recency_days(buyer);
            group.3 += buyer.frequency as f64;
        }
        let profiles = n as u64;
        let segments = groups
            .into_iter()
            .map(|((order, breakdown), (count, value, recency, frequency))| {
                let count_f = count as f64;
                SegmentSummary {
                    segment: SEGMENTS.get(order).copied().unwrap_or("").to_string(),
                    breakdown: breakdowns.names()[breakdown as usize].clone(),
                    profiles: count,
                    share: count_f / profiles.max(1) as f64,
                    value,
                    mean_recency_days: recency / count_f,
                    mean_frequency: frequency / count_f,
                    mean_monetary: value / count_f,
                }
            })
            .collect();
        let (top_profiles, scores) = if every_profile {
            let scores: Vec<RfmScore> = (0..n).map(score).collect();
            (most_valuable(&scores, self.limit), scores)
        } else {
            // Only the buyers worth at least the `limit`-th highest value can be listed (ties
            // at that value are ordered by profile id, so all of them are candidates).
            let mut values: Vec<i64> = buyers.iter().map(|b| total_order_key(b.monetary)).collect();
            let threshold = if self.limit == 0 || self.limit > n {
                i64::MIN
            } else {
                let at = n - self.limit;
                *values.select_nth_unstable(at).1
            };
            let candidates: Vec<RfmScore> = (0..n)
                .filter(|&i| total_order_key(buyers[i].monetary) >= threshold)
                .map(score)
                .collect();
            (most_valuable(&candidates, self.limit), Vec::new())
        };
        let report = RfmReport {
            as_of: as_of.to_rfc3339(),
            profiles,
            segments,
            top_profiles,
        };
        Ok((report, scores))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_valuable_are_the_head_of_the_full_order() {
        let scores: Vec<RfmScore> = (0..200u32)
            .map(|i| RfmScore {
                profile_id: format!("p{:03}", (i * 37) % 200),
                recency_days: 1.0,
                frequency: 1,
                // Many ties, broken by profile id.
                monetary: f64::from(i % 7),
                r: 1,
                f: 1,
                m: 1,
                segment: String::new(),
            })
            .collect();
        let mut everyone = scores.clone();
        everyone.sort_by(|a, b| {
            b.monetary
                .total_cmp(&a.monetary)
                .then_with(|| a.profile_id.cmp(&b.profile_id))
        });
        let ids = |v: &[RfmScore]| v.iter().map(|s| s.profile_id.clone()).collect::<Vec<_>>();
        for limit in [0, 1, 5, 29, 199, 200, 1_000] {
            let top = most_valuable(&scores, limit);
            assert_eq!(ids(&top), ids(&everyone[..limit.min(200)]), "limit {limit}");
        }
    }

    #[test]
    fn every_score_pair_has_one_of_the_eleven_segments() {
        let mut seen = std::collections::BTreeSet::new();
        for r in 1..=5 {
            for f in 1..=5 {
                let name = segment(r, f);
                assert!(SEGMENTS.contains(&name), "{name}");
                seen.insert(name);
            }
        }
        assert_eq!(seen.len(), SEGMENTS.len());
        assert_eq!(segment(5, 5), "Champions");
        assert_eq!(segment(1, 1), "Lost");
        assert_eq!(segment(1, 5), "Can't lose them");
        assert_eq!(segment(5, 1), "New");
    }

    #[test]
    fn quintiles_are_rank_based_and_keep_ties_together() {
        // Ten values: ranks 1..10 give 1,1,2,2,3,3,4,4,5,5.
        let values: Vec<u32> = (0..10).rev().collect();
        let scores = quintiles(&values);
        assert_eq!(scores, [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]);
        // Six ones and four twos: the ones share rank 1 (score 1), the twos rank 7 (score 4).
        let values = [1, 2, 1, 1, 2, 1, 1, 2, 1, 2];
        let scores = quintiles(&values);
        assert_eq!(scores, [1, 4, 1, 1, 4, 1, 1, 4, 1, 4]);
        assert!(quintiles::<i64>(&[]).is_empty());
        // Money orders as f64::total_cmp orders it, negatives (refunds) and zeros included.
        let money = [12.5, -3.0, 0.0, -0.0, 1e9, -1e9, 0.01];
        let mut by_key = money.to_vec();
        by_key.sort_by_key(|x| total_order_key(*x));
        let mut by_total = money.to_vec();
        by_total.sort_by(f64::total_cmp);
        let bits = |xs: &[f64]| xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&by_key), bits(&by_total));
    }
}
