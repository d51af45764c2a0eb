//! Road vehicles as boxes in perspective: the face towards the camera (front
//! of oncoming traffic, rear of traffic ahead) and, when the vehicle is off to
//! one side, the side face receding towards the vanishing point. Each face is
//! described by a shape function of normalised face coordinates.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::canvas::{Canvas, Material, Paint};
use super::geometry::Geometry;
use super::look::Look;
use crate::data::classes::{BUS, CAR, TRAIN, TRUCK};

/// Camera heights per unit of `z = 1/t`: converts vehicle lengths to depth.
const DEPTH_UNIT: f32 = 3.3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VehicleKind {
    Car,
    Truck,
    Bus,
    Tram,
}

/// A vehicle's size (camera heights), direction and surfaces.
pub struct Vehicle {
    pub kind: VehicleKind,
    pub width: f32,
    pub height: f32,
    pub length: f32,
    /// Drives towards the camera, so its front faces the camera.
    pub oncoming: bool,
    body: Paint,
    trim: Paint,
    glass: Paint,
    tyre: Paint,
    head_lamp: Paint,
    tail_lamp: Paint,
}

const CAR_COLOURS: [[f32; 3]; 9] = [
    [0.78, 0.10, 0.10],
    [0.12, 0.22, 0.72],
    [0.90, 0.90, 0.90],
    [0.10, 0.10, 0.12],
    [0.64, 0.66, 0.70],
    [0.90, 0.74, 0.10],
    [0.16, 0.45, 0.26],
    [0.14, 0.16, 0.36],
    [0.45, 0.45, 0.48],
];
const TRUCK_COLOURS: [[f32; 3]; 4] = [
    [0.92, 0.92, 0.90],
    [0.80, 0.20, 0.12],
    [0.20, 0.35, 0.70],
    [0.90, 0.55, 0.10],
];
const BUS_COLOURS: [[f32; 3]; 4] = [
    [0.80, 0.12, 0.10],
    [0.92, 0.74, 0.10],
    [0.12, 0.34, 0.72],
    [0.15, 0.55, 0.35],
];
const TRAM_COLOURS: [[f32; 3]; 3] = [[0.95, 0.80, 0.15], [0.85, 0.15, 0.15], [0.20, 0.40, 0.75]];

fn pick(rng: &mut ChaCha8Rng, colours: &[[f32; 3]]) -> [f32; 3] {
    colours
        .get(rng.gen_range(0..colours.len().max(1)))
        .copied()
        .unwrap_or([0.5; 3])
}

/// A vehicle of `kind` with random size, direction and colours.
pub fn random(kind: VehicleKind, look: &Look, rng: &mut ChaCha8Rng) -> Vehicle {
    let (label, colours, (width, height, length)): (u8, &[[f32; 3]], _) = match kind {
        VehicleKind::Car => (CAR, &CAR_COLOURS, (1.15, 0.95, 2.8)),
        VehicleKind::Truck => (TRUCK, &TRUCK_COLOURS, (1.55, 2.2, 5.0)),
        VehicleKind::Bus => (BUS, &BUS_COLOURS, (1.6, 2.0, 7.5)),
        VehicleKind::Tram => (TRAIN, &TRAM_COLOURS, (1.5, 2.2, 12.0)),
    };
    let size = 1.0 + 0.08 * (rng.gen::<f32>() * 2.0 - 1.0);
    let base = pick(rng, colours);
    let body = Paint::new(label, Material::Metal, look.object(rng, base));
    let trim_base = if kind == VehicleKind::Car {
        [0.15, 0.15, 0.16]
    } else {
        [0.90, 0.90, 0.88]
    };
    let trim = body.part(Material::Metal, look.object(rng, trim_base));
    Vehicle {
        kind,
        width: width * size,
        height: height * size,
        length: length * size,
        oncoming: rng.gen::<f32>() < 0.4,
        body,
        trim,
        glass: body.part(Material::Glass, look.tint([0.12, 0.15, 0.20])),
        tyre: body.part(Material::Rubber, look.tint([0.06, 0.06, 0.07])),
        head_lamp: body.part(Material::Lamp, look.tint([0.98, 0.96, 0.85])),
        tail_lamp: body.part(Material::Lamp, look.tint([0.85, 0.08, 0.06])),
    }
}

