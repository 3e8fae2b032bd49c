/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * maps.h - every map of crmguard's BPF programs.  Each map says who writes it
 * and who reads it.  All maps are pinned by name under the agent's
 * bpffs_dir, so a restarted agent finds them and the filter keeps its policy
 * and its state without it.
 */
#ifndef CRMGUARD_MAPS_H
#define CRMGUARD_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "include/crmguard_abi.h"

/*
 * The clock of every expiry and rate limit (see the ABI header).  Reading it
 * is a helper call that costs as much as the rest of a deny or default-drop
 * verdict, so XDP reads it only where a verdict needs it: in a limit, an
 * expiry or a sampled event, never for the packets the deny set or the
 * default drops.
 */
static __always_inline __u64 cg_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* ---- the ABI stamp ---------------------------------------------------------- */

/*
 * The CG_ABI_VERSION of the agent that created this set of pinned maps.
 * Created, written and pinned by the agent before it loads the program, so
 * that every pinned set carries its version; read by the agent on adoption,
 * which refuses a set of another version.  XDP never reads it.  Its shape
 * never changes, so that every version can read every other's stamp.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_abi SEC(".maps");

/* ---- the policy: written whole by the agent, one slot at a time ---------- */

/* The slot in force.  Written by the agent, last; read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_active SEC(".maps");

/* Global settings per slot.  Written by the agent; read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CG_POLICY_SLOTS);
	__type(key, __u32);
	__type(value, struct cg_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_config SEC(".maps");

/*
 * The per-slot entry maps.  Inner maps are created by the agent for each new
 * policy and released when their slot is reused; these templates only give
 * their shape.
 */
#define CG_INNER(name, maptype, ktype, vtype, max, mflags) \
	struct name {                                     \
		__uint(type, maptype);                    \
		__uint(max_entries, max);                 \
		__uint(map_flags, mflags);                \
		__type(key, ktype);                       \
		__type(value, vtype);                     \
	}

#define CG_OUTER(inner, name)                            \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS); \
		__uint(max_entries, CG_POLICY_SLOTS);     \
		__type(key, __u32);                       \
		__uint(pinning, LIBBPF_PIN_BY_NAME);      \
		__array(values, struct inner);            \
	} name SEC(".maps")

/* The three sizes of the IPv4 deny table (see the ABI header). */
CG_INNER(cg_deny4_s_inner, BPF_MAP_TYPE_ARRAY, __u32, struct cg_deny4_bucket,
	 1U << CG_DENY4_BITS_S, 0);
CG_INNER(cg_deny4_m_inner, BPF_MAP_TYPE_ARRAY, __u32, struct cg_deny4_bucket,
	 1U << CG_DENY4_BITS_M, 0);
CG_INNER(cg_deny4_l_inner, BPF_MAP_TYPE_ARRAY, __u32, struct cg_deny4_bucket,
	 1U << CG_DENY4_BITS_L, 0);
CG_INNER(cg_deny6_inner, BPF_MAP_TYPE_HASH, struct cg_addr6, struct cg_rule, CG_DENY_HOST_MAX,
	 BPF_F_NO_PREALLOC);
CG_INNER(cg_deny4_lpm_inner, BPF_MAP_TYPE_LPM_TRIE, struct cg_lpm4, struct cg_rule,
	 CG_DENY_PREFIX_MAX, BPF_F_NO_PREALLOC);
CG_INNER(cg_deny6_lpm_inner, BPF_MAP_TYPE_LPM_TRIE, struct cg_lpm6, struct cg_rule,
	 CG_DENY_PREFIX_MAX, BPF_F_NO_PREALLOC);
CG_INNER(cg_svc_inner, BPF_MAP_TYPE_ARRAY, __u32, struct cg_svc, CG_SVC_PORTS, 0);
CG_INNER(cg_svc_from4_inner, BPF_MAP_TYPE_LPM_TRIE, struct cg_svc_lpm4, struct cg_rule,
	 CG_SVC_FROM_MAX, BPF_F_NO_PREALLOC);
CG_INNER(cg_svc_from6_inner, BPF_MAP_TYPE_LPM_TRIE, struct cg_svc_lpm6, struct cg_rule,
	 CG_SVC_FROM_MAX, BPF_F_NO_PREALLOC);

/*
 * The key and value types above are named only by the templates, and BTF
 * would describe them as forward declarations, which the loader cannot size.
 * This read-only global gives BTF their complete definitions; it is never
 * read.  It also carries cg_event, which only passes through the ring
 * buffer, so that every shared struct is in the object's BTF, where the
 * datapath's tests compare each member's offset with the Rust mirror.
 */
