//! Model inputs, their validation, and the compressed layout the likelihood loops run over.

use serde::{Deserialize, Serialize};

use crate::error::FitError;

/// One customer's purchase history in continuous time, in the units of the summary
/// (see [`crate::summary`]): repeat-purchase count, time of the last repeat purchase and age,
/// both measured from the first purchase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rfm {
    /// Number of repeat purchases (x). Normally an integer.
    pub frequency: f64,
    /// Time from the first to the last purchase (t_x); 0 when `frequency` is 0.
    pub recency: f64,
    /// Time from the first purchase to the end of observation (T).
    pub t: f64,
}

impl Rfm {
    /// Builds a record from (x, t_x, T).
    pub fn new(frequency: f64, recency: f64, t: f64) -> Self {
        Rfm {
            frequency,
            recency,
            t,
        }
    }
}

/// One customer's input to the Gamma-Gamma spend model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    /// Number of repeat purchases.
    pub frequency: f64,
    /// Mean value of the repeat purchases.
    pub monetary_value: f64,
}

impl Spend {
    /// Builds a record from (x, m̄).
    pub fn new(frequency: f64, monetary_value: f64) -> Self {
        Spend {
            frequency,
            monetary_value,
        }
    }
}

/// One customer (or, with a weight, one group of identical customers) in discrete time, for
/// the BG/BB model: `frequency` transactions over `n_periods` opportunities, the last one at
/// opportunity `recency` (0 when there was none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BgBbRecord {
    /// Number of repeat transactions (x).
    pub frequency: u32,
    /// Transaction opportunity of the last repeat transaction (t_x).
    pub recency: u32,
    /// Number of transaction opportunities observed (n).
    pub n_periods: u32,
}

impl BgBbRecord {
    /// Builds a record from (x, t_x, n).
    pub fn new(frequency: u32, recency: u32, n_periods: u32) -> Self {
        BgBbRecord {
            frequency,
            recency,
            n_periods,
        }
    }
}

pub(crate) fn check_weights(len: usize, weights: Option<&[f64]>) -> Result<(), FitError> {
    if let Some(w) = weights {
        if w.len() != len {
            return Err(FitError::WeightsLength {
                weights: w.len(),
                data: len,
            });
        }
        for (row, &v) in w.iter().enumerate() {
            if !v.is_finite() {
                return Err(FitError::NonFinite {
                    row,
                    field: "weight",
                });
            }
            if v < 0.0 {
                return Err(FitError::InvalidData {
                    row,
                    reason: format!("negative weight {v}"),
                });
            }
        }
    }
    Ok(())
}

fn weight_at(weights: Option<&[f64]>, i: usize) -> f64 {
    weights.map_or(1.0, |w| w[i])
}

/// Checks the continuous-time data contract (the same checks `lifetimes` makes) and that there
/// are enough repeat customers to identify the model.
pub(crate) fn validate_rfm(
    data: &[Rfm],
    weights: Option<&[f64]>,
    min_repeat_customers: usize,
) -> Result<(), FitError> {
    check_weights(data.len(), weights)?;
    let mut repeat = 0usize;
    let mut total = 0.0;
    for (row, c) in data.iter().enumerate() {
        for (field, v) in [
            ("frequency", c.frequency),
            ("recency", c.recency),
            ("t", c.t),
        ] {
            if !v.is_finite() {
                return Err(FitError::NonFinite { row, field });
            }
            if v < 0.0 {
                return Err(FitError::InvalidData {
                    row,
                    reason: format!("negative {field} {v}"),
                });
            }
        }
        if c.recency > c.t * (1.0 + 1e-12) {
            return Err(FitError::InvalidData {
                row,
                reason: format!("recency {} exceeds T {}", c.recency, c.t),
            });
        }
        if c.frequency == 0.0 && c.recency != 0.0 {
            return Err(FitError::InvalidData {
                row,
                reason: "non-zero recency with zero frequency".into(),
            });
        }
        let w = weight_at(weights, row);
        total += w;
        if c.frequency > 0.0 && w > 0.0 {
            repeat += 1;
        }
    }
    if data.is_empty() || total <= 0.0 {
        return Err(FitError::EmptyInput);
    }
    if repeat < min_repeat_customers {
        return Err(FitError::TooFewRepeatCustomers {
            found: repeat,
            required: min_repeat_customers,
        });
    }
    Ok(())
}

