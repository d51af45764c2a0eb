//! Pedestrians, riders and their bicycles and motorcycles, drawn as flat
//! figures at their depth. A rider is a figure with the rider label seated on
//! a rig; the same figure with the person label walks. Sizes below are in
//! units of `s`, the pixels per camera height at the figure's depth.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::canvas::{Canvas, Material, Paint};
use super::look::Look;
use crate::data::classes::{BICYCLE, MOTORCYCLE};

/// A human figure's clothes, proportions and pose.
pub struct Figure {
    shirt: Paint,
    trousers: Paint,
    skin: Paint,
    hair: Paint,
    /// Height in camera heights.
    height: f32,
    /// Leg spread, −1..1.
    stride: f32,
    /// Long coat down to the knees.
    coat: bool,
}

/// A bicycle or motorcycle, seen from the side (`facing` ±1 gives the
/// direction of its front wheel) or from behind.
pub struct Rig {
    motor: bool,
    side_view: bool,
    facing: f32,
    frame: Paint,
    tyre: Paint,
    lamp: Paint,
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let k = |n: f32| {
        let k = (n + h * 6.0) % 6.0;
        v - v * s * (k.min(4.0 - k).clamp(0.0, 1.0))
    };
    [k(5.0), k(3.0), k(1.0)]
}

const TROUSERS: [[f32; 3]; 5] = [
    [0.12, 0.16, 0.32],
    [0.08, 0.08, 0.09],
    [0.55, 0.48, 0.34],
    [0.35, 0.35, 0.38],
    [0.25, 0.30, 0.45],
];
const SKIN: [[f32; 3]; 4] = [
    [0.90, 0.72, 0.58],
    [0.78, 0.58, 0.44],
    [0.55, 0.38, 0.27],
    [0.36, 0.24, 0.17],
];
const HAIR: [[f32; 3]; 4] = [
    [0.08, 0.06, 0.05],
    [0.30, 0.20, 0.12],
    [0.75, 0.62, 0.35],
    [0.45, 0.45, 0.45],
];

fn pick(rng: &mut ChaCha8Rng, colours: &[[f32; 3]]) -> [f32; 3] {
    colours
        .get(rng.gen_range(0..colours.len().max(1)))
        .copied()
        .unwrap_or([0.5; 3])
}

/// A random figure painted with `label` (person or rider).
pub fn figure(label: u8, look: &Look, rng: &mut ChaCha8Rng) -> Figure {
    let shirt = hsv(
        rng.gen(),
        rng.gen_range(0.3..0.9),
        rng.gen_range(0.35..0.95),
    );
    let trousers = pick(rng, &TROUSERS);
    let skin = pick(rng, &SKIN);
    let hair = pick(rng, &HAIR);
    Figure {
        shirt: Paint::new(label, Material::Cloth, look.object(rng, shirt)),
        trousers: Paint::new(label, Material::Cloth, look.object(rng, trousers)),
        skin: Paint::new(label, Material::Skin, look.tint(skin)),
        hair: Paint::new(label, Material::Cloth, look.tint(hair)),
        height: rng.gen_range(0.95..1.18),
        stride: rng.gen_range(-1.0..1.0),
        coat: rng.gen::<f32>() < 0.25,
    }
}

/// A random bicycle or motorcycle; a ridden one may be seen from behind.
pub fn rig(motor: bool, ridden: bool, look: &Look, rng: &mut ChaCha8Rng) -> Rig {
    let (label, base) = if motor {
        (
            MOTORCYCLE,
            hsv(rng.gen(), rng.gen_range(0.0..0.9), rng.gen_range(0.1..0.8)),
        )
    } else {
        (
            BICYCLE,
            hsv(rng.gen(), rng.gen_range(0.3..1.0), rng.gen_range(0.2..0.9)),
        )
    };
    let frame = Paint::new(label, Material::Metal, look.object(rng, base));
    Rig {
        motor,
        side_view: !ridden || rng.gen::<bool>(),
        facing: if rng.gen::<bool>() { 1.0 } else { -1.0 },
        frame,
        tyre: frame.part(Material::Rubber, look.tint([0.07, 0.07, 0.08])),
        lamp: frame.part(Material::Lamp, look.tint([0.85, 0.08, 0.06])),
    }
}

