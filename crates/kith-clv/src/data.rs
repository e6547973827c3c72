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

/// Checks every row against the continuous-time data contract ([`RfmGroups::validated`]) and
/// counts the rows of positive weight with a repeat purchase. A tight pass of its own: inside
/// the merge's loop the checks kept the compiler from inlining it.
fn check_rfm_rows(data: &[Rfm], weights: Option<&[f64]>) -> Result<usize, FitError> {
    // Non-negative and finite in one comparison: sign bit clear, exponent not all ones.
    // (−0 fails it and is then accepted by the full check.)
    let plain = |v: f64| v.to_bits() < f64::INFINITY.to_bits();
    let mut repeat = 0usize;
    for (row, c) in data.iter().enumerate() {
        let valid = plain(c.frequency)
            & plain(c.recency)
            & plain(c.t)
            & (c.recency <= c.t * (1.0 + 1e-12))
            & ((c.frequency != 0.0) | (c.recency == 0.0));
        if !valid && let Some(problem) = rfm_row_problem(row, c) {
            return Err(problem);
        }
        repeat += usize::from(c.frequency > 0.0 && weight_at(weights, row) > 0.0);
    }
    Ok(repeat)
}

/// What is wrong with one customer's (x, t_x, T), if anything.
fn rfm_row_problem(row: usize, c: &Rfm) -> Option<FitError> {
    for (field, v) in [
        ("frequency", c.frequency),
        ("recency", c.recency),
        ("t", c.t),
    ] {
        if !v.is_finite() {
            return Some(FitError::NonFinite { row, field });
        }
        if v < 0.0 {
            return Some(FitError::InvalidData {
                row,
                reason: format!("negative {field} {v}"),
            });
        }
    }
    if c.recency > c.t * (1.0 + 1e-12) {
        return Some(FitError::InvalidData {
            row,
            reason: format!("recency {} exceeds T {}", c.recency, c.t),
        });
    }
    if c.frequency == 0.0 && c.recency != 0.0 {
        return Some(FitError::InvalidData {
            row,
            reason: "non-zero recency with zero frequency".into(),
        });
    }
    None
}

/// How much work one row of a pass is, which decides how many rows make a second thread worth
/// starting (a thread costs some tens of microseconds to start and join).
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowCost {
    /// A logarithm or two a row (Gamma-Gamma): threads pay off from 25,000 rows each.
    Light,
    /// A logarithm, an exponential, a division and some thirty multiply-adds a row (the BG/NBD
    /// family, with its times' logarithms taken from a table): from 6,000 rows each. On CDNOW's
    /// 8,685 distinct histories a second thread gained nothing (MBG/NBD 2.0 ms a fit on one
    /// core or two) and made the timing erratic (2 to 4 ms).
    Heavy,
}

