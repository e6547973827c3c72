//! Streaming rows out of CSV and JSONL files, with the bytes read so far for a progress bar.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::ImportError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
    /// Read by `kith-lake`'s Parquet source.
    Parquet,
    /// Columns separated by runs of spaces or tabs (CDNOW's master log and other fixed-width
    /// exports); the first non-empty line names the columns.
    Whitespace,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "CSV",
            Format::Jsonl => "JSONL",
            Format::Parquet => "Parquet",
            Format::Whitespace => "whitespace-separated text",
        }
    }

    /// The format a flag names (`csv`, `jsonl`, `ndjson`).
    pub fn from_name(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "csv" | "tsv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            "whitespace" | "txt" | "dat" => Some(Format::Whitespace),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }

    /// The format a file name implies, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        Format::from_name(path.extension()?.to_str()?)
    }
}

/// One row: its number in the file (data rows from 1 for CSV, lines from 1 for JSONL) and its
/// values by column, in file order. CSV values are strings; empty cells are left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub number: u64,
    pub values: Vec<(String, Value)>,
}

impl Row {
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.values
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, value)| value)
    }
}

/// A row that could not be read, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub number: u64,
    pub reason: String,
}

/// A file read a row at a time, whatever its format (CSV, JSONL and text here; Parquet in
/// `kith-lake`, which owns Arrow).
pub trait RowSource {
    /// Column names, when the file has them for every row (not JSONL).
    fn headers(&self) -> Option<&[String]>;
    /// A handle on how far reading has come, in bytes of [`RowSource::total_bytes`].
    fn bytes_read(&self) -> Arc<AtomicU64>;
    fn total_bytes(&self) -> u64;
    /// The next row, a row that could not be read, or `None` at the end.
    fn next_row(&mut self) -> Result<Option<Result<Row, BadRow>>, ImportError>;
    /// The delimiter of delimited text (given, or read off the header line).
    fn delimiter(&self) -> Option<u8> {
        None
    }
}

/// A source whose first row has been read ahead, so a file with no rows is found before
/// anything is made for it (an import then leaves no new data directory behind).
pub struct FirstRowRead {
    source: Box<dyn RowSource>,
    first: Option<Result<Row, BadRow>>,
}

impl FirstRowRead {
    /// `None` when the file holds no rows (an empty file, or a header line alone).
    pub fn new(mut source: Box<dyn RowSource>) -> Result<Option<FirstRowRead>, ImportError> {
        Ok(source.next_row()?.map(|first| FirstRowRead {
            source,
            first: Some(first),
        }))
    }
}

impl RowSource for FirstRowRead {
    fn headers(&self) -> Option<&[String]> {
        self.source.headers()
    }

    fn bytes_read(&self) -> Arc<AtomicU64> {
        self.source.bytes_read()
    }

    fn total_bytes(&self) -> u64 {
        self.source.total_bytes()
    }

    fn next_row(&mut self) -> Result<Option<Result<Row, BadRow>>, ImportError> {
        match self.first.take() {
            Some(first) => Ok(Some(first)),
            None => self.source.next_row(),
        }
    }

    fn delimiter(&self) -> Option<u8> {
        self.source.delimiter()
    }
}

impl RowSource for RowReader {
    fn headers(&self) -> Option<&[String]> {
        RowReader::headers(self)
    }

    fn bytes_read(&self) -> Arc<AtomicU64> {
        RowReader::bytes_read(self)
    }

    fn total_bytes(&self) -> u64 {
        RowReader::total_bytes(self)
    }

    fn next_row(&mut self) -> Result<Option<Result<Row, BadRow>>, ImportError> {
        RowReader::next_row(self)
    }

    fn delimiter(&self) -> Option<u8> {
        self.delimiter
    }
}

/// Counts the bytes a reader has delivered.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A file's bytes as UTF-8, whatever it was written in.
type Text = Box<dyn Read + Send>;

enum Inner {
    Csv {
        reader: csv::Reader<Text>,
        headers: Vec<String>,
        record: csv::StringRecord,
    },
    Jsonl {
        lines: BufReader<Text>,
        line: String,
    },
    Whitespace {
        lines: BufReader<Text>,
        line: String,
        headers: Vec<String>,
    },
}

