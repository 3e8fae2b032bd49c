//! The crmguard configuration: reading, checking and the validated model.
//!
//! This module owns the TOML schema of `/etc/crmguard/crmguard.toml` (section 3 of the product
//! contract), the peers file (`[vpn] peers_file`), the deny files (`[firewall.deny] files`) and the
//! embedded default policy (`config/default.toml`). It turns them into a [`Config`] whose values
//! are already checked: a [`Config`] never holds a port 0, an unknown role, a malformed key or a
//! peer outside the tunnel subnet, so the rest of the agent does not check again.
//!
//! Reading happens in two steps, like ripgrep's low-level and high-level arguments. First the text
//! is deserialized into raw serde structs (`raw.rs`) that reject unknown keys and keep the byte
//! span of every value. Then `validate.rs` converts the raw values into the typed model and
//! collects every problem it finds, each one pointing at a file, a line, a column and a dotted
//! key such as `firewall.service[1].ports[0]`. Array indices in keys count from zero.
//!
//! This module must not touch the system beyond reading the files named above: it applies
//! nothing, creates no directory and holds no global state. Relative paths in a configuration
//! file are resolved against the directory of that file.

mod duration;
mod error;
mod hours;
mod keypath;
pub mod last_good;
mod raw;
pub mod unconfirmed;
mod validate;

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use duration::{parse_duration, DurationError};
pub use error::{ConfigError, ConfigErrors};
pub use hours::{Hours, HoursError, WeekTime};

/// A peer's `created` date, kept here by name because the configuration is where it is read.
pub use crate::time::Date;

pub(crate) use error::{Shift, Source};
pub(crate) use raw::{RawPeer, RawPeersFile};

/// The name under which errors in the embedded default policy are reported.
pub const DEFAULT_POLICY_NAME: &str = "<embedded default policy>";

/// The text of the embedded default policy, used when no configuration file exists.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../../config/default.toml");

/// The longest name accepted for peers, roles, services and log sources. Such names become
/// metric labels, so they are short and made of `[A-Za-z0-9._-]` only.
pub const MAX_NAME_LEN: usize = 64;

/// The longest interface name Linux accepts (`IFNAMSIZ` less the terminating NUL).
pub const MAX_INTERFACE_NAME_LEN: usize = 15;

/// Reads, parses and validates the configuration file at `path`.
///
/// Besides the file itself this reads every file listed in `[firewall.deny] files` (one address
/// or prefix per line) and, when `[vpn]` is present and its `peers_file` exists, the peers file,
/// whose `[[peer]]` entries are merged after the inline ones. All problems found in all of these
/// files are returned together; a syntax error stops the checks of the file that contains it.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, &mut |file: &Path| std::fs::read_to_string(file))
}

/// How [`load_with`] reads a file: from the disk for [`load`], from a saved copy for
/// [`last_good::Snapshot::config`].
pub type ReadFile<'a> = dyn FnMut(&Path) -> std::io::Result<String> + 'a;

/// [`load`], reading the configuration file, the deny files and the peers file through `read`.
pub fn load_with(path: &Path, read: &mut ReadFile<'_>) -> Result<Config, ConfigErrors> {
    let text = read(path).map_err(|err| ConfigErrors(vec![ConfigError::unreadable(path, &err)]))?;
    let src = Source::new(path, &text);
    let raw = src
        .deserialize::<raw::RawConfig>()
        .map_err(ConfigErrors::from)?;
    let mut checked = validate::config(&src, raw);
    validate::deny_files(&src, &mut checked, read);
    validate::peers_file(&src, &mut checked, read);
    validate::test_files(&src, &mut checked, read);
    validate::test_peers(&mut checked);
    checked.finish()
}

/// The sections of a configuration that say where the agent keeps its state, where it
/// attaches and how it is reached, as opposed to the policy it enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct Plumbing {
    /// `[agent]`.
    pub agent: Agent,
    /// `[[interface]]`.
    pub interfaces: Vec<Interface>,
    /// `[metrics]`.
    pub metrics: Metrics,
    /// `[audit]`.
    pub audit: Audit,
}

