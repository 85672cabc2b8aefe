/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Header parsing for flowaudit, in the style of xdp-tools' parsing_helpers.h:
 * a cursor walks the packet, every parser does one bounds check for the
 * fixed part of its header and advances the cursor, loops are capped.
 *
 * Nothing here writes to the packet.
 */
#ifndef FLOWAUDIT_PARSE_H
#define FLOWAUDIT_PARSE_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* ICMP constants (linux/icmp.h drags in libc headers, so they live here). */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
#define ICMP_ECHO 8
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PORT_UNREACH 4
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* PPP protocol numbers inside a PPPoE session (RFC 1332, RFC 5072). */
#define PPP_PROTO_IP 0x0021
#define PPP_PROTO_IPV6 0x0057

/* Caps on the loops below; each is also documented in docs/ARCHITECTURE.md. */
#define VLAN_MAX_DEPTH 2
#define IPV6_EXT_MAX 8
#define MPLS_MAX_LABELS 8
/* The longest link-layer part before IP: Ethernet, two VLAN tags, then
 * PPPoE (8) or a full MPLS stack (4 per label). */
#define L2_MAX (14 + 4 * VLAN_MAX_DEPTH + 4 * MPLS_MAX_LABELS)

struct hdr_cursor {
	void *pos;
};

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* PPPoE session header (RFC 2516) and the PPP protocol field after it. */
struct pppoe_sess_hdr {
	__u8 ver_type; /* 0x11 */
	__u8 code;     /* 0: session data */
	__be16 session;
	__be16 length;
	__be16 ppp_proto;
};

/* One MPLS label stack entry: label(20) TC(3) S(1) TTL(8). */
#define MPLS_BOTTOM_OF_STACK 0x00000100

/* Generic IPv6 extension header (hop-by-hop, routing, destination options). */
struct ipv6_ext {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

/* First bytes shared by TCP, UDP and SCTP: the port pair. */
struct l4_ports {
	__be16 source;
	__be16 dest;
};

/* Parse outcome flags (struct tuple.pflags). */
#define P_TRUNCATED (1 << 0) /* headers ended before the L4 ports */
#define P_FRAGMENT  (1 << 1) /* non-first fragment: no L4 header */
#define P_HAVE_L4   (1 << 2) /* ports (or ICMP type/code) were read */

/*
 * tuple is what the parser extracts from one IP packet. Addresses are kept
 * as 16 bytes, IPv4 as ::ffff:a.b.c.d, so IPv4 and IPv6 share one key.
 */
struct tuple {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport; /* host byte order */
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 pflags;
	__u8 family; /* 4 or 6 */
	__u8 pad[2];
};

static __always_inline void addr_v4mapped(__u8 *dst, __be32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &a, 4);
}

/*
 * parse_ethhdr: Ethernet header plus up to VLAN_MAX_DEPTH 802.1Q / 802.1ad
 * tags. Returns the inner ethertype (network order) or -1 if truncated.
 */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end, __be16 *proto)
{
	struct ethhdr *eth = nh->pos;
	struct vlan_hdr *vlh;
	__be16 p;
	int i;

	if ((void *)(eth + 1) > data_end)
		return -1;
	nh->pos = eth + 1;
	p = eth->h_proto;

#pragma unroll
	for (i = 0; i < VLAN_MAX_DEPTH; i++) {
		if (p != bpf_htons(ETH_P_8021Q) && p != bpf_htons(ETH_P_8021AD))
			break;
		vlh = nh->pos;
		if ((void *)(vlh + 1) > data_end)
			return -1;
		nh->pos = vlh + 1;
		p = vlh->encap_proto;
	}
	*proto = p;
	return 0;
}

/*
 * parse_encap: the encapsulations between Ethernet/VLAN and IP that a host's
 * port can receive: a PPPoE session (ver/type 0x11, code 0, PPP protocol
 * IPv4 or IPv6; a DSL uplink, also over QinQ) and an MPLS label stack of up
 * to MPLS_MAX_LABELS entries whose payload starts with IP version 4 or 6
 * (as the kernel's MPLS code and tshark decide it: there is no type field).
 * Returns the IP ethertype with the cursor at the IP header, or proto
 * unchanged when nothing IP is inside (PPP control protocols, a
 * pseudowire, a stack deeper than the cap, any other ethertype); *cut is
 * set when the encapsulation's own header ends early.
 */
static __always_inline __be16 parse_encap(struct hdr_cursor *nh, void *data_end, __be16 proto, int *cut)
{
	if (proto == bpf_htons(ETH_P_PPP_SES)) {
		struct pppoe_sess_hdr *ph = nh->pos;

		if ((void *)(ph + 1) > data_end) {
			*cut = 1;
			return proto;
		}
		if (ph->ver_type != 0x11 || ph->code != 0)
			return proto;
		if (ph->ppp_proto == bpf_htons(PPP_PROTO_IP)) {
			nh->pos = ph + 1;
			return bpf_htons(ETH_P_IP);
		}
		if (ph->ppp_proto == bpf_htons(PPP_PROTO_IPV6)) {
			nh->pos = ph + 1;
			return bpf_htons(ETH_P_IPV6);
		}
		return proto;
	}
	if (proto == bpf_htons(ETH_P_MPLS_UC) || proto == bpf_htons(ETH_P_MPLS_MC)) {
		void *pos = nh->pos;
		int i;

#pragma unroll
		for (i = 0; i < MPLS_MAX_LABELS; i++) {
			__be32 *lse = pos;
			__u8 *first;

			if ((void *)(lse + 1) > data_end) {
				*cut = 1;
				return proto;
			}
			pos = lse + 1;
			if (!(*lse & bpf_htonl(MPLS_BOTTOM_OF_STACK)))
				continue;
			first = pos;
			if ((void *)(first + 1) > data_end) {
				*cut = 1;
				return proto;
			}
			switch (*first >> 4) {
			case 4:
				nh->pos = pos;
				return bpf_htons(ETH_P_IP);
			case 6:
				nh->pos = pos;
				return bpf_htons(ETH_P_IPV6);
			}
			return proto;
		}
		return proto; /* deeper than the cap */
	}
	return proto;
}

