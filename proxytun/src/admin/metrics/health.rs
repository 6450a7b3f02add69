//! The health families: the same answers as `/ready` and `/live`, as
//! gauges, so an alert can say a node is not ready or lost a packet thread
//! while it still serves `/metrics`.

use prometheus_client::encoding::DescriptorEncoder;

use super::encode::gauge;

/// What `/ready` and `/live` would answer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthReadings {
    /// `/ready` answers 200: the whole stack is up and no shutdown began.
    pub ready: bool,
    /// `/live` answers 200: both packet threads run.
    pub live: bool,
}

impl HealthReadings {
    /// Writes the health families.
    pub(super) fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        gauge(
            enc,
            "proxytun_ready",
            "1 while /ready answers 200 (the whole stack is up and no shutdown began), else 0",
            u64::from(self.ready),
        )?;
        gauge(
            enc,
            "proxytun_live",
            "1 while /live answers 200 (both packet threads run), else 0",
            u64::from(self.live),
        )?;
        Ok(())
    }
}
