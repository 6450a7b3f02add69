//! The testbed proxytun's end-to-end tests, the bench harness and the demo
//! share: network namespaces as hosts and containers, the real `proxytun`
//! daemon in each host, `ptprobe` as the application in each container, a
//! real etcd, commands with deadlines and interrupt handling, and a DNS wire
//! codec independent of the resolver's.
//!
//! It depends on neither `proxytun` nor `envmgr` (it drives the daemon as a
//! program), so both can use it as a dev-dependency.
//!
//! Everything is cleaned up by Drop (daemons stopped by pid, servers killed,
//! namespaces deleted), which also runs while a failing test unwinds. No
//! traffic is ever sent from, and no address or route is ever added to, the
//! root namespace; the CLI and API calls use the daemons' unix sockets only.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let c = testbed::Cluster::two_nodes("example")?;
//! let mut web = c.container("web")?;
//! web.serve("web1")?;
//! let client = c.container("cli")?;
//! let d = c.deploy("shop/web", &[(&c.b, &web, 1)])?;
//! c.a.attach("shop/client", &client.path(), Some(1), None)?;
//! assert_eq!(client.tcp_hello(d.rr.v4)?.name, "web1");
//! # Ok(()) }
//! ```

pub mod api;
pub mod churn;
pub mod cluster;
pub mod cluster3;
pub mod cmd;
pub mod dig;
pub mod dnswire;
pub mod etcd;
pub mod laptop;
pub mod linkdelay;
pub mod model;
pub mod mosquitto;
pub mod netns;
pub mod node;
pub mod nodeengine;
pub mod nspawn;
pub mod oakestra;
pub mod podman;
pub mod support;
pub mod tls;
pub mod udpwire;

pub use cluster::{Cluster, Container, Deployment, Hello, Transfer, TCP_PORT, UDP_PORT};
pub use cluster3::Cluster3;
pub use etcd::Etcd;
pub use model::{Dual, Instance, Service};
pub use mosquitto::Mosquitto;
pub use netns::Netns;
pub use node::{
    offload_wanted, DnsConfig, EtcdStore, Keepalive, Node, NodeConfig, NodeKeys, OakestraStore,
    PeerState, TUNNEL_PORT,
};
pub use oakestra::topology::{OakTopology, Pod};
pub use oakestra::OakCluster;
pub use support::{
    eventually, fakedns_bin, proxytun_bin, ptprobe_bin, registered_peers, require_root,
    workspace_root,
};
pub use tls::{CertFiles, Pki};