/// How much work one row of a pass is, which decides how many rows make a second thread worth
/// starting (a thread costs some tens of microseconds to start and join).
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowCost {
    /// A logarithm or two a row (Gamma-Gamma): threads pay off from 25,000 rows each.
    Light,
    /// Several logarithms, an exponential and divisions a row (the BG/NBD family): from 1,500
    /// rows each (CDNOW's 8,685 distinct histories: MBG/NBD's fit 4.8 -> 3.9 ms on two cores).
    Heavy,
}

impl RowCost {
    fn rows_per_thread(self) -> usize {
        match self {
            RowCost::Light => 25_000,
            RowCost::Heavy => 1_500,
        }
    }
}

/// The cores this process may use. Asked once: the standard library reads the cgroup quota files
/// on every call (about 12 µs), and a fit on a small data set splits its passes dozens of times.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `per_range(lo, hi)` over `0..rows` split into one range per core (one range for small data),
/// the parts combined with `add`. Passes over the customers (likelihoods and their derivatives)
/// are independent per row, so they spread over the cores.
pub(crate) fn split_sum<T: Send>(
    rows: usize,
    cost: RowCost,
    per_range: impl Fn(usize, usize) -> T + Sync,
    add: impl Fn(T, T) -> T,
) -> T {
    let threads = cores().min(rows / cost.rows_per_thread()).max(1);
    if threads == 1 {
        return per_range(0, rows);
    }
    let chunk = rows.div_ceil(threads);
    let (first, others) = in_parallel(threads, |t| {
        per_range(t * chunk, ((t + 1) * chunk).min(rows))
    });
    others.into_iter().fold(first, add)
}

