//! Objects in the street: what is placed where, how many, and how far. Every
//! object stands on the ground at inverse depth `t` and lateral offset `u`
//! (see [`super::scene`]); objects are painted far to near so nearer ones
//! occlude farther ones, and their size follows the perspective at `t`.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::canvas::{Canvas, Material, Paint};
use super::geometry::{poisson, side_sign, uniform, Geometry, LEFT, RIGHT};
use super::look::Look;
use super::people::{self, Figure, Rig};
use super::street;
use super::style::DomainStyle;
use super::vehicles::{self, Vehicle, VehicleKind};
use crate::data::classes::{IGNORE_INDEX, PERSON, RIDER};

/// Farthest inverse depth at which objects are placed.
const T_FAR: f32 = 0.04;
/// Nearest inverse depth of vehicles, pedestrians and roadside objects: a
/// little above the bottom row, so that near objects are large but rarely
/// fill the frame.
const T_VEHICLE: f32 = 0.75;
const T_PERSON: f32 = 0.85;
const T_ROADSIDE: f32 = 0.9;
/// Depth bias of fixed roadside objects, the same in both domains: evenly
/// spaced along the street, so most are far.
const ROADSIDE_BIAS: f32 = 1.5;

/// One object and where it stands.
pub struct Thing {
    pub t: f32,
    pub u: f32,
    pub kind: Kind,
}

pub enum Kind {
    Vehicle(Vehicle),
    Pedestrian(Figure),
    /// A bicycle or motorcycle with its rider, or a parked one without.
    TwoWheeler {
        rider: Option<Figure>,
        rig: Rig,
    },
    Pole(street::Pole),
    Tree(street::Tree),
    Clutter {
        paint: Paint,
        width: f32,
        height: f32,
    },
}

/// Places every object of the scene and paints them back to front.
pub fn paint_all(
    canvas: &mut Canvas,
    geo: &Geometry,
    style: &DomainStyle,
    look: &Look,
    rng: &mut ChaCha8Rng,
) {
    let mut things = Vec::new();
    place_vehicles(&mut things, geo, style, look, rng);
    place_people(&mut things, geo, style, look, rng);
    place_street_furniture(&mut things, geo, style, look, rng);
    things.sort_by(|a, b| a.t.total_cmp(&b.t));
    let scale = style.object_scale;
    for thing in &things {
        paint(canvas, geo, thing, scale, style.furniture_floor);
    }
}

/// Paints one thing; `floor` is `DomainStyle::furniture_floor`.
fn paint(canvas: &mut Canvas, geo: &Geometry, thing: &Thing, scale: f32, floor: f32) {
    let (t, u) = (thing.t, thing.u);
    let s = geo.ppu(t) * scale;
    let (cx, foot) = (geo.col(t, u), geo.row(t));
    match &thing.kind {
        Kind::Vehicle(v) => vehicles::paint(canvas, geo, t, u, scale, v),
        Kind::Pedestrian(f) => people::walker(canvas, cx, foot, s, f),
        Kind::TwoWheeler { rider, rig } => {
            people::two_wheeler(canvas, cx, foot, s, rider.as_ref(), rig)
        }
        Kind::Pole(p) => street::pole(canvas, geo, t, u, scale, floor, p),
        Kind::Tree(tree) => street::tree(canvas, cx, foot, geo.ppu(t), tree),
        Kind::Clutter {
            paint,
            width,
            height,
        } => canvas.rect(
            cx - width * s / 2.0,
            foot - height * s,
            cx + width * s / 2.0,
            foot,
            *paint,
        ),
    }
}

/// Inverse depth of an object: `depth_bias > 1` favours the far end.
pub fn depth(rng: &mut ChaCha8Rng, bias: f32, near: f32) -> f32 {
    T_FAR + (near - T_FAR) * rng.gen::<f32>().powf(bias)
}

fn random_side(rng: &mut ChaCha8Rng) -> usize {
    if rng.gen::<bool>() {
        LEFT
    } else {
        RIGHT
    }
}

/// A lateral position on a sidewalk, clear of the curb.
fn on_sidewalk(geo: &Geometry, side: usize, rng: &mut ChaCha8Rng) -> f32 {
    side_sign(side) * (geo.road_half + 0.15 + uniform(rng, 0.0, 0.85) * geo.sidewalk[side])
}

