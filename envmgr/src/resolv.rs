//! Containers' `resolv.conf`: how an attached container finds the node's
//! resolver and resolves `web.shop` without the cluster domain.
//!
//! A container attached by a named network namespace (`/run/netns/<name>`,
//! as `ip netns add` makes) gets `/etc/netns/<name>/resolv.conf`, which
//! `ip netns exec` bind-mounts over `/etc/resolv.conf`. A container attached
//! by pid has a filesystem its runtime owns; the runtime (or the CNI plugin)
//! writes its resolv.conf from the same values.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::model::InstanceKey;

/// The first line of every file we write: we only ever remove our own.
const MARK: &str = "# written by proxytun";

/// The resolver options: `ndots:2` tries the search list first for short
/// names like `web.shop`, so they never wait for an upstream's NXDOMAIN.
pub const OPTIONS: &[&str] = &["ndots:2"];

/// The search list for a container of `app` under `domain`: its own app's
/// services first (`web`), then every app's (`web.shop`). The CNI plugin
/// puts the same list in its result.
pub fn search_list(domain: &str, app: &str) -> Vec<String> {
    vec![format!("{app}.svc.{domain}"), format!("svc.{domain}")]
}

/// What goes into a container's resolv.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// The resolver's addresses (the bridge's gateway, v4 then v6).
    pub nameservers: Vec<IpAddr>,
    /// The cluster domain (`cluster.internal`).
    pub domain: String,
    /// Where named namespaces' files live: `/etc/netns` (tests point it
    /// elsewhere).
    pub etc_netns: PathBuf,
}

impl ResolvConf {
    /// The file's text for an instance of `key.name.app`. The search list
    /// makes `web` (same app) and `web.shop` resolve; `ndots:2` tries the
    /// search list first for such short names, so they never wait for an
    /// upstream's NXDOMAIN.
    pub fn render(&self, key: &InstanceKey) -> String {
        let mut s = format!("{MARK} for {key}; removed on detach\n");
        for ns in &self.nameservers {
            let _ = writeln!(s, "nameserver {ns}");
        }
        let _ = writeln!(
            s,
            "search {}",
            search_list(&self.domain, &key.name.app).join(" ")
        );
        let _ = writeln!(s, "options {}", OPTIONS.join(" "));
        s
    }

    /// The file for a container in namespace `netns`, if it is a named one.
    pub fn path_for(&self, netns: &Path) -> Option<PathBuf> {
        named_netns(netns).map(|name| self.etc_netns.join(name).join("resolv.conf"))
    }

    /// Writes the file for an instance atomically (temp file, rename); a
    /// namespace that is not a named one has nothing to write.
    pub fn write(&self, netns: &Path, key: &InstanceKey) -> std::io::Result<Option<PathBuf>> {
        let Some(path) = self.path_for(netns) else {
            return Ok(None);
        };
        let dir = path.parent().unwrap_or(&self.etc_netns);
        std::fs::create_dir_all(dir)?;
        if let Ok(old) = std::fs::read_to_string(&path) {
            if !old.starts_with(MARK) {
                // Someone else's file (an operator's): leave it alone.
                return Ok(None);
            }
        }
        let tmp = dir.join(".resolv.conf.proxytun");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(self.render(key).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(Some(path))
    }

    /// Removes the file written for a container in `netns` (only ours), and
    /// its directory when that leaves it empty.
    pub fn remove(&self, netns: &Path) -> std::io::Result<()> {
        let Some(path) = self.path_for(netns) else {
            return Ok(());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) if text.starts_with(MARK) => std::fs::remove_file(&path)?,
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = path.parent() {
            // Fails (and that is fine) when the operator keeps other files there.
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}

/// The name of a namespace bind-mounted where `ip netns` keeps them, the
/// only kind `ip netns exec` applies `/etc/netns/<name>/` to.
pub fn named_netns(path: &Path) -> Option<&str> {
    let parent = path.parent()?;
    if parent != Path::new("/run/netns") && parent != Path::new("/var/run/netns") {
        return None;
    }
    let name = path.file_name()?.to_str()?;
    let ok = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    ok.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceName;

    fn key() -> InstanceKey {
        InstanceKey {
            name: ServiceName::new("shop", "web").expect("valid"),
            number: 1,
        }
    }

    fn conf(dir: &Path) -> ResolvConf {
        ResolvConf {
            nameservers: vec![
                "10.18.1.1".parse().expect("ip"),
                "fdff:18::101".parse().expect("ip"),
            ],
            domain: "cluster.internal".into(),
            etc_netns: dir.to_owned(),
        }
    }

    #[test]
    fn renders_nameservers_search_and_ndots() {
        let text = conf(Path::new("/x")).render(&key());
        assert_eq!(
            text,
            "# written by proxytun for shop/web/1; removed on detach\n\
             nameserver 10.18.1.1\n\
             nameserver fdff:18::101\n\
             search shop.svc.cluster.internal svc.cluster.internal\n\
             options ndots:2\n"
        );
    }

    #[test]
    fn only_named_namespaces_have_a_file() {
        assert_eq!(named_netns(Path::new("/run/netns/c1")), Some("c1"));
        assert_eq!(named_netns(Path::new("/var/run/netns/c1")), Some("c1"));
        assert_eq!(named_netns(Path::new("/proc/42/ns/net")), None);
        assert_eq!(named_netns(Path::new("/run/netns/..")), None);
        assert_eq!(named_netns(Path::new("/tmp/c1")), None);
    }

    #[test]
    fn write_then_remove_leaves_nothing_and_spares_foreign_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = conf(dir.path());
        let ns = Path::new("/run/netns/c1");
        let path = c.write(ns, &key()).expect("write").expect("named");
        assert!(std::fs::read_to_string(&path)
            .expect("read")
            .contains("nameserver 10.18.1.1"));
        c.remove(ns).expect("remove");
        assert!(!dir.path().join("c1").exists());
        // A file an operator wrote is neither overwritten nor removed.
        std::fs::create_dir_all(dir.path().join("c2")).expect("mkdir");
        std::fs::write(dir.path().join("c2/resolv.conf"), "nameserver 9.9.9.9\n").expect("w");
        let ns2 = Path::new("/run/netns/c2");
        assert_eq!(c.write(ns2, &key()).expect("write"), None);
        c.remove(ns2).expect("remove");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("c2/resolv.conf")).expect("read"),
            "nameserver 9.9.9.9\n"
        );
        // Nothing to do for a pid's namespace.
        assert_eq!(
            c.write(Path::new("/proc/1/ns/net"), &key()).expect("w"),
            None
        );
    }
}
