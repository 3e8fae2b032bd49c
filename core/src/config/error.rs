//! Configuration errors and the translation of byte spans into lines and columns.
//!
//! Every error names a file; errors about a value also name its line, its column and its dotted
//! key. Positions are computed here from the byte spans that `toml` reports, so that the message
//! format is ours and does not depend on the multi-line rendering of `toml`'s own errors.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;

use super::keypath;

/// One problem in a configuration, peers or deny file.
///
/// Displayed as `FILE:LINE:COLUMN: KEY: MESSAGE`. When the whole file is the problem (it cannot
/// be read), `line` and `column` are 0 and `key` is empty, and only `FILE: MESSAGE` is shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(self))]
pub struct ConfigError {
    /// The file that holds the problem.
    pub file: PathBuf,
    /// The line, counted from 1; 0 when the problem concerns the whole file.
    pub line: usize,
    /// The column in characters, counted from 1; 0 when the problem concerns the whole file.
    pub column: usize,
    /// The dotted key, such as `firewall.service[1].ports[0]`; empty when there is none.
    pub key: String,
    /// What is wrong, without a trailing period.
    pub message: String,
}

impl ConfigError {
    /// The error for a file that cannot be read at all.
    pub fn unreadable(file: &Path, err: &std::io::Error) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read: {err}"),
        }
    }
}

fn render(err: &ConfigError) -> String {
    let mut out = err.file.display().to_string();
    if err.line > 0 {
        out.push_str(&format!(":{}:{}", err.line, err.column));
    }
    out.push_str(": ");
    if !err.key.is_empty() {
        out.push_str(&err.key);
        out.push_str(": ");
    }
    out.push_str(&err.message);
    out
}

/// All problems found in one attempt to read a configuration, in the order of the files and,
/// within a file, mostly in the order of the keys. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_all(&self.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn render_all(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

impl From<ConfigError> for ConfigErrors {
    fn from(err: ConfigError) -> Self {
        ConfigErrors(vec![err])
    }
}

/// A value read from a piece of a file whose spans are moved to offsets in the whole file
/// (see [`Source::deserialize_tables`]).
pub(crate) trait Shift: Sized {
    /// The value with `by` added to every span in it.
    #[must_use]
    fn shift(self, by: usize) -> Self;
}

impl<T> Shift for Spanned<T> {
    fn shift(self, by: usize) -> Self {
        let span = self.span();
        Spanned::new(span.start + by..span.end + by, self.into_inner())
    }
}

impl<T: Shift> Shift for Option<T> {
    fn shift(self, by: usize) -> Self {
        self.map(|value| value.shift(by))
    }
}