impl RowCost {
    fn rows_per_thread(self) -> usize {
        match self {
            RowCost::Light => 25_000,
            RowCost::Heavy => 6_000,
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

/// Rows merged when their `key`s are equal (their weights added); rows of weight 0 are left
/// out. Linear in the rows, and deterministic: the same input gives the same rows in the same
/// order (within a part, the order first seen).
///
/// Large inputs are first partitioned by a fixed hash of the key into parts whose tables fit a
/// core's cache, and the parts merged side by side: a single table for a million customers'
/// 105,000 histories sat in the last-level cache and cost 40 ns a customer, every lookup a miss.
/// `expected_rows` is how many rows `rows` yields (it sizes the parts).
pub(crate) fn merge_rows<R: Copy + Send + Sync, K: std::hash::Hash + Eq>(
    rows: impl IntoIterator<Item = (R, f64)>,
    expected_rows: usize,
    key: impl Fn(&R) -> K + Sync,
) -> Vec<(R, f64)> {
    use std::hash::BuildHasher;
    let parts = (expected_rows / ROWS_PER_PART)
        .next_power_of_two()
        .min(MAX_PARTS);
    if parts <= 1 {
        return merge_part(rows, expected_rows, &key);
    }
    // Fixed, so the partition and with it the output order are the same on every run; the
    // tables within the parts keep their per-process seeds.
    let partition = foldhash::fast::FixedState::with_seed(0x6b69_7468);
    let shift = 64 - parts.trailing_zeros();
    let mut parted: Vec<Vec<(R, f64)>> = (0..parts)
        .map(|_| Vec::with_capacity(expected_rows / parts + expected_rows / parts / 4))
        .collect();
    for (row, w) in rows {
        if w > 0.0 {
            parted[(partition.hash_one(key(&row)) >> shift) as usize].push((row, w));
        }
    }
    let threads = cores().min(parts);
    let per_thread = parts.div_ceil(threads);
    let (first, others) = in_parallel(threads, |t| {
        let mine = &parted[(t * per_thread).min(parts)..((t + 1) * per_thread).min(parts)];
        let mut merged = Vec::new();
        for part in mine {
            merged.extend(merge_part(part.iter().copied(), part.len(), &key));
        }
        merged
    });
    let mut merged = first;
    for more in others {
        merged.extend(more);
    }
    merged
}

/// Rows a part of [`merge_rows`] is sized for: its table and rows then stay within a core's
/// second-level cache even when every row is distinct.
const ROWS_PER_PART: usize = 32_768;
const MAX_PARTS: usize = 256;

/// One part of [`merge_rows`], in the order first seen. The hash table holds only each
/// distinct row's position (4 bytes a slot).
fn merge_part<R, K: std::hash::Hash + Eq>(
    rows: impl IntoIterator<Item = (R, f64)>,
    expected_rows: usize,
    key: &impl Fn(&R) -> K,
) -> Vec<(R, f64)> {
    use hashbrown::hash_table::Entry;
    use std::hash::BuildHasher;
    let hasher = hashbrown::DefaultHashBuilder::default();
    let capacity = expected_rows.min(2 * ROWS_PER_PART);
    let mut position: hashbrown::HashTable<u32> = hashbrown::HashTable::with_capacity(capacity);
    let mut distinct: Vec<(R, f64)> = Vec::with_capacity(capacity);
    for (row, w) in rows {
        if w <= 0.0 {
            continue;
        }
        let k = key(&row);
        let entry = position.entry(
            hasher.hash_one(&k),
            |&at| key(&distinct[at as usize].0) == k,
            |&at| hasher.hash_one(key(&distinct[at as usize].0)),
        );
        match entry {
            Entry::Occupied(at) => distinct[*at.get() as usize].1 += w,
            Entry::Vacant(slot) => {
                slot.insert(distinct.len() as u32);
                distinct.push((row, w));
            }
        }
    }
    distinct
}

/// A systematic sample of the customers that merged rows stand for: customers (rows counted
/// `weight` times, in order) number `step`, `2·step`, ... are drawn, and each row comes back
/// with the weight of the draws it got, `step` each. Rows of a common history are drawn in
/// proportion to their weight, as a sample of the customers themselves would draw them;
/// taking every n-th distinct row instead lost most of the common histories (a Gamma-Gamma fit
/// on such a sample ran off to p = 10⁷).
pub(crate) fn every_step(weights: &[f64], step: f64) -> impl Iterator<Item = (usize, f64)> + '_ {
    // Customers counted so far, and the number of the next one drawn: most rows only compare.
    let mut counted = 0.0;
    let mut next_draw = step;
    weights.iter().enumerate().filter_map(move |(row, &w)| {
        counted += w;
        if counted < next_draw {
            return None;
        }
        let draws = ((counted - next_draw) / step).floor() + 1.0;
        next_draw += draws * step;
        Some((row, draws * step))
    })
}

/// [`every_step`] over rows grouped by `bounds`: (group, row, weight drawn) in row order.
pub(crate) fn every_step_in_groups<'a>(
    bounds: &'a [(usize, usize)],
    weights: &'a [f64],
    step: f64,
) -> impl Iterator<Item = (usize, usize, f64)> + 'a {
    let mut group = 0;
    every_step(weights, step).map(move |(row, w)| {
        while bounds[group].1 <= row {
            group += 1;
        }
        (group, row, w)
    })
}

