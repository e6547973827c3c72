//! Parquet files as rows for `kith import`: read a record batch at a time (memory stays at one
//! batch whatever the file's size), each value turned into the JSON an importer reads.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use kith_import::{BadRow, ImportError, Row, RowSource};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde_json::{Number, Value};

/// Rows of a Parquet file.
pub struct ParquetRows {
    path: String,
    reader: ParquetRecordBatchReader,
    headers: Vec<String>,
    batch: Option<RecordBatch>,
    index: usize,
    number: u64,
    total_rows: u64,
    total_bytes: u64,
    bytes_read: Arc<AtomicU64>,
}

const BATCH_ROWS: usize = 8192;

impl ParquetRows {
    pub fn open(path: &Path) -> Result<ParquetRows, ImportError> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|source| ImportError::Read {
            path: shown.clone(),
            source,
        })?;
        let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let unreadable = |reason: String| ImportError::Unreadable {
            path: shown.clone(),
            format: "Parquet",
            reason,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| unreadable(e.to_string()))?;
        let total_rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let headers = builder
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let reader = builder
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| unreadable(e.to_string()))?;
        Ok(ParquetRows {
            path: shown,
            reader,
            headers,
            batch: None,
            index: 0,
            number: 0,
            total_rows,
            total_bytes,
            bytes_read: Arc::new(AtomicU64::new(0)),
        })
    }
}

/// One value as JSON: numbers and booleans as such, times as RFC 3339 (UTC), dates as
/// `YYYY-MM-DD`, anything else as Arrow displays it.
fn value(column: &dyn Array, row: usize) -> Result<Value, String> {
    if column.is_null(row) {
        return Ok(Value::Null);
    }
    let number = |f: f64| Number::from_f64(f).map_or(Value::Null, Value::Number);
    Ok(match column.data_type() {
        DataType::Boolean => Value::Bool(column.as_boolean().value(row)),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            let cast = arrow::compute::cast(&column.slice(row, 1), &DataType::Int64)
                .map_err(|e| e.to_string())?;
            Value::from(cast.as_primitive::<arrow::datatypes::Int64Type>().value(0))
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            let cast = arrow::compute::cast(&column.slice(row, 1), &DataType::UInt64)
                .map_err(|e| e.to_string())?;
            Value::from(cast.as_primitive::<arrow::datatypes::UInt64Type>().value(0))
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            let cast = arrow::compute::cast(&column.slice(row, 1), &DataType::Float64)
                .map_err(|e| e.to_string())?;
            number(
                cast.as_primitive::<arrow::datatypes::Float64Type>()
                    .value(0),
            )
        }
        DataType::Timestamp(_, _) => {
            let cast = arrow::compute::cast(
                &column.slice(row, 1),
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            )
            .map_err(|e| e.to_string())?;
            let micros = cast
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0);
            Value::String(
                chrono::DateTime::from_timestamp_micros(micros)
                    .unwrap_or_default()
                    .to_rfc3339(),
            )
        }
        _ => {
            let formatter = ArrayFormatter::try_new(column, &FormatOptions::default())
                .map_err(|e| e.to_string())?;
            Value::String(formatter.value(row).to_string())
        }
    })
}

impl RowSource for ParquetRows {
    fn headers(&self) -> Option<&[String]> {
        Some(&self.headers)
    }

    fn bytes_read(&self) -> Arc<AtomicU64> {
        self.bytes_read.clone()
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn next_row(&mut self) -> Result<Option<Result<Row, BadRow>>, ImportError> {
        loop {
            if let Some(batch) = &self.batch
                && self.index < batch.num_rows()
            {
                let row = self.index;
                self.index += 1;
                self.number += 1;
                if let Some(done) = (self.total_bytes * self.number).checked_div(self.total_rows) {
                    self.bytes_read.store(done, Ordering::Relaxed);
                }
                let mut values = Vec::with_capacity(self.headers.len());
                for (name, column) in self.headers.iter().zip(batch.columns()) {
                    match value(column.as_ref(), row) {
                        Ok(Value::Null) => {}
                        Ok(v) => values.push((name.clone(), v)),
                        Err(reason) => {
                            return Ok(Some(Err(BadRow {
                                number: self.number,
                                reason: format!("column `{name}`: {reason}"),
                            })));
                        }
                    }
                }
                return Ok(Some(Ok(Row {
                    number: self.number,
                    values,
                })));
            }
            match self.reader.next() {
                None => return Ok(None),
                Some(Ok(batch)) => {
                    self.batch = Some(batch);
                    self.index = 0;
                }
                Some(Err(e)) => {
                    return Err(ImportError::Unreadable {
                        path: self.path.clone(),
                        format: "Parquet",
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
}