/// The text of one file together with its name, used to place errors.
pub(crate) struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    /// The byte offset at which each line starts, built on the first [`Source::position`]:
    /// a peers file of tens of thousands of devices places every peer's name, key and
    /// addresses, and counting lines from the top for each would take minutes.
    line_starts: OnceCell<Vec<usize>>,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Source {
            file,
            text,
            line_starts: OnceCell::new(),
        }
    }

    /// The directory against which relative paths in this file are resolved.
    pub fn base_dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new(""))
    }

    /// The 1-based line and character column of the byte `offset`, clamped to the text.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        // The last line starting at or before `offset`; line 0 starts at 0, so there is one.
        let index = starts
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        let line_start = starts.get(index).copied().unwrap_or(0);
        let column = self.text[line_start..offset].chars().count() + 1;
        (index + 1, column)
    }

    /// An error about the value at `span` whose dotted key is `key`.
    pub fn error(&self, span: &Range<usize>, key: &str, message: impl fmt::Display) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_owned(),
            message: message.to_string(),
        }
    }

    /// An error at a 1-based line and column, for line-oriented files such as deny files.
    pub fn error_at_line(
        &self,
        line: usize,
        column: usize,
        key: &str,
        message: impl fmt::Display,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_owned(),
            message: message.to_string(),
        }
    }

    /// Deserializes the text, turning a syntax or schema error into a located error whose key is
    /// found by scanning the text around the reported span.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|err| self.toml_error(&err))
    }

    /// The entries of the array of tables `name` (`[[name]]`) of a file that holds nothing
    /// else, read one entry at a time; `None` when the file is not of that plain shape or an
    /// entry does not read, and the caller then deserializes the whole file as usual, which
    /// gives the same entries or the located error.
    ///
    /// `toml` builds a document of the whole text before deserializing it, about 2.7 KiB per
    /// peer; for a peers file of tens of thousands of devices that is tens of megabytes at
    /// every load, freed at once but left behind in the allocator's heap, which holds on to
    /// it. One entry at a time, the document is that of one entry.
    ///
    /// The text is cut before each line that is exactly `[[name]]` (spaces around allowed).
    /// Such a line is a header unless it lies inside a multi-line string or array; then the
    /// piece before it ends inside that string or array and does not read, so the whole file
    /// is read instead. The text before the first header may hold comments only, and each
    /// piece must hold `name` only: anything else sends the file to the whole reading too.
    /// Spans are moved back to offsets in the whole text ([`Shift`]).
    pub fn deserialize_tables<E: DeserializeOwned + Shift>(&self, name: &str) -> Option<Vec<E>> {
        let header = format!("[[{name}]]");
        let mut cuts = Vec::new();
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            if line.trim() == header {
                cuts.push(offset);
            }
            offset += line.len();
        }
        let first = cuts.first().copied().unwrap_or(self.text.len());
        let before: toml::Table = toml::from_str(self.text.get(..first)?).ok()?;
        if !before.is_empty() {
            return None;
        }
        let mut entries = Vec::with_capacity(cuts.len());
        let ends = cuts.iter().skip(1).copied().chain([self.text.len()]);
        for (start, end) in cuts.iter().copied().zip(ends) {
            let mut piece: BTreeMap<String, Vec<E>> =
                toml::from_str(self.text.get(start..end)?).ok()?;
            let read = piece.remove(name)?;
            if !piece.is_empty() {
                return None;
            }
            entries.extend(read.into_iter().map(|entry| entry.shift(start)));
        }
        Some(entries)
    }

    /// The message for a syntax error at byte `offset` that `toml` gave none for.
    fn unexplained(&self, offset: usize) -> String {
        let found = self.text.get(offset..).and_then(|rest| rest.chars().next());
        match found {
            Some(c) if c.is_control() => format!(
                "invalid control character U+{:04X} (only tab is allowed in TOML text)",
                u32::from(c)
            ),
            Some(c) => format!("invalid TOML at {c:?}"),
            None => "invalid TOML at the end of the file".to_owned(),
        }
    }

    fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        // `toml` puts the context of a syntax error on further lines; one line per error keeps
        // `crmguard check` output greppable.
        let message = err
            .message()
            .trim_end()
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(": ");
        // `toml` reports some syntax errors (a control character in a comment) with no
        // message at all; the error then says what it found there.
        let message = if message.is_empty() {
            self.unexplained(err.span().map_or(self.text.len(), |span| span.start))
        } else {
            message
        };
        match err.span() {
            Some(span) => {
                let key = keypath::key_at(self.text, span.start);
                self.error(&span, &key, message)
            }
            None => ConfigError {
                file: self.file.to_path_buf(),
                line: 0,
                column: 0,
                key: String::new(),
                message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Line and column counted from the top, as a reader would.
    fn counted(text: &str, offset: usize) -> (usize, usize) {
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    #[test]
    fn positions_agree_with_counting_from_the_top() {
        let text = "\n[vpn]\naddress = \"10.77.0.1/24\"\n\n# né à Zürich\nname = \"é\"\n\nlast";
        let src = Source::new(Path::new("crmguard.toml"), text);
        for offset in 0..=text.len() {
            if text.is_char_boundary(offset) {
                assert_eq!(
                    src.position(offset),
                    counted(text, offset),
                    "offset {offset}"
                );
            }
        }
        // Inside a character: the start of that character; past the end: the end.
        let inside = text.find('é').map_or(0, |i| i + 1);
        assert_eq!(src.position(inside), counted(text, inside - 1));
        assert_eq!(src.position(text.len() + 10), counted(text, text.len()));
        let empty = Source::new(Path::new("peers.toml"), "");
        assert_eq!(empty.position(0), (1, 1));
        assert_eq!(empty.position(5), (1, 1));
    }

    /// An entry of the test documents: a spanned string and an optional integer.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        name: Spanned<String>,
        n: Option<Spanned<i64>>,
    }

    impl Shift for Entry {
        fn shift(self, by: usize) -> Self {
            Entry {
                name: self.name.shift(by),
                n: self.n.shift(by),
            }
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Whole {
        #[serde(default)]
        peer: Vec<Entry>,
    }

    type Flat = (String, Range<usize>, Option<(i64, Range<usize>)>);

    /// Each entry's values with their spans (`Spanned`'s equality ignores spans).
    fn flat(entries: &[Entry]) -> Vec<Flat> {
        entries
            .iter()
            .map(|e| {
                (
                    e.name.get_ref().clone(),
                    e.name.span(),
                    e.n.as_ref().map(|n| (*n.get_ref(), n.span())),
                )
            })
            .collect()
    }

    /// Reads `text` one entry at a time and whole; when the first reads, both must give the
    /// same entries at the same offsets. Returns whether the first read.
    fn agree(text: &str) -> bool {
        let src = Source::new(Path::new("peers.toml"), text);
        let pieces = src.deserialize_tables::<Entry>("peer");
        let whole = src.deserialize::<Whole>();
        match pieces {
            Some(pieces) => {
                let whole = whole.unwrap_or_else(|e| panic!("{text:?}: {e}"));
                assert_eq!(flat(&pieces), flat(&whole.peer), "{text:?}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn entries_read_one_at_a_time_are_those_of_the_whole_file() {
        for text in [
            "",
            "# only comments\n\n",
            "[[peer]]\nname = \"a\"\n",
            "# header\n\n[[peer]]\nname = \"a\"\nn = 1\n\n[[peer]]\nname = \"b\" # x\n",
            "[[peer]]\r\nname = \"a\"\r\n  [[peer]]  \r\nname = \"\u{e9}t\u{e9}\"\r\nn = 2",
            // Headers the cut does not see are read within the piece before them.
            "[[peer]]\nname = \"a\"\n[[ peer ]]\nname = \"b\"\n[[peer]] # c\nname = \"c\"\n",
        ] {
            assert!(agree(text), "{text:?} was not read one entry at a time");
        }
    }

    #[test]
    fn files_of_another_shape_are_read_whole() {
        for text in [
            // A header line inside a multi-line string or array.
            "[[peer]]\nname = \"\"\"\n[[peer]]\n\"\"\"\n",
            "[[peer]]\nname = '''\n[[peer]]\nname = \"b\"\n'''\n",
            "[[peer]]\nname = \"a\"\nn = [\n[[peer]]\n]\n",
            // An array of peers before the headers, which TOML refuses to extend.
            "peer = [{ name = \"a\" }]\n[[peer]]\nname = \"b\"\n",
            // Keys and tables other than the peers.
            "x = 1\n[[peer]]\nname = \"a\"\n",
            "[[peer]]\nname = \"a\"\n[other]\nx = 1\n",
            "[[peer]]\nname = \"a\"\n[peer.sub]\nx = 1\n",
            // Entries that do not read: the whole reading gives the located error.
            "[[peer]]\nname = \"a\"\nextra = 1\n",
            "[[peer]]\nname = \"a\"\nname = \"b\"\n",
            "[[peer]]\nn = 1\n",
            "[[peer]]\nname = \"a\n",
        ] {
            assert!(!agree(text), "{text:?} was read one entry at a time");
        }
    }
}