/// How much of a file is looked at to tell its encoding and its delimiter.
const SNIFFED_BYTES: usize = 64 * 1024;

/// Decodes a stream of another encoding into UTF-8 as it is read.
struct Decoding<R> {
    inner: R,
    decoder: encoding_rs::Decoder,
    input: Vec<u8>,
    output: Vec<u8>,
    at: usize,
    finished: bool,
}

impl<R: Read> Read for Decoding<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.output.len() {
            if self.finished {
                return Ok(0);
            }
            self.input.resize(8 * 1024, 0);
            let n = self.inner.read(&mut self.input)?;
            let last = n == 0;
            let room = self.decoder.max_utf8_buffer_length(n).unwrap_or(n * 3 + 16);
            self.output.resize(room, 0);
            let (_, _, written, _) =
                self.decoder
                    .decode_to_utf8(&self.input[..n], &mut self.output, last);
            self.output.truncate(written);
            self.at = 0;
            self.finished = last;
        }
        let n = buf.len().min(self.output.len() - self.at);
        buf[..n].copy_from_slice(&self.output[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The encoding a file's first bytes show: UTF-16 by its byte order mark (Excel's "Unicode
/// text"), Windows-1252 when they are not UTF-8 (Excel's CSV in Spanish and Portuguese
/// Windows, which Latin-1 is a part of), else UTF-8 (`None`).
fn sniffed_encoding(start: &[u8]) -> Option<&'static encoding_rs::Encoding> {
    if start.starts_with(&[0xFF, 0xFE]) {
        return Some(encoding_rs::UTF_16LE);
    }
    if start.starts_with(&[0xFE, 0xFF]) {
        return Some(encoding_rs::UTF_16BE);
    }
    // UTF-16 without its mark: text of Latin letters is every other byte zero.
    let zeros_at = |parity: usize| {
        start
            .iter()
            .skip(parity)
            .step_by(2)
            .filter(|&&b| b == 0)
            .count()
    };
    let pairs = start.len() / 2;
    if pairs >= 4 {
        if zeros_at(1) * 4 >= pairs * 3 {
            return Some(encoding_rs::UTF_16LE);
        }
        if zeros_at(0) * 4 >= pairs * 3 {
            return Some(encoding_rs::UTF_16BE);
        }
    }
    // Windows-1252 only when no accent is written in UTF-8: one stray Windows-1252 row in a
    // UTF-8 file must not garble every other (it is refused on its own, and says why).
    let mut utf8_accents = false;
    let mut invalid = false;
    for chunk in start.utf8_chunks() {
        utf8_accents |= !chunk.valid().is_ascii();
        // A sequence cut by the end of what was looked at is no evidence.
        let at_end = std::ptr::eq(chunk.invalid().as_ptr_range().end, start.as_ptr_range().end);
        invalid |= !chunk.invalid().is_empty() && !at_end;
    }
    (invalid && !utf8_accents).then_some(encoding_rs::WINDOWS_1252)
}

/// The delimiter a header line shows when none was given: `,` unless the line has none and has
/// semicolons (Excel's CSV where the decimal mark is a comma) or tabs.
fn sniffed_delimiter(first_line: &str) -> u8 {
    // Outside quotes: `cliente;"Nombre, completo";fecha` is separated by semicolons.
    let mut quoted = false;
    let (mut commas, mut semicolons, mut tabs) = (0, 0, 0);
    for c in first_line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => commas += 1,
            ';' if !quoted => semicolons += 1,
            '\t' if !quoted => tabs += 1,
            _ => {}
        }
    }
    if commas > 0 || (semicolons == 0 && tabs == 0) {
        b','
    } else if semicolons >= tabs {
        b';'
    } else {
        b'\t'
    }
}

