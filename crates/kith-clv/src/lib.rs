//! Customer lifetime value models for Kith: pure computation, no I/O.
//!
//! # What is here
//!
//! * [`summary`]: a transaction log → per-customer (frequency, recency, T, monetary value),
//!   and the calibration/holdout split, with the semantics of the Python `lifetimes` package.
//! * Transaction models, all fitted by maximum likelihood on log-parameters with an optional
//!   L2 penalty ([`FitOptions`]) and returning a [`Fitted`] with the total log-likelihood and
//!   standard errors:
//!   [`BgNbd`], [`ModifiedBgNbd`] and [`ParetoNbd`] (continuous time, sharing the
//!   [`TransactionModel`] trait) and [`BgBb`] (discrete time).
//! * [`GammaGamma`] spend model and the discounted CLV
//!   ([`GammaGamma::customer_lifetime_value`]).
//! * [`scoring`]: a whole customer base scored at once, customers with the same history sharing
//!   the work.
//! * [`diagnostics`]: calibration-vs-holdout table and the cumulative tracking curve.
//! * [`hyp2f1`]: the Gauss hypergeometric function the BG/NBD and Pareto/NBD need.
//!
//! # Conventions
//!
//! * Times are in whatever unit the summary was built in (CDNOW: weeks); the models are
//!   unit-agnostic, and [`ClvOptions::periods_per_month`] converts for CLV.
//! * [`Fitted::log_likelihood`] is the **total** log-likelihood Σ ln Lᵢ (CDNOW BG/NBD:
//!   −9582.43). `lifetimes` minimises the *mean* negative log-likelihood plus
//!   `penalizer_coef · Σθ²`; the penalizer here has the same meaning, so values carry over.
//! * Fitting errors are [`FitError`]; numerical failures of predictions are [`NumericError`];
//!   nothing panics on bad input.
//!
//! # Example
//!
//! ```
//! use kith_clv::{BgNbd, ClvOptions, GammaGamma, Rfm};
//!
//! // Parameters as fitted on CDNOW (weeks).
//! let bg = BgNbd { r: 0.2426, alpha: 4.4136, a: 0.7929, b: 2.4259 };
//! let customer = Rfm::new(2.0, 30.43, 38.86);
//! let next_39_weeks = bg.conditional_expected_purchases(39.0, &customer)?;
//! assert!((next_39_weeks - 1.226).abs() < 1e-3);
//! assert!((bg.probability_alive(&customer) - 0.7266).abs() < 1e-3);
//!
//! let gg = GammaGamma { p: 6.2488, q: 3.7446, gamma: 15.4478 };
//! let clv = gg.customer_lifetime_value(&bg, &customer, 22.35, &ClvOptions::weekly(12, 0.01))?;
//! assert!(clv > 0.0);
//! # Ok::<(), kith_clv::NumericError>(())
//! ```
//!
//! Fitting takes the per-customer records:
//!
//! ```no_run
//! use kith_clv::{BgNbd, FitOptions, Rfm};
//! # let data: Vec<Rfm> = Vec::new();
//! let fit = BgNbd::fit(&data, &FitOptions::default())?;
//! println!("{:?} ll={} se={:?}", fit.params, fit.log_likelihood, fit.standard_errors);
//! # Ok::<(), kith_clv::FitError>(())
//! ```

pub mod data;
pub mod diagnostics;
pub mod error;
pub mod fit;
pub mod hyp2f1;
pub mod models;
pub(crate) mod optim;
pub mod scoring;
pub(crate) mod special;
pub mod summary;

pub use data::{BgBbRecord, Rfm, Spend};
pub use error::{FitError, NumericError, SummaryError};
pub use fit::{FitOptions, Fitted};
pub use models::{
    BgBb, BgNbd, ClvOptions, GammaGamma, GammaGammaFit, GammaGammaOptions, ModifiedBgNbd,
    ParetoNbd, TransactionModel,
};
pub use scoring::{CustomerScore, score_customers};
