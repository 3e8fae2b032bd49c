//! The reassembly of one direction against a model that keeps one optional byte per offset.
//!
//! Input: `[window: u16 BE][base: u32 BE]` then operations of
//! `[op][sequence offset from base: u32 BE][length: u16 BE]` and, when `op & 2` is 0, that
//! many payload bytes (cut where the input ends); when `op & 2` is set the payload is made
//! (a slice of a fixed pattern, from offset `op`), so a short input can send a 64 KiB super-packet. `op & 1` is
//! FIN. The window is `1 + (window % 9000)` bytes.
//!
//! After each `add`: the contiguous bytes are the model's (the first copy of a byte wins),
//! `add` says whether they or `done` changed and whether a byte was offered again with another
//! value, `done` is right (a FIN before bytes already written is stale), and the memory held
//! stays within a small multiple of the window.

use crmguard_inspect::reasm::Reassembly;

/// The model: each offset of the window written or not, how far from the start every byte is
/// written, and where the stream ends.
struct Model {
    bytes: Vec<Option<u8>>,
    contiguous: usize,
    /// One past the furthest byte written.
    furthest: usize,
    end: Option<usize>,
}

impl Model {
    fn done(&self) -> bool {
        self.contiguous >= self.bytes.len() || self.end.is_some_and(|end| self.contiguous >= end)
    }

    /// Byte `i` of a segment whose first byte is `offset` (mod 2^32) from the base lands at
    /// `offset + i`; offsets past half the sequence space are before the base.
    /// Returns whether a byte already written was offered with another value.
    fn add(&mut self, offset: u32, payload: &[u8], fin: bool) -> bool {
        let mut conflict = false;
        let start = i64::from(offset) - if offset > u32::MAX / 2 { 1 << 32 } else { 0 };
        let len = i64::try_from(payload.len()).unwrap_or(i64::MAX);
        let window = i64::try_from(self.bytes.len()).unwrap_or(i64::MAX);
        // Only the bytes that land in the window: `start + i` in `0..window`.
        let first = usize::try_from((-start).clamp(0, len)).unwrap_or(0);
        let last = usize::try_from((window - start).clamp(0, len)).unwrap_or(0);
        for (i, &byte) in payload.iter().enumerate().take(last).skip(first) {
            let at = usize::try_from(start + i64::try_from(i).unwrap_or(0)).unwrap_or(0);
            match self.bytes[at] {
                None => self.bytes[at] = Some(byte),
                Some(old) => conflict |= old != byte,
            }
            self.furthest = self.furthest.max(at + 1);
        }
        while self.bytes.get(self.contiguous).is_some_and(Option::is_some) {
            self.contiguous += 1;
        }
        // A FIN before bytes already written is stale; a later one does not move the end.
        if let (true, Ok(end)) = (fin, usize::try_from(start + len)) {
            if end >= self.furthest && self.end.is_none_or(|e| end <= e) {
                self.end = Some(end);
            }
        }
        conflict
    }

    /// Whether `bytes` are the contiguous bytes from the start.
    fn holds(&self, bytes: &[u8]) -> bool {
        bytes.len() == self.contiguous
            && bytes
                .iter()
                .zip(&self.bytes)
                .all(|(byte, slot)| Some(*byte) == *slot)
    }
}

/// Made payloads are slices of this pattern (a period that is not a power of two, so a
/// misplaced byte shows).
fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..u32::from(u16::MAX) + 256)
            .map(|i| (i % 251).to_le_bytes()[0])
            .collect()
    })
}

/// Feeds `data` to one [`Reassembly`] and its model.
pub fn run(data: &[u8]) {
    let window = 1 + usize::from(crate::be16(data, 0)) % 9_000;
    let base = crate::be32(data, 2);
    let mut stream = Reassembly::new(base, window);
    let mut model = Model {
        bytes: vec![None; window],
        contiguous: 0,
        furthest: 0,
        end: None,
    };
    let mut rest = data.get(6..).unwrap_or(&[]);
    while rest.len() >= 7 {
        let op = rest[0];
        let offset = crate::be32(rest, 1);
        let len = usize::from(crate::be16(rest, 5));
        rest = &rest[7..];
        let payload: &[u8] = if op & 2 != 0 {
            let from = usize::from(op);
            &pattern()[from..from + len]
        } else {
            let (payload, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            payload
        };
        let fin = op & 1 != 0;

        let before = (stream.bytes().len(), stream.done());
        let added = stream.add(base.wrapping_add(offset), payload, fin);
        let conflict = model.add(offset, payload, fin);
        assert_eq!(added.conflict, conflict, "conflict differs");
        let grew = added.grew;
        assert!(
            model.holds(stream.bytes()),
            "contiguous bytes differ: {} bytes, the model has {}",
            stream.bytes().len(),
            model.contiguous
        );
        assert_eq!(stream.done(), model.done(), "done differs");
        assert_eq!(
            grew,
            before != (stream.bytes().len(), stream.done()),
            "add's answer differs from what changed"
        );
        assert!(
            stream.held() <= 3 * window + 64,
            "{} bytes held for a window of {window}",
            stream.held()
        );
    }
}
