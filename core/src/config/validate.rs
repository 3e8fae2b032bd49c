//! Turns the raw configuration into the typed [`Config`], collecting every problem.
//!
//! Each function here reads one section, applies the defaults of the embedded policy to absent
//! keys and reports each bad value at its own span, then goes on, so that `crmguard check` shows
//! all problems at once. A value that is wrong is replaced by its default or left out; the
//! resulting [`Config`] is only handed out when no problem was found. Checks that need more than
//! one section (peers against roles and the tunnel subnet, services against the WireGuard port)
//! run after the sections they depend on.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use toml::Spanned;

use super::error::{ConfigError, ConfigErrors, Source};
use super::raw::{
    Int, List, RawAgent, RawAudit, RawBackup, RawConfig, RawCrowdsec, RawDetection, RawFirewall,
    RawInspection, RawInterface, RawMfa, RawPeer, RawPeersFile, RawRole, RawVpn, Text,
};

mod policy_tests;

use super::{
    parse_duration, Agent, Alerts, AppProtocol, Audit, AuditRotation, AuthFailures, Backup,
    BackupEncryption, Config, ConfigWord, Crowdsec, Date, DefaultAction, DenyEntry, Detection,
    Firewall, Hours, IcmpPolicy, Inspection, Interface, Limits, LogFormat, LogOrigin, LogSource,
    LoginFailureRule, Metrics, Mfa, Mode, NewEndpoint, NoSniAction, OffHours, OnWriteFailure,
    ParserErrorAction, Peer, PortScan, Proto, ResponseAction, Role, Service, ServiceSpec,
    SniPattern, TlsVersion, ViolationAction, Volume, Vpn, XdpMode, MAX_DETECTION_COUNT,
    MAX_INTERFACE_NAME_LEN, MAX_NAME_LEN,
};
pub(super) use policy_tests::{test_files, test_peers};

const DEFAULT_VPN_ADDRESS: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 77, 0, 1), 24);
const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9184);
const DEFAULT_BYTES_PER_HOUR: u64 = 2 << 30;
const DAY: u64 = 24 * 60 * 60;
/// One site, or one attacker, holds a whole /64.
const DEFAULT_RATE_LIMIT_V6_PREFIX: u8 = 64;

/// A configuration that has been checked, with what [`super::load`] needs to read the deny files
/// and the peers file and to check them against it.
pub(super) struct Checked {
    pub config: Config,
    pub errors: Vec<ConfigError>,
    /// The span of each entry of `firewall.deny.files`, parallel to `config.firewall.deny_files`.
    deny_file_spans: Vec<Range<usize>>,
    /// The prefixes already in `config.firewall.deny`.
    denied: BTreeSet<IpNet>,
    /// The span of `vpn.peers_file`, when it is written out.
    peers_file_span: Option<Range<usize>>,
    /// What peers are checked against.
    peer_rules: PeerRules,
    /// The peers seen so far, to find duplicates across files.
    peer_index: PeerIndex,
    /// The span of each entry of `tests.files`, parallel to `config.test_files`.
    test_file_spans: Vec<Range<usize>>,
    /// The peers that policy tests name, each with the error to report if it does not exist.
    test_peer_refs: Vec<(String, ConfigError)>,
}

impl Checked {
    /// The configuration, or every problem found.
    pub fn finish(self) -> Result<Config, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(self.config)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// Checks a whole configuration file.
pub(super) fn config(src: &Source, raw: RawConfig) -> Checked {
    let mut errors = Vec::new();
    let mut c = Check {
        src,
        errors: &mut errors,
    };
    let agent = agent(&mut c, &raw.agent);
    let interfaces = interfaces(&mut c, &raw.interface);
    let (vpn, tunnel) = match &raw.vpn {
        Some(raw_vpn) => {
            let (vpn, tunnel) = vpn(&mut c, raw_vpn);
            (Some(vpn), Some(tunnel))
        }
        None => (None, None),
    };
    let mut denied = BTreeSet::new();
    let (firewall, deny_file_spans) = firewall(
        &mut c,
        &raw.firewall,
        vpn.as_ref().map(|v| v.listen_port),
        &mut denied,
    );
    let roles = roles(&mut c, &raw.role);
    let peer_rules = PeerRules {
        role_names: raw.role.iter().map(|r| r.name.get_ref().clone()).collect(),
        tunnel,
    };
    let mut peer_index = PeerIndex::default();
    let peers = peers(&mut c, &raw.peer, &peer_rules, &mut peer_index);
    let inspection = inspection(&mut c, &raw.inspection);
    let detection = detection(&mut c, &raw.detection, firewall.limits.ipv6_prefix);
    let mfa = mfa(&mut c, &raw.mfa);
    portal_port_in_no_role(&mut c, &raw.role, mfa.portal_port);
    let audit = Audit {
        path: c.path_or(
            &raw.audit.path,
            "audit.path",
            "/var/log/crmguard/audit.jsonl",
        ),
        key_file: c.path_or(
            &raw.audit.key_file,
            "audit.key_file",
            "/etc/crmguard/audit.key",
        ),
        on_write_failure: c.word_or(
            &raw.audit.on_write_failure,
            "audit.on_write_failure",
            OnWriteFailure::FailClosed,
        ),
        rotation: audit_rotation(&mut c, &raw.audit),
    };
    let backup = Backup {
        dir: c.path_or(&raw.backup.dir, "backup.dir", "/var/backups/crmguard"),
        every: c.duration_or(&raw.backup.every, "backup.every", DAY),
        keep: c.count_or(&raw.backup.keep, "backup.keep", 14, 1),
        encryption: backup_encryption(&mut c, &raw.backup),
    };
    let metrics = Metrics {
        listen: c.socket_addr_or(
            &raw.metrics.listen,
            "metrics.listen",
            DEFAULT_METRICS_LISTEN,
        ),
    };
    let alerts = Alerts {
        webhook: raw
            .alerts
            .webhook
            .as_ref()
            .and_then(|url| c.plain_http_url(url, "alerts.webhook")),
        alertmanager: raw
            .alerts
            .alertmanager
            .as_ref()
            .and_then(|url| c.plain_http_url(url, "alerts.alertmanager")),
        queue: c.count_or(&raw.alerts.queue, "alerts.queue", 1024, 1),
    };
    let crowdsec = raw.crowdsec.as_ref().and_then(|raw| crowdsec(&mut c, raw));
    let peers_file_span = raw
        .vpn
        .as_ref()
        .and_then(|v| v.peers_file.as_ref())
        .map(|p| p.span());
    let mut test_peer_refs = Vec::new();
    let tests = policy_tests::tests(&mut c, &raw.test, &mut test_peer_refs);
    let (test_files, test_file_spans) = policy_tests::files(&mut c, &raw.tests);
    Checked {
        config: Config {
            agent,
            interfaces,
            firewall,
            vpn,
            roles,
            peers,
            inspection,
            detection,
            mfa,
            audit,
            backup,
            metrics,
            alerts,
            crowdsec,
            tests,
            test_files,
        },
        errors,
        deny_file_spans,
        denied,
        peers_file_span,
        peer_rules,
        peer_index,
        test_file_spans,
        test_peer_refs,
    }
}

/// Reads each file of `firewall.deny.files` into the deny set. A file that cannot be read is
/// reported at the key that names it; a bad line is reported in the deny file itself.
pub(super) fn deny_files(src: &Source, checked: &mut Checked, read: &mut super::ReadFile<'_>) {
    let files = checked.config.firewall.deny_files.clone();
    let spans = checked.deny_file_spans.clone();
    for (i, (path, span)) in files.iter().zip(spans).enumerate() {
        let key = format!("firewall.deny.files[{i}]");
        match read(path) {
            Ok(text) => deny_file(&Source::new(path, &text), &key, checked),
            Err(err) => checked.errors.push(src.error(
                &span,
                &key,
                format!("cannot read deny file {}: {err}", path.display()),
            )),
        }
    }
}

/// Checks a deny file: one address or prefix per line, `#` starts a comment.
fn deny_file(src: &Source, key: &str, checked: &mut Checked) {
    for (n, line) in src.text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or_default();
        let entry = content.trim();
        if entry.is_empty() {
            continue;
        }
        let leading = content.len() - content.trim_start().len();
        let column = content[..leading].chars().count() + 1;
        let line_number = n + 1;
        let parsed = if entry.contains(char::is_whitespace) {
            Err(format!(
                "`{entry}` is not one address or prefix; write one per line"
            ))
        } else {
            parse_prefix(entry)
        };
        match parsed {
            Ok(net) => {
                if checked.denied.insert(net) {
                    checked.config.firewall.deny.push(DenyEntry {
                        net,
                        origin: format!("{}:{line_number}", src.file.display()),
                    });
                }
            }
            Err(message) => {
                checked
                    .errors
                    .push(src.error_at_line(line_number, column, key, message))
            }
        }
    }
}

