//! The HRDA pseudo-label margin mask through the files loader (`lhoyer/HRDA
//! mmseg/datasets/cityscapes.py::CityscapesDataset.pre_pipeline`): built at the
//! original frame size and cropped and flipped with the target image. The
//! target frames paint the valid region white and the margins black, so after
//! the pipeline the mask must equal "pixel is white".

use std::path::Path;
use std::sync::Arc;

use omuda_core::data::datasets::{Dataset, DatasetKind};
use omuda_core::data::pipeline::PipelineConfig;
use omuda_core::data::png_io::{write_gray8, write_rgb8};
use omuda_core::data::prefetch::{DomainData, Producer};

const W: usize = 64;
const H: usize = 32;
const MARGINS: [usize; 4] = [3, 6, 2, 5];

fn tree(root: &Path, n: usize) {
    let [top, bottom, left, right] = MARGINS;
    let mut img = vec![0u8; W * H * 3];
    for y in top..H - bottom {
        for x in left..W - right {
            img[(y * W + x) * 3..(y * W + x) * 3 + 3].copy_from_slice(&[255, 255, 255]);
        }
    }
    for i in 0..n {
        let base = format!("aachen_{i:06}_000019");
        write_rgb8(
            &root.join(format!("leftImg8bit/train/aachen/{base}_leftImg8bit.png")),
            W,
            H,
            &img,
        )
        .unwrap();
        write_gray8(
            &root.join(format!(
                "gtFine/train/aachen/{base}_gtFine_labelTrainIds.png"
            )),
            W,
            H,
            &vec![0u8; W * H],
        )
        .unwrap();
    }
}

fn producer(root: &Path, margins: Option<[usize; 4]>) -> Producer {
    let ds = Arc::new(Dataset::open(DatasetKind::Cityscapes, root, "train").unwrap());
    let pipe = PipelineConfig {
        scale: None,
        crop: Some([16, 24]),
        cat_max_ratio: 1.0,
        flip_prob: 0.5,
        pad_to_crop: false,
    };
    Producer::new(
        DomainData {
            dataset: ds.clone(),
            pipeline: pipe.clone(),
        },
        DomainData {
            dataset: ds,
            pipeline: pipe,
        },
        None,
        2,
        5,
    )
    .unwrap()
    .with_target_margins(margins)
}

#[test]
fn margin_mask_is_cropped_and_flipped_with_the_target() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), 3);
    let with = producer(dir.path(), Some(MARGINS));
    let without = producer(dir.path(), None);
    let (mut mixed, mut left_cut, mut right_cut) = (0, 0, 0);
    for index in 0..12 {
        let a = with.batch(index).unwrap();
        let b = without.batch(index).unwrap();
        // The mask draws nothing: the images are the same with or without it.
        assert_eq!(a.target_image, b.target_image);
        assert!(b.target_valid.is_empty());
        let (n, h, w) = a.target_dims;
        assert_eq!(a.target_valid.len(), n * h * w);
        for s in 0..n {
            // Red channel of image s (normalised: white > 0, black < 0).
            let red = &a.target_image[s * 3 * h * w..s * 3 * h * w + h * w];
            let valid = &a.target_valid[s * h * w..(s + 1) * h * w];
            for (p, (&r, &v)) in red.iter().zip(valid).enumerate() {
                assert_eq!(
                    v,
                    if r > 0.0 { 1.0 } else { 0.0 },
                    "batch {index} slot {s} pixel {p}"
                );
            }
            if valid.contains(&0.0) && valid.contains(&1.0) {
                mixed += 1;
            }
            // Crops reaching either side of the frame occur (the margins are
            // asymmetric, 2 left and 5 right, so a mask not flipped with the
            // image would differ from it there).
            let zero_col = |x: usize| (0..h).all(|y| valid[y * w + x] == 0.0);
            left_cut += usize::from(zero_col(0) && !zero_col(w - 1));
            right_cut += usize::from(zero_col(w - 1) && !zero_col(0));
        }
        let t = a.to_uda_batch(&candle_core::Device::Cpu).unwrap();
        assert_eq!(t.target_valid.unwrap().dims(), &[n, h, w]);
    }
    assert!(
        mixed > 0 && left_cut > 0 && right_cut > 0,
        "crops at the sides not drawn: {mixed} {left_cut} {right_cut}"
    );
}
