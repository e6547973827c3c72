//! Reading times out of files, with the format and time zone stated rather than guessed wrong.
//!
//! Without a format, a value is read as RFC 3339 (`2024-03-01T10:00:00Z`, any offset, also
//! written `+0000`), a date (`2024-03-01` or `20240301`), a date and time without zone
//! (`2024-03-01 10:00[:00]`, also with `T`), or Unix seconds (from 1973 on) or milliseconds. A
//! value without its own zone is in the import's time zone (UTC unless told). With a format
//! (strftime, e.g. `%d/%m/%Y %H:%M`), only that format is accepted; its `%b` and `%B` read
//! Spanish months too (`07-dic-2026`).

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TimeError {
    #[error("`{value}` does not match the time format `{format}`")]
    NoMatch { value: String, format: String },
    #[error(
        "`{0}` is not a time Kith recognises; give its format with --time-format (e.g. `%d/%m/%Y %H:%M`)"
    )]
    Unrecognised(String),
    #[error("`{value}` does not exist in {zone} (the clocks skipped it)")]
    Nonexistent { value: String, zone: String },
    #[error("`{0}` is not a time zone; use an IANA name such as America/Mexico_City, or UTC")]
    UnknownZone(String),
    #[error(
        "`{0}` is not a time format: it holds a `%` directive strftime does not have; use e.g. `%d/%m/%Y %H:%M` (see `man strftime`)"
    )]
    BadFormat(String),
    #[error(
        "`{0}` is outside the years {years}, the times Kith stores (it is usually a default value such as 0001-01-01, or a Unix time in another unit); correct it, or leave the cell empty",
        years = kith_core::time::storable_years()
    )]
    OutOfRange(String),
    #[error(
        "`{0}` as Unix seconds is a moment of 1970–1973, which no export means: an Excel date \
         (days since 1899-12-30) should be exported as a date, a date written YYYYMMDD must be a \
         real one, and another form needs --time-format"
    )]
    ImplausibleNumber(String),
    #[error(
        "`{value}` has a two-digit year, which `%Y` reads as the year {year}; write `%y` for \
         two-digit years (`{suggested}`)"
    )]
    TwoDigitYear {
        value: String,
        year: i32,
        suggested: String,
    },
}

/// Spanish month names and abbreviations, as exports write them (`07-dic-2026`, `3 de enero`),
/// with the English abbreviation strftime's `%b` and `%B` read.
const SPANISH_MONTHS: [(&str, &str); 25] = [
    ("enero", "Jan"),
    ("febrero", "Feb"),
    ("marzo", "Mar"),
    ("abril", "Apr"),
    ("mayo", "May"),
    ("junio", "Jun"),
    ("julio", "Jul"),
    ("agosto", "Aug"),
    ("septiembre", "Sep"),
    ("setiembre", "Sep"),
    ("octubre", "Oct"),
    ("noviembre", "Nov"),
    ("diciembre", "Dec"),
    ("ene", "Jan"),
    ("feb", "Feb"),
    ("mar", "Mar"),
    ("abr", "Apr"),
    ("may", "May"),
    ("jun", "Jun"),
    ("jul", "Jul"),
    ("ago", "Aug"),
    ("sept", "Sep"),
    ("sep", "Sep"),
    ("oct", "Oct"),
    ("dic", "Dec"),
];

/// `value` with a Spanish month name or abbreviation (a whole word, in any case, with or without
/// a trailing dot) written as the English abbreviation; `None` when it has none.
fn english_months(value: &str) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(value.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String, changed: &mut bool| {
        let lower = word.to_lowercase();
        match SPANISH_MONTHS.iter().find(|(spanish, _)| *spanish == lower) {
            Some((_, english)) => {
                out.push_str(english);
                *changed = true;
            }
            None => out.push_str(word),
        }
        word.clear();
    };
    for c in value.chars() {
        if c.is_alphabetic() {
            word.push(c);
        } else {
            flush(&mut word, &mut out, &mut changed);
            out.push(c);
        }
    }
    flush(&mut word, &mut out, &mut changed);
    changed.then_some(out)
}

/// How times in a file are read.
#[derive(Debug, Clone)]
pub struct TimeParser {
    format: Option<String>,
    zone: Tz,
}

