//! Oakestra's MQTT messages as serde types, and the topics they travel on.
//!
//! No I/O: [`Incoming::parse`] turns a topic and a payload from the broker
//! into a message, or into [`Drop::BadJson`]; the `*_payload` functions
//! build what this node publishes. The shapes are those of the Go
//! NetManager (`node-net-manager/mqtt/*.go`) and the Python cluster
//! (`interfaces/mqtt_client.py`) of oakestra-net v0.4.411.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize};

/// Why a broker message was dropped: the label of
/// `proxytun_oakestra_messages_dropped_total{reason}` and the key in the
/// status JSON's `dropped` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drop {
    /// Unparseable, or not the shape of the topic's message.
    BadJson,
    /// An answer or update for a job this node neither asked about nor
    /// has an interest in.
    UnknownService,
    /// An instance on this node's subnet said to run elsewhere, or one
    /// said to run here that is not on this node's subnet: forged.
    OwnSubnet,
    /// An address that does not parse or lies outside the plan's ranges.
    BadAddress,
}

impl Drop {
    /// Every reason, for zero counters.
    pub const ALL: [Drop; 4] = [
        Drop::BadJson,
        Drop::UnknownService,
        Drop::OwnSubnet,
        Drop::BadAddress,
    ];

    /// The reason's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::BadJson => "bad_json",
            Drop::UnknownService => "unknown_service",
            Drop::OwnSubnet => "own_subnet",
            Drop::BadAddress => "bad_address",
        }
    }
}

impl fmt::Display for Drop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The topics of one worker (`{id}` is its client id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    id: String,
}

impl Topics {
    /// The topics of worker `client_id`.
    pub fn new(client_id: &str) -> Self {
        Self {
            id: client_id.to_owned(),
        }
    }

    /// `nodes/{id}/net/{leaf}`: where this node publishes.
    pub fn publish(&self, leaf: Leaf) -> String {
        format!("nodes/{}/net/{}", self.id, leaf.as_str())
    }

    /// Table answers come here.
    pub fn tablequery_result(&self) -> String {
        format!("nodes/{}/net/tablequery/result", self.id)
    }

    /// The subnet answer comes here.
    pub fn subnetwork_result(&self) -> String {
        format!("nodes/{}/net/subnetwork/result", self.id)
    }
}

/// What this node publishes under `nodes/{id}/net/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// Asks for the node's subnet.
    Subnet,
    /// Asks for a job's table entries.
    TableQuery,
    /// Tells an instance is deployed here.
    Deployed,
    /// Tells an instance is gone from here.
    Undeployed,
    /// Ends this node's interest in a job.
    InterestRemove,
}

impl Leaf {
    /// The topic's tail.
    pub fn as_str(self) -> &'static str {
        match self {
            Leaf::Subnet => "subnet",
            Leaf::TableQuery => "tablequery/request",
            Leaf::Deployed => "service/deployed",
            Leaf::Undeployed => "service/undeployed",
            Leaf::InterestRemove => "interest/remove",
        }
    }
}

/// The topic a job's updates come on.
pub fn updates_topic(job: &str) -> String {
    format!("jobs/{job}/updates_available")
}

/// proxytun's own topic beside Oakestra's: every proxytun worker keeps a
/// retained [`Presence`] on `proxytun/workers/{id}`, so workers that share
/// no job still know each other as tunnel peers (Oakestra's table answers
/// name only the workers that host a job of interest, and a worker that
/// only uses a job would otherwise be a stranger to the one hosting it).
/// The cluster subscribes `nodes/+/net/#` only, so it never sees these.
pub const WORKERS_FILTER: &str = "proxytun/workers/+";

/// The retained presence topic of worker `id`.
pub fn worker_topic(id: &str) -> String {
    format!("proxytun/workers/{id}")
}

/// A worker's tunnel endpoint, retained on [`worker_topic`]; an empty
/// retained message (the broker's last will of a worker gone) clears it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Its underlay address.
    pub host_ip: String,
    /// Its tunnel port.
    pub host_port: u16,
    /// Its public key, with per-node tunnel keys (64 hex characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// `{"address":"10.18.0.64","addressv6":"fc00::100"}`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubnetAnswer {
    /// The node's /26 (its network address).
    pub address: String,
    /// Oakestra's v6 subnet (ignored: our v6 mirrors v4).
    #[serde(default)]
    pub addressv6: Option<String>,
}

