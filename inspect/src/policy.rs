//! `[inspection]` compiled for the per-packet path: what each tunnel service should carry, the
//! TLS rules, and what each kind of violation does.

use std::collections::HashMap;

use crmguard_core::config::{
    AppProtocol, Inspection, NoSniAction, ParserErrorAction, Proto, SniPattern, TlsVersion,
    ViolationAction,
};

use crate::protocol::{LoginRule, Protocol, WireVersion};

/// Well-known ports and the protocol they carry when `[inspection.protocols]` says nothing.
pub const DEFAULT_PROTOCOLS: [(u16, Protocol); 11] = [
    (22, Protocol::Ssh),
    (25, Protocol::Smtp),
    (80, Protocol::Http),
    (443, Protocol::Tls),
    (465, Protocol::Tls),
    (587, Protocol::Smtp),
    (993, Protocol::Tls),
    (995, Protocol::Tls),
    (3306, Protocol::Mysql),
    (5432, Protocol::Postgresql),
    (6379, Protocol::Redis),
];

/// The compiled `[inspection]`.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `enabled`: when false, packets pass without a table lookup.
    pub enabled: bool,
    /// `tls_min_version` as a wire version (`0x0303` for TLS 1.2).
    pub tls_min: WireVersion,
    pub sni_allow: Vec<SniPattern>,
    pub no_sni: NoSniAction,
    pub plaintext_credentials: ViolationAction,
    pub protocol_mismatch: ViolationAction,
    pub parser_error: ParserErrorAction,
    pub max_flows: u32,
    /// The web login rules.
    pub login_rules: Vec<LoginRule>,
    /// What each TCP port on the gateway carries; `None` for `any`.
    expected: HashMap<u16, Option<Protocol>>,
}

impl Policy {
    /// Compiles `config`.
    pub fn new(config: &Inspection) -> Policy {
        let mut expected: HashMap<u16, Option<Protocol>> = DEFAULT_PROTOCOLS
            .iter()
            .map(|&(port, protocol)| (port, Some(protocol)))
            .collect();
        for (spec, protocol) in &config.protocols {
            if spec.proto == Proto::Tcp {
                expected.insert(spec.port, of_app(*protocol));
            }
        }
        Policy {
            enabled: config.enabled,
            tls_min: wire_version(config.tls_min_version),
            sni_allow: config.sni_allow.clone(),
            no_sni: config.no_sni,
            plaintext_credentials: config.plaintext_credentials,
            protocol_mismatch: config.protocol_mismatch,
            parser_error: config.parser_error,
            max_flows: config.max_flows,
            login_rules: config
                .login_failures
                .iter()
                .map(|rule| LoginRule {
                    method: rule.method.clone(),
                    path: rule.path.clone(),
                    status: rule.status,
                })
                .collect(),
            expected,
        }
    }

    /// The protocol a connection to TCP `port` on the gateway should carry, if one is known.
    pub fn expected(&self, port: u16) -> Option<Protocol> {
        self.expected.get(&port).copied().flatten()
    }

    /// Whether a server name passes `sni_allow` (an empty list allows every name).
    pub fn sni_allowed(&self, name: &str) -> bool {
        self.sni_allow.is_empty() || self.sni_allow.iter().any(|p| p.matches(name))
    }
}

/// Whether a flow identified as `found` is what a service of `expected` carries. HTTP/2 with
/// prior knowledge is an HTTP service's business.
pub fn compatible(expected: Protocol, found: Protocol) -> bool {
    expected == found || (expected == Protocol::Http && found == Protocol::Http2)
}

fn of_app(protocol: AppProtocol) -> Option<Protocol> {
    match protocol {
        AppProtocol::Tls => Some(Protocol::Tls),
        AppProtocol::Http => Some(Protocol::Http),
        AppProtocol::Http2 => Some(Protocol::Http2),
        AppProtocol::Postgresql => Some(Protocol::Postgresql),
        AppProtocol::Mysql => Some(Protocol::Mysql),
        AppProtocol::Redis => Some(Protocol::Redis),
        AppProtocol::Ssh => Some(Protocol::Ssh),
        AppProtocol::Smtp => Some(Protocol::Smtp),
        AppProtocol::Any => None,
    }
}

/// The wire number of a configured TLS version.
pub fn wire_version(version: TlsVersion) -> WireVersion {
    match version {
        TlsVersion::Tls10 => 0x0301,
        TlsVersion::Tls11 => 0x0302,
        TlsVersion::Tls12 => 0x0303,
        TlsVersion::Tls13 => 0x0304,
    }
}

/// `1.2` for `0x0303`; SSL 3.0 and unknown numbers in hex.
pub fn version_name(version: WireVersion) -> String {
    match version {
        0x0300 => "ssl3.0".to_owned(),
        0x0301 => "1.0".to_owned(),
        0x0302 => "1.1".to_owned(),
        0x0303 => "1.2".to_owned(),
        0x0304 => "1.3".to_owned(),
        other => format!("0x{other:04x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmguard_core::config::ServiceSpec;

    fn config() -> Inspection {
        crmguard_core::config::default_policy().inspection
    }

    #[test]
    fn well_known_ports_have_defaults_and_the_operator_overrides_them() {
        let mut inspection = config();
        let policy = Policy::new(&inspection);
        assert_eq!(policy.expected(443), Some(Protocol::Tls));
        assert_eq!(policy.expected(5432), Some(Protocol::Postgresql));
        assert_eq!(policy.expected(8443), None);
        inspection.protocols = vec![
            (
                ServiceSpec {
                    proto: Proto::Tcp,
                    port: 8443,
                },
                AppProtocol::Tls,
            ),
            (
                ServiceSpec {
                    proto: Proto::Tcp,
                    port: 443,
                },
                AppProtocol::Any,
            ),
        ];
        let policy = Policy::new(&inspection);
        assert_eq!(policy.expected(8443), Some(Protocol::Tls));
        assert_eq!(policy.expected(443), None);
    }

    #[test]
    fn versions_and_names() {
        assert_eq!(wire_version(TlsVersion::Tls12), 0x0303);
        assert_eq!(version_name(0x0302), "1.1");
        assert!(compatible(Protocol::Http, Protocol::Http2));
        assert!(!compatible(Protocol::Tls, Protocol::Http));
    }
}
