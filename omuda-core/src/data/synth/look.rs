//! Appearance: the class colour transform of a domain, the per-material
//! textures, and the "camera" that turns the painted canvas into 8-bit RGB
//! (illumination, colour cast, contrast, vignetting, blur, sensor noise).
//! With the game defaults every one of these steps is the identity except the
//! final quantisation, which is what makes the source look flat and clean.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::canvas::{Canvas, Material};
use super::noise::{unit2, Lattice};
use super::style::DomainStyle;
use crate::data::classes::IGNORE_INDEX;

/// A domain's mapping from the nominal (game) colour of a surface to its
/// painted colour: a hue rotation about the grey axis, a saturation and a
/// brightness change, and random per-object variation. Rotating hue and
/// scaling saturation keep colours related (grass stays green, sky blue)
/// instead of swapping one class's colour for another's.
pub struct Look {
    matrix: [[f32; 3]; 3],
    saturation: f32,
    value: f32,
    variation: f32,
}

impl Look {
    pub fn new(style: &DomainStyle) -> Self {
        Look {
            matrix: hue_rotation(style.hue_shift.to_radians()),
            saturation: style.saturation,
            value: style.value,
            variation: style.colour_variation,
        }
    }

    /// The domain's colour of a surface whose game colour is `c`.
    pub fn tint(&self, c: [f32; 3]) -> [f32; 3] {
        let m = &self.matrix;
        let rotated = [
            m[0][0] * c[0] + m[0][1] * c[1] + m[0][2] * c[2],
            m[1][0] * c[0] + m[1][1] * c[1] + m[1][2] * c[2],
            m[2][0] * c[0] + m[2][1] * c[1] + m[2][2] * c[2],
        ];
        let grey = (rotated[0] + rotated[1] + rotated[2]) / 3.0;
        rotated.map(|v| ((grey + (v - grey) * self.saturation) * self.value).clamp(0.0, 1.0))
    }

    /// [`Look::tint`] of `c` after a random per-object variation: mostly a
    /// brightness change, plus a smaller independent change per channel.
    pub fn object(&self, rng: &mut ChaCha8Rng, c: [f32; 3]) -> [f32; 3] {
        let v = self.variation;
        let gain = 1.0 + v * signed(rng);
        let varied = c.map(|ch| (ch * gain * (1.0 + 0.5 * v * signed(rng))).clamp(0.0, 1.0));
        self.tint(varied)
    }
}

/// Uniform in `[-√3, √3)`: zero mean, unit variance.
pub fn signed(rng: &mut ChaCha8Rng) -> f32 {
    (rng.gen::<f32>() * 2.0 - 1.0) * 1.732_050_8
}

/// Rotation by `angle` about the (1, 1, 1) axis of RGB space.
fn hue_rotation(angle: f32) -> [[f32; 3]; 3] {
    let (s, c) = angle.sin_cos();
    let a = c + (1.0 - c) / 3.0;
    let b = (1.0 - c) / 3.0 - (1.0f32 / 3.0).sqrt() * s;
    let d = (1.0 - c) / 3.0 + (1.0f32 / 3.0).sqrt() * s;
    [[a, b, d], [d, a, b], [b, d, a]]
}

/// Per-image illumination, drawn once per sample.
struct Lighting {
    gain: [f32; 3],
    contrast: f32,
    vignette: f32,
    texture: f32,
    salt: u64,
}

impl Lighting {
    fn draw(style: &DomainStyle, rng: &mut ChaCha8Rng) -> Self {
        let brightness =
            style.brightness * (1.0 + style.brightness_jitter * (rng.gen::<f32>() * 2.0 - 1.0));
        // A cast is warm (dusk, sodium light) or cool (overcast, shade); its
        // strength varies per image so no single white balance fits all.
        let strength = style.colour_cast * rng.gen::<f32>();
        let cast = if rng.gen::<bool>() {
            [1.0 + strength, 1.0 + 0.3 * strength, 1.0 - strength]
        } else {
            [1.0 - 0.6 * strength, 1.0, 1.0 + strength]
        };
        Lighting {
            gain: cast.map(|c| c * brightness),
            contrast: style.contrast,
            vignette: style.vignette,
            texture: style.texture,
            salt: rng.gen(),
        }
    }
}

