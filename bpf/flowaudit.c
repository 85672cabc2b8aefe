//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * flowaudit datapath: count packets and bytes per (interface, direction,
 * protocol, service port, peer) with handshake evidence, at XDP (ingress)
 * and TC (egress; ingress when XDP cannot attach).
 *
 * Every program returns XDP_PASS / TCX_NEXT: flowaudit never drops or
 * changes a packet. See docs/ARCHITECTURE.md for the design.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include "parse.h"

#ifndef TCX_NEXT
#define TCX_NEXT -1 /* == TC_ACT_UNSPEC: continue, also for legacy cls_bpf */
#endif

/* TCP flag bits as in byte 13 of the header. */
#define TCP_FLAG_SYN_BYTE 0x02
#define TCP_FLAG_RST_BYTE 0x04
#define TCP_FLAG_ACK_BYTE 0x10

char __license[] SEC("license") = "Dual BSD/GPL";

/* enum direction: keep in sync with snapshot.Direction. */
enum direction {
	DIR_UNKNOWN = 0,
	DIR_INBOUND = 1,  /* the peer connects to a local service */
	DIR_OUTBOUND = 2, /* this host connects to a service on the peer */
};

/* flow_key.dir_flags: the direction in bits 0-1, these flags in bits 2-3 */
#define FLOW_F_INFERRED (1 << 2) /* direction from the port heuristic */
#define FLOW_F_FRAGMENT (1 << 3) /* non-first fragment, port 0 */

/*
 * struct flow_key is the flow map key. Explicit padding, zero-initialised
 * before use so that hashing sees no stack garbage. Go: bpfFlowKey.
 */
struct flow_key {
	__u8 peer[16]; /* IPv6, or IPv4 as ::ffff:a.b.c.d */
	__u32 ifindex;
	__u16 port; /* service port; ICMP: type<<8|code; 0: none */
	__u8 proto; /* IP protocol number */
	/* enum direction | FLOW_F_*. Bits 4-7 are always zero here (userspace
	 * keeps a fold level in them). One byte for both, and no padding: the
	 * kernel hashes and compares a 24-byte key in ~16.5 ns, a 28-byte one
	 * (separate dir and flags bytes, three of padding) in ~23 ns
	 * (docs/ARCHITECTURE.md, "Per-packet cost"). */
	__u8 dir_flags;
};

/*
 * struct flow_value: counters of one flow. "in"/"out" are packet directions
 * on the wire, independent of who initiated the flow. Go: bpfFlowValue.
 */
struct flow_value {
	__u64 packets_in;
	__u64 bytes_in;
	__u64 packets_out;
	__u64 bytes_out;
	__u64 first_jiffies; /* the caller's now: bpf_jiffies64() live, read once per packet */
	__u64 last_jiffies;
	/* Evidence for inbound flows. */
	__u32 syn_in;
	__u32 synack_out;
	__u32 rst_out;
	__u32 icmp_closed_out;
	__u32 icmp_filtered_out;
	/* Evidence for outbound flows. */
	__u32 syn_out;
	__u32 synack_in;
	__u32 rst_in;
	__u32 icmp_closed_in;
	__u32 icmp_filtered_in;
};

/*
 * struct overflow_value: the counters of one service (struct flow_key with a
 * zero peer) whose per-peer flows could not be inserted because the flow
 * map was full, and a HyperLogLog sketch of the peers that lost their
 * identity (audit/snapshot/sketch.go holds the same hash). Go:
 * bpfOverflowValue.
 */
#define SKETCH_REGISTERS 128
struct overflow_value {
	struct flow_value v;
	__u8 sketch[SKETCH_REGISTERS];
};

/* struct conn_key: orientation of one connection (5-tuple minus our address). Go: bpfConnKey. */
struct conn_key {
	__u8 peer[16];
	__u16 local_port;
	__u16 remote_port;
	__u8 proto;
	__u8 pad[3];
};

/* struct conn_value: what decide() concluded for the connection. Go: bpfConnValue. */
struct conn_value {
	__u8 dir;   /* enum direction */
	__u8 flags; /* FLOW_F_INFERRED if the first packet needed the heuristic */
	__u8 pad[2];
};

/* struct endpoint_key: one end of conversations: address, port, protocol. Go: bpfEndpointKey. */
struct endpoint_key {
	__u8 addr[16]; /* IPv6, or IPv4 as ::ffff:a.b.c.d */
	__u16 port;
	__u8 proto;
	__u8 pad;
};

/* struct ethertype_value: non-IP frames per ethertype. Go: bpfEthertypeValue. */
struct ethertype_value {
	__u64 packets;
	__u64 bytes;
};

/* enum stat: indexes of the per-CPU stats array. Go: bpfStat. */
enum stat {
	STAT_PACKETS_INGRESS = 0,
	STAT_PACKETS_EGRESS,
	STAT_FLOW_NEW,           /* new flow keys inserted */
	STAT_FLOW_INSERT_FAILED, /* packets lost to a full flow map */
	STAT_CONN_INSERT_FAILED,
	STAT_TRUNCATED,
	STAT_NON_IP,
	STAT_ETHERTYPE_INSERT_FAILED,
	STAT_OVERFLOW_INSERT_FAILED, /* packets not counted at all: overflow map full too */
	STAT_DNS_SENT,               /* DNS answers handed to userspace (dns_ring) */
	STAT_DNS_DROPPED,            /* DNS answers lost: dns_ring full */
	STAT_DNS_CUT,                /* DNS answers longer than DNS_CAP: handed over cut */
	STAT_MAX,
};

/* Local service ports, filled from sock_diag: one bit per (protocol, port). */
#define LP_WORDS 1024 /* 65536 / 64 */
struct local_port_set {
	__u64 tcp[LP_WORDS];
	__u64 udp[LP_WORDS];
	__u64 sctp[LP_WORDS];
};

/*
 * Map sizes are defaults; the Go loader sets max_entries from its options.
 *
 * The counters live in two generations of maps. The programs count into
 * generation active_gen; userspace moves the counts out by flipping
 * active_gen, waiting until no program can still be using the old
 * generation (an update of flow_gens returns only after an RCU grace
 * period, and every XDP/TC program runs inside one), then reading and
 * deleting the old generation at leisure. No packet is lost across a move
 * and no per-key delete ever races an atomic add (docs/ARCHITECTURE.md).
 *
 * flows_N is a plain hash updated with atomics; the loader may switch it to
 * a per-CPU or LRU variant for the benchmarks.
 */
struct flow_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
};
struct flow_map flows_0 SEC(".maps");
struct flow_map flows_1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct flow_map);
} flow_gens SEC(".maps") = {
	.values = {&flows_0, &flows_1},
};

/*
 * overflow_N: per-service counters (flow_key with a zero peer) for packets
 * whose per-peer flow could not be inserted. Only touched when an insert
 * into flows_N fails, so it costs nothing on the normal path.
 */
struct overflow_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct flow_key);
	__type(value, struct overflow_value);
};
struct overflow_map overflow_0 SEC(".maps");
struct overflow_map overflow_1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct overflow_map);
} overflow_gens SEC(".maps") = {
	.values = {&overflow_0, &overflow_1},
};

