//! The configuration file as written: serde structs that mirror the TOML schema one to one.
//!
//! Every struct rejects unknown keys, every key is optional (defaults are applied during
//! validation) and every value that needs a check keeps its byte span through `Spanned`, so that
//! validation can point at it. Numbers are read as `i64` and strings as `String` so that range
//! and format problems are reported by validation, all at once, instead of one by one by serde.

use serde::Deserialize;
use toml::Spanned;

/// A string value with its span.
pub(super) type Text = Spanned<String>;
/// An integer value with its span.
pub(super) type Int = Spanned<i64>;
/// A list with its span and the span of each element.
pub(super) type List<T> = Spanned<Vec<Spanned<T>>>;

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub interface: Vec<RawInterface>,
    #[serde(default)]
    pub firewall: RawFirewall,
    pub vpn: Option<RawVpn>,
    #[serde(default)]
    pub role: Vec<RawRole>,
    #[serde(default)]
    pub peer: Vec<RawPeer>,
    #[serde(default)]
    pub inspection: RawInspection,
    #[serde(default)]
    pub detection: RawDetection,
    #[serde(default)]
    pub mfa: RawMfa,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub backup: RawBackup,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub alerts: RawAlerts,
    pub crowdsec: Option<RawCrowdsec>,
    #[serde(default)]
    pub test: Vec<RawTest>,
    #[serde(default)]
    pub tests: RawTests,
}

/// `[[test]]`: one case of the policy's own tests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTest {
    pub name: Text,
    pub from: Option<Text>,
    pub peer: Option<Text>,
    pub to: Text,
    pub syn: Option<Spanned<bool>>,
    pub at: Option<Text>,
    pub mfa: Option<Spanned<bool>>,
    pub expect: Text,
    pub reason: Option<Text>,
}

/// `[tests]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTests {
    pub files: Option<List<String>>,
}

/// A file of `[tests] files`: `[[test]]` entries and nothing else.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTestFile {
    #[serde(default)]
    pub test: Vec<RawTest>,
}

/// The peers file: `[[peer]]` entries and nothing else. Also what `crmguard peer` edits
/// (`provision::document`), so both read the same keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPeersFile {
    #[serde(default)]
    pub peer: Vec<RawPeer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub mode: Option<Text>,
    pub state_dir: Option<Text>,
    pub bpffs_dir: Option<Text>,
    pub control_socket: Option<Text>,
    pub log_format: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterface {
    pub name: Text,
    pub xdp_mode: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFirewall {
    pub default: Option<Text>,
    pub allow_established: Option<bool>,
    pub icmp: Option<Text>,
    pub icmp_echo_per_source_pps: Option<Int>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub deny: RawDeny,
    #[serde(default)]
    pub service: Vec<RawService>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub per_source_pps: Option<Int>,
    pub per_source_burst: Option<Int>,
    pub syn_per_source_per_s: Option<Int>,
    pub global_syn_per_s: Option<Int>,
    pub ipv6_prefix: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeny {
    pub sources: Option<List<String>>,
    pub files: Option<List<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub name: Text,
    pub proto: Text,
    pub ports: List<i64>,
    pub from: Option<List<String>>,
    pub per_source_pps: Option<Int>,
    pub new_conn_per_source_per_s: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVpn {
    pub listen_port: Option<Int>,
    pub address: Option<Text>,
    pub address6: Option<Text>,
    pub private_key_file: Option<Text>,
    pub peers_file: Option<Text>,
    pub handshake_per_source_pps: Option<Int>,
    pub handshake_burst: Option<Int>,
    pub handshakes_before_cookies: Option<Int>,
    pub key_max_age: Option<Text>,
    pub disable_inactive_after: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRole {
    pub name: Text,
    pub allow: Option<List<String>>,
    pub hours: Option<Text>,
    pub mfa: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPeer {
    pub name: Text,
    pub public_key: Text,
    pub address: Text,
    pub address6: Option<Text>,
    pub role: Text,
    /// A string `"2026-11-01"` or a bare TOML date `2026-11-01`.
    pub created: Option<Spanned<toml::Value>>,
    pub enabled: Option<bool>,
}

impl super::Shift for RawPeer {
    fn shift(self, by: usize) -> Self {
        RawPeer {
            name: self.name.shift(by),
            public_key: self.public_key.shift(by),
            address: self.address.shift(by),
            address6: self.address6.shift(by),
            role: self.role.shift(by),
            created: self.created.shift(by),
            enabled: self.enabled,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInspection {
    pub enabled: Option<bool>,
    pub tls_min_version: Option<Text>,
    pub sni_allow: Option<List<String>>,
    pub no_sni: Option<Text>,
    pub plaintext_credentials: Option<Text>,
    pub protocol_mismatch: Option<Text>,
    pub max_flows: Option<Int>,
    pub parser_error: Option<Text>,
    /// `"tcp/8443" = "tls"`: the protocol each tunnel service carries.
    pub protocols: Option<Spanned<std::collections::BTreeMap<String, Text>>>,
    #[serde(default)]
    pub login_failure: Vec<RawLoginFailure>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLoginFailure {
    pub method: Option<Text>,
    pub path: Text,
    pub status: Int,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDetection {
    pub allowlist: Option<List<String>>,
    #[serde(default)]
    pub auth_failures: RawAuthFailures,
    #[serde(default)]
    pub port_scan: RawPortScan,
    #[serde(default)]
    pub volume: RawVolume,
    #[serde(default)]
    pub new_endpoint: RawNewEndpoint,
    #[serde(default)]
    pub off_hours: RawOffHours,
    #[serde(default)]
    pub log_source: Vec<RawLogSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthFailures {
    pub threshold: Option<Int>,
    pub window: Option<Text>,
    pub ban: Option<Text>,
    pub escalate: Option<Spanned<f64>>,
    pub max_ban: Option<Text>,
    pub per_peer_threshold: Option<Int>,
    pub suspend_disable: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPortScan {
    pub distinct_ports: Option<Int>,
    pub window: Option<Text>,
    pub ban: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVolume {
    /// A string such as `"2GiB"` or an integer number of bytes.
    pub per_peer_bytes_per_hour: Option<Spanned<toml::Value>>,
    pub action: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNewEndpoint {
    pub action: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOffHours {
    pub action: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogSource {
    pub name: Text,
    pub path: Option<Text>,
    pub unit: Option<Text>,
    pub pattern: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMfa {
    pub issuer: Option<Text>,
    pub portal_port: Option<Int>,
    pub session: Option<Text>,
    pub idle: Option<Text>,
    pub max_failures: Option<Int>,
    pub lockout: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub path: Option<Text>,
    pub key_file: Option<Text>,
    pub on_write_failure: Option<Text>,
    pub rotate_size: Option<Spanned<toml::Value>>,
    pub rotate_keep: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackup {
    pub dir: Option<Text>,
    pub every: Option<Text>,
    pub keep: Option<Int>,
    pub recipient: Option<Text>,
    pub passphrase_file: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub listen: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    pub webhook: Option<Text>,
    pub alertmanager: Option<Text>,
    pub queue: Option<Int>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCrowdsec {
    pub url: Text,
    pub bouncer_key: Option<Text>,
    pub interval: Option<Text>,
    pub machine_id: Option<Text>,
    pub password: Option<Text>,
}
