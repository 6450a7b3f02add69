//! The real netns probe (needs `ip netns` for the positive case).

use super::*;

use std::process::Command;

/// A named network namespace made with `ip netns add`, removed on drop.
struct TempNetns(String);

impl TempNetns {
    fn create() -> Option<Self> {
        let name = format!("ptm-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Self(name))
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}

impl Drop for TempNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[tokio::test]
async fn real_probe_checks_namespaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = settings(dir.path());
    let m = Manager::open(s, FakeKernel::default()).await.expect("open");
    let attach = |netns: Option<&str>, pid: Option<u32>| {
        let mut r = req("shop/web", "/x");
        r.netns = netns.map(PathBuf::from);
        r.pid = pid;
        m.attach(r)
    };
    let e = attach(Some("/proc/self/ns/net"), None)
        .await
        .expect_err("own");
    assert_eq!(e.status(), 422);
    assert!(e.to_string().contains("own network namespace"), "{e}");
    let e = attach(Some("/etc/hostname"), None).await.expect_err("file");
    assert_eq!(e.status(), 422);
    assert!(e.to_string().contains("not a network namespace"), "{e}");
    let e = attach(Some("/proc/self/ns/mnt"), None)
        .await
        .expect_err("mnt");
    assert_eq!(e.status(), 422);
    let e = attach(None, Some(std::process::id()))
        .await
        .expect_err("own pid");
    assert_eq!(e.status(), 422);
    assert!(e.to_string().contains("own network namespace"), "{e}");
    assert_eq!(m.snapshot().version, 0);

    let Some(ns) = TempNetns::create() else {
        eprintln!("skipping the positive case: `ip netns add` is not available here");
        return;
    };
    let path = ns.path();
    let a = attach(path.to_str(), None)
        .await
        .expect("a real netns is accepted");
    assert!(matches!(&a.placement, Placement::Local { netns, .. } if netns == &path));
    let e = attach(path.to_str(), None).await.expect_err("twice");
    assert_eq!(e.status(), 409);
    // Reopen after the namespace is gone: the instance is released.
    drop(m);
    drop(ns);
    let m = Manager::open(settings(dir.path()), FakeKernel::default())
        .await
        .expect("reopen");
    assert!(m.snapshot().instances.is_empty());
    assert!(m.snapshot().services.is_empty());
}