impl Plumbing {
    /// The plumbing of `config`.
    pub fn of(config: &Config) -> Plumbing {
        Plumbing {
            agent: config.agent.clone(),
            interfaces: config.interfaces.clone(),
            metrics: config.metrics,
            audit: config.audit.clone(),
        }
    }
}

/// The plumbing sections of the configuration file at `path`, also when the rest of it (its
/// policy, its deny files, its peers file) does not validate; `None` when the file cannot be
/// read or parsed, or when one of these sections is itself invalid.
///
/// A configuration that cannot be loaded must still not leave the host unfiltered: the agent
/// then enforces a fallback policy, and needs to know where its state, its pins and its
/// control socket are.
pub fn plumbing(path: &Path) -> Option<Plumbing> {
    let text = std::fs::read_to_string(path).ok()?;
    let src = Source::new(path, &text);
    let raw = src.deserialize::<raw::RawConfig>().ok()?;
    let checked = validate::config(&src, raw);
    let own = |key: &str| {
        ["agent", "interface", "metrics", "audit"]
            .iter()
            .any(|section| {
                key.strip_prefix(section)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
    };
    if checked
        .errors
        .iter()
        .any(|e| e.key.is_empty() || own(&e.key))
    {
        return None;
    }
    Some(Plumbing::of(&checked.config))
}

/// Parses and validates configuration text as if it had been read from `file`.
///
/// Policy tests may name only the inline peers, and the files of `[tests] files` are not read.
///
/// This reads no file: deny files and the peers file are left to [`load`], so the result holds
/// only the inline deny sources and the inline peers. `file` names the text in errors and is the
/// base for relative paths.
pub fn parse(src: &str, file: &Path) -> Result<Config, ConfigErrors> {
    let src = Source::new(file, src);
    let raw = src
        .deserialize::<raw::RawConfig>()
        .map_err(ConfigErrors::from)?;
    let mut checked = validate::config(&src, raw);
    validate::test_peers(&mut checked);
    checked.finish()
}

/// Returns the embedded default policy (`config/default.toml`).
///
/// Enforce mode on the interfaces chosen by role (`crate::interfaces`), default drop, replies to the host's own
/// connections pass, ICMP essentials, SSH (tcp/22) open from anywhere within per-source limits,
/// and the WireGuard endpoint on udp/51820 with the address 10.77.0.1/24 and no peers yet.
pub fn default_policy() -> Config {
    // The embedded text is fixed at build time and a unit test parses it, so a failure here is a
    // build defect rather than an operator error.
    #[allow(clippy::expect_used)]
    parse(DEFAULT_POLICY_TOML, Path::new(DEFAULT_POLICY_NAME))
        .expect("the embedded default policy is valid")
}

/// A value written as one word from a closed set, such as `mode = "enforce"`.
trait ConfigWord: Sized + Copy {
    /// The accepted words.
    const CHOICES: &'static [&'static str];

    /// Parses one of [`Self::CHOICES`].
    fn from_word(text: &str) -> Option<Self>;
}

/// Defines a closed set of configuration words: the enum, its spellings and their parser.
macro_rules! config_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// The spellings accepted in the configuration file, in declaration order.
            pub const CHOICES: &'static [&'static str] = &[$($text),+];

            /// The configuration spelling, which is also the metric label and log value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }

            /// Parses a configuration spelling; anything else is `None`.
            pub fn from_config_str(text: &str) -> Option<Self> {
                match text {
                    $( $text => Some(Self::$variant), )+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ConfigWord for $name {
            const CHOICES: &'static [&'static str] = &[$($text),+];

            fn from_word(text: &str) -> Option<Self> {
                Self::from_config_str(text)
            }
        }
    };
}

config_enum! {
    /// Whether the agent drops packets or only counts what it would drop.
    pub enum Mode {
        /// Drop what the policy does not admit.
        Enforce => "enforce",
        /// Drop nothing; count each would-be drop as `would_drop` with its reason.
        Monitor => "monitor",
    }
}

config_enum! {
    /// The format of the agent's own log lines (not of the audit log, which is always JSON).
    pub enum LogFormat {
        /// One JSON object per line.
        Json => "json",
        /// Human-readable text.
        Text => "text",
    }
}

