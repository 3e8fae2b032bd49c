//! Tests of the configuration at its boundary: text or files in, a `Config` or located errors
//! out.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FILE: &str = "/etc/crmguard/crmguard.toml";
const EXAMPLE: &str = include_str!("../../../config/crmguard.example.toml");

/// A valid public key (32 bytes of base64) and a second, different one.
const KEY_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const KEY_B: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

fn parsed(src: &str) -> Config {
    match parse(src, Path::new(FILE)) {
        Ok(config) => config,
        Err(errors) => panic!("unexpected errors:\n{errors}"),
    }
}

fn rendered(result: Result<Config, ConfigErrors>) -> Vec<String> {
    match result {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

/// Checks the errors of `src` as read from `/etc/crmguard/crmguard.toml`.
fn check(src: &str, expected: &[&str]) {
    assert_eq!(
        rendered(parse(src, Path::new(FILE))),
        expected,
        "for:\n{src}"
    );
}

/// A configuration with a tunnel and roles for peers to refer to.
fn with_vpn(rest: &str) -> String {
    format!(
        "[vpn]\naddress = \"10.77.0.1/24\"\naddress6 = \"fd77::1/64\"\n\
         [[role]]\nname = \"sales\"\n[[role]]\nname = \"dba\"\n{rest}"
    )
}

#[test]
fn example_is_accepted() {
    let config = parsed(EXAMPLE);
    assert_eq!(config.agent.mode, Mode::Enforce);
    assert_eq!(config.agent.log_format, LogFormat::Json);
    assert_eq!(
        config.interfaces,
        vec![Interface {
            name: "eth0".into(),
            xdp_mode: XdpMode::Auto
        }]
    );
    let nets: Vec<String> = config
        .firewall
        .deny
        .iter()
        .map(|d| d.net.to_string())
        .collect();
    assert_eq!(nets, ["198.51.100.0/24", "2001:db8:bad::/48"]);
    assert_eq!(config.firewall.deny[0].origin, "firewall.deny.sources");
    let ssh = &config.firewall.services[0];
    assert_eq!(
        (ssh.name.as_str(), ssh.proto, ssh.ports.as_slice()),
        ("ssh", Proto::Tcp, &[22][..])
    );
    assert_eq!(ssh.from.as_ref().map(Vec::len), Some(2));
    assert_eq!(
        (ssh.per_source_pps, ssh.new_conn_per_source_per_s),
        (Some(200), Some(5))
    );
    assert_eq!(config.firewall.services[1].from, None);
    let vpn = config
        .vpn
        .as_ref()
        .map(|v| (v.listen_port, v.address.to_string(), v.key_max_age));
    assert_eq!(
        vpn,
        Some((
            51820,
            "10.77.0.1/24".into(),
            Duration::from_secs(90 * 86400)
        ))
    );
    let names: Vec<&str> = config.roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["sales", "dba", "admin"]);
    assert_eq!(
        config.roles[0].hours.map(|h| h.to_string()),
        Some("Mon-Fri 07:00-21:00".into())
    );
    assert_eq!(config.peers.len(), 1);
    assert_eq!(config.peers[0].address, Ipv4Addr::new(10, 77, 0, 10));
    assert_eq!(config.peers[0].created, Date::new(2026, 11, 1));
    assert!(config.peers[0].enabled);
    assert_eq!(config.inspection.protocol_mismatch, ViolationAction::Drop);
    assert_eq!(config.detection.volume.per_peer_bytes_per_hour, 2 << 30);
    assert_eq!(config.detection.volume.action, ResponseAction::Suspend);
    assert_eq!(config.detection.auth_failures.per_peer_threshold, 5);
    assert_eq!(config.detection.auth_failures.suspend_disable, None);
    assert_eq!(config.detection.off_hours.action, ResponseAction::Alert);
    let source = &config.detection.log_sources[0];
    let caps = source
        .pattern
        .captures("Failed password for root from 203.0.113.9 port 22 ssh2")
        .and_then(|c| c.name("addr"))
        .map(|m| m.as_str());
    assert_eq!(caps, Some("203.0.113.9"));
    assert_eq!(config.mfa.issuer, "ACME CRM");
    assert_eq!(config.audit.on_write_failure, OnWriteFailure::FailClosed);
    assert_eq!(
        config.audit.rotation,
        AuditRotation {
            size: 64 << 20,
            keep: 10
        }
    );
    assert_eq!(config.backup.every, Duration::from_secs(86400));
    assert_eq!(config.backup.encryption, None);
    assert_eq!(
        config.alerts.webhook.as_deref(),
        Some("http://127.0.0.1:8088/crmguard")
    );
    assert_eq!(
        config.alerts.alertmanager.as_deref(),
        Some("http://127.0.0.1:9093")
    );
    let crowdsec = config.crowdsec.as_ref();
    assert_eq!(
        crowdsec.map(|c| c.url.as_str()),
        Some("http://127.0.0.1:8080")
    );
    assert_eq!(crowdsec.map(|c| c.interval), Some(Duration::from_secs(10)));
    assert!(crowdsec.is_some_and(|c| c.watcher.is_some() && c.bouncer_key.is_some()));
}

#[test]
fn default_policy_is_the_documented_one() {
    let config = default_policy();
    assert_eq!(config.agent.mode, Mode::Enforce);
    assert!(config.interfaces.is_empty());
    assert_eq!(config.firewall.default, DefaultAction::Drop);
    assert!(config.firewall.allow_established);
    assert_eq!(config.firewall.icmp, IcmpPolicy::Essential);
    let ssh: Vec<_> = config
        .firewall
        .services
        .iter()
        .filter(|s| s.proto == Proto::Tcp && s.ports.contains(&22) && s.from.is_none())
        .collect();
    assert_eq!(ssh.len(), 1, "SSH must be open from anywhere");
    assert!(ssh[0].per_source_pps.is_some() && ssh[0].new_conn_per_source_per_s.is_some());
    let vpn = config
        .vpn
        .as_ref()
        .map(|v| (v.listen_port, v.address.to_string()));
    assert_eq!(vpn, Some((51820, "10.77.0.1/24".into())));
    assert!(config.peers.is_empty());
    assert_eq!(config.metrics.listen.to_string(), "127.0.0.1:9184");
}

/// An empty file gets the defaults of the embedded policy for every key both leave unset.
#[test]
fn empty_file_gets_the_default_values() {
    let empty = parsed("");
    let default = default_policy();
    assert_eq!(empty.agent, default.agent);
    assert_eq!(empty.interfaces, default.interfaces);
    assert_eq!(empty.firewall.default, default.firewall.default);
    assert_eq!(empty.firewall.icmp, default.firewall.icmp);
    assert_eq!(empty.firewall.limits, default.firewall.limits);
    assert_eq!(
        empty.firewall.icmp_echo_per_source_pps,
        default.firewall.icmp_echo_per_source_pps
    );
    assert!(empty.firewall.services.is_empty());
    assert_eq!(empty.vpn, None);
    assert_eq!(empty.metrics, default.metrics);
    assert_eq!(empty.mfa, default.mfa);
    assert_eq!(empty.audit, default.audit);
    assert_eq!(empty.backup, default.backup);
    assert_eq!(empty.inspection, default.inspection);
    assert_eq!(empty.detection, default.detection);
    let section_only = parsed("[vpn]\n");
    assert_eq!(section_only.vpn, default.vpn);
}

/// `per_peer_threshold` follows `threshold` unless it is set; `suspend_disable` is off unless set.
#[test]
fn detection_peer_keys_default_and_parse() {
    let config = parsed("[detection.auth_failures]\nthreshold = 8\n");
    assert_eq!(config.detection.auth_failures.per_peer_threshold, 8);
    assert_eq!(config.detection.auth_failures.suspend_disable, None);
    assert_eq!(config.detection.off_hours.action, ResponseAction::Alert);
    let config = parsed(
        "[detection.auth_failures]\nthreshold = 8\nper_peer_threshold = 3\nsuspend_disable = \"2h\"\n\
         [detection.off_hours]\naction = \"suspend\"\n",
    );
    assert_eq!(config.detection.auth_failures.threshold, 8);
    assert_eq!(config.detection.auth_failures.per_peer_threshold, 3);
    assert_eq!(
        config.detection.auth_failures.suspend_disable,
        Some(Duration::from_secs(2 * 3600))
    );
    assert_eq!(config.detection.off_hours.action, ResponseAction::Suspend);
}

#[test]
fn unknown_keys_name_the_key_file_and_line() {
    check(
        "[firewall]\ndefault = \"drop\"\n\ndefualt = \"allow\"\n",
        &["/etc/crmguard/crmguard.toml:4:1: firewall.defualt: unknown field `defualt`, expected one of \
           `default`, `allow_established`, `icmp`, `icmp_echo_per_source_pps`, `limits`, `deny`, `service`"],
    );
    check(
        "[agent]\nmode = \"monitor\"\n[firewal]\n",
        &["/etc/crmguard/crmguard.toml:3:2: firewal: unknown field `firewal`, expected one of \
           `agent`, `interface`, `firewall`, `vpn`, `role`, `peer`, `inspection`, `detection`, `mfa`, \
           `audit`, `backup`, `metrics`, `alerts`, `crowdsec`, `test`, `tests`"],
    );
    check(
        "[[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22]\n\
         [[firewall.service]]\nname = \"web\"\nproto = \"tcp\"\nports = [443]\nform = []\n",
        &["/etc/crmguard/crmguard.toml:9:1: firewall.service[1].form: unknown field `form`, expected one of \
           `name`, `proto`, `ports`, `from`, `per_source_pps`, `new_conn_per_source_per_s`"],
    );
    check(
        "[detection]\nauth_failures = { threshold = 3, windw = \"1m\" }\n",
        &["/etc/crmguard/crmguard.toml:2:34: detection.auth_failures.windw: unknown field `windw`, expected one of \
           `threshold`, `window`, `ban`, `escalate`, `max_ban`, `per_peer_threshold`, `suspend_disable`"],
    );
}

#[test]
fn schema_errors_name_the_key() {
    check(
        "[[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22, \"80\"]\n",
        &["/etc/crmguard/crmguard.toml:4:14: firewall.service[0].ports[1]: invalid type: string \"80\", expected i64"],
    );
    check(
        "[[firewall.service]]\nname = \"ssh\"\nports = [22]\n",
        &["/etc/crmguard/crmguard.toml:1:1: firewall.service[0]: missing field `proto`"],
    );
    check(
        "[firewall]\nallow_established = \"yes\"\n",
        &["/etc/crmguard/crmguard.toml:2:21: firewall.allow_established: invalid type: string \"yes\", expected a boolean"],
    );
    check(
        "[agent]\nmode = \"enforce\"\nmode = \"monitor\"\n",
        &["/etc/crmguard/crmguard.toml:3:1: agent.mode: duplicate key `mode` in table `agent`"],
    );
}

#[test]
fn syntax_errors_are_located() {
    check(
        "[agent]\nmode = \"enforce\n",
        &["/etc/crmguard/crmguard.toml:2:16: agent.mode: invalid basic string"],
    );
    check(
        "[agent\nmode = 1\n",
        &["/etc/crmguard/crmguard.toml:1:7: invalid table header: expected `.`, `]`"],
    );
}

#[test]
fn semantic_errors_are_located() {
    let cases: &[(&str, &str)] = &[
        (
            "[agent]\nmode = \"enforcing\"\n",
            "2:8: agent.mode: `enforcing` is not one of `enforce`, `monitor`",
        ),
        (
            "[agent]\nstate_dir = \"\"\n",
            "2:13: agent.state_dir: is not a path",
        ),
        (
            "[[interface]]\nname = \"a-very-long-interface\"\n",
            "2:8: interface[0].name: `a-very-long-interface` is not a name of 1 to 15 characters from A-Z, a-z, 0-9, `.`, `_` and `-`",
        ),
        (
            "[firewall.limits]\nipv6_prefix = 8\n",
            "2:15: firewall.limits.ipv6_prefix: 8 is not a prefix length from 16 to 128 (128 keys each address)",
        ),
        (
            "[[interface]]\nname = \"eth0\"\nxdp_mode = \"skb\"\n",
            "3:12: interface[0].xdp_mode: `skb` is not one of `auto`, `native`, `generic`",
        ),
        (
            "[firewall.deny]\nsources = [\"192.0.2.0/24\",\n  \"198.51.100.300/24\"]\n",
            "3:3: firewall.deny.sources[1]: `198.51.100.300/24` is not an IP prefix such as `192.0.2.0/24`",
        ),
        (
            "[firewall.limits]\nper_source_pps = 0\n",
            "2:18: firewall.limits.per_source_pps: 0 is out of range (1 to 4294967295)",
        ),
        (
            "[[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22, 0]\n",
            "4:14: firewall.service[0].ports[1]: 0 is not a port (1 to 65535)",
        ),
        (
            "[[firewall.service]]\nname = \"dns\"\nproto = \"udp\"\nports = [65536]\n",
            "4:10: firewall.service[0].ports[0]: 65536 is not a port (1 to 65535)",
        ),
        (
            "[[firewall.service]]\nname = \"ssh\"\nproto = \"sctp\"\nports = [22]\n",
            "3:9: firewall.service[0].proto: `sctp` is not one of `tcp`, `udp`",
        ),
        (
            "[[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = []\n",
            "4:9: firewall.service[0].ports: lists no port",
        ),
        (
            "[[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22]\nfrom = []\n",
            "5:8: firewall.service[0].from: is empty, which admits nobody; omit `from` to admit any source",
        ),
        (
            "[[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22]\nfrom = [\"192.0.2.1/24\"]\n",
            "5:9: firewall.service[0].from[0]: `192.0.2.1/24` has host bits set; the prefix is `192.0.2.0/24`",
        ),
        (
            "[[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22]\n\
             [[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [2222]\n",
            "6:8: firewall.service[1].name: duplicate service name `ssh`; first defined at line 2",
        ),
        (
            "[[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22]\n\
             [[firewall.service]]\nname = \"admin\"\nproto = \"tcp\"\nports = [8080, 22]\n",
            "8:16: firewall.service[1].ports[1]: tcp/22 is already opened by service `ssh`",
        ),
        (
            "[vpn]\n[[firewall.service]]\nname = \"wg\"\nproto = \"udp\"\nports = [51820]\n",
            "5:10: firewall.service[0].ports[0]: udp/51820 is the WireGuard port (vpn.listen_port)",
        ),
        (
            "[[firewall.service]]\nname = \"ssh server\"\nproto = \"tcp\"\nports = [22]\n",
            "2:8: firewall.service[0].name: `ssh server` is not a name of 1 to 64 characters from A-Z, a-z, 0-9, `.`, `_` and `-`",
        ),
        (
            "[vpn]\nlisten_port = 0\n",
            "2:15: vpn.listen_port: 0 is not a port (1 to 65535)",
        ),
        (
            "[vpn]\naddress = \"10.77.0.0/24\"\n",
            "2:11: vpn.address: 10.77.0.0 is the network or broadcast address of 10.77.0.0/24; give the gateway's own address, such as `10.77.0.1/24`",
        ),
        (
            "[vpn]\naddress = \"10.77.0.1/31\"\n",
            "2:11: vpn.address: the prefix leaves no room for peers; use /30 or shorter",
        ),
        (
            "[vpn]\naddress = \"fd77::1/64\"\n",
            "2:11: vpn.address: `fd77::1/64` is not an IPv4 address with a prefix length, such as `10.77.0.1/24`",
        ),
        (
            "[vpn]\nkey_max_age = \"90\"\n",
            "2:15: vpn.key_max_age: `90` has no unit; write for example `90s`, `90m`, `90h`, `90d` or `90w`",
        ),
        (
            "[vpn]\ndisable_inactive_after = \"5x\"\n",
            "2:26: vpn.disable_inactive_after: `5x` has an unknown unit; the units are `s`, `m`, `h`, `d` and `w`",
        ),
        (
            "[mfa]\nsession = \"0h\"\n",
            "2:11: mfa.session: `0h` is zero; a duration must be positive",
        ),
        (
            "[[role]]\nname = \"sales\"\nallow = [\"tcp/443\", \"https\"]\n",
            "3:21: role[0].allow[1]: `https` is not a service such as `tcp/443` or `udp/53`",
        ),
        (
            "[[role]]\nname = \"sales\"\nallow = [\"tcp/0\"]\n",
            "3:10: role[0].allow[0]: `tcp/0` has no valid port (1 to 65535)",
        ),
        (
            "[[role]]\nname = \"sales\"\nhours = \"Mon-Fri 07:00-25:00\"\n",
            "3:9: role[0].hours: `25:00` is not a time between 00:00 and 24:00",
        ),
        (
            "[[role]]\nname = \"sales\"\nhours = \"Weekdays 07:00-21:00\"\n",
            "3:9: role[0].hours: `Weekdays` is not a day; the days are Mon, Tue, Wed, Thu, Fri, Sat and Sun",
        ),
        (
            "[[role]]\nname = \"sales\"\n[[role]]\nname = \"sales\"\n",
            "4:8: role[1].name: duplicate role name `sales`; first defined at line 2",
        ),
        (
            "[[role]]\nname = \"sales\"\n[[peer]]\nname = \"alice\"\n\
             public_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\naddress = \"10.77.0.10\"\nrole = \"sales\"\n",
            "4:8: peer[0].name: peers need a [vpn] section, which is missing",
        ),
        (
            "[detection.auth_failures]\nban = \"2h\"\nmax_ban = \"1h\"\n",
            "3:11: detection.auth_failures.max_ban: is shorter than detection.auth_failures.ban",
        ),
        (
            "[detection.auth_failures]\nescalate = 0.5\n",
            "2:12: detection.auth_failures.escalate: 0.5 is not a factor of at least 1.0",
        ),
        (
            "[detection.volume]\nper_peer_bytes_per_hour = \"2 gigs\"\n",
            "2:27: detection.volume.per_peer_bytes_per_hour: is not a positive size such as \"2GiB\", \"500MB\" or a number of bytes",
        ),
        (
            "[detection.auth_failures]\nthreshold = 65536\n",
            "2:13: detection.auth_failures.threshold: 65536 is out of range (1 to 65535)",
        ),
        (
            "[detection.auth_failures]\nper_peer_threshold = 0\n",
            "2:22: detection.auth_failures.per_peer_threshold: 0 is out of range (1 to 65535)",
        ),
        (
            "[detection.auth_failures]\nsuspend_disable = \"1 hour\"\n",
            "2:19: detection.auth_failures.suspend_disable: `1 hour` has an unknown unit; the units are `s`, `m`, `h`, `d` and `w`",
        ),
        (
            "[detection.port_scan]\ndistinct_ports = 1\n",
            "2:18: detection.port_scan.distinct_ports: 1 is out of range (2 to 65535)",
        ),
        (
            "[detection.off_hours]\naction = \"ban\"\n",
            "2:10: detection.off_hours.action: `ban` is not one of `alert`, `suspend`",
        ),
        (
            "[detection.volume]\naction = \"ban\"\n",
            "2:10: detection.volume.action: `ban` is not one of `alert`, `suspend`",
        ),
        (
            "[[detection.log_source]]\nname = \"sshd\"\npath = \"/var/log/auth.log\"\npattern = 'Failed .* from (\\S+)'\n",
            "4:11: detection.log_source[0].pattern: has no named group `addr` for the source address, such as `(?P<addr>\\S+)`",
        ),
        (
            "[[detection.log_source]]\nname = \"sshd\"\npath = \"/var/log/auth.log\"\npattern = 'from (?P<addr>\\S+'\n",
            "4:11: detection.log_source[0].pattern: is not a valid regular expression: unclosed group",
        ),
        (
            "[detection]\nallowlist = [\"192.0.2.10/32\", \"localhost\"]\n",
            "2:31: detection.allowlist[1]: `localhost` is not an IP address or prefix",
        ),
        (
            "[inspection]\ntls_min_version = \"1.4\"\n",
            "2:19: inspection.tls_min_version: `1.4` is not one of `1.0`, `1.1`, `1.2`, `1.3`",
        ),
        (
            "[inspection]\nsni_allow = [\"crm.*.com\"]\n",
            "2:14: inspection.sni_allow[0]: `crm.*.com` is not a host name such as `crm.example.com` or `*.crm.example.com`",
        ),
        (
            "[inspection]\nmax_flows = -1\n",
            "2:13: inspection.max_flows: -1 is out of range (1 to 4294967295)",
        ),
        (
            "[mfa]\nportal_port = 8443\n[[role]]\nname = \"sales\"\nallow = [\"tcp/443\", \"tcp/8443\"]\n",
            "5:21: role[0].allow[1]: `tcp/8443` is the MFA portal's port (`mfa.portal_port`), which every peer reaches; give the portal or the service another port",
        ),
        (
            "[mfa]\nissuer = \"ACME:CRM\"\n",
            "2:10: mfa.issuer: must not contain `:` or control characters (it is part of the otpauth:// label)",
        ),
        (
            "[audit]\non_write_failure = \"fail_closed\"\n",
            "2:20: audit.on_write_failure: `fail_closed` is not one of `fail-closed`, `fail-open`",
        ),
        (
            "[audit]\nrotate_size = \"1KiB\"\n",
            "2:15: audit.rotate_size: 1024 bytes is less than the smallest segment, 4KiB",
        ),
        (
            "[audit]\nrotate_size = \"big\"\n",
            "2:15: audit.rotate_size: is not a positive size such as \"2GiB\", \"500MB\" or a number of bytes",
        ),
        (
            "[audit]\nrotate_keep = 0\n",
            "2:15: audit.rotate_keep: 0 is out of range (1 to 4294967295)",
        ),
        (
            "[backup]\nkeep = 0\n",
            "2:8: backup.keep: 0 is out of range (1 to 4294967295)",
        ),
        (
            // The last character of a valid recipient changed: the bech32 checksum fails.
            "[backup]\nrecipient = \"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8q\"\n",
            "2:13: backup.recipient: `age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8q` \
             is not an age X25519 recipient (`age1` and 58 more characters, as `age-keygen` prints it)",
        ),
        (
            "[backup]\nrecipient = \"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"\n\
             passphrase_file = \"backup.pass\"\n",
            "3:19: backup.passphrase_file: age encrypts an archive to a recipient or to a passphrase, \
             not both; keep one of `recipient` and `passphrase_file`",
        ),
        (
            "[metrics]\nlisten = \"localhost:9184\"\n",
            "2:10: metrics.listen: `localhost:9184` is not an address and port such as `127.0.0.1:9184` or `[::1]:9184`",
        ),
        (
            "[alerts]\nwebhook = \"ftp://example.com/alerts\"\n",
            "2:11: alerts.webhook: `ftp://example.com/alerts` is not an http:// or https:// URL",
        ),
        (
            "[alerts]\nalertmanager = \"https://am.example.com\"\n",
            "2:16: alerts.alertmanager: `https://am.example.com`: crmguard speaks plain http to this service; run it on the host or behind a local relay, and give its http:// address",
        ),
        (
            "[crowdsec]\nurl = \"http://127.0.0.1:8080\"\nmachine_id = \"crm1\"\n",
            "3:14: crowdsec.password: `machine_id` needs `password` (the watcher's credentials)",
        ),
    ];
    for (src, expected) in cases {
        check(src, &[&format!("{FILE}:{expected}")]);
    }
}

#[test]
fn peer_errors_are_located() {
    let peer = |fields: &str| with_vpn(&format!("[[peer]]\n{fields}"));
    let alice = |rest: &str| {
        peer(&format!(
            "name = \"alice\"\npublic_key = \"{KEY_A}\"\naddress = \"10.77.0.10\"\nrole = \"sales\"\n{rest}"
        ))
    };
    // `with_vpn` takes 7 lines, so the first peer field is on line 9.
    let cases: &[(String, &str)] = &[
        (
            peer(&format!("name = \"alice\"\npublic_key = \"{KEY_A}\"\naddress = \"10.77.0.10\"\nrole = \"sails\"\n")),
            "12:8: peer[0].role: unknown role `sails`; the roles are `dba`, `sales`",
        ),
        (
            peer("name = \"alice\"\npublic_key = \"not-base64!\"\naddress = \"10.77.0.10\"\nrole = \"sales\"\n"),
            "10:14: peer[0].public_key: is not a WireGuard public key (32 bytes in base64, 44 characters ending in `=`)",
        ),
        (
            // All zeros: the neutral point, of order 1.
            peer("name = \"alice\"\npublic_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\naddress = \"10.77.0.10\"\nrole = \"sales\"\n"),
            "10:14: peer[0].public_key: is a low-order point of Curve25519: every handshake with it yields the same secret, so it cannot authenticate a device; make a new key pair",
        ),
        (
            peer("name = \"alice\"\npublic_key = \"AAAA\"\naddress = \"10.77.0.10\"\nrole = \"sales\"\n"),
            "10:14: peer[0].public_key: is not a WireGuard public key (32 bytes in base64, 44 characters ending in `=`)",
        ),
        (
            peer(&format!("name = \"alice\"\npublic_key = \"{KEY_A}\"\naddress = \"10.78.0.10\"\nrole = \"sales\"\n")),
            "11:11: peer[0].address: 10.78.0.10 is outside the tunnel subnet 10.77.0.0/24 (vpn.address)",
        ),
        (
            peer(&format!("name = \"alice\"\npublic_key = \"{KEY_A}\"\naddress = \"10.77.0.1\"\nrole = \"sales\"\n")),
            "11:11: peer[0].address: 10.77.0.1 is the gateway, network or broadcast address of 10.77.0.0/24",
        ),
        (
            peer(&format!("name = \"alice\"\npublic_key = \"{KEY_A}\"\naddress = \"10.77.0.x\"\nrole = \"sales\"\n")),
            "11:11: peer[0].address: `10.77.0.x` is not an IPv4 address such as `10.77.0.10`",
        ),
        (
            alice("address6 = \"fd78::10\"\n"),
            "13:12: peer[0].address6: fd78::10 is outside the tunnel subnet fd77::/64 (vpn.address6)",
        ),
        (
            alice("created = \"2026-02-30\"\n"),
            "13:11: peer[0].created: is not a date such as \"2026-11-01\"",
        ),
        (
            alice(&format!(
                "[[peer]]\nname = \"alice\"\npublic_key = \"{KEY_B}\"\naddress = \"10.77.0.11\"\nrole = \"dba\"\n"
            )),
            "14:8: peer[1].name: duplicate peer name `alice`; first defined at line 9",
        ),
        (
            alice(&format!(
                "[[peer]]\nname = \"bob\"\npublic_key = \"{KEY_A}\"\naddress = \"10.77.0.11\"\nrole = \"dba\"\n"
            )),
            "15:14: peer[1].public_key: duplicate public key; first defined at line 10",
        ),
        (
            alice(&format!(
                "[[peer]]\nname = \"bob\"\npublic_key = \"{KEY_B}\"\naddress = \"10.77.0.10\"\nrole = \"dba\"\n"
            )),
            "16:11: peer[1].address: duplicate peer address 10.77.0.10; first defined at line 11",
        ),
    ];
    for (src, expected) in cases {
        check(src, &[&format!("{FILE}:{expected}")]);
    }
    let without_address6 = format!(
        "[vpn]\n[[role]]\nname = \"sales\"\n[[peer]]\nname = \"alice\"\npublic_key = \"{KEY_A}\"\n\
         address = \"10.77.0.10\"\naddress6 = \"fd77::10\"\nrole = \"sales\"\n"
    );
    check(
        &without_address6,
        &[&format!(
            "{FILE}:8:12: peer[0].address6: vpn.address6 is not set, so peers have no IPv6 address"
        )],
    );
}

#[test]
fn peers_accept_toml_dates_and_defaults() {
    let config = parsed(&with_vpn(&format!(
        "[[peer]]\nname = \"alice\"\npublic_key = \"{KEY_A}\"\naddress = \"10.77.0.10\"\n\
         address6 = \"fd77::10\"\nrole = \"sales\"\ncreated = 2026-11-01\nenabled = false\n"
    )));
    let peer = config.peer("alice").cloned();
    let expected = Peer {
        name: "alice".into(),
        public_key: [
            0xc5, 0x32, 0x01, 0x03, 0x9a, 0xdb, 0xa1, 0x4b, 0xe7, 0x1f, 0x88, 0x6d, 0xa1, 0xd8,
            0xdb, 0xe9, 0xee, 0xbd, 0xed, 0x08, 0xcb, 0x11, 0x1b, 0x75, 0x34, 0x00, 0x78, 0x99,
            0x9a, 0xa9, 0xf0, 0x38,
        ],
        address: Ipv4Addr::new(10, 77, 0, 10),
        address6: Some(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x10)),
        role: "sales".into(),
        created: Date::new(2026, 11, 1),
        enabled: false,
    };
    assert_eq!(peer, Some(expected));
}

