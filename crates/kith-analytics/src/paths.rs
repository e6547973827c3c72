//! Paths: what people do after (or before) a chosen event, step by step, as the nodes and edges
//! of a Sankey chart.
//!
//! Every occurrence of the anchor event starts a path: the profile's next `depth` events (or the
//! ones before it) within `window` of the anchor, repeats of the same event collapsed unless
//! asked otherwise. A path that stops early ends in `(end)`. At each level only the `width` most
//! common events keep their name; the rest are `(other)`. Events at the same instant are taken in
//! the order of their labels, so the answer never depends on how rows happened to be stored.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use serde::{Deserialize, Serialize};

use crate::funnel::{parse_window, strings};
use crate::identities::OwnerNumbers;
use crate::scope::{Scope, sql_string};
use crate::{AnalyticsError, Data};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PathDefinition {
    #[serde(flatten)]
    pub scope: Scope,
    /// The event paths start from (or, `before`, lead to).
    pub event: String,
    /// `after` or `before` [default: after].
    #[serde(default = "default_direction")]
    pub direction: String,
    /// Steps after the anchor [default: 4, at most 10].
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// How far from the anchor a step may be: `30m`, `1d` [default: 1d].
    #[serde(default = "default_window")]
    pub window: String,
    /// Events left out of paths (e.g. `Email Sent`, which the person did not do).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Keep repeats of the same event as separate steps [default: false].
    #[serde(default)]
    pub keep_repeats: bool,
    /// Named events per level; the rest are `(other)` [default: 8].
    #[serde(default = "default_width")]
    pub width: usize,
}

fn default_direction() -> String {
    "after".into()
}
fn default_depth() -> usize {
    4
}
fn default_window() -> String {
    "1d".into()
}
fn default_width() -> usize {
    8
}

pub const FIELDS: &[&str] = &[
    "event",
    "direction",
    "depth",
    "window",
    "exclude",
    "keep_repeats",
    "width",
];

