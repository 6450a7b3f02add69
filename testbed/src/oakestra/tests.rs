//! The fixture against a real mosquitto on 127.0.0.1, with a plain rumqttc
//! client playing a worker's NetManager.

use std::net::Ipv4Addr;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use serde_json::{json, Value};

use super::table::Heard;
use super::OakCluster;
use crate::mosquitto::Mosquitto;

const JOB: &str = "demo.default.web.default";
const WAIT: Duration = Duration::from_secs(10);

/// A worker: subscribed to its results and every job's updates.
struct Worker {
    id: String,
    client: Client,
    rx: Receiver<(String, Vec<u8>)>,
}

impl Worker {
    fn connect(broker: &Mosquitto, id: &str) -> Worker {
        let a = broker.addr();
        let (client, mut conn) =
            Client::new(MqttOptions::new(id, a.ip().to_string(), a.port()), 64);
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let sub = client.clone();
        let filters = vec![
            SubscribeFilter::new(format!("nodes/{id}/net/+/result"), QoS::AtLeastOnce),
            SubscribeFilter::new("jobs/#".into(), QoS::AtLeastOnce),
        ];
        thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.try_subscribe_many(filters.clone());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        ready_rx
            .recv_timeout(WAIT)
            .expect("the worker subscribes within 10 s");
        Worker {
            id: id.to_owned(),
            client,
            rx,
        }
    }

    fn send(&self, tail: &str, v: &Value) {
        self.client
            .publish(
                format!("nodes/{}/net/{tail}", self.id),
                QoS::AtLeastOnce,
                false,
                v.to_string(),
            )
            .expect("publish to the local broker");
    }

    /// The next message on `topic`, raw.
    fn next_raw(&self, topic: &str) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (t, p) = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("nothing on {topic} within {WAIT:?}"));
            if t == topic {
                return p;
            }
        }
    }

    fn next(&self, topic: &str) -> Value {
        serde_json::from_slice(&self.next_raw(topic)).expect("the fixture sends JSON")
    }
}

fn setup() -> Option<(Mosquitto, OakCluster)> {
    if !Mosquitto::available() {
        eprintln!("skipping: mosquitto is not installed (scripts/lib.sh install_deps)");
        return None;
    }
    let broker = Mosquitto::start_local().expect("mosquitto starts on 127.0.0.1");
    let cluster = OakCluster::start(&broker).expect("the fixture connects");
    cluster
        .add_job(
            JOB,
            Ipv4Addr::new(10, 30, 0, 2),
            Ipv4Addr::new(10, 30, 0, 3),
            &[
                (0, Ipv4Addr::new(10, 30, 0, 5)),
                (1, Ipv4Addr::new(10, 30, 0, 6)),
            ],
        )
        .expect("add_job");
    Some((broker, cluster))
}

#[test]
fn subnet_requests_get_consecutive_26s() {
    let Some((broker, cluster)) = setup() else {
        return;
    };
    let w1 = Worker::connect(&broker, "w1");
    let w2 = Worker::connect(&broker, "w2");
    w1.send("subnet", &json!({"METHOD": "GET"}));
    let r = w1.next("nodes/w1/net/subnetwork/result");
    assert_eq!(
        r,
        json!({"address": "10.18.0.64", "addressv6": "fc00::100"})
    );
    w2.send("subnet", &json!({"METHOD": "GET"}));
    let r = w2.next("nodes/w2/net/subnetwork/result");
    assert_eq!(r["address"], "10.18.0.128");
    assert_eq!(
        cluster.subnets("w1").expect("state"),
        [Ipv4Addr::new(10, 18, 0, 64)]
    );
}