/* A zeroed overflow_value to insert from (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct overflow_value);
} overflow_zero SEC(".maps");

/*
 * flow_cache: the last flow each CPU counted, per direction (slot
 * 2 * cpu + egress), with the packets counted in the slot since and not yet
 * added to flows_N. A train of packets of one flow on one CPU (a bulk
 * transfer, a flood from one source) then costs a compare and three plain
 * adds per packet instead of a hash lookup and two atomic adds. tag is
 * active_gen + 1 while the slot belongs to that generation, 0 when free.
 * A slot's flow always has its entry in flows_N (taken only after the
 * packet that took it was counted there), so flushing never fails.
 * Exactness across moves (bpf/cache.go): a program touches only a slot
 * tagged with its own generation, or a free one; after a move's grace
 * period userspace adds the pending counts of the slots still tagged with
 * the old generation to their flows_N entries, then frees the slots.
 * Mmapable: userspace reads and frees slots without a syscall per slot.
 *
 * The header fast path (fast_frame, handle) also keeps here what a plain
 * IPv4 TCP/UDP frame of the slot's flow looks like: its addresses and port
 * word as on the wire (the key's ifindex and proto complete them), valid
 * while fast_epoch is ports_epoch + 1. A frame that matches them is counted
 * in the slot without being parsed or classified.
 *
 * 128 bytes: no two CPUs' slots share a cache line. Go: bpfFlowCacheSlot.
 */
struct flow_cache_slot {
	struct flow_key key;
	__u32 tag;
	__u32 fast_ports; /* L4 source and destination port, wire order */
	__u64 packets;
	__u64 bytes;
	__u64 last_jiffies;
	__u64 fast_addrs; /* IPv4 source and destination address, wire order */
	__u64 fast_epoch; /* ports_epoch + 1 when stamped; 0: no fast frames */
	__u64 fast_hits;  /* packets the fast path counted in the slot, ever: part of the
			   * packet counters (STAT_PACKETS_*), which they skip */
	__u8 pad[48];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2); /* the loader sets 2 * possible CPUs */
	__type(key, __u32);
	__type(value, struct flow_cache_slot);
} flow_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct conn_value);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct local_port_set);
} local_ports SEC(".maps");

/*
 * service_hints: filled by replay only, from the whole capture: for each
 * endpoint that exchanged packets with at least two distinct counterpart
 * ports, how many (its fan-in). The port heuristic takes the end with the
 * larger fan-in as the service. Not preallocated: live it stays empty (its
 * hash buckets take 1 MiB, no elements), and hints_loaded keeps the
 * programs from looking in it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct endpoint_key);
	__type(value, __u32);
} service_hints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 256);
	__type(key, __u32); /* ethertype, host order */
	__type(value, struct ethertype_value);
} ethertypes SEC(".maps");

/*
 * Passive DNS: the DNS answers this host receives (source port 53, UDP or
 * TCP, ingress) are handed to userspace whole, up to DNS_CAP bytes of the
 * L4 payload, through dns_ring. A full ring drops the answer and counts it
 * (STAT_DNS_DROPPED); the flow counting never waits for it. Go:
 * bpfDnsEvent, read by bpf/dns.go.
 */
#define DNS_PORT 53
#define DNS_CAP 1280 /* EDNS's common 1232-byte limit, plus TCP's length prefix */
struct dns_event {
	__u64 jiffies;   /* bpf_jiffies64() when the answer arrived */
	__u8 server[16]; /* the answering address (IPv4 as ::ffff:a.b.c.d) */
	__u32 ifindex;
	__u32 len;      /* bytes in data */
	__u32 wire_len; /* L4 payload bytes in the packet (> len: cut) */
	__u8 proto;     /* IPPROTO_UDP or IPPROTO_TCP */
	__u8 pad[3];
	__u8 data[DNS_CAP];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 512 * 1024); /* the loader may change it (Options.DNSRing) */
} dns_ring SEC(".maps");

/*
 * dns_wake_bytes: an answer wakes the reader only when it takes the bytes
 * waiting in dns_ring across a multiple of this mark (the loader sets a
 * quarter of the ring). A wake-up is an irq_work, i.e. a self-IPI (on a VM,
 * an exit): the default policy (wake whenever the reader has caught up)
 * spent one per answer, 15 % of replay's kernel time on a DNS-heavy
 * capture, and a plain "above the mark" test woke on every answer while
 * the reader lagged. Two CPUs crossing a mark at once may both miss it; the
 * next mark or the reader's deadline (bpf/dns.go: dnsDrainEvery) catches
 * up, and a snapshot flushes the ring anyway.
 */
volatile const __u32 dns_wake_bytes = 128 * 1024;
/* The ring bytes one answer takes: its header (BPF_RINGBUF_HDR_SZ) and
 * dns_event, 8-byte aligned. */
#define DNS_RECORD ((8 + sizeof(struct dns_event) + 7) / 8 * 8)

/* Where handle() found a DNS answer: the payload offset (0: none). */
struct dns_hint {
	__u8 server[16]; /* first: 8-byte aligned, copied in two loads */
	__u32 off;
	__u8 proto;
};

/* Set by the loader before load (rodata). */
volatile const __u16 ephemeral_lo = 32768; /* net.ipv4.ip_local_port_range */
volatile const __u16 ephemeral_hi = 60999;
volatile const __u8 percpu_values = 0; /* flows is per-CPU: plain adds suffice */
/* flow_cache in use: the loader clears it for the benchmark-only map types
 * (per-CPU values, LRU eviction), for which a slot's entry may vanish. */
volatile const __u8 flow_cache_on = 1;

/*
 * bench_cut: for make bench only (cmd/flowbench, part 2's ablation rows):
 * how much of the per-packet work runs. BENCH_CUT_NONE, always outside the
 * benchmark: all of it. BENCH_CUT_COUNT: the packet counter only.
 * BENCH_CUT_ACCOUNT: parse, classify and build the key, but no flow-map
 * update. A frozen constant: the verifier drops the branches it can never
 * take; what the shipped program keeps is two loads of the constant per
 * packet (six of its 2 627 instructions). Go: BenchCut.
 */
#define BENCH_CUT_NONE 0
#define BENCH_CUT_COUNT 1
#define BENCH_CUT_ACCOUNT 2
volatile const __u8 bench_cut = BENCH_CUT_NONE;
/*
 * sockets_known: userspace keeps local_ports complete (live recording with
 * sock_diag). A TCP segment whose local port is not a listener then belongs
 * to a connection this host opened, which needs no lookup and no guess.
 * Replay, which knows no sockets, leaves it 0.
 */
volatile const __u8 sockets_known = 0;

/* The generation the programs count into (0 or 1); written by userspace. */
volatile __u32 active_gen;

/* Non-zero when service_hints holds entries (replay); written by userspace. */
volatile __u32 hints_loaded;

/*
 * fast_path_on: the header fast path (handle) in use; the loader sets it
 * with the flow cache, off for the benchmark's cuts and on CPUs whose loads
 * may pass each other (it relies on x86's load order, see ports_epoch).
 */
volatile const __u8 fast_path_on = 0;

/*
 * ports_epoch_user + ports_epoch_kern: bumped after every change of
 * local_ports, by userspace (SetLocalPorts) and by the programs
 * (learn_listener, atomically) respectively. The fast path's verdicts
 * depend on local_ports alone; a slot is stamped with the sum read before
 * the verdict's lookups, so a change after that read leaves the slot's
 * stamp stale and its next frame goes the whole way.
 */
volatile __u64 ports_epoch_user;
volatile __u64 ports_epoch_kern;

/* Force BTF for the types userspace needs (bpf2go -type). */
const enum stat *unused_stat __attribute__((unused));
const enum direction *unused_direction __attribute__((unused));
const struct dns_event *unused_dns_event __attribute__((unused));

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1; /* per-CPU: no atomics needed */
}

