//! Links: look one up (by name or index), set its MTU and flags, delete
//! it, and check a name the way the kernel would. Every step is idempotent
//! and names itself in its error.

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkGetRequest, LinkUnspec};

use super::error::{describe, errno, kerr, nl};
use crate::kernel::spec::KernelError;

/// `ENODEV`: the kernel's answer for "no such link".
const ENODEV: i32 = libc::ENODEV;

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
const MAX_IFNAME: usize = 15;

/// The parts of a link the attach logic looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Link {
    /// Its ifindex in its namespace.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// The ifindex of its master (bridge), if enslaved.
    pub master: Option<u32>,
    /// Its kind (`veth`, `bridge`, ...), if it has one.
    pub kind: Option<InfoKind>,
    /// For a veth: the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// For a veth whose peer is in another namespace: that namespace's id
    /// as seen from this one.
    pub peer_netnsid: Option<i32>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mtu: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            master: None,
            kind: None,
            peer_index: None,
            peer_netnsid: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = Some(*m),
                LinkAttribute::Controller(c) if *c != 0 => link.master = Some(*c),
                LinkAttribute::Link(l) => link.peer_index = Some(*l),
                LinkAttribute::LinkNetNsId(id) if *id >= 0 => link.peer_netnsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(k.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// True when this link is a veth.
    pub fn is_veth(&self) -> bool {
        self.kind == Some(InfoKind::Veth)
    }

    /// True when this link is a bridge.
    pub fn is_bridge(&self) -> bool {
        self.kind == Some(InfoKind::Bridge)
    }
}

/// Looks a link up by name; `None` when there is no such link.
pub(super) async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<Link>, KernelError> {
    let req = handle.link().get().match_name(name.to_string());
    first_link(req, || format!("look up link {name}")).await
}

/// Looks a link up by ifindex; `None` when there is no such link.
pub(super) async fn link_by_index(
    handle: &Handle,
    index: u32,
) -> Result<Option<Link>, KernelError> {
    let req = handle.link().get().match_index(index);
    first_link(req, || format!("look up link #{index}")).await
}

/// The link a lookup answers with; `None` when there is no such link
/// (`ENODEV`). `action` words the step for any other error.
async fn first_link(
    req: LinkGetRequest,
    action: impl FnOnce() -> String,
) -> Result<Option<Link>, KernelError> {
    let mut links = req.execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(kerr(action(), describe(&e))),
    }
}

/// Applies one link change (`RTM_SETLINK`); the error names `action`.
pub(super) async fn set_link(
    handle: &Handle,
    msg: LinkMessage,
    action: String,
) -> Result<(), KernelError> {
    handle.link().set(msg).execute().await.map_err(nl(action))
}

/// Sets MTU and brings the link up, each only if not already so. Returns
/// whether anything changed.
pub(super) async fn ensure_mtu_up(
    handle: &Handle,
    link: &Link,
    mtu: u32,
) -> Result<bool, KernelError> {
    if link.mtu == Some(mtu) && link.up {
        return Ok(false);
    }
    let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).up().build();
    set_link(
        handle,
        msg,
        format!("set mtu {mtu} and up on {}", link.name),
    )
    .await?;
    Ok(true)
}

/// Brings a link up if it is down. Returns whether anything changed.
pub(super) async fn ensure_up(handle: &Handle, link: &Link) -> Result<bool, KernelError> {
    if link.up {
        return Ok(false);
    }
    let msg = LinkUnspec::new_with_index(link.index).up().build();
    set_link(handle, msg, format!("set {} up", link.name)).await?;
    Ok(true)
}

/// Deletes a link by ifindex; succeeds when it is already gone.
pub(super) async fn delete_link(
    handle: &Handle,
    index: u32,
    name: &str,
) -> Result<(), KernelError> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
        Err(e) => Err(kerr(format!("delete link {name}"), describe(&e))),
    }
}

/// Checks an interface name the way the kernel would, so a bad name is a
/// clear error instead of a bare `EINVAL`.
pub(super) fn validate_ifname(what: &str, name: &str) -> Result<(), KernelError> {
    let problem = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > MAX_IFNAME {
        Some(format!(
            "is {} bytes long, at most {MAX_IFNAME} allowed",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("is not a valid name".to_string())
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        Some("contains '/', ':' or whitespace".to_string())
    } else {
        None
    };
    match problem {
        Some(p) => Err(kerr(format!("check {what} {name:?}"), p)),
        None => Ok(()),
    }
}
