#!/usr/bin/env bash
# The proxytun demo: a two-node cluster in network namespaces on this
# machine, services on both nodes, and a client reaching them by ServiceIP
# and by name (the node's DNS resolver).
#
#   sudo ./scripts/demo.sh
#
# Everything lives in namespaces named ptdemo-*; the root namespace gets no
# address, route or traffic. Everything is torn down at the end, also on
# failure or Ctrl-C. Exits non-zero if any step fails.
#
#   ptdemo-a (node a, 192.0.2.1)        ptdemo-b (node b, 192.0.2.2)
#     proxytun, ptbr0, ptun0              proxytun, ptbr0, ptun0
#     ├ ptdemo-client  shop/client/1      ├ ptdemo-web2  shop/web/2
#     ├ ptdemo-web1    shop/web/1         └ ptdemo-db1   shop/db/1 (+ iperf3)
#     └ ptdemo-cache1  shop/cache/1
#              └──── ptdemo-sw: bridge (the underlay) ────┘
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

P=ptdemo-
TCP=7000
UDP=7001
PORT=50103
WORK=""
PIDS=()       # daemons and servers we started, killed by pid on exit
NAMESPACES=() # namespaces we created, deleted on exit
STEP="start"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$rc" -ne 0 ]; then
        printf '\n\033[1;31mFAILED during: %s (exit %s)\033[0m\n' "$STEP" "$rc" >&2
        show_log_tails 20 "node " a b
    fi
    teardown
    [ -n "$WORK" ] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# ------------------------------------------------------------------ setup
require_root
step "installing dependencies"
install_deps
find_cargo

step "building (cargo build --release)"
cargo build --release --workspace --bins
BIN=$ROOT/target/release/proxytun
PROBE=$ROOT/target/release/ptprobe
[ -x "$BIN" ] || die "no $BIN after the build"
[ -x "$PROBE" ] || die "no $PROBE after the build"

remove_stale_namespaces "$P"
WORK=$(mktemp -d /tmp/ptdemo.XXXXXX)

step "building the underlay: two hosts on a bridge"
make_switch "${P}sw"
i=0
for n in a b; do
    i=$((i + 1))
    newns "$P$n"
    plug_host "${P}sw" "$P$n" "192.0.2.$i" "p$n"
    note "host $P$n: underlay 192.0.2.$i"
done

# A host on the underlay that plays the internet: it has no route to the
# container subnets, so only the nodes' masquerade gets replies back to them.
newns "${P}out"
plug_host "${P}sw" "${P}out" 192.0.2.100 pout
note "host ${P}out: underlay 192.0.2.100, the \"outside\" (no route to containers)"

step "one cluster secret for every node (proxytun keygen)"
# Every datagram between the nodes is authenticated with this key
# (tunnel.security = "auth", the default); copy the same file to each node.
"$BIN" keygen --out "$WORK/cluster.key"
note "key $WORK/cluster.key, mode $(stat -c %a "$WORK/cluster.key")"

step "starting the daemons (proxytun run --config ...)"
i=0
for n in a b; do
    i=$((i + 1))
    cat >"$WORK/$n.toml" <<EOF
[node]
name = "$n"
index = $i

[tunnel]
bind = "192.0.2.$i"
port = $PORT
security = "auth"
key_file = "$WORK/cluster.key"

[api]
socket = "$WORK/$n.sock"

[state]
dir = "$WORK/$n-state"

[dns]
domain = "cluster.internal"
# The demo's hosts have no way out: names outside the domain get SERVFAIL.
upstream = []
EOF
    if [ "$n" = a ]; then
        printf '\n[[peer]]\nname = "b"\nendpoint = "192.0.2.2:%s"\n' "$PORT" >>"$WORK/a.toml"
    fi
    RUST_LOG=${RUST_LOG:-info} ip netns exec "$P$n" "$BIN" run --config "$WORK/$n.toml" \
        >"$WORK/$n.log" 2>&1 &
    PIDS+=("$!")
    note "node $n: pid $!, config $WORK/$n.toml"
done
echo "--- config of node a ---"
cat "$WORK/a.toml"

for n in a b; do
    ok=""
    for _ in $(seq 100); do
        if pt "$n" status >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 0.2
    done
    [ -n "$ok" ] || die "node $n did not answer on $WORK/$n.sock"
done
note "both daemons answer on their API sockets"

step "registering the peers"
note "node a has b as a static [[peer]] in its config; node b learns a from the CLI:"
show pt b peer add a "192.0.2.1:$PORT"
show pt a peers

step "starting containers and attaching them"
for c in client web1 web2 cache1 db1; do
    newns "$P$c"
done
serve "${P}web1" web1
serve "${P}web2" web2
serve "${P}cache1" cache1
serve "${P}db1" db1
serve "${P}out" outside
ip netns exec "${P}db1" iperf3 -s -p 5201 >"$WORK/iperf3.out" 2>&1 &
PIDS+=("$!")

