//! Scene layout and the "stuff" classes: a straight street seen by a level
//! camera. The road, sidewalks and grass strips are bands of the ground plane
//! that converge at the vanishing point; buildings, trees, walls and fences
//! stand on vertical planes along the street, painted column by column.
//!
//! Coordinates: `t` is inverse depth (1 at the bottom image row, 0 at the
//! horizon), lateral offsets `u` and heights are in camera heights, so a point
//! `(t, u)` on the ground lies at column `vx + u·t·ground`, row
//! `horizon + t·ground`, and one camera height there spans `t·ground` pixels.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::canvas::{Canvas, Material, Paint};
use super::geometry::{poisson, side_sign, uniform, Geometry, LEFT, RIGHT};
use super::look::Look;
use super::noise::value_noise_1d;
use super::style::DomainStyle;
use super::things;
use crate::data::classes::{
    BUILDING, FENCE, IGNORE_INDEX, ROAD, SIDEWALK, SKY, TERRAIN, VEGETATION, WALL,
};

/// Paints a whole scene: sky, skyline, ground, facades, low walls and fences,
/// then the objects back to front, then the ego vehicle's hood.
pub fn compose(w: usize, h: usize, style: &DomainStyle, rng: &mut ChaCha8Rng) -> Canvas {
    let look = Look::new(style);
    let geo = Geometry::draw(w as f32, h as f32, style, rng);
    let sky = Paint::new(SKY, Material::Sky, [0.5, 0.7, 0.9]);
    let mut canvas = Canvas::new(w, h, sky);
    paint_sky(&mut canvas, &geo, style, &look, rng);
    paint_skyline(&mut canvas, &geo, &look, rng);
    paint_ground(&mut canvas, &geo, &look, rng);
    let shadow_side = if rng.gen::<bool>() { LEFT } else { RIGHT };
    for side in [LEFT, RIGHT] {
        let light = if side == shadow_side {
            1.0 - style.side_shadow
        } else {
            1.0
        };
        let slots = facade_slots(style, &look, rng, light);
        paint_planes(&mut canvas, &geo, side, geo.facade(side), &slots);
        let mut low = low_slots(&geo, side, style, &look, rng, light);
        // A plane farther from the road lies behind a nearer one in every
        // column, so paint the outer planes first.
        low.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (offset, slot) in &low {
            paint_planes(&mut canvas, &geo, side, *offset, std::slice::from_ref(slot));
        }
    }
    things::paint_all(&mut canvas, &geo, style, &look, rng);
    if rng.gen::<f32>() < style.ego_hood {
        paint_hood(&mut canvas, &geo, &look, rng);
    }
    canvas
}

/// Sky as a vertical gradient; clear blue, or with the `weather` probability
/// an overcast grey or a dusk sky that glows near the horizon.
fn paint_sky(
    canvas: &mut Canvas,
    geo: &Geometry,
    style: &DomainStyle,
    look: &Look,
    rng: &mut ChaCha8Rng,
) {
    let (top, bottom) = if rng.gen::<f32>() >= style.weather {
        ([0.28, 0.52, 0.90], [0.68, 0.82, 0.97])
    } else if rng.gen::<bool>() {
        ([0.60, 0.64, 0.70], [0.82, 0.83, 0.85])
    } else {
        ([0.34, 0.38, 0.62], [0.95, 0.66, 0.42])
    };
    let rows = geo.horizon.ceil().max(1.0);
    for y in 0..(rows as usize).min(canvas.height) {
        let a = (y as f32 + 0.5) / rows;
        let c = [0, 1, 2].map(|k| top[k] + (bottom[k] - top[k]) * a);
        let p = Paint::new(SKY, Material::Sky, look.tint(c));
        canvas.rect(0.0, y as f32, geo.width, y as f32 + 1.0, p);
    }
}

