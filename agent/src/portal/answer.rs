//! What the MFA portal says: the status code, the JSON and the page for each of the agent's
//! [`PortalReply`]s and for each request the portal refuses itself ([`Refusal`]).
//!
//! A browser and a script get the same status code for the same outcome; only the body
//! differs ([`Format`]). JSON errors always carry `error`, a fixed English name scripts can
//! match, and `message`, the sentence a person reads on the page, in the language the request
//! asked for ([`Lang`]; the sentences are in [`crate::i18n`]). Times are RFC 3339 UTC to the
//! second.

use serde_json::{json, Value};

use super::http::{self, Response};
use super::page::{self, Notice, Page, Tone};
use super::{PeerView, PortalReply};
use crate::i18n::{fill, Lang, Msg, Plural};

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
    /// 400: the request could not be read; the text says how, in English (the head may not
    /// have been read, so there is no language to go by).
    Malformed(&'static str),
    /// 400: the request was read, but its code is not in a form the portal understands.
    BadRequest(Msg),
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

/// The answer to `reply` at Unix time `now`, in `lang`.
pub fn reply(reply: &PortalReply, format: Format, lang: Lang, now: u64) -> Response {
    let status = reply_status(reply);
    let words = Words { lang, now };
    match format {
        Format::Json => json_response(status, &reply_json(reply, words), lang),
        Format::Html => html_response(status, &reply_page(reply, words), lang),
    }
}

/// The answer to a refused request, in `lang`.
pub fn refusal(refusal: Refusal, format: Format, lang: Lang) -> Response {
    let (status, error, message) = refusal_text(refusal);
    let message = match message {
        Text::Msg(msg) => msg.text(lang),
        Text::English(text) => text,
    };
    let mut response = match format {
        Format::Json => json_response(status, &json!({ "error": error, "message": message }), lang),
        Format::Html => html_response(
            status,
            &Page {
                notice: Some(alert(message.to_owned())),
                home_link: true,
                ..Page::default()
            },
            lang,
        ),
    };
    if let Refusal::MethodNotAllowed { allow } = refusal {
        response.allow = Some(allow);
    }
    response
}

/// A refusal's sentence: translated, or an English diagnostic from the request reader.
enum Text {
    Msg(Msg),
    English(&'static str),
}

fn refusal_text(refusal: Refusal) -> (u16, &'static str, Text) {
    let (status, error, msg) = match refusal {
        Refusal::Malformed(why) => return (400, "bad_request", Text::English(why)),
        Refusal::BadRequest(msg) => (400, "bad_request", msg),
        Refusal::CrossOrigin => (403, "cross_origin", Msg::CrossOrigin),
        Refusal::WrongHost => (403, "wrong_host", Msg::WrongHost),
        Refusal::NotFound => (404, "not_found", Msg::NotFound),
        Refusal::MethodNotAllowed { .. } => (405, "method_not_allowed", Msg::MethodNotAllowed),
        Refusal::BodyTooLarge => (413, "body_too_large", Msg::BodyTooLarge),
        Refusal::UnsupportedMediaType => (415, "unsupported_media_type", Msg::UnsupportedMediaType),
        Refusal::HeadTooLarge => (431, "head_too_large", Msg::HeadTooLarge),
        Refusal::AgentUnavailable => (503, "agent_unavailable", Msg::AgentUnavailable),
    };
    (status, error, Text::Msg(msg))
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

fn reply_json(reply: &PortalReply, words: Words) -> Value {
    match reply {
        PortalReply::UnknownPeer => json!({
            "error": "unknown_peer",
            "message": words.msg(Msg::UnknownPeer),
        }),
        PortalReply::View(view) => view_json(view),
        PortalReply::Opened { peer, expires } => json!({
            "peer": peer,
            "expires": rfc3339(*expires),
        }),
        PortalReply::Wrong { peer, remaining } => json!({
            "peer": peer,
            "error": "wrong_code",
            "message": words.wrong(*remaining),
            "remaining": remaining,
        }),
        PortalReply::LockedOut { peer, until } => json!({
            "peer": peer,
            "error": "locked_out",
            "message": words.locked(*until),
            "until": rfc3339(*until),
        }),
        PortalReply::NotRequired { peer } => json!({
            "peer": peer,
            "error": "mfa_not_required",
            "message": words.msg(Msg::NotRequired),
        }),
        PortalReply::Disabled { peer } => json!({
            "peer": peer,
            "error": "peer_disabled",
            "message": words.msg(Msg::PeerDisabled),
        }),
        PortalReply::NotEnrolled { peer } => json!({
            "peer": peer,
            "error": "not_enrolled",
            "message": words.not_enrolled(peer),
        }),
        PortalReply::Unavailable { peer, reason } => json!({
            "peer": peer,
            "error": "unavailable",
            "message": words.unavailable(reason),
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

fn reply_page(reply: &PortalReply, words: Words) -> Page {
    let answered = |peer: &str, notice: Notice, code_form: bool| Page {
        peer: Some(peer.to_owned()),
        notice: Some(notice),
        code_form,
        home_link: true,
        ..Page::default()
    };
    match reply {
        PortalReply::UnknownPeer => Page {
            notice: Some(alert(words.msg(Msg::UnknownPeer))),
            ..Page::default()
        },
        PortalReply::View(view) => view_page(view, words),
        PortalReply::Opened { peer, expires } => Page {
            logout_form: true,
            ..answered(peer, status(words.session(*expires)), false)
        },
        PortalReply::Wrong { peer, remaining } => {
            answered(peer, alert(words.wrong(*remaining)), true)
        }
        PortalReply::LockedOut { peer, until } => {
            answered(peer, alert(words.locked(*until)), false)
        }
        PortalReply::NotRequired { peer } => {
            answered(peer, status(words.msg(Msg::NotRequired)), false)
        }
        PortalReply::Disabled { peer } => {
            answered(peer, alert(words.msg(Msg::PeerDisabled)), false)
        }
        PortalReply::NotEnrolled { peer } => answered(peer, alert(words.not_enrolled(peer)), false),
        PortalReply::Unavailable { peer, reason } => {
            answered(peer, alert(words.unavailable(reason)), false)
        }
        PortalReply::Closed { peer, had_session } => {
            let msg = if *had_session {
                Msg::LoggedOut
            } else {
                Msg::NoSessionWasOpen
            };
            answered(peer, status(words.msg(msg)), true)
        }
    }
}

/// `GET /`: the caller's state, and the forms that make sense in it.
fn view_page(view: &PeerView, words: Words) -> Page {
    let locked = view.locked_until.filter(|&until| until > words.now);
    let may_sign_in = view.enabled && view.mfa_required && view.enrolled && locked.is_none();
    let mut facts = Vec::new();
    if !view.enabled {
        facts.push(words.msg(Msg::PeerDisabled));
    } else if !view.mfa_required {
        facts.push(words.msg(Msg::NotRequired));
    } else if !view.enrolled {
        facts.push(words.not_enrolled(&view.peer));
    } else if let Some(expires) = view.session_expires {
        facts.push(words.session(expires));
    } else {
        facts.push(words.msg(Msg::NoSession));
    }
    if let Some(until) = locked {
        facts.push(words.locked(until));
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

/// The sentences of one answer: its language and the time they are relative to.
#[derive(Debug, Clone, Copy)]
struct Words {
    lang: Lang,
    now: u64,
}

impl Words {
    fn msg(self, msg: Msg) -> String {
        msg.text(self.lang).to_owned()
    }

    fn session(self, expires: u64) -> String {
        fill(
            Msg::SessionOpen.text(self.lang),
            &[("when", &self.when(expires))],
        )
    }

    fn wrong(self, remaining: u32) -> String {
        let msg = match self.lang.plural(u64::from(remaining)) {
            Plural::One => Msg::WrongCodeOne,
            Plural::Few => Msg::WrongCodeFew,
            Plural::Many => Msg::WrongCodeMany,
        };
        fill(msg.text(self.lang), &[("n", &remaining.to_string())])
    }

    fn locked(self, until: u64) -> String {
        fill(
            Msg::LockedOut.text(self.lang),
            &[("when", &self.when(until))],
        )
    }

    fn not_enrolled(self, peer: &str) -> String {
        fill(Msg::NotEnrolled.text(self.lang), &[("peer", peer)])
    }

    fn unavailable(self, reason: &str) -> String {
        fill(Msg::Unavailable.text(self.lang), &[("reason", reason)])
    }

    /// `2025-03-01T12:00:00Z (in 7 h 59 min)`.
    fn when(self, unix: u64) -> String {
        let left = match unix.checked_sub(self.now) {
            Some(secs) if secs > 0 => fill(
                Msg::TimeIn.text(self.lang),
                &[("duration", &self.duration(secs))],
            ),
            _ => self.msg(Msg::TimeNow),
        };
        format!("{} ({left})", rfc3339(unix))
    }

    /// `45 s`, `3 min`, `2 h`, `7 h 59 min`; minutes are rounded up, so a lockout never ends
    /// earlier than the page says.
    fn duration(self, secs: u64) -> String {
        let unit = |msg: Msg, n: u64| fill(msg.text(self.lang), &[("n", &n.to_string())]);
        if secs < 60 {
            return unit(Msg::Seconds, secs);
        }
        let minutes = secs.div_ceil(60);
        match (minutes / 60, minutes % 60) {
            (0, m) => unit(Msg::Minutes, m),
            (h, 0) => unit(Msg::Hours, h),
            (h, m) => format!("{} {}", unit(Msg::Hours, h), unit(Msg::Minutes, m)),
        }
    }
}

/// Unix seconds as RFC 3339 UTC to the second, `2025-03-01T12:00:00Z`; times after 9999 (say,
/// `u64::MAX` for "never") are shown as 9999-12-31T23:59:59Z rather than overflowing the clock.
pub fn rfc3339(unix: u64) -> String {
    crmguard_core::time::format_unix_seconds(unix)
}

fn json_response(status: u16, body: &Value, lang: Lang) -> Response {
    Response {
        status,
        content_type: http::JSON,
        body: format!("{body}\n"),
        allow: None,
        lang,
    }
}

fn html_response(status: u16, page: &Page, lang: Lang) -> Response {
    Response {
        status,
        content_type: http::HTML,
        body: page::render(page, lang),
        allow: None,
        lang,
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
        let en = Words {
            lang: Lang::En,
            now: 1_767_225_600 - 90,
        };
        let check = |secs: u64, expected: &str| assert_eq!(en.duration(secs), expected);
        check(1, "1 s");
        check(59, "59 s");
        check(60, "1 min");
        check(61, "2 min");
        check(3600, "1 h");
        check(12 * 3600 - 60, "11 h 59 min");
        assert_eq!(en.when(1_767_225_600), "2026-01-01T00:00:00Z (in 2 min)");
        assert_eq!(en.when(10), "1970-01-01T00:00:10Z (now)");
        let ru = Words {
            lang: Lang::Ru,
            ..en
        };
        assert_eq!(ru.duration(45), "45 с");
        assert_eq!(ru.duration(12 * 3600 - 60), "11 ч 59 мин");
        assert_eq!(ru.when(1_767_225_600), "2026-01-01T00:00:00Z (через 2 мин)");
        assert_eq!(ru.when(10), "1970-01-01T00:00:10Z (сейчас)");
    }

    #[test]
    fn wrong_code_counts_attempts() {
        let check = |lang: Lang, remaining: u32, expected: &str| {
            assert_eq!(Words { lang, now: 0 }.wrong(remaining), expected);
        };
        check(Lang::En, 1, "Wrong code, 1 attempt left.");
        check(Lang::En, 4, "Wrong code, 4 attempts left.");
        check(Lang::En, 0, "Wrong code, 0 attempts left.");
        check(Lang::Ru, 1, "Неверный код. Осталась 1 попытка.");
        check(Lang::Ru, 4, "Неверный код. Осталось 4 попытки.");
        check(Lang::Ru, 5, "Неверный код. Осталось 5 попыток.");
        check(Lang::Ru, 0, "Неверный код. Осталось 0 попыток.");
        check(Lang::Ru, 21, "Неверный код. Осталась 21 попытка.");
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
            let page = view_page(
                view,
                Words {
                    lang: Lang::En,
                    now: 1000,
                },
            );
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

    #[test]
    fn every_reply_speaks_the_asked_language() {
        let now = 1_767_225_600;
        let peer = "anna".to_owned();
        let replies = [
            (PortalReply::UnknownPeer, "Этот адрес не принадлежит"),
            (
                PortalReply::View(PeerView {
                    peer: peer.clone(),
                    mfa_required: true,
                    enabled: true,
                    enrolled: true,
                    session_expires: None,
                    locked_until: Some(now + 600),
                }),
                "Вход заблокирован до 2026-01-01T00:10:00Z (через 10 мин).",
            ),
            (
                PortalReply::Opened {
                    peer: peer.clone(),
                    expires: now + 3600,
                },
                "Сеанс открыт до 2026-01-01T01:00:00Z (через 1 ч).",
            ),
            (
                PortalReply::Wrong {
                    peer: peer.clone(),
                    remaining: 2,
                },
                "Осталось 2 попытки.",
            ),
            (
                PortalReply::NotEnrolled { peer: peer.clone() },
                "выполнить `crmguard mfa enroll anna`",
            ),
            (
                PortalReply::Unavailable {
                    peer: peer.clone(),
                    reason: "the audit log cannot be written".to_owned(),
                },
                "Сейчас открыть новый сеанс нельзя (the audit log cannot be written).",
            ),
            (
                PortalReply::Closed {
                    peer: peer.clone(),
                    had_session: true,
                },
                "Вы вышли: сеанс закрыт.",
            ),
            (
                PortalReply::Closed {
                    peer: peer.clone(),
                    had_session: false,
                },
                "Открытого сеанса не было.",
            ),
            (
                PortalReply::Disabled { peer: peer.clone() },
                "Это подключение отключено.",
            ),
            (
                PortalReply::NotRequired { peer },
                "Для вашей роли код не нужен",
            ),
        ];
        for (answer, expected) in &replies {
            let page = reply(answer, Format::Html, Lang::Ru, now);
            assert_eq!(page.lang, Lang::Ru);
            let html = page.body;
            assert!(html.contains(expected), "no {expected:?} in:\n{html}");
            assert!(html.contains("<html lang=\"ru\">"), "{html}");
            let english = reply(answer, Format::Html, Lang::En, now).body;
            assert!(!english.contains(expected), "{english}");
        }
        let json = reply(&replies[3].0, Format::Json, Lang::Ru, now);
        let value: Value = serde_json::from_str(&json.body).expect("JSON");
        assert_eq!(value["error"], "wrong_code");
        assert_eq!(value["message"], "Неверный код. Осталось 2 попытки.");
    }

    #[test]
    fn refusals_speak_the_asked_language_except_reader_diagnostics() {
        let ru = refusal(Refusal::NotFound, Format::Html, Lang::Ru);
        assert_eq!(ru.status, 404);
        assert!(
            ru.body.contains("Такой страницы на портале нет."),
            "{}",
            ru.body
        );
        assert!(ru.body.contains("Показать мой сеанс"), "{}", ru.body);
        let json = refusal(Refusal::AgentUnavailable, Format::Json, Lang::Ru);
        assert_eq!(
            json.body,
            "{\"error\":\"agent_unavailable\",\"message\":\"Агент crmguard не отвечает. Попробуйте ещё раз чуть позже.\"}\n"
        );
        let malformed = refusal(Refusal::Malformed("bad header"), Format::Json, Lang::En);
        assert_eq!(
            malformed.body,
            "{\"error\":\"bad_request\",\"message\":\"bad header\"}\n"
        );
    }
}
