#!/usr/bin/env bash
# flowaudit demo: a simulated UTMStack v11 manager in network namespaces,
# real servers and real clients, recorded by flowaudit and audited against
# the vendor's documented matrix. Run as root: `make demo`.
#
# Environment:
#   MATRIX, ROLE, CONDITIONS  matrix to audit against (default utmstack@11, manager, netflow)
#   SITE                      site file (default testdata/sites/utmstack11-demo.yaml for UTMStack v11)
#   DURATION                  recording window (default 20s)
#   OUT                       output directory (default ./demo-out)
#   FLOWAUDIT                 flowaudit binary (default bin/flowaudit, built if missing)
#   DEMO_QUIET=1              do not print the reports (the demo test reads the files)
#   CAPTURE=FILE              also write a pcap of the appliance's eth0 (tcpdump, 128-byte
#                             snap length) for the recording window; testdata/captures/ was made so
#
# Everything happens inside namespaces named fademo-*; traffic only goes to
# 192.0.2.0/24 and 2001:db8::/64 (documentation ranges) inside the lab. The
# lab is torn down on exit, on error and on Ctrl-C.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
MATRIX=${MATRIX:-utmstack@11}
ROLE=${ROLE:-manager}
if [[ -z ${CONDITIONS+x} ]]; then
  [[ $MATRIX == utmstack@11* ]] && CONDITIONS=netflow || CONDITIONS=""
fi
if [[ -z ${SITE+x} ]]; then
  [[ $MATRIX == utmstack@11* ]] && SITE=$root/testdata/sites/utmstack11-demo.yaml || SITE=""
fi
DURATION=${DURATION:-20s}
OUT=${OUT:-$PWD/demo-out}
FLOWAUDIT=${FLOWAUDIT:-$root/bin/flowaudit}
NS=fademo
HOSTS=(appliance admin agent netdev rogue vendor)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, XDP): sudo make demo"

# --- dependencies ---------------------------------------------------------
need_pkgs=()
for pair in socat:socat nmap:nmap nft:nftables openssl:openssl curl:curl logger:bsdutils \
            nc:netcat-openbsd ssh:openssh-client sshd:openssh-server ip:iproute2 timeout:coreutils \
            dnsmasq:dnsmasq; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
  say "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
if [[ ! -x $FLOWAUDIT ]]; then
  say "building flowaudit"
  make -C "$root" build >/dev/null
fi

# --- lab ------------------------------------------------------------------
work=$(mktemp -d /tmp/fademo.XXXXXX)
pids=()
teardown() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for h in "${HOSTS[@]}" sw; do
    ip netns pids "$NS-$h" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$NS-$h" 2>/dev/null || true
  done
  rm -rf "$work" "/etc/netns/$NS-appliance"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

in_ns() { local h=$1; shift; ip netns exec "$NS-$h" "$@"; }
bg_ns() { local h=$1; shift; ip netns exec "$NS-$h" "$@" >>"$work/$h.log" 2>&1 & pids+=($!); }

declare -A V4=([appliance]=192.0.2.10 [admin]=192.0.2.20 [agent]=192.0.2.35 [netdev]=192.0.2.50 [rogue]=192.0.2.66 [vendor]=192.0.2.80)
declare -A V6=([appliance]=2001:db8::10 [admin]=2001:db8::20 [agent]=2001:db8::35 [netdev]=2001:db8::50 [rogue]=2001:db8::66 [vendor]=2001:db8::80)
# The vendor's side (passive DNS, docs/DNS.md): its DNS server answers
# data.alienvault.com with the vendor's address and www.google.com (USM's
# connectivity check) with CHECK; a third address on the same host
# (MIRROR) is one no answer ever gives.
VENDOR=${V4[vendor]}
CHECK=192.0.2.81
MIRROR=192.0.2.88
APP=${V4[appliance]}

