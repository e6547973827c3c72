//! Timestamp parsing and Segment's clock-skew rule.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// Parses the ISO-8601 forms SDKs send: RFC 3339 (`2024-05-01T10:00:00.123Z`, `+02:00`), offsets
/// without a colon (`+0200`, as some Java and Python clients print them) or without minutes
/// (`-08`), times without seconds (`2024-05-01T10:00Z`), naive date-times (taken as UTC) and
/// plain dates.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Some(t) = parse_zoned_timestamp(text) {
        return Some(t);
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    }
    None
}

/// The ISO-8601 date-times [`parse_timestamp`] reads that say their offset: RFC 3339, offsets
/// without a colon or without minutes, times without seconds. `None` for the others (a time
/// without an offset is read in whatever zone its reader assumes: UTC for events, the import's
/// `--timezone` for files).
pub fn parse_zoned_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    // Nearly every time an SDK sends reads here; the other forms are tried only after.
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    // `Z` as the offset it is, so the forms below read it too.
    let zoned = match text.strip_suffix(['Z', 'z']) {
        Some(time) => std::borrow::Cow::Owned(format!("{time}+00:00")),
        None => std::borrow::Cow::Borrowed(text),
    };
    // `%#z` reads `+02:00`, `+0200` and `+02`.
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M%#z",
        "%Y-%m-%d %H:%M%#z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(&zoned, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    None
}

/// Whether `text` is a date-time whose UTC offset lost its `+` to a space
/// (`2024-05-01T10:00:00 01:00`), as a `+` left unescaped in a URL's query does.
pub fn offset_lost_its_plus(text: &str) -> bool {
    let Some((time, offset)) = text.trim().rsplit_once(' ') else {
        return false;
    };
    let offset_shaped = matches!(offset.len(), 4 | 5)
        && offset.bytes().all(|b| b.is_ascii_digit() || b == b':')
        && offset.bytes().next().is_some_and(|b| b.is_ascii_digit());
    offset_shaped && parse_timestamp(&format!("{time}+{offset}")).is_some()
}

/// The years of the times Kith stores (see [`is_storable`]).
pub const STORABLE_YEARS: std::ops::RangeInclusive<i32> = 1900..=2189;

/// [`STORABLE_YEARS`] as messages write them: `1900–2189`.
pub fn storable_years() -> String {
    format!("{}–{}", STORABLE_YEARS.start(), STORABLE_YEARS.end())
}

/// Whether `time` is one Kith can store and query: from 1900 to 2189. The query engine works on
/// some times in nanoseconds (`date_trunc`, time windows, `now() - timestamp`), whose 64 bits
/// hold 292 years either side of 1970 and, for a difference, 292 years in all: one event of
/// 1700 made `now() - timestamp < INTERVAL '7 days'` fail over its whole table. Within these
/// years any two times, and any time and now, are less than 292 years apart. No customer event
/// happened outside them: such a time is a default value (Go's zero time is 0001-01-01) or a
/// clock far off.
pub fn is_storable(time: DateTime<Utc>) -> bool {
    use chrono::Datelike;
    STORABLE_YEARS.contains(&time.year())
}

