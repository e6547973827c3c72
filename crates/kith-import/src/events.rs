//! Events from files: Segment-shaped JSON lines as they are ([`SegmentLineImporter`]), and flat
//! rows — a CSV, Parquet or JSONL export of another tool, one event a row — through a column
//! mapping ([`FlatEventImporter`]). Either way each row becomes the Segment event it describes
//! and is judged by the same rules as an item of `/v1/batch`, so a file import and a tracking
//! call store the same thing.

use std::collections::BTreeMap;

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::mapping::{MappingError, plan_columns, trait_name};
use crate::reader::{BadRow, Row, text_of};
use crate::rejects::{Action, Problem};
use crate::time::TimeParser;
use crate::transactions::Columns;
use crate::{RowOutcome, message_id};

/// What a column of a flat events file holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventField {
    /// The Segment call: track (the default), page, screen, identify, group.
    Type,
    /// The event's name (a page's or screen's name for those calls).
    Event,
    UserId,
    AnonymousId,
    /// Stored as `context.traits.email` (`traits.email` on identify), where identity reads it.
    Email,
    Timestamp,
    /// The event's own id: a re-sent row with the same id is stored once.
    MessageId,
    /// Kept under this name in `properties` (`traits` on identify and group rows).
    Property(String),
    /// Kept under this name in `traits`, whatever the call.
    Trait(String),
    Ignore,
}

const FIELDS: &str =
    "type, event, user_id, anonymous_id, email, timestamp, message_id, property:NAME or trait:NAME";

impl EventField {
    pub fn parse(text: &str) -> Result<EventField, MappingError> {
        let text = text.trim();
        Ok(match text {
            "type" => EventField::Type,
            "event" | "name" => EventField::Event,
            "user_id" | "userId" => EventField::UserId,
            "anonymous_id" | "anonymousId" => EventField::AnonymousId,
            "email" => EventField::Email,
            "timestamp" | "time" | "date" => EventField::Timestamp,
            "message_id" | "messageId" => EventField::MessageId,
            other => {
                let named = |prefix: &str| {
                    other
                        .strip_prefix(prefix)
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                };
                if let Some(name) = named("property:") {
                    EventField::Property(name)
                } else if let Some(name) = named("trait:") {
                    EventField::Trait(name)
                } else {
                    return Err(MappingError::UnknownField {
                        field: other.to_string(),
                        allowed: FIELDS,
                    });
                }
            }
        })
    }

    pub fn describe(&self) -> String {
        match self {
            EventField::Type => "type".into(),
            EventField::Event => "event".into(),
            EventField::UserId => "user_id".into(),
            EventField::AnonymousId => "anonymous_id".into(),
            EventField::Email => "email".into(),
            EventField::Timestamp => "timestamp".into(),
            EventField::MessageId => "message_id".into(),
            EventField::Property(name) => format!("property:{name}"),
            EventField::Trait(name) => format!("trait:{name}"),
            EventField::Ignore => "ignored".into(),
        }
    }
}

/// Usual column names (squashed: lower case, letters and digits only) of each field.
const KNOWN: &[(&[&str], EventField)] = &[
    (&["type", "calltype", "tipo"], EventField::Type),
    (
        &[
            "event",
            "eventname",
            "action",
            "evento",
            "nombreevento",
            "accion",
        ],
        EventField::Event,
    ),
    (
        &[
            "userid",
            "customerid",
            "customer",
            "user",
            "cliente",
            "idcliente",
            "usuario",
        ],
        EventField::UserId,
    ),
    (
        &[
            "anonymousid",
            "anonid",
            "deviceid",
            "visitorid",
            "cookieid",
            "dispositivo",
        ],
        EventField::AnonymousId,
    ),
    (
        &[
            "email",
            "mail",
            "correo",
            "correoelectronico",
            "emailaddress",
        ],
        EventField::Email,
    ),
    (
        &[
            "timestamp",
            "time",
            "date",
            "datetime",
            "fecha",
            "createdat",
            "occurredat",
            "eventtime",
            "ts",
        ],
        EventField::Timestamp,
    ),
    (&["messageid", "eventid"], EventField::MessageId),
];

