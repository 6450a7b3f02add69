//! The options of `bench control`, apart from the run, so every phase can
//! read them without importing the module that runs the phases.

use std::path::PathBuf;

/// Options of `bench control`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Simulated nodes registered in etcd.
    #[arg(long, default_value_t = 200)]
    pub nodes: u32,
    /// Instances per simulated node.
    #[arg(long, default_value_t = 50)]
    pub per_node: u32,
    /// Services the instances serve.
    #[arg(long, default_value_t = 1000)]
    pub services: u32,
    /// Services the watching node has local instances of (its interest).
    #[arg(long, default_value_t = 100)]
    pub interest: u32,
    /// Changes (instance added or removed) timed to the watcher's view.
    #[arg(long, default_value_t = 200)]
    pub changes: u32,
    /// First packets to services the watcher did not use yet (misses),
    /// timed until its view holds them.
    #[arg(long, default_value_t = 20)]
    pub misses: u32,
    /// Pause between changes, milliseconds (0: back to back).
    #[arg(long, default_value_t = 20)]
    pub gap_ms: u64,
    /// TTL of the simulated nodes' leases, seconds (kept alive at ttl/3).
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: i64,
    /// Instance counts for the memory figures.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub memory_sizes: Vec<u64>,
    /// Service counts for the lookup figures.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub lookup_sizes: Vec<u32>,
    /// Services in the hot set of the second lookup figure (the same
    /// working set at every table size).
    #[arg(long, default_value_t = 1000)]
    pub hot: u32,
    /// Lookups per timed run.
    #[arg(long, default_value_t = 1_000_000)]
    pub lookups: usize,
    /// Timed runs per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// The etcd server binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd: PathBuf,
    /// Skip the etcd part (memory and lookup only).
    #[arg(long)]
    pub no_etcd: bool,
    /// Key prefix in etcd.
    #[arg(long, default_value = "/proxytun")]
    pub prefix: String,
    /// Where the JSON goes (default `target/bench/`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}