config_enum! {
    /// How the XDP program is attached to an interface.
    pub enum XdpMode {
        /// Native (driver) mode when the driver supports it, else generic mode with a warning.
        Auto => "auto",
        /// Driver mode only; attaching fails when the driver lacks it.
        Native => "native",
        /// Generic (skb) mode, which every driver supports but which is slower.
        Generic => "generic",
    }
}

config_enum! {
    /// The verdict for traffic that no rule admits.
    pub enum DefaultAction {
        /// Drop it with reason `default_drop`.
        Drop => "drop",
        /// Let it pass; the deny set, bans and rate limits still apply.
        Allow => "allow",
    }
}

config_enum! {
    /// Which ICMP and ICMPv6 messages pass.
    pub enum IcmpPolicy {
        /// Echo replies, errors needed for path MTU discovery, IPv6 neighbour discovery, and
        /// rate-limited echo requests.
        Essential => "essential",
        /// Every ICMP message, echo requests still rate limited.
        All => "all",
        /// No ICMP message beyond what IPv6 needs to work at all.
        None => "none",
    }
}

config_enum! {
    /// A transport protocol of a service.
    pub enum Proto {
        /// TCP.
        Tcp => "tcp",
        /// UDP.
        Udp => "udp",
    }
}

config_enum! {
    /// A TLS protocol version, ordered from oldest to newest.
    pub enum TlsVersion {
        /// TLS 1.0.
        Tls10 => "1.0",
        /// TLS 1.1.
        Tls11 => "1.1",
        /// TLS 1.2.
        Tls12 => "1.2",
        /// TLS 1.3.
        Tls13 => "1.3",
    }
}

config_enum! {
    /// What happens to a TLS connection without a server name indication.
    pub enum NoSniAction {
        /// Let it pass.
        Allow => "allow",
        /// Drop the flow and record an inspection violation.
        Drop => "drop",
    }
}

config_enum! {
    /// What a parser error (bytes that claimed a protocol and then broke its rules) does to its
    /// flow.
    pub enum ParserErrorAction {
        /// Let the flow go on uninspected; count it.
        Pass => "pass",
        /// End the flow with a reset to both sides; count it and record a violation.
        Drop => "drop",
    }
}

config_enum! {
    /// The application protocol a tunnel service carries, for `[inspection.protocols]`.
    pub enum AppProtocol {
        /// TLS from the first byte (HTTPS, SMTPS, IMAPS...).
        Tls => "tls",
        /// HTTP/1.x in the clear.
        Http => "http",
        /// HTTP/2 in the clear with prior knowledge.
        Http2 => "http2",
        /// PostgreSQL.
        Postgresql => "postgresql",
        /// MySQL or MariaDB.
        Mysql => "mysql",
        /// Redis.
        Redis => "redis",
        /// SSH.
        Ssh => "ssh",
        /// SMTP (with or without STARTTLS).
        Smtp => "smtp",
        /// Anything: no protocol check for this service.
        Any => "any",
    }
}

config_enum! {
    /// What happens when inspection finds a violation.
    pub enum ViolationAction {
        /// Let the flow go on; record the violation and alert.
        Alert => "alert",
        /// Drop the flow and record the violation.
        Drop => "drop",
    }
}

config_enum! {
    /// The response to an anomaly that concerns a peer.
    pub enum ResponseAction {
        /// Record it and alert.
        Alert => "alert",
        /// Also end the peer's MFA session, so it reaches only the MFA portal.
        Suspend => "suspend",
    }
}

