//! Customer lifetime value on the events Kith holds: each purchase attributed to the profile it
//! belongs to now, summarised per profile (frequency, recency, age and mean spend, in weeks), the
//! BG/NBD and Gamma-Gamma models fitted by maximum likelihood ([`kith_clv`]), and every buyer
//! scored: expected purchases over a horizon, probability of being alive, expected order value
//! and discounted expected value.
//!
//! Reading the purchases ([`ClvDefinition::purchases`]) is a query; fitting and scoring
//! ([`ClvDefinition::score`]) is pure computation, so a server runs it off its async threads.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type};
use chrono::{DateTime, Utc};
use kith_clv::summary::{PeriodUnit, SummaryOptions, Transaction, summary_from_transactions};
use kith_clv::{
    BgNbd, ClvOptions, FitOptions, Fitted, GammaGamma, GammaGammaFit, GammaGammaOptions,
};
use kith_clv::{FitError, SummaryError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::funnel::strings;
use crate::scope::{FieldRef, Scope, sql_string};
use crate::{AnalyticsError, Data};

/// Days in the model's time unit: purchases are collapsed per day and time is measured in weeks,
/// the convention of the CDNOW literature the models are checked against.
const DAYS_PER_UNIT: f64 = 7.0;

/// Profiles whose scores are listed in the report, highest expected value first.
const TOP_PROFILES: usize = 20;

/// What a CLV run reads and predicts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ClvDefinition {
    #[serde(flatten)]
    pub scope: Scope,
    /// The event that is a purchase [default: Order Completed].
    #[serde(default = "default_purchase")]
    pub purchase_event: String,
    /// The purchase's value [default: revenue].
    #[serde(default = "default_value")]
    pub value: String,
    /// End of observation: ages and recency are measured up to here [default: `to`, else now].
    #[serde(default)]
    pub as_of: Option<String>,
    /// Expected purchases are predicted over this many days [default: 90].
    #[serde(default = "default_horizon_days")]
    pub horizon_days: u32,
    /// Expected value is summed over this many months [default: 12] ...
    #[serde(default = "default_months")]
    pub clv_months: u32,
    /// ... each discounted by this monthly rate [default: 0.01].
    #[serde(default = "default_discount")]
    pub monthly_discount_rate: f64,
    /// L2 penalty on the parameters, as in `lifetimes` [default: 0].
    #[serde(default)]
    pub penalizer: f64,
}

fn default_purchase() -> String {
    "Order Completed".into()
}
fn default_value() -> String {
    "revenue".into()
}
fn default_horizon_days() -> u32 {
    90
}
fn default_months() -> u32 {
    12
}
fn default_discount() -> f64 {
    0.01
}

pub const FIELDS: &[&str] = &[
    "purchase_event",
    "value",
    "as_of",
    "horizon_days",
    "clv_months",
    "monthly_discount_rate",
    "penalizer",
];

impl Default for ClvDefinition {
    fn default() -> Self {
        ClvDefinition {
            scope: Scope::default(),
            purchase_event: default_purchase(),
            value: default_value(),
            as_of: None,
            horizon_days: default_horizon_days(),
            clv_months: default_months(),
            monthly_discount_rate: default_discount(),
            penalizer: 0.0,
        }
    }
}

/// The purchases a run fits on.
#[derive(Debug, Clone)]
pub struct Purchases {
    pub transactions: Vec<Transaction<String>>,
    /// End of observation.
    pub as_of: DateTime<Utc>,
}

/// One buyer's scores.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClvScore {
    pub profile_id: String,
    /// Repeat purchase days.
    pub frequency: f64,
    /// Weeks from the first to the last purchase day.
    pub recency_weeks: f64,
    /// Weeks from the first purchase day to `as_of`.
    pub age_weeks: f64,
    /// Mean value of the repeat purchase days (0 without repeats).
    pub monetary_value: f64,
    pub expected_purchases: f64,
    pub p_alive: f64,
    /// `None` when Gamma-Gamma could not be fitted.
    pub expected_order_value: Option<f64>,
    pub expected_value: Option<f64>,
}

