//! The instructions `crmguard peer add` and `crmguard mfa enroll` print for the staff member
//! who gets the device or the authenticator, in their language ([`Lang`]).
//!
//! The administrator hands the printout (or a screenshot of the terminal) to the person; the
//! texts are in [`crate::i18n`]. The configuration, the otpauth URI and the QR codes are
//! printed exactly as given, each line on its own, so that scripts keep finding
//! `PrivateKey = ...` and the `otpauth://` line. What the administrator alone reads (what was
//! changed, warnings, errors) is not here and stays English.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use crmguard_core::config::Config;

use crate::i18n::{fill, Lang, Msg};

/// What `peer add` prints for a new device with a key crmguard generated.
#[derive(Debug, Clone, Copy)]
pub struct ClientHandout<'a> {
    pub peer: &'a str,
    /// The WireGuard client configuration (`provision::client_config`).
    pub config: &'a str,
    /// The configuration as a terminal QR code; `None` when it could not be drawn.
    pub qr: Option<&'a str>,
    /// The MFA portal's address when the peer's role needs MFA.
    pub mfa_portal: Option<&'a str>,
}

/// The handout of a new device: heading, QR code and how to scan it, how to import the
/// configuration on a computer, the configuration, then turning the tunnel on, the portal when
/// the role needs MFA, and keeping the key private.
pub fn client(lang: Lang, handout: &ClientHandout<'_>) -> String {
    let peer = [("peer", handout.peer)];
    let mut out = String::new();
    line(&mut out, &fill(Msg::ClientHeading.text(lang), &peer));
    if let Some(qr) = handout.qr {
        line(&mut out, qr.trim_end());
        line(&mut out, Msg::ClientQrCaption.text(lang));
    }
    let file = format!("{}.conf", handout.peer);
    line(
        &mut out,
        &fill(Msg::ClientFileHint.text(lang), &[("file", &file)]),
    );
    out.push('\n');
    line(&mut out, handout.config.trim_end());
    out.push('\n');
    line(&mut out, Msg::ClientActivate.text(lang));
    if let Some(url) = handout.mfa_portal {
        line(&mut out, &fill(Msg::ClientMfa.text(lang), &[("url", url)]));
    }
    line(&mut out, Msg::ClientKeepPrivate.text(lang));
    out
}

/// What `mfa enroll` prints for the person who adds the secret to their authenticator app.
#[derive(Debug, Clone, Copy)]
pub struct EnrollHandout<'a> {
    pub peer: &'a str,
    /// The `otpauth://` URI holding the secret.
    pub uri: &'a str,
    /// The URI as a terminal QR code; `None` when it could not be drawn.
    pub qr: Option<&'a str>,
    /// The MFA portal's address; `None` without a `[vpn]` section (no tunnel to serve it on).
    pub portal: Option<&'a str>,
}

/// The handout of an enrollment: heading, QR code and how to scan it, the URI on a line of
/// its own, where to type the codes, and that an older entry stops working.
pub fn enrollment(lang: Lang, handout: &EnrollHandout<'_>) -> String {
    let mut out = String::new();
    line(
        &mut out,
        &fill(Msg::EnrollHeading.text(lang), &[("peer", handout.peer)]),
    );
    if let Some(qr) = handout.qr {
        line(&mut out, qr.trim_end());
        line(&mut out, Msg::EnrollQrCaption.text(lang));
    }
    line(&mut out, Msg::EnrollUriHint.text(lang));
    line(&mut out, handout.uri);
    if let Some(url) = handout.portal {
        line(
            &mut out,
            &fill(Msg::EnrollPortal.text(lang), &[("url", url)]),
        );
    }
    line(&mut out, Msg::EnrollReplaces.text(lang));
    out
}

/// `http://10.77.0.1:8443/`: the MFA portal on the gateway's IPv4 tunnel address; `None`
/// without a `[vpn]` section.
pub fn portal_url(config: &Config) -> Option<String> {
    let vpn = config.vpn.as_ref()?;
    Some(portal_url_of(vpn.address.addr(), config.mfa.portal_port))
}

fn portal_url_of(gateway: Ipv4Addr, port: u16) -> String {
    format!("http://{gateway}:{port}/")
}

fn line(out: &mut String, text: &str) {
    out.push_str(text);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "# crmguard: WireGuard client configuration for peer anna\n\
                          [Interface]\nPrivateKey = cHJpdmF0ZQ==\nAddress = 10.77.0.2/32\n\n\
                          [Peer]\nPublicKey = cHVibGlj\nEndpoint = vpn.example.com:51820\n\
                          AllowedIPs = 10.77.0.0/24\nPersistentKeepalive = 25\n";

    fn client_handout(lang: Lang) -> String {
        client(
            lang,
            &ClientHandout {
                peer: "anna",
                config: CONFIG,
                qr: Some("\u{2588}\u{2580}\u{2584}\n"),
                mfa_portal: Some("http://10.77.0.1:8443/"),
            },
        )
    }

    #[test]
    fn the_client_handout_speaks_russian() {
        let text = client_handout(Lang::Ru);
        for expected in [
            "Подключение WireGuard для anna\n\u{2588}\u{2580}\u{2584}\n",
            "Телефон или планшет: установите приложение WireGuard",
            "сохраните текст ниже в файл anna.conf",
            "Затем включите туннель",
            "откройте http://10.77.0.1:8443/ и введите шестизначный код",
            "Никому не передавайте эту конфигурацию",
        ] {
            assert!(text.contains(expected), "no {expected:?} in:\n{text}");
        }
        assert!(
            text.contains(CONFIG),
            "the configuration is not whole:\n{text}"
        );
        assert!(!text.contains("Phone or tablet"), "{text}");
    }

    #[test]
    fn the_client_handout_in_english_without_mfa() {
        let text = client(
            Lang::En,
            &ClientHandout {
                peer: "anna",
                config: CONFIG,
                qr: None,
                mfa_portal: None,
            },
        );
        assert_eq!(
            text,
            format!(
                "WireGuard connection for anna\n\
                 Computer: save the text below as anna.conf, install WireGuard \
                 (wireguard.com/install) and import the file as a tunnel.\n\n{CONFIG}\n\
                 Then turn the tunnel on: your work services are reachable while it is on.\n\
                 Keep this configuration to yourself: it holds your private key. If the device \
                 is lost, tell the administrator at once.\n"
            )
        );
        assert!(client_handout(Lang::En).contains("open http://10.77.0.1:8443/ and enter"));
    }

    #[test]
    fn the_enrollment_handout_keeps_the_uri_on_its_own_line() {
        let uri = "otpauth://totp/ACME:anna?secret=ABC&issuer=ACME";
        for (lang, caption) in [
            (Lang::En, "Scan the code above with an authenticator app"),
            (
                Lang::Ru,
                "Отсканируйте код выше приложением-аутентификатором",
            ),
        ] {
            let text = enrollment(
                lang,
                &EnrollHandout {
                    peer: "anna",
                    uri,
                    qr: Some("\u{2588}\n"),
                    portal: Some("http://10.77.0.1:8443/"),
                },
            );
            assert!(text.lines().any(|l| l == uri), "{text}");
            assert!(text.contains(caption), "{text}");
            assert!(text.contains("http://10.77.0.1:8443/"), "{text}");
        }
    }

    #[test]
    fn the_portal_is_on_the_gateway_tunnel_address() {
        assert_eq!(
            portal_url_of(Ipv4Addr::new(10, 77, 0, 1), 8443),
            "http://10.77.0.1:8443/"
        );
    }
}