/// The distinct values among `values`, ascending, and the position of each value among them.
/// Values must be finite (NaN has no place in the order).
pub(crate) fn rank_values(values: impl ExactSizeIterator<Item = f64>) -> (Vec<f64>, Vec<u32>) {
    let mut id_of: hashbrown::HashMap<u64, u32> = hashbrown::HashMap::new();
    // Small whole numbers (frequencies are counts) are looked up by value, without hashing.
    const SMALL: f64 = 4096.0;
    let mut id_of_small: Vec<u32> = Vec::new();
    let mut distinct: Vec<f64> = Vec::new();
    let mut ids = Vec::with_capacity(values.len());
    for v in values {
        let v = v + 0.0; // −0 and +0 are one value
        let mut new_id = || {
            distinct.push(v);
            (distinct.len() - 1) as u32
        };
        // (`v as usize` truncates; comparing back tells whole numbers without a call to trunc.)
        let id = if (0.0..SMALL).contains(&v) && (v as usize) as f64 == v {
            let at = v as usize;
            if id_of_small.len() <= at {
                id_of_small.resize(at + 1, u32::MAX);
            }
            if id_of_small[at] == u32::MAX {
                id_of_small[at] = new_id();
            }
            id_of_small[at]
        } else {
            *id_of.entry(v.to_bits()).or_insert_with(new_id)
        };
        ids.push(id);
    }
    let mut order: Vec<u32> = (0..distinct.len() as u32).collect();
    order.sort_unstable_by(|&i, &j| distinct[i as usize].total_cmp(&distinct[j as usize]));
    let mut rank_of_id = vec![0u32; distinct.len()];
    for (rank, &id) in order.iter().enumerate() {
        rank_of_id[id as usize] = rank as u32;
    }
    let sorted = order.iter().map(|&id| distinct[id as usize]).collect();
    (
        sorted,
        ids.into_iter().map(|id| rank_of_id[id as usize]).collect(),
    )
}

/// `order` (a permutation of row numbers) stably reordered by `key[row]`, a rank below
/// `buckets`: one counting-sort pass. Passes from the least to the most significant key sort
/// rows by several keys in linear time (a comparison sort of CDNOW's distinct histories took a
/// quarter of a BG/NBD fit).
pub(crate) fn stable_sort_by_rank(order: &[u32], key: &[u32], buckets: usize) -> Vec<u32> {
    let mut next = vec![0usize; buckets + 1];
    for &row in order {
        next[key[row as usize] as usize + 1] += 1;
    }
    for b in 1..=buckets {
        next[b] += next[b - 1];
    }
    let mut sorted = vec![0u32; order.len()];
    for &row in order {
        let b = key[row as usize] as usize;
        sorted[next[b]] = row;
        next[b] += 1;
    }
    sorted
}

/// Customers grouped by frequency, identical (x, t_x, T) rows merged into one weighted row,
/// ordered by (x, t_x, T).
///
/// Terms that depend only on x (log-gamma functions of the parameters) are then evaluated once
/// per group instead of once per customer, and the per-customer loop touches flat arrays.
/// Recencies and ages also index a table of the distinct time values: customers' times are
/// days or weeks since a date, so a few hundred values serve every row, and a pass takes
/// ln(α + time) once per value instead of twice per row.
#[derive(Debug, Clone, PartialEq)]
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
    /// Distinct values of recency and T, ascending.
    pub times: Vec<f64>,
    /// Per row: the positions of its recency and of its T in `times`.
    pub recency_at: Vec<u32>,
    pub t_at: Vec<u32>,
}

impl RfmGroups {
    /// Groups `data` for a fit, checking the continuous-time data contract on the way (the
    /// same checks `lifetimes` makes: finite, non-negative, t_x ≤ T, t_x = 0 when x = 0; the
    /// first row that breaks it is reported) and that at least `min_repeat_customers` rows of
    /// positive weight have a repeat purchase. One pass over the rows does both.
    pub fn validated(
        data: &[Rfm],
        weights: Option<&[f64]>,
        min_repeat_customers: usize,
    ) -> Result<Self, FitError> {
        check_weights(data.len(), weights)?;
        let repeat = check_rfm_rows(data, weights)?;
        // + 0.0 turns −0 into +0, so equal values have equal keys.
        let bits = |v: f64| (v + 0.0).to_bits();
        let rows = data
            .iter()
            .enumerate()
            .map(|(row, c)| (*c, weight_at(weights, row)));
        let merged = merge_rows(rows, data.len(), |c| {
            (bits(c.frequency), bits(c.recency), bits(c.t))
        });
        if merged.is_empty() {
            return Err(FitError::EmptyInput);
        }
        if repeat < min_repeat_customers {
            return Err(FitError::TooFewRepeatCustomers {
                found: repeat,
                required: min_repeat_customers,
            });
        }
        Ok(Self::from_merged(merged))
    }