#define ADD(field, n)                                         \
	do {                                                  \
		if (percpu_values)                            \
			(field) += (n);                       \
		else                                          \
			__sync_fetch_and_add(&(field), (n));  \
	} while (0)

static __always_inline int port_is_local(__u8 proto, __u16 port)
{
	__u32 zero = 0;
	struct local_port_set *lp = bpf_map_lookup_elem(&local_ports, &zero);
	__u64 *words;

	if (!lp)
		return 0;
	switch (proto) {
	case IPPROTO_TCP:
		words = lp->tcp;
		break;
	case IPPROTO_UDP:
		words = lp->udp;
		break;
	case IPPROTO_SCTP:
		words = lp->sctp;
		break;
	default:
		return 0;
	}
	return (words[(port >> 6) & (LP_WORDS - 1)] >> (port & 63)) & 1;
}

static __always_inline int is_ephemeral(__u16 port)
{
	return port >= ephemeral_lo && port <= ephemeral_hi;
}

/* fan_in: the service_hints entry of an endpoint, 0 if none. */
static __always_inline __u32 fan_in(const __u8 *addr, __u16 port, __u8 proto)
{
	struct endpoint_key ek = {};
	__u32 *n;

	__builtin_memcpy(ek.addr, addr, 16);
	ek.port = port;
	ek.proto = proto;
	n = bpf_map_lookup_elem(&service_hints, &ek);
	return n ? *n : 0;
}

/* struct verdict: direction decision for one packet. */
struct verdict {
	__u16 port;
	__u8 dir;
	__u8 flags;
};

static __always_inline void remember(struct conn_key *ck, __u8 dir, __u8 flags)
{
	struct conn_value cv = {.dir = dir, .flags = flags};

	if (bpf_map_update_elem(&conns, ck, &cv, BPF_ANY))
		stat_inc(STAT_CONN_INSERT_FAILED);
}

/*
 * learn_listener: a SYN-ACK leaving for local port means a listener there;
 * add it to the local set until userspace's next sock_diag refresh.
 */
static __always_inline void learn_listener(__u16 port)
{
	__u32 zero = 0;
	struct local_port_set *lp = bpf_map_lookup_elem(&local_ports, &zero);
	__u64 bit = 1ULL << (port & 63), *w;

	if (!lp)
		return;
	w = &lp->tcp[(port >> 6) & (LP_WORDS - 1)];
	if (*w & bit)
		return; /* known: the epoch stays, and so do the fast path's stamps */
	__sync_fetch_and_or(w, bit);
	__sync_fetch_and_add(&ports_epoch_kern, 1);
}

/*
 * decide: who initiated the flow this packet belongs to, and so which port
 * is the service port. In order of trust:
 *   1. a local listening/bound socket on our port (sock_diag, from
 *      userspace; live, plus listeners learned from SYN-ACKs we send);
 *   2. TCP SYN / SYN-ACK, remembering the connection's orientation in
 *      conns where later packets could not tell it otherwise;
 *   3. with sockets_known, any other TCP segment: we are the client (RST
 *      segments first consult conns: they may refuse a peer's SYN);
 *   4. the orientation remembered for this connection;
 *   5. port 0 is never a service port: the other end is (flagged);
 *   6. UDP/SCTP sent from a port with no local socket: we are the client;
 *   7. the port heuristic, flagged, and for UDP/SCTP remembered so the
 *      answers join the same flow: a port inside the ephemeral range is the
 *      client's; else the end with the larger fan-in (service_hints,
 *      replay only) is the service; else the lower port.
 * learn == 0 for ICMP-embedded packets: look, do not remember.
 */
static __always_inline struct verdict decide(struct tuple *t, int egress, int learn)
{
	struct verdict v = {};
	struct conn_key ck;
	__u16 lport = egress ? t->sport : t->dport;
	__u16 rport = egress ? t->dport : t->sport;
	int tcp = t->proto == IPPROTO_TCP;
	int syn = tcp && (t->tcp_flags & TCP_FLAG_SYN_BYTE);
	int local = port_is_local(t->proto, lport);
	struct conn_value *known;
	__u32 fan_l, fan_r;

	/* The common case first: a known local service needs neither the
	 * connection key nor the conns map. */
	if (local && !syn) {
		v.dir = DIR_INBOUND;
		goto out;
	}
	__builtin_memset(&ck, 0, sizeof(ck)); /* after the common case: it needs no key */
	__builtin_memcpy(ck.peer, egress ? t->dst : t->src, 16);
	ck.local_port = lport;
	ck.remote_port = rport;
	ck.proto = t->proto;

	if (syn) {
		/* SYN alone opens, SYN-ACK answers. */
		int ack = t->tcp_flags & TCP_FLAG_ACK_BYTE;
		int opener_is_peer = !ack ? !egress : egress;

		v.dir = opener_is_peer ? DIR_INBOUND : DIR_OUTBOUND;
		if (!learn)
			goto out;
		/* Live only: replay feeds conversations in parallel, and state
		 * shared between them would make results depend on the order. */
		if (sockets_known && egress && ack)
			learn_listener(lport);
		/* With the socket set complete, only a peer's SYN to a port
		 * without listener needs remembering (for the RST that answers). */
		if (!sockets_known || (v.dir == DIR_INBOUND && !local))
			remember(&ck, v.dir, 0);
		goto out;
	}
	if (tcp && sockets_known && !(t->tcp_flags & TCP_FLAG_RST_BYTE)) {
		v.dir = DIR_OUTBOUND;
		goto out;
	}
	known = bpf_map_lookup_elem(&conns, &ck);
	if (known) {
		v.dir = known->dir;
		v.flags = known->flags;
		goto out;
	}
	if (tcp && sockets_known) {
		v.dir = DIR_OUTBOUND;
		goto out;
	}
	v.flags = FLOW_F_INFERRED;
	if (!lport != !rport) {
		/* Port 0 is never a service port (a reply sent from port 0). */
		v.dir = lport ? DIR_INBOUND : DIR_OUTBOUND;
		goto guessed;
	}
	if (!tcp && egress && learn) {
		v.dir = DIR_OUTBOUND;
		v.flags = 0;
		remember(&ck, v.dir, 0);
		goto out;
	}
	if (is_ephemeral(lport) != is_ephemeral(rport)) {
		v.dir = is_ephemeral(lport) ? DIR_OUTBOUND : DIR_INBOUND;
		goto guessed;
	}
	if (hints_loaded) {
		fan_l = fan_in(egress ? t->src : t->dst, lport, t->proto);
		fan_r = fan_in(egress ? t->dst : t->src, rport, t->proto);
		if (fan_l != fan_r) {
			v.dir = fan_l > fan_r ? DIR_INBOUND : DIR_OUTBOUND;
			goto guessed;
		}
	}
	if (lport != rport)
		v.dir = lport < rport ? DIR_INBOUND : DIR_OUTBOUND;
	else
		v.dir = DIR_INBOUND; /* same port both ends (e.g. NTP 123↔123) */
guessed:
	if (!tcp && learn)
		remember(&ck, v.dir, v.flags);
out:
	v.port = v.dir == DIR_OUTBOUND ? rport : lport;
	return v;
}

/* Evidence increments for one packet, computed before the map update. */
struct evidence {
	__u8 syn_in, synack_out, rst_out, syn_out, synack_in, rst_in;
	__u8 closed_out, filtered_out, closed_in, filtered_in;
};

