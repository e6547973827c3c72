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
use crate::interner::Interner;
use crate::scope::{Scope, sql_string};
use crate::segment::Segment;
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
    /// With a breakdown: the same per value, each path under the value of its anchor event
    /// (or of its profile, for a profile's field), most paths first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breakdowns: Vec<PathGroup>,
}

/// The paths of one breakdown value.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PathGroup {
    pub breakdown: String,
    pub paths: u64,
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

/// Each owner's anchor events, to tell which events can be on a path.
struct Anchors {
    /// Anchor times, grouped by owner and in time order within each.
    times: Vec<i64>,
    /// Owner number `o`'s anchors are `times[starts[o]..starts[o + 1]]`.
    starts: Vec<u32>,
}

impl Anchors {
    /// Runs `sql` (columns `id_type`, `id_value`, `micros`: the anchor events).
    async fn gather(
        data: &Data<'_>,
        sql: &str,
        owners: &mut OwnerNumbers<'_>,
        segment: &Segment,
    ) -> Result<Anchors, AnalyticsError> {
        let mut found: Vec<(u32, i64)> = Vec::new();
        let mut owned = Vec::new();
        data.lake
            .query_each(sql, &data.limits, data.tables.clone(), |batch| {
                owners.of_rows(batch, &mut owned);
                let micros = batch.column(2).as_primitive::<Int64Type>();
                for (row, owner) in owned.iter().enumerate() {
                    // Owners outside the segment have no anchors, so no paths.
                    if let Some(owner) = *owner
                        && segment.admits(owner)
                    {
                        found.push((owner, micros.value(row)));
                    }
                }
            })
            .await?;
        Ok(Anchors::from_found(found, owners.bound()))
    }

    /// From `(owner, time)` pairs, every owner number below `bound`.
    fn from_found(mut found: Vec<(u32, i64)>, bound: usize) -> Anchors {
        found.sort_unstable();
        let mut starts = Vec::with_capacity(bound + 1);
        let mut at = 0;
        for owner in 0..=bound as u32 {
            while at < found.len() && found[at].0 < owner {
                at += 1;
            }
            starts.push(at as u32);
        }
        Anchors {
            times: found.into_iter().map(|(_, micros)| micros).collect(),
            starts,
        }
    }

    /// Whether an event of `owner` at `micros` is within `window` of one of its anchors, on the
    /// side paths run: at or after an anchor, or (`before`) at or before one.
    fn near(&self, owner: u32, micros: i64, window: i64, before: bool) -> bool {
        let owner = owner as usize;
        let (Some(&start), Some(&end)) = (self.starts.get(owner), self.starts.get(owner + 1))
        else {
            return false;
        };
        let times = &self.times[start as usize..end as usize];
        let later = times.partition_point(|&t| t < micros);
        if before {
            // The first anchor at or after the event.
            times.get(later).is_some_and(|&t| t - micros <= window)
        } else {
            // The last anchor at or before the event.
            let through = later + times[later..].partition_point(|&t| t == micros);
            through > 0 && micros - times[through - 1] <= window
        }
    }
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

/// The paths from each anchor among one profile's events (in the order paths run, reversed for
/// `before`): the anchor's position among `events`, and the path's labels from the anchor on,
/// ending in [`END`] when it stops short of `depth` steps.
fn paths_of(
    events: &[(i64, String)],
    anchor: &str,
    depth: usize,
    window: i64,
    keep_repeats: bool,
) -> Vec<(usize, Vec<String>)> {
    let mut paths = Vec::new();
    for (start, (at, label)) in events.iter().enumerate() {
        if label != anchor {
            continue;
        }
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
        paths.push((start, path));
    }
    paths
}

impl Counter {
    /// One profile's events, in the order paths run (reversed for `before`).
    #[cfg(test)]
    fn profile(
        &mut self,
        events: &[(i64, String)],
        anchor: &str,
        depth: usize,
        window: i64,
        keep_repeats: bool,
    ) {
        let paths = paths_of(events, anchor, depth, window, keep_repeats);
        self.add_profile(paths.iter().map(|(_, path)| path.as_slice()));
    }

