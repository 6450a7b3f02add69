//! The real [`Kernel`]: applies bridge, routes and veth attachments with
//! rtnetlink (no `ip` subprocesses), idempotently.
//!
//! Work inside a container's namespace runs on a dedicated thread that
//! `setns`es into it (see `netns.rs`); the daemon's own threads never change
//! namespace.

mod netns;
mod ops;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use self::netns::{in_netns, open_netns};
use self::ops::{
    delete_link, ensure_address, ensure_mtu_up, ensure_up, errno, has_route, kerr, link_by_index,
    link_by_name, netns_id, nl, replace_route, Link,
};
use super::{BridgeSpec, Kernel, KernelError, VethSpec};

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
const MAX_IFNAME: usize = 15;

/// What [`Netlink::ensure_attached`] had to do; lets callers log (and tests
/// check) that a repeated attach really was a no-op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachOutcome {
    /// Everything was already in place; nothing was changed.
    Unchanged,
    /// The veth pair existed but something was missing and was fixed.
    Repaired,
    /// A new veth pair was created and configured.
    Created,
}

/// The rtnetlink-backed [`Kernel`], bound to the namespace the daemon runs
/// in. Cheap to clone: clones share one netlink connection.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens an rtnetlink connection in the current network namespace and
    /// drives it on the current tokio runtime (so call this inside one).
    pub fn new() -> Result<Self, KernelError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|e| {
            kerr(
                "open rtnetlink connection",
                format!("no tokio runtime: {e}"),
            )
        })?;
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| kerr("open rtnetlink connection", e.to_string()))?;
        rt.spawn(conn);
        Ok(Netlink { handle })
    }

    /// Like [`Kernel::attach`], but says whether anything had to change.
    pub async fn ensure_attached(&self, spec: &VethSpec) -> Result<AttachOutcome, KernelError> {
        validate_ifname("host veth name", &spec.host_veth)?;
        validate_ifname("container interface name", &spec.ifname)?;
        let netns = open_netns(&spec.netns)?;
        let bridge = self.bridge_index(&spec.bridge).await?;

        if let Some(host) = link_by_name(&self.handle, &spec.host_veth).await? {
            if !host.is_veth() {
                return Err(kerr(
                    format!("attach {}", spec.host_veth),
                    format!("a link named {} exists and is not a veth", spec.host_veth),
                ));
            }
            // Is its peer in the requested namespace? Compare namespace ids
            // as the host sees them; the index alone could match by chance.
            let target = netns_id(&self.handle, netns.as_fd()).await?;
            let peer_there = target.is_some() && host.peer_netnsid == target;
            if let (true, Some(peer_index)) = (peer_there, host.peer_index) {
                let mut changed = self.ensure_host_end(&host, bridge, spec.mtu).await?;
                let inside = spec.clone();
                changed |= in_netns(netns, spec.netns.clone(), move |h| {
                    ensure_container_end(h, inside, peer_index)
                })
                .await?;
                return Ok(if changed {
                    AttachOutcome::Repaired
                } else {
                    AttachOutcome::Unchanged
                });
            }
            // The peer is gone or elsewhere: the pair is unusable, start over.
            tracing::info!(host_veth = %spec.host_veth, "veth peer not in the target netns, recreating the pair");
            delete_link(&self.handle, host.index, &host.name).await?;
        }

        self.create(spec, netns, bridge).await?;
        Ok(AttachOutcome::Created)
    }

    /// The ifindex of bridge `name`, or an error if it is missing or not a
    /// bridge.
    async fn bridge_index(&self, name: &str) -> Result<u32, KernelError> {
        match link_by_name(&self.handle, name).await? {
            Some(l) if l.is_bridge() => Ok(l.index),
            Some(_) => Err(kerr(
                format!("find bridge {name}"),
                "the link exists but is not a bridge",
            )),
            None => Err(kerr(
                format!("find bridge {name}"),
                "no such link (was the bridge set up?)",
            )),
        }
    }

    /// Enslaves the host end to the bridge, sets its MTU and brings it up,
    /// if any of that is missing.
    async fn ensure_host_end(
        &self,
        host: &Link,
        bridge: u32,
        mtu: u32,
    ) -> Result<bool, KernelError> {
        if host.master == Some(bridge) && host.mtu == Some(mtu) && host.up {
            return Ok(false);
        }
        let msg = LinkUnspec::new_with_index(host.index)
            .mtu(mtu)
            .controller(bridge)
            .up()
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl(format!(
                "enslave {} to bridge #{bridge}, mtu {mtu}, up",
                host.name
            )))?;
        Ok(true)
    }

    /// Creates the pair with the peer directly in the target namespace
    /// (under a temporary name), then configures the inside; on any error
    /// deletes the host end, which takes the peer with it.
    async fn create(
        &self,
        spec: &VethSpec,
        netns: std::fs::File,
        bridge: u32,
    ) -> Result<(), KernelError> {
        let tmp = temp_name();
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(tmp.clone())
            .mtu(spec.mtu)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(&spec.host_veth, &tmp)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(spec.mtu)
            .controller(bridge)
            .up()
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!(
                "create veth {} with peer {tmp} in netns {}",
                spec.host_veth,
                spec.netns.display()
            )))?;

        let result = async {
            let host = link_by_name(&self.handle, &spec.host_veth)
                .await?
                .ok_or_else(|| {
                    kerr(
                        format!("look up new veth {}", spec.host_veth),
                        "it vanished right after creation",
                    )
                })?;
            let peer_index = host.peer_index.ok_or_else(|| {
                kerr(
                    format!("look up new veth {}", spec.host_veth),
                    "the kernel reports no peer",
                )
            })?;
            let inside = spec.clone();
            in_netns(netns, spec.netns.clone(), move |h| {
                ensure_container_end(h, inside, peer_index)
            })
            .await
        }
        .await;

        if let Err(e) = result {
            match link_by_name(&self.handle, &spec.host_veth).await {
                Ok(Some(l)) => {
                    if let Err(del) = delete_link(&self.handle, l.index, &l.name).await {
                        tracing::warn!(error = %del, "could not undo a failed attach");
                    }
                }
                Ok(None) => {}
                Err(look) => tracing::warn!(error = %look, "could not undo a failed attach"),
            }
            return Err(e);
        }
        Ok(())
    }
}

