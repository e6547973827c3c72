//! The demo world: a Mexican online retailer's customers over eighteen months, generated from known
//! processes so every analysis Kith makes can be checked against the truth.
//!
//! Each customer is simulated on their own from a generator seeded by the world's seed and the
//! customer's number ([`simulate`]), so output is deterministic for a seed, customers can be
//! produced in any order or in parallel, and memory stays bounded whatever the size of the world.
//!
//! What drives the data (the [`Truth`] recorded beside it):
//! - purchases follow BG/NBD: a customer buys at rate λ ~ Gamma(r, α) a week while active, and
//!   after each purchase leaves for good with probability p ~ Beta(a, b);
//! - spend follows the gamma-gamma model: each order's value is Gamma(p, ν) with ν ~ Gamma(q, γ)
//!   per customer (in units of [`Parameters::spend_unit_mxn`] pesos);
//! - customers who are leaving signal it first: a support ticket that went badly, a low NPS score,
//!   visits thinning out, a cancelled subscription;
//! - the checkout has a friction step: paying with Mercado Pago on a phone fails far more often.

pub mod catalogue;
pub mod customer;
pub mod output;

pub use customer::{CustomerTruth, Simulated, simulate};
pub use output::{WorldSummary, write_world};

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

/// The generating process's parameters: the ground truth models should recover.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Parameters {
    /// BG/NBD purchase rate: λ ~ Gamma(shape r, rate α), purchases a week.
    pub r: f64,
    pub alpha: f64,
    /// BG/NBD dropout after each purchase: p ~ Beta(a, b).
    pub a: f64,
    pub b: f64,
    /// Gamma-gamma spend: order value ~ Gamma(shape p, rate ν), ν ~ Gamma(shape q, rate γ).
    pub spend_p: f64,
    pub spend_q: f64,
    pub spend_gamma: f64,
    /// Pesos per spend unit.
    pub spend_unit_mxn: f64,
    /// Share of visitors who sign up.
    pub signup_rate: f64,
    /// Chance a Mercado Pago payment fails on mobile, and any other payment anywhere.
    pub mobile_wallet_failure: f64,
    pub other_payment_failure: f64,
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters {
            r: 0.9,
            alpha: 8.0,
            a: 0.8,
            b: 3.0,
            spend_p: 6.0,
            spend_q: 4.0,
            spend_gamma: 15.0,
            spend_unit_mxn: 40.0,
            signup_rate: 0.75,
            mobile_wallet_failure: 0.35,
            other_payment_failure: 0.05,
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub customers: u64,
    pub seed: u64,
    /// The world ends here; customers arrive over the `months` before.
    pub end: DateTime<Utc>,
    pub months: u32,
    pub parameters: Parameters,
}

/// Where a world ends unless told otherwise (`kith demo generate` without `--end`), so that a
/// number of customers and a seed always name the same world, dates included.
pub fn reference_end() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 10, 31, 23, 59, 59)
        .single()
        .unwrap_or_default()
}

impl DemoConfig {
    pub fn new(customers: u64, seed: u64) -> DemoConfig {
        DemoConfig {
            customers,
            seed,
            end: reference_end(),
            months: 18,
            parameters: Parameters::default(),
        }
    }

    /// The world ending at `end` instead (`kith serve --demo` ends it when it loads, so recency,
    /// risk and retention read as those of a shop open today). Customers keep their names and
    /// habits; what follows the calendar, such as the monthly newsletter, moves with it.
    pub fn ending_at(self, end: DateTime<Utc>) -> DemoConfig {
        DemoConfig { end, ..self }
    }

    pub fn start(&self) -> DateTime<Utc> {
        // Checked: `ending_at` takes any end, and near chrono's first day the plain subtraction
        // would panic.
        self.end
            .checked_sub_signed(chrono::Duration::days(i64::from(self.months) * 30))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

#[cfg(test)]
mod tests;