/// A pedestrian standing at `(cx, foot)`.
pub fn walker(c: &mut Canvas, cx: f32, foot: f32, s: f32, f: &Figure) {
    let h = f.height * s;
    let hip = foot - 0.5 * h;
    let shoulder = foot - 0.8 * h;
    let leg = 0.055 * h;
    let step = f.stride * 0.14 * h;
    c.segment(cx - 0.04 * h, hip, cx - step, foot - leg, leg, f.trousers);
    c.segment(cx + 0.04 * h, hip, cx + step, foot - leg, leg, f.trousers);
    let hem = if f.coat {
        foot - 0.28 * h
    } else {
        hip + 0.04 * h
    };
    c.trapezoid(
        shoulder,
        cx - 0.13 * h,
        cx + 0.13 * h,
        hem,
        cx - 0.11 * h,
        cx + 0.11 * h,
        f.shirt,
    );
    for side in [-1.0, 1.0] {
        let hand = (cx + side * 0.15 * h - 0.5 * step, foot - 0.45 * h);
        c.segment(
            cx + side * 0.12 * h,
            shoulder + 0.03 * h,
            hand.0,
            hand.1,
            0.035 * h,
            f.shirt,
        );
        c.ellipse(hand.0, hand.1, 0.03 * h, 0.03 * h, f.skin);
    }
    head(c, cx, foot - 0.9 * h, 0.065 * h, f);
}

fn head(c: &mut Canvas, cx: f32, cy: f32, r: f32, f: &Figure) {
    c.ellipse(cx, cy, r, r * 1.2, f.skin);
    c.ellipse(cx, cy - 0.5 * r, r * 1.02, r * 0.75, f.hair);
}

/// A bicycle or motorcycle at `(cx, foot)`, with its rider if any.
pub fn two_wheeler(c: &mut Canvas, cx: f32, foot: f32, s: f32, rider: Option<&Figure>, rig: &Rig) {
    match (rig.side_view, rig.motor) {
        (true, false) => bicycle_side(c, cx, foot, s, rig),
        (true, true) => motorcycle_side(c, cx, foot, s, rig),
        (false, motor) => rig_rear(c, cx, foot, s, motor, rig),
    }
    let Some(f) = rider else { return };
    let k = f.height / 1.1;
    if rig.side_view {
        rider_side(c, cx, foot, s, k, rig, f);
    } else {
        rider_rear(c, cx, foot, s * k, f);
    }
}

fn bicycle_side(c: &mut Canvas, cx: f32, foot: f32, s: f32, rig: &Rig) {
    let d = rig.facing;
    let r = 0.21 * s;
    let tube = 0.02 * s;
    let rear = (cx - d * 0.33 * s, foot - r);
    let front = (cx + d * 0.33 * s, foot - r);
    let crank = (cx - d * 0.02 * s, foot - r);
    let seat = (cx - d * 0.12 * s, foot - 0.58 * s);
    let head = (cx + d * 0.22 * s, foot - 0.62 * s);
    for wheel in [rear, front] {
        c.ring(wheel.0, wheel.1, r, r, 0.05 * s, rig.tyre);
    }
    for (a, b) in [
        (rear, seat),
        (rear, crank),
        (crank, seat),
        (seat, head),
        (crank, head),
        (head, front),
    ] {
        c.segment(a.0, a.1, b.0, b.1, tube, rig.frame);
    }
    c.segment(
        head.0,
        head.1,
        cx + d * 0.18 * s,
        foot - 0.72 * s,
        tube,
        rig.frame,
    );
    c.segment(
        seat.0 - d * 0.05 * s,
        seat.1,
        seat.0 + d * 0.05 * s,
        seat.1,
        1.5 * tube,
        rig.tyre,
    );
}

