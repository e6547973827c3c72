//! Logs of what customers did, one row per act, into track events: a transaction log (who
//! bought, when, how much: CDNOW's `customer_id date quantity dollar_value`, a shop's order
//! export) → `Order Completed`, the input of CLV models; a helpdesk export → `Ticket Created`; survey
//! answers → `Survey Responded`. See [`LogKind`].

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use kith_core::{Event, MessageType, TypedFields};
use serde_json::{Map, Value, json};

use crate::RowOutcome;
use crate::mapping::{MappingError, plan_columns, trait_name};
use crate::reader::{BadRow, Row, json_kind, text_of};
use crate::rejects::{Action, Problem};
use crate::time::TimeParser;

/// What a column of a transaction log holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TransactionField {
    /// The buyer's id, stored as the event's `userId`.
    Customer,
    /// The customer's email (when the log has no id): `context.traits.email`, which identity
    /// resolution reads like any identify's.
    Email,
    Date,
    /// The order's value (`properties.revenue`).
    Amount,
    Quantity,
    OrderId,
    Currency,
    /// Any other column, kept as a property under this name.
    Property(String),
    Ignore,
}

impl TransactionField {
    pub fn parse(text: &str) -> Result<TransactionField, MappingError> {
        Ok(match text.trim() {
            "customer" | "customer_id" | "user_id" => TransactionField::Customer,
            "email" => TransactionField::Email,
            "date" | "timestamp" | "time" => TransactionField::Date,
            "amount" | "revenue" | "value" => TransactionField::Amount,
            "quantity" => TransactionField::Quantity,
            "order_id" => TransactionField::OrderId,
            "currency" => TransactionField::Currency,
            other => match other
                .strip_prefix("property:")
                .filter(|n| !n.trim().is_empty())
            {
                Some(name) => TransactionField::Property(name.trim().to_string()),
                None => {
                    return Err(MappingError::UnknownField {
                        field: other.to_string(),
                        allowed: "customer, email, date, amount, quantity, order_id, currency or property:NAME",
                    });
                }
            },
        })
    }

    pub fn describe(&self) -> String {
        match self {
            TransactionField::Customer => "customer".into(),
            TransactionField::Email => "email".into(),
            TransactionField::Date => "date".into(),
            TransactionField::Amount => "amount".into(),
            TransactionField::Quantity => "quantity".into(),
            TransactionField::OrderId => "order_id".into(),
            TransactionField::Currency => "currency".into(),
            TransactionField::Property(name) => format!("property:{name}"),
            TransactionField::Ignore => "ignored".into(),
        }
    }
}

const CUSTOMER_NAMES: &[&str] = &[
    "customerid",
    "customer",
    "userid",
    "cliente",
    "idcliente",
    "buyer",
];
const DATE_NAMES: &[&str] = &[
    "date",
    "fecha",
    "orderdate",
    "purchasedate",
    "createdat",
    "timestamp",
    "datetime",
];
const AMOUNT_NAMES: &[&str] = &[
    "amount",
    "dollarvalue",
    "revenue",
    "total",
    "value",
    "monto",
    "importe",
    "price",
];
const QUANTITY_NAMES: &[&str] = &[
    "quantity",
    "qty",
    "numberofcds",
    "cantidad",
    "items",
    "units",
];
/// What order ids are called in the exports of shops and tills, English and Spanish: `Order
/// Number`, `No. Pedido`, `Número de orden`, `Folio`, `Factura`, `Ticket`…
const ORDER_NAMES: &[&str] = &[
    "orderid",
    "order",
    "ordernumber",
    "orderno",
    "pedido",
    "idpedido",
    "pedidoid",
    "nopedido",
    "numeropedido",
    "numerodepedido",
    "orden",
    "idorden",
    "noorden",
    "numeroorden",
    "numerodeorden",
    "folio",
    "foliodeventa",
    "factura",
    "nofactura",
    "numerofactura",
    "numerodefactura",
    "ticket",
    "noticket",
    "numeroticket",
    "transactionid",
    "transaccion",
    "idtransaccion",
    "invoice",
    "invoicenumber",
];
const CURRENCY_NAMES: &[&str] = &["currency", "moneda"];
const EMAIL_NAMES: &[&str] = &[
    "email",
    "mail",
    "correo",
    "correoelectronico",
    "customeremail",
    "emailaddress",
];
const SCORE_NAMES: &[&str] = &[
    "score",
    "nps",
    "rating",
    "calificacion",
    "puntuacion",
    "puntaje",
];
const COMMENT_NAMES: &[&str] = &[
    "comment",
    "comments",
    "comentario",
    "comentarios",
    "feedback",
    "opinion",
];

