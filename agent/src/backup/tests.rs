//! A whole backup: written from a configured gateway, verified, drilled and restored into an
//! empty root.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use age::secrecy::ExposeSecret as _;

use super::*;

struct Gateway {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config_file: PathBuf,
    config: Config,
    identity: age::x25519::Identity,
}

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    let identity = age::x25519::Identity::generate();
    let config_file = root.join("etc/crmguard.toml");
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    std::fs::create_dir_all(root.join("state/mfa")).expect("state");
    let text = format!(
        "[agent]\nstate_dir = \"{r}/state\"\ncontrol_socket = \"{r}/control.sock\"\n\
         [firewall.deny]\nfiles = [\"deny.txt\"]\n\
         [vpn]\naddress = \"10.77.0.1/24\"\nprivate_key_file = \"{r}/etc/wg.key\"\n\
         peers_file = \"{r}/state/peers.toml\"\n\
         [[role]]\nname = \"sales\"\nallow = [\"tcp/443\"]\n\
         [audit]\npath = \"{r}/audit.jsonl\"\nkey_file = \"{r}/etc/audit.key\"\n\
         [backup]\ndir = \"{r}/backups\"\nrecipient = \"{recipient}\"\n",
        r = root.display(),
        recipient = identity.to_public()
    );
    std::fs::write(&config_file, text).expect("config");
    std::fs::write(root.join("etc/deny.txt"), "203.0.113.0/24\n").expect("deny");
    std::fs::write(
        root.join("state/peers.toml"),
        "[[peer]]\nname = \"alice\"\npublic_key = \"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=\"\n\
         address = \"10.77.0.2\"\nrole = \"sales\"\n",
    )
    .expect("peers");
    let wg = crmguard_core::keys::encode(&[7u8; 32]);
    std::fs::write(root.join("etc/wg.key"), format!("{wg}\n")).expect("wg key");
    std::fs::write(root.join("etc/audit.key"), "audit key\n").expect("audit key");
    std::fs::write(root.join("state/bans.json"), "{\"version\":1}").expect("bans");
    std::fs::write(root.join("state/mfa/alice.secret"), "MZXW6YTBOI\n").expect("secret");
    let config = crmguard_core::config::load(&config_file).expect("loads");
    Gateway {
        _dir: dir,
        root,
        config_file,
        config,
        identity,
    }
}

fn identity_of(gateway: &Gateway) -> Unsealing {
    let text = gateway.identity.to_string();
    Unsealing::Identities(vec![text.expose_secret().parse().expect("identity")])
}

fn created(gateway: &Gateway) -> (PathBuf, VerifyingKey) {
    let sealing = sealing(&gateway.config, None).expect("sealing");
    let out = gateway.root.join("backups/test.age");
    let created = create(
        &gateway.config,
        Some(&gateway.config_file),
        &sealing,
        &out,
        SystemTime::now(),
    )
    .expect("created");
    let signer = keys::parse_signer(&created.signer).expect("signer");
    (out, signer)
}

#[test]
fn round_trip_onto_an_empty_root() {
    let gateway = gateway();
    let (archive, signer) = created(&gateway);
    let names: Vec<String> = open_verified(&archive, &identity_of(&gateway), &signer)
        .expect("verified")
        .manifest
        .files
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(
        names,
        [
            "config",
            "deny/0",
            "keys/audit",
            "keys/wireguard",
            "peers",
            "state/bans.json",
            "state/mfa/alice.secret"
        ]
    );
    let drill = drill::run(
        &archive,
        &identity_of(&gateway),
        &signer,
        &gateway.config_file,
    )
    .expect("drill passes");
    assert_eq!(
        drill,
        drill::Drill {
            files: 7,
            config_checked: true
        }
    );
    let verified = open_verified(&archive, &identity_of(&gateway), &signer).expect("verified");
    let empty = tempfile::tempdir().expect("tempdir");
    let plan = plan(&verified, &gateway.config_file, empty.path()).expect("plan");
    write(&plan, empty.path()).expect("written");
    let secret = under(empty.path(), &gateway.root.join("state/mfa/alice.secret"));
    assert_eq!(
        std::fs::read_to_string(secret).expect("restored"),
        "MZXW6YTBOI\n"
    );
}

#[test]
fn another_signer_and_a_wrong_identity_are_refused() {
    let gateway = gateway();
    let (archive, _) = created(&gateway);
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    let error = open_verified(&archive, &identity_of(&gateway), &other).expect_err("refused");
    assert!(
        error
            .to_string()
            .starts_with("the archive was signed by another key"),
        "{error}"
    );
    assert_eq!(error.exit_code(), crmguard_core::exit::FAILURE);
    let (_, signer) = created(&gateway);
    let wrong = Unsealing::Identities(vec![age::x25519::Identity::generate()]);
    let error = open_verified(&archive, &wrong, &signer).expect_err("refused");
    assert!(error.to_string().starts_with("wrong identity"), "{error}");
}

