//! The MFA portal's one HTML page, in every state a staff member can meet it.
//!
//! [`render`] turns a [`Page`], whose sentences the caller has already written, into a whole
//! document in the negotiated language: the page's own labels come from [`crate::i18n`], and
//! `<html lang>` names the language. The page is plain on purpose: it works without CSS and without JavaScript (the
//! portal's Content-Security-Policy allows neither scripts nor anything from elsewhere), it has
//! a `<main>`, headings and labelled inputs for screen readers, and messages carry
//! `role="status"` or `role="alert"` so that they are announced. Every string from outside
//! this file goes through [`escape`].

use crate::i18n::{Lang, Msg};

/// What one page shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The caller's peer name; `None` when its address belongs to no peer.
    pub peer: Option<String>,
    /// The outcome of what the caller just did, shown first.
    pub notice: Option<Notice>,
    /// Sentences about the caller's state, one paragraph each.
    pub facts: Vec<String>,
    /// Whether to offer the form for a code.
    pub code_form: bool,
    /// Whether to offer the log-out button.
    pub logout_form: bool,
    /// Whether to link back to `/`, on pages that answer a form.
    pub home_link: bool,
}

/// A message about what just happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub tone: Tone,
    pub text: String,
}

/// How urgently assistive technology announces a [`Notice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Good news or information (`role="status"`).
    Status,
    /// Something went wrong or needs the user (`role="alert"`).
    Alert,
}

/// The document up to the page's `<title>`.
const HEAD: &str = r#"<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
"#;

const STYLE: &str = r#"<style>
body{font-family:system-ui,sans-serif;line-height:1.5;margin:0;padding:1rem;color:#1a1a1a;background:#fff}
main{max-width:34rem;margin:1rem auto}
[role=status],[role=alert]{padding:.5rem 1rem;border-left:.3rem solid}
[role=status]{border-color:#1b6e2a;background:#eaf6ec}
[role=alert]{border-color:#b3261e;background:#fbeceb}
label{display:block;font-weight:600;margin:.5rem 0}
input{font:inherit;font-size:1.5rem;letter-spacing:.2em;width:8ch;padding:.25rem .5rem}
button{font:inherit;padding:.4rem 1rem;margin:.5rem 0}
</style>
</head>
<body>
<main>
"#;

const FOOT: &str = "</main>\n</body>\n</html>\n";

/// The whole HTML document for `page`, in `lang`.
pub fn render(page: &Page, lang: Lang) -> String {
    let text = |msg: Msg| escape(msg.text(lang));
    let mut html = HEAD.replace("{lang}", lang.tag());
    html.push_str(&format!("<title>{}</title>\n", text(Msg::PageTitle)));
    html.push_str(STYLE);
    html.push_str(&format!("<h1>{}</h1>\n", text(Msg::PageHeading)));
    if let Some(notice) = &page.notice {
        let role = match notice.tone {
            Tone::Status => "status",
            Tone::Alert => "alert",
        };
        html.push_str(&format!(
            "<p role=\"{role}\">{}</p>\n",
            escape(&notice.text)
        ));
    }
    if let Some(peer) = &page.peer {
        let template = Msg::ConnectedAs.text(lang);
        let (before, after) = template.split_once("{peer}").unwrap_or((template, ""));
        html.push_str(&format!(
            "<p>{}<strong>{}</strong>{}</p>\n",
            escape(before),
            escape(peer),
            escape(after)
        ));
    }
    for fact in &page.facts {
        html.push_str(&format!("<p>{}</p>\n", escape(fact)));
    }
    if page.code_form {
        html.push_str(&format!(
            "<h2>{}</h2>\n\
             <form method=\"post\" action=\"/session\">\n\
             <label for=\"code\">{}</label>\n\
             <input id=\"code\" name=\"code\" type=\"text\" inputmode=\"numeric\" autocomplete=\"one-time-code\" pattern=\"[0-9]{{6}}\" maxlength=\"6\" required autofocus>\n\
             <button type=\"submit\">{}</button>\n\
             </form>\n",
            text(Msg::CodeHeading),
            text(Msg::CodeLabel),
            text(Msg::CodeButton),
        ));
    }
    if page.logout_form {
        html.push_str(&format!(
            "<h2>{}</h2>\n\
             <form method=\"post\" action=\"/session/end\">\n\
             <button type=\"submit\">{}</button>\n\
             </form>\n",
            text(Msg::LogoutHeading),
            text(Msg::LogoutButton),
        ));
    }
    if page.home_link {
        html.push_str(&format!(
            "<p><a href=\"/\">{}</a></p>\n",
            text(Msg::HomeLink)
        ));
    }
    html.push_str(FOOT);
    html
}

/// `text` made safe for HTML text and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        let check = |input: &str, expected: &str| assert_eq!(escape(input), expected);
        check("alice", "alice");
        check("<script>&'\"", "&lt;script&gt;&amp;&#39;&quot;");
        check("bjørn – ops", "bjørn – ops");
        check("&amp;", "&amp;amp;");
    }

    #[test]
    fn interpolated_text_is_escaped() {
        let page = Page {
            peer: Some("<b>eve</b>".to_owned()),
            notice: Some(Notice {
                tone: Tone::Alert,
                text: "a & b".to_owned(),
            }),
            facts: vec!["\"quoted\"".to_owned()],
            ..Page::default()
        };
        for lang in Lang::ALL {
            let html = render(&page, lang);
            assert!(
                html.contains("<strong>&lt;b&gt;eve&lt;/b&gt;</strong>"),
                "{html}"
            );
            assert!(html.contains("<p role=\"alert\">a &amp; b</p>"), "{html}");
            assert!(html.contains("<p>&quot;quoted&quot;</p>"), "{html}");
            assert!(!html.contains("<b>"), "{html}");
        }
    }

    #[test]
    fn forms_appear_when_asked_for() {
        let bare = render(&Page::default(), Lang::En);
        assert!(bare.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
        assert!(bare.contains("<main>") && bare.contains("<title>crmguard – sign in</title>"));
        assert!(!bare.contains("<form"));
        let both = render(
            &Page {
                code_form: true,
                logout_form: true,
                ..Page::default()
            },
            Lang::En,
        );
        assert!(both.contains(r#"<form method="post" action="/session">"#));
        assert!(both.contains(r#"<label for="code">"#));
        assert!(both.contains(r#"<form method="post" action="/session/end">"#));
    }

    #[test]
    fn the_russian_page_is_russian() {
        let html = render(
            &Page {
                peer: Some("анна".to_owned()),
                code_form: true,
                logout_form: true,
                home_link: true,
                ..Page::default()
            },
            Lang::Ru,
        );
        for expected in [
            "<html lang=\"ru\">",
            "<title>crmguard — вход</title>",
            "<h1>Вход в crmguard</h1>",
            "<p>Вы подключены как <strong>анна</strong>.</p>",
            "<h2>Введите код</h2>",
            "<label for=\"code\">Шестизначный код из приложения-аутентификатора</label>",
            "pattern=\"[0-9]{6}\"",
            "<button type=\"submit\">Открыть сеанс</button>",
            "<button type=\"submit\">Завершить сеанс</button>",
            "<a href=\"/\">Показать мой сеанс</a>",
        ] {
            assert!(html.contains(expected), "no {expected:?} in:\n{html}");
        }
        assert!(!html.contains("Open session"), "{html}");
    }
}