/// What kind of log a file is: which event its rows become and which columns it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// Purchases: customer, date and amount required.
    Transactions,
    /// Support tickets: customer (or email) and date required; subject, body, status … kept.
    Tickets,
    /// Survey answers: customer (or email) and date required; the score (`score`, `nps`,
    /// `calificacion` …) and comment (`comment`, `comentario` …) under those names.
    Surveys,
}

impl LogKind {
    pub fn event_name(self) -> &'static str {
        match self {
            LogKind::Transactions => "Order Completed",
            LogKind::Tickets => "Ticket Created",
            LogKind::Surveys => "Survey Responded",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogKind::Transactions => "transactions",
            LogKind::Tickets => "tickets",
            LogKind::Surveys => "surveys",
        }
    }
}

/// How each column of the log is read: explicit assignments, then the usual names.
pub fn plan(
    kind: LogKind,
    headers: &[String],
    explicit: &[(TransactionField, String)],
    only_mapped: bool,
) -> Result<Vec<(String, TransactionField)>, MappingError> {
    let mut known: Vec<(&[&str], TransactionField)> = vec![
        (CUSTOMER_NAMES, TransactionField::Customer),
        (EMAIL_NAMES, TransactionField::Email),
        (DATE_NAMES, TransactionField::Date),
    ];
    match kind {
        LogKind::Transactions => known.extend([
            (AMOUNT_NAMES, TransactionField::Amount),
            (QUANTITY_NAMES, TransactionField::Quantity),
            (ORDER_NAMES, TransactionField::OrderId),
            (CURRENCY_NAMES, TransactionField::Currency),
        ]),
        LogKind::Surveys => known.extend([
            (SCORE_NAMES, TransactionField::Property("score".into())),
            (COMMENT_NAMES, TransactionField::Property("comment".into())),
        ]),
        LogKind::Tickets => {}
    }
    let out = plan_columns(
        headers,
        explicit,
        &known,
        only_mapped,
        TransactionField::describe,
        |column| TransactionField::Property(trait_name(column)),
        TransactionField::Ignore,
    )?;
    let has = |field: &TransactionField| out.iter().any(|(_, f)| f == field);
    // Transactions need the buyer's id; tickets and surveys may name people by email.
    let identified = has(&TransactionField::Customer)
        || (kind != LogKind::Transactions && has(&TransactionField::Email));
    if !identified {
        return Err(MappingError::Unmapped {
            field: "customer".to_string(),
            available: headers.join(", "),
        });
    }
    let mut needed = vec![(TransactionField::Date, "date")];
    if kind == LogKind::Transactions {
        needed.push((TransactionField::Amount, "amount"));
    }
    for (needed, flag) in needed {
        if !has(&needed) {
            return Err(MappingError::Unmapped {
                field: flag.to_string(),
                available: headers.join(", "),
            });
        }
    }
    // Each property once, and none under the name a mapped field is written as: a `revenue`
    // column beside the amount (`monto`) is `revenue_2`, not text over the amount.
    let mut taken: Vec<String> = out
        .iter()
        .filter_map(|(_, field)| match field {
            TransactionField::Amount => Some("revenue".to_string()),
            TransactionField::Quantity => Some("quantity".to_string()),
            TransactionField::OrderId => Some("order_id".to_string()),
            TransactionField::Currency => Some("currency".to_string()),
            TransactionField::Email => Some("email".to_string()),
            _ => None,
        })
        .collect();
    let mut out = out;
    for (_, field) in &mut out {
        if let TransactionField::Property(name) = field {
            *name = crate::mapping::claim_name(name, &mut taken);
        }
    }
    Ok(out)
}