/// Column names as the file gives them, each once: a name repeated (two `Dirección` columns)
/// becomes `Dirección_2`, so no column's values hide another's.
fn named_once(names: Vec<String>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::with_capacity(names.len());
    for (position, name) in names.into_iter().enumerate() {
        // A column without a name (a spreadsheet's empty header cells) is named by its place,
        // `column_4`: left unnamed, every such column read as the first of them.
        let name = if name.is_empty() {
            format!("column_{}", position + 1)
        } else {
            name
        };
        crate::mapping::claim_name(&name, &mut seen);
    }
    seen
}

/// Reads a file a row at a time.
pub struct RowReader {
    path: String,
    inner: Inner,
    /// The encoding the file was read as, when it was not UTF-8.
    read_as: Option<&'static str>,
    /// The delimiter, for delimited text.
    delimiter: Option<u8>,
    /// What named the columns, for messages: "the header" (CSV), "the first line" (text) or
    /// "--columns".
    columns_named_by: &'static str,
    number: u64,
    bytes_read: Arc<AtomicU64>,
    total_bytes: u64,
}

impl RowReader {
    /// Opens `path`. For CSV the first line names the columns; `delimiter` defaults to `,`
    /// (`\t` for a `.tsv` file).
    pub fn open(
        path: &Path,
        format: Format,
        delimiter: Option<u8>,
    ) -> Result<RowReader, ImportError> {
        RowReader::open_with_columns(path, format, delimiter, None)
    }

    /// Like [`RowReader::open`], for CSV and text files without a header line: `columns` names
    /// the columns and the first line is data.
    pub fn open_with_columns(
        path: &Path,
        format: Format,
        delimiter: Option<u8>,
        columns: Option<Vec<String>>,
    ) -> Result<RowReader, ImportError> {
        let shown = path.display().to_string();
        let columns_named_by = match (&columns, format) {
            (Some(_), _) => "--columns",
            (None, Format::Whitespace) => "the first line",
            (None, _) => "the header",
        };
        let file = File::open(path).map_err(|source| ImportError::Read {
            path: shown.clone(),
            source,
        })?;
        let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bytes_read = Arc::new(AtomicU64::new(0));
        let mut counting = Counting {
            inner: file,
            read: bytes_read.clone(),
        };
        // The first bytes tell the encoding and, for text, the delimiter; they are read again
        // in front of the rest.
        let mut start = Vec::with_capacity(SNIFFED_BYTES);
        (&mut counting)
            .take(SNIFFED_BYTES as u64)
            .read_to_end(&mut start)
            .map_err(|source| ImportError::Read {
                path: shown.clone(),
                source,
            })?;
        let encoding = sniffed_encoding(&start);
        // Excel's `sep=;` first line names the delimiter, and is no header.
        let mut delimiter = delimiter;
        if format != Format::Jsonl
            && encoding.is_none_or(|e| e == encoding_rs::WINDOWS_1252)
            && columns.is_none()
            && let Some(rest) = start.strip_prefix(b"sep=")
            && let Some(&named) = rest.first()
            && matches!(
                rest.get(1..3),
                Some(b"\r\n") | Some([b'\n', _]) | Some([b'\n'])
            )
        {
            delimiter = delimiter.or(Some(named));
            let line_end = start.iter().position(|&b| b == b'\n').unwrap_or(0) + 1;
            start.drain(..line_end);
        }
        let first_line: String = match encoding {
            Some(encoding) => encoding
                .decode(&start)
                .0
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            None => String::from_utf8_lossy(&start)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        };
        let bytes: Text = Box::new(std::io::Cursor::new(start).chain(counting));
        let text: Text = match encoding {
            Some(encoding) => Box::new(Decoding {
                inner: bytes,
                decoder: encoding.new_decoder_with_bom_removal(),
                input: Vec::new(),
                output: Vec::new(),
                at: 0,
                finished: false,
            }),
            None => bytes,
        };
        // Text "separated by whitespace" that is tab-separated (Excel's "text, tab delimited",
        // whose empty cells and values with spaces runs of whitespace would shift), or given a
        // delimiter, is read as delimited text.
        let tab_separated = first_line.contains('\t') && !first_line.contains("  ");
        let (format, delimiter) = match format {
            Format::Whitespace if delimiter.is_some() => (Format::Csv, delimiter),
            Format::Whitespace if tab_separated => (Format::Csv, Some(b'\t')),
            other => (other, delimiter),
        };
        let tsv = path.extension().is_some_and(|e| e == "tsv");
        let delimiter = (format == Format::Csv).then(|| {
            delimiter.unwrap_or(if tsv {
                b'\t'
            } else {
                sniffed_delimiter(first_line.trim_start_matches('\u{feff}'))
            })
        });
        let inner = match format {
            Format::Csv => {
                let delimiter = delimiter.unwrap_or(b',');
                let mut reader = csv::ReaderBuilder::new()
                    .delimiter(delimiter)
                    .flexible(true)
                    .has_headers(columns.is_none())
                    .from_reader(text);
                let headers = match columns {
                    Some(columns) => columns,
                    None => reader
                        .headers()
                        .map_err(|e| ImportError::Unreadable {
                            path: shown.clone(),
                            format: "CSV",
                            reason: format!("the header line cannot be read: {e}"),
                        })?
                        .iter()
                        .map(|h| h.trim().trim_start_matches('\u{feff}').to_string())
                        .collect::<Vec<_>>(),
                };
                if headers.iter().all(String::is_empty) {
                    return Err(ImportError::Unreadable {
                        path: shown,
                        format: "CSV",
                        reason: "the file is empty or its first line names no columns".into(),
                    });
                }
                let headers = named_once(headers);
                Inner::Csv {
                    reader,
                    headers,
                    record: csv::StringRecord::new(),
                }
            }
            Format::Jsonl => Inner::Jsonl {
                lines: BufReader::new(text),
                line: String::new(),
            },
            Format::Parquet => {
                return Err(ImportError::Unreadable {
                    path: shown,
                    format: "Parquet",
                    reason: "Parquet files are read by kith-lake's ParquetRows".into(),
                });
            }
            Format::Whitespace => {
                let mut lines = BufReader::new(text);
                let mut line = String::new();
                let headers = if let Some(columns) = columns {
                    columns
                } else {
                    loop {
                        line.clear();
                        let read =
                            lines
                                .read_line(&mut line)
                                .map_err(|source| ImportError::Read {
                                    path: shown.clone(),
                                    source,
                                })?;
                        if read == 0 {
                            return Err(ImportError::Unreadable {
                                path: shown,
                                format: "whitespace-separated text",
                                reason: "the file is empty; its first line must name the columns"
                                    .into(),
                            });
                        }
                        let names: Vec<String> =
                            line.split_whitespace().map(str::to_string).collect();
                        if !names.is_empty() {
                            break named_once(names);
                        }
                    }
                };
                Inner::Whitespace {
                    lines,
                    line,
                    headers,
                }
            }
        };
        Ok(RowReader {
            path: path.display().to_string(),
            inner,
            read_as: encoding.map(encoding_rs::Encoding::name),
            delimiter,
            columns_named_by,
            number: 0,
            bytes_read,
            total_bytes,
        })
    }

