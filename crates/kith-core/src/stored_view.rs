//! Journal records read in place. A [`StoredView`] decodes the bytes [`Stored::encode`] wrote
//! with every text borrowed from them, so turning records into table rows copies each text once
//! (into the column) instead of first rebuilding a dozen owned strings per event.
//!
//! Field order and serde attributes must match [`Event`], [`TypedFields`] and [`Rejection`]
//! exactly (postcard encodes fields by position); [`EventView::to_event`] and
//! [`RejectionView::to_rejection`] name every field, so a field added to one side and not the
//! other fails to compile or fails the round-trip tests.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::event::{DecodeError, Event, MessageType, Rejection, Stored, TypedFields};

/// An encoded [`Stored`], borrowed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
// Most records are events, decoded one at a time; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum StoredView<'a> {
    Event(#[serde(borrow)] EventView<'a>),
    Rejected(#[serde(borrow)] RejectionView<'a>),
}

/// An encoded [`Event`], borrowed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventView<'a> {
    pub message_id: &'a str,
    pub kind: MessageType,
    #[serde(borrow)]
    pub event: Option<&'a str>,
    #[serde(borrow)]
    pub user_id: Option<&'a str>,
    #[serde(borrow)]
    pub anonymous_id: Option<&'a str>,
    #[serde(borrow)]
    pub group_id: Option<&'a str>,
    #[serde(borrow)]
    pub previous_id: Option<&'a str>,
    pub source: &'a str,
    /// The times are microseconds since the epoch, as the tables store them (see [`micros`]).
    #[serde(deserialize_with = "micros")]
    pub timestamp: i64,
    #[serde(deserialize_with = "micros_option")]
    pub original_timestamp: Option<i64>,
    #[serde(deserialize_with = "micros_option")]
    pub sent_at: Option<i64>,
    #[serde(deserialize_with = "micros")]
    pub received_at: i64,
    #[serde(borrow, deserialize_with = "json_text")]
    pub properties: Option<&'a str>,
    #[serde(borrow, deserialize_with = "json_text")]
    pub context: Option<&'a str>,
    #[serde(borrow, deserialize_with = "json_text")]
    pub traits: Option<&'a str>,
    #[serde(borrow, deserialize_with = "json_text")]
    pub integrations: Option<&'a str>,
    #[serde(borrow, deserialize_with = "json_text")]
    pub extra: Option<&'a str>,
    #[serde(borrow)]
    pub typed: TypedFieldsView<'a>,
}

/// Encoded [`TypedFields`], borrowed (`context_identity` is never encoded).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TypedFieldsView<'a> {
    pub revenue: Option<f64>,
    #[serde(borrow)]
    pub currency: Option<&'a str>,
    #[serde(borrow)]
    pub order_id: Option<&'a str>,
    #[serde(borrow)]
    pub page_url: Option<&'a str>,
    #[serde(borrow)]
    pub page_path: Option<&'a str>,
    #[serde(borrow)]
    pub referrer: Option<&'a str>,
    #[serde(borrow)]
    pub email: Option<&'a str>,
    #[serde(borrow)]
    pub library_name: Option<&'a str>,
}

/// An encoded [`Rejection`], borrowed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RejectionView<'a> {
    pub index: usize,
    pub code: &'a str,
    pub message: &'a str,
    #[serde(borrow)]
    pub field: Option<&'a str>,
    pub source: &'a str,
    /// Microseconds since the epoch.
    #[serde(deserialize_with = "micros")]
    pub received_at: i64,
    #[serde(borrow)]
    pub message_id: Option<&'a str>,
    pub raw: &'a str,
}

impl<'a> StoredView<'a> {
    /// Reads bytes written by [`Stored::encode`] (or [`Stored::encode_event`]).
    pub fn decode(bytes: &'a [u8]) -> Result<StoredView<'a>, DecodeError> {
        postcard::from_bytes(bytes).map_err(|e| DecodeError::new(e.to_string()))
    }

    pub fn to_stored(&self) -> Stored {
        match self {
            StoredView::Event(e) => Stored::Event(e.to_event()),
            StoredView::Rejected(r) => Stored::Rejected(r.to_rejection()),
        }
    }
}

/// The JSON objects are most of a record's bytes: they are checked with `simdutf8` (postcard
/// writes a text exactly as bytes) instead of `str::from_utf8`, a few times slower on them.
fn json_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de str>, D::Error> {
    match Option::<&'de [u8]>::deserialize(d)? {
        None => Ok(None),
        Some(bytes) => simdutf8::basic::from_utf8(bytes)
            .map(Some)
            .map_err(|_| serde::de::Error::custom("a JSON text in the record is not UTF-8")),
    }
}

