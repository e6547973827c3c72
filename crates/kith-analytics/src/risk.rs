//! Risk signals: who is drifting away, measured against their own past.
//!
//! Each profile is measured against itself. Purchases and activity: from the person's own rate
//! (repeat purchases, or active days, over the time between their first and last), how probable
//! is the silence since the last one? Under a Poisson process with that rate, `P(no purchase in
//! the silence) = exp(−rate · silence)`; below `alpha`, the drop is a signal. The basket: has the
//! mean order value of the recent period shrunk against the baseline before it? Support: are
//! there improbably many tickets lately for that person's baseline rate?

use std::collections::BTreeMap;

use chrono::Duration;
use serde::{Deserialize, Serialize};

use crate::scope::{FieldRef, Scope, instant_sql, sql_string};
use crate::stats::poisson_upper_tail;
use crate::{AnalyticsError, Data, count, number, text};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RiskDefinition {
    #[serde(flatten)]
    pub scope: Scope,
    /// The moment judged [default: `to`, else now].
    #[serde(default)]
    pub as_of: Option<String>,
    /// Days before `as_of` that are "recent" [default: 90].
    #[serde(default = "default_recent")]
    pub recent_days: u32,
    /// Days before the recent period that are the baseline [default: 365].
    #[serde(default = "default_baseline")]
    pub baseline_days: u32,
    #[serde(default = "default_purchase")]
    pub purchase_event: String,
    #[serde(default = "default_value")]
    pub value: String,
    /// The event that is a support contact [default: Ticket Created].
    #[serde(default = "default_support")]
    pub support_event: String,
    /// A test is significant below this p-value [default: 0.05].
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Profiles listed, most signals first [default: 50].
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_recent() -> u32 {
    90
}
fn default_baseline() -> u32 {
    365
}
fn default_purchase() -> String {
    "Order Completed".into()
}
fn default_value() -> String {
    "revenue".into()
}
pub(crate) fn default_support() -> String {
    "Ticket Created".into()
}
fn default_alpha() -> f64 {
    0.05
}
fn default_limit() -> usize {
    50
}

pub const FIELDS: &[&str] = &[
    "as_of",
    "recent_days",
    "baseline_days",
    "purchase_event",
    "value",
    "support_event",
    "alpha",
    "limit",
];

/// The signals, as named in results and traits.
pub const PURCHASE_DROP: &str = "purchase_frequency_drop";
pub const ACTIVITY_DROP: &str = "activity_drop";
pub const SHRINKING_BASKET: &str = "shrinking_basket";
pub const RISING_SUPPORT: &str = "rising_support_contact";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RiskReport {
    pub as_of: String,
    /// Profiles judged (every profile with an event before `as_of`).
    pub profiles: u64,
    /// How many carry each signal.
    pub signal_counts: Vec<(String, u64)>,
    /// Profiles with at least one signal.
    pub flagged: u64,
    pub at_risk: Vec<ProfileRisk>,
    /// With a breakdown by a field of the profile: the same counts per value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_breakdown: Vec<RiskGroup>,
}

/// The profiles judged with one breakdown value.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RiskGroup {
    pub breakdown: String,
    pub profiles: u64,
    pub flagged: u64,
    pub signal_counts: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProfileRisk {
    pub profile_id: String,
    /// The usual gap between active days over the silence since the last (1 = as usual,
    /// towards 0 = quieter than ever).
    pub activity_trend: f64,
    /// Purchases the person's own rate predicts in the silence since their last one.
    pub expected_purchases: f64,
    pub risk_signals: Vec<String>,
}

/// One profile's history up to `as_of`, as the query gives it (times in days before `as_of`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub purchases: u64,
    /// Days from the first purchase to the last, and from the last to `as_of`.
    pub purchase_span_days: f64,
    pub days_since_purchase: f64,
    pub active_days: u64,
    pub active_span_days: f64,
    pub days_since_active: f64,
    pub recent_basket: Option<f64>,
    pub baseline_basket: Option<f64>,
    pub baseline_purchases: u64,
    /// Days of the baseline the profile was around for, and of the recent period.
    pub baseline_days: f64,
    pub recent_days: f64,
    pub recent_support: u64,
    pub baseline_support: u64,
}

