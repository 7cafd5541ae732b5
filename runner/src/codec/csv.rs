//! CSV records: one row per record, named by the pipeline's `columns` (or a
//! file's header). Cells that read as numbers become numbers, `true`/`false`
//! booleans, empty cells null; everything else stays text.

use csv_core::{ReadRecordResult, Reader, ReaderBuilder};

use crate::record::{FieldId, Value};

/// Why a CSV row was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    /// A different number of cells than columns.
    #[error("CSV row has {found} fields, expected {expected} ({columns})")]
    Width { found: usize, expected: usize, columns: String },
    /// Not UTF-8.
    #[error("CSV row is not valid UTF-8")]
    Utf8,
    /// An unterminated quote or a row that is too long.
    #[error("CSV row is malformed: {0}")]
    Malformed(&'static str),
}

/// A reusable CSV row parser.
pub struct CsvRow {
    reader: Reader,
    cells: Vec<u8>,
    ends: Vec<usize>,
}

impl CsvRow {
    /// A parser for rows separated by `delimiter`.
    pub fn new(delimiter: u8) -> Self {
        CsvRow {
            reader: ReaderBuilder::new().delimiter(delimiter).build(),
            cells: vec![0; 1024],
            ends: vec![0; 64],
        }
    }

    /// Split one row into its cells (borrowed from an internal buffer).
    pub fn split<'a>(&'a mut self, line: &[u8]) -> Result<Vec<&'a str>, CsvError> {
        self.reader.reset();
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (mut input, mut out_pos, mut end_pos) = (line, 0, 0);
        loop {
            let (res, nin, nout, nend) =
                self.reader.read_record(input, &mut self.cells[out_pos..], &mut self.ends[end_pos..]);
            input = &input[nin..];
            out_pos += nout;
            end_pos += nend;
            match res {
                ReadRecordResult::InputEmpty => {
                    if input.is_empty() {
                        // Signal end of input so the last cell is closed.
                        let (res, _, nout, nend) = self.reader.read_record(
                            &[],
                            &mut self.cells[out_pos..],
                            &mut self.ends[end_pos..],
                        );
                        out_pos += nout;
                        end_pos += nend;
                        if !matches!(res, ReadRecordResult::Record | ReadRecordResult::End) {
                            return Err(CsvError::Malformed("unterminated quote"));
                        }
                        break;
                    }
                }
                ReadRecordResult::OutputFull => {
                    if self.cells.len() > 64 << 20 {
                        return Err(CsvError::Malformed("row too long"));
                    }
                    self.cells.resize(self.cells.len() * 2, 0);
                }
                ReadRecordResult::OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                ReadRecordResult::Record | ReadRecordResult::End => break,
            }
        }
        let text = std::str::from_utf8(&self.cells[..out_pos]).map_err(|_| CsvError::Utf8)?;
        let mut start = 0;
        self.ends[..end_pos]
            .iter()
            .map(|&end| {
                let cell = text.get(start..end).ok_or(CsvError::Utf8);
                start = end;
                cell
            })
            .collect()
    }

    /// Parse a row into typed values for `columns`.
    pub fn decode(
        &mut self,
        line: &[u8],
        columns: &[FieldId],
        column_names: &str,
        out: &mut Vec<(FieldId, Value)>,
    ) -> Result<(), CsvError> {
        out.clear();
        let cells = self.split(line)?;
        if cells.len() != columns.len() {
            return Err(CsvError::Width {
                found: cells.len(),
                expected: columns.len(),
                columns: column_names.to_string(),
            });
        }
        out.extend(columns.iter().zip(cells).map(|(id, cell)| (*id, typed(cell))));
        Ok(())
    }
}

/// The value a CSV cell stands for.
pub fn typed(cell: &str) -> Value {
    if cell.is_empty() {
        return Value::Null;
    }
    let first = cell.as_bytes()[0];
    if first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.' {
        if let Ok(n) = cell.parse::<i64>() {
            return Value::Int(n);
        }
        if let Ok(x) = cell.parse::<f64>() {
            if x.is_finite() {
                return Value::Float(x);
            }
        }
    }
    match cell {
        "true" | "TRUE" | "True" => Value::Bool(true),
        "false" | "FALSE" | "False" => Value::Bool(false),
        _ => Value::Str(cell.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_typed() {
        let mut row = CsvRow::new(b',');
        let mut out = Vec::new();
        row.decode(b"2014-07-01 00:00:00,10844,0.5,,true,\"a, b\"\r\n", &[0, 1, 2, 3, 4, 5], "", &mut out)
            .unwrap();
        let values: Vec<Value> = out.into_iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            vec![
                Value::Str("2014-07-01 00:00:00".into()),
                Value::Int(10844),
                Value::Float(0.5),
                Value::Null,
                Value::Bool(true),
                Value::Str("a, b".into()),
            ]
        );
    }

    #[test]
    fn nan_and_inf_stay_text_so_detectors_refuse_them() {
        assert_eq!(typed("NaN"), Value::Str("NaN".into()));
        assert_eq!(typed("inf"), Value::Str("inf".into()));
        assert_eq!(typed("-inf"), Value::Str("-inf".into()));
    }

    #[test]
    fn width_and_quotes_are_checked() {
        let mut row = CsvRow::new(b',');
        let mut out = Vec::new();
        let err = row.decode(b"1,2,3", &[0, 1], "ts, value", &mut out).unwrap_err();
        assert_eq!(err.to_string(), "CSV row has 3 fields, expected 2 (ts, value)");
        assert!(row.decode(b"\"open,2", &[0, 1], "", &mut out).is_err());
        assert!(row.split(b"\xff\xfe,1").is_err());
    }

    #[test]
    fn long_rows_grow_the_buffers() {
        let mut row = CsvRow::new(b';');
        let line: Vec<String> = (0..500).map(|i| format!("{i}{}", "x".repeat(20))).collect();
        let cells = row.split(line.join(";").as_bytes()).unwrap();
        assert_eq!(cells.len(), 500);
        assert!(cells[499].starts_with("499"));
    }
}
