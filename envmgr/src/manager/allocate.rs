//! Address and number allocation on the local store: pinned values are
//! checked, free ones are the lowest of this node's block. Shared by attach
//! and the registration of remote instances; nothing here changes the table
//! the manager holds, only the candidate `next` it is handed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::table::Table;
use super::Manager;
use crate::alloc;
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::model::{DualAddr, InstanceKey, Service, ServiceName};

impl<K: Kernel> Manager<K> {
    /// A pinned address must lie in the ServiceIP range and be a usable host.
    pub(super) fn check_pinned_range(&self, field: &str, addr: Option<Ipv4Addr>) -> Result<()> {
        let Some(addr) = addr else { return Ok(()) };
        let range = self.settings.plan.services;
        if !range.contains(&addr) {
            return Err(Error::Invalid(format!(
                "{field} {addr} is outside the ServiceIP range {range} (network.services)"
            )));
        }
        if addr == range.network() || addr == range.broadcast() {
            return Err(Error::Invalid(format!(
                "{field} {addr} is the network or broadcast address of the ServiceIP range {range}"
            )));
        }
        Ok(())
    }

    /// The key for a new instance: the requested number if free, else the
    /// lowest number free among all known instances of the service.
    pub(super) fn instance_key(
        &self,
        table: &Table,
        name: ServiceName,
        number: Option<u32>,
    ) -> Result<InstanceKey> {
        let number = match number {
            Some(n) => n,
            None => {
                let used: BTreeSet<u32> = table.instances_of(&name).map(|i| i.key.number).collect();
                alloc::lowest_free_number(&used).ok_or_else(|| {
                    Error::Exhausted(format!("service {name} has no free instance number left"))
                })?
            }
        };
        let key = InstanceKey { name, number };
        if table.instances.contains_key(&key) {
            return Err(Error::Conflict(format!(
                "instance {key} already exists; detach it first or omit the instance number"
            )));
        }
        Ok(key)
    }

    /// Makes sure `name` has a service in `next`, creating it with a pinned
    /// or allocated ServiceIP; `used` gains the new ServiceIP.
    pub(super) fn ensure_service(
        &self,
        next: &mut Table,
        name: &ServiceName,
        pinned: Option<Ipv4Addr>,
        used: &mut BTreeMap<Ipv4Addr, String>,
    ) -> Result<()> {
        if let Some(existing) = next.services.get(name) {
            return match pinned {
                Some(ip) if ip != existing.rr_ip.v4 => Err(Error::Conflict(format!(
                    "service {name} already has ServiceIP {}, not {ip}; omit service_ip or pass {}",
                    existing.rr_ip.v4, existing.rr_ip.v4
                ))),
                _ => Ok(()),
            };
        }
        let v4 = self.pick_service_addr("service_ip", pinned, used)?;
        used.insert(v4, format!("the ServiceIP of {name}"));
        let closest = self.pick_service_addr("closest_ip", None, used)?;
        used.insert(closest, format!("the closest ServiceIP of {name}"));
        next.services.insert(
            name.clone(),
            Service {
                name: name.clone(),
                rr_ip: self.settings.plan.service_pair(v4),
                closest_ip: Some(self.settings.plan.service_pair(closest)),
                affinity: Default::default(),
            },
        );
        Ok(())
    }

    /// Picks the instance IP of a new instance `key` and creates its
    /// service in `next` if needed. A pinned instance IP is claimed first so
    /// the service's allocated ServiceIP never takes it.
    pub(super) fn service_and_instance_ip(
        &self,
        next: &mut Table,
        key: &InstanceKey,
        service_ip: Option<Ipv4Addr>,
        instance_ip: Option<Ipv4Addr>,
    ) -> Result<DualAddr> {
        let mut used = next.service_addrs();
        if let Some(ip) = instance_ip {
            self.pick_service_addr("instance_ip", Some(ip), &used)?;
            used.insert(ip, format!("the instance IP requested for {key}"));
        }
        self.ensure_service(next, &key.name, service_ip, &mut used)?;
        let v4 = match instance_ip {
            Some(ip) => ip,
            None => self.pick_service_addr("instance_ip", None, &used)?,
        };
        Ok(self.settings.plan.service_pair(v4))
    }

    /// A pinned address if unused, else the lowest free one of our block.
    pub(super) fn pick_service_addr(
        &self,
        field: &str,
        pinned: Option<Ipv4Addr>,
        used: &BTreeMap<Ipv4Addr, String>,
    ) -> Result<Ipv4Addr> {
        if let Some(ip) = pinned {
            return match used.get(&ip) {
                Some(user) => Err(Error::Conflict(format!("{field} {ip} is already {user}"))),
                None => Ok(ip),
            };
        }
        let block = self.settings.plan.alloc_block();
        let set: BTreeSet<Ipv4Addr> = used.keys().copied().collect();
        alloc::lowest_free_service_addr(block, &set).ok_or_else(|| {
            Error::Exhausted(format!(
                "this node's ServiceIP block {block} is used up; remove services or pin addresses from another block"
            ))
        })
    }
}