# Remove leftovers of an interrupted run, then build: one bridge namespace
# ("sw") and a veth from each host to it.
for h in "${HOSTS[@]}" sw; do ip netns del "$NS-$h" 2>/dev/null || true; done
say "building the lab: ${HOSTS[*]} on one bridge (192.0.2.0/24, 2001:db8::/64)"
ip netns add "$NS-sw"
in_ns sw ip link add br0 type bridge
in_ns sw ip link set br0 up
in_ns sw ip link set lo up
i=0
for h in "${HOSTS[@]}"; do
  i=$((i + 1))
  ip netns add "$NS-$h"
  ip link add "fademo$i" type veth peer name "fademo${i}p"
  ip link set "fademo$i" netns "$NS-$h" name eth0
  ip link set "fademo${i}p" netns "$NS-sw" name "p-$h"
  in_ns sw ip link set "p-$h" master br0 up
  in_ns "$h" ip link set lo up
  in_ns "$h" ip addr add "${V4[$h]}/24" dev eth0
  in_ns "$h" ip addr add "${V6[$h]}/64" dev eth0 nodad
  in_ns "$h" ip link set eth0 up
done

# --- the vendor: a DNS server and a feed server ------------------------------
in_ns vendor ip addr add "$CHECK/24" dev eth0
in_ns vendor ip addr add "$MIRROR/24" dev eth0
bg_ns vendor dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
  "--address=/data.alienvault.com/$VENDOR" "--address=/www.google.com/$CHECK" --local-ttl=60 "--listen-address=$VENDOR" --bind-interfaces \
  --user=root --group=root "--pid-file=$work/dnsmasq.pid" --log-facility=-
bg_ns vendor socat TCP-LISTEN:80,fork,reuseaddr SYSTEM:'printf "HTTP/1.0 200 OK\r\n\r\nfeed\n"'
# The appliance resolves through it (ip netns exec mounts this resolv.conf).
mkdir -p "/etc/netns/$NS-appliance"
echo "nameserver $VENDOR" >"/etc/netns/$NS-appliance/resolv.conf"

# --- the appliance's services ---------------------------------------------
say "starting the appliance's services"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=utmstack.demo" \
  -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1
cat "$work/key.pem" "$work/cert.pem" >"$work/both.pem"
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh_host_key"
mkdir -p /run/sshd
bg_ns appliance /usr/sbin/sshd -D -e -f /dev/null -h "$work/ssh_host_key" -o ListenAddress=0.0.0.0 \
  -o ListenAddress=:: -o PidFile=none -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no
bg_ns appliance openssl s_server -quiet -accept 443 -cert "$work/cert.pem" -key "$work/key.pem" -www
bg_ns appliance socat TCP6-LISTEN:9090,ipv6only=0,fork,reuseaddr SYSTEM:'printf "HTTP/1.0 200 OK\r\n\r\ncockpit\n"'
for port in 9000 9001 50051; do
  bg_ns appliance socat "OPENSSL-LISTEN:$port,pf=ip6,ipv6only=0,fork,reuseaddr,cert=$work/both.pem,verify=0" SYSTEM:'echo ok'
done
bg_ns appliance socat -u UDP-RECV:514 OPEN:/dev/null
bg_ns appliance socat -u TCP-LISTEN:514,fork,reuseaddr OPEN:/dev/null
bg_ns appliance socat -u "OPENSSL-LISTEN:6514,fork,reuseaddr,cert=$work/both.pem,verify=0" OPEN:/dev/null
bg_ns appliance socat -u UDP-RECV:2055 OPEN:/dev/null
bg_ns appliance socat -u UDP-RECV:4739 OPEN:/dev/null
# Planted problem 1: an undocumented listener (a Redis someone left running).
bg_ns appliance socat TCP-LISTEN:6379,fork,reuseaddr SYSTEM:'echo +PONG'

