//! Contacts (a CRM export) → `identify` events that create or update profiles through the same
//! identity rules as every other event.

use chrono::{DateTime, Utc};
use kith_core::{Event, MessageType, TypedFields};
use kith_identity::{IdType, Normalizer};
use serde_json::{Map, Value, json};

use crate::mapping::{ContactField, ContactMapping};
use crate::reader::{BadRow, Row, json_kind, text_of};
use crate::rejects::{Action, Problem};
use crate::time::TimeParser;

/// Turns rows of a contacts file into events.
pub struct ContactImporter {
    mapping: ContactMapping,
    /// How each column is read, fixed from the header line when the file has one.
    plan: Option<Vec<(String, ContactField)>>,
    normalizer: Normalizer,
    time: TimeParser,
    source: String,
    /// The time of rows without a time column.
    import_time: DateTime<Utc>,
    fingerprint: String,
}

/// What one row gave: an event to store (unless the row was skipped) and its problems.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOutcome {
    pub event: Option<Event>,
    pub problems: Vec<Problem>,
}

impl RowOutcome {
    /// The outcome, with row `row`'s event refused when it is larger than an event may be
    /// (`MAX_EVENT_BYTES`, as over HTTP): a cell holding a document would make a row that
    /// queries joining or sorting events cannot hold.
    pub fn within_event_limit(mut self, row: u64) -> RowOutcome {
        let limit = kith_core::limits::MAX_EVENT_BYTES;
        if let Some(event) = &self.event {
            let texts = [
                &event.properties,
                &event.context,
                &event.traits,
                &event.integrations,
                &event.extra,
                &event.event,
                &event.user_id,
                &event.anonymous_id,
                &event.group_id,
                &event.previous_id,
            ];
            let bytes: usize = event.message_id.len()
                + texts
                    .iter()
                    .map(|text| text.as_ref().map_or(0, String::len))
                    .sum::<usize>();
            if bytes > limit {
                self.event = None;
                self.problems.push(Problem {
                    row,
                    column: None,
                    value: None,
                    reason: format!(
                        "the row makes an event of {bytes} bytes; events may be at most {limit} \
                         bytes, as over HTTP (a cell holding a whole document?)"
                    ),
                    action: crate::rejects::Action::RowSkipped,
                });
            }
        }
        self
    }
}

impl ContactImporter {
    pub fn new(
        mapping: ContactMapping,
        headers: Option<&[String]>,
        normalizer: Normalizer,
        time: TimeParser,
        source: String,
        import_time: DateTime<Utc>,
    ) -> ContactImporter {
        let plan = headers.map(|h| mapping.plan(h));
        let fingerprint = format!(
            "{} source={source} zone={}",
            mapping.fingerprint(),
            time.zone().name()
        );
        ContactImporter {
            mapping,
            plan,
            normalizer,
            time,
            source,
            import_time,
            fingerprint,
        }
    }

