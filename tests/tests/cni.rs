//! The CNI plugin `proxytun-cni`: first driven exactly as a runtime does
//! (environment + netconf on stdin, cnitool style) against a real daemon,
//! then through a real runtime, podman with its CNI backend.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use testbed::podman::{cni_bin, Podman};
use testbed::{Cluster, DnsConfig, Instance, Node};

/// One plugin run: exit status and stdout parsed as JSON (`Null` when empty).
#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: Value,
    raw: String,
}

impl Run {
    /// The error code, failing unless the run failed with a spec error object.
    fn code(&self) -> Result<u64> {
        if self.ok {
            bail!("expected an error, got success: {}", self.raw);
        }
        for k in ["cniVersion", "code", "msg"] {
            if self.stdout.get(k).is_none() {
                bail!("error object without {k:?}: {}", self.raw);
            }
        }
        self.stdout["code"]
            .as_u64()
            .ok_or_else(|| anyhow!("no numeric code in {}", self.raw))
    }

    fn msg(&self) -> &str {
        self.stdout["msg"].as_str().unwrap_or("")
    }
}

/// Runs the plugin with `CNI_COMMAND=cmd`, the `CNI_*` variables in `env`
/// (nothing else of ours leaks in) and `stdin`.
fn cni(cmd: &str, env: &[(&str, &str)], stdin: &str) -> Result<Run> {
    let bin = cni_bin()?;
    let mut c = Command::new(&bin);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", cmd)
        .env("CNI_PATH", bin.parent().unwrap_or(Path::new("/")))
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().context("starting proxytun-cni")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let stdout = if raw.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&raw).with_context(|| format!("stdout is not JSON: {raw:?}"))?
    };
    Ok(Run {
        ok: out.status.success(),
        stdout,
        raw,
    })
}

fn ok(r: Result<Run>) -> Result<Value> {
    let r = r?;
    if !r.ok {
        bail!("the plugin failed: {}", r.raw);
    }
    Ok(r.stdout)
}

fn netconf(version: &str, socket: &Path, extra: Value) -> String {
    let mut v = json!({"cniVersion": version, "name": "ptnet", "type": "proxytun-cni",
        "socket": socket, "app": "shop", "service": "client"});
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v.to_string()
}

/// The instances a runtime attached, by container id.
fn by_container(node: &Node, id: &str) -> Result<Option<Instance>> {
    Ok(node
        .instances()?
        .into_iter()
        .find(|i| i.raw["placement"]["container_id"].as_str() == Some(id)))
}

fn keys(node: &Node) -> Result<Vec<String>> {
    let mut v: Vec<String> = node
        .instances()?
        .iter()
        .map(|i| i.raw.to_string())
        .collect();
    v.sort();
    Ok(v)
}