/// How each column of a flat events file is read: explicit assignments, then the usual names,
/// then (unless `only_mapped`) a property named after the column. `fixed_event` says every row
/// is the same event (`--event NAME`), so no column need name it.
pub fn plan_events(
    headers: &[String],
    explicit: &[(EventField, String)],
    only_mapped: bool,
    fixed_event: bool,
) -> Result<Vec<(String, EventField)>, MappingError> {
    let plan = plan_columns(
        headers,
        explicit,
        KNOWN,
        only_mapped,
        EventField::describe,
        |column| EventField::Property(trait_name(column)),
        EventField::Ignore,
    )?;
    let has = |field: &EventField| plan.iter().any(|(_, f)| f == field);
    let unmapped = |field: &str| MappingError::Unmapped {
        field: field.to_string(),
        available: headers.join(", "),
    };
    if !has(&EventField::UserId) && !has(&EventField::AnonymousId) {
        return Err(unmapped("user_id"));
    }
    if !has(&EventField::Timestamp) {
        return Err(unmapped("timestamp"));
    }
    // Without a name column every row must be a call that needs none, or be named by --event.
    if !fixed_event && !has(&EventField::Event) && !has(&EventField::Type) {
        return Err(unmapped("event"));
    }
    Ok(plan)
}

/// A CSV cell as the JSON value it most likely is: `12` and `12.5` are numbers, `true` and
/// `false` booleans, anything else text. Numbers written with leading zeros (`00123`, zip codes,
/// ids) stay text, as do whole numbers too long for an integer, so nothing is changed by the
/// reading.
pub fn infer_cell(text: &str) -> Value {
    let trimmed = text.trim();
    match trimmed {
        "true" | "TRUE" | "True" => return Value::Bool(true),
        "false" | "FALSE" | "False" => return Value::Bool(false),
        _ => {}
    }
    let digits = trimmed.strip_prefix('-').unwrap_or(trimmed);
    let leading_zero = digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.");
    let numeric_shape = !digits.is_empty()
        && digits.starts_with(|c: char| c.is_ascii_digit())
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
    if numeric_shape && !leading_zero {
        if let Ok(n) = trimmed.parse::<i64>() {
            return Value::from(n);
        }
        // A whole number too long for an integer (a 20-digit order or card number), or a
        // decimal with more digits than a float keeps, would change as a float: it stays text.
        if let Some(n) = Some(trimmed)
            .filter(|t| t.contains('.') && significant_digits(t) <= EXACT_DIGITS)
            .and_then(|t| t.parse::<f64>().ok())
            .and_then(serde_json::Number::from_f64)
        {
            return Value::Number(n);
        }
    }
    // Thousands grouped by commas, as Mexico and the US write them (`1,234.50`, `12,345`).
    if let Some((whole, decimals)) = grouped_by_commas(digits)
        && !leading_zero
        && significant_digits(&whole) + decimals.len() <= EXACT_DIGITS
    {
        let sign = if trimmed.starts_with('-') { "-" } else { "" };
        if decimals.is_empty() {
            if let Ok(n) = format!("{sign}{whole}").parse::<i64>() {
                return Value::from(n);
            }
        } else if let Some(n) = format!("{sign}{whole}.{decimals}")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return Value::Number(n);
        }
    }
    Value::String(text.to_string())
}

/// Digits a float holds exactly.
const EXACT_DIGITS: usize = 15;

/// The digits of a number written in digits, leading zeros left out.
fn significant_digits(text: &str) -> usize {
    text.trim_start_matches(['-', '0', '.'])
        .bytes()
        .filter(u8::is_ascii_digit)
        .count()
}

/// `1,234.50` as (`1234`, `50`): a first group of one to three digits, then groups of three
/// after commas, then decimals after a dot; `None` for anything else.
fn grouped_by_commas(digits: &str) -> Option<(String, &str)> {
    let (whole, decimals) = digits.split_once('.').unwrap_or((digits, ""));
    let first = whole.split(',').next()?;
    let grouped = whole.contains(',')
        && (1..=3).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_digit())
        && crate::transactions::grouped_by_three(whole, ',')
        && decimals.bytes().all(|b| b.is_ascii_digit())
        && !(digits.contains('.') && decimals.is_empty());
    grouped.then(|| (whole.replace(',', ""), decimals))
}