config_enum! {
    /// What the agent does when it cannot write the audit log.
    pub enum OnWriteFailure {
        /// Stop admitting new MFA sessions until writing works again.
        FailClosed => "fail-closed",
        /// Keep working and alert.
        FailOpen => "fail-open",
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[agent]`: how the daemon runs.
    pub agent: Agent,
    /// `[[interface]]`: where XDP attaches. Empty means the interfaces
    /// [`crate::interfaces::select`] chooses by role.
    pub interfaces: Vec<Interface>,
    /// `[firewall]`: the XDP policy.
    pub firewall: Firewall,
    /// `[vpn]`: the WireGuard endpoint; `None` when the section is absent.
    pub vpn: Option<Vpn>,
    /// `[[role]]`, in file order.
    pub roles: Vec<Role>,
    /// `[[peer]]`: the inline peers in file order, then those of the peers file.
    pub peers: Vec<Peer>,
    /// `[inspection]`: application-protocol inspection of decrypted flows.
    pub inspection: Inspection,
    /// `[detection]`: detection and response.
    pub detection: Detection,
    /// `[mfa]`: the TOTP second factor and its portal.
    pub mfa: Mfa,
    /// `[audit]`: the hash-chained audit log.
    pub audit: Audit,
    /// `[backup]`: scheduled backups.
    pub backup: Backup,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: Metrics,
    /// `[alerts]`: where alerts go.
    pub alerts: Alerts,
    /// `[crowdsec]`: the fleet's shared decisions, if configured.
    pub crowdsec: Option<Crowdsec>,
    /// `[[test]]`: the policy's own tests, those of the configuration file and then those of
    /// each file of `[tests] files`, in order.
    pub tests: Vec<PolicyTest>,
    /// `[tests] files`, resolved against the configuration file's directory.
    pub test_files: Vec<PathBuf>,
}

impl Config {
    /// The role named `name`, if it is configured.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|role| role.name == name)
    }

    /// The peer named `name`, if it is configured.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|peer| peer.name == name)
    }
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// `mode`, default `enforce`.
    pub mode: Mode,
    /// `state_dir`, default `/var/lib/crmguard`: peers, bans, MFA secrets, backups.
    pub state_dir: PathBuf,
    /// `bpffs_dir`, default `/sys/fs/bpf/crmguard`: pinned maps and XDP links.
    pub bpffs_dir: PathBuf,
    /// `control_socket`, default `/run/crmguard/control.sock`.
    pub control_socket: PathBuf,
    /// `log_format`, default `text`.
    pub log_format: LogFormat,
}

/// One `[[interface]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The Linux interface name, at most 15 bytes of `[A-Za-z0-9._-]`.
    pub name: String,
    /// `xdp_mode`, default `auto`.
    pub xdp_mode: XdpMode,
}

/// `[firewall]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    /// `default`, default `drop`.
    pub default: DefaultAction,
    /// `allow_established`, default true: replies to connections this host opened pass.
    pub allow_established: bool,
    /// `icmp`, default `essential`.
    pub icmp: IcmpPolicy,
    /// `icmp_echo_per_source_pps`, default 5: echo requests per second per source address.
    pub icmp_echo_per_source_pps: u32,
    /// `[firewall.limits]`.
    pub limits: Limits,
    /// The deny set: `[firewall.deny] sources`, then the entries of the deny files in the order
    /// the files are listed. A prefix appears once, with the origin where it was first seen.
    /// [`parse`] leaves out the deny files; [`load`] reads them.
    pub deny: Vec<DenyEntry>,
    /// `[firewall.deny] files`, resolved against the configuration file's directory.
    pub deny_files: Vec<PathBuf>,
    /// `[[firewall.service]]`, in file order. No two services share a protocol and port.
    pub services: Vec<Service>,
}

/// `[firewall.limits]`: rate limits that apply to all admitted traffic. None is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `per_source_pps`, default 2000.
    pub per_source_pps: u32,
    /// `per_source_burst`, default 4000.
    pub per_source_burst: u32,
    /// `syn_per_source_per_s`, default 50.
    pub syn_per_source_per_s: u32,
    /// `global_syn_per_s`, default 20000.
    pub global_syn_per_s: u32,
    /// `ipv6_prefix`, default 64, from 16 to 128: the per-source limits above, ICMP echo and
    /// WireGuard handshake limits count an IPv6 source by this many leading bits, since one site
    /// (or one attacker) holds a whole /64; 128 counts each address.
    pub ipv6_prefix: u8,
}

/// One entry of the deny set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEntry {
    /// The denied address (as a /32 or /128) or prefix, with no host bits set.
    pub net: IpNet,
    /// Where it came from: `firewall.deny.sources`, or `FILE:LINE` for a deny file.
    pub origin: String,
}