/// Distant buildings and tree lines just above the horizon, hazed towards
/// grey-blue by aerial perspective.
fn paint_skyline(canvas: &mut Canvas, geo: &Geometry, look: &Look, rng: &mut ChaCha8Rng) {
    let haze = [0.62, 0.66, 0.72];
    let mut x = -uniform(rng, 0.0, 0.05) * geo.width;
    while x < geo.width {
        let block = geo.width * uniform(rng, 0.03, 0.10);
        let kind = rng.gen::<f32>();
        let height = geo.ground * uniform(rng, 0.04, 0.28);
        let (label, material, base) = if kind < 0.6 {
            (BUILDING, Material::Facade, building_colour(rng))
        } else if kind < 0.88 {
            (VEGETATION, Material::Foliage, [0.22, 0.42, 0.16])
        } else {
            x += block;
            continue;
        };
        let c = look.object(rng, base);
        let c = [0, 1, 2].map(|k| c[k] + (haze[k] - c[k]) * 0.35);
        let p = Paint::new(label, material, c);
        let top = geo.horizon - height;
        let salt = rng.gen::<u64>();
        if label == VEGETATION {
            canvas.fill((x, top, x + block, geo.horizon + 1.0), |px, py| {
                let bump = value_noise_1d(px, 4.0, salt);
                (py >= geo.horizon - height * (0.5 + 0.5 * bump)).then_some(p)
            });
        } else {
            canvas.rect(x, top, x + block, geo.horizon + 1.0, p);
        }
        x += block;
    }
}

/// Road (with lane markings and maybe a crosswalk), curbs, sidewalks and grass.
fn paint_ground(canvas: &mut Canvas, geo: &Geometry, look: &Look, rng: &mut ChaCha8Rng) {
    let road = Paint::new(
        ROAD,
        Material::Asphalt,
        look.object(rng, [0.36, 0.34, 0.38]),
    );
    let marking = Paint::new(ROAD, Material::Marking, look.tint([0.92, 0.92, 0.88]));
    let curb = Paint::new(SIDEWALK, Material::Concrete, look.tint([0.78, 0.76, 0.74]));
    let walks = [0, 1].map(|_| {
        Paint::new(
            SIDEWALK,
            Material::Paving,
            look.object(rng, [0.64, 0.58, 0.58]),
        )
    });
    let grass = [0, 1].map(|_| {
        Paint::new(
            TERRAIN,
            Material::Grass,
            look.object(rng, [0.52, 0.62, 0.26]),
        )
    });
    let dashed_centre = rng.gen::<f32>() < 0.8;
    let crosswalk = (rng.gen::<f32>() < 0.35).then(|| uniform(rng, 1.3, 4.0));
    let curb_width = 0.08;
    let top = geo.horizon.max(0.0);
    canvas.fill((0.0, top, geo.width, geo.height), |x, y| {
        let t = (y - geo.horizon) / geo.ground;
        if t <= 0.0 {
            return None;
        }
        let z = 1.0 / t;
        let u = (x - geo.vx) / (t * geo.ground);
        let side = if u < 0.0 { LEFT } else { RIGHT };
        let a = u.abs();
        if a <= geo.road_half {
            let centre = dashed_centre && a < 0.05 && (z * 1.5).fract() < 0.5;
            let edge = a > geo.road_half - 0.14 && a < geo.road_half - 0.08;
            let zebra = crosswalk
                .is_some_and(|zc| z > zc && z < zc + 0.45 && (u * 2.2).rem_euclid(1.0) < 0.5);
            Some(if centre || edge || zebra {
                marking
            } else {
                road
            })
        } else if a <= geo.road_half + curb_width {
            Some(curb)
        } else if a <= geo.sidewalk_outer(side) {
            Some(walks[side])
        } else {
            // Grass strip, and the open ground seen through facade gaps.
            Some(grass[side])
        }
    });
}

fn building_colour(rng: &mut ChaCha8Rng) -> [f32; 3] {
    const FACADES: [[f32; 3]; 6] = [
        [0.55, 0.33, 0.26],
        [0.74, 0.66, 0.54],
        [0.52, 0.52, 0.55],
        [0.80, 0.77, 0.72],
        [0.62, 0.50, 0.42],
        [0.40, 0.42, 0.46],
    ];
    FACADES[rng.gen_range(0..FACADES.len())]
}

