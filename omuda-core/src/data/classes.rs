//! The 19 Cityscapes evaluation classes (trainIds), their palette, the ignore
//! index, and the class subsets used by the common UDA benchmarks.
//!
//! Labels everywhere in omuda are `u8` trainIds: `0..19` for a class,
//! [`IGNORE_INDEX`] for pixels that are neither trained on nor evaluated.

/// Number of evaluation classes.
pub const NUM_CLASSES: usize = 19;

/// [`crate::ops::IGNORE_INDEX`] as the 8-bit label maps store it.
pub const IGNORE_INDEX: u8 = crate::ops::IGNORE_INDEX as u8;

/// Class names, indexed by trainId.
pub const CITYSCAPES_CLASSES: [&str; NUM_CLASSES] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// The standard Cityscapes colour of each trainId (RGB).
pub const CITYSCAPES_PALETTE: [[u8; 3]; NUM_CLASSES] = [
    [128, 64, 128],
    [244, 35, 232],
    [70, 70, 70],
    [102, 102, 156],
    [190, 153, 153],
    [153, 153, 153],
    [250, 170, 30],
    [220, 220, 0],
    [107, 142, 35],
    [152, 251, 152],
    [70, 130, 180],
    [220, 20, 60],
    [255, 0, 0],
    [0, 0, 142],
    [0, 0, 70],
    [0, 60, 100],
    [0, 80, 100],
    [0, 0, 230],
    [119, 11, 32],
];

pub const ROAD: u8 = 0;
pub const SIDEWALK: u8 = 1;
pub const BUILDING: u8 = 2;
pub const WALL: u8 = 3;
pub const FENCE: u8 = 4;
pub const POLE: u8 = 5;
pub const TRAFFIC_LIGHT: u8 = 6;
pub const TRAFFIC_SIGN: u8 = 7;
pub const VEGETATION: u8 = 8;
pub const TERRAIN: u8 = 9;
pub const SKY: u8 = 10;
pub const PERSON: u8 = 11;
pub const RIDER: u8 = 12;
pub const CAR: u8 = 13;
pub const TRUCK: u8 = 14;
pub const BUS: u8 = 15;
pub const TRAIN: u8 = 16;
pub const MOTORCYCLE: u8 = 17;
pub const BICYCLE: u8 = 18;

/// Countable object classes ("things"); the rest are amorphous "stuff".
/// ClassMix-style methods and rare-class sampling treat these specially.
pub const THING_CLASSES: [u8; 10] = [6, 7, 11, 12, 13, 14, 15, 16, 17, 18];

/// The 16 classes evaluated on SYNTHIA → Cityscapes: all but terrain, truck
/// and train, which SYNTHIA does not annotate.
pub const SYNTHIA_16: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18];

/// The 13-class SYNTHIA protocol: [`SYNTHIA_16`] without wall, fence and pole.
pub const SYNTHIA_13: [u8; 13] = [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18];

/// Name of a label value: the class name, `"ignore"` for [`IGNORE_INDEX`],
/// `"invalid"` for anything else.
pub fn class_name(label: u8) -> &'static str {
    match CITYSCAPES_CLASSES.get(usize::from(label)) {
        Some(name) => name,
        None if label == IGNORE_INDEX => "ignore",
        None => "invalid",
    }
}

/// Renders a label map as interleaved RGB (`label.len() * 3` bytes) with the
/// Cityscapes palette. Ignore pixels, and any value that is not a class, are
/// black so that a corrupted label stays visible instead of taking a class colour.
pub fn colorize(label: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(label.len() * 3);
    for &l in label {
        let c = CITYSCAPES_PALETTE
            .get(usize::from(l))
            .copied()
            .unwrap_or([0, 0, 0]);
        rgb.extend_from_slice(&c);
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_sorted_and_exclude_the_right_classes() {
        assert!(SYNTHIA_16.windows(2).all(|w| w[0] < w[1]));
        assert!(SYNTHIA_13.windows(2).all(|w| w[0] < w[1]));
        for c in [9u8, 14, 16] {
            assert!(!SYNTHIA_16.contains(&c));
        }
        for c in [3u8, 4, 5, 9, 14, 16] {
            assert!(!SYNTHIA_13.contains(&c));
        }
        assert!(SYNTHIA_13.iter().all(|c| SYNTHIA_16.contains(c)));
    }

    #[test]
    fn colorize_maps_palette_and_blackens_ignore() {
        let rgb = colorize(&[ROAD, IGNORE_INDEX, SKY, 19]);
        assert_eq!(&rgb[0..3], &[128, 64, 128]);
        assert_eq!(&rgb[3..6], &[0, 0, 0]);
        assert_eq!(&rgb[6..9], &[70, 130, 180]);
        assert_eq!(&rgb[9..12], &[0, 0, 0]);
    }

    #[test]
    fn names_cover_classes_and_ignore() {
        assert_eq!(class_name(BICYCLE), "bicycle");
        assert_eq!(class_name(IGNORE_INDEX), "ignore");
        assert_eq!(class_name(200), "invalid");
        assert_eq!(
            CITYSCAPES_CLASSES[usize::from(TRAFFIC_LIGHT)],
            "traffic light"
        );
    }
}
