/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * crmguard_abi.h - the one contract between the XDP program and the agent.
 *
 * Every map key and value, every reason code and every size the kernel and
 * user space exchange is defined here and nowhere else.  core/src/abi.rs
 * mirrors these definitions with #[repr(C)] types and asserts the same sizes
 * at compile time; its unit tests compare every constant and reason with this
 * text, and the datapath's unit tests compare every member's offset with the
 * BTF of the compiled objects.
 *
 * Endianness is part of the name: a field ending in _be is in network byte
 * order, every other multi-byte field is in host order.
 *
 * Numbers are never reused.  A reason or action that goes away keeps its
 * number reserved, because counters, audit records and dashboards refer to it.
 */
#ifndef CRMGUARD_ABI_H
#define CRMGUARD_ABI_H

#include <linux/types.h>

/*
 * The version of this contract.  Raise it whenever a struct, a map or the
 * meaning of a number changes: the agent stamps it into the cg_abi map of
 * the maps it pins, and an agent of another version refuses to adopt them.
 */
#define CG_ABI_VERSION 10

/* Actions: what the program did with a packet (the `action` metric label). */
enum cg_action {
	CG_ACT_PASS = 0,
	CG_ACT_DROP = 1,
	CG_ACT_WOULD_DROP = 2, /* monitor mode: passed, but policy says drop */
	CG_ACT_COUNT = 3,
};

/*
 * Reasons: why.  1..15 are drop reasons (CONTRACT.md section 4), 16..31 are
 * pass reasons.  0 is never counted.
 */
enum cg_reason {
	CG_R_NONE = 0,
	CG_R_MALFORMED = 1,
	CG_R_DENIED_SOURCE = 2,
	CG_R_BANNED = 3,
	CG_R_DEFAULT_DROP = 4,
	CG_R_RATE_LIMITED = 5,
	CG_R_SYN_FLOOD = 6,
	CG_R_WG_MALFORMED = 7,
	CG_R_WG_HANDSHAKE_RATE = 8,
	CG_R_FRAGMENT_ORPHAN = 9,
	CG_R_IPV6_EXT_HEADER = 10,
	CG_R_ICMP_RATE = 11,
	CG_R_RL_TABLE_BUSY = 12, /* a source without a bucket, while this CPU's
				  * budget of new buckets is spent */

	CG_R_NON_IP = 16,        /* ARP, LLDP...: not ours to judge */
	CG_R_SERVICE = 17,       /* a public service whose `from` list matched */
	CG_R_ICMP = 18,          /* ICMP allowed by the `icmp` setting */
	CG_R_ESTABLISHED = 19,   /* a reply to a connection this host opened */
	CG_R_WIREGUARD = 20,     /* a well-formed message to the WireGuard port */
	CG_R_DEFAULT_ALLOW = 21, /* `default = "allow"` */
	CG_R_FRAGMENT = 22,      /* a later fragment of an allowed first one */

	CG_REASON_SLOTS = 32,
};

/* Each attached interface counts into its own slot of cg_stats. */
#define CG_MAX_IFSLOTS 16
#define CG_STATS_ENTRIES (CG_MAX_IFSLOTS * CG_ACT_COUNT * CG_REASON_SLOTS)

/* Index of a counter in cg_stats. */
#define CG_STATS_INDEX(slot, action, reason) \
	((((slot) * CG_ACT_COUNT) + (action)) * CG_REASON_SLOTS + (reason))

enum cg_mode {
	CG_MODE_ENFORCE = 0,
	CG_MODE_MONITOR = 1,
};

enum cg_icmp_policy {
	CG_ICMP_ESSENTIAL = 0, /* echo, errors, PMTU, neighbour discovery */
	CG_ICMP_ALL = 1,
	CG_ICMP_NONE = 2, /* only what IP cannot work without: PMTU and ND */
};

/* cg_config.flags */
#define CG_CFG_ALLOW_ESTABLISHED (1U << 0)
/* The slot's deny tries hold prefixes; without them XDP skips the lookup. */
#define CG_CFG_DENY4_PREFIXES (1U << 1)
#define CG_CFG_DENY6_PREFIXES (1U << 2)