/// Reads the peers file, when `[vpn]` is configured and the file exists, and adds its peers
/// after the inline ones.
pub(super) fn peers_file(src: &Source, checked: &mut Checked, read: &mut super::ReadFile<'_>) {
    let Some(vpn) = &checked.config.vpn else {
        return;
    };
    let path = vpn.peers_file.clone();
    let text = match read(&path) {
        Ok(text) => text,
        // No peers have been added yet.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return,
        Err(err) => {
            let error = match &checked.peers_file_span {
                Some(span) => src.error(
                    span,
                    "vpn.peers_file",
                    format!("cannot read peers file {}: {err}", path.display()),
                ),
                None => ConfigError::unreadable(&path, &err),
            };
            checked.errors.push(error);
            return;
        }
    };
    let peers_src = Source::new(&path, &text);
    let raw = match peers_src.deserialize_tables::<RawPeer>("peer") {
        Some(peer) => RawPeersFile { peer },
        None => match peers_src.deserialize::<RawPeersFile>() {
            Ok(raw) => raw,
            Err(err) => {
                checked.errors.push(err);
                return;
            }
        },
    };
    let mut c = Check {
        src: &peers_src,
        errors: &mut checked.errors,
    };
    let more = peers(
        &mut c,
        &raw.peer,
        &checked.peer_rules,
        &mut checked.peer_index,
    );
    checked.config.peers.extend(more);
}

/// `[backup] recipient` or `passphrase_file`, not both.
fn backup_encryption(c: &mut Check, raw: &RawBackup) -> Option<BackupEncryption> {
    let recipient = raw.recipient.as_ref().and_then(|text| {
        let key = text.get_ref().trim();
        if is_age_recipient(key) {
            return Some(key.to_owned());
        }
        c.fail(
            &text.span(),
            "backup.recipient",
            format!("`{key}` is not an age X25519 recipient (`age1` and 58 more characters, as `age-keygen` prints it)"),
        );
        None
    });
    let passphrase_file = raw
        .passphrase_file
        .as_ref()
        .and_then(|text| c.path(text, "backup.passphrase_file"));
    match (recipient, passphrase_file, &raw.passphrase_file) {
        (Some(_), Some(_), Some(text)) => {
            c.fail(
                &text.span(),
                "backup.passphrase_file",
                "age encrypts an archive to a recipient or to a passphrase, not both; keep one of `recipient` and `passphrase_file`",
            );
            None
        }
        (Some(recipient), _, _) => Some(BackupEncryption::Recipient(recipient)),
        (None, Some(file), _) => Some(BackupEncryption::PassphraseFile(file)),
        (None, None, _) => None,
    }
}

/// Whether `text` is an age X25519 recipient: the bech32 encoding (lower case, valid
/// checksum) of 32 bytes under the human-readable part `age`.
fn is_age_recipient(text: &str) -> bool {
    const CHARSET: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let Some(data) = text.strip_prefix("age1") else {
        return false;
    };
    // 32 bytes are 52 five-bit groups, and the checksum 6 more.
    if data.len() != 58 {
        return false;
    }
    let mut values = Vec::with_capacity(data.len());
    for byte in data.bytes() {
        let Some(value) = CHARSET.iter().position(|c| *c == byte) else {
            return false;
        };
        values.push(u8::try_from(value).unwrap_or(0));
    }
    let mut checked: Vec<u8> = b"age".iter().map(|b| b >> 5).collect();
    checked.push(0);
    checked.extend(b"age".iter().map(|b| b & 31));
    checked.extend(values);
    bech32_polymod(&checked) == 1
}

/// The BCH checksum of bech32 (BIP 173).
fn bech32_polymod(values: &[u8]) -> u32 {
    const GENERATOR: [u32; 5] = [
        0x3b6a_57b2,
        0x2650_8e6d,
        0x1ea1_19fa,
        0x3d42_33dd,
        0x2a14_62b3,
    ];
    let mut chk: u32 = 1;
    for value in values {
        let top = chk >> 25;
        chk = ((chk & 0x01ff_ffff) << 5) ^ u32::from(*value);
        for (i, generator) in GENERATOR.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= generator;
            }
        }
    }
    chk
}

fn agent(c: &mut Check, raw: &RawAgent) -> Agent {
    Agent {
        mode: c.word_or(&raw.mode, "agent.mode", Mode::Enforce),
        state_dir: c.path_or(&raw.state_dir, "agent.state_dir", "/var/lib/crmguard"),
        bpffs_dir: c.path_or(&raw.bpffs_dir, "agent.bpffs_dir", "/sys/fs/bpf/crmguard"),
        control_socket: c.path_or(
            &raw.control_socket,
            "agent.control_socket",
            "/run/crmguard/control.sock",
        ),
        log_format: c.word_or(&raw.log_format, "agent.log_format", LogFormat::Text),
    }
}

fn interfaces(c: &mut Check, raw: &[RawInterface]) -> Vec<Interface> {
    let mut seen = Seen::new("interface");
    let mut interfaces = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        let key = format!("interface[{i}]");
        let name = c.name(&raw.name, &format!("{key}.name"), MAX_INTERFACE_NAME_LEN);
        let xdp_mode = c.word_or(&raw.xdp_mode, &format!("{key}.xdp_mode"), XdpMode::Auto);
        let Some(name) = name else { continue };
        if seen.check(c, &name, &raw.name, &format!("{key}.name")) {
            interfaces.push(Interface { name, xdp_mode });
        }
    }
    interfaces
}

