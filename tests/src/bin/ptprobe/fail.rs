//! ptprobe's error: a message with the context of what was being done,
//! printed as `ptprobe: <message>` (no error crate: the tool is standard
//! library only).

use std::fmt;

/// A failure with the context of what was being done.
#[derive(Debug)]
pub struct Fail(pub String);

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What every step of ptprobe returns.
pub type Res<T> = Result<T, Fail>;

/// Adds "what we were doing" to io errors.
pub trait Ctx<T> {
    /// Prefixes the error with `what` was being done.
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T>;
}

impl<T, E: fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T> {
        self.map_err(|e| Fail(format!("{}: {e}", what())))
    }
}

/// Fails with `msg`.
pub fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(Fail(msg.into()))
}
