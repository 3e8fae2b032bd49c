/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * verdict.h - the policy decision for one packet.
 *
 * decide() returns a reason; the reason alone says pass or drop (pass reasons
 * are >= CG_R_NON_IP).  The order is the one CONTRACT.md section 1 gives:
 * malformed, deny set, bans, fragments, then by transport: ICMP, the
 * WireGuard port, public services (with their rate limits), replies to the
 * host's own connections, and the default.
 *
 * The agent's reference model (agent/src/model.rs) implements the same rules
 * in Rust and a differential test holds the two together: a change here is a
 * change there.
 */
#ifndef CRMGUARD_VERDICT_H
#define CRMGUARD_VERDICT_H

#include "parse.h"
#include "maps.h"
#include "ratelimit.h"
#include "clock.h"

#define NSEC_PER_SEC 1000000000ULL

static __always_inline int reason_is_pass(__u32 reason)
{
	return reason >= CG_R_NON_IP;
}

static __always_inline __u32 default_reason(const struct cg_config *cfg)
{
	return cfg->default_action == CG_ACT_PASS ? CG_R_DEFAULT_ALLOW : CG_R_DEFAULT_DROP;
}

static __always_inline void *slot_map(void *outer, __u32 slot)
{
	return bpf_map_lookup_elem(outer, &slot);
}

/* ---- parsing into struct pkt ------------------------------------------- */

static __always_inline void v4_mapped(__u8 *out, __be32 addr)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr, 4);
}

/* Returns 0, or the reason the packet cannot be judged. */
static __always_inline __u32 parse_l3(struct cursor *c, void *data_end, __be16 proto,
				      struct pkt *p)
{
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip;
		__u16 frag;

		if (parse_ipv4(c, data_end, &ip) < 0)
			return CG_R_MALFORMED;
		p->family = 4;
		p->proto = ip->protocol;
		p->frag_proto = ip->protocol;
		p->src4 = ip->saddr;
		v4_mapped(p->src, ip->saddr);
		v4_mapped(p->dst, ip->daddr);
		p->l4_len = bpf_ntohs(ip->tot_len) - ip->ihl * 4;
		frag = bpf_ntohs(ip->frag_off);
		p->frag_off = (frag & 0x1fff) * 8;
		p->more_frags = (frag & 0x2000) != 0;
		p->frag_id = bpf_ntohs(ip->id);
		p->l4 = c->pos;
		return 0;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6;
		__u32 frag_off = 0, frag_id = 0;
		__u8 next, frag_next = 0;
		int more = 0, walk;

		if (parse_ipv6(c, data_end, &ip6) < 0)
			return CG_R_MALFORMED;
		p->family = 6;
		__builtin_memcpy(p->src, &ip6->saddr, 16);
		__builtin_memcpy(p->dst, &ip6->daddr, 16);
		next = ip6->nexthdr;
		walk = walk_ipv6_ext(c, data_end, &next, &frag_off, &more, &frag_id, &frag_next);
		if (walk == EXT_TRUNCATED)
			return CG_R_MALFORMED;
		if (walk == EXT_REJECT)
			return CG_R_IPV6_EXT_HEADER;
		p->proto = next;
		p->frag_proto = frag_next;
		p->l4_len = bpf_ntohs(ip6->payload_len) - (__u32)(c->pos - (void *)(ip6 + 1));
		p->frag_off = frag_off;
		p->more_frags = more;
		p->frag_id = frag_id;
		p->l4 = c->pos;
		/* The extension headers claim more than the payload holds. */
		if (p->l4_len > 0xffff)
			return CG_R_MALFORMED;
		return 0;
	}
	return CG_R_NON_IP;
}

/* ---- the deny set and bans ---------------------------------------------- */

/* The hash that places an entry in the IPv4 deny table (see the ABI header). */
static __always_inline __u64 cg_deny4_hash(__u64 entry)
{
	__u64 h = (entry ^ CG_DENY4_SEED) * CG_RL_K1;

	h = (h ^ (h >> 32)) * CG_RL_K2;
	return h ^ (h >> 29);
}

