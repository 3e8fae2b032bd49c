//! The peers file (`[vpn] peers_file`) on arbitrary text, through both of its readers: the
//! one `crmguard peer ...` edits with ([`PeersFile::parse`]) and the configuration loader's
//! ([`config::load_with`], which merges the file's peers into the configuration).
//!
//! Checked: no panic; every error names the peers file and a line or a key in it; a file the
//! editor reads is written back ([`PeersFile::to_toml`]) as text that reads as the same peers;
//! a file the loader accepts, the editor reads too, with the same peers (the editor checks
//! less, never more: roles and the tunnel subnets are the loader's).

use std::io;
use std::path::Path;

use crmguard_core::config::{self, ConfigErrors};
use crmguard_core::keys;
use crmguard_core::provision::{PeersFile, ProvisionError};

const PEERS_FILE: &str = "/var/lib/crmguard/peers.toml";
const CONFIG_FILE: &str = "/etc/crmguard/crmguard.toml";

/// A configuration whose peers all come from the peers file.
fn config_text() -> String {
    format!(
        "[vpn]\naddress = \"10.77.0.1/24\"\naddress6 = \"fd77::1/64\"\npeers_file = \"{PEERS_FILE}\"\n\
         [[role]]\nname = \"dba\"\nallow = [\"tcp/5432\"]\n\
         [[role]]\nname = \"sales\"\nallow = [\"tcp/443\"]\n"
    )
}

fn located(errors: &ConfigErrors, file: &str) {
    assert!(!errors.0.is_empty(), "an error with no problem in it");
    for error in &errors.0 {
        assert!(
            error.line > 0 || !error.key.is_empty(),
            "an error that names neither a line nor a key: {error}"
        );
        assert!(
            error.file == Path::new(file) || error.file == Path::new(PEERS_FILE),
            "an error in a file that was not read: {error}"
        );
    }
}

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let edited = PeersFile::parse(&text, Path::new(PEERS_FILE));
    match &edited {
        Ok(file) => {
            let written = file.to_toml();
            match PeersFile::parse(&written, Path::new(PEERS_FILE)) {
                Ok(again) => assert_eq!(&again, file, "the peers file changed when written back"),
                Err(e) => panic!("the peers file as written back does not read: {e:?}\n{written}"),
            }
        }
        Err(ProvisionError::Invalid { source }) => {
            assert!(source.0.iter().all(|e| e.file == Path::new(PEERS_FILE)));
            located(source, PEERS_FILE);
        }
        Err(e) => panic!("parsing text failed with {e:?}"),
    }

    let config = config_text();
    let loaded = config::load_with(Path::new(CONFIG_FILE), &mut |path: &Path| {
        if path == Path::new(CONFIG_FILE) {
            Ok(config.clone())
        } else if path == Path::new(PEERS_FILE) {
            Ok(text.clone().into_owned())
        } else {
            Err(io::Error::from(io::ErrorKind::NotFound))
        }
    });
    match loaded {
        Ok(config) => match &edited {
            Ok(file) => assert_eq!(
                config.peers.len(),
                file.peers().len(),
                "the loader and the editor read different peers"
            ),
            Err(e) => panic!("the loader accepts a peers file the editor refuses: {e:?}"),
        },
        Err(errors) => located(&errors, CONFIG_FILE),
    }
}

/// A peers file as `crmguard peer add` writes it (through [`PeersFile::to_toml`]), and an
/// empty one.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let key = |n: u8| keys::encode(&keys::KeyPair::from_private([n; 32]).public.to_bytes());
    let text = format!(
        "[[peer]]\nname = \"alice\"\npublic_key = \"{}\"\naddress = \"10.77.0.10\"\n\
         address6 = \"fd77::10\"\nrole = \"dba\"\ncreated = \"2026-01-15\"\nenabled = true\n\
         [[peer]]\nname = \"bob.sales\"\npublic_key = \"{}\"\naddress = \"10.77.0.11\"\n\
         role = \"sales\"\nenabled = false\n",
        key(1),
        key(2)
    );
    let file = PeersFile::parse(&text, Path::new(PEERS_FILE))
        .unwrap_or_else(|e| panic!("the seed peers file: {e:?}"));
    let empty = PeersFile::parse("", Path::new(PEERS_FILE))
        .unwrap_or_else(|e| panic!("the empty peers file: {e:?}"));
    vec![
        ("peers-two".to_owned(), file.to_toml().into_bytes()),
        ("peers-empty".to_owned(), empty.to_toml().into_bytes()),
    ]
}