fn firewall(
    c: &mut Check,
    raw: &RawFirewall,
    wireguard_port: Option<u16>,
    denied: &mut BTreeSet<IpNet>,
) -> (Firewall, Vec<Range<usize>>) {
    let limits = Limits {
        per_source_pps: c.count_or(
            &raw.limits.per_source_pps,
            "firewall.limits.per_source_pps",
            2000,
            1,
        ),
        per_source_burst: c.count_or(
            &raw.limits.per_source_burst,
            "firewall.limits.per_source_burst",
            4000,
            1,
        ),
        syn_per_source_per_s: c.count_or(
            &raw.limits.syn_per_source_per_s,
            "firewall.limits.syn_per_source_per_s",
            50,
            1,
        ),
        global_syn_per_s: c.count_or(
            &raw.limits.global_syn_per_s,
            "firewall.limits.global_syn_per_s",
            20000,
            1,
        ),
        ipv6_prefix: match &raw.limits.ipv6_prefix {
            None => DEFAULT_RATE_LIMIT_V6_PREFIX,
            Some(value) => match u8::try_from(*value.get_ref()) {
                Ok(bits @ 16..=128) => bits,
                _ => {
                    c.fail(
                        &value.span(),
                        "firewall.limits.ipv6_prefix",
                        format!(
                            "{} is not a prefix length from 16 to 128 (128 keys each address)",
                            value.get_ref()
                        ),
                    );
                    DEFAULT_RATE_LIMIT_V6_PREFIX
                }
            },
        },
    };
    let mut deny = Vec::new();
    if let Some(sources) = &raw.deny.sources {
        for net in c.prefixes(sources, "firewall.deny.sources") {
            if denied.insert(net) {
                deny.push(DenyEntry {
                    net,
                    origin: "firewall.deny.sources".to_owned(),
                });
            }
        }
    }
    let mut deny_files = Vec::new();
    let mut deny_file_spans = Vec::new();
    for (i, file) in raw.deny.files.iter().flat_map(|f| f.get_ref()).enumerate() {
        if let Some(path) = c.path(file, &format!("firewall.deny.files[{i}]")) {
            deny_files.push(path);
            deny_file_spans.push(file.span());
        }
    }
    let firewall = Firewall {
        default: c.word_or(&raw.default, "firewall.default", DefaultAction::Drop),
        allow_established: raw.allow_established.unwrap_or(true),
        icmp: c.word_or(&raw.icmp, "firewall.icmp", IcmpPolicy::Essential),
        icmp_echo_per_source_pps: c.count_or(
            &raw.icmp_echo_per_source_pps,
            "firewall.icmp_echo_per_source_pps",
            5,
            1,
        ),
        limits,
        deny,
        deny_files,
        services: services(c, raw, wireguard_port),
    };
    (firewall, deny_file_spans)
}

fn services(c: &mut Check, raw: &RawFirewall, wireguard_port: Option<u16>) -> Vec<Service> {
    let mut seen = Seen::new("service");
    let mut owners: BTreeMap<(Proto, u16), String> = BTreeMap::new();
    let mut services = Vec::new();
    for (i, raw) in raw.service.iter().enumerate() {
        let key = format!("firewall.service[{i}]");
        let name_key = format!("{key}.name");
        let name = c
            .name(&raw.name, &name_key, MAX_NAME_LEN)
            .filter(|name| seen.check(c, name, &raw.name, &name_key));
        let proto = c.word(&raw.proto, &format!("{key}.proto"));
        let ports_key = format!("{key}.ports");
        if raw.ports.get_ref().is_empty() {
            c.fail(&raw.ports.span(), &ports_key, "lists no port");
        }
        let mut ports = Vec::new();
        for (j, port) in raw.ports.get_ref().iter().enumerate() {
            let port_key = format!("{ports_key}[{j}]");
            let Some(number) = c.port(port, &port_key) else {
                continue;
            };
            if ports.contains(&number) {
                c.fail(
                    &port.span(),
                    &port_key,
                    format!("port {number} is listed twice"),
                );
                continue;
            }
            ports.push(number);
            let (Some(proto), Some(name)) = (proto, &name) else {
                continue;
            };
            if proto == Proto::Udp && wireguard_port == Some(number) {
                c.fail(
                    &port.span(),
                    &port_key,
                    format!("udp/{number} is the WireGuard port (vpn.listen_port)"),
                );
            } else if let Some(owner) = owners.get(&(proto, number)) {
                c.fail(
                    &port.span(),
                    &port_key,
                    format!("{proto}/{number} is already opened by service `{owner}`"),
                );
            } else {
                owners.insert((proto, number), name.clone());
            }
        }
        let from = raw.from.as_ref().map(|from| {
            let from_key = format!("{key}.from");
            if from.get_ref().is_empty() {
                c.fail(
                    &from.span(),
                    &from_key,
                    "is empty, which admits nobody; omit `from` to admit any source",
                );
            }
            c.prefixes(from, &from_key)
        });
        let per_source_pps = raw
            .per_source_pps
            .as_ref()
            .and_then(|v| c.count(v, &format!("{key}.per_source_pps"), 1));
        let new_conn_per_source_per_s = raw
            .new_conn_per_source_per_s
            .as_ref()
            .and_then(|v| c.count(v, &format!("{key}.new_conn_per_source_per_s"), 1));
        if let (Some(name), Some(proto)) = (name, proto) {
            services.push(Service {
                name,
                proto,
                ports,
                from,
                per_source_pps,
                new_conn_per_source_per_s,
            });
        }
    }
    services
}

/// What peers are checked against: the role names and the tunnel subnets.
struct PeerRules {
    /// Every role name written in the file, valid or not, so that a bad role name is reported
    /// once at the role and not again at each of its peers.
    role_names: BTreeSet<String>,
    /// `None` when `[vpn]` is absent.
    tunnel: Option<Tunnel>,
}

/// The tunnel subnets as far as they are valid; an invalid one skips the checks that need it.
struct Tunnel {
    v4: Option<Ipv4Net>,
    v6: Option<Ipv6Net>,
    v6_configured: bool,
}

fn vpn(c: &mut Check, raw: &RawVpn) -> (Vpn, Tunnel) {
    let v4 = match &raw.address {
        Some(text) => c.tunnel_v4(text, "vpn.address"),
        None => Some(DEFAULT_VPN_ADDRESS),
    };
    let v6 = raw
        .address6
        .as_ref()
        .and_then(|text| c.tunnel_v6(text, "vpn.address6"));
    let vpn = Vpn {
        listen_port: match &raw.listen_port {
            Some(port) => c.port(port, "vpn.listen_port").unwrap_or(51820),
            None => 51820,
        },
        address: v4.unwrap_or(DEFAULT_VPN_ADDRESS),
        address6: v6,
        private_key_file: c.path_or(
            &raw.private_key_file,
            "vpn.private_key_file",
            "/etc/crmguard/wg.key",
        ),
        peers_file: c.path_or(
            &raw.peers_file,
            "vpn.peers_file",
            "/var/lib/crmguard/peers.toml",
        ),
        handshake_per_source_pps: c.count_or(
            &raw.handshake_per_source_pps,
            "vpn.handshake_per_source_pps",
            20,
            1,
        ),
        handshake_burst: c.count_or(&raw.handshake_burst, "vpn.handshake_burst", 5, 1),
        handshakes_before_cookies: c.count_or(
            &raw.handshakes_before_cookies,
            "vpn.handshakes_before_cookies",
            500,
            1,
        ),
        key_max_age: c.duration_or(&raw.key_max_age, "vpn.key_max_age", 90 * DAY),
        disable_inactive_after: c.duration_or(
            &raw.disable_inactive_after,
            "vpn.disable_inactive_after",
            30 * DAY,
        ),
    };
    let tunnel = Tunnel {
        v4,
        v6,
        v6_configured: raw.address6.is_some(),
    };
    (vpn, tunnel)
}