fn motorcycle_side(c: &mut Canvas, cx: f32, foot: f32, s: f32, rig: &Rig) {
    let d = rig.facing;
    let r = 0.22 * s;
    for x in [cx - d * 0.42 * s, cx + d * 0.42 * s] {
        c.ellipse(x, foot - r, r, r, rig.tyre);
        c.ellipse(x, foot - r, 0.4 * r, 0.4 * r, rig.frame.shaded(0.8));
    }
    c.ellipse(cx, foot - 0.42 * s, 0.36 * s, 0.13 * s, rig.frame);
    c.ellipse(
        cx + d * 0.08 * s,
        foot - 0.56 * s,
        0.16 * s,
        0.08 * s,
        rig.frame,
    );
    c.ellipse(
        cx - d * 0.18 * s,
        foot - 0.56 * s,
        0.14 * s,
        0.04 * s,
        rig.tyre,
    );
    let bar = (cx + d * 0.3 * s, foot - 0.74 * s);
    c.segment(
        cx + d * 0.42 * s,
        foot - r,
        bar.0,
        bar.1,
        0.03 * s,
        rig.frame,
    );
}

fn rig_rear(c: &mut Canvas, cx: f32, foot: f32, s: f32, motor: bool, rig: &Rig) {
    let (wheel, body) = if motor {
        (0.05 * s, 0.17 * s)
    } else {
        (0.025 * s, 0.03 * s)
    };
    c.thin_rect(cx, foot - 0.45 * s, wheel, foot, rig.tyre);
    c.thin_rect(cx, foot - 0.68 * s, body, foot - 0.3 * s, rig.frame);
    let half_bar = if motor { 0.3 * s } else { 0.22 * s };
    c.segment(
        cx - half_bar,
        foot - 0.72 * s,
        cx + half_bar,
        foot - 0.72 * s,
        0.02 * s,
        rig.frame,
    );
    if motor {
        c.rect(
            cx - 0.06 * s,
            foot - 0.55 * s,
            cx + 0.06 * s,
            foot - 0.5 * s,
            rig.lamp,
        );
    }
}

/// A rider seen from the side, seated on the rig, scaled by `k` (figure height).
fn rider_side(c: &mut Canvas, cx: f32, foot: f32, s: f32, k: f32, rig: &Rig, f: &Figure) {
    let d = rig.facing;
    let at = |dx: f32, up: f32| (cx + d * dx * s, foot - up * s * k);
    let (hip, shoulder, knee, sole, hand, head_c, r) = if rig.motor {
        (
            at(-0.12, 0.62),
            at(0.0, 1.06),
            at(0.14, 0.56),
            at(0.05, 0.28),
            at(0.28, 0.76),
            at(0.04, 1.16),
            0.09,
        )
    } else {
        (
            at(-0.12, 0.62),
            at(0.08, 1.0),
            at(0.1, 0.42),
            at(0.02, 0.2),
            at(0.19, 0.72),
            at(0.14, 1.12),
            0.07,
        )
    };
    let ss = s * k;
    c.segment(hip.0, hip.1, knee.0, knee.1, 0.055 * ss, f.trousers);
    c.segment(knee.0, knee.1, sole.0, sole.1, 0.045 * ss, f.trousers);
    c.segment(hip.0, hip.1, shoulder.0, shoulder.1, 0.1 * ss, f.shirt);
    c.segment(shoulder.0, shoulder.1, hand.0, hand.1, 0.032 * ss, f.shirt);
    head(c, head_c.0, head_c.1, r * ss, f);
}

/// A rider seen from behind.
fn rider_rear(c: &mut Canvas, cx: f32, foot: f32, s: f32, f: &Figure) {
    for side in [-1.0, 1.0] {
        c.segment(
            cx + side * 0.08 * s,
            foot - 0.62 * s,
            cx + side * 0.1 * s,
            foot - 0.25 * s,
            0.05 * s,
            f.trousers,
        );
        c.segment(
            cx + side * 0.13 * s,
            foot - 0.98 * s,
            cx + side * 0.22 * s,
            foot - 0.72 * s,
            0.032 * s,
            f.shirt,
        );
    }
    c.trapezoid(
        foot - 1.02 * s,
        cx - 0.15 * s,
        cx + 0.15 * s,
        foot - 0.6 * s,
        cx - 0.12 * s,
        cx + 0.12 * s,
        f.shirt,
    );
    head(c, cx, foot - 1.12 * s, 0.075 * s, f);
}
