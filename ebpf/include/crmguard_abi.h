/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * crmguard_abi.h - the one contract between the XDP program and the agent.
 *
 * Every map key and value, every reason code and every size the kernel and
 * user space exchange is defined here and nowhere else.  agent/src/abi.rs
 * mirrors these definitions with #[repr(C)] types and asserts the same sizes
 * at compile time; a unit test pins the byte layout.
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

#define CG_ABI_VERSION 1

/* Actions: what the program did with a packet (the `action` metric label). */
enum cg_action {
	CG_ACT_PASS = 0,
	CG_ACT_DROP = 1,
	CG_ACT_WOULD_DROP = 2, /* monitor mode: passed, but policy says drop */
	CG_ACT_COUNT = 3,
};

/*
 * Reasons: why.  1..15 are drop reasons (PRODUCT.md section 4), 16..31 are
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

/* cg_config[0]: the global settings of the policy. Written by the agent last,
 * after every other map of a policy is in place. */
struct cg_config {
	__u32 generation;
	__u8 mode;           /* enum cg_mode */
	__u8 default_action; /* CG_ACT_PASS or CG_ACT_DROP */
	__u8 icmp;           /* enum cg_icmp_policy */
	__u8 flags;          /* CG_CFG_* */
	__be16 wg_port_be;   /* WireGuard UDP port; 0 when the endpoint is off */
	__u16 _pad;
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

/* cg_svc key: a public service port. */
struct cg_svc_key {
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 _pad;
	__be16 port_be;
};

/* cg_svc.flags */
#define CG_SVC_FROM_ANY (1U << 0)

struct cg_svc {
	__u32 svc_id; /* the service's index in the config, from 1 */
	__u32 flags;  /* CG_SVC_* */
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

/* Map sizes.  Single addresses are in hash maps, prefixes in tries. */
#define CG_DENY_HOST_MAX (1U << 21)
#define CG_DENY_PREFIX_MAX (1U << 18)
#define CG_SVC_MAX 256
#define CG_SVC_FROM_MAX 16384

/* Sizes both sides assert. */
#define CG_SIZEOF_CONFIG 12
#define CG_SIZEOF_STATS 16
#define CG_SIZEOF_ADDR6 16
#define CG_SIZEOF_LPM4 8
#define CG_SIZEOF_LPM6 20
#define CG_SIZEOF_RULE 4
#define CG_SIZEOF_SVC_KEY 4
#define CG_SIZEOF_SVC 8
#define CG_SIZEOF_SVC_LPM4 12
#define CG_SIZEOF_SVC_LPM6 24

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

#endif /* CRMGUARD_ABI_H */