static __always_inline int bucket_holds(const struct cg_deny4_bucket *b, __u64 entry)
{
	return b && (b->entry[0] == entry || b->entry[1] == entry || b->entry[2] == entry ||
		     b->entry[3] == entry);
}

static __always_inline int bucket_full(const struct cg_deny4_bucket *b)
{
	return b->entry[0] && b->entry[1] && b->entry[2] && b->entry[3];
}

/*
 * Whether the table of 2^bits buckets holds `addr` (host order, masked) as a
 * prefix of `len`.  An entry is in its second bucket only when its first is
 * full (see the ABI header), so an address the first bucket does not hold,
 * with room left in it, is not in the table: most misses read one bucket.
 */
static __always_inline int deny4_holds(void *table, const __u32 bits, __u32 addr, __u32 len)
{
	__u64 entry = ((__u64)(len + 1) << 32) | addr;
	__u64 h = cg_deny4_hash(entry);
	__u32 first = (__u32)(h >> (64 - bits));
	__u32 second = (__u32)(h >> (64 - 2 * bits)) & ((1U << bits) - 1);
	struct cg_deny4_bucket *b = bpf_map_lookup_elem(table, &first);

	if (!b)
		return 0; /* unreachable: both places are below 2^bits */
	if (bucket_holds(b, entry))
		return 1;
	return bucket_full(b) && bucket_holds(bpf_map_lookup_elem(table, &second), entry);
}

/* The single address, then the prefixes of each length the slot probes, in
 * a table of 2^bits buckets.  `lens` holds the lengths, the first in its
 * lowest byte. */
static __always_inline int deny4_in(void *table, const __u32 bits, __u32 addr, __u32 probes,
				    __u32 lens)
{
	__u32 len;
	int i;

	if (!table)
		return 0;
	if (deny4_holds(table, bits, addr, 32))
		return 1;
	for (i = 0; i < CG_DENY4_PROBES; i++) {
		if (i >= probes)
			break;
		len = (lens >> (8 * i)) & 31;
		if (deny4_holds(table, bits, len ? addr & (~0U << (32 - len)) : 0, len))
			return 1;
	}
	return 0;
}

/*
 * Whether the slot's IPv4 deny table holds `addr` (host order), in the
 * table of the slot's size: each lookup is into a map of a size the verifier
 * knows, which it inlines.  A global function of scalars: the verifier checks
 * its probes once, on their own, not with every path of the verdict.
 */
__attribute__((noinline)) int cg_deny4_holds(__u32 addr, __u32 slot, __u32 bits_probes,
					     __u32 lens)
{
	__u32 probes = (bits_probes >> 8) & 0xff;

	switch (bits_probes & 0xff) {
	case CG_DENY4_BITS_S:
		return deny4_in(slot_map(&cg_deny4_s, slot), CG_DENY4_BITS_S, addr, probes, lens);
	case CG_DENY4_BITS_M:
		return deny4_in(slot_map(&cg_deny4_m, slot), CG_DENY4_BITS_M, addr, probes, lens);
	case CG_DENY4_BITS_L:
		return deny4_in(slot_map(&cg_deny4_l, slot), CG_DENY4_BITS_L, addr, probes, lens);
	}
	return 0;
}

static __always_inline int deny4_table_holds(const struct pkt *p, const struct cg_config *cfg,
					     __u32 slot)
{
	__u32 lens = cfg->deny4_len[0] | (__u32)cfg->deny4_len[1] << 8 |
		     (__u32)cfg->deny4_len[2] << 16 | (__u32)cfg->deny4_len[3] << 24;

	return cg_deny4_holds(bpf_ntohl(p->src4), slot,
			      cfg->deny4_bits | (__u32)cfg->deny4_probes << 8, lens);
}