impl Default for TimeParser {
    fn default() -> Self {
        TimeParser {
            format: None,
            zone: Tz::UTC,
        }
    }
}

impl TimeParser {
    pub fn new(format: Option<String>, zone: Option<&str>) -> Result<TimeParser, TimeError> {
        // Checked once here, rather than found on every row as "does not match".
        if let Some(format) = &format
            && chrono::format::StrftimeItems::new(format)
                .any(|item| matches!(item, chrono::format::Item::Error))
        {
            return Err(TimeError::BadFormat(format.clone()));
        }
        let zone = match zone {
            None => Tz::UTC,
            // `utc` and `america/mexico_city` are meant as the zones they spell.
            Some(name) => chrono_tz::TZ_VARIANTS
                .iter()
                .find(|zone| zone.name().eq_ignore_ascii_case(name.trim()))
                .copied()
                .ok_or_else(|| TimeError::UnknownZone(name.to_string()))?,
        };
        Ok(TimeParser { format, zone })
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The strftime format given, if any.
    pub fn format(&self) -> Option<&str> {
        self.format.as_deref()
    }

    /// How times are read, for a person: the zone and the format.
    pub fn settings(&self) -> [(String, String); 2] {
        [
            ("timezone".into(), self.zone.name().to_string()),
            (
                "time_format".into(),
                self.format
                    .clone()
                    .unwrap_or_else(|| "(recognised forms)".into()),
            ),
        ]
    }

    /// Reads one time; a time outside what the event tables can hold (see
    /// [`kith_core::time::is_storable`]) is an error, as over HTTP.
    pub fn parse(&self, raw: &str) -> Result<DateTime<Utc>, TimeError> {
        let time = self.read(raw.trim())?;
        if kith_core::time::is_storable(time) {
            Ok(time)
        } else {
            Err(TimeError::OutOfRange(raw.trim().to_string()))
        }
    }

    fn read(&self, value: &str) -> Result<DateTime<Utc>, TimeError> {
        if let Some(format) = &self.format {
            let read = self.parse_with(value, format).or_else(|e| {
                // `07-dic-2026` with `%d-%b-%Y`: Spanish months, as English ones.
                match english_months(value) {
                    Some(english) if format.contains("%b") || format.contains("%B") => {
                        self.parse_with(&english, format).map_err(|_| e)
                    }
                    _ => Err(e),
                }
            })?;
            // `3/4/24` read by `%Y` is the year 24, which no one meant (`0001-01-01`, written
            // with four digits, is a default value, told as out of range below).
            let four_digits = value
                .split(|c: char| !c.is_ascii_digit())
                .any(|run| run.len() >= 4);
            if read.year() < 100 && format.contains("%Y") && !four_digits {
                return Err(TimeError::TwoDigitYear {
                    value: value.to_string(),
                    year: read.year(),
                    suggested: format.replace("%Y", "%y"),
                });
            }
            return Ok(read);
        }
        // Times that say their offset read as events' do (`+0000` as Java and JavaScript
        // exports write it, `-08`, `T10:00Z`); the others in `--timezone`.
        if let Some(t) = kith_core::time::parse_zoned_timestamp(value) {
            return Ok(t);
        }
        for format in [
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M",
            "%Y-%m-%dT%H:%M",
        ] {
            if let Ok(naive) = NaiveDateTime::parse_from_str(value, format) {
                return self.local(naive, value);
            }
        }
        if let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
            return self.local(date.and_time(chrono::NaiveTime::MIN), value);
        }
        // Eight digits that read as a calendar date are one (`19970101`, as in CDNOW's log):
        // as Unix seconds they would all fall in 1970–1973.
        if value.len() == 8
            && value.bytes().all(|b| b.is_ascii_digit())
            && let Ok(date) = NaiveDate::parse_from_str(value, "%Y%m%d")
        {
            return self.local(date.and_time(chrono::NaiveTime::MIN), value);
        }
        if let Ok(number) = value.parse::<i64>() {
            // Unix seconds before March 1973 (below 100,000,000) are Excel's day numbers
            // (`45292`), dates that are not (`20241301`) or placeholders (`0`), not times.
            if number.abs() < 100_000_000 {
                return Err(TimeError::ImplausibleNumber(value.to_string()));
            }
            // Seconds until the year 5138; beyond that they must be milliseconds.
            let parsed = if number.abs() < 100_000_000_000 {
                DateTime::from_timestamp(number, 0)
            } else {
                DateTime::from_timestamp_millis(number)
            };
            if let Some(t) = parsed {
                return Ok(t);
            }
        }
        Err(TimeError::Unrecognised(value.to_string()))
    }