/// `work(0)` on this thread and `work(1)`, ..., `work(parts - 1)` each on a thread of its own;
/// the first result and the others in order. A panic in any part is raised here.
pub(crate) fn in_parallel<T: Send>(parts: usize, work: impl Fn(usize) -> T + Sync) -> (T, Vec<T>) {
    std::thread::scope(|scope| {
        let work = &work;
        let others: Vec<_> = (1..parts)
            .map(|part| scope.spawn(move || work(part)))
            .collect();
        let first = work(0);
        let others = others
            .into_iter()
            .map(|other| {
                other
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect();
        (first, others)
    })
}

/// Adds two partial sums of a log-likelihood with its gradient and Hessian ([`split_sum`]).
pub(crate) fn add_derivatives<const N: usize>(
    (f1, g1, h1): crate::fit::NaturalDerivatives<N>,
    (f2, g2, h2): crate::fit::NaturalDerivatives<N>,
) -> crate::fit::NaturalDerivatives<N> {
    (
        f1 + f2,
        std::array::from_fn(|i| g1[i] + g2[i]),
        std::array::from_fn(|i| std::array::from_fn(|j| h1[i][j] + h2[i][j])),
    )
}

/// The groups (by `bounds`) with rows in `lo..hi`: (group, first row, end row, whether the
/// group starts in the range — so per-group terms are counted by exactly one range).
pub(crate) fn clip_groups(
    bounds: &[(usize, usize)],
    lo: usize,
    hi: usize,
) -> impl Iterator<Item = (usize, usize, usize, bool)> + '_ {
    bounds
        .iter()
        .enumerate()
        .filter(move |(_, (glo, ghi))| *glo < hi && *ghi > lo)
        .map(move |(k, &(glo, ghi))| (k, glo.max(lo), ghi.min(hi), glo >= lo))
}

/// Customers grouped by frequency, identical (x, t_x, T) rows merged into one weighted row.
///
/// Terms that depend only on x (log-gamma functions of the parameters) are then evaluated once
/// per group instead of once per customer, and the per-customer loop touches three flat arrays.
#[derive(Debug, Clone)]
pub(crate) struct RfmGroups {
    /// Distinct frequencies, ascending.
    pub frequency: Vec<f64>,
    /// Row range of each frequency group.
    pub bounds: Vec<(usize, usize)>,
    /// Total weight of each group.
    pub group_weight: Vec<f64>,
    pub recency: Vec<f64>,
    pub t: Vec<f64>,
    pub weight: Vec<f64>,
    pub total_weight: f64,
}

impl RfmGroups {
    pub fn new(data: &[Rfm], weights: Option<&[f64]>) -> Self {
        // Identical rows merged first (hashing is linear; customers share histories), then only
        // the distinct ones sorted. The data are checked non-negative and finite, so ordering
        // the bit patterns orders the values (+ 0.0 turns −0 into +0).
        let key = |c: &Rfm| {
            (
                (c.frequency + 0.0).to_bits(),
                (c.recency + 0.0).to_bits(),
                (c.t + 0.0).to_bits(),
            )
        };
        let mut merged: hashbrown::HashMap<(u64, u64, u64), f64> =
            hashbrown::HashMap::with_capacity(data.len().min(1 << 16));
        for (i, c) in data.iter().enumerate() {
            let w = weight_at(weights, i);
            if w > 0.0 {
                *merged.entry(key(c)).or_insert(0.0) += w;
            }
        }
        let mut keyed: Vec<((u64, u64, u64), f64)> = merged.into_iter().collect();
        keyed.sort_unstable_by_key(|(k, _)| *k);
        let rows: Vec<(Rfm, f64)> = keyed
            .into_iter()
            .map(|((x, t_x, t), w)| {
                (
                    Rfm::new(f64::from_bits(x), f64::from_bits(t_x), f64::from_bits(t)),
                    w,
                )
            })
            .collect();
        let mut g = RfmGroups {
            frequency: Vec::new(),
            bounds: Vec::new(),
            group_weight: Vec::new(),
            recency: Vec::with_capacity(rows.len()),
            t: Vec::with_capacity(rows.len()),
            weight: Vec::with_capacity(rows.len()),
            total_weight: 0.0,
        };
        for (c, w) in rows {
            let n = g.recency.len();
            if n > 0
                && g.frequency.last() == Some(&c.frequency)
                && g.recency[n - 1] == c.recency
                && g.t[n - 1] == c.t
            {
                g.weight[n - 1] += w;
            } else {
                if g.frequency.last() != Some(&c.frequency) {
                    g.frequency.push(c.frequency);
                    g.bounds.push((n, n));
                    g.group_weight.push(0.0);
                }
                g.recency.push(c.recency);
                g.t.push(c.t);
                g.weight.push(w);
            }
            let k = g.frequency.len() - 1;
            g.bounds[k].1 = g.recency.len();
            g.group_weight[k] += w;
            g.total_weight += w;
        }
        g
    }

    /// Mean of T over the customers (a natural time scale for starting values).
    pub fn mean_t(&self) -> f64 {
        let s: f64 = self.t.iter().zip(&self.weight).map(|(t, w)| t * w).sum();
        (s / self.total_weight).max(1e-3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_merge_identical_rows() {
        let data = [
            Rfm::new(0.0, 0.0, 10.0),
            Rfm::new(2.0, 5.0, 10.0),
            Rfm::new(0.0, 0.0, 10.0),
            Rfm::new(2.0, 5.0, 10.0),
            Rfm::new(2.0, 6.0, 10.0),
            Rfm::new(1.0, 1.0, 8.0),
        ];
        let g = RfmGroups::new(&data, None);
        assert_eq!(g.frequency, vec![0.0, 1.0, 2.0]);
        assert_eq!(g.bounds, vec![(0, 1), (1, 2), (2, 4)]);
        assert_eq!(g.weight, vec![2.0, 1.0, 2.0, 1.0]);
        assert_eq!(g.group_weight, vec![2.0, 1.0, 3.0]);
        assert_eq!(g.total_weight, 6.0);
    }

    #[test]
    fn validation_rejects_bad_rows() {
        let ok = [Rfm::new(1.0, 2.0, 3.0); 3];
        assert!(validate_rfm(&ok, None, 1).is_ok());
        assert_eq!(validate_rfm(&[], None, 0), Err(FitError::EmptyInput));
        assert!(matches!(
            validate_rfm(&[Rfm::new(f64::NAN, 0.0, 1.0)], None, 0),
            Err(FitError::NonFinite { row: 0, .. })
        ));
        assert!(matches!(
            validate_rfm(&[Rfm::new(1.0, 5.0, 3.0)], None, 0),
            Err(FitError::InvalidData { row: 0, .. })
        ));
        assert!(matches!(
            validate_rfm(&[Rfm::new(0.0, 1.0, 3.0)], None, 0),
            Err(FitError::InvalidData { .. })
        ));
        assert!(matches!(
            validate_rfm(&ok, None, 4),
            Err(FitError::TooFewRepeatCustomers {
                found: 3,
                required: 4
            })
        ));
        assert!(matches!(
            validate_rfm(&ok, Some(&[1.0]), 0),
            Err(FitError::WeightsLength { .. })
        ));
        assert_eq!(
            validate_rfm(&ok, Some(&[0.0, 0.0, 0.0]), 0),
            Err(FitError::EmptyInput)
        );
    }
}
