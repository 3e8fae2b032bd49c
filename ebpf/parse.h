/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * parse.h - bounds-checked header parsers over a cursor.
 *
 * Every parser takes the cursor and data_end, checks that the whole header
 * it reads lies inside the packet, and advances the cursor past it.  A
 * parser that fails leaves the cursor where it was and returns a negative
 * value; the caller turns that into the reason `malformed`.
 */
#ifndef CRMGUARD_PARSE_H
#define CRMGUARD_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define CG_MAX_VLAN_TAGS 2
#define CG_MAX_IPV6_EXT 6

#ifndef IPPROTO_MH
#define IPPROTO_MH 135
#endif

/* The first four bytes of ICMP and ICMPv6 headers; the kernel's own headers
 * pull in libc socket headers that do not build for the BPF target. */
struct icmp_head {
	__u8 type;
	__u8 code;
	__sum16 checksum;
};

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4 /* code of ICMP_DEST_UNREACH */
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_PARAMPROB 4
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

struct cursor {
	void *pos;
};

/*
 * What the decision needs to know about a packet, filled by the parsers.
 * IPv4 addresses are stored v4-mapped (::ffff:a.b.c.d) in the 16-byte
 * fields, so that keys shared by both families have one shape.
 */
struct pkt {
	__u8 src[16];
	__u8 dst[16];
	__be32 src4;     /* IPv4 only: the key of the IPv4 maps */
	__u32 l4_len;    /* transport header and payload, per the IP lengths */
	__u32 frag_id;
	__u32 frag_off;  /* in bytes; 0 for a first or unfragmented packet */
	__u8 more_frags;
	__u8 family;     /* 4 or 6 */
	__u8 proto;
	__u8 frag_proto; /* the protocol fragments are keyed by: IPv4's, or
			  * the next header of IPv6's fragment header */
	void *l4;        /* the transport header */
};

struct vlan_tag {
	__be16 tci;
	__be16 encap_proto;
};

static __always_inline int proto_is_vlan(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

/*
 * Ethernet plus up to CG_MAX_VLAN_TAGS 802.1Q/802.1ad tags.  Returns the
 * inner EtherType in network order, or -1 when the frame is truncated or
 * carries more tags than we parse (such a frame is malformed for us: we do
 * not pass what we cannot see into).
 */
static __always_inline int parse_ethernet(struct cursor *c, void *data_end, __be16 *proto)
{
	struct ethhdr *eth = c->pos;
	struct vlan_tag *tag;
	__be16 type;
	int i;

	if ((void *)(eth + 1) > data_end)
		return -1;
	type = eth->h_proto;
	c->pos = eth + 1;

#pragma unroll
	for (i = 0; i < CG_MAX_VLAN_TAGS; i++) {
		if (!proto_is_vlan(type))
			break;
		tag = c->pos;
		if ((void *)(tag + 1) > data_end)
			return -1;
		type = tag->encap_proto;
		c->pos = tag + 1;
	}
	if (proto_is_vlan(type))
		return -1;
	*proto = type;
	return 0;
}

/*
 * The IPv4 header with its options, when the frame need not hold the
 * payload: checks version, IHL, that the options are inside the frame and
 * that the total length covers the header.  tc egress uses it directly: the
 * kernel keeps the payload of an outgoing packet in pages the program cannot
 * read, so only the headers are in the frame there.
 */
static __always_inline int parse_ipv4_head(struct cursor *c, void *data_end, struct iphdr **out)
{
	struct iphdr *ip = c->pos;
	__u32 hdr_len;

	if ((void *)(ip + 1) > data_end)
		return -1;
	if (ip->version != 4 || ip->ihl < 5)
		return -1;
	hdr_len = ip->ihl * 4;
	if (c->pos + hdr_len > data_end)
		return -1;
	if (bpf_ntohs(ip->tot_len) < hdr_len)
		return -1;
	c->pos += hdr_len;
	*out = ip;
	return 0;
}

/*
 * IPv4 with options, as parse_ipv4_head, and the total length does not claim
 * more bytes than the frame holds.
 */
static __always_inline int parse_ipv4(struct cursor *c, void *data_end, struct iphdr **out)
{
	void *start = c->pos;
	struct iphdr *ip;

	if (parse_ipv4_head(c, data_end, &ip) < 0)
		return -1;
	if (start + bpf_ntohs(ip->tot_len) > data_end) {
		c->pos = start;
		return -1;
	}
	*out = ip;
	return 0;
}

/* The fixed IPv6 header, when the frame need not hold the payload (tc
 * egress, as for parse_ipv4_head). */
static __always_inline int parse_ipv6_head(struct cursor *c, void *data_end,
					   struct ipv6hdr **out)
{
	struct ipv6hdr *ip6 = c->pos;

	if ((void *)(ip6 + 1) > data_end)
		return -1;
	if (ip6->version != 6)
		return -1;
	c->pos = ip6 + 1;
	*out = ip6;
	return 0;
}

/* IPv6, and the payload length does not claim more bytes than the frame
 * holds. */
static __always_inline int parse_ipv6(struct cursor *c, void *data_end, struct ipv6hdr **out)
{
	void *start = c->pos;
	struct ipv6hdr *ip6;

	if (parse_ipv6_head(c, data_end, &ip6) < 0)
		return -1;
	if ((void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len) > data_end) {
		c->pos = start;
		return -1;
	}
	*out = ip6;
	return 0;
}

struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3 | flags; M is bit 0 */
	__be32 identification;
};

