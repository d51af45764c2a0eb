//! Street furniture and trees: poles carrying street lamps, traffic lights
//! and traffic signs, and street trees. Sizes are in camera heights.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::canvas::{Canvas, Material, Paint};
use super::geometry::{side_sign, uniform, Geometry};
use super::look::Look;
use super::style::DomainStyle;
use crate::data::classes::{POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION};

pub struct Pole {
    height: f32,
    shaft: Paint,
    /// Lateral reach of an arm towards the road centre, if any.
    arm: Option<f32>,
    light: Option<TrafficLight>,
    sign: Option<Sign>,
    /// −1 or +1: the direction of the road centre from the pole.
    inward: f32,
}

struct TrafficLight {
    housing: Paint,
    lamps: [Paint; 3],
    on_arm: bool,
}

#[derive(Clone, Copy)]
enum Shape {
    Disc,
    Triangle,
    Square,
    Diamond,
}

struct Sign {
    shape: Shape,
    rim: Paint,
    face: Paint,
    height: f32,
    size: f32,
}

pub fn random_pole(
    side: usize,
    geo: &Geometry,
    style: &DomainStyle,
    look: &Look,
    rng: &mut ChaCha8Rng,
) -> Pole {
    let shaft = Paint::new(POLE, Material::Metal, look.object(rng, [0.46, 0.47, 0.50]));
    let light = (rng.gen::<f32>() < style.traffic_light_prob).then(|| traffic_light(look, rng));
    let sign = (rng.gen::<f32>() < style.sign_prob).then(|| sign(look, rng));
    let hangs_light = light.as_ref().is_some_and(|l| l.on_arm);
    let street_lamp = light.is_none() && sign.is_none() || rng.gen::<f32>() < 0.3;
    let arm = (hangs_light || street_lamp).then(|| uniform(rng, 0.4, 0.9) * geo.road_half.min(3.0));
    Pole {
        height: uniform(rng, 3.0, 5.0),
        shaft,
        arm,
        light,
        sign,
        inward: -side_sign(side),
    }
}

fn traffic_light(look: &Look, rng: &mut ChaCha8Rng) -> TrafficLight {
    let housing = Paint::new(
        TRAFFIC_LIGHT,
        Material::Metal,
        look.object(rng, [0.12, 0.12, 0.13]),
    );
    let lit = rng.gen_range(0..3);
    const ON: [[f32; 3]; 3] = [[1.0, 0.12, 0.08], [1.0, 0.70, 0.10], [0.15, 1.0, 0.45]];
    let lamps = [0, 1, 2].map(|i| {
        if i == lit {
            housing.part(Material::Lamp, ON[i])
        } else {
            housing.part(Material::Metal, look.tint([0.22, 0.20, 0.18]))
        }
    });
    TrafficLight {
        housing,
        lamps,
        on_arm: rng.gen::<f32>() < 0.35,
    }
}

fn sign(look: &Look, rng: &mut ChaCha8Rng) -> Sign {
    const WHITE: [f32; 3] = [0.92, 0.92, 0.90];
    const RED: [f32; 3] = [0.85, 0.10, 0.10];
    const BLUE: [f32; 3] = [0.10, 0.30, 0.80];
    const YELLOW: [f32; 3] = [0.95, 0.82, 0.10];
    let (shape, rim, face) = match rng.gen_range(0..5) {
        0 => (Shape::Disc, RED, WHITE),
        1 => (Shape::Disc, BLUE, BLUE),
        2 => (Shape::Triangle, RED, WHITE),
        3 => (Shape::Square, WHITE, BLUE),
        _ => (Shape::Diamond, WHITE, YELLOW),
    };
    let paint = |c| Paint::new(TRAFFIC_SIGN, Material::SignFace, look.tint(c));
    Sign {
        shape,
        rim: paint(rim),
        face: paint(face),
        height: uniform(rng, 1.6, 2.4),
        size: uniform(rng, 0.12, 0.18),
    }
}

