//! The backend against a real broker: mosquitto on loopback, and a fake
//! Oakestra cluster manager (a rumqttc client) that answers the subnet and
//! table queries. Skipped when mosquitto is not installed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::model::{NodeInfo, Policy, Snapshot};
use crate::registry::Claim;

const JOB: &str = "demo.default.web.prod";

/// mosquitto on 127.0.0.1, killed (by pid) on drop.
struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl std::ops::Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn broker() -> Option<Broker> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    broker_on(port)
}

fn broker_on(port: u16) -> Option<Broker> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .expect("conf");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto");
    let b = Broker {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(b);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("mosquitto did not listen on {port}");
}

/// What the fake cluster answers and what it heard.
#[derive(Debug, Default)]
struct Fake {
    /// Answer with a forged instance on w1's subnet.
    forged: bool,
    heard: BTreeMap<String, Vec<serde_json::Value>>,
}

fn inst(n: u32, ns: &str, host: &str, ip: &str) -> serde_json::Value {
    serde_json::json!({"instance_number": n, "namespace_ip": ns, "namespace_ip_v6": "",
        "host_ip": host, "host_port": 50103, "instance_ip": ip, "instance_ip_v6": "",
        "service_ip": [{"IpType":"RR","Address":"10.30.0.2","Address_v6":""},
                       {"IpType":"Closest","Address":"10.30.0.3","Address_v6":""},
                       {"IpType":"instance_ip","Address": ip,"Address_v6":""}]})
}

async fn fake_cluster(port: u16, fake: Arc<Mutex<Fake>>) -> AsyncClient {
    let mut o = MqttOptions::new("cluster", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (c, mut ev) = AsyncClient::new(o, 64);
    let pc = c.clone();
    tokio::spawn(async move {
        loop {
            let Ok(e) = ev.poll().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if let MqttEvent::Incoming(Packet::ConnAck(_)) = e {
                // Clean session: subscribe after every (re)connect.
                let _ = pc.try_subscribe("nodes/+/net/#", QoS::AtLeastOnce);
                continue;
            }
            let MqttEvent::Incoming(Packet::Publish(p)) = e else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
            let leaf = p.topic.splitn(4, '/').nth(3).unwrap_or("").to_owned();
            let forged = {
                let mut f = fake.lock().expect("lock");
                f.heard.entry(leaf.clone()).or_default().push(v.clone());
                f.forged
            };
            let (topic, body) = match leaf.as_str() {
                "subnet" => (
                    "nodes/w1/net/subnetwork/result",
                    serde_json::json!({"address":"10.18.0.64","addressv6":"fc00::40"}),
                ),
                "tablequery/request" => {
                    let (sname, sip) = (
                        v["sname"].as_str().unwrap_or(""),
                        v["sip"].as_str().unwrap_or(""),
                    );
                    let key = if sip.is_empty() { sname } else { sip };
                    let body = if sname == JOB || sip == "10.30.0.2" {
                        let mut list = vec![
                            inst(0, "10.18.0.130", "10.77.0.2", "10.30.0.5"),
                            inst(1, "", "", "10.30.0.6"),
                        ];
                        if forged {
                            list.push(inst(2, "10.18.0.70", "10.77.0.9", "10.30.0.7"));
                        }
                        serde_json::json!({"app_name": JOB, "query_key": key, "instance_list": list})
                    } else {
                        serde_json::json!({"app_name": null, "query_key": key, "instance_list": []})
                    };
                    ("nodes/w1/net/tablequery/result", body)
                }
                _ => continue,
            };
            let _ = pc
                .publish(
                    topic,
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&body).unwrap_or_default(),
                )
                .await;
        }
    });
    c
}

