//! The CNI spec versions this plugin speaks and answers in.

/// The spec versions this plugin speaks; a netconf with another
/// `cniVersion` gets error code 1, so a runtime never gets a result in a
/// shape it did not ask for.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

/// The version of our answers when the input names none we can use (an
/// error before the netconf could be read, `VERSION` without input).
pub const LATEST_VERSION: &str = "1.1.0";
