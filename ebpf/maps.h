/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * maps.h - every map of the XDP program.  Each map says who writes it and
 * who reads it.  All maps are pinned by name under the agent's bpffs_dir, so
 * a restarted agent finds them and the filter keeps its policy without it.
 */
#ifndef CRMGUARD_MAPS_H
#define CRMGUARD_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "include/crmguard_abi.h"

/* Written by the agent (last step of applying a policy); read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cg_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_config SEC(".maps");

/* Written by XDP (per CPU); read by the agent for status and metrics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CG_STATS_ENTRIES);
	__type(key, __u32);
	__type(value, struct cg_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_stats SEC(".maps");

/* Deny set, single addresses.  Written by the agent; read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CG_DENY_HOST_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, struct cg_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_deny4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CG_DENY_HOST_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cg_addr6);
	__type(value, struct cg_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_deny6 SEC(".maps");

/* Deny set, true prefixes only.  Written by the agent; read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CG_DENY_PREFIX_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cg_lpm4);
	__type(value, struct cg_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_deny4_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CG_DENY_PREFIX_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cg_lpm6);
	__type(value, struct cg_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_deny6_lpm SEC(".maps");

/* Public services by (proto, port).  Written by the agent; read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CG_SVC_MAX);
	__type(key, struct cg_svc_key);
	__type(value, struct cg_svc);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_svc SEC(".maps");

/* The `from` lists of all services, keyed by (service id, source prefix).
 * Written by the agent; read by XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CG_SVC_FROM_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cg_svc_lpm4);
	__type(value, struct cg_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_svc_from4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CG_SVC_FROM_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cg_svc_lpm6);
	__type(value, struct cg_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_svc_from6 SEC(".maps");

#endif /* CRMGUARD_MAPS_H */