/// A text cell of a file whose numbers have a decimal comma: `350,5`, `1.234,50` and `-0,25`
/// are decimals, and a lone `1.234` is 1,234 (as amounts are read there). Dots without a comma
/// but for that one group are left as text: `192.168.1.10`, `12.345.678` (a DNI) and
/// `612.345.678` (a phone) are not quantities. Anything else is read as [`infer_cell`] reads
/// it; nothing with more digits than a float keeps exactly becomes a number.
pub fn infer_cell_decimal_comma(text: &str) -> Value {
    let trimmed = text.trim();
    let negative = trimmed.starts_with('-');
    let digits = trimmed.strip_prefix('-').unwrap_or(trimmed);
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = |whole: &str| whole.len() > 1 && whole.starts_with('0');
    // `1.234.567` → `1234567`; `None` unless every dot groups three digits after a first group
    // of one to three.
    let ungrouped = |whole: &str| -> Option<String> {
        let first = whole.split('.').next()?;
        let grouped = all_digits(first)
            && first.len() <= 3
            && crate::transactions::grouped_by_three(whole, '.');
        grouped.then(|| whole.replace('.', ""))
    };
    let dots = digits.matches('.').count();
    let number = match digits.split_once(',') {
        Some((whole, decimals)) if all_digits(decimals) => {
            let whole = if whole.contains('.') {
                ungrouped(whole)
            } else {
                all_digits(whole).then(|| whole.to_string())
            };
            whole
                .filter(|w| !leading_zero(w) && w.len() + decimals.len() <= EXACT_DIGITS)
                .and_then(|w| format!("{w}.{decimals}").parse::<f64>().ok())
                .and_then(serde_json::Number::from_f64)
        }
        Some(_) => None,
        // One group of three after one dot: a thousand and more, as an amount is read.
        None if dots == 1 && digits.split('.').nth(1).is_some_and(|g| g.len() == 3) => {
            ungrouped(digits)
                .filter(|w| !leading_zero(w))
                .and_then(|w| w.parse::<i64>().ok())
                .map(serde_json::Number::from)
        }
        // `1.5` (written by a tool), whole numbers, words: as any file's cells.
        None if dots <= 1 => return infer_cell(text),
        None => None,
    };
    match number {
        Some(n) if negative => n
            .as_i64()
            .map(|i| Value::from(-i))
            .or_else(|| n.as_f64().map(|f| serde_json::json!(-f)))
            .unwrap_or(Value::Number(n)),
        Some(n) => Value::Number(n),
        None => Value::String(text.to_string()),
    }
}

/// Turns flat rows into Segment events through a column mapping.
pub struct FlatEventImporter {
    columns: Columns<EventField>,
    time: TimeParser,
    source: String,
    /// `--event NAME`: the name of rows whose file names none.
    fixed_event: Option<String>,
    /// Text cells are read as numbers and booleans where they are (CSV and text files).
    infer_types: bool,
    /// Numbers in text cells are written with a decimal comma (a file Excel separated with
    /// semicolons): `350,5` and `1.234,50` are numbers, and a lone `1.234` is 1,234.
    decimal_comma: bool,
    fingerprint: String,
}

impl FlatEventImporter {
    pub fn new(
        columns: Columns<EventField>,
        time: TimeParser,
        source: String,
        fixed_event: Option<String>,
        infer_types: bool,
    ) -> FlatEventImporter {
        let described = columns.described(EventField::describe);
        let fingerprint = format!(
            "{described:?} event={fixed_event:?} source={source} zone={}",
            time.zone().name()
        );
        FlatEventImporter {
            columns,
            time,
            source,
            fixed_event,
            infer_types,
            decimal_comma: false,
            fingerprint,
        }
    }

    /// Reads numbers in text cells with a decimal comma. The message ids do not change: an
    /// earlier import of the file keeps its events.
    pub fn with_decimal_comma(mut self, decimal_comma: bool) -> FlatEventImporter {
        self.decimal_comma = decimal_comma;
        self
    }

    /// What identifies this import's mapping, for its message ids and checkpoint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The import's settings as a person reads them, for the data directory's ledger.
    pub fn settings(&self) -> BTreeMap<String, String> {
        let mut settings = crate::transactions::settings_of(
            &self.columns,
            EventField::describe,
            &self.time,
            &self.source,
        );
        settings.insert(
            "decimal_comma".into(),
            if self.decimal_comma { "yes" } else { "no" }.into(),
        );
        settings.insert(
            "event".into(),
            self.fixed_event
                .clone()
                .unwrap_or_else(|| "(from the file)".into()),
        );
        settings
    }