fn roles(c: &mut Check, raw: &[RawRole]) -> Vec<Role> {
    let mut seen = Seen::new("role");
    let mut roles = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        let key = format!("role[{i}]");
        let name_key = format!("{key}.name");
        let name = c
            .name(&raw.name, &name_key, MAX_NAME_LEN)
            .filter(|name| seen.check(c, name, &raw.name, &name_key));
        let mut allow = Vec::new();
        for (j, spec) in raw.allow.iter().flat_map(|a| a.get_ref()).enumerate() {
            let spec_key = format!("{key}.allow[{j}]");
            match parse_service_spec(spec.get_ref()) {
                Ok(parsed) if allow.contains(&parsed) => {
                    c.fail(
                        &spec.span(),
                        &spec_key,
                        format!("`{parsed}` is listed twice"),
                    );
                }
                Ok(parsed) => allow.push(parsed),
                Err(message) => c.fail(&spec.span(), &spec_key, message),
            }
        }
        let hours = raw
            .hours
            .as_ref()
            .and_then(|text| match Hours::parse(text.get_ref()) {
                Ok(hours) => Some(hours),
                Err(err) => {
                    c.fail(&text.span(), &format!("{key}.hours"), err);
                    None
                }
            });
        if let Some(name) = name {
            roles.push(Role {
                name,
                allow,
                hours,
                mfa: raw.mfa.unwrap_or(false),
            });
        }
    }
    roles
}

/// Where each peer name, key and address was first seen, across the configuration and the
/// peers file.
#[derive(Default)]
struct PeerIndex {
    names: BTreeMap<String, Location>,
    keys: BTreeMap<[u8; 32], Location>,
    v4: BTreeMap<Ipv4Addr, Location>,
    v6: BTreeMap<Ipv6Addr, Location>,
}

fn peers(c: &mut Check, raw: &[RawPeer], rules: &PeerRules, index: &mut PeerIndex) -> Vec<Peer> {
    let mut peers = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        let key = format!("peer[{i}]");
        let name_key = format!("{key}.name");
        let name = c.name(&raw.name, &name_key, MAX_NAME_LEN);
        if let Some(name) = &name {
            c.first_seen(&mut index.names, name.clone(), &raw.name, &name_key, || {
                format!("peer name `{name}`")
            });
        }
        if rules.tunnel.is_none() {
            c.fail(
                &raw.name.span(),
                &name_key,
                "peers need a [vpn] section, which is missing",
            );
        }
        let public_key = c.public_key(&raw.public_key, &format!("{key}.public_key"));
        if let Some(public_key) = public_key {
            c.first_seen(
                &mut index.keys,
                public_key,
                &raw.public_key,
                &format!("{key}.public_key"),
                || "public key".to_owned(),
            );
        }
        let address = c.peer_v4(&raw.address, &format!("{key}.address"), rules, index);
        // `Some(None)` is a peer without an IPv6 address, `None` one whose address is invalid.
        let address6 = match &raw.address6 {
            Some(text) => c
                .peer_v6(text, &format!("{key}.address6"), rules, index)
                .map(Some),
            None => Some(None),
        };
        let role = raw.role.get_ref();
        if !rules.role_names.contains(role) {
            let known = if rules.role_names.is_empty() {
                "no role is configured".to_owned()
            } else {
                let names: Vec<String> =
                    rules.role_names.iter().map(|r| format!("`{r}`")).collect();
                format!("the roles are {}", names.join(", "))
            };
            c.fail(
                &raw.role.span(),
                &format!("{key}.role"),
                format!("unknown role `{role}`; {known}"),
            );
        }
        let created = raw
            .created
            .as_ref()
            .and_then(|value| c.date(value, &format!("{key}.created")));
        let (Some(name), Some(public_key), Some(address), Some(address6)) =
            (name, public_key, address, address6)
        else {
            continue;
        };
        peers.push(Peer {
            name,
            public_key,
            address,
            address6,
            role: role.clone(),
            created,
            enabled: raw.enabled.unwrap_or(true),
        });
    }
    peers
}

fn inspection(c: &mut Check, raw: &RawInspection) -> Inspection {
    let mut sni_allow = Vec::new();
    for (i, pattern) in raw.sni_allow.iter().flat_map(|l| l.get_ref()).enumerate() {
        match parse_sni_pattern(pattern.get_ref()) {
            Ok(parsed) => sni_allow.push(parsed),
            Err(message) => c.fail(
                &pattern.span(),
                &format!("inspection.sni_allow[{i}]"),
                message,
            ),
        }
    }
    Inspection {
        enabled: raw.enabled.unwrap_or(true),
        tls_min_version: c.word_or(
            &raw.tls_min_version,
            "inspection.tls_min_version",
            TlsVersion::Tls12,
        ),
        sni_allow,
        no_sni: c.word_or(&raw.no_sni, "inspection.no_sni", NoSniAction::Allow),
        plaintext_credentials: c.word_or(
            &raw.plaintext_credentials,
            "inspection.plaintext_credentials",
            ViolationAction::Alert,
        ),
        protocol_mismatch: c.word_or(
            &raw.protocol_mismatch,
            "inspection.protocol_mismatch",
            ViolationAction::Alert,
        ),
        max_flows: c.count_or(&raw.max_flows, "inspection.max_flows", 65536, 1),
        parser_error: c.word_or(
            &raw.parser_error,
            "inspection.parser_error",
            ParserErrorAction::Pass,
        ),
        protocols: inspection_protocols(c, raw),
        login_failures: login_failures(c, raw),
    }
}

fn inspection_protocols(c: &mut Check, raw: &RawInspection) -> Vec<(ServiceSpec, AppProtocol)> {
    let mut protocols = Vec::new();
    let Some(table) = &raw.protocols else {
        return protocols;
    };
    for (service, protocol) in table.get_ref() {
        let key = format!("inspection.protocols.\"{service}\"");
        let spec = match parse_service_spec(service) {
            Ok(spec) => spec,
            Err(message) => {
                c.fail(&protocol.span(), &key, message);
                continue;
            }
        };
        if let Some(protocol) = c.word::<AppProtocol>(protocol, &key) {
            protocols.push((spec, protocol));
        }
    }
    protocols.sort_by_key(|(spec, _)| *spec);
    protocols
}

fn login_failures(c: &mut Check, raw: &RawInspection) -> Vec<LoginFailureRule> {
    let mut rules = Vec::new();
    for (i, rule) in raw.login_failure.iter().enumerate() {
        let key = |field: &str| format!("inspection.login_failure[{i}].{field}");
        let path = rule.path.get_ref();
        let path_ok = path.starts_with('/')
            && !path.contains('?')
            && path.bytes().all(|b| b.is_ascii_graphic());
        if !path_ok {
            c.fail(
                &rule.path.span(),
                &key("path"),
                format!("`{path}` is not a request path such as `/login` (no query, no spaces)"),
            );
        }
        let method = rule
            .method
            .as_ref()
            .map(|m| m.get_ref().to_ascii_uppercase());
        if let (Some(text), Some(method)) = (&rule.method, &method) {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                c.fail(
                    &text.span(),
                    &key("method"),
                    format!("`{}` is not an HTTP method such as `POST`", text.get_ref()),
                );
            }
        }
        let status = match u16::try_from(*rule.status.get_ref()) {
            Ok(status) if (100..=599).contains(&status) => Some(status),
            _ => {
                c.fail(
                    &rule.status.span(),
                    &key("status"),
                    format!(
                        "{} is not an HTTP status (100 to 599)",
                        rule.status.get_ref()
                    ),
                );
                None
            }
        };
        if let (true, Some(status)) = (path_ok, status) {
            rules.push(LoginFailureRule {
                method,
                path: path.clone(),
                status,
            });
        }
    }
    rules
}

