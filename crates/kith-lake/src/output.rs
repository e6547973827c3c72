//! Query results in the formats the API and the CLI hand out: JSON rows, CSV, Arrow IPC, tables.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, SecondsFormat};
use serde_json::{Number, Value};

use crate::QueryResult;

/// A column's type as the JSON answer names it. Arrow has several layouts of one kind of value
/// (text read from Parquet is `Utf8View`, text still buffered `Utf8`); which one a column
/// happens to have says nothing to the reader, so each kind has one name.
fn type_name(data_type: &arrow::datatypes::DataType) -> String {
    // A union by the kinds it holds: Arrow's own text of `json_get`'s answer runs over 500
    // characters of field metadata.
    if let DataType::Union(fields, _) = data_type {
        let kinds: Vec<&str> = fields
            .iter()
            .map(|(_, field)| field.name().as_str())
            .collect();
        return format!("Union({})", kinds.join(", "));
    }
    // On the text, so that types inside lists and structs are named the same way.
    data_type
        .to_string()
        .replace("LargeUtf8", "Utf8")
        .replace("Utf8View", "Utf8")
        .replace("LargeBinary", "Binary")
        .replace("BinaryView", "Binary")
}

/// How an answer is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `{"columns": [names], "row_count": n, "rows": [[values]], "truncated": bool,
    /// "types": [arrow types]}`.
    Json,
    /// CSV with a header row.
    Csv,
    /// An Arrow IPC stream.
    ArrowIpc,
}

/// Why `schema`'s rows cannot be written as CSV, if they cannot: CSV holds one plain value a
/// cell, so a list, struct or map column does not fit. Checked before anything is written, so
/// the answer is an error rather than a CSV cut short. `other_formats` says how to ask for a
/// format that holds such values where the caller is (`ask for JSON or Arrow`).
pub fn csv_unwritable(schema: &arrow::datatypes::Schema, other_formats: &str) -> Option<String> {
    let field = schema
        .fields()
        .iter()
        .find(|field| field.data_type().is_nested())?;
    let (name, type_name) = (field.name(), type_name(field.data_type()));
    let kind = match field.data_type() {
        // `json_get` answers a union; its text form is another function's answer.
        DataType::Union(_, _) => {
            return Some(format!(
                "the column `{name}` holds JSON values of several kinds ({type_name}), which CSV \
                 cannot hold; use `json_as_text` (any value as text) or `json_get_json` (as \
                 JSON) instead of `json_get` (`json_get_str` reads only strings, \
                 `json_get_float` and `json_get_int` only numbers: other values are null), or \
                 {other_formats}"
            ));
        }
        DataType::Struct(fields) => {
            let example = fields
                .first()
                .map_or("field", |field| field.name().as_str());
            return Some(format!(
                "the column `{name}` holds struct values ({type_name}), which CSV cannot hold; \
                 take the fields you want, one column each (`\"{name}\"['{example}']`), or \
                 {other_formats}"
            ));
        }
        DataType::Map(_, _) => {
            return Some(format!(
                "the column `{name}` holds map values ({type_name}), which CSV cannot hold; take \
                 the values you want by key, one column each (`\"{name}\"['key']`), or \
                 {other_formats}"
            ));
        }
        _ => "list",
    };
    Some(format!(
        "the column `{name}` holds {kind} values ({type_name}), which CSV cannot hold; cast it to \
         text (`CAST(\"{name}\" AS VARCHAR)`) or {other_formats}"
    ))
}

