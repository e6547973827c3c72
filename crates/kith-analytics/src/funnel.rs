//! Funnels: ordered steps within a conversion window, per-step conversion and drop-off, the time
//! to convert, breakdowns, and a friction report that ranks where customers get stuck.
//!
//! SQL selects the events of the steps (each a bit in a mask, so one event may serve two steps);
//! they are kept compactly, sorted by profile and time, and one pass then follows every profile's
//! attempts
//! ([`Walker`]): for each step it keeps the latest start of an attempt that has reached it, which
//! is the attempt with the most window left. Loose order lets other events happen between
//! steps; strict order ends an attempt at any event in scope that is not its next step. An
//! exclusion event ends every attempt in progress.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::identities::OwnerNumbers;
use crate::interner::Interner;
use crate::scope::{Condition, Scope, sql_string};
use crate::stats::two_proportion_test;
use crate::{AnalyticsError, Data};

/// Most steps a funnel may have.
pub const MAX_STEPS: usize = 32;

/// A funnel step: `{"event": ..., "where": [...], "label": ...}`, or just the event's name.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub event: String,
    /// Conditions the step's event must meet too.
    #[serde(default, rename = "where")]
    pub conditions: Vec<Condition>,
    /// A name for the step in results [default: the event].
    #[serde(default)]
    pub label: Option<String>,
}

/// How a definition may write a step: its event's name alone, or in full.
#[derive(Debug, Clone, PartialEq)]
struct StepForm(Step);

impl<'de> Deserialize<'de> for StepForm {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(event) => Ok(StepForm(Step {
                event,
                conditions: Vec::new(),
                label: None,
            })),
            object @ serde_json::Value::Object(_) => Step::deserialize(object)
                .map(StepForm)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "a step is an event's name or {{\"event\": \"...\", \"where\": [...]}}, found `{other}`"
            ))),
        }
    }
}

