//! Reading the node's upstream resolvers from resolv.conf text.

use std::net::{IpAddr, SocketAddr};

/// The `nameserver` addresses of a resolv.conf, in order, port 53, without
/// duplicates and without `exclude`. A v6 `%scope` suffix is dropped (the
/// address alone cannot carry it); comments (`#`, `;`) and unparsable lines
/// are skipped, as the C library does.
pub(crate) fn nameservers(text: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        let addr = word.split('%').next().unwrap_or(word);
        let Ok(ip) = addr.parse::<IpAddr>() else {
            continue;
        };
        let sa = SocketAddr::new(ip, 53);
        if !exclude.contains(&ip) && !out.contains(&sa) {
            out.push(sa);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_v6_and_drops_scope_and_excluded() {
        let text = "\
# generated
search example.com
nameserver 10.0.0.53
nameserver   fe80::1%eth0  # link-local
nameserver 2001:db8::53
nameserver 10.18.1.1
nameserver not-an-address
nameserver
;nameserver 9.9.9.9
options ndots:2
nameserver 10.0.0.53
";
        let exclude: Vec<IpAddr> = vec!["10.18.1.1".parse().expect("ip")];
        let got = nameservers(text, &exclude);
        let want: Vec<SocketAddr> = vec![
            "10.0.0.53:53".parse().expect("sa"),
            "[fe80::1]:53".parse().expect("sa"),
            "[2001:db8::53]:53".parse().expect("sa"),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn empty_text_gives_no_upstreams() {
        assert!(nameservers("", &[]).is_empty());
        assert!(nameservers("search x\n", &[]).is_empty());
    }
}
