//! Several attachments of one network namespace (one per interface name,
//! each an instance of another service): which ones share a netns, and
//! which of them holds the default routes. The kernel allows one default
//! route per family, so exactly one attachment of a netns has it; when it
//! leaves, another takes over, so the container keeps reaching ServiceIPs
//! and the resolver.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::netns::{NetnsProbe, NsId};
use super::table::Table;
use crate::model::{Instance, InstanceKey, Placement};

/// The local instances attached in `netns` (the same path, or another path
/// to the same namespace when `ns_id` is known), but not `except`.
pub(super) fn sharing<'t>(
    table: &'t Table,
    probe: &dyn NetnsProbe,
    netns: &Path,
    ns_id: Option<NsId>,
    except: Option<&InstanceKey>,
) -> Vec<&'t Instance> {
    table
        .instances
        .values()
        .filter(|i| Some(&i.key) != except)
        .filter(|i| match &i.placement {
            Placement::Local { netns: path, .. } => {
                path == netns || (ns_id.is_some() && probe.identify(path).ok() == ns_id)
            }
            Placement::Remote { .. } => false,
        })
        .collect()
}

/// Whether a local instance holds its netns's default routes.
pub(super) fn holds_default_route(inst: &Instance) -> bool {
    matches!(
        inst.placement,
        Placement::Local {
            default_route: true,
            ..
        }
    )
}

/// Marks (or unmarks) a local instance in `table` as the holder of its
/// netns's default routes.
pub(super) fn set_holder(table: &mut Table, key: &InstanceKey, holds: bool) {
    if let Some(Instance {
        placement: Placement::Local { default_route, .. },
        ..
    }) = table.instances.get_mut(key)
    {
        *default_route = holds;
    }
}

/// A netns as restore groups attachments: by identity when the path can be
/// inspected (two paths to one namespace are one), else by path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    Id(NsId),
    Path(PathBuf),
}

/// Makes every netns of the table have exactly one holder of the default
/// routes (the first by key when none or several claim it); returns the
/// keys whose flag it changed. A state written by hand, or by a daemon
/// that crashed between two steps, comes back consistent.
pub(super) fn one_holder_each(table: &mut Table, probe: &dyn NetnsProbe) -> Vec<InstanceKey> {
    let mut groups: BTreeMap<Group, Vec<(InstanceKey, bool)>> = BTreeMap::new();
    for inst in table.instances.values() {
        if let Placement::Local {
            netns,
            default_route,
            ..
        } = &inst.placement
        {
            let group = match probe.identify(netns) {
                Ok(id) => Group::Id(id),
                Err(_) => Group::Path(netns.clone()),
            };
            groups
                .entry(group)
                .or_default()
                .push((inst.key.clone(), *default_route));
        }
    }
    let mut changed = Vec::new();
    for members in groups.values() {
        let holder = members
            .iter()
            .find(|(_, holds)| *holds)
            .or_else(|| members.first())
            .map(|(key, _)| key.clone());
        for (key, holds) in members {
            let want = Some(key) == holder.as_ref();
            if *holds != want {
                changed.push(key.clone());
            }
        }
    }
    for key in &changed {
        let holds = table
            .instances
            .get(key)
            .map(holds_default_route)
            .unwrap_or(false);
        set_holder(table, key, !holds);
    }
    changed
}