fn steps_in_either_form<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Step>, D::Error> {
    let forms: Vec<StepForm> = Deserialize::deserialize(deserializer)?;
    Ok(forms.into_iter().map(|StepForm(step)| step).collect())
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FunnelDefinition {
    #[serde(flatten)]
    pub scope: Scope,
    #[serde(deserialize_with = "steps_in_either_form")]
    pub steps: Vec<Step>,
    /// How long after the first step the last may come: `30m`, `24h`, `7d` [default: 7d].
    #[serde(default = "default_window")]
    pub window: String,
    /// loose (other events may come between steps) or strict (none may) [default: loose].
    #[serde(default = "default_order")]
    pub order: String,
    /// Events that end an attempt in progress.
    #[serde(default, deserialize_with = "steps_in_either_form")]
    pub exclusions: Vec<Step>,
    /// The step whose event gives the breakdown value [default: 0, the first]. Profiles that
    /// never reach it are grouped as `(not reached)`.
    #[serde(default)]
    pub breakdown_step: usize,
    /// profiles (each counted once, at its best attempt) or attempts (every start of the first
    /// step counts; a new start ends the attempt before it) [default: profiles].
    #[serde(default = "default_count")]
    pub count: String,
}

fn default_count() -> String {
    "profiles".into()
}

fn default_window() -> String {
    "7d".into()
}
fn default_order() -> String {
    "loose".into()
}

pub const FIELDS: &[&str] = &[
    "steps",
    "window",
    "order",
    "exclusions",
    "breakdown_step",
    "count",
];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FunnelReport {
    pub window_seconds: i64,
    pub order: String,
    /// `profiles` or `attempts`: what the step counts count.
    pub count: String,
    /// One funnel per breakdown value (one, `all`, without a breakdown).
    pub groups: Vec<FunnelGroup>,
    /// Where customers get stuck, worst first.
    pub friction: Vec<Friction>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FunnelGroup {
    pub breakdown: String,
    pub steps: Vec<StepResult>,
    /// Seconds from the first step to the last, for profiles that converted.
    pub time_to_convert: Option<Distribution>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepResult {
    pub step: String,
    /// Profiles (or attempts) that reached this step and every one before it, in order,
    /// within the window.
    pub profiles: u64,
    /// Of those that reached the previous step (1 for the first).
    pub conversion_from_previous: f64,
    pub conversion_from_start: f64,
    /// Reached the previous step but not this one.
    pub dropped: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Distribution {
    pub count: u64,
    pub mean: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub p90: f64,
}

/// One step transition, for one breakdown value (or overall), against everyone else.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Friction {
    /// `Checkout Started → Payment Submitted`.
    pub transition: String,
    pub breakdown: String,
    /// Profiles that reached the transition's first step.
    pub profiles: u64,
    pub conversion: f64,
    /// The same transition's conversion for every other breakdown value together.
    pub others_conversion: f64,
    /// conversion − others_conversion.
    pub difference: f64,
    /// Profiles lost compared with converting at the others' rate.
    pub excess_drop_off: f64,
    pub z: f64,
    pub p_value: f64,
    /// p below 0.05 after a Bonferroni correction for every comparison made.
    pub significant: bool,
}

/// `30m`, `24h`, `7d`, `2w` (or `7 days`, `24 hours`), as seconds. A bare number is refused:
/// read as seconds, `"7"` meant to be a week would end every journey after its first step.
pub fn parse_window(text: &str) -> Result<i64, AnalyticsError> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    // Whole units only: `1.5d` is 36h, `0.5h` 30m.
    if !digits.is_empty()
        && unit.starts_with(['.', ','])
        && unit[1..].starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(AnalyticsError::invalid(
            "window",
            format!("`{text}` is not a whole number; write whole units, such as 36h for 1.5d"),
        ));
    }
    let amount: i64 = digits.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        AnalyticsError::invalid(
            "window",
            format!("`{text}` is not a duration; use e.g. 30m, 24h or 7d"),
        )
    })?;
    // Words in any case; a single letter as written, so `1M` (a month?) is not read as a minute.
    let unit = unit.trim();
    let unit = if unit.len() > 1 {
        unit.to_ascii_lowercase()
    } else {
        unit.to_string()
    };
    let seconds = match unit.as_str() {
        "" => {
            return Err(AnalyticsError::invalid(
                "window",
                format!(
                    "`{amount}` has no unit of time; write {amount}d for days, {amount}h for \
                     hours, {amount}m for minutes or {amount}s for seconds"
                ),
            ));
        }
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        _ => {
            return Err(AnalyticsError::invalid(
                "window",
                format!(
                    "`{unit}` is not a unit of time; use s, m, h, d or w (or seconds, minutes, \
                     hours, days, weeks), e.g. 30m, 24h or 7d"
                ),
            ));
        }
    };
    amount
        .checked_mul(seconds)
        .filter(|s| *s <= 366 * 86_400 * 10)
        .ok_or_else(|| AnalyticsError::invalid("window", "must be at most ten years"))
}

/// One attempt: when it started and the breakdown value it carries.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    start: i64,
    breakdown: Option<u32>,
}

/// What one attempt (or one profile's best attempt) came to: the deepest step reached, its
/// breakdown value, and the time to convert when it reached the last step.
pub type Outcome = (usize, Option<u32>, Option<i64>);

/// An attempt followed on its own (counting attempts).
#[derive(Debug, Clone, Copy)]
struct Current {
    start: i64,
    /// The step reached so far.
    step: usize,
    breakdown: Option<u32>,
}

/// Follows one profile's events through the funnel.
pub struct Walker {
    steps: usize,
    window_micros: i64,
    strict: bool,
    breakdown_step: usize,
    /// Count every attempt (each first-step event starts one and ends the one before) instead
    /// of each profile's best.
    attempts: bool,
    /// For each step, the attempt with the latest start that has reached it (profiles).
    reached: Vec<Option<Attempt>>,
    /// The profile's best so far (profiles).
    best: Option<Outcome>,
    /// The attempt in progress (attempts).
    current: Option<Current>,
    /// Finished attempts (attempts).
    done: Vec<Outcome>,
}

impl Walker {
    pub fn new(
        steps: usize,
        window_micros: i64,
        strict: bool,
        breakdown_step: usize,
        attempts: bool,
    ) -> Walker {
        Walker {
            steps,
            window_micros,
            strict,
            breakdown_step,
            attempts,
            reached: vec![None; steps],
            best: None,
            current: None,
            done: Vec::new(),
        }
    }

    /// Ends the profile: what it came to (its best attempt, or each of its attempts).
    pub fn end_profile(&mut self) -> Vec<Outcome> {
        self.reached.iter_mut().for_each(|r| *r = None);
        self.close_current();
        let mut outcomes = std::mem::take(&mut self.done);
        outcomes.extend(self.best.take());
        outcomes
    }