    /// Test data, known valid.
    #[cfg(test)]
    pub fn new(data: &[Rfm], weights: Option<&[f64]>) -> Self {
        Self::validated(data, weights, 0).expect("valid test data")
    }

    /// Distinct rows with their weights, ordered and indexed.
    fn from_merged(merged: Vec<(Rfm, f64)>) -> Self {
        let rows = merged.len();
        // Rows ordered by (x, t_x, T) through their ranks, least significant first.
        let (frequencies, frequency_rank) = rank_values(merged.iter().map(|(c, _)| c.frequency));
        let (times, time_rank) = rank_values(
            merged
                .iter()
                .flat_map(|(c, _)| [c.recency, c.t])
                .collect::<Vec<_>>()
                .into_iter(),
        );
        let recency_rank: Vec<u32> = time_rank.iter().step_by(2).copied().collect();
        let t_rank: Vec<u32> = time_rank.iter().skip(1).step_by(2).copied().collect();
        let mut order: Vec<u32> = (0..rows as u32).collect();
        order = stable_sort_by_rank(&order, &t_rank, times.len());
        order = stable_sort_by_rank(&order, &recency_rank, times.len());
        order = stable_sort_by_rank(&order, &frequency_rank, frequencies.len());

        let mut g = RfmGroups {
            frequency: Vec::with_capacity(frequencies.len()),
            bounds: Vec::with_capacity(frequencies.len()),
            group_weight: Vec::with_capacity(frequencies.len()),
            recency: Vec::with_capacity(rows),
            t: Vec::with_capacity(rows),
            weight: Vec::with_capacity(rows),
            total_weight: 0.0,
            recency_at: Vec::with_capacity(rows),
            t_at: Vec::with_capacity(rows),
            times,
        };
        for row in order {
            let (c, w) = merged[row as usize];
            let n = g.recency.len();
            let x = frequencies[frequency_rank[row as usize] as usize];
            if g.frequency.last() != Some(&x) {
                g.frequency.push(x);
                g.bounds.push((n, n));
                g.group_weight.push(0.0);
            }
            g.recency_at.push(recency_rank[row as usize]);
            g.t_at.push(t_rank[row as usize]);
            g.recency.push(g.times[recency_rank[row as usize] as usize]);
            g.t.push(g.times[t_rank[row as usize] as usize]);
            g.weight.push(w);
            let k = g.frequency.len() - 1;
            g.bounds[k].1 = n + 1;
            g.group_weight[k] += w;
            g.total_weight += w;
            debug_assert_eq!(c.recency + 0.0, g.recency[n]);
        }
        g
    }

    /// A sample of every `step`-th customer ([`every_step`]) for a warm start (see
    /// [`crate::fit::warm_start`]). Its time table holds only the times it uses.
    pub fn sample(&self, step: f64) -> Self {
        let mut sample = RfmGroups {
            frequency: Vec::new(),
            bounds: Vec::new(),
            group_weight: Vec::new(),
            recency: Vec::new(),
            t: Vec::new(),
            weight: Vec::new(),
            total_weight: 0.0,
            times: Vec::new(),
            recency_at: Vec::new(),
            t_at: Vec::new(),
        };
        // Old time index → new one (u32::MAX: not used yet).
        let mut time_index = vec![u32::MAX; self.times.len()];
        let mut reindex = |old: u32, times: &mut Vec<f64>| -> u32 {
            let slot = &mut time_index[old as usize];
            if *slot == u32::MAX {
                times.push(self.times[old as usize]);
                *slot = (times.len() - 1) as u32;
            }
            *slot
        };
        for (group, i, w) in every_step_in_groups(&self.bounds, &self.weight, step) {
            if sample.frequency.last() != Some(&self.frequency[group]) {
                let n = sample.recency.len();
                sample.frequency.push(self.frequency[group]);
                sample.bounds.push((n, n));
                sample.group_weight.push(0.0);
            }
            sample.recency.push(self.recency[i]);
            sample.t.push(self.t[i]);
            sample.weight.push(w);
            sample
                .recency_at
                .push(reindex(self.recency_at[i], &mut sample.times));
            sample.t_at.push(reindex(self.t_at[i], &mut sample.times));
            let k = sample.frequency.len() - 1;
            sample.bounds[k].1 = sample.recency.len();
            sample.group_weight[k] += w;
            sample.total_weight += w;
        }
        sample
    }

