/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * verdict.h - the policy decision for one packet.
 *
 * decide() returns a reason; the reason alone says pass or drop (pass reasons
 * are >= CG_R_NON_IP).  The agent's reference model (agent/src/model.rs)
 * implements the same rules in Rust; a change here changes it there too.
 */
#ifndef CRMGUARD_VERDICT_H
#define CRMGUARD_VERDICT_H

#include "parse.h"
#include "maps.h"

static __always_inline int reason_is_pass(__u32 reason)
{
	return reason >= CG_R_NON_IP;
}

static __always_inline int denied4(__be32 src)
{
	struct cg_lpm4 key = { .prefixlen = 32, .addr_be = src };

	if (bpf_map_lookup_elem(&cg_deny4, &src))
		return 1;
	return bpf_map_lookup_elem(&cg_deny4_lpm, &key) != NULL;
}

static __always_inline int denied6(const struct in6_addr *src)
{
	struct cg_lpm6 key = { .prefixlen = 128 };

	__builtin_memcpy(key.addr, src, 16);
	if (bpf_map_lookup_elem(&cg_deny6, key.addr))
		return 1;
	return bpf_map_lookup_elem(&cg_deny6_lpm, &key) != NULL;
}

static __always_inline __u32 default_reason(const struct cg_config *cfg)
{
	return cfg->default_action == CG_ACT_PASS ? CG_R_DEFAULT_ALLOW : CG_R_DEFAULT_DROP;
}

/* ICMPv4 types by policy.  "none" still lets PMTU discovery work. */
static __always_inline __u32 icmp4_reason(__u8 type, __u8 code, const struct cg_config *cfg)
{
	__u8 policy = cfg->icmp;

	if (policy == CG_ICMP_ALL)
		return CG_R_ICMP;
	if (type == ICMP_DEST_UNREACH && code == ICMP_FRAG_NEEDED)
		return CG_R_ICMP;
	if (policy == CG_ICMP_NONE)
		return default_reason(cfg);
	switch (type) {
	case ICMP_ECHOREPLY:
	case ICMP_DEST_UNREACH:
	case ICMP_ECHO:
	case ICMP_TIME_EXCEEDED:
	case ICMP_PARAMETERPROB:
		return CG_R_ICMP;
	}
	return default_reason(cfg);
}

/* ICMPv6 types by policy.  "none" keeps PMTU discovery and neighbour
 * discovery, without which IPv6 does not work at all. */
static __always_inline __u32 icmp6_reason(__u8 type, const struct cg_config *cfg)
{
	__u8 policy = cfg->icmp;

	if (policy == CG_ICMP_ALL)
		return CG_R_ICMP;
	if (type == ICMPV6_PKT_TOOBIG || (type >= 133 && type <= 137))
		return CG_R_ICMP;
	if (policy == CG_ICMP_NONE)
		return default_reason(cfg);
	switch (type) {
	case ICMPV6_DEST_UNREACH:
	case ICMPV6_TIME_EXCEED:
	case ICMPV6_PARAMPROB:
	case ICMPV6_ECHO_REQUEST:
	case ICMPV6_ECHO_REPLY:
	case 130: /* multicast listener query, report, done */
	case 131:
	case 132:
	case 143: /* MLDv2 report */
		return CG_R_ICMP;
	}
	return default_reason(cfg);
}

/*
 * The WireGuard port takes only what is shaped like a WireGuard message:
 * type 1..4 with three zero reserved bytes, and the exact size of each
 * handshake message.  Data messages are not required to be a multiple of 16
 * long, because some clients do not pad.
 */
static __always_inline __u32 wireguard_reason(struct udphdr *udp, void *data_end)
{
	__u8 *msg = (__u8 *)(udp + 1);
	__u32 len = bpf_ntohs(udp->len) - sizeof(*udp);

	if ((void *)(msg + 4) > data_end)
		return CG_R_WG_MALFORMED;
	if (msg[1] | msg[2] | msg[3])
		return CG_R_WG_MALFORMED;
	switch (msg[0]) {
	case 1:
		return len == 148 ? CG_R_WIREGUARD : CG_R_WG_MALFORMED;
	case 2:
		return len == 92 ? CG_R_WIREGUARD : CG_R_WG_MALFORMED;
	case 3:
		return len == 64 ? CG_R_WIREGUARD : CG_R_WG_MALFORMED;
	case 4:
		return len >= 32 ? CG_R_WIREGUARD : CG_R_WG_MALFORMED;
	}
	return CG_R_WG_MALFORMED;
}

/* The source of a packet, in the form both families' lookups take. */
struct source {
	int v6;
	__be32 addr4;
	__u8 addr6[16];
};

