//! `crmguard peer add | list | remove | disable | enable`.
//!
//! With the agent running, the change goes through its control socket: the agent edits
//! `peers_file`, applies it and audits it before answering, so a removed or disabled peer is
//! cut when the command returns. With the agent stopped, the command edits the file itself
//! and writes the audit record; the agent applies the file when it starts.
//!
//! A key generated here never leaves this process except in the client configuration printed
//! once: the agent and the peers file only see the public key.

use crmguard_core::time::unix_now;
use std::collections::HashMap;
use std::time::SystemTime;

use clap::Subcommand;

use crmguard::access::listing::{self, PeerListing};
use crmguard::control::{self, Request, Response};
use crmguard::daemon::ConfigSource;
use crmguard::handout::{self, ClientHandout};
use crmguard::i18n::Lang;
use crmguard_core::audit::{self, Event, EventType, Outcome};
use crmguard_core::config::Config;
use crmguard_core::error_chain;
use crmguard_core::exit;
use crmguard_core::keys::{self, KeyPair};
use crmguard_core::mfa::store;
use crmguard_core::provision::{self, ClientParams, PeersFile, ProvisionError};

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Register the peer NAME (one person's device) with ROLE, or give an existing peer of
    /// the peers file a new key
    ///
    /// The peer gets the next free tunnel address and `created` = today, which starts
    /// `vpn.key_max_age`. Without --public-key a key pair is generated and the client's
    /// WireGuard configuration is printed once, with a QR code for the mobile apps; crmguard
    /// keeps only the public key. Exit 64 when refused (unknown role, key in use, invalid
    /// name), 1 when the change could not be saved or applied.
    Add {
        #[arg(value_name = "NAME")]
        name: String,
        /// A role of the configuration
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// The device's WireGuard public key (base64), when it made its own key pair
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
        /// How clients reach this gateway, for the printed configuration [default: this
        /// host's name]
        #[arg(long, value_name = "HOST", value_parser = parse_endpoint_host)]
        endpoint: Option<String>,
        /// The language of the instructions printed for the device's user, en or ru
        /// [default: from LC_ALL, LC_MESSAGES or LANG; else en]
        #[arg(long, value_name = "LANG")]
        lang: Option<Lang>,
    },
    /// List every peer: role, address, key age and expiry, last handshake, MFA state
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Remove the peer NAME from the peers file; its tunnel is cut at once
    Remove {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Disable the peer NAME; its tunnel and MFA session end at once
    Disable {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Enable the peer NAME again
    Enable {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

/// Runs one `peer` command as `actor` (`admin:<unix user>`); `locale` is the language of the
/// administrator's environment, for staff-facing text when `--lang` is not given.
pub fn run(
    config: &Config,
    source: &ConfigSource,
    command: PeerCommand,
    actor: &str,
    locale: Lang,
) -> u8 {
    match command {
        PeerCommand::Add {
            name,
            role,
            public_key,
            endpoint,
            lang,
        } => add(
            config,
            source,
            &New {
                name: &name,
                role: &role,
                public_key: public_key.as_deref(),
                endpoint,
                lang: lang.unwrap_or(locale),
            },
            actor,
        ),
        PeerCommand::List { json } => list(config, json),
        PeerCommand::Remove { name } => change(config, source, Change::Remove, &name, actor),
        PeerCommand::Disable { name } => {
            change(config, source, Change::Enabled(false), &name, actor)
        }
        PeerCommand::Enable { name } => change(config, source, Change::Enabled(true), &name, actor),
    }
}

/// What `remove`, `disable` and `enable` do.
#[derive(Debug, Clone, Copy)]
enum Change {
    Remove,
    Enabled(bool),
}

/// What `peer add` was asked to do.
struct New<'a> {
    name: &'a str,
    role: &'a str,
    public_key: Option<&'a str>,
    endpoint: Option<String>,
    /// The language of the handout for the device's user.
    lang: Lang,
}

fn add(config: &Config, source: &ConfigSource, new: &New<'_>, actor: &str) -> u8 {
    let New {
        name,
        role,
        public_key,
        ..
    } = *new;
    let Some(vpn) = &config.vpn else {
        eprintln!("crmguard: {}", ProvisionError::NoVpn);
        return exit::USAGE;
    };
    let (public, private) = match public_key {
        Some(text) => match keys::decode(text) {
            Some(key) => (key, None),
            None => {
                eprintln!("crmguard: --public-key is not 44 characters of base64 holding 32 bytes");
                return exit::USAGE;
            }
        },
        None => match keys::fresh_private_key() {
            Ok(private) => {
                let pair = KeyPair::from_private(private);
                (*pair.public.as_bytes(), Some(private))
            }
            Err(e) => {
                eprintln!("crmguard: cannot generate a key: {e}");
                return exit::FAILURE;
            }
        },
    };
    let request = Request::PeerAdd {
        name: name.to_owned(),
        role: role.to_owned(),
        public_key: keys::encode(&public),
        by: actor.to_owned(),
    };
    let offline = || -> Result<bool, ProvisionError> {
        let mut file = PeersFile::load(&vpn.peers_file)?;
        let today =
            crmguard_core::time::utc_date(SystemTime::now()).ok_or(ProvisionError::Clock)?;
        let added = file.add(config, name, role, public, today)?;
        file.save(&vpn.peers_file)?;
        Ok(added.replaced)
    };
    let code = apply(config, source, request, offline, |replaced| {
        Event::new(EventType::PeerAdded, Outcome::Success, actor)
            .with_detail("peer", name)
            .with_detail("role", role)
            .with_detail("rekeyed", replaced)
    });
    if code != exit::OK {
        return code;
    }
    let Some(private) = private else {
        return exit::OK;
    };
    let config = match reread(source) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let (Some(peer), Some(vpn)) = (config.peer(name), &config.vpn) else {
        eprintln!("crmguard: peer `{name}` is not in the configuration after adding it");
        return exit::FAILURE;
    };
    let gateway = match keys::load_or_create(&vpn.private_key_file) {
        Ok((pair, _)) => pair,
        Err(e) => {
            eprintln!("crmguard: {}", error_chain(&e));
            return exit::FAILURE;
        }
    };
    let host = new.endpoint.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    });
    let text = provision::client_config(&ClientParams {
        peer,
        private_key: &private,
        gateway: &gateway,
        vpn,
        endpoint_host: &host,
    });
    let qr = provision::qr_terminal(&text)
        .map_err(|e| eprintln!("crmguard: {e}; use the text below"))
        .ok();
    let mfa_portal = config
        .role(&peer.role)
        .filter(|role| role.mfa)
        .and_then(|_| handout::portal_url(&config));
    print!(
        "{}",
        handout::client(
            new.lang,
            &ClientHandout {
                peer: name,
                config: &text,
                qr: qr.as_deref(),
                mfa_portal: mfa_portal.as_deref(),
            },
        )
    );
    println!(
        "This is the only copy of {name}'s private key: give the configuration to the user now; crmguard keeps only the public key."
    );
    exit::OK
}

fn change(config: &Config, source: &ConfigSource, change: Change, name: &str, actor: &str) -> u8 {
    let Some(vpn) = &config.vpn else {
        eprintln!("crmguard: {}", ProvisionError::NoVpn);
        return exit::USAGE;
    };
    let request = match change {
        Change::Remove => Request::PeerRemove {
            name: name.to_owned(),
            by: actor.to_owned(),
        },
        Change::Enabled(enabled) => Request::PeerSetEnabled {
            name: name.to_owned(),
            enabled,
            by: actor.to_owned(),
        },
    };
    let offline = || -> Result<bool, ProvisionError> {
        let mut file = PeersFile::load(&vpn.peers_file)?;
        match change {
            Change::Remove => {
                file.remove(config, name)?;
            }
            Change::Enabled(true) => {
                file.enable(config, name)?;
                // Counts as activity for vpn.disable_inactive_after when the agent starts.
                let state_dir = &config.agent.state_dir;
                let mut enabled_at = provision::load_enabled_at(state_dir);
                provision::record_enabled(state_dir, &mut enabled_at, &[name], unix_now())
                    .map_err(|source| ProvisionError::Write {
                        path: state_dir.join("peers-enabled.json"),
                        source,
                    })?;
            }
            Change::Enabled(false) => {
                file.disable(config, name)?;
            }
        }
        file.save(&vpn.peers_file)?;
        if let Change::Remove = change {
            // A device given the name later enrolls anew.
            if let Err(e) = crmguard_core::mfa::secrets::remove(&config.agent.state_dir, name) {
                eprintln!("crmguard: {}", error_chain(&e));
            }
        }
        Ok(false)
    };
    apply(config, source, request, offline, |_| {
        let (kind, extra) = match change {
            Change::Remove => (EventType::PeerRemoved, None),
            Change::Enabled(false) => (EventType::PeerDisabled, Some(("reason", "administrator"))),
            Change::Enabled(true) => (EventType::PeerEnabled, None),
        };
        let event = Event::new(kind, Outcome::Success, actor).with_detail("peer", name);
        match extra {
            Some((key, value)) => event.with_detail(key, value),
            None => event,
        }
    })
}

/// Sends `request` to the agent; when no agent runs, does `offline` to the peers file and
/// writes the audit record made by `event` from its result.
fn apply(
    config: &Config,
    source: &ConfigSource,
    request: Request,
    offline: impl FnOnce() -> Result<bool, ProvisionError>,
    event: impl FnOnce(bool) -> Event,
) -> u8 {
    match control::call(&config.agent.control_socket, &request) {
        Ok(Response::Peer {
            peer,
            replaced,
            error,
        }) => {
            print_change(&request, &peer, replaced);
            match error {
                Some(message) => {
                    eprintln!("crmguard: the peers file is saved, but the agent could not apply it:\n{message}");
                    exit::FAILURE
                }
                None => exit::OK,
            }
        }
        Ok(Response::Refused { message }) => {
            eprintln!("crmguard: {message}");
            exit::USAGE
        }
        Ok(Response::Error { message }) => {
            eprintln!("crmguard: {message}");
            exit::FAILURE
        }
        Ok(other) => {
            eprintln!("crmguard: unexpected answer from the agent: {other:?}");
            exit::FAILURE
        }
        Err(e) if e.is_agent_down() => match offline() {
            Ok(replaced) => {
                let mut sink = audit::Sink::open(&config.audit, &config.agent.state_dir);
                sink.record(&event(replaced));
                let config = match reread(source) {
                    Ok(config) => config,
                    Err(code) => return code,
                };
                let name = request_name(&request);
                let listing = listing_of(&config, name, HashMap::new());
                match listing {
                    Some(peer) => print_change(&request, &peer, replaced),
                    None => println!("removed {name}"),
                }
                println!("the agent is not running; the change takes effect when it starts");
                exit::OK
            }
            Err(e @ (ProvisionError::Read { .. } | ProvisionError::Write { .. })) => {
                eprintln!("crmguard: {}", error_chain(&e));
                exit::FAILURE
            }
            Err(e) => {
                eprintln!("crmguard: {}", error_chain(&e));
                exit::USAGE
            }
        },
        Err(e) => {
            eprintln!("crmguard: {}", error_chain(&e));
            exit::FAILURE
        }
    }
}

fn request_name(request: &Request) -> &str {
    match request {
        Request::PeerAdd { name, .. }
        | Request::PeerRemove { name, .. }
        | Request::PeerSetEnabled { name, .. } => name,
        _ => "",
    }
}

fn print_change(request: &Request, peer: &PeerListing, replaced: bool) {
    match request {
        Request::PeerAdd { .. } if replaced => println!(
            "re-keyed {} (role {}, address {}); its old key no longer works",
            peer.name, peer.role, peer.address
        ),
        Request::PeerAdd { .. } => {
            println!(
                "added {} (role {}, address {})",
                peer.name, peer.role, peer.address
            )
        }
        Request::PeerRemove { .. } => println!("removed {}", peer.name),
        Request::PeerSetEnabled { enabled: true, .. } => println!("enabled {}", peer.name),
        Request::PeerSetEnabled { enabled: false, .. } => println!("disabled {}", peer.name),
        _ => {}
    }
}

/// The configuration as it is now on disk (the peers file changed).
fn reread(source: &ConfigSource) -> Result<Config, u8> {
    source.load().map_err(|errors| {
        eprintln!("{errors}");
        exit::USAGE
    })
}

/// One peer's listing computed from the files, for when no agent runs.
fn listing_of(
    config: &Config,
    name: &str,
    handshakes: HashMap<String, u64>,
) -> Option<PeerListing> {
    offline_listing(config, handshakes)
        .into_iter()
        .find(|p| p.name == name)
}

fn offline_listing(config: &Config, handshakes: HashMap<String, u64>) -> Vec<PeerListing> {
    let state_dir = &config.agent.state_dir;
    let mut sessions = store::load_sessions(state_dir, (&config.mfa).into())
        .unwrap_or_else(|_| crmguard_core::mfa::sessions::Sessions::new((&config.mfa).into()));
    for peer in &config.peers {
        if let Ok(Some(secret)) = crmguard_core::mfa::secrets::load(state_dir, &peer.name) {
            sessions.set_secret(&peer.name, secret);
        }
    }
    listing::list(config, None, &sessions, &handshakes, SystemTime::now())
}

fn list(config: &Config, json: bool) -> u8 {
    let peers = match control::call(&config.agent.control_socket, &Request::PeerList) {
        Ok(Response::Peers { peers }) => peers,
        Ok(other) => {
            eprintln!("crmguard: unexpected answer from the agent: {other:?}");
            return exit::FAILURE;
        }
        Err(e) if e.is_agent_down() => {
            eprintln!("crmguard: the agent is not running; showing the configured peers without live state");
            offline_listing(config, HashMap::new())
        }
        Err(e) => {
            eprintln!("crmguard: {}", error_chain(&e));
            return exit::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&peers) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("crmguard: {e}");
                return exit::FAILURE;
            }
        }
        return exit::OK;
    }
    print_table(&peers);
    exit::OK
}