#[test]
fn cni_plugin_follows_the_spec_against_a_real_daemon() -> Result<()> {
    let t0 = Instant::now();
    let c = Cluster::two_nodes_with("cniexec", |cfg| cfg.dns = Some(DnsConfig::default()))?;
    let sock = c.a.socket().to_owned();
    let k1 = c.container("k1")?;
    let ns1 = k1.path().to_string_lossy().into_owned();
    let env1 = [
        ("CNI_CONTAINERID", "ctr-1"),
        ("CNI_NETNS", ns1.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let conf = netconf("1.0.0", &sock, json!({}));

    // VERSION, with and without input.
    let v = ok(cni("VERSION", &[], r#"{"cniVersion":"1.0.0"}"#))?;
    assert_eq!(
        v,
        json!({"cniVersion":"1.0.0","supportedVersions":["1.0.0","1.1.0"]})
    );

    // ADD: the result describes what is really in the namespace.
    let res = ok(cni("ADD", &env1, &conf))?;
    let inst = by_container(&c.a, "ctr-1")?.ok_or_else(|| anyhow!("ADD attached nothing"))?;
    assert_eq!(
        (inst.app.as_str(), inst.service.as_str()),
        ("shop", "client")
    );
    assert_eq!(res["cniVersion"], "1.0.0");
    assert_eq!(res["interfaces"][0]["name"], "eth0");
    assert_eq!(res["interfaces"][0]["sandbox"], ns1.as_str());
    let link = k1.ns().ip(&["-j", "link", "show", "eth0"])?;
    let link: Value = serde_json::from_str(&link.stdout)?;
    assert_eq!(res["interfaces"][0]["mac"], link[0]["address"], "{res:#}");
    assert_eq!(
        res["ips"],
        json!([
            {"address": format!("{}/24", inst.ns_addr.v4), "gateway": "10.18.1.1", "interface": 0},
            {"address": format!("{}/120", inst.ns_addr.v6), "gateway": "fdff:18::101", "interface": 0},
        ])
    );
    assert_eq!(
        res["routes"],
        json!([{"dst":"0.0.0.0/0","gw":"10.18.1.1"},{"dst":"::/0","gw":"fdff:18::101"}])
    );
    assert_eq!(
        res["dns"],
        json!({"nameservers":["10.18.1.1","fdff:18::101"],
               "search":["shop.svc.cluster.internal","svc.cluster.internal"],
               "options":["ndots:2"]})
    );
    let addrs = k1.ns().ip(&["-j", "addr", "show", "eth0"])?.stdout;
    assert!(
        addrs.contains(&format!("\"{}\"", inst.ns_addr.v4)),
        "{addrs}"
    );
    let routes = k1
        .ns()
        .ip(&["-j", "-4", "route", "show", "default"])?
        .stdout;
    assert!(routes.contains("10.18.1.1"), "{routes}");

    // A repeated ADD returns the same attachment.
    let before = keys(&c.a)?;
    assert_eq!(ok(cni("ADD", &env1, &conf))?, res);
    assert_eq!(keys(&c.a)?, before);

    // CHECK holds; a prevResult that disagrees does not.
    let with_prev = |prev: &Value| netconf("1.0.0", &sock, json!({"prevResult": prev}));
    assert_eq!(ok(cni("CHECK", &env1, &with_prev(&res)))?, Value::Null);
    let mut wrong = res.clone();
    wrong["ips"][0]["address"] = json!("10.18.1.250/24");
    assert_eq!(cni("CHECK", &env1, &with_prev(&wrong))?.code()?, 101);
    let r = cni("CHECK", &env1, &conf)?;
    assert_eq!(r.code()?, 7, "CHECK without prevResult");

    // Chained after another plugin: ours is appended.
    let k2 = c.container("k2")?;
    let ns2 = k2.path().to_string_lossy().into_owned();
    let env2 = [
        ("CNI_CONTAINERID", "ctr-2"),
        ("CNI_NETNS", ns2.as_str()),
        ("CNI_IFNAME", "eth1"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAME=p;PROXYTUN_SERVICE=api",
        ),
    ];
    let prev = json!({"cniVersion":"1.0.0","interfaces":[{"name":"lo0"}],
        "ips":[{"address":"192.168.7.2/24","interface":0}]});
    let chained = ok(cni("ADD", &env2, &with_prev(&prev)))?;
    assert_eq!(chained["interfaces"][1]["name"], "eth1", "{chained:#}");
    assert_eq!(chained["ips"][0]["address"], "192.168.7.2/24");
    assert_eq!(chained["ips"][1]["interface"], 1);
    let i2 = by_container(&c.a, "ctr-2")?.ok_or_else(|| anyhow!("chained ADD attached nothing"))?;
    assert_eq!(i2.service, "api", "CNI_ARGS wins over the netconf");

    // Bad input: the right code, and nothing changes.
    let before = keys(&c.a)?;
    let k3 = c.container("k3")?;
    let ns3 = k3.path().to_string_lossy().into_owned();
    let env3 = [
        ("CNI_CONTAINERID", "ctr-3"),
        ("CNI_NETNS", ns3.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    assert_eq!(cni("ADD", &env3, "{not json")?.code()?, 6);
    assert_eq!(cni("ADD", &env3[1..], &conf)?.code()?, 4);
    assert_eq!(cni("ADD", &env3[..2], &conf)?.code()?, 4);
    assert_eq!(cni("FROB", &env3, &conf)?.code()?, 4);
    let old = netconf("0.3.1", &sock, json!({}));
    assert_eq!(cni("ADD", &env3, &old)?.code()?, 1);
    let bad_app = netconf("1.0.0", &sock, json!({"app": "Shop!"}));
    let r = cni("ADD", &env3, &bad_app)?;
    assert_eq!(r.code()?, 7);
    assert!(r.msg().contains("app"), "{}", r.raw);
    let no_app =
        json!({"cniVersion":"1.0.0","name":"n","type":"proxytun-cni","socket":&sock}).to_string();
    let r = cni("ADD", &env3, &no_app)?;
    assert!(
        r.code()? == 7 && r.msg().contains("PROXYTUN_APP"),
        "{}",
        r.raw
    );
    let mut unknown_args = env3.to_vec();
    unknown_args.push(("CNI_ARGS", "K8S_POD_NAME=p"));
    assert_eq!(cni("ADD", &unknown_args, &conf)?.code()?, 4);
    let ipam = netconf("1.0.0", &sock, json!({"ipam": {"type": "host-local"}}));
    assert_eq!(cni("ADD", &env3, &ipam)?.code()?, 2);
    let no_ns = [
        ("CNI_CONTAINERID", "ctr-3"),
        ("CNI_NETNS", "/run/netns/proxytun-no-such-ns"),
        ("CNI_IFNAME", "eth0"),
    ];
    let r = cni("ADD", &no_ns, &conf)?;
    assert!(r.code()? == 3, "{}", r.raw);
    // Another service for a container already attached is refused.
    let other = netconf("1.0.0", &sock, json!({"service": "web"}));
    assert_eq!(cni("ADD", &env1, &other)?.code()?, 100);
    assert_eq!(keys(&c.a)?, before, "a refused ADD changed nothing");

    // GC (1.1): the stale attachment of this app goes; valid ones, other
    // apps' and attachments made without a container id stay.
    let k4 = c.container("k4")?;
    let ns4 = k4.path().to_string_lossy().into_owned();
    let env4 = [
        ("CNI_CONTAINERID", "ctr-4"),
        ("CNI_NETNS", ns4.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    ok(cni(
        "ADD",
        &env4,
        &netconf("1.1.0", &sock, json!({"app": "crm"})),
    ))?;
    let manual = c.container("m1")?;
    c.a.attach("shop/client", &manual.path(), Some(9), None)?;
    let gc = netconf(
        "1.1.0",
        &sock,
        json!({"cni.dev/valid-attachments": [{"containerID": "ctr-1", "ifname": "eth0"}]}),
    );
    assert_eq!(ok(cni("GC", &[], &gc))?, Value::Null);
    assert!(
        by_container(&c.a, "ctr-2")?.is_some(),
        "GC of shop/client collected shop/api"
    );
    let gc_app = json!({"cniVersion": "1.1.0", "name": "ptnet", "type": "proxytun-cni",
        "socket": &sock, "app": "shop",
        "cni.dev/valid-attachments": [{"containerID": "ctr-1", "ifname": "eth0"}]})
    .to_string();
    assert_eq!(ok(cni("GC", &[], &gc_app))?, Value::Null);
    assert!(
        by_container(&c.a, "ctr-1")?.is_some(),
        "a valid attachment was collected"
    );
    assert!(
        by_container(&c.a, "ctr-2")?.is_none(),
        "the stale attachment stayed"
    );
    assert!(
        by_container(&c.a, "ctr-4")?.is_some(),
        "another app's attachment was collected"
    );
    assert!(
        c.a.instances()?
            .iter()
            .any(|i| i.service == "client" && i.number == 9),
        "an attachment without container id was collected"
    );
    assert_eq!(
        cni("GC", &[], &netconf("1.0.0", &sock, json!({})))?.code()?,
        1
    );

    // DEL, then DEL again: both succeed with no output.
    assert_eq!(ok(cni("DEL", &env1, &conf))?, Value::Null);
    assert!(by_container(&c.a, "ctr-1")?.is_none());
    let links = k1.ns().ip(&["-br", "link"])?.stdout;
    assert!(!links.contains("eth0"), "{links}");
    assert_eq!(ok(cni("DEL", &env1, &conf))?, Value::Null);
    // DEL needs neither the netns nor the app.
    let del_env = [("CNI_CONTAINERID", "ctr-4"), ("CNI_IFNAME", "eth0")];
    assert_eq!(ok(cni("DEL", &del_env, &no_app))?, Value::Null);
    assert!(by_container(&c.a, "ctr-4")?.is_none());
    assert_eq!(cni("CHECK", &env1, &with_prev(&res))?.code()?, 3);

    // STATUS: up, then down (socket missing; then the daemon stopped).
    let status = netconf("1.1.0", &sock, json!({}));
    assert_eq!(ok(cni("STATUS", &[], &status))?, Value::Null);
    let gone = netconf("1.1.0", &c.a.dir().join("nothing.sock"), json!({}));
    assert_eq!(cni("STATUS", &[], &gone)?.code()?, 50);
    let mut c = c;
    c.a.stop()?;
    assert_eq!(cni("STATUS", &[], &status)?.code()?, 50);
    let r = cni("DEL", &env1, &conf)?;
    assert_eq!(r.code()?, 11, "DEL with the daemon down must be retried");
    assert!(r.msg().contains("does not answer"), "{}", r.raw);
    assert_eq!(cni("ADD", &env3, &conf)?.code()?, 11);
    eprintln!("cni exec test took {:?}", t0.elapsed());
    Ok(())
}

#[test]
fn podman_runs_a_container_on_the_proxytun_network() -> Result<()> {
    let t0 = Instant::now();
    testbed::require_root()?;
    if let Some(why) = Podman::missing() {
        eprintln!("SKIPPED: podman cannot run here: {why}");
        return Ok(());
    }
    let c = Cluster::two_nodes_with("cnipodman", |cfg| cfg.dns = Some(DnsConfig::default()))?;
    let (_w1, _w2, d) = c.web_on_both()?;
    let w2 = d
        .instances
        .iter()
        .find(|i| i.number == 2)
        .ok_or_else(|| anyhow!("no web instance 2"))?
        .clone();

    let mut pm = Podman::new(c.prefix(), &cni_bin()?)?;
    if let Err(why) = pm.smoke() {
        eprintln!("SKIPPED: podman cannot start any container here:\n{why}");
        return Ok(());
    }
    let net = format!("{}net", c.prefix()).to_ascii_lowercase();
    pm.add_network(
        &net,
        &json!({"cniVersion": "1.0.0", "name": net, "plugins": [
            {"type": "proxytun-cni", "socket": c.a.socket(), "app": "shop", "service": "client"}
        ]}),
    )?;
    let name = format!("{}ctr", c.prefix()).to_ascii_lowercase();
    let image = pm.image().to_owned();
    let out = pm
        .run(
            &[
                "-d",
                "--name",
                &name,
                "--network",
                &net,
                // podman 4.3 drops the result's `options`; ndots:2 makes
                // `web.shop` try the search list first.
                "--dns-option",
                "ndots:2",
                &image,
                "sleep",
                "300",
            ],
            Duration::from_secs(60),
        )?
        .ok()
        .with_context(|| format!("podman events:\n{}", pm.events()))?;
    let id = out.stdout.trim().to_owned();

    // The container got an address on node a's subnet, the one the daemon
    // holds for this container id.
    let inst = by_container(&c.a, &id)?
        .ok_or_else(|| anyhow!("no instance for container {id} on node a"))?;
    assert_eq!(
        (inst.app.as_str(), inst.service.as_str()),
        ("shop", "client")
    );
    let ip = pm
        .exec(
            &name,
            &["ip", "-4", "addr", "show", "eth0"],
            Duration::from_secs(20),
        )?
        .ok()?;
    assert!(
        ip.stdout.contains(&format!("inet {}/24", inst.ns_addr.v4)),
        "{}",
        ip.stdout
    );
    assert!(
        inst.ns_addr.v4.to_string().starts_with("10.18.1."),
        "{inst:?}"
    );
    let listed = c.a.cli_ok(&["instances"])?.stdout;
    assert!(listed.contains(&inst.ns_addr.v4.to_string()), "{listed}");

    // podman 4.3 writes the result's nameservers and search list (not its
    // options, hence --dns-option above; see docs/cni.md).
    let resolv = pm
        .exec(&name, &["cat", "/etc/resolv.conf"], Duration::from_secs(20))?
        .ok()?;
    eprintln!("the container's resolv.conf:\n{}", resolv.stdout);
    let first_ns = resolv
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .map(str::trim);
    assert_eq!(first_ns, Some("10.18.1.1"), "{}", resolv.stdout);
    assert!(
        resolv.stdout.contains("shop.svc.cluster.internal"),
        "{}",
        resolv.stdout
    );

    // It reaches the instance on node b through its instance IP, and the
    // service through its ServiceIP, with busybox nc.
    let hello = |target: &str| -> Result<String> {
        let script = format!("echo hello | nc -w 5 {target} 7000");
        let out = pm.exec(&name, &["sh", "-c", &script], Duration::from_secs(30))?;
        Ok(out.stdout)
    };
    let got = hello(&w2.instance_ip.v4.to_string())?;
    assert!(
        got.starts_with("web2"),
        "via the instance IP on node b: {got:?}"
    );
    let got = hello(&d.rr.v4.to_string())?;
    assert!(got.starts_with("web"), "via the ServiceIP: {got:?}");

    // And by name, through the daemon's resolver.
    let ns = pm.exec(
        &name,
        &["nslookup", "web.shop.svc.cluster.internal"],
        Duration::from_secs(20),
    )?;
    assert!(
        ns.stdout.contains(&d.rr.v4.to_string()),
        "{}",
        ns.describe("nslookup")
    );
    let got = hello("web.shop.svc.cluster.internal")?;
    assert!(got.starts_with("web"), "by name: {got:?}");
    assert!(
        resolv.stdout.contains("options ndots:2"),
        "{}",
        resolv.stdout
    );
    let got = hello("web.shop")?;
    assert!(got.starts_with("web"), "by the short name: {got:?}");

    // podman rm runs DEL: the attachment goes away.
    pm.rm(&name)?;
    assert!(
        by_container(&c.a, &id)?.is_none(),
        "podman rm left the attachment"
    );
    eprintln!(
        "podman test took {:?} (runtime {:?})",
        t0.elapsed(),
        pm.runtime()
    );
    Ok(())
}