/// What a run found: the data, both fits and the population's totals.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClvReport {
    pub as_of: String,
    pub customers: usize,
    pub repeat_customers: usize,
    pub purchases: usize,
    /// Settings the scores mean something under.
    pub horizon_days: u32,
    pub clv_months: u32,
    pub monthly_discount_rate: f64,
    pub time_unit: &'static str,
    pub bg_nbd: Fitted<BgNbd>,
    /// `None` with `gamma_gamma_error` saying why (e.g. spend correlated with frequency).
    pub gamma_gamma: Option<GammaGammaFit>,
    pub gamma_gamma_error: Option<String>,
    pub expected_purchases_total: f64,
    pub expected_value_total: Option<f64>,
    pub mean_p_alive: f64,
    /// Buyers not alive with probability over one half.
    pub likely_inactive: usize,
    /// A new customer's expected repeat purchases by each week up to the horizon (the expected
    /// population curve: multiply by the customers acquired).
    pub population_curve: Vec<CurvePoint>,
    /// A new customer's probability of exactly n repeat purchases within the horizon, n = 0…10.
    pub purchase_count_probabilities: Vec<f64>,
    /// The highest expected values (or expected purchases without Gamma-Gamma).
    pub top_profiles: Vec<ClvScore>,
}

/// One point of the population curve.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CurvePoint {
    pub week: u32,
    pub expected_purchases: f64,
}

/// A finished run: the report and every buyer's scores.
#[derive(Debug, Clone)]
pub struct ClvRun {
    pub report: ClvReport,
    pub scores: Vec<ClvScore>,
}

/// The longest horizon of predicted purchases, and of the CLV: ten years.
const MOST_HORIZON_DAYS: u32 = 3_650;
const MOST_CLV_MONTHS: u32 = 120;

impl ClvDefinition {
    /// Reads a definition, naming the field at fault.
    pub fn parse(definition: &Value) -> Result<ClvDefinition, AnalyticsError> {
        let parsed: ClvDefinition = crate::parse_definition("clv", FIELDS, definition)?;
        parsed.check()?;
        Ok(parsed)
    }

    fn check(&self) -> Result<(), AnalyticsError> {
        if self.purchase_event.trim().is_empty() {
            return Err(AnalyticsError::invalid(
                "purchase_event",
                "must not be empty",
            ));
        }
        // Ten years at most: the population curve has a point a week of the horizon, and a
        // horizon of 100 million days took 21 GB and 80 s to fit and 800 MB to answer.
        if !(1..=MOST_HORIZON_DAYS).contains(&self.horizon_days) {
            return Err(AnalyticsError::invalid(
                "horizon_days",
                format!("must be from 1 to {MOST_HORIZON_DAYS} (ten years)"),
            ));
        }
        if !(1..=MOST_CLV_MONTHS).contains(&self.clv_months) {
            return Err(AnalyticsError::invalid(
                "clv_months",
                format!("must be from 1 to {MOST_CLV_MONTHS} (ten years)"),
            ));
        }
        if !(self.monthly_discount_rate.is_finite()
            && (0.0..1.0).contains(&self.monthly_discount_rate))
        {
            return Err(AnalyticsError::invalid(
                "monthly_discount_rate",
                "must be at least 0 and below 1 (0.01 is one percent a month)",
            ));
        }
        if !(self.penalizer.is_finite() && self.penalizer >= 0.0) {
            return Err(AnalyticsError::invalid(
                "penalizer",
                "must be a number at least 0",
            ));
        }
        // The scope and the end of observation, as a run reads them: a mistake there is refused
        // before a run is accepted rather than failing in the background.
        self.scope.resolve()?.as_of(self.as_of.as_deref())?;
        Ok(())
    }

    /// The trait names a run writes onto profiles, for these settings.
    pub fn trait_names(&self) -> Vec<String> {
        vec![
            format!("clv_expected_purchases_{}d", self.horizon_days),
            "clv_p_alive".into(),
            "clv_expected_order_value".into(),
            format!("clv_expected_value_{}m", self.clv_months),
        ]
    }

    /// Every purchase in scope, under the profile it belongs to now, with its value (0 when it
    /// has none) and its time as a local date-time in the scope's zone.
    pub async fn purchases(&self, data: &Data<'_>) -> Result<Purchases, AnalyticsError> {
        self.check()?;
        let scope = self.scope.resolve()?;
        let as_of = scope.as_of(self.as_of.as_deref())?;
        let value = FieldRef::parse_number(&self.value, "value")?;
        let base = scope.attributed_events(
            &[
                format!("e.event = {}", sql_string(&self.purchase_event)),
                format!("e.timestamp <= {}", crate::scope::instant_sql(as_of)),
            ],
            &format!("{} AS value", value.number_sql("e")),
        );
        let sql = format!(
            "SELECT profile_id, CAST(ts AS BIGINT) AS micros, \
                    CAST(value AS DOUBLE) AS value FROM ({base})"
        );
        let mut transactions = Vec::new();
        // Purchases with a number at `value`: none at all means the field named is not where
        // amounts are, and the fit would score every buyer's spend as nothing.
        let mut with_amounts = 0usize;
        let zone = scope.zone;
        // Events of profiles outside a segment are left out by the SQL (`attributed_events`).
        let data = &data.with_segment(&scope)?;
        data.lake
            .query_each(&sql, &data.limits, data.tables.clone(), |batch| {
                let profile = strings(batch.column(0).as_ref());
                let micros = batch.column(1).as_primitive::<Int64Type>();
                let values = batch.column(2).as_primitive::<Float64Type>();
                for row in 0..batch.num_rows() {
                    if micros.is_null(row) {
                        continue;
                    }
                    let Some(at) = DateTime::from_timestamp_micros(micros.value(row)) else {
                        continue;
                    };
                    let value = if values.is_null(row) {
                        0.0
                    } else {
                        with_amounts += 1;
                        values.value(row)
                    };
                    transactions.push(Transaction::new(
                        profile(row).to_string(),
                        at.with_timezone(&zone).naive_local(),
                        if value.is_finite() { value } else { 0.0 },
                    ));
                }
            })
            .await?;
        crate::scope::amounts_found(
            self.value != default_value(),
            transactions.len(),
            with_amounts,
            &self.purchase_event,
            &self.value,
        )?;
        Ok(Purchases {
            transactions,
            as_of,
        })
    }