    /// One profile's paths.
    fn add_profile<'p>(&mut self, paths: impl Iterator<Item = &'p [String]>) {
        let mut any = false;
        for path in paths {
            any = true;
            self.paths += 1;
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
        let segment = data.segment(&scope)?;
        let mut owners = OwnerNumbers::new(data.identity_index());
        // First the anchors: only events near one of their owner's anchors (within the window,
        // on the side paths run) can be on a path, and only those are gathered next — at 50
        // million events, gathering every event held 800 MB.
        let anchors = Anchors::gather(
            data,
            &format!(
                "WITH base AS ({base}) SELECT id_type, id_value, micros FROM base \
                 WHERE keep AND label = {}",
                sql_string(&self.event)
            ),
            &mut owners,
            &segment,
        )
        .await?;
        let sql = format!(
            "WITH base AS ({base}) \
             SELECT id_type, id_value, micros, label, keep, breakdown FROM base"
        );
        let breaks_down = scope.breakdown.is_some() || scope.profile_breakdown.is_some();
        // Streamed in any order and kept compactly (16 bytes an event); sorted here. An event's
        // kind is its label and, for anchors, the breakdown value the path counts under.
        let mut rows: Vec<(u32, i64, u32)> = Vec::new();
        let mut labels = Interner::default();
        let mut values = Interner::default();
        let mut kinds: Vec<(u32, u32)> = Vec::new();
        let mut kind_numbers: HashMap<(u32, u32), u32> = HashMap::new();
        data.lake
            .query_each(&sql, &data.limits, data.tables.clone(), |batch| {
                let id_type = strings(batch.column(0).as_ref());
                let id_value = strings(batch.column(1).as_ref());
                let micros = batch.column(2).as_primitive::<Int64Type>();
                let label = strings(batch.column(3).as_ref());
                let keep = batch.column(4).as_boolean();
                let breakdown = strings(batch.column(5).as_ref());
                for row in 0..batch.num_rows() {
                    // Outside the scope (time range, filters)?
                    if !keep.is_valid(row) || !keep.value(row) {
                        continue;
                    }
                    let id_value = batch.column(1).is_valid(row).then(|| id_value(row));
                    let Some(p) = owners.number(id_type(row), id_value) else {
                        continue;
                    };
                    let at = micros.value(row);
                    if !anchors.near(p, at, window, before) {
                        continue;
                    }
                    let label = label(row);
                    let value = if breaks_down && label == self.event {
                        values.number(segment.breakdown(p, breakdown(row)))
                    } else {
                        0
                    };
                    let kind = (labels.number(label), value);
                    let kind = *kind_numbers.entry(kind).or_insert_with(|| {
                        kinds.push(kind);
                        kinds.len() as u32 - 1
                    });
                    rows.push((p, at, kind));
                }
            })
            .await?;
        drop(anchors);
        let labels = labels.into_names();
        let values = values.into_names();
        drop(owners);
        // At one instant, events go in the order of their labels: the answer never depends on
        // how rows happened to be stored.
        let mut rank = vec![0u32; kinds.len()];
        let mut by_name: Vec<u32> = (0..kinds.len() as u32).collect();
        by_name.sort_by_key(|k| {
            let (label, value) = kinds[*k as usize];
            (&labels[label as usize], values.get(value as usize))
        });
        for (position, id) in by_name.into_iter().enumerate() {
            rank[id as usize] = position as u32;
        }
        rows.sort_unstable_by_key(|(p, micros, k)| (*p, *micros, rank[*k as usize]));
        let mut counter = Counter::default();
        // Per breakdown value (by number), with a breakdown.
        let mut groups: BTreeMap<u32, Counter> = BTreeMap::new();
        let mut events: Vec<(i64, String)> = Vec::new();
        let mut event_values: Vec<u32> = Vec::new();
        let mut follow = |events: &mut Vec<(i64, String)>, event_values: &mut Vec<u32>| {
            if before {
                events.reverse();
                event_values.reverse();
            }
            let paths = paths_of(events, &self.event, self.depth, window, self.keep_repeats);
            counter.add_profile(paths.iter().map(|(_, path)| path.as_slice()));
            if breaks_down {
                let mut values_seen: Vec<u32> =
                    paths.iter().map(|(at, _)| event_values[*at]).collect();
                values_seen.sort_unstable();
                values_seen.dedup();
                for value in values_seen {
                    groups.entry(value).or_default().add_profile(
                        paths
                            .iter()
                            .filter(|(at, _)| event_values[*at] == value)
                            .map(|(_, path)| path.as_slice()),
                    );
                }
            }
            events.clear();
            event_values.clear();
        };
        let mut current = None;
        for (p, micros, k) in rows {
            if current != Some(p) {
                follow(&mut events, &mut event_values);
                current = Some(p);
            }
            let (label, value) = kinds[k as usize];
            events.push((micros, labels[label as usize].clone()));
            event_values.push(value);
        }
        follow(&mut events, &mut event_values);
        let mut report = self.report(counter, before);
        report.breakdowns = groups
            .into_iter()
            .map(|(value, counter)| {
                let (nodes, links) = self.layout(&counter);
                PathGroup {
                    breakdown: values.get(value as usize).cloned().unwrap_or_default(),
                    paths: counter.paths,
                    profiles: counter.profiles,
                    nodes,
                    links,
                }
            })
            .collect();
        report
            .breakdowns
            .sort_by(|a, b| b.paths.cmp(&a.paths).then(a.breakdown.cmp(&b.breakdown)));
        Ok(report)
    }

    fn report(&self, counter: Counter, before: bool) -> PathReport {
        let (nodes, links) = self.layout(&counter);
        PathReport {
            direction: if before { "before" } else { "after" }.into(),
            paths: counter.paths,
            profiles: counter.profiles,
            nodes,
            links,
            breakdowns: Vec::new(),
        }
    }

    /// The counted paths as Sankey nodes and links, the `width` most common labels of each
    /// level by name and the rest as `(other)`.
    fn layout(&self, counter: &Counter) -> (Vec<PathNode>, Vec<PathLink>) {
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
        (nodes, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(labels: &[(i64, &str)]) -> Vec<(i64, String)> {
        labels.iter().map(|(t, l)| (*t, l.to_string())).collect()
    }

    #[test]
    fn only_events_within_the_window_of_an_anchor_on_the_paths_side_are_near() {
        // Owner 0: anchors at 100 and 500; owner 1: none; owner 2: one at 50.
        let anchors = Anchors::from_found(vec![(2, 50), (0, 500), (0, 100)], 3);
        let after = |owner, at| anchors.near(owner, at, 10, false);
        let before = |owner, at| anchors.near(owner, at, 10, true);
        assert!(after(0, 100) && after(0, 110) && after(0, 505));
        assert!(!after(0, 111) && !after(0, 99) && !after(0, 499));
        assert!(before(0, 100) && before(0, 90) && before(0, 495));
        assert!(!before(0, 89) && !before(0, 101) && !before(0, 501));
        assert!(!after(1, 100) && !before(1, 100));
        assert!(after(2, 60) && !after(2, 61) && before(2, 40));
        // Numbers given out after the anchors were gathered have none.
        assert!(!after(7, 100));
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
