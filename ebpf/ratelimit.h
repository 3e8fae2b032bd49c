/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ratelimit.h - GCRA token buckets.
 *
 * A bucket is one timestamp, the theoretical arrival time (TAT) of the next
 * token: a packet passes when TAT is at most `burst - 1` intervals ahead of
 * now, and moves TAT one interval on.  So `burst` packets pass back to back,
 * then one per interval.  Updates from several CPUs may race;
 * the worst case lets a few extra packets through, never blocks a source
 * that stays under its rate.
 */
#ifndef CRMGUARD_RATELIMIT_H
#define CRMGUARD_RATELIMIT_H

#include "maps.h"

static __always_inline int gcra_allow(struct cg_rl *b, __u64 now, __u32 rate, __u32 burst)
{
	/* 10^9 fits in 32 bits, and a 32-bit division is the cheaper one. */
	__u64 interval = 1000000000U / rate;
	__u64 tolerance = interval * (burst ? burst - 1 : 0);
	__u64 tat = b->tat_ns;

	/* A bucket made for another rule starts afresh. */
	if (b->rate != rate || b->burst != burst) {
		tat = now;
		b->rate = rate;
		b->burst = burst;
	}
	if (tat < now)
		tat = now;
	if (tat - now > tolerance)
		return 0;
	b->tat_ns = tat + interval;
	return 1;
}

/* Per-source bucket of `scope`; rate > 0. */
static __always_inline int rl_check(const __u8 *src, __u32 scope, __u32 rate, __u32 burst,
				    __u64 now)
{
	struct cg_rl_key key = { .scope = scope };
	struct cg_rl *bucket;

	__builtin_memcpy(key.addr, src, 16);
	bucket = bpf_map_lookup_elem(&cg_rl, &key);
	if (!bucket) {
		struct cg_rl fresh = { .tat_ns = now, .rate = rate, .burst = burst };

		gcra_allow(&fresh, now, rate, burst);
		bpf_map_update_elem(&cg_rl, &key, &fresh, BPF_ANY);
		return 1;
	}
	return gcra_allow(bucket, now, rate, burst);
}

/* This CPU's share of the host's SYN budget. */
static __always_inline int syn_budget_allows(__u32 rate, __u64 now)
{
	__u32 zero = 0;
	struct cg_rl *bucket = bpf_map_lookup_elem(&cg_syn_budget, &zero);

	return !bucket || gcra_allow(bucket, now, rate, rate);
}

#endif /* CRMGUARD_RATELIMIT_H */