/// The first value in `batches` that cannot be written as text, described for the person who
/// asked: a time outside what calendars can be computed for (`from_unixtime(9223372036854775807)`
/// is some 292 billion years away), in a column of times or inside a list, struct or map (where
/// the JSON answer would show it as null, and a table as an error in the cell). Checked before
/// an answer starts, so such a value is an error rather than an error message in a cell, or a
/// CSV cut short. Only times can fail to be written; columns holding none are not looked at.
pub fn unshowable_value(
    schema: &arrow::datatypes::Schema,
    batches: &[RecordBatch],
) -> Option<String> {
    for (index, field) in schema.fields().iter().enumerate() {
        let data_type = field.data_type();
        if !holds_times(data_type) {
            continue;
        }
        let mut rows_before = 0;
        for batch in batches {
            let column = batch.column(index);
            let failure = if data_type.is_temporal() {
                unwritable_time(column.as_ref())
            } else {
                // Row by row, so that values a null list or struct spans are not looked at.
                (0..column.len())
                    .filter(|row| column.is_valid(*row))
                    .find_map(|row| {
                        unwritable_nested_time(column.slice(row, 1).as_ref()).map(|e| (row, e))
                    })
            };
            if let Some((row, err)) = failure {
                let what = if data_type.is_temporal() {
                    format!("cannot be written as a {}", type_name(data_type))
                } else {
                    format!(
                        "({}) holds a time that cannot be written",
                        type_name(data_type)
                    )
                };
                return Some(format!(
                    "the value of `{}` in row {} {what} ({err}); it is outside the years a \
                     calendar can be computed for. Filter it out, or cast the time to a number \
                     (`CAST(... AS BIGINT)`) to see it",
                    field.name(),
                    rows_before + row + 1,
                ));
            }
            rows_before += batch.num_rows();
        }
    }
    None
}

/// Whether values of `data_type` are times or hold some (in a list, struct or map).
fn holds_times(data_type: &DataType) -> bool {
    match data_type {
        t if t.is_temporal() => true,
        DataType::List(field)
        | DataType::LargeList(field)
        | DataType::FixedSizeList(field, _)
        | DataType::Map(field, _) => holds_times(field.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| holds_times(f.data_type())),
        _ => false,
    }
}

/// The first valid time in `array` (of a temporal type) that cannot be written, with its row.
fn unwritable_time(array: &dyn Array) -> Option<(usize, ArrowError)> {
    let formatter = ArrayFormatter::try_new(array, &FormatOptions::default()).ok()?;
    (0..array.len())
        .filter(|row| array.is_valid(*row))
        .find_map(|row| formatter.value(row).try_to_string().err().map(|e| (row, e)))
}

/// Why a time somewhere inside `array`'s valid values cannot be written, if one cannot.
fn unwritable_nested_time(array: &dyn Array) -> Option<ArrowError> {
    let mut valid = (0..array.len()).filter(|row| array.is_valid(*row));
    match array.data_type() {
        t if t.is_temporal() => unwritable_time(array).map(|(_, e)| e),
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            valid.find_map(|row| unwritable_nested_time(list.value(row).as_ref()))
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            valid.find_map(|row| unwritable_nested_time(list.value(row).as_ref()))
        }
        DataType::FixedSizeList(_, _) => {
            let list = array.as_fixed_size_list();
            valid.find_map(|row| unwritable_nested_time(list.value(row).as_ref()))
        }
        DataType::Map(_, _) => {
            let map = array.as_map();
            valid.find_map(|row| unwritable_nested_time(&map.value(row)))
        }
        DataType::Struct(_) => {
            let fields = array.as_struct();
            valid.find_map(|row| {
                fields
                    .columns()
                    .iter()
                    .filter(|child| holds_times(child.data_type()))
                    .find_map(|child| unwritable_nested_time(child.slice(row, 1).as_ref()))
            })
        }
        // `holds_times` named no other type.
        _ => None,
    }
}

/// Rows written out in pieces of about this size, so an answer is never held twice over
/// (once as Arrow, once as text) but piece by piece as the client reads it.
const PIECE_BYTES: usize = 1 << 20;

