#!/usr/bin/env bash
# A three-node proxytun cluster on etcd, in network namespaces on this
# machine, with one command:
#
#   sudo ./scripts/cluster-etcd.sh            # runs, shows, tears down
#   sudo KEEP=1 ./scripts/cluster-etcd.sh     # waits for Enter before teardown
#   sudo LOGS=/tmp/ptc-logs ./scripts/cluster-etcd.sh  # keeps etcd's and the daemons' logs
#
# etcd runs in a namespace of its own on the underlay. Three daemons with
# `[store] backend = "etcd"`, no node.index and no [[peer]], start at the
# same moment and lease their node index (subnet) from it. shop/web runs on
# a, b and c, shop/db only on c; a client on a reaches them by ServiceIP
# without any API call to a beyond attaching the client. Then the script
# shows the closest policy, a node killed with -9 (new flows avoid it long
# before its etcd lease expires), the node coming back, and the closest
# ServiceIP moving to a peer when a's own instance goes away.
#
# Everything lives in namespaces named ptc-*; the root namespace gets no
# address, route or traffic. Everything is torn down at the end, also on
# failure or Ctrl-C. Prints PASS or FAIL per step; exits 0 only if every
# step passed.
#
#   ptc-etcd (10.77.0.254:2379)
#   ptc-a (10.77.0.1)          ptc-b (10.77.0.2)        ptc-c (10.77.0.3)
#     ├ ptc-client shop/client   └ ptc-webb shop/web      ├ ptc-webc shop/web
#     └ ptc-weba   shop/web                               └ ptc-dbc  shop/db
#              └──────────── ptc-sw: bridge (the underlay) ────────────┘
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