/// The microseconds `chrono::serde::ts_microseconds` wrote, kept as the integer the tables store
/// instead of becoming a `DateTime` (a calendar computation each way, for every time of every
/// event sealed). Values a `DateTime<Utc>` cannot hold are refused, as that decoder refused them.
fn micros<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    in_datetime_range(i64::deserialize(d)?)
}

/// [`micros`] of `ts_microseconds_option`.
fn micros_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<i64>::deserialize(d)?
        .map(in_datetime_range)
        .transpose()
}

fn in_datetime_range<E: serde::de::Error>(micros: i64) -> Result<i64, E> {
    const MIN: i64 = DateTime::<Utc>::MIN_UTC.timestamp_micros();
    const MAX: i64 = DateTime::<Utc>::MAX_UTC.timestamp_micros();
    if (MIN..=MAX).contains(&micros) {
        Ok(micros)
    } else {
        Err(E::custom(format!(
            "a time in the record ({micros} µs from the epoch) is out of range"
        )))
    }
}

/// A time [`micros`] read back; in range, as decoding checked.
fn datetime(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn owned(text: Option<&str>) -> Option<String> {
    text.map(str::to_string)
}

impl EventView<'_> {
    pub fn to_event(&self) -> Event {
        let t = &self.typed;
        Event {
            message_id: self.message_id.to_string(),
            kind: self.kind,
            event: owned(self.event),
            user_id: owned(self.user_id),
            anonymous_id: owned(self.anonymous_id),
            group_id: owned(self.group_id),
            previous_id: owned(self.previous_id),
            source: self.source.to_string(),
            timestamp: datetime(self.timestamp),
            original_timestamp: self.original_timestamp.map(datetime),
            sent_at: self.sent_at.map(datetime),
            received_at: datetime(self.received_at),
            properties: owned(self.properties),
            context: owned(self.context),
            traits: owned(self.traits),
            integrations: owned(self.integrations),
            extra: owned(self.extra),
            typed: TypedFields {
                revenue: t.revenue,
                currency: owned(t.currency),
                order_id: owned(t.order_id),
                page_url: owned(t.page_url),
                page_path: owned(t.page_path),
                referrer: owned(t.referrer),
                email: owned(t.email),
                library_name: owned(t.library_name),
                context_identity: None,
                context_names_ip: false,
            },
        }
    }
}