/// Paints `v` standing at `(t, u)`, `u` being the centre of its near face.
pub fn paint(canvas: &mut Canvas, geo: &Geometry, t: f32, u: f32, scale: f32, v: &Vehicle) {
    let (w, h, l) = (v.width * scale, v.height * scale, v.length * scale);
    let z0 = 1.0 / t.max(1e-3);
    let z1 = z0 + l / DEPTH_UNIT;
    let (left, right) = (u - w / 2.0, u + w / 2.0);
    // The side facing the road centre is visible; the face is farther than
    // the near face, so it is painted first.
    let aspect = h / l;
    let side = |s: f32, hv: f32| side_shape(v, if v.oncoming { s } else { 1.0 - s }, hv, aspect);
    if left > 0.02 {
        side_face(canvas, geo, left, (z0, z1), h, side);
    } else if right < -0.02 {
        side_face(canvas, geo, right, (z0, z1), h, side);
    }
    let ppu = geo.ppu(t);
    let (x0, x1, foot) = (geo.col(t, left), geo.col(t, right), geo.row(t));
    let span = (x1 - x0).max(1e-3);
    canvas.fill((x0, foot - h * ppu, x1, foot), |x, y| {
        near_shape(v, (x - x0) / span, (foot - y) / (h * ppu))
    });
}

/// Paints a face lying in the vertical plane at lateral offset `u_face`
/// between depths `z0..z1`; `f(s, h)` gets `s` in `0..1` from the near end
/// and `h` in `0..1` of `height`.
fn side_face(
    canvas: &mut Canvas,
    geo: &Geometry,
    u_face: f32,
    (z0, z1): (f32, f32),
    height: f32,
    f: impl Fn(f32, f32) -> Option<Paint>,
) {
    let xa = geo.col(1.0 / z0, u_face);
    let xb = geo.col(1.0 / z1, u_face);
    let (lo, hi) = (xa.min(xb).max(0.0), xa.max(xb).min(geo.width));
    let denom = u_face * geo.ground;
    if hi <= lo || denom.abs() < 1e-6 {
        return;
    }
    let first = (lo - 0.5).ceil().max(0.0) as usize;
    let last = (hi - 0.5).ceil().max(0.0) as usize;
    for xi in first..last {
        let t = (xi as f32 + 0.5 - geo.vx) / denom;
        if t <= 0.0 {
            continue;
        }
        let s = ((1.0 / t - z0) / (z1 - z0)).clamp(0.0, 1.0);
        let (ppu, foot) = (geo.ppu(t), geo.row(t));
        let top = foot - height * ppu;
        canvas.fill((xi as f32, top, xi as f32 + 1.0, foot), |_, y| {
            f(s, (foot - y) / (height * ppu))
        });
    }
}

/// Tyres seen from the front or rear, and the open space between them.
fn wheels_front(v: &Vehicle, a: f32, h: f32, level: f32) -> Option<Option<Paint>> {
    (h < level).then(|| (!(0.18..=0.82).contains(&a)).then_some(v.tyre))
}

/// Inside a wheel of the side face centred at `sc`, radius `r` (in `h` units).
fn in_wheel(s: f32, h: f32, sc: f32, r: f32, aspect: f32) -> bool {
    let ds = (s - sc) / (r * aspect);
    let dh = (h - r) / r;
    ds * ds + dh * dh <= 1.0
}

