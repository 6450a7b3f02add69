//! Micro benchmarks of the packet core live in `benches/core/`
//! (`cargo bench -p microbench --bench core`); this library is empty.
