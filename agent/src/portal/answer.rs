//! What the MFA portal says: the status code, the JSON and the page for each of the agent's
//! [`PortalReply`]s and for each request the portal refuses itself ([`Refusal`]).
//!
//! A browser and a script get the same status code for the same outcome; only the body
//! differs ([`Format`]). JSON errors always carry `error`, a fixed name scripts can match, and
//! `message`, the sentence a person reads on the page. Times are RFC 3339 UTC to the second.

use serde_json::{json, Value};

use super::http::{self, Response};
use super::page::{self, Notice, Page, Tone};
use super::{PeerView, PortalReply};

/// The body a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The portal page, for browsers.
    Html,
    /// A JSON object, for scripts.
    Json,
}

/// A request the portal answers without asking the agent, or could not get an answer for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the request is malformed; the text says how.
    BadRequest(&'static str),
    /// 403: a browser posted from another site's page (cross-site request forgery, which
    /// could log the user out or spend their attempts until they are locked out).
    CrossOrigin,
    /// 403: the `Host` is not the portal's own address: a page of another site whose name
    /// was made to resolve to the gateway (DNS rebinding) would otherwise be same-origin.
    WrongHost,
    /// 404.
    NotFound,
    /// 405, with the `Allow` header.
    MethodNotAllowed { allow: &'static str },
    /// 413: the body is larger than [`MAX_BODY`](super::MAX_BODY).
    BodyTooLarge,
    /// 415: a code in anything but a form or JSON.
    UnsupportedMediaType,
    /// 431: the head is larger than [`MAX_HEAD`](super::MAX_HEAD).
    HeadTooLarge,
    /// 503: the agent's main loop did not answer.
    AgentUnavailable,
}

/// The answer to `reply` at Unix time `now`.
pub fn reply(reply: &PortalReply, format: Format, now: u64) -> Response {
    let status = reply_status(reply);
    match format {
        Format::Json => json_response(status, &reply_json(reply, now)),
        Format::Html => html_response(status, &reply_page(reply, now)),
    }
}

/// The answer to a refused request.
pub fn refusal(refusal: Refusal, format: Format) -> Response {
    let (status, error, message) = refusal_text(refusal);
    let mut response = match format {
        Format::Json => json_response(status, &json!({ "error": error, "message": message })),
        Format::Html => html_response(
            status,
            &Page {
                notice: Some(alert(message.to_owned())),
                home_link: true,
                ..Page::default()
            },
        ),
    };
    if let Refusal::MethodNotAllowed { allow } = refusal {
        response.allow = Some(allow);
    }
    response
}

fn refusal_text(refusal: Refusal) -> (u16, &'static str, &'static str) {
    match refusal {
        Refusal::BadRequest(why) => (400, "bad_request", why),
        Refusal::CrossOrigin => (
            403,
            "cross_origin",
            "Requests from other sites' pages are refused. Open the portal's own page.",
        ),
        Refusal::WrongHost => (
            403,
            "wrong_host",
            "Open the portal by the gateway's tunnel address, not by a name.",
        ),
        Refusal::NotFound => (404, "not_found", "There is no such page on the MFA portal."),
        Refusal::MethodNotAllowed { .. } => (
            405,
            "method_not_allowed",
            "This address does not accept that method.",
        ),
        Refusal::BodyTooLarge => (413, "body_too_large", "The request body is too large."),
        Refusal::UnsupportedMediaType => (
            415,
            "unsupported_media_type",
            "Send the code as a form field (application/x-www-form-urlencoded) or as JSON (application/json).",
        ),
        Refusal::HeadTooLarge => (
            431,
            "head_too_large",
            "The request headers are too large.",
        ),
        Refusal::AgentUnavailable => (
            503,
            "agent_unavailable",
            "The crmguard agent is not answering. Try again in a moment.",
        ),
    }
}

fn reply_status(reply: &PortalReply) -> u16 {
    match reply {
        PortalReply::View(_) | PortalReply::Opened { .. } | PortalReply::Closed { .. } => 200,
        PortalReply::Wrong { .. } => 401,
        PortalReply::UnknownPeer
        | PortalReply::NotRequired { .. }
        | PortalReply::Disabled { .. }
        | PortalReply::NotEnrolled { .. } => 403,
        PortalReply::LockedOut { .. } => 423,
        PortalReply::Unavailable { .. } => 503,
    }
}

fn reply_json(reply: &PortalReply, now: u64) -> Value {
    match reply {
        PortalReply::UnknownPeer => json!({
            "error": "unknown_peer",
            "message": unknown_peer_text(),
        }),
        PortalReply::View(view) => view_json(view),
        PortalReply::Opened { peer, expires } => json!({
            "peer": peer,
            "expires": rfc3339(*expires),
        }),
        PortalReply::Wrong { peer, remaining } => json!({
            "peer": peer,
            "error": "wrong_code",
            "message": wrong_text(*remaining),
            "remaining": remaining,
        }),
        PortalReply::LockedOut { peer, until } => json!({
            "peer": peer,
            "error": "locked_out",
            "message": locked_text(*until, now),
            "until": rfc3339(*until),
        }),
        PortalReply::NotRequired { peer } => json!({
            "peer": peer,
            "error": "mfa_not_required",
            "message": not_required_text(),
        }),
        PortalReply::Disabled { peer } => json!({
            "peer": peer,
            "error": "peer_disabled",
            "message": disabled_text(),
        }),
        PortalReply::NotEnrolled { peer } => json!({
            "peer": peer,
            "error": "not_enrolled",
            "message": not_enrolled_text(peer),
        }),
        PortalReply::Unavailable { peer, reason } => json!({
            "peer": peer,
            "error": "unavailable",
            "message": unavailable_text(reason),
            "reason": reason,
        }),
        PortalReply::Closed { peer, had_session } => json!({
            "peer": peer,
            "closed": had_session,
        }),
    }
}

fn view_json(view: &PeerView) -> Value {
    json!({
        "peer": view.peer,
        "mfa_required": view.mfa_required,
        "enabled": view.enabled,
        "enrolled": view.enrolled,
        "session_expires": view.session_expires.map(rfc3339),
        "locked_until": view.locked_until.map(rfc3339),
    })
}

fn reply_page(reply: &PortalReply, now: u64) -> Page {
    let answered = |peer: &str, notice: Notice, code_form: bool| Page {
        peer: Some(peer.to_owned()),
        notice: Some(notice),
        code_form,
        home_link: true,
        ..Page::default()
    };
    match reply {
        PortalReply::UnknownPeer => Page {
            notice: Some(alert(unknown_peer_text().to_owned())),
            ..Page::default()
        },
        PortalReply::View(view) => view_page(view, now),
        PortalReply::Opened { peer, expires } => Page {
            logout_form: true,
            ..answered(peer, status(session_text(*expires, now)), false)
        },
        PortalReply::Wrong { peer, remaining } => {
            answered(peer, alert(wrong_text(*remaining)), true)
        }
        PortalReply::LockedOut { peer, until } => {
            answered(peer, alert(locked_text(*until, now)), false)
        }
        PortalReply::NotRequired { peer } => {
            answered(peer, status(not_required_text().to_owned()), false)
        }
        PortalReply::Disabled { peer } => answered(peer, alert(disabled_text().to_owned()), false),
        PortalReply::NotEnrolled { peer } => answered(peer, alert(not_enrolled_text(peer)), false),
        PortalReply::Unavailable { peer, reason } => {
            answered(peer, alert(unavailable_text(reason)), false)
        }
        PortalReply::Closed { peer, had_session } => {
            answered(peer, status(closed_text(*had_session).to_owned()), true)
        }
    }
}

/// `GET /`: the caller's state, and the forms that make sense in it.
fn view_page(view: &PeerView, now: u64) -> Page {
    let locked = view.locked_until.filter(|&until| until > now);
    let may_sign_in = view.enabled && view.mfa_required && view.enrolled && locked.is_none();
    let mut facts = Vec::new();
    if !view.enabled {
        facts.push(disabled_text().to_owned());
    } else if !view.mfa_required {
        facts.push(not_required_text().to_owned());
    } else if !view.enrolled {
        facts.push(not_enrolled_text(&view.peer));
    } else if let Some(expires) = view.session_expires {
        facts.push(session_text(expires, now));
    } else {
        facts.push("No session is open: enter a code to reach your services.".to_owned());
    }
    if let Some(until) = locked {
        facts.push(locked_text(until, now));
    }
    Page {
        peer: Some(view.peer.clone()),
        facts,
        code_form: may_sign_in,
        logout_form: view.session_expires.is_some(),
        ..Page::default()
    }
}

fn status(text: String) -> Notice {
    Notice {
        tone: Tone::Status,
        text,
    }
}

fn alert(text: String) -> Notice {
    Notice {
        tone: Tone::Alert,
        text,
    }
}

fn unknown_peer_text() -> &'static str {
    "This address belongs to no crmguard peer. Connect through your VPN profile and try again."
}