# The appliance's firewall: zones as the site file binds them. Planted
# problems 2 and 3: SSH is open to everyone, and 9001 (agent data, a
# required port) is dropped for everyone.
in_ns appliance nft -f - <<EOF
table inet demo {
  chain input {
    type filter hook input priority 0; policy accept;
    iif lo accept
    ct state established,related accept
    tcp dport 9001 drop
    tcp dport { 443, 80 } ip saddr != 192.0.2.16/28 drop
    tcp dport 9090 ip saddr != 192.0.2.20 drop
    tcp dport { 9000, 50051 } ip saddr != 192.0.2.32/28 drop
    tcp dport { 9000, 50051 } ip6 saddr != 2001:db8::30/124 drop
    meta l4proto udp udp dport { 514, 2055, 4739 } ip saddr != 192.0.2.48/28 drop
    tcp dport { 514, 6514 } ip saddr != 192.0.2.48/28 drop
  }
}
EOF
# Wait until every listener is up (bounded).
for port in 22 443 9090 9000 9001 50051 514 6514 6379; do
  for _ in $(seq 50); do
    in_ns appliance ss -Htln "sport = :$port" | grep -q . && break
    sleep 0.1
  done
done
for _ in $(seq 50); do
  in_ns vendor ss -Huln "sport = :53" | grep -q . && in_ns vendor ss -Htln "sport = :80" | grep -q . && break
  sleep 0.1
done

# --- record -----------------------------------------------------------------
mkdir -p "$OUT"
snap=$OUT/snapshot.json
say "recording on the appliance's eth0 for $DURATION"
ip netns exec "$NS-appliance" "$FLOWAUDIT" record --iface eth0 --duration "$DURATION" --out "$snap" \
  >"$work/record.log" 2>&1 &
rec=$!
pids+=("$rec")
for _ in $(seq 100); do grep -q "recording" "$work/record.log" && break; sleep 0.1; done
grep -q "recording" "$work/record.log" || { cat "$work/record.log" >&2; die "flowaudit did not start"; }
if [[ -n ${CAPTURE:-} ]]; then
  ip netns exec "$NS-appliance" tcpdump -i eth0 -n -s 128 -U -w "$CAPTURE" >"$work/tcpdump.log" 2>&1 &
  cap=$!
  pids+=("$cap")
  for _ in $(seq 100); do grep -q "listening on" "$work/tcpdump.log" && break; sleep 0.1; done
  grep -q "listening on" "$work/tcpdump.log" || { cat "$work/tcpdump.log" >&2; die "tcpdump did not start"; }
fi

# --- clients (every command bounded by timeout) -------------------------------
# t HOST CMD...: run a client in HOST's namespace, bounded by ${T:-5}s;
# a failing client is part of the demo (filtered ports), not an error.
t() { local h=$1; shift; timeout "${T:-5}" ip netns exec "$NS-$h" "$@" >/dev/null 2>&1 || true; }
unhex() { perl -e 'print pack("H*", $ARGV[0])' "$1"; }
say "admin (192.0.2.20): ssh, web console, cockpit"
for _ in 1 2; do
  t admin ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o ConnectTimeout=3 "demo@$APP" true
  t admin curl -sk "https://$APP/"
  t admin curl -s "http://$APP:9090/"
done
say "agent (192.0.2.35, 2001:db8::35): registration on 9000, data on 9001 (firewalled), never 50051, an ssh attempt"
for _ in 1 2 3; do
  t agent socat -u - "OPENSSL:$APP:9000,verify=0" <<<"heartbeat"
  t agent socat -u - "OPENSSL:[${V6[appliance]}]:9000,verify=0" <<<"heartbeat"
done
T=3 t agent nc -z -w 2 "$APP" 9001
# Planted problem 2, seen from the agent too: SSH answers a non-admin host.
t agent ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o ConnectTimeout=3 "demo@$APP" true
say "network device (192.0.2.50): syslog udp/tcp/tls, NetFlow v5, IPFIX"
for i in 1 2 3; do
  t netdev logger -n "$APP" -P 514 -d "demo syslog $i"
  t netdev logger -n "$APP" -P 514 -T "demo syslog tcp $i"