static __always_inline int denied(const struct pkt *p, const struct cg_config *cfg, __u32 slot)
{
	void *hash, *trie;

	if (p->family == 4) {
		struct cg_lpm4 key = { .prefixlen = 32, .addr_be = p->src4 };

		if (deny4_table_holds(p, cfg, slot))
			return 1;
		if (!(cfg->flags & CG_CFG_DENY4_PREFIXES))
			return 0;
		trie = slot_map(&cg_deny4_lpm, slot);
		return trie && bpf_map_lookup_elem(trie, &key);
	} else {
		struct cg_lpm6 key = { .prefixlen = 128 };

		__builtin_memcpy(key.addr, p->src, 16);
		hash = slot_map(&cg_deny6, slot);
		if (hash && bpf_map_lookup_elem(hash, key.addr))
			return 1;
		if (!(cfg->flags & CG_CFG_DENY6_PREFIXES))
			return 0;
		trie = slot_map(&cg_deny6_lpm, slot);
		return trie && bpf_map_lookup_elem(trie, &key);
	}
}

static __always_inline int ban_active(const struct cg_ban *ban)
{
	return ban && (ban->expires_ns == 0 || !clock_past(ban->expires_ns - 1));
}

static __always_inline int banned(const struct pkt *p)
{
	__u32 zero = 0, *flags = bpf_map_lookup_elem(&cg_ban_flags, &zero);
	__u32 present = flags ? *flags : 0;

	if (!present)
		return 0;
	if (p->family == 4) {
		struct cg_lpm4 key = { .prefixlen = 32, .addr_be = p->src4 };

		if ((present & CG_BAN_HOSTS4) &&
		    ban_active(bpf_map_lookup_elem(&cg_ban4, &p->src4)))
			return 1;
		return (present & CG_BAN_PREFIXES4) &&
		       ban_active(bpf_map_lookup_elem(&cg_ban4_lpm, &key));
	} else {
		struct cg_lpm6 key = { .prefixlen = 128 };

		__builtin_memcpy(key.addr, p->src, 16);
		if ((present & CG_BAN_HOSTS6) &&
		    ban_active(bpf_map_lookup_elem(&cg_ban6, key.addr)))
			return 1;
		return (present & CG_BAN_PREFIXES6) &&
		       ban_active(bpf_map_lookup_elem(&cg_ban6_lpm, &key));
	}
}

/* ---- fragments ------------------------------------------------------------ */

static __always_inline void frag_key(const struct pkt *p, struct cg_frag_key *key)
{
	__builtin_memcpy(key->src, p->src, 16);
	__builtin_memcpy(key->dst, p->dst, 16);
	key->id = p->frag_id;
	key->proto = p->frag_proto;
	key->family = p->family;
}

/* A later fragment takes its first fragment's verdict; without one it is an
 * orphan.  A TCP fragment that would overlap the first 24 bytes of the TCP
 * header (the ports, flags and window: the RFC 1858 rewrite) is malformed. */
static __always_inline __u32 later_fragment_reason(const struct pkt *p)
{
	struct cg_frag_key key = {};
	struct cg_frag *first;

	if (p->frag_proto == IPPROTO_TCP && p->frag_off < 24)
		return CG_R_MALFORMED;
	frag_key(p, &key);
	first = bpf_map_lookup_elem(&cg_frags, &key);
	if (!first || clock_past(first->expires_ns))
		return CG_R_FRAGMENT_ORPHAN;
	return reason_is_pass(first->reason) ? CG_R_FRAGMENT : first->reason;
}

static __always_inline void remember_first_fragment(const struct pkt *p, __u32 reason)
{
	struct cg_frag_key key = {};
	struct cg_frag value = { .expires_ns = clock_read() + CG_FRAG_TIMEOUT_S * NSEC_PER_SEC,
				 .reason = reason };

	frag_key(p, &key);
	bpf_map_update_elem(&cg_frags, &key, &value, BPF_ANY);
}

/* ---- replies to the host's own connections ------------------------------- */

/* The entry of cg_flow4_cache that would hold the connection (see the ABI
 * header). */