    /// The encoding the file was read as when it was not UTF-8 (`windows-1252`, `UTF-16LE`).
    pub fn read_as(&self) -> Option<&'static str> {
        self.read_as
    }

    /// Column names (CSV only; JSONL rows name their own).
    pub fn headers(&self) -> Option<&[String]> {
        match &self.inner {
            Inner::Csv { headers, .. } | Inner::Whitespace { headers, .. } => Some(headers),
            Inner::Jsonl { .. } => None,
        }
    }

    /// A handle on the bytes read so far, for progress.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        self.bytes_read.clone()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The next row, a row that could not be read, or `None` at the end. An I/O error ends the
    /// file with `Err`.
    pub fn next_row(&mut self) -> Result<Option<Result<Row, BadRow>>, ImportError> {
        match &mut self.inner {
            Inner::Csv {
                reader,
                headers,
                record,
            } => {
                let more = match reader.read_record(record) {
                    Ok(more) => more,
                    Err(e) if e.is_io_error() => {
                        return Err(ImportError::Unreadable {
                            path: self.path.clone(),
                            format: "CSV",
                            reason: e.to_string(),
                        });
                    }
                    Err(e) => {
                        self.number += 1;
                        let reason = if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) {
                            "the row is not UTF-8 (a row saved in Windows-1252, as Excel does?): \
                             save the file as UTF-8 and import it again (rows already imported \
                             are skipped)"
                                .to_string()
                        } else {
                            format!("not valid CSV: {e}")
                        };
                        return Ok(Some(Err(BadRow {
                            number: self.number,
                            reason,
                        })));
                    }
                };
                if !more {
                    return Ok(None);
                }
                self.number += 1;
                if record.len() != headers.len() {
                    // A quote that opens a value and never closes takes every line after it
                    // into that value: say so, or the rows it swallowed go unexplained.
                    let lines = record
                        .iter()
                        .map(|v| v.trim_end_matches(['\r', '\n']).matches('\n').count())
                        .max();
                    let swallowed = match lines {
                        Some(breaks) if breaks > 0 => format!(
                            "; one of its values runs over {} lines, as when a quote (\") opens \
                             a value and is never closed: close it, or write a quote inside a \
                             quoted value as two (\"\")",
                            breaks + 1
                        ),
                        _ => String::new(),
                    };
                    return Ok(Some(Err(BadRow {
                        number: self.number,
                        reason: format!(
                            "the row has {} fields but {} names {} columns{swallowed}",
                            record.len(),
                            self.columns_named_by,
                            headers.len()
                        ),
                    })));
                }
                // A quote never closed can swallow the rest of the file into the last value of
                // a row of the right length: lines inside one value that look like whole rows
                // (as many delimiters as the header has) are that, not an address on two lines.
                let separator = char::from(self.delimiter.unwrap_or(b','));
                let row_like = |value: &str| {
                    value
                        .lines()
                        .skip(1)
                        .filter(|line| line.matches(separator).count() + 1 >= headers.len())
                        .count()
                };
                if headers.len() > 1
                    && let Some(lines) = record.iter().map(row_like).max().filter(|n| *n >= 2)
                {
                    return Ok(Some(Err(BadRow {
                        number: self.number,
                        reason: format!(
                            "one of its values holds {lines} lines that look like rows, as when \
                             a quote (\") opens a value and is never closed: close it, or write \
                             a quote inside a quoted value as two (\"\")"
                        ),
                    })));
                }
                let values = headers
                    .iter()
                    .zip(record.iter())
                    // A byte order mark is kept in the first value when no header line
                    // took it (`--columns`).
                    .map(|(name, value)| (name, value.trim_start_matches('\u{feff}').trim()))
                    .filter(|(_, value)| !value.is_empty())
                    .map(|(name, value)| (name.clone(), Value::String(value.to_string())))
                    .collect();
                Ok(Some(Ok(Row {
                    number: self.number,
                    values,
                })))
            }
            Inner::Whitespace {
                lines,
                line,
                headers,
            } => loop {
                line.clear();
                let read = lines.read_line(line).map_err(|e| ImportError::Unreadable {
                    path: self.path.clone(),
                    format: "whitespace-separated text",
                    reason: e.to_string(),
                })?;
                if read == 0 {
                    return Ok(None);
                }
                self.number += 1;
                let fields: Vec<&str> = line
                    .trim_start_matches('\u{feff}')
                    .split_whitespace()
                    .collect();
                if fields.is_empty() {
                    continue;
                }
                if fields.len() != headers.len() {
                    return Ok(Some(Err(BadRow {
                        number: self.number,
                        reason: format!(
                            "the line has {} fields but {} names {} columns",
                            fields.len(),
                            self.columns_named_by,
                            headers.len()
                        ),
                    })));
                }
                let values = headers
                    .iter()
                    .zip(fields)
                    .map(|(name, value)| (name.clone(), Value::String(value.to_string())))
                    .collect();
                return Ok(Some(Ok(Row {
                    number: self.number,
                    values,
                })));
            },
            Inner::Jsonl { lines, line } => loop {
                line.clear();
                let read = lines.read_line(line).map_err(|e| ImportError::Unreadable {
                    path: self.path.clone(),
                    format: "JSONL",
                    reason: e.to_string(),
                })?;
                if read == 0 {
                    return Ok(None);
                }
                self.number += 1;
                if line.trim().is_empty() {
                    continue;
                }
                // A byte order mark before the first line is not part of its JSON.
                let text = line.trim_start_matches('\u{feff}');
                let parsed = match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(map)) => map,
                    Ok(other) => {
                        return Ok(Some(Err(BadRow {
                            number: self.number,
                            reason: format!(
                                "each line must be a JSON object, this one is {}",
                                json_kind(&other)
                            ),
                        })));
                    }
                    Err(e) => {
                        return Ok(Some(Err(BadRow {
                            number: self.number,
                            reason: format!("not valid JSON: {e}"),
                        })));
                    }
                };
                let values = parsed
                    .into_iter()
                    .filter(|(_, value)| !value.is_null())
                    .collect();
                return Ok(Some(Ok(Row {
                    number: self.number,
                    values,
                })));
            },
        }
    }
}