/// One `[[firewall.service]]`: a port set on the host's public addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The service name, used as a metric label.
    pub name: String,
    /// `proto`.
    pub proto: Proto,
    /// `ports`: at least one, none zero, no duplicates, in file order.
    pub ports: Vec<u16>,
    /// `from`: the admitted source prefixes; `None` means anywhere. Never `Some` and empty.
    pub from: Option<Vec<IpNet>>,
    /// `per_source_pps`: packets per second per source address, if limited beyond
    /// `[firewall.limits]`.
    pub per_source_pps: Option<u32>,
    /// `new_conn_per_source_per_s`: new connections per second per source address, if limited.
    pub new_conn_per_source_per_s: Option<u32>,
}

/// `[vpn]`: the WireGuard endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpn {
    /// `listen_port`, default 51820 (UDP).
    pub listen_port: u16,
    /// `address`: the gateway's address inside the tunnel with the tunnel prefix, such as
    /// 10.77.0.1/24. The address is neither the network nor the broadcast address and the
    /// prefix is at most /30.
    pub address: Ipv4Net,
    /// `address6`: the gateway's IPv6 address inside the tunnel, if any.
    pub address6: Option<Ipv6Net>,
    /// `private_key_file`, default `/etc/crmguard/wg.key`.
    pub private_key_file: PathBuf,
    /// `peers_file`, default `/var/lib/crmguard/peers.toml`.
    pub peers_file: PathBuf,
    /// `handshake_per_source_pps`, default 20.
    pub handshake_per_source_pps: u32,
    /// `handshake_burst`, default 5.
    pub handshake_burst: u32,
    /// `handshakes_before_cookies`, default 500: handshake messages a second the endpoint works
    /// through (each costs Diffie-Hellman work) before it answers new ones with cookie replies
    /// only, as WireGuard does under load. A small host may want it lower.
    pub handshakes_before_cookies: u32,
    /// `key_max_age`, default 90 days: older peers are refused until their key is rotated.
    pub key_max_age: Duration,
    /// `disable_inactive_after`, default 30 days without a handshake.
    pub disable_inactive_after: Duration,
}

/// A protocol and port on the gateway's VPN address, written `tcp/443`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceSpec {
    /// The transport protocol.
    pub proto: Proto,
    /// The port, never zero.
    pub port: u16,
}

impl fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto, self.port)
    }
}

/// What a policy test or `crmguard explain` sends: a TCP segment or UDP datagram to a port, written
/// `tcp/22` or `udp/53`, or an ICMP echo request, written `icmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    /// TCP to this port.
    Tcp(u16),
    /// UDP to this port.
    Udp(u16),
    /// An ICMP (or, from an IPv6 source, ICMPv6) echo request.
    Icmp,
}

impl Probe {
    /// Parses `tcp/22`, `udp/53` or `icmp`.
    pub fn parse(text: &str) -> Result<Probe, String> {
        if text.eq_ignore_ascii_case("icmp") {
            return Ok(Probe::Icmp);
        }
        let spec = validate::parse_service_spec(text).map_err(|_| {
            format!("`{text}` is not a packet such as `tcp/22`, `udp/53` or `icmp`")
        })?;
        Ok(match spec.proto {
            Proto::Tcp => Probe::Tcp(spec.port),
            Proto::Udp => Probe::Udp(spec.port),
        })
    }

    /// The service a TCP or UDP probe reaches; `None` for ICMP.
    pub fn service(self) -> Option<ServiceSpec> {
        match self {
            Probe::Tcp(port) => Some(ServiceSpec {
                proto: Proto::Tcp,
                port,
            }),
            Probe::Udp(port) => Some(ServiceSpec {
                proto: Proto::Udp,
                port,
            }),
            Probe::Icmp => None,
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.service() {
            Some(spec) => spec.fmt(f),
            None => f.write_str("icmp"),
        }
    }
}

impl std::str::FromStr for Probe {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Probe::parse(text)
    }
}

/// One `[[test]]`: a packet or connection and the verdict the policy promises for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTest {
    /// `name`, as failures print it.
    pub name: String,
    /// Where the test's `expect` is written: failures point there.
    pub place: Place,
    /// What is sent.
    pub case: TestCase,
    /// `expect = "pass"` (true) or `"drop"` (false).
    pub expect_pass: bool,
    /// `reason`: the reason name the verdict must come with, if the test names one.
    pub expect_reason: Option<String>,
}