    /// Mean of T over the customers (a natural time scale for starting values).
    pub fn mean_t(&self) -> f64 {
        let s: f64 = self.t.iter().zip(&self.weight).map(|(t, w)| t * w).sum();
        (s / self.total_weight).max(1e-3)
    }

    /// Per distinct time value v: (ln(α + v), 1/(α + v)), for a pass at scale α.
    pub fn shifted_times(&self, alpha: f64) -> Vec<(f64, f64)> {
        self.times
            .iter()
            .map(|v| {
                let shifted = alpha + v;
                (shifted.ln(), 1.0 / shifted)
            })
            .collect()
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
        assert_eq!(g.recency, vec![0.0, 1.0, 5.0, 6.0]);
        assert_eq!(g.times, vec![0.0, 1.0, 5.0, 6.0, 8.0, 10.0]);
        for i in 0..g.recency.len() {
            assert_eq!(g.times[g.recency_at[i] as usize], g.recency[i]);
            assert_eq!(g.times[g.t_at[i] as usize], g.t[i]);
        }
    }

    #[test]
    fn groups_are_ordered_by_frequency_recency_and_age() {
        // Scrambled input with ties in every column, −0 among the zeros, and a dropped row.
        let data: Vec<Rfm> = (0..500u32)
            .map(|i| {
                let h = i.wrapping_mul(2_654_435_761);
                let x = f64::from(h % 5);
                let t = f64::from(h / 5 % 7) + 3.0;
                let recency = if x == 0.0 {
                    -0.0
                } else {
                    f64::from(h / 35 % 3)
                };
                Rfm::new(x, recency, t)
            })
            .collect();
        let mut weights = vec![1.0; data.len()];
        weights[7] = 0.0;
        let g = RfmGroups::new(&data, Some(&weights));
        let mut expected: Vec<(f64, f64, f64)> = data
            .iter()
            .zip(&weights)
            .filter(|(_, w)| **w > 0.0)
            .map(|(c, _)| (c.frequency, c.recency + 0.0, c.t))
            .collect();
        expected.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        expected.dedup();
        let rows: Vec<(f64, f64, f64)> = g
            .bounds
            .iter()
            .enumerate()
            .flat_map(|(k, &(lo, hi))| (lo..hi).map(move |i| (k, i)))
            .map(|(k, i)| (g.frequency[k], g.recency[i], g.t[i]))
            .collect();
        assert_eq!(rows, expected);
        assert_eq!(g.total_weight, 499.0);
        assert_eq!(g.weight.iter().sum::<f64>(), 499.0);
        assert!(g.recency.iter().all(|v| v.is_sign_positive()));
    }

    #[test]
    fn ranks_and_stable_sorts() {
        let (sorted, ranks) = rank_values([3.0, -0.0, 1.5, 3.0, 0.0].into_iter());
        assert_eq!(sorted, vec![0.0, 1.5, 3.0]);
        assert_eq!(ranks, vec![2, 0, 1, 2, 0]);
        // Whole numbers below and above the directly indexed range, and fractions, rank as one.
        let values = [5000.0, 2.0, 4095.0, 2.5, 1e9, 2.0, 4096.0, 0.25];
        let (mixed_sorted, mixed_ranks) = rank_values(values.into_iter());
        assert_eq!(
            mixed_sorted,
            vec![0.25, 2.0, 2.5, 4095.0, 4096.0, 5000.0, 1e9]
        );
        assert_eq!(mixed_ranks, vec![5, 1, 3, 2, 6, 1, 4, 0]);
        // Rows 0..5 by rank, ties kept in the order given.
        assert_eq!(
            stable_sort_by_rank(&[4, 3, 2, 1, 0], &ranks, sorted.len()),
            vec![4, 1, 2, 3, 0]
        );
    }

    #[test]
    fn merging_adds_weights_in_first_seen_order_and_drops_zero_weights() {
        let rows = [('a', 1.0), ('b', 2.0), ('c', 0.0), ('b', 0.5), ('a', 1.5)];
        let merged = merge_rows(rows, 0, |k| *k);
        assert_eq!(merged, vec![('a', 2.5), ('b', 2.5)]);
    }

