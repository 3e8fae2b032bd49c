//! The control socket's request decoding: one line of at most 64 KiB, as
//! `crmguard::control` reads it, decoded as a [`Request`] and attributed to the caller with
//! [`Request::attribute`].
//!
//! Checked: no panic; a request that decodes encodes again to the same request; after
//! attribution every field that names who asked names the caller, whatever the client wrote
//! there; the error answer to a line that does not decode encodes as JSON.

use crmguard::control::{Request, Response};
use serde_json::Value;

/// The most the control socket reads of a request line.
const MAX_REQUEST_LINE: usize = 64 * 1024;

/// Who asks, as [`crmguard::control::caller`] names a local administrator.
const ACTOR: &str = "admin:root";

pub fn run(data: &[u8]) {
    let data = &data[..data.len().min(MAX_REQUEST_LINE)];
    let line = match data.iter().position(|&b| b == b'\n') {
        Some(end) => &data[..=end],
        None => data,
    };
    // The socket reads the line as UTF-8 and answers nothing otherwise.
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    match serde_json::from_str::<Request>(line) {
        Ok(mut request) => {
            request.attribute(ACTOR);
            let json = serde_json::to_value(&request)
                .unwrap_or_else(|e| panic!("a decoded request does not encode: {e}"));
            if let Some(by) = json.get("by") {
                assert_eq!(by, &Value::from(ACTOR), "a request kept the client's `by`");
            }
            let again: Request = serde_json::from_value(json)
                .unwrap_or_else(|e| panic!("an encoded request does not decode: {e}"));
            assert_eq!(again, request, "a request changed through its encoding");
        }
        Err(e) => {
            let answer = Response::Error {
                message: format!("bad request: {e}"),
            };
            if let Err(e) = serde_json::to_string(&answer) {
                panic!("the error answer does not encode: {e}");
            }
        }
    }
}

/// The requests the CLI sends, encoded as it encodes them: one of each kind.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use crmguard_core::explain::Query;
    let net = |text: &str| {
        text.parse()
            .unwrap_or_else(|e| panic!("the seed network {text}: {e}"))
    };
    let by = || "admin:alice".to_owned();
    let requests = [
        ("status", Request::Status),
        ("reload", Request::Reload),
        (
            "reload-confirm",
            Request::ReloadConfirm {
                timeout_secs: 120,
                by: by(),
            },
        ),
        ("confirm", Request::Confirm { by: by() }),
        (
            "ban-add",
            Request::BanAdd {
                net: net("203.0.113.0/24"),
                ttl_secs: Some(3600),
                reason: Some("scanner".to_owned()),
                by: by(),
                force: false,
            },
        ),
        ("ban-list", Request::BanList),
        (
            "ban-remove",
            Request::BanRemove {
                net: net("2001:db8::1/128"),
            },
        ),
        (
            "peer-add",
            Request::PeerAdd {
                name: "carol".to_owned(),
                role: "sales".to_owned(),
                public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".to_owned(),
                by: by(),
            },
        ),
        (
            "peer-remove",
            Request::PeerRemove {
                name: "carol".to_owned(),
                by: by(),
            },
        ),
        (
            "peer-disable",
            Request::PeerSetEnabled {
                name: "carol".to_owned(),
                enabled: false,
                by: by(),
            },
        ),
        ("peer-list", Request::PeerList),
        (
            "mfa-enrolled",
            Request::MfaEnrolled {
                name: "bob".to_owned(),
                by: by(),
            },
        ),
        (
            "backup-created",
            Request::BackupCreated {
                file: "/root/crm1.backup".to_owned(),
                files: 9,
                size: 48_213,
                signer: "crmguard-ed25519:7Hq2c1Vb0a6K8n4JkzYw3mS5dQeR9uT1xLp0oA2fG4E=".to_owned(),
                by: by(),
            },
        ),
        (
            "explain-outside",
            Request::Explain {
                query: Query::Outside {
                    from: "203.0.113.5"
                        .parse()
                        .unwrap_or_else(|e| panic!("an address: {e}")),
                    to: "tcp/22".to_owned(),
                    syn: true,
                    at: None,
                },
            },
        ),
        (
            "explain-peer",
            Request::Explain {
                query: Query::Peer {
                    peer: "bob".to_owned(),
                    to: "tcp/443".to_owned(),
                    at: Some("Tue 22:00".to_owned()),
                    mfa: Some(false),
                },
            },
        ),
    ];
    requests
        .into_iter()
        .map(|(name, request)| {
            let mut line = serde_json::to_string(&request)
                .unwrap_or_else(|e| panic!("the seed request {name}: {e}"));
            line.push('\n');
            (format!("control-{name}"), line.into_bytes())
        })
        .collect()
}