    /// Fits BG/NBD and Gamma-Gamma on the purchases and scores every buyer. CPU-bound.
    pub fn score(&self, purchases: &Purchases) -> Result<ClvRun, AnalyticsError> {
        let zone = self.scope.resolve()?.zone;
        let options = SummaryOptions {
            unit: PeriodUnit::Day,
            multiplier: DAYS_PER_UNIT,
            observation_end: Some(purchases.as_of.with_timezone(&zone).naive_local()),
        };
        let summary =
            summary_from_transactions(&purchases.transactions, &options).map_err(|e| match e {
                SummaryError::EmptyInput => AnalyticsError::NotEnoughData(format!(
                    "there are no `{}` events to fit CLV on yet",
                    self.purchase_event
                )),
                e => AnalyticsError::Model(format!("the purchases cannot be summarised: {e}")),
            })?;
        let rfm: Vec<_> = summary.iter().map(|c| c.rfm()).collect();
        let fit_options = FitOptions {
            penalizer_coef: self.penalizer,
            ..FitOptions::default()
        };
        let bg_nbd = BgNbd::fit(&rfm, &fit_options).map_err(|e| {
            let message = format!(
                "BG/NBD cannot be fitted on {} buyers' `{}` events: {e}",
                summary.len(),
                self.purchase_event
            );
            match e {
                FitError::EmptyInput | FitError::TooFewRepeatCustomers { .. } => {
                    AnalyticsError::NotEnoughData(message)
                }
                _ => AnalyticsError::Model(message),
            }
        })?;
        let spend: Vec<_> = summary.iter().map(|c| c.spend()).collect();
        let gamma_gamma = GammaGamma::fit(
            &spend,
            &GammaGammaOptions {
                fit: FitOptions {
                    penalizer_coef: self.penalizer,
                    ..FitOptions::default()
                },
                ..GammaGammaOptions::default()
            },
        );
        let (gamma_gamma, gamma_gamma_error) = match gamma_gamma {
            Ok(fit) => (Some(fit), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let horizon = f64::from(self.horizon_days) / DAYS_PER_UNIT;
        let clv_options = ClvOptions {
            months: self.clv_months,
            monthly_discount_rate: self.monthly_discount_rate,
            periods_per_month: ClvOptions::DAYS_PER_MONTH / DAYS_PER_UNIT,
        };
        let bg = &bg_nbd.params;
        let gg = gamma_gamma.as_ref().map(|f| &f.model.params);
        let customers: Vec<_> = summary
            .iter()
            .map(|c| (c.rfm(), c.monetary_value))
            .collect();
        let predicted =
            kith_clv::score_customers(bg, gg.map(|gg| (gg, &clv_options)), &customers, horizon)
                .map_err(|e| AnalyticsError::Model(format!("scoring the buyers: {e}")))?;
        let scores: Vec<ClvScore> = summary
            .iter()
            .zip(predicted)
            .map(|(customer, p)| ClvScore {
                profile_id: customer.customer_id.clone(),
                frequency: customer.frequency,
                recency_weeks: customer.recency,
                age_weeks: customer.t,
                monetary_value: customer.monetary_value,
                expected_purchases: p.expected_purchases,
                p_alive: p.p_alive,
                expected_order_value: p.expected_order_value,
                expected_value: p.clv,
            })
            .collect();
        let mut top: Vec<&ClvScore> = scores.iter().collect();
        let rank = |s: &ClvScore| s.expected_value.unwrap_or(s.expected_purchases);
        top.sort_by(|a, b| {
            rank(b)
                .total_cmp(&rank(a))
                .then_with(|| a.profile_id.cmp(&b.profile_id))
        });
        let weeks = horizon.ceil().max(1.0) as u32;
        let population_curve = (1..=weeks)
            .map(|week| {
                bg.expected_purchases(f64::from(week))
                    .map(|expected_purchases| CurvePoint {
                        week,
                        expected_purchases,
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AnalyticsError::Model(format!("the population curve: {e}")))?;
        let purchase_count_probabilities = (0..=10)
            .map(|n| bg.probability_of_purchases(n, horizon))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AnalyticsError::Model(format!("purchase count probabilities: {e}")))?;
        let report = ClvReport {
            population_curve,
            purchase_count_probabilities,
            as_of: purchases.as_of.to_rfc3339(),
            customers: summary.len(),
            repeat_customers: rfm.iter().filter(|r| r.frequency > 0.0).count(),
            purchases: purchases.transactions.len(),
            horizon_days: self.horizon_days,
            clv_months: self.clv_months,
            monthly_discount_rate: self.monthly_discount_rate,
            time_unit: "week",
            expected_purchases_total: scores.iter().map(|s| s.expected_purchases).sum(),
            expected_value_total: gg.map(|_| scores.iter().filter_map(|s| s.expected_value).sum()),
            mean_p_alive: scores.iter().map(|s| s.p_alive).sum::<f64>()
                / scores.len().max(1) as f64,
            likely_inactive: scores.iter().filter(|s| s.p_alive < 0.5).count(),
            top_profiles: top.into_iter().take(TOP_PROFILES).cloned().collect(),
            bg_nbd,
            gamma_gamma,
            gamma_gamma_error,
        };
        Ok(ClvRun { report, scores })
    }
}

impl ClvRun {
    /// Each scored profile's traits (buyers Kith has no profile for yet are left out). The value
    /// traits are absent when Gamma-Gamma could not be fitted.
    pub fn profile_traits(&self) -> impl Iterator<Item = (String, Map<String, Value>)> + '_ {
        let horizon = self.report.horizon_days;
        let months = self.report.clv_months;
        self.scores
            .iter()
            .filter(|s| !s.profile_id.starts_with("unattributed:"))
            .map(move |s| {
                let mut traits = Map::new();
                traits.insert(
                    format!("clv_expected_purchases_{horizon}d"),
                    json!(round(s.expected_purchases, 4)),
                );
                traits.insert("clv_p_alive".into(), json!(round(s.p_alive, 4)));
                if let (Some(order), Some(value)) = (s.expected_order_value, s.expected_value) {
                    traits.insert("clv_expected_order_value".into(), json!(round(order, 2)));
                    traits.insert(
                        format!("clv_expected_value_{months}m"),
                        json!(round(value, 2)),
                    );
                }
                (s.profile_id.clone(), traits)
            })
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
    fn definitions_are_checked_field_by_field() {
        let d = ClvDefinition::parse(&json!({})).unwrap();
        assert_eq!(d, ClvDefinition::default());
        assert_eq!(
            d.trait_names(),
            [
                "clv_expected_purchases_90d",
                "clv_p_alive",
                "clv_expected_order_value",
                "clv_expected_value_12m"
            ]
        );
        let e = ClvDefinition::parse(&json!({"horizon_days": 0})).unwrap_err();
        assert_eq!(e.field(), Some("horizon_days"));
        // Ten years at most: a longer horizon only costs memory (a curve point a week).
        let e = ClvDefinition::parse(&json!({"horizon_days": 100_000_000})).unwrap_err();
        assert_eq!(e.field(), Some("horizon_days"));
        assert!(e.to_string().contains("from 1 to 3650"), "{e}");
        ClvDefinition::parse(&json!({"horizon_days": 3650, "clv_months": 120})).unwrap();
        let e = ClvDefinition::parse(&json!({"clv_months": 121})).unwrap_err();
        assert_eq!(e.field(), Some("clv_months"));
        let e = ClvDefinition::parse(&json!({"monthly_discount_rate": 5})).unwrap_err();
        assert_eq!(e.field(), Some("monthly_discount_rate"));
        let e = ClvDefinition::parse(&json!({"horizon": 30})).unwrap_err();
        assert_eq!(e.field(), Some("horizon"));
        assert!(e.to_string().contains("horizon_days"), "{e}");
        // The scope is read when the definition is: a run is not accepted to fail later.
        let e =
            ClvDefinition::parse(&json!({"from": "2026-02-01", "to": "2026-01-01"})).unwrap_err();
        assert_eq!(e.field(), Some("to"));
        let e = ClvDefinition::parse(&json!({"as_of": "someday"})).unwrap_err();
        assert_eq!(e.field(), Some("as_of"));
    }
}
