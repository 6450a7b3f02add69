//! The cluster service manager's state and its answers, without I/O: what
//! Oakestra's Python code (`interfaces/mqtt_client.py`,
//! `network/tablequery/*.py`, `network/deployment.py`,
//! `operations/instances_management.py`) does with one MQTT message, as a
//! pure function from (topic, payload) to the messages it publishes.
//!
//! The job table plays the cluster's Mongo `jobs` collection: each job
//! with its ServiceIPs and instance list as the root handed them over
//! (`instance_number`, `instance_ip`, `instance_ip_v6`, `cluster_id`), the
//! address fields `null` until the worker reports the deployment, like
//! `mongo_update_job_instance` leaves them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{json, Value};

/// The cluster id the fixture's instances carry (`cluster_id`).
pub const CLUSTER_ID: &str = "proxytun-test-cluster";

/// One message the cluster publishes (QoS 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The MQTT topic.
    pub topic: String,
    /// The JSON text, as `json.dumps` would send it.
    pub payload: Vec<u8>,
}

impl Outgoing {
    /// A JSON message on `topic`.
    pub fn json(topic: String, v: &Value) -> Outgoing {
        Outgoing {
            topic,
            payload: v.to_string().into_bytes(),
        }
    }
}

/// One instance of a job as the cluster stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInstance {
    /// `instance_number`.
    pub number: u32,
    /// `instance_ip`, assigned by the root when it scheduled the instance.
    pub instance_ip: Ipv4Addr,
    /// `instance_ip_v6`.
    pub instance_ip_v6: Ipv6Addr,
    /// What the worker reported in `service/deployed` (`None` before).
    pub deployed: Option<Deployed>,
}

/// The fields `mongo_update_job_deployed` sets from a `service/deployed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// The worker that sent it (`worker_id`: the topic's client id).
    pub worker_id: String,
    /// `nsip`.
    pub namespace_ip: Value,
    /// `nsipv6`.
    pub namespace_ip_v6: Value,
    /// `host_ip`.
    pub host_ip: Value,
    /// `host_port`, stored as `int(host_port)` (`None` when not a number).
    pub host_port: Option<i64>,
    /// The job's `status` field after it (`DEPLOYED`).
    pub status: Value,
}

/// A job: `app.appns.service.servicens`, its ServiceIPs and instances.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// `job_name`.
    pub name: String,
    /// The round-robin ServiceIP (`IpType` `RR`).
    pub rr: Ipv4Addr,
    /// The closest ServiceIP (`IpType` `Closest`).
    pub closest: Ipv4Addr,
    /// `instance_list`.
    pub instances: Vec<JobInstance>,
    /// `interested_nodes`: the workers that asked about it.
    pub interested: Vec<String>,
}

impl Job {
    /// A job with no instances; `add_instance` adds the root's.
    pub fn new(name: &str, rr: Ipv4Addr, closest: Ipv4Addr) -> Job {
        Job {
            name: name.to_owned(),
            rr,
            closest,
            instances: Vec::new(),
            interested: Vec::new(),
        }
    }

    /// `service_ip_list` as the root stores it.
    pub fn service_ip_list(&self) -> Vec<Value> {
        vec![
            json!({"IpType": "RR", "Address": self.rr.to_string(),
                   "Address_v6": v6_of(0x2000, self.rr).to_string()}),
            json!({"IpType": "Closest", "Address": self.closest.to_string(),
                   "Address_v6": v6_of(0x4000, self.closest).to_string()}),
        ]
    }

    /// Whether `ip` is one of the job's ServiceIPs or instance IPs
    /// (`mongo_find_job_by_ip`'s four lookups).
    fn has_ip(&self, ip: &str) -> bool {
        self.service_ip_list()
            .iter()
            .any(|s| s["Address"] == ip || s["Address_v6"] == ip)
            || self
                .instances
                .iter()
                .any(|i| i.instance_ip.to_string() == ip || i.instance_ip_v6.to_string() == ip)
    }