fn place_vehicles(
    out: &mut Vec<Thing>,
    geo: &Geometry,
    style: &DomainStyle,
    look: &Look,
    rng: &mut ChaCha8Rng,
) {
    let counts = [
        (VehicleKind::Car, style.cars),
        (VehicleKind::Truck, style.trucks),
        (VehicleKind::Bus, style.buses),
        (VehicleKind::Tram, style.trains),
    ];
    let lane = geo.road_half / 2.0;
    for (kind, mean) in counts {
        for _ in 0..poisson(rng, mean) {
            let t = depth(rng, style.depth_bias, T_VEHICLE);
            let vehicle = vehicles::random(kind, look, rng);
            let half = vehicle.width * style.object_scale / 2.0;
            // Cars are often parked along the curb; everything else drives,
            // ours in the right lane (rear view), oncoming in the left one.
            let parked = kind == VehicleKind::Car && rng.gen::<f32>() < 0.35;
            let u = if parked {
                let side = random_side(rng);
                side_sign(side) * (geo.road_half - half - 0.05).max(0.0)
            } else if vehicle.oncoming {
                -lane + uniform(rng, -0.15, 0.15) * lane
            } else {
                lane + uniform(rng, -0.15, 0.15) * lane
            };
            out.push(Thing {
                t,
                u,
                kind: Kind::Vehicle(vehicle),
            });
        }
    }
}

fn place_people(
    out: &mut Vec<Thing>,
    geo: &Geometry,
    style: &DomainStyle,
    look: &Look,
    rng: &mut ChaCha8Rng,
) {
    for _ in 0..poisson(rng, style.persons) {
        let t = depth(rng, style.depth_bias, T_PERSON);
        let figure = people::figure(PERSON, look, rng);
        // Most pedestrians walk on the sidewalks, some cross the road.
        let u = if rng.gen::<f32>() < 0.2 {
            uniform(rng, -1.0, 1.0) * geo.road_half
        } else {
            on_sidewalk(geo, random_side(rng), rng)
        };
        out.push(Thing {
            t,
            u,
            kind: Kind::Pedestrian(figure),
        });
    }
    for motor in [false, true] {
        let mean = if motor {
            style.motorcyclists
        } else {
            style.cyclists
        };
        for _ in 0..poisson(rng, mean) {
            let t = depth(rng, style.depth_bias, T_VEHICLE);
            let rider = people::figure(RIDER, look, rng);
            let rig = people::rig(motor, true, look, rng);
            // Riders keep to the edge of the road (or a lane for motorcycles).
            let side = random_side(rng);
            let margin = if motor { 0.5 } else { 0.3 };
            let u = side_sign(side) * (geo.road_half - margin * geo.road_half.min(1.0));
            out.push(Thing {
                t,
                u,
                kind: Kind::TwoWheeler {
                    rider: Some(rider),
                    rig,
                },
            });
        }
    }
    for _ in 0..poisson(rng, style.parked_bicycles) {
        let t = depth(rng, style.depth_bias, T_PERSON);
        let rig = people::rig(false, false, look, rng);
        let u = on_sidewalk(geo, random_side(rng), rng);
        out.push(Thing {
            t,
            u,
            kind: Kind::TwoWheeler { rider: None, rig },
        });
    }
}

fn place_street_furniture(
    out: &mut Vec<Thing>,
    geo: &Geometry,
    style: &DomainStyle,
    look: &Look,
    rng: &mut ChaCha8Rng,
) {
    for side in [LEFT, RIGHT] {
        let sign = side_sign(side);
        for _ in 0..poisson(rng, style.poles) {
            let t = depth(rng, ROADSIDE_BIAS, T_ROADSIDE);
            let pole = street::random_pole(side, geo, style, look, rng);
            let u = sign * (geo.road_half + 0.12 + 0.1 * rng.gen::<f32>());
            out.push(Thing {
                t,
                u,
                kind: Kind::Pole(pole),
            });
        }
        for _ in 0..poisson(rng, style.trees) {
            let t = depth(rng, ROADSIDE_BIAS, T_ROADSIDE);
            let u = if geo.terrain[side] > 0.0 {
                sign * (geo.sidewalk_outer(side) + geo.terrain[side] * uniform(rng, 0.3, 0.7))
            } else {
                sign * (geo.sidewalk_outer(side) - 0.3 * geo.sidewalk[side])
            };
            out.push(Thing {
                t,
                u,
                kind: Kind::Tree(street::random_tree(look, rng)),
            });
        }
    }
    for _ in 0..poisson(rng, style.clutter) {
        let t = depth(rng, ROADSIDE_BIAS, T_ROADSIDE);
        let u = on_sidewalk(geo, random_side(rng), rng);
        let base = if rng.gen::<bool>() {
            [0.18, 0.30, 0.22]
        } else {
            [0.50, 0.38, 0.24]
        };
        let paint = Paint::new(IGNORE_INDEX, Material::Metal, look.object(rng, base));
        let (width, height) = (uniform(rng, 0.25, 0.5), uniform(rng, 0.4, 0.7));
        out.push(Thing {
            t,
            u,
            kind: Kind::Clutter {
                paint,
                width,
                height,
            },
        });
    }
}