/// How a file's columns are read: fixed by its header line, or worked out for each row of a
/// JSONL file from the keys that row has.
#[derive(Debug, Clone)]
pub enum Columns<F = TransactionField> {
    Fixed(Vec<(String, F)>),
    PerRow {
        explicit: Vec<(F, String)>,
        only_mapped: bool,
    },
}

impl<F: Clone> Columns<F> {
    /// How `row` is read: the file's plan, or (JSON Lines) one worked out by `plan` from the
    /// keys this row has.
    pub fn for_row(
        &self,
        row: &Row,
        plan: impl Fn(&[String], &[(F, String)], bool) -> Result<Vec<(String, F)>, MappingError>,
    ) -> Result<std::borrow::Cow<'_, [(String, F)]>, MappingError> {
        match self {
            Columns::Fixed(fixed) => Ok(std::borrow::Cow::Borrowed(fixed)),
            Columns::PerRow {
                explicit,
                only_mapped,
            } => {
                let keys: Vec<String> = row.values.iter().map(|(k, _)| k.clone()).collect();
                plan(&keys, explicit, *only_mapped)
                    .map(std::borrow::Cow::Owned)
                    // A line's keys are its own: a key whose value is null is not among them.
                    .map_err(|e| match e {
                        MappingError::Unmapped { field, available } => {
                            MappingError::UnmappedOnLine { field, available }
                        }
                        other => other,
                    })
            }
        }
    }

    /// Column → what it is read as, for fingerprints: another mapping is another import.
    pub fn described(&self, describe: impl Fn(&F) -> String) -> BTreeMap<String, String> {
        match self {
            Columns::Fixed(plan) => plan.iter().map(|(c, f)| (c.clone(), describe(f))).collect(),
            Columns::PerRow {
                explicit,
                only_mapped,
            } => explicit
                .iter()
                .map(|(f, c)| (c.clone(), describe(f)))
                .chain([("#only_mapped".to_string(), only_mapped.to_string())])
                .collect(),
        }
    }
}