    fn close_current(&mut self) {
        if let Some(current) = self.current.take() {
            self.done.push((current.step, current.breakdown, None));
        }
    }

    /// One event: `steps` has bit i set when the event is step i; `breakdown` is its value.
    pub fn event(&mut self, at: i64, steps: u64, excluded: bool, breakdown: u32) {
        if self.attempts {
            self.attempt_event(at, steps, excluded, breakdown);
        } else {
            self.profile_event(at, steps, excluded, breakdown);
        }
    }

    fn attempt_event(&mut self, at: i64, steps: u64, excluded: bool, breakdown: u32) {
        if excluded {
            self.close_current();
            return;
        }
        if let Some(current) = self.current
            && at - current.start > self.window_micros
        {
            self.close_current();
        }
        if let Some(mut current) = self.current {
            let next = current.step + 1;
            if steps & (1 << next) != 0 {
                current.step = next;
                if next == self.breakdown_step {
                    current.breakdown = Some(breakdown);
                }
                if next + 1 == self.steps {
                    self.done
                        .push((next, current.breakdown, Some(at - current.start)));
                    self.current = None;
                } else {
                    self.current = Some(current);
                }
                return;
            }
            if self.strict {
                self.close_current();
            }
        }
        if steps & 1 == 1 {
            self.close_current();
            self.current = Some(Current {
                start: at,
                step: 0,
                breakdown: (self.breakdown_step == 0).then_some(breakdown),
            });
        }
    }

    fn profile_event(&mut self, at: i64, steps: u64, excluded: bool, breakdown: u32) {
        if excluded {
            self.reached.iter_mut().for_each(|r| *r = None);
            return;
        }
        let mut next = if self.strict {
            vec![None; self.steps]
        } else {
            self.reached.clone()
        };
        // Deepest first, so one event never serves two consecutive steps of one attempt.
        for k in (1..self.steps).rev() {
            if steps & (1 << k) == 0 {
                continue;
            }
            let Some(mut attempt) = self.reached[k - 1] else {
                continue;
            };
            if at - attempt.start > self.window_micros {
                continue;
            }
            if k == self.breakdown_step {
                attempt.breakdown = Some(breakdown);
            }
            if next[k].is_none_or(|r: Attempt| r.start <= attempt.start) {
                next[k] = Some(attempt);
            }
            self.record(k, attempt, at);
        }
        if steps & 1 == 1 {
            let attempt = Attempt {
                start: at,
                breakdown: (self.breakdown_step == 0).then_some(breakdown),
            };
            next[0] = Some(attempt);
            self.record(0, attempt, at);
        }
        self.reached = next;
    }

    fn record(&mut self, step: usize, attempt: Attempt, at: i64) {
        let converted = (step + 1 == self.steps).then_some(at - attempt.start);
        let better = match self.best {
            None => true,
            Some((deepest, _, time)) => {
                step > deepest
                    || (step == deepest
                        && converted.is_some()
                        && time.is_none_or(|t| converted.is_some_and(|c| c < t)))
            }
        };
        if better {
            self.best = Some((step, attempt.breakdown, converted));
        }
    }
}