/*
 * Policies are swapped whole.  Every policy map is an array of maps with
 * CG_POLICY_SLOTS inner maps; cg_active[0] names the slot in force.  The
 * agent fills fresh inner maps in the other slot, then writes cg_active once:
 * a packet reads the slot once and sees one complete policy.
 */
#define CG_POLICY_SLOTS 2

/* cg_config[slot]: the global settings of the policy in that slot. */
/*
 * The IPv4 deny set of a slot is one table, an array of buckets where each
 * entry has two places (cg_deny4_hash): lookups that are a hash of one word
 * and one or two array reads, where a hash map costs a call and a jhash, and an LPM
 * trie a walk.  It holds the single addresses and, when the deny set has at
 * most CG_DENY4_PROBES prefix lengths, the prefixes too, each probed by its
 * length.  With more lengths the prefixes stay in the cg_deny4_lpm trie.
 */
#define CG_DENY4_PROBES 4

struct cg_config {
	__u32 generation;
	__u8 mode;           /* enum cg_mode */
	__u8 default_action; /* CG_ACT_PASS or CG_ACT_DROP */
	__u8 icmp;           /* enum cg_icmp_policy */
	__u8 flags;          /* CG_CFG_* */
	__be16 wg_port_be;   /* WireGuard UDP port; 0 when the endpoint is off */
	__u8 rl_v6_prefix;   /* per-source rate limits key an IPv6 source by this
			      * many leading bits (0 or 128: the whole address) */
	__u8 _pad;
	/* Rate limits in tokens per second (0: unlimited) and bursts in tokens. */
	__u32 src_pps;            /* any allowed traffic, per source address */
	__u32 src_burst;
	__u32 src_syn_per_s;      /* new TCP connections, per source address */
	__u32 syn_per_cpu_per_s;  /* the global SYN budget divided among CPUs */
	__u32 icmp_echo_pps;      /* echo requests, per source address */
	__u32 wg_handshake_pps;   /* WireGuard initiations, per source address */
	__u32 wg_handshake_burst;
	/* The slot's IPv4 deny table: 2^deny4_bits buckets, holding the single
	 * addresses and the prefixes of the deny4_probes lengths in deny4_len
	 * (see struct cg_deny4_bucket). */
	__u8 deny4_bits;
	__u8 deny4_probes;
	__u8 deny4_len[CG_DENY4_PROBES];
	__u16 _pad2;
};

/* cg_stats[CG_STATS_INDEX(...)]: per-CPU packet and byte counters. */
struct cg_stats {
	__u64 packets;
	__u64 bytes;
};

/* A single IPv6 address, the key of cg_deny6. */
struct cg_addr6 {
	__u8 addr[16];
};

/*
 * A bucket of the IPv4 deny table.  An entry is ((prefix length + 1) << 32) | the
 * address masked to that length, in host order; 0 is an empty entry.
 */
struct cg_deny4_bucket {
	__u64 entry[4];
};

/*
 * The places of an entry e in a table of 2^bits buckets, with
 * mix(x) = x ^ (x >> 32):
 *   h = (e ^ CG_DENY4_SEED) * CG_RL_K1;  h = mix(h) * CG_RL_K2;  h ^= h >> 29;
 * the first place is the top `bits` bits of h, the second the `bits` bits
 * below them.  The agent places each entry in one of its two buckets
 * (cuckoo hashing), in its second only when its first is full; a move never
 * empties a place.  So an entry is in its first bucket, or in its second
 * with the first full, and a lookup that finds room in the first bucket need
 * not read the second.
 *
 * A table has one of three sizes, each its own outer map, so that the
 * verifier inlines every lookup for a size it knows: 2^10, 2^15 or 2^20
 * buckets (32 KiB, 1 MiB, 32 MiB), the smallest that holds the deny set.
 * cg_config.deny4_bits names the size in force; the other two outer maps
 * have no table in that slot.
 */
#define CG_DENY4_SEED 0x13198a2e03707344ULL
#define CG_DENY4_BITS_S 10
#define CG_DENY4_BITS_M 15
#define CG_DENY4_BITS_L 20

/* Keys of the deny LPM tries: only true prefixes live there. */
struct cg_lpm4 {
	__u32 prefixlen;
	__be32 addr_be;
};

