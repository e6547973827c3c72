//! Why a report came back empty, when the reason is a name: an analysis naming an event no event
//! has (`Product Viewd`, `order completed`) answers zeros like one whose events simply fall
//! outside its scope. Only a report that found nothing for an event it names is looked into (an
//! empty report, a funnel step no one reached), so an answer with something in every part costs
//! nothing more.

use kith_lake::query::nearest_name;

use crate::scope::sql_string;
use crate::{AnalyticsError, Data, text};

/// Event names read to find a near one; a catalogue larger than this is only checked for the
/// names themselves.
const MOST_NAMES_READ: usize = 10_000;

/// A catalogue of at most this many names is listed whole when no name is near.
const MOST_NAMES_LISTED: usize = 30;

/// A note for each of `named` that no stored event has, with the nearest name that one has.
pub async fn notes(data: &Data<'_>, named: &[&str]) -> Result<Vec<String>, AnalyticsError> {
    if named.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen: Vec<String> = Vec::new();
    data.each_row(
        &format!(
            "SELECT event FROM events WHERE event IS NOT NULL GROUP BY event LIMIT {}",
            MOST_NAMES_READ + 1
        ),
        |row| seen.push(text(&row[0])),
    )
    .await?;
    let every_name_read = seen.len() <= MOST_NAMES_READ;
    let mut missing: Vec<&str> = Vec::new();
    for name in named {
        if !seen.iter().any(|s| s == name) && !missing.contains(name) {
            missing.push(name);
        }
    }
    if !every_name_read && !missing.is_empty() {
        // Not all names were read: ask for the missing ones themselves.
        let list: Vec<String> = missing.iter().map(|name| sql_string(name)).collect();
        let mut found: Vec<String> = Vec::new();
        data.each_row(
            &format!(
                "SELECT event FROM events WHERE event IN ({}) GROUP BY event",
                list.join(", ")
            ),
            |row| found.push(text(&row[0])),
        )
        .await?;
        missing.retain(|name| !found.iter().any(|f| f == name));
    }
    seen.sort();
    Ok(missing
        .into_iter()
        .map(|name| {
            let near = every_name_read
                .then(|| nearest_name(name, seen.iter().map(String::as_str)))
                .flatten();
            match near {
                Some(near) => format!("no event is named `{name}`; did you mean `{near}`?"),
                None if seen.is_empty() => format!("no event is named `{name}`: no events yet"),
                None if seen.len() <= MOST_NAMES_LISTED => format!(
                    "no event is named `{name}` (the events there are: {})",
                    seen.join(", ")
                ),
                None => format!(
                    "no event is named `{name}` (`SELECT event, count(*) FROM events GROUP BY \
                     event` lists the {} names there are)",
                    if every_name_read {
                        seen.len().to_string()
                    } else {
                        format!("more than {MOST_NAMES_READ}")
                    }
                ),
            }
        })
        .collect())
}
