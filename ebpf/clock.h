/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * clock.h - the time of XDP's verdicts.
 *
 * Reading the clock (cg_now(), a helper call) costs as much as a whole deny
 * verdict.  Rate limits need the time itself and read it.  An expiry (a
 * flow, a ban, a fragment's verdict) only needs to know whether a moment has
 * passed (clock_past()), which the last reading on this CPU and the
 * ticks since (jiffies, which the verifier inlines to a load) mostly decide
 * without a read: since then the clock has moved at least not at all and at
 * most CG_TICK_NS_MAX per tick, plus one tick.  When they cannot tell, the
 * clock is read and remembered (clock_read()).  The answer is always the one
 * a read would give.
 */
#ifndef CRMGUARD_CLOCK_H
#define CRMGUARD_CLOCK_H

#include "maps.h"

/* The longest tick: CONFIG_HZ is at least 100, and a tick of the coarse
 * clock is 1/HZ s give or take NTP's adjustment (at most 0.05 %); 10 % more. */
#define CG_TICK_NS_MAX 11000000ULL

/* The time now; remembered with the tick for clock_past(). */
static __always_inline __u64 clock_read(void)
{
	__u32 zero = 0;
	struct cg_clock *last = bpf_map_lookup_elem(&cg_clock, &zero);
	__u64 now = cg_now();

	if (last) {
		last->jiffies = bpf_jiffies64();
		last->ns = now;
	}
	return now;
}

/*
 * Whether the clock is past `t` (now > t).  A global function: the verifier
 * checks it once, on its own, instead of its three ways at every expiry a
 * packet can meet.
 */
__attribute__((noinline)) int clock_past(__u64 t)
{
	__u32 zero = 0;
	struct cg_clock *last = bpf_map_lookup_elem(&cg_clock, &zero);
	__u64 ticks;

	if (last && last->ns) {
		/* now >= last->ns > t */
		if (t < last->ns)
			return 1;
		/* now <= last->ns + (ticks + 1) * CG_TICK_NS_MAX <= t */
		ticks = bpf_jiffies64() - last->jiffies;
		if (ticks < (1ULL << 32) && t >= last->ns + (ticks + 1) * CG_TICK_NS_MAX)
			return 0;
	}
	return clock_read() > t;
}

#endif /* CRMGUARD_CLOCK_H */
