//! External clients (docs/join.md): registered by hand on their gateway
//! node, like peers, and given one address from this node's ServiceIP
//! block by the same allocator as instance IPs, so it clashes with none.
//!
//! No kernel change (the ServiceIP range is routed into the TUN already):
//! validate, persist, publish.

use super::peers::parse_endpoint;
use super::Manager;
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::model::{check_label, Client};
use crate::requests::ClientRequest;

impl<K: Kernel> Manager<K> {
    /// Registers a new client and allocates its address. A name or
    /// endpoint IP already registered (as a client or a peer) is refused:
    /// the gateway tells its datagrams apart by that IP.
    pub async fn add_client(&self, req: ClientRequest) -> Result<Client> {
        self.refuse_when_clustered("clients")?;
        check_label("client", &req.name).map_err(|e| Error::Invalid(e.to_string()))?;
        let endpoint = parse_endpoint(&req.endpoint, self.settings.tunnel_port)?;
        let public_key = req
            .public_key
            .as_deref()
            .map(crate::model::check_public_key)
            .transpose()
            .map_err(Error::Invalid)?;
        let mut table = self.table.lock().await;
        if table.clients.contains_key(&req.name) {
            return Err(Error::Conflict(format!(
                "client {} already exists; remove it first (`proxytun client remove {}`)",
                req.name, req.name
            )));
        }
        if let Some(c) = table
            .clients
            .values()
            .find(|c| c.endpoint.ip() == endpoint.ip())
        {
            return Err(Error::Conflict(format!(
                "endpoint address {} already belongs to client {}; each client needs its own address",
                endpoint.ip(),
                c.name
            )));
        }
        if let Some(p) = table
            .peers
            .values()
            .find(|p| p.endpoint.ip() == endpoint.ip())
        {
            return Err(Error::Conflict(format!(
                "endpoint address {} is peer {}'s; a node is not a client",
                endpoint.ip(),
                p.name
            )));
        }
        let address = self.pick_service_addr("address", None, &table.service_addrs())?;
        let client = Client {
            name: req.name,
            endpoint,
            address,
            public_key,
        };
        let mut next = table.clone();
        next.version += 1;
        next.clients.insert(client.name.clone(), client.clone());
        self.commit(&mut table, next)?;
        tracing::info!(client = %client.name, %endpoint, %address, "client added");
        Ok(client)
    }

    /// Removes a client; its flows end at the next table.
    pub async fn remove_client(&self, name: &str) -> Result<Client> {
        let mut table = self.table.lock().await;
        let client = table
            .clients
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no client {name}")))?;
        let mut next = table.clone();
        next.version += 1;
        next.clients.remove(name);
        self.commit(&mut table, next)?;
        tracing::info!(client = %name, "client removed");
        Ok(client)
    }
}