/// The settings every row import has: how columns are read, how times are, and the source.
pub(crate) fn settings_of<F: Clone>(
    columns: &Columns<F>,
    describe: impl Fn(&F) -> String,
    time: &TimeParser,
    source: &str,
) -> BTreeMap<String, String> {
    let mut settings: BTreeMap<String, String> = time.settings().into_iter().collect();
    let described = columns.described(&describe);
    settings.insert(
        "columns".into(),
        described
            .iter()
            .map(|(column, field)| format!("{column}={field}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    // What the columns that make an event are read as, in file order, whatever they are
    // called: for ids that follow no column's name (a file's own, an order's), a header
    // renamed, or a property column renamed, added or left out, changes nothing.
    let fields = match columns {
        Columns::Fixed(plan) => plan.iter().map(|(_, f)| describe(f)).collect::<Vec<_>>(),
        Columns::PerRow { .. } => described.into_values().collect(),
    };
    let fields: Vec<String> = fields
        .into_iter()
        .filter(|field| !field.starts_with("property:") && field != "ignored")
        .collect();
    settings.insert(FIELDS_SETTING.into(), fields.join(", "));
    settings.insert("source".into(), source.to_string());
    settings
}

/// The setting that says what each column is read as, in file order, without their names.
pub const FIELDS_SETTING: &str = "fields";

/// Turns rows of a log into track events (`Order Completed`, `Ticket Created`, …).
pub struct TransactionImporter {
    kind: LogKind,
    columns: Columns,
    time: TimeParser,
    source: String,
    event_name: String,
    default_currency: Option<String>,
    /// Amounts are written with a decimal comma (`1.234,56`), as in a file Excel separated with
    /// semicolons: a lone `1.234` is a thousand and more, not one and a bit.
    decimal_comma: bool,
    fingerprint: String,
    /// How many lines of each order (by [`crate::OrderLine::key`]) the file has had so far:
    /// the next identical line is the next line of its order, wherever it is in the file.
    lines_seen: RefCell<HashMap<u64, u32>>,
}

fn number_of(value: &Value, decimal_comma: bool) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if decimal_comma => parse_amount_decimal_comma(s),
        Value::String(s) => parse_amount(s),
        _ => None,
    }
    .filter(|n: &f64| n.is_finite())
}

/// A currency as ISO 4217 writes it: `mxn` is `MXN`, and the words Mexican exports use for the
/// peso and the dollar are their codes; anything else is kept as written.
pub fn currency_code(text: &str) -> String {
    let trimmed = text.trim();
    let lower = trimmed.to_lowercase();
    match lower.trim_end_matches('.') {
        "pesos" | "peso" | "m.n" | "mn" | "pesos mexicanos" | "mx$" => return "MXN".into(),
        "dólares" | "dolares" | "dólar" | "dolar" | "dls" | "us$" | "usd$" => {
            return "USD".into();
        }
        "euros" | "euro" | "€" => return "EUR".into(),
        _ => {}
    }
    if trimmed.len() == 3 && trimmed.bytes().all(|b| b.is_ascii_alphabetic()) {
        trimmed.to_ascii_uppercase()
    } else {
        trimmed.to_string()
    }
}

/// The amount without the dollar sign and spaces people write around and inside it.
fn without_currency_marks(text: &str) -> String {
    text.trim()
        .chars()
        .filter(|c| !matches!(c, '$' | ' ' | '\u{a0}'))
        .collect()
}

/// Whether every part after the first `separator` is three digits (`1.234.567`).
pub(crate) fn grouped_by_three(number: &str, separator: char) -> bool {
    number
        .split(separator)
        .skip(1)
        .all(|group| group.len() == 3 && group.bytes().all(|b| b.is_ascii_digit()))
}

/// An amount where the comma marks decimals (`1.234,56`, `350,5`) and dots group thousands: a
/// dot is a thousands separator when every dot has exactly three digits after it (`1.234`,
/// `12.345.678`), else a decimal mark (`350.5`, written by a tool rather than by hand).
pub fn parse_amount_decimal_comma(text: &str) -> Option<f64> {
    let cleaned = without_currency_marks(text);
    let (whole, decimals) = match cleaned.rsplit_once(',') {
        Some((whole, decimals)) => (whole, Some(decimals)),
        None => (cleaned.as_str(), None),
    };
    let grouped = whole.contains('.') && grouped_by_three(whole, '.');
    let whole = if grouped || decimals.is_some() {
        whole.replace('.', "")
    } else {
        whole.to_string()
    };
    match decimals {
        Some(decimals) => format!("{whole}.{decimals}").parse().ok(),
        None => whole.parse().ok(),
    }
}

/// An amount as written by people: `$1,234.56` (Mexico, the US), `1.234,56` (Spain, Argentina,
/// Brazil), `150,5`. With both separators the last is the decimal one; a lone comma is decimal
/// unless exactly three digits follow it (`1,234` is a thousand and more, as Mexico writes it).
pub fn parse_amount(text: &str) -> Option<f64> {
    let cleaned = without_currency_marks(text);
    // Several dots, each before three digits, group thousands (`12.345.678`).
    let dots = cleaned.matches('.').count();
    if dots > 1 && !cleaned.contains(',') && grouped_by_three(&cleaned, '.') {
        return cleaned.replace('.', "").parse().ok();
    }
    let normalized = match (cleaned.rfind('.'), cleaned.rfind(',')) {
        (Some(dot), Some(comma)) if comma > dot => cleaned.replace('.', "").replace(',', "."),
        (Some(_), Some(_)) => cleaned.replace(',', ""),
        (None, Some(comma)) => {
            let single = cleaned.matches(',').count() == 1;
            if single && cleaned.len() - comma - 1 != 3 {
                cleaned.replace(',', ".")
            } else {
                cleaned.replace(',', "")
            }
        }
        _ => cleaned,
    };
    normalized.parse().ok()
}

impl TransactionImporter {
    pub fn new(
        kind: LogKind,
        columns: Columns,
        time: TimeParser,
        source: String,
        event_name: String,
        default_currency: Option<String>,
    ) -> TransactionImporter {
        let described = columns.described(TransactionField::describe);
        let fingerprint = format!(
            "{described:?} event={event_name} source={source} zone={} currency={default_currency:?}",
            time.zone().name()
        );
        TransactionImporter {
            kind,
            columns,
            time,
            source,
            event_name,
            default_currency,
            decimal_comma: false,
            fingerprint,
            lines_seen: RefCell::new(HashMap::new()),
        }
    }

    /// Reads amounts with a decimal comma (see [`parse_amount_decimal_comma`]).
    pub fn with_decimal_comma(mut self, decimal_comma: bool) -> TransactionImporter {
        if decimal_comma {
            self.fingerprint.push_str(" decimal=,");
        }
        self.decimal_comma = decimal_comma;
        self
    }

    /// What identifies this import's mapping, for its message ids and checkpoint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The import's settings as a person reads them, for the data directory's ledger.
    pub fn settings(&self) -> BTreeMap<String, String> {
        let mut settings = settings_of(
            &self.columns,
            TransactionField::describe,
            &self.time,
            &self.source,
        );
        settings.insert("event".into(), self.event_name.clone());
        settings.insert(
            "currency".into(),
            self.default_currency
                .clone()
                .unwrap_or_else(|| "(none)".into()),
        );
        settings.insert(
            "decimal_comma".into(),
            if self.decimal_comma { "yes" } else { "no" }.into(),
        );
        settings
    }

    pub fn unreadable(&self, bad: BadRow) -> Problem {
        Problem {
            row: bad.number,
            column: None,
            value: None,
            reason: bad.reason,
            action: Action::RowSkipped,
        }
    }

    pub fn row(&self, row: &Row) -> RowOutcome {
        let skip = |column: &str, value: Option<&Value>, reason: String| RowOutcome {
            event: None,
            problems: vec![Problem {
                row: row.number,
                column: Some(column.to_string()),
                value: value.map(|v| text_of(v).unwrap_or_else(|| v.to_string())),
                reason,
                action: Action::RowSkipped,
            }],
        };
        let plan = match self.columns.for_row(row, |keys, explicit, only_mapped| {
            plan(self.kind, keys, explicit, only_mapped)
        }) {
            Ok(plan) => plan,
            Err(e) => return skip("", None, e.to_string()),
        };
        let mut customer = None;
        let mut missing_customer = None;
        let mut email = None;
        let mut time = None;
        let mut properties = Map::new();
        for (column, field) in plan.iter() {
            let value = row.get(column);
            match field {
                TransactionField::Ignore => {}
                TransactionField::Customer => {
                    customer = value.and_then(text_of).filter(|t| !t.is_empty());
                    if customer.is_none() {
                        missing_customer = Some((column, value));
                    }
                }
                TransactionField::Email => {
                    email = value.and_then(text_of).filter(|t| !t.is_empty());
                }
                TransactionField::Date => {
                    let Some(text) = value.and_then(text_of) else {
                        return skip(column, value, "the date is missing".into());
                    };
                    match self.time.parse(&text) {
                        Ok(t) => time = Some(t),
                        Err(e) => return skip(column, value, e.to_string()),
                    }
                }
                TransactionField::Amount => match value
                    .and_then(|v| number_of(v, self.decimal_comma))
                {
                    Some(amount) => {
                        properties.insert("revenue".into(), json!(amount));
                    }
                    None => {
                        let reason = match value {
                            None => "the amount is missing".to_string(),
                            Some(Value::String(text)) => format!(
                                "`{text}` is not an amount; write the number alone (`1234.50`), \
                                 and the currency in a currency column or --currency"
                            ),
                            Some(v) => format!("the amount must be a number, not {}", json_kind(v)),
                        };
                        return skip(column, value, reason);
                    }
                },
                TransactionField::Quantity => {
                    if let Some(quantity) = value.and_then(|v| number_of(v, self.decimal_comma)) {
                        properties.insert("quantity".into(), json!(quantity));
                    }
                }
                TransactionField::OrderId => {
                    if let Some(id) = value.and_then(text_of) {
                        properties.insert("order_id".into(), Value::String(id));
                    }
                }
                TransactionField::Currency => {
                    if let Some(currency) = value.and_then(text_of) {
                        properties
                            .insert("currency".into(), Value::String(currency_code(&currency)));
                    }
                }
                TransactionField::Property(name) => {
                    if let Some(value) = value {
                        // A survey score written as text (CSV) is kept as the number it is,
                        // `9,5` included.
                        let value = match value {
                            Value::String(text) if name == "score" => {
                                number_of(&Value::String(text.clone()), self.decimal_comma)
                                    .map_or_else(|| value.clone(), |n| json!(n))
                            }
                            other => other.clone(),
                        };
                        properties.insert(name.clone(), value);
                    }
                }
            }
        }
        let Some(time) = time else {
            return skip("", None, "the row has no date".into());
        };
        // A purchase needs its buyer's id; a ticket or a survey answer may name its customer by
        // email instead, in a row whose id cell is empty.
        let by_email = self.kind != LogKind::Transactions && email.is_some();
        if customer.is_none() && !by_email {
            let reason = if self.kind == LogKind::Transactions {
                "the customer is missing"
            } else {
                "the row names no customer (no id and no email)"
            };
            let (column, value) = missing_customer.map_or(("", None), |(c, v)| (c.as_str(), v));
            return skip(column, value, reason.into());
        }
        if !properties.contains_key("currency")
            && let Some(currency) = &self.default_currency
        {
            properties.insert("currency".into(), Value::String(currency.clone()));
        }
        // The row number is part of the id: a log may hold two identical purchases.
        let mut identity = row.clone();
        identity
            .values
            .push(("#row".into(), Value::from(row.number)));
        let revenue = properties.get("revenue").and_then(Value::as_f64);
        let currency = properties
            .get("currency")
            .and_then(Value::as_str)
            .map(str::to_string);
        let order_id = properties
            .get("order_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        // An order is stored once however its export changes; rows without an order id are
        // told apart by their content and place in the file.
        let message_id = match &order_id {
            Some(order) if self.kind == LogKind::Transactions => {
                let line = crate::OrderLine {
                    customer: customer.as_deref().unwrap_or_default(),
                    order_id: order,
                    amount: revenue,
                    event: &self.event_name,
                    source: &self.source,
                };
                let mut seen = self.lines_seen.borrow_mut();
                let count = seen.entry(line.key()).or_insert(0);
                let repeat = *count;
                *count += 1;
                crate::order_line_id(&line, repeat)
            }
            _ => crate::message_id(self.kind.name(), &self.fingerprint, &identity),
        };
        let event = Event {
            message_id,
            kind: MessageType::Track,
            event: Some(self.event_name.clone()),
            user_id: customer,
            anonymous_id: None,
            group_id: None,
            previous_id: None,
            source: self.source.clone(),
            timestamp: time,
            original_timestamp: Some(time),
            sent_at: None,
            received_at: Utc::now(),
            properties: Some(Value::Object(properties).to_string()),
            context: Some({
                let mut context = json!({"library": {"name": "kith-import", "version": env!("CARGO_PKG_VERSION")}});
                if let Some(email) = &email {
                    context["traits"] = json!({ "email": email });
                }
                context.to_string()
            }),
            traits: None,
            integrations: None,
            extra: None,
            typed: TypedFields {
                revenue,
                currency,
                order_id,
                email: email.clone(),
                library_name: Some("kith-import".into()),
                ..TypedFields::default()
            },
        };
        RowOutcome {
            event: Some(event),
            problems: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn amounts_are_read_as_people_write_them() {
        for (text, amount) in [
            ("1,234.56", 1234.56),
            ("$ 1,234.56", 1234.56),
            ("1.234,56", 1234.56),
            ("150,5", 150.5),
            ("150,50", 150.5),
            ("1,234", 1234.0),
            ("1,234,567", 1_234_567.0),
            ("-12.5", -12.5),
            ("80", 80.0),
            ("12.345.678", 12_345_678.0),
            ("1.234", 1.234),
        ] {
            assert_eq!(parse_amount(text), Some(amount), "{text}");
        }
        assert_eq!(parse_amount("n/a"), None);
        assert_eq!(parse_amount(""), None);
        // Where commas mark decimals (a file separated by semicolons), dots group thousands.
        for (text, amount) in [
            ("1.234", 1234.0),
            ("1.234,50", 1234.5),
            ("350,5", 350.5),
            ("12.345.678", 12_345_678.0),
            ("-1.000,00", -1000.0),
            ("350.5", 350.5),
            ("$ 80", 80.0),
        ] {
            assert_eq!(parse_amount_decimal_comma(text), Some(amount), "{text}");
        }
        assert_eq!(parse_amount_decimal_comma("n/a"), None);
    }

    #[test]
    fn order_ids_are_recognised_by_the_names_shops_give_them() {
        for name in [
            "No. Pedido",
            "Número de orden",
            "Folio",
            "Order Number",
            "Factura",
        ] {
            let plan = plan(
                LogKind::Transactions,
                &headers(&["cliente", "fecha", "total", name]),
                &[],
                false,
            )
            .unwrap();
            assert_eq!(plan[3].1, TransactionField::OrderId, "{name}");
        }
    }

    #[test]
    fn cdnow_columns_are_recognised_without_a_mapping() {
        let plan = plan(
            LogKind::Transactions,
            &headers(&["customer_id", "date", "number_of_cds", "dollar_value"]),
            &[],
            false,
        )
        .unwrap();
        assert_eq!(
            plan.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
            vec![
                TransactionField::Customer,
                TransactionField::Date,
                TransactionField::Quantity,
                TransactionField::Amount
            ]
        );
        let missing = super::plan(
            LogKind::Transactions,
            &headers(&["who", "when"]),
            &[],
            false,
        )
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "no column holds the customer; map one with --map customer=COLUMN (columns: who, when)"
        );
    }

    /// A JSON line whose amount is null has no amount of its own: it is told so, not that the
    /// file has no amount column.
    #[test]
    fn a_json_line_without_an_amount_is_told_it_is_that_line() {
        let columns: Columns = Columns::PerRow {
            explicit: Vec::new(),
            only_mapped: false,
        };
        let line = Row {
            number: 2,
            values: vec![
                ("customer_id".into(), json!("c2")),
                ("date".into(), json!("2025-01-02")),
            ],
        };
        let error = columns
            .for_row(&line, |keys, explicit, only_mapped| {
                plan(LogKind::Transactions, keys, explicit, only_mapped)
            })
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "this line has no amount: none of its keys with a value holds it (keys: customer_id, \
             date); a key whose value is null counts as none, or map one with --map amount=KEY"
        );
    }

    #[test]
    fn a_row_becomes_an_order_and_a_bad_one_says_why() {
        let plan = plan(
            LogKind::Transactions,
            &headers(&["customer_id", "date", "number_of_cds", "dollar_value"]),
            &[],
            false,
        )
        .unwrap();
        let importer = TransactionImporter::new(
            LogKind::Transactions,
            Columns::Fixed(plan),
            TimeParser::default(),
            "cdnow".into(),
            "Order Completed".into(),
            Some("USD".into()),
        );
        let row = |n: u64, values: [&str; 4]| Row {
            number: n,
            values: ["customer_id", "date", "number_of_cds", "dollar_value"]
                .iter()
                .zip(values)
                .map(|(c, v)| (c.to_string(), Value::String(v.to_string())))
                .collect(),
        };
        let good = importer
            .row(&row(1, ["00001", "19970101", "1", "11.77"]))
            .event
            .unwrap();
        assert_eq!(good.user_id.as_deref(), Some("00001"));
        assert_eq!(good.timestamp.to_rfc3339(), "1997-01-01T00:00:00+00:00");
        assert_eq!(good.typed.revenue, Some(11.77));
        assert_eq!(
            serde_json::from_str::<Value>(good.properties.as_deref().unwrap()).unwrap(),
            json!({"revenue": 11.77, "quantity": 1.0, "currency": "USD"})
        );
        // The same purchase twice in the log is two purchases.
        let twin = importer
            .row(&row(2, ["00001", "19970101", "1", "11.77"]))
            .event
            .unwrap();
        assert_ne!(twin.message_id, good.message_id);
        let bad = importer.row(&row(3, ["00002", "1997-13-45", "1", "5"]));
        assert_eq!(bad.event, None);
        assert_eq!(bad.problems[0].column.as_deref(), Some("date"));
        let bad = importer.row(&row(4, ["00002", "19970101", "1", "n/a"]));
        assert_eq!(
            bad.problems[0].reason,
            "`n/a` is not an amount; write the number alone (`1234.50`), and the currency in a \
             currency column or --currency"
        );
        let bad = importer.row(&row(5, ["", "19970101", "1", "5"]));
        assert_eq!(
            (
                bad.problems[0].column.as_deref(),
                bad.problems[0].reason.as_str()
            ),
            (Some("customer_id"), "the customer is missing")
        );
    }

    #[test]
    fn tickets_and_surveys_name_their_customer_by_id_or_by_email_in_the_same_file() {
        let columns = ["customer_id", "correo", "fecha", "asunto"];
        for kind in [LogKind::Tickets, LogKind::Surveys] {
            let plan = plan(kind, &headers(&columns), &[], false).unwrap();
            let importer = TransactionImporter::new(
                kind,
                Columns::Fixed(plan),
                TimeParser::default(),
                "helpdesk".into(),
                "Ticket Created".into(),
                None,
            );
            let row = |n: u64, values: [&str; 4]| Row {
                number: n,
                values: columns
                    .iter()
                    .zip(values)
                    .map(|(c, v)| (c.to_string(), Value::String(v.to_string())))
                    .collect(),
            };
            let by_id = importer.row(&row(1, ["c-7", "", "2026-11-02", "Envío"]));
            assert_eq!(by_id.event.unwrap().user_id.as_deref(), Some("c-7"));
            let by_email = importer
                .row(&row(2, ["", "ana@example.com", "2026-11-03", "Factura"]))
                .event
                .unwrap_or_else(|| panic!("{kind:?}: a row named by email was skipped"));
            assert_eq!(by_email.user_id, None);
            assert_eq!(by_email.typed.email.as_deref(), Some("ana@example.com"));
            let nobody = importer.row(&row(3, ["", "", "2026-11-04", "?"]));
            assert_eq!(nobody.event, None);
            assert_eq!(
                (
                    nobody.problems[0].column.as_deref(),
                    nobody.problems[0].reason.as_str()
                ),
                (
                    Some("customer_id"),
                    "the row names no customer (no id and no email)"
                )
            );
        }
    }

    /// A column named like a mapped field is a property of its own, never text over it.
    #[test]
    fn a_column_named_like_a_mapped_field_keeps_its_own_name() {
        let plan = plan(
            LogKind::Transactions,
            &headers(&[
                "cliente", "fecha", "monto", "revenue", "cantidad", "quantity",
            ]),
            &[],
            false,
        )
        .unwrap();
        let names: Vec<String> = plan.iter().map(|(_, f)| f.describe()).collect();
        assert_eq!(
            names,
            [
                "customer",
                "date",
                "amount",
                "property:revenue_2",
                "quantity",
                "property:quantity_2"
            ]
        );
    }

    #[test]
    fn currencies_are_written_as_their_codes() {
        for (written, code) in [
            ("mxn", "MXN"),
            (" MXN ", "MXN"),
            ("pesos", "MXN"),
            ("M.N.", "MXN"),
            ("Dólares", "USD"),
            ("usd", "USD"),
            ("$", "$"),
            ("bitcoin", "bitcoin"),
        ] {
            assert_eq!(currency_code(written), code, "{written}");
        }
    }

    /// A survey's score is the number it is, however written (`9,5` too); a word stays a word.
    #[test]
    fn survey_scores_are_numbers_however_written() {
        let columns = ["customer_id", "fecha", "nps"];
        let plan = plan(LogKind::Surveys, &headers(&columns), &[], false).unwrap();
        let importer = TransactionImporter::new(
            LogKind::Surveys,
            Columns::Fixed(plan),
            TimeParser::default(),
            "encuestas".into(),
            "Survey Responded".into(),
            None,
        );
        for (written, read) in [
            ("9,5", json!(9.5)),
            ("8", json!(8.0)),
            ("Excelente", json!("Excelente")),
        ] {
            let row = Row {
                number: 1,
                values: columns
                    .iter()
                    .zip(["c-1", "2026-11-02", written])
                    .map(|(c, v)| (c.to_string(), Value::String(v.to_string())))
                    .collect(),
            };
            let event = importer.row(&row).event.unwrap();
            let properties: Value =
                serde_json::from_str(event.properties.as_deref().unwrap()).unwrap();
            assert_eq!(properties["score"], read, "{written}");
        }
    }
}