/// A scalar cell as trimmed text (strings, numbers, booleans); `None` for anything else.
pub(crate) fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) use kith_core::json_kind;

#[cfg(test)]
mod tests {
    use super::*;

    // A quote never closed takes the rest of the file into one value; the row it ends up in
    // says so, instead of only counting its fields.
    /// A quote never closed in the last value swallows the rows after it into a row of the right
    /// length: it is refused, saying so, instead of storing the rest of the file as one value.
    #[test]
    fn a_quote_never_closed_in_the_last_value_is_found_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ventas.csv");
        std::fs::write(
            &path,
            "cliente,fecha,monto,producto\nc1,2024-01-05,100,Monitor\n\
             c2,2024-01-06,200,\"Pantalla 15\nc3,2024-01-07,300,Teclado\nc4,2024-01-08,400,Mouse\n",
        )
        .unwrap();
        let mut reader = RowReader::open(&path, Format::Csv, None).unwrap();
        assert!(reader.next_row().unwrap().unwrap().is_ok());
        let swallowing = reader.next_row().unwrap().unwrap().unwrap_err();
        assert!(
            swallowing
                .reason
                .starts_with("one of its values holds 2 lines that look like rows"),
            "{}",
            swallowing.reason
        );
        // An address over two lines is a value, not rows.
        std::fs::write(
            &path,
            "cliente,direccion\nc1,\"Calle 1\nColonia Centro\nCP 06000\"\n",
        )
        .unwrap();
        let (_, rows) = rows_of(&path, Format::Csv, None);
        assert_eq!(
            text(&rows[0], "direccion"),
            "Calle 1\nColonia Centro\nCP 06000"
        );
    }

    #[test]
    fn a_quote_never_closed_is_named_in_the_row_it_swallows_lines_into() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contacts.csv");
        std::fs::write(
            &path,
            "email,name\nana@x.com,Ana\n\"b@x.com,unclosed\nc@x.com,Carla\nd@x.com,Dora\n",
        )
        .unwrap();
        let mut reader = RowReader::open(&path, Format::Csv, None).unwrap();
        let first = reader.next_row().unwrap().unwrap().unwrap();
        assert_eq!(first.get("name"), Some(&Value::String("Ana".into())));
        let swallowing = reader.next_row().unwrap().unwrap().unwrap_err();
        assert_eq!(
            swallowing.reason,
            "the row has 1 fields but the header names 2 columns; one of its values runs over \
             3 lines, as when a quote (\") opens a value and is never closed: close it, or write \
             a quote inside a quoted value as two (\"\")"
        );
        assert!(reader.next_row().unwrap().is_none());
        // Columns named by `--columns`: a byte order mark does not stick to the first value,
        // and a row of the wrong length names what named the columns.
        std::fs::write(&path, "\u{feff}ana@x.com,Ana\nb@x.com\n").unwrap();
        let named = Some(vec!["email".to_string(), "name".to_string()]);
        let mut reader = RowReader::open_with_columns(&path, Format::Csv, None, named).unwrap();
        let first = reader.next_row().unwrap().unwrap().unwrap();
        assert_eq!(first.get("email"), Some(&Value::String("ana@x.com".into())));
        let short = reader.next_row().unwrap().unwrap().unwrap_err();
        assert_eq!(
            short.reason,
            "the row has 1 fields but --columns names 2 columns"
        );
        // A row short of fields on one line is told as before.
        std::fs::write(&path, "email,name\nana@x.com\n").unwrap();
        let mut reader = RowReader::open(&path, Format::Csv, None).unwrap();
        let short = reader.next_row().unwrap().unwrap().unwrap_err();
        assert_eq!(
            short.reason,
            "the row has 1 fields but the header names 2 columns"
        );
    }

    fn rows_of(path: &Path, format: Format, delimiter: Option<u8>) -> (RowReader, Vec<Row>) {
        let mut reader = RowReader::open(path, format, delimiter).unwrap();
        let mut rows = Vec::new();
        while let Some(row) = reader.next_row().unwrap() {
            rows.push(row.unwrap());
        }
        (reader, rows)
    }

    fn text(row: &Row, column: &str) -> String {
        row.get(column)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    /// Excel's exports as they come from Spanish-language Windows: Windows-1252 with semicolons,
    /// "Unicode text" (UTF-16 with tabs), tab-separated `.txt`; and a header naming a column
    /// twice. Each is read with its accents, its empty cells and every column.
    #[test]
    fn excel_exports_are_read_whatever_their_encoding_and_delimiter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clientes.csv");
        // Windows-1252: é is one byte, 0xE9, which is not UTF-8.
        let mut cp1252 = b"correo;nombre;tel\xe9fono\r\n".to_vec();
        cp1252.extend_from_slice(b"jose@x.mx;Jos\xe9 P\xe9rez;55 1234 5678\r\n");
        std::fs::write(&path, &cp1252).unwrap();
        let (reader, rows) = rows_of(&path, Format::Csv, None);
        assert_eq!(reader.read_as(), Some("windows-1252"));
        assert_eq!(reader.headers().unwrap(), ["correo", "nombre", "teléfono"]);
        assert_eq!(text(&rows[0], "nombre"), "José Pérez");
        assert_eq!(text(&rows[0], "teléfono"), "55 1234 5678");

        // UTF-16 with its byte order mark, tab-separated.
        let path = dir.path().join("unicode.txt");
        let mut utf16 = vec![0xFF, 0xFE];
        for unit in "correo\tciudad\nana@x.mx\tCiudad Obregón\n".encode_utf16() {
            utf16.extend_from_slice(&unit.to_le_bytes());
        }
        std::fs::write(&path, &utf16).unwrap();
        let (reader, rows) = rows_of(&path, Format::Whitespace, None);
        assert_eq!(reader.read_as(), Some("UTF-16LE"));
        assert_eq!(text(&rows[0], "ciudad"), "Ciudad Obregón");

        // Tab-separated text with an empty cell and a value with a space: nothing shifts.
        let path = dir.path().join("tabs.txt");
        std::fs::write(
            &path,
            "correo\tnombre\tciudad\nana@x.mx\t\tCiudad Obregón\n",
        )
        .unwrap();
        let (reader, rows) = rows_of(&path, Format::Whitespace, None);
        assert_eq!(reader.read_as(), None);
        assert_eq!(rows[0].get("nombre"), None);
        assert_eq!(text(&rows[0], "ciudad"), "Ciudad Obregón");
        // A delimiter given for text is used.
        let path = dir.path().join("pipes.txt");
        std::fs::write(&path, "correo|ciudad\nana@x.mx|San Luis Potosí\n").unwrap();
        let (_, rows) = rows_of(&path, Format::Whitespace, Some(b'|'));
        assert_eq!(text(&rows[0], "ciudad"), "San Luis Potosí");
        // Runs of spaces (CDNOW's log) are still whitespace-separated.
        let path = dir.path().join("cdnow.txt");
        std::fs::write(&path, "id  date      amount\n1   19970101  29.33\n").unwrap();
        let (_, rows) = rows_of(&path, Format::Whitespace, None);
        assert_eq!(text(&rows[0], "amount"), "29.33");

        // A header naming a column twice keeps both.
        let path = dir.path().join("dos.csv");
        std::fs::write(
            &path,
            "correo,Dirección,Dirección\na@x.mx,Calle 1,Colonia Centro\n",
        )
        .unwrap();
        let (reader, rows) = rows_of(&path, Format::Csv, None);
        assert_eq!(
            reader.headers().unwrap(),
            ["correo", "Dirección", "Dirección_2"]
        );
        assert_eq!(text(&rows[0], "Dirección_2"), "Colonia Centro");
        // Columns without a name (a spreadsheet's empty header cells) are named by their place,
        // each keeping its own values; a header that already says `column_3` keeps it.
        std::fs::write(
            &path,
            "id,,column_3, ,
1,AAA,x,BBB,CCC
",
        )
        .unwrap();
        let (reader, rows) = rows_of(&path, Format::Csv, None);
        assert_eq!(
            reader.headers().unwrap(),
            ["id", "column_2", "column_3", "column_4", "column_5"]
        );
        let values: Vec<String> = ["column_2", "column_3", "column_4", "column_5"]
            .iter()
            .map(|column| text(&rows[0], column))
            .collect();
        assert_eq!(values, ["AAA", "x", "BBB", "CCC"]);
        // Excel's `sep=;` line names the delimiter; a quoted comma in a header does not.
        std::fs::write(&path, "sep=;\r\ncorreo;monto\r\na@x.mx;1,5\r\n").unwrap();
        let (reader, rows) = rows_of(&path, Format::Csv, None);
        assert_eq!(reader.headers().unwrap(), ["correo", "monto"]);
        assert_eq!(text(&rows[0], "monto"), "1,5");
        std::fs::write(
            &path,
            "cliente;\"Nombre, completo\";fecha\nc1;Ana;2024-01-01\n",
        )
        .unwrap();
        let (reader, _) = rows_of(&path, Format::Csv, None);
        assert_eq!(
            reader.headers().unwrap(),
            ["cliente", "Nombre, completo", "fecha"]
        );
        // UTF-16 without its byte order mark.
        let mut utf16 = Vec::new();
        for unit in "correo,ciudad\nana@x.mx,León\n".encode_utf16() {
            utf16.extend_from_slice(&unit.to_le_bytes());
        }
        std::fs::write(&path, &utf16).unwrap();
        let (reader, rows) = rows_of(&path, Format::Csv, None);
        assert_eq!(reader.read_as(), Some("UTF-16LE"));
        assert_eq!(text(&rows[0], "ciudad"), "León");
        // One row saved in Windows-1252 in a UTF-8 file: the others keep their accents, and
        // that one is refused with the reason.
        let mut mixed = "nombre\nJosé Peña\n".as_bytes().to_vec();
        mixed.extend_from_slice(b"Ram\xf3n\nMar\xc3\xada\n");
        std::fs::write(&path, &mixed).unwrap();
        let mut reader = RowReader::open(&path, Format::Csv, None).unwrap();
        assert_eq!(reader.read_as(), None);
        let first = reader.next_row().unwrap().unwrap().unwrap();
        assert_eq!(text(&first, "nombre"), "José Peña");
        let stray = reader.next_row().unwrap().unwrap().unwrap_err();
        assert!(
            stray.reason.starts_with("the row is not UTF-8"),
            "{}",
            stray.reason
        );
        let last = reader.next_row().unwrap().unwrap().unwrap();
        assert_eq!(text(&last, "nombre"), "María");
        // JSON lines after a byte order mark.
        let path = dir.path().join("eventos.jsonl");
        std::fs::write(&path, "\u{feff}{\"event\": \"Compra\"}\n").unwrap();
        let (_, rows) = rows_of(&path, Format::Jsonl, None);
        assert_eq!(text(&rows[0], "event"), "Compra");
        let path = dir.path().join("dos.csv");
        // UTF-8 with commas stays as it was.
        std::fs::write(&path, "correo,nombre;apodo\na@x.mx,Ana;Anita\n").unwrap();
        let (reader, rows) = rows_of(&path, Format::Csv, None);
        assert_eq!(reader.read_as(), None);
        assert_eq!(text(&rows[0], "nombre;apodo"), "Ana;Anita");
    }
}
