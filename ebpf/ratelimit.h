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

/* The hash of a key that places it in cg_rl (see the ABI header). */
static __always_inline __u64 cg_rl_hash(__u64 addr_hi, __u64 addr_lo, __u32 scope)
{
	__u64 h = (addr_hi ^ CG_RL_SEED) * CG_RL_K1;

	h = ((h ^ (h >> 32)) ^ addr_lo) * CG_RL_K2;
	h = ((h ^ (h >> 32)) ^ scope) * CG_RL_K3;
	return h ^ (h >> 29);
}

static __always_inline int rl_holds(const struct cg_rl_slot *slot, __u64 addr_hi, __u64 addr_lo,
				    __u32 scope)
{
	const __u64 *held = (const __u64 *)slot->key.addr;

	return held[0] == addr_hi && held[1] == addr_lo && slot->key.scope == scope;
}

/* Whether a new key may take the slot: empty, or its holder idle. */
static __always_inline int rl_free(const struct cg_rl_slot *slot, __u32 units)
{
	return slot->key.scope == 0 || units - slot->seen >= CG_RL_KEEP_UNITS;
}

/*
 * The bucket of one (source, scope): CG_R_NONE when the packet passes,
 * `limited` when the bucket is spent, CG_R_RL_TABLE_BUSY when the source has
 * no bucket and either this CPU has made its CG_RL_NEW_PER_CPU_PER_S new
 * buckets of the second or both of the key's places are held by active
 * sources.  A source's first packet in a scope makes its bucket and passes.
 *
 * A global function, of scalars only (the source's two words, scope and
 * `limited`, rate and burst, each pair in one word, and the time): the
 * verifier checks it once, on its own, and each caller sees one answer,
 * instead of every path through two GCRA buckets at each of the several
 * limits a packet can meet.
 */
static __always_inline __u32 rl_check_words(__u64 addr_hi, __u64 addr_lo, __u64 scope_limited,
					      __u64 rate_burst, __u64 now)
{
	__u32 scope = (__u32)(scope_limited >> 32);
	__u32 limited = (__u32)scope_limited;
	__u32 rate = (__u32)(rate_burst >> 32);
	__u32 burst = (__u32)rate_burst;
	__u32 units = (__u32)(now >> CG_RL_SEEN_SHIFT);
	struct cg_rl_slot *first, *second, *slot;
	__u32 zero = 0, index;
	struct cg_rl *budget;
	__u64 h, *held;

	if (!rate)
		return CG_R_NONE;
	h = cg_rl_hash(addr_hi, addr_lo, scope);
	index = (__u32)(h >> (64 - CG_RL_BITS));
	first = bpf_map_lookup_elem(&cg_rl, &index);
	index = (__u32)(h >> (64 - 2 * CG_RL_BITS)) & (CG_RL_MAX - 1);
	second = bpf_map_lookup_elem(&cg_rl, &index);
	if (!first || !second)
		return CG_R_NONE; /* unreachable: both indexes are below CG_RL_MAX */
	slot = rl_holds(first, addr_hi, addr_lo, scope)	   ? first :
	       rl_holds(second, addr_hi, addr_lo, scope) ? second :
							   NULL;
	if (slot) {
		slot->seen = units;
		return gcra_allow(&slot->bucket, now, rate, burst) ? CG_R_NONE : limited;
	}
	slot = rl_free(first, units) ? first : rl_free(second, units) ? second : NULL;
	if (!slot)
		return CG_R_RL_TABLE_BUSY;
	budget = bpf_map_lookup_elem(&cg_rl_budget, &zero);
	if (budget &&
	    !gcra_allow(budget, now, CG_RL_NEW_PER_CPU_PER_S, CG_RL_NEW_PER_CPU_PER_S))
		return CG_R_RL_TABLE_BUSY;
	/* What gcra_allow() makes of a fresh bucket: the packet passes and the
	 * next token is one interval away.  Another CPU may write the slot at
	 * the same time; the worst case is a bucket that starts afresh. */
	held = (__u64 *)slot->key.addr;
	held[0] = addr_hi;
	held[1] = addr_lo;
	slot->key.scope = scope;
	slot->seen = units;
	slot->bucket.tat_ns = now + 1000000000U / rate;
	slot->bucket.rate = rate;
	slot->bucket.burst = burst;
	return CG_R_NONE;
}

__attribute__((noinline)) __u32 cg_rl_check(__u64 addr_hi, __u64 addr_lo, __u64 scope_limited,
					    __u64 rate_burst, __u64 now)
{
	return rl_check_words(addr_hi, addr_lo, scope_limited, rate_burst, now);
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
