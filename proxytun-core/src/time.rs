//! Time as the core handles it: it never reads a clock; `now` comes in with
//! every call, deadlines are `Option<Instant>` (`None`: never), and the
//! views give durations as milliseconds.
//!
//! A leaf module shared by the flow table, the reply cache and the record
//! of denials.

use std::time::{Duration, Instant};

/// The earlier of two optional instants (`None` = never).
pub fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Serialises a duration as whole milliseconds.
pub(crate) fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