/// P(no event in `silence` days) for someone with `events` events over `span` days.
fn silence_probability(events: u64, span: f64, silence: f64) -> Option<f64> {
    if events < 3 || span <= 0.0 {
        return None; // Two events make one interval: no rate to speak of.
    }
    let rate = (events - 1) as f64 / span;
    Some((-rate * silence).exp())
}

/// The signals one profile's history shows, its activity trend (how the silence compares with
/// its usual gap: 1 or more is as usual, towards 0 is quiet), and its expected purchases in the
/// silence.
pub fn judge(c: &Counts, alpha: f64) -> (Vec<&'static str>, f64, f64) {
    let mut signals = Vec::new();
    if silence_probability(c.purchases, c.purchase_span_days, c.days_since_purchase)
        .is_some_and(|p| p < alpha)
    {
        signals.push(PURCHASE_DROP);
    }
    if silence_probability(c.active_days, c.active_span_days, c.days_since_active)
        .is_some_and(|p| p < alpha)
    {
        signals.push(ACTIVITY_DROP);
    }
    if let (Some(recent), Some(before)) = (c.recent_basket, c.baseline_basket)
        && c.baseline_purchases >= 2
        && recent < 0.7 * before
    {
        signals.push(SHRINKING_BASKET);
    }
    // Against the baseline rate, with half a ticket's allowance for those who never wrote.
    let scale = c.recent_days / c.baseline_days.max(1.0);
    let expected_support = (c.baseline_support as f64 + 0.5) * scale;
    if c.recent_support >= 1
        && (c.recent_support as f64) > expected_support
        && poisson_upper_tail(c.recent_support, expected_support) < alpha
    {
        signals.push(RISING_SUPPORT);
    }
    let usual_gap = if c.active_days >= 2 && c.active_span_days > 0.0 {
        c.active_span_days / (c.active_days - 1) as f64
    } else {
        f64::INFINITY
    };
    let trend = (usual_gap / c.days_since_active.max(1e-9)).min(1.0);
    let expected = if c.purchases >= 2 && c.purchase_span_days > 0.0 {
        (c.purchases - 1) as f64 / c.purchase_span_days * c.days_since_purchase
    } else {
        0.0
    };
    (signals, trend, expected)
}

impl RiskDefinition {
    /// Checks the definition without reading anything: what a run would refuse, it refuses
    /// (so a model fit can be refused before it is accepted).
    pub fn check(&self) -> Result<(), AnalyticsError> {
        let scope = self.scope.resolve()?;
        scope.as_of(self.as_of.as_deref())?;
        if self.recent_days == 0 || self.recent_days > 3650 {
            return Err(AnalyticsError::invalid(
                "recent_days",
                "must be between 1 and 3650",
            ));
        }
        if self.baseline_days == 0 || self.baseline_days > 3650 {
            return Err(AnalyticsError::invalid(
                "baseline_days",
                "must be between 1 and 3650",
            ));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(AnalyticsError::invalid("alpha", "must be between 0 and 1"));
        }
        scope.profile_breakdown_only()?;
        FieldRef::parse_number(&self.value, "value")?;
        Ok(())
    }

    pub async fn run(&self, data: &Data<'_>) -> Result<RiskReport, AnalyticsError> {
        Ok(self.run_with_all(data).await?.0)
    }

