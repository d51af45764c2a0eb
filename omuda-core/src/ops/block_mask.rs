//! MIC's random block mask (`lhoyer/MIC
//! seg/mmseg/models/utils/masking_transforms.py::BlockMaskGenerator`):
//! a grid of `round(H/b) × round(W/b)` uniforms, kept where `> ratio`, upsampled
//! to `H × W` with PyTorch `nearest` (so edge blocks differ in size when `b`
//! does not divide the image).

use rand::Rng;

use crate::{Error, Result};

/// Python's `round` (half to even) of `n / b`, as `BlockMaskGenerator` sizes its grid.
pub fn grid_len(n: usize, block: usize) -> usize {
    let x = n as f64 / block.max(1) as f64;
    let fl = x.floor();
    // `f64::round` rounds halves away from zero; Python rounds them to even.
    let r = if x - fl == 0.5 {
        if fl % 2.0 == 0.0 {
            fl
        } else {
            fl + 1.0
        }
    } else {
        x.round()
    };
    (r as usize).max(1)
}

/// Grid `(round(h/b), round(w/b))` of a block mask for an `h × w` image.
pub fn grid_shape(h: usize, w: usize, block: usize) -> (usize, usize) {
    (grid_len(h, block), grid_len(w, block))
}

/// Source index of output index `dst` for PyTorch `nearest` resizing from
/// `input` to `output` cells: `min(floor(dst · (input / output)), input − 1)`
/// with the scale in float32, as ATen's `nearest_neighbor_compute_source_index`.
pub fn nearest_source_index(dst: usize, input: usize, output: usize) -> usize {
    let scale = input as f32 / output as f32;
    ((dst as f32 * scale).floor() as usize).min(input - 1)
}

/// The keep-mask (1 keep, 0 masked) of one `h × w` image from its grid of
/// uniforms `r` (`gh × gw`, row-major): a grid cell is kept iff `r > ratio`,
/// then nearest-upsampled to `h × w`.
pub fn block_mask_from_grid(
    r: &[f32],
    (gh, gw): (usize, usize),
    (h, w): (usize, usize),
    ratio: f32,
) -> Result<Vec<f32>> {
    if r.len() != gh * gw || gh == 0 || gw == 0 {
        return Err(Error::msg(format!(
            "block_mask_from_grid: {} draws for a {gh}×{gw} grid",
            r.len()
        )));
    }
    let cols: Vec<usize> = (0..w).map(|x| nearest_source_index(x, gw, w)).collect();
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        let row = &r[nearest_source_index(y, gh, h) * gw..][..gw];
        out.extend(cols.iter().map(|&c| if row[c] > ratio { 1.0 } else { 0.0 }));
    }
    Ok(out)
}

/// The random block keep-mask of an `h × w` image with block size `block` (the
/// one block-mask generator of the workspace: MIC, FDM): the grid's
/// uniforms are drawn row-major from `rng` (`gen::<f32>()`, in [0, 1)).
pub fn random_block_mask<R: Rng + ?Sized>(
    h: usize,
    w: usize,
    block: usize,
    ratio: f32,
    rng: &mut R,
) -> Result<Vec<f32>> {
    let (gh, gw) = grid_shape(h, w, block);
    let r: Vec<f32> = (0..gh * gw).map(|_| rng.gen::<f32>()).collect();
    block_mask_from_grid(&r, (gh, gw), (h, w), ratio)
}
/// Block size in pixels for an image of height `height`: `block_size` at
/// `reference_height`, scaled linearly, at least 1 (MIC: 64 px on 1024-high
/// crops, 32 px on 512-high crops).
pub fn scaled_block(block_size: usize, reference_height: usize, height: usize) -> usize {
    if reference_height == 0 {
        return block_size.max(1);
    }
    ((block_size as f64 * height as f64 / reference_height as f64).round() as usize).max(1)
}
