//! The reassembly of one direction against a model that keeps one optional byte per offset.
//!
//! Input: `[window: u16 BE][base: u32 BE]` then operations of
//! `[op][sequence offset from base: u32 BE][length: u16 BE]` and, when `op & 2` is 0, that
//! many payload bytes (cut where the input ends); when `op & 2` is set the payload is made
//! (a pattern seeded by `op`), so a short input can send a 64 KiB super-packet. `op & 1` is
//! FIN. The window is `1 + (window % 9000)` bytes.
//!
//! After each `add`: the contiguous bytes are the model's (the first copy of a byte wins),
//! `add` says whether they or `done` changed, `done` is right, and the memory held stays
//! within a small multiple of the window.

use crmguard_inspect::reasm::Reassembly;

/// The model: each offset of the window written or not, and where the stream ends.
struct Model {
    bytes: Vec<Option<u8>>,
    end: Option<usize>,
}

impl Model {
    fn contiguous(&self) -> usize {
        self.bytes
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.bytes.len())
    }

    fn done(&self) -> bool {
        let contiguous = self.contiguous();
        contiguous >= self.bytes.len() || self.end.is_some_and(|end| contiguous >= end)
    }

    /// Byte `i` of a segment whose first byte is `offset` (mod 2^32) from the base lands at
    /// `offset + i`; offsets past half the sequence space are before the base.
    fn add(&mut self, offset: u32, payload: &[u8], fin: bool) {
        let start = i64::from(offset) - if offset > u32::MAX / 2 { 1 << 32 } else { 0 };
        for (i, &byte) in payload.iter().enumerate() {
            let at = start + i64::try_from(i).unwrap_or(i64::MAX);
            if let Ok(at) = usize::try_from(at) {
                if let Some(slot @ None) = self.bytes.get_mut(at) {
                    *slot = Some(byte);
                }
            }
        }
        let end = start + i64::try_from(payload.len()).unwrap_or(i64::MAX);
        if let (true, Ok(end)) = (fin, usize::try_from(end)) {
            self.end = Some(self.end.map_or(end, |e| e.min(end)));
        }
    }
}

/// Feeds `data` to one [`Reassembly`] and its model.
pub fn run(data: &[u8]) {
    let window = 1 + usize::from(crate::be16(data, 0)) % 9_000;
    let base = crate::be32(data, 2);
    let mut stream = Reassembly::new(base, window);
    let mut model = Model {
        bytes: vec![None; window],
        end: None,
    };
    let mut rest = data.get(6..).unwrap_or(&[]);
    let mut made = Vec::new();
    while rest.len() >= 7 {
        let op = rest[0];
        let offset = crate::be32(rest, 1);
        let len = usize::from(crate::be16(rest, 5));
        rest = &rest[7..];
        let payload: &[u8] = if op & 2 != 0 {
            made.clear();
            made.extend((0..len).map(|i| op.wrapping_add(i.to_le_bytes()[0].wrapping_mul(31))));
            &made
        } else {
            let (payload, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            payload
        };
        let fin = op & 1 != 0;

        let before = (stream.bytes().len(), stream.done());
        let grew = stream.add(base.wrapping_add(offset), payload, fin);
        model.add(offset, payload, fin);
        let contiguous = model.contiguous();
        let expected: Vec<u8> = model.bytes[..contiguous]
            .iter()
            .flatten()
            .copied()
            .collect();
        assert_eq!(stream.bytes(), &expected[..], "contiguous bytes differ");
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
