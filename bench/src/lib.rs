//! The benchmark harness: multi-host topologies in network namespaces,
//! measured side by side with kernel baselines.
//!
//! Not built yet (issue 3). The crate exists so the workspace has its final
//! shape; it holds no code that pretends to measure anything.
