//! The peers file as a document: its `[[peer]]` tables, read from and written back to TOML.
//!
//! crmguard rewrites the whole file on every change, so comments and layout written by hand are
//! not kept; the header of the written file says so. The entries keep their order. A missing
//! file is an empty one: no peer has been added yet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::Path;

use base64::Engine as _;

use super::{valid_peer_name, ProvisionError};
use crate::config::{
    ConfigError, ConfigErrors, Date, Peer, RawPeer, RawPeersFile, Source, MAX_NAME_LEN,
};
use crate::keys;

/// The first lines of a peers file written by crmguard.
const HEADER: &str = "\
# crmguard peers file, managed by `crmguard peer add|remove|enable|disable`.
# `crmguard reload` reads changes made by hand, but the next `crmguard peer` command
# rewrites this file without comments.
";

/// The peers of the peers file, in file order. Names are unique within the file.
///
/// Two documents are equal when they hold the same peers in the same order.
#[derive(Debug, Clone, Default)]
pub struct PeersFile {
    pub(super) peers: Vec<Peer>,
    /// Every name this document has held since it was read, including peers removed since:
    /// a configured peer whose name is not here is an inline peer (see `edit`).
    pub(super) known: BTreeSet<String>,
}

impl PartialEq for PeersFile {
    fn eq(&self, other: &Self) -> bool {
        self.peers == other.peers
    }
}

impl Eq for PeersFile {}

impl PeersFile {
    /// A document holding `peers`, as if read from a file.
    pub(super) fn from_peers(peers: Vec<Peer>) -> PeersFile {
        let known = peers.iter().map(|peer| peer.name.clone()).collect();
        PeersFile { peers, known }
    }