/// An answer written out piece by piece. It owns the result, so the answer's share of the
/// queries' memory is given back only once the last piece has been taken (or the client has
/// gone and the body been dropped).
pub struct Rendering {
    result: QueryResult,
    encoding: Encoding,
    stage: Stage,
    /// The next row to write: batch, then row within it.
    batch: usize,
    row: usize,
    /// For JSON: whether a row has been written, so the next needs a comma.
    wrote_row: bool,
    /// Rows a piece of the current batch takes, worked out once a batch.
    rows_per_piece: Option<usize>,
    ipc: Option<arrow::ipc::writer::StreamWriter<Vec<u8>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Head,
    Rows,
    Done,
}

impl Rendering {
    pub fn new(result: QueryResult, encoding: Encoding) -> Rendering {
        Rendering {
            result,
            encoding,
            stage: Stage::Head,
            batch: 0,
            row: 0,
            wrote_row: false,
            rows_per_piece: None,
            ipc: None,
        }
    }

    /// Writes every piece to `out`.
    pub fn write_to(self, out: &mut impl std::io::Write) -> Result<(), ArrowError> {
        for piece in self {
            out.write_all(&piece?)?;
        }
        Ok(())
    }

    /// Every piece, joined.
    pub fn into_bytes(self) -> Result<Vec<u8>, ArrowError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    fn head(&mut self) -> Result<Vec<u8>, ArrowError> {
        let schema = self.result.schema.clone();
        match self.encoding {
            Encoding::Json => {
                let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
                let mut out = br#"{"columns":"#.to_vec();
                serde_json::to_writer(&mut out, &names).map_err(json_error)?;
                out.extend_from_slice(
                    format!(r#","row_count":{},"rows":["#, self.result.num_rows()).as_bytes(),
                );
                Ok(out)
            }
            Encoding::Csv => {
                // The header alone: an empty batch with the header on.
                let mut out = Vec::new();
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out)
                    .write(&RecordBatch::new_empty(schema))?;
                Ok(out)
            }
            Encoding::ArrowIpc => {
                let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema)?;
                let out = std::mem::take(writer.get_mut());
                self.ipc = Some(writer);
                Ok(out)
            }
        }
    }

    /// The next rows, about [`PIECE_BYTES`] of them, as a zero-copy slice; `None` when all
    /// have been written.
    fn next_rows(&mut self) -> Option<RecordBatch> {
        while let Some(batch) = self.result.batches.get(self.batch) {
            let rows = batch.num_rows();
            if self.row >= rows {
                self.batch += 1;
                self.row = 0;
                self.rows_per_piece = None;
                continue;
            }
            let per_piece = *self.rows_per_piece.get_or_insert_with(|| {
                let bytes = crate::query::held_bytes(batch).max(1);
                (PIECE_BYTES.saturating_mul(rows) / bytes).clamp(1, rows)
            });
            let take = per_piece.min(rows - self.row);
            let piece = batch.slice(self.row, take);
            self.row += take;
            return Some(piece);
        }
        None
    }

    fn rows(&mut self, piece: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
        let mut out = Vec::new();
        match self.encoding {
            Encoding::Json => {
                for row in 0..piece.num_rows() {
                    if self.wrote_row {
                        out.push(b',');
                    }
                    self.wrote_row = true;
                    out.push(b'[');
                    for (i, column) in piece.columns().iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        serde_json::to_writer(&mut out, &json_value(column.as_ref(), row))
                            .map_err(json_error)?;
                    }
                    out.push(b']');
                }
            }
            Encoding::Csv => {
                arrow::csv::WriterBuilder::new()
                    .with_header(false)
                    .build(&mut out)
                    .write(piece)?;
            }
            Encoding::ArrowIpc => {
                if let Some(writer) = self.ipc.as_mut() {
                    writer.write(piece)?;
                    out = std::mem::take(writer.get_mut());
                }
            }
        }
        Ok(out)
    }

    fn tail(&mut self) -> Result<Vec<u8>, ArrowError> {
        match self.encoding {
            Encoding::Json => {
                let types: Vec<String> = self
                    .result
                    .schema
                    .fields()
                    .iter()
                    .map(|f| type_name(f.data_type()))
                    .collect();
                let mut out =
                    format!(r#"],"truncated":{},"types":"#, self.result.truncated).into_bytes();
                serde_json::to_writer(&mut out, &types).map_err(json_error)?;
                out.push(b'}');
                Ok(out)
            }
            Encoding::Csv => Ok(Vec::new()),
            Encoding::ArrowIpc => match self.ipc.as_mut() {
                Some(writer) => {
                    writer.finish()?;
                    Ok(std::mem::take(writer.get_mut()))
                }
                None => Ok(Vec::new()),
            },
        }
    }
}