/* Result of walking the IPv6 extension header chain. */
enum ext_walk {
	EXT_OK = 0,         /* *nexthdr is an upper-layer protocol */
	EXT_TRUNCATED = -1, /* a header runs past the packet: malformed */
	EXT_REJECT = -2,    /* an extension we do not walk, or too many */
};

static __always_inline int ipv6_is_unwalked_ext(__u8 next)
{
	/* Mobility, HIP, Shim6 and the experimental numbers: headers that can
	 * hide the transport header from a filter and that a CRM host has no
	 * use for. */
	return next == IPPROTO_MH || next == 139 || next == 140 || next == 253 || next == 254;
}

/*
 * Walks hop-by-hop, routing, destination-options, authentication and
 * fragment headers, at most CG_MAX_IPV6_EXT of them (one more loop turn
 * looks at what follows the last one).  On EXT_OK the cursor is
 * at the upper-layer header and *nexthdr names it.  *frag_off receives the
 * fragment offset in bytes and *more whether more fragments follow (both 0
 * when unfragmented), *frag_id the fragment identification.
 */
static __always_inline int walk_ipv6_ext(struct cursor *c, void *data_end, __u8 *nexthdr,
					 __u32 *frag_off, int *more, __u32 *frag_id,
					 __u8 *frag_next)
{
	__u8 next = *nexthdr;
	int i;

#pragma unroll
	for (i = 0; i < CG_MAX_IPV6_EXT + 1; i++) {
		__u8 *h = c->pos;
		__u32 len;

		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if ((void *)(h + 2) > data_end)
				return EXT_TRUNCATED;
			len = ((__u32)h[1] + 1) * 8;
			break;
		case IPPROTO_AH:
			if ((void *)(h + 2) > data_end)
				return EXT_TRUNCATED;
			len = ((__u32)h[1] + 2) * 4;
			break;
		case IPPROTO_FRAGMENT: {
			struct ipv6_frag_hdr *f = c->pos;
			__u16 off;

			if ((void *)(f + 1) > data_end)
				return EXT_TRUNCATED;
			off = bpf_ntohs(f->frag_off);
			*frag_off = off & 0xfff8;
			*more = off & 1;
			*frag_id = bpf_ntohl(f->identification);
			*frag_next = f->nexthdr;
			len = sizeof(*f);
			break;
		}
		default:
			if (ipv6_is_unwalked_ext(next))
				return EXT_REJECT;
			*nexthdr = next;
			return EXT_OK;
		}
		if (c->pos + len > data_end)
			return EXT_TRUNCATED;
		next = h[0];
		c->pos += len;
		/* A later fragment carries payload, not headers: what follows
		 * its fragment header is no header at all. */
		if (*frag_off)
			next = IPPROTO_NONE;
	}
	/* A seventh extension header: too many. */
	return EXT_REJECT;
}

#endif /* CRMGUARD_PARSE_H */