/* MurmurHash3's 64-bit finaliser (audit/snapshot/sketch.go: fmix64). */
static __always_inline __u64 fmix64(__u64 x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* Trailing zeros + 1 of w (at most 57 significant bits); 58 for 0. */
static __always_inline __u8 sketch_rank(__u64 w)
{
	__u8 n = 1;

	if (!w)
		return 58;
	if (!(w & 0xffffffffULL)) {
		n += 32;
		w >>= 32;
	}
	if (!(w & 0xffff)) {
		n += 16;
		w >>= 16;
	}
	if (!(w & 0xff)) {
		n += 8;
		w >>= 8;
	}
	if (!(w & 0xf)) {
		n += 4;
		w >>= 4;
	}
	if (!(w & 0x3)) {
		n += 2;
		w >>= 2;
	}
	if (!(w & 0x1))
		n += 1;
	return n;
}

/*
 * overflow_sketch: add a peer to a HyperLogLog sketch, exactly as
 * snapshot.PeerSketch.Add does. The register update is not atomic: two
 * CPUs racing on one register may keep the smaller rank, which can only
 * lower the estimate slightly.
 */
static __always_inline void overflow_sketch(struct overflow_value *ov, const __u8 *peer)
{
	__u64 lo, hi, h;
	__u32 idx;
	__u8 rank;

	__builtin_memcpy(&lo, peer, 8);
	__builtin_memcpy(&hi, peer + 8, 8);
	h = fmix64(lo ^ fmix64(hi ^ 0x9e3779b97f4a7c15ULL));
	idx = h & (SKETCH_REGISTERS - 1);
	rank = sketch_rank(h >> 7);
	if (rank > ov->sketch[idx])
		ov->sketch[idx] = rank;
}

/*
 * overflow_get: the per-service counters for a packet whose flow could not
 * be inserted into generation gen. NULL (and counted) when the overflow
 * map is full as well.
 */
static __noinline struct flow_value *overflow_get(struct flow_key *k, __u32 gen, __u64 now)
{
	struct flow_key sk = *k;
	struct overflow_value *ov, *zero;
	__u32 z = 0;
	void *ovf;
	long err;

	__builtin_memset(sk.peer, 0, sizeof(sk.peer));
	ovf = bpf_map_lookup_elem(&overflow_gens, &gen);
	if (!ovf)
		goto lost;
	ov = bpf_map_lookup_elem(ovf, &sk);
	if (!ov) {
		zero = bpf_map_lookup_elem(&overflow_zero, &z);
		if (!zero)
			goto lost;
		err = bpf_map_update_elem(ovf, &sk, zero, BPF_NOEXIST);
		if (err != 0 && err != -17 /* EEXIST */)
			goto lost;
		ov = bpf_map_lookup_elem(ovf, &sk);
		if (!ov)
			goto lost;
	}
	if (!ov->v.first_jiffies)
		ov->v.first_jiffies = now;
	overflow_sketch(ov, k->peer);
	return &ov->v;
lost:
	stat_inc(STAT_OVERFLOW_INSERT_FAILED);
	return 0;
}

static __always_inline struct flow_value *flow_get(struct flow_key *k, __u32 gen, __u64 now, int *in_flows)
{
	void *flows = bpf_map_lookup_elem(&flow_gens, &gen);
	struct flow_value *val;
	long err;

	if (!flows)
		return 0;
	val = bpf_map_lookup_elem(flows, k);
	if (val) {
		*in_flows = 1;
		return val;
	}
	/* New flow. The zeroed value is built only here: declared at the top,
	 * its 88 bytes were zeroed for every packet. */
	struct flow_value init = {.first_jiffies = now};

	err = bpf_map_update_elem(flows, k, &init, BPF_NOEXIST);
	if (err == 0)
		stat_inc(STAT_FLOW_NEW);
	else if (err != -17 /* EEXIST: another CPU won the race */) {
		stat_inc(STAT_FLOW_INSERT_FAILED);
		return overflow_get(k, gen, now);
	}
	val = bpf_map_lookup_elem(flows, k);
	*in_flows = val != 0;
	return val;
}

/* flow_account: adds one packet (or segs of them) to generation gen.
 * Returns 1 when the flow's entry is in flows_N (not overflow). */
static __always_inline int flow_account(struct flow_key *k, int egress, __u64 len, __u64 segs,
					struct evidence *ev, __u64 now, __u32 gen)
{
	int in_flows = 0;
	struct flow_value *val = flow_get(k, gen, now, &in_flows);

	if (!val)
		return 0;
	if (segs) {
		if (egress) {
			ADD(val->packets_out, segs);
			ADD(val->bytes_out, len);
		} else {
			ADD(val->packets_in, segs);
			ADD(val->bytes_in, len);
		}
		if (now > val->last_jiffies) /* a flushed cache slot may be older */
			val->last_jiffies = now;
	}
	if (!ev)
		return in_flows;
	if (ev->syn_in)
		ADD(val->syn_in, 1);
	if (ev->synack_out)
		ADD(val->synack_out, 1);
	if (ev->rst_out)
		ADD(val->rst_out, 1);
	if (ev->syn_out)
		ADD(val->syn_out, 1);
	if (ev->synack_in)
		ADD(val->synack_in, 1);
	if (ev->rst_in)
		ADD(val->rst_in, 1);
	if (ev->closed_out)
		ADD(val->icmp_closed_out, 1);
	if (ev->filtered_out)
		ADD(val->icmp_filtered_out, 1);
	if (ev->closed_in)
		ADD(val->icmp_closed_in, 1);
	if (ev->filtered_in)
		ADD(val->icmp_filtered_in, 1);
	return in_flows;
}

static __always_inline int is_echo(struct tuple *t, __u8 *request_type)
{
	if (t->proto == IPPROTO_ICMP && (t->icmp_type == ICMP_ECHO || t->icmp_type == ICMP_ECHOREPLY)) {
		*request_type = ICMP_ECHO;
		return t->icmp_type == ICMP_ECHO ? 1 : 2;
	}
	if (t->proto == IPPROTO_ICMPV6 &&
	    (t->icmp_type == ICMPV6_ECHO_REQUEST || t->icmp_type == ICMPV6_ECHO_REPLY)) {
		*request_type = ICMPV6_ECHO_REQUEST;
		return t->icmp_type == ICMPV6_ECHO_REQUEST ? 1 : 2;
	}
	return 0;
}

/* Destination-unreachable classification: 1 closed (port unreachable), 2 filtered/other. */
static __always_inline int unreach_class(struct tuple *t)
{
	if (t->proto == IPPROTO_ICMP && t->icmp_type == ICMP_DEST_UNREACH)
		return t->icmp_code == ICMP_PORT_UNREACH ? 1 : 2;
	if (t->proto == IPPROTO_ICMPV6 && t->icmp_type == ICMPV6_DEST_UNREACH)
		return t->icmp_code == ICMPV6_PORT_UNREACH ? 1 : 2;
	return 0;
}

/*
 * icmp_error_evidence: a destination-unreachable error quotes the packet
 * that caused it. Attribute closed/filtered evidence to that original flow:
 * our error going out answers a peer's attempt (inbound flow); an error
 * coming in answers our attempt (outbound flow).
 */
static __always_inline void icmp_error_evidence(struct hdr_cursor *nh, void *data_end,
						 struct tuple *outer, int egress, __u32 ifindex, __u64 now)
{
	int cls = unreach_class(outer);
	struct tuple inner = {};
	struct flow_key k = {};
	struct evidence ev = {};
	struct verdict v;

	if (!cls)
		return;
	if (parse_ip(nh, data_end, outer->family == 4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6),
		     &inner) < 0)
		return;
	if (!(inner.pflags & P_HAVE_L4) || (inner.proto != IPPROTO_TCP && inner.proto != IPPROTO_UDP &&
					     inner.proto != IPPROTO_SCTP))
		return;
	/* The quoted packet travelled the other way. */
	v = decide(&inner, !egress, 0);
	if (egress) {
		if (v.dir != DIR_INBOUND)
			return;
		__builtin_memcpy(k.peer, inner.src, 16);
		ev.closed_out = cls == 1;
		ev.filtered_out = cls == 2;
	} else {
		if (v.dir != DIR_OUTBOUND)
			return;
		__builtin_memcpy(k.peer, inner.dst, 16);
		ev.closed_in = cls == 1;
		ev.filtered_in = cls == 2;
	}
	k.ifindex = ifindex;
	k.port = v.port;
	k.proto = inner.proto;
	k.dir_flags = v.dir | v.flags;
	flow_account(&k, egress, 0, 0, &ev, now, active_gen & 1);
}