/// Problems in different sections are all reported, in the order of the file.
#[test]
fn reports_all_problems_at_once() {
    let src = with_vpn(&format!(
        "[agent]\nmode = \"on\"\n\
         [[peer]]\nname = \"alice\"\npublic_key = \"{KEY_A}\"\naddress = \"10.99.0.10\"\nrole = \"ghost\"\n\
         [mfa]\nidle = \"soon\"\n"
    ));
    check(
        &src,
        &[
            "/etc/crmguard/crmguard.toml:9:8: agent.mode: `on` is not one of `enforce`, `monitor`",
            "/etc/crmguard/crmguard.toml:13:11: peer[0].address: 10.99.0.10 is outside the tunnel subnet 10.77.0.0/24 (vpn.address)",
            "/etc/crmguard/crmguard.toml:14:8: peer[0].role: unknown role `ghost`; the roles are `dba`, `sales`",
            "/etc/crmguard/crmguard.toml:16:8: mfa.idle: `soon` does not start with a whole number; write for example `30m`",
        ],
    );
}

#[test]
fn relative_paths_follow_the_config_file() {
    let config = match parse(
        "[agent]\nstate_dir = \"state\"\n[firewall.deny]\nfiles = [\"deny.txt\", \"/abs/deny.txt\"]\n",
        Path::new("/etc/crmguard/crmguard.toml"),
    ) {
        Ok(config) => config,
        Err(errors) => panic!("{errors}"),
    };
    assert_eq!(config.agent.state_dir, PathBuf::from("/etc/crmguard/state"));
    assert_eq!(
        config.firewall.deny_files,
        [
            PathBuf::from("/etc/crmguard/deny.txt"),
            PathBuf::from("/abs/deny.txt")
        ]
    );
}