struct cg_lpm6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Value of every deny map: the index of the rule in the compiled policy, so
 * that `status` and the agent can say which entry matched. */
struct cg_rule {
	__u32 rule_id;
};

/*
 * A public service port, as the agent compiles it.  The kernel's table of
 * services is an array with one entry per (protocol, port), at
 * CG_SVC_INDEX: the lookup is a bounds check and an offset, inlined into the
 * program, where a hash lookup would cost a call and a hash of the key on
 * every packet that reaches the service check.
 */
struct cg_svc_key {
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 _pad;
	__be16 port_be;
};

/* Entries of a cg_svc array: TCP ports first, then UDP ports. */
#define CG_SVC_PORTS (1U << 17)
/* The entry of (proto, port); port in host order.  Any protocol but UDP is
 * TCP's half: only TCP and UDP packets are looked up. */
#define CG_SVC_INDEX(proto, port) ((((proto) == 17) ? 0x10000U : 0U) | ((port) & 0xffffU))

/* cg_svc.flags */
#define CG_SVC_FROM_ANY (1U << 0)

struct cg_svc {
	__u32 svc_id;  /* the service's index in the config, from 1; 0: no
			* service on this port */
	__u32 flags;   /* CG_SVC_* */
	__u32 src_pps; /* per-source packets per second for this service; 0: none */
	__u32 syn_pps; /* per-source new connections per second; 0: none */
};

/*
 * Keys of the `from` tries of services.  The service id comes first in the
 * key so that one trie holds every service's list:
 * prefixlen = 32 + the source prefix length.
 */
struct cg_svc_lpm4 {
	__u32 prefixlen;
	__be32 svc_id_be;
	__be32 addr_be;
};

struct cg_svc_lpm6 {
	__u32 prefixlen;
	__be32 svc_id_be;
	__u8 addr[16];
};

/*
 * Time: every expiry and rate limit in these maps is on CLOCK_MONOTONIC, in
 * nanoseconds.  The programs read it coarsely (bpf_ktime_get_coarse_ns,
 * a few nanoseconds instead of tens, at jiffy resolution); user space writes
 * expiries with clock_gettime(CLOCK_MONOTONIC).
 *
 * Bans: dynamic, outside the policy generations, each with its own expiry,
 * so a ban ends on time even while the agent is down.  Keys as in the deny
 * set.  cg_ban_flags[0] says which of the four ban maps may hold entries, so
 * that a host without bans pays no lookup for them: the agent sets a bit
 * before it inserts into that map and clears it once the map is empty.
 */
#define CG_BAN_HOSTS4 (1U << 0)
#define CG_BAN_HOSTS6 (1U << 1)
#define CG_BAN_PREFIXES4 (1U << 2)
#define CG_BAN_PREFIXES6 (1U << 3)

struct cg_ban {
	__u64 expires_ns; /* CLOCK_MONOTONIC; 0: never */
	__u32 reason;     /* the agent's ban reason number, for status */
	__u32 _pad;
};

/*
 * Rate limiting: one GCRA bucket per (source, scope), in a table of
 * CG_RL_MAX slots where a key has two places, given by cg_rl_hash()
 * (ratelimit.h; the agent's model computes the same), and its bucket lives
 * in one of them with the key.  The lookups are array lookups,
 * inlined by the verifier, where a hash map's cost a call, a hash of the key
 * and a walk of its bucket: the limit runs on every admitted packet.
 *
 * A new key takes the first of its places that is empty or whose holder has
 * been idle for CG_RL_KEEP_UNITS units of 2^CG_RL_SEEN_SHIFT ns (1 to 2 s),
 * within the CPU's budget of new buckets; with both places held by active
 * sources it is dropped as rl_table_busy.  So any number of spoofed sources
 * costs bounded memory, and never evicts a source that is still sending, as
 * an LRU map would keep its recently used entries.  A bucket remembers the
 * rate and burst it was made for; when the rule changes, it starts afresh.
 */
enum cg_rl_kind {
	CG_RL_SRC = 1,     /* firewall.limits.per_source_pps */
	CG_RL_SVC = 2,     /* a service's per_source_pps */
	CG_RL_SYN = 3,     /* firewall.limits.syn_per_source_per_s */
	CG_RL_SVC_SYN = 4, /* a service's new_conn_per_source_per_s */
	CG_RL_ICMP = 5,    /* firewall.icmp_echo_per_source_pps */
	CG_RL_WG = 6,      /* vpn.handshake_per_source_pps */
};

