#!/usr/bin/env bash
# Installs proxytun on this machine (or into DESTDIR, for packaging):
#   <prefix>/bin/proxytun                 the daemon and CLI
#   /opt/cni/bin/proxytun-cni             the CNI plugin (where runtimes look)
#   /etc/systemd/system/proxytun.service  the unit (Type=notify, hardened)
#   /etc/proxytun/proxytun.toml           an example config, unless one exists
#
# Usage: sudo scripts/install.sh [--prefix /usr/local] [--from DIR]
#   --from DIR  take the binaries from DIR instead of building them
#               (cargo build --release) first.
# Environment: DESTDIR (a staging root), CNI_BIN_DIR (default /opt/cni/bin).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

prefix=/usr/local
from=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --from) from="${2:?--from needs a directory}"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
dest="${DESTDIR:-}"
cni_dir="${CNI_BIN_DIR:-/opt/cni/bin}"

if [ -z "$from" ]; then
    find_cargo
    note "building release binaries"
    cargo build --release --locked -p proxytun -p proxytun-cni
    from=target/release
fi
for b in proxytun proxytun-cni; do
    [ -x "$from/$b" ] || die "$from/$b is missing: build it (cargo build --release -p $b) or pass --from"
done

install -d -m 0755 "$dest$prefix/bin" "$dest$cni_dir" "$dest/etc/systemd/system"
install -d -m 0750 "$dest/etc/proxytun"
install -m 0755 "$from/proxytun" "$dest$prefix/bin/proxytun"
install -m 0755 "$from/proxytun-cni" "$dest$cni_dir/proxytun-cni"
sed "s#/usr/local/bin/proxytun#$prefix/bin/proxytun#" dist/proxytun.service \
    > "$dest/etc/systemd/system/proxytun.service"
chmod 0644 "$dest/etc/systemd/system/proxytun.service"
if [ -e "$dest/etc/proxytun/proxytun.toml" ]; then
    note "keeping the existing /etc/proxytun/proxytun.toml"
else
    install -m 0640 dist/proxytun.toml "$dest/etc/proxytun/proxytun.toml"
    note "wrote /etc/proxytun/proxytun.toml: set node.name, node.index and tunnel.bind"
fi

if [ -z "$dest" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    note "installed; start with: systemctl enable --now proxytun"
else
    note "installed into ${dest:-/}"
fi
