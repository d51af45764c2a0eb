//! The geometry of a square 2-D convolution, shared by the dense kernels
//! (`conv`, `im2col`, `conv_shift`).

/// Stride, padding and dilation of a square 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvCfg {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl Default for ConvCfg {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
        }
    }
}

impl ConvCfg {
    /// Input index that output index `o` reads through tap `t`, if inside the
    /// `n` input positions.
    #[inline(always)]
    pub(super) fn src(&self, o: usize, t: usize, n: usize) -> Option<usize> {
        let i = (o * self.stride + t * self.dilation) as isize - self.padding as isize;
        (i >= 0 && (i as usize) < n).then_some(i as usize)
    }

    /// Output index whose tap `t` reads input index `i`, if any among the
    /// `n_out` outputs (the inverse of [`ConvCfg::src`]).
    #[inline(always)]
    pub(super) fn dst(&self, i: usize, t: usize, n_out: usize) -> Option<usize> {
        let v = (i + self.padding) as isize - (t * self.dilation) as isize;
        if v < 0 || !(v as usize).is_multiple_of(self.stride) {
            return None;
        }
        let o = v as usize / self.stride;
        (o < n_out).then_some(o)
    }
}
