//! Splitting a byte stream into lines: partial lines wait for their newline, overlong lines
//! are cut, bytes that are not UTF-8 are replaced.

/// The longest line handed over whole, in bytes; a longer one is cut to this length and the
/// rest of it skipped, so a writer that never ends a line cannot grow the follower's memory.
pub const MAX_LINE: usize = 64 * 1024;

/// The bytes of a line not yet ended by a newline, and whether the current line is being
/// skipped after being cut.
#[derive(Debug, Default)]
pub struct Lines {
    pending: Vec<u8>,
    skipping: bool,
}

/// A complete line as [`Lines::feed`] hands it over.
#[derive(Debug, PartialEq, Eq)]
pub struct Split<'a> {
    /// The line without `\n` (and without a `\r` before it).
    pub bytes: &'a [u8],
    /// The line was longer than [`MAX_LINE`]; these are its first bytes.
    pub cut: bool,
}

impl Lines {
    /// Feeds bytes read after the previous ones, calling `out` for each line they complete
    /// (and for the beginning of each line that grows over [`MAX_LINE`]).
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut dyn FnMut(Split<'_>)) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let (part, rest, ended) = match newline {
                Some(at) => (&bytes[..at], &bytes[at + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if self.skipping {
                self.skipping = !ended;
                continue;
            }
            let room = MAX_LINE - self.pending.len();
            if part.len() > room {
                self.pending.extend_from_slice(&part[..room]);
                out(Split {
                    bytes: &self.pending,
                    cut: true,
                });
                self.pending.clear();
                self.skipping = !ended;
                continue;
            }
            if !ended {
                self.pending.extend_from_slice(part);
                continue;
            }
            let line = if self.pending.is_empty() {
                part
            } else {
                self.pending.extend_from_slice(part);
                &self.pending[..]
            };
            out(Split {
                bytes: line.strip_suffix(b"\r").unwrap_or(line),
                cut: false,
            });
            self.pending.clear();
        }
    }

    /// Bytes held for a line whose newline has not come yet (0 while skipping a cut line,
    /// whose beginning was already handed over).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Hands over a final line that never got its newline (the file it came from will not
    /// grow again) and forgets it.
    pub fn finish(&mut self, out: &mut dyn FnMut(Split<'_>)) {
        if !self.pending.is_empty() {
            out(Split {
                bytes: &self.pending,
                cut: false,
            });
        }
        self.pending.clear();
        self.skipping = false;
    }

    /// Forgets a partial line (its file was truncated under it).
    pub fn discard(&mut self) {
        self.pending.clear();
        self.skipping = false;
    }
}

/// A line's text: bytes that are not UTF-8 become U+FFFD, and the NUL bytes a truncated file
/// gets at its start from a writer that does not append (a hole up to its old offset) are
/// dropped.
pub fn text(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.feed(chunk, &mut |s: Split<'_>| {
                out.push((s.bytes.to_vec(), s.cut))
            });
        }
        out
    }

    #[test]
    fn whole_and_partial_lines() {
        let check = |chunks: &[&[u8]], expected: &[&[u8]]| {
            let got: Vec<Vec<u8>> = split(chunks).into_iter().map(|(l, _)| l).collect();
            let expected: Vec<Vec<u8>> = expected.iter().map(|l| l.to_vec()).collect();
            assert_eq!(got, expected, "{chunks:?}");
        };
        check(&[b"a\nb\n"], &[b"a", b"b"]);
        check(&[b"a\nb"], &[b"a"]);
        check(&[b"ab", b"c", b"\nd\n"], &[b"abc", b"d"]);
        check(&[b"a\r\n", b"\r\n"], &[b"a", b""]);
        check(&[b"\n\n"], &[b"", b""]);
        check(&[b"", b"x"], &[]);
    }

    #[test]
    fn overlong_lines_are_cut_once_and_the_rest_skipped() {
        let long = vec![b'x'; MAX_LINE + 10];
        let mut input = long.clone();
        input.extend_from_slice(b"\nnext\n");
        for step in [1000, MAX_LINE, input.len()] {
            let chunks: Vec<&[u8]> = input.chunks(step).collect();
            let got = split(&chunks);
            assert_eq!(got.len(), 2, "step {step}");
            assert_eq!(got[0], (long[..MAX_LINE].to_vec(), true));
            assert_eq!(got[1], (b"next".to_vec(), false));
        }
        // Exactly MAX_LINE bytes is still a whole line.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(split(&[&exact]), vec![(vec![b'y'; MAX_LINE], false)]);
    }

    #[test]
    fn pending_counts_only_held_bytes() {
        let mut lines = Lines::default();
        lines.feed(b"ab\ncd", &mut |_| {});
        assert_eq!(lines.pending(), 2);
        let mut last = Vec::new();
        lines.finish(&mut |s: Split<'_>| last = s.bytes.to_vec());
        assert_eq!(last, b"cd");
        assert_eq!(lines.pending(), 0);
    }

    #[test]
    fn text_is_lossy_and_drops_a_leading_hole() {
        assert_eq!(text(b"caf\xc3\xa9"), "café");
        assert_eq!(text(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(text(b"\0\0\0line"), "line");
        assert_eq!(text(b"\0\0"), "");
    }
}
