//! What crmguard says to staff, in English and Russian: the MFA portal's page and answers, and
//! the instructions `crmguard peer add` and `crmguard mfa enroll` print for the person who gets
//! the device or the authenticator.
//!
//! Every such sentence is a [`Msg`] with its two texts in the one table below; the portal and
//! the handouts ([`crate::handout`]) only pick ids and fill in `{name}` placeholders with
//! [`fill`]. Operator diagnostics (errors, warnings, logs, audit records, JSON `error` names)
//! stay English and are not here.
//!
//! The language is negotiated from an HTTP `Accept-Language` header
//! ([`Lang::from_accept_language`]) or from the locale variables of the administrator's shell
//! ([`Lang::from_locale`]); the caller reads the header or the environment and passes it in.
//! Anything unknown falls back to English.

#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

/// A language crmguard speaks to staff in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Lang {
    /// English, the fallback.
    #[default]
    En,
    /// Russian.
    Ru,
}

/// `--lang` names a language crmguard has no texts for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a language crmguard speaks; use en or ru")]
pub struct UnknownLang(String);

impl Lang {
    /// Every language, the fallback first.
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Ru];

    /// The language's tag, as in `Content-Language` and `<html lang>`.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ru => "ru",
        }
    }

    /// The language whose tag is `primary` (the first subtag of a language tag, any case).
    fn from_primary(primary: &str) -> Option<Lang> {
        Lang::ALL
            .into_iter()
            .find(|lang| lang.tag().eq_ignore_ascii_case(primary))
    }

    /// The language to answer a request in, from its `Accept-Language` header (RFC 9110,
    /// section 12.5.4).
    ///
    /// Each language gets the highest weight of the ranges whose primary subtag names it
    /// (`ru-RU` and `ru` both name Russian); a language no range names gets the weight of `*`,
    /// if there is one. The language with the highest weight above zero wins; on a tie, the
    /// one named earlier in the header, then English. A missing or unparseable header, or one
    /// that accepts neither language, gives English. Malformed list members are skipped.
    pub fn from_accept_language(header: Option<&str>) -> Lang {
        let Some(header) = header else {
            return Lang::En;
        };
        let ranges: Vec<Range<'_>> = header.split(',').filter_map(parse_range).collect();
        let star = ranges
            .iter()
            .enumerate()
            .filter(|(_, range)| range.primary == "*")
            .map(|(position, range)| (range.weight, position))
            .max_by_key(|&(weight, position)| (weight, std::cmp::Reverse(position)));
        let mut best: Option<(u16, usize, Lang)> = None;
        for lang in Lang::ALL {
            let named = ranges
                .iter()
                .enumerate()
                .filter(|(_, range)| Lang::from_primary(range.primary) == Some(lang))
                .map(|(position, range)| (range.weight, position))
                .max_by_key(|&(weight, position)| (weight, std::cmp::Reverse(position)));
            let Some((weight, position)) = named.or(star) else {
                continue;
            };
            if weight == 0 {
                continue;
            }
            let better = match best {
                None => true,
                Some((best_weight, best_position, _)) => {
                    weight > best_weight || (weight == best_weight && position < best_position)
                }
            };
            if better {
                best = Some((weight, position, lang));
            }
        }
        best.map_or(Lang::En, |(_, _, lang)| lang)
    }

    /// The language of the locale in the environment of the person running a command: the
    /// first of `LC_ALL`, `LC_MESSAGES` and `LANG` that is set and not empty, as POSIX orders
    /// them (`ru_RU.UTF-8` is Russian; `C`, `POSIX` and anything unknown are English).
    pub fn from_locale(
        lc_all: Option<&str>,
        lc_messages: Option<&str>,
        lang: Option<&str>,
    ) -> Lang {
        let Some(locale) = [lc_all, lc_messages, lang]
            .into_iter()
            .flatten()
            .find(|value| !value.is_empty())
        else {
            return Lang::En;
        };
        let primary = locale
            .split(['_', '-', '.', '@'])
            .next()
            .unwrap_or_default();
        Lang::from_primary(primary).unwrap_or(Lang::En)
    }

    /// How `n` things are counted in this language, to pick among [`Msg`]s that differ only
    /// in the noun's form (CLDR plural rules for integers).
    pub fn plural(self, n: u64) -> Plural {
        match self {
            Lang::En if n == 1 => Plural::One,
            Lang::En => Plural::Many,
            Lang::Ru => match (n % 10, n % 100) {
                (1, rest) if rest != 11 => Plural::One,
                (2..=4, rest) if !(12..=14).contains(&rest) => Plural::Few,
                _ => Plural::Many,
            },
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// `--lang en` or `--lang ru` (any case; a region such as `ru-RU` is accepted too).
impl FromStr for Lang {
    type Err = UnknownLang;

    fn from_str(text: &str) -> Result<Lang, UnknownLang> {
        let primary = text.split(['_', '-']).next().unwrap_or_default();
        Lang::from_primary(primary).ok_or_else(|| UnknownLang(text.to_owned()))
    }
}

/// The plural form a count takes: English has `One` and `Many`; Russian also `Few`
/// (1 попытка, 2 попытки, 5 попыток).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plural {
    One,
    Few,
    Many,
}

/// One member of an `Accept-Language` list: its primary subtag (or `*`) and its weight in
/// thousandths.
struct Range<'a> {
    primary: &'a str,
    weight: u16,
}

