//! How answers are printed: aligned tables, `key  value` lines, nested
//! objects as dotted keys, or the raw JSON with `--json`. Shared by every
//! command group.

use std::fmt::Write as _;

use clap::Args;
use envmgr::model::DualAddr;
use serde_json::Value;

/// The output switch shared by the listing commands.
#[derive(Debug, Clone, Copy, Args)]
pub struct Output {
    /// Print the API's raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn show(
    v: Value,
    o: Output,
    f: impl FnOnce(&Value) -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    if o.json {
        Ok(format!("{}\n", serde_json::to_string_pretty(&v)?))
    } else {
        f(&v)
    }
}

/// A JSON scalar as table text: strings bare, `null` as `-`.
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows aligned under headers, two spaces between columns.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `key  value` lines with the keys padded to one width.
pub(super) fn format_kv(pairs: &[(String, String)], indent: &str) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{}\n", format!("{indent}{k:<w$}  {v}").trim_end()))
        .collect()
}

/// Nested objects as dotted keys (`drops.no_service`), in key order.
pub(super) fn flatten(v: &Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, child, out);
                }
            }
            other => out.push((prefix.to_owned(), text(other))),
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

pub(super) fn pair(d: &DualAddr) -> String {
    format!("{}  {}", d.v4, d.v6)
}

/// The column order of well-known flow and reply fields; JSON objects
/// arrive with sorted keys, which would put `bytes` before `proto`.
const COLUMN_ORDER: &[&str] = &[
    "proto",
    "client",
    "vip",
    "client_iip",
    "instance_ip",
    "instance",
    "instance_addr",
    "node",
    "peer",
    "state",
    "packets",
    "bytes",
    "idle_ms",
];

/// Known columns first in [`COLUMN_ORDER`], then the others as they came.
fn column_rank(c: &str) -> usize {
    COLUMN_ORDER
        .iter()
        .position(|k| *k == c)
        .unwrap_or(COLUMN_ORDER.len())
}

/// Every list of objects in `v` as a table titled by its key (columns are
/// the rows' keys, well-known ones first, so new fields show up without a
/// CLI change); other values as `key  value`.
pub(super) fn format_tables(v: &Value) -> String {
    let Some(map) = v.as_object() else {
        return format!("{}\n", text(v));
    };
    let mut out = String::new();
    let mut scalars = Vec::new();
    for (key, val) in map {
        let Some(rows) = val.as_array() else {
            scalars.extend(flatten(val).into_iter().map(|(k, v)| {
                let k = if k.is_empty() {
                    key.clone()
                } else {
                    format!("{key}.{k}")
                };
                (k, v)
            }));
            continue;
        };
        if !out.is_empty() {
            out.push('\n');
        }
        if rows.is_empty() {
            let _ = writeln!(out, "{key}: none");
            continue;
        }
        let _ = writeln!(out, "{key} ({}):", rows.len());
        let mut columns: Vec<String> = Vec::new();
        for row in rows {
            if let Some(obj) = row.as_object() {
                for k in obj.keys() {
                    if !columns.contains(k) {
                        columns.push(k.clone());
                    }
                }
            }
        }
        if columns.is_empty() {
            for row in rows {
                let _ = writeln!(out, "{}", text(row));
            }
            continue;
        }
        columns.sort_by_key(|c| column_rank(c));
        let headers: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
        let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|row| columns.iter().map(|c| text(&row[c.as_str()])).collect())
            .collect();
        out.push_str(&table(&header_refs, &cells));
    }
    if !scalars.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format_kv(&scalars, ""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONG_HEADER", "C"],
            &[vec!["xxxx".into(), "y".into(), "z".into()]],
        );
        assert_eq!(t, "A     LONG_HEADER  C\nxxxx  y            z\n");
    }

    #[test]
    fn flows_print_generic_columns() {
        let v = json!({
            "flows": [
                {"proto": "tcp", "client": "10.18.1.2:40000", "peer": null, "packets": 12},
                {"proto": "udp", "client": "10.18.1.3:53", "peer": "192.0.2.2:50103", "packets": 1, "extra": true}
            ],
            "replies": []
        });
        let out = format_tables(&v);
        assert!(
            out.starts_with(
                "flows (2):\nPROTO  CLIENT           PEER             PACKETS  EXTRA\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("tcp    10.18.1.2:40000  -                12       -\n"),
            "{out}"
        );
        assert!(out.contains("true\n"), "{out}");
        assert!(out.ends_with("replies: none\n"), "{out}");
    }

    #[test]
    fn counters_flatten_nested_objects() {
        let v = json!({"tun_rx": 5, "drops": {"no_service": 2, "ttl": 0}});
        assert_eq!(
            format_kv(&flatten(&v), ""),
            "drops.no_service  2\ndrops.ttl         0\ntun_rx            5\n"
        );
    }
}