    /// What identifies this import's mapping, for its message ids and checkpoint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The problem a row that could not be read is.
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
        let owned_plan;
        let plan = match &self.plan {
            Some(plan) => plan,
            None => {
                let columns: Vec<String> = row.values.iter().map(|(c, _)| c.clone()).collect();
                owned_plan = self.mapping.plan(&columns);
                &owned_plan
            }
        };
        let mut problems = Vec::new();
        let problem = |column: &str, value: Option<&Value>, reason: String, action| Problem {
            row: row.number,
            column: Some(column.to_string()),
            value: value.map(|v| text_of(v).unwrap_or_else(|| v.to_string())),
            reason,
            action,
        };
        let mut user_id = None;
        let mut traits = Map::new();
        let mut external_ids = Vec::new();
        let mut timestamp = None;
        for (column, field) in plan {
            let Some(value) = row.get(column) else {
                continue;
            };
            let id_type = match field {
                ContactField::Ignore => continue,
                ContactField::Trait(name) => {
                    traits.insert(name.clone(), value.clone());
                    continue;
                }
                ContactField::Time => {
                    let parsed = text_of(value)
                        .ok_or_else(|| format!("a time must be text, not {}", json_kind(value)))
                        .and_then(|text| self.time.parse(&text).map_err(|e| e.to_string()));
                    match parsed {
                        Ok(t) => timestamp = Some(t),
                        Err(reason) => {
                            problems.push(problem(column, Some(value), reason, Action::RowSkipped));
                            return RowOutcome {
                                event: None,
                                problems,
                            };
                        }
                    }
                    continue;
                }
                ContactField::UserId => IdType::UserId,
                ContactField::Email => IdType::Email,
                ContactField::Phone => IdType::Phone,
                ContactField::External(name) => IdType::External(name.clone()),
            };
            let Some(text) = text_of(value) else {
                let reason = format!("an identifier must be text, not {}", json_kind(value));
                problems.push(problem(column, Some(value), reason, Action::ValueDropped));
                continue;
            };
            let identifier = match self.normalizer.normalize(id_type.clone(), &text) {
                Ok(identifier) => identifier,
                Err(refused) => {
                    let reason = format!("not used as {}: {refused}", id_type.name());
                    problems.push(problem(column, Some(value), reason, Action::ValueDropped));
                    continue;
                }
            };
            match id_type {
                IdType::UserId => user_id = Some(identifier.value),
                IdType::Email => {
                    traits.insert("email".into(), Value::String(identifier.value));
                }
                IdType::Phone => {
                    traits.insert("phone".into(), Value::String(identifier.value));
                }
                IdType::External(name) => external_ids.push(json!({
                    "id": identifier.value,
                    "type": name,
                    "collection": "users",
                    "encoding": "none",
                })),
                IdType::AnonymousId => {}
            }
        }
        let has_identifier = user_id.is_some()
            || traits.contains_key("email")
            || traits.contains_key("phone")
            || !external_ids.is_empty();
        if !has_identifier {
            let why = if problems.is_empty() {
                "the row has no identifier: map a column to user_id, email, phone or external:TYPE"
            } else {
                "none of the row's identifiers is usable (see the values dropped above)"
            };
            problems.push(Problem {
                row: row.number,
                column: None,
                value: None,
                reason: why.to_string(),
                action: Action::RowSkipped,
            });
            return RowOutcome {
                event: None,
                problems,
            };
        }
        let mut context =
            json!({"library": {"name": "kith-import", "version": env!("CARGO_PKG_VERSION")}});
        if !external_ids.is_empty() {
            context["externalIds"] = Value::Array(external_ids);
        }
        let email = traits
            .get("email")
            .and_then(Value::as_str)
            .map(str::to_string);
        let time = timestamp.unwrap_or(self.import_time);
        let event = Event {
            message_id: crate::message_id("contacts", &self.fingerprint, row),
            kind: MessageType::Identify,
            event: None,
            user_id,
            anonymous_id: None,
            group_id: None,
            previous_id: None,
            source: self.source.clone(),
            timestamp: time,
            original_timestamp: Some(time),
            sent_at: None,
            received_at: Utc::now(),
            properties: None,
            context: Some(context.to_string()),
            traits: Some(Value::Object(traits).to_string()),
            integrations: None,
            extra: None,
            typed: TypedFields {
                email,
                library_name: Some("kith-import".into()),
                ..TypedFields::default()
            },
        };
        RowOutcome {
            event: Some(event),
            problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn importer(headers: &[&str]) -> ContactImporter {
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        let mapping = ContactMapping::new(Vec::new(), Vec::new(), false, Some(&headers)).unwrap();
        ContactImporter::new(
            mapping,
            Some(&headers),
            Normalizer::new("MX", Vec::new()).unwrap(),
            TimeParser::new(None, Some("America/Mexico_City")).unwrap(),
            "crm".into(),
            DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    fn row(number: u64, values: &[(&str, &str)]) -> Row {
        Row {
            number,
            values: values
                .iter()
                .map(|(c, v)| (c.to_string(), Value::String(v.to_string())))
                .collect(),
        }
    }

    #[test]
    fn a_contact_becomes_an_identify_with_normalised_identifiers() {
        let importer = importer(&["Nombre", "Correo", "Celular", "Actualizado"]);
        let outcome = importer.row(&row(
            1,
            &[
                ("Nombre", "Ana"),
                ("Correo", " Ana@Example.COM "),
                ("Celular", "044 55 1234 5678"),
            ],
        ));
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        let event = outcome.event.unwrap();
        assert_eq!(event.kind, MessageType::Identify);
        assert_eq!(event.user_id, None);
        let traits: Value = serde_json::from_str(event.traits.as_deref().unwrap()).unwrap();
        assert_eq!(
            traits,
            json!({"nombre": "Ana", "email": "ana@example.com", "phone": "+525512345678"})
        );
        assert!(event.message_id.starts_with("import-contacts-"));
        // The same row gives the same id; a changed row another.
        let again = importer.row(&row(
            7,
            &[
                ("Nombre", "Ana"),
                ("Correo", " Ana@Example.COM "),
                ("Celular", "044 55 1234 5678"),
            ],
        ));
        assert_eq!(again.event.unwrap().message_id, event.message_id);
        let changed = importer.row(&row(
            1,
            &[("Nombre", "Ana María"), ("Correo", "ana@example.com")],
        ));
        assert_ne!(changed.event.unwrap().message_id, event.message_id);
    }

    #[test]
    fn bad_values_are_dropped_and_rows_without_identity_are_skipped_with_reasons() {
        let importer = importer(&["email", "phone", "updated_at"]);
        let partial = importer.row(&row(3, &[("email", "ana@example.com"), ("phone", "123")]));
        assert!(partial.event.is_some());
        assert_eq!(
            partial.problems,
            vec![Problem {
                row: 3,
                column: Some("phone".into()),
                value: Some("123".into()),
                reason: "not used as phone: `123` is not a valid phone number".into(),
                action: Action::ValueDropped,
            }]
        );
        let nothing = importer.row(&row(4, &[("email", "n/a")]));
        assert_eq!(nothing.event, None);
        assert_eq!(nothing.problems.len(), 2);
        assert_eq!(nothing.problems[1].action, Action::RowSkipped);
        let bad_time = importer.row(&row(
            5,
            &[("email", "b@example.com"), ("updated_at", "ayer")],
        ));
        assert_eq!(bad_time.event, None);
        assert_eq!(bad_time.problems[0].column.as_deref(), Some("updated_at"));
        assert_eq!(bad_time.problems[0].action, Action::RowSkipped);
        let timed = importer.row(&row(
            6,
            &[
                ("email", "c@example.com"),
                ("updated_at", "2025-05-01 09:00"),
            ],
        ));
        assert_eq!(
            timed.event.unwrap().timestamp,
            DateTime::parse_from_rfc3339("2025-05-01T15:00:00Z").unwrap()
        );
    }
}
