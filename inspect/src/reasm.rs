//! Reassembly of the first bytes of one direction of a TCP connection.
//!
//! Only a window at the start of the stream is kept (a few KiB: what identification and the
//! policy need). Segments may arrive split at any byte, retransmitted, overlapping, out of
//! order, or as one super-packet of up to 64 KiB; each byte of the window is written once (the
//! first copy wins) and the parsers see the prefix that is contiguous. A segment that rewrites
//! bytes already seen with other bytes is reported: no TCP stack does that, but an evasion does
//! (a decoy the receiver drops, then the real bytes), so the engine ends such a flow.

/// The bytes of one direction from its first byte, up to a fixed window.
#[derive(Debug, Clone)]
pub struct Reassembly {
    /// The sequence number of the stream's first byte.
    base: u32,
    /// The window's bytes; `data.len()` is one past the furthest byte written.
    data: Vec<u8>,
    /// One bit per byte of `data`: written.
    written: Vec<u64>,
    /// How many bytes from the start are written without a gap.
    contiguous: usize,
    /// The window: bytes past it are not kept.
    cap: usize,
    /// The side closed (FIN or RST) at this offset, if it did.
    end: Option<usize>,
}

impl Reassembly {
    /// A stream whose first byte has sequence number `base`, keeping `cap` bytes.
    pub fn new(base: u32, cap: usize) -> Reassembly {
        Reassembly {
            base,
            data: Vec::new(),
            written: Vec::new(),
            contiguous: 0,
            cap,
            end: None,
        }
    }

    /// The sequence number of the stream's first byte.
    pub fn base(&self) -> u32 {
        self.base
    }

    /// The contiguous bytes from the start.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.contiguous]
    }

    /// Whether no more bytes can be added: the window is full, or the side closed and every
    /// byte before its end arrived.
    pub fn done(&self) -> bool {
        self.contiguous >= self.cap || self.end.is_some_and(|end| self.contiguous >= end)
    }

    /// Bytes held, for the memory budget.
    pub fn held(&self) -> usize {
        self.data.capacity() + self.written.capacity() * 8
    }

    /// Adds the segment `payload` that starts at sequence number `seq`; `fin` marks the end of
    /// the stream after it (a FIN before bytes already seen is stale and ignored, as the
    /// receiver ignores it).
    pub fn add(&mut self, seq: u32, payload: &[u8], fin: bool) -> Added {
        let before = (self.contiguous, self.done());
        // Offsets are taken modulo 2^32 from the base: a segment before the base (a
        // retransmitted SYN's data, or old bytes) has an offset near 2^32 and is clipped.
        let offset = seq.wrapping_sub(self.base);
        let (skip, start) = if offset > u32::MAX / 2 {
            (
                usize::try_from(offset.wrapping_neg()).unwrap_or(usize::MAX),
                0,
            )
        } else {
            (0, usize::try_from(offset).unwrap_or(usize::MAX))
        };
        let mut conflict = false;
        if skip < payload.len() && start < self.cap {
            let take = (payload.len() - skip).min(self.cap - start);
            conflict = self.write(start, &payload[skip..skip + take]);
        }
        if fin && skip <= payload.len() {
            let end = start.saturating_add(payload.len() - skip);
            if end >= self.data.len() && self.end.is_none_or(|e| end <= e) {
                self.end = Some(end);
            }
        }
        Added {
            grew: before != (self.contiguous, self.done()),
            conflict,
        }
    }

    /// Writes the bytes not written yet; true when a byte already written differs.
    fn write(&mut self, start: usize, bytes: &[u8]) -> bool {
        let mut conflict = false;
        let end = start + bytes.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
            self.written.resize(end.div_ceil(64), 0);
        }
        for (i, &byte) in bytes.iter().enumerate() {
            let at = start + i;
            let (word, bit) = (at / 64, 1u64 << (at % 64));
            if self.written[word] & bit == 0 {
                self.written[word] |= bit;
                self.data[at] = byte;
            } else if self.data[at] != byte {
                conflict = true;
            }
        }
        while self.contiguous < self.data.len() {
            let (word, bit) = (self.contiguous / 64, 1u64 << (self.contiguous % 64));
            if self.written[word] & bit == 0 {
                break;
            }
            self.contiguous += 1;
        }
        conflict
    }
}

/// What adding a segment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Added {
    /// The contiguous prefix grew, or the stream ended.
    pub grew: bool,
    /// The segment rewrote bytes already seen with other bytes.
    pub conflict: bool,
}

#[cfg(test)]
mod tests {
    use super::Reassembly;

    const TEXT: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: crm.example.com\r\n\r\n";

    #[test]
    fn in_order_segments_join() {
        let mut r = Reassembly::new(1000, 4096);
        assert!(r.add(1000, &TEXT[..10], false).grew);
        assert!(r.add(1010, &TEXT[10..], false).grew);
        assert_eq!(r.bytes(), TEXT);
        assert!(!r.done());
    }

    #[test]
    fn every_split_point_and_both_orders_give_the_same_bytes() {
        for split in 0..=TEXT.len() {
            for reversed in [false, true] {
                let mut r = Reassembly::new(u32::MAX - 5, 4096);
                let (a, b) = TEXT.split_at(split);
                let second = (u32::MAX - 5).wrapping_add(u32::try_from(split).unwrap_or(0));
                if reversed {
                    r.add(second, b, true);
                    r.add(u32::MAX - 5, a, false);
                } else {
                    r.add(u32::MAX - 5, a, false);
                    r.add(second, b, true);
                }
                assert_eq!(r.bytes(), TEXT, "split {split} reversed {reversed}");
                assert!(r.done(), "the FIN ends the stream");
            }
        }
    }

    #[test]
    fn the_first_copy_of_a_byte_wins() {
        let mut r = Reassembly::new(0, 4096);
        r.add(4, b"WXYZ", false);
        assert!(r.add(0, b"abcdWXYZ", false).grew);
        assert_eq!(r.bytes(), b"abcdWXYZ");
        // The same bytes again are a retransmission; other bytes are a conflict, never written.
        assert_eq!(r.add(0, b"abcd", false), super::Added::default());
        let rewrite = r.add(0, b"ABCDEFGH", false);
        assert!(rewrite.conflict && !rewrite.grew);
        assert_eq!(r.bytes(), b"abcdWXYZ");
    }

    #[test]
    fn old_bytes_are_clipped_and_the_window_is_bounded() {
        let mut r = Reassembly::new(100, 8);
        r.add(96, b"oldnabcd", false);
        assert_eq!(r.bytes(), b"abcd");
        let big = vec![7u8; 65_536];
        r.add(104, &big, false);
        assert_eq!(r.bytes().len(), 8);
        assert!(r.done());
        assert!(r.held() < 1024);
    }

    #[test]
    fn a_stale_fin_before_bytes_already_seen_does_not_end_the_stream() {
        let mut r = Reassembly::new(0, 4096);
        r.add(0, b"GET / HTTP/1.1\r\n", false);
        r.add(0, b"", true);
        assert!(!r.done());
        r.add(16, b"Host: x\r\n\r\n", true);
        assert!(r.done());
    }

    #[test]
    fn a_gap_holds_the_prefix_back() {
        let mut r = Reassembly::new(0, 4096);
        r.add(5, b"world", false);
        assert_eq!(r.bytes(), b"");
        r.add(0, b"hello", false);
        assert_eq!(r.bytes(), b"helloworld");
    }
}