impl Iterator for Rendering {
    type Item = Result<Vec<u8>, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let piece = match self.stage {
            Stage::Head => {
                self.stage = Stage::Rows;
                self.head()
            }
            Stage::Rows => match self.next_rows() {
                Some(rows) => self.rows(&rows),
                None => {
                    self.stage = Stage::Done;
                    self.tail()
                }
            },
            Stage::Done => return None,
        };
        if piece.is_err() {
            // A piece that failed leaves the answer cut short; nothing after it would parse.
            self.stage = Stage::Done;
        }
        Some(piece)
    }
}

fn json_error(err: serde_json::Error) -> ArrowError {
    ArrowError::JsonError(err.to_string())
}

/// The whole answer as JSON (see [`Encoding::Json`]), for callers that want a value.
pub fn to_json(result: &QueryResult) -> Result<Value, ArrowError> {
    let bytes = Rendering::new(result.uncounted(), Encoding::Json).into_bytes()?;
    serde_json::from_slice(&bytes).map_err(json_error)
}

fn float(v: f64) -> Value {
    Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// One cell as JSON: numbers as numbers, timestamps as RFC 3339 strings, the rest as displayed.
pub fn json_value(array: &dyn Array, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        // A null column's values have no validity bits: each is null all the same.
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => Value::from(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => Value::from(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Value::from(array.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => Value::from(array.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => Value::from(array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => Value::from(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => float(array.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let micros = array
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(row);
            DateTime::from_timestamp_micros(micros)
                .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
                .unwrap_or(Value::Null)
        }
        // Nested values as JSON: a list as an array, a struct or map as an object, a union as
        // the value it holds. Displayed as text they were ambiguous (`[a, b, ]`).
        DataType::List(_) => elements(array.as_list::<i32>().value(row)),
        DataType::LargeList(_) => elements(array.as_list::<i64>().value(row)),
        DataType::FixedSizeList(_, _) => elements(array.as_fixed_size_list().value(row)),
        DataType::Struct(fields) => {
            let columns = array.as_struct();
            Value::Object(
                fields
                    .iter()
                    .zip(columns.columns())
                    .map(|(field, column)| (field.name().clone(), json_value(column, row)))
                    .collect(),
            )
        }
        DataType::Map(_, _) => {
            let entries = array.as_map().value(row);
            let (keys, values) = (entries.column(0), entries.column(1));
            Value::Object(
                (0..entries.len())
                    .map(|i| {
                        let key = match json_value(keys.as_ref(), i) {
                            Value::String(text) => text,
                            other => other.to_string(),
                        };
                        (key, json_value(values.as_ref(), i))
                    })
                    .collect(),
            )
        }
        DataType::Union(_, _) => json_value(array.as_union().value(row).as_ref(), 0),
        _ => displayed(array, row),
    }
}

/// A list's elements as a JSON array.
fn elements(values: arrow::array::ArrayRef) -> Value {
    Value::Array(
        (0..values.len())
            .map(|i| json_value(values.as_ref(), i))
            .collect(),
    )
}

/// A value as text; one that cannot be written (see [`unshowable_value`], which answers are
/// checked with first) is null rather than an error message posing as the value.
fn displayed(array: &dyn Array, row: usize) -> Value {
    ArrayFormatter::try_new(array, &FormatOptions::default())
        .and_then(|formatter| formatter.value(row).try_to_string())
        .map_or(Value::Null, Value::String)
}

/// Why a table could not be written: a value Arrow cannot show as text (before anything is
/// written), or the writer failed.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{0}")]
    Value(#[from] ArrowError),
    #[error(transparent)]
    Write(std::io::Error),
}

/// Writes the answer as a table for terminals, in the layout Arrow's pretty printer uses
/// (`+---+` rules, `| value |` cells, nulls empty), a row at a time: the first pass measures
/// the columns, the second writes, so nothing but one row's text is held beside the answer.
/// (Arrow's printer builds every cell, then the whole table as one string: about 14 KB a row of
/// `SELECT * FROM events`.) Each value is formatted twice, once a pass, which costs less than
/// holding them all. Unlike Arrow's printer, a value wider than 65,535 columns is not wrapped.
///
/// Values are shown as text with control characters escaped: stored events come from anyone
/// holding a write key (a browser's, which is public), and an event name holding escape
/// sequences would otherwise clear the screen, retitle the window or recolour the text of
/// whoever looks at it (and throw the columns out of line).
pub fn write_table(result: &QueryResult, out: &mut dyn std::io::Write) -> Result<(), TableError> {
    use unicode_width::UnicodeWidthStr;

    let headers: Vec<String> = result
        .schema
        .fields()
        .iter()
        .map(|field| escape_controls(field.name()))
        .collect();
    // Arrow's printer makes every column at least one wide, even an empty one.
    let mut widths: Vec<usize> = headers.iter().map(|h| h.width().max(1)).collect();
    for batch in &result.batches {
        for_each_shown_row(batch, |row| {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.width());
            }
        })?;
    }
    let rule: String = widths.iter().fold("+".to_string(), |mut rule, width| {
        rule.extend(std::iter::repeat_n('-', width + 2));
        rule.push('+');
        rule
    });
    let mut line = String::new();
    let mut write_row = |cells: &[String], out: &mut dyn std::io::Write| {
        line.clear();
        line.push('|');
        for (cell, width) in cells.iter().zip(&widths) {
            line.push(' ');
            line.push_str(cell);
            line.extend(std::iter::repeat_n(
                ' ',
                width.saturating_sub(cell.width()) + 1,
            ));
            line.push('|');
        }
        line.push('\n');
        out.write_all(line.as_bytes())
    };
    let rule_line = format!("{rule}\n");
    out.write_all(rule_line.as_bytes())
        .map_err(TableError::Write)?;
    write_row(&headers, out).map_err(TableError::Write)?;
    out.write_all(rule_line.as_bytes())
        .map_err(TableError::Write)?;
    let mut failed = None;
    for batch in &result.batches {
        for_each_shown_row(batch, |row| {
            if failed.is_none() {
                failed = write_row(row, out).err();
            }
        })?;
        if let Some(e) = failed.take() {
            return Err(TableError::Write(e));
        }
    }
    out.write_all(rule_line.as_bytes())
        .map_err(TableError::Write)?;
    Ok(())
}

/// Calls `each` with every row of `batch` as the text a terminal may show (a null is empty).
fn for_each_shown_row(
    batch: &RecordBatch,
    mut each: impl FnMut(&[String]),
) -> Result<(), ArrowError> {
    let formatters = batch
        .columns()
        .iter()
        .map(|column| ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut row = vec![String::new(); batch.num_columns()];
    for index in 0..batch.num_rows() {
        for ((cell, formatter), column) in row.iter_mut().zip(&formatters).zip(batch.columns()) {
            cell.clear();
            if matches!(column.data_type(), DataType::Union(_, _)) {
                // `json_get`'s answer: the value it holds, as the JSON answer shows it, not
                // Arrow's `{float=909.05}` (and nothing for JSON's null, like any null).
                *cell = match json_value(column.as_ref(), index) {
                    Value::Null => String::new(),
                    Value::String(text) => escape_controls(&text),
                    other => escape_controls(&other.to_string()),
                };
            } else if column.is_valid(index) {
                *cell = escape_controls(&formatter.value(index).try_to_string()?);
            }
        }
        each(&row);
    }
    Ok(())
}

/// `text` with the characters a terminal acts on instead of showing (controls, and the marks
/// that reorder text around them) written as Rust escapes: `\u{1b}`, `\n`, `\u{202e}`; and
/// the invisible ones that make two values look alike or hide text (a zero-width space, a
/// byte-order mark, a soft hyphen, tag characters). The joiners (U+200C, U+200D) stay: emoji
/// and several scripts are written with them.
pub fn escape_controls(text: &str) -> String {
    let acts_on = |c: char| {
        c.is_control()
            || matches!(
                c,
                '\u{00ad}'
                    | '\u{061c}'
                    | '\u{180e}'
                    | '\u{200b}'
                    | '\u{200e}'
                    | '\u{200f}'
                    | '\u{2028}'
                    | '\u{2029}'
                    | '\u{feff}'
            )
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2060}'..='\u{206f}').contains(&c)
            || ('\u{e0000}'..='\u{e007f}').contains(&c)
    };
    if !text.chars().any(acts_on) {
        return text.to_string();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if acts_on(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use serde_json::json;

    use super::*;

    #[test]
    fn a_table_escapes_what_a_terminal_would_act_on() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event", DataType::Utf8, true),
            // An alias in the query is a column name the table prints.
            Field::new("n\u{1b}[2J", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("Buy\u{1b}]0;pwned\u{7}\u{1b}[2JRED"),
                    Some("línea\nnueva \u{202e}txt.exe"),
                    Some("ad\u{200b}min\u{feff} so\u{ad}ft \u{e0041}\u{e0042} 👩\u{200d}💻"),
                ])),
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
            ],
        )
        .unwrap();
        let table = table_text(&QueryResult::new(schema, vec![batch], false));
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table}"
        );
        assert!(
            table.contains(r"Buy\u{1b}]0;pwned\u{7}\u{1b}[2JRED"),
            "{table}"
        );
        assert!(table.contains(r"línea\nnueva \u{202e}txt.exe"), "{table}");
        assert!(table.contains(r"n\u{1b}[2J"), "{table}");
        // Invisible characters are shown; the joiner inside an emoji stays.
        assert!(
            table.contains(concat!(
                r"ad\u{200b}min\u{feff} so\u{ad}ft \u{e0041}\u{e0042} ",
                "👩\u{200d}💻"
            )),
            "{table}"
        );
        // One line a row: a newline inside a value no longer splits it.
        assert_eq!(table.lines().count(), 7, "{table}");
    }

    fn table_text(result: &QueryResult) -> String {
        let mut written = Vec::new();
        write_table(result, &mut written).unwrap();
        String::from_utf8(written).unwrap()
    }

    // The table is written a row at a time, as Arrow's printer lays it out: over several
    // batches, with nulls, wide characters and an answer without rows.
    #[test]
    fn a_table_is_laid_out_as_arrows_printer_lays_it_out() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("revenue", DataType::Float64, true),
        ]));
        let batch = |events: Vec<Option<&str>>, n: Vec<Option<i64>>, revenue: Vec<Option<f64>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(events)),
                    Arc::new(Int64Array::from(n)),
                    Arc::new(Float64Array::from(revenue)),
                ],
            )
            .unwrap()
        };
        let batches = vec![
            batch(
                vec![Some("Order Completed"), None],
                vec![Some(12), Some(-3)],
                vec![Some(1499.5), None],
            ),
            batch(
                vec![Some("Página vista 注文"), Some("")],
                vec![None, Some(1_000_000)],
                vec![Some(0.25), Some(-7.0)],
            ),
        ];
        let ours = table_text(&QueryResult::new(schema.clone(), batches.clone(), false));
        let arrows = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert_eq!(ours.trim_end(), arrows, "ours:\n{ours}\nArrow's:\n{arrows}");
        assert!(ours.contains("| Página vista 注文 |"), "{ours}");

        // A column without a name or a value is one wide, as in Arrow's.
        let blank_schema = Arc::new(Schema::new(vec![Field::new("", DataType::Utf8, true)]));
        let blank = RecordBatch::try_new(
            blank_schema.clone(),
            vec![Arc::new(StringArray::from(vec![Some(""), None]))],
        )
        .unwrap();
        assert_eq!(
            table_text(&QueryResult::new(blank_schema, vec![blank.clone()], false)).trim_end(),
            arrow::util::pretty::pretty_format_batches(&[blank])
                .unwrap()
                .to_string()
        );

        let empty = table_text(&QueryResult::new(schema.clone(), Vec::new(), false));
        let arrows_empty =
            arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(schema)])
                .unwrap()
                .to_string();
        assert_eq!(empty.trim_end(), arrows_empty);
    }

    fn to_csv(result: &QueryResult) -> Result<Vec<u8>, ArrowError> {
        Rendering::new(result.uncounted(), Encoding::Csv).into_bytes()
    }

    fn to_arrow_ipc(result: &QueryResult) -> Result<Vec<u8>, ArrowError> {
        Rendering::new(result.uncounted(), Encoding::ArrowIpc).into_bytes()
    }

    /// Two batches of `rows` rows each: a number, a 1,000-byte text (null every tenth row) and
    /// a float that is NaN on the first row.
    fn answer(rows: i64) -> QueryResult {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("text", DataType::Utf8, true),
            Field::new("x", DataType::Float64, false),
        ]));
        let batch = |from: i64| {
            let n: Vec<i64> = (from..from + rows).collect();
            let text: Vec<Option<String>> = n
                .iter()
                .map(|i| (i % 10 != 0).then(|| format!("{i:0>1000}")))
                .collect();
            let x: Vec<f64> = n
                .iter()
                .map(|&i| if i == 0 { f64::NAN } else { i as f64 / 2.0 })
                .collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(n)),
                    Arc::new(StringArray::from(text)),
                    Arc::new(Float64Array::from(x)),
                ],
            )
            .unwrap()
        };
        QueryResult::new(schema.clone(), vec![batch(0), batch(rows)], true)
    }

    /// An Arrow answer is written in pieces, each a slice of its batch. Text read from the
    /// tables comes as views, which IPC writes whole, buffers and all: each piece would carry
    /// the whole batch's text. Answers are given in plain types (see
    /// `query::memory::answered_type`), whose slices IPC writes as the rows they hold.
    #[test]
    fn an_arrow_answer_of_text_read_as_views_is_about_the_size_of_its_text() {
        let text: Vec<String> = (0..3_000).map(|i| format!("{i:0>1000}")).collect();
        let read_as = Arc::new(Schema::new(vec![Field::new(
            "t",
            DataType::Utf8View,
            false,
        )]));
        let as_read = RecordBatch::try_new(
            read_as.clone(),
            vec![Arc::new(arrow::array::StringViewArray::from_iter_values(
                text.iter(),
            ))],
        )
        .unwrap();
        let schema = crate::query::memory::answered_schema(&read_as);
        let batch = crate::query::memory::answered(as_read, &schema).unwrap();
        let result = QueryResult::new(schema, vec![batch.clone()], false);
        let bytes = to_arrow_ipc(&result).unwrap();
        assert!(bytes.len() < 3_500_000, "{} bytes", bytes.len());
        let read: Vec<RecordBatch> =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        assert!(read.len() >= 2, "written in {} pieces", read.len());
        assert_eq!(
            arrow::compute::concat_batches(&batch.schema(), &read).unwrap(),
            batch
        );
    }

    #[test]
    fn a_large_answer_is_written_in_pieces_that_join_into_one_json_document() {
        // 3,000 rows of about 1 KB: several pieces of about 1 MiB.
        let pieces: Vec<Vec<u8>> = Rendering::new(answer(1500), Encoding::Json)
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(pieces.len() >= 4, "{} pieces", pieces.len());
        assert!(pieces.iter().all(|p| p.len() < 2 * PIECE_BYTES));
        let document: Value = serde_json::from_slice(&pieces.concat()).unwrap();
        assert_eq!(document["columns"], json!(["n", "text", "x"]));
        assert_eq!(document["types"], json!(["Int64", "Utf8", "Float64"]));
        assert_eq!(document["row_count"], 3000);
        assert_eq!(document["truncated"], true);
        let rows = document["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 3000);
        assert_eq!(rows[0], json!([0, null, null]), "null text, NaN as null");
        assert_eq!(rows[1501], json!([1501, format!("{:0>1000}", 1501), 750.5]));
        assert_eq!(rows[2999][0], 2999);
    }

    #[test]
    fn csv_in_pieces_has_one_header_and_every_row() {
        let csv = to_csv(&answer(1500)).unwrap();
        let text = String::from_utf8(csv).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3001);
        assert_eq!(lines[0], "n,text,x");
        assert_eq!(lines.iter().filter(|l| l.starts_with("n,")).count(), 1);
        assert_eq!(lines[2], format!("1,{:0>1000},0.5", 1));
        assert_eq!(lines[3000], format!("2999,{:0>1000},1499.5", 2999));
    }

    #[test]
    fn arrow_ipc_in_pieces_reads_back_as_the_same_rows() {
        let result = answer(1500);
        let bytes = to_arrow_ipc(&result).unwrap();
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert!(batches.len() >= 4, "{} batches", batches.len());
        let read = arrow::compute::concat_batches(&result.schema, &batches).unwrap();
        let original = arrow::compute::concat_batches(&result.schema, &result.batches).unwrap();
        assert_eq!(read.num_rows(), 3000);
        // NaN is not equal to itself, so compare the columns that have none.
        assert_eq!(read.column(0), original.column(0));
        assert_eq!(read.column(1), original.column(1));
    }

    // Lists, structs, maps and unions are JSON values, not their display text (where a null
    // and an empty string looked alike: `[a, b, ]`).
    #[tokio::test]
    async fn nested_values_are_json_arrays_and_objects() {
        let ctx = datafusion::prelude::SessionContext::new();
        let batches = ctx
            .sql(
                "SELECT [1, 2] AS l, ['a, b', NULL, 'null'] AS t, \
                 named_struct('x', 1, 'y', [true]) AS s, map(['k'], [2.5]) AS m, \
                 arrow_cast([[1], []], 'LargeList(List(Int64))') AS ll",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let schema = batches[0].schema();
        let document = to_json(&QueryResult::new(schema, batches, false)).unwrap();
        assert_eq!(
            document["rows"],
            json!([[
                [1, 2],
                ["a, b", null, "null"],
                {"x": 1, "y": [true]},
                {"k": 2.5},
                [[1], []]
            ]])
        );
    }

    #[test]
    fn an_empty_answer_is_still_a_whole_document_in_each_encoding() {
        let schema = Arc::new(Schema::new(vec![Field::new("c", DataType::Int64, true)]));
        let empty = QueryResult::new(schema, Vec::new(), false);
        assert_eq!(
            to_json(&empty).unwrap(),
            json!({"columns": ["c"], "row_count": 0, "rows": [], "truncated": false, "types": ["Int64"]})
        );
        assert_eq!(to_csv(&empty).unwrap(), b"c\n");
        let bytes = to_arrow_ipc(&empty).unwrap();
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        assert_eq!(reader.schema().field(0).name(), "c");
        assert_eq!(reader.count(), 0);
    }
}