const volatile struct {
	struct cg_addr6 addr6;
	struct cg_lpm4 lpm4;
	struct cg_lpm6 lpm6;
	struct cg_rule rule;
	struct cg_svc_key svc_key;
	struct cg_svc svc;
	struct cg_svc_lpm4 svc_lpm4;
	struct cg_svc_lpm6 svc_lpm6;
	struct cg_event event;
	struct cg_rl_key rl_key;
	struct cg_deny4_bucket deny4_bucket;
} cg_btf_types;

/* Deny set: IPv4 in a table of buckets (see the ABI header), with its
 * prefixes in a trie when they have too many lengths to probe; IPv6 single
 * addresses in a hash, prefixes in a trie. */
CG_OUTER(cg_deny4_s_inner, cg_deny4_s);
CG_OUTER(cg_deny4_m_inner, cg_deny4_m);
CG_OUTER(cg_deny4_l_inner, cg_deny4_l);
CG_OUTER(cg_deny6_inner, cg_deny6);
CG_OUTER(cg_deny4_lpm_inner, cg_deny4_lpm);
CG_OUTER(cg_deny6_lpm_inner, cg_deny6_lpm);
/* Public services, an array indexed by CG_SVC_INDEX(proto, port), and their
 * `from` lists keyed by (service id, source prefix). */
CG_OUTER(cg_svc_inner, cg_svc);
CG_OUTER(cg_svc_from4_inner, cg_svc_from4);
CG_OUTER(cg_svc_from6_inner, cg_svc_from6);

/* ---- dynamic state --------------------------------------------------------- */

/* Bans with expiry.  Written by the agent (ban add/remove, detectors, expiry
 * sweeps); read by XDP, which ignores an expired ban on its own. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CG_BAN_HOST_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, struct cg_ban);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_ban4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CG_BAN_HOST_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cg_addr6);
	__type(value, struct cg_ban);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_ban6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CG_BAN_PREFIX_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cg_lpm4);
	__type(value, struct cg_ban);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_ban4_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CG_BAN_PREFIX_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cg_lpm6);
	__type(value, struct cg_ban);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_ban6_lpm SEC(".maps");

/* Which ban maps may hold entries (CG_BAN_*).  Written by the agent; read by
 * XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_ban_flags SEC(".maps");

/* Rate-limit buckets, a direct-mapped table (see the ABI header).  Written
 * and read by XDP only. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CG_RL_MAX);
	__type(key, __u32);
	__type(value, struct cg_rl_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_rl SEC(".maps");

/* The global SYN budget, one share per CPU.  Written and read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cg_rl);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_syn_budget SEC(".maps");

/* The per-CPU budget of new buckets in cg_rl (CG_RL_NEW_PER_CPU_PER_S).
 * Written and read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cg_rl);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_rl_budget SEC(".maps");

/* First-fragment verdicts.  Written and read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CG_FRAG_MAX);
	__type(key, struct cg_frag_key);
	__type(value, struct cg_frag);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_frags SEC(".maps");

/* IPv4 TCP connections this host opened, under a 12-byte key (see the ABI
 * header).  Written by tc egress; read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CG_FLOW_MAX);
	__type(key, struct cg_flow4_key);
	__type(value, struct cg_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_flows4 SEC(".maps");

/* Each CPU's cache of live IPv4 TCP connections (see the ABI header).
 * Written and read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CG_FLOW4_CACHE_MAX);
	__type(key, __u32);
	__type(value, struct cg_flow4_cached);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_flow4_cache SEC(".maps");

/* IPv6 TCP connections this host opened.  Written by tc egress; read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CG_FLOW_MAX);
	__type(key, struct cg_flow_key);
	__type(value, struct cg_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_flows SEC(".maps");

/* UDP and ICMP echo flows this host opened, apart from its TCP connections
 * (see the ABI header).  Written by tc egress; read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CG_DGRAM_FLOW_MAX);
	__type(key, struct cg_flow_key);
	__type(value, struct cg_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_dgram_flows SEC(".maps");

/* Counters.  Written by XDP (per CPU); read by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CG_STATS_ENTRIES);
	__type(key, __u32);
	__type(value, struct cg_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_stats SEC(".maps");

/* The last reading of the clock, per CPU (clock.h).  Written and read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cg_clock);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_clock SEC(".maps");

/* Sampled drop events.  Written by XDP; read by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CG_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_events SEC(".maps");

/* The per-CPU budget of sampled events.  Written and read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cg_event_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_event_budget SEC(".maps");

#endif /* CRMGUARD_MAPS_H */