static __always_inline int from_allowed(const struct cg_svc *svc, const struct source *src)
{
	if (svc->flags & CG_SVC_FROM_ANY)
		return 1;
	if (src->v6) {
		struct cg_svc_lpm6 key = { .prefixlen = 32 + 128,
					   .svc_id_be = bpf_htonl(svc->svc_id) };

		__builtin_memcpy(key.addr, src->addr6, 16);
		return bpf_map_lookup_elem(&cg_svc_from6, &key) != NULL;
	} else {
		struct cg_svc_lpm4 key = { .prefixlen = 32 + 32,
					   .svc_id_be = bpf_htonl(svc->svc_id),
					   .addr_be = src->addr4 };

		return bpf_map_lookup_elem(&cg_svc_from4, &key) != NULL;
	}
}

static __always_inline __u32 service_reason(__u8 proto, __be16 dport, const struct source *src,
					    const struct cg_config *cfg)
{
	struct cg_svc_key key = { .proto = proto, .port_be = dport };
	struct cg_svc *svc = bpf_map_lookup_elem(&cg_svc, &key);

	if (svc && from_allowed(svc, src))
		return CG_R_SERVICE;
	return default_reason(cfg);
}

/* Transport layer: the cursor is at the header named by proto. */
static __always_inline __u32 l4_reason(struct cursor *c, void *data_end, __u8 proto,
				       const struct source *src, const struct cg_config *cfg)
{
	switch (proto) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = c->pos;

		if ((void *)(tcp + 1) > data_end)
			return CG_R_MALFORMED;
		if (tcp->doff < 5 || c->pos + tcp->doff * 4 > data_end)
			return CG_R_MALFORMED;
		return service_reason(IPPROTO_TCP, tcp->dest, src, cfg);
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = c->pos;
		__u16 len;

		if ((void *)(udp + 1) > data_end)
			return CG_R_MALFORMED;
		len = bpf_ntohs(udp->len);
		if (len < sizeof(*udp) || c->pos + len > data_end)
			return CG_R_MALFORMED;
		if (cfg->wg_port_be && udp->dest == cfg->wg_port_be)
			return wireguard_reason(udp, data_end);
		return service_reason(IPPROTO_UDP, udp->dest, src, cfg);
	}
	case IPPROTO_ICMP: {
		struct icmp_head *icmp = c->pos;

		if (src->v6)
			return default_reason(cfg);
		if ((void *)(icmp + 1) > data_end)
			return CG_R_MALFORMED;
		return icmp4_reason(icmp->type, icmp->code, cfg);
	}
	case IPPROTO_ICMPV6: {
		struct icmp_head *icmp6 = c->pos;

		if (!src->v6)
			return default_reason(cfg);
		if ((void *)(icmp6 + 1) > data_end)
			return CG_R_MALFORMED;
		return icmp6_reason(icmp6->type, cfg);
	}
	}
	return default_reason(cfg);
}

static __always_inline __u32 ipv4_reason(struct cursor *c, void *data_end,
					 const struct cg_config *cfg)
{
	struct source src = { .v6 = 0 };
	struct iphdr *ip;
	__u16 frag;

	if (parse_ipv4(c, data_end, &ip) < 0)
		return CG_R_MALFORMED;
	src.addr4 = ip->saddr;
	if (denied4(src.addr4))
		return CG_R_DENIED_SOURCE;
	frag = bpf_ntohs(ip->frag_off);
	if (frag & 0x1fff)
		return CG_R_FRAGMENT_ORPHAN;
	return l4_reason(c, data_end, ip->protocol, &src, cfg);
}

static __always_inline __u32 ipv6_reason(struct cursor *c, void *data_end,
					 const struct cg_config *cfg)
{
	struct source src = { .v6 = 1 };
	struct ipv6hdr *ip6;
	__u32 frag_off = 0, frag_id = 0;
	int more = 0, walk;
	__u8 next;

	if (parse_ipv6(c, data_end, &ip6) < 0)
		return CG_R_MALFORMED;
	__builtin_memcpy(src.addr6, &ip6->saddr, 16);
	if (denied6(&ip6->saddr))
		return CG_R_DENIED_SOURCE;
	next = ip6->nexthdr;
	walk = walk_ipv6_ext(c, data_end, &next, &frag_off, &more, &frag_id);
	if (walk == EXT_TRUNCATED)
		return CG_R_MALFORMED;
	if (walk == EXT_REJECT)
		return CG_R_IPV6_EXT_HEADER;
	if (frag_off)
		return CG_R_FRAGMENT_ORPHAN;
	return l4_reason(c, data_end, next, &src, cfg);
}

static __always_inline __u32 decide(void *data, void *data_end, const struct cg_config *cfg)
{
	struct cursor c = { .pos = data };
	__be16 proto;

	if (parse_ethernet(&c, data_end, &proto) < 0)
		return CG_R_MALFORMED;
	if (proto == bpf_htons(ETH_P_IP))
		return ipv4_reason(&c, data_end, cfg);
	if (proto == bpf_htons(ETH_P_IPV6))
		return ipv6_reason(&c, data_end, cfg);
	return CG_R_NON_IP;
}

#endif /* CRMGUARD_VERDICT_H */