done
t netdev socat -u - "OPENSSL:$APP:6514,verify=0" <<<"<13>demo syslog over tls"
# A small NetFlow v5 sender: header (24 bytes) + one record (48 bytes).
nf5=$(printf '0005%04x%08x%08x%08x%08x0000%04x' 1 60000 "$(date +%s)" 0 1 0; \
      printf 'c0000223c0000242000000000001000200000010000005dc000000000000ea60%04x%04x001106000000000000000000' 40000 443)
for _ in 1 2 3; do
  unhex "$nf5" | t netdev socat -u - "UDP4-SENDTO:$APP:2055"
done
# IPFIX (RFC 7011): message header (16 bytes) + an empty template set (4 bytes).
ipfix=$(printf '000a0014%08x%08x%08x00020004' "$(date +%s)" 1 0)
unhex "$ipfix" | t netdev socat -u - "UDP4-SENDTO:$APP:4739"
say "appliance: resolves data.alienvault.com (its vendor's feed host) and fetches the feed; once from $MIRROR, an address no DNS answer gave"
for _ in 1 2; do
  t appliance curl -s "http://data.alienvault.com/feed"
done
t appliance curl -s "http://www.google.com/"   # USM's internet check, answered in the lab
t appliance curl -s "http://$MIRROR/feed"
say "rogue (192.0.2.66): nmap SYN scan"
T=60 t rogue nmap -n -Pn -sS --max-retries 0 -T4 -p 1-1024,6379,9000-9001,9090,50051 "$APP"

wait "$rec" || { cat "$work/record.log" >&2; die "flowaudit record failed"; }
if [[ -n ${CAPTURE:-} ]]; then
  kill -INT "$cap" && wait "$cap" || true
  say "capture:     $CAPTURE"
fi
[[ -s $snap ]] || die "no snapshot written"

# --- audit and rules ----------------------------------------------------------
mx_args=(--matrix "$MATRIX" --role "$ROLE" --snapshot "$snap")
[[ -n $SITE ]] && mx_args+=(--site "$SITE")
[[ -n $CONDITIONS ]] && mx_args+=(--conditions "$CONDITIONS")
# The demo window is short by design; tell the audit so.
audit_args=("${mx_args[@]}" --min-window 10s)
"$FLOWAUDIT" audit "${audit_args[@]}" --format json --out "$OUT/report.json" 2>>"$work/audit.log" || [[ $? -eq 2 ]]
"$FLOWAUDIT" audit "${audit_args[@]}" --format html --out "$OUT/report.html" 2>>"$work/audit.log" || [[ $? -eq 2 ]]
"$FLOWAUDIT" audit "${audit_args[@]}" --format table --out "$OUT/report.txt" 2>>"$work/audit.log" || [[ $? -eq 2 ]]
"$FLOWAUDIT" rules "${mx_args[@]}" --min-window 10s --target nftables --out "$OUT/rules.nft" 2>>"$work/audit.log" ||
  { cat "$work/audit.log" >&2; die "flowaudit rules failed"; }
# Passive DNS: UTMStack documents no named hosts; USM does (its sensor's
# feed from data.alienvault.com). The same recording, against that rule.
usm_args=(--matrix usm@5.6.5 --role sensor --snapshot "$snap" --min-window 10s)
"$FLOWAUDIT" audit "${usm_args[@]}" --format json --out "$OUT/report-dns.json" 2>>"$work/audit.log" || [[ $? -eq 2 ]]
"$FLOWAUDIT" audit "${usm_args[@]}" --format table --out "$OUT/report-dns.txt" 2>>"$work/audit.log" || [[ $? -eq 2 ]]
if [[ ${DEMO_QUIET:-0} != 1 ]]; then
  say "passive DNS: the feed fetches against USM's documented feed host (usm@5.6.5, role sensor; excerpt)"
  grep -E '^dns: |feed-update|tcp/80 ' "$OUT/report-dns.txt" || true
  say "audit report"
  cat "$OUT/report.txt"
  if [[ -s $OUT/rules.nft ]]; then
    say "least-privilege nftables rules generated from what was observed ($OUT/rules.nft)"
    cat "$OUT/rules.nft"
  fi
fi
say "HTML report: $OUT/report.html"
say "snapshot:    $snap"
