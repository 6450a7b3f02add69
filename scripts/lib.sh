# Shared shell helpers of scripts/demo.sh and scripts/test.sh (sourced).

# Prints a heading.
heading() {
    printf '\n\033[1;34m==== %s ====\033[0m\n' "$*"
}

# Prints an informational line.
note() {
    printf '\033[0;36m-- %s\033[0m\n' "$*"
}

# Prints an error and exits.
die() {
    printf '\033[1;31merror: %s\033[0m\n' "$*" >&2
    exit 1
}

# Requires root (namespaces, veths, TUN devices).
require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        die "run this as root: sudo $0"
    fi
}

# Installs the system packages the demo and tests use, unless all present.
install_deps() {
    # etcd/etcdctl: the cluster store the etcd tests and the cluster demo
    # run; protoc: etcd-client's build compiles etcd's protobuf files;
    # podman, runc and busybox: the CNI test runs a real container from a
    # local image (runc: crun refuses this machine's hybrid cgroups); systemd-analyze: the unit file's check;
    # tcpdump: the underlay capture of the encrypted-tunnel test; python3: UDP
    # probes that need a connected socket (ICMP errors, isolation).
    local tools=(ip ping iperf3 dig curl socat jq etcd etcdctl protoc podman runc busybox systemd-analyze tcpdump python3)
    local missing=()
    local t
    for t in "${tools[@]}"; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        note "system tools present: ${tools[*]}"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "missing ${missing[*]} and no apt-get: install iproute2 iputils-ping iperf3 dnsutils curl socat jq etcd-server etcd-client protobuf-compiler podman containernetworking-plugins runc busybox-static systemd tcpdump python3"
    note "installing packages for: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # etcd-server's postinst may try to start a system etcd; without systemd
    # it cannot, and the package still installs. Tests start their own.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        iproute2 iputils-ping iperf3 bind9-dnsutils curl socat jq \
        etcd-server etcd-client protobuf-compiler \
        podman containernetworking-plugins runc busybox-static systemd tcpdump python3 >/dev/null
}

# Makes cargo reachable under sudo, which resets PATH: looks in the
# invoking user's ~/.cargo/bin.
find_cargo() {
    if command -v cargo >/dev/null 2>&1; then
        return 0
    fi
    local home=""
    if [ -n "${SUDO_USER:-}" ]; then
        home="$(getent passwd "$SUDO_USER" | cut -d: -f6)"
    fi
    local d
    for d in "${CARGO_HOME:-}" "$home/.cargo" "$HOME/.cargo"; do
        if [ -n "$d" ] && [ -x "$d/bin/cargo" ]; then
            export PATH="$d/bin:$PATH"
            if [ -z "${RUSTUP_HOME:-}" ] && [ -d "$(dirname "$d")/.rustup" ]; then
                export RUSTUP_HOME="$(dirname "$d")/.rustup"
            fi
            return 0
        fi
    done
    die "cargo not found: install Rust (https://rustup.rs) or put cargo on PATH"
}

# step NAME: starts a named step of a script (a heading; `STEP` keeps the
# name so a failure can say where it happened).
step() {
    STEP="$*"
    heading "$*"
}

# Shows a command, then runs it.
show() {
    printf '\033[0;33m$ %s\033[0m\n' "$*" >&2
    "$@"
}

# newns NAME: creates a namespace with loopback up and records it in the
# caller's NAMESPACES array, which the caller's cleanup deletes.
newns() {
    ip netns add "$1"
    NAMESPACES+=("$1")
    ip -n "$1" link set lo up
}

# in_ns NS CMD...: runs CMD inside namespace NS.
in_ns() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}
