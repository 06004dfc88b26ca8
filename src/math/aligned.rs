//! f32 buffers that start on a cache line, for the rows a pass keeps in L1
//! and reads back in whole vectors.
//!
//! A 64-byte vector load from an address that is not a multiple of 64
//! spans two cache lines and costs the core two loads. The powered loss
//! pass's second half loads two such vectors per 16 logits, the row it kept
//! and the per-class table, both from index 0; a `Vec<f32>` starts wherever
//! the allocator puts it (16 bytes apart on glibc), and with both split the
//! loop took 2.9 cycles per 16 logits on this machine's AVX-512 against 1.6
//! with both on a line (benches/RESULTS.md).

use super::lanes::LINE;

/// One cache line of f32.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; LINE]);

// `align(64)` must name the line that `LINE` counts in f32: no padding
// between lines, so the buffer's values are contiguous.
const _: () = assert!(std::mem::size_of::<Line>() == std::mem::align_of::<Line>());

/// A growable f32 buffer whose first value starts a cache line.
#[derive(Default)]
pub(crate) struct LineAligned {
    lines: Vec<Line>,
    len: usize,
}

impl LineAligned {
    /// Empty, allocating nothing.
    pub(crate) const fn new() -> Self {
        LineAligned {
            lines: Vec::new(),
            len: 0,
        }
    }

    /// `len` zeros.
    pub(crate) fn zeros(len: usize) -> Self {
        let mut buffer = LineAligned::new();
        buffer.grow_to(len);
        buffer
    }

    /// At least `len` values long (new values are 0; none are dropped).
    pub(crate) fn grow_to(&mut self, len: usize) {
        if len > self.len {
            self.lines.resize(len.div_ceil(LINE), Line([0.0; LINE]));
            self.len = len;
        }
    }

    pub(crate) fn as_slice(&self) -> &[f32] {
        // SAFETY: `lines` holds at least `len` initialised f32, contiguous
        // (`Line` is `repr(C)` over an f32 array, so no padding).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_keeps_its_values_as_it_grows() {
        let mut buffer = LineAligned::zeros(5);
        assert_eq!(buffer.as_slice(), &[0.0; 5]);
        buffer.as_mut_slice().copy_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        for len in [3, 17, 1205] {
            buffer.grow_to(len);
            assert_eq!(buffer.as_slice().len(), len.max(5));
            assert_eq!(buffer.as_slice().as_ptr() as usize % 64, 0);
            assert_eq!(&buffer.as_slice()[..5], &[1.0, 2.0, 3.0, 4.0, 5.0]);
            assert!(buffer.as_slice()[5..].iter().all(|&v| v == 0.0));
        }
    }
}