static __always_inline void count_ethertype(__be16 proto, __u64 len)
{
	__u32 key = bpf_ntohs(proto);
	struct ethertype_value *v = bpf_map_lookup_elem(&ethertypes, &key);
	struct ethertype_value init = {};

	stat_inc(STAT_NON_IP);
	if (!v) {
		/* EEXIST cannot happen on a per-CPU map; a full map shows below. */
		bpf_map_update_elem(&ethertypes, &key, &init, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&ethertypes, &key);
		if (!v) {
			stat_inc(STAT_ETHERTYPE_INSERT_FAILED);
			return;
		}
	}
	v->packets += 1; /* per-CPU map */
	v->bytes += len;
}

/*
 * dns_note: an answer from port 53 arrived; note where its payload starts
 * (the cursor is at the L4 header). Kept out of line so the path of other
 * packets stays as it was.
 */
static __noinline void dns_note(struct hdr_cursor *nh, void *data, void *data_end, struct tuple *t,
				struct dns_hint *dns)
{
	__u8 *l4 = nh->pos;
	__u32 hl;

	if (!dns)
		return;
	if (t->proto == IPPROTO_UDP) {
		hl = 8;
	} else if (t->proto == IPPROTO_TCP) {
		if ((void *)(l4 + 13) > data_end)
			return;
		hl = (l4[12] >> 4) * 4;
		if (hl < 20)
			return;
	} else {
		return;
	}
	dns->off = (__u32)((void *)l4 - data) + hl;
	dns->proto = t->proto;
	__builtin_memcpy(dns->server, t->src, 16);
}

/*
 * dns_reserve: a ring buffer record for an answer of pkt_len bytes whose
 * payload starts at hint->off; *n is set to the bytes to copy. NULL when
 * there is nothing to send or the ring is full (counted).
 */
static __always_inline struct dns_event *dns_reserve(struct dns_hint *hint, __u64 pkt_len, __u32 ifindex,
						     __u32 *n, __u64 now)
{
	struct dns_event *e;
	__u64 wire;

	if (pkt_len <= hint->off)
		return 0;
	wire = pkt_len - hint->off;
	e = bpf_ringbuf_reserve(&dns_ring, sizeof(*e), 0);
	if (!e) {
		stat_inc(STAT_DNS_DROPPED);
		return 0;
	}
	e->jiffies = now;
	__builtin_memcpy(e->server, hint->server, 16);
	e->ifindex = ifindex;
	e->proto = hint->proto;
	e->wire_len = wire > 0xffffffff ? 0xffffffff : (__u32)wire;
	*n = wire > DNS_CAP ? DNS_CAP : (__u32)wire;
	if (wire > DNS_CAP)
		stat_inc(STAT_DNS_CUT);
	e->len = *n;
	return e;
}

static __always_inline void dns_commit(struct dns_event *e, long err)
{
	if (err) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	__u64 waiting = bpf_ringbuf_query(&dns_ring, BPF_RB_AVAIL_DATA); /* this answer included */
	__u64 mark = dns_wake_bytes ? dns_wake_bytes : 1;

	bpf_ringbuf_submit(e, waiting / mark != (waiting - DNS_RECORD) / mark ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	stat_inc(STAT_DNS_SENT);
}

#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

static __always_inline int key_equal(const struct flow_key *a, const struct flow_key *b)
{
	const __u64 *x = (const void *)a, *y = (const void *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2])) == 0;
}

/*
 * cache_flush: a slot's pending counts into its flows_N entry. A global
 * function: the verifier checks it once on its own, not once for every
 * state in which handle() reaches a cache miss.
 */
__noinline int cache_flush(struct flow_cache_slot *slot, int egress, __u32 gen)
{
	struct flow_value *val;
	__u32 g = gen & 1;
	__u64 *lost;
	void *flows;

	if (!slot)
		return 0;
	flows = bpf_map_lookup_elem(&flow_gens, &g);
	/* The key straight from the slot: no stack copy, the call chain stays
	 * within the 512-byte stack. */
	val = flows ? bpf_map_lookup_elem(flows, &slot->key) : 0;
	if (val) {
		if (egress) {
			ADD(val->packets_out, slot->packets);
			ADD(val->bytes_out, slot->bytes);
		} else {
			ADD(val->packets_in, slot->packets);
			ADD(val->bytes_in, slot->bytes);
		}
		if (slot->last_jiffies > val->last_jiffies)
			val->last_jiffies = slot->last_jiffies;
	} else {
		/* Cannot happen (the entry exists until this generation is
		 * drained, after the slot was collected); if it did, the
		 * packets show as not counted at all. */
		__u32 idx = STAT_OVERFLOW_INSERT_FAILED;

		lost = bpf_map_lookup_elem(&stats, &idx);
		if (lost)
			*lost += slot->packets;
	}
	slot->packets = 0;
	slot->bytes = 0;
	return 0;
}

/*
 * fast_frame: the frame is one the header fast path may take. Plain
 * Ethernet and an IPv4 header without options, not a non-first fragment,
 * TCP or UDP with its ports (TCP: its flags byte) in the linear data, not a
 * SYN or RST (handshake evidence), not a DNS answer coming in (dns_note).
 * For such a frame handle() computes the key from the ingress interface,
 * the direction, the protocol, the addresses and ports and local_ports
 * (decide's first branch, or its third with sockets_known), with no other
 * side effect than counting; those fields are what *addrs and *ports and
 * the returned protocol hold (0: not such a frame). One bounds check per
 * protocol, at the length the whole path needs (no truncation counted).
 */
#define FAST_UDP_LEN (ETH_HLEN + 20 + 4)  /* through the ports, as parse_l4 needs */
#define FAST_TCP_LEN (ETH_HLEN + 20 + 14) /* through the flags byte */