/// The event time Kith records, following Segment's rule
/// `timestamp = receivedAt − (sentAt − originalTimestamp)`: the device's time of the call
/// (`originalTimestamp`, or the `timestamp` the SDK or caller sent, which Segment keeps as the
/// original) corrected by how far the device's clock was off when it sent the request, measured
/// against `arrived` (the time the request reached a server: now for live requests, the
/// recorded `receivedAt` for lines of a file; `None` when unknown, so nothing is corrected).
/// Without `sentAt` the device time stands; without any time the event is placed at
/// `received_at`. A request that sends both `timestamp` and `originalTimestamp` was corrected by
/// whoever sent it (a relay, a replay of events Segment processed): its `timestamp` stands.
pub fn event_time(
    explicit: Option<DateTime<Utc>>,
    original: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    arrived: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
) -> DateTime<Utc> {
    if let (Some(corrected), Some(_)) = (explicit, original) {
        return corrected;
    }
    let Some(device) = original.or(explicit) else {
        return received_at;
    };
    match (sent_at, arrived) {
        (Some(sent), Some(arrived)) => {
            let skew = sent.signed_duration_since(device);
            arrived.checked_sub_signed(skew).unwrap_or(device)
        }
        _ => device,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn an_offset_whose_plus_became_a_space_is_recognised() {
        for text in ["2024-05-01T10:00:00 01:00", "2024-05-01T10:00:00.123 0530"] {
            assert!(offset_lost_its_plus(text), "{text}");
        }
        for text in [
            "2024-05-01 10:00:00",
            "2024-05-01T10:00:00+01:00",
            "yesterday 10",
            "2024-05-01T10:00:00 ab:cd",
            "2024-05-01T10:00:00 ",
            "2024-05-01T10:00:00 01",
        ] {
            assert!(!offset_lost_its_plus(text), "{text}");
        }
    }

    #[test]
    fn storable_times_are_those_every_query_can_work_on() {
        for (year, storable) in [
            (1, false),
            (1700, false),
            (1899, false),
            (1900, true),
            (2026, true),
        ] {
            let time = Utc.with_ymd_and_hms(year, 12, 31, 23, 59, 59).unwrap();
            assert_eq!(is_storable(time), storable, "{time}");
        }
        for (year, storable) in [(2189, true), (2190, false), (2261, false), (9999, false)] {
            let time = Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap();
            assert_eq!(is_storable(time), storable, "{time}");
        }
    }

    #[test]
    fn parses_common_sdk_formats() {
        let expected = Utc.with_ymd_and_hms(2024, 5, 1, 8, 0, 0).unwrap();
        for text in [
            "2024-05-01T08:00:00Z",
            "2024-05-01T08:00:00.000Z",
            "2024-05-01T10:00:00+02:00",
            "2024-05-01T10:00:00+0200",
            "2024-05-01T08:00:00",
            "2024-05-01 08:00:00",
            // An offset of hours only, and times without seconds.
            "2024-05-01T00:00:00-08",
            "2024-05-01T10:00:00.000+02",
            "2024-05-01T08:00Z",
            "2024-05-01T10:00+02:00",
            "2024-05-01 09:00+0100",
            "2024-05-01T08:00",
            "2024-05-01 08:00",
        ] {
            assert_eq!(parse_timestamp(text), Some(expected), "{text}");
        }
        for not_a_time in [
            "2024-05-01T08Z",
            "2024-05-01T08:00:00+2",
            "2024-05-01T08:00:00ZZ",
        ] {
            assert_eq!(parse_timestamp(not_a_time), None, "{not_a_time}");
        }
        assert_eq!(
            parse_timestamp("2024-05-01"),
            Some(Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn clock_skew_is_corrected_from_sent_at() {
        let received = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
        // The device clock runs one hour fast: it says it sent at 13:00 and the event happened at 12:50.
        let sent = Utc.with_ymd_and_hms(2024, 5, 1, 13, 0, 0).unwrap();
        let device = Utc.with_ymd_and_hms(2024, 5, 1, 12, 50, 0).unwrap();
        let expected = Utc.with_ymd_and_hms(2024, 5, 1, 11, 50, 0).unwrap();
        let live = Some(received);
        assert_eq!(
            event_time(None, Some(device), Some(sent), live, received),
            expected
        );
        // SDKs (analytics.js, analytics-python, analytics-node) send the call's time as
        // `timestamp`: Segment keeps it as the original time and corrects it the same way.
        assert_eq!(
            event_time(Some(device), None, Some(sent), live, received),
            expected
        );
        // Both sent: already corrected by the sender.
        assert_eq!(
            event_time(Some(device), Some(device), Some(sent), live, received),
            device
        );
        // Without `sentAt`, or without knowing when the request arrived, the device time stands.
        assert_eq!(event_time(None, Some(device), None, live, received), device);
        assert_eq!(event_time(Some(device), None, None, live, received), device);
        assert_eq!(
            event_time(None, Some(device), Some(sent), None, received),
            device
        );
        assert_eq!(event_time(None, None, Some(sent), live, received), received);
    }

    #[test]
    fn a_historical_call_keeps_its_time_up_to_the_delivery_delay() {
        // A server-side SDK importing a 2020 order: it sends the order's time as `timestamp`
        // and stamps `sentAt` with its own (right) clock when it flushes 40 ms before arrival.
        let received = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
        let sent = received - chrono::Duration::milliseconds(40);
        let then = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(
            event_time(Some(then), None, Some(sent), Some(received), received),
            then + chrono::Duration::milliseconds(40)
        );
    }
}
