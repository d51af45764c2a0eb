//! The drawing surface: a label map, a material map and a linear RGB buffer
//! painted together, back to front (painter's algorithm), so that label and
//! image always agree on which surface is visible.

/// Surface kind of a pixel. The camera-like appearance picks its texture by
/// material, not by label, so that one class can be made of several materials
/// (a car's paint, glass and tyres) and unlabelled surfaces still get one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Material {
    Sky,
    Asphalt,
    Marking,
    Paving,
    Facade,
    Concrete,
    Wood,
    Metal,
    Foliage,
    Grass,
    Cloth,
    Skin,
    Glass,
    Rubber,
    Lamp,
    SignFace,
}

/// What one primitive writes into every pixel it covers.
#[derive(Clone, Copy, Debug)]
pub struct Paint {
    pub label: u8,
    pub material: Material,
    pub rgb: [f32; 3],
}

impl Paint {
    pub fn new(label: u8, material: Material, rgb: [f32; 3]) -> Self {
        Paint {
            label,
            material,
            rgb,
        }
    }

    /// The same surface with its colour scaled, for windows, shadows and trim.
    pub fn shaded(self, factor: f32) -> Self {
        Paint {
            rgb: scale(self.rgb, factor),
            ..self
        }
    }

    /// The same label with another material and colour (e.g. a car's tyres).
    pub fn part(self, material: Material, rgb: [f32; 3]) -> Self {
        Paint {
            material,
            rgb,
            ..self
        }
    }
}

pub fn scale(c: [f32; 3], f: f32) -> [f32; 3] {
    [c[0] * f, c[1] * f, c[2] * f]
}

pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub label: Vec<u8>,
    pub material: Vec<Material>,
    pub rgb: Vec<[f32; 3]>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: Paint) -> Self {
        let n = width * height;
        Canvas {
            width,
            height,
            label: vec![background.label; n],
            material: vec![background.material; n],
            rgb: vec![background.rgb; n],
        }
    }

    #[inline]
    pub fn put(&mut self, x: usize, y: usize, p: Paint) {
        let i = y * self.width + x;
        if let (Some(l), Some(m), Some(c)) = (
            self.label.get_mut(i),
            self.material.get_mut(i),
            self.rgb.get_mut(i),
        ) {
            *l = p.label;
            *m = p.material;
            *c = p.rgb;
        }
    }

    /// Calls `f` with the centre of every pixel whose centre lies in the box
    /// `[x0, x1) × [y0, y1)` and paints what it returns. All shapes are built
    /// on this, which keeps clipping in one place.
    pub fn fill(
        &mut self,
        (x0, y0, x1, y1): (f32, f32, f32, f32),
        mut f: impl FnMut(f32, f32) -> Option<Paint>,
    ) {
        let (xa, xb) = pixel_range(x0, x1, self.width);
        let (ya, yb) = pixel_range(y0, y1, self.height);
        for y in ya..yb {
            let cy = y as f32 + 0.5;
            for x in xa..xb {
                if let Some(p) = f(x as f32 + 0.5, cy) {
                    self.put(x, y, p);
                }
            }
        }
    }

    pub fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, p: Paint) {
        self.fill((x0, y0, x1, y1), |_, _| Some(p));
    }

    /// A rectangle at least one pixel wide, so poles and distant thin parts
    /// never vanish between pixel centres.
    pub fn thin_rect(&mut self, cx: f32, y0: f32, half_width: f32, y1: f32, p: Paint) {
        if half_width >= 0.5 {
            self.rect(cx - half_width, y0, cx + half_width, y1, p);
        } else {
            let x0 = cx.floor();
            self.rect(x0, y0, x0 + 1.0, y1, p);
        }
    }

    pub fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, p: Paint) {
        let (rx, ry) = (rx.max(0.5), ry.max(0.5));
        self.fill((cx - rx, cy - ry, cx + rx, cy + ry), |x, y| {
            let dx = (x - cx) / rx;
            let dy = (y - cy) / ry;
            (dx * dx + dy * dy <= 1.0).then_some(p)
        });
    }

    /// An elliptic ring of radial thickness `width` (pixels, at least one).
    pub fn ring(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, width: f32, p: Paint) {
        let (rx, ry) = (rx.max(0.5), ry.max(0.5));
        let inner = (1.0 - width.max(1.0) / rx.min(ry)).max(0.0);
        let inner2 = inner * inner;
        self.fill((cx - rx, cy - ry, cx + rx, cy + ry), |x, y| {
            let dx = (x - cx) / rx;
            let dy = (y - cy) / ry;
            let d2 = dx * dx + dy * dy;
            (d2 <= 1.0 && d2 >= inner2).then_some(p)
        });
    }

    /// A thick line segment with round caps, `half_width` at least half a pixel.
    pub fn segment(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, half_width: f32, p: Paint) {
        let hw = half_width.max(0.6);
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = (dx * dx + dy * dy).max(1e-6);
        let bbox = (
            x0.min(x1) - hw,
            y0.min(y1) - hw,
            x0.max(x1) + hw,
            y0.max(y1) + hw,
        );
        self.fill(bbox, |x, y| {
            let t = (((x - x0) * dx + (y - y0) * dy) / len2).clamp(0.0, 1.0);
            let ex = x - (x0 + t * dx);
            let ey = y - (y0 + t * dy);
            (ex * ex + ey * ey <= hw * hw).then_some(p)
        });
    }

    /// A trapezoid with horizontal top (`y0`, from `l0` to `r0`) and bottom
    /// (`y1`, from `l1` to `r1`) edges: car cabins, bus fronts, roofs.
    #[allow(clippy::too_many_arguments)]
    pub fn trapezoid(&mut self, y0: f32, l0: f32, r0: f32, y1: f32, l1: f32, r1: f32, p: Paint) {
        let span = (y1 - y0).max(1e-3);
        let bbox = (l0.min(l1), y0, r0.max(r1), y1);
        self.fill(bbox, |x, y| {
            let t = (y - y0) / span;
            let l = l0 + (l1 - l0) * t;
            let r = r0 + (r1 - r0) * t;
            (x >= l && x < r).then_some(p)
        });
    }
}