static __always_inline __u8 fast_frame(void *data, void *data_end, __u64 now, int egress, __u64 *addrs,
				       __u32 *ports)
{
	/* p is data, as a pointer of its own for the verifier and the
	 * compiler: z, a jiffies count's top bit, is 0 (and if not, no frame is
	 * fast), which neither can know when computing p. So the bounds check
	 * below gives a range to p alone, and the compiler reuses none of these
	 * loads in the slow path: had data itself gained a range here, the
	 * verifier would walk the whole parser once for each outcome (~4 times
	 * the instructions, over its budget). */
	__u64 z = now >> 63, a;
	__u8 *p = data + z, proto;
	__u32 w;

	if ((void *)(p + FAST_UDP_LEN) > data_end)
		return 0;
	if (*(__be16 *)(p + 12) != bpf_htons(ETH_P_IP) || p[14] != 0x45 ||
	    (*(__be16 *)(p + 20) & bpf_htons(0x1fff)))
		return 0;
	proto = p[23];
	if (proto == IPPROTO_TCP) {
		if ((void *)(p + FAST_TCP_LEN) > data_end)
			return 0;
		if (p[FAST_TCP_LEN - 1] & (TCP_FLAG_SYN_BYTE | TCP_FLAG_RST_BYTE))
			return 0;
	} else if (proto != IPPROTO_UDP) {
		return 0;
	}
	if (!egress && *(__be16 *)(p + 34) == bpf_htons(DNS_PORT))
		return 0;
	a = *(__u64 *)(p + 26);
	w = *(__u32 *)(p + 34);
	if (z) /* last: nothing above may use it to fold p into data */
		return 0;
	*addrs = a;
	*ports = w;
	return proto;
}

/* ports_epoch: the sum of the two counters (see their declaration). */
static __always_inline __u64 ports_epoch(void)
{
	return ports_epoch_user + ports_epoch_kern;
}

/* struct fast_sig: a frame's signature for fast_stamp (fast_take). */
struct fast_sig {
	__u64 addrs; /* IPv4 source and destination, wire order */
	__u64 meta;  /* protocol (0: not a fast frame) << 32 | port word, wire order */
};

/*
 * fast_stamp: after the slow path took slot for a flow, let the fast path
 * take the flow's next frames if the frame that took it was a fast one
 * (meta: its protocol, 0 if not a fast frame, in bits 32-39, its port
 * word in bits 0-31, egress in bit 40; addrs: its addresses) and its
 * verdict came from local_ports alone: the local port is a service
 * (decide's first branch) or, with sockets_known, the frame is TCP (its
 * third). epoch was read before decide(); if local_ports changed since,
 * the stamp is stale already. A global function on scalars: verified once,
 * and handle()'s states do not split on the signature.
 */