/// A place in a configuration or test file, shown as `FILE:LINE:COLUMN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: PathBuf,
    /// Counted from 1.
    pub line: usize,
    /// In characters, counted from 1.
    pub column: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// What a policy test sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestCase {
    /// A packet from outside (`from`) to the host, through the XDP filter.
    Outside {
        /// `from`: the source address.
        from: std::net::IpAddr,
        /// `to`.
        to: Probe,
        /// `syn`, TCP only: the packet opens a connection (SYN without ACK). Default false: a
        /// packet of a connection already open, as `crmguard explain` without `--syn`.
        syn: bool,
    },
    /// A packet from a VPN peer to the gateway, through the identity ACL.
    Tunnel {
        /// `peer`: a configured peer's name.
        peer: String,
        /// `to`.
        to: Probe,
        /// `at`: the time of the week; `None` means the promise holds at every minute of it.
        at: Option<WeekTime>,
        /// `mfa`, default false: whether the peer has an open MFA session.
        mfa: bool,
    },
}

/// One `[[role]]`: what its peers may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The role name, used as a metric label.
    pub name: String,
    /// `allow`: services on the gateway's VPN address, without duplicates, in file order.
    pub allow: Vec<ServiceSpec>,
    /// `hours`: when the role may reach them, in the host's local time; `None` means always.
    pub hours: Option<Hours>,
    /// `mfa`, default false: whether peers need an open MFA session.
    pub mfa: bool,
}

/// One `[[peer]]`: a WireGuard client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer name, used as a metric label and as the actor in audit records.
    pub name: String,
    /// The Curve25519 public key (decoded from 44 characters of standard base64).
    pub public_key: [u8; 32],
    /// The peer's tunnel address: inside `vpn.address`, not the gateway's own address, not the
    /// network or broadcast address.
    pub address: Ipv4Addr,
    /// The peer's IPv6 tunnel address inside `vpn.address6`, if any.
    pub address6: Option<Ipv6Addr>,
    /// The name of a configured role.
    pub role: String,
    /// `created`: when the key was registered, the start of `key_max_age`.
    pub created: Option<Date>,
    /// `enabled`, default true.
    pub enabled: bool,
}

/// `[inspection]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// `enabled`, default true.
    pub enabled: bool,
    /// `tls_min_version`, default `1.2`.
    pub tls_min_version: TlsVersion,
    /// `sni_allow`: the allowed server names; empty means any name.
    pub sni_allow: Vec<SniPattern>,
    /// `no_sni`, default `allow`.
    pub no_sni: NoSniAction,
    /// `plaintext_credentials`, default `alert`.
    pub plaintext_credentials: ViolationAction,
    /// `protocol_mismatch`, default `alert`: for example something that is not TLS on tcp/443.
    pub protocol_mismatch: ViolationAction,
    /// `max_flows`, default 65536: the bound on inspected flows held at once.
    pub max_flows: u32,
    /// `parser_error`, default `pass`.
    pub parser_error: ParserErrorAction,
    /// `[inspection.protocols]`: the protocol of each listed tunnel service, in service order.
    /// Services not listed take the well-known port's default, if any.
    pub protocols: Vec<(ServiceSpec, AppProtocol)>,
    /// `[[inspection.login_failure]]`: web logins that answer a failure with 200 or 302.
    pub login_failures: Vec<LoginFailureRule>,
}

/// One `[[inspection.login_failure]]`: a request to `path` answered with `status` is a failed
/// login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginFailureRule {
    /// `method`, such as `POST`; `None` matches any method.
    pub method: Option<String>,
    /// `path`: the exact path of the request target, without its query, starting with `/`.
    pub path: String,
    /// `status`: 100 to 599.
    pub status: u16,
}

/// An entry of `sni_allow`, stored in lower case without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SniPattern {
    /// `crm.example.com`: exactly this name.
    Exact(String),
    /// `*.crm.example.com`, stored as `crm.example.com`: any name with exactly one more label
    /// in front, as in certificate wildcards.
    Wildcard(String),
}

