//! DEL and GC: detaching, by container id and interface (DEL), or every
//! attachment of this network the runtime no longer lists (GC).

use std::collections::BTreeSet;

use envmgr::api::client::Client;

use super::daemon::{detach, list_instances};
use super::version::require_1_1;
use crate::spec::{code, CniError, Env, NetConf, ValidAttachment};

/// DEL: detach by container id and interface. Idempotent: nothing attached
/// (404) is success, and neither the netns nor the netconf's app/service
/// is needed. A daemon that cannot be reached is error 11, so the runtime
/// retries instead of forgetting an attachment that still exists.
pub(super) async fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let container_id = env.container_id()?;
    let ifname = env.ifname()?;
    detach(
        &Client::new(&conf.socket),
        &conf.socket,
        container_id,
        ifname,
    )
    .await
}

/// GC (1.1): detaches every container attachment of this network's app
/// (and service, when the netconf names one) that is not in
/// `cni.dev/valid-attachments`. Attachments made without a container id
/// (the CLI, an orchestrator) and those of other apps are never touched.
pub(super) async fn gc(conf: &NetConf) -> Result<(), CniError> {
    require_1_1(conf, "GC")?;
    let app = conf
        .args
        .app
        .as_ref()
        .or(conf.app.as_ref())
        .ok_or_else(|| {
            CniError::new(
            code::INVALID_NETCONF,
            "GC needs the network's `app` in the netconf, to know which attachments are its own",
        )
        })?;
    let service = conf.args.service.as_ref().or(conf.service.as_ref());
    let valid: BTreeSet<(&str, &str)> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(
            |ValidAttachment {
                 container_id,
                 ifname,
             }| (container_id.as_str(), ifname.as_str()),
        )
        .collect();
    let client = Client::new(&conf.socket);
    let mut failures = Vec::new();
    for inst in list_instances(&client, &conf.socket).await? {
        let Some((cid, ifname)) = inst.placement.runtime_attachment() else {
            continue;
        };
        if &inst.key.name.app != app || service.is_some_and(|s| &inst.key.name.service != s) {
            continue;
        }
        if valid.contains(&(cid, ifname)) {
            continue;
        }
        if let Err(e) = detach(&client, &conf.socket, cid, ifname).await {
            failures.push(format!("{} ({cid}/{ifname}): {}", inst.key, e.msg));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::DAEMON_REFUSED,
            format!("GC could not detach {} stale attachment(s)", failures.len()),
        )
        .with_details(failures.join("; ")))
    }
}
