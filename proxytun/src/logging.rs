//! The daemon's logs: `tracing` to stderr, as text or JSON lines, with a
//! filter that can be replaced while the daemon runs (`proxytun log-level`,
//! `PUT /v1/log`).
//!
//! The filter is an `EnvFilter` inside a `reload` layer, so replacing it is
//! one swap; the operator's filter is checked before it is swapped in, so a
//! bad one changes nothing. hickory's crates start at warn (it logs every
//! query at info: a flood of queries must not become a flood of log lines);
//! a filter naming them still wins. `RUST_LOG`, when set, replaces the
//! configured level (as written, without the hickory defaults) until the
//! level is changed at runtime.

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::log_settings::{operator_filter, LogFormat};

/// Changes the log filter of the running daemon; cheap to clone.
#[derive(Clone)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    /// The filter as the operator wrote it (without [`crate::log_settings::DEFAULT_DIRECTIVES`]).
    current: Arc<Mutex<String>>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl LogHandle {
    /// The filter in force, as the operator wrote it.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the filter; the error says what is wrong with `filter`, and
    /// the old filter stays.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let filter = filter.trim();
        let env = operator_filter(filter)?;
        // Hold the lock across the swap so two callers cannot leave the
        // reported filter and the one in force different.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        self.reload
            .reload(env)
            .map_err(|e| format!("cannot replace the log filter: {e}"))?;
        *current = filter.to_owned();
        Ok(())
    }
}

/// The filter to start with: `RUST_LOG` when set and not empty (as
/// written), else `level`. Returns the filter and the text `current` reports.
fn initial_filter(level: &str, rust_log: Option<String>) -> anyhow::Result<(EnvFilter, String)> {
    match rust_log.filter(|v| !v.trim().is_empty()) {
        Some(v) => {
            let env = EnvFilter::builder()
                .parse(&v)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("RUST_LOG={v:?} is not a valid log filter"))?;
            Ok((env, v))
        }
        None => {
            let env =
                operator_filter(level.trim()).map_err(|e| anyhow::anyhow!("log.level: {e}"))?;
            Ok((env, level.trim().to_owned()))
        }
    }
}

/// The subscriber and its handle, writing to `writer`.
fn build<W>(
    level: &str,
    format: LogFormat,
    rust_log: Option<String>,
    writer: W,
    ansi: bool,
) -> anyhow::Result<(impl Subscriber + Send + Sync + 'static, LogHandle)>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static + Clone,
{
    let (filter, current) = initial_filter(level, rust_log)?;
    let (filter, reload) = reload::Layer::new(filter);
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(ansi),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(writer)
                    .with_ansi(false),
            ),
        ),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json);
    let handle = LogHandle {
        reload,
        current: Arc::new(Mutex::new(current)),
    };
    Ok((subscriber, handle))
}

/// Installs the global subscriber. `level` is a `tracing` filter
/// (`RUST_LOG` wins when set); hickory's crates start at warn.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<LogHandle> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let ansi = std::io::stderr().is_terminal();
    let (subscriber, handle) = build(level, format, rust_log, std::io::stderr, ansi)?;
    subscriber
        .try_init()
        .context("install the log subscriber (one is installed already)")?;
    Ok(handle)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A writer into a shared buffer, to see what was logged.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
        }
    }

    fn emit() {
        tracing::debug!(target: "proxytun::x", "a debug line");
        tracing::info!(target: "proxytun::x", "an info line");
        tracing::info!(target: "hickory_server::server", "a hickory line");
        tracing::warn!(target: "hickory_server::server", "a hickory warning");
    }

    #[test]
    fn set_swaps_the_filter_and_a_bad_one_changes_nothing() {
        let buf = Buf::default();
        let (sub, h) = build("info", LogFormat::Text, None, buf.clone(), false).unwrap();
        tracing::subscriber::with_default(sub, || {
            assert_eq!(h.current(), "info");
            emit();
            let out = buf.take();
            assert!(out.contains("an info line"), "{out}");
            assert!(!out.contains("a debug line"), "{out}");
            assert!(
                !out.contains("a hickory line"),
                "hickory starts at warn: {out}"
            );
            assert!(out.contains("a hickory warning"), "{out}");

            h.set("debug").unwrap();
            assert_eq!(h.current(), "debug");
            emit();
            let out = buf.take();
            assert!(out.contains("a debug line"), "{out}");
            assert!(!out.contains("a hickory line"), "{out}");

            for bad in ["proxytun=loud", "debg", "", "info,,debug", "[[="] {
                let e = h.set(bad).unwrap_err();
                assert!(!e.is_empty());
                assert_eq!(h.current(), "debug", "{bad:?} changed the filter");
            }
            let e = h.set("proxytun=loud").unwrap_err();
            assert!(e.contains("proxytun=loud"), "{e}");
            let e = h.set("debg").unwrap_err();
            assert!(e.contains("\"debg\" in \"debg\" is not a level"), "{e}");
            emit();
            assert!(buf.take().contains("a debug line"), "the old filter stays");

            // Naming hickory wins over the defaults.
            h.set("warn,hickory_server=info").unwrap();
            emit();
            let out = buf.take();
            assert!(out.contains("a hickory line"), "{out}");
            assert!(!out.contains("an info line"), "{out}");
        });
    }

    #[test]
    fn json_lines_parse_and_rust_log_wins() {
        let buf = Buf::default();
        let (sub, h) = build(
            "info",
            LogFormat::Json,
            Some("proxytun=debug".into()),
            buf.clone(),
            false,
        )
        .unwrap();
        tracing::subscriber::with_default(sub, || {
            assert_eq!(h.current(), "proxytun=debug");
            emit();
        });
        let out = buf.take();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0]["level"], "DEBUG");
        assert_eq!(lines[0]["fields"]["message"], "a debug line");
        assert_eq!(lines[1]["target"], "proxytun::x");
    }

    #[test]
    fn bad_start_filters_are_errors() {
        let e = build("loud", LogFormat::Text, None, Buf::default(), false)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("log.level"), "{e:#}");
        let e = build(
            "info",
            LogFormat::Text,
            Some("x=loud".into()),
            Buf::default(),
            false,
        )
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("RUST_LOG"), "{e:#}");
        // An empty RUST_LOG counts as unset.
        let (_, h) = build(
            "warn",
            LogFormat::Text,
            Some(" ".into()),
            Buf::default(),
            false,
        )
        .unwrap();
        assert_eq!(h.current(), "warn");
    }
}