fn snapshot(plan: &AddressPlan) -> Snapshot {
    Snapshot {
        version: 1,
        node: NodeInfo {
            name: "w1".into(),
            subnet: plan.node_subnet(),
            subnet6: plan.node_subnet6(),
            service_range: plan.services,
            service_range6: plan.services6,
        },
        services: BTreeMap::new(),
        instances: BTreeMap::new(),
        peers: BTreeMap::new(),
        policy: Policy::default(),
        clients: Default::default(),
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn dropped(c: &OakestraCluster, reason: &str) -> u64 {
    c.status().dropped.get(reason).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_mosquitto_and_a_fake_cluster() {
    let Some(b) = broker() else {
        eprintln!("mosquitto not installed: skipped");
        return;
    };
    let fake = Arc::new(Mutex::new(Fake::default()));
    let cm = fake_cluster(b.port, fake.clone()).await;
    let state = tempfile::tempdir().expect("state");
    let settings = OakestraSettings {
        client_id: "w1".into(),
        broker_host: "127.0.0.1".into(),
        broker_port: b.port,
        me: "10.77.0.1:50103".parse().expect("addr"),
        public_key: None,
        query_timeout: Duration::from_secs(5),
        interest_idle: Some(Duration::from_secs(3)),
    };
    let c = OakestraCluster::start(settings, JobBook::default()).expect("start");
    let base = AddressPlan::with_default_ranges(0);
    let plan = c
        .plan(&base, state.path(), Duration::from_secs(20))
        .await
        .expect("a subnet");
    assert_eq!((plan.node_prefix, plan.node_index), (26, 1));
    assert!(state.path().join(subnet::FILE).exists());

    // The manager's claims.
    let reg = c.registry(plan.clone());
    let name: ServiceName = "demo-default/web-prod".parse().expect("name");
    let svc = reg.service(&name, None).await.expect("the service");
    assert_eq!(svc.rr_ip.v4, Ipv4Addr::new(10, 30, 0, 2));
    let e = reg
        .service(&name, Some(Ipv4Addr::new(10, 30, 0, 9)))
        .await
        .expect_err("another RR");
    assert!(matches!(e, crate::Error::Conflict(_)), "{e}");
    let unknown: ServiceName = "no-such/job-here".parse().expect("name");
    let e = reg.service(&unknown, None).await.expect_err("unknown");
    assert!(e.to_string().contains("does not know"), "{e}");
    let ns = plan.cluster_pair(Ipv4Addr::new(10, 18, 0, 66));
    let (key, ip) = reg
        .claim(Claim {
            name: name.clone(),
            number: Some(1),
            instance_ip: None,
            ns_addr: ns,
        })
        .await
        .expect("claimed");
    assert_eq!((key.number, ip.v4), (1, Ipv4Addr::new(10, 30, 0, 6)));
    until("the deploy notice", || {
        fake.lock()
            .expect("lock")
            .heard
            .contains_key("service/deployed")
    })
    .await;
    let notice = fake.lock().expect("lock").heard["service/deployed"][0].clone();
    assert_eq!(notice["host_port"], "50103");
    assert_eq!(notice["host_ip"], "10.77.0.1");
    assert_eq!(notice["nsip"], "10.18.0.66");
    assert_eq!(notice["appname"], JOB);

    // The sync: a miss on the RR ServiceIP makes an interest and a view.
    let (_local_tx, local) = watch::channel(Arc::new(snapshot(&plan)));
    let (miss_tx, misses) = mpsc::channel(8);
    let (names_tx, names) = mpsc::channel(8);
    let mut views = c.start_sync(local, misses, names);
    miss_tx
        .send("10.30.0.2".parse().expect("ip"))
        .await
        .expect("send");
    let ok = |v: &Arc<ClusterView>| {
        v.instances.len() == 1 && v.peers.contains_key("oak-10-77-0-2-50103")
    };
    tokio::time::timeout(Duration::from_secs(10), views.wait_for(ok))
        .await
        .expect("a view in time")
        .expect("the sync runs");
    let good = views.borrow().clone();
    assert!(good.services.contains_key(&name));

    // A forged update changes nothing and is counted.
    fake.lock().expect("lock").forged = true;
    names_tx.send(name.clone()).await.expect("touch");
    // (Again until it lands: the node's subscription may not be in yet.)
    for _ in 0..20 {
        cm.publish(
            format!("jobs/{JOB}/updates_available"),
            QoS::AtLeastOnce,
            false,
            &br#"{"type":"DEPLOYMENT"}"#[..],
        )
        .await
        .expect("publish");
        tokio::time::sleep(Duration::from_millis(250)).await;
        if dropped(&c, "own_subnet") >= 1 {
            break;
        }
    }
    until("the forged answer dropped", || {
        dropped(&c, "own_subnet") >= 1
    })
    .await;
    assert_eq!(*views.borrow().clone(), *good);
    // Garbage, and an answer nobody asked for.
    cm.publish(
        "nodes/w1/net/tablequery/result",
        QoS::AtLeastOnce,
        false,
        &b"{oops"[..],
    )
    .await
    .expect("publish");
    let stray = serde_json::json!({"app_name":"other.default.x.y","query_key":"other.default.x.y","instance_list":[]});
    cm.publish(
        "nodes/w1/net/tablequery/result",
        QoS::AtLeastOnce,
        false,
        serde_json::to_vec(&stray).expect("json"),
    )
    .await
    .expect("publish");
    until("bad_json and unknown_service", || {
        dropped(&c, "bad_json") >= 1 && dropped(&c, "unknown_service") >= 1
    })
    .await;
    // A lookup of a job the cluster does not know makes no interest.
    let asked = |f: &Mutex<Fake>| {
        f.lock()
            .expect("lock")
            .heard
            .get("tablequery/request")
            .map_or(0, |v| {
                v.iter()
                    .filter(|q| q["sname"] == "no.such.job.here")
                    .count()
            })
    };
    let before = asked(&fake);
    names_tx.send(unknown.clone()).await.expect("send");
    until("the unknown name asked", || asked(&fake) > before).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.status().interests, 1);
    let st = reg.status();
    assert_eq!(st["backend"], "oakestra");
    assert_eq!(st["connected"], true);
    assert!(st["dropped"]["own_subnet"].as_u64() >= Some(1), "{st}");

    // Unused, the interest expires: interest/remove, and the view empties.
    tokio::time::timeout(
        Duration::from_secs(15),
        views.wait_for(|v| v.services.is_empty()),
    )
    .await
    .expect("expired in time")
    .expect("the sync runs");
    until("interest/remove", || {
        fake.lock()
            .expect("lock")
            .heard
            .contains_key("interest/remove")
    })
    .await;
    let removed = fake
        .lock()
        .expect("lock")
        .heard
        .get("interest/remove")
        .cloned();
    assert_eq!(removed.expect("interest/remove")[0]["appname"], JOB);
    c.stop();
}

fn heard(fake: &Mutex<Fake>, leaf: &str) -> usize {
    fake.lock()
        .expect("lock")
        .heard
        .get(leaf)
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_resubscribes_and_asks_again() {
    let Some(b) = broker() else {
        eprintln!("mosquitto not installed: skipped");
        return;
    };
    let port = b.port;
    let fake = Arc::new(Mutex::new(Fake::default()));
    let cm = fake_cluster(port, fake.clone()).await;
    let state = tempfile::tempdir().expect("state");
    let settings = OakestraSettings {
        client_id: "w1".into(),
        broker_host: "127.0.0.1".into(),
        broker_port: port,
        me: "10.77.0.1:50103".parse().expect("addr"),
        public_key: None,
        query_timeout: Duration::from_secs(5),
        interest_idle: None,
    };
    let c = OakestraCluster::start(settings, JobBook::default()).expect("start");
    let plan = c
        .plan(
            &AddressPlan::with_default_ranges(0),
            state.path(),
            Duration::from_secs(20),
        )
        .await
        .expect("a subnet");
    let (_local_tx, local) = watch::channel(Arc::new(snapshot(&plan)));
    let (_miss_tx, misses) = mpsc::channel(8);
    let (names_tx, names) = mpsc::channel(8);
    let mut views = c.start_sync(local, misses, names);
    names_tx
        .send("demo-default/web-prod".parse().expect("name"))
        .await
        .expect("send");
    tokio::time::timeout(
        Duration::from_secs(10),
        views.wait_for(|v| v.instances.len() == 1),
    )
    .await
    .expect("a view in time")
    .expect("the sync runs");

    drop(b);
    until("the node sees the broker gone", || !c.status().connected).await;
    let asked = heard(&fake, "tablequery/request");
    let _b = broker_on(port).expect("mosquitto again");
    until("the node back", || c.status().connected).await;
    // Every interest is asked again after a reconnect.
    until("the interest asked again", || {
        heard(&fake, "tablequery/request") > asked
    })
    .await;
    // The view survived the outage.
    assert_eq!(views.borrow().instances.len(), 1);
    // And its updates subscription is back: a forged update is asked and dropped.
    fake.lock().expect("lock").forged = true;
    for _ in 0..40 {
        let _ = cm
            .publish(
                format!("jobs/{JOB}/updates_available"),
                QoS::AtLeastOnce,
                false,
                &b"{}"[..],
            )
            .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        if dropped(&c, "own_subnet") >= 1 {
            break;
        }
    }
    assert!(dropped(&c, "own_subnet") >= 1, "{:?}", c.status());
    c.stop();
}