/// Pixel indices whose centres lie in `[a, b)`, clipped to `0..n`.
fn pixel_range(a: f32, b: f32, n: usize) -> (usize, usize) {
    if !(a.is_finite() && b.is_finite()) || b <= a {
        return (0, 0);
    }
    let lo = (a - 0.5).ceil().max(0.0);
    let hi = (b - 0.5).ceil().max(0.0);
    let lo = (lo as usize).min(n);
    let hi = (hi as usize).min(n);
    (lo, hi.max(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paint(label: u8) -> Paint {
        Paint::new(label, Material::Metal, [1.0, 0.0, 0.0])
    }

    #[test]
    fn rect_covers_pixel_centres_and_clips() {
        let mut c = Canvas::new(4, 3, paint(0));
        c.rect(-5.0, 1.0, 2.0, 10.0, paint(1));
        let expect = [0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0];
        assert_eq!(c.label, expect);
    }

    #[test]
    fn thin_rect_is_never_empty() {
        let mut c = Canvas::new(8, 8, paint(0));
        c.thin_rect(3.2, 0.0, 0.01, 8.0, paint(5));
        let per_row: Vec<usize> = c
            .label
            .chunks(8)
            .map(|r| r.iter().filter(|&&l| l == 5).count())
            .collect();
        assert_eq!(per_row, vec![1; 8]);
    }

    #[test]
    fn ring_has_a_hole() {
        let mut c = Canvas::new(21, 21, paint(0));
        c.ring(10.5, 10.5, 9.0, 9.0, 2.0, paint(18));
        assert_eq!(c.label[10 * 21 + 10], 0);
        assert_eq!(c.label[10 * 21 + 2], 18);
    }

    #[test]
    fn degenerate_boxes_paint_nothing() {
        let mut c = Canvas::new(4, 4, paint(0));
        c.rect(3.0, 3.0, 1.0, 1.0, paint(1));
        c.rect(f32::NAN, 0.0, 4.0, 4.0, paint(1));
        assert!(c.label.iter().all(|&l| l == 0));
    }
}
