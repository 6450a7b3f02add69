//! The Oakestra backend's family: broker messages dropped, by reason
//! (docs/oakestra.md).

use prometheus_client::encoding::DescriptorEncoder;

use super::encode::counter_labelled;

/// The dropped-message counters of `store.backend = "oakestra"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OakestraReadings {
    /// `(reason, count)`, in the status JSON's order.
    pub dropped: Vec<(String, u64)>,
}

impl OakestraReadings {
    /// Reads `Manager::store_status()`'s JSON; `None` unless the backend
    /// is `oakestra`.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        if v.get("backend").and_then(|b| b.as_str()) != Some("oakestra") {
            return None;
        }
        let dropped = v
            .get("dropped")
            .and_then(|d| d.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        Some(Self { dropped })
    }

    /// Writes the family.
    pub(super) fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let samples: Vec<_> = self
            .dropped
            .iter()
            .map(|(r, n)| (vec![("reason", r.clone())], *n))
            .collect();
        counter_labelled(
            enc,
            "proxytun_oakestra_messages_dropped",
            "Broker messages the Oakestra backend dropped, by reason (bad_json, unknown_service, own_subnet, bad_address)",
            &samples,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_for_oakestra() {
        assert_eq!(
            OakestraReadings::from_json(&serde_json::json!({"backend":"etcd"})),
            None
        );
        let r = OakestraReadings::from_json(&serde_json::json!({
            "backend":"oakestra","dropped":{"bad_json":2,"own_subnet":0}}))
        .expect("oakestra");
        assert_eq!(
            r.dropped,
            vec![("bad_json".to_owned(), 2), ("own_subnet".to_owned(), 0)]
        );
    }
}