/// `language-range [ OWS ";" OWS "q=" qvalue ]`; `None` for an empty or malformed member.
/// Parameters other than `q` are not defined for `Accept-Language`; a member with one is
/// malformed.
fn parse_range(member: &str) -> Option<Range<'_>> {
    let mut parts = member.split(';');
    let range = parts.next()?.trim();
    let weight = match parts.next() {
        None => 1000,
        Some(param) => {
            let (name, value) = param.trim().split_once('=')?;
            if !name.eq_ignore_ascii_case("q") {
                return None;
            }
            parse_qvalue(value)?
        }
    };
    if parts.next().is_some() || !valid_range(range) {
        return None;
    }
    let primary = range.split('-').next()?;
    Some(Range { primary, weight })
}

/// `"*"`, or `1*8ALPHA *("-" 1*8alphanum)` (RFC 4647 section 2.1).
fn valid_range(range: &str) -> bool {
    if range == "*" {
        return true;
    }
    let mut subtags = range.split('-');
    let primary_ok = subtags.next().is_some_and(|primary| {
        (1..=8).contains(&primary.len()) && primary.bytes().all(|b| b.is_ascii_alphabetic())
    });
    primary_ok
        && subtags.all(|subtag| {
            (1..=8).contains(&subtag.len()) && subtag.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (text, ""),
    };
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |acc, digit| acc * 10 + u16::from(digit - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// `template` with each `{key}` of `values` replaced by its value. Values are inserted as
/// they are: the caller escapes the result for where it goes.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut text = template.to_owned();
    for (key, value) in values {
        text = text.replace(&format!("{{{key}}}"), value);
    }
    text
}

/// Defines [`Msg`], [`Msg::ALL`] and the table of texts in one place, so that a message
/// cannot lack a language or be left out of `ALL`.
macro_rules! messages {
    ($($(#[$doc:meta])* $id:ident => ($en:expr, $ru:expr $(,)?),)*) => {
        /// A sentence or label staff read, by id.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Msg {
            $($(#[$doc])* $id,)*
        }

        impl Msg {
            /// Every message, in table order.
            pub const ALL: &'static [Msg] = &[$(Msg::$id,)*];

            /// The message's text in `lang`; `{name}` placeholders are for [`fill`].
            pub fn text(self, lang: Lang) -> &'static str {
                let (en, ru) = match self {
                    $(Msg::$id => ($en, $ru),)*
                };
                match lang {
                    Lang::En => en,
                    Lang::Ru => ru,
                }
            }
        }
    };
}

messages! {
    // The portal page's frame.
    /// The page's `<title>`.
    PageTitle => ("crmguard – sign in", "crmguard — вход"),
    /// The page's `<h1>`.
    PageHeading => ("crmguard sign-in", "Вход в crmguard"),
    /// `{peer}` is shown in bold.
    ConnectedAs => ("You are connected as {peer}.", "Вы подключены как {peer}."),
    CodeHeading => ("Enter your code", "Введите код"),
    CodeLabel => (
        "6-digit code from your authenticator app",
        "Шестизначный код из приложения-аутентификатора",
    ),
    CodeButton => ("Open session", "Открыть сеанс"),
    LogoutHeading => ("Log out", "Выход"),
    LogoutButton => ("End my session", "Завершить сеанс"),
    /// The link back to `/` on pages that answer a form.
    HomeLink => ("Show my session", "Показать мой сеанс"),

    // The caller's state and the outcome of what it did.
    NoSession => (
        "No session is open: enter a code to reach your services.",
        "Сеанс не открыт: введите код, чтобы получить доступ к рабочим сервисам.",
    ),
    /// `{when}` is [`Msg::TimeIn`] or [`Msg::TimeNow`] after the time.
    SessionOpen => ("Session open until {when}.", "Сеанс открыт до {when}."),
    /// `{n}` wrong codes are left before the lockout, `n` of [`Plural::One`].
    WrongCodeOne => ("Wrong code, {n} attempt left.", "Неверный код. Осталась {n} попытка."),
    /// As [`Msg::WrongCodeOne`], `n` of [`Plural::Few`] (Russian only; English uses `Many`).
    WrongCodeFew => ("Wrong code, {n} attempts left.", "Неверный код. Осталось {n} попытки."),
    /// As [`Msg::WrongCodeOne`], `n` of [`Plural::Many`].
    WrongCodeMany => ("Wrong code, {n} attempts left.", "Неверный код. Осталось {n} попыток."),
    LockedOut => (
        "Too many wrong codes. Locked out until {when}.",
        "Слишком много неверных кодов. Вход заблокирован до {when}.",
    ),
    NotRequired => (
        "Your role needs no code: your services are reachable without a session.",
        "Для вашей роли код не нужен: рабочие сервисы доступны без сеанса.",
    ),
    PeerDisabled => (
        "This peer is disabled. Ask the administrator.",
        "Это подключение отключено. Обратитесь к администратору.",
    ),
    NotEnrolled => (
        "No authenticator is enrolled for you yet. Ask the administrator to run `crmguard mfa enroll {peer}`.",
        "Для вас ещё не настроен аутентификатор. Попросите администратора выполнить `crmguard mfa enroll {peer}`.",
    ),
    /// `{reason}` is the agent's own words (English).
    Unavailable => (
        "New sessions cannot be opened right now ({reason}). Try again later.",
        "Сейчас открыть новый сеанс нельзя ({reason}). Попробуйте позже.",
    ),
    LoggedOut => ("Logged out: your session is closed.", "Вы вышли: сеанс закрыт."),
    NoSessionWasOpen => ("No session was open.", "Открытого сеанса не было."),
    UnknownPeer => (
        "This address belongs to no crmguard peer. Connect through your VPN profile and try again.",
        "Этот адрес не принадлежит ни одному подключению crmguard. Подключитесь через свой VPN-профиль и попробуйте снова.",
    ),

    // Requests the portal refuses itself.
    CrossOrigin => (
        "Requests from other sites' pages are refused. Open the portal's own page.",
        "Запросы со страниц других сайтов отклоняются. Откройте страницу самого портала.",
    ),
    WrongHost => (
        "Open the portal by the gateway's tunnel address, not by a name.",
        "Открывайте портал по адресу шлюза в туннеле, а не по имени.",
    ),
    NotFound => ("There is no such page on the MFA portal.", "Такой страницы на портале нет."),
    MethodNotAllowed => (
        "This address does not accept that method.",
        "Этот адрес не принимает такой метод запроса.",
    ),
    BodyTooLarge => ("The request body is too large.", "Тело запроса слишком велико."),
    UnsupportedMediaType => (
        "Send the code as a form field (application/x-www-form-urlencoded) or as JSON (application/json).",
        "Отправьте код полем формы (application/x-www-form-urlencoded) или в JSON (application/json).",
    ),
    HeadTooLarge => ("The request headers are too large.", "Заголовки запроса слишком велики."),
    AgentUnavailable => (
        "The crmguard agent is not answering. Try again in a moment.",
        "Агент crmguard не отвечает. Попробуйте ещё раз чуть позже.",
    ),
    BadForm => ("The form is not properly encoded.", "Форма закодирована неправильно."),
    NoCodeField => ("The form has no `code` field.", "В форме нет поля `code`."),
    BadJson => (
        r#"The body is not JSON like {"code":"123456"}."#,
        r#"Тело запроса — не JSON вида {"code":"123456"}."#,
    ),

    // Times: `2026-01-01T00:00:00Z (in 7 h 59 min)`.
    /// `{duration}` from now.
    TimeIn => ("in {duration}", "через {duration}"),
    TimeNow => ("now", "сейчас"),
    Seconds => ("{n} s", "{n} с"),
    Minutes => ("{n} min", "{n} мин"),
    Hours => ("{n} h", "{n} ч"),

    // `crmguard peer add`: the handout for the device's user.
    /// Above the QR code of the client configuration.
    ClientHeading => ("WireGuard connection for {peer}", "Подключение WireGuard для {peer}"),
    /// Below the QR code of the client configuration.
    ClientQrCaption => (
        "Phone or tablet: install the WireGuard app, tap +, choose to scan a QR code and scan the code above.",
        "Телефон или планшет: установите приложение WireGuard, нажмите «+», выберите сканирование QR-кода и отсканируйте код выше.",
    ),
    /// `{file}` is the suggested file name.
    ClientFileHint => (
        "Computer: save the text below as {file}, install WireGuard (wireguard.com/install) and import the file as a tunnel.",
        "Компьютер: сохраните текст ниже в файл {file}, установите WireGuard (wireguard.com/install) и импортируйте этот файл как туннель.",
    ),
    ClientActivate => (
        "Then turn the tunnel on: your work services are reachable while it is on.",
        "Затем включите туннель: рабочие сервисы доступны, пока он включён.",
    ),
    /// `{url}` is the MFA portal.
    ClientMfa => (
        "Your role needs a second factor: with the tunnel on, open {url} and enter the 6-digit code from your authenticator app.",
        "Для вашей роли нужен второй фактор: включив туннель, откройте {url} и введите шестизначный код из приложения-аутентификатора.",
    ),
    ClientKeepPrivate => (
        "Keep this configuration to yourself: it holds your private key. If the device is lost, tell the administrator at once.",
        "Никому не передавайте эту конфигурацию: в ней ваш закрытый ключ. Если устройство потеряно, сразу сообщите администратору.",
    ),

    // `crmguard mfa enroll`: the handout for the authenticator.
    /// Above the QR code of the otpauth URI.
    EnrollHeading => ("Authenticator for {peer}", "Аутентификатор для {peer}"),
    /// Below the QR code of the otpauth URI.
    EnrollQrCaption => (
        "Scan the code above with an authenticator app (such as FreeOTP, Google Authenticator or Microsoft Authenticator).",
        "Отсканируйте код выше приложением-аутентификатором (например, FreeOTP, Google Authenticator или Microsoft Authenticator).",
    ),
    /// Above the otpauth URI.
    EnrollUriHint => (
        "If you cannot scan it, add this link to the app by hand:",
        "Если отсканировать не получается, добавьте в приложение эту ссылку вручную:",
    ),
    /// `{url}` is the MFA portal.
    EnrollPortal => (
        "Each time you connect to the VPN, open {url} and enter the 6-digit code the app shows.",
        "Каждый раз после подключения к VPN открывайте {url} и вводите шестизначный код, который показывает приложение.",
    ),
    EnrollReplaces => (
        "If the app already has an entry for this account, delete it: only the new one works.",
        "Если в приложении уже есть запись для этой учётной записи, удалите её: работает только новая.",
    ),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_is_negotiated() {
        let check = |header: Option<&str>, expected: Lang| {
            assert_eq!(Lang::from_accept_language(header), expected, "{header:?}");
        };
        check(Some("ru-RU,ru;q=0.9,en;q=0.8"), Lang::Ru);
        check(Some("de, en;q=0.5"), Lang::En);
        check(None, Lang::En);
        check(Some(""), Lang::En);
        check(Some("garbage;;;==="), Lang::En);
        check(Some("*"), Lang::En);
        check(Some("ru"), Lang::Ru);
        check(Some("RU"), Lang::Ru);
        check(Some("ru-RU"), Lang::Ru);
        check(Some("en-US,en;q=0.9,ru;q=0.8"), Lang::En);
        check(Some("en;q=0.8, ru;q=0.9"), Lang::Ru);
        check(Some("en;q=0.5, ru ; q=0.7"), Lang::Ru);
        check(Some("fr, de;q=0.9, ru;q=0.1"), Lang::Ru);
        check(Some("fr, de"), Lang::En);
        // Equal weights: the one named first.
        check(Some("ru, en"), Lang::Ru);
        check(Some("en, ru"), Lang::En);
        // q=0 is "not acceptable"; `*` stands for the languages not named.
        check(Some("en;q=0, ru;q=0.1"), Lang::Ru);
        check(Some("en;q=0, *"), Lang::Ru);
        check(Some("*;q=0.5, ru;q=0.1"), Lang::En);
        check(Some("*;q=0.1, en;q=0"), Lang::Ru);
        check(Some("en;q=0, ru;q=0"), Lang::En);
        // Malformed members are skipped, the rest still counts.
        check(Some("ru;q=2, en;q=0.5"), Lang::En);
        check(Some("ru;q=0.5555, en;q=0.1"), Lang::En);
        check(Some("ru;level=1, en;q=0.1"), Lang::En);
        check(Some("ru_RU, en;q=0.1"), Lang::En);
        check(Some("toolonglang, ru;q=0.3"), Lang::Ru);
        check(Some(",, ru;q=1.000 ,"), Lang::Ru);
        check(Some("ru;q=1.001"), Lang::En);
        check(Some("ru;q=1."), Lang::Ru);
        check(Some("ru;q=0., en;q=0.1"), Lang::En);
        check(Some("ru;q="), Lang::En);
    }

    #[test]
    fn qvalues_follow_the_grammar() {
        let check = |text: &str, expected: Option<u16>| {
            assert_eq!(parse_qvalue(text), expected, "{text:?}");
        };
        check("1", Some(1000));
        check("1.000", Some(1000));
        check("0", Some(0));
        check("0.5", Some(500));
        check("0.05", Some(50));
        check("0.123", Some(123));
        check("0.1234", None);
        check("1.5", None);
        check("2", None);
        check(".5", None);
        check("0.-1", None);
        check("", None);
    }

    #[test]
    fn locale_variables_choose_the_language() {
        let check = |all: Option<&str>, messages: Option<&str>, lang: Option<&str>, expected| {
            assert_eq!(
                Lang::from_locale(all, messages, lang),
                expected,
                "{all:?} {messages:?} {lang:?}"
            );
        };
        check(None, None, None, Lang::En);
        check(None, None, Some("ru_RU.UTF-8"), Lang::Ru);
        check(None, Some("ru_RU.UTF-8"), Some("en_US.UTF-8"), Lang::Ru);
        check(
            Some("C"),
            Some("ru_RU.UTF-8"),
            Some("ru_RU.UTF-8"),
            Lang::En,
        );
        check(Some(""), Some(""), Some("ru"), Lang::Ru);
        check(Some("ru_UA@euro"), None, None, Lang::Ru);
        check(None, None, Some("POSIX"), Lang::En);
        check(None, None, Some("de_DE.UTF-8"), Lang::En);
        check(None, None, Some("C.UTF-8"), Lang::En);
    }

    #[test]
    fn the_lang_flag_parses() {
        assert_eq!("ru".parse::<Lang>(), Ok(Lang::Ru));
        assert_eq!("EN".parse::<Lang>(), Ok(Lang::En));
        assert_eq!("ru-RU".parse::<Lang>(), Ok(Lang::Ru));
        assert_eq!(
            "de".parse::<Lang>().map_err(|e| e.to_string()),
            Err("`de` is not a language crmguard speaks; use en or ru".to_owned())
        );
    }

    #[test]
    fn russian_plurals() {
        let check = |n: u64, expected: Plural| assert_eq!(Lang::Ru.plural(n), expected, "{n}");
        for n in [1, 21, 101, 1001] {
            check(n, Plural::One);
        }
        for n in [2, 3, 4, 22, 34, 102] {
            check(n, Plural::Few);
        }
        for n in [0, 5, 10, 11, 12, 14, 15, 20, 111, 112] {
            check(n, Plural::Many);
        }
        assert_eq!(Lang::En.plural(1), Plural::One);
        assert_eq!(Lang::En.plural(0), Plural::Many);
        assert_eq!(Lang::En.plural(2), Plural::Many);
    }

    #[test]
    fn every_message_has_both_languages() {
        let cyrillic = |c: char| ('\u{0400}'..='\u{04FF}').contains(&c);
        for &msg in Msg::ALL {
            let (en, ru) = (msg.text(Lang::En), msg.text(Lang::Ru));
            assert!(!en.trim().is_empty(), "{msg:?} has no English text");
            assert!(!ru.trim().is_empty(), "{msg:?} has no Russian text");
            assert!(ru.chars().any(cyrillic), "{msg:?}: {ru:?} is not Russian");
            assert!(!en.chars().any(cyrillic), "{msg:?}: {en:?} is not English");
            assert_eq!(
                placeholders(en),
                placeholders(ru),
                "{msg:?}: the placeholders differ"
            );
        }
    }

    /// The `{name}`s of a template, sorted.
    fn placeholders(text: &str) -> Vec<&str> {
        let mut names: Vec<&str> = text
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}'))
            .map(|(name, _)| name)
            .filter(|name| name.bytes().all(|b| b.is_ascii_lowercase()) && !name.is_empty())
            .collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn placeholders_are_filled() {
        assert_eq!(
            fill(Msg::SessionOpen.text(Lang::Ru), &[("when", "завтра")]),
            "Сеанс открыт до завтра."
        );
        assert_eq!(
            fill("{a} and {a}, {b}", &[("a", "x"), ("b", "{a}")]),
            "x and x, {a}"
        );
    }
}
