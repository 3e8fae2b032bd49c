//! Finds the dotted key path at a byte offset of a TOML document.
//!
//! `toml` reports where a syntax or schema error is (a byte span) but not under which key, so
//! this module scans the text and records where each table header, key and array element
//! starts, with its full path such as `firewall.service[1].ports[0]`. The path at an offset is
//! the one of the last mark at or before it. The scan is best effort: on malformed text it may
//! name a nearby key, it never fails and it never panics.
//!
//! `toml_edit`'s spans could give the same paths for a document that parses, but a document
//! that does not parse has none: over the configuration fixtures the scanner keeps the key of
//! 12 errors out of 12 and the spans 10 (`tests::scanner_against_parser_spans`), so the scanner
//! stays.

use std::collections::BTreeMap;

/// Nesting deeper than this is not followed; such a document is not a crmguard configuration.
const MAX_DEPTH: usize = 32;

/// The dotted key path of the value, key or header at `offset`, or an empty string when the
/// offset precedes every key.
pub(super) fn key_at(text: &str, offset: usize) -> String {
    let marks = Scanner::new(text).run();
    marks
        .iter()
        .rev()
        .find(|(start, _)| *start <= offset)
        .map(|(_, path)| path.clone())
        .unwrap_or_default()
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Where each header, key and array element starts, in document order.
    marks: Vec<(usize, String)>,
    /// How many tables each array of tables has so far, keyed by its resolved path.
    arrays_of_tables: BTreeMap<String, usize>,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            bytes: text.as_bytes(),
            pos: 0,
            marks: Vec::new(),
            arrays_of_tables: BTreeMap::new(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.pos + ahead).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn run(mut self) -> Vec<(usize, String)> {
        let mut table = String::new();
        loop {
            self.skip_blank_lines();
            let Some(byte) = self.peek() else { break };
            let start = self.pos;
            if byte == b'[' {
                if let Some(path) = self.header() {
                    self.marks.push((start, path.clone()));
                    table = path;
                }
            } else if let Some(keys) = self.key() {
                let path = join(&table, &keys);
                self.marks.push((start, path.clone()));
                self.skip_spaces();
                if self.eat(b'=') {
                    self.skip_spaces();
                    self.value(&path, 0);
                }
            }
            self.skip_rest_of_line();
            if self.pos == start {
                // Nothing was understood; step over one byte so that the scan always ends.
                self.pos += 1;
            }
        }
        self.marks
    }

    /// Reads `[a.b]` or `[[a.b]]` and returns its resolved path, with the index of each array
    /// of tables along it.
    fn header(&mut self) -> Option<String> {
        self.pos += 1;
        let is_array = self.eat(b'[');
        self.skip_spaces();
        let keys = self.key()?;
        self.skip_spaces();
        if !self.eat(b']') || (is_array && !self.eat(b']')) {
            return None;
        }
        let mut resolved = String::new();
        let count = keys.len();
        for (i, key) in keys.into_iter().enumerate() {
            if !resolved.is_empty() {
                resolved.push('.');
            }
            resolved.push_str(&key);
            let tables = if is_array && i + 1 == count {
                let tables = self.arrays_of_tables.entry(resolved.clone()).or_insert(0);
                *tables += 1;
                Some(*tables)
            } else {
                self.arrays_of_tables.get(&resolved).copied()
            };
            if let Some(tables) = tables {
                resolved.push_str(&format!("[{}]", tables.saturating_sub(1)));
            }
        }
        Some(resolved)
    }

    /// Reads a possibly dotted, possibly quoted key and returns its parts.
    fn key(&mut self) -> Option<Vec<String>> {
        let mut parts = Vec::new();
        loop {
            self.skip_spaces();
            let part = match self.peek()? {
                b'"' | b'\'' => {
                    let start = self.pos + 1;
                    self.string();
                    let end = self.pos.saturating_sub(1).max(start);
                    String::from_utf8_lossy(self.bytes.get(start..end).unwrap_or_default())
                        .into_owned()
                }
                byte if is_bare_key_byte(byte) => {
                    let start = self.pos;
                    while self.peek().is_some_and(is_bare_key_byte) {
                        self.pos += 1;
                    }
                    String::from_utf8_lossy(&self.bytes[start..self.pos]).into_owned()
                }
                _ => return None,
            };
            parts.push(part);
            self.skip_spaces();
            if !self.eat(b'.') {
                return Some(parts);
            }
        }
    }

    fn value(&mut self, path: &str, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match self.peek() {
            Some(b'"' | b'\'') => self.string(),
            Some(b'[') => self.array(path, depth),
            Some(b'{') => self.inline_table(path, depth),
            _ => {
                // Numbers, booleans and dates; a date may hold a space before its time.
                while self
                    .peek()
                    .is_some_and(|b| !matches!(b, b',' | b']' | b'}' | b'\n' | b'\r' | b'#'))
                {
                    self.pos += 1;
                }
            }
        }
    }

    fn array(&mut self, path: &str, depth: usize) {
        self.pos += 1;
        let mut index = 0usize;
        loop {
            self.skip_blank_lines();
            match self.peek() {
                None => return,
                Some(b']') => {
                    self.pos += 1;
                    return;
                }
                Some(_) => {}
            }
            let element = format!("{path}[{index}]");
            let start = self.pos;
            self.marks.push((start, element.clone()));
            self.value(&element, depth + 1);
            self.skip_blank_lines();
            match self.peek() {
                Some(b',') if self.pos > start => {
                    self.pos += 1;
                    index += 1;
                }
                Some(b']') => {
                    self.pos += 1;
                    return;
                }
                _ => return,
            }
        }
    }

    fn inline_table(&mut self, path: &str, depth: usize) {
        self.pos += 1;
        loop {
            self.skip_blank_lines();
            match self.peek() {
                None => return,
                Some(b'}') => {
                    self.pos += 1;
                    return;
                }
                Some(_) => {}
            }
            let start = self.pos;
            let Some(keys) = self.key() else { return };
            let key_path = join(path, &keys);
            self.marks.push((start, key_path.clone()));
            self.skip_spaces();
            if !self.eat(b'=') {
                return;
            }
            self.skip_spaces();
            self.value(&key_path, depth + 1);
            self.skip_blank_lines();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return;
                }
                _ => return,
            }
        }
    }

    /// Steps over a basic, literal or multi-line string starting at the current quote. A
    /// single-line string also ends at the end of its line, so unterminated ones stay local.
    fn string(&mut self) {
        let Some(quote) = self.peek() else { return };
        let multi_line = self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote);
        self.pos += if multi_line { 3 } else { 1 };
        while let Some(byte) = self.peek() {
            if byte == b'\\' && quote == b'"' {
                self.pos += 2;
                continue;
            }
            if byte == b'\n' && !multi_line {
                return;
            }
            if byte == quote {
                if !multi_line {
                    self.pos += 1;
                    return;
                }
                if self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote) {
                    self.pos += 3;
                    // Up to two more quotes belong to the content (`""""` ends with one).
                    while self.peek() == Some(quote) {
                        self.pos += 1;
                    }
                    return;
                }
            }
            self.pos += 1;
        }
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Skips spaces, line breaks and comments.
    fn skip_blank_lines(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.pos += 1,
                Some(b'#') => self.skip_rest_of_line(),
                _ => return,
            }
        }
    }

    /// Skips to the line break that ends the current line, leaving it unread.
    fn skip_rest_of_line(&mut self) {
        while self.peek().is_some_and(|b| b != b'\n') {
            self.pos += 1;
        }
    }
}

