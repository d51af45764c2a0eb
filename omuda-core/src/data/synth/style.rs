//! The shift knobs: every parameter that differs between the game-like
//! source and the camera-like target, declared once with both defaults and a
//! valid range. A config may set any subset of a domain's knobs; the rest keep
//! that domain's defaults (see [`deserialize_source`] / [`deserialize_target`]).

use serde::{Deserialize, Deserializer, Serialize};

macro_rules! domain_style {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: game = $game:expr, camera = $camera:expr, range = $lo:expr, $hi:expr;
    )*) => {
        /// How one domain's scenes are laid out, populated and photographed.
        /// All knobs are `f32`; counts are Poisson means, `*_prob` are
        /// probabilities. [`DomainStyle::game`] is the source default,
        /// [`DomainStyle::camera`] the target default.
        #[derive(Serialize, Clone, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct DomainStyle {
            $( $(#[doc = $doc])* pub $name: f32, )*
        }

        impl DomainStyle {
            /// Source default: flat saturated colours, bright uniform light,
            /// no sensor effects, close large objects, car-heavy traffic.
            pub fn game() -> Self {
                DomainStyle { $( $name: $game, )* }
            }

            /// Target default: shifted colours, textures, per-image lighting,
            /// vignetting, noise and blur, far small objects, pedestrian-heavy.
            pub fn camera() -> Self {
                DomainStyle { $( $name: $camera, )* }
            }

            /// Knob-wise `self * (1 - t) + other * t` (exact at both ends), clamped to the valid
            /// ranges (so `t > 1` extrapolates the gap without leaving them).
            pub fn lerp(&self, other: &Self, t: f32) -> Self {
                DomainStyle {
                    $( $name: (self.$name * (1.0 - t) + other.$name * t).clamp($lo, $hi), )*
                }
            }

            /// Domain randomisation, for the pretraining set: every appearance
            /// knob and the furniture floor uniform over the whole valid range,
            /// every other layout and
            /// traffic knob uniform over half the smaller to 1.5 times the
            /// larger of its two domain defaults (clamped to its range), so a
            /// scene is neither source- nor target-styled but stays a street.
            /// Knobs are drawn in declaration order.
            pub fn randomized<R: rand::Rng>(rng: &mut R) -> Self {
                DomainStyle {
                    $( $name: randomized_knob(stringify!($name), $game, $camera, ($lo, $hi), rng), )*
                }
            }

            /// Name, value and valid range of every knob, in declaration order.
            pub fn knobs(&self) -> Vec<(&'static str, f32, (f32, f32))> {
                vec![ $( (stringify!($name), self.$name, ($lo, $hi)), )* ]
            }
        }

        /// A domain style with every knob optional, for partial configs.
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields, default)]
        struct PartialStyle {
            $( $name: Option<f32>, )*
        }

        impl PartialStyle {
            fn over(self, base: DomainStyle) -> DomainStyle {
                DomainStyle { $( $name: self.$name.unwrap_or(base.$name), )* }
            }
        }
    };
}

