//! Tests that hold the Rust mirror (`crmguard_core::abi`) and the map
//! definitions of `maps.rs` to the objects build.rs compiled: the BTF that
//! clang wrote from `ebpf/include/crmguard_abi.h` and `ebpf/maps.h` says
//! where each member of each shared struct lies and how each map is
//! defined, so a drift on either side fails here rather than in the kernel.
//!
//! The reader below understands just enough of ELF64 and BTF for that: the
//! `.BTF` section, its type records and its string table.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::{offset_of, size_of};

use crmguard_core::abi;

/// Finds a section of an ELF64 object in the host's byte order (clang's
/// `-target bpf` writes the host's).
fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> &'a [u8] {
    let u16_at = |at: usize| usize::from(u16::from_ne_bytes([elf[at], elf[at + 1]]));
    let u32_at = |at: usize| u32::from_ne_bytes(elf[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| {
        usize::try_from(u64::from_ne_bytes(
            elf[at..at + 8].try_into().expect("8 bytes"),
        ))
        .expect("offset fits usize")
    };
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF object");
    assert_eq!(elf[4], 2, "not ELF64");
    let shoff = u64_at(0x28);
    let shentsize = u16_at(0x3a);
    let shnum = u16_at(0x3c);
    let shstrndx = u16_at(0x3e);
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18);
    for i in 0..shnum {
        let h = header(i);
        let name_at = strtab + usize::try_from(u32_at(h)).expect("u32 fits usize");
        let name_end = name_at + elf[name_at..].iter().position(|b| *b == 0).expect("NUL");
        if &elf[name_at..name_end] == wanted.as_bytes() {
            let offset = u64_at(h + 0x18);
            let size = u64_at(h + 0x20);
            return &elf[offset..offset + size];
        }
    }
    panic!("no {wanted} section: build.rs must compile with -g");
}

fn string_at(strings: &[u8], off: u32) -> String {
    let s = &strings[usize::try_from(off).expect("u32 fits usize")..];
    String::from_utf8_lossy(&s[..s.iter().position(|b| *b == 0).expect("NUL")]).into_owned()
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One BTF type record; `extra` holds the kind's trailing words.
struct Type {
    name: String,
    kind: u32,
    kflag: bool,
    /// Size for sized kinds, the referred type id for the others.
    size_or_type: u32,
    extra: Vec<u32>,
}

struct Btf {
    /// Indexed by type id; id 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    fn of_object(elf: &[u8]) -> Btf {
        let btf = elf_section(elf, ".BTF");
        let word = |at: usize| u32::from_ne_bytes(btf[at..at + 4].try_into().expect("4 bytes"));
        let at = |w: u32| usize::try_from(w).expect("u32 fits usize");
        assert_eq!(u16::from_ne_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic");
        let hdr_len = at(word(4));
        let types_start = hdr_len + at(word(8));
        let types_end = types_start + at(word(12));
        let strings = btf[hdr_len + at(word(16))..][..at(word(20))].to_vec();
        let string = |off: u32| string_at(&strings, off);
        let mut types = vec![Type {
            name: "void".to_owned(),
            kind: 0,
            kflag: false,
            size_or_type: 0,
            extra: Vec::new(),
        }];
        let mut pos = types_start;
        while pos < types_end {
            let info = word(pos + 4);
            let kind = (info >> 24) & 0x1f;
            let vlen = at(info & 0xffff);
            let extra_words = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 1,
                KIND_ARRAY => 3,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 3 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 2 * vlen,
                _ => 0,
            };
            let extra = (0..extra_words).map(|i| word(pos + 12 + 4 * i)).collect();
            types.push(Type {
                name: string(word(pos)),
                kind,
                kflag: info >> 31 == 1,
                size_or_type: word(pos + 8),
                extra,
            });
            pos += 12 + 4 * extra_words;
        }
        Btf { types, strings }
    }

    fn get(&self, id: u32) -> &Type {
        &self.types[usize::try_from(id).expect("u32 fits usize")]
    }

    /// The type an id names once typedefs and qualifiers are looked through.
    fn resolve(&self, mut id: u32) -> u32 {
        while matches!(
            self.get(id).kind,
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
        ) {
            id = self.get(id).size_or_type;
        }
        id
    }

    fn size(&self, id: u32) -> usize {
        let t = self.get(self.resolve(id));
        let size = |w: u32| usize::try_from(w).expect("u32 fits usize");
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                size(t.size_or_type)
            }
            KIND_PTR => 8,
            KIND_ARRAY => size(t.extra[2]) * self.size(t.extra[0]),
            kind => panic!("no size for BTF kind {kind} ({})", t.name),
        }
    }

    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == kind && t.name == name)
            .map(|i| u32::try_from(i).expect("type ids fit u32"))
    }

    /// A struct's size and its members as (name, byte offset, byte size).
    fn layout(&self, id: u32) -> Layout {
        let t = self.get(id);
        let members = t
            .extra
            .chunks(3)
            .map(|m| {
                let bits = if t.kflag { m[2] & 0x00ff_ffff } else { m[2] };
                assert!(
                    !t.kflag || m[2] >> 24 == 0,
                    "{}: bit-fields have no place in the ABI",
                    t.name
                );
                assert_eq!(bits % 8, 0, "{}: a member off a byte boundary", t.name);
                (
                    string_at(&self.strings, m[0]),
                    usize::try_from(bits / 8).expect("u32 fits usize"),
                    self.size(m[1]),
                )
            })
            .collect();
        Layout {
            size: usize::try_from(t.size_or_type).expect("u32 fits usize"),
            members,
        }
    }
}

