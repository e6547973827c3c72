//! The fitting pipeline shared by every model: maximum likelihood on log-parameters with an
//! optional L2 penalty, standard errors from the Hessian, and a uniform result type.

use serde::{Deserialize, Serialize};

use crate::error::FitError;
use crate::optim::{self, Minimum, Objective};

/// Options for a maximum-likelihood fit.
///
/// The objective is the one `lifetimes` minimises, so penalizer values carry over:
/// `−(1/W) Σ wᵢ ln Lᵢ + penalizer_coef · Σ θ²` over the natural parameters θ, W = Σ wᵢ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitOptions<P> {
    /// L2 penalty on the parameters (0 = plain maximum likelihood).
    pub penalizer_coef: f64,
    /// Starting point; `None` uses a data-driven default.
    pub initial_params: Option<P>,
    /// Iteration budget for each optimizer stage.
    pub max_iterations: usize,
    /// Fewer customers with a repeat purchase than this is reported as
    /// [`FitError::TooFewRepeatCustomers`] (for BG/BB: records with a transaction).
    pub min_repeat_customers: usize,
}

impl<P> Default for FitOptions<P> {
    fn default() -> Self {
        FitOptions {
            penalizer_coef: 0.0,
            initial_params: None,
            max_iterations: 1000,
            min_repeat_customers: 10,
        }
    }
}

/// A fitted model: parameters, fit statistics and standard errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fitted<P> {
    /// Maximum-likelihood (or penalised) parameters.
    pub params: P,
    /// Total log-likelihood Σ wᵢ ln Lᵢ at `params`, without the penalty. (`lifetimes` reports
    /// the mean negative log-likelihood; multiply that by −W to compare.)
    pub log_likelihood: f64,
    /// Asymptotic standard errors of each parameter, from the inverse Hessian of the total
    /// negative log-likelihood (penalised, when `penalizer_coef` > 0) in log-parameters and
    /// the delta method (se(θ) = θ · se(ln θ)). `None` when the Hessian is not positive
    /// definite (an optimum on a boundary, say).
    pub standard_errors: Option<P>,
    /// Number of customers (sum of weights) the model was fitted on.
    pub n_customers: f64,
    /// The minimised objective (mean negative log-likelihood plus penalty).
    pub objective: f64,
    /// Largest gradient component of the objective (in log-parameters) at the optimum.
    pub gradient_norm: f64,
    /// Whether the gradient test passed tightly (|∇| ≤ 1e-6); a fit that ended further away but
    /// still near a stationary point is returned with `false`.
    pub converged: bool,
    /// Objective evaluations used.
    pub evaluations: usize,
}