impl FunnelDefinition {
    pub async fn run(&self, data: &Data<'_>) -> Result<FunnelReport, AnalyticsError> {
        if self.steps.len() < 2 || self.steps.len() > MAX_STEPS {
            return Err(AnalyticsError::invalid(
                "steps",
                format!("must hold between 2 and {MAX_STEPS} steps"),
            ));
        }
        if self.breakdown_step >= self.steps.len() {
            return Err(AnalyticsError::invalid(
                "breakdown_step",
                format!("must be a step's position, 0 to {}", self.steps.len() - 1),
            ));
        }
        let strict = match self.order.as_str() {
            "loose" => false,
            "strict" => true,
            other => {
                return Err(AnalyticsError::invalid(
                    "order",
                    format!("`{other}` is not an order; use loose or strict"),
                ));
            }
        };
        let window = parse_window(&self.window)?;
        let scope = self.scope.resolve()?;
        let matches = |step: &Step, at: &str| -> Result<String, AnalyticsError> {
            if step.event.trim().is_empty() {
                return Err(AnalyticsError::invalid(
                    &format!("{at}.event"),
                    "must not be empty",
                ));
            }
            let mut parts = vec![format!("e.event = {}", sql_string(&step.event))];
            for (i, condition) in step.conditions.iter().enumerate() {
                parts.push(condition.sql("e", &format!("{at}.where[{i}]"))?);
            }
            Ok(format!("({})", parts.join(" AND ")))
        };
        let mut step_sql = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            step_sql.push(matches(step, &format!("steps[{i}]"))?);
        }
        let mut exclusion_sql = Vec::new();
        for (i, step) in self.exclusions.iter().enumerate() {
            exclusion_sql.push(matches(step, &format!("exclusions[{i}]"))?);
        }
        let mask = step_sql
            .iter()
            .enumerate()
            .map(|(i, s)| format!("CASE WHEN {s} THEN {} ELSE 0 END", 1u64 << i))
            .collect::<Vec<_>>()
            .join(" + ");
        let excluded = if exclusion_sql.is_empty() {
            "0".to_string()
        } else {
            format!("CASE WHEN {} THEN 1 ELSE 0 END", exclusion_sql.join(" OR "))
        };
        // Strict order must see every event in scope: any other event ends an attempt.
        let relevant = if strict {
            Vec::new()
        } else {
            vec![format!(
                "({})",
                step_sql
                    .iter()
                    .chain(&exclusion_sql)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" OR ")
            )]
        };
        // Events with their attribution key, attributed here through the identity index rather
        // than by a join in SQL: at 50 million events the join's build side (2.6 million
        // identifiers) did not fit the query's memory alongside the scan.
        let base = scope.keyed_events(
            &relevant,
            &[],
            &format!(
                "CAST(e.timestamp AS BIGINT) AS micros, CAST({mask} AS BIGINT) AS steps, \
                 CAST({excluded} AS BIGINT) AS excluded"
            ),
        );
        let sql = format!(
            "WITH base AS ({base}) \
             SELECT id_type, id_value, micros, steps, excluded, breakdown, keep FROM base"
        );
        let attempts = match self.count.as_str() {
            "profiles" => false,
            "attempts" => true,
            other => {
                return Err(AnalyticsError::invalid(
                    "count",
                    format!("`{other}` is not a count; use profiles or attempts"),
                ));
            }
        };
        // The events stream in any order and are kept compactly (profile and breakdown as
        // numbers); sorting them here costs less memory than a sort of the rows in SQL.
        let mut events = CompactEvents {
            rows: Vec::with_capacity(data.event_count().await?),
            ..CompactEvents::default()
        };
        let segment = data.segment(&scope)?;
        let mut owners = OwnerNumbers::new(data.identity_index());
        data.lake
            .query_each(&sql, &data.limits, data.tables.clone(), |batch| {
                let id_type = strings(batch.column(0).as_ref());
                let id_value = strings(batch.column(1).as_ref());
                let micros = batch.column(2).as_primitive::<Int64Type>();
                let steps = batch.column(3).as_primitive::<Int64Type>();
                let excluded = batch.column(4).as_primitive::<Int64Type>();
                let breakdown = strings(batch.column(5).as_ref());
                let keep = batch.column(6).as_boolean();
                for row in 0..batch.num_rows() {
                    // Outside the scope (time range, filters)?
                    if !keep.is_valid(row) || !keep.value(row) {
                        continue;
                    }
                    let id_value = batch.column(1).is_valid(row).then(|| id_value(row));
                    let Some(owner) = owners.number(id_type(row), id_value) else {
                        continue;
                    };
                    if !segment.admits(owner) {
                        continue;
                    }
                    events.push(
                        owner,
                        micros.value(row),
                        steps.value(row) as u64,
                        excluded.value(row) != 0,
                        segment.breakdown(owner, breakdown(row)),
                    );
                }
            })
            .await?;
        let (rows, kinds, values) = events.sorted();
        let mut walker = Walker::new(
            self.steps.len(),
            window * 1_000_000,
            strict,
            // A profile's own value is known from its first step on: every profile counts
            // under it, whichever step `breakdown_step` names.
            if scope.profile_breakdown.is_some() {
                0
            } else {
                self.breakdown_step
            },
            attempts,
        );
        let mut tally = Tally::default();
        let mut current = None;
        for row in &rows {
            if current != Some(row.profile) {
                tally.add(walker.end_profile());
                current = Some(row.profile);
            }
            let kind = kinds[row.kind as usize];
            walker.event(
                row.micros,
                kind.mask & !EXCLUDED,
                kind.mask & EXCLUDED != 0,
                kind.breakdown,
            );
        }
        tally.add(walker.end_profile());
        Ok(self.report(tally, &values, window, strict))
    }

    fn report(&self, tally: Tally, values: &[String], window: i64, strict: bool) -> FunnelReport {
        let names: Vec<String> = self
            .steps
            .iter()
            .map(|s| s.label.clone().unwrap_or_else(|| s.event.clone()))
            .collect();
        let value_name = |id: Option<u32>| match id {
            Some(id) => values.get(id as usize).cloned().unwrap_or_default(),
            None => "(not reached)".to_string(),
        };
        let groups: Vec<FunnelGroup> = tally
            .groups
            .iter()
            .map(|(id, group)| {
                let reached = group.reached(self.steps.len());
                FunnelGroup {
                    breakdown: value_name(*id),
                    steps: step_results(&names, &reached),
                    time_to_convert: distribution(&group.times),
                }
            })
            .collect();
        let friction = friction(&names, &tally, &value_name, self.steps.len());
        FunnelReport {
            window_seconds: window,
            order: if strict { "strict" } else { "loose" }.into(),
            count: self.count.clone(),
            groups,
            friction,
        }
    }
}