static __always_inline __u32 flow4_cache_index(__u64 w, __u32 ports)
{
	__u64 h = (w ^ CG_FLOW4_CACHE_SEED) * CG_RL_K1;

	h = ((h ^ (h >> 32)) ^ ports) * CG_RL_K2;
	return (__u32)(h >> (64 - CG_FLOW4_CACHE_BITS));
}

/*
 * Whether cg_flows4 holds the IPv4 TCP connection, unexpired.  This CPU's
 * cache answers for a connection it holds until the expiry it copied, which
 * tc egress moves later (see the ABI header); otherwise cg_flows4 does, and a
 * live connection goes into the cache.  A global function of
 * scalars, like cg_deny4_holds: the verifier checks it once.
 */
__attribute__((noinline)) int cg_flow4_live(__be32 local, __be32 remote, __be16 local_port,
					    __be16 remote_port)
{
	struct cg_flow4_key key = {
		.local = local,
		.remote = remote,
		.local_port_be = local_port,
		.remote_port_be = remote_port,
	};
	__u64 w = (__u64)local | (__u64)remote << 32;
	__u32 ports = (__u32)local_port | (__u32)remote_port << 16;
	__u32 index = flow4_cache_index(w, ports);
	struct cg_flow4_cached *cached = bpf_map_lookup_elem(&cg_flow4_cache, &index);
	struct cg_flow *flow;
	__u64 expires;

	if (cached && cached->key.local == local && cached->key.remote == remote &&
	    cached->key.local_port_be == local_port && cached->key.remote_port_be == remote_port &&
	    !clock_past(cached->expires_ns))
		return 1;
	flow = bpf_map_lookup_elem(&cg_flows4, &key);
	if (!flow)
		return 0;
	expires = flow->expires_ns;
	if (clock_past(expires))
		return 0;
	if (cached) {
		cached->key = key;
		cached->expires_ns = expires;
	}
	return 1;
}

static __always_inline int established(const struct pkt *p, __be16 local_port, __be16 remote_port,
				       const struct cg_config *cfg)
{
	struct cg_flow_key key = {};
	struct cg_flow *flow;

	if (!(cfg->flags & CG_CFG_ALLOW_ESTABLISHED))
		return 0;
	if (p->proto == IPPROTO_TCP && p->family == 4) {
		__be32 local;

		__builtin_memcpy(&local, &p->dst[12], 4);
		return cg_flow4_live(local, p->src4, local_port, remote_port);
	}
	__builtin_memcpy(key.local, p->dst, 16);
	__builtin_memcpy(key.remote, p->src, 16);
	key.local_port_be = local_port;
	key.remote_port_be = remote_port;
	key.proto = p->proto;
	key.family = p->family;
	/* TCP connections and datagram flows are kept apart (see the ABI header). */
	if (p->proto == IPPROTO_TCP)
		flow = bpf_map_lookup_elem(&cg_flows, &key);
	else
		flow = bpf_map_lookup_elem(&cg_dgram_flows, &key);
	return flow && !clock_past(flow->expires_ns);
}

/* ---- ICMP ------------------------------------------------------------------- */

/* ICMPv4 types by policy.  "none" still lets PMTU discovery work. */
static __always_inline __u32 icmp4_policy(__u8 type, __u8 code, const struct cg_config *cfg)
{
	if (cfg->icmp == CG_ICMP_ALL)
		return CG_R_ICMP;
	if (type == ICMP_DEST_UNREACH && code == ICMP_FRAG_NEEDED)
		return CG_R_ICMP;
	if (cfg->icmp == CG_ICMP_NONE)
		return CG_R_NONE;
	switch (type) {
	case ICMP_ECHOREPLY:
	case ICMP_DEST_UNREACH:
	case ICMP_ECHO:
	case ICMP_TIME_EXCEEDED:
	case ICMP_PARAMETERPROB:
		return CG_R_ICMP;
	}
	return CG_R_NONE;
}

/* ICMPv6 types by policy.  "none" keeps PMTU discovery and neighbour
 * discovery, without which IPv6 does not work at all. */
