//! The thin shell under [`NatSpec`]: hands its batch to nftables through
//! the `nftables` crate (which runs `nft -j -f -`), and asks the node's
//! sockets whether a port is taken. All decisions are in `nat.rs`.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use super::nat::NatSpec;
use super::spec::KernelError;
use crate::model::{PortMapping, Protocol};

/// Replaces our table with `spec` (or deletes it when `spec` is empty), in
/// one nftables transaction: on error the ruleset is as it was.
pub async fn apply(spec: &NatSpec) -> Result<(), KernelError> {
    let batch = spec.batch();
    let action = if spec.is_empty() {
        "delete nftables table inet proxytun"
    } else {
        "replace nftables table inet proxytun"
    };
    let fail = |message: String| KernelError {
        action: action.to_owned(),
        message,
    };
    let nft: nftables::schema::Nftables<'static> =
        serde_json::from_value(batch).map_err(|e| fail(format!("internal: bad batch: {e}")))?;
    let empty = spec.is_empty();
    let result = tokio::task::spawn_blocking(move || nftables::helper::apply_ruleset(&nft))
        .await
        .map_err(|e| fail(format!("nft task failed: {e}")))?;
    match result {
        Ok(()) => Ok(()),
        // Without nft there is no table of ours to delete: a node whose
        // containers need no NAT runs without the nftables package.
        Err(nftables::helper::NftablesError::NftExecution { inner, .. })
            if empty && inner.kind() == ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(e) => Err(fail(format!(
            "{e}; published ports and masquerade need nft (install the nftables package) \
             or set [network] masquerade = false"
        ))),
    }
}

/// True when a socket of this node already holds the mapping's node port
/// (on any address): a published port must not steal it.
pub fn port_in_use(mapping: &PortMapping) -> Result<bool, KernelError> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, mapping.host_port));
    let bound = match mapping.protocol {
        Protocol::Tcp => TcpListener::bind(addr).map(drop),
        Protocol::Udp => UdpSocket::bind(addr).map(drop),
    };
    match bound {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == ErrorKind::AddrInUse => Ok(true),
        Err(e) => Err(KernelError {
            action: format!(
                "check node port {}/{}",
                mapping.host_port,
                mapping.protocol.as_str()
            ),
            message: e.to_string(),
        }),
    }
}