    /// The report, and every judged profile (flagged or not) with its trend and signals.
    pub async fn run_with_all(
        &self,
        data: &Data<'_>,
    ) -> Result<(RiskReport, Vec<ProfileRisk>), AnalyticsError> {
        self.check()?;
        let scope = self.scope.resolve()?;
        let as_of = scope.as_of(self.as_of.as_deref())?;
        let value = FieldRef::parse_number(&self.value, "value")?;
        let recent_start = as_of - Duration::days(self.recent_days as i64);
        let baseline_start = recent_start - Duration::days(self.baseline_days as i64);
        // The window covers the baseline and the recent period; `first_ts` (any time before
        // `as_of`) says how much of the baseline the profile was around for.
        let mut everything = scope.clone();
        everything.from = None;
        everything.to = None;
        let base = everything.attributed_events(
            &[format!("e.timestamp < {}", instant_sql(as_of))],
            &format!("e.event AS event, {} AS value", value.number_sql("e")),
        );
        let (recent, baseline) = (
            format!("ts >= {}", instant_sql(recent_start)),
            format!(
                "ts >= {} AND ts < {}",
                instant_sql(baseline_start),
                instant_sql(recent_start)
            ),
        );
        let purchase = format!("event = {}", sql_string(&self.purchase_event));
        let support = format!("event = {}", sql_string(&self.support_event));
        let day = "86400000000.0";
        let as_of_micros = as_of.timestamp_micros();
        let sql = format!(
            "WITH base AS ({base}) \
             SELECT profile_id, \
               SUM(CASE WHEN {purchase} THEN 1 ELSE 0 END), \
               (MAX(CASE WHEN {purchase} THEN CAST(ts AS BIGINT) END) \
                 - MIN(CASE WHEN {purchase} THEN CAST(ts AS BIGINT) END)) / {day}, \
               ({as_of_micros} - MAX(CASE WHEN {purchase} THEN CAST(ts AS BIGINT) END)) / {day}, \
               COUNT(DISTINCT {active_day}), \
               (CAST(MAX(ts) AS BIGINT) - CAST(MIN(ts) AS BIGINT)) / {day}, \
               ({as_of_micros} - CAST(MAX(ts) AS BIGINT)) / {day}, \
               AVG(CASE WHEN {purchase} AND {recent} THEN value END), \
               AVG(CASE WHEN {purchase} AND {baseline} THEN value END), \
               SUM(CASE WHEN {purchase} AND {baseline} THEN 1 ELSE 0 END), \
               ({recent_start_micros} - GREATEST(CAST(MIN(ts) AS BIGINT), {baseline_start_micros})) / {day}, \
               SUM(CASE WHEN {support} AND {recent} THEN 1 ELSE 0 END), \
               SUM(CASE WHEN {support} AND {baseline} THEN 1 ELSE 0 END), \
               MAX(breakdown), \
               SUM(CASE WHEN {purchase} AND value IS NOT NULL THEN 1 ELSE 0 END) \
             FROM base GROUP BY profile_id",
            // Days as `timezone` cuts them.
            active_day = scope.bucket_sql("day", "ts"),
            recent_start_micros = recent_start.timestamp_micros(),
            baseline_start_micros = baseline_start.timestamp_micros(),
        );
        // Events of profiles outside a segment are left out by the SQL (`attributed_events`).
        let mut profiles = 0u64;
        // Purchases before `as_of`, and those with a number at `value`: a `value` named on purpose
        // that no purchase has is refused, as CLV and RFM refuse it, instead of judging baskets
        // that all read as empty.
        let (mut purchases, mut with_amounts) = (0usize, 0usize);
        let mut scored: Vec<ProfileRisk> = Vec::new();
        let mut every: Vec<ProfileRisk> = Vec::new();
        let mut signal_counts = [
            PURCHASE_DROP,
            ACTIVITY_DROP,
            SHRINKING_BASKET,
            RISING_SUPPORT,
        ]
        .map(|s| (s.to_string(), 0u64));
        let mut groups: BTreeMap<String, RiskGroup> = BTreeMap::new();
        let segment_data = data.with_segment(&scope)?;
        segment_data
            .each_row(&sql, |row| {
                profiles += 1;
                purchases += count(&row[1]) as usize;
                with_amounts += count(&row[14]) as usize;
                let optional = |v: &serde_json::Value| (!v.is_null()).then(|| number(v));
                let counts = Counts {
                    purchases: count(&row[1]),
                    purchase_span_days: number(&row[2]),
                    days_since_purchase: number(&row[3]),
                    active_days: count(&row[4]),
                    active_span_days: number(&row[5]),
                    days_since_active: number(&row[6]),
                    recent_basket: optional(&row[7]),
                    baseline_basket: optional(&row[8]),
                    baseline_purchases: count(&row[9]),
                    baseline_days: number(&row[10]),
                    recent_days: self.recent_days as f64,
                    recent_support: count(&row[11]),
                    baseline_support: count(&row[12]),
                };
                let (signals, trend, expected) = judge(&counts, self.alpha);
                for signal in &signals {
                    if let Some(entry) = signal_counts.iter_mut().find(|(name, _)| name == signal) {
                        entry.1 += 1;
                    }
                }
                if scope.profile_breakdown.is_some() {
                    let group = groups.entry(text(&row[13])).or_insert_with(|| RiskGroup {
                        breakdown: text(&row[13]),
                        profiles: 0,
                        flagged: 0,
                        signal_counts: signal_counts.iter().map(|(s, _)| (s.clone(), 0)).collect(),
                    });
                    group.profiles += 1;
                    group.flagged += u64::from(!signals.is_empty());
                    for signal in &signals {
                        if let Some(entry) = group
                            .signal_counts
                            .iter_mut()
                            .find(|(name, _)| name == signal)
                        {
                            entry.1 += 1;
                        }
                    }
                }
                let judged = ProfileRisk {
                    profile_id: text(&row[0]),
                    activity_trend: trend,
                    expected_purchases: expected,
                    risk_signals: signals.iter().map(|s| s.to_string()).collect(),
                };
                if !signals.is_empty() {
                    scored.push(judged.clone());
                }
                every.push(judged);
            })
            .await?;
        crate::scope::amounts_found(
            self.value != default_value(),
            purchases,
            with_amounts,
            &self.purchase_event,
            &self.value,
        )?;
        let flagged = scored.len() as u64;
        scored.sort_by(|a, b| {
            b.risk_signals
                .len()
                .cmp(&a.risk_signals.len())
                .then(a.activity_trend.total_cmp(&b.activity_trend))
                .then(a.profile_id.cmp(&b.profile_id))
        });
        scored.truncate(self.limit);
        let report = RiskReport {
            as_of: as_of.to_rfc3339(),
            profiles,
            signal_counts: signal_counts.to_vec(),
            flagged,
            at_risk: scored,
            by_breakdown: groups.into_values().collect(),
        };
        Ok((report, every))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_buyer_gone_quiet_is_flagged_and_a_steady_one_is_not() {
        // Ten purchases over 180 days (one every 20 days), none for 100 days: exp(−5) < 0.05.
        let quiet = Counts {
            purchases: 10,
            purchase_span_days: 180.0,
            days_since_purchase: 100.0,
            active_days: 30,
            active_span_days: 180.0,
            days_since_active: 100.0,
            ..Counts::default()
        };
        let (signals, trend, expected) = judge(&quiet, 0.05);
        assert_eq!(signals, vec![PURCHASE_DROP, ACTIVITY_DROP]);
        assert!((expected - 5.0).abs() < 1e-9);
        assert!(trend < 0.1, "{trend}");
        let steady = Counts {
            days_since_purchase: 15.0,
            days_since_active: 4.0,
            ..quiet.clone()
        };
        assert!(judge(&steady, 0.05).0.is_empty());
        // Two purchases are one interval: no rate, no signal.
        let sparse = Counts {
            purchases: 2,
            purchase_span_days: 10.0,
            days_since_purchase: 300.0,
            ..Counts::default()
        };
        assert!(judge(&sparse, 0.05).0.is_empty());
    }

    #[test]
    fn smaller_baskets_and_new_complaints_are_signals() {
        let c = Counts {
            baseline_purchases: 4,
            baseline_basket: Some(1000.0),
            recent_basket: Some(400.0),
            recent_support: 2,
            baseline_days: 365.0,
            recent_days: 90.0,
            ..Counts::default()
        };
        let (signals, _, _) = judge(&c, 0.05);
        assert_eq!(signals, vec![SHRINKING_BASKET, RISING_SUPPORT]);
    }
}