    pub fn row(&self, row: &Row) -> RowOutcome {
        let skip = |column: &str, value: Option<&Value>, reason: String| RowOutcome {
            event: None,
            problems: vec![Problem {
                row: row.number,
                column: Some(column.to_string()).filter(|c| !c.is_empty()),
                value: value.map(|v| text_of(v).unwrap_or_else(|| v.to_string())),
                reason,
                action: Action::RowSkipped,
            }],
        };
        let fixed_event = self.fixed_event.is_some();
        let plan = match self.columns.for_row(row, |keys, explicit, only_mapped| {
            plan_events(keys, explicit, only_mapped, fixed_event)
        }) {
            Ok(plan) => plan,
            Err(e) => return skip("", None, e.to_string()),
        };
        let mut event = Map::new();
        let mut properties = Map::new();
        let mut traits = Map::new();
        let mut unmapped = Map::new();
        let mut email = None;
        let mut kind = "track".to_string();
        for (column, field) in plan.iter() {
            let Some(value) = row.get(column) else {
                continue;
            };
            let cell = match value {
                Value::String(text) if self.infer_types && self.decimal_comma => {
                    infer_cell_decimal_comma(text)
                }
                Value::String(text) if self.infer_types => infer_cell(text),
                other => other.clone(),
            };
            let text = || text_of(value).filter(|t| !t.is_empty());
            match field {
                EventField::Ignore => {}
                EventField::Type => {
                    if let Some(t) = text() {
                        kind = t.to_ascii_lowercase();
                    }
                }
                EventField::Event => {
                    if let Some(name) = text() {
                        event.insert("event".into(), Value::String(name));
                    }
                }
                EventField::UserId => {
                    if let Some(id) = text() {
                        event.insert("userId".into(), Value::String(id));
                    }
                }
                EventField::AnonymousId => {
                    if let Some(id) = text() {
                        event.insert("anonymousId".into(), Value::String(id));
                    }
                }
                EventField::Email => email = text(),
                EventField::MessageId => {
                    if let Some(id) = text() {
                        event.insert("messageId".into(), Value::String(id));
                    }
                }
                EventField::Timestamp => {
                    let Some(written) = text() else {
                        return skip(column, Some(value), "the timestamp is empty".into());
                    };
                    match self.time.parse(&written) {
                        Ok(time) => {
                            let text = time.to_rfc3339_opts(SecondsFormat::AutoSi, true);
                            event.insert("timestamp".into(), Value::String(text));
                        }
                        Err(e) => return skip(column, Some(value), e.to_string()),
                    }
                }
                EventField::Property(name) => {
                    unmapped.insert(name.clone(), cell);
                }
                EventField::Trait(name) => {
                    traits.insert(name.clone(), cell);
                }
            }
        }
        if !event.contains_key("timestamp") {
            return skip("", None, "the row has no timestamp".into());
        }
        if !event.contains_key("event")
            && let Some(name) = &self.fixed_event
        {
            event.insert("event".into(), Value::String(name.clone()));
        }
        // Page and screen calls carry their name as `name`.
        if matches!(kind.as_str(), "page" | "screen")
            && let Some(name) = event.remove("event")
        {
            event.insert("name".into(), name);
        }
        let describes_a_person = matches!(kind.as_str(), "identify" | "group");
        if describes_a_person {
            traits.extend(unmapped);
        } else {
            properties.extend(unmapped);
        }
        let mut context = Map::new();
        context.insert(
            "library".into(),
            serde_json::json!({"name": "kith-import", "version": env!("CARGO_PKG_VERSION")}),
        );
        if let Some(email) = email {
            if describes_a_person {
                traits.insert("email".into(), Value::String(email));
            } else {
                context.insert("traits".into(), serde_json::json!({ "email": email }));
            }
        }
        if !event.contains_key("messageId") {
            // The row number is part of the id: a log may hold two identical clicks.
            let mut identity = row.clone();
            identity
                .values
                .push(("#row".into(), Value::from(row.number)));
            let id = message_id("events", &self.fingerprint, &identity);
            event.insert("messageId".into(), Value::String(id));
        }
        event.insert("type".into(), Value::String(kind));
        if !properties.is_empty() {
            event.insert("properties".into(), Value::Object(properties));
        }
        if !traits.is_empty() {
            event.insert("traits".into(), Value::Object(traits));
        }
        event.insert("context".into(), Value::Object(context));
        let mut outcome = judge(&Value::Object(event).to_string(), &self.source, row.number);
        // Name the file's column rather than the Segment field it filled.
        for problem in &mut outcome.problems {
            if let Some(column) = problem.column.as_deref().and_then(|f| column_of(&plan, f)) {
                problem.column = Some(column);
            }
        }
        outcome
    }