fn crowdsec(c: &mut Check, raw: &RawCrowdsec) -> Option<Crowdsec> {
    let url = c.plain_http_url(&raw.url, "crowdsec.url");
    let interval = c.duration_or(&raw.interval, "crowdsec.interval", 10);
    let watcher = match (&raw.machine_id, &raw.password) {
        (Some(id), Some(password)) => Some((id.get_ref().clone(), password.get_ref().clone())),
        (None, None) => None,
        (Some(id), None) => {
            c.fail(
                &id.span(),
                "crowdsec.password",
                "`machine_id` needs `password` (the watcher's credentials)",
            );
            None
        }
        (None, Some(password)) => {
            c.fail(
                &password.span(),
                "crowdsec.machine_id",
                "`password` needs `machine_id` (the watcher's credentials)",
            );
            None
        }
    };
    Some(Crowdsec {
        url: url?,
        bouncer_key: raw.bouncer_key.as_ref().map(|k| k.get_ref().clone()),
        interval,
        watcher,
    })
}

fn detection(c: &mut Check, raw: &RawDetection, source_prefix6: u8) -> Detection {
    let allowlist = match &raw.allowlist {
        Some(list) => c.prefixes(list, "detection.allowlist"),
        None => Vec::new(),
    };
    let auth = &raw.auth_failures;
    let ban = c.duration_or(&auth.ban, "detection.auth_failures.ban", 30 * 60);
    let max_ban = c.duration_or(&auth.max_ban, "detection.auth_failures.max_ban", DAY);
    if let Some(text) = &auth.max_ban {
        if max_ban < ban {
            c.fail(
                &text.span(),
                "detection.auth_failures.max_ban",
                "is shorter than detection.auth_failures.ban",
            );
        }
    }
    let escalate = match &auth.escalate {
        Some(value) if !(value.get_ref().is_finite() && *value.get_ref() >= 1.0) => {
            c.fail(
                &value.span(),
                "detection.auth_failures.escalate",
                format!("{} is not a factor of at least 1.0", value.get_ref()),
            );
            2.0
        }
        Some(value) => *value.get_ref(),
        None => 2.0,
    };
    let threshold = c.detection_count(&auth.threshold, "detection.auth_failures.threshold", 5, 1);
    let per_peer_threshold = c.detection_count(
        &auth.per_peer_threshold,
        "detection.auth_failures.per_peer_threshold",
        threshold,
        1,
    );
    let suspend_disable = auth.suspend_disable.as_ref().and_then(|text| {
        parse_duration(text.get_ref())
            .map_err(|err| c.fail(&text.span(), "detection.auth_failures.suspend_disable", err))
            .ok()
    });
    let auth_failures = AuthFailures {
        threshold,
        window: c.duration_or(&auth.window, "detection.auth_failures.window", 10 * 60),
        ban,
        escalate,
        max_ban,
        per_peer_threshold,
        suspend_disable,
    };
    let scan = &raw.port_scan;
    let port_scan = PortScan {
        distinct_ports: c.detection_count(
            &scan.distinct_ports,
            "detection.port_scan.distinct_ports",
            20,
            2,
        ),
        window: c.duration_or(&scan.window, "detection.port_scan.window", 60),
        ban: c.duration_or(&scan.ban, "detection.port_scan.ban", 60 * 60),
    };
    let volume = Volume {
        per_peer_bytes_per_hour: raw
            .volume
            .per_peer_bytes_per_hour
            .as_ref()
            .and_then(|value| c.byte_size(value, "detection.volume.per_peer_bytes_per_hour"))
            .unwrap_or(DEFAULT_BYTES_PER_HOUR),
        action: c.word_or(
            &raw.volume.action,
            "detection.volume.action",
            ResponseAction::Alert,
        ),
    };
    let new_endpoint = NewEndpoint {
        action: c.word_or(
            &raw.new_endpoint.action,
            "detection.new_endpoint.action",
            ResponseAction::Alert,
        ),
    };
    let off_hours = OffHours {
        action: c.word_or(
            &raw.off_hours.action,
            "detection.off_hours.action",
            ResponseAction::Alert,
        ),
    };
    let mut seen = Seen::new("log source");
    let mut log_sources = Vec::new();
    for (i, raw) in raw.log_source.iter().enumerate() {
        let key = format!("detection.log_source[{i}]");
        let name_key = format!("{key}.name");
        let name = c
            .name(&raw.name, &name_key, MAX_NAME_LEN)
            .filter(|name| seen.check(c, name, &raw.name, &name_key));
        let origin = match (&raw.path, &raw.unit) {
            (Some(path), None) => c.path(path, &format!("{key}.path")).map(LogOrigin::File),
            (None, Some(unit)) => {
                let text = unit.get_ref();
                let valid = !text.is_empty()
                    && text.len() <= 256
                    && text
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "@._-:\\".contains(ch));
                if valid {
                    Some(LogOrigin::Journal(text.clone()))
                } else {
                    c.fail(
                        &unit.span(),
                        &format!("{key}.unit"),
                        format!("`{text}` is not a systemd unit name such as `ssh.service`"),
                    );
                    None
                }
            }
            (Some(path), Some(_)) => {
                c.fail(
                    &path.span(),
                    &format!("{key}.path"),
                    "give `path` (a log file) or `unit` (a systemd journal), not both",
                );
                None
            }
            (None, None) => {
                c.fail(
                    &raw.name.span(),
                    &format!("{key}.path"),
                    "a log source needs `path` (a log file) or `unit` (a systemd journal)",
                );
                None
            }
        };
        // A built-in pattern by name, or a regular expression.
        let pattern = match crate::log_patterns::builtin(raw.pattern.get_ref()) {
            Some(builtin) => regex::Regex::new(builtin).ok(),
            None => c.address_pattern(&raw.pattern, &format!("{key}.pattern")),
        };
        if let (Some(name), Some(origin), Some(pattern)) = (name, origin, pattern) {
            log_sources.push(LogSource {
                name,
                origin,
                pattern,
            });
        }
    }
    Detection {
        allowlist,
        auth_failures,
        port_scan,
        volume,
        new_endpoint,
        off_hours,
        log_sources,
        source_prefix6,
    }
}

fn mfa(c: &mut Check, raw: &RawMfa) -> Mfa {
    let issuer = match &raw.issuer {
        Some(text) => {
            let issuer = text.get_ref();
            if issuer.is_empty() || issuer.chars().count() > MAX_NAME_LEN {
                c.fail(
                    &text.span(),
                    "mfa.issuer",
                    format!("must be 1 to {MAX_NAME_LEN} characters long"),
                );
            } else if issuer.contains(':') || issuer.chars().any(char::is_control) {
                c.fail(
                    &text.span(),
                    "mfa.issuer",
                    "must not contain `:` or control characters (it is part of the otpauth:// label)",
                );
            }
            issuer.clone()
        }
        None => "crmguard".to_owned(),
    };
    Mfa {
        issuer,
        portal_port: match &raw.portal_port {
            Some(port) => c.port(port, "mfa.portal_port").unwrap_or(8443),
            None => 8443,
        },
        session: c.duration_or(&raw.session, "mfa.session", 12 * 60 * 60),
        idle: c.duration_or(&raw.idle, "mfa.idle", 30 * 60),
        max_failures: c.count_or(&raw.max_failures, "mfa.max_failures", 5, 1),
        lockout: c.duration_or(&raw.lockout, "mfa.lockout", 15 * 60),
    }
}