static __always_inline __u32 icmp6_policy(__u8 type, const struct cg_config *cfg)
{
	if (cfg->icmp == CG_ICMP_ALL)
		return CG_R_ICMP;
	if (type == ICMPV6_PKT_TOOBIG || (type >= 133 && type <= 137))
		return CG_R_ICMP;
	if (cfg->icmp == CG_ICMP_NONE)
		return CG_R_NONE;
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
	return CG_R_NONE;
}

static __always_inline __u32 icmp_reason(const struct pkt *p, void *data_end,
					 const struct cg_config *cfg)
{
	struct icmp_head *icmp = p->l4;
	__be16 *echo_id = (__be16 *)(icmp + 1);
	int echo_request, echo_reply;
	__u32 reason, limited;

	if ((void *)(icmp + 1) > data_end || p->l4_len < sizeof(*icmp))
		return CG_R_MALFORMED;
	if (p->family == 4) {
		reason = icmp4_policy(icmp->type, icmp->code, cfg);
		echo_request = icmp->type == ICMP_ECHO;
		echo_reply = icmp->type == ICMP_ECHOREPLY;
	} else {
		reason = icmp6_policy(icmp->type, cfg);
		echo_request = icmp->type == ICMPV6_ECHO_REQUEST;
		echo_reply = icmp->type == ICMPV6_ECHO_REPLY;
	}
	if (reason == CG_R_ICMP && echo_request && cfg->icmp_echo_pps) {
		limited = rl_check(p, cfg, CG_RL_SCOPE(CG_RL_ICMP, 0), cfg->icmp_echo_pps,
				   cfg->icmp_echo_pps, cg_now(), CG_R_ICMP_RATE);
		if (limited)
			return limited;
	}
	if (reason != CG_R_NONE)
		return reason;
	/* The reply to this host's own ping, with its echo id. */
	if (echo_reply && (void *)(echo_id + 1) <= data_end &&
	    p->l4_len >= sizeof(*icmp) + sizeof(*echo_id) && established(p, *echo_id, 0, cfg))
		return CG_R_ESTABLISHED;
	return default_reason(cfg);
}

/* ---- the WireGuard port ----------------------------------------------------- */

/*
 * The WireGuard port takes only what is shaped like a WireGuard message:
 * type 1..4 with three zero reserved bytes, and the exact size of each
 * handshake message.  Data messages are not required to be a multiple of 16
 * long, because some clients do not pad.  Initiations are rate limited per
 * source: they are what costs the endpoint CPU.
 */
static __always_inline __u32 wireguard_reason(const struct pkt *p, struct udphdr *udp,
					      void *data_end, const struct cg_config *cfg)
{
	__u8 *msg = (__u8 *)(udp + 1);
	__u32 len = bpf_ntohs(udp->len) - sizeof(*udp);
	__u32 limited;

	if ((void *)(msg + 4) > data_end || len < 4)
		return CG_R_WG_MALFORMED;
	if (msg[1] | msg[2] | msg[3])
		return CG_R_WG_MALFORMED;
	switch (msg[0]) {
	case 1:
		if (len != 148)
			return CG_R_WG_MALFORMED;
		if (cfg->wg_handshake_pps) {
			limited = rl_check(p, cfg, CG_RL_SCOPE(CG_RL_WG, 0), cfg->wg_handshake_pps,
					   cfg->wg_handshake_burst, cg_now(), CG_R_WG_HANDSHAKE_RATE);
			if (limited)
				return limited;
		}
		return CG_R_WIREGUARD;
	case 2:
		return len == 92 ? CG_R_WIREGUARD : CG_R_WG_MALFORMED;
	case 3:
		return len == 64 ? CG_R_WIREGUARD : CG_R_WG_MALFORMED;
	case 4:
		return len >= 32 ? CG_R_WIREGUARD : CG_R_WG_MALFORMED;
	}
	return CG_R_WG_MALFORMED;
}

/* ---- public services ---------------------------------------------------------- */