#define CG_RL_SCOPE(kind, svc_id) (((__u32)(kind) << 24) | ((svc_id) & 0xffffff))

struct cg_rl_key {
	__u8 addr[16]; /* IPv4 as ::ffff:a.b.c.d */
	__u32 scope;   /* CG_RL_SCOPE(kind, svc_id) */
};

struct cg_rl {
	__u64 tat_ns; /* theoretical arrival time of the next token */
	__u32 rate;   /* the rule this bucket was made for */
	__u32 burst;
};

/*
 * A CPU's budget of sampled drop events: a bucket of CG_EVENTS_PER_CPU_PER_S,
 * and the tick (jiffies) in which it was last found spent.  Until the next
 * tick a drop is not sampled without reading the clock, so a flood of drops
 * costs one clock read per tick, not one per packet.
 */
struct cg_event_budget {
	struct cg_rl bucket;
	__u64 spent_jiffies;
};

/* A CPU's last reading of the clock, and the tick (jiffies) it was read in:
 * XDP decides most expiries from them without reading the clock again. */
struct cg_clock {
	__u64 jiffies;
	__u64 ns;
};

/* A slot of cg_rl: all zeros is an empty slot (no scope is 0). */
struct cg_rl_slot {
	struct cg_rl_key key;
	__u32 seen; /* (now >> CG_RL_SEEN_SHIFT) at the key's last packet */
	struct cg_rl bucket;
};

#define CG_RL_SEEN_SHIFT 30
#define CG_RL_KEEP_UNITS 2

/*
 * The places of a key, from the address read as two 64-bit words hi and lo
 * (in host order) and the scope, with mix(x) = x ^ (x >> 32):
 *   h = (hi ^ CG_RL_SEED) * K1;  h = (mix(h) ^ lo) * K2;
 *   h = (mix(h) ^ scope) * K3;   h ^= h >> 29;
 * the first place is the top CG_RL_BITS bits of h, the second the
 * CG_RL_BITS bits below them.
 */
#define CG_RL_BITS 17
#define CG_RL_SEED 0x243f6a8885a308d3ULL
#define CG_RL_K1 0x9e3779b97f4a7c15ULL
#define CG_RL_K2 0xc2b2ae3d27d4eb4fULL
#define CG_RL_K3 0x165667b19e3779f9ULL

/* Fragments: the verdict of a first fragment, for its later fragments.
 * The id is in host order for both families; proto is IPv4's protocol, or
 * the next header named by IPv6's fragment header. */
struct cg_frag_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 id;
	__u8 proto;
	__u8 family; /* 4 or 6 */
	__u16 _pad;
};

struct cg_frag {
	__u64 expires_ns;
	__u32 reason; /* the first fragment's reason */
	__u32 _pad;
};

/*
 * Flows this host opened, recorded at egress by tc_egress.c and matched by
 * XDP against replies.  For ICMP echo, local_port_be is the echo id.  IPv4
 * TCP connections live in cg_flows4 (struct cg_flow4_key: 12 bytes to hash
 * and compare, where the full key has 40), IPv6 TCP connections in cg_flows,
 * datagram flows (UDP and ICMP echo) in cg_dgram_flows: a datagram flow
 * needs no handshake, so anyone who makes
 * this host send datagrams (a WireGuard cookie reply to each spoofed
 * initiation, say) makes flows at will, and in a map of their own they evict
 * only each other, never the host's TCP connections.
 */
struct cg_flow_key {
	__u8 local[16];
	__u8 remote[16];
	__be16 local_port_be;
	__be16 remote_port_be;
	__u8 proto;
	__u8 family;
	__u16 _pad;
};

/* An IPv4 TCP connection in cg_flows4: the addresses are the last four
 * bytes of cg_flow_key's IPv4-mapped ones. */
struct cg_flow4_key {
	__be32 local;
	__be32 remote;
	__be16 local_port_be;
	__be16 remote_port_be;
};

struct cg_flow {
	__u64 expires_ns;
};