    /// `instance_list` after `format_instance_response`: each stored
    /// instance with `service_ip` = the job's list + its `instance_ip`.
    pub fn instance_list(&self) -> Vec<Value> {
        self.instances
            .iter()
            .map(|i| {
                let d = i.deployed.as_ref();
                let mut sips = self.service_ip_list();
                sips.push(json!({"IpType": "instance_ip",
                                 "Address": i.instance_ip.to_string(),
                                 "Address_v6": i.instance_ip_v6.to_string()}));
                let mut v = json!({
                    "instance_number": i.number,
                    "instance_ip": i.instance_ip.to_string(),
                    "instance_ip_v6": i.instance_ip_v6.to_string(),
                    "cluster_id": CLUSTER_ID,
                    "namespace_ip": d.map_or(Value::Null, |d| d.namespace_ip.clone()),
                    "namespace_ip_v6": d.map_or(Value::Null, |d| d.namespace_ip_v6.clone()),
                    "host_ip": d.map_or(Value::Null, |d| d.host_ip.clone()),
                    "host_port": d.and_then(|d| d.host_port).map_or(Value::Null, Value::from),
                    "service_ip": sips,
                });
                if let (Some(d), Some(o)) = (d, v.as_object_mut()) {
                    o.insert("worker_id".into(), d.worker_id.clone().into());
                }
                v
            })
            .collect()
    }
}

/// An IPv6 address in Oakestra's `fdff:<block>::/21` ranges mirroring `v4`'s
/// last two bytes (the root's v6 plan; the nodes ignore it).
pub fn v6_of(block: u16, v4: Ipv4Addr) -> Ipv6Addr {
    let o = v4.octets();
    Ipv6Addr::new(0xfdff, block, 0, 0, 0, 0, u16::from(o[2]), u16::from(o[3]))
}

/// What one message did, for the test's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// `subnet` GET answered with this /26.
    Subnet(Ipv4Addr),
    /// A table query answered (`query_key`).
    Query(String),
    /// `service/deployed` for (job, instance), applied to the table.
    Deployed(String, u32),
    /// `service/deployed` for a job the table does not have
    /// (`deployment_status_report` raises `FileNotFoundError`).
    DeployedUnknown(String),
    /// `service/undeployed` (ignored, like the Python TODO).
    Undeployed(String, u32),
    /// `service/address-changed` applied.
    AddressChanged(String, u32),
    /// `interest/remove` applied.
    InterestRemoved(String),
    /// A message the cluster ignores (its own results come back through
    /// `nodes/+/net/#`; a payload that is not JSON makes `json.loads` raise).
    Ignored,
}

/// The cluster's whole state: jobs, the subnet pool, per-node subnets.
#[derive(Debug, Clone)]
pub struct ClusterState {
    /// The job table by name.
    pub jobs: BTreeMap<String, Job>,
    /// The next /26 the root hands out.
    next_subnet: u32,
    /// The subnets handed to each node, in order.
    pub subnets: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            jobs: BTreeMap::new(),
            next_subnet: u32::from(Ipv4Addr::new(10, 18, 0, 64)),
            subnets: BTreeMap::new(),
        }
    }
}

/// The topic a node's table answers go to.
pub fn result_topic(client_id: &str) -> String {
    format!("nodes/{client_id}/net/tablequery/result")
}

/// The topic of a job's change notices.
pub fn updates_topic(job: &str) -> String {
    format!("jobs/{job}/updates_available")
}

/// `mqtt_notify_service_change(job, type)`.
pub fn notify(job: &str, kind: Option<&str>) -> Outgoing {
    Outgoing::json(updates_topic(job), &json!({ "type": kind }))
}