impl SniPattern {
    /// Whether `server_name` matches, ignoring ASCII case and one trailing dot.
    pub fn matches(&self, server_name: &str) -> bool {
        let name = server_name.strip_suffix('.').unwrap_or(server_name);
        match self {
            SniPattern::Exact(exact) => name.eq_ignore_ascii_case(exact),
            SniPattern::Wildcard(parent) => match name.split_once('.') {
                Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(parent),
                None => false,
            },
        }
    }
}

/// `[detection]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// `allowlist`: sources that are never banned.
    pub allowlist: Vec<IpNet>,
    /// `[detection.auth_failures]`.
    pub auth_failures: AuthFailures,
    /// `[detection.port_scan]`.
    pub port_scan: PortScan,
    /// `[detection.volume]`.
    pub volume: Volume,
    /// `[detection.new_endpoint]`.
    pub new_endpoint: NewEndpoint,
    /// `[detection.off_hours]`.
    pub off_hours: OffHours,
    /// `[[detection.log_source]]`, in file order.
    pub log_sources: Vec<LogSource>,
    /// `[firewall.limits] ipv6_prefix`: an outside IPv6 source is counted, and banned, by this
    /// many leading bits, as the rate limits count it, since one host can use every address of
    /// its /64 in turn.
    pub source_prefix6: u8,
}

/// `[detection.auth_failures]`: banning sources of repeated login failures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuthFailures {
    /// `threshold`, default 5 (1 to [`MAX_DETECTION_COUNT`]) failures of one source address
    /// within `window`.
    pub threshold: u32,
    /// `window`, default 10 minutes.
    pub window: Duration,
    /// `ban`, default 30 minutes: the first ban.
    pub ban: Duration,
    /// `escalate`, default 2.0: each further ban of a source lasts this many times longer.
    /// Finite and at least 1.
    pub escalate: f64,
    /// `max_ban`, default 24 hours; never shorter than `ban`.
    pub max_ban: Duration,
    /// `per_peer_threshold`, default `threshold`: failures within `window` of one VPN peer's
    /// logins through the tunnel (seen by inspection) before its MFA session is ended. A peer's
    /// tunnel address is never banned, as it is not an outside address.
    pub per_peer_threshold: u32,
    /// `suspend_disable`, default none: when set, a peer suspended for login failures is also
    /// refused for this long, not only sent back to the MFA portal.
    pub suspend_disable: Option<Duration>,
}

/// The largest `threshold`, `per_peer_threshold` and `distinct_ports` of `[detection]`: the
/// detectors keep one timestamp or port per counted event, so this bounds their memory per
/// tracked source.
pub const MAX_DETECTION_COUNT: u32 = 65_535;

/// `[detection.port_scan]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortScan {
    /// `distinct_ports`, default 20 (2 to [`MAX_DETECTION_COUNT`]) within `window`.
    pub distinct_ports: u32,
    /// `window`, default 1 minute.
    pub window: Duration,
    /// `ban`, default 1 hour.
    pub ban: Duration,
}

/// `[detection.volume]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Volume {
    /// `per_peer_bytes_per_hour`, default 2 GiB; written as `"2GiB"`, `"500MB"` or bytes.
    pub per_peer_bytes_per_hour: u64,
    /// `action`, default `alert`.
    pub action: ResponseAction,
}

/// `[detection.new_endpoint]`: a peer connecting from a network it never used before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewEndpoint {
    /// `action`, default `alert`.
    pub action: ResponseAction,
}

/// `[detection.off_hours]`: a peer trying a service outside its role's `hours`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffHours {
    /// `action`, default `alert`.
    pub action: ResponseAction,
}

/// One `[[detection.log_source]]`: a log file scanned for login failures.
#[derive(Debug, Clone)]
pub struct LogSource {
    /// The source name, used as a metric label and as the protocol of its failures.
    pub name: String,
    /// Where its lines come from: `path` (a file, followed across rotation) or `unit` (the
    /// systemd journal of that unit).
    pub origin: LogOrigin,
    /// The failure pattern, a regular expression or a built-in name (`sshd`, `nginx-401`,
    /// `apache-401`); it has a named group `addr` that captures the source address.
    pub pattern: regex::Regex,
}