/*
 * A CPU's cache of the IPv4 TCP connections XDP found live in cg_flows4, so
 * that the replies of a connection it knows cost an array read instead of a
 * hash lookup.  Written and read by XDP only, each CPU its own copy: an
 * entry is a connection cg_flows4 held, with the expiry it had then, which
 * tc egress moves later with every packet the host sends (two CPUs sending at
 * once may store theirs out of order, a fraction of a tick apart).  A
 * connection cg_flows4 evicts to make room stays in the copies until their
 * expiry: the host did open it.  A connection is in the entry of the top
 * CG_FLOW4_CACHE_BITS bits of h, from its key's first eight bytes (w) and
 * last four (ports), each read in host order:
 *   h = (w ^ CG_FLOW4_CACHE_SEED) * CG_RL_K1;  h = (mix(h) ^ ports) * CG_RL_K2;
 * An entry of all zeros holds nothing: its expiry has passed.
 */
struct cg_flow4_cached {
	struct cg_flow4_key key;
	__u32 _pad;
	__u64 expires_ns;
};

#define CG_FLOW4_CACHE_BITS 12
#define CG_FLOW4_CACHE_MAX (1U << 12)
_Static_assert(CG_FLOW4_CACHE_MAX == 1U << CG_FLOW4_CACHE_BITS, "the cache's entries and the hash's bits");
#define CG_FLOW4_CACHE_SEED 0xa4093822299f31d0ULL

/* Sampled drop events, XDP -> agent through the cg_events ring buffer. */
struct cg_event {
	__u64 ts_ns;
	__u8 src[16];
	__u8 dst[16];
	__be16 sport_be;
	__be16 dport_be;
	__u8 proto;
	__u8 family;
	__u8 action;
	__u8 reason;
	__u32 ifslot;
	__u32 _pad;
};

#define CG_BAN_HOST_MAX (1U << 18)
#define CG_BAN_PREFIX_MAX (1U << 14)
#define CG_RL_MAX (1U << 17)
_Static_assert(CG_RL_MAX == 1U << CG_RL_BITS, "cg_rl's slots and the hash's bits");
#define CG_FRAG_MAX (1U << 14)
#define CG_FLOW_MAX (1U << 18)
/* Datagram flows last minutes, not hours; a quarter of cg_flows holds every
 * lookup and NTP exchange a server makes in CG_FLOW_UDP_TIMEOUT_S. */
#define CG_DGRAM_FLOW_MAX (1U << 16)
#define CG_EVENTS_BYTES (1U << 20)
#define CG_EVENTS_PER_CPU_PER_S 200
/*
 * New rate-limit buckets a CPU may make per second (a GCRA bucket in
 * cg_rl_budget, burst of one second).  A flood from spoofed sources would
 * otherwise make a bucket for every packet, a map update each, and evict the
 * bucket of every real source, which then starts again with a full burst.
 * CG_RL_MAX / 64: the LRU cg_rl turns over in no less than 64 / CPUs seconds
 * (8 s on an 8-CPU host), longer than any bucket needs to refill, so a real
 * source's bucket survives the flood; and 2048 new sources a second on each
 * CPU is far more than a CRM server sees arrive.  Beyond it, a packet from a
 * source without a bucket is dropped as rl_table_busy.
 */
#define CG_RL_NEW_PER_CPU_PER_S (1U << 11)
_Static_assert(CG_RL_NEW_PER_CPU_PER_S == CG_RL_MAX / 64, "the new-bucket budget");

/* Timeouts of recorded flows and fragment verdicts, in seconds. */
#define CG_FLOW_TCP_TIMEOUT_S 7200
#define CG_FLOW_UDP_TIMEOUT_S 120
#define CG_FLOW_ICMP_TIMEOUT_S 30
#define CG_FRAG_TIMEOUT_S 10

/* Map sizes.  Single addresses are in hash maps, prefixes in tries. */
#define CG_DENY_HOST_MAX (1U << 21)
#define CG_DENY_PREFIX_MAX (1U << 18)
#define CG_SVC_MAX 256
#define CG_SVC_FROM_MAX 16384