    /// Reads the peers file at `path`; a file that does not exist holds no peers.
    pub fn load(path: &Path) -> Result<PeersFile, ProvisionError> {
        match std::fs::read_to_string(path) {
            Ok(text) => PeersFile::parse(&text, path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(PeersFile::default()),
            Err(source) => Err(ProvisionError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses peers-file text as if it had been read from `file`, which names it in errors.
    ///
    /// This refuses what would make editing unsafe: TOML or schema errors, malformed names,
    /// keys, addresses and dates, and two entries with one name. Roles, the tunnel subnets and
    /// duplicate keys or addresses are left to the configuration loader, which checks them on
    /// every load.
    pub fn parse(text: &str, file: &Path) -> Result<PeersFile, ProvisionError> {
        let src = Source::new(file, text);
        let raw = match src.deserialize_tables::<RawPeer>("peer") {
            Some(peer) => RawPeersFile { peer },
            None => src.deserialize().map_err(|e| invalid(vec![e]))?,
        };
        let mut check = Check {
            src,
            errors: Vec::new(),
        };
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut peers = Vec::new();
        for (i, raw) in raw.peer.into_iter().enumerate() {
            let key = format!("peer[{i}]");
            if let Some(peer) = check.peer(&raw, &key) {
                // The offset, turned into a line only for a duplicate: placing every name
                // would index the lines of the whole file on every load.
                if let Some(first) = seen.insert(peer.name.clone(), raw.name.span().start) {
                    let first = check.src.position(first).0;
                    check.fail(
                        &raw.name.span(),
                        &format!("{key}.name"),
                        format!(
                            "duplicate peer name `{}`; first defined at line {first}",
                            peer.name
                        ),
                    );
                    continue;
                }
                peers.push(peer);
            }
        }
        if check.errors.is_empty() {
            Ok(PeersFile::from_peers(peers))
        } else {
            Err(invalid(check.errors))
        }
    }

    /// The peers, in file order.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The peer named `name`, if the file holds it.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|peer| peer.name == name)
    }

    /// The file's text: a header comment, then one `[[peer]]` table per peer. `enabled` is
    /// always written, so that an operator reading the file sees the state of every peer;
    /// `created` and `address6` are written when the peer has them.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(HEADER);
        for peer in &self.peers {
            out.push_str("\n[[peer]]\n");
            out.push_str(&format!("name = {}\n", quote(&peer.name)));
            out.push_str(&format!(
                "public_key = {}\n",
                quote(&keys::encode(&peer.public_key))
            ));
            out.push_str(&format!("address = \"{}\"\n", peer.address));
            if let Some(address6) = peer.address6 {
                out.push_str(&format!("address6 = \"{address6}\"\n"));
            }
            out.push_str(&format!("role = {}\n", quote(&peer.role)));
            if let Some(created) = peer.created {
                out.push_str(&format!("created = \"{created}\"\n"));
            }
            out.push_str(&format!("enabled = {}\n", peer.enabled));
        }
        out
    }

    /// Writes the file to `path` atomically with mode 0600 (see [`crate::atomic_file`]),
    /// creating its directory (mode 0700) when it is missing.
    pub fn save(&self, path: &Path) -> Result<(), ProvisionError> {
        crate::atomic_file::write(path, self.to_toml().as_bytes()).map_err(|source| {
            ProvisionError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }
}

/// Collects the problems of one peers file.
struct Check<'a> {
    src: Source<'a>,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    fn fail(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        self.errors.push(self.src.error(span, key, message.into()));
    }

    /// One entry, or `None` after reporting each of its problems.
    fn peer(&mut self, raw: &RawPeer, key: &str) -> Option<Peer> {
        let name = raw.name.get_ref();
        let name_ok = valid_peer_name(name);
        if !name_ok {
            self.fail(
                &raw.name.span(),
                &format!("{key}.name"),
                format!("`{name}` is not a name of 1 to {MAX_NAME_LEN} characters from A-Z, a-z, 0-9, `.`, `_` and `-`"),
            );
        }
        // The configuration loader decodes keys without trimming; so does this.
        let public_key = base64::engine::general_purpose::STANDARD
            .decode(raw.public_key.get_ref())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
        if public_key.is_none() {
            self.fail(
                &raw.public_key.span(),
                &format!("{key}.public_key"),
                "is not a WireGuard public key (32 bytes in base64, 44 characters ending in `=`)",
            );
        }
        let address = raw.address.get_ref().parse::<Ipv4Addr>().ok();
        if address.is_none() {
            self.fail(
                &raw.address.span(),
                &format!("{key}.address"),
                format!(
                    "`{}` is not an IPv4 address such as `10.77.0.10`",
                    raw.address.get_ref()
                ),
            );
        }
        // `Some(None)` is a peer without an IPv6 address, `None` one whose address is invalid.
        let address6 = match &raw.address6 {
            None => Some(None),
            Some(text) => match text.get_ref().parse::<Ipv6Addr>() {
                Ok(addr) => Some(Some(addr)),
                Err(_) => {
                    self.fail(
                        &text.span(),
                        &format!("{key}.address6"),
                        format!(
                            "`{}` is not an IPv6 address such as `fd77::10`",
                            text.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let created = match &raw.created {
            None => Some(None),
            Some(value) => match parse_date(value.get_ref()) {
                Some(date) => Some(Some(date)),
                None => {
                    self.fail(
                        &value.span(),
                        &format!("{key}.created"),
                        "is not a date such as \"2026-11-01\"",
                    );
                    None
                }
            },
        };
        let (true, Some(public_key), Some(address), Some(address6), Some(created)) =
            (name_ok, public_key, address, address6, created)
        else {
            return None;
        };
        Some(Peer {
            name: name.clone(),
            public_key,
            address,
            address6,
            role: raw.role.get_ref().clone(),
            created,
            enabled: raw.enabled.unwrap_or(true),
        })
    }
}

fn invalid(errors: Vec<ConfigError>) -> ProvisionError {
    ProvisionError::Invalid {
        source: ConfigErrors(errors),
    }
}

/// `created` as the configuration loader reads it: a `YYYY-MM-DD` string or a TOML date.
fn parse_date(value: &toml::Value) -> Option<Date> {
    match value {
        toml::Value::String(text) => Date::parse(text),
        toml::Value::Datetime(datetime) if datetime.time.is_none() => datetime
            .date
            .and_then(|d| Date::new(d.year, d.month, d.day)),
        _ => None,
    }
}

/// `text` as a TOML basic string.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const KEY_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const KEY_B: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn parse(text: &str) -> Result<PeersFile, Vec<String>> {
        PeersFile::parse(text, Path::new("peers.toml")).map_err(|err| match err {
            ProvisionError::Invalid { source } => {
                source.0.iter().map(ToString::to_string).collect()
            }
            other => vec![other.to_string()],
        })
    }

    fn sample() -> PeersFile {
        PeersFile::from_peers(vec![
            Peer {
                name: "alice".into(),
                public_key: keys::decode(KEY_A).expect("key"),
                address: Ipv4Addr::new(10, 77, 0, 2),
                address6: Some("fd77::2".parse().expect("addr")),
                role: "sales".into(),
                created: Date::new(2026, 11, 1),
                enabled: true,
            },
            Peer {
                name: "bob".into(),
                public_key: keys::decode(KEY_B).expect("key"),
                address: Ipv4Addr::new(10, 77, 0, 3),
                address6: None,
                role: "odd \"role\"\\\n".into(),
                created: None,
                enabled: false,
            },
        ])
    }

    #[test]
    fn writes_peer_tables_after_a_header() {
        let expected = format!(
            "{HEADER}
[[peer]]
name = \"alice\"
public_key = \"{KEY_A}\"
address = \"10.77.0.2\"
address6 = \"fd77::2\"
role = \"sales\"
created = \"2026-11-01\"
enabled = true

[[peer]]
name = \"bob\"
public_key = \"{KEY_B}\"
address = \"10.77.0.3\"
role = \"odd \\\"role\\\"\\\\\\n\"
enabled = false
"
        );
        assert_eq!(sample().to_toml(), expected);
        assert_eq!(PeersFile::default().to_toml(), HEADER);
    }

    #[test]
    fn reads_back_what_it_writes() {
        let file = sample();
        assert_eq!(parse(&file.to_toml()), Ok(file));
        assert_eq!(parse(HEADER), Ok(PeersFile::default()));
    }

    #[test]
    fn reads_what_the_configuration_loader_reads() {
        let text = format!(
            "[[peer]]\nname = \"carol\"\npublic_key = \"{KEY_A}\"\naddress = \"10.77.0.9\"\n\
             role = \"dba\"\ncreated = 2026-01-31\n"
        );
        let file = parse(&text).expect("valid");
        let carol = file.peer("carol").expect("carol");
        assert_eq!(carol.created, Date::new(2026, 1, 31));
        assert!(carol.enabled);
        assert_eq!(carol.address6, None);
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let text = format!(
            "[[peer]]\nname = \"bad name\"\npublic_key = \"short\"\naddress = \"10.77.0.300\"\n\
             address6 = \"fd77::zz\"\nrole = \"sales\"\ncreated = \"2026-02-30\"\n\
             [[peer]]\nname = \"dup\"\npublic_key = \"{KEY_A}\"\naddress = \"10.77.0.2\"\nrole = \"sales\"\n\
             [[peer]]\nname = \"dup\"\npublic_key = \"{KEY_B}\"\naddress = \"10.77.0.3\"\nrole = \"sales\"\n"
        );
        assert_eq!(
            parse(&text),
            Err(vec![
                "peers.toml:2:8: peer[0].name: `bad name` is not a name of 1 to 64 characters from A-Z, a-z, 0-9, `.`, `_` and `-`".to_owned(),
                "peers.toml:3:14: peer[0].public_key: is not a WireGuard public key (32 bytes in base64, 44 characters ending in `=`)".to_owned(),
                "peers.toml:4:11: peer[0].address: `10.77.0.300` is not an IPv4 address such as `10.77.0.10`".to_owned(),
                "peers.toml:5:12: peer[0].address6: `fd77::zz` is not an IPv6 address such as `fd77::10`".to_owned(),
                "peers.toml:7:11: peer[0].created: is not a date such as \"2026-11-01\"".to_owned(),
                "peers.toml:14:8: peer[2].name: duplicate peer name `dup`; first defined at line 9".to_owned(),
            ])
        );
        assert_eq!(
            parse("[[peer]]\nname = \"bob\"\nkey = \"x\"\n"),
            Err(vec![
                "peers.toml:3:1: peer[0].key: unknown field `key`, expected one of `name`, `public_key`, \
                 `address`, `address6`, `role`, `created`, `enabled`"
                    .to_owned()
            ])
        );
        let syntax = parse("[[peer]\n").expect_err("syntax error");
        assert!(syntax[0].starts_with("peers.toml:1:"), "{syntax:?}");
    }

    #[test]
    fn a_missing_file_is_empty_and_saving_creates_it_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("peers.toml");
        assert_eq!(
            PeersFile::load(&path).expect("missing"),
            PeersFile::default()
        );
        let file = sample();
        file.save(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(PeersFile::load(&path).expect("load"), file);
        std::fs::write(&path, "[[peer]]\nname = 1\n").expect("write");
        let err = PeersFile::load(&path).expect_err("invalid");
        assert!(matches!(err, ProvisionError::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn quotes_toml_strings() {
        assert_eq!(quote("a"), "\"a\"");
        assert_eq!(quote("a\u{7}b\u{7f}"), "\"a\\u0007b\\u007F\"");
        let text = format!("x = {}", quote("q\"\\\t\r\n\u{1}é"));
        let value: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert_eq!(
            value.get("x").and_then(toml::Value::as_str),
            Some("q\"\\\t\r\n\u{1}é")
        );
    }
}
