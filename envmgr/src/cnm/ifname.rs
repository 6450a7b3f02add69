//! The interface name a Join gives the container. A container may join
//! several proxytun networks (one instance per service); each network
//! names its interface (`-o ifname=`, `eth0` by default), and when that
//! name is already taken in the sandbox by another proxytun attachment the
//! next one is used (`eth0`, `eth1`, ...), as Docker numbers its own.

use std::collections::BTreeSet;

use crate::model::valid_ifname;

/// The most names tried after `base` before giving up (and letting the
/// manager refuse `base` with its message).
const MAX_TRIES: u32 = 64;

/// `base` when it is free, else the first free name that counts on from
/// its trailing number (`eth0` -> `eth1`, `pt` -> `pt1`); `base` again when
/// none of those is free or valid.
pub fn free_ifname(base: &str, taken: &BTreeSet<String>) -> String {
    if !taken.contains(base) {
        return base.to_owned();
    }
    let stem = base.trim_end_matches(|c: char| c.is_ascii_digit());
    let start: u32 = base[stem.len()..].parse().unwrap_or(0);
    (start + 1..=start + MAX_TRIES)
        .map(|n| format!("{stem}{n}"))
        .find(|name| valid_ifname(name) && !taken.contains(name))
        .unwrap_or_else(|| base.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn counts_on_from_the_taken_name() {
        assert_eq!(free_ifname("eth0", &set(&[])), "eth0");
        assert_eq!(free_ifname("eth0", &set(&["eth0"])), "eth1");
        assert_eq!(free_ifname("eth0", &set(&["eth0", "eth1"])), "eth2");
        assert_eq!(free_ifname("eth0", &set(&["eth1"])), "eth0");
        assert_eq!(free_ifname("pt", &set(&["pt"])), "pt1");
        assert_eq!(free_ifname("net7", &set(&["net7"])), "net8");
    }

    #[test]
    fn never_returns_an_invalid_name() {
        let long = "abcdefghijklm9";
        assert_eq!(free_ifname(long, &set(&[long])), "abcdefghijklm10");
        let full = "abcdefghijklmn9";
        assert_eq!(
            free_ifname(full, &set(&[full])),
            full,
            "no room: the manager refuses"
        );
    }
}