/// The face towards the camera; `a` runs left to right, `h` bottom to top.
fn near_shape(v: &Vehicle, a: f32, h: f32) -> Option<Paint> {
    if !(0.0..=1.0).contains(&h) {
        return None;
    }
    let lamp = if v.oncoming { v.head_lamp } else { v.tail_lamp };
    let at_edge = !(0.13..=0.87).contains(&a);
    match v.kind {
        VehicleKind::Car => {
            if let Some(w) = wheels_front(v, a, h, 0.13) {
                return w;
            }
            if h < 0.55 {
                return Some(if h < 0.22 {
                    v.trim
                } else if at_edge && h > 0.36 && h < 0.5 {
                    lamp
                } else {
                    v.body
                });
            }
            let k = (h - 0.55) / 0.45;
            let inset = 0.07 + 0.15 * k;
            if a < inset || a > 1.0 - inset {
                return None;
            }
            let pane = h < 0.93 && a > inset + 0.06 && a < 1.0 - inset - 0.06;
            Some(if pane { v.glass } else { v.body })
        }
        VehicleKind::Truck => {
            if let Some(w) = wheels_front(v, a, h, 0.1) {
                return w;
            }
            if v.oncoming {
                Some(if h > 0.82 {
                    v.trim
                } else if h > 0.5 && a > 0.07 && a < 0.93 {
                    v.glass
                } else if at_edge && h > 0.18 && h < 0.26 {
                    lamp
                } else {
                    v.body
                })
            } else {
                Some(if h < 0.18 {
                    v.tyre
                } else if at_edge && h < 0.26 {
                    lamp
                } else if (a - 0.5).abs() < 0.012 {
                    v.trim.shaded(0.7)
                } else {
                    v.trim
                })
            }
        }
        VehicleKind::Bus => {
            if let Some(w) = wheels_front(v, a, h, 0.08) {
                return w;
            }
            let window = if v.oncoming {
                (0.35, 0.86)
            } else {
                (0.55, 0.85)
            };
            Some(if h > window.0 && h < window.1 && a > 0.06 && a < 0.94 {
                v.glass
            } else if h > 0.89 && h < 0.96 && a > 0.25 && a < 0.75 {
                v.head_lamp
            } else if at_edge && h > 0.14 && h < 0.26 {
                lamp
            } else {
                v.body
            })
        }
        VehicleKind::Tram => Some(if h < 0.08 {
            v.tyre
        } else if h > 0.42 && h < 0.86 && a > 0.08 && a < 0.92 {
            v.glass
        } else if h > 0.92 || (h > 0.32 && h < 0.38) {
            v.trim
        } else if at_edge && h > 0.15 && h < 0.24 {
            lamp
        } else {
            v.body
        }),
    }
}

/// The side face; `s` runs from the vehicle's front (0) to its back (1),
/// `aspect` is height over length (to keep wheels round).
fn side_shape(v: &Vehicle, s: f32, h: f32, aspect: f32) -> Option<Paint> {
    if !(0.0..=1.0).contains(&h) {
        return None;
    }
    match v.kind {
        VehicleKind::Car => {
            if in_wheel(s, h, 0.18, 0.19, aspect) || in_wheel(s, h, 0.82, 0.19, aspect) {
                return Some(v.tyre);
            }
            if h < 0.12 {
                return None;
            }
            if h < 0.55 {
                return Some(v.body);
            }
            let k = (h - 0.55) / 0.45;
            let (c0, c1) = (0.28 + 0.22 * k, 0.86 - 0.08 * k);
            if s < c0 || s > c1 {
                return None;
            }
            let pane = h < 0.92 && s > c0 + 0.03 && s < c1 - 0.03 && (s - 0.56).abs() > 0.025;
            Some(if pane { v.glass } else { v.body })
        }
        VehicleKind::Truck => {
            let r = 0.2;
            if [0.12, 0.7, 0.85]
                .iter()
                .any(|&c| in_wheel(s, h, c, r, aspect))
            {
                return Some(v.tyre);
            }
            if h < 0.1 {
                return None;
            }
            if s < 0.22 {
                return (h < 0.8).then_some(if h > 0.5 && s > 0.05 && s < 0.18 {
                    v.glass
                } else {
                    v.body
                });
            }
            Some(if h < 0.16 { v.tyre } else { v.trim })
        }
        VehicleKind::Bus => {
            if in_wheel(s, h, 0.14, 0.17, aspect) || in_wheel(s, h, 0.8, 0.17, aspect) {
                return Some(v.tyre);
            }
            if h < 0.07 {
                return None;
            }
            let door = (0.04..0.1).contains(&s) || (0.46..0.53).contains(&s);
            let band = h > 0.5 && h < 0.88 && (s * 10.0).fract() > 0.1;
            Some(if (door && h > 0.1 && h < 0.88) || band {
                v.glass
            } else if h > 0.4 && h < 0.46 {
                v.trim
            } else {
                v.body
            })
        }
        VehicleKind::Tram => {
            let door = (s * 4.0).fract() < 0.06;
            let band = h > 0.45 && h < 0.85 && (s * 16.0).fract() > 0.15;
            Some(if h < 0.08 {
                v.tyre
            } else if (door && h > 0.1 && h < 0.85) || band {
                v.glass
            } else if h > 0.92 || (h > 0.32 && h < 0.38) {
                v.trim
            } else {
                v.body
            })
        }
    }
}