    #[test]
    fn large_inputs_merge_in_parts_to_the_same_rows_every_time() {
        // Enough rows for several parts, 7,919 distinct keys, some rows weightless.
        let rows: Vec<(u64, f64)> = (0..200_000u64)
            .map(|i| {
                (
                    (i * 2_654_435_761) % 7_919,
                    if i % 13 == 0 { 0.0 } else { 1.5 },
                )
            })
            .collect();
        let merged = merge_rows(rows.iter().copied(), rows.len(), |k| *k);
        let mut expected = std::collections::BTreeMap::new();
        for &(k, w) in &rows {
            if w > 0.0 {
                *expected.entry(k).or_insert(0.0) += w;
            }
        }
        let mut got = merged.clone();
        got.sort_by_key(|(k, _)| *k);
        assert_eq!(got, expected.into_iter().collect::<Vec<_>>());
        // The order does not depend on the tables' per-process seeds.
        assert_eq!(merge_rows(rows.iter().copied(), rows.len(), |k| *k), merged);
    }

    #[test]
    fn every_step_draws_customers_in_proportion_to_their_weight() {
        // Customers 1..=10 in rows of 5, 0.5, 0.5, 3 and 1: every second one is drawn.
        let drawn: Vec<(usize, f64)> = every_step(&[5.0, 0.5, 0.5, 3.0, 1.0], 2.0).collect();
        assert_eq!(drawn, vec![(0, 4.0), (2, 2.0), (3, 2.0), (4, 2.0)]);
        // A row lighter than the step is drawn as often as its share says.
        let light = vec![0.25; 400];
        let drawn: Vec<(usize, f64)> = every_step(&light, 10.0).collect();
        assert_eq!(drawn.len(), 10);
        assert!(drawn.iter().all(|&(_, w)| w == 10.0));
    }

    #[test]
    fn a_sample_of_the_groups_keeps_their_layout() {
        let data: Vec<Rfm> = (0..3_000u32)
            .map(|i| {
                let x = f64::from(i % 6);
                let t = 30.0 + f64::from(i % 11);
                let recency = if x == 0.0 { 0.0 } else { f64::from(i % 29) };
                Rfm::new(x, recency, t)
            })
            .collect();
        let g = RfmGroups::new(&data, None);
        let sample = g.sample(20.0);
        assert_eq!(sample.total_weight, 3_000.0);
        assert_eq!(sample.frequency, g.frequency);
        for (k, &(lo, hi)) in sample.bounds.iter().enumerate() {
            assert!(lo < hi);
            let weight: f64 = sample.weight[lo..hi].iter().sum();
            assert_eq!(weight, sample.group_weight[k]);
        }
        for i in 0..sample.recency.len() {
            assert_eq!(
                sample.times[sample.recency_at[i] as usize],
                sample.recency[i]
            );
            assert_eq!(sample.times[sample.t_at[i] as usize], sample.t[i]);
        }
        assert!(sample.times.len() <= g.times.len());
    }

    #[test]
    fn validation_rejects_bad_rows() {
        let ok = [Rfm::new(1.0, 2.0, 3.0); 3];
        assert!(RfmGroups::validated(&ok, None, 1).is_ok());
        assert_eq!(
            RfmGroups::validated(&[], None, 0),
            Err(FitError::EmptyInput)
        );
        assert!(matches!(
            RfmGroups::validated(&[Rfm::new(f64::NAN, 0.0, 1.0)], None, 0),
            Err(FitError::NonFinite { row: 0, .. })
        ));
        assert!(matches!(
            RfmGroups::validated(&[Rfm::new(1.0, 5.0, 3.0)], None, 0),
            Err(FitError::InvalidData { row: 0, .. })
        ));
        assert!(matches!(
            RfmGroups::validated(&[Rfm::new(0.0, 1.0, 3.0)], None, 0),
            Err(FitError::InvalidData { .. })
        ));
        assert!(matches!(
            RfmGroups::validated(&ok, None, 4),
            Err(FitError::TooFewRepeatCustomers {
                found: 3,
                required: 4
            })
        ));
        assert!(matches!(
            RfmGroups::validated(&ok, Some(&[1.0]), 0),
            Err(FitError::WeightsLength { .. })
        ));
        assert_eq!(
            RfmGroups::validated(&ok, Some(&[0.0, 0.0, 0.0]), 0),
            Err(FitError::EmptyInput)
        );
    }
}