    pub fn unreadable(&self, bad: BadRow) -> Problem {
        unreadable(bad)
    }
}

/// The column that filled a Segment field, where one did.
fn column_of(plan: &[(String, EventField)], segment_field: &str) -> Option<String> {
    let wanted: &[EventField] = match segment_field {
        "userId" => &[EventField::UserId, EventField::AnonymousId],
        "anonymousId" => &[EventField::AnonymousId],
        "event" | "name" => &[EventField::Event],
        "type" => &[EventField::Type],
        "timestamp" => &[EventField::Timestamp],
        "messageId" => &[EventField::MessageId],
        _ => return None,
    };
    wanted.iter().find_map(|field| {
        plan.iter()
            .find(|(_, f)| f == field)
            .map(|(column, _)| column.clone())
    })
}

/// Takes Segment-shaped JSON lines as they are; a line without a `messageId` gets one derived
/// from its content, so importing the file again stores nothing twice.
pub struct SegmentLineImporter {
    source: String,
    /// How times without their own offset are read, when the command said (`--timezone`,
    /// `--time-format`); else they are UTC, as over HTTP.
    time: Option<TimeParser>,
}

/// The fields of a Segment event that hold times.
const TIME_FIELDS: [&str; 3] = ["timestamp", "originalTimestamp", "sentAt"];

impl SegmentLineImporter {
    pub fn new(source: String) -> SegmentLineImporter {
        SegmentLineImporter { source, time: None }
    }

    /// Reads times without an offset (`2024-02-01T10:00:00`) with `time` (in its zone, or by its
    /// format) instead of as UTC.
    pub fn with_times(self, time: TimeParser) -> SegmentLineImporter {
        SegmentLineImporter {
            time: Some(time),
            ..self
        }
    }

    /// The import's settings as a person reads them, for the data directory's ledger.
    pub fn settings(&self) -> BTreeMap<String, String> {
        let mut settings: BTreeMap<String, String> = match &self.time {
            Some(time) => time.settings().into_iter().collect(),
            None => BTreeMap::from([("timezone".to_string(), "UTC".to_string())]),
        };
        settings.insert("columns".into(), "(Segment events)".into());
        settings.insert("source".into(), self.source.clone());
        settings
    }

    pub fn row(&self, row: &Row) -> RowOutcome {
        let mut event: Map<String, Value> = row.values.iter().cloned().collect();
        if let Some(time) = &self.time {
            for field in TIME_FIELDS {
                let Some(Value::String(text)) = event.get(field) else {
                    continue;
                };
                // A time with its own offset says when it was; one without is in the zone.
                if chrono::DateTime::parse_from_rfc3339(text.trim()).is_ok() {
                    continue;
                }
                if let Ok(at) = time.parse(text) {
                    let written = at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
                    event.insert(field.into(), Value::String(written));
                }
            }
        }
        if !event.contains_key("messageId") {
            let id = message_id("events", "segment", row);
            event.insert("messageId".into(), Value::String(id));
        }
        judge(&Value::Object(event).to_string(), &self.source, row.number)
    }

    pub fn unreadable(&self, bad: BadRow) -> Problem {
        unreadable(bad)
    }
}

fn judge(text: &str, source: &str, row: u64) -> RowOutcome {
    match kith_core::judge_event(text, source, Utc::now()) {
        Ok(event) => RowOutcome {
            event: Some(event),
            problems: Vec::new(),
        },
        Err(rejection) => RowOutcome {
            event: None,
            problems: vec![Problem {
                row,
                column: rejection.field,
                value: None,
                reason: format!("{}: {}", rejection.code, rejection.message),
                action: Action::RowSkipped,
            }],
        },
    }
}