fn session_text(expires: u64, now: u64) -> String {
    format!("Session open until {}.", when(expires, now))
}

fn wrong_text(remaining: u32) -> String {
    let attempts = if remaining == 1 {
        "attempt"
    } else {
        "attempts"
    };
    format!("Wrong code, {remaining} {attempts} left.")
}

fn locked_text(until: u64, now: u64) -> String {
    format!(
        "Too many wrong codes. Locked out until {}.",
        when(until, now)
    )
}

fn not_required_text() -> &'static str {
    "Your role needs no code: your services are reachable without a session."
}

fn disabled_text() -> &'static str {
    "This peer is disabled. Ask the administrator."
}

fn not_enrolled_text(peer: &str) -> String {
    format!(
        "No authenticator is enrolled for you yet. Ask the administrator to run `crmguard mfa enroll {peer}`."
    )
}

fn unavailable_text(reason: &str) -> String {
    format!("New sessions cannot be opened right now ({reason}). Try again later.")
}

fn closed_text(had_session: bool) -> &'static str {
    if had_session {
        "Logged out: your session is closed."
    } else {
        "No session was open."
    }
}

/// `2025-03-01T12:00:00Z (in 7 h 59 min)`.
fn when(unix: u64, now: u64) -> String {
    let left = match unix.checked_sub(now) {
        Some(secs) if secs > 0 => format!("in {}", duration_text(secs)),
        _ => "now".to_owned(),
    };
    format!("{} ({left})", rfc3339(unix))
}