/*
 * parse_l4: read ports (TCP/UDP/SCTP, the first 4 bytes), TCP flags (byte
 * 13) and ICMP type/code. Ports are read even when the rest of the header
 * was cut by a short snap length, which is why TCP needs a second check.
 */
static __always_inline void parse_l4(struct hdr_cursor *nh, void *data_end, struct tuple *t)
{
	switch (t->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		struct l4_ports *lp = nh->pos;

		if ((void *)(lp + 1) > data_end) {
			t->pflags |= P_TRUNCATED;
			return;
		}
		t->sport = bpf_ntohs(lp->source);
		t->dport = bpf_ntohs(lp->dest);
		t->pflags |= P_HAVE_L4;
		if (t->proto == IPPROTO_TCP) {
			__u8 *fl = nh->pos + 13;

			if ((void *)(fl + 1) > data_end)
				t->pflags |= P_TRUNCATED;
			else
				t->tcp_flags = *fl;
		}
		return;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 *tc = nh->pos;

		if ((void *)(tc + 2) > data_end) {
			t->pflags |= P_TRUNCATED;
			return;
		}
		t->icmp_type = tc[0];
		t->icmp_code = tc[1];
		t->pflags |= P_HAVE_L4;
		nh->pos = tc + 8; /* ICMP header incl. the unused/MTU word */
		return;
	}
	}
}

/*
 * parse_ipv4: header with options (IHL), fragments. Leaves the cursor at
 * the L4 header. Returns -1 if the fixed header is truncated or malformed
 * (IHL < 5, or a version other than 4).
 */
static __always_inline int parse_ipv4(struct hdr_cursor *nh, void *data_end, struct tuple *t)
{
	struct iphdr *iph = nh->pos;
	int hdrsize;

	if ((void *)(iph + 1) > data_end)
		return -1;
	/* The version must agree with the ethertype: ip_rcv drops the rest. */
	if (iph->version != 4)
		return -1;
	hdrsize = iph->ihl * 4;
	if (hdrsize < (int)sizeof(*iph))
		return -1;
	t->family = 4;
	t->proto = iph->protocol;
	addr_v4mapped(t->src, iph->saddr);
	addr_v4mapped(t->dst, iph->daddr);
	nh->pos += hdrsize;
	if (iph->frag_off & bpf_htons(0x1fff))
		t->pflags |= P_FRAGMENT;
	return 0;
}

/*
 * parse_ipv6: fixed header, then walk up to IPV6_EXT_MAX extension headers
 * (hop-by-hop, routing, destination options, fragment). AH, ESP and the
 * mobility header (135, whose "payload proto" is 59 by RFC 6275: walking
 * over it would hide Mobile IPv6 signalling under "no next header") end
 * the walk and are counted as protocols of their own, as the kernel does.
 */
static __always_inline int parse_ipv6(struct hdr_cursor *nh, void *data_end, struct tuple *t)
{
	struct ipv6hdr *ip6h = nh->pos;
	__u8 nexthdr;
	int i;

	if ((void *)(ip6h + 1) > data_end)
		return -1;
	if (ip6h->version != 6)
		return -1;
	t->family = 6;
	__builtin_memcpy(t->src, &ip6h->saddr, 16);
	__builtin_memcpy(t->dst, &ip6h->daddr, 16);
	nh->pos = ip6h + 1;
	nexthdr = ip6h->nexthdr;

	for (i = 0; i < IPV6_EXT_MAX; i++) {
		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS: {
			struct ipv6_ext *eh = nh->pos;

			if ((void *)(eh + 1) > data_end)
				goto truncated;
			nexthdr = eh->nexthdr;
			nh->pos += (eh->hdrlen + 1) * 8;
			break;
		}
		case IPPROTO_FRAGMENT: {
			struct ipv6_frag *fh = nh->pos;

			if ((void *)(fh + 1) > data_end)
				goto truncated;
			nexthdr = fh->nexthdr;
			nh->pos = fh + 1;
			if (fh->frag_off & bpf_htons(0xfff8)) {
				t->proto = nexthdr;
				t->pflags |= P_FRAGMENT;
				return 0;
			}
			break;
		}
		default:
			goto done;
		}
	}
	/* More extension headers than the cap: count what we know. */
	t->pflags |= P_TRUNCATED;
done:
	t->proto = nexthdr;
	return 0;
truncated:
	t->proto = nexthdr;
	t->pflags |= P_TRUNCATED;
	return 0;
}

/*
 * parse_ip: one IP packet (outer or the one embedded in an ICMP error).
 * Returns -1 if even the fixed IP header is missing.
 */
static __always_inline int parse_ip(struct hdr_cursor *nh, void *data_end, __be16 ethertype,
				    struct tuple *t)
{
	int ret;

	if (ethertype == bpf_htons(ETH_P_IP))
		ret = parse_ipv4(nh, data_end, t);
	else
		ret = parse_ipv6(nh, data_end, t);
	if (ret < 0)
		return ret;
	if (!(t->pflags & (P_FRAGMENT | P_TRUNCATED)))
		parse_l4(nh, data_end, t);
	return 0;
}

#endif /* FLOWAUDIT_PARSE_H */