domain_style! {
    // ----- layout -----
    /// Horizon row as a fraction of the image height.
    horizon: game = 0.40, camera = 0.47, range = 0.15, 0.8;
    /// Per-image horizon jitter (fraction of height, uniform ±).
    horizon_jitter: game = 0.03, camera = 0.04, range = 0.0, 0.2;
    /// Road width at the bottom row as a fraction of the image width.
    road_width: game = 1.5, camera = 1.15, range = 0.1, 3.0;
    /// Per-image relative road-width jitter (uniform ±).
    road_width_jitter: game = 0.10, camera = 0.15, range = 0.0, 0.5;
    /// Sidewalk width relative to the road's half width.
    sidewalk_width: game = 0.40, camera = 0.55, range = 0.05, 2.0;
    /// Probability that a side of the street has a grass strip.
    terrain_prob: game = 0.30, camera = 0.60, range = 0.0, 1.0;
    /// Probability that a facade slot holds a building (else trees or open ground).
    building_prob: game = 0.75, camera = 0.6, range = 0.0, 1.0;
    /// Mean building height in camera heights.
    building_height: game = 5.0, camera = 4.0, range = 0.5, 20.0;
    /// Mean number of wall segments per side.
    walls: game = 0.8, camera = 0.6, range = 0.0, 10.0;
    /// Mean number of fence segments per side.
    fences: game = 0.5, camera = 0.9, range = 0.0, 10.0;
    /// Mean number of poles per side.
    poles: game = 2.5, camera = 3.5, range = 0.0, 20.0;
    /// Probability that a pole carries a traffic light.
    traffic_light_prob: game = 0.45, camera = 0.40, range = 0.0, 1.0;
    /// Probability that a pole carries a traffic sign.
    sign_prob: game = 0.50, camera = 0.60, range = 0.0, 1.0;
    /// Mean number of street trees per side.
    trees: game = 1.5, camera = 2.5, range = 0.0, 20.0;
    // ----- traffic -----
    /// Mean number of cars.
    cars: game = 5.0, camera = 3.0, range = 0.0, 40.0;
    /// Mean number of trucks.
    trucks: game = 0.35, camera = 0.2, range = 0.0, 10.0;
    /// Mean number of buses.
    buses: game = 0.3, camera = 0.2, range = 0.0, 10.0;
    /// Mean number of trams (class train).
    trains: game = 0.12, camera = 0.1, range = 0.0, 5.0;
    /// Mean number of pedestrians.
    persons: game = 2.0, camera = 7.0, range = 0.0, 60.0;
    /// Mean number of cyclists (a rider on a bicycle).
    cyclists: game = 0.3, camera = 2.5, range = 0.0, 20.0;
    /// Mean number of motorcyclists (a rider on a motorcycle).
    motorcyclists: game = 0.3, camera = 0.6, range = 0.0, 20.0;
    /// Mean number of parked bicycles.
    parked_bicycles: game = 0.3, camera = 1.2, range = 0.0, 20.0;
    /// Mean number of unlabelled street objects (bins, boxes), labelled ignore.
    clutter: game = 0.5, camera = 1.0, range = 0.0, 20.0;
    /// Size multiplier of all objects.
    object_scale: game = 1.15, camera = 0.85, range = 0.2, 3.0;
    /// Smallest scale of the street furniture (traffic lights, traffic signs
    /// and pole shafts), in pixels per camera height as a fraction of the
    /// image height: far furniture is drawn at least this large, near
    /// furniture keeps its perspective size (0: pure perspective).
    furniture_floor: game = 0.0, camera = 0.0, range = 0.0, 0.5;
    /// Exponent of the object depth distribution: above 1 pushes objects
    /// towards the horizon (smaller), below 1 towards the camera.
    depth_bias: game = 0.7, camera = 1.5, range = 0.2, 5.0;
    // ----- appearance -----
    /// Hue rotation of every class colour, degrees.
    hue_shift: game = 0.0, camera = 16.0, range = -180.0, 180.0;
    /// Saturation multiplier of every class colour.
    saturation: game = 1.0, camera = 0.55, range = 0.0, 2.0;
    /// Brightness multiplier of every class colour.
    value: game = 1.0, camera = 0.92, range = 0.1, 2.0;
    /// Per-object colour variation (standard deviation, relative).
    colour_variation: game = 0.05, camera = 0.12, range = 0.0, 0.5;
    /// Strength of per-material procedural textures (grain, blotches, speckle).
    texture: game = 0.0, camera = 1.0, range = 0.0, 3.0;
    /// Mean global illumination gain.
    brightness: game = 1.0, camera = 0.80, range = 0.1, 2.0;
    /// Per-image relative illumination jitter (uniform ±).
    brightness_jitter: game = 0.05, camera = 0.30, range = 0.0, 0.9;
    /// Strength of a per-image colour cast (warm dusk or cool overcast).
    colour_cast: game = 0.0, camera = 0.15, range = 0.0, 0.5;
    /// Contrast around mid-grey (1 keeps it).
    contrast: game = 1.0, camera = 0.80, range = 0.2, 2.0;
    /// Darkening of the street side facing away from the sun.
    side_shadow: game = 0.10, camera = 0.35, range = 0.0, 0.9;
    /// Probability of an overcast or dusk sky instead of a clear blue one.
    weather: game = 0.0, camera = 0.70, range = 0.0, 1.0;
    /// Corner darkening of the lens.
    vignette: game = 0.0, camera = 0.40, range = 0.0, 1.0;
    /// Blend weight of a 3×3 binomial blur (0 sharp, 1 fully blurred).
    blur: game = 0.0, camera = 1.0, range = 0.0, 1.0;
    /// Sensor noise standard deviation, as a fraction of full scale.
    noise: game = 0.0, camera = 0.03, range = 0.0, 0.3;
    /// Share of class-boundary pixels labelled ignore (annotation uncertainty).
    boundary_ignore: game = 0.0, camera = 0.12, range = 0.0, 1.0;
    /// Probability that the ego vehicle's hood is in view (labelled ignore).
    ego_hood: game = 0.0, camera = 1.0, range = 0.0, 1.0;
}

