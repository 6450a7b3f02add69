//! A service's client affinity ("session affinity"): whether every new flow
//! from one client address goes to the instance its previous flow went to,
//! for a while. Part of the service record, so in a cluster every node
//! balances the service the same way.

use serde::{Deserialize, Serialize};

/// The default timeout: three hours, as Kubernetes' `ClientIP` affinity.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// The longest timeout accepted: one day (Kubernetes' bound too).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// How new flows of a service pick an instance, beyond its ServiceIP's
/// policy (round robin or closest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AffinityMode {
    /// Every new flow is balanced on its own (the default).
    #[default]
    None,
    /// A client's new flows go to the instance of its previous flow to the
    /// same ServiceIP while that was less than `timeout_s` ago.
    Client,
}

/// A service's affinity setting, as stored and as `PUT
/// /v1/services/{app}/{service}/affinity` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Affinity {
    /// `none` or `client`.
    pub mode: AffinityMode,
    /// Seconds a pin lives after the client's last new flow (1..=86400).
    #[serde(default = "default_timeout")]
    pub timeout_s: u32,
}

fn default_timeout() -> u32 {
    DEFAULT_AFFINITY_TIMEOUT_S
}

impl Default for Affinity {
    fn default() -> Self {
        Affinity {
            mode: AffinityMode::None,
            timeout_s: DEFAULT_AFFINITY_TIMEOUT_S,
        }
    }
}

impl Affinity {
    /// Whether this is the default (no affinity, default timeout): such a
    /// service record is written without the field, as before it existed.
    pub fn is_default(&self) -> bool {
        *self == Affinity::default()
    }

    /// The timeout when the mode is `client`, else `None`.
    pub fn client_timeout(&self) -> Option<std::time::Duration> {
        (self.mode == AffinityMode::Client)
            .then(|| std::time::Duration::from_secs(u64::from(self.timeout_s)))
    }

    /// Checks the timeout's range; the message says what to send instead.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_AFFINITY_TIMEOUT_S).contains(&self.timeout_s) {
            return Err(format!(
                "timeout_s: {} is out of range; use 1 to {MAX_AFFINITY_TIMEOUT_S} seconds (default {DEFAULT_AFFINITY_TIMEOUT_S})",
                self.timeout_s
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes_defaults_and_bad_values() {
        let a: Affinity = serde_json::from_str(r#"{"mode":"client"}"#).expect("parse");
        assert_eq!(a.client_timeout().map(|d| d.as_secs()), Some(10_800));
        let a: Affinity =
            serde_json::from_str(r#"{"mode":"client","timeout_s":60}"#).expect("parse");
        assert_eq!(a.client_timeout().map(|d| d.as_secs()), Some(60));
        assert!(Affinity::default().is_default());
        assert_eq!(Affinity::default().client_timeout(), None);
        assert!(serde_json::from_str::<Affinity>(r#"{"mode":"sticky"}"#).is_err());
        assert!(serde_json::from_str::<Affinity>(r#"{"mode":"client","ttl":5}"#).is_err());
        let zero = Affinity {
            mode: AffinityMode::Client,
            timeout_s: 0,
        };
        assert!(zero.validate().expect_err("0").contains("1 to 86400"));
        let long = Affinity {
            mode: AffinityMode::Client,
            timeout_s: 86_401,
        };
        assert!(long.validate().is_err());
    }
}