fn is_bare_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

fn join(prefix: &str, keys: &[String]) -> String {
    let mut path = prefix.to_owned();
    for key in keys {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::key_at;

    /// Checks the key at the first occurrence of `needle` in `text`.
    fn check(text: &str, needle: &str, expected: &str) {
        let offset = text
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} not in text"));
        assert_eq!(key_at(text, offset), expected, "at {needle:?}");
    }

    #[test]
    fn finds_keys() {
        let text = r#"
# comment with [brackets] and key = "value"
top = 1
[agent]
mode = "enforce"   # trailing comment
[[firewall.service]]
name = "ssh"
[[firewall.service]]
name = "web"
ports = [443,
  "oops",   # comment inside an array
]
from = ["a", 'b']
[firewall.limits]
"quoted.key" = 1
inline = { a = 1, bad = 2 }
nested = [[1, 2], [3, X]]
dotted.key = 3
text = """
multi-line with fake = key
"""
after = 4
[[peer]]
name = "alice"
[[detection.log_source]]
pattern = 'Failed (?P<addr>\S+) "'
next = 5
"#;
        check(text, "top", "top");
        check(text, "[agent]", "agent");
        check(text, "\"enforce\"", "agent.mode");
        check(text, "\"ssh\"", "firewall.service[0].name");
        check(
            text,
            "[[firewall.service]]\nname = \"web\"",
            "firewall.service[1]",
        );
        check(text, "\"web\"", "firewall.service[1].name");
        check(text, "443", "firewall.service[1].ports[0]");
        check(text, "\"oops\"", "firewall.service[1].ports[1]");
        check(text, "'b'", "firewall.service[1].from[1]");
        check(text, "\"quoted.key\"", "firewall.limits.quoted.key");
        check(text, "bad", "firewall.limits.inline.bad");
        check(text, "X", "firewall.limits.nested[1][1]");
        check(text, "dotted", "firewall.limits.dotted.key");
        check(text, "fake", "firewall.limits.text");
        check(text, "after", "firewall.limits.after");
        check(text, "\"alice\"", "peer[0].name");
        check(text, "next", "detection.log_source[0].next");
    }

    #[test]
    fn survives_malformed_text() {
        for text in [
            "[",
            "[[a",
            "a = [1, {",
            "= = =",
            "a = \"open\nb = 2",
            "\"",
            "[a.]\n]]",
        ] {
            for offset in 0..=text.len() {
                let _ = key_at(text, offset);
            }
        }
        assert_eq!(key_at("x = 1\n[bad\ny = 2", 11), "y");
    }

    /// Whether the parser's own spans could replace the scanner, measured on every syntax and
    /// schema error of the configuration fixtures (`config/tests.rs`), at the offset `toml`
    /// reports for each. Line and column come from `toml`'s span either way, so only the key
    /// can differ. The scanner names the expected key for 12 of 12; `toml_edit`'s spans for 10
    /// of 12: a document that does not parse (an unterminated string, a duplicated key) has no
    /// spans at all, so exactly the errors an operator most needs placed lose their key. The
    /// scanner stays.
    #[test]
    fn scanner_against_parser_spans() {
        let fixtures = [
            (
                "[[firewall.service]]\nname = \"ssh\"\nports = [22]\n",
                0,
                "firewall.service[0]",
            ),
            ("[[peer]]\nname = \"bob\"\n", 0, "peer[0]"),
            (
                "[[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22]\n\
                 [[firewall.service]]\nname = \"web\"\nproto = \"tcp\"\nports = [443]\nform = []\n",
                123,
                "firewall.service[1].form",
            ),
            ("[[peer]]\nname = \"bob\"\nkey = \"x\"\n", 22, "peer[0].key"),
            ("[agent]\nmode = \"enforce\n", 23, "agent.mode"),
            (
                "[agent]\nmode = \"enforce\"\nmode = \"monitor\"\n",
                25,
                "agent.mode",
            ),
            ("[agent]\nmode = \"monitor\"\n[firewal]\n", 26, "firewal"),
            (
                "[firewall]\ndefault = \"drop\"\n\ndefualt = \"allow\"\n",
                29,
                "firewall.defualt",
            ),
            (
                "[firewall]\nallow_established = \"yes\"\n",
                31,
                "firewall.allow_established",
            ),
            (
                "[detection]\nauth_failures = { threshold = 3, windw = \"1m\" }\n",
                45,
                "detection.auth_failures.windw",
            ),
            ("[agent\nmode = 1\n", 6, ""),
            (
                "[[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22, \"80\"]\n",
                61,
                "firewall.service[0].ports[1]",
            ),
        ];
        let mut scanner = 0;
        let mut parser = 0;
        for (text, offset, expected) in fixtures {
            scanner += usize::from(key_at(text, offset) == expected);
            let spans = super::spans::key_at(text, offset).unwrap_or_default();
            parser += usize::from(spans == expected);
        }
        assert_eq!((fixtures.len(), scanner, parser), (12, 12, 10));
    }
}

