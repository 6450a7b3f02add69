//! Small idempotent rtnetlink steps shared by the host side and the
//! in-namespace side: look a link up, set its flags, add an address, ensure a
//! route. Each returns a [`KernelError`] whose `action` names the step.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::nsid::{NsidAttribute, NsidMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::kernel::KernelError;

/// `ENODEV`: the kernel's answer for "no such link".
const ENODEV: i32 = libc::ENODEV;
/// `EEXIST`: an address or link that is already there.
const EEXIST: i32 = libc::EEXIST;

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
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(kerr(format!("look up link {name}"), describe(&e))),
    }
}

/// Looks a link up by ifindex; `None` when there is no such link.
pub(super) async fn link_by_index(
    handle: &Handle,
    index: u32,
) -> Result<Option<Link>, KernelError> {
    let mut links = handle.link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(kerr(format!("look up link #{index}"), describe(&e))),
    }
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
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(nl(format!("set mtu {mtu} and up on {}", link.name)))?;
    Ok(true)
}

/// Brings a link up if it is down. Returns whether anything changed.
pub(super) async fn ensure_up(handle: &Handle, link: &Link) -> Result<bool, KernelError> {
    if link.up {
        return Ok(false);
    }
    let msg = LinkUnspec::new_with_index(link.index).up().build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(nl(format!("set {} up", link.name)))?;
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

/// True when link `index` carries `addr/prefix`.
pub(super) async fn has_address(
    handle: &Handle,
    index: u32,
    addr: IpAddr,
    prefix: u8,
) -> Result<bool, KernelError> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    // The dump is read to its end even after a match: dropping the stream
    // early leaves the rest of the dump undeliverable, which netlink_proto
    // logs as a warning per message.
    let mut found = false;
    loop {
        match addrs.try_next().await {
            Ok(Some(msg)) => {
                if found || msg.header.prefix_len != prefix {
                    continue;
                }
                found = msg.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Address(x) | AddressAttribute::Local(x) if *x == addr)
                });
            }
            Ok(None) => return Ok(found),
            Err(e) => {
                return Err(kerr(
                    format!("list addresses of link #{index}"),
                    describe(&e),
                ))
            }
        }
    }
}

/// Adds `addr/prefix` to link `index` (v6 with `IFA_F_NODAD`, so it is usable
/// at once) unless it is there. Returns whether anything changed.
pub(super) async fn ensure_address(
    handle: &Handle,
    index: u32,
    ifname: &str,
    addr: IpAddr,
    prefix: u8,
) -> Result<bool, KernelError> {
    if has_address(handle, index, addr, prefix).await? {
        return Ok(false);
    }
    let mut req = handle.address().add(index, addr, prefix);
    if addr.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(false),
        Err(e) => Err(kerr(
            format!("add address {addr}/{prefix} to {ifname}"),
            describe(&e),
        )),
    }
}

/// True when `msg` is a main-table route to `dst/len` out of `oif`, via
/// `gateway` if one is given.
fn route_matches(
    msg: &RouteMessage,
    dst: IpAddr,
    len: u8,
    oif: u32,
    gateway: Option<IpAddr>,
) -> bool {
    let h = &msg.header;
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || h.destination_prefix_length != len {
        return false;
    }
    let mut got_dst = None;
    let mut got_oif = None;
    let mut got_gw = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => got_dst = route_addr(d),
            RouteAttribute::Oif(i) => got_oif = Some(*i),
            RouteAttribute::Gateway(g) => got_gw = route_addr(g),
            _ => {}
        }
    }
    // A default route carries no destination attribute.
    let dst_ok = match got_dst {
        Some(d) => d == dst,
        None => len == 0,
    };
    dst_ok && got_oif == Some(oif) && got_gw == gateway
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// True when a main-table route to `dst/len` out of `oif` (via `gateway`)
/// exists.
pub(super) async fn has_route(
    handle: &Handle,
    dst: IpAddr,
    len: u8,
    oif: u32,
    gateway: Option<IpAddr>,
) -> Result<bool, KernelError> {
    let query = match dst {
        IpAddr::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
        IpAddr::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
    };
    let mut routes = handle.route().get(query).execute();
    // Read to the end even after a match (see `has_address`).
    let mut found = false;
    loop {
        match routes.try_next().await {
            Ok(Some(msg)) => {
                found = found || route_matches(&msg, dst, len, oif, gateway);
            }
            Ok(None) => return Ok(found),
            Err(e) => return Err(kerr("list routes", describe(&e))),
        }
    }
}

/// Adds or replaces a main-table route (`NLM_F_REPLACE`), so a route that
/// points elsewhere is corrected.
pub(super) async fn replace_route(
    handle: &Handle,
    msg: RouteMessage,
    action: String,
) -> Result<(), KernelError> {
    handle
        .route()
        .add(msg)
        .replace()
        .execute()
        .await
        .map_err(nl(action))
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