impl RejectionView<'_> {
    pub fn to_rejection(&self) -> Rejection {
        Rejection {
            index: self.index,
            code: self.code.to_string(),
            message: self.message.to_string(),
            field: owned(self.field),
            source: self.source.to_string(),
            received_at: datetime(self.received_at),
            message_id: owned(self.message_id),
            raw: self.raw.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// Every field set, each to a distinct value, so a field read from the wrong position shows.
    fn full_event() -> Event {
        let at = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 123_000).unwrap();
        Event {
            message_id: "m-1".into(),
            kind: MessageType::Page,
            event: Some("Viewed".into()),
            user_id: Some("u-1".into()),
            anonymous_id: Some("a-1".into()),
            group_id: Some("g-1".into()),
            previous_id: Some("p-1".into()),
            source: "web".into(),
            timestamp: at(1),
            original_timestamp: Some(at(2)),
            sent_at: Some(at(3)),
            received_at: at(4),
            properties: Some(r#"{"revenue":12.5}"#.into()),
            context: Some(r#"{"ip":"1.2.3.4"}"#.into()),
            traits: Some(r#"{"plan":"pro"}"#.into()),
            integrations: Some(r#"{"All":true}"#.into()),
            extra: Some(r#"{"category":"x"}"#.into()),
            typed: TypedFields {
                revenue: Some(12.5),
                currency: Some("MXN".into()),
                order_id: Some("o-1".into()),
                page_url: Some("https://t.mx/a".into()),
                page_path: Some("/a".into()),
                referrer: Some("https://g.com/".into()),
                email: Some("ana@t.mx".into()),
                library_name: Some("analytics.js".into()),
                context_identity: None,
                context_names_ip: false,
            },
        }
    }

    #[test]
    fn an_encoded_event_reads_back_in_place_field_for_field() {
        let event = full_event();
        let bytes = Stored::Event(event.clone()).encode();
        let view = StoredView::decode(&bytes).unwrap();
        assert_eq!(view.to_stored(), Stored::Event(event.clone()));
        // The borrowing encoder writes the same bytes.
        assert_eq!(Stored::encode_event(&event), bytes);

        let sparse = Event {
            event: None,
            user_id: None,
            original_timestamp: None,
            sent_at: None,
            properties: None,
            typed: TypedFields::default(),
            ..event
        };
        let bytes = Stored::Event(sparse.clone()).encode();
        assert_eq!(
            StoredView::decode(&bytes).unwrap().to_stored(),
            Stored::Event(sparse)
        );
    }

    #[test]
    fn an_encoded_rejection_reads_back_in_place() {
        let rejection = Rejection {
            index: 7,
            code: "missing_identity".into(),
            message: "no userId or anonymousId".into(),
            field: Some("userId".into()),
            source: "web".into(),
            received_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            message_id: Some("m-9".into()),
            raw: r#"{"type":"track"}"#.into(),
        };
        let bytes = Stored::Rejected(rejection.clone()).encode();
        let view = StoredView::decode(&bytes).unwrap();
        assert!(matches!(view, StoredView::Rejected(_)));
        assert_eq!(view.to_stored(), Stored::Rejected(rejection));
    }

    #[test]
    fn truncated_or_foreign_bytes_are_an_error_not_a_panic() {
        let bytes = Stored::Event(full_event()).encode();
        for cut in [0, 1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(StoredView::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(StoredView::decode(&[9, 9, 9]).is_err());
    }

    /// How postcard writes an `i64` on its own, as it does inside a record.
    fn postcard_i64(value: i64) -> Vec<u8> {
        postcard::to_allocvec(&value).expect("an i64 always encodes")
    }

    #[test]
    fn times_read_back_as_microseconds_and_out_of_range_ones_are_an_error() {
        let micros = 1_700_000_000_123_456;
        let event = Event {
            timestamp: DateTime::from_timestamp_micros(micros).unwrap(),
            ..full_event()
        };
        let bytes = Stored::Event(event.clone()).encode();
        let Ok(StoredView::Event(view)) = StoredView::decode(&bytes) else {
            panic!("the record decodes as an event");
        };
        assert_eq!(view.timestamp, micros);
        assert_eq!(view.received_at, event.received_at.timestamp_micros());
        assert_eq!(
            view.original_timestamp,
            event.original_timestamp.map(|t| t.timestamp_micros())
        );

        // The same record with a timestamp no `DateTime<Utc>` can hold.
        let written = postcard_i64(micros);
        let at = bytes
            .windows(written.len())
            .position(|w| w == written.as_slice())
            .expect("the timestamp is in the record");
        let with_timestamp = |micros: i64| {
            let mut forged = bytes[..at].to_vec();
            forged.extend(postcard_i64(micros));
            forged.extend_from_slice(&bytes[at + written.len()..]);
            forged
        };
        // The splice itself is sound: an in-range value put there reads back.
        let later = with_timestamp(micros + 1);
        let Ok(StoredView::Event(moved)) = StoredView::decode(&later) else {
            panic!("the record with a later timestamp decodes");
        };
        assert_eq!(moved.timestamp, micros + 1);
        assert!(StoredView::decode(&with_timestamp(i64::MAX)).is_err());
        assert!(StoredView::decode(&with_timestamp(i64::MIN)).is_err());
    }

    #[test]
    fn a_json_text_that_is_not_utf8_is_an_error() {
        let event = Event {
            context: Some(r#"{"k":"AAAA"}"#.into()),
            ..full_event()
        };
        let mut bytes = Stored::Event(event).encode();
        let at = bytes
            .windows(4)
            .position(|w| w == b"AAAA")
            .expect("the context's text is in the record");
        assert!(StoredView::decode(&bytes).is_ok());
        // 0xFF never occurs in UTF-8.
        bytes[at] = 0xFF;
        assert!(StoredView::decode(&bytes).is_err());
    }
}
