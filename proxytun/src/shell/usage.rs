//! Which services this node's flows use, reported to the cluster sync so
//! that interests in used services do not expire (`store.interest_idle_secs`).
//!
//! A tokio task asks the dataplane for its flow dump (the same control
//! message as the API's, so the packet threads answer between batches),
//! takes the service of each flow's instance, and sends each name through
//! the sync's name channel, where a name of an existing interest counts as
//! a use. Control-plane rate: once per period, nothing per packet.

use std::collections::BTreeSet;
use std::time::Duration;

use envmgr::model::ServiceName;
use tokio::sync::mpsc;

use super::io_loop::{Control, ControlSender};

/// Starts the reporter: every `period` until the dataplane stops.
pub fn spawn(ctrl: ControlSender, names: mpsc::Sender<ServiceName>, period: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let (tx, rx) = tokio::sync::oneshot::channel();
            if ctrl.send(Control::DumpFlows(tx)).is_err() {
                return;
            }
            let Ok(Ok(dump)) = tokio::time::timeout(Duration::from_secs(2), rx).await else {
                continue;
            };
            for name in services_of(&dump) {
                // A full channel drops the report: the next period sends it again.
                let _ = names.try_send(name);
            }
        }
    });
}

/// The services of the flows in a dump (`flows[].instance` is
/// `app/service/number`).
fn services_of(dump: &serde_json::Value) -> BTreeSet<ServiceName> {
    dump["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["instance"].as_str())
        .filter_map(|i| i.rsplit_once('/'))
        .filter_map(|(svc, _)| svc.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_come_from_the_flows_instances() {
        let dump = serde_json::json!({"flows": [
            {"instance": "shop/web/1"}, {"instance": "shop/web/2"},
            {"instance": "bank/api/7"}, {"instance": "garbage"}, {}
        ]});
        let got: Vec<String> = services_of(&dump).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["bank/api", "shop/web"]);
        assert!(services_of(&serde_json::json!({"error": "x"})).is_empty());
    }
}