/// Paints a pole standing at `(t, u)` with whatever it carries.
/// A pole of height `p.height` at `(t, u)`. Its shaft width, lights and signs
/// are drawn at a scale of at least `floor` × the image height pixels per
/// camera height (`DomainStyle::furniture_floor`).
#[allow(clippy::too_many_arguments)]
pub fn pole(c: &mut Canvas, geo: &Geometry, t: f32, u: f32, scale: f32, floor: f32, p: &Pole) {
    let s = geo.ppu(t) * scale;
    let ss = s.max(floor * geo.height);
    let (cx, foot) = (geo.col(t, u), geo.row(t));
    let top = foot - p.height * s;
    c.thin_rect(cx, top, 0.035 * ss, foot, p.shaft);
    if let Some(reach) = p.arm {
        let end = cx + p.inward * reach * s;
        c.segment(cx, top + 0.05 * s, end, top + 0.05 * s, 0.025 * s, p.shaft);
        match &p.light {
            Some(light) if light.on_arm => traffic_light_box(c, end, top + 0.1 * s, ss, light),
            _ => c.ellipse(end, top + 0.1 * s, 0.12 * s, 0.05 * s, p.shaft.shaded(0.8)),
        }
    }
    if let Some(light) = p.light.as_ref().filter(|l| !l.on_arm) {
        traffic_light_box(c, cx, top + 0.8 * s, ss, light);
    }
    if let Some(sign) = &p.sign {
        let cy = foot - sign.height.min(p.height - 0.5) * s;
        sign_face(c, cx + p.inward * 0.05 * s, cy, sign.size * ss, sign);
    }
}

/// A three-lamp housing hanging from `(cx, top)`.
fn traffic_light_box(c: &mut Canvas, cx: f32, top: f32, s: f32, light: &TrafficLight) {
    let (hw, h) = (0.11 * s, 0.62 * s);
    c.rect(cx - hw, top, cx + hw, top + h, light.housing);
    for (i, lamp) in light.lamps.iter().enumerate() {
        let cy = top + (0.18 + 0.32 * i as f32) * h;
        c.ellipse(cx, cy, 0.065 * s, 0.065 * s, *lamp);
    }
}

fn sign_face(c: &mut Canvas, cx: f32, cy: f32, r: f32, sign: &Sign) {
    let inner = 0.7 * r;
    match sign.shape {
        Shape::Disc => {
            c.ellipse(cx, cy, r, r, sign.rim);
            c.ellipse(cx, cy, inner, inner, sign.face);
        }
        Shape::Triangle => {
            c.trapezoid(
                cy - r,
                cx,
                cx,
                cy + 0.8 * r,
                cx - 1.1 * r,
                cx + 1.1 * r,
                sign.rim,
            );
            let (top, bottom) = (cy - 0.45 * r, cy + 0.6 * r);
            c.trapezoid(top, cx, cx, bottom, cx - 0.65 * r, cx + 0.65 * r, sign.face);
        }
        Shape::Square => {
            c.rect(cx - r, cy - r, cx + r, cy + r, sign.rim);
            c.rect(
                cx - 0.8 * r,
                cy - 0.8 * r,
                cx + 0.8 * r,
                cy + 0.8 * r,
                sign.face,
            );
        }
        Shape::Diamond => {
            for (rr, p) in [(r, sign.rim), (inner, sign.face)] {
                c.trapezoid(cy - rr, cx, cx, cy, cx - rr, cx + rr, p);
                c.trapezoid(cy, cx - rr, cx + rr, cy + rr, cx, cx, p);
            }
        }
    }
}

pub struct Tree {
    trunk_height: f32,
    trunk: Paint,
    leaves: Paint,
    /// Crown blobs: offset from the crown base and radius.
    blobs: Vec<(f32, f32, f32)>,
}

pub fn random_tree(look: &Look, rng: &mut ChaCha8Rng) -> Tree {
    let trunk = Paint::new(
        VEGETATION,
        Material::Wood,
        look.object(rng, [0.30, 0.22, 0.14]),
    );
    let leaves = Paint::new(
        VEGETATION,
        Material::Foliage,
        look.object(rng, [0.22, 0.48, 0.14]),
    );
    let size = uniform(rng, 0.6, 1.2);
    let blobs = (0..rng.gen_range(4..8))
        .map(|_| {
            let dx = uniform(rng, -0.8, 0.8) * size;
            let dy = uniform(rng, 0.2, 1.6) * size;
            (dx, dy, uniform(rng, 0.45, 0.8) * size)
        })
        .collect();
    Tree {
        trunk_height: uniform(rng, 1.2, 2.2),
        trunk,
        leaves,
        blobs,
    }
}

/// A tree at `(cx, foot)`; `s` is pixels per camera height there.
pub fn tree(c: &mut Canvas, cx: f32, foot: f32, s: f32, tree: &Tree) {
    let base = foot - tree.trunk_height * s;
    c.thin_rect(cx, base - 0.3 * s, 0.06 * s, foot, tree.trunk);
    for (i, &(dx, dy, r)) in tree.blobs.iter().enumerate() {
        // Lower blobs are in the crown's shade.
        let shade = if i % 2 == 0 { 0.85 } else { 1.05 };
        c.ellipse(
            cx + dx * s,
            base - dy * s,
            r * s,
            0.85 * r * s,
            tree.leaves.shaded(shade),
        );
    }
}