/// The label of a step that ends a path early.
pub const END: &str = "(end)";
/// The label of the events beyond `width` at a level.
pub const OTHER: &str = "(other)";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PathReport {
    pub direction: String,
    /// Occurrences of the anchor event (paths followed).
    pub paths: u64,
    /// Profiles with at least one.
    pub profiles: u64,
    pub nodes: Vec<PathNode>,
    pub links: Vec<PathLink>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PathNode {
    /// `level:label`, unique: what links refer to.
    pub id: String,
    /// 0 is the anchor; 1 the step after it (before it, for `before`), and so on.
    pub level: usize,
    pub label: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PathLink {
    pub source: String,
    pub target: String,
    pub count: u64,
}

/// Follows one profile's events (in time order) and counts its paths.
#[derive(Default)]
struct Counter {
    /// (level, label) → count; links: (level, from, to) → count.
    nodes: HashMap<(usize, String), u64>,
    links: HashMap<(usize, String, String), u64>,
    paths: u64,
    profiles: u64,
}

impl Counter {
    /// One profile's events, in the order paths run (reversed for `before`).
    fn profile(
        &mut self,
        events: &[(i64, String)],
        anchor: &str,
        depth: usize,
        window: i64,
        keep_repeats: bool,
    ) {
        let mut any = false;
        for (start, (at, label)) in events.iter().enumerate() {
            if label != anchor {
                continue;
            }
            any = true;
            self.paths += 1;
            let mut path = vec![label.clone()];
            for (next_at, next) in &events[start + 1..] {
                if path.len() > depth {
                    break;
                }
                if (next_at - at).abs() > window {
                    break;
                }
                if !keep_repeats && path.last() == Some(next) {
                    continue;
                }
                path.push(next.clone());
            }
            if path.len() <= depth {
                path.push(END.to_string());
            }
            for (level, label) in path.iter().enumerate() {
                *self.nodes.entry((level, label.clone())).or_default() += 1;
                if let Some(next) = path.get(level + 1) {
                    *self
                        .links
                        .entry((level, label.clone(), next.clone()))
                        .or_default() += 1;
                }
            }
        }
        if any {
            self.profiles += 1;
        }
    }
}

impl PathDefinition {
    pub async fn run(&self, data: &Data<'_>) -> Result<PathReport, AnalyticsError> {
        let before = match self.direction.as_str() {
            "after" => false,
            "before" => true,
            other => {
                return Err(AnalyticsError::invalid(
                    "direction",
                    format!("`{other}` is not a direction; use after or before"),
                ));
            }
        };
        if self.event.trim().is_empty() {
            return Err(AnalyticsError::invalid(
                "event",
                "must name the event paths start from",
            ));
        }
        if self.depth == 0 || self.depth > 10 {
            return Err(AnalyticsError::invalid("depth", "must be between 1 and 10"));
        }
        if self.width == 0 {
            return Err(AnalyticsError::invalid("width", "must be at least 1"));
        }
        let window = parse_window(&self.window)? * 1_000_000;
        let scope = self.scope.resolve()?;
        let mut extra = Vec::new();
        if !self.exclude.is_empty() {
            let list: Vec<String> = self.exclude.iter().map(|e| sql_string(e)).collect();
            extra.push(format!(
                "(e.event IS NULL OR e.event NOT IN ({}))",
                list.join(", ")
            ));
        }
        // Track calls by their event; pages and screens by their name, else their path.
        let label = "CASE WHEN e.type = 'track' THEN e.event \
                     WHEN e.type IN ('page', 'screen') THEN CONCAT(e.type, ': ', COALESCE(e.event, e.page_path, '')) \
                     ELSE e.type END";
        // Events with their attribution key, attributed here through the identity index rather
        // than by a join in SQL (see the funnel's `run`).
        let base = scope.keyed_events(
            &extra,
            &[],
            &format!("CAST(e.timestamp AS BIGINT) AS micros, {label} AS label"),
        );
        let sql = format!(
            "WITH base AS ({base}) SELECT id_type, id_value, micros, label, keep FROM base"
        );
        // Streamed in any order and kept compactly (16 bytes an event); sorted here.
        let mut rows: Vec<(u32, i64, u32)> = Vec::with_capacity(data.event_count().await?);
        let mut owners = OwnerNumbers::new(data.identity_index());
        let mut labels: Vec<String> = Vec::new();
        let mut label_ids: HashMap<String, u32> = HashMap::new();
        data.lake
            .query_each(&sql, &data.limits, data.tables.clone(), |batch| {
                let id_type = strings(batch.column(0).as_ref());
                let id_value = strings(batch.column(1).as_ref());
                let micros = batch.column(2).as_primitive::<Int64Type>();
                let label = strings(batch.column(3).as_ref());
                let keep = batch.column(4).as_boolean();
                for row in 0..batch.num_rows() {
                    // Outside the scope (time range, filters)?
                    if !keep.is_valid(row) || !keep.value(row) {
                        continue;
                    }
                    let id_value = batch.column(1).is_valid(row).then(|| id_value(row));
                    let Some(p) = owners.number(id_type(row), id_value) else {
                        continue;
                    };
                    let l = match label_ids.get(label(row)) {
                        Some(id) => *id,
                        None => {
                            let id = labels.len() as u32;
                            labels.push(label(row).to_string());
                            label_ids.insert(label(row).to_string(), id);
                            id
                        }
                    };
                    rows.push((p, micros.value(row), l));
                }
            })
            .await?;
        drop(owners);
        // At one instant, events go in the order of their labels: the answer never depends on
        // how rows happened to be stored.
        let mut rank = vec![0u32; labels.len()];
        let mut by_name: Vec<u32> = (0..labels.len() as u32).collect();
        by_name.sort_by(|a, b| labels[*a as usize].cmp(&labels[*b as usize]));
        for (position, id) in by_name.into_iter().enumerate() {
            rank[id as usize] = position as u32;
        }
        rows.sort_unstable_by_key(|(p, micros, l)| (*p, *micros, rank[*l as usize]));
        let mut counter = Counter::default();
        let mut events: Vec<(i64, String)> = Vec::new();
        let mut current = None;
        for (p, micros, l) in rows {
            if current != Some(p) {
                if before {
                    events.reverse();
                }
                counter.profile(&events, &self.event, self.depth, window, self.keep_repeats);
                events.clear();
                current = Some(p);
            }
            events.push((micros, labels[l as usize].clone()));
        }
        if before {
            events.reverse();
        }
        counter.profile(&events, &self.event, self.depth, window, self.keep_repeats);
        Ok(self.report(counter, before))
    }

    fn report(&self, counter: Counter, before: bool) -> PathReport {
        // The `width` most common labels of each level keep their name.
        let mut by_level: BTreeMap<usize, Vec<(&String, u64)>> = BTreeMap::new();
        for ((level, label), count) in &counter.nodes {
            by_level.entry(*level).or_default().push((label, *count));
        }
        let mut kept: HashMap<(usize, &str), ()> = HashMap::new();
        for (level, labels) in &mut by_level {
            labels.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            for (label, _) in labels.iter().take(self.width) {
                kept.insert((*level, label.as_str()), ());
            }
            // The end of paths is always shown.
            kept.insert((*level, END), ());
        }
        let name = |level: usize, label: &str| -> String {
            if kept.contains_key(&(level, label)) {
                label.to_string()
            } else {
                OTHER.to_string()
            }
        };
        let id = |level: usize, label: &str| format!("{level}:{label}");
        let mut nodes: BTreeMap<(usize, String), u64> = BTreeMap::new();
        for ((level, label), count) in &counter.nodes {
            *nodes.entry((*level, name(*level, label))).or_default() += count;
        }
        let mut links: BTreeMap<(usize, String, String), u64> = BTreeMap::new();
        for ((level, from, to), count) in &counter.links {
            *links
                .entry((*level, name(*level, from), name(level + 1, to)))
                .or_default() += count;
        }
        let mut nodes: Vec<PathNode> = nodes
            .into_iter()
            .map(|((level, label), count)| PathNode {
                id: id(level, &label),
                level,
                label,
                count,
            })
            .collect();
        nodes.sort_by(|a, b| {
            a.level
                .cmp(&b.level)
                .then(b.count.cmp(&a.count))
                .then(a.label.cmp(&b.label))
        });
        let mut links: Vec<PathLink> = links
            .into_iter()
            .map(|((level, from, to), count)| PathLink {
                source: id(level, &from),
                target: id(level + 1, &to),
                count,
            })
            .collect();
        links.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.source.cmp(&b.source))
                .then(a.target.cmp(&b.target))
        });
        PathReport {
            direction: if before { "before" } else { "after" }.into(),
            paths: counter.paths,
            profiles: counter.profiles,
            nodes,
            links,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(labels: &[(i64, &str)]) -> Vec<(i64, String)> {
        labels.iter().map(|(t, l)| (*t, l.to_string())).collect()
    }

    #[test]
    fn paths_collapse_repeats_stop_at_the_window_and_end_early() {
        let mut counter = Counter::default();
        let one = events(&[(0, "A"), (1, "B"), (2, "B"), (3, "C"), (100, "D")]);
        counter.profile(&one, "A", 3, 10, false);
        // A → B → C → (end): the repeat of B collapsed, D beyond the window.
        assert_eq!(counter.nodes[&(1, "B".to_string())], 1);
        assert_eq!(counter.nodes[&(2, "C".to_string())], 1);
        assert_eq!(counter.nodes[&(3, END.to_string())], 1);
        assert_eq!(counter.links[&(0, "A".to_string(), "B".to_string())], 1);
        let mut repeats = Counter::default();
        repeats.profile(&one, "A", 3, 10, true);
        assert_eq!(repeats.nodes[&(2, "B".to_string())], 1);
        // Two anchors in one profile are two paths of one profile.
        let mut twice = Counter::default();
        twice.profile(&events(&[(0, "A"), (1, "A"), (2, "B")]), "A", 1, 10, false);
        assert_eq!((twice.paths, twice.profiles), (2, 1));
    }
}
