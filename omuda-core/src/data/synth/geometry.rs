//! The street geometry of one scene and the small samplers the painters
//! share. Coordinates: `t` is inverse depth (1 at the bottom image row, 0 at
//! the horizon), lateral offsets `u` and heights are in camera heights.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::style::DomainStyle;

pub const LEFT: usize = 0;
pub const RIGHT: usize = 1;

/// −1 for the left side of the street, +1 for the right.
pub fn side_sign(side: usize) -> f32 {
    if side == LEFT {
        -1.0
    } else {
        1.0
    }
}

/// Uniform in `[lo, hi)`.
pub fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.gen::<f32>()
}

/// The per-image street geometry.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub width: f32,
    pub height: f32,
    /// Horizon row, pixels.
    pub horizon: f32,
    /// Vanishing-point column, pixels.
    pub vx: f32,
    /// Pixels per camera height at `t = 1`.
    pub ground: f32,
    /// Half the road width, camera heights.
    pub road_half: f32,
    /// Sidewalk width per side, camera heights.
    pub sidewalk: [f32; 2],
    /// Grass strip width per side (0 when absent), camera heights.
    pub terrain: [f32; 2],
}

impl Geometry {
    pub(super) fn draw(w: f32, h: f32, style: &DomainStyle, rng: &mut ChaCha8Rng) -> Self {
        let jitter = uniform(rng, -1.0, 1.0) * style.horizon_jitter;
        let horizon = (style.horizon + jitter).clamp(0.1, 0.85) * h;
        let ground = (h - horizon).max(1.0);
        let vx = w * uniform(rng, 0.42, 0.58);
        let road_scale = 1.0 + style.road_width_jitter * uniform(rng, -1.0, 1.0);
        let road_half = style.road_width * road_scale * w / 2.0 / ground;
        let mut sidewalk = [0.0; 2];
        let mut terrain = [0.0; 2];
        for side in [LEFT, RIGHT] {
            sidewalk[side] = style.sidewalk_width * road_half * uniform(rng, 0.7, 1.3);
            if rng.gen::<f32>() < style.terrain_prob {
                terrain[side] = road_half * uniform(rng, 0.3, 1.0);
            }
        }
        Geometry {
            width: w,
            height: h,
            horizon,
            vx,
            ground,
            road_half,
            sidewalk,
            terrain,
        }
    }

    pub fn row(&self, t: f32) -> f32 {
        self.horizon + t * self.ground
    }

    /// Pixels per camera height at inverse depth `t`.
    pub fn ppu(&self, t: f32) -> f32 {
        t * self.ground
    }

    pub fn col(&self, t: f32, u: f32) -> f32 {
        self.vx + u * t * self.ground
    }

    pub fn sidewalk_outer(&self, side: usize) -> f32 {
        self.road_half + self.sidewalk[side]
    }

    pub fn facade(&self, side: usize) -> f32 {
        self.sidewalk_outer(side) + self.terrain[side]
    }
}

/// Poisson sample by inversion; exact for the small means used here.
pub fn poisson(rng: &mut ChaCha8Rng, mean: f32) -> usize {
    if mean <= 0.0 {
        return 0;
    }
    let limit = (-f64::from(mean)).exp();
    let mut product = rng.gen::<f64>();
    let mut n = 0;
    while product > limit && n < 1000 {
        product *= rng.gen::<f64>();
        n += 1;
    }
    n
}