/// The same question answered from `toml_edit`'s spans instead of the scanner, kept only to
/// measure the two against each other (`tests::scanner_against_parser_spans`).
#[cfg(test)]
pub(super) mod spans {
    use toml_edit::{ImDocument, InlineTable, Item, Table, Value};

    /// The dotted key path at `offset` from the parsed document's spans, or `None` when the
    /// text does not parse.
    pub(crate) fn key_at(text: &str, offset: usize) -> Option<String> {
        let doc = ImDocument::parse(text).ok()?;
        let mut marks = Vec::new();
        table(doc.as_table(), "", &mut marks);
        marks.sort_by_key(|(start, _)| *start);
        Some(
            marks
                .iter()
                .rev()
                .find(|(start, _)| *start <= offset)
                .map(|(_, path)| path.clone())
                .unwrap_or_default(),
        )
    }

    fn join(prefix: &str, key: &str) -> String {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    }

    fn table(t: &Table, path: &str, marks: &mut Vec<(usize, String)>) {
        if let Some(span) = t.span() {
            marks.push((span.start, path.to_owned()));
        }
        for (name, _) in t.iter() {
            let Some((key, value)) = t.get_key_value(name) else {
                continue;
            };
            let here = join(path, name);
            if let Some(span) = key.span() {
                marks.push((span.start, here.clone()));
            }
            item(value, &here, marks);
        }
    }

    fn inline(t: &InlineTable, path: &str, marks: &mut Vec<(usize, String)>) {
        for (name, _) in t.iter() {
            let Some((key, value)) = t.get_key_value(name) else {
                continue;
            };
            let here = join(path, name);
            if let Some(span) = key.span() {
                marks.push((span.start, here.clone()));
            }
            item(value, &here, marks);
        }
    }

    fn item(i: &Item, path: &str, marks: &mut Vec<(usize, String)>) {
        match i {
            Item::Table(t) => table(t, path, marks),
            Item::ArrayOfTables(a) => {
                for (n, t) in a.iter().enumerate() {
                    table(t, &format!("{path}[{n}]"), marks);
                }
            }
            Item::Value(v) => value(v, path, marks),
            Item::None => {}
        }
    }

    fn value(v: &Value, path: &str, marks: &mut Vec<(usize, String)>) {
        match v {
            Value::Array(a) => {
                for (n, v) in a.iter().enumerate() {
                    let here = format!("{path}[{n}]");
                    if let Some(span) = v.span() {
                        marks.push((span.start, here.clone()));
                    }
                    value(v, &here, marks);
                }
            }
            Value::InlineTable(t) => inline(t, path, marks),
            _ => {}
        }
    }
}