/// Renders the canvas as interleaved 8-bit RGB through the domain's camera.
/// Works in place on the canvas colours, which it leaves developed.
pub fn develop(canvas: &mut Canvas, style: &DomainStyle, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let light = Lighting::draw(style, rng);
    let (w, h) = (canvas.width, canvas.height);
    let textures = (light.texture > 0.0).then(|| Textures::new(w, h, light.salt));
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let inv_r2 = 1.0 / (cx * cx + cy * cy).max(1.0);
    let rows = canvas
        .rgb
        .chunks_exact_mut(w.max(1))
        .zip(canvas.material.chunks_exact(w.max(1)));
    for (yi, (rgb_row, material_row)) in rows.enumerate() {
        let y = yi as f32;
        let dy2 = (y - cy) * (y - cy);
        for (xi, (c, &m)) in rgb_row.iter_mut().zip(material_row).enumerate() {
            let x = xi as f32;
            let textured = match &textures {
                Some(tex) => tex.apply(m, *c, x, y, light.texture),
                None => *c,
            };
            // Lamps emit their own light, so they ignore the scene illumination.
            let gain = if m == Material::Lamp {
                [1.0; 3]
            } else {
                light.gain
            };
            let d2 = ((x - cx) * (x - cx) + dy2) * inv_r2;
            let vignette = 1.0 - light.vignette * d2 * d2.sqrt();
            *c = [0, 1, 2].map(|k| {
                let v = textured[k] * gain[k];
                (0.45 + (v - 0.45) * light.contrast) * vignette
            });
        }
    }
    if style.blur > 0.0 {
        blur3(&mut canvas.rgb, w, h, style.blur);
    }
    quantise(&canvas.rgb, style.noise, rng)
}

/// The per-image noise fields behind the material textures.
struct Textures {
    salt: u64,
    /// Texture feature size relative to a 256-pixel-wide image, so that a
    /// larger rendering of the same domain shows the same textures, only
    /// sharper. Pixel grain stays one pixel: it stands for sensor grain.
    unit: f32,
    fine: Lattice,
    small: Lattice,
    medium: Lattice,
    large: Lattice,
    cloud_big: Lattice,
    cloud_small: Lattice,
}

impl Textures {
    fn new(w: usize, h: usize, salt: u64) -> Self {
        let unit = (w as f32 / 256.0).max(0.25);
        let lattice = |cell: f32, s: u64| Lattice::new(w, h, cell * unit, cell * unit, salt ^ s);
        Textures {
            salt,
            unit,
            fine: lattice(3.0, 1),
            small: lattice(4.5, 2),
            medium: lattice(7.0, 3),
            large: lattice(10.0, 4),
            // Clouds are flattened: wide cells, short rows.
            cloud_big: Lattice::new(w, h, 22.0 * unit, 9.0 * unit, salt ^ 5),
            cloud_small: Lattice::new(w, h, 9.0 * unit, 3.6 * unit, salt ^ 6),
        }
    }

    /// Whether image coordinate `v` lies on a line repeating every `period`
    /// texture units (paving joints, planks).
    fn on_line(&self, v: f32, period: f32) -> bool {
        (v / self.unit).rem_euclid(period) < 1.0
    }

    /// Multiplicative (for glass and sky, additive) detail of material `m`
    /// at strength `k`.
    fn apply(&self, m: Material, c: [f32; 3], x: f32, y: f32, k: f32) -> [f32; 3] {
        let (xi, yi) = (x as i32, y as i32);
        let grain = unit2(xi, yi, self.salt) - 0.5;
        let fine = || self.fine.at(x, y) - 0.5;
        let f = match m {
            Material::Asphalt => 0.22 * grain + 0.25 * (self.medium.at(x, y) - 0.5),
            Material::Marking => 0.10 * grain - 0.35 * fine().max(0.0),
            Material::Paving => {
                let joint = self.on_line(x, 7.0) || self.on_line(y, 4.0);
                0.15 * grain + if joint { -0.12 } else { 0.0 } + 0.1 * (self.large.at(x, y) - 0.5)
            }
            Material::Facade => 0.10 * grain + 0.25 * (self.small.at(x, y) - 0.5),
            Material::Concrete => 0.18 * grain + 0.30 * (self.small.at(x, y) - 0.5),
            Material::Wood => 0.12 * grain + if self.on_line(x, 3.0) { -0.15 } else { 0.05 },
            Material::Metal | Material::Rubber | Material::SignFace => 0.08 * grain,
            Material::Foliage => 0.70 * grain + 0.6 * fine(),
            Material::Grass => 0.35 * grain + 0.35 * (self.large.at(x, y) - 0.5),
            Material::Cloth => 0.12 * grain + 0.15 * fine(),
            Material::Skin | Material::Lamp => 0.0,
            Material::Glass => {
                let glare = 0.25 * k * (self.medium.at(x, y) - 0.5).max(0.0);
                return c.map(|v| v + glare);
            }
            Material::Sky => {
                let cloud =
                    (self.cloud_big.at(x, y) + 0.5 * self.cloud_small.at(x, y) - 0.75).max(0.0);
                let a = (k * cloud * 1.6).min(0.9);
                let white = (c[0] + c[1] + c[2]) / 3.0 + 0.25;
                return c.map(|v| v + (white - v) * a);
            }
        };
        let f = 1.0 + k * f;
        c.map(|v| v * f)
    }
}