/// The bit of a compact event's mask that marks an exclusion (steps use the low 32).
const EXCLUDED: u64 = 1 << 63;

/// One event, compactly: 16 bytes, whatever the length of its profile id. What it matched
/// (steps, exclusion) and its breakdown value together are its kind: funnels see few kinds,
/// numbered in [`CompactEvents`], so events need not carry them.
#[derive(Debug, Clone, Copy)]
struct CompactEvent {
    profile: u32,
    kind: u32,
    micros: i64,
}

/// What events of one kind matched and their breakdown value's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Kind {
    /// Step bits, and [`EXCLUDED`].
    mask: u64,
    breakdown: u32,
}

/// Events gathered in any order, owners numbered by [`OwnerNumbers`], and breakdown values and
/// kinds numbered as they come.
#[derive(Default)]
struct CompactEvents {
    rows: Vec<CompactEvent>,
    values: Interner,
    kinds: Vec<Kind>,
    kind_ids: HashMap<Kind, u32>,
}

impl CompactEvents {
    fn push(&mut self, profile: u32, micros: i64, steps: u64, excluded: bool, breakdown: &str) {
        let breakdown = self.values.number(breakdown);
        let kind = Kind {
            mask: steps | if excluded { EXCLUDED } else { 0 },
            breakdown,
        };
        let kind = *self.kind_ids.entry(kind).or_insert_with(|| {
            self.kinds.push(kind);
            self.kinds.len() as u32 - 1
        });
        self.rows.push(CompactEvent {
            profile,
            kind,
            micros,
        });
    }

    /// Each profile's events together in time order — at one instant, events of later steps
    /// first, so no step counts as following another of the same instant — with the kinds and
    /// the breakdown values by number.
    fn sorted(self) -> (Vec<CompactEvent>, Vec<Kind>, Vec<String>) {
        // Each kind's place among the kinds by step bits, highest first, so the sort compares
        // numbers only.
        let mut order: Vec<u32> = (0..self.kinds.len() as u32).collect();
        order.sort_by_key(|&k| std::cmp::Reverse(self.kinds[k as usize].mask & !EXCLUDED));
        let mut rank = vec![0u32; self.kinds.len()];
        for (place, kind) in order.into_iter().enumerate() {
            rank[kind as usize] = place as u32;
        }
        let mut rows = self.rows;
        rows.sort_unstable_by_key(|row| (row.profile, row.micros, rank[row.kind as usize]));
        (rows, self.kinds, self.values.into_names())
    }
}

/// Reads a string column whatever its string type.
pub(crate) fn strings<'a>(array: &'a dyn Array) -> Box<dyn Fn(usize) -> &'a str + 'a> {
    match array.data_type() {
        DataType::Utf8View => {
            let a = array.as_string_view();
            Box::new(move |i| if a.is_null(i) { "" } else { a.value(i) })
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            Box::new(move |i| if a.is_null(i) { "" } else { a.value(i) })
        }
        _ => match array.as_string_opt::<i32>() {
            Some(a) => Box::new(move |i| if a.is_null(i) { "" } else { a.value(i) }),
            None => Box::new(|_| ""),
        },
    }
}