/// Inside the container's namespace: gives the peer `spec.ifname`, MTU,
/// both addresses, brings it and `lo` up, and sets the default routes. Each
/// step only if missing. Returns whether anything changed.
async fn ensure_container_end(
    h: Handle,
    spec: VethSpec,
    peer_index: u32,
) -> Result<bool, KernelError> {
    let ns = spec.netns.display().to_string();
    let mut link = link_by_index(&h, peer_index).await?.ok_or_else(|| {
        kerr(
            format!("find veth peer #{peer_index} in netns {ns}"),
            "no such link",
        )
    })?;
    let mut changed = false;

    if link.name != spec.ifname {
        if let Some(other) = link_by_name(&h, &spec.ifname).await? {
            return Err(kerr(
                format!("name the container end {} in netns {ns}", spec.ifname),
                format!(
                    "an interface named {} (index {}) already exists there and is not the peer of {}",
                    spec.ifname, other.index, spec.host_veth
                ),
            ));
        }
        let rename = format!("rename {} to {} in netns {ns}", link.name, spec.ifname);
        if link.up {
            let down = LinkUnspec::new_with_index(link.index).down().build();
            h.link()
                .set(down)
                .execute()
                .await
                .map_err(nl(rename.clone()))?;
            link.up = false;
        }
        let msg = LinkUnspec::new_with_index(link.index)
            .name(spec.ifname.clone())
            .build();
        h.link().set(msg).execute().await.map_err(nl(rename))?;
        link.name = spec.ifname.clone();
        changed = true;
    }

    changed |= ensure_mtu_up(&h, &link, spec.mtu).await?;
    changed |= ensure_address(
        &h,
        link.index,
        &link.name,
        IpAddr::V4(spec.addr.v4),
        spec.subnet.prefix_len(),
    )
    .await?;
    changed |= ensure_address(
        &h,
        link.index,
        &link.name,
        IpAddr::V6(spec.addr.v6),
        spec.subnet6.prefix_len(),
    )
    .await?;

    let lo = link_by_name(&h, "lo")
        .await?
        .ok_or_else(|| kerr(format!("find lo in netns {ns}"), "no such link"))?;
    changed |= ensure_up(&h, &lo).await?;

    let gw4 = spec.gateway.v4;
    if !has_route(
        &h,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        0,
        link.index,
        Some(IpAddr::V4(gw4)),
    )
    .await?
    {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw4)
            .output_interface(link.index)
            .build();
        replace_route(
            &h,
            msg,
            format!("add default route via {gw4} in netns {ns}"),
        )
        .await?;
        changed = true;
    }
    let gw6 = spec.gateway.v6;
    if !has_route(
        &h,
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        0,
        link.index,
        Some(IpAddr::V6(gw6)),
    )
    .await?
    {
        let msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gw6)
            .output_interface(link.index)
            .build();
        replace_route(
            &h,
            msg,
            format!("add default route via {gw6} in netns {ns}"),
        )
        .await?;
        changed = true;
    }
    Ok(changed)
}