/// Conversion between a parameter struct and a fixed-size vector.
pub(crate) trait ParamVector<const N: usize>: Sized + Copy {
    const NAMES: [&'static str; N];
    fn to_array(&self) -> [f64; N];
    fn from_array(a: [f64; N]) -> Self;
}

/// Log-parameters beyond this magnitude are treated as infeasible (e^±40 is far outside any
/// meaningful model and keeps exp() finite).
const LOG_BOUND: f64 = 40.0;
/// Gradient size above which the optimizer is deemed to have failed.
const FAIL_GRADIENT: f64 = 1e-3;

/// Distinct data rows above which a fit starts from a fit on a sample (see [`warm_start`]).
const WARM_START_ROWS: usize = 4_000;
/// Customers in that sample: a twentieth of them, within these bounds (the sample only has to
/// land Newton in the basin; a larger one cost more than the full-data steps it saved).
const WARM_START_SAMPLE: (f64, f64) = (1_000.0, 20_000.0);

/// Options whose starting point is the optimum on a sample of the customers, when the data are
/// large and no start was given: every iteration on the full data then counts (Newton from
/// there converges in two or three), where from the default start the early ones only find the
/// basin, at the full data's price.
///
/// The sample is every `step`-th customer of the grouped data (see [`crate::data::every_step`]),
/// taken from data already checked and merged, so it costs no preparation of its own.
/// `fit_sample(step, options)` fits it (from the default start: a sample of a sample would
/// only add work); if that fails the options are returned as given.
pub(crate) fn warm_start<P: Clone>(
    options: &FitOptions<P>,
    distinct_rows: usize,
    customers: f64,
    fit_sample: impl FnOnce(f64, &FitOptions<P>) -> Result<Fitted<P>, FitError>,
) -> FitOptions<P> {
    if distinct_rows <= WARM_START_ROWS || options.initial_params.is_some() {
        return options.clone();
    }
    let sample = (customers / 20.0).clamp(WARM_START_SAMPLE.0, WARM_START_SAMPLE.1);
    let step = (customers / sample).max(2.0);
    match fit_sample(step, options) {
        Ok(fitted) => FitOptions {
            initial_params: Some(fitted.params),
            ..options.clone()
        },
        Err(_) => options.clone(),
    }
}

/// The mean negative log-likelihood with its gradient and Hessian, in the natural parameters.
/// The value comes from the same pass over the data: a Newton step whose trial point is accepted
/// (most are) then needs no separate evaluation there.
pub(crate) type NaturalDerivatives<const N: usize> = (f64, [f64; N], [[f64; N]; N]);

/// Fits a model given its mean negative log-likelihood in natural parameters.
pub(crate) fn fit_model<P: ParamVector<N>, const N: usize>(
    mean_nll: impl Fn(&[f64; N]) -> f64,
    total_weight: f64,
    default_init: [f64; N],
    options: &FitOptions<P>,
) -> Result<Fitted<P>, FitError> {
    fit_model_with(
        mean_nll,
        None::<fn(&[f64; N]) -> NaturalDerivatives<N>>,
        total_weight,
        default_init,
        options,
    )
}

/// [`fit_model`] for a model that also gives its exact derivatives: after the coarse search,
/// Newton runs on them (a few evaluations, and standard errors from the exact Hessian); finite
/// differences remain the fallback.
pub(crate) fn fit_model_exact<P: ParamVector<N>, const N: usize>(
    mean_nll: impl Fn(&[f64; N]) -> f64,
    derivatives: impl Fn(&[f64; N]) -> NaturalDerivatives<N>,
    total_weight: f64,
    default_init: [f64; N],
    options: &FitOptions<P>,
) -> Result<Fitted<P>, FitError> {
    fit_model_with(
        mean_nll,
        Some(derivatives),
        total_weight,
        default_init,
        options,
    )
}

fn fit_model_with<P: ParamVector<N>, const N: usize>(
    mean_nll: impl Fn(&[f64; N]) -> f64,
    derivatives: Option<impl Fn(&[f64; N]) -> NaturalDerivatives<N>>,
    total_weight: f64,
    default_init: [f64; N],
    options: &FitOptions<P>,
) -> Result<Fitted<P>, FitError> {
    let pen = options.penalizer_coef;
    if !pen.is_finite() || pen < 0.0 {
        return Err(FitError::InvalidOptions(format!(
            "penalizer_coef must be finite and >= 0, got {pen}"
        )));
    }
    let init = match &options.initial_params {
        Some(p) => p.to_array(),
        None => default_init,
    };
    for (name, v) in P::NAMES.iter().zip(init) {
        if !(v.is_finite() && v > 0.0) {
            return Err(FitError::InvalidOptions(format!(
                "initial {name} must be positive and finite, got {v}"
            )));
        }
    }
    let max_iter = options.max_iterations.max(10);
    let objective = |y: &[f64; N]| -> f64 {
        if y.iter().any(|v| v.abs() > LOG_BOUND) {
            return f64::INFINITY;
        }
        let theta = y.map(f64::exp);
        let penalty = l2_penalty(&theta, pen);
        let v = mean_nll(&theta) + penalty;
        if v.is_finite() { v } else { f64::INFINITY }
    };
    let mut obj = Objective::new(objective);

    // With exact derivatives: Newton in log-parameters (chain rule: g_y = θ·g_θ,
    // H_y = diag θ · H_θ · diag θ + diag g_y), the penalty's terms added. Straight from the
    // start first (damping copes with a poor start, and the search below costs more than the
    // whole Newton run); from the coarse search's point if that does not converge.
    let in_logs = |y: &[f64; N]| -> Option<optim::ExactDerivatives<N>> {
        let derivatives = derivatives.as_ref()?;
        if y.iter().any(|v| v.abs() > LOG_BOUND) {
            return None;
        }
        let theta = y.map(f64::exp);
        let (f, mut g, mut h) = derivatives(&theta);
        // The objective's value, penalty included, exactly as `objective` computes it.
        let f = f + l2_penalty(&theta, pen);
        for i in 0..N {
            g[i] += 2.0 * pen * theta[i];
            h[i][i] += 2.0 * pen;
        }
        let gy: [f64; N] = std::array::from_fn(|i| theta[i] * g[i]);
        let hy: [[f64; N]; N] = std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                theta[i] * theta[j] * h[i][j] + if i == j { gy[i] } else { 0.0 }
            })
        });
        let finite = f.is_finite() && gy.iter().chain(hy.iter().flatten()).all(|v| v.is_finite());
        finite.then_some((f, gy, hy))
    };
    let mut y0 = init.map(f64::ln);
    let mut given_start = options.initial_params.is_some();
    // With exact derivatives, their pass at the start also gives the objective there: a finite
    // one settles the check below without a pass of its own (a tenth of a warm-started fit).
    let start_derivatives = in_logs(&y0);
    if start_derivatives.is_none() && !obj.eval(&y0).is_finite() {
        given_start = false;
        // A user start (or the default) can sit where the likelihood underflows; the unit
        // point is a neutral second guess before giving up.
        y0 = [0.0; N];
        if !obj.eval(&y0).is_finite() {
            return Err(FitError::OptimizerFailed(
                "objective is not finite at the initial parameters".into(),
            ));
        }
    }

    let converged_exact = |found: Option<(Minimum<N>, optim::ExactDerivatives<N>)>| {
        found.filter(|(_, (_, g, _))| optim::norm_inf(g) <= 1e-6)
    };
    if derivatives.is_some() {
        let start = Minimum {
            x: y0,
            f: match &start_derivatives {
                Some((f, _, _)) => *f,
                None => obj.eval(&y0),
            },
            iterations: 0,
            evaluations: obj.evaluations,
        };
        if let Some((at, (_, g, h))) = converged_exact(optim::newton_exact(
            &mut obj,
            start,
            start_derivatives,
            in_logs,
            200,
            1e-10,
        )) {
            let evaluations = obj.evaluations;
            return finish(at, optim::norm_inf(&g), h, pen, total_weight, evaluations);
        }
    }

    // Stage 1: a coarse Nelder–Mead finds the basin from a possibly poor start; it is only
    // asked for a few digits because derivative-based steps are far cheaper per digit.
    // A start that was given (the user's, or the optimum on a sample: see [`warm_start`]) is
    // in the basin already, and re-finding it cost a third of a finite-difference fit; the
    // fallback below still runs the search if Newton does not converge from there.
    let mut best = if given_start {
        Minimum {
            x: y0,
            f: obj.eval(&y0),
            iterations: 0,
            evaluations: obj.evaluations,
        }
    } else {
        optim::nelder_mead(&mut obj, y0, 0.5, max_iter, 1e-4, 5e-2)
    };
    if derivatives.is_some()
        && let Some((at, (_, g, h))) = converged_exact(optim::newton_exact(
            &mut obj, best, None, in_logs, 100, 1e-10,
        ))
    {
        let evaluations = obj.evaluations;
        return finish(at, optim::norm_inf(&g), h, pen, total_weight, evaluations);
    }
    // Stage 2: damped Newton on finite-difference derivatives to full precision.
    let found = optim::newton(&mut obj, best, 100, 1e-8);
    best = found.best;
    let mut hess_at = found.hessian_at;
    let mut gnorm = found
        .gradient_norm
        .unwrap_or_else(|| optim::gradient_norm(&mut obj, &best.x));
    // Fallback, rarely needed: restart Nelder–Mead with a fresh small simplex (a collapsed
    // simplex or a saddle can stall the first pass), then L-BFGS, then Newton again.
    for _ in 0..2 {
        if gnorm <= 1e-6 {
            break;
        }
        let again = optim::nelder_mead(&mut obj, best.x, 0.1, max_iter, 1e-12, 1e-7);
        if again.f <= best.f {
            best = again;
        }
        let lb = optim::lbfgs(&mut obj, best.x, max_iter, 1e-9);
        if lb.f <= best.f {
            best = Minimum {
                iterations: best.iterations + lb.iterations,
                ..lb
            };
        }
        let found = optim::newton(&mut obj, best, 100, 1e-8);
        best = found.best;
        hess_at = found.hessian_at;
        gnorm = found
            .gradient_norm
            .unwrap_or_else(|| optim::gradient_norm(&mut obj, &best.x));
    }

    if !best.f.is_finite() || best.x.iter().any(|v| !v.is_finite()) {
        return Err(FitError::OptimizerFailed(
            "no finite optimum was found".into(),
        ));
    }
    // NaN must count as failure too, hence the explicit check.
    if gnorm.is_nan() || gnorm > FAIL_GRADIENT {
        let at: Vec<String> = P::NAMES
            .iter()
            .zip(best.x)
            .map(|(n, y)| format!("{n}={:.6e}", y.exp()))
            .collect();
        let diverging = best.x.iter().any(|y| y.abs() > 12.0);
        let hint = if diverging {
            "; parameters are running off to a boundary, so the data do not identify the \
             model (a small penalizer_coef keeps them finite)"
        } else {
            ""
        };
        return Err(FitError::OptimizerFailed(format!(
            "ended with gradient norm {gnorm:.3e} (objective {:.6}) at {}{hint}",
            best.f,
            at.join(", ")
        )));
    }
    // Standard errors: covariance of ln θ is the inverse Hessian of the *total* objective.
    // The last Newton Hessian is reused when it was taken (numerically) at the optimum.
    let hess = match hess_at {
        Some((x, h)) if x.iter().zip(&best.x).all(|(a, b)| (a - b).abs() <= 1e-4) => h,
        _ => optim::hessian(&mut obj, &best.x),
    };
    finish(best, gnorm, hess, pen, total_weight, obj.evaluations)
}