static __always_inline int from_allowed(const struct cg_svc *svc, const struct pkt *p, __u32 slot)
{
	void *trie;

	if (svc->flags & CG_SVC_FROM_ANY)
		return 1;
	if (p->family == 6) {
		struct cg_svc_lpm6 key = { .prefixlen = 32 + 128,
					   .svc_id_be = bpf_htonl(svc->svc_id) };

		__builtin_memcpy(key.addr, p->src, 16);
		trie = slot_map(&cg_svc_from6, slot);
		return trie && bpf_map_lookup_elem(trie, &key);
	} else {
		struct cg_svc_lpm4 key = { .prefixlen = 32 + 32,
					   .svc_id_be = bpf_htonl(svc->svc_id),
					   .addr_be = p->src4 };

		trie = slot_map(&cg_svc_from4, slot);
		return trie && bpf_map_lookup_elem(trie, &key);
	}
}

/*
 * The per-source limit every packet of the service meets, in the arguments
 * of cg_rl_check(): the service's own rate, or the global one.  False when
 * there is none.
 */
static __always_inline int packet_limit(const struct cg_svc *svc, const struct cg_config *cfg,
					__u64 *scope_limited, __u64 *rate_burst)
{
	__u64 limited = CG_R_RATE_LIMITED;

	if (svc->src_pps) {
		*scope_limited = (__u64)CG_RL_SCOPE(CG_RL_SVC, svc->svc_id) << 32 | limited;
		*rate_burst = (__u64)svc->src_pps << 32 | svc->src_pps;
		return 1;
	}
	if (cfg->src_pps) {
		*scope_limited = (__u64)CG_RL_SCOPE(CG_RL_SRC, 0) << 32 | limited;
		*rate_burst = (__u64)cfg->src_pps << 32 | cfg->src_burst;
		return 1;
	}
	return 0;
}

/*
 * The limits of a SYN (without ACK) to a service, with the source as
 * rl_source() gives it: the service's own new-connection limit (or the
 * global per-source one), the host's SYN budget, then the packet limit.
 * One global function for all three, each bucket's check inlined: with the
 * return of every call costly on CPUs that mitigate return stack attacks, a
 * SYN makes one call where it made two.  The verifier checks it once.
 */
__attribute__((noinline)) __u32 cg_syn_limits(const struct cg_svc *svc,
					      const struct cg_config *cfg, __u64 addr_hi,
					      __u64 addr_lo, __u64 now)
{
	__u64 scope_limited, rate_burst, syn_flood = CG_R_SYN_FLOOD;
	__u32 limited = CG_R_NONE;

	if (!svc || !cfg)
		return CG_R_NONE; /* unreachable: both are map values */
	if (svc->syn_pps)
		limited = rl_check_words(addr_hi, addr_lo,
					 (__u64)CG_RL_SCOPE(CG_RL_SVC_SYN, svc->svc_id) << 32 | syn_flood,
					 (__u64)svc->syn_pps << 32 | svc->syn_pps, now);
	else if (cfg->src_syn_per_s)
		limited = rl_check_words(addr_hi, addr_lo,
					 (__u64)CG_RL_SCOPE(CG_RL_SYN, 0) << 32 | syn_flood,
					 (__u64)cfg->src_syn_per_s << 32 | cfg->src_syn_per_s, now);
	if (limited)
		return limited;
	if (cfg->syn_per_cpu_per_s && !syn_budget_allows(cfg->syn_per_cpu_per_s, now))
		return CG_R_SYN_FLOOD;
	if (!packet_limit(svc, cfg, &scope_limited, &rate_burst))
		return CG_R_NONE;
	return rl_check_words(addr_hi, addr_lo, scope_limited, rate_burst, now);
}

/*
 * Limits of an admitted service packet: a SYN's (cg_syn_limits()), or the
 * per-source rate every packet meets, its bucket's check inlined here: the
 * allowed packet is the commonest, and a call's return costs it several
 * nanoseconds where the CPU mitigates return stack attacks.  The verifier
 * walks that check with every path to it (about 190,000 of its
 * instructions), which the budget verifier.rs holds leaves room for.
 */
