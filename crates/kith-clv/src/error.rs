//! Error types.
//!
//! Three families, so a caller can tell "the maths could not be evaluated" (numeric),
//! "these data cannot support a fit" (fit) and "this transaction log cannot be summarised"
//! (summary) apart without string matching.

use thiserror::Error;

/// A special function or a prediction could not be evaluated to a finite number.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum NumericError {
    /// `c` of 2F1 is a non-positive integer and the series does not terminate before the pole.
    #[error("hypergeometric function undefined: c = {c} is a non-positive integer")]
    Pole {
        /// The offending `c`.
        c: f64,
    },
    /// An argument lies outside the domain handled here.
    #[error("argument out of domain: {0}")]
    Domain(String),
    /// No available expansion converged within its term budget.
    #[error("hypergeometric function did not converge for a={a}, b={b}, c={c}, z={z}")]
    NoConvergence {
        /// First numerator parameter.
        a: f64,
        /// Second numerator parameter.
        b: f64,
        /// Denominator parameter.
        c: f64,
        /// Argument.
        z: f64,
    },
    /// The value is finite mathematically but does not fit in an `f64`.
    #[error("value overflows f64 (natural log of magnitude {ln_abs})")]
    Overflow {
        /// Natural log of the magnitude that did not fit.
        ln_abs: f64,
    },
    /// A logarithm was requested of a value that is zero or negative.
    #[error("value is not positive, its logarithm is undefined")]
    NonPositive,
    /// A computation produced NaN or an infinity.
    #[error("non-finite result in {0}")]
    NonFinite(&'static str),
}

/// Why a model could not be fitted.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum FitError {
    /// No rows, or rows whose weights sum to zero.
    #[error("empty input: nothing to fit")]
    EmptyInput,
    /// The model needs more customers with at least one repeat purchase.
    #[error("too few repeat customers: found {found}, need at least {required}")]
    TooFewRepeatCustomers {
        /// Repeat customers present.
        found: usize,
        /// Minimum asked for in the fit options.
        required: usize,
    },
    /// A field is NaN or infinite.
    #[error("non-finite {field} at row {row}")]
    NonFinite {
        /// Row index in the input slice.
        row: usize,
        /// Field name.
        field: &'static str,
    },
    /// A row breaks the model's data contract (negative counts, recency after T, ...).
    #[error("invalid data at row {row}: {reason}")]
    InvalidData {
        /// Row index in the input slice.
        row: usize,
        /// What is wrong.
        reason: String,
    },
    /// Weights and data differ in length.
    #[error("weights length {weights} does not match data length {data}")]
    WeightsLength {
        /// Number of weights.
        weights: usize,
        /// Number of data rows.
        data: usize,
    },
    /// Options are unusable (negative penalizer, non-positive initial parameter, ...).
    #[error("invalid fit options: {0}")]
    InvalidOptions(String),
    /// Frequency and average spend are correlated beyond the configured limit, which breaks
    /// the Gamma-Gamma independence assumption.
    #[error(
        "frequency and monetary value are correlated (pearson r = {correlation:.3}, limit {limit})"
    )]
    SpendCorrelated {
        /// Pearson correlation between frequency and monetary value over repeat customers.
        correlation: f64,
        /// Configured limit on its absolute value.
        limit: f64,
    },
    /// The optimizer ended on a non-finite objective or far from a stationary point.
    #[error("optimizer failed: {0}")]
    OptimizerFailed(String),
}

/// Why a transaction log could not be summarised.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SummaryError {
    /// No transactions (after applying the observation window).
    #[error("empty input: no transactions")]
    EmptyInput,
    /// A monetary value is NaN or infinite.
    #[error("non-finite monetary value at row {row}")]
    NonFiniteValue {
        /// Row index in the input slice.
        row: usize,
    },
    /// Calibration ends after the observation window.
    #[error("calibration end {calibration_end} is after observation end {observation_end}")]
    CalibrationAfterObservation {
        /// Calibration end as given.
        calibration_end: String,
        /// Observation end as given or inferred.
        observation_end: String,
    },
    /// No transactions fall in the holdout window.
    #[error("no transactions in the holdout period")]
    EmptyHoldout,
    /// A frequency multiplier that is not a positive finite number.
    #[error("invalid period multiplier {0}: must be positive and finite")]
    InvalidMultiplier(f64),
}