/// Checks an interface name the way the kernel would, so a bad name is a
/// clear error instead of a bare `EINVAL`.
fn validate_ifname(what: &str, name: &str) -> Result<(), KernelError> {
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

/// A name for the peer while it waits to be renamed, unique enough that two
/// concurrent attaches into one namespace do not collide.
fn temp_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = u64::from(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    let x = (u64::from(std::process::id()) << 24) ^ (n << 12) ^ nanos;
    // "ptt" + 12 hex digits = 15 bytes.
    format!("ptt{:012x}", x & 0xffff_ffff_ffff)
}

/// Writes `1` to a forwarding sysctl unless it already reads `1` (so a
/// read-only /proc/sys with forwarding already on is fine).
fn enable_sysctl(path: &str) -> Result<(), KernelError> {
    if std::fs::read_to_string(path)
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
    {
        return Ok(());
    }
    std::fs::write(path, b"1").map_err(|e| kerr(format!("write 1 to {path}"), e.to_string()))
}

impl Kernel for Netlink {
    async fn setup_bridge(&self, spec: &BridgeSpec) -> Result<(), KernelError> {
        validate_ifname("bridge name", &spec.name)?;
        enable_sysctl("/proc/sys/net/ipv4/ip_forward")?;
        enable_sysctl("/proc/sys/net/ipv6/conf/all/forwarding")?;

        let bridge = match link_by_name(&self.handle, &spec.name).await? {
            Some(l) if l.is_bridge() => l,
            Some(_) => {
                return Err(kerr(
                    format!("set up bridge {}", spec.name),
                    "a link with that name exists and is not a bridge",
                ))
            }
            None => {
                let msg = LinkBridge::new(&spec.name).mtu(spec.mtu).build();
                match self.handle.link().add(msg).execute().await {
                    Ok(()) => {}
                    // Created concurrently: fine, configure it below.
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(nl(format!("create bridge {}", spec.name))(e)),
                }
                link_by_name(&self.handle, &spec.name)
                    .await?
                    .ok_or_else(|| {
                        kerr(
                            format!("create bridge {}", spec.name),
                            "it vanished right after creation",
                        )
                    })?
            }
        };
        ensure_mtu_up(&self.handle, &bridge, spec.mtu).await?;
        // A bridge without an address of its own takes the lowest MAC among
        // its ports, so attaching or detaching a container would change the
        // gateway's MAC under every other container's ARP cache. Setting it
        // explicitly pins it (the kernel stops following the ports), and
        // deriving it from the gateway address keeps it across restarts.
        let mac = bridge_mac(spec.gateway.v4);
        let msg = LinkUnspec::new_with_index(bridge.index)
            .address(mac.to_vec())
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl(format!("set the MAC address of bridge {}", spec.name)))?;
        ensure_address(
            &self.handle,
            bridge.index,
            &spec.name,
            IpAddr::V4(spec.gateway.v4),
            spec.subnet.prefix_len(),
        )
        .await?;
        ensure_address(
            &self.handle,
            bridge.index,
            &spec.name,
            IpAddr::V6(spec.gateway.v6),
            spec.subnet6.prefix_len(),
        )
        .await?;
        Ok(())
    }

    async fn route_services(
        &self,
        tun: &str,
        services: Ipv4Net,
        services6: Ipv6Net,
    ) -> Result<(), KernelError> {
        validate_ifname("tun name", tun)?;
        let dev = link_by_name(&self.handle, tun).await?.ok_or_else(|| {
            kerr(
                format!("route services into {tun}"),
                "no such device (is the dataplane running?)",
            )
        })?;
        // The kernel refuses routes through a device that is down.
        ensure_up(&self.handle, &dev).await?;

        let (v4, v6) = (services.trunc(), services6.trunc());
        if !has_route(
            &self.handle,
            IpAddr::V4(v4.network()),
            v4.prefix_len(),
            dev.index,
            None,
        )
        .await?
        {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v4.network(), v4.prefix_len())
                .output_interface(dev.index)
                .scope(RouteScope::Link)
                .build();
            replace_route(&self.handle, msg, format!("route {v4} into {tun}")).await?;
        }
        if !has_route(
            &self.handle,
            IpAddr::V6(v6.network()),
            v6.prefix_len(),
            dev.index,
            None,
        )
        .await?
        {
            let msg = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(v6.network(), v6.prefix_len())
                .output_interface(dev.index)
                .scope(RouteScope::Link)
                .build();
            replace_route(&self.handle, msg, format!("route {v6} into {tun}")).await?;
        }
        Ok(())
    }

    async fn attach(&self, spec: &VethSpec) -> Result<(), KernelError> {
        self.ensure_attached(spec).await.map(|_| ())
    }

    async fn attached(&self, spec: &VethSpec) -> Result<bool, KernelError> {
        validate_ifname("host veth name", &spec.host_veth)?;
        let Some(host) = link_by_name(&self.handle, &spec.host_veth).await? else {
            return Ok(false);
        };
        let Some(bridge) = link_by_name(&self.handle, &spec.bridge).await? else {
            return Ok(false);
        };
        Ok(host.is_veth() && bridge.is_bridge() && host.master == Some(bridge.index))
    }

    async fn detach(&self, host_veth: &str) -> Result<(), KernelError> {
        validate_ifname("host veth name", host_veth)?;
        match link_by_name(&self.handle, host_veth).await? {
            Some(l) => delete_link(&self.handle, l.index, &l.name).await,
            None => Ok(()),
        }
    }
}