__noinline int fast_stamp(struct flow_cache_slot *slot, __u64 addrs, __u64 meta, __u64 epoch)
{
	__u32 ports = (__u32)meta;
	__u8 proto = (__u8)(meta >> 32);
	int egress = (meta >> 40) & 1;
	__u16 lport;

	if (!slot)
		return 0;
	slot->fast_epoch = 0;
	if (!fast_path_on || (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return 0;
	lport = bpf_ntohs(egress ? (__u16)ports : (__u16)(ports >> 16));
	if (!(proto == IPPROTO_TCP && sockets_known) && !port_is_local(proto, lport))
		return 0;
	slot->fast_addrs = addrs;
	slot->fast_ports = ports;
	slot->fast_epoch = epoch + 1;
	return 0;
}

/*
 * count: one packet (segs wire packets, len bytes) of flow k, through the
 * CPU's flow_cache slot when it carries no evidence. Hit: three plain adds
 * (the slot is this CPU's alone while tagged with this generation). Miss:
 * the slot's pending counts go to flows_N, the packet is counted there the
 * usual way, and it takes the slot over when its entry is in flows_N.
 */
static __always_inline void count(struct flow_key *k, int egress, __u64 len, __u32 segs,
				  struct evidence *ev, __u64 now, struct fast_sig *sig, __u64 epoch)
{
	__u32 gen = active_gen & 1, tag = gen + 1, i, st = ~0U;
	struct flow_cache_slot *slot = 0;

	if (flow_cache_on && !ev) {
		i = bpf_get_smp_processor_id() * 2 + (egress ? 1 : 0);
		slot = bpf_map_lookup_elem(&flow_cache, &i);
	}
	if (slot) {
		st = READ_ONCE(slot->tag);
		if (st == tag && key_equal(&slot->key, k)) {
			slot->packets += segs;
			slot->bytes += len;
			slot->last_jiffies = now;
			return;
		}
		if (st == tag && slot->packets)
			cache_flush(slot, egress, gen);
	}
	if (flow_account(k, egress, len, segs, ev, now, gen) && slot && (st == tag || st == 0)) {
		slot->key = *k;
		slot->packets = 0;
		slot->bytes = 0;
		if (sig)
			fast_stamp(slot, sig->addrs, sig->meta | (__u64)(egress ? 1 : 0) << 40, epoch);
		WRITE_ONCE(slot->tag, tag);
	}
}

/*
 * fast_take: the header fast path. A fast frame (fast_frame) whose
 * addresses, ports, protocol and interface are those of the frame that
 * stamped this CPU's slot for its direction, under the same generation and
 * ports_epoch, belongs to the slot's flow and would get the slot's key from
 * the whole path: it is counted in the slot (1), unparsed and unclassified.
 * Otherwise (0) a fast frame leaves its signature in *sig for
 * fast_stamp.
 */
static __always_inline int fast_take(void *data, void *data_end, int egress, __u32 ifindex, __u64 len,
				     __u32 segs, __u64 now, __u64 epoch, struct fast_sig *sig)
{
	struct flow_cache_slot *slot;
	__u64 addrs = 0;
	__u32 ports = 0, i;
	__u8 proto;

	proto = fast_frame(data, data_end, now, egress, &addrs, &ports);
	if (!proto)
		return 0;
	sig->addrs = addrs;
	sig->meta = (__u64)proto << 32 | ports;
	i = bpf_get_smp_processor_id() * 2 + (egress ? 1 : 0);
	slot = bpf_map_lookup_elem(&flow_cache, &i);
	if (!slot || READ_ONCE(slot->tag) != (active_gen & 1) + 1 || slot->fast_epoch != epoch + 1 ||
	    slot->fast_addrs != addrs || slot->fast_ports != ports || slot->key.ifindex != ifindex ||
	    slot->key.proto != proto)
		return 0;
	slot->packets += segs;
	slot->bytes += len;
	slot->last_jiffies = now;
	slot->fast_hits++;
	return 1;
}

/*
 * fast_take_xdp / fast_take_skb: fast_take on the program's frame, before
 * the program reads anything else of the packet. XDP inlines it (a global
 * function's call cost ~1.1 ns per packet, and the verifier processes
 * fewer instructions this way: 103-107 k against 123-126 k). For TC it is a
 * global function, verified once on its own: inlined there, the ways a
 * frame leaves the fast path split the states handle() is verified in
 * (158 k instead of 110 k for TC ingress; inside handle() itself, 105 k to
 * 204 k per program depending on the compiler's instruction order).
 */
static __always_inline int fast_take_xdp(struct xdp_md *ctx, __u64 now, __u64 epoch, struct fast_sig *sig)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	return fast_take(data, data_end, 0, ctx->ingress_ifindex, data_end - data, 1, now, epoch, sig);
}

__noinline int fast_take_skb(struct __sk_buff *skb, __u64 now, __u64 epoch, struct fast_sig *sig, int egress)
{
	if (!skb || !sig)
		return 0;
	return fast_take((void *)(long)skb->data, (void *)(long)skb->data_end, egress, skb->ifindex, skb->len,
			 skb->gso_segs ? skb->gso_segs : 1, now, epoch, sig);
}

/*
 * handle: the whole per-packet path, shared by XDP and TC. data/data_end
 * bound the linear packet; len is the full frame length; segs the number
 * of wire packets (GSO) the frame stands for. The caller tried the header
 * fast path (fast_take_xdp, fast_take_skb) with ports_epoch read as epoch,
 * before this frame's lookups in local_ports; sig is what it found (0:
 * replay, which has no fast path: its frames never stamp a slot).
 */
static __always_inline void handle(void *data, void *data_end, int egress, __u32 ifindex, __u64 len,
				   __u32 segs, struct dns_hint *dns, __u64 now, struct fast_sig *sig, __u64 epoch)
{
	struct hdr_cursor nh = {.pos = data};
	struct tuple t;
	struct flow_key k __attribute__((aligned(8))) = {}; /* compared as three words */
	struct evidence ev, *evp = 0;
	struct verdict v = {};
	__be16 outer, ethertype;
	int cut = 0;
	__u64 l2;
	__u8 req;
	int echo;

	stat_inc(egress ? STAT_PACKETS_EGRESS : STAT_PACKETS_INGRESS);
	if (bench_cut == BENCH_CUT_COUNT)
		return;
	/* The parser writes both addresses of every packet it accepts; only
	 * the fields after them need zeroes (four stores fewer per packet). */
	__builtin_memset(&t.sport, 0, sizeof(t) - __builtin_offsetof(struct tuple, sport));
	if (parse_ethhdr(&nh, data_end, &outer) < 0) {
		stat_inc(STAT_TRUNCATED);
		count_ethertype(0, len);
		return;
	}
	/* Non-IP frames and IP frames cut short are counted under the
	 * ethertype on the wire (after VLAN tags), e.g. 0x8864 for PPPoE. */
	ethertype = outer;
	if (outer != bpf_htons(ETH_P_IP) && outer != bpf_htons(ETH_P_IPV6))
		ethertype = parse_encap(&nh, data_end, outer, &cut); /* plain IP skips the encap tests */
	if (ethertype != bpf_htons(ETH_P_IP) && ethertype != bpf_htons(ETH_P_IPV6)) {
		if (cut)
			stat_inc(STAT_TRUNCATED);
		count_ethertype(outer, len);
		return;
	}
	/* One IP-header offset for the verifier, whatever the encapsulation:
	 * a pointer difference is an unknown scalar to it, so the paths of
	 * every VLAN/PPPoE/MPLS depth meet in one state from here on instead
	 * of each being verified through the rest of the program. */
	l2 = nh.pos - data;
	asm volatile("" : "+r"(l2));
	if (l2 > L2_MAX) {
		/* Cannot happen (parse_ethhdr and parse_encap stop earlier);
		 * counted all the same, so that no frame goes uncounted. */
		count_ethertype(outer, len);
		return;
	}
	nh.pos = data + l2;
	if (parse_ip(&nh, data_end, ethertype, &t) < 0) {
		stat_inc(STAT_TRUNCATED);
		count_ethertype(outer, len);
		return;
	}
	if (t.pflags & P_TRUNCATED)
		stat_inc(STAT_TRUNCATED);

	k.ifindex = ifindex;
	k.proto = t.proto;
	__builtin_memcpy(k.peer, egress ? t.dst : t.src, 16);

	if (t.pflags & P_FRAGMENT) {
		k.dir_flags = DIR_UNKNOWN | FLOW_F_FRAGMENT;
	} else if (!(t.pflags & P_HAVE_L4)) {
		k.dir_flags = DIR_UNKNOWN; /* portless protocol, or ports cut off */
	} else if (t.proto == IPPROTO_ICMP || t.proto == IPPROTO_ICMPV6) {
		echo = is_echo(&t, &req);
		if (echo) {
			/* Request and reply share the request's key. */
			k.port = (__u16)req << 8;
			k.dir_flags = (echo == 1) == !egress ? DIR_INBOUND : DIR_OUTBOUND;
		} else {
			k.port = (__u16)t.icmp_type << 8 | t.icmp_code;
			k.dir_flags = DIR_UNKNOWN;
			icmp_error_evidence(&nh, data_end, &t, egress, ifindex, now);
		}
	} else {
		/* Passive DNS: one compare on a port already read. */
		if (!egress && t.sport == DNS_PORT)
			dns_note(&nh, data, data_end, &t, dns);
		v = decide(&t, egress, 1);
		k.dir_flags = v.dir | v.flags;
		k.port = v.port;
		/* Only SYN and RST segments carry handshake evidence. */
		if (t.proto == IPPROTO_TCP && (t.tcp_flags & (TCP_FLAG_SYN_BYTE | TCP_FLAG_RST_BYTE))) {
			__u8 f = t.tcp_flags;
			int syn = f & TCP_FLAG_SYN_BYTE, ack = f & TCP_FLAG_ACK_BYTE;
			int rst = f & TCP_FLAG_RST_BYTE;

			/* Zeroed here, not per packet: only SYN and RST get here. */
			__builtin_memset(&ev, 0, sizeof(ev));
			if (v.dir == DIR_INBOUND) {
				ev.syn_in = !egress && syn && !ack;
				ev.synack_out = egress && syn && ack;
				ev.rst_out = egress && rst;
			} else if (v.dir == DIR_OUTBOUND) {
				ev.syn_out = egress && syn && !ack;
				ev.synack_in = !egress && syn && ack;
				ev.rst_in = !egress && rst;
			}
			evp = &ev;
		}
	}
	if (bench_cut == BENCH_CUT_ACCOUNT) {
		/* The key and evidence stay built, as if handed on. */
		asm volatile("" : : "r"(&k), "r"(evp) : "memory");
		return;
	}
	count(&k, egress, len, segs, evp, now, sig, epoch);
}

/* clock_jiffies: written by flowaudit_clock, read by userspace to map the
 * programs' timestamps to wall time (bpf/clock.go). */
__u64 clock_jiffies;

/* flowaudit_clock is never attached: userspace runs it with test_run to
 * read the jiffies counter the flow timestamps use. */
SEC("xdp")
int flowaudit_clock(struct xdp_md *ctx)
{
	clock_jiffies = bpf_jiffies64();
	return XDP_PASS;
}

/*
 * dns_handover_xdp / dns_handover_skb: copy a DNS answer that handle()
 * found into dns_ring. Global (not static) functions: the verifier checks
 * each once on its own instead of once for every state in which handle()
 * can end, which was a third of the programs' load time. Only answers
 * from port 53 call them.
 */
__noinline int dns_handover_xdp(struct xdp_md *ctx, struct dns_hint *dns, __u64 now)
{
	struct dns_event *e;
	__u32 n = 0;

	if (!dns || !dns->off)
		return 0;
	e = dns_reserve(dns, bpf_xdp_get_buff_len(ctx), ctx->ingress_ifindex, &n, now);
	if (!e)
		return 0;
	if (n < 1 || n > DNS_CAP)
		n = 1; /* cannot happen; bounds for the verifier */
	dns_commit(e, bpf_xdp_load_bytes(ctx, dns->off, e->data, n));
	return 0;
}

SEC("xdp")
int flowaudit_xdp(struct xdp_md *ctx)
{
	void *data, *data_end;
	struct dns_hint dns;
	__u64 now = bpf_jiffies64();
	__u64 epoch = ports_epoch(); /* before any lookup in local_ports */
	struct fast_sig sig = {};

	/* A frame the fast path takes is counted in its slot's fast_hits,
	 * which userspace adds to the packet counter (bpf/cache.go). */
	if (fast_path_on && fast_take_xdp(ctx, now, epoch, &sig))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	dns.off = 0; /* the rest is read only when dns_note set off */
	handle(data, data_end, 0, ctx->ingress_ifindex, data_end - data, 1, &dns, now, &sig, epoch);
	if (dns.off)
		dns_handover_xdp(ctx, &dns, now);
	return XDP_PASS;
}

/* Headers we may need from a non-linear skb; pulled without changing content. */
#define PULL_LEN 256

__noinline int dns_handover_skb(struct __sk_buff *skb, struct dns_hint *dns, __u64 now)
{
	struct dns_event *e;
	__u32 n = 0;

	if (!dns || !dns->off)
		return 0;
	e = dns_reserve(dns, skb->len, skb->ifindex, &n, now);
	if (!e)
		return 0;
	if (n < 1 || n > DNS_CAP)
		n = 1; /* cannot happen; bounds for the verifier */
	dns_commit(e, bpf_skb_load_bytes(skb, dns->off, e->data, n));
	return 0;
}

static __always_inline void handle_skb(struct __sk_buff *skb, int egress)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 segs = skb->gso_segs ? skb->gso_segs : 1;
	__u64 now = bpf_jiffies64();
	__u64 epoch = ports_epoch(); /* before any lookup in local_ports */
	struct fast_sig sig = {};
	struct dns_hint dns;

	if (fast_path_on && fast_take_skb(skb, now, epoch, &sig, egress))
		return;
	dns.off = 0; /* the rest is read only when dns_note set off */
	if (data_end - data < PULL_LEN && skb->len > data_end - data) {
		bpf_skb_pull_data(skb, skb->len < PULL_LEN ? skb->len : PULL_LEN);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	handle(data, data_end, egress, skb->ifindex, skb->len, segs, egress ? 0 : &dns, now, &sig, epoch);
	if (!egress && dns.off)
		dns_handover_skb(skb, &dns, now);
}

SEC("tcx/egress")
int flowaudit_tc_egress(struct __sk_buff *skb)
{
	handle_skb(skb, 1);
	return TCX_NEXT;
}

SEC("tcx/ingress")
int flowaudit_tc_ingress(struct __sk_buff *skb)
{
	handle_skb(skb, 0);
	return TCX_NEXT;
}

/*
 * flowaudit_replay: replay only (bpf/replay), never attached, never loaded
 * by a live collector. One BPF_PROG_TEST_RUN carries a batch of captured
 * frames, each after its descriptor, behind a window as long as the
 * linear part of the buffer test_run builds (REPLAY_WINDOW):
 *
 *   [window][D_1][F_1][D_2][F_2] ... [D_n][F_n]
 *
 * test_run puts the window in the linear part and the rest in page frags
 * (xdp.frags). Each frame in turn is copied to the end of the window and
 * presented alone as [data, data_end) — bpf_xdp_adjust_head moves data,
 * never the bytes — to the same handle() the live programs run. A batch
 * is at most 0xffff bytes: bpf_xdp_load_bytes takes no larger offset.
 */
struct replay_desc {
	__u64 now;    /* the frame's capture time in the programs' clock */
	__u32 len;    /* frame bytes, ETH_HLEN..REPLAY_WINDOW */
	__u32 egress; /* 1: outgoing (what flowaudit_tc_egress sees) */
};

#define REPLAY_WINDOW 3520    /* 4096 - 256 headroom - 320 skb_shared_info */
#define REPLAY_BATCH_MAX 512 /* frames per call: the verifier walks each iteration */

static const __u32 replay_zero = 0;

/* replay_in and replay_out run handle() on the frame at [data, data_end),
 * stamped now, as flowaudit_xdp (incoming) and flowaudit_tc_egress
 * (outgoing) would. Global: each is verified once; two functions, so that
 * each has one copy of handle()'s stack. Return 0. */
__noinline int replay_in(struct xdp_md *ctx, __u64 now, __u32 len)
{
	void *data, *data_end;
	struct dns_hint dns = {};
	struct dns_event *e;
	__u32 n = 0;

	if (!ctx)
		return 0;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	handle(data, data_end, 0, ctx->ingress_ifindex, len, 1, &dns, now, 0, 0);
	if (dns.off) {
		e = dns_reserve(&dns, len, ctx->ingress_ifindex, &n, now);
		if (e) {
			if (n < 1 || n > DNS_CAP)
				n = 1; /* cannot happen; bounds for the verifier */
			dns_commit(e, bpf_xdp_load_bytes(ctx, dns.off, e->data, n));
		}
	}
	return 0;
}

__noinline int replay_out(struct xdp_md *ctx, __u64 now, __u32 len)
{
	if (!ctx)
		return 0;
	handle((void *)(long)ctx->data, (void *)(long)ctx->data_end, 1, ctx->ingress_ifindex, len, 1, 0, now, 0, 0);
	return 0;
}

/* replay_buf: a frame and its descriptor on their way from the batch to
 * the window (the stack is taken by handle()). Per CPU, and a batch owns
 * its CPU's buffer until it returns: bpf_test_run (net/bpf/test_run.c)
 * runs each call under local_bh_disable() with migration disabled, so no
 * other test_run — another replay worker — runs on this CPU meanwhile
 * (PREEMPT_RT: the per-CPU softirq lock serialises them), and no live
 * program uses replay_bufs. */
struct replay_buf {
	struct replay_desc d;
	__u32 total; /* the batch's length */
	__u32 pad;
	__u8 frame[REPLAY_WINDOW];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct replay_buf);
} replay_bufs SEC(".maps");

