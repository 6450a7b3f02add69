# Shared shell helpers of scripts/demo.sh, scripts/cluster-etcd.sh and
# scripts/test.sh (sourced): messages, dependencies, and the namespace
# topology and teardown the two demos share.
#
# The topology helpers keep their state in the caller's globals, as the
# scripts' EXIT traps need it: NAMESPACES (namespaces we created), PIDS
# (processes we started, by pid), WORK (the temporary directory), and for
# `serve` and `pt` PROBE, BIN, TCP and UDP.

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
    # probes that need a connected socket (ICMP errors, isolation);
    # promtool: the alert rules' check; lintian: the .deb's check;
    # mmdebstrap and systemd-nspawn: the Debian system the package test
    # boots with systemd as PID 1; nft: the daemon's NAT table (published
    # ports, masquerade); mosquitto: the MQTT broker of the Oakestra
    # cluster-manager fixture.
    local tools=(ip ping iperf3 dig curl socat jq etcd etcdctl protoc podman runc busybox systemd-analyze tcpdump python3 promtool lintian mmdebstrap systemd-nspawn nft mosquitto)
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
        die "missing ${missing[*]} and no apt-get: install iproute2 iputils-ping iperf3 dnsutils curl socat jq etcd-server etcd-client protobuf-compiler podman containernetworking-plugins runc busybox-static systemd tcpdump python3 prometheus lintian mmdebstrap systemd-container nftables mosquitto"
    note "installing packages for: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # etcd-server's postinst may try to start a system etcd; without systemd
    # it cannot, and the package still installs. Tests start their own.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        iproute2 iputils-ping iperf3 bind9-dnsutils curl socat jq \
        etcd-server etcd-client protobuf-compiler \
        podman containernetworking-plugins runc busybox-static systemd tcpdump python3 \
        prometheus lintian mmdebstrap systemd-container nftables mosquitto >/dev/null
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

# ---------------------------------------------------------------- topology

# remove_namespaces NS...: deletes each namespace and its /etc/netns
# directory (where the daemon writes containers' resolv.conf; removed on
# detach, but a demo stops the daemons without detaching).
remove_namespaces() {
    local ns
    for ns in "$@"; do
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
}

# remove_stale_namespaces PREFIX: removes namespaces named PREFIX* that a
# killed earlier run left behind.
remove_stale_namespaces() {
    local ns
    for ns in $(ip netns list | awk '{print $1}' | grep "^$1" || true); do
        note "removing a stale namespace from an earlier run: $ns"
        ip netns del "$ns"
    done
    rm -rf /etc/netns/"$1"*
}

# make_switch NS: a namespace with a bridge br0, the underlay the hosts
# plug into.
make_switch() {
    newns "$1"
    ip -n "$1" link add br0 type bridge
    ip -n "$1" link set br0 up
}

# plug_host SWITCH NS ADDR PORT: a veth from SWITCH's bridge (port PORT)
# into NS, address ADDR/24 on NS's end, ul0.
plug_host() {
    local sw=$1 ns=$2 addr=$3 port=$4
    ip -n "$sw" link add "$port" type veth peer name ul0 netns "$ns"
    ip -n "$sw" link set "$port" master br0 up
    ip -n "$ns" addr add "$addr/24" dev ul0
    ip -n "$ns" link set ul0 up
}

# serve NS NAME: starts `ptprobe serve` named NAME in NS (output in
# $WORK/NAME.out) and records its pid.
serve() {
    local ns=$1 name=$2
    ip netns exec "$ns" "$PROBE" serve --name "$name" --tcp "$TCP" --udp "$UDP" >"$WORK/$name.out" 2>&1 &
    PIDS+=("$!")
}

# pt NODE ARGS...: the proxytun CLI against node NODE's API socket.
pt() {
    local n=$1
    shift
    "$BIN" --socket "$WORK/$n.sock" "$@"
}

# ---------------------------------------------------------------- teardown

# stop_pids PID...: SIGTERM, up to 5 s to exit, then SIGKILL; reaps them.
stop_pids() {
    local pid
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# show_log_tails N WHAT NAME...: the last N lines of each $WORK/NAME.log
# there is (on stderr, headed "last lines of WHAT NAME's log"), for the
# failure report.
show_log_tails() {
    local lines=$1 what=$2 name
    shift 2
    [ -n "$WORK" ] || return 0
    for name in "$@"; do
        if [ -f "$WORK/$name.log" ]; then
            echo "--- last lines of $what$name's log ---" >&2
            tail -n "$lines" "$WORK/$name.log" >&2 || true
        fi
    done
}

# teardown [--first-last]: stops every process in PIDS (with --first-last,
# the first one, a store the others use, only once the rest are gone),
# deletes every namespace in NAMESPACES and says what it did. The pids
# still alive afterwards are left in LEFT_PIDS; removing WORK is the
# caller's (it may want the logs first).
teardown() {
    heading "teardown"
    if [ "${1:-}" = --first-last ] && [ "${#PIDS[@]}" -gt 1 ]; then
        stop_pids "${PIDS[@]:1}"
        stop_pids "${PIDS[0]}"
    elif [ "${#PIDS[@]}" -gt 0 ]; then
        stop_pids "${PIDS[@]}"
    fi
    LEFT_PIDS=()
    local pid
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && LEFT_PIDS+=("$pid")
    done
    remove_namespaces "${NAMESPACES[@]}"
    note "stopped ${#PIDS[@]} processes, removed ${#NAMESPACES[@]} namespaces"
}
