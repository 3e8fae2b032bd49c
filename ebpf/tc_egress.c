// SPDX-License-Identifier: GPL-2.0-only
/*
 * tc_egress.c - records the connections this host opens, so that the XDP
 * filter can let their replies in (`allow_established`).
 *
 * Attached at tc egress of every filtered interface.  It never drops and
 * never changes a packet: whatever it finds, it returns TC_ACT_UNSPEC
 * (TCX_NEXT), which leaves the verdict to the tc programs and filters after
 * it and passes the packet when there are none (TC_ACT_OK would pass it too,
 * but would skip them).  It writes TCP connections to cg_flows4 (IPv4) and
 * cg_flows (IPv6) and datagram flows to cg_dgram_flows, keyed as XDP looks
 * a reply up (verdict.h, established()): local is this host's address and
 * port, remote the peer's.
 *
 *   TCP        a SYN without ACK (a connection this host opens) creates the
 *              flow; every later outbound packet of a recorded flow moves
 *              its expiry on.  Other packets create nothing, so the replies
 *              of the host's own services do not open anything.
 *   UDP        every outbound datagram creates the flow or moves its expiry,
 *              except one sent from the WireGuard port or from the port of
 *              a public UDP service open to any source: those are the
 *              host's own services answering, whose peers XDP admits by
 *              port anyway, and anyone could make them answer (a cookie
 *              reply to every spoofed handshake initiation) to fill the map.
 *   ICMP echo  an echo request (v4 or v6) creates the flow, with the echo
 *              identifier as the local port and 0 as the remote port.
 *
 * Expiries are on the clock of every crmguard map (cg_now(), maps.h), which
 * XDP compares them with.  Later fragments carry no transport header and are
 * ignored.  The kernel keeps the payload of an outgoing packet in pages the
 * program cannot read directly, so only the headers are required to be in
 * the frame.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>

#include "parse.h"
#include "maps.h"
#include "verdict.h"

char LICENSE[] SEC("license") = "GPL";

/* What an outbound packet does to its flow. */
enum flow_op {
	FLOW_IGNORE = 0,  /* not a flow this host opened */
	FLOW_OPEN = 1,    /* create the flow, or move its expiry */
	FLOW_REFRESH = 2, /* move the expiry of a recorded flow only */
};

/* Addresses of the packet: this host is the source. */
static __always_inline int flow_addrs(struct cursor *c, void *data_end, __be16 proto,
				      struct cg_flow_key *key, void **l4)
{
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip;

		if (parse_ipv4_head(c, data_end, &ip) < 0)
			return -1;
		/* A later fragment: no transport header. */
		if (bpf_ntohs(ip->frag_off) & 0x1fff)
			return -1;
		key->family = 4;
		key->proto = ip->protocol;
		v4_mapped(key->local, ip->saddr);
		v4_mapped(key->remote, ip->daddr);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6;
		__u32 frag_off = 0, frag_id = 0;
		__u8 next, frag_next;
		int more = 0;

		if (parse_ipv6_head(c, data_end, &ip6) < 0)
			return -1;
		next = ip6->nexthdr;
		if (walk_ipv6_ext(c, data_end, &next, &frag_off, &more, &frag_id, &frag_next) != EXT_OK)
			return -1;
		if (frag_off)
			return -1;
		key->family = 6;
		key->proto = next;
		__builtin_memcpy(key->local, &ip6->saddr, 16);
		__builtin_memcpy(key->remote, &ip6->daddr, 16);
	} else {
		return -1;
	}
	*l4 = c->pos;
	return 0;
}

/* Ports of the packet and what it does to its flow; *timeout_s is the
 * lifetime the flow gets. */
