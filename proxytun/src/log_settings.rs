//! What a log setting may be: the `[log]` table, its format, and the
//! syntax of a `tracing` filter.
//!
//! Both the config (which checks `log.level` when the file is read) and
//! the logging (which installs and swaps the filter) use it, so it sits
//! below both and the dependencies read one way:
//! `config` -> `log_settings` <- `logging`.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// A `tracing` filter, e.g. `info` or `proxytun=debug`. `RUST_LOG` overrides it.
    /// `proxytun log-level` changes it while the daemon runs.
    pub level: String,
    /// `text` for people (the default), `json` (one object a line) for
    /// log collectors.
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Directives that come before the operator's filter.
pub const DEFAULT_DIRECTIVES: &str =
    "hickory_server=warn,hickory_resolver=warn,hickory_net=warn,hickory_proto=warn";

/// The names a bare directive (one without `=`) may have: the levels.
const LEVELS: &[&str] = &[
    "off", "error", "warn", "info", "debug", "trace", "0", "1", "2", "3", "4", "5",
];

/// Checks an operator's filter the way [`crate::logging::LogHandle::set`] does, e.g. for
/// the config's `log.level`: a list of `LEVEL` or `TARGET[span{field}]=LEVEL`
/// directives separated by commas. A bare word that is not a level (say a
/// misspelt `debg`) is refused: `tracing` would read it as a target to log
/// at trace, which is never what was meant.
pub fn check_filter(filter: &str) -> Result<(), String> {
    operator_filter(filter.trim()).map(|_| ())
}

/// The `EnvFilter` for an operator's filter, [`DEFAULT_DIRECTIVES`] first.
pub(crate) fn operator_filter(filter: &str) -> Result<EnvFilter, String> {
    if filter.is_empty() {
        return Err(format!(
            "the log filter is empty; give a level ({}) or TARGET=LEVEL directives",
            LEVELS[..6].join(", ")
        ));
    }
    for d in directives(filter) {
        let d = d.trim();
        if d.is_empty() {
            return Err(format!(
                "{filter:?} has an empty directive (two commas in a row?)"
            ));
        }
        if !d.contains('=')
            && !d.contains('[')
            && !LEVELS.contains(&d.to_ascii_lowercase().as_str())
        {
            return Err(format!(
                "{d:?} in {filter:?} is not a level ({}); name a target as TARGET=LEVEL, e.g. proxytun=debug",
                LEVELS[..6].join(", ")
            ));
        }
    }
    EnvFilter::builder()
        .parse(format!("{DEFAULT_DIRECTIVES},{filter}"))
        .map_err(|e| format!("{filter:?} is not a valid log filter: {e}"))
}

/// Splits on the commas outside `[...]` and `{...}` (span field filters
/// may hold commas).
fn directives(filter: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, ch) in filter.char_indices() {
        match ch {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth <= 0 => {
                out.push(&filter[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&filter[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_with_spans_and_upper_case_levels_pass() {
        assert!(check_filter("info,proxytun::shell[span{a=1}]=trace").is_ok());
        assert!(check_filter("INFO").is_ok());
    }
}
