//! Configuration errors and the translation of byte spans into lines and columns.
//!
//! Every error names a file; errors about a value also name its line, its column and its dotted
//! key. Positions are computed here from the byte spans that `toml` reports, so that the message
//! format is ours and does not depend on the multi-line rendering of `toml`'s own errors.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;

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

/// The text of one file together with its name, used to place errors.
pub(crate) struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    /// The byte offset of each line's start, found on the first [`Source::position`]: a
    /// peers file of 10,000 peers asks for a position several times per peer, and counting
    /// the lines before each from the top of the file made loading it quadratic.
    line_starts: OnceLock<Vec<usize>>,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Source {
            file,
            text,
            line_starts: OnceLock::new(),
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
        // Lines starting at or before `offset`; the first starts at 0, so there is one.
        let lines_before = starts.partition_point(|&start| start <= offset);
        let line_start = starts
            .get(lines_before.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self.text[line_start..offset].chars().count() + 1;
        (lines_before.max(1), column)
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

    /// Line and column the plain way: newlines before the offset, characters since the last.
    fn counted(text: &str, offset: usize) -> (usize, usize) {
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (
            before.matches('\n').count() + 1,
            before[line_start..].chars().count() + 1,
        )
    }

    #[test]
    fn positions_are_lines_and_characters_before_the_offset() {
        let text = "[vpn]\nname = \"Ольга\"\n\n\nkey = 1\nlast";
        let src = Source::new(Path::new("x.toml"), text);
        for offset in (0..=text.len()).filter(|&o| text.is_char_boundary(o)) {
            assert_eq!(
                src.position(offset),
                counted(text, offset),
                "offset {offset}"
            );
        }
        // Past the end: the end; inside a character: its start.
        assert_eq!(src.position(text.len() + 10), counted(text, text.len()));
        let inside = text.find('л').map_or(0, |i| i + 1);
        assert_eq!(src.position(inside), counted(text, inside - 1));
        let empty = Source::new(Path::new("e.toml"), "");
        assert_eq!(empty.position(5), (1, 1));
    }
}