fn unreadable(bad: BadRow) -> Problem {
    Problem {
        row: bad.number,
        column: None,
        value: None,
        reason: bad.reason,
        action: Action::RowSkipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn row(number: u64, columns: &[&str], values: &[&str]) -> Row {
        Row {
            number,
            values: columns
                .iter()
                .zip(values)
                .filter(|(_, v)| !v.is_empty())
                .map(|(c, v)| (c.to_string(), Value::String(v.to_string())))
                .collect(),
        }
    }

    #[test]
    fn cells_become_numbers_and_booleans_only_when_nothing_is_lost() {
        assert_eq!(infer_cell("12"), Value::from(12));
        assert_eq!(infer_cell("-3.5"), serde_json::json!(-3.5));
        assert_eq!(infer_cell("0.25"), serde_json::json!(0.25));
        assert_eq!(infer_cell("true"), Value::Bool(true));
        // Thousands grouped by commas, as Mexico writes them.
        assert_eq!(infer_cell("1,234.50"), serde_json::json!(1234.5));
        assert_eq!(infer_cell("-12,345"), Value::from(-12345));
        assert_eq!(infer_cell("1,234,567"), Value::from(1234567));
        assert_eq!(infer_cell("9223372036854775807"), Value::from(i64::MAX));
        // Too long for an integer: as a float its last digits would change.
        for text in [
            "00123",
            "1e5",
            "12 pesos",
            "",
            "-",
            ".5",
            "1.2.3",
            "NaN",
            "12345678901234567890",
            "1234567890123456.7",
            "1,2",
            "1,23,456",
            "1,234.",
            "0,123",
            "1,234,56",
        ] {
            assert_eq!(infer_cell(text), Value::String(text.into()), "{text}");
        }
    }

    #[test]
    fn cells_of_a_decimal_comma_file_are_read_in_its_convention() {
        assert_eq!(infer_cell_decimal_comma("350,5"), serde_json::json!(350.5));
        assert_eq!(
            infer_cell_decimal_comma("1.234,50"),
            serde_json::json!(1234.5)
        );
        assert_eq!(infer_cell_decimal_comma("1.234"), Value::from(1234));
        assert_eq!(infer_cell_decimal_comma("-1.234"), Value::from(-1234));
        assert_eq!(infer_cell_decimal_comma("-0,25"), serde_json::json!(-0.25));
        assert_eq!(infer_cell_decimal_comma("0,5"), serde_json::json!(0.5));
        assert_eq!(infer_cell_decimal_comma("12"), Value::from(12));
        assert_eq!(infer_cell_decimal_comma("1.5"), serde_json::json!(1.5));
        assert_eq!(infer_cell_decimal_comma("true"), Value::Bool(true));
        for text in [
            "00123",
            "1,2,3",
            "12,",
            ",5",
            "1.2.3,4",
            "12 pesos",
            "0123,5",
            "00,5",
            "-",
            ",",
            "1.234.5",
            "1.234,",
            // Identifiers with dots: an address, a DNI, a phone.
            "192.168.100.101",
            "12.345.678",
            "612.345.678",
            // More digits than a float keeps.
            "12345678901234567890,5",
            "1.234.567.890.123.456,5",
        ] {
            assert_eq!(
                infer_cell_decimal_comma(text),
                Value::String(text.into()),
                "{text}"
            );
        }
    }

    #[test]
    fn usual_column_names_are_recognised_and_missing_ones_named() {
        let columns = headers(&["Fecha", "Cliente", "Acción", "monto", "device_id"]);
        let plan = plan_events(&columns, &[], false, false).unwrap();
        let fields: Vec<EventField> = plan.into_iter().map(|(_, f)| f).collect();
        assert_eq!(
            fields,
            vec![
                EventField::Timestamp,
                EventField::UserId,
                EventField::Event,
                EventField::Property("monto".into()),
                EventField::AnonymousId,
            ]
        );
        let error = plan_events(&headers(&["who", "what"]), &[], false, false).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no column holds the user_id; map one with --map user_id=COLUMN (columns: who, what)"
        );
        let explicit = [(EventField::UserId, "who".to_string())];
        let error = plan_events(&headers(&["who", "when"]), &explicit, false, false).unwrap_err();
        assert!(error.to_string().contains("timestamp"), "{error}");
        let explicit = [
            (EventField::UserId, "who".to_string()),
            (EventField::Timestamp, "when".to_string()),
        ];
        let error = plan_events(&headers(&["who", "when"]), &explicit, false, false).unwrap_err();
        assert!(error.to_string().contains("--map event=COLUMN"), "{error}");
        assert!(plan_events(&headers(&["who", "when"]), &explicit, false, true).is_ok());
        assert!(matches!(
            EventField::parse("colour"),
            Err(MappingError::UnknownField {
                allowed: FIELDS,
                ..
            })
        ));
    }

    #[test]
    fn a_flat_row_becomes_the_segment_event_it_describes() {
        let columns = ["time", "user", "action", "revenue", "zip", "plan", "kind"];
        let plan = plan_events(&headers(&columns), &[], false, false).unwrap();
        let importer = FlatEventImporter::new(
            Columns::Fixed(plan.clone()),
            TimeParser::new(None, Some("America/Mexico_City")).unwrap(),
            "shop".into(),
            None,
            true,
        );
        let outcome = importer.row(&row(
            1,
            &columns,
            &[
                "2024-03-01 10:00:00",
                "u1",
                "Order Completed",
                "199.5",
                "01234",
                "pro",
                "web",
            ],
        ));
        assert_eq!(outcome.problems, vec![]);
        let event = outcome.event.unwrap();
        assert_eq!(event.event.as_deref(), Some("Order Completed"));
        assert_eq!(event.user_id.as_deref(), Some("u1"));
        assert_eq!(event.timestamp.to_rfc3339(), "2024-03-01T16:00:00+00:00");
        assert_eq!(event.typed.revenue, Some(199.5));
        assert_eq!(
            serde_json::from_str::<Value>(event.properties.as_deref().unwrap()).unwrap(),
            serde_json::json!({"revenue": 199.5, "zip": "01234", "plan": "pro", "kind": "web"})
        );
        // The same row again has the same id; another row another one.
        let again = importer.row(&row(
            1,
            &columns,
            &[
                "2024-03-01 10:00:00",
                "u1",
                "Order Completed",
                "199.5",
                "01234",
                "pro",
                "web",
            ],
        ));
        assert_eq!(again.event.unwrap().message_id, event.message_id);

        let bad_time = importer.row(&row(
            2,
            &columns,
            &["yesterday", "u1", "Viewed", "", "", "", ""],
        ));
        assert_eq!(bad_time.event, None);
        assert_eq!(bad_time.problems[0].column.as_deref(), Some("time"));
        // Validation is /v1/batch's: a track without a name is refused, and says so.
        let unnamed = importer.row(&row(3, &columns, &["2024-03-01", "u1", "", "", "", "", ""]));
        assert!(
            unnamed.problems[0].reason.starts_with("missing_event"),
            "{:?}",
            unnamed.problems
        );
    }

    #[test]
    fn identify_rows_carry_traits_and_page_rows_their_name() {
        let columns = ["ts", "anonymous_id", "type", "event", "plan", "email"];
        let plan = plan_events(&headers(&columns), &[], false, false).unwrap();
        let importer = FlatEventImporter::new(
            Columns::Fixed(plan),
            TimeParser::default(),
            "crm".into(),
            None,
            true,
        );
        let identify = importer
            .row(&row(
                1,
                &columns,
                &["2024-01-01", "a1", "identify", "", "gold", "A@x.mx"],
            ))
            .event
            .unwrap();
        assert_eq!(identify.kind, kith_core::MessageType::Identify);
        assert_eq!(
            serde_json::from_str::<Value>(identify.traits.as_deref().unwrap()).unwrap(),
            serde_json::json!({"plan": "gold", "email": "A@x.mx"})
        );
        let page = importer
            .row(&row(
                2,
                &columns,
                &["2024-01-01", "a1", "page", "Pricing", "", ""],
            ))
            .event
            .unwrap();
        assert_eq!(page.kind, kith_core::MessageType::Page);
        assert_eq!(page.event.as_deref(), Some("Pricing"));
    }

    #[test]
    fn segment_lines_keep_their_shape_and_get_stable_ids() {
        let importer = SegmentLineImporter::new("import".into());
        let line = Row {
            number: 4,
            values: vec![
                ("type".into(), Value::from("track")),
                ("event".into(), Value::from("Signed Up")),
                ("userId".into(), Value::from("u9")),
            ],
        };
        let first = importer.row(&line).event.unwrap();
        let second = importer.row(&line).event.unwrap();
        assert_eq!(first.message_id, second.message_id);
        assert_eq!(first.event.as_deref(), Some("Signed Up"));
        let anonymous = Row {
            number: 5,
            values: vec![
                ("type".into(), Value::from("track")),
                ("event".into(), Value::from("x")),
            ],
        };
        let refused = importer.row(&anonymous);
        assert!(refused.problems[0].reason.starts_with("missing_identity"));
    }
}