static __always_inline __u32 service_limits(const struct pkt *p, const struct cg_svc *svc,
					    int syn, const struct cg_config *cfg)
{
	__u64 scope_limited, rate_burst, words[2];
	__u64 now = cg_now();
	__u32 limited;

	rl_source((__u8 *)words, p, cfg->rl_v6_prefix);
	if (syn)
		limited = cg_syn_limits(svc, cfg, words[0], words[1], now);
	else if (packet_limit(svc, cfg, &scope_limited, &rate_burst))
		limited = rl_check_words(words[0], words[1], scope_limited, rate_burst, now);
	else
		limited = CG_R_NONE;
	return limited ? limited : CG_R_SERVICE;
}

/* Transport ports and flags, bounded by both the frame and the IP lengths. */
static __always_inline __u32 transport_reason(const struct pkt *p, void *data_end,
					      const struct cg_config *cfg, __u32 slot)
{
	__be16 sport, dport;
	__u32 index;
	struct cg_svc *svc;
	void *services;
	int syn = 0;

	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = p->l4;

		if ((void *)(tcp + 1) > data_end || p->l4_len < sizeof(*tcp))
			return CG_R_MALFORMED;
		if (tcp->doff < 5 || p->l4 + tcp->doff * 4 > data_end || p->l4_len < tcp->doff * 4)
			return CG_R_MALFORMED;
		sport = tcp->source;
		dport = tcp->dest;
		syn = tcp->syn && !tcp->ack;
	} else {
		struct udphdr *udp = p->l4;
		__u16 len;

		if ((void *)(udp + 1) > data_end || p->l4_len < sizeof(*udp))
			return CG_R_MALFORMED;
		len = bpf_ntohs(udp->len);
		if (len < sizeof(*udp))
			return CG_R_MALFORMED;
		/* A first fragment carries the length of the whole datagram. */
		if (!p->more_frags && (p->l4 + len > data_end || len > p->l4_len))
			return CG_R_MALFORMED;
		sport = udp->source;
		dport = udp->dest;
		if (cfg->wg_port_be && dport == cfg->wg_port_be)
			return wireguard_reason(p, udp, data_end, cfg);
	}

	index = CG_SVC_INDEX(p->proto, bpf_ntohs(dport));
	services = slot_map(&cg_svc, slot);
	svc = services ? bpf_map_lookup_elem(services, &index) : NULL;
	if (svc && svc->svc_id && from_allowed(svc, p, slot))
		return service_limits(p, svc, syn, cfg);
	/* A SYN without ACK opens a connection; it is never a reply. */
	if (!syn && established(p, dport, sport, cfg))
		return CG_R_ESTABLISHED;
	return default_reason(cfg);
}

static __always_inline __u32 decide(void *data, void *data_end, const struct cg_config *cfg,
				    __u32 slot, struct pkt *p)
{
	struct cursor c = { .pos = data };
	__be16 proto;
	__u32 reason;

	if (parse_ethernet(&c, data_end, &proto) < 0)
		return CG_R_MALFORMED;
	reason = parse_l3(&c, data_end, proto, p);
	if (reason)
		return reason;
	if (denied(p, cfg, slot))
		return CG_R_DENIED_SOURCE;
	if (banned(p))
		return CG_R_BANNED;
	if (p->frag_off)
		return later_fragment_reason(p);

	switch (p->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		reason = transport_reason(p, data_end, cfg, slot);
		break;
	case IPPROTO_ICMP:
		reason = p->family == 4 ? icmp_reason(p, data_end, cfg) : default_reason(cfg);
		break;
	case IPPROTO_ICMPV6:
		reason = p->family == 6 ? icmp_reason(p, data_end, cfg) : default_reason(cfg);
		break;
	default:
		reason = default_reason(cfg);
	}
	if (p->more_frags)
		remember_first_fragment(p, reason);
	return reason;
}

#endif /* CRMGUARD_VERDICT_H */
