// SPDX-License-Identifier: GPL-2.0-only
/*
 * xdp_firewall.c - crmguard's filter at the NIC.
 *
 * Entry point only: parse -> decide -> count -> return.  Every packet ends in
 * exactly one (action, reason) pair and is counted under it; there is no
 * other exit.  The decision order is the one PRODUCT.md section 1 gives:
 * malformed, deny set, fragments, ICMP, the WireGuard port, public services,
 * then the default.
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

SEC("xdp")
int xdp_firewall(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	__u32 zero = 0;
	struct cg_config *cfg;
	__u32 reason;

	cfg = bpf_map_lookup_elem(&cg_config, &zero);
	if (!cfg)
		return XDP_DROP; /* unreachable: an array always has index 0 */

	reason = decide(data, data_end, cfg);
	if (reason_is_pass(reason)) {
		count(CG_ACT_PASS, reason, bytes);
		return XDP_PASS;
	}
	if (cfg->mode == CG_MODE_MONITOR) {
		count(CG_ACT_WOULD_DROP, reason, bytes);
		return XDP_PASS;
	}
	count(CG_ACT_DROP, reason, bytes);
	return XDP_DROP;
}