#[test]
fn dates() {
    for (text, expected) in [
        ("2026-11-01", Some((2026, 11, 1, 20_758))),
        ("1970-01-01", Some((1970, 1, 1, 0))),
        ("2024-02-29", Some((2024, 2, 29, 19_782))),
        ("2023-02-29", None),
        ("2100-02-29", None),
        ("1969-12-31", None),
        ("2026-1-01", None),
        ("2026-13-01", None),
        ("2026-11-01T00:00", None),
        ("+026-11-01", None),
    ] {
        let actual = Date::parse(text).map(|d| (d.year, d.month, d.day, d.days_since_unix_epoch()));
        assert_eq!(actual, expected, "{text}");
    }
    assert_eq!(
        Date::new(2026, 3, 9).map(|d| d.to_string()),
        Some("2026-03-09".into())
    );
}

mod files {
    //! `load`: the configuration file together with its deny files and peers file.

    use super::*;

    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn new() -> Dir {
            Dir {
                dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.path(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {name}: {e}"));
            path
        }

        /// Loads `crmguard.toml` and returns its errors with the directory written as `DIR`.
        fn errors(&self) -> Vec<String> {
            let dir = self.dir.path().display().to_string();
            rendered(load(&self.path("crmguard.toml")))
                .into_iter()
                .map(|e| e.replace(&dir, "DIR"))
                .collect()
        }

        fn load(&self) -> Config {
            load(&self.path("crmguard.toml")).unwrap_or_else(|e| panic!("{e}"))
        }
    }

    #[test]
    fn example_loads() {
        let dir = Dir::new();
        let path = dir.write("crmguard.toml", EXAMPLE);
        // The policy tests name the file they are written in.
        let expected = parse(EXAMPLE, &path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dir.load(), expected);
    }

    #[test]
    fn unreadable_config_names_the_file() {
        let dir = Dir::new();
        assert_eq!(
            dir.errors(),
            ["DIR/crmguard.toml: cannot read: No such file or directory (os error 2)"]
        );
    }

    #[test]
    fn deny_files_are_read() {
        let dir = Dir::new();
        dir.write(
            "deny.txt",
            "# known scanners\n\n203.0.113.7\n  198.51.100.0/24   # a whole network\n2001:db8:bad::/48\n",
        );
        dir.write(
            "crmguard.toml",
            "[firewall.deny]\nsources = [\"198.51.100.0/24\"]\nfiles = [\"deny.txt\"]\n",
        );
        let config = dir.load();
        let deny: Vec<(String, String)> = config
            .firewall
            .deny
            .iter()
            .map(|d| {
                let origin = d
                    .origin
                    .replace(&dir.dir.path().display().to_string(), "DIR");
                (d.net.to_string(), origin)
            })
            .collect();
        let expected = [
            ("198.51.100.0/24", "firewall.deny.sources"),
            ("203.0.113.7/32", "DIR/deny.txt:3"),
            ("2001:db8:bad::/48", "DIR/deny.txt:5"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(net, origin)| (net.to_string(), origin.to_string()))
            .collect();
        assert_eq!(deny, expected);
    }

    #[test]
    fn deny_file_errors_name_the_deny_file_and_line() {
        let dir = Dir::new();
        dir.write(
            "deny.txt",
            "203.0.113.7\n# comment\n  203.0.113.300\n10.0.0.1 10.0.0.2\n10.0.0.0/8\n",
        );
        dir.write(
            "crmguard.toml",
            "[firewall.deny]\nfiles = [\n  \"deny.txt\",\n  \"missing.txt\",\n]\n",
        );
        assert_eq!(
            dir.errors(),
            [
                "DIR/deny.txt:3:3: firewall.deny.files[0]: `203.0.113.300` is not an IP address or prefix",
                "DIR/deny.txt:4:1: firewall.deny.files[0]: `10.0.0.1 10.0.0.2` is not one address or prefix; write one per line",
                "DIR/crmguard.toml:4:3: firewall.deny.files[1]: cannot read deny file DIR/missing.txt: No such file or directory (os error 2)",
            ]
        );
    }

    fn config_with_peers_file(inline_peers: &str) -> String {
        format!(
            "[vpn]\naddress = \"10.77.0.1/24\"\npeers_file = \"peers.toml\"\n\
             [[role]]\nname = \"sales\"\n{inline_peers}"
        )
    }

    #[test]
    fn peers_file_is_merged_after_inline_peers() {
        let dir = Dir::new();
        dir.write(
            "crmguard.toml",
            &config_with_peers_file(&format!(
                "[[peer]]\nname = \"alice\"\npublic_key = \"{KEY_A}\"\naddress = \"10.77.0.10\"\nrole = \"sales\"\n"
            )),
        );
        dir.write(
            "peers.toml",
            &format!(
                "[[peer]]\nname = \"bob\"\npublic_key = \"{KEY_B}\"\naddress = \"10.77.0.11\"\nrole = \"sales\"\ncreated = \"2026-11-02\"\n"
            ),
        );
        let names: Vec<String> = dir.load().peers.into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["alice", "bob"]);
    }

    #[test]
    fn missing_peers_file_means_no_peers_yet() {
        let dir = Dir::new();
        dir.write("crmguard.toml", &config_with_peers_file(""));
        assert!(dir.load().peers.is_empty());
    }

    #[test]
    fn peers_file_errors_name_the_peers_file() {
        let dir = Dir::new();
        dir.write(
            "crmguard.toml",
            &config_with_peers_file(&format!(
                "[[peer]]\nname = \"alice\"\npublic_key = \"{KEY_A}\"\naddress = \"10.77.0.10\"\nrole = \"sales\"\n"
            )),
        );
        dir.write(
            "peers.toml",
            &format!(
                "[[peer]]\nname = \"alice\"\npublic_key = \"{KEY_B}\"\naddress = \"10.77.0.11\"\nrole = \"sales\"\n\
                 [[peer]]\nname = \"carol\"\npublic_key = \"{KEY_A}\"\naddress = \"10.77.0.10\"\nrole = \"dba\"\n"
            ),
        );
        assert_eq!(
            dir.errors(),
            [
                "DIR/peers.toml:2:8: peer[0].name: duplicate peer name `alice`; first defined at DIR/crmguard.toml:7",
                "DIR/peers.toml:8:14: peer[1].public_key: duplicate public key; first defined at DIR/crmguard.toml:8",
                "DIR/peers.toml:9:11: peer[1].address: duplicate peer address 10.77.0.10; first defined at DIR/crmguard.toml:9",
                "DIR/peers.toml:10:8: peer[1].role: unknown role `dba`; the roles are `sales`",
            ]
        );
        dir.write("peers.toml", "[[peer]]\nname = \"bob\"\nkey = \"x\"\n");
        assert_eq!(
            dir.errors(),
            [
                "DIR/peers.toml:3:1: peer[0].key: unknown field `key`, expected one of \
              `name`, `public_key`, `address`, `address6`, `role`, `created`, `enabled`"
            ]
        );
    }

    #[test]
    fn errors_of_all_files_are_reported_together() {
        let dir = Dir::new();
        dir.write("deny.txt", "bogus\n");
        dir.write("peers.toml", "[[peer]]\nname = \"bob\"\n");
        dir.write(
            "crmguard.toml",
            "[agent]\nmode = \"off\"\n[firewall.deny]\nfiles = [\"deny.txt\"]\n\
             [vpn]\npeers_file = \"peers.toml\"\n",
        );
        assert_eq!(
            dir.errors(),
            [
                "DIR/crmguard.toml:2:8: agent.mode: `off` is not one of `enforce`, `monitor`",
                "DIR/deny.txt:1:1: firewall.deny.files[0]: `bogus` is not an IP address or prefix",
                "DIR/peers.toml:1:1: peer[0]: missing field `public_key`",
            ]
        );
    }
}

#[test]
fn backup_encryption_is_a_recipient_or_a_passphrase_file() {
    let recipient = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    let config = parsed(&format!(
        "[backup]\nrecipient = \"{recipient}\"\nevery = \"2s\"\n"
    ));
    assert_eq!(
        config.backup.encryption,
        Some(BackupEncryption::Recipient(recipient.to_owned()))
    );
    assert_eq!(config.backup.every, Duration::from_secs(2));
    let config = parsed("[backup]\npassphrase_file = \"backup.pass\"\n");
    assert_eq!(
        config.backup.encryption,
        Some(BackupEncryption::PassphraseFile(
            "/etc/crmguard/backup.pass".into()
        ))
    );
}

/// A control character in a comment is a syntax error whose message says so: `toml` reports
/// it with an empty message, which left `crmguard check` printing a location and nothing
/// else (found by the `config` fuzz target).
#[test]
fn a_control_character_in_a_comment_is_named() {
    let errors = match parse(
        "[agent]\n# a\0comment\nmode = \"enforce\"\n",
        Path::new("/c.toml"),
    ) {
        Ok(_) => panic!("a NUL in a comment was accepted"),
        Err(errors) => errors,
    };
    assert_eq!(
        errors.to_string(),
        "/c.toml:2:4: agent: invalid control character U+0000 (only tab is allowed in TOML text)"
    );
}