/// The bridge's MAC: locally administered unicast (`02`), then `50:54`
/// ("PT"), then the last three bytes of the gateway address, so every node's
/// bridge differs and keeps its MAC across restarts.
pub fn bridge_mac(gateway: std::net::Ipv4Addr) -> [u8; 6] {
    let o = gateway.octets();
    [0x02, 0x50, 0x54, o[1], o[2], o[3]]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    //! Real-kernel tests (root). Each runs on a thread inside a fresh
    //! `<prefix>-host` namespace, with containers in `<prefix>-c1`/`-c2`;
    //! a guard deletes them all, also when the test panics.

    use std::future::Future;
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    use serde_json::Value;

    use super::*;
    use crate::model::DualAddr;

    /// Deletes the namespaces it names when dropped.
    struct Namespaces(Vec<String>);

    impl Drop for Namespaces {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = Command::new("ip").args(["netns", "del", n]).status();
            }
        }
    }

    /// The namespaces of one test.
    struct Ctx {
        /// Where the test body (and the daemon under test) runs.
        host: String,
        /// A container namespace.
        c1: String,
        /// A second container namespace.
        c2: String,
    }

    impl Ctx {
        fn path(&self, ns: &str) -> PathBuf {
            PathBuf::from("/run/netns").join(ns)
        }
    }

    fn run(cmd: &[&str]) -> std::process::Output {
        let out = Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .expect("run command");
        out
    }

    fn ok(cmd: &[&str]) -> String {
        let out = run(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(cmd: &[&str]) -> Value {
        serde_json::from_str(&ok(cmd)).expect("ip -j output is JSON")
    }

    /// `ip -j -n ns link show dev`, or None if the link does not exist.
    fn link(ns: &str, dev: &str) -> Option<Value> {
        let out = run(&["ip", "-j", "-n", ns, "link", "show", "dev", dev]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        v.as_array().and_then(|a| a.first().cloned())
    }

    fn addrs(ns: &str, dev: &str) -> Vec<(String, u64, Vec<String>)> {
        let v = json(&["ip", "-j", "-n", ns, "addr", "show", "dev", dev]);
        let mut out = Vec::new();
        for a in v[0]["addr_info"].as_array().expect("addr_info") {
            let mut flags = Vec::new();
            for f in ["tentative", "dadfailed"] {
                if a.get(f).is_some() {
                    flags.push(f.to_string());
                }
            }
            out.push((
                a["local"].as_str().expect("local").to_string(),
                a["prefixlen"].as_u64().expect("prefixlen"),
                flags,
            ));
        }
        out
    }

    fn has_flag(link: &Value, flag: &str) -> bool {
        link["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .any(|f| f == flag)
    }

    /// Creates the namespaces, runs `body` on a thread inside `<prefix>-host`
    /// with its own runtime, and removes the namespaces afterwards.
    async fn in_test_netns<F, Fut>(body: F)
    where
        F: FnOnce(Ctx) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "ptk-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ctx = Ctx {
            host: format!("{prefix}-host"),
            c1: format!("{prefix}-c1"),
            c2: format!("{prefix}-c2"),
        };
        let _guard = Namespaces(vec![ctx.host.clone(), ctx.c1.clone(), ctx.c2.clone()]);
        for ns in [&ctx.host, &ctx.c1, &ctx.c2] {
            ok(&["ip", "netns", "add", ns]);
        }
        let host_path = ctx.path(&ctx.host);
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(host_path).expect("open test netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(body(ctx));
        });
        let joined = tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join");
        if let Err(panic) = joined {
            std::panic::resume_unwind(panic);
        }
    }

    fn bridge_spec() -> BridgeSpec {
        BridgeSpec {
            name: "ptbr0".into(),
            gateway: DualAddr {
                v4: "10.18.1.1".parse().unwrap(),
                v6: "fdff:18::101".parse().unwrap(),
            },
            subnet: "10.18.1.0/24".parse().unwrap(),
            subnet6: "fdff:18::100/120".parse().unwrap(),
            mtu: 1400,
        }
    }

    fn veth_spec(ctx: &Ctx, netns: &str) -> VethSpec {
        let b = bridge_spec();
        VethSpec {
            netns: ctx.path(netns),
            host_veth: "pt0a0b0c0d".into(),
            ifname: "eth0".into(),
            bridge: b.name,
            addr: DualAddr {
                v4: "10.18.1.2".parse().unwrap(),
                v6: "fdff:18::102".parse().unwrap(),
            },
            subnet: b.subnet,
            subnet6: b.subnet6,
            gateway: b.gateway,
            mtu: 1400,
        }
    }

    /// Checks everything `attach` promises about the container end.
    fn assert_container_configured(ns: &str, spec: &VethSpec) {
        let eth = link(ns, &spec.ifname).expect("container end exists");
        assert!(has_flag(&eth, "UP"), "{eth}");
        assert_eq!(eth["mtu"].as_u64(), Some(u64::from(spec.mtu)));
        let a = addrs(ns, &spec.ifname);
        assert!(a.contains(&(spec.addr.v4.to_string(), 24, vec![])), "{a:?}");
        assert!(
            a.contains(&(spec.addr.v6.to_string(), 120, vec![])),
            "{a:?}"
        );
        let lo = link(ns, "lo").expect("lo");
        assert!(has_flag(&lo, "UP"), "{lo}");
        let r4 = json(&["ip", "-j", "-n", ns, "-4", "route", "show", "default"]);
        assert_eq!(r4[0]["gateway"].as_str(), Some("10.18.1.1"), "{r4}");
        assert_eq!(r4[0]["dev"].as_str(), Some(spec.ifname.as_str()), "{r4}");
        let r6 = json(&["ip", "-j", "-n", ns, "-6", "route", "show", "default"]);
        assert_eq!(r6[0]["gateway"].as_str(), Some("fdff:18::101"), "{r6}");
        assert_eq!(r6[0]["dev"].as_str(), Some(spec.ifname.as_str()), "{r6}");
    }

    fn ensure_ping() {
        if Command::new("ping").arg("-V").output().is_err() {
            ok(&["apt-get", "install", "-y", "iputils-ping"]);
        }
    }

    #[tokio::test]
    async fn kernel_setup_bridge_is_idempotent() {
        in_test_netns(|ctx| async move {
            let k = Netlink::new().unwrap();
            let spec = bridge_spec();
            k.setup_bridge(&spec).await.unwrap();
            k.setup_bridge(&spec).await.unwrap();

            let br = link(&ctx.host, "ptbr0").expect("bridge exists");
            assert!(has_flag(&br, "UP"), "{br}");
            assert_eq!(br["mtu"].as_u64(), Some(1400));
            let a = addrs(&ctx.host, "ptbr0");
            assert!(a.contains(&("10.18.1.1".into(), 24, vec![])), "{a:?}");
            assert!(a.contains(&("fdff:18::101".into(), 120, vec![])), "{a:?}");
            assert_eq!(
                a.iter().filter(|x| !x.0.starts_with("fe80")).count(),
                2,
                "no duplicates: {a:?}"
            );
            // This thread is in the test namespace, so /proc/sys/net is its.
            assert_eq!(
                std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                    .unwrap()
                    .trim(),
                "1"
            );
            assert_eq!(
                std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
                    .unwrap()
                    .trim(),
                "1"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn kernel_setup_bridge_refuses_non_bridge() {
        in_test_netns(|ctx| async move {
            ok(&[
                "ip", "-n", &ctx.host, "tuntap", "add", "ptbr0", "mode", "tun",
            ]);
            let k = Netlink::new().unwrap();
            let err = k.setup_bridge(&bridge_spec()).await.unwrap_err();
            assert!(err.to_string().contains("not a bridge"), "{err}");
        })
        .await;
    }

    #[tokio::test]
    async fn kernel_attach_configures_container_and_is_idempotent() {
        ensure_ping();
        in_test_netns(|ctx| async move {
            let k = Netlink::new().unwrap();
            k.setup_bridge(&bridge_spec()).await.unwrap();
            let spec = veth_spec(&ctx, &ctx.c1);
            assert!(!k.attached(&spec).await.unwrap());

            assert_eq!(
                k.ensure_attached(&spec).await.unwrap(),
                AttachOutcome::Created
            );
            assert!(k.attached(&spec).await.unwrap());
            let host = link(&ctx.host, &spec.host_veth).expect("host end");
            assert_eq!(host["master"].as_str(), Some("ptbr0"), "{host}");
            assert_eq!(host["mtu"].as_u64(), Some(1400));
            assert!(has_flag(&host, "UP"), "{host}");
            assert_container_configured(&ctx.c1, &spec);
            // The gateway's MAC is pinned: a port joining (or leaving) the
            // bridge must not change it under the containers' ARP caches.
            let br = link(&ctx.host, "ptbr0").expect("bridge");
            assert_eq!(br["address"].as_str(), Some("02:50:54:12:01:01"), "{br}");
            // No temporary peer left behind anywhere.
            assert!(!ok(&["ip", "-n", &ctx.c1, "link"]).contains("ptt"));
            assert!(!ok(&["ip", "-n", &ctx.host, "link"]).contains("ptt"));

            ok(&[
                "ip",
                "netns",
                "exec",
                &ctx.c1,
                "ping",
                "-c1",
                "-W2",
                "10.18.1.1",
            ]);
            ok(&[
                "ip",
                "netns",
                "exec",
                &ctx.c1,
                "ping",
                "-6",
                "-c1",
                "-W2",
                "fdff:18::101",
            ]);

            // Again: nothing changes, same links.
            let eth_before = link(&ctx.c1, "eth0").unwrap()["ifindex"].clone();
            assert_eq!(
                k.ensure_attached(&spec).await.unwrap(),
                AttachOutcome::Unchanged
            );
            k.attach(&spec).await.unwrap();
            assert_eq!(
                link(&ctx.host, &spec.host_veth).unwrap()["ifindex"],
                host["ifindex"]
            );
            assert_eq!(link(&ctx.c1, "eth0").unwrap()["ifindex"], eth_before);
            assert_container_configured(&ctx.c1, &spec);

            k.detach(&spec.host_veth).await.unwrap();
            assert!(link(&ctx.host, &spec.host_veth).is_none());
            assert!(
                link(&ctx.c1, "eth0").is_none(),
                "peer goes with the host end"
            );
            assert!(!k.attached(&spec).await.unwrap());
            k.detach(&spec.host_veth).await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn kernel_attach_repairs_half_done() {
        in_test_netns(|ctx| async move {
            let k = Netlink::new().unwrap();
            k.setup_bridge(&bridge_spec()).await.unwrap();
            let spec = veth_spec(&ctx, &ctx.c1);
            k.attach(&spec).await.unwrap();
            let host_index = link(&ctx.host, &spec.host_veth).unwrap()["ifindex"].clone();

            // Break it: host end out of the bridge, container addresses and
            // routes gone, container end down.
            ok(&[
                "ip",
                "-n",
                &ctx.host,
                "link",
                "set",
                &spec.host_veth,
                "nomaster",
            ]);
            ok(&["ip", "-n", &ctx.c1, "addr", "flush", "dev", "eth0"]);
            ok(&["ip", "-n", &ctx.c1, "link", "set", "eth0", "down"]);
            assert!(!k.attached(&spec).await.unwrap());

            assert_eq!(
                k.ensure_attached(&spec).await.unwrap(),
                AttachOutcome::Repaired
            );
            assert!(k.attached(&spec).await.unwrap());
            assert_eq!(
                link(&ctx.host, &spec.host_veth).unwrap()["ifindex"],
                host_index,
                "repaired in place"
            );
            assert_container_configured(&ctx.c1, &spec);
            assert_eq!(
                k.ensure_attached(&spec).await.unwrap(),
                AttachOutcome::Unchanged
            );
        })
        .await;
    }

    #[tokio::test]
    async fn kernel_attach_finishes_interrupted_create() {
        in_test_netns(|ctx| async move {
            let k = Netlink::new().unwrap();
            k.setup_bridge(&bridge_spec()).await.unwrap();
            let spec = veth_spec(&ctx, &ctx.c1);
            // As if the daemon died right after creating the pair: peer
            // still under its temporary name, nothing configured.
            ok(&[
                "ip",
                "-n",
                &ctx.host,
                "link",
                "add",
                &spec.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "pttdeadbeef",
                "netns",
                &ctx.c1,
            ]);
            let host_index = link(&ctx.host, &spec.host_veth).unwrap()["ifindex"].clone();
            assert!(!k.attached(&spec).await.unwrap());

            assert_eq!(
                k.ensure_attached(&spec).await.unwrap(),
                AttachOutcome::Repaired
            );
            assert_eq!(
                link(&ctx.host, &spec.host_veth).unwrap()["ifindex"],
                host_index
            );
            assert!(link(&ctx.c1, "pttdeadbeef").is_none());
            assert!(k.attached(&spec).await.unwrap());
            assert_container_configured(&ctx.c1, &spec);
        })
        .await;
    }

    #[tokio::test]
    async fn kernel_attach_recreates_when_peer_is_elsewhere() {
        in_test_netns(|ctx| async move {
            let k = Netlink::new().unwrap();
            k.setup_bridge(&bridge_spec()).await.unwrap();
            k.attach(&veth_spec(&ctx, &ctx.c1)).await.unwrap();

            // Same host veth name, another namespace: the old pair is stale.
            let spec2 = veth_spec(&ctx, &ctx.c2);
            assert_eq!(
                k.ensure_attached(&spec2).await.unwrap(),
                AttachOutcome::Created
            );
            assert!(link(&ctx.c1, "eth0").is_none());
            assert_container_configured(&ctx.c2, &spec2);
        })
        .await;
    }

    #[tokio::test]
    async fn kernel_attach_refuses_foreign_ifname() {
        in_test_netns(|ctx| async move {
            let k = Netlink::new().unwrap();
            k.setup_bridge(&bridge_spec()).await.unwrap();
            // Someone else's veth pair, named like ours.
            ok(&[
                "ip", "-n", &ctx.c1, "link", "add", "eth0", "type", "veth", "peer", "name",
                "other0",
            ]);
            let spec = veth_spec(&ctx, &ctx.c1);
            let err = k.attach(&spec).await.unwrap_err();
            assert!(
                err.message
                    .contains("already exists there and is not the peer"),
                "{err}"
            );
            assert!(
                link(&ctx.host, &spec.host_veth).is_none(),
                "host veth removed after failure"
            );
            let eth0 = link(&ctx.c1, "eth0").expect("foreign eth0 untouched");
            assert_eq!(eth0["link"].as_str(), Some("other0"), "{eth0}");
            assert!(
                addrs(&ctx.c1, "eth0")
                    .iter()
                    .all(|a| !a.0.starts_with("10.18.")),
                "no addresses added"
            );
            assert!(
                !ok(&["ip", "-n", &ctx.c1, "link"]).contains("ptt"),
                "no temporary peer left"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn kernel_attach_bad_netns_fails_cleanly() {
        in_test_netns(|ctx| async move {
            let k = Netlink::new().unwrap();
            k.setup_bridge(&bridge_spec()).await.unwrap();
            let file = tempfile::NamedTempFile::new().unwrap();
            let mut spec = veth_spec(&ctx, &ctx.c1);
            for (path, expect) in [
                (file.path().to_path_buf(), "not a namespace file"),
                (
                    PathBuf::from("/proc/self/ns/uts"),
                    "not a network namespace",
                ),
                (PathBuf::from("/nonexistent/netns"), "No such file"),
            ] {
                spec.netns = path;
                let err = k.attach(&spec).await.unwrap_err();
                assert!(err.action.contains("open netns"), "{err}");
                assert!(err.message.contains(expect), "{err}");
                assert!(link(&ctx.host, &spec.host_veth).is_none());
            }

            // A missing bridge is also refused before anything is created.
            let mut spec = veth_spec(&ctx, &ctx.c1);
            spec.bridge = "nobr0".into();
            let err = k.attach(&spec).await.unwrap_err();
            assert!(err.action.contains("find bridge nobr0"), "{err}");
            assert!(link(&ctx.host, &spec.host_veth).is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn kernel_names_are_validated() {
        in_test_netns(|ctx| async move {
            let k = Netlink::new().unwrap();
            let mut spec = veth_spec(&ctx, &ctx.c1);
            spec.host_veth = "a-name-that-is-too-long".into();
            let err = k.attach(&spec).await.unwrap_err();
            assert!(err.message.contains("at most 15"), "{err}");
            spec.host_veth = "pt1".into();
            spec.ifname = "a/b".into();
            assert!(k.attach(&spec).await.unwrap_err().message.contains("'/'"));
            spec.ifname = String::new();
            assert!(k.attach(&spec).await.unwrap_err().message.contains("empty"));
            assert!(k.detach("").await.is_err());
        })
        .await;
    }

    #[tokio::test]
    async fn kernel_route_services_into_tun() {
        in_test_netns(|ctx| async move {
            let k = Netlink::new().unwrap();
            ok(&[
                "ip", "-n", &ctx.host, "tuntap", "add", "ptun0", "mode", "tun",
            ]);
            ok(&[
                "ip", "-n", &ctx.host, "link", "add", "other0", "type", "bridge",
            ]);
            ok(&["ip", "-n", &ctx.host, "link", "set", "other0", "up"]);
            // A stale route elsewhere must be replaced.
            ok(&[
                "ip",
                "-n",
                &ctx.host,
                "route",
                "add",
                "10.30.0.0/16",
                "dev",
                "other0",
            ]);

            let (v4, v6) = (
                "10.30.0.0/16".parse().unwrap(),
                "fdff:30::/112".parse().unwrap(),
            );
            k.route_services("ptun0", v4, v6).await.unwrap();
            k.route_services("ptun0", v4, v6).await.unwrap();

            let r4 = json(&[
                "ip",
                "-j",
                "-n",
                &ctx.host,
                "-4",
                "route",
                "show",
                "10.30.0.0/16",
            ]);
            assert_eq!(r4.as_array().unwrap().len(), 1, "{r4}");
            assert_eq!(r4[0]["dev"].as_str(), Some("ptun0"), "{r4}");
            assert_eq!(r4[0]["scope"].as_str(), Some("link"), "{r4}");
            let r6 = json(&[
                "ip",
                "-j",
                "-n",
                &ctx.host,
                "-6",
                "route",
                "show",
                "fdff:30::/112",
            ]);
            assert_eq!(r6.as_array().unwrap().len(), 1, "{r6}");
            assert_eq!(r6[0]["dev"].as_str(), Some("ptun0"), "{r6}");

            let err = k.route_services("nosuch0", v4, v6).await.unwrap_err();
            assert!(err.message.contains("no such device"), "{err}");
        })
        .await;
    }
}