/// Deepest step per profile, by breakdown value.
#[derive(Default)]
struct Tally {
    groups: BTreeMap<Option<u32>, Group>,
}

#[derive(Default)]
struct Group {
    /// Profiles whose deepest step is i.
    deepest: Vec<u64>,
    times: Vec<f64>,
}

impl Group {
    /// Profiles that reached each step.
    fn reached(&self, steps: usize) -> Vec<u64> {
        let mut reached = vec![0u64; steps];
        let mut running = 0;
        for k in (0..steps).rev() {
            running += self.deepest.get(k).copied().unwrap_or(0);
            reached[k] = running;
        }
        reached
    }
}

impl Tally {
    fn add(&mut self, outcomes: Vec<Outcome>) {
        for (deepest, breakdown, time) in outcomes {
            let group = self.groups.entry(breakdown).or_default();
            if group.deepest.len() <= deepest {
                group.deepest.resize(deepest + 1, 0);
            }
            group.deepest[deepest] += 1;
            if let Some(micros) = time {
                group.times.push(micros as f64 / 1e6);
            }
        }
    }
}

fn step_results(names: &[String], reached: &[u64]) -> Vec<StepResult> {
    let start = reached.first().copied().unwrap_or(0).max(1) as f64;
    names
        .iter()
        .zip(reached)
        .enumerate()
        .map(|(k, (name, &profiles))| {
            let previous = if k == 0 { profiles } else { reached[k - 1] };
            StepResult {
                step: name.clone(),
                profiles,
                conversion_from_previous: if previous == 0 {
                    0.0
                } else {
                    profiles as f64 / previous as f64
                },
                conversion_from_start: profiles as f64 / start,
                dropped: previous - profiles,
            }
        })
        .collect()
}

fn distribution(times: &[f64]) -> Option<Distribution> {
    if times.is_empty() {
        return None;
    }
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let position = q * (sorted.len() - 1) as f64;
        let (low, high) = (position.floor() as usize, position.ceil() as usize);
        sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
    };
    Some(Distribution {
        count: sorted.len() as u64,
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        p25: quantile(0.25),
        median: quantile(0.5),
        p75: quantile(0.75),
        p90: quantile(0.9),
    })
}