/// The knobs [`DomainStyle::randomized`] draws over their whole range: how a
/// scene is coloured, lit and photographed, and the smallest drawing size of
/// the street furniture.
const WHOLE_RANGE_KNOBS: [&str; 16] = [
    "furniture_floor",
    "hue_shift",
    "saturation",
    "value",
    "colour_variation",
    "texture",
    "brightness",
    "brightness_jitter",
    "colour_cast",
    "contrast",
    "side_shadow",
    "weather",
    "vignette",
    "blur",
    "noise",
    "ego_hood",
];

/// One knob of [`DomainStyle::randomized`]. Boundary-ignore pixels are an
/// annotation habit of the target, not an appearance: the pretraining set
/// has none.
fn randomized_knob<R: rand::Rng>(
    name: &str,
    game: f32,
    camera: f32,
    (lo, hi): (f32, f32),
    rng: &mut R,
) -> f32 {
    let (a, b) = if name == "boundary_ignore" {
        (0.0, 0.0)
    } else if WHOLE_RANGE_KNOBS.contains(&name) {
        (lo, hi)
    } else {
        (
            (0.5 * game.min(camera)).clamp(lo, hi),
            (1.5 * game.max(camera)).clamp(lo, hi),
        )
    };
    let u: f32 = rng.gen();
    (a + (b - a) * u).clamp(lo, hi)
}

impl DomainStyle {
    /// Every knob finite and inside its range; otherwise the offending knob.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (name, v, (lo, hi)) in self.knobs() {
            if !(v.is_finite() && v >= lo && v <= hi) {
                return Err(format!("{name} = {v} is outside [{lo}, {hi}]"));
            }
        }
        Ok(())
    }
}

/// Reads a (possibly partial) source style; missing knobs keep [`DomainStyle::game`].
pub fn deserialize_source<'de, D: Deserializer<'de>>(d: D) -> Result<DomainStyle, D::Error> {
    Ok(PartialStyle::deserialize(d)?.over(DomainStyle::game()))
}

/// Reads a (possibly partial) target style; missing knobs keep [`DomainStyle::camera`].
pub fn deserialize_target<'de, D: Deserializer<'de>>(d: D) -> Result<DomainStyle, D::Error> {
    Ok(PartialStyle::deserialize(d)?.over(DomainStyle::camera()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_in_range() {
        assert_eq!(DomainStyle::game().check(), Ok(()));
        assert_eq!(DomainStyle::camera().check(), Ok(()));
    }

    #[test]
    fn lerp_ends_and_clamps() {
        let (g, c) = (DomainStyle::game(), DomainStyle::camera());
        assert_eq!(g.lerp(&c, 0.0), g);
        assert_eq!(g.lerp(&c, 1.0), c);
        assert_eq!(g.lerp(&c, 10.0).check(), Ok(()));
    }

    #[test]
    fn randomized_styles_are_valid_varied_and_seeded() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let styles: Vec<DomainStyle> = (0..200)
            .map(|_| DomainStyle::randomized(&mut rng))
            .collect();
        for s in &styles {
            assert_eq!(s.check(), Ok(()));
            assert_eq!(s.boundary_ignore, 0.0);
        }
        // Appearance knobs cover most of their range; layout knobs stay near the domains'.
        let hue: Vec<f32> = styles.iter().map(|s| s.hue_shift).collect();
        assert!(hue.iter().cloned().fold(f32::MAX, f32::min) < -150.0);
        assert!(hue.iter().cloned().fold(f32::MIN, f32::max) > 150.0);
        assert!(styles.iter().all(|s| s.cars >= 1.5 && s.cars <= 7.5));
        for name in WHOLE_RANGE_KNOBS {
            assert!(
                DomainStyle::game().knobs().iter().any(|k| k.0 == name),
                "{name} is not a knob"
            );
        }
        let mut again = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        assert_eq!(DomainStyle::randomized(&mut again), styles[0]);
    }
}