#[test]
fn queries_deployments_and_interests_follow_the_python_code() {
    let Some((broker, cluster)) = setup() else {
        return;
    };
    let w = Worker::connect(&broker, "w1");
    let result = "nodes/w1/net/tablequery/result";
    w.send(
        "tablequery/request",
        &json!({"sname": "", "sip": "10.30.0.3"}),
    );
    let r = w.next(result);
    assert_eq!(r["app_name"], JOB);
    assert_eq!(r["query_key"], "10.30.0.3");
    let list = r["instance_list"].as_array().expect("instance_list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["instance_ip"], "10.30.0.6");
    assert_eq!(list[1]["host_ip"], Value::Null, "not deployed yet");
    assert_eq!(list[1]["service_ip"][2]["IpType"], "instance_ip");
    assert_eq!(cluster.interests().expect("state")[JOB], ["w1"]);

    w.send(
        "service/deployed",
        &json!({"appname": JOB, "status": "DEPLOYED", "instance_number": 1,
                "nsip": "10.18.0.66", "nsipv6": "fc00::102",
                "host_ip": "192.0.2.1", "host_port": "50103"}),
    );
    let u = w.next(&format!("jobs/{JOB}/updates_available"));
    assert_eq!(u, json!({"type": "DEPLOYMENT"}));
    let d = cluster.wait_deployed(JOB, 1, WAIT).expect("deployed");
    assert_eq!((d.worker_id.as_str(), d.host_port), ("w1", Some(50103)));

    w.send("tablequery/request", &json!({"sname": JOB, "sip": ""}));
    let r = w.next(result);
    assert_eq!(r["query_key"], JOB);
    assert_eq!(r["instance_list"][1]["namespace_ip"], "10.18.0.66");
    assert_eq!(r["instance_list"][1]["host_port"], 50103);

    w.send("interest/remove", &json!({"appname": JOB}));
    cluster
        .wait_heard(WAIT, "interest/remove", |_, h| {
            matches!(h, Heard::InterestRemoved(_))
        })
        .expect("heard");
    assert!(cluster.interests().expect("state")[JOB].is_empty());

    cluster.undeploy(JOB, 1).expect("undeploy");
    let u = w.next(&format!("jobs/{JOB}/updates_available"));
    assert_eq!(u, json!({"type": "UNDEPLOYMENT"}));
    assert_eq!(cluster.instance_list(JOB).expect("job").len(), 1);
}

#[test]
fn hostile_injections_arrive_as_sent() {
    let Some((broker, cluster)) = setup() else {
        return;
    };
    let w = Worker::connect(&broker, "w1");
    let result = "nodes/w1/net/tablequery/result";
    cluster
        .inject_raw_answer("w1", b"{\"app_name\": 7,")
        .expect("inject");
    assert_eq!(w.next_raw(result), b"{\"app_name\": 7,");
    // The cluster hears its own result through nodes/+/net/# and ignores it.
    cluster
        .wait_heard(WAIT, "its own raw answer", |t, h| {
            t == result && *h == Heard::Ignored
        })
        .expect("heard");

    let inst = super::forged_instance(
        0,
        Ipv4Addr::new(10, 18, 0, 70),
        Ipv4Addr::new(192, 0, 2, 9),
        &[],
    );
    cluster
        .inject_unasked_answer("w1", "evil.default.x.default", inst)
        .expect("inject");
    let r = w.next(result);
    assert_eq!(r["app_name"], "evil.default.x.default");
    assert_eq!(r["instance_list"][0]["host_ip"], "192.0.2.9");

    cluster
        .inject_own_subnet_answer(
            "w1",
            JOB,
            7,
            Ipv4Addr::new(10, 18, 0, 70),
            Ipv4Addr::new(192, 0, 2, 9),
        )
        .expect("inject");
    let r = w.next(result);
    let list = r["instance_list"].as_array().expect("list");
    assert_eq!(list.len(), 3, "the real two plus the forged one: {r}");
    assert_eq!(list[2]["namespace_ip"], "10.18.0.70");
    assert_eq!(list[2]["service_ip"][0]["Address"], "10.30.0.2");

    cluster
        .inject_update_notice("nosuch.default.job.default")
        .expect("inject");
    let u = w.next("jobs/nosuch.default.job.default/updates_available");
    assert_eq!(u, json!({"type": "DEPLOYMENT"}));
}
