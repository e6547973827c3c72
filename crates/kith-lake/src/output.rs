//! Query results in the formats the API and the CLI hand out: JSON rows, CSV, Arrow IPC, tables.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, SecondsFormat};
use serde_json::{Number, Value};

use crate::QueryResult;

/// `{"columns": [names], "types": [arrow types], "rows": [[values]], "row_count": n, "truncated": bool}`.
/// A column's type as the JSON answer names it. Arrow has several layouts of one kind of value
/// (text read from Parquet is `Utf8View`, text still buffered `Utf8`); which one a column
/// happens to have says nothing to the reader, so each kind has one name.
fn type_name(data_type: &arrow::datatypes::DataType) -> String {
    // On the text, so that types inside lists and structs are named the same way.
    data_type
        .to_string()
        .replace("LargeUtf8", "Utf8")
        .replace("Utf8View", "Utf8")
        .replace("LargeBinary", "Binary")
        .replace("BinaryView", "Binary")
}

pub fn to_json(result: &QueryResult) -> Value {
    let columns: Vec<Value> = result
        .schema
        .fields()
        .iter()
        .map(|f| Value::String(f.name().clone()))
        .collect();
    let types: Vec<Value> = result
        .schema
        .fields()
        .iter()
        .map(|f| Value::String(type_name(f.data_type())))
        .collect();
    let mut rows = Vec::with_capacity(result.num_rows());
    for batch in &result.batches {
        for row in 0..batch.num_rows() {
            rows.push(Value::Array(
                batch
                    .columns()
                    .iter()
                    .map(|column| json_value(column.as_ref(), row))
                    .collect(),
            ));
        }
    }
    serde_json::json!({
        "columns": columns,
        "types": types,
        "rows": rows,
        "row_count": result.num_rows(),
        "truncated": result.truncated,
    })
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
        _ => displayed(array, row),
    }
}

fn displayed(array: &dyn Array, row: usize) -> Value {
    match ArrayFormatter::try_new(array, &FormatOptions::default()) {
        Ok(formatter) => Value::String(formatter.value(row).to_string()),
        Err(_) => Value::Null,
    }
}

/// CSV with a header row.
pub fn to_csv(result: &QueryResult) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    {
        let mut writer = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        if result.batches.is_empty() {
            writer.write(&RecordBatch::new_empty(result.schema.clone()))?;
        }
        for batch in &result.batches {
            writer.write(batch)?;
        }
    }
    Ok(out)
}

/// Arrow IPC stream format.
pub fn to_arrow_ipc(result: &QueryResult) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    {
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &result.schema)?;
        for batch in &result.batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    Ok(out)
}

/// A table for terminals.
pub fn to_table(result: &QueryResult) -> Result<String, arrow::error::ArrowError> {
    if result.batches.is_empty() {
        return Ok(
            arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(
                result.schema.clone(),
            )])?
            .to_string(),
        );
    }
    Ok(arrow::util::pretty::pretty_format_batches(&result.batches)?.to_string())
}