/// One ServiceIP entry of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Sip {
    /// `RR`, `Closest` or `instance_ip`.
    #[serde(rename = "IpType")]
    pub ip_type: String,
    /// The v4 address.
    #[serde(rename = "Address")]
    pub address: String,
    /// The v6 address (ignored).
    #[serde(rename = "Address_v6", default)]
    pub address_v6: Option<String>,
}

/// One instance of a table answer. Addresses stay text here: `view.rs`
/// checks them against the plan.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceEntry {
    /// Its number within the job.
    pub instance_number: u32,
    /// Its namespace address; empty or absent while not deployed yet.
    #[serde(default, deserialize_with = "opt_string")]
    pub namespace_ip: Option<String>,
    /// The node it runs on (underlay address).
    #[serde(default, deserialize_with = "opt_string")]
    pub host_ip: Option<String>,
    /// That node's tunnel port: a number or a string of digits.
    #[serde(default, deserialize_with = "opt_port")]
    pub host_port: Option<u16>,
    /// Its instance IP (also among `service_ip` as `instance_ip`).
    #[serde(default, deserialize_with = "opt_string")]
    pub instance_ip: Option<String>,
    /// The job's ServiceIPs and this instance's instance IP.
    #[serde(default)]
    pub service_ip: Vec<Sip>,
}

impl InstanceEntry {
    /// The address of the ServiceIP entry of type `ip_type`.
    pub fn sip(&self, ip_type: &str) -> Option<&str> {
        self.service_ip
            .iter()
            .find(|s| s.ip_type == ip_type)
            .map(|s| s.address.as_str())
    }
}

/// The answer to a table query.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TableAnswer {
    /// The job asked about (null when the cluster knows no job of that sip).
    #[serde(default, deserialize_with = "opt_string")]
    pub app_name: Option<String>,
    /// What was asked: the sip or the sname.
    #[serde(default)]
    pub query_key: String,
    /// The job's instances (empty for an unknown job).
    #[serde(default)]
    pub instance_list: Vec<InstanceEntry>,
}

/// `jobs/{job}/updates_available`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UpdateNotice {
    /// `DEPLOYMENT`, `UNDEPLOYMENT` or null.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// A message from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The subnet answer.
    Subnet(SubnetAnswer),
    /// A table answer.
    Table(TableAnswer),
    /// A job changed: query it again.
    Update {
        /// The job, from the topic.
        job: String,
    },
    /// A proxytun worker's presence (`None`: it is gone).
    Worker {
        /// Its client id, from the topic.
        id: String,
        /// Its tunnel endpoint and public key (checked, lowercase).
        endpoint: Option<(SocketAddr, Option<String>)>,
    },
}

impl Incoming {
    /// Parses a message of `topics`' node. A topic this node did not
    /// subscribe, a payload that is not JSON of the topic's shape: `BadJson`.
    pub fn parse(topics: &Topics, topic: &str, payload: &[u8]) -> Result<Self, Drop> {
        if topic == topics.tablequery_result() {
            return serde_json::from_slice(payload)
                .map(Incoming::Table)
                .map_err(|_| Drop::BadJson);
        }
        if topic == topics.subnetwork_result() {
            return serde_json::from_slice(payload)
                .map(Incoming::Subnet)
                .map_err(|_| Drop::BadJson);
        }
        if let Some(job) = topic
            .strip_prefix("jobs/")
            .and_then(|t| t.strip_suffix("/updates_available"))
        {
            if job.is_empty() || job.contains('/') {
                return Err(Drop::BadJson);
            }
            // The body says little; its shape is checked all the same.
            let _: UpdateNotice = serde_json::from_slice(payload).map_err(|_| Drop::BadJson)?;
            return Ok(Incoming::Update {
                job: job.to_owned(),
            });
        }
        if let Some(id) = topic.strip_prefix("proxytun/workers/") {
            if id.is_empty() || id.contains('/') {
                return Err(Drop::BadJson);
            }
            let endpoint = if payload.is_empty() {
                None
            } else {
                let p: Presence = serde_json::from_slice(payload).map_err(|_| Drop::BadJson)?;
                let ip: IpAddr = p.host_ip.trim().parse().map_err(|_| Drop::BadAddress)?;
                if ip.is_unspecified() || ip.is_multicast() || p.host_port == 0 {
                    return Err(Drop::BadAddress);
                }
                let key = p
                    .public_key
                    .as_deref()
                    .map(crate::model::check_public_key)
                    .transpose()
                    .map_err(|_| Drop::BadJson)?;
                Some((SocketAddr::new(ip, p.host_port), key))
            };
            return Ok(Incoming::Worker {
                id: id.to_owned(),
                endpoint,
            });
        }
        Err(Drop::BadJson)
    }
}