/// `45 s`, `3 min`, `2 h`, `7 h 59 min`; minutes are rounded up, so a lockout never ends
/// earlier than the page says.
fn duration_text(secs: u64) -> String {
    if secs < 60 {
        return format!("{secs} s");
    }
    let minutes = secs.div_ceil(60);
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// Unix seconds as RFC 3339 UTC to the second, `2025-03-01T12:00:00Z`; times after 9999 (say,
/// `u64::MAX` for "never") are shown as 9999-12-31T23:59:59Z rather than overflowing the clock.
pub fn rfc3339(unix: u64) -> String {
    crmguard_core::time::format_unix_seconds(unix)
}

fn json_response(status: u16, body: &Value) -> Response {
    Response {
        status,
        content_type: http::JSON,
        body: format!("{body}\n"),
        allow: None,
    }
}

fn html_response(status: u16, page: &Page) -> Response {
    Response {
        status,
        content_type: http::HTML,
        body: page::render(page),
        allow: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_to_the_second() {
        let check = |unix: u64, expected: &str| assert_eq!(rfc3339(unix), expected);
        check(0, "1970-01-01T00:00:00Z");
        check(1_767_225_600, "2026-01-01T00:00:00Z");
        check(1_709_294_399, "2024-03-01T11:59:59Z");
        check(u64::MAX, "9999-12-31T23:59:59Z");
    }

    #[test]
    fn durations_read_like_people_talk() {
        let check = |secs: u64, expected: &str| assert_eq!(duration_text(secs), expected);
        check(1, "1 s");
        check(59, "59 s");
        check(60, "1 min");
        check(61, "2 min");
        check(3600, "1 h");
        check(12 * 3600 - 60, "11 h 59 min");
        assert_eq!(
            when(1_767_225_600, 1_767_225_600 - 90),
            "2026-01-01T00:00:00Z (in 2 min)"
        );
        assert_eq!(when(10, 20), "1970-01-01T00:00:10Z (now)");
    }

    #[test]
    fn wrong_code_counts_attempts() {
        assert_eq!(wrong_text(1), "Wrong code, 1 attempt left.");
        assert_eq!(wrong_text(4), "Wrong code, 4 attempts left.");
    }

    #[test]
    fn view_offers_what_makes_sense() {
        let view = PeerView {
            peer: "alice".to_owned(),
            mfa_required: true,
            enabled: true,
            enrolled: true,
            session_expires: None,
            locked_until: None,
        };
        let forms = |view: &PeerView| {
            let page = view_page(view, 1000);
            (page.code_form, page.logout_form)
        };
        assert_eq!(forms(&view), (true, false));
        let open = PeerView {
            session_expires: Some(5000),
            ..view.clone()
        };
        assert_eq!(forms(&open), (true, true));
        let locked = PeerView {
            locked_until: Some(2000),
            ..view.clone()
        };
        assert_eq!(forms(&locked), (false, false));
        let lock_over = PeerView {
            locked_until: Some(900),
            ..view.clone()
        };
        assert_eq!(forms(&lock_over), (true, false));
        let exempt = PeerView {
            mfa_required: false,
            ..view.clone()
        };
        assert_eq!(forms(&exempt), (false, false));
    }
}
