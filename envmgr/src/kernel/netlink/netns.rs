//! Running rtnetlink work inside another network namespace.
//!
//! `setns` changes the namespace of the calling *thread*, so doing it on a
//! tokio worker would silently move every later task on that worker. Instead
//! each job gets a dedicated OS thread that enters the namespace, builds a
//! current-thread runtime, opens its own rtnetlink connection there, runs the
//! job and exits; the caller awaits the result without blocking.
//!
//! Also: opening a namespace file (checked to be a network namespace) and
//! the id the daemon's namespace gives another one, which tells whether a
//! veth's peer lives where it should.

use std::fs::File;
use std::future::Future;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::nsid::{NsidAttribute, NsidMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

use super::error::{kerr, nl};
use crate::kernel::spec::KernelError;

/// `NS_GET_NSTYPE` from `<linux/nsfs.h>`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Opens `path` and checks that it is a network namespace, so a wrong path
/// gets a clear error before anything is created.
pub(super) fn open_netns(path: &Path) -> Result<File, KernelError> {
    let action = || format!("open netns {}", path.display());
    let file = File::open(path).map_err(|e| kerr(action(), e.to_string()))?;
    let fs = fstatfs(&file).map_err(|e| kerr(action(), e.to_string()))?;
    if fs.filesystem_type() != NSFS_MAGIC {
        return Err(kerr(
            action(),
            "not a namespace file (expected a bind-mounted netns or /proc/<pid>/ns/net)",
        ));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the namespace
    // type of the open nsfs file; `file` outlives the call.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        return Err(kerr(action(), std::io::Error::last_os_error().to_string()));
    }
    if kind != libc::CLONE_NEWNET {
        return Err(kerr(action(), "a namespace, but not a network namespace"));
    }
    Ok(file)
}

/// Runs `job` with an rtnetlink handle inside the namespace `netns` (opened
/// by [`open_netns`]), on a dedicated thread. `path` is only for messages.
pub(super) async fn in_netns<T, F, Fut>(
    netns: File,
    path: PathBuf,
    job: F,
) -> Result<T, KernelError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, KernelError>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    std::thread::Builder::new()
        .name("envmgr-netns".into())
        .spawn(move || {
            let result = run_in_netns(&netns, &thread_path, job);
            // The receiver only goes away if the caller was cancelled.
            let _ = tx.send(result);
        })
        .map_err(|e| {
            kerr(
                format!("start worker for netns {}", path.display()),
                e.to_string(),
            )
        })?;
    rx.await.map_err(|_| {
        kerr(
            format!("work in netns {}", path.display()),
            "the worker thread panicked",
        )
    })?
}

fn run_in_netns<T, F, Fut>(netns: &File, path: &Path, job: F) -> Result<T, KernelError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, KernelError>>,
{
    setns(netns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| kerr(format!("enter netns {}", path.display()), e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| kerr("build runtime for netns worker", e.to_string()))?;
    rt.block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| {
            kerr(
                format!("open rtnetlink in netns {}", path.display()),
                e.to_string(),
            )
        })?;
        let conn = tokio::spawn(conn);
        let result = job(handle).await;
        conn.abort();
        result
    })
}

/// The id the current namespace gives the namespace `fd`, if one is
/// assigned (the kernel assigns one as soon as a veth peer lives there and
/// the link is dumped).
pub(super) async fn netns_id(
    handle: &Handle,
    fd: BorrowedFd<'_>,
) -> Result<Option<i32>, KernelError> {
    let mut msg = NsidMessage::default();
    // The fd is a small non-negative number; the attribute is a u32.
    let raw = u32::try_from(fd.as_raw_fd()).map_err(|_| kerr("get netns id", "negative fd"))?;
    msg.attributes = vec![NsidAttribute::Fd(raw)];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut handle = handle.clone();
    let mut resp = handle.request(req).map_err(nl("get netns id"))?;
    while let Some(m) = resp.next().await {
        match m.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(kerr("get netns id", e.to_io().to_string()));
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                for a in m.attributes {
                    if let NsidAttribute::Id(id) = a {
                        return Ok((id >= 0).then_some(id));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(None)
}
