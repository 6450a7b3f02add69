//! The manager's static settings: what the daemon derives from its config
//! file once, at start. A module of its own so the table and every
//! operation can read them without depending on the manager itself.

use std::collections::BTreeSet;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::plan::AddressPlan;
use crate::resolv::ResolvConf;

/// Static settings the daemon derives from its config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// This node's name (how peers and remote instances refer to it).
    pub node_name: String,
    /// The address plan everything is allocated from.
    pub plan: AddressPlan,
    /// The bridge every container veth is enslaved to, e.g. `ptbr0`.
    pub bridge: String,
    /// Container veth and bridge MTU (the TUN's MTU), so TCP's MSS fits the tunnel.
    pub mtu: u32,
    /// The local store's directory.
    pub state_dir: PathBuf,
    /// The tunnel port assumed for peers given without one.
    pub tunnel_port: u16,
    /// Containers' resolv.conf, written on attach and at start, removed on
    /// detach; `None` when the node runs no resolver.
    pub resolv: Option<ResolvConf>,
    /// Containers reach addresses outside the cluster with the node's
    /// address (`[network] masquerade`).
    pub masquerade: bool,
    /// Apps whose containers are never masqueraded (`[network]
    /// masquerade_except`): they keep their own address on the way out.
    pub masquerade_except: BTreeSet<String>,
    /// Where external clients' addresses come from (`[network]
    /// client_range`, docs/join.md). `None`: this node's ServiceIP block,
    /// which only the local store may use (with a cluster store the block's
    /// addresses are the cluster's, so `client add` is refused).
    pub client_range: Option<Ipv4Net>,
}