SEC("xdp.frags")
int flowaudit_replay(struct xdp_md *ctx)
{
	struct replay_buf *b;
	__u32 off = REPLAY_WINDOW, len, start;
	int i;

	b = bpf_map_lookup_elem(&replay_bufs, &replay_zero);
	if (!b)
		return XDP_ABORTED;
	b->total = bpf_xdp_get_buff_len(ctx);
	if (ctx->data_end - ctx->data != REPLAY_WINDOW)
		return XDP_ABORTED;
	if (off == b->total)
		return XDP_PASS;
	for (i = 0; i < REPLAY_BATCH_MAX; i++) {
		if (bpf_xdp_load_bytes(ctx, off, &b->d, sizeof(b->d)))
			return XDP_ABORTED;
		len = b->d.len;
		if (len < ETH_HLEN || len > REPLAY_WINDOW)
			return XDP_ABORTED;
		/* The frame to the end of the window, presented alone. */
		start = REPLAY_WINDOW - len;
		if (bpf_xdp_load_bytes(ctx, off + sizeof(b->d), b->frame, len) ||
		    bpf_xdp_store_bytes(ctx, start, b->frame, len))
			return XDP_ABORTED;
		if (start && bpf_xdp_adjust_head(ctx, start))
			return XDP_ABORTED;
		if (b->d.egress)
			replay_out(ctx, b->d.now, len);
		else
			replay_in(ctx, b->d.now, len);
		len = b->d.len;
		if (len < ETH_HLEN || len > REPLAY_WINDOW)
			return XDP_ABORTED;
		start = REPLAY_WINDOW - len;
		if (start && bpf_xdp_adjust_head(ctx, -(int)start))
			return XDP_ABORTED;
		off += sizeof(b->d) + len;
		if (off == b->total)
			return XDP_PASS;
		if (off > b->total)
			return XDP_ABORTED;
	}
	return XDP_ABORTED; /* more frames than a batch may hold */
}