/// Refuses a role that lists the MFA portal's own port. Every peer reaches the portal, with or
/// without a role or a session, so a service of a role on that port would be open to all of
/// them whenever crmguard's portal is not the one listening there.
fn portal_port_in_no_role(c: &mut Check, raw: &[RawRole], portal_port: u16) {
    for (i, role) in raw.iter().enumerate() {
        for (j, spec) in role.allow.iter().flat_map(|a| a.get_ref()).enumerate() {
            let Ok(parsed) = parse_service_spec(spec.get_ref()) else {
                continue;
            };
            if parsed.proto == Proto::Tcp && parsed.port == portal_port {
                c.fail(
                    &spec.span(),
                    &format!("role[{i}].allow[{j}]"),
                    format!(
                        "`{parsed}` is the MFA portal's port (`mfa.portal_port`), which every peer reaches; give the portal or the service another port"
                    ),
                );
            }
        }
    }
}

/// Where something was first defined, for messages about duplicates.
#[derive(Clone)]
struct Location {
    file: PathBuf,
    line: usize,
}

/// Finds duplicate names within one list, such as two services called `ssh`.
struct Seen {
    what: &'static str,
    names: BTreeMap<String, Location>,
}

impl Seen {
    fn new(what: &'static str) -> Self {
        Seen {
            what,
            names: BTreeMap::new(),
        }
    }

    /// Records `name`; reports and returns false when it was seen before.
    fn check(&mut self, c: &mut Check, name: &str, at: &Text, key: &str) -> bool {
        let what = self.what;
        c.first_seen(&mut self.names, name.to_owned(), at, key, || {
            format!("{what} name `{name}`")
        })
    }
}

/// Reports the problems of one file into a shared list.
struct Check<'s, 'e> {
    src: &'s Source<'s>,
    errors: &'e mut Vec<ConfigError>,
}

impl Check<'_, '_> {
    fn fail(&mut self, span: &Range<usize>, key: &str, message: impl fmt::Display) {
        self.errors.push(self.src.error(span, key, message));
    }

    fn location(&self, span: &Range<usize>) -> Location {
        Location {
            file: self.src.file.to_path_buf(),
            line: self.src.position(span.start).0,
        }
    }

    /// Records the first place of `value` in `index`; reports a later one and returns false.
    fn first_seen<K: Ord, T>(
        &mut self,
        index: &mut BTreeMap<K, Location>,
        value: K,
        at: &Spanned<T>,
        key: &str,
        what: impl FnOnce() -> String,
    ) -> bool {
        let span = at.span();
        if let Some(first) = index.get(&value) {
            let place = if first.file == self.src.file {
                format!("line {}", first.line)
            } else {
                format!("{}:{}", first.file.display(), first.line)
            };
            self.fail(
                &span,
                key,
                format!("duplicate {}; first defined at {place}", what()),
            );
            return false;
        }
        index.insert(value, self.location(&span));
        true
    }

    fn word<T: ConfigWord>(&mut self, text: &Text, key: &str) -> Option<T> {
        let word = text.get_ref();
        let parsed = T::from_word(word);
        if parsed.is_none() {
            let choices: Vec<String> = T::CHOICES.iter().map(|c| format!("`{c}`")).collect();
            self.fail(
                &text.span(),
                key,
                format!("`{word}` is not one of {}", choices.join(", ")),
            );
        }
        parsed
    }

    fn word_or<T: ConfigWord>(&mut self, text: &Option<Text>, key: &str, default: T) -> T {
        text.as_ref()
            .and_then(|text| self.word(text, key))
            .unwrap_or(default)
    }

    /// A count such as a rate limit: at least `min`, at most `u32::MAX`.
    fn count(&mut self, value: &Int, key: &str, min: u32) -> Option<u32> {
        let number = *value.get_ref();
        match u32::try_from(number) {
            Ok(count) if count >= min => Some(count),
            _ => {
                self.fail(
                    &value.span(),
                    key,
                    format!("{number} is out of range ({min} to {})", u32::MAX),
                );
                None
            }
        }
    }

    fn count_or(&mut self, value: &Option<Int>, key: &str, default: u32, min: u32) -> u32 {
        value
            .as_ref()
            .and_then(|value| self.count(value, key, min))
            .unwrap_or(default)
    }

    /// A count of `[detection]` (`min` to [`MAX_DETECTION_COUNT`]), `default` when unset.
    fn detection_count(&mut self, value: &Option<Int>, key: &str, default: u32, min: u32) -> u32 {
        let Some(value) = value else {
            return default;
        };
        let number = *value.get_ref();
        match u32::try_from(number) {
            Ok(count) if (min..=MAX_DETECTION_COUNT).contains(&count) => count,
            _ => {
                self.fail(
                    &value.span(),
                    key,
                    format!("{number} is out of range ({min} to {MAX_DETECTION_COUNT})"),
                );
                default
            }
        }
    }

