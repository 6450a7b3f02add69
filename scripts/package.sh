#!/usr/bin/env bash
# Builds the Debian package: target/debian/proxytun_<version>-1_<arch>.deb
# with cargo-deb (the metadata is [package.metadata.deb] in
# proxytun/Cargo.toml; docs/packaging.md lists what goes where).
#
#   scripts/package.sh           build the release binaries, man pages,
#                                completions and the unit, then the .deb
#   scripts/package.sh --check   the same, then lintian (fails on any error)
#
# Installs cargo-deb (cargo install) and lintian (apt) if missing. Prints the
# package's path on its last line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
esac

find_cargo
# The cargo-deb this script was written against; newer ones work too.
cargo_deb_version=3.8.0
if ! cargo deb --version >/dev/null 2>&1; then
    note "installing cargo-deb $cargo_deb_version"
    cargo install --locked --version "$cargo_deb_version" cargo-deb
fi

note "building release binaries"
cargo build --release --locked -p proxytun -p proxytun-cni

# What the package takes besides the binaries, made from the binary itself
# (man pages and completions from its clap definitions) and from dist/.
out=target/dist
rm -rf "$out"
install -d "$out/man" "$out/completions" "$out/systemd"
target/release/proxytun manpages --out "$out/man" >/dev/null
target/release/proxytun completions bash > "$out/completions/proxytun.bash"
target/release/proxytun completions zsh > "$out/completions/_proxytun"
target/release/proxytun completions fish > "$out/completions/proxytun.fish"
# Debian puts binaries in /usr/bin; the unit in dist/ is for scripts/install.sh.
sed 's#/usr/local/bin/proxytun#/usr/bin/proxytun#' dist/proxytun.service > "$out/systemd/proxytun.service"

note "building the package"
deb=$(cargo deb -p proxytun --no-build --locked --strip 2>/dev/null | tail -n 1)
[ -f "$deb" ] || die "cargo deb printed no package path (got '$deb')"

if [ "$check" -eq 1 ]; then
    command -v lintian >/dev/null 2>&1 || {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lintian >/dev/null
    }
    note "lintian $deb"
    # Errors fail the build; warnings are printed for the record.
    lintian --fail-on error --tag-display-limit 0 "$deb" >&2
fi
echo "$deb"
