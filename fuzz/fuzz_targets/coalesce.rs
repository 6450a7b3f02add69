//! `cargo fuzz run coalesce`: the body is `proxytun_core::fuzzing::coalesce`, which the
//! corpus replay test (`proxytun-core/tests/fuzz_corpus.rs`) also runs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxytun_core::fuzzing::coalesce(data));