/// A struct as both sides lay it out: its size and its members as (name,
/// byte offset, byte size), in declaration order.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    size: usize,
    members: Vec<(String, usize, usize)>,
}

/// A map as `maps.h` defines it.
#[derive(Debug, PartialEq, Eq)]
struct MapDef {
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl Btf {
    /// Every map of the `.maps` section by name. `__uint(f, n)` is a pointer
    /// to an array of n elements; `__type(f, T)` a pointer to T;
    /// `__array(values, T)` an array of pointers, whose entries user space
    /// sees as 4-byte ids.
    fn maps(&self) -> BTreeMap<String, MapDef> {
        let datasec = self.find(KIND_DATASEC, ".maps").expect("a .maps section");
        let mut out = BTreeMap::new();
        for var in self.get(datasec).extra.chunks(3) {
            let var = self.get(var[0]);
            assert_eq!(var.kind, KIND_VAR);
            let def = self.get(self.resolve(var.size_or_type));
            let mut fields = BTreeMap::new();
            for m in def.extra.chunks(3) {
                fields.insert(string_at(&self.strings, m[0]), m[1]);
            }
            let uint = |name: &str| {
                fields.get(name).map_or(0, |ptr| {
                    let array = self.get(self.get(*ptr).size_or_type);
                    assert_eq!(array.kind, KIND_ARRAY, "{}.{name}", var.name);
                    array.extra[2]
                })
            };
            let pointee = |name: &str| {
                fields.get(name).map_or(0, |ptr| {
                    u32::try_from(self.size(self.get(*ptr).size_or_type)).expect("fits u32")
                })
            };
            let value_size = if fields.contains_key("values") {
                4
            } else {
                pointee("value")
            };
            out.insert(
                var.name.clone(),
                MapDef {
                    key_size: pointee("key"),
                    value_size,
                    max_entries: uint("max_entries"),
                },
            );
        }
        out
    }

    /// The inner map template of every map of maps, by outer map name: the struct that
    /// `__array(values, T)` points to, read as `maps()` reads a map.
    fn inner_maps(&self) -> BTreeMap<String, InnerDef> {
        let datasec = self.find(KIND_DATASEC, ".maps").expect("a .maps section");
        let mut out = BTreeMap::new();
        for var in self.get(datasec).extra.chunks(3) {
            let var = self.get(var[0]);
            let def = self.get(self.resolve(var.size_or_type));
            let fields = self.fields(def);
            let Some(values) = fields.get("values") else {
                continue;
            };
            // struct inner *values[]: an array of pointers to the template.
            let array = self.get(*values);
            assert_eq!(array.kind, KIND_ARRAY, "{}.values", var.name);
            let pointer = self.get(array.extra[0]);
            assert_eq!(pointer.kind, KIND_PTR, "{}.values[]", var.name);
            let template = self.get(self.resolve(pointer.size_or_type));
            let inner = self.fields(template);
            let uint = |name: &str| {
                inner.get(name).map_or(0, |ptr| {
                    let array = self.get(self.get(*ptr).size_or_type);
                    assert_eq!(array.kind, KIND_ARRAY, "{}.{name}", template.name);
                    array.extra[2]
                })
            };
            let pointee = |name: &str| {
                inner.get(name).map_or(0, |ptr| {
                    u32::try_from(self.size(self.get(*ptr).size_or_type)).expect("fits u32")
                })
            };
            out.insert(
                var.name.clone(),
                InnerDef {
                    map_type: uint("type"),
                    key_size: pointee("key"),
                    value_size: pointee("value"),
                    max_entries: uint("max_entries"),
                    flags: uint("map_flags"),
                },
            );
        }
        out
    }

    /// The members of a struct by name, each with its type id.
    fn fields(&self, def: &Type) -> BTreeMap<String, u32> {
        def.extra
            .chunks(3)
            .map(|m| (string_at(&self.strings, m[0]), m[1]))
            .collect()
    }
}

/// An inner map template as `maps.h` defines it (`CG_INNER`).
#[derive(Debug, PartialEq, Eq)]
struct InnerDef {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

/// The size of a member's type, from a projection of it.
fn member_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// The Rust layout of a mirror struct, with the C name it mirrors.
macro_rules! mirror {
    ($c:literal, $t:ty, [$($f:ident),+ $(,)?]) => {
        (
            $c,
            Layout {
                size: size_of::<$t>(),
                members: vec![$((
                    stringify!($f).to_owned(),
                    offset_of!($t, $f),
                    member_size(|v: &$t| &v.$f),
                )),+],
            },
        )
    };
}

/// Every struct of `crmguard_abi.h` and its mirror.
fn mirrors() -> Vec<(&'static str, Layout)> {
    vec![
        mirror!(
            "cg_config",
            abi::Config,
            [
                generation,
                mode,
                default_action,
                icmp,
                flags,
                wg_port_be,
                rl_v6_prefix,
                _pad,
                src_pps,
                src_burst,
                src_syn_per_s,
                syn_per_cpu_per_s,
                icmp_echo_pps,
                wg_handshake_pps,
                wg_handshake_burst,
                deny4_bits,
                deny4_probes,
                deny4_len,
                _pad2,
            ]
        ),
        mirror!("cg_stats", abi::Stats, [packets, bytes]),
        mirror!("cg_addr6", abi::Addr6, [addr]),
        mirror!("cg_lpm4", abi::Lpm4, [prefixlen, addr_be]),
        mirror!("cg_lpm6", abi::Lpm6, [prefixlen, addr]),
        mirror!("cg_rule", abi::Rule, [rule_id]),
        mirror!("cg_svc_key", abi::SvcKey, [proto, _pad, port_be]),
        mirror!("cg_svc", abi::Svc, [svc_id, flags, src_pps, syn_pps]),
        mirror!("cg_svc_lpm4", abi::SvcLpm4, [prefixlen, svc_id_be, addr_be]),
        mirror!("cg_svc_lpm6", abi::SvcLpm6, [prefixlen, svc_id_be, addr]),
        mirror!("cg_ban", abi::Ban, [expires_ns, reason, _pad]),
        mirror!("cg_rl_key", abi::RlKey, [addr, scope]),
        mirror!("cg_rl", abi::Rl, [tat_ns, rate, burst]),
        mirror!("cg_rl_slot", abi::RlSlot, [key, seen, bucket]),
        mirror!("cg_event_budget", abi::EventBudget, [bucket, spent_jiffies]),
        mirror!("cg_deny4_bucket", abi::Deny4Bucket, [entry]),
        mirror!("cg_clock", abi::Clock, [jiffies, ns]),
        mirror!(
            "cg_frag_key",
            abi::FragKey,
            [src, dst, id, proto, family, _pad]
        ),
        mirror!("cg_frag", abi::Frag, [expires_ns, reason, _pad]),
        mirror!(
            "cg_flow4_key",
            abi::Flow4Key,
            [local, remote, local_port_be, remote_port_be]
        ),
        mirror!("cg_flow4_cached", abi::Flow4Cached, [key, _pad, expires_ns]),
        mirror!(
            "cg_flow_key",
            abi::FlowKey,
            [
                local,
                remote,
                local_port_be,
                remote_port_be,
                proto,
                family,
                _pad
            ]
        ),
        mirror!("cg_flow", abi::Flow, [expires_ns]),
        mirror!(
            "cg_event",
            abi::Event,
            [ts_ns, src, dst, sport_be, dport_be, proto, family, action, reason, ifslot, _pad]
        ),
    ]
}

fn objects() -> [(&'static str, Btf); 2] {
    [
        ("xdp_firewall.o", Btf::of_object(crate::XDP_OBJECT)),
        ("tc_egress.o", Btf::of_object(crate::tc::TC_OBJECT)),
    ]
}

#[test]
fn every_mirror_member_lies_where_the_object_puts_it() {
    for (object, btf) in objects() {
        for (c_name, rust) in mirrors() {
            let id = btf
                .find(KIND_STRUCT, c_name)
                .unwrap_or_else(|| panic!("struct {c_name} is not in {object}'s BTF"));
            assert_eq!(btf.layout(id), rust, "struct {c_name} in {object}");
        }
    }
}

#[test]
fn every_struct_of_the_header_has_a_mirror() {
    let in_header: BTreeSet<&str> = abi::HEADER
        .lines()
        .filter_map(|l| l.strip_prefix("struct ")?.strip_suffix(" {"))
        .collect();
    let mirrored: BTreeSet<&str> = mirrors().into_iter().map(|(name, _)| name).collect();
    assert_eq!(in_header, mirrored);
}

#[test]
fn map_specs_match_the_object() {
    let (_, btf) = &objects()[0];
    let in_object = btf.maps();
    let specs: BTreeMap<String, MapDef> = crate::maps::MAP_SPECS
        .iter()
        .map(|s| {
            (
                s.name.to_owned(),
                MapDef {
                    key_size: s.key_size,
                    value_size: s.value_size,
                    max_entries: s.max_entries,
                },
            )
        })
        .collect();
    assert_eq!(specs, in_object);
}

#[test]
fn the_stamp_map_matches_the_object() {
    let (_, btf) = &objects()[0];
    let stamp = btf.maps().remove(crate::stamp::STAMP_MAP);
    let expected = MapDef {
        key_size: 4,
        value_size: 4,
        max_entries: 1,
    };
    assert_eq!(stamp, Some(expected));
}

#[test]
fn inner_maps_match_the_object() {
    let (_, btf) = &objects()[0];
    let expected: BTreeMap<String, InnerDef> = crate::maps::inner_kinds()
        .map(
            |(outer, map_type, key_size, value_size, max_entries, flags)| {
                (
                    outer.to_owned(),
                    InnerDef {
                        map_type,
                        key_size,
                        value_size,
                        max_entries,
                        flags,
                    },
                )
            },
        )
        .collect();
    assert_eq!(btf.inner_maps(), expected);
}

/// The ABI as the XDP object's BTF describes it, one line per struct and
/// per map, in name order.
fn abi_description(btf: &Btf) -> String {
    let mut lines = Vec::new();
    for (c_name, _) in mirrors() {
        let id = btf.find(KIND_STRUCT, c_name).expect("checked above");
        let layout = btf.layout(id);
        let members: Vec<String> = layout
            .members
            .iter()
            .map(|(name, offset, size)| format!("{name}@{offset}+{size}"))
            .collect();
        lines.push(format!(
            "struct {c_name} {}: {}",
            layout.size,
            members.join(" ")
        ));
    }
    for (name, def) in btf.maps() {
        lines.push(format!(
            "map {name}: key {} value {} max {}",
            def.key_size, def.value_size, def.max_entries
        ));
    }
    for (name, def) in btf.inner_maps() {
        lines.push(format!(
            "inner {name}: type {} key {} value {} max {} flags {}",
            def.map_type, def.key_size, def.value_size, def.max_entries, def.flags
        ));
    }
    lines.sort();
    lines.join("\n")
}

/// FNV-1a, 64 bits: a short, stable fingerprint of a text.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The fingerprint of the ABI at each version. A change of a struct or a
/// map changes the fingerprint; it must come with a new `CG_ABI_VERSION`
/// (and `abi::ABI_VERSION`), so that agents refuse each other's pinned maps
/// instead of misreading them. Record the new pair here.
///
/// The one exception is a padding field given a meaning whose zero keeps the
/// old behaviour, with every offset and size unchanged: agents of either
/// side read each other's maps correctly, so the version stays and only the
/// fingerprint is recorded again. `cg_config.rl_v6_prefix` (was `_pad`, 0 =
/// the whole IPv6 address) is such a change.
///
/// Version 3 added `cg_dgram_flows` (datagram flows apart from the TCP
/// connections of `cg_flows`) and `cg_rl_budget` (new rate-limit buckets per
/// CPU per second), and the reason `rl_table_busy`.
///
/// Version 4 made the services of a slot an array indexed by protocol and
/// port (`CG_SVC_INDEX`) instead of a hash, and the description now has the
/// inner maps' templates.
///
/// Version 5 made `cg_rl` an array of `cg_rl_slot` (key, last seen and
/// bucket), two places per key from `cg_rl_hash`, instead of an LRU hash.
///
/// Version 6 made `cg_event_budget` a `cg_event_budget` (the bucket and the tick in which it
/// was last found spent), so that a flood of drops reads the clock once per tick.
///
/// Version 7 made the IPv4 deny set of a slot a table of buckets (`cg_deny4_s`, `_m` and `_l`,
/// arrays of `cg_deny4_bucket` in three sizes) holding the single addresses and the prefixes of
/// up to `CG_DENY4_PROBES` lengths, which `cg_config` names, instead of a hash.
///
/// Version 8 added `cg_clock`, each CPU's last reading of the clock and its tick, from which
/// XDP decides most expiries without reading the clock.
///
/// Version 9 added `cg_flows4`: IPv4 TCP connections under the 12-byte `cg_flow4_key`, apart
/// from the IPv6 ones in `cg_flows`.
///
/// Version 10 added `cg_flow4_cache`, each CPU's cache of the IPv4 TCP connections XDP found
/// live in `cg_flows4`, which answers for their replies without a hash lookup.
const FINGERPRINT: (u32, u64) = (10, 0x6e8c_ef32_b0cb_fe83);

#[test]
fn the_abi_changes_only_with_its_version() {
    let (_, btf) = &objects()[0];
    let description = abi_description(btf);
    let found = (abi::ABI_VERSION, fnv1a(&description));
    assert_eq!(
        found, FINGERPRINT,
        "the ABI is now:\n{description}\nIf it changed, raise CG_ABI_VERSION and \
         abi::ABI_VERSION and record (version, fingerprint) in FINGERPRINT"
    );
}
