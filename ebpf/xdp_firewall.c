// SPDX-License-Identifier: GPL-2.0-only
/*
 * xdp_firewall.c - crmguard's filter at the NIC.
 *
 * Entry point only: parse -> decide -> count -> return.  Every packet ends in
 * exactly one (action, reason) pair and is counted under it; there is no
 * other exit.  Drops (and would-be drops in monitor mode) are also sampled
 * into the cg_events ring buffer for the agent.
 */
#include "parse.h"
#include "maps.h"
#include "verdict.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * The interface's counter slot.  The agent loads one copy of this program
 * per interface and sets the slot at load time, so counting needs no lookup
 * of the interface.  Everything else is shared through the pinned maps.
 */
const volatile __u32 cg_ifslot = 0;

static __always_inline void count(__u32 action, __u32 reason, __u64 bytes)
{
	__u32 idx = CG_STATS_INDEX(cg_ifslot & (CG_MAX_IFSLOTS - 1), action, reason);
	struct cg_stats *s = bpf_map_lookup_elem(&cg_stats, &idx);

	if (s) {
		s->packets += 1;
		s->bytes += bytes;
	}
}

/*
 * Sends a sample of a drop to the agent, within this CPU's event budget.
 * A budget found spent is not read again, nor the clock, until the next tick
 * (jiffies, which the verifier inlines to a load).
 */
static __always_inline void sample(const struct pkt *p, void *data_end, __u32 action,
				   __u32 reason)
{
	__u32 zero = 0;
	struct cg_event_budget *budget = bpf_map_lookup_elem(&cg_event_budget, &zero);
	__u64 tick = bpf_jiffies64();
	struct cg_event *e;
	__be16 *ports = p->l4;
	__u64 now;

	if (!budget || budget->spent_jiffies == tick)
		return;
	now = clock_read();
	if (!gcra_allow(&budget->bucket, now, CG_EVENTS_PER_CPU_PER_S, CG_EVENTS_PER_CPU_PER_S)) {
		budget->spent_jiffies = tick;
		return;
	}
	e = bpf_ringbuf_reserve(&cg_events, sizeof(*e), 0);
	if (!e)
		return;
	e->ts_ns = now;
	__builtin_memcpy(e->src, p->src, 16);
	__builtin_memcpy(e->dst, p->dst, 16);
	e->sport_be = 0;
	e->dport_be = 0;
	e->proto = p->proto;
	e->family = p->family;
	e->action = action;
	e->reason = reason;
	e->ifslot = cg_ifslot;
	e->_pad = 0;
	if (ports && (void *)(ports + 2) <= data_end && !p->frag_off &&
	    (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)) {
		e->sport_be = ports[0];
		e->dport_be = ports[1];
	}
	bpf_ringbuf_submit(e, 0);
}

SEC("xdp")
int xdp_firewall(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	__u32 zero = 0, slot, action, reason;
	struct cg_config *cfg;
	struct pkt p = {};
	__u32 *active;

	active = bpf_map_lookup_elem(&cg_active, &zero);
	slot = active ? *active & (CG_POLICY_SLOTS - 1) : 0;
	cfg = bpf_map_lookup_elem(&cg_config, &slot);
	if (!cfg)
		return XDP_DROP; /* unreachable: the array has every slot */

	reason = decide(data, data_end, cfg, slot, &p);
	if (reason_is_pass(reason)) {
		count(CG_ACT_PASS, reason, bytes);
		return XDP_PASS;
	}
	action = cfg->mode == CG_MODE_MONITOR ? CG_ACT_WOULD_DROP : CG_ACT_DROP;
	count(action, reason, bytes);
	if (p.family)
		sample(&p, data_end, action, reason);
	return action == CG_ACT_DROP ? XDP_DROP : XDP_PASS;
}