/// What stands on a vertical plane along the street between depths `z0..z1`
/// (`z = 1/t`). Heights are in camera heights.
pub enum SlotKind {
    Building {
        top: f32,
        wall: Paint,
        window: Paint,
        floor: f32,
        pitch: f32,
        phase: f32,
    },
    Trees {
        top: f32,
        leaves: Paint,
        salt: u64,
    },
    Wall {
        top: f32,
        paint: Paint,
    },
    Fence {
        top: f32,
        paint: Paint,
    },
    Open,
}

pub struct Slot {
    pub z0: f32,
    pub z1: f32,
    pub kind: SlotKind,
}

/// Depth range covered by facades: from beside the camera to the point where
/// they are a few pixels from the vanishing point.
const Z_NEAR: f32 = 0.25;
const Z_FAR: f32 = 30.0;

fn facade_slots(style: &DomainStyle, look: &Look, rng: &mut ChaCha8Rng, light: f32) -> Vec<Slot> {
    let mut slots = Vec::new();
    let mut z = Z_NEAR;
    while z < Z_FAR {
        let len = uniform(rng, 0.5, 1.6) * z.max(1.0).sqrt();
        let r = rng.gen::<f32>();
        let kind = if r < style.building_prob {
            let base = building_colour(rng);
            let wall = Paint::new(BUILDING, Material::Facade, look.object(rng, base));
            let glass = look.object(rng, [0.20, 0.26, 0.34]);
            SlotKind::Building {
                top: style.building_height * uniform(rng, 0.5, 1.5),
                wall: wall.shaded(light),
                window: Paint::new(BUILDING, Material::Glass, glass).shaded(light),
                floor: uniform(rng, 1.7, 2.2),
                pitch: uniform(rng, 2.5, 4.5),
                phase: rng.gen(),
            }
        } else if r < style.building_prob + (1.0 - style.building_prob) * 0.65 {
            let leaves = Paint::new(
                VEGETATION,
                Material::Foliage,
                look.object(rng, [0.20, 0.46, 0.13]),
            );
            SlotKind::Trees {
                top: uniform(rng, 1.5, 4.0),
                leaves: leaves.shaded(light),
                salt: rng.gen(),
            }
        } else {
            SlotKind::Open
        };
        slots.push(Slot {
            z0: z,
            z1: z + len,
            kind,
        });
        z += len;
    }
    slots
}

/// Walls and fences: a few low segments per side, either at the back of the
/// sidewalk or in front of the facades.
fn low_slots(
    geo: &Geometry,
    side: usize,
    style: &DomainStyle,
    look: &Look,
    rng: &mut ChaCha8Rng,
    light: f32,
) -> Vec<(f32, Slot)> {
    let mut out = Vec::new();
    let n_walls = poisson(rng, style.walls);
    let n_fences = poisson(rng, style.fences);
    for i in 0..(n_walls + n_fences) {
        let z0 = Z_NEAR + (Z_FAR / 3.0) * rng.gen::<f32>().powf(1.5);
        let z1 = z0 + uniform(rng, 0.5, 2.5) * z0.max(1.0).sqrt();
        let kind = if i < n_walls {
            let c = look.object(rng, [0.72, 0.70, 0.62]);
            SlotKind::Wall {
                top: uniform(rng, 0.4, 1.3),
                paint: Paint::new(WALL, Material::Concrete, c).shaded(light),
            }
        } else {
            let base = if rng.gen::<bool>() {
                [0.50, 0.40, 0.30]
            } else {
                [0.46, 0.48, 0.50]
            };
            let material = if base[0] > base[2] {
                Material::Wood
            } else {
                Material::Metal
            };
            SlotKind::Fence {
                top: uniform(rng, 0.5, 1.0),
                paint: Paint::new(FENCE, material, look.object(rng, base)).shaded(light),
            }
        };
        let offset = if geo.terrain[side] > 0.0 && rng.gen::<bool>() {
            geo.sidewalk_outer(side) + 0.02
        } else {
            geo.facade(side) - 0.02
        };
        out.push((offset, Slot { z0, z1, kind }));
    }
    out
}

