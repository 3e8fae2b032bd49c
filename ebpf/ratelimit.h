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
#include "parse.h"

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

/* The first `bits` (0..64) bits of a 64-bit word, in network byte order. */
static __always_inline __u64 prefix_mask_be(int bits)
{
	if (bits <= 0)
		return 0;
	if (bits >= 64)
		return ~0ULL;
	return bpf_cpu_to_be64(~0ULL << (64 - bits));
}

/*
 * The source as rate limits key it: an IPv6 source by its first `v6_prefix`
 * bits (0 or 128: the whole address), because one site or one attacker holds
 * a whole /64 and could otherwise make a fresh bucket for every packet.
 * Two word masks, no loop: this runs for every rate-limited packet.
 */
static __always_inline void rl_source(__u8 *addr, const struct pkt *p, __u8 v6_prefix)
{
	__u64 words[2];

	__builtin_memcpy(words, p->src, 16);
	if (p->family == 6 && v6_prefix != 0 && v6_prefix < 128) {
		words[0] &= prefix_mask_be(v6_prefix);
		words[1] &= prefix_mask_be((int)v6_prefix - 64);
	}
	__builtin_memcpy(addr, words, 16);
}

/*
 * The bucket of one (source, scope): CG_R_NONE when the packet passes,
 * `limited` when the bucket is spent, CG_R_RL_TABLE_BUSY when the source has
 * no bucket and this CPU has made its CG_RL_NEW_PER_CPU_PER_S new buckets of
 * the second.  A source's first packet in a scope makes its bucket and
 * passes.
 *
 * A global function, of scalars only (the source's two words, scope and
 * `limited`, rate and burst, each pair in one word, and the time): the
 * verifier checks it once, on its own, and each caller sees one answer,
 * instead of every path through two GCRA buckets at each of the several
 * limits a packet can meet.
 */
__attribute__((noinline)) __u32 cg_rl_check(__u64 addr_hi, __u64 addr_lo, __u64 scope_limited,
					    __u64 rate_burst, __u64 now)
{
	struct cg_rl_key key = { .scope = (__u32)(scope_limited >> 32) };
	__u32 limited = (__u32)scope_limited;
	__u32 rate = (__u32)(rate_burst >> 32);
	__u32 burst = (__u32)rate_burst;
	__u32 zero = 0;
	struct cg_rl *bucket, *budget;

	if (!rate)
		return CG_R_NONE;
	__builtin_memcpy(key.addr, &addr_hi, 8);
	__builtin_memcpy(key.addr + 8, &addr_lo, 8);
	bucket = bpf_map_lookup_elem(&cg_rl, &key);
	if (bucket)
		return gcra_allow(bucket, now, rate, burst) ? CG_R_NONE : limited;
	budget = bpf_map_lookup_elem(&cg_rl_budget, &zero);
	if (budget &&
	    !gcra_allow(budget, now, CG_RL_NEW_PER_CPU_PER_S, CG_RL_NEW_PER_CPU_PER_S))
		return CG_R_RL_TABLE_BUSY;
	{
		/* What gcra_allow() makes of a fresh bucket: the packet passes
		 * and the next token is one interval away. */
		struct cg_rl fresh = { .tat_ns = now + 1000000000U / rate,
				       .rate = rate,
				       .burst = burst };

		bpf_map_update_elem(&cg_rl, &key, &fresh, BPF_ANY);
	}
	return CG_R_NONE;
}

/* Per-source bucket of `scope`; rate > 0.  See cg_rl_check(). */
static __always_inline __u32 rl_check(const struct pkt *p, const struct cg_config *cfg,
				      __u32 scope, __u32 rate, __u32 burst, __u64 now,
				      __u32 limited)
{
	__u64 words[2];

	rl_source((__u8 *)words, p, cfg->rl_v6_prefix);
	return cg_rl_check(words[0], words[1], ((__u64)scope << 32) | limited,
			   ((__u64)rate << 32) | burst, now);
}

/* This CPU's share of the host's SYN budget. */
static __always_inline int syn_budget_allows(__u32 rate, __u64 now)
{
	__u32 zero = 0;
	struct cg_rl *bucket = bpf_map_lookup_elem(&cg_syn_budget, &zero);

	return !bucket || gcra_allow(bucket, now, rate, rate);
}

#endif /* CRMGUARD_RATELIMIT_H */