/// `{"METHOD":"GET"}`
pub fn subnet_request() -> Vec<u8> {
    br#"{"METHOD":"GET"}"#.to_vec()
}

/// `{"sname": .., "sip": ..}`: one of the two is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableQuery {
    /// The job name asked for, or empty.
    pub sname: String,
    /// The ServiceIP asked for, or empty.
    pub sip: String,
}

impl TableQuery {
    /// What the answer's `query_key` will be.
    pub fn key(&self) -> &str {
        if self.sip.is_empty() {
            &self.sname
        } else {
            &self.sip
        }
    }
}

/// `service/deployed` and `service/undeployed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployNotice {
    /// The job.
    pub appname: String,
    /// `DEPLOYED` or `UNDEPLOYED`.
    pub status: String,
    /// The instance's number.
    pub instance_number: u32,
    /// Its namespace address.
    pub nsip: String,
    /// Its namespace address, v6 (ours: the mirror).
    pub nsipv6: String,
    /// This node's underlay address.
    pub host_ip: String,
    /// This node's tunnel port, as a string (as the Go NetManager sends it).
    pub host_port: String,
}

/// `interest/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterestRemove {
    /// The job.
    pub appname: String,
}

/// Serialises a message of ours; the types above cannot fail.
pub fn to_payload<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).unwrap_or_default()
}

/// A string that may be null (Python's `None`).
fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()))
}

