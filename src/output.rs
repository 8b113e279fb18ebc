//! `-o table|json|csv`: every command prints either an aligned table for people or the API's
//! JSON for scripts; list-like output also as CSV (RFC 4180) for spreadsheets.

use serde_json::Value;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The API's JSON, for scripts.
    Json,
    /// Comma-separated values with a header of field names, for spreadsheets (list-like output;
    /// a single record prints as `field,value` lines).
    Csv,
}

/// A CSV field: raw values (unix ms stay numbers), lists joined by `;`, quoted when needed.
pub fn csv_field(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(csv_field).collect::<Vec<_>>().join(";"),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// CSV lines: a header of `keys`, then one line per item of `v`.
pub fn csv_lines(v: &Value, keys: &[&str]) -> Vec<String> {
    let mut out = vec![keys.join(",")];
    for item in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let fields: Vec<String> = keys.iter().map(|k| csv_field(&pointer(item, k))).collect();
        out.push(fields.join(","));
    }
    out
}

/// Renders a cell value the way a person reads it.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Formats unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn time(v: &Value) -> String {
    let Some(ms) = v.as_i64() else {
        return "-".into();
    };
    inventory::fmt_utc(ms, true)
}

/// Prints rows under headers with aligned columns.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// Prints `v` as JSON or as key/value lines.
pub fn record(format: Format, v: &Value, fields: &[(&str, &str)]) {
    match format {
        Format::Json => json(v),
        Format::Csv => {
            println!("field,value");
            for (_, key) in fields {
                println!(
                    "{},{}",
                    csv_field(&Value::from(*key)),
                    csv_field(&pointer(v, key))
                );
            }
        }
        Format::Table => {
            let width = fields
                .iter()
                .map(|(label, _)| label.len())
                .max()
                .unwrap_or(0);
            for (label, key) in fields {
                let val = pointer(v, key);
                let text = if key.ends_with("_at") {
                    time(&val)
                } else {
                    cell(&val)
                };
                println!("{label:<width$}  {text}");
            }
        }
    }
}

/// Prints pretty JSON.
pub fn json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// A field by dotted path (`bmc.url`).
pub fn pointer(v: &Value, key: &str) -> Value {
    let path = format!("/{}", key.replace('.', "/"));
    v.pointer(&path).cloned().unwrap_or(Value::Null)
}

/// Prints a list as JSON or a table of `columns` (header, dotted key).
pub fn list(format: Format, v: &Value, columns: &[(&str, &str)]) {
    match format {
        Format::Json => json(v),
        Format::Csv => {
            let keys: Vec<&str> = columns.iter().map(|(_, k)| *k).collect();
            for line in csv_lines(v, &keys) {
                println!("{line}");
            }
        }
        Format::Table => {
            let rows = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|item| {
                            columns
                                .iter()
                                .map(|(_, key)| {
                                    let val = pointer(item, key);
                                    if *key == "at" || key.ends_with("_at") {
                                        time(&val)
                                    } else {
                                        cell(&val)
                                    }
                                })
                                .collect()
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(&columns.iter().map(|(h, _)| *h).collect::<Vec<_>>(), rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(&Value::from(0)), "1970-01-01 00:00:00");
        assert_eq!(
            time(&Value::from(1_764_000_000_000_i64)),
            "2025-11-24 16:00:00"
        );
        assert_eq!(time(&Value::Null), "-");
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let v = serde_json::json!([
            {"name": "a", "n": 1.5, "tags": ["x", "y"], "note": null},
            {"name": "say \"hi\", then", "n": 2, "tags": [], "note": "two\nlines"},
        ]);
        assert_eq!(
            csv_lines(&v, &["name", "n", "tags", "note"]),
            vec![
                "name,n,tags,note".to_string(),
                "a,1.5,x;y,".to_string(),
                "\"say \"\"hi\"\", then\",2,,\"two\nlines\"".to_string(),
            ]
        );
    }
}