/// Paints slots standing on the vertical plane at lateral `offset` on `side`.
fn paint_planes(canvas: &mut Canvas, geo: &Geometry, side: usize, offset: f32, slots: &[Slot]) {
    let sign = side_sign(side);
    let per_px = offset * geo.ground;
    if per_px <= 0.0 {
        return;
    }
    for xi in 0..canvas.width {
        let x = xi as f32 + 0.5;
        let dx = sign * (x - geo.vx);
        if dx <= 0.0 {
            continue;
        }
        let t = dx / per_px;
        let z = 1.0 / t;
        let Some(slot) = slots.iter().find(|s| z >= s.z0 && z < s.z1) else {
            continue;
        };
        let ppu = geo.ppu(t);
        let foot = geo.row(t);
        let column = (xi as f32, 0.0, xi as f32 + 1.0, foot);
        paint_column(canvas, column, foot, ppu, z, slot);
    }
}

fn paint_column(
    canvas: &mut Canvas,
    column: (f32, f32, f32, f32),
    foot: f32,
    ppu: f32,
    z: f32,
    slot: &Slot,
) {
    // Height above the ground of a pixel centre, camera heights.
    let height = |y: f32| (foot - y) / ppu;
    match &slot.kind {
        SlotKind::Building {
            top,
            wall,
            window,
            floor,
            pitch,
            phase,
        } => {
            let bay = (z * pitch + phase).fract();
            let cornice = wall.shaded(0.8);
            canvas.fill(column, |_, y| {
                let v = height(y);
                if v > *top {
                    return None;
                }
                if v > top - 0.15 {
                    return Some(cornice);
                }
                let storey = (v / floor).fract();
                let glazed = if v < *floor {
                    // Ground floor: wide shop windows.
                    v > 0.25 && v < 0.8 * floor && bay < 0.75
                } else {
                    storey > 0.3 && storey < 0.75 && bay < 0.5 && v < top - 0.4
                };
                Some(if glazed { *window } else { *wall })
            });
        }
        SlotKind::Trees { top, leaves, salt } => {
            let crown = top * (0.6 + 0.6 * value_noise_1d(z * 6.0, 1.0, *salt));
            let dark = leaves.shaded(0.8);
            canvas.fill(column, |_, y| {
                let v = height(y);
                (v <= crown).then_some(if v < 0.5 { dark } else { *leaves })
            });
        }
        SlotKind::Wall { top, paint } => {
            let cap = paint.shaded(1.12);
            canvas.fill(column, |_, y| {
                let v = height(y);
                (v <= *top).then_some(if v > top - 0.08 { cap } else { *paint })
            });
        }
        SlotKind::Fence { top, paint } => {
            let picket = (z * 14.0).fract() < 0.5;
            let gap = paint.shaded(0.7);
            canvas.fill(column, |_, y| {
                let v = height(y);
                let rail = v > top - 0.1 || (v > 0.2 && v < 0.28);
                (v <= *top).then_some(if rail || picket { *paint } else { gap })
            });
        }
        SlotKind::Open => {}
    }
}

/// The ego vehicle's bonnet along the bottom edge, labelled ignore, as in
/// datasets recorded from a car.
fn paint_hood(canvas: &mut Canvas, geo: &Geometry, look: &Look, rng: &mut ChaCha8Rng) {
    let colour = look.object(rng, [0.16, 0.17, 0.20]);
    let hood = Paint::new(IGNORE_INDEX, Material::Metal, colour);
    let shine = hood.shaded(1.6);
    let depth = geo.height * uniform(rng, 0.015, 0.025);
    let half = geo.width * 0.7;
    let cx = geo.width / 2.0;
    canvas.fill((0.0, geo.height - depth, geo.width, geo.height), |x, y| {
        let a = (x - cx) / half;
        let edge = geo.height - depth * (1.0 - a * a);
        if y < edge {
            None
        } else if y < edge + 1.0 {
            Some(shine)
        } else {
            Some(hood)
        }
    });
}
