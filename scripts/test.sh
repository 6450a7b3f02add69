#!/usr/bin/env bash
# The test command: formatting, lints, build, unit tests and the end-to-end
# tests (two-node clusters in network namespaces; needs root), then the
# Debian package and its unit under a booted systemd.
#
#   sudo ./scripts/test.sh            everything
#   sudo ./scripts/test.sh -p tests   only the end-to-end tests (args go to cargo test)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

require_root
find_cargo
heading "dependencies"
install_deps

started=$SECONDS

heading "cargo fmt --check"
cargo fmt --all -- --check

heading "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

heading "layout: no import circle in a crate, no source file over 600 lines"
# The members' folders, from the workspace manifest.
members=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, os, sys; print(" ".join(os.path.relpath(os.path.dirname(p["manifest_path"])) for p in json.load(sys.stdin)["packages"]))')
# shellcheck disable=SC2086
python3 scripts/import_circles.py $members
# Test scenario files (one file, one scenario) may be longer.
long=$(git ls-files '*.rs' | grep -v '^tests/tests/' | xargs wc -l | awk '$2 != "total" && $1 > 600 { print }')
[ -z "$long" ] || { printf 'files over 600 lines (split them by what a reader looks for):\n%s\n' "$long"; exit 1; }

heading "cargo build (binaries for the end-to-end tests)"
cargo build --workspace --bins

heading "cargo test"
# End-to-end tests each build their own cluster; two at a time keeps a
# 2-core machine responsive and every test well inside its time budget.
if [ "$#" -gt 0 ]; then
    cargo test --no-fail-fast "$@" -- --test-threads=2
else
    cargo test --workspace --no-fail-fast -- --test-threads=2
    # The same end-to-end behaviour on the plain packet path: the daemons
    # run with `[tun] offload = false` (no vnet header, no UDP GSO/GRO).
    heading "cargo test -p tests, offloads forced off"
    PROXYTUN_TEST_OFFLOAD=off cargo test -p tests --no-fail-fast -- --test-threads=2

    # The Oakestra workers and the external clients with per-node tunnel
    # keys (the workers publish their keys in their presences).
    heading "cargo test -p tests, per-node keys: oakestra, join, connectivity"
    PROXYTUN_TEST_KEYS=node cargo test -p tests --no-fail-fast --test oakestra --test join --test connectivity -- --test-threads=2

    # What an operator installs: the .deb (release build, man pages,
    # completions), lintian on it, then the package installed and its unit
    # run in a Debian system booted with systemd as PID 1 (docs/packaging.md).
    heading "package: scripts/package.sh --check (cargo-deb, lintian)"
    deb=$(scripts/package.sh --check | tail -n 1)
    heading "package: the unit under a booted systemd (tests/tests/package.rs)"
    PROXYTUN_DEB="$(realpath "$deb")" cargo test -p tests --test package -- --ignored --test-threads=1
fi

heading "all checks passed in $((SECONDS - started)) s"
