//! The CNI contract (spec 1.0.0 and 1.1.0) as plain data: the command and
//! environment a runtime hands us, the network configuration on stdin, the
//! result and error objects we print. No I/O here, so every rule is
//! unit-tested.
//!
//! The spec: <https://www.cni.dev/docs/spec/> (containernetworking/cni
//! `SPEC.md`); the `args` and `CNI_ARGS` conventions: `CONVENTIONS.md`.
//!
//! One file per part of the contract: [`error`] (codes and the error
//! object), [`env`](mod@env) (the `CNI_*` variables and `CNI_ARGS`), [`netconf`]
//! (stdin), [`ports`] (the `portMappings` capability), [`result`] (what ADD prints), [`version`] (the versions we
//! speak). This module only names them; the parts never import it.

pub mod env;
pub mod error;
pub mod netconf;
pub mod ports;
pub mod result;
pub mod version;

pub use env::{CniArgs, Command, Env};
pub use error::{code, CniError};
pub use netconf::{
    peek_version, NetConf, ProxytunArgs, Selection, ValidAttachment, DEFAULT_SOCKET,
};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::{LATEST_VERSION, SUPPORTED_VERSIONS};
