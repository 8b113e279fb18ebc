//! `-o table|json`: every command prints either an aligned table for people or the API's JSON
//! for scripts.

use serde_json::Value;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The API's JSON, for scripts.
    Json,
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
}
