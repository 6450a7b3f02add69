//! Looking inside the container's network namespace: the interface's MAC
//! (for ADD's result) and its addresses (for CHECK).
//!
//! The namespace is a file path, so a fresh thread joins it with `setns`
//! and reads `getifaddrs` there; the thread ends right after, so no other
//! code ever runs in the container's namespace. This costs about a
//! millisecond, much less than spawning `nsenter ip`.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nix::ifaddrs::getifaddrs;
use nix::sched::{setns, CloneFlags};

/// What one interface in the namespace looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// Its MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// Its addresses with prefix lengths.
    pub addrs: Vec<IpNet>,
}

/// The interface `ifname` in the namespace `netns`; `Ok(None)` when the
/// namespace has no such interface.
pub fn inspect(netns: &Path, ifname: &str) -> io::Result<Option<LinkInfo>> {
    let netns: PathBuf = netns.to_owned();
    let ifname = ifname.to_owned();
    std::thread::Builder::new()
        .name("cni-netns".into())
        .spawn(move || inspect_here(&netns, &ifname))?
        .join()
        .map_err(|_| io::Error::other("the netns reader thread panicked"))?
}

/// Runs on a thread of its own: joins `netns`, then reads the interface.
fn inspect_here(netns: &Path, ifname: &str) -> io::Result<Option<LinkInfo>> {
    let file = File::open(netns)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let mut found = false;
    let mut info = LinkInfo::default();
    for ifa in getifaddrs().map_err(io::Error::from)? {
        if ifa.interface_name != ifname {
            continue;
        }
        found = true;
        let Some(addr) = ifa.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            if let Some(mac) = link.addr() {
                info.mac = Some(format_mac(mac));
            }
            continue;
        }
        let prefix = |mask: Option<IpAddr>| mask.map_or(0, prefix_len);
        if let Some(v4) = addr.as_sockaddr_in() {
            let mask = ifa
                .netmask
                .and_then(|m| m.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())));
            if let Ok(net) = IpNet::new(IpAddr::V4(v4.ip()), prefix(mask)) {
                info.addrs.push(net);
            }
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let mask = ifa
                .netmask
                .and_then(|m| m.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())));
            if let Ok(net) = IpNet::new(IpAddr::V6(v6.ip()), prefix(mask)) {
                info.addrs.push(net);
            }
        }
    }
    Ok(found.then_some(info))
}

/// The prefix length of a netmask (its leading one bits).
fn prefix_len(mask: IpAddr) -> u8 {
    let ones = match mask {
        IpAddr::V4(m) => u32::from(m).leading_ones(),
        IpAddr::V6(m) => u128::from(m).leading_ones(),
    };
    u8::try_from(ones).unwrap_or(0)
}

/// `aa:bb:cc:dd:ee:ff`, as CNI results and `ip link` write it.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_macs_format_like_ip() {
        assert_eq!(prefix_len("255.255.255.0".parse().expect("ip")), 24);
        assert_eq!(
            prefix_len(
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00"
                    .parse()
                    .expect("ip")
            ),
            120
        );
        assert_eq!(
            format_mac([0x02, 0x50, 0x54, 0, 0x0a, 0xff]),
            "02:50:54:00:0a:ff"
        );
    }

    #[test]
    fn a_missing_namespace_is_an_error() {
        let e = inspect(Path::new("/nonexistent/netns"), "eth0").expect_err("missing");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