/// The L2 penalty the objective adds to the mean negative log-likelihood. One definition: the
/// log-likelihood at the optimum is recovered by taking it back off the objective.
fn l2_penalty<const N: usize>(theta: &[f64; N], penalizer_coef: f64) -> f64 {
    theta.iter().map(|t| t * t).sum::<f64>() * penalizer_coef
}

/// The fitted model at the optimum `best` of the mean objective, with its gradient's largest
/// component and its Hessian in log-parameters there.
fn finish<P: ParamVector<N>, const N: usize>(
    best: Minimum<N>,
    gnorm: f64,
    hess: [[f64; N]; N],
    penalizer_coef: f64,
    total_weight: f64,
    evaluations: usize,
) -> Result<Fitted<P>, FitError> {
    let theta = best.x.map(f64::exp);
    let total_hess: [[f64; N]; N] = hess.map(|row| row.map(|v| v * total_weight));
    let standard_errors = optim::spd_inverse(&total_hess).and_then(|cov| {
        let se: [f64; N] = std::array::from_fn(|i| theta[i] * cov[i][i].sqrt());
        se.iter().all(|v| v.is_finite()).then(|| P::from_array(se))
    });

    // `best.f` is the objective at the optimum (mean negative log-likelihood plus the penalty),
    // from the pass that found it: the log-likelihood needs no pass over the data of its own.
    let log_likelihood = -(best.f - l2_penalty(&theta, penalizer_coef)) * total_weight;
    if !log_likelihood.is_finite() {
        return Err(FitError::OptimizerFailed(
            "log-likelihood is not finite at the optimum".into(),
        ));
    }
    Ok(Fitted {
        params: P::from_array(theta),
        log_likelihood,
        standard_errors,
        n_customers: total_weight,
        objective: best.f,
        gradient_norm: gnorm,
        converged: gnorm <= 1e-6,
        evaluations,
    })
}

