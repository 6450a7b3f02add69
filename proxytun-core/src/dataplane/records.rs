//! The flow state out and back in: the records a restarted daemon saves and
//! restores, validated against the current table on the way in.

use std::sync::Arc;
use std::time::Instant;

use super::Dataplane;
use crate::flow::{Activity, Flow, FlowKey, FlowRecord, FlowRecords, ImportReport, ReplyRecord};
use crate::reply::ReplyEntry;

impl Dataplane {
    /// The flow table and reply cache as plain records, for the state file
    /// that lets established connections survive a restart. Closed
    /// connections (only lingering) are left out. Costs one pass and one
    /// allocation per entry: callers hold the core's lock only for this copy.
    pub fn export_flows(&self, now: Instant) -> FlowRecords {
        FlowRecords {
            flows: self
                .flows
                .iter()
                .filter(|f| !f.activity.is_closed())
                .map(|f| FlowRecord::of(f, now))
                .collect(),
            replies: self
                .replies
                .iter()
                .filter(|(_, e)| !e.activity.is_closed())
                .map(|(k, e)| ReplyRecord {
                    key: (*k).into(),
                    peer: e.peer,
                    instance: Arc::clone(&e.instance),
                    activity: e.activity.record(now),
                })
                .collect(),
        }
    }

    /// Installs saved records (from [`Dataplane::export_flows`] of an
    /// earlier run), validated against the current table exactly like
    /// [`Dataplane::set_table`]: a flow whose instance is gone or moved or
    /// whose client is no longer attached here is dropped, as is a reply
    /// entry whose local instance is gone or whose peer is not a member.
    /// Records already expired as of `now`, and those beyond `max_flows`,
    /// are dropped too. Existing entries with the same keys are replaced.
    pub fn import_flows(&mut self, records: FlowRecords, now: Instant) -> ImportReport {
        let mut report = ImportReport::default();
        let table = Arc::clone(&self.table);
        for r in &records.flows {
            let f = r.to_flow(now);
            let instance_ok = table.instance_by_name(&f.instance).is_some_and(|i| {
                i.ns_for(f.instance_ns) == f.instance_ns && i.location == f.location
            });
            let client_ok = table
                .local_by_ns(f.key.src)
                .is_some_and(|(_, c)| c.iip_for(f.client_iip) == f.client_iip);
            let deadline = f.activity.deadline(&self.config);
            let live = deadline.is_none_or(|d| d > now);
            let room =
                self.flows.len() < self.config.max_flows || self.flows.lookup(&f.key).is_some();
            if !(instance_ok && client_ok && live && room) {
                report.flows_dropped += 1;
                continue;
            }
            // Share the table's name rather than one copy per flow.
            let f = match table.instance_by_name(&f.instance) {
                Some(i) => Flow {
                    instance: Arc::clone(&i.name),
                    ..f
                },
                None => f,
            };
            self.flows.insert(f);
            self.arm(deadline);
            report.flows += 1;
        }
        for r in &records.replies {
            let key = FlowKey::from(r.key);
            let activity = Activity::from_record(key.proto, &r.activity, now);
            let instance = table
                .local_by_ns(key.src)
                .filter(|(_, i)| *i.name == *r.instance)
                .map(|(_, i)| Arc::clone(&i.name));
            let deadline = activity.deadline(&self.config);
            let live = deadline.is_none_or(|d| d > now);
            let peer_ok = table.is_peer(r.peer.ip()) && table.in_service_range(key.dst);
            let room =
                self.replies.len() < self.config.max_flows || self.replies.get_mut(&key).is_some();
            match instance {
                Some(instance) if live && peer_ok && room => {
                    self.replies.insert(
                        key,
                        ReplyEntry {
                            peer: r.peer,
                            instance,
                            activity,
                        },
                    );
                    self.arm(deadline);
                    report.replies += 1;
                }
                _ => report.replies_dropped += 1,
            }
        }
        report
    }
}