/* Sizes both sides assert. */
#define CG_SIZEOF_CONFIG 48
#define CG_SIZEOF_STATS 16
#define CG_SIZEOF_ADDR6 16
#define CG_SIZEOF_LPM4 8
#define CG_SIZEOF_LPM6 20
#define CG_SIZEOF_RULE 4
#define CG_SIZEOF_SVC_KEY 4
#define CG_SIZEOF_SVC 16
#define CG_SIZEOF_SVC_LPM4 12
#define CG_SIZEOF_SVC_LPM6 24
#define CG_SIZEOF_BAN 16
#define CG_SIZEOF_RL_KEY 20
#define CG_SIZEOF_RL 16
#define CG_SIZEOF_RL_SLOT 40
#define CG_SIZEOF_EVENT_BUDGET 24
#define CG_SIZEOF_DENY4_BUCKET 32
#define CG_SIZEOF_CLOCK 16
#define CG_SIZEOF_FRAG_KEY 40
#define CG_SIZEOF_FRAG 16
#define CG_SIZEOF_FLOW_KEY 40
#define CG_SIZEOF_FLOW4_KEY 12
#define CG_SIZEOF_FLOW 8
#define CG_SIZEOF_FLOW4_CACHED 24
#define CG_SIZEOF_EVENT 56

_Static_assert(sizeof(struct cg_config) == CG_SIZEOF_CONFIG, "cg_config size");
_Static_assert(sizeof(struct cg_stats) == CG_SIZEOF_STATS, "cg_stats size");
_Static_assert(sizeof(struct cg_addr6) == CG_SIZEOF_ADDR6, "cg_addr6 size");
_Static_assert(sizeof(struct cg_lpm4) == CG_SIZEOF_LPM4, "cg_lpm4 size");
_Static_assert(sizeof(struct cg_lpm6) == CG_SIZEOF_LPM6, "cg_lpm6 size");
_Static_assert(sizeof(struct cg_rule) == CG_SIZEOF_RULE, "cg_rule size");
_Static_assert(sizeof(struct cg_svc_key) == CG_SIZEOF_SVC_KEY, "cg_svc_key size");
_Static_assert(sizeof(struct cg_svc) == CG_SIZEOF_SVC, "cg_svc size");
_Static_assert(sizeof(struct cg_svc_lpm4) == CG_SIZEOF_SVC_LPM4, "cg_svc_lpm4 size");
_Static_assert(sizeof(struct cg_svc_lpm6) == CG_SIZEOF_SVC_LPM6, "cg_svc_lpm6 size");
_Static_assert(sizeof(struct cg_ban) == CG_SIZEOF_BAN, "cg_ban size");
_Static_assert(sizeof(struct cg_rl_key) == CG_SIZEOF_RL_KEY, "cg_rl_key size");
_Static_assert(sizeof(struct cg_rl) == CG_SIZEOF_RL, "cg_rl size");
_Static_assert(sizeof(struct cg_rl_slot) == CG_SIZEOF_RL_SLOT, "cg_rl_slot size");
_Static_assert(sizeof(struct cg_event_budget) == CG_SIZEOF_EVENT_BUDGET, "cg_event_budget size");
_Static_assert(sizeof(struct cg_deny4_bucket) == CG_SIZEOF_DENY4_BUCKET, "cg_deny4_bucket size");
_Static_assert(sizeof(struct cg_clock) == CG_SIZEOF_CLOCK, "cg_clock size");
_Static_assert(sizeof(struct cg_frag_key) == CG_SIZEOF_FRAG_KEY, "cg_frag_key size");
_Static_assert(sizeof(struct cg_frag) == CG_SIZEOF_FRAG, "cg_frag size");
_Static_assert(sizeof(struct cg_flow_key) == CG_SIZEOF_FLOW_KEY, "cg_flow_key size");
_Static_assert(sizeof(struct cg_flow4_key) == CG_SIZEOF_FLOW4_KEY, "cg_flow4_key size");
_Static_assert(sizeof(struct cg_flow) == CG_SIZEOF_FLOW, "cg_flow size");
_Static_assert(sizeof(struct cg_flow4_cached) == CG_SIZEOF_FLOW4_CACHED, "cg_flow4_cached size");
_Static_assert(sizeof(struct cg_event) == CG_SIZEOF_EVENT, "cg_event size");

#endif /* CRMGUARD_ABI_H */