/// Test helper: `derivatives` at `at` agree with central differences of `objective` (gradient)
/// and of `derivatives`' own gradient (Hessian).
#[cfg(test)]
pub(crate) fn assert_derivatives_match<const N: usize>(
    objective: impl Fn(&[f64; N]) -> f64,
    derivatives: impl Fn(&[f64; N]) -> NaturalDerivatives<N>,
    at: [f64; N],
) {
    let (value, grad, hess) = derivatives(&at);
    let expected = objective(&at);
    assert!(
        (value - expected).abs() <= 1e-12 * expected.abs().max(1.0),
        "value: {value} vs {expected}"
    );
    let h = 1e-5;
    let shifted = |i: usize, d: f64| {
        let mut v = at;
        v[i] += d;
        v
    };
    for i in 0..N {
        let fd = (objective(&shifted(i, h)) - objective(&shifted(i, -h))) / (2.0 * h);
        assert!(
            (grad[i] - fd).abs() < 1e-7,
            "gradient {i}: {} vs {fd}",
            grad[i]
        );
        for (j, exact) in hess[i].iter().enumerate() {
            let fd =
                (derivatives(&shifted(j, h)).1[i] - derivatives(&shifted(j, -h)).1[i]) / (2.0 * h);
            assert!(
                (exact - fd).abs() < 1e-6,
                "hessian {i},{j}: {exact} vs {fd}"
            );
        }
    }
}