/// `instance_number` as Python's `int(...)` reads it (number or string).
fn int_of(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

impl ClusterState {
    /// Handles one message from `nodes/+/net/#`, as `handle_mqtt_message`
    /// dispatches it; returns what it did and what it publishes.
    pub fn handle(&mut self, topic: &str, payload: &[u8]) -> (Heard, Vec<Outgoing>) {
        let parts: Vec<&str> = topic.splitn(4, '/').collect();
        let (Some(&"nodes"), Some(id), Some(&"net"), Some(tail)) =
            (parts.first(), parts.get(1), parts.get(2), parts.get(3))
        else {
            return (Heard::Ignored, Vec::new());
        };
        let Ok(p) = serde_json::from_slice::<Value>(payload) else {
            return (Heard::Ignored, Vec::new());
        };
        let id = (*id).to_owned();
        match *tail {
            "service/deployed" => self.deployed(&id, &p),
            "service/undeployed" => {
                let n = int_of(&p["instance_number"]).unwrap_or(-1);
                let job = p["appname"].as_str().unwrap_or_default().to_owned();
                (
                    Heard::Undeployed(job, u32::try_from(n).unwrap_or(u32::MAX)),
                    Vec::new(),
                )
            }
            "service/address-changed" => self.address_changed(&id, &p),
            "tablequery/request" => self.tablequery(&id, &p),
            "interest/remove" => {
                let job = p["appname"].as_str().unwrap_or_default().to_owned();
                if let Some(j) = self.jobs.get_mut(&job) {
                    if let Some(pos) = j.interested.iter().position(|w| *w == id) {
                        j.interested.remove(pos);
                    }
                }
                (Heard::InterestRemoved(job), Vec::new())
            }
            // re.search("^nodes/.*/net/subnet") also matches the cluster's
            // own subnetwork/result; only METHOD GET does anything.
            t if t.starts_with("subnet") && p["METHOD"] == "GET" => self.subnet(&id),
            _ => (Heard::Ignored, Vec::new()),
        }
    }

    /// `_subnet_handler` GET: a new /26 from the root for every GET.
    fn subnet(&mut self, id: &str) -> (Heard, Vec<Outgoing>) {
        let addr = Ipv4Addr::from(self.next_subnet);
        let k = (self.next_subnet - u32::from(Ipv4Addr::new(10, 18, 0, 0))) / 64;
        self.next_subnet += 64;
        let v6 = Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0)
            .to_bits()
            .wrapping_add(u128::from(k) << 8);
        self.subnets.entry(id.to_owned()).or_default().push(addr);
        let out = Outgoing::json(
            format!("nodes/{id}/net/subnetwork/result"),
            &json!({"address": addr.to_string(), "addressv6": Ipv6Addr::from_bits(v6).to_string()}),
        );
        (Heard::Subnet(addr), vec![out])
    }

    /// `_tablequery_handler`: resolve by `sip` first, else by `sname`;
    /// register the interest; answer (an empty list when nothing matches,
    /// as after the root's failed lookup).
    fn tablequery(&mut self, id: &str, p: &Value) -> (Heard, Vec<Outgoing>) {
        let sip = p["sip"].as_str().filter(|s| !s.is_empty());
        let sname = p["sname"].as_str().filter(|s| !s.is_empty());
        let mut app_name = p.get("sname").cloned().unwrap_or(Value::Null);
        let mut query_key = String::new();
        let mut found: Option<String> = None;
        if let Some(sip) = sip {
            query_key = sip.to_owned();
            found = self
                .jobs
                .values()
                .find(|j| j.has_ip(sip))
                .map(|j| j.name.clone());
            if let Some(f) = &found {
                app_name = f.clone().into();
            }
        } else if let Some(sname) = sname {
            query_key = sname.to_owned();
            found = self.jobs.contains_key(sname).then(|| sname.to_owned());
        }
        let instance_list = match found.as_ref().and_then(|f| self.jobs.get_mut(f)) {
            Some(j) => {
                if !j.interested.iter().any(|w| w == id) {
                    j.interested.push(id.to_owned());
                }
                j.instance_list()
            }
            None => Vec::new(),
        };
        let out = Outgoing::json(
            result_topic(id),
            &json!({"app_name": app_name, "instance_list": instance_list, "query_key": query_key}),
        );
        (Heard::Query(query_key), vec![out])
    }

    /// `_deployment_handler` → `deployment_status_report` →
    /// `mongo_update_job_deployed`, then the root's
    /// `notify_job_instance_deployment` → `instance_updates` →
    /// `mqtt_notify_service_change(job, "DEPLOYMENT")`.
    fn deployed(&mut self, id: &str, p: &Value) -> (Heard, Vec<Outgoing>) {
        let job = p["appname"].as_str().unwrap_or_default().to_owned();
        let Some(j) = self.jobs.get_mut(&job) else {
            return (Heard::DeployedUnknown(job), Vec::new());
        };
        let n = int_of(&p["instance_number"]).unwrap_or(-1);
        let Some(inst) = j.instances.iter_mut().find(|i| i64::from(i.number) == n) else {
            // The Python loop finds nothing and sets only the status; the
            // root then has nothing to report either.
            return (Heard::DeployedUnknown(job), Vec::new());
        };
        inst.deployed = Some(Deployed {
            worker_id: id.to_owned(),
            namespace_ip: p["nsip"].clone(),
            namespace_ip_v6: p["nsipv6"].clone(),
            host_ip: p["host_ip"].clone(),
            host_port: int_of(&p["host_port"]),
            status: p["status"].clone(),
        });
        let number = inst.number;
        (
            Heard::Deployed(job.clone(), number),
            vec![notify(&job, Some("DEPLOYMENT"))],
        )
    }

    /// `_address_handler` → `deployment_address_update`: new host address,
    /// then `mqtt_notify_service_change(job, "DEPLOYMENT")`.
    fn address_changed(&mut self, id: &str, p: &Value) -> (Heard, Vec<Outgoing>) {
        let job = p["appname"].as_str().unwrap_or_default().to_owned();
        let n = int_of(&p["instance_number"]).unwrap_or(-1);
        let inst = self
            .jobs
            .get_mut(&job)
            .and_then(|j| j.instances.iter_mut().find(|i| i64::from(i.number) == n));
        let Some(inst) = inst else {
            return (Heard::Ignored, Vec::new());
        };
        let d = inst.deployed.get_or_insert_with(|| Deployed {
            worker_id: id.to_owned(),
            namespace_ip: Value::Null,
            namespace_ip_v6: Value::Null,
            host_ip: Value::Null,
            host_port: None,
            status: Value::Null,
        });
        d.worker_id = id.to_owned();
        d.host_ip = p["host_ip"].clone();
        d.host_port = int_of(&p["host_port"]);
        let number = inst.number;
        (
            Heard::AddressChanged(job.clone(), number),
            vec![notify(&job, Some("DEPLOYMENT"))],
        )
    }

    /// The root's undeployment of (job, instance): `instance_updates`
    /// UNDEPLOYMENT → `mongo_remove_job_instance` (the job goes when its
    /// last instance does) → `mqtt_notify_service_change(job,
    /// "UNDEPLOYMENT")`. `None` when the table has no such instance.
    pub fn undeploy(&mut self, job: &str, number: u32) -> Option<Outgoing> {
        let j = self.jobs.get_mut(job)?;
        let pos = j.instances.iter().position(|i| i.number == number)?;
        j.instances.remove(pos);
        if j.instances.is_empty() {
            self.jobs.remove(job);
        }
        Some(notify(job, Some("UNDEPLOYMENT")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        let mut j = Job::new(
            "demo.default.web.default",
            Ipv4Addr::new(10, 30, 0, 2),
            Ipv4Addr::new(10, 30, 0, 3),
        );
        j.instances.push(JobInstance {
            number: 0,
            instance_ip: Ipv4Addr::new(10, 30, 0, 5),
            instance_ip_v6: v6_of(0, Ipv4Addr::new(10, 30, 0, 5)),
            deployed: None,
        });
        s.jobs.insert(j.name.clone(), j);
        s
    }

    fn body(o: &Outgoing) -> Value {
        serde_json::from_slice(&o.payload).expect("the fixture writes JSON")
    }

    #[test]
    fn subnets_are_new_26s_with_v6() {
        let mut s = ClusterState::default();
        let (h, out) = s.handle("nodes/w1/net/subnet", br#"{"METHOD":"GET"}"#);
        assert_eq!(h, Heard::Subnet(Ipv4Addr::new(10, 18, 0, 64)));
        assert_eq!(out[0].topic, "nodes/w1/net/subnetwork/result");
        assert_eq!(
            body(&out[0]),
            json!({"address":"10.18.0.64","addressv6":"fc00::100"})
        );
        let (_, out) = s.handle("nodes/w2/net/subnet", br#"{"METHOD":"GET"}"#);
        assert_eq!(body(&out[0])["address"], "10.18.0.128");
        // Its own result comes back through nodes/+/net/#: nothing happens.
        let (h, out) = s.handle("nodes/w2/net/subnetwork/result", &out[0].payload);
        assert_eq!((h, out.len()), (Heard::Ignored, 0));
    }

    #[test]
    fn query_answers_python_shape_and_records_interest() {
        let mut s = state();
        let (_, out) = s.handle(
            "nodes/w1/net/tablequery/request",
            br#"{"sname":"","sip":"10.30.0.2"}"#,
        );
        let v = body(&out[0]);
        assert_eq!(out[0].topic, "nodes/w1/net/tablequery/result");
        assert_eq!(v["app_name"], "demo.default.web.default");
        assert_eq!(v["query_key"], "10.30.0.2");
        let i = &v["instance_list"][0];
        assert_eq!(i["instance_number"], 0);
        assert_eq!(i["namespace_ip"], Value::Null);
        let types: Vec<&str> = i["service_ip"]
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|s| s["IpType"].as_str())
            .collect();
        assert_eq!(types, ["RR", "Closest", "instance_ip"]);
        assert_eq!(i["service_ip"][2]["Address"], "10.30.0.5");
        assert_eq!(s.jobs["demo.default.web.default"].interested, ["w1"]);
        // Unknown: an empty list, app_name as asked.
        let (_, out) = s.handle(
            "nodes/w1/net/tablequery/request",
            br#"{"sname":"x.y.z.w","sip":""}"#,
        );
        assert_eq!(
            body(&out[0]),
            json!({"app_name":"x.y.z.w","instance_list":[],"query_key":"x.y.z.w"})
        );
        s.handle(
            "nodes/w1/net/interest/remove",
            br#"{"appname":"demo.default.web.default"}"#,
        );
        assert!(s.jobs["demo.default.web.default"].interested.is_empty());
    }

    #[test]
    fn deployed_updates_the_instance_and_notifies() {
        let mut s = state();
        let msg =
            br#"{"appname":"demo.default.web.default","status":"DEPLOYED","instance_number":0,
            "nsip":"10.18.0.66","nsipv6":"fc00::102","host_ip":"192.0.2.1","host_port":"50103"}"#;
        let (h, out) = s.handle("nodes/w1/net/service/deployed", msg);
        assert_eq!(h, Heard::Deployed("demo.default.web.default".into(), 0));
        assert_eq!(
            out[0].topic,
            "jobs/demo.default.web.default/updates_available"
        );
        assert_eq!(body(&out[0]), json!({"type":"DEPLOYMENT"}));
        let i = &s.jobs["demo.default.web.default"].instance_list()[0];
        assert_eq!(i["host_port"], 50103);
        assert_eq!(i["namespace_ip"], "10.18.0.66");
        assert_eq!(i["worker_id"], "w1");
        let (h, _) = s.handle("nodes/w1/net/service/deployed", b"{not json");
        assert_eq!(h, Heard::Ignored);
        let out = s.undeploy("demo.default.web.default", 0).expect("known");
        assert_eq!(body(&out), json!({"type":"UNDEPLOYMENT"}));
        assert!(s.jobs.is_empty());
    }
}
