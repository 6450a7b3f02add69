//! Kernel errors as the netlink steps report them: what was being done
//! and the kernel's answer (the errno text when there is one).

use crate::kernel::spec::KernelError;

/// Builds a [`KernelError`] from what was being done and the kernel's answer.
pub(super) fn kerr(action: impl Into<String>, message: impl Into<String>) -> KernelError {
    KernelError {
        action: action.into(),
        message: message.into(),
    }
}

/// The errno of a netlink error answer, if it is one.
pub(super) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// A readable message for an rtnetlink error (the errno text when there is one).
pub(super) fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

/// Maps an rtnetlink error to a [`KernelError`] for `action`.
pub(super) fn nl(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let action = action.into();
    move |e| kerr(action, describe(&e))
}