/// A port as a number or a string of digits (the cluster stores what the
/// node sent; the Go NetManager sends a string and reads an int).
fn opt_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        N(u64),
        S(String),
    }
    let p: Option<Port> = Option::deserialize(d)?;
    let n = match p {
        None => return Ok(None),
        Some(Port::S(s)) if s.is_empty() => return Ok(None),
        Some(Port::N(n)) => n,
        Some(Port::S(s)) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| serde::de::Error::custom(format!("host_port {s:?} is not a number")))?,
    };
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(Some(p)),
        _ => Err(serde::de::Error::custom(format!(
            "host_port {n} is not a port"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new("w1")
    }

    #[test]
    fn table_answer_with_string_or_number_ports() {
        let body = br#"{"app_name":"a.b.c.d","query_key":"10.30.0.2","instance_list":[
            {"instance_number":0,"namespace_ip":"10.18.0.66","namespace_ip_v6":"fc00::1",
             "host_ip":"10.77.0.2","host_port":50103,"instance_ip":"10.30.0.5","instance_ip_v6":"x",
             "service_ip":[{"IpType":"RR","Address":"10.30.0.2","Address_v6":"y"},
                           {"IpType":"instance_ip","Address":"10.30.0.5","Address_v6":"z"}]},
            {"instance_number":1,"namespace_ip":"","host_ip":null,"host_port":"50104",
             "service_ip":[]}]}"#;
        let m = Incoming::parse(&topics(), "nodes/w1/net/tablequery/result", body)
            .expect("a table answer");
        let Incoming::Table(a) = m else {
            panic!("not a table answer: {m:?}")
        };
        assert_eq!(a.app_name.as_deref(), Some("a.b.c.d"));
        assert_eq!(a.instance_list[0].host_port, Some(50103));
        assert_eq!(a.instance_list[0].sip("RR"), Some("10.30.0.2"));
        assert_eq!(a.instance_list[1].host_port, Some(50104));
        assert_eq!(a.instance_list[1].namespace_ip, None);
        assert_eq!(a.instance_list[1].host_ip, None);
    }

    #[test]
    fn subnet_and_update() {
        let s = Incoming::parse(
            &topics(),
            "nodes/w1/net/subnetwork/result",
            br#"{"address":"10.18.0.64","addressv6":"fc00::100"}"#,
        )
        .expect("subnet");
        assert!(matches!(s, Incoming::Subnet(a) if a.address == "10.18.0.64"));
        for body in [&br#"{"type":"DEPLOYMENT"}"#[..], br#"{"type":null}"#, b"{}"] {
            let u =
                Incoming::parse(&topics(), "jobs/a.b.c.d/updates_available", body).expect("update");
            assert_eq!(
                u,
                Incoming::Update {
                    job: "a.b.c.d".into()
                }
            );
        }
    }

    #[test]
    fn bad_shapes_are_bad_json() {
        let t = topics();
        let cases: [(&str, &[u8]); 9] = [
            ("nodes/w1/net/tablequery/result", b"{"),
            ("nodes/w1/net/tablequery/result", b"[1,2]"),
            (
                "nodes/w1/net/tablequery/result",
                br#"{"instance_list":[{"instance_number":-1}]}"#,
            ),
            (
                "nodes/w1/net/tablequery/result",
                br#"{"instance_list":[{"instance_number":0,"host_port":"http"}]}"#,
            ),
            (
                "nodes/w1/net/tablequery/result",
                br#"{"instance_list":[{"instance_number":0,"host_port":70000}]}"#,
            ),
            ("nodes/w1/net/subnetwork/result", br#"{"addressv6":"x"}"#),
            ("jobs/a.b.c.d/updates_available", b"not json"),
            ("jobs//updates_available", b"{}"),
            ("nodes/w2/net/tablequery/result", b"{}"),
        ];
        for (topic, body) in cases {
            assert_eq!(
                Incoming::parse(&t, topic, body),
                Err(Drop::BadJson),
                "{topic} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn what_we_publish() {
        let t = topics();
        assert_eq!(
            t.publish(Leaf::TableQuery),
            "nodes/w1/net/tablequery/request"
        );
        assert_eq!(
            t.publish(Leaf::InterestRemove),
            "nodes/w1/net/interest/remove"
        );
        assert_eq!(updates_topic("a.b.c.d"), "jobs/a.b.c.d/updates_available");
        let q = TableQuery {
            sname: String::new(),
            sip: "10.30.0.2".into(),
        };
        assert_eq!(q.key(), "10.30.0.2");
        let v: serde_json::Value = serde_json::from_slice(&to_payload(&q)).expect("json");
        assert_eq!(v, serde_json::json!({"sname":"","sip":"10.30.0.2"}));
        let d = DeployNotice {
            appname: "a.b.c.d".into(),
            status: "DEPLOYED".into(),
            instance_number: 2,
            nsip: "10.18.0.66".into(),
            nsipv6: "fdff:18::42".into(),
            host_ip: "10.77.0.2".into(),
            host_port: "50103".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&to_payload(&d)).expect("json");
        assert_eq!(v["host_port"], "50103");
        assert_eq!(v["instance_number"], 2);
        assert_eq!(subnet_request(), br#"{"METHOD":"GET"}"#.to_vec());
    }

    #[test]
    fn worker_presence_set_cleared_and_checked() {
        let t = topics();
        let body = to_payload(&Presence {
            host_ip: "10.77.0.2".into(),
            host_port: 50103,
            public_key: None,
        });
        let ep: SocketAddr = "10.77.0.2:50103".parse().expect("addr");
        assert_eq!(
            Incoming::parse(&t, &worker_topic("w2"), &body),
            Ok(Incoming::Worker {
                id: "w2".into(),
                endpoint: Some((ep, None)),
            })
        );
        let key = "AB".repeat(32);
        let with_key = to_payload(&Presence {
            host_ip: "10.77.0.2".into(),
            host_port: 50103,
            public_key: Some(key.clone()),
        });
        assert_eq!(
            Incoming::parse(&t, &worker_topic("w2"), &with_key),
            Ok(Incoming::Worker {
                id: "w2".into(),
                endpoint: Some((ep, Some(key.to_ascii_lowercase()))),
            })
        );
        assert_eq!(
            Incoming::parse(&t, "proxytun/workers/w2", b""),
            Ok(Incoming::Worker {
                id: "w2".into(),
                endpoint: None,
            })
        );
        for (body, want) in [
            (&b"{"[..], Drop::BadJson),
            (br#"{"host_ip":"nope","host_port":1}"#, Drop::BadAddress),
            (br#"{"host_ip":"0.0.0.0","host_port":1}"#, Drop::BadAddress),
            (
                br#"{"host_ip":"10.77.0.2","host_port":0}"#,
                Drop::BadAddress,
            ),
            (
                br#"{"host_ip":"10.77.0.2","host_port":1,"public_key":"xyz"}"#,
                Drop::BadJson,
            ),
        ] {
            assert_eq!(Incoming::parse(&t, "proxytun/workers/w2", body), Err(want));
        }
        assert_eq!(
            Incoming::parse(&t, "proxytun/workers/", &body),
            Err(Drop::BadJson)
        );
    }
}
