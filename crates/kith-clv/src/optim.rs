//! Small unconstrained minimizers for the 3–4 parameter likelihoods of this crate.
//!
//! The models are fitted on log-parameters, so the problems are unconstrained and smooth.
//! A coarse Nelder–Mead gets robustly into the basin from a poor start; a damped Newton method
//! on finite-difference derivatives then converges in a handful of iterations, including in the
//! flat (Pareto/NBD) and ridge-shaped (Gamma-Gamma) cases where quasi-Newton updates crawl.
//! If that still ends away from a stationary point, the caller restarts Nelder–Mead with a
//! fresh simplex and runs L-BFGS before Newton again. Everything works on fixed-size arrays,
//! so the objective is called without allocation.

/// Relative gradient step for central differences (balances truncation h² against rounding ε/h).
const GRAD_STEP: f64 = 1e-5;
/// Step for the finite-difference Hessian.
const HESS_STEP: f64 = 1e-4;

/// Result of a minimisation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Minimum<const N: usize> {
    pub x: [f64; N],
    pub f: f64,
    pub iterations: usize,
    pub evaluations: usize,
}

/// Counts evaluations and maps NaN to +∞, so every method sees a total order.
///
/// Remembers the last few points: the stages of a fit ask again for values they already had
/// (the gradient at the point Newton stopped, a Hessian stencil around it), and on a large data
/// set each evaluation is a pass over every customer.
pub(crate) struct Objective<F> {
    f: F,
    pub evaluations: usize,
    recent: std::collections::VecDeque<(Vec<u64>, f64)>,
}

/// Points [`Objective`] remembers: more than one Hessian stencil in four dimensions.
const REMEMBERED_POINTS: usize = 48;

impl<F> Objective<F> {
    pub fn new(f: F) -> Self {
        Objective {
            f,
            evaluations: 0,
            recent: std::collections::VecDeque::with_capacity(REMEMBERED_POINTS),
        }
    }

    pub fn eval<const N: usize>(&mut self, x: &[f64; N]) -> f64
    where
        F: FnMut(&[f64; N]) -> f64,
    {
        let key: Vec<u64> = x.iter().map(|v| v.to_bits()).collect();
        if let Some((_, v)) = self.recent.iter().find(|(k, _)| *k == key) {
            return *v;
        }
        self.evaluations += 1;
        let v = (self.f)(x);
        let v = if v.is_nan() { f64::INFINITY } else { v };
        if self.recent.len() == REMEMBERED_POINTS {
            self.recent.pop_front();
        }
        self.recent.push_back((key, v));
        v
    }
}

fn axpy<const N: usize>(x: &[f64; N], t: f64, d: &[f64; N]) -> [f64; N] {
    std::array::from_fn(|i| x[i] + t * d[i])
}

