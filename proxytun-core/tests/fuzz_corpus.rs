//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the
//! fuzz target bodies in `proxytun_core::fuzzing`, on stable and
//! deterministically, so CI re-checks every input a campaign kept
//! (including any crash reproducer added after a fix). A missing or empty
//! corpus directory fails the test: the replay must never pass vacuously.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("parse", proxytun_core::fuzzing::parse),
    ("rewrite", proxytun_core::fuzzing::rewrite),
    ("decap", proxytun_core::fuzzing::decap),
    ("icmp_error", proxytun_core::fuzzing::icmp_error),
    ("flow_table", proxytun_core::fuzzing::flow_table),
    ("coalesce", proxytun_core::fuzzing::coalesce),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn replay(target: &str, body: Target) {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap();
        // Name the input if it panics.
        let r = std::panic::catch_unwind(|| body(&data));
        assert!(r.is_ok(), "{target}: {} fails", f.display());
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn parse_corpus() {
    replay(TARGETS[0].0, TARGETS[0].1);
}

#[test]
fn rewrite_corpus() {
    replay(TARGETS[1].0, TARGETS[1].1);
}

#[test]
fn decap_corpus() {
    replay(TARGETS[2].0, TARGETS[2].1);
}

#[test]
fn icmp_error_corpus() {
    replay(TARGETS[3].0, TARGETS[3].1);
}

#[test]
fn flow_table_corpus() {
    replay(TARGETS[4].0, TARGETS[4].1);
}

#[test]
fn coalesce_corpus() {
    replay(TARGETS[5].0, TARGETS[5].1);
}

/// Every target has a directory: a new target without a corpus fails here.
#[test]
fn every_corpus_directory_exists() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut want: Vec<String> = TARGETS.iter().map(|(t, _)| t.to_string()).collect();
    want.sort();
    assert_eq!(dirs, want);
}

/// Writes the hand-made seeds (`proxytun_core::fuzzing::seeds`) into the corpus
/// directories; run once before a campaign:
/// `cargo test -p proxytun-core --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    for (i, (target, bytes)) in proxytun_core::fuzzing::seeds().into_iter().enumerate() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{i:03}")), bytes).unwrap();
    }
}