/// Where a log source's lines come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOrigin {
    /// `path`: a file.
    File(PathBuf),
    /// `unit`: the journal of a systemd unit, such as `ssh.service`.
    Journal(String),
}

impl PartialEq for LogSource {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.origin == other.origin
            && self.pattern.as_str() == other.pattern.as_str()
    }
}

/// `[mfa]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mfa {
    /// `issuer`, default `crmguard`: shown by authenticator apps; never contains `:`.
    pub issuer: String,
    /// `portal_port`, default 8443 (TCP on the gateway's VPN address).
    pub portal_port: u16,
    /// `session`, default 12 hours.
    pub session: Duration,
    /// `idle`, default 30 minutes.
    pub idle: Duration,
    /// `max_failures`, default 5 wrong codes before a lockout.
    pub max_failures: u32,
    /// `lockout`, default 15 minutes.
    pub lockout: Duration,
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// `path`, default `/var/log/crmguard/audit.jsonl`.
    pub path: PathBuf,
    /// `key_file`, default `/etc/crmguard/audit.key`.
    pub key_file: PathBuf,
    /// `on_write_failure`, default `fail-closed`.
    pub on_write_failure: OnWriteFailure,
    /// `rotate_size` and `rotate_keep`: when the log moves to a segment of its own, and how
    /// many segments stay.
    pub rotation: AuditRotation,
}

/// When the agent rotates the audit log (`[audit] rotate_size`, `rotate_keep`): once the
/// log holds `size` bytes it is sealed and renamed to a segment of its own, and the newest
/// `keep` segments stay next to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRotation {
    /// `rotate_size`, default 64 MiB, at least 4 KiB.
    pub size: u64,
    /// `rotate_keep`, default 10 segments (at least 1).
    pub keep: u32,
}

impl Default for AuditRotation {
    fn default() -> Self {
        AuditRotation {
            size: 64 << 20,
            keep: 10,
        }
    }
}

/// `[backup]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// `dir`, default `/var/backups/crmguard`.
    pub dir: PathBuf,
    /// `every`, default 1 day.
    pub every: Duration,
    /// `keep`, default 14 archives (at least 1).
    pub keep: u32,
    /// How archives are encrypted; `None` when neither `recipient` nor `passphrase_file` is
    /// set, which turns scheduled backups off (`crmguard backup create` then refuses too).
    pub encryption: Option<BackupEncryption>,
}

/// How `[backup]` encrypts archives, in age's format. age encrypts a file to recipients or to
/// one passphrase, never both, so exactly one of the two keys may be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupEncryption {
    /// `recipient = "age1..."`: an age X25519 public key. The operator keeps the identity (the
    /// private key) off the host.
    Recipient(String),
    /// `passphrase_file`: a file whose first line is the passphrase (scrypt).
    PassphraseFile(PathBuf),
}

/// `[metrics]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metrics {
    /// `listen`, default `127.0.0.1:9184`.
    pub listen: SocketAddr,
}

/// `[alerts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alerts {
    /// `webhook`: an `http://` URL that receives alerts as JSON; `None` disables webhook
    /// alerts.
    pub webhook: Option<String>,
    /// `alertmanager`: the `http://` base URL of a Prometheus Alertmanager (its v2 API).
    pub alertmanager: Option<String>,
    /// `queue`, default 1024: alerts waiting for delivery per destination; beyond, they are
    /// dropped and counted.
    pub queue: u32,
}

/// `[crowdsec]`: a CrowdSec Local API shared by a fleet of hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crowdsec {
    /// `url`: the Local API's `http://` base URL, such as `http://127.0.0.1:8080`.
    pub url: String,
    /// `bouncer_key`: with it, the API's ban decisions are enforced in XDP.
    pub bouncer_key: Option<String>,
    /// `interval`, default 10 s: how often decisions are pulled.
    pub interval: Duration,
    /// `machine_id` and `password`: with them, crmguard's own bans are pushed to the API.
    pub watcher: Option<(String, String)>,
}

#[cfg(test)]
mod tests;