P=ptc-
TCP=7000
UDP=7001
PORT=50103
ETCD_IP=10.77.0.254
TTL=8             # store.lease_ttl_secs: a dead node's instances expire after this
KEEPALIVE_MS=500  # tunnel.keepalive_ms
PEER_TIMEOUT_MS=2000 # tunnel.peer_timeout_ms: a silent peer is down after this
NODES=(a b c)
WORK=""
PIDS=()       # etcd, daemons and servers we started, killed by pid on exit
NAMESPACES=() # namespaces we created, deleted on exit
declare -A NODE_PID=()
STEP="start"
PASSED=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$rc" -ne 0 ]; then
        printf '\n\033[1;31mFAIL: %s (exit %s)\033[0m\n' "$STEP" "$rc" >&2
        show_log_tails 25 "" etcd "${NODES[@]}"
    fi
    # Servers and daemons first, etcd (the first pid) once they are gone,
    # so the daemons do not see their store vanish while stopping.
    teardown --first-last
    if [ -n "$WORK" ] && [ -n "${LOGS:-}" ]; then
        mkdir -p "$LOGS" && cp "$WORK"/*.log "$LOGS"/ 2>/dev/null || true
        note "logs copied to $LOGS"
    fi
    [ -n "$WORK" ] && rm -rf "$WORK"
    if [ "${#LEFT_PIDS[@]}" -gt 0 ]; then
        printf '\033[1;31mFAIL: processes still running after teardown: %s\033[0m\n' "${LEFT_PIDS[*]}" >&2
        [ "$rc" -ne 0 ] || rc=1
    fi
    if [ "${#PASSED[@]}" -gt 0 ]; then
        heading "summary"
        local s
        for s in "${PASSED[@]}"; do
            printf '\033[1;32mPASS\033[0m  %s\n' "$s"
        done
        if [ "$rc" -ne 0 ]; then
            printf '\033[1;31mFAIL\033[0m  %s\n' "$STEP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Marks the current step as passed.
pass() {
    PASSED+=("$STEP")
    printf '\033[1;32mPASS: %s\033[0m\n' "$STEP"
}


# Milliseconds since the epoch; secs_since T: seconds since T, one decimal.
now_ms() {
    echo $(($(date +%s%N) / 1000000))
}
secs_since() {
    local d=$(($(now_ms) - $1))
    printf '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}

# Removes PID from PIDS (after we killed and reaped it ourselves), so the
# teardown never signals a pid the kernel may have handed to someone else.
forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do
        [ "$p" = "$1" ] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# ------------------------------------------------------------------ setup
require_root
step "dependencies and build"
install_deps
find_cargo
ETCD=$(command -v etcd)
ETCDCTL=$(command -v etcdctl)
cargo build --release -p proxytun -p tests --bins
BIN=$ROOT/target/release/proxytun
PROBE=$ROOT/target/release/ptprobe
[ -x "$BIN" ] || die "no $BIN after the build"
[ -x "$PROBE" ] || die "no $PROBE after the build"
note "etcd: $("$ETCD" --version | head -n1)"
pass

remove_stale_namespaces "$P"
WORK=$(mktemp -d /tmp/ptc.XXXXXX)

step "underlay: etcd and three hosts on a bridge"
make_switch "${P}sw"
newns "${P}etcd"
plug_host "${P}sw" "${P}etcd" "$ETCD_IP" petcd
note "host ${P}etcd: underlay $ETCD_IP"
i=0
for n in "${NODES[@]}"; do
    i=$((i + 1))
    newns "$P$n"
    plug_host "${P}sw" "$P$n" "10.77.0.$i" "p$n"
    note "host $P$n: underlay 10.77.0.$i"
done
pass

step "etcd in ${P}etcd ($ETCD_IP:2379)"
ip netns exec "${P}etcd" "$ETCD" --name ptc --data-dir "$WORK/etcd-data" \
    --listen-client-urls "http://$ETCD_IP:2379" \
    --advertise-client-urls "http://$ETCD_IP:2379" \
    --listen-peer-urls "http://127.0.0.1:2380" \
    --initial-advertise-peer-urls "http://127.0.0.1:2380" \
    --initial-cluster "ptc=http://127.0.0.1:2380" \
    --log-level warn >"$WORK/etcd.log" 2>&1 &
PIDS+=("$!")
note "etcd: pid $!"
etcdctl() {
    in_ns "${P}etcd" env ETCDCTL_API=3 "$ETCDCTL" --endpoints "http://$ETCD_IP:2379" "$@"
}
ok=""
for _ in $(seq 100); do
    if etcdctl endpoint health >/dev/null 2>&1; then
        ok=1
        break
    fi
    sleep 0.2
done
[ -n "$ok" ] || die "etcd did not become healthy"
show etcdctl endpoint status -w table
pass

# ---------------------------------------------------------------- daemons
step "one cluster secret for every node (proxytun keygen)"
# The tunnel is authenticated by default (tunnel.security = "auth"): every
# node reads the same key file.
"$BIN" keygen --out "$WORK/cluster.key"
pass

i=0
for n in "${NODES[@]}"; do
    i=$((i + 1))
    cat >"$WORK/$n.toml" <<EOF
[node]
name = "$n"

[store]
backend = "etcd"
endpoints = ["http://$ETCD_IP:2379"]
lease_ttl_secs = $TTL

[tunnel]
bind = "10.77.0.$i"
port = $PORT
key_file = "$WORK/cluster.key"
keepalive_ms = $KEEPALIVE_MS
peer_timeout_ms = $PEER_TIMEOUT_MS

[api]
socket = "$WORK/$n.sock"

[state]
dir = "$WORK/$n-state"
EOF
done

# start_node N: starts node N's daemon in the background.
start_node() {
    local n=$1
    RUST_LOG=${RUST_LOG:-info} ip netns exec "$P$n" "$BIN" run --config "$WORK/$n.toml" \
        >>"$WORK/$n.log" 2>&1 &
    PIDS+=("$!")
    NODE_PID[$n]=$!
    note "node $n: pid $!, config $WORK/$n.toml, log $WORK/$n.log"
}

# wait_api N: waits until node N answers on its API socket.
wait_api() {
    local n=$1
    for _ in $(seq 150); do
        pt "$n" status >/dev/null 2>&1 && return 0
        kill -0 "${NODE_PID[$n]}" 2>/dev/null || die "node $n's daemon exited"
        sleep 0.2
    done
    die "node $n did not answer on $WORK/$n.sock"
}

subnet_of() {
    pt "$1" status | awk '$1 == "subnet" {print $2}'
}

step "three daemons started in parallel lease three distinct subnets"
echo "--- config of node a (b and c differ in name, bind, socket, state) ---"
cat "$WORK/a.toml"
for n in "${NODES[@]}"; do
    start_node "$n"
done
for n in "${NODES[@]}"; do
    wait_api "$n"
done
note "the three daemons answer on their API sockets"
declare -A SUBNET=()
for n in "${NODES[@]}"; do
    line=$(pt "$n" status | grep -E '^subnet ')
    echo "node $n: $line"
    SUBNET[$n]=$(awk '{print $2}' <<<"$line")
done
[ "$(printf '%s\n' "${SUBNET[@]}" | sort -u | wc -l)" -eq 3 ] ||
    die "the nodes' subnets are not distinct: ${SUBNET[*]}"
show etcdctl get --prefix /proxytun/subnets/
show etcdctl get --prefix /proxytun/nodes/
[ "$(etcdctl get --prefix --print-value-only /proxytun/subnets/ | sort -u | grep -c .)" -eq 3 ] ||
    die "etcd does not hold 3 subnet leases for 3 distinct nodes"
show pt a status
pass

# ------------------------------------------------------------- containers
step "containers attached: shop/web on a, b, c; shop/db on c; the client on a"
for c in client weba webb webc dbc; do
    newns "$P$c"
done
for c in weba webb webc dbc; do
    serve "$P$c" "$c"
done
# attach NODE CONTAINER APP/SERVICE: no numbers, no ServiceIPs: etcd allocates.
attach() {
    local n=$1 c=$2 svc=$3
    shift 3
    show pt "$n" attach "$svc" --netns "/run/netns/$P$c" "$@"
}
WEBA=$(attach a weba shop/web --json)
WEBA_KEY=$(jq -r '"\(.key.app)/\(.key.service)/\(.key.number)"' <<<"$WEBA")
jq -r '"attached           \(.key.app)/\(.key.service)/\(.key.number)\nnamespace address  \(.ns_addr.v4)  \(.ns_addr.v6)\ninstance IP        \(.instance_ip.v4)  \(.instance_ip.v6)"' <<<"$WEBA"
attach b webb shop/web
attach c webc shop/web
attach c dbc shop/db
attach a client shop/client
show etcdctl get --prefix --keys-only /proxytun/instances/ | grep .
pass

# key_count SUBPREFIX: how many keys etcd holds under /proxytun/SUBPREFIX.
key_count() {
    etcdctl get --prefix --keys-only "/proxytun/$1" | grep -c . || true
}
# show_key_counts: prints the number of keys per kind.
show_key_counts() {
    local k
    printf '\033[0;33m$ etcdctl get --prefix --keys-only /proxytun/ (counted per kind)\033[0m\n' >&2
    for k in subnets nodes alive services vips instances; do
        printf '  %-10s %s\n' "$k/" "$(key_count "$k/")"
    done
    printf '  %-10s %s\n' total "$(key_count "")"
}

step "what etcd holds: key counts under /proxytun/"
show_key_counts
# 3 nodes; 3 services (web, db, client); 5 instances (3 web, db, client);
# vips: a round-robin and a closest ServiceIP per service + one per instance.
want=(subnets/:3 nodes/:3 alive/:3 services/:3 instances/:5 vips/:11)
for kv in "${want[@]}"; do
    got=$(key_count "${kv%%:*}")
    [ "$got" -eq "${kv##*:}" ] || die "etcd has $got keys under /proxytun/${kv%%:*}, expected ${kv##*:}"
done
note "as expected: ${want[*]}"
pass

# The ServiceIPs come from etcd: the same on every node that knows them.
sip_of() {
    pt "$1" services --json | jq -r --arg s "$2" \
        '.[] | select((.app // .name.app) + "/" + (.service // .name.service) == $s) | .'"$3"'.v4'
}
RR=$(sip_of b shop/web rr_ip)
CLOSEST=$(sip_of b shop/web closest_ip)
DB=$(sip_of c shop/db rr_ip)
for v in "$RR" "$CLOSEST" "$DB"; do
    [ -n "$v" ] && [ "$v" != null ] || die "node b or c shows no ServiceIP for shop/web or shop/db"
done
[ "$(sip_of c shop/web rr_ip)" = "$RR" ] || die "nodes b and c disagree on shop/web's ServiceIP"
[ "$(sip_of a shop/web closest_ip)" = "$CLOSEST" ] || die "nodes a and b disagree on shop/web's closest ServiceIP"

# tcp_name ADDR: the name of the server answering a new TCP connection,
# retried a few times (a flow to a dead peer's instance, the first packet
# to a ServiceIP a node does not know yet).
tcp_name() {
    local out
    for _ in $(seq 10); do
        if out=$(in_ns "${P}client" "$PROBE" tcp-hello "$1:$TCP" --timeout 3 2>/dev/null); then
            head -n1 <<<"$out"
            return 0
        fi
        sleep 0.2
    done
    return 1
}
# tcp_names ADDR N: N new connections, the answering names on one line.
tcp_names() {
    local names=() k
    for ((k = 0; k < $2; k++)); do
        names+=("$(tcp_name "$1")") || return 1
    done
    echo "${names[*]}"
}
# strict_rotation NAMES...: every name differs from the one before.
strict_rotation() {
    local prev="" x
    for x in "$@"; do
        [ "$x" != "$prev" ] || return 1
        prev=$x
    done
}
# no_service N: node N's count of packets dropped for an unknown ServiceIP.
no_service() {
    pt "$1" counters --json | jq -r '.drops.no_service // 0'
}

step "client on a -> shop/db ($DB), which runs only on c: a learns it from etcd"
note "no API call to node a for shop/db: a has never heard of it"
if pt a services --json | jq -e '.[] | select((.app // .name.app) == "shop" and (.service // .name.service) == "db")' >/dev/null; then
    die "node a already lists shop/db before any traffic"
fi
miss0=$(no_service a)
t0=$(now_ms)
got=$(show in_ns "${P}client" "$PROBE" tcp-hello "$DB:$TCP" --timeout 5) || die "no answer from $DB"
took=$(secs_since "$t0")
echo "$got"
[ "$(head -n1 <<<"$got")" = dbc ] || die "shop/db answered by $(head -n1 <<<"$got"), expected dbc"
miss1=$(no_service a)
note "answered by dbc after $took s; a's no_service drops: $miss0 -> $miss1 (the first SYN, which triggered the etcd lookup)"
[ "$miss1" -gt "$miss0" ] || die "node a counted no no_service drop: it cannot have learned shop/db lazily"
show pt a services
got=$(show in_ns "${P}client" "$PROBE" udp-hello "$DB:$UDP" --timeout 3) || die "no UDP answer from $DB"
echo "$got"
[ "$(head -n1 <<<"$got")" = dbc ] || die "UDP to shop/db answered by $got"
pass

step "client on a -> shop/web's round-robin ServiceIP ($RR): rotates over a, b, c"
first=$(tcp_name "$RR") || die "no answer from $RR"
note "first connection answered by $first"
read -r -a names <<<"$(tcp_names "$RR" 6)" || die "no answer from $RR"
echo "answered by: ${names[*]}"
for w in weba webb webc; do
    [[ " ${names[*]} " == *" $w "* ]] || die "round robin did not reach $w: ${names[*]}"
done
strict_rotation "${names[@]}" || die "not a rotation: ${names[*]}"
pass

step "client on a -> shop/web's closest ServiceIP ($CLOSEST): a's own instance every time"
show pt a peers
read -r -a names <<<"$(tcp_names "$CLOSEST" 6)" || die "no answer from $CLOSEST"
echo "answered by: ${names[*]}"
for x in "${names[@]}"; do
    [ "$x" = weba ] || die "closest went to $x, expected weba (on the client's own node)"
done
pass

# ------------------------------------------------------------ node failure
# peer_state N PEER: "up"/"down"/"unknown" for PEER as node N sees it.
peer_state() {
    pt "$1" peers --json | jq -r --arg p "$2" \
        '.[] | select(.name == $p) | if .alive == true then "up" elif .alive == false then "down" else "unknown" end'
}

step "kill -9 node c: new flows to $RR avoid it long before its lease (${TTL} s) expires"
show kill -KILL "${NODE_PID[c]}"
tkill=$(now_ms)
wait "${NODE_PID[c]}" 2>/dev/null || true
forget_pid "${NODE_PID[c]}"
ok=""
for _ in $(seq 100); do
    if [ "$(peer_state a c)" = down ]; then
        ok=1
        break
    fi
    sleep 0.1
done
tdown=$(secs_since "$tkill")
[ -n "$ok" ] || die "node a never saw c down"
note "node a sees c down $tdown s after the kill (peer_timeout_ms = $PEER_TIMEOUT_MS)"
show pt a peers
read -r -a names <<<"$(tcp_names "$RR" 6)" || die "no answer from $RR"
elapsed=$(secs_since "$tkill")
echo "answered by: ${names[*]}"
alive_c=$(key_count alive/c)
note "$elapsed s after the kill; etcd still holds /proxytun/alive/c: $([ "$alive_c" -eq 1 ] && echo yes || echo no)"
for x in "${names[@]}"; do
    [ "$x" = weba ] || [ "$x" = webb ] || die "a new flow went to $x while c is down"
done
[[ " ${names[*]} " == *" weba "* && " ${names[*]} " == *" webb "* ]] ||
    die "the flows did not reach both weba and webb: ${names[*]}"
[ "$alive_c" -eq 1 ] ||
    die "c's lease had already expired ($elapsed s): this did not show the liveness check alone"
pass

step "c's lease expires: etcd drops its instances"
ok=""
for _ in $(seq $((TTL * 10 + 50))); do
    if [ "$(key_count alive/c)" -eq 0 ] && [ "$(key_count instances/shop/db/)" -eq 0 ]; then
        ok=1
        break
    fi
    sleep 0.1
done
[ -n "$ok" ] || die "c's alive key or instances are still in etcd $((TTL + 5)) s after the kill"
note "gone $(secs_since "$tkill") s after the kill"
show etcdctl get --prefix --keys-only /proxytun/instances/ | grep .
show_key_counts
show pt a services
pass

step "restart node c: it gets its subnet back and re-registers its instances"
start_node c
wait_api c
line=$(pt c status | grep -E '^subnet ')
echo "node c: $line"
[ "$(awk '{print $2}' <<<"$line")" = "${SUBNET[c]}" ] || die "c came back with another subnet: $line (was ${SUBNET[c]})"
ok=""
for _ in $(seq 100); do
    if [ "$(key_count alive/c)" -eq 1 ] && [ "$(key_count instances/)" -eq 5 ] &&
        [ "$(peer_state a c)" = up ]; then
        ok=1
        break
    fi
    sleep 0.1
done
[ -n "$ok" ] || die "c is not back: alive/c $(key_count alive/c), instances $(key_count instances/), a sees c $(peer_state a c)"
show etcdctl get --prefix --keys-only /proxytun/instances/ | grep .
show pt a peers
# a's table follows etcd's watch; give it a moment to see c's instances again.
ok=""
for _ in $(seq 50); do
    read -r -a names <<<"$(tcp_names "$RR" 3)" || die "no answer from $RR"
    if [[ " ${names[*]} " == *" webc "* ]]; then
        ok=1
        break
    fi
    sleep 0.2
done
[ -n "$ok" ] || die "no new flow to $RR reached webc after c came back"
read -r -a names <<<"$(tcp_names "$RR" 6)" || die "no answer from $RR"
echo "round robin ($RR) answered by: ${names[*]}"
for w in weba webb webc; do
    [[ " ${names[*]} " == *" $w "* ]] || die "round robin did not reach $w: ${names[*]}"
done
got=$(tcp_name "$DB") || die "no answer from shop/db ($DB)"
echo "shop/db ($DB) answered by: $got"
[ "$got" = dbc ] || die "shop/db answered by $got"
pass

# ------------------------------------------------------ closest to a peer
# rtt_of N PEER: PEER's smoothed RTT in µs as node N measures it.
rtt_of() {
    pt "$1" peers --json | jq -r --arg p "$2" '.[] | select(.name == $p) | .rtt_us // "none"'
}
# lower_rtt: "webb" or "webc", the server on the peer with the lower RTT
# seen from a, or "either" if one of them is not measured.
lower_rtt() {
    local b c
    b=$(rtt_of a b)
    c=$(rtt_of a c)
    if [ "$b" = none ] || [ "$c" = none ]; then
        echo either
    elif [ "$b" -lt "$c" ]; then
        echo webb
    elif [ "$c" -lt "$b" ]; then
        echo webc
    else
        echo either
    fi
}

step "detach a's shop/web: the closest ServiceIP ($CLOSEST) goes to b or c, the lower RTT"
show pt a detach "$WEBA_KEY"
show pt a peers
judged=0
answers=()
for _ in 1 2 3 4 5 6; do
    before=$(lower_rtt)
    got=$(tcp_name "$CLOSEST") || die "no answer from $CLOSEST"
    after=$(lower_rtt)
    answers+=("$got")
    if [ "$before" = "$after" ] && [ "$before" != either ]; then
        judged=$((judged + 1))
        [ "$got" = "$before" ] ||
            die "closest went to $got, but $before's node had the lower RTT before and after"
        echo "answered by: $got (lower RTT: $before)"
    else
        echo "answered by: $got (RTTs of b and c crossed during the connection: either is right)"
    fi
    [ "$got" = webb ] || [ "$got" = webc ] || die "closest went to $got after a's instance was detached"
done
show pt a peers
note "answers: ${answers[*]}; $judged of 6 checked against the lower RTT"
[ "$judged" -gt 0 ] || die "the RTTs of b and c crossed on every connection: nothing was checked"
read -r -a names <<<"$(tcp_names "$RR" 4)" || die "no answer from $RR"
echo "round robin ($RR) now answered by: ${names[*]}"
for x in "${names[@]}"; do
    [ "$x" != weba ] || die "the round robin still reached the detached weba"
done
pass

step "final state: etcd keys and node a's status"
show_key_counts
show pt a status
show pt a counters
pass

if [ -n "${KEEP:-}" ]; then
    note "KEEP is set: the cluster stays up; API sockets: $WORK/{a,b,c}.sock"
    note "e.g. $BIN --socket $WORK/a.sock services"
    read -r -p "press Enter to tear everything down " _
fi

STEP="teardown"
heading "cluster-etcd finished: all steps passed"