fn print_table(peers: &[PeerListing]) {
    if peers.is_empty() {
        println!("no peers");
        return;
    }
    let now = unix_now();
    let rows: Vec<[String; 8]> = peers
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.role.clone(),
                p.address.clone(),
                p.created.clone().unwrap_or_else(|| "-".to_owned()),
                p.key_age_days
                    .map_or_else(|| "-".to_owned(), |d| format!("{d}d")),
                p.key_expires_in
                    .map_or_else(|| "-".to_owned(), describe_expiry),
                p.last_handshake.map_or_else(
                    || "never".to_owned(),
                    |t| format!("{} ago", describe_secs(now.saturating_sub(t))),
                ),
                format!("{} / {}", p.state, p.mfa),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "ROLE",
        "ADDRESS",
        "CREATED",
        "KEY AGE",
        "KEY EXPIRES",
        "HANDSHAKE",
        "STATE / MFA",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn describe_expiry(secs: i64) -> String {
    if secs <= 0 {
        "expired".to_owned()
    } else {
        format!("in {}", describe_secs(secs.unsigned_abs()))
    }
}

fn describe_secs(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// `--endpoint`: an address or a DNS name, nothing that could add lines to the printed
/// configuration.
fn parse_endpoint_host(host: &str) -> Result<String, String> {
    if provision::valid_endpoint_host(host) {
        Ok(host.to_owned())
    } else {
        Err("not an IP address or a DNS name".to_owned())
    }
}