# attach NODE CONTAINER APP/SERVICE N [extra args]: prints the instance JSON.
attach() {
    local n=$1 c=$2 svc=$3 num=$4
    shift 4
    pt "$n" attach "$svc" --instance "$num" --netns "/run/netns/$P$c" "$@" --json
}
# remote NODE-WHERE-REGISTERED HOME-NODE INSTANCE-JSON SERVICE-IP
remote() {
    local n=$1 home=$2 json=$3 sip=$4
    local key
    key="$(jq -r '"\(.key.app)/\(.key.service)/\(.key.number)"' <<<"$json")"
    show pt "$n" remote add "$key" --node "$home" \
        --ns-addr "$(jq -r .ns_addr.v4 <<<"$json")" \
        --instance-ip "$(jq -r .instance_ip.v4 <<<"$json")" \
        --service-ip "$sip"
}
rr_of() {
    pt "$1" services --json | jq -r --arg s "$2" \
        '.[] | select((.app // .name.app) + "/" + (.service // .name.service) == $s) | .rr_ip.'"$3"
}

note "shop/web: instance 1 on node a, instance 2 on node b, one ServiceIP"
note "shop/web/1 also published on node a's port 8080 (attach --publish 8080:$TCP/tcp)"
WEB1=$(attach a web1 shop/web 1 --publish "8080:$TCP/tcp")
WEB_IP=$(rr_of a shop/web v4)
WEB2=$(attach b web2 shop/web 2 --service-ip "$WEB_IP")
remote a b "$WEB2" "$WEB_IP"
remote b a "$WEB1" "$WEB_IP"

note "shop/cache: one instance on node a"
CACHE1=$(attach a cache1 shop/cache 1)
CACHE_IP=$(rr_of a shop/cache v4)
remote b a "$CACHE1" "$CACHE_IP"

note "shop/db: one instance on node b"
DB1=$(attach b db1 shop/db 1)
DB_IP=$(rr_of b shop/db v4)
remote a b "$DB1" "$DB_IP"

note "the client is an instance too (shop/client/1 on node a), registered only there"
attach a client shop/client 1 >/dev/null

WEB_IP6=$(rr_of a shop/web v6)
CACHE_IP6=$(rr_of a shop/cache v6)
DB_IP6=$(rr_of a shop/db v6)
show pt a services
show pt a instances
echo "--- inside the client container ---"
show in_ns "${P}client" ip -br addr show
show in_ns "${P}client" ip route
show in_ns "${P}client" ip -6 route

# Give IPv6 duplicate address detection a moment on the fresh interfaces.
for _ in $(seq 50); do
    in_ns "${P}client" "$PROBE" tcp-hello "[$CACHE_IP6]:$TCP" --timeout 1 >/dev/null 2>&1 && break
    sleep 0.2
done

probe_all() {
    local label=$1 v4=$2 v6=$3 want=$4 ip got
    for ip in "$v4" "$v6"; do
        local hp=$ip
        [[ $ip == *:* ]] && hp="[$ip]"
        echo
        note "$label, $ip"
        got=$(show in_ns "${P}client" "$PROBE" tcp-hello "$hp:$TCP")
        echo "$got"
        [ "$(head -n1 <<<"$got")" = "$want" ] || die "TCP to $ip answered by $(head -n1 <<<"$got"), expected $want"
        got=$(show in_ns "${P}client" "$PROBE" udp-hello "$hp:$UDP")
        echo "$got"
        [ "$(head -n1 <<<"$got")" = "$want" ] || die "UDP to $ip answered by $(head -n1 <<<"$got"), expected $want"
        show in_ns "${P}client" ping -n -c 3 -i 0.2 -W 2 "$ip"
    done
}

step "client -> shop/cache on the SAME node (TCP, UDP, ping; IPv4 and IPv6)"
probe_all "same node" "$CACHE_IP" "$CACHE_IP6" cache1

step "client -> shop/db on the OTHER node, through the tunnel (TCP, UDP, ping; IPv4 and IPv6)"
probe_all "other node" "$DB_IP" "$DB_IP6" db1

step "client -> shop/web BY NAME (the node's resolver, through the container's resolv.conf)"
note "attaching the client wrote its resolv.conf (ip netns exec mounts /etc/netns/${P}client/resolv.conf there):"
show in_ns "${P}client" cat /etc/resolv.conf
got=$(show in_ns "${P}client" getent hosts web.shop)
echo "$got"
[[ " $WEB_IP $WEB_IP6 " == *" $(awk '{print $1}' <<<"$got") "* ]] ||
    die "web.shop resolved to '$got', expected $WEB_IP or $WEB_IP6"