    fn port(&mut self, value: &Int, key: &str) -> Option<u16> {
        let number = *value.get_ref();
        match u16::try_from(number) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                self.fail(
                    &value.span(),
                    key,
                    format!("{number} is not a port (1 to 65535)"),
                );
                None
            }
        }
    }

    fn duration_or(&mut self, text: &Option<Text>, key: &str, default_seconds: u64) -> Duration {
        let Some(text) = text else {
            return Duration::from_secs(default_seconds);
        };
        match parse_duration(text.get_ref()) {
            Ok(duration) => duration,
            Err(err) => {
                self.fail(&text.span(), key, err);
                Duration::from_secs(default_seconds)
            }
        }
    }

    /// A file or directory; a relative one is taken relative to the configuration file.
    fn path(&mut self, text: &Text, key: &str) -> Option<PathBuf> {
        let path = text.get_ref();
        if path.is_empty() || path.contains('\0') {
            self.fail(&text.span(), key, "is not a path");
            return None;
        }
        Some(self.src.base_dir().join(path))
    }

    fn path_or(&mut self, text: &Option<Text>, key: &str, default: &str) -> PathBuf {
        text.as_ref()
            .and_then(|text| self.path(text, key))
            .unwrap_or_else(|| PathBuf::from(default))
    }

    /// A name that becomes a metric label: 1 to `max_len` bytes of `[A-Za-z0-9._-]`.
    fn name(&mut self, text: &Text, key: &str, max_len: usize) -> Option<String> {
        let name = text.get_ref();
        let valid_bytes = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if name.is_empty() || name.len() > max_len || !valid_bytes {
            self.fail(
                &text.span(),
                key,
                format!("`{name}` is not a name of 1 to {max_len} characters from A-Z, a-z, 0-9, `.`, `_` and `-`"),
            );
            return None;
        }
        Some(name.clone())
    }

    fn prefixes(&mut self, list: &List<String>, key: &str) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for (i, text) in list.get_ref().iter().enumerate() {
            match parse_prefix(text.get_ref()) {
                Ok(net) => nets.push(net),
                Err(message) => self.fail(&text.span(), &format!("{key}[{i}]"), message),
            }
        }
        nets
    }

    fn socket_addr_or(
        &mut self,
        text: &Option<Text>,
        key: &str,
        default: SocketAddr,
    ) -> SocketAddr {
        let Some(text) = text else { return default };
        match text.get_ref().parse::<SocketAddr>() {
            Ok(addr) if addr.port() != 0 => addr,
            _ => {
                self.fail(
                    &text.span(),
                    key,
                    format!(
                        "`{}` is not an address and port such as `127.0.0.1:9184` or `[::1]:9184`",
                        text.get_ref()
                    ),
                );
                default
            }
        }
    }

    /// An `http://` URL: alerts and CrowdSec are spoken in plain HTTP, to a service on the host
    /// or its management network.
    fn plain_http_url(&mut self, text: &Text, key: &str) -> Option<String> {
        let url = text.get_ref();
        let checked = check_http_url(url).and_then(|()| {
            if url.starts_with("https://") {
                Err(format!(
                    "`{url}`: crmguard speaks plain http to this service; run it on the host or \
                     behind a local relay, and give its http:// address"
                ))
            } else {
                Ok(())
            }
        });
        match checked {
            Ok(()) => Some(url.trim_end_matches('/').to_owned()),
            Err(message) => {
                self.fail(&text.span(), key, message);
                None
            }
        }
    }

    fn tunnel_v4(&mut self, text: &Text, key: &str) -> Option<Ipv4Net> {
        let Ok(net) = text.get_ref().parse::<Ipv4Net>() else {
            self.fail(
                &text.span(),
                key,
                format!(
                    "`{}` is not an IPv4 address with a prefix length, such as `10.77.0.1/24`",
                    text.get_ref()
                ),
            );
            return None;
        };
        if net.prefix_len() > 30 {
            self.fail(
                &text.span(),
                key,
                "the prefix leaves no room for peers; use /30 or shorter",
            );
            return None;
        }
        if net.addr() == net.network() || net.addr() == net.broadcast() {
            self.fail(
                &text.span(),
                key,
                format!("{} is the network or broadcast address of {}; give the gateway's own address, such as `{}/{}`", net.addr(), net.trunc(), next_v4(net.network()), net.prefix_len()),
            );
            return None;
        }
        Some(net)
    }

    fn tunnel_v6(&mut self, text: &Text, key: &str) -> Option<Ipv6Net> {
        let Ok(net) = text.get_ref().parse::<Ipv6Net>() else {
            self.fail(
                &text.span(),
                key,
                format!(
                    "`{}` is not an IPv6 address with a prefix length, such as `fd77::1/64`",
                    text.get_ref()
                ),
            );
            return None;
        };
        if net.prefix_len() > 126 {
            self.fail(
                &text.span(),
                key,
                "the prefix leaves no room for peers; use /126 or shorter",
            );
            return None;
        }
        if net.addr() == net.network() {
            self.fail(
                &text.span(),
                key,
                format!(
                    "{} is the network address of {}; give the gateway's own address",
                    net.addr(),
                    net.trunc()
                ),
            );
            return None;
        }
        Some(net)
    }

    fn peer_v4(
        &mut self,
        text: &Text,
        key: &str,
        rules: &PeerRules,
        index: &mut PeerIndex,
    ) -> Option<Ipv4Addr> {
        let Ok(addr) = text.get_ref().parse::<Ipv4Addr>() else {
            self.fail(
                &text.span(),
                key,
                format!(
                    "`{}` is not an IPv4 address such as `10.77.0.10`",
                    text.get_ref()
                ),
            );
            return None;
        };
        if let Some(net) = rules.tunnel.as_ref().and_then(|t| t.v4) {
            if !net.contains(&addr) {
                self.fail(
                    &text.span(),
                    key,
                    format!(
                        "{addr} is outside the tunnel subnet {} (vpn.address)",
                        net.trunc()
                    ),
                );
                return None;
            }
            if addr == net.addr() || addr == net.network() || addr == net.broadcast() {
                self.fail(
                    &text.span(),
                    key,
                    format!(
                        "{addr} is the gateway, network or broadcast address of {}",
                        net.trunc()
                    ),
                );
                return None;
            }
        }
        self.first_seen(&mut index.v4, addr, text, key, || {
            format!("peer address {addr}")
        })
        .then_some(addr)
    }

    fn peer_v6(
        &mut self,
        text: &Text,
        key: &str,
        rules: &PeerRules,
        index: &mut PeerIndex,
    ) -> Option<Ipv6Addr> {
        let Ok(addr) = text.get_ref().parse::<Ipv6Addr>() else {
            self.fail(
                &text.span(),
                key,
                format!(
                    "`{}` is not an IPv6 address such as `fd77::10`",
                    text.get_ref()
                ),
            );
            return None;
        };
        if let Some(tunnel) = &rules.tunnel {
            match tunnel.v6 {
                Some(net) if !net.contains(&addr) => {
                    self.fail(
                        &text.span(),
                        key,
                        format!(
                            "{addr} is outside the tunnel subnet {} (vpn.address6)",
                            net.trunc()
                        ),
                    );
                    return None;
                }
                Some(net) if addr == net.addr() || addr == net.network() => {
                    self.fail(
                        &text.span(),
                        key,
                        format!(
                            "{addr} is the gateway or network address of {}",
                            net.trunc()
                        ),
                    );
                    return None;
                }
                None if !tunnel.v6_configured => {
                    self.fail(
                        &text.span(),
                        key,
                        "vpn.address6 is not set, so peers have no IPv6 address",
                    );
                    return None;
                }
                _ => {}
            }
        }
        self.first_seen(&mut index.v6, addr, text, key, || {
            format!("peer address {addr}")
        })
        .then_some(addr)
    }

    fn public_key(&mut self, text: &Text, key: &str) -> Option<[u8; 32]> {
        let decoded = base64::engine::general_purpose::STANDARD.decode(text.get_ref());
        match decoded.ok().map(<[u8; 32]>::try_from) {
            Some(Ok(public_key)) if crate::keys::is_low_order(&public_key) => {
                self.fail(
                    &text.span(),
                    key,
                    "is a low-order point of Curve25519: every handshake with it yields the same \
                     secret, so it cannot authenticate a device; make a new key pair",
                );
                None
            }
            Some(Ok(public_key)) => Some(public_key),
            _ => {
                self.fail(
                    &text.span(),
                    key,
                    "is not a WireGuard public key (32 bytes in base64, 44 characters ending in `=`)",
                );
                None
            }
        }
    }

    fn date(&mut self, value: &Spanned<toml::Value>, key: &str) -> Option<Date> {
        let parsed = match value.get_ref() {
            toml::Value::String(text) => Date::parse(text),
            toml::Value::Datetime(datetime) if datetime.time.is_none() => datetime
                .date
                .and_then(|d| Date::new(d.year, d.month, d.day)),
            _ => None,
        };
        if parsed.is_none() {
            self.fail(&value.span(), key, "is not a date such as \"2026-11-01\"");
        }
        parsed
    }

    fn byte_size(&mut self, value: &Spanned<toml::Value>, key: &str) -> Option<u64> {
        let parsed = match value.get_ref() {
            toml::Value::String(text) => parse_byte_size(text),
            toml::Value::Integer(bytes) => u64::try_from(*bytes).ok().filter(|b| *b > 0),
            _ => None,
        };
        if parsed.is_none() {
            self.fail(
                &value.span(),
                key,
                "is not a positive size such as \"2GiB\", \"500MB\" or a number of bytes",
            );
        }
        parsed
    }

    /// A regular expression that captures the offending source address as `addr`.
    fn address_pattern(&mut self, text: &Text, key: &str) -> Option<regex::Regex> {
        match regex::Regex::new(text.get_ref()) {
            Ok(regex) if regex.capture_names().any(|name| name == Some("addr")) => Some(regex),
            Ok(_) => {
                self.fail(
                    &text.span(),
                    key,
                    "has no named group `addr` for the source address, such as `(?P<addr>\\S+)`",
                );
                None
            }
            Err(err) => {
                // The syntax error of `regex` spans several lines with a caret diagram; its
                // last line says what is wrong.
                let full = err.to_string();
                let reason = full
                    .lines()
                    .rev()
                    .find(|line| !line.trim().is_empty())
                    .unwrap_or(&full)
                    .trim()
                    .trim_start_matches("error: ");
                self.fail(
                    &text.span(),
                    key,
                    format!("is not a valid regular expression: {reason}"),
                );
                None
            }
        }
    }
}