/// Each transition for each breakdown value against all other values; without a breakdown,
/// each transition's drop-off alone.
fn friction(
    names: &[String],
    tally: &Tally,
    value_name: &dyn Fn(Option<u32>) -> String,
    steps: usize,
) -> Vec<Friction> {
    let reached: Vec<(Option<u32>, Vec<u64>)> = tally
        .groups
        .iter()
        .map(|(id, g)| (*id, g.reached(steps)))
        .collect();
    let mut out = Vec::new();
    for k in 0..steps - 1 {
        let transition = format!("{} → {}", names[k], names[k + 1]);
        let total_at: u64 = reached.iter().map(|(_, r)| r[k]).sum();
        let total_next: u64 = reached.iter().map(|(_, r)| r[k + 1]).sum();
        if reached.len() == 1 {
            let conversion = total_next as f64 / total_at.max(1) as f64;
            out.push(Friction {
                transition,
                breakdown: value_name(reached[0].0),
                profiles: total_at,
                conversion,
                others_conversion: f64::NAN,
                difference: 0.0,
                excess_drop_off: (total_at - total_next) as f64,
                z: 0.0,
                p_value: 1.0,
                significant: false,
            });
            continue;
        }
        for (id, r) in &reached {
            let (n, x) = (r[k], r[k + 1]);
            let (others_n, others_x) = (total_at - n, total_next - x);
            if n == 0 || others_n == 0 {
                continue;
            }
            let test = two_proportion_test(x, n, others_x, others_n);
            let conversion = x as f64 / n as f64;
            let others_conversion = others_x as f64 / others_n as f64;
            out.push(Friction {
                transition: transition.clone(),
                breakdown: value_name(*id),
                profiles: n,
                conversion,
                others_conversion,
                difference: conversion - others_conversion,
                excess_drop_off: (others_conversion - conversion) * n as f64,
                z: test.z,
                p_value: test.p_value,
                significant: false,
            });
        }
    }
    let comparisons = out.len().max(1) as f64;
    for f in &mut out {
        f.significant = f.p_value * comparisons < 0.05 && f.difference != 0.0;
        if f.others_conversion.is_nan() {
            f.others_conversion = f.conversion;
        }
    }
    out.sort_by(|a, b| b.excess_drop_off.total_cmp(&a.excess_drop_off));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;

    fn walk_all(strict: bool, attempts: bool, events: &[(i64, u64, bool)]) -> Vec<Outcome> {
        let mut walker = Walker::new(3, 24 * HOUR, strict, 0, attempts);
        for &(at, steps, excluded) in events {
            walker.event(at * HOUR, steps, excluded, 7);
        }
        walker.end_profile()
    }

    #[test]
    fn gathered_events_take_sixteen_bytes_and_sort_later_steps_first_at_one_instant() {
        assert_eq!(std::mem::size_of::<CompactEvent>(), 16);
        let mut events = CompactEvents::default();
        events.push(2, 50, 0b001, false, "web");
        events.push(1, 70, 0b100, false, "ios");
        events.push(1, 70, 0b010, false, "web");
        events.push(1, 60, 0, true, "web");
        let (rows, kinds, values) = events.sorted();
        let seen: Vec<(u32, i64, u64, bool, &str)> = rows
            .iter()
            .map(|row| {
                let kind = kinds[row.kind as usize];
                (
                    row.profile,
                    row.micros,
                    kind.mask & !EXCLUDED,
                    kind.mask & EXCLUDED != 0,
                    values[kind.breakdown as usize].as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (1, 60, 0, true, "web"),
                (1, 70, 0b100, false, "ios"),
                (1, 70, 0b010, false, "web"),
                (2, 50, 0b001, false, "web"),
            ]
        );
    }

    fn walk(strict: bool, events: &[(i64, u64, bool)]) -> Option<Outcome> {
        let outcomes = walk_all(strict, false, events);
        assert!(outcomes.len() <= 1);
        outcomes.first().copied()
    }

    #[test]
    fn counting_attempts_scores_each_start_on_its_own() {
        // A fails (excluded), A again, B, C: one attempt stuck at A, one converted.
        let events = [
            (0, 1, false),
            (0, 0, true),
            (1, 1, false),
            (2, 2, false),
            (3, 4, false),
        ];
        assert_eq!(
            walk_all(false, true, &events),
            vec![(0, Some(7), None), (2, Some(7), Some(2 * HOUR))]
        );
        // A new start ends the attempt before it, even without an exclusion.
        let restarted = [(0, 1, false), (1, 1, false), (2, 2, false)];
        assert_eq!(
            walk_all(false, true, &restarted),
            vec![(0, Some(7), None), (1, Some(7), None)]
        );
        // Counting profiles, the same events give one converted profile.
        assert_eq!(walk(false, &events).unwrap().0, 2);
    }

    #[test]
    fn attempts_follow_order_window_and_exclusions() {
        // A, B, C within a day: converted in 2 hours.
        assert_eq!(
            walk(false, &[(0, 1, false), (1, 2, false), (2, 4, false)]),
            Some((2, Some(7), Some(2 * HOUR)))
        );
        // C before B does not count.
        assert_eq!(
            walk(false, &[(0, 1, false), (1, 4, false), (2, 2, false)])
                .unwrap()
                .0,
            1
        );
        // Too late: C 25 hours after A; but a later A restarts within the window.
        assert_eq!(
            walk(false, &[(0, 1, false), (1, 2, false), (25, 4, false)])
                .unwrap()
                .0,
            1
        );
        assert_eq!(
            walk(
                false,
                &[
                    (0, 1, false),
                    (20, 1, false),
                    (21, 2, false),
                    (30, 4, false)
                ]
            ),
            Some((2, Some(7), Some(10 * HOUR)))
        );
        // One event serving two steps (bits 0 and 1) advances one step only.
        assert_eq!(walk(false, &[(0, 3, false)]).unwrap().0, 0);
        // An exclusion ends the attempt.
        assert_eq!(
            walk(
                false,
                &[(0, 1, false), (1, 2, false), (2, 0, true), (3, 4, false)]
            )
            .unwrap()
            .0,
            1
        );
        // Strict order: any other event in between ends it; loose order does not care.
        let with_noise = [(0, 1, false), (1, 0, false), (2, 2, false), (3, 4, false)];
        assert_eq!(walk(true, &with_noise).unwrap().0, 0);
        assert_eq!(walk(false, &with_noise).unwrap().0, 2);
    }

    #[test]
    fn a_step_is_an_event_name_or_written_in_full() {
        let definition: FunnelDefinition = serde_json::from_value(serde_json::json!({
            "steps": ["Product Viewed", {"event": "Order Completed", "label": "paid"}],
            "exclusions": ["Refund Issued"]
        }))
        .unwrap();
        assert_eq!(
            definition
                .steps
                .iter()
                .map(|s| (s.event.as_str(), s.label.as_deref()))
                .collect::<Vec<_>>(),
            [("Product Viewed", None), ("Order Completed", Some("paid"))]
        );
        assert_eq!(definition.exclusions[0].event, "Refund Issued");
        let wrong = serde_json::from_value::<FunnelDefinition>(serde_json::json!({"steps": [3]}))
            .unwrap_err()
            .to_string();
        assert!(
            wrong.starts_with(
                "a step is an event's name or {\"event\": \"...\", \"where\": [...]}, found `3`"
            ),
            "{wrong}"
        );
        // A step written in full still refuses a field it does not know.
        let typo = serde_json::from_value::<FunnelDefinition>(
            serde_json::json!({"steps": [{"event": "A", "lable": "x"}]}),
        )
        .unwrap_err()
        .to_string();
        assert!(typo.contains("unknown field `lable`"), "{typo}");
    }

    #[test]
    fn windows_parse_with_units_and_bad_ones_are_named() {
        assert_eq!(parse_window("7d").unwrap(), 604_800);
        assert_eq!(parse_window("30m").unwrap(), 1800);
        assert_eq!(parse_window("90s").unwrap(), 90);
        assert_eq!(
            parse_window("7").unwrap_err().to_string(),
            "`window` `7` has no unit of time; write 7d for days, 7h for hours, 7m for minutes or \
             7s for seconds"
        );
        assert_eq!(
            parse_window("1.5d").unwrap_err().to_string(),
            "`window` `1.5d` is not a whole number; write whole units, such as 36h for 1.5d"
        );
        assert!(
            parse_window("0.5h")
                .unwrap_err()
                .to_string()
                .contains("is not a whole number"),
        );
        // Units written out, as people write them.
        assert_eq!(parse_window("7 days").unwrap(), 604_800);
        assert_eq!(parse_window("24 Hours").unwrap(), 86_400);
        assert_eq!(parse_window("1 week").unwrap(), 604_800);
        assert_eq!(parse_window("45 min").unwrap(), 2700);
        let unknown = parse_window("3 fortnights").unwrap_err().to_string();
        assert!(
            unknown.contains("`fortnights` is not a unit of time"),
            "{unknown}"
        );
        for bad in ["", "d", "0h", "3y", "-1d", "1M"] {
            assert_eq!(
                parse_window(bad).unwrap_err().field(),
                Some("window"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_friction_report_singles_out_the_value_that_converts_worse() {
        let mut tally = Tally::default();
        // Value 0 (card): 1000 reach step 1, 800 pay. Value 1 (wallet): 1000 reach, 500 pay.
        tally.groups.insert(
            Some(0),
            Group {
                deepest: vec![0, 200, 800],
                times: vec![],
            },
        );
        tally.groups.insert(
            Some(1),
            Group {
                deepest: vec![0, 500, 500],
                times: vec![],
            },
        );
        let names = vec!["A".to_string(), "B".into(), "C".into()];
        let values = ["card".to_string(), "wallet".to_string()];
        let name = |id: Option<u32>| id.map(|i| values[i as usize].clone()).unwrap_or_default();
        let report = friction(&names, &tally, &name, 3);
        let worst = &report[0];
        assert_eq!(
            (worst.transition.as_str(), worst.breakdown.as_str()),
            ("B → C", "wallet")
        );
        assert!((worst.excess_drop_off - 300.0).abs() < 1e-9);
        assert!(worst.significant && worst.p_value < 1e-10, "{worst:?}");
        // Everyone reached B: the A → B transition shows no difference and is not significant.
        assert!(
            report
                .iter()
                .filter(|f| f.transition == "A → B")
                .all(|f| !f.significant)
        );
    }
}
