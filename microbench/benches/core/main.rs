//! Micro benchmarks of the sans-IO packet core: what one packet costs in
//! each step between the TUN and the tunnel socket, and how flow-table
//! lookups scale with the number of flows.
//!
//! Run with `cargo bench -p microbench --bench core` (add a filter such as
//! `-- flow_table` to run a subset). Method and figures: `docs/benchmarks.md`.
//!
//! Packets are real: built by `etherparse` (an independent implementation)
//! with valid checksums, full-size (1500-byte IP packets, 1448-byte TCP
//! payload), and every scenario asserts its verdict once before it is timed,
//! so a bench can never quietly measure a drop path.

mod dataplane;
mod fixture;
mod flows;
mod seal;
mod steps;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use dataplane::dataplane;
use flows::{flow_insert, flow_table};
use seal::seal_open;
use steps::steps;

/// Short runs: these are nanosecond-scale loops, and the suite should finish
/// in a few minutes on a 2-core box.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = steps, dataplane, flow_table, flow_insert, seal_open
}
criterion_main!(benches);