/// Parses an address (as a /32 or /128) or a prefix without host bits.
fn parse_prefix(text: &str) -> Result<IpNet, String> {
    if text.contains('/') {
        let net: IpNet = text
            .parse()
            .map_err(|_| format!("`{text}` is not an IP prefix such as `192.0.2.0/24`"))?;
        if net.trunc() != net {
            return Err(format!(
                "`{text}` has host bits set; the prefix is `{}`",
                net.trunc()
            ));
        }
        Ok(net)
    } else {
        let addr: IpAddr = text
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or prefix"))?;
        Ok(IpNet::from(addr))
    }
}

/// Parses `tcp/443`.
pub(super) fn parse_service_spec(text: &str) -> Result<ServiceSpec, String> {
    let bad = || format!("`{text}` is not a service such as `tcp/443` or `udp/53`");
    let (proto, port) = text.split_once('/').ok_or_else(bad)?;
    let proto = Proto::from_config_str(proto).ok_or_else(bad)?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(ServiceSpec { proto, port }),
        _ => Err(format!("`{text}` has no valid port (1 to 65535)")),
    }
}

/// Parses `crm.example.com` or `*.crm.example.com`.
fn parse_sni_pattern(text: &str) -> Result<SniPattern, String> {
    let lower = text.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let (wildcard, host) = match name.strip_prefix("*.") {
        Some(parent) => (true, parent),
        None => (false, name),
    };
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(valid_label) {
        return Err(format!(
            "`{text}` is not a host name such as `crm.example.com` or `*.crm.example.com`"
        ));
    }
    let host = host.to_owned();
    Ok(if wildcard {
        SniPattern::Wildcard(host)
    } else {
        SniPattern::Exact(host)
    })
}

/// The smallest `[audit] rotate_size`: a few records per segment.
const MIN_AUDIT_ROTATE_SIZE: u64 = 4 << 10;

fn audit_rotation(c: &mut Check, raw: &RawAudit) -> AuditRotation {
    let default = AuditRotation::default();
    let size = match raw.rotate_size.as_ref() {
        None => default.size,
        Some(value) => match c.byte_size(value, "audit.rotate_size") {
            Some(size) if size >= MIN_AUDIT_ROTATE_SIZE => size,
            Some(size) => {
                c.fail(
                    &value.span(),
                    "audit.rotate_size",
                    format!("{size} bytes is less than the smallest segment, 4KiB"),
                );
                default.size
            }
            None => default.size,
        },
    };
    AuditRotation {
        size,
        keep: c.count_or(&raw.rotate_keep, "audit.rotate_keep", default.keep, 1),
    }
}

/// Parses a size such as `2GiB`, `500MB` or `1024`. Zero is not a size here.
fn parse_byte_size(text: &str) -> Option<u64> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    let count: u64 = number.parse().ok()?;
    count.checked_mul(multiplier).filter(|bytes| *bytes > 0)
}

/// Checks that `text` is an absolute `http://` or `https://` URL with a host.
fn check_http_url(text: &str) -> Result<(), String> {
    let Some(rest) = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
    else {
        return Err(format!("`{text}` is not an http:// or https:// URL"));
    };
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{text}` contains spaces or control characters"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, after)) if host.parse::<Ipv6Addr>().is_ok() => {
                (host, after.strip_prefix(':'))
            }
            _ => return Err(format!("`{text}` has a malformed IPv6 host")),
        },
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err(format!("`{text}` has no host"));
    }
    if let Some(port) = port {
        let valid =
            port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !valid {
            return Err(format!("`{text}` has an invalid port"));
        }
    }
    Ok(())
}

/// The address after `addr`, used to suggest a gateway address in messages.
fn next_v4(addr: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr).saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::{
        check_http_url, parse_byte_size, parse_prefix, parse_service_spec, parse_sni_pattern,
    };
    use crate::config::{Proto, ServiceSpec, SniPattern};

    #[test]
    fn prefixes() {
        let check = |text: &str, expected: Result<&str, &str>| {
            let actual = parse_prefix(text).map(|n| n.to_string());
            let expected = expected.map(str::to_owned).map_err(str::to_owned);
            assert_eq!(actual, expected, "{text:?}");
        };
        check("192.0.2.0/24", Ok("192.0.2.0/24"));
        check("192.0.2.7", Ok("192.0.2.7/32"));
        check("2001:db8::/32", Ok("2001:db8::/32"));
        check("2001:db8::1", Ok("2001:db8::1/128"));
        check(
            "192.0.2.1/24",
            Err("`192.0.2.1/24` has host bits set; the prefix is `192.0.2.0/24`"),
        );
        check(
            "192.0.2.0/33",
            Err("`192.0.2.0/33` is not an IP prefix such as `192.0.2.0/24`"),
        );
        check(
            "10.0.0.300",
            Err("`10.0.0.300` is not an IP address or prefix"),
        );
        check("", Err("`` is not an IP address or prefix"));
    }

    #[test]
    fn service_specs() {
        let check = |text: &str, expected: Option<(Proto, u16)>| {
            let actual = parse_service_spec(text).ok();
            let expected = expected.map(|(proto, port)| ServiceSpec { proto, port });
            assert_eq!(actual, expected, "{text:?}");
        };
        check("tcp/443", Some((Proto::Tcp, 443)));
        check("udp/53", Some((Proto::Udp, 53)));
        check("tcp/0", None);
        check("tcp/65536", None);
        check("tcp/+1", None);
        check("TCP/443", None);
        check("sctp/1", None);
        check("443", None);
        check("tcp/", None);
    }

    #[test]
    fn sni_patterns() {
        let exact = parse_sni_pattern("CRM.example.com.").ok();
        assert_eq!(exact, Some(SniPattern::Exact("crm.example.com".into())));
        let wildcard = parse_sni_pattern("*.crm.example.com").ok();
        assert_eq!(
            wildcard,
            Some(SniPattern::Wildcard("crm.example.com".into()))
        );
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "-a.com",
            "a_b.com",
            "crm.*.com",
            "**.a.com",
        ] {
            assert!(parse_sni_pattern(bad).is_err(), "{bad:?}");
        }
        let Some(wildcard) = wildcard else { return };
        for (name, expected) in [
            ("eu.crm.example.com", true),
            ("EU.CRM.example.com.", true),
            ("crm.example.com", false),
            ("a.eu.crm.example.com", false),
            (".crm.example.com", false),
        ] {
            assert_eq!(wildcard.matches(name), expected, "{name}");
        }
    }

    #[test]
    fn byte_sizes() {
        for (text, expected) in [
            ("2GiB", Some(2u64 << 30)),
            ("500MB", Some(500_000_000)),
            ("1024", Some(1024)),
            ("7B", Some(7)),
            ("1TiB", Some(1 << 40)),
            ("0GiB", None),
            ("2 GiB", None),
            ("2gib", None),
            ("GiB", None),
            ("99999999999TiB", None),
        ] {
            assert_eq!(parse_byte_size(text), expected, "{text:?}");
        }
    }

    #[test]
    fn urls() {
        for (text, ok) in [
            ("http://127.0.0.1:9093/api/v2/alerts", true),
            ("https://alerts.example.com", true),
            ("https://user@[::1]:8443/x?y#z", true),
            ("ftp://example.com", false),
            ("http://", false),
            ("http:///path", false),
            ("http://host:0/", false),
            ("http://host:99999/", false),
            ("http://ho st/", false),
            ("http://[zz]/", false),
            ("example.com", false),
        ] {
            assert_eq!(check_http_url(text).is_ok(), ok, "{text:?}");
        }
    }
}
