//! The MFA portal's one HTML page, in every state a staff member can meet it.
//!
//! [`render`] turns a [`Page`], whose sentences the caller has already written, into a whole
//! document. The page is plain on purpose: it works without CSS and without JavaScript (the
//! portal's Content-Security-Policy allows neither scripts nor anything from elsewhere), it has
//! a `<main>`, headings and labelled inputs for screen readers, and messages carry
//! `role="status"` or `role="alert"` so that they are announced. Every string from outside
//! this file goes through [`escape`].

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

const HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>crmguard – sign in</title>
<style>
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
<h1>crmguard sign-in</h1>
"#;

const CODE_FORM: &str = r#"<h2>Enter your code</h2>
<form method="post" action="/session">
<label for="code">6-digit code from your authenticator app</label>
<input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required autofocus>
<button type="submit">Open session</button>
</form>
"#;

const LOGOUT_FORM: &str = r#"<h2>Log out</h2>
<form method="post" action="/session/end">
<button type="submit">End my session</button>
</form>
"#;

const FOOT: &str = "</main>\n</body>\n</html>\n";

/// The whole HTML document for `page`.
pub fn render(page: &Page) -> String {
    let mut html = String::from(HEAD);
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
        html.push_str(&format!(
            "<p>You are connected as <strong>{}</strong>.</p>\n",
            escape(peer)
        ));
    }
    for fact in &page.facts {
        html.push_str(&format!("<p>{}</p>\n", escape(fact)));
    }
    if page.code_form {
        html.push_str(CODE_FORM);
    }
    if page.logout_form {
        html.push_str(LOGOUT_FORM);
    }
    if page.home_link {
        html.push_str("<p><a href=\"/\">Show my session</a></p>\n");
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
        let html = render(&Page {
            peer: Some("<b>eve</b>".to_owned()),
            notice: Some(Notice {
                tone: Tone::Alert,
                text: "a & b".to_owned(),
            }),
            facts: vec!["\"quoted\"".to_owned()],
            ..Page::default()
        });
        assert!(
            html.contains("<strong>&lt;b&gt;eve&lt;/b&gt;</strong>"),
            "{html}"
        );
        assert!(html.contains("<p role=\"alert\">a &amp; b</p>"), "{html}");
        assert!(html.contains("<p>&quot;quoted&quot;</p>"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
    }

    #[test]
    fn forms_appear_when_asked_for() {
        let bare = render(&Page::default());
        assert!(bare.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
        assert!(bare.contains("<main>") && bare.contains("<title>crmguard – sign in</title>"));
        assert!(!bare.contains("<form"));
        let both = render(&Page {
            code_form: true,
            logout_form: true,
            ..Page::default()
        });
        assert!(both.contains(r#"<form method="post" action="/session">"#));
        assert!(both.contains(r#"<label for="code">"#));
        assert!(both.contains(r#"<form method="post" action="/session/end">"#));
    }
}