fn dot<const N: usize>(a: &[f64; N], b: &[f64; N]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(crate) fn norm_inf<const N: usize>(a: &[f64; N]) -> f64 {
    a.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// Nelder–Mead with the dimension-adaptive coefficients of Gao & Han (2012).
pub(crate) fn nelder_mead<const N: usize, F: FnMut(&[f64; N]) -> f64>(
    obj: &mut Objective<F>,
    x0: [f64; N],
    step: f64,
    max_iterations: usize,
    ftol: f64,
    xtol: f64,
) -> Minimum<N> {
    let n = N as f64;
    let (alpha, gamma, rho, sigma) = (1.0, 1.0 + 2.0 / n, 0.75 - 0.5 / n, 1.0 - 1.0 / n);
    let mut simplex: Vec<([f64; N], f64)> = Vec::with_capacity(N + 1);
    simplex.push((x0, obj.eval(&x0)));
    for i in 0..N {
        let mut x = x0;
        x[i] += step;
        let fx = obj.eval(&x);
        simplex.push((x, fx));
    }
    let mut iterations = 0;
    while iterations < max_iterations {
        iterations += 1;
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (best, fbest) = simplex[0];
        let fworst = simplex[N].1;
        let spread = simplex
            .iter()
            .map(|(x, _)| {
                x.iter()
                    .zip(&best)
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
            })
            .fold(0.0f64, f64::max);
        if fbest.is_finite()
            && (fworst - fbest).abs() <= ftol * (fbest.abs() + ftol)
            && spread <= xtol
        {
            break;
        }
        let mut centroid = [0.0; N];
        for (x, _) in &simplex[..N] {
            for i in 0..N {
                centroid[i] += x[i] / n;
            }
        }
        let worst = simplex[N].0;
        let dir: [f64; N] = std::array::from_fn(|i| centroid[i] - worst[i]);
        let xr = axpy(&centroid, alpha, &dir);
        let fr = obj.eval(&xr);
        if fr < fbest {
            let xe = axpy(&centroid, gamma * alpha, &dir);
            let fe = obj.eval(&xe);
            simplex[N] = if fe < fr { (xe, fe) } else { (xr, fr) };
            continue;
        }
        if fr < simplex[N - 1].1 {
            simplex[N] = (xr, fr);
            continue;
        }
        // Contraction: outside if the reflected point beat the worst, inside otherwise.
        let (xc, fc, accept) = if fr < fworst {
            let xc = axpy(&centroid, rho * alpha, &dir);
            let fc = obj.eval(&xc);
            (xc, fc, fc <= fr)
        } else {
            let xc = axpy(&centroid, -rho, &dir);
            let fc = obj.eval(&xc);
            (xc, fc, fc < fworst)
        };
        if accept {
            simplex[N] = (xc, fc);
            continue;
        }
        for v in simplex.iter_mut().skip(1) {
            let x: [f64; N] = std::array::from_fn(|i| best[i] + sigma * (v.0[i] - best[i]));
            *v = (x, obj.eval(&x));
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    Minimum {
        x: simplex[0].0,
        f: simplex[0].1,
        iterations,
        evaluations: obj.evaluations,
    }
}

/// Central-difference gradient.
pub(crate) fn gradient<const N: usize, F: FnMut(&[f64; N]) -> f64>(
    obj: &mut Objective<F>,
    x: &[f64; N],
) -> [f64; N] {
    let mut g = [0.0; N];
    for i in 0..N {
        let h = GRAD_STEP * x[i].abs().max(1.0);
        let mut xp = *x;
        let mut xm = *x;
        xp[i] += h;
        xm[i] -= h;
        g[i] = (obj.eval(&xp) - obj.eval(&xm)) / (2.0 * h);
    }
    g
}

/// Finite-difference Hessian (central second differences).
pub(crate) fn hessian<const N: usize, F: FnMut(&[f64; N]) -> f64>(
    obj: &mut Objective<F>,
    x: &[f64; N],
) -> [[f64; N]; N] {
    let f0 = obj.eval(x);
    gradient_and_hessian(obj, x, f0).1
}

/// Central-difference gradient and Hessian from one stencil (1 + 2N + N(N−1) evaluations
/// given f(x)); the gradient uses the Hessian's larger step, so it is accurate to about
/// h²·f‴/6 ≈ 1e-9 — enough to steer Newton steps, not for the final digits.
///
/// Off-diagonal terms use f(x ± (hᵢeᵢ + hⱼeⱼ)) with the axis points the diagonal needs anyway:
/// f(x+a) + f(x−a) − f(x±hᵢeᵢ) − f(x±hⱼeⱼ) + 2f(x) = 2hᵢhⱼHᵢⱼ + O(h⁴), as accurate as the
/// four-corner formula at half its evaluations.
pub(crate) fn gradient_and_hessian<const N: usize, F: FnMut(&[f64; N]) -> f64>(
    obj: &mut Objective<F>,
    x: &[f64; N],
    f0: f64,
) -> ([f64; N], [[f64; N]; N]) {
    let axes = axis_stencil(obj, x, f0);
    let hess = complete_hessian(obj, x, f0, &axes);
    (axes.grad, hess)
}

/// The evaluations along each axis of the Hessian stencil: the gradient and the Hessian's
/// diagonal, 2N evaluations. The off-diagonal terms ([`complete_hessian`]) take 2·N(N−1)/2
/// more, which a converged point does not need.
pub(crate) struct AxisStencil<const N: usize> {
    pub grad: [f64; N],
    diagonal: [f64; N],
    /// f(x + hᵢeᵢ) + f(x − hᵢeᵢ) for each axis.
    axis_sum: [f64; N],
    step: [f64; N],
}

fn axis_stencil<const N: usize, F: FnMut(&[f64; N]) -> f64>(
    obj: &mut Objective<F>,
    x: &[f64; N],
    f0: f64,
) -> AxisStencil<N> {
    let step: [f64; N] = std::array::from_fn(|i| HESS_STEP * x[i].abs().max(1.0));
    let mut axes = AxisStencil {
        grad: [0.0; N],
        diagonal: [0.0; N],
        axis_sum: [0.0; N],
        step,
    };
    for i in 0..N {
        let mut xp = *x;
        let mut xm = *x;
        xp[i] += step[i];
        xm[i] -= step[i];
        let (fp, fm) = (obj.eval(&xp), obj.eval(&xm));
        axes.grad[i] = (fp - fm) / (2.0 * step[i]);
        axes.diagonal[i] = (fp - 2.0 * f0 + fm) / (step[i] * step[i]);
        axes.axis_sum[i] = fp + fm;
    }
    axes
}

/// The full Hessian from the axis evaluations plus two along each diagonal pair of axes.
fn complete_hessian<const N: usize, F: FnMut(&[f64; N]) -> f64>(
    obj: &mut Objective<F>,
    x: &[f64; N],
    f0: f64,
    axes: &AxisStencil<N>,
) -> [[f64; N]; N] {
    let h = axes.step;
    let mut hess = [[0.0; N]; N];
    for i in 0..N {
        hess[i][i] = axes.diagonal[i];
        for j in 0..i {
            let mut along = |sign: f64| {
                let mut y = *x;
                y[i] += sign * h[i];
                y[j] += sign * h[j];
                obj.eval(&y)
            };
            let diagonal_sum = along(1.0) + along(-1.0);
            let v = (diagonal_sum - axes.axis_sum[i] - axes.axis_sum[j] + 2.0 * f0)
                / (2.0 * h[i] * h[j]);
            hess[i][j] = v;
            hess[j][i] = v;
        }
    }
    hess
}

/// Cholesky factor L (lower) of a symmetric positive definite matrix; `None` otherwise.
pub(crate) fn cholesky<const N: usize>(a: &[[f64; N]; N]) -> Option<[[f64; N]; N]> {
    let mut l = [[0.0; N]; N];
    for i in 0..N {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                let d = a[i][i] - s;
                if !d.is_finite() || d <= 0.0 {
                    return None;
                }
                l[i][i] = d.sqrt();
            } else {
                l[i][j] = (a[i][j] - s) / l[j][j];
            }
        }
    }
    Some(l)
}

/// Solves L Lᵀ x = b.
pub(crate) fn cholesky_solve<const N: usize>(l: &[[f64; N]; N], b: &[f64; N]) -> [f64; N] {
    let mut y = [0.0; N];
    for i in 0..N {
        let s: f64 = (0..i).map(|k| l[i][k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i][i];
    }
    let mut x = [0.0; N];
    for i in (0..N).rev() {
        let s: f64 = (i + 1..N).map(|k| l[k][i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i][i];
    }
    x
}

/// Inverse of a symmetric positive definite matrix, `None` when it is not.
pub(crate) fn spd_inverse<const N: usize>(a: &[[f64; N]; N]) -> Option<[[f64; N]; N]> {
    let l = cholesky(a)?;
    let mut inv = [[0.0; N]; N];
    for j in 0..N {
        let mut e = [0.0; N];
        e[j] = 1.0;
        let col = cholesky_solve(&l, &e);
        for i in 0..N {
            inv[i][j] = col[i];
        }
    }
    Some(inv)
}

/// L-BFGS with an Armijo backtracking line search on central-difference gradients.
pub(crate) fn lbfgs<const N: usize, F: FnMut(&[f64; N]) -> f64>(
    obj: &mut Objective<F>,
    x0: [f64; N],
    max_iterations: usize,
    gtol: f64,
) -> Minimum<N> {
    const MEMORY: usize = 6;
    let mut x = x0;
    let mut fx = obj.eval(&x);
    let mut g = gradient(obj, &x);
    let mut history: std::collections::VecDeque<([f64; N], [f64; N], f64)> =
        std::collections::VecDeque::with_capacity(MEMORY);
    let mut iterations = 0;
    let mut stalls = 0;
    while iterations < max_iterations && fx.is_finite() {
        if norm_inf(&g) <= gtol {
            break;
        }
        iterations += 1;
        // Two-loop recursion for d = −H g.
        let mut q = g;
        let mut alphas = [0.0; MEMORY];
        for (k, (s, y, rho)) in history.iter().enumerate().rev() {
            let a = rho * dot(s, &q);
            alphas[k] = a;
            q = axpy(&q, -a, y);
        }
        let scale = match history.back() {
            Some((s, y, _)) => dot(s, y) / dot(y, y),
            None => 1.0 / norm_inf(&g).max(1.0),
        };
        let mut d: [f64; N] = std::array::from_fn(|i| scale * q[i]);
        for (k, (s, y, rho)) in history.iter().enumerate() {
            let b = rho * dot(y, &d);
            d = axpy(&d, alphas[k] - b, s);
        }
        d = d.map(|v| -v);
        let mut slope = dot(&g, &d);
        if slope.is_nan() || slope >= 0.0 {
            history.clear();
            d = g.map(|v| -v / norm_inf(&g).max(1.0));
            slope = dot(&g, &d);
        }
        // Backtracking with safeguarded quadratic interpolation.
        let mut t = 1.0;
        let mut accepted = None;
        for _ in 0..60 {
            let xn = axpy(&x, t, &d);
            let fnew = obj.eval(&xn);
            if fnew <= fx + 1e-4 * t * slope {
                accepted = Some((xn, fnew));
                break;
            }
            let t_quad = if fnew.is_finite() {
                -slope * t * t / (2.0 * (fnew - fx - slope * t))
            } else {
                0.1 * t
            };
            t = t_quad.clamp(0.1 * t, 0.5 * t);
        }
        let Some((xn, fnew)) = accepted else {
            if history.is_empty() {
                break;
            }
            history.clear();
            continue;
        };
        let gn = gradient(obj, &xn);
        let s: [f64; N] = std::array::from_fn(|i| xn[i] - x[i]);
        let y: [f64; N] = std::array::from_fn(|i| gn[i] - g[i]);
        let sy = dot(&s, &y);
        if sy > 1e-14 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() && sy > 0.0 {
            if history.len() == MEMORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        // Stop when progress has dropped to rounding level for a few iterations in a row.
        if (fx - fnew).abs() <= 1e-15 * fx.abs().max(1e-300) {
            stalls += 1;
        } else {
            stalls = 0;
        }
        x = xn;
        fx = fnew;
        g = gn;
        if stalls >= 3 {
            break;
        }
    }
    Minimum {
        x,
        f: fx,
        iterations,
        evaluations: obj.evaluations,
    }
}

/// Hessian and the point it was evaluated at.
pub(crate) type HessianAt<const N: usize> = ([f64; N], [[f64; N]; N]);

/// What [`newton`] found: the minimum, the last Hessian it computed and where, and the largest
/// component of the accurate gradient at the minimum when it took that gradient there.
pub(crate) struct NewtonResult<const N: usize> {
    pub best: Minimum<N>,
    pub hessian_at: Option<HessianAt<N>>,
    pub gradient_norm: Option<f64>,
}

/// Damped Newton (Levenberg–Marquardt style) on finite-difference derivatives.
///
/// For these 3–4 parameter problems a full Hessian costs about as much as four central
/// gradients, and it handles the strongly correlated parameters (the q–γ ridge of the
/// Gamma-Gamma, the flat Pareto/NBD optimum) far better than a quasi-Newton update. When the
/// Hessian is not positive definite, or the step fails the Armijo test, λI is added and grown.
/// A point whose gradient passes the test keeps the previous iteration's Hessian rather than
/// completing its own (12 of the 20 evaluations of an iteration, for four parameters: a sixth
/// of a Pareto/NBD fit from a warm start). Ends with one step on an accurate small-step
/// gradient.
pub(crate) fn newton<const N: usize, F: FnMut(&[f64; N]) -> f64>(
    obj: &mut Objective<F>,
    start: Minimum<N>,
    max_iterations: usize,
    gtol: f64,
) -> NewtonResult<N> {
    let mut best = start;
    let mut last: Option<HessianAt<N>> = None;
    for _ in 0..max_iterations {
        if !best.f.is_finite() {
            break;
        }
        let axes = axis_stencil(obj, &best.x, best.f);
        let converged = norm_inf(&axes.grad) <= gtol;
        if converged && last.is_some() {
            break;
        }
        let h = complete_hessian(obj, &best.x, best.f, &axes);
        last = Some((best.x, h));
        if converged {
            break;
        }
        best.iterations += 1;
        if !damped_newton_step(obj, &mut best, &axes.grad, &h, None) {
            break;
        }
    }
    // Final step with the accurate gradient: removes the O(h²) bias of the stencil gradient,
    // which matters in flat directions. Accepted unless it makes things measurably worse; where
    // it is not, that gradient is the one at the minimum.
    let mut gradient_norm = None;
    if let Some((_, h)) = last
        && let Some(l) = cholesky(&h)
    {
        let g = gradient(obj, &best.x);
        gradient_norm = Some(norm_inf(&g));
        let d = cholesky_solve(&l, &g.map(|v| -v));
        if norm_inf(&d) < 1e-3 {
            let xn = axpy(&best.x, 1.0, &d);
            let fnew = obj.eval(&xn);
            if fnew <= best.f + 4.0 * f64::EPSILON * best.f.abs() {
                best.x = xn;
                best.f = fnew.min(best.f);
                gradient_norm = None;
            }
        }
    }
    best.evaluations = obj.evaluations;
    NewtonResult {
        best,
        hessian_at: last,
        gradient_norm,
    }
}

/// One Levenberg–Marquardt-damped Newton step with an Armijo backtracking line search: λI is
/// added to the Hessian, and grown, until it is positive definite and the step decreases the
/// objective. Returns whether `best` moved. `tried` is a point whose value is known already
/// (the undamped step the caller tested): reaching it again costs no evaluation.
fn damped_newton_step<const N: usize, F: FnMut(&[f64; N]) -> f64>(
    obj: &mut Objective<F>,
    best: &mut Minimum<N>,
    g: &[f64; N],
    h: &[[f64; N]; N],
    tried: Option<([f64; N], f64)>,
) -> bool {
    let scale = (0..N).fold(0.0f64, |m, i| m.max(h[i][i].abs())).max(1e-12);
    let mut lambda = 0.0;
    for _ in 0..14 {
        let damped: [[f64; N]; N] = std::array::from_fn(|i| {
            std::array::from_fn(|j| h[i][j] + if i == j { lambda } else { 0.0 })
        });
        if let Some(l) = cholesky(&damped) {
            let d = capped(cholesky_solve(&l, &g.map(|v| -v)));
            let slope = dot(g, &d);
            let mut t = 1.0;
            for _ in 0..30 {
                let xn = axpy(&best.x, t, &d);
                let fnew = match tried {
                    Some((x, f)) if x == xn => f,
                    _ => obj.eval(&xn),
                };
                if fnew <= best.f + 1e-4 * t * slope {
                    best.x = xn;
                    best.f = fnew;
                    return true;
                }
                t *= 0.5;
            }
        }
        lambda = if lambda == 0.0 {
            1e-6 * scale
        } else {
            lambda * 10.0
        };
    }
    false
}

/// The objective's value, gradient and Hessian, computed exactly by the model in one pass.
pub(crate) type ExactDerivatives<const N: usize> = (f64, [f64; N], [[f64; N]; N]);

/// What a damped Newton step on exact derivatives did.
enum ExactStep<const N: usize> {
    /// Moved; the derivatives at the new point came with its value.
    MovedWith(ExactDerivatives<N>),
    /// Moved (after damping or backtracking); the derivatives there are still to compute.
    Moved,
    Stuck,
}

/// [`damped_newton_step`] whose first trial, the full Newton step (no longer than
/// [`MAX_LOG_STEP`]), is evaluated with its derivatives: near the optimum that step is accepted, and the pass that tested it has
/// already computed what the next iteration needs. Backtracking trials take plain evaluations.
fn exact_newton_step<const N: usize, F: FnMut(&[f64; N]) -> f64>(
    obj: &mut Objective<F>,
    best: &mut Minimum<N>,
    (g, h): (&[f64; N], &[[f64; N]; N]),
    derivatives: &impl Fn(&[f64; N]) -> Option<ExactDerivatives<N>>,
) -> ExactStep<N> {
    let mut tried = None;
    if let Some(l) = cholesky(h) {
        let d = capped(cholesky_solve(&l, &g.map(|v| -v)));
        let xn = axpy(&best.x, 1.0, &d);
        match derivatives(&xn) {
            Some(at) if at.0 <= best.f + 1e-4 * dot(g, &d) => {
                best.x = xn;
                best.f = at.0;
                return ExactStep::MovedWith(at);
            }
            // The damped search starts from this very step: its value is known.
            Some(at) => tried = Some((xn, at.0)),
            None => {}
        }
    }
    if damped_newton_step(obj, best, g, h, tried) {
        ExactStep::Moved
    } else {
        ExactStep::Stuck
    }
}

/// The longest first trial of an exact Newton step, in any log-parameter (a factor of e^1.5,
/// about 4.5). From a poor start the quadratic model's full step can jump far past the optimum
/// into a region where it is rejected and backtracked: a Gamma-Gamma fit from (1, 1, mean)
/// went through p = 24 and γ = 101 on its way to p = 6, twelve derivative passes and seven
/// evaluations where it now takes eight and two. Near the optimum steps are far shorter, so
/// convergence is unchanged there.
const MAX_LOG_STEP: f64 = 1.5;

/// `d` shortened, if need be, to [`MAX_LOG_STEP`] in its longest component.
fn capped<const N: usize>(d: [f64; N]) -> [f64; N] {
    let longest = norm_inf(&d);
    if longest > MAX_LOG_STEP {
        d.map(|v| v * MAX_LOG_STEP / longest)
    } else {
        d
    }
}

/// Damped Newton on exact derivatives (`derivatives(x)`, `None` where they are not finite;
/// `start_derivatives`, when the caller has them, are those at the start).
/// Converges in a handful of iterations where the finite-difference version crawls along
/// ridges its noisy Hessian cannot resolve (the Gamma-Gamma's q–γ ridge: thousands of
/// evaluations on CDNOW). Returns the minimum with the derivatives there, or `None` when they
/// cannot be evaluated (the caller falls back to finite differences).
pub(crate) fn newton_exact<const N: usize, F: FnMut(&[f64; N]) -> f64>(
    obj: &mut Objective<F>,
    start: Minimum<N>,
    start_derivatives: Option<ExactDerivatives<N>>,
    derivatives: impl Fn(&[f64; N]) -> Option<ExactDerivatives<N>>,
    max_iterations: usize,
    gtol: f64,
) -> Option<(Minimum<N>, ExactDerivatives<N>)> {
    let mut best = start;
    let mut at = match start_derivatives {
        Some(at) => at,
        None => derivatives(&best.x)?,
    };
    for _ in 0..max_iterations {
        let (_, g, h) = at;
        // Done at the tight tolerance, or once the gradient is small and the step Newton
        // predicts would lower the objective by less than rounding can show (sums over hundreds
        // of thousands of customers leave the gradient a noise floor near 1e-8).
        let newton_step = cholesky(&h).map(|l| cholesky_solve(&l, &g));
        let predicted_decrease = newton_step.map(|d| 0.5 * dot(&g, &d));
        let settled = norm_inf(&g) <= 1e-6
            && predicted_decrease.is_some_and(|d| d <= 1e-14 * best.f.abs().max(1.0));
        if norm_inf(&g) <= gtol || settled {
            // One last full step, unless it makes things measurably worse: in the quadratic
            // regime it leaves an error of the order of the step squared, so fits of the same
            // data from different starts agree to far more digits than the stopping rule alone
            // gives (along a weakly identified direction a gradient of 1e-7 is still a
            // parameter off by 1e-6).
            if let Some(d) = newton_step {
                let stepped = axpy(&best.x, -1.0, &d);
                let f = obj.eval(&stepped);
                if f <= best.f + 4.0 * f64::EPSILON * best.f.abs() {
                    best.x = stepped;
                    best.f = f.min(best.f);
                    best.evaluations = obj.evaluations;
                }
            }
            return Some((best, at));
        }
        best.iterations += 1;
        at = match exact_newton_step(obj, &mut best, (&g, &h), &derivatives) {
            ExactStep::MovedWith(there) => there,
            ExactStep::Moved => derivatives(&best.x)?,
            ExactStep::Stuck => break,
        };
    }
    best.evaluations = obj.evaluations;
    Some((best, at))
}

/// Largest absolute component of the gradient at `x`.
pub(crate) fn gradient_norm<const N: usize, F: FnMut(&[f64; N]) -> f64>(
    obj: &mut Objective<F>,
    x: &[f64; N],
) -> f64 {
    norm_inf(&gradient(obj, x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rosenbrock(x: &[f64; 2]) -> f64 {
        (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2)
    }

    #[test]
    fn nelder_mead_then_lbfgs_find_rosenbrock_minimum() {
        let mut obj = Objective::new(rosenbrock);
        let nm = nelder_mead(&mut obj, [-1.2, 1.0], 0.5, 5000, 1e-12, 1e-8);
        assert!(nm.f < 1e-8, "{nm:?}");
        let lb = lbfgs(&mut obj, [-1.2, 1.0], 500, 1e-9);
        assert!(
            (lb.x[0] - 1.0).abs() < 1e-5 && (lb.x[1] - 1.0).abs() < 1e-5,
            "{lb:?}"
        );
    }

    #[test]
    fn quadratic_hessian_and_inverse() {
        // f = ½ xᵀ A x with A = [[4, 1], [1, 3]]
        let a = [[4.0, 1.0], [1.0, 3.0]];
        let mut obj = Objective::new(|x: &[f64; 2]| {
            0.5 * (a[0][0] * x[0] * x[0] + 2.0 * a[0][1] * x[0] * x[1] + a[1][1] * x[1] * x[1])
        });
        let h = hessian(&mut obj, &[0.3, -0.2]);
        for i in 0..2 {
            for j in 0..2 {
                assert!((h[i][j] - a[i][j]).abs() < 1e-6);
            }
        }
        let inv = spd_inverse(&a).unwrap();
        let det = 11.0;
        assert!((inv[0][0] - 3.0 / det).abs() < 1e-14);
        assert!((inv[0][1] + 1.0 / det).abs() < 1e-14);
        assert!(spd_inverse(&[[1.0, 2.0], [2.0, 1.0]]).is_none());
        let before = obj.evaluations;
        let polished = newton(
            &mut obj,
            Minimum {
                x: [1.0, 1.0],
                f: 4.5,
                iterations: 0,
                evaluations: 0,
            },
            10,
            1e-6,
        );
        let x = polished.best.x;
        assert!(x[0].abs() < 1e-8 && x[1].abs() < 1e-8, "{x:?}");
        // A quadratic: one step lands, and the point there needs only its gradient (4
        // evaluations), not the Hessian's diagonal pairs (2 more); the Hessian kept is the
        // first one. (The accurate gradient's norm comes back only where the final step on it
        // was not taken: then it is the gradient at the minimum.)
        let (at, h) = polished.hessian_at.expect("a Hessian");
        assert_eq!(at, [1.0, 1.0]);
        assert!((h[0][1] - 1.0).abs() < 1e-6);
        assert!(polished.gradient_norm.is_none_or(|g| g < 1e-6));
        assert!(
            obj.evaluations - before <= 6 + 1 + 4 + 4 + 1,
            "{}",
            obj.evaluations - before
        );
    }

    #[test]
    fn stencil_hessian_of_a_non_quadratic_function_matches_the_analytic_one() {
        // f = e^x y² + x y z + sin z: every second derivative differs and none is constant.
        let f = |v: &[f64; 3]| (v[0]).exp() * v[1] * v[1] + v[0] * v[1] * v[2] + v[2].sin();
        let at: [f64; 3] = [0.4, -1.3, 0.7];
        let (x, y, z) = (at[0], at[1], at[2]);
        let exact_g = [
            x.exp() * y * y + y * z,
            2.0 * x.exp() * y + x * z,
            x * y + z.cos(),
        ];
        let exact_h = [
            [x.exp() * y * y, 2.0 * x.exp() * y + z, y],
            [2.0 * x.exp() * y + z, 2.0 * x.exp(), x],
            [y, x, -z.sin()],
        ];
        let mut obj = Objective::new(f);
        let f0 = f(&at);
        let (g, h) = gradient_and_hessian(&mut obj, &at, f0);
        // 2N axis points and one pair of diagonal points per off-diagonal term.
        assert_eq!(obj.evaluations, 2 * 3 + 3 * 2);
        for i in 0..3 {
            assert!(
                (g[i] - exact_g[i]).abs() < 1e-6,
                "g[{i}] {} vs {}",
                g[i],
                exact_g[i]
            );
            for j in 0..3 {
                assert!(
                    (h[i][j] - exact_h[i][j]).abs() < 1e-5,
                    "h[{i}][{j}] {} vs {}",
                    h[i][j],
                    exact_h[i][j]
                );
            }
        }
    }

    #[test]
    fn infinite_regions_are_avoided() {
        // Objective is +∞ (or NaN) for x < 0: the methods must stay in the finite region.
        let mut obj = Objective::new(|x: &[f64; 1]| {
            if x[0] < 0.0 {
                f64::NAN
            } else {
                (x[0] - 0.1).powi(2)
            }
        });
        let nm = nelder_mead(&mut obj, [2.0], 1.0, 1000, 1e-14, 1e-10);
        assert!((nm.x[0] - 0.1).abs() < 1e-5);
        let lb = lbfgs(&mut obj, [2.0], 100, 1e-10);
        assert!((lb.x[0] - 0.1).abs() < 1e-6, "{lb:?}");
    }

    /// f(y) = Σ e^{y_i} − a_i y_i, convex with its minimum at y = ln a, and its exact
    /// derivatives: what a fit in log-parameters looks like.
    fn log_scale_objective(a: [f64; 2]) -> impl Fn(&[f64; 2]) -> Option<ExactDerivatives<2>> {
        move |y| {
            let f = (0..2).map(|i| y[i].exp() - a[i] * y[i]).sum();
            let g = std::array::from_fn(|i| y[i].exp() - a[i]);
            let h = std::array::from_fn(|i| {
                std::array::from_fn(|j| if i == j { y[i].exp() } else { 0.0 })
            });
            Some((f, g, h))
        }
    }

    #[test]
    fn exact_newton_reaches_a_distant_optimum_in_bounded_steps() {
        // From y = 0 the optimum ln(5000) ≈ 8.5 is far: steps are capped at MAX_LOG_STEP, so
        // it takes several, each accepted, and the result is exact.
        let a = [5_000.0, 0.002];
        let derivatives = log_scale_objective(a);
        let value = |y: &[f64; 2]| derivatives(y).map_or(f64::INFINITY, |d| d.0);
        let mut obj = Objective::new(value);
        let start = Minimum {
            x: [0.0, 0.0],
            f: obj.eval(&[0.0, 0.0]),
            iterations: 0,
            evaluations: 1,
        };
        let (found, (_, g, _)) =
            newton_exact(&mut obj, start, None, &derivatives, 100, 1e-12).expect("finite");
        assert!((found.x[0] - a[0].ln()).abs() < 1e-7, "{found:?}");
        assert!((found.x[1] - a[1].ln()).abs() < 1e-7, "{found:?}");
        assert!(norm_inf(&g) <= 1e-6, "{g:?}");
        assert!(found.iterations >= (a[0].ln() / MAX_LOG_STEP).ceil() as usize);
        assert!(found.iterations <= 30, "{found:?}");
    }

    #[test]
    fn a_rejected_full_step_is_not_evaluated_twice() {
        // f(y) = y⁴/4 − y from y = 0.1: the Hessian is small, so the Newton step (capped at
        // MAX_LOG_STEP) lands at 1.6, where f is higher and the step is rejected. The damped
        // search starts from that very point; its value came with the derivatives.
        let derivatives = |y: &[f64; 1]| {
            let y = y[0];
            Some((y.powi(4) / 4.0 - y, [y.powi(3) - 1.0], [[3.0 * y * y]]))
        };
        let seen = std::cell::RefCell::new(Vec::new());
        let value = |y: &[f64; 1]| {
            seen.borrow_mut().push(y[0]);
            derivatives(y).map_or(f64::INFINITY, |d| d.0)
        };
        let mut obj = Objective::new(value);
        let start = Minimum {
            x: [0.1],
            f: 0.1f64.powi(4) / 4.0 - 0.1,
            iterations: 0,
            evaluations: 0,
        };
        let (found, _) =
            newton_exact(&mut obj, start, None, derivatives, 50, 1e-10).expect("finite");
        assert!((found.x[0] - 1.0).abs() < 1e-8, "{found:?}");
        let seen = seen.into_inner();
        let rejected = 0.1 + MAX_LOG_STEP;
        assert!(
            !seen.iter().any(|y| (y - rejected).abs() < 1e-12),
            "the rejected step to {rejected} was evaluated again: {seen:?}"
        );
        assert!(
            !seen.is_empty(),
            "the damped search took no step of its own"
        );
    }
}