note "dig, the search list and every kind of name (node a's resolver on its bridge, 10.18.1.1):"
show in_ns "${P}client" dig +search +noall +answer web.shop A web.shop AAAA
show in_ns "${P}client" dig +noall +answer closest.web.shop.svc.cluster.internal A \
    1.web.shop.svc.cluster.internal A 2.web.shop.svc.cluster.internal A
show in_ns "${P}client" dig +noall +answer +additional web.shop.svc.cluster.internal SRV
show in_ns "${P}client" dig +noall +answer -x "$WEB_IP"
note "an unknown service is NXDOMAIN (with the zone's SOA):"
got=$(show in_ns "${P}client" dig +noall +comments +authority nope.shop.svc.cluster.internal A)
grep -E 'status|SOA' <<<"$got"
grep -q 'status: NXDOMAIN' <<<"$got" || die "nope.shop.svc.cluster.internal is not NXDOMAIN"
note "connections by name (ptprobe and curl resolve web.shop with glibc):"
for _ in 1 2; do
    got=$(show in_ns "${P}client" "$PROBE" tcp-hello "web.shop:$TCP")
    echo "$got"
    case "$(head -n1 <<<"$got")" in
    web1 | web2) ;;
    *) die "web.shop:$TCP answered by $(head -n1 <<<"$got"), expected web1 or web2" ;;
    esac
done
got=$(show in_ns "${P}client" curl --http0.9 -sS --max-time 5 "http://web.shop:$TCP/")
echo "$got"
[[ $got == web1 || $got == web2 ]] || die "curl http://web.shop:$TCP/ got '$got'"
show in_ns "${P}client" "$PROBE" udp-hello "db.shop:$UDP"

step "round robin: 6 new connections to shop/web ($WEB_IP), instances on both nodes"
seq_names=()
for _ in 1 2 3 4 5 6; do
    out=$(in_ns "${P}client" "$PROBE" tcp-hello "$WEB_IP:$TCP")
    seq_names+=("$(head -n1 <<<"$out")")
done
echo "answered by: ${seq_names[*]}"
for k in 1 2 3 4 5; do
    [ "${seq_names[$k]}" != "${seq_names[$((k - 1))]}" ] ||
        die "not a strict rotation: ${seq_names[*]}"
done
note "a strict rotation over web1 (node a) and web2 (node b)"
seq_names=()
for _ in 1 2 3 4; do
    out=$(in_ns "${P}client" "$PROBE" tcp-hello "[$WEB_IP6]:$TCP")
    seq_names+=("$(head -n1 <<<"$out")")
done
echo "over IPv6 ($WEB_IP6): ${seq_names[*]}"

step "throughput across nodes: iperf3 to shop/db ($DB_IP) for 3 s"
show in_ns "${P}client" iperf3 -c "$DB_IP" -p 5201 -t 3 -f m
show in_ns "${P}client" "$PROBE" tcp-send "$DB_IP:$TCP" --bytes 50000000

step "published port: the underlay (host ${P}out) -> node a 192.0.2.1:8080 -> shop/web/1"
got=$(show in_ns "${P}out" "$PROBE" tcp-hello "192.0.2.1:8080")
echo "$got"
[ "$(head -n1 <<<"$got")" = web1 ] || die "192.0.2.1:8080 answered by $(head -n1 <<<"$got"), expected web1"
show ip netns exec "${P}a" nft list table inet proxytun

step "outbound NAT: the client container -> the outside host 192.0.2.100 (masqueraded as node a)"
got=$(show in_ns "${P}client" "$PROBE" tcp-hello "192.0.2.100:$TCP")
echo "$got"
[ "$(head -n1 <<<"$got")" = outside ] || die "192.0.2.100 answered by $(head -n1 <<<"$got"), expected outside"
grep -q "server_saw=192.0.2.1:" <<<"$got" || die "the outside host did not see node a's address: $got"

step "what the daemon shows: proxytun status"
show pt a status
note "the resolver's part of GET /v1/status:"
pt a status --json | jq '.dns' 2>/dev/null || true

step "proxytun flows (node a)"
show pt a flows

step "proxytun counters (node a)"
show pt a counters

step "health and Prometheus metrics (node a's admin listener, 127.0.0.1:9110 in its namespace)"
show in_ns "${P}a" curl -sf http://127.0.0.1:9110/live
show in_ns "${P}a" curl -sf http://127.0.0.1:9110/ready
note "a few of the series (curl -s http://127.0.0.1:9110/metrics):"
metrics=$(in_ns "${P}a" curl -sf http://127.0.0.1:9110/metrics)
grep -E '^proxytun_(packets_total|bytes_total|flows_created_total|peer_up|peer_rtt_seconds|dns_answers_total)' <<<"$metrics" ||
    die "no proxytun series in /metrics"
grep -qE '^proxytun_flows_created_total [1-9]' <<<"$metrics" ||
    die "the metrics show no flows after the traffic above"

STEP="teardown"
heading "demo finished: all steps passed"
