//! The CI soak (~30 s): containers attach and detach continuously and
//! remote instances register and unregister on a two-node cluster while
//! long-lived TCP echo streams and UDP request/response run through a
//! ServiceIP. At the end each daemon's RSS and fd count are near their
//! baseline after warm-up (RSS +8 MiB, fds +2), no namespace, link or
//! route is left behind, every stable stream's flow is still there and no
//! flow of a detached client is. `bench soak` runs the same workload for
//! ten minutes (docs/crash-survival.md).

use testbed::churn::{self, SoakConfig};

#[test]
fn churn_soak_30s() {
    let secs = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let cfg = SoakConfig::ci(secs);
    let report = churn::soak("soak", &cfg).expect("soak run");
    println!("{}", report.summary());
    report.check(&cfg).expect("soak checks");
}