static __always_inline enum flow_op flow_ports(void *l4, void *data_end, struct cg_flow_key *key,
					       __u64 *timeout_s)
{
	switch (key->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return FLOW_IGNORE;
		key->local_port_be = tcp->source;
		key->remote_port_be = tcp->dest;
		*timeout_s = CG_FLOW_TCP_TIMEOUT_S;
		return tcp->syn && !tcp->ack ? FLOW_OPEN : FLOW_REFRESH;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end)
			return FLOW_IGNORE;
		key->local_port_be = udp->source;
		key->remote_port_be = udp->dest;
		*timeout_s = CG_FLOW_UDP_TIMEOUT_S;
		return FLOW_OPEN;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		struct icmp_head *icmp = l4;
		__be16 *echo_id = (__be16 *)(icmp + 1);
		__u8 request = key->family == 4 ? ICMP_ECHO : ICMPV6_ECHO_REQUEST;
		__u8 proto = key->family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;

		if ((void *)(echo_id + 1) > data_end)
			return FLOW_IGNORE;
		if (key->proto != proto || icmp->type != request)
			return FLOW_IGNORE;
		key->local_port_be = *echo_id;
		key->remote_port_be = 0;
		*timeout_s = CG_FLOW_ICMP_TIMEOUT_S;
		return FLOW_OPEN;
	}
	}
	return FLOW_IGNORE;
}

/*
 * Whether a datagram leaves from the WireGuard port or from the port of a
 * public UDP service that admits any source, in the policy in force: a reply
 * of the host's own service, which needs no flow.
 */
static __always_inline int from_own_service(const struct cg_flow_key *key)
{
	__u32 index = CG_SVC_INDEX(IPPROTO_UDP, bpf_ntohs(key->local_port_be));
	__u32 zero = 0, slot, *active = bpf_map_lookup_elem(&cg_active, &zero);
	struct cg_config *cfg;
	struct cg_svc *svc;
	void *services;

	slot = active ? *active & (CG_POLICY_SLOTS - 1) : 0;
	cfg = bpf_map_lookup_elem(&cg_config, &slot);
	if (cfg && cfg->wg_port_be && key->local_port_be == cfg->wg_port_be)
		return 1;
	services = slot_map(&cg_svc, slot);
	svc = services ? bpf_map_lookup_elem(services, &index) : NULL;
	return svc && svc->svc_id && (svc->flags & CG_SVC_FROM_ANY);
}

static __always_inline void record_in(void *flows, const void *key, enum flow_op op,
				      __u64 timeout_s)
{
	__u64 expires = cg_now() + timeout_s * NSEC_PER_SEC;
	struct cg_flow *flow = bpf_map_lookup_elem(flows, key);

	if (flow) {
		flow->expires_ns = expires;
	} else if (op == FLOW_OPEN) {
		struct cg_flow fresh = { .expires_ns = expires };

		bpf_map_update_elem(flows, key, &fresh, BPF_ANY);
	}
}

/* TCP connections and datagram flows live in maps of their own, so that
 * datagrams never evict a connection; IPv4 connections under their short key
 * (see the ABI header). */
static __always_inline void record(const struct cg_flow_key *key, enum flow_op op,
				   __u64 timeout_s)
{
	if (key->proto == IPPROTO_TCP && key->family == 4) {
		struct cg_flow4_key key4 = {
			.local_port_be = key->local_port_be,
			.remote_port_be = key->remote_port_be,
		};

		__builtin_memcpy(&key4.local, &key->local[12], 4);
		__builtin_memcpy(&key4.remote, &key->remote[12], 4);
		record_in(&cg_flows4, &key4, op, timeout_s);
	} else if (key->proto == IPPROTO_TCP)
		record_in(&cg_flows, key, op, timeout_s);
	else if (key->proto != IPPROTO_UDP || !from_own_service(key))
		record_in(&cg_dgram_flows, key, op, timeout_s);
}

SEC("classifier")
int tc_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct cursor c = { .pos = data };
	struct cg_flow_key key = {};
	enum flow_op op = FLOW_IGNORE;
	__u64 timeout_s = 0;
	void *l4 = NULL;
	__be16 proto;

	if (parse_ethernet(&c, data_end, &proto) == 0 &&
	    flow_addrs(&c, data_end, proto, &key, &l4) == 0)
		op = flow_ports(l4, data_end, &key, &timeout_s);
	if (op != FLOW_IGNORE)
		record(&key, op, timeout_s);
	return TC_ACT_UNSPEC;
}