#[test]
fn a_configuration_that_no_longer_validates_is_not_restored() {
    let gateway = gateway();
    let (archive, signer) = created(&gateway);
    let verified = open_verified(&archive, &identity_of(&gateway), &signer).expect("verified");
    // Restored as if the configuration lived elsewhere: its relative deny file is then
    // looked for next to it, where the archive puts it, so this passes...
    let empty = tempfile::tempdir().expect("tempdir");
    let elsewhere = empty.path().join("crmguard.toml");
    plan(&verified, &elsewhere, Path::new("/")).expect("the deny file moves with it");
    // ...but without its deny file the configuration does not load.
    let mut files = verified.files.clone();
    files.remove("deny/0");
    let manifest = Manifest {
        files: verified
            .manifest
            .files
            .iter()
            .filter(|f| f.name != "deny/0")
            .cloned()
            .collect(),
        ..verified.manifest.clone()
    };
    let error = plan(
        &Verified { manifest, files },
        &gateway.config_file,
        empty.path(),
    )
    .expect_err("refused");
    assert!(matches!(error, BackupError::Config(_)), "{error}");
    assert_eq!(error.exit_code(), crmguard_core::exit::USAGE);
}

#[test]
fn no_encryption_configured_is_a_usage_error() {
    let mut gateway = gateway();
    gateway.config.backup.encryption = None;
    let Err(error) = sealing(&gateway.config, None) else {
        panic!("sealing without a recipient");
    };
    assert_eq!(error.exit_code(), crmguard_core::exit::USAGE);
}

/// A restore runs as root and follows the archive's configuration: a place reached through
/// `..` is refused (restore and drill alike), and no archive makes an executable or setuid
/// file.
#[test]
fn places_that_climb_out_are_refused_and_modes_lose_their_exec_bits() {
    let mut gateway = gateway();
    std::fs::set_permissions(
        gateway.root.join("etc/wg.key"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .expect("chmod");
    let (archive, signer) = created(&gateway);
    let verified = open_verified(&archive, &identity_of(&gateway), &signer).expect("verified");
    let empty = tempfile::tempdir().expect("tempdir");
    let planned = plan(&verified, &gateway.config_file, empty.path()).expect("plan");
    let key = planned
        .writes
        .iter()
        .find(|w| w.name == "keys/wireguard")
        .expect("the key is planned");
    assert_eq!(key.mode, 0o644);
    write(&planned, empty.path()).expect("written");
    let restored = under(empty.path(), &key.target);
    let mode = std::fs::metadata(restored)
        .expect("restored")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o644);

    let text = std::fs::read_to_string(&gateway.config_file)
        .expect("config")
        .replace("/etc/audit.key", "/etc/../etc/audit.key");
    std::fs::write(&gateway.config_file, text).expect("config");
    gateway.config = crmguard_core::config::load(&gateway.config_file).expect("loads");
    let (archive, signer) = created(&gateway);
    let verified = open_verified(&archive, &identity_of(&gateway), &signer).expect("verified");
    let error = plan(&verified, &gateway.config_file, empty.path()).expect_err("refused");
    assert!(
        error.to_string().contains("`keys/audit`") && error.to_string().contains("`..`"),
        "{error}"
    );
    let error = drill::run(
        &archive,
        &identity_of(&gateway),
        &signer,
        &gateway.config_file,
    )
    .expect_err("the drill refuses it too");
    assert!(error.to_string().contains("`keys/audit`"), "{error}");
}

/// A scheduled run prunes old archives only once the new one has passed its drill: a
/// configuration broken on disk (the drill checks the file the archive holds) fails every
/// drill, and must not cost the last good archives.
#[test]
fn a_failing_drill_prunes_nothing() {
    let mut gateway = gateway();
    let text = std::fs::read_to_string(&gateway.config_file).expect("config") + "keep = 1\n";
    std::fs::write(&gateway.config_file, &text).expect("config");
    gateway.config = crmguard_core::config::load(&gateway.config_file).expect("loads");
    let dir = gateway.root.join("backups");
    std::fs::create_dir_all(&dir).expect("backups");
    let old = schedule::archive_name(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1));
    std::fs::write(dir.join(&old), "an older archive").expect("old archive");
    let now = SystemTime::now();

    std::fs::write(&gateway.config_file, format!("{text}not toml\n")).expect("broken");
    let outcome = schedule::run(&gateway.config, Some(&gateway.config_file), now);
    assert!(outcome.created.is_ok(), "{:?}", outcome.created.err());
    assert!(matches!(outcome.drill, Some(Err(_))), "the drill passed");
    assert!(
        dir.join(&old).exists(),
        "a failing drill pruned the old archive"
    );

    std::fs::write(&gateway.config_file, &text).expect("fixed");
    let later = now + std::time::Duration::from_secs(60);
    let outcome = schedule::run(&gateway.config, Some(&gateway.config_file), later);
    assert!(matches!(outcome.drill, Some(Ok(_))), "{:?}", outcome.drill);
    assert!(
        !dir.join(&old).exists(),
        "a passing drill kept more than `keep`"
    );
}