/// Blends `img` in place with its 3×3 binomial blur (weights 1-2-1 ⊗ 1-2-1,
/// edges clamped).
fn blur3(img: &mut [[f32; 3]], w: usize, h: usize, amount: f32) {
    if w == 0 || img.len() != w * h {
        return;
    }
    let mix = |l: [f32; 3], c: [f32; 3], r: [f32; 3]| {
        [0, 1, 2].map(|k| 0.5 * c[k] + 0.25 * (l[k] + r[k]))
    };
    let mut horizontal = Vec::with_capacity(img.len());
    for row in img.chunks_exact(w) {
        for x in 0..w {
            let (l, r) = (row[x.saturating_sub(1)], row[(x + 1).min(w - 1)]);
            horizontal.push(mix(l, row[x], r));
        }
    }
    // The vertical pass reads only `horizontal`, so it may overwrite `img`.
    for y in 0..h {
        let (up, down) = (y.saturating_sub(1) * w, (y + 1).min(h - 1) * w);
        for x in 0..w {
            let b = mix(
                horizontal[up + x],
                horizontal[y * w + x],
                horizontal[down + x],
            );
            let s = &mut img[y * w + x];
            *s = [0, 1, 2].map(|k| s[k] + (b[k] - s[k]) * amount);
        }
    }
}

/// Adds sensor noise and rounds to 8 bits. The noise of a channel is the
/// sum of two uniform bytes (a triangular distribution, close enough to the
/// Gaussian read noise of a camera); one 64-bit draw serves a whole pixel.
fn quantise(lit: &[[f32; 3]], noise: f32, rng: &mut ChaCha8Rng) -> Vec<u8> {
    // Standard deviation of the sum of two uniform bytes.
    const SUM2_STD: f32 = 104.5;
    let to_byte = |v: f32| (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
    let mut out = Vec::with_capacity(lit.len() * 3);
    if noise <= 0.0 {
        out.extend(lit.iter().flat_map(|c| c.map(to_byte)));
        return out;
    }
    let scale = noise / SUM2_STD;
    for c in lit {
        let b = rng.gen::<u64>().to_le_bytes();
        for (k, &v) in c.iter().enumerate() {
            let sum = f32::from(b[2 * k]) + f32::from(b[2 * k + 1]);
            out.push(to_byte(v + (sum - 255.0) * scale));
        }
    }
    out
}

/// Marks a random `share` of the pixels on a class boundary as ignore, as
/// hand annotation leaves object outlines uncertain.
pub fn ignore_boundaries(label: &mut [u8], w: usize, h: usize, share: f32, salt: u64) {
    if share <= 0.0 || w == 0 || label.len() != w * h {
        return;
    }
    let orig = label.to_vec();
    let differs = |a: u8, i: usize| orig.get(i).is_some_and(|&b| b != a && b != IGNORE_INDEX);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let l = orig[i];
            if l == IGNORE_INDEX {
                continue;
            }
            let edge = (x > 0 && differs(l, i - 1))
                || (x + 1 < w && differs(l, i + 1))
                || (y > 0 && differs(l, i - w))
                || (y + 1 < h && differs(l, i + w));
            if edge && unit2(x as i32, y as i32, salt) < share {
                label[i] = IGNORE_INDEX;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_hue_shift_is_identity() {
        let look = Look::new(&DomainStyle::game());
        let c = [0.2, 0.5, 0.9];
        let t = look.tint(c);
        for k in 0..3 {
            assert!((t[k] - c[k]).abs() < 1e-5, "{t:?}");
        }
    }

    #[test]
    fn camera_tint_keeps_grey_and_desaturates() {
        let look = Look::new(&DomainStyle::camera());
        let g = look.tint([0.5, 0.5, 0.5]);
        assert!((g[0] - g[1]).abs() < 1e-5 && (g[1] - g[2]).abs() < 1e-5);
        let red = look.tint([0.9, 0.1, 0.1]);
        let spread = |c: [f32; 3]| {
            c.iter().cloned().fold(0.0, f32::max) - c.iter().cloned().fold(1.0, f32::min)
        };
        assert!(spread(red) < 0.8 * 0.8, "{red:?}");
    }

    #[test]
    fn boundary_ignore_only_touches_edges() {
        let mut label = vec![0u8; 16];
        label[8..].fill(2);
        ignore_boundaries(&mut label, 4, 4, 1.0, 3);
        assert_eq!(
            label,
            [0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255, 2, 2, 2, 2]
        );
    }
}