    fn parse_with(&self, value: &str, format: &str) -> Result<DateTime<Utc>, TimeError> {
        let no_match = || TimeError::NoMatch {
            value: value.to_string(),
            format: format.to_string(),
        };
        if let Ok(t) = DateTime::parse_from_str(value, format) {
            return Ok(t.with_timezone(&Utc));
        }
        if let Ok(naive) = NaiveDateTime::parse_from_str(value, format) {
            return self.local(naive, value);
        }
        let date = NaiveDate::parse_from_str(value, format).map_err(|_| no_match())?;
        self.local(date.and_time(chrono::NaiveTime::MIN), value)
    }

    /// A wall-clock time in the import's zone. In the hour clocks fall back, the earlier instant.
    fn local(&self, naive: NaiveDateTime, value: &str) -> Result<DateTime<Utc>, TimeError> {
        match self.zone.from_local_datetime(&naive) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t.with_timezone(&Utc)),
            LocalResult::None => Err(TimeError::Nonexistent {
                value: value.to_string(),
                zone: self.zone.name().to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn common_shapes_are_read_in_the_stated_zone() {
        let mexico = TimeParser::new(None, Some("America/Mexico_City")).unwrap();
        // Mexico City has kept UTC-6 all year since 2022.
        assert_eq!(
            mexico.parse("2024-03-01 10:00").unwrap(),
            utc("2024-03-01T16:00:00Z")
        );
        assert_eq!(
            mexico.parse("2024-03-01").unwrap(),
            utc("2024-03-01T06:00:00Z")
        );
        // An explicit offset wins over the zone.
        assert_eq!(
            mexico.parse("2024-03-01T10:00:00+01:00").unwrap(),
            utc("2024-03-01T09:00:00Z")
        );
        let default = TimeParser::default();
        assert_eq!(
            default.parse("1709287200").unwrap(),
            utc("2024-03-01T10:00:00Z")
        );
        assert_eq!(
            default.parse("1709287200000").unwrap(),
            utc("2024-03-01T10:00:00Z")
        );
        assert_eq!(
            default.parse("19970101").unwrap(),
            utc("1997-01-01T00:00:00Z")
        );
        assert!(matches!(
            default.parse("01/03/2024"),
            Err(TimeError::Unrecognised(_))
        ));
        // Numbers no export means as Unix seconds: Excel's day numbers, dates that are not.
        for number in ["45292", "20241301", "0", "-1"] {
            assert!(
                matches!(default.parse(number), Err(TimeError::ImplausibleNumber(_))),
                "{number}"
            );
        }
    }

    /// Shapes exports write: offsets without a colon, Spanish months, and a two-digit year read
    /// by `%Y` told to use `%y`.
    #[test]
    fn exports_own_shapes_are_read_or_told_how() {
        let default = TimeParser::default();
        assert_eq!(
            default.parse("2024-03-10T23:30:00.000+0000").unwrap(),
            utc("2024-03-10T23:30:00Z")
        );
        assert_eq!(
            default.parse("2024-03-10T17:30:00-0600").unwrap(),
            utc("2024-03-10T23:30:00Z")
        );
        // An offset of hours only, and times without seconds, as events read them; without an
        // offset, in `--timezone`.
        assert_eq!(
            default.parse("2024-03-10T15:30:00-08").unwrap(),
            utc("2024-03-10T23:30:00Z")
        );
        assert_eq!(
            default.parse("2024-03-10T23:30Z").unwrap(),
            utc("2024-03-10T23:30:00Z")
        );
        let mexico = TimeParser::new(None, Some("America/Mexico_City")).unwrap();
        assert_eq!(
            mexico.parse("2024-03-10T17:30").unwrap(),
            utc("2024-03-10T23:30:00Z")
        );
        let spanish =
            TimeParser::new(Some("%d-%b-%Y".into()), Some("America/Mexico_City")).unwrap();
        assert_eq!(
            spanish.parse("07-dic-2026").unwrap(),
            utc("2026-12-07T06:00:00Z")
        );
        assert_eq!(
            spanish.parse("07-Ene-2026").unwrap(),
            utc("2026-01-07T06:00:00Z")
        );
        assert_eq!(
            spanish.parse("07-Dec-2026").unwrap(),
            utc("2026-12-07T06:00:00Z")
        );
        assert!(matches!(
            spanish.parse("07-xyz-2026"),
            Err(TimeError::NoMatch { .. })
        ));
        let long = TimeParser::new(Some("%d de %B de %Y".into()), None).unwrap();
        assert_eq!(
            long.parse("3 de enero de 2025").unwrap(),
            utc("2025-01-03T00:00:00Z")
        );
        let four = TimeParser::new(Some("%d/%m/%Y".into()), None).unwrap();
        assert!(matches!(
            four.parse("01/01/0001"),
            Err(TimeError::OutOfRange(_))
        ));
        assert_eq!(
            four.parse("3/4/24").unwrap_err().to_string(),
            "`3/4/24` has a two-digit year, which `%Y` reads as the year 24; write `%y` for \
             two-digit years (`%d/%m/%y`)"
        );
    }

    #[test]
    fn an_explicit_format_is_the_only_one_accepted() {
        let parser = TimeParser::new(Some("%d/%m/%Y".into()), None).unwrap();
        assert_eq!(
            parser.parse("01/03/2024").unwrap(),
            utc("2024-03-01T00:00:00Z")
        );
        assert_eq!(
            parser.parse("2024-03-01"),
            Err(TimeError::NoMatch {
                value: "2024-03-01".into(),
                format: "%d/%m/%Y".into()
            })
        );
        let cdnow = TimeParser::new(Some("%Y%m%d".into()), None).unwrap();
        assert_eq!(
            cdnow.parse("19970101").unwrap(),
            utc("1997-01-01T00:00:00Z")
        );
    }

    #[test]
    fn times_the_event_tables_cannot_hold_are_refused() {
        let default = TimeParser::default();
        for value in [
            "0001-01-01",
            "0001-01-01T00:00:00Z",
            "1700-01-01",
            "2190-01-01",
            "2262-05-01",
            "99999999999",
        ] {
            assert_eq!(
                default.parse(value),
                Err(TimeError::OutOfRange(value.into())),
                "{value}"
            );
        }
        assert_eq!(
            TimeParser::new(Some("%d/%m/%Y".into()), None)
                .unwrap()
                .parse(" 01/01/1600 "),
            Err(TimeError::OutOfRange("01/01/1600".into()))
        );
        assert_eq!(
            default.parse("1900-01-01").unwrap(),
            utc("1900-01-01T00:00:00Z")
        );
        assert_eq!(
            default.parse("1899-12-31T23:59:59Z"),
            Err(TimeError::OutOfRange("1899-12-31T23:59:59Z".into()))
        );
    }

    #[test]
    fn skipped_local_times_are_refused_and_repeated_ones_take_the_first() {
        let new_york = TimeParser::new(None, Some("America/New_York")).unwrap();
        assert!(matches!(
            new_york.parse("2024-03-10 02:30"),
            Err(TimeError::Nonexistent { .. })
        ));
        assert_eq!(
            new_york.parse("2024-11-03 01:30").unwrap(),
            utc("2024-11-03T05:30:00Z")
        );
        assert!(matches!(
            TimeParser::new(None, Some("Mars/Olympus")),
            Err(TimeError::UnknownZone(_))
        ));
        // Names in any case are the zones they spell.
        for (written, zone) in [
            ("utc", Tz::UTC),
            (" america/mexico_city", Tz::America__Mexico_City),
        ] {
            assert_eq!(TimeParser::new(None, Some(written)).unwrap().zone(), zone);
        }
        assert_eq!(
            TimeParser::new(Some("%Q".into()), None).err(),
            Some(TimeError::BadFormat("%Q".into()))
        );
    }
}
