//! One side of the book: a dense array of price levels indexed by `price - min_price`, a
//! two-level bitset of the non-empty ones (to find the next best level quickly), and the best.

pub(crate) const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
pub(crate) struct LevelSlot {
    pub head: u32,
    pub tail: u32,
    pub count: u32,
    pub total: u64,
}

const EMPTY: LevelSlot = LevelSlot {
    head: NIL,
    tail: NIL,
    count: 0,
    total: 0,
};

#[derive(Clone, Debug)]
struct Bitset {
    l0: Vec<u64>,
    l1: Vec<u64>,
}

impl Bitset {
    fn new(n: usize) -> Self {
        let w0 = n.div_ceil(64);
        Bitset {
            l0: vec![0; w0],
            l1: vec![0; w0.div_ceil(64)],
        }
    }
    fn set(&mut self, i: usize) {
        let w = i >> 6;
        self.l0[w] |= 1 << (i & 63);
        self.l1[w >> 6] |= 1 << (w & 63);
    }
    fn clear(&mut self, i: usize) {
        let w = i >> 6;
        self.l0[w] &= !(1 << (i & 63));
        if self.l0[w] == 0 {
            self.l1[w >> 6] &= !(1 << (w & 63));
        }
    }
    /// Smallest set index >= i.
    fn next_ge(&self, i: usize) -> Option<usize> {
        let w = i >> 6;
        if w >= self.l0.len() {
            return None;
        }
        let m = self.l0[w] & (!0u64 << (i & 63));
        if m != 0 {
            return Some((w << 6) + m.trailing_zeros() as usize);
        }
        let w1 = w + 1;
        let mut j = w1 >> 6;
        if j >= self.l1.len() {
            return None;
        }
        let mut m1 = if w1 & 63 == 0 {
            self.l1[j]
        } else {
            self.l1[j] & (!0u64 << (w1 & 63))
        };
        loop {
            if m1 != 0 {
                let ww = (j << 6) + m1.trailing_zeros() as usize;
                return Some((ww << 6) + self.l0[ww].trailing_zeros() as usize);
            }
            j += 1;
            if j >= self.l1.len() {
                return None;
            }
            m1 = self.l1[j];
        }
    }
    /// Largest set index <= i.
    fn prev_le(&self, i: usize) -> Option<usize> {
        let w = i >> 6;
        let b = i & 63;
        let mask = if b == 63 {
            !0u64
        } else {
            (1u64 << (b + 1)) - 1
        };
        let m = self.l0[w] & mask;
        if m != 0 {
            return Some((w << 6) + 63 - m.leading_zeros() as usize);
        }
        if w == 0 {
            return None;
        }
        let w1 = w - 1;
        let mut j = w1 >> 6;
        let b1 = w1 & 63;
        let mut m1 = self.l1[j]
            & if b1 == 63 {
                !0u64
            } else {
                (1u64 << (b1 + 1)) - 1
            };
        loop {
            if m1 != 0 {
                let ww = (j << 6) + 63 - m1.leading_zeros() as usize;
                return Some((ww << 6) + 63 - self.l0[ww].leading_zeros() as usize);
            }
            if j == 0 {
                return None;
            }
            j -= 1;
            m1 = self.l1[j];
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Ladder {
    pub levels: Vec<LevelSlot>,
    bits: Bitset,
    /// Bids: the highest non-empty index is best; asks: the lowest.
    is_bid: bool,
    pub best: Option<u32>,
    pub nonempty: u32,
}

impl Ladder {
    pub fn new(n: usize, is_bid: bool) -> Self {
        Ladder {
            levels: vec![EMPTY; n],
            bits: Bitset::new(n),
            is_bid,
            best: None,
            nonempty: 0,
        }
    }

    /// Marks level `i` non-empty (call when its count goes 0 → 1).
    pub fn mark(&mut self, i: u32) {
        self.bits.set(i as usize);
        self.nonempty += 1;
        self.best = match self.best {
            None => Some(i),
            Some(b) if (self.is_bid && i > b) || (!self.is_bid && i < b) => Some(i),
            keep => keep,
        };
    }

    /// Marks level `i` empty (call when its count goes 1 → 0).
    pub fn unmark(&mut self, i: u32) {
        self.bits.clear(i as usize);
        self.nonempty -= 1;
        if self.best == Some(i) {
            self.best = if self.is_bid {
                self.bits.prev_le(i as usize).map(|x| x as u32)
            } else {
                self.bits.next_ge(i as usize).map(|x| x as u32)
            };
        }
    }

    /// The next non-empty level worse than `i` (lower for bids, higher for asks).
    pub fn next_worse(&self, i: u32) -> Option<u32> {
        if self.is_bid {
            if i == 0 {
                None
            } else {
                self.bits.prev_le(i as usize - 1).map(|x| x as u32)
            }
        } else {
            self.bits.next_ge(i as usize + 1).map(|x| x as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitset_finds_neighbours() {
        let n = 300_000;
        let mut b = Bitset::new(n);
        let marks = [0usize, 5, 63, 64, 4095, 4096, 100_000, 299_999];
        for &m in &marks {
            b.set(m);
        }
        for probe in [
            0usize, 1, 6, 63, 64, 65, 4000, 4096, 4097, 99_999, 100_001, 299_999,
        ] {
            let ge = marks.iter().copied().find(|&m| m >= probe);
            let le = marks.iter().rev().copied().find(|&m| m <= probe);
            assert_eq!(b.next_ge(probe), ge, "next_ge {probe}");
            assert_eq!(b.prev_le(probe), le, "prev_le {probe}");
        }
        b.clear(4096);
        assert_eq!(b.next_ge(4000), Some(4095));
        assert_eq!(b.next_ge(4096), Some(100_000));
        assert_eq!(b.prev_le(99_999), Some(4095));
    }
}
