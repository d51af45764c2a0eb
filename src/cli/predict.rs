//! `omuda predict`: segment images with a saved checkpoint and write, per
//! image, a colourised PNG (Cityscapes palette), a raw trainId PNG (8-bit
//! grey, one class index per pixel) and optionally an overlay on the image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use omuda::core::data::classes::colorize;
use omuda::core::data::loader::{IMAGENET_MEAN, IMAGENET_STD};
use omuda::core::eval::predict_classes;
use omuda::plot::{encode_png, write_rgb_png};
use omuda::visual::{overlay, Rgb};
use omuda::{Error, Result};

use super::eval::{restore, Restored};

#[derive(clap::Args)]
pub struct PredictArgs {
    /// Checkpoint folder written by `omuda train` (e.g. `<out>/<method>/checkpoint` or `best`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Configuration (default: the `config.toml` saved in the checkpoint); its `eval` section sets whole or sliding inference.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write `<name>_overlay.png`: the prediction colours over the image at this opacity (0–1).
    #[arg(long)]
    pub opacity: Option<f32>,
    /// PNG or JPEG images to segment, or folders: every `.png`, `.jpg` and
    /// `.jpeg` below a folder, whose outputs keep its subfolders.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// One input image and the name of its outputs (relative to `--out`,
/// without the `_color.png` suffix).
struct Input {
    path: PathBuf,
    stem: PathBuf,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "png" | "jpg" | "jpeg"))
}

/// Every image below `dir`, sorted, with its path below `dir`.
fn images_below(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            images_below(&p, found)?;
        } else if is_image(&p) {
            found.push(p);
        }
    }
    Ok(())
}

/// The inputs of the command line, folders expanded; two inputs whose
/// outputs would have the same name are an error naming both.
fn inputs(args: &[PathBuf]) -> Result<Vec<Input>> {
    let mut out: Vec<Input> = Vec::new();
    for a in args {
        if a.is_dir() {
            let mut found = Vec::new();
            images_below(a, &mut found)?;
            if found.is_empty() {
                return Err(Error::file(
                    a,
                    "a folder without .png, .jpg or .jpeg images",
                ));
            }
            for p in found {
                let rel = p.strip_prefix(a).unwrap_or(&p).with_extension("");
                out.push(Input { stem: rel, path: p });
            }
        } else {
            let stem = a
                .file_stem()
                .map(PathBuf::from)
                .ok_or_else(|| Error::file(a, "no file name"))?;
            out.push(Input {
                path: a.clone(),
                stem,
            });
        }
    }
    let mut seen: HashMap<PathBuf, PathBuf> = HashMap::new();
    for i in &out {
        if let Some(other) = seen.insert(i.stem.clone(), i.path.clone()) {
            return Err(Error::file(
                &i.path,
                format!(
                    "{} has the same output name {:?}; outputs would collide",
                    other.display(),
                    i.stem
                ),
            ));
        }
    }
    Ok(out)
}

pub fn run(args: PredictArgs) -> Result<()> {
    if let Some(a) = args.opacity {
        if !(0.0..=1.0).contains(&a) {
            return Err(Error::Config {
                origin: "--opacity".into(),
                message: format!("{a}: expected a value in [0, 1]"),
            });
        }
    }
    // Distinct output names before any work.
    let inputs = inputs(&args.images)?;
    let Restored {
        name,
        cfg,
        method,
        device,
    } = restore(&args.checkpoint, args.config.as_ref())?;
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    super::note!(
        "{name} (iteration {}) from {}",
        method.iteration(),
        args.checkpoint.display()
    );
    for Input { path, stem } in &inputs {
        let stem = stem.display().to_string();
        if let Some(parent) = args.out.join(&stem).parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let img = image::open(path)
            .map_err(|e| Error::file(path, format!("cannot read image: {e}")))?
            .to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut data = Vec::with_capacity(3 * h * w);
        for c in 0..3 {
            data.extend(
                img.pixels()
                    .map(|p| (p.0[c] as f32 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]),
            );
        }
        let x = Tensor::from_vec(data, (1, 3, h, w), &device)?;
        let classes = predict_classes(&x, &cfg.eval, &|t| Ok(method.predict(t)?))
            .map_err(|e| Error::file(path, format!("prediction: {e}")))?;
        let ids: Vec<u8> = classes
            .flatten_all()?
            .to_vec1::<u32>()?
            .iter()
            .map(|&c| c.min(255) as u8)
            .collect();
        let colour = colorize(&ids);
        write_rgb_png(
            &args.out.join(format!("{stem}_color.png")),
            &colour,
            w as u32,
            h as u32,
        )?;
        let gray = image::GrayImage::from_raw(w as u32, h as u32, ids.clone())
            .ok_or_else(|| Error::file(path, "trainId image size mismatch"))?;
        encode_png(
            &args.out.join(format!("{stem}_trainid.png")),
            &image::DynamicImage::ImageLuma8(gray),
        )?;
        if let Some(a) = args.opacity {
            let base = Rgb {
                width: w,
                height: h,
                data: img.into_raw(),
            };
            let over = Rgb {
                width: w,
                height: h,
                data: colour,
            };
            let o = overlay(&base, &over, a);
            write_rgb_png(
                &args.out.join(format!("{stem}_overlay.png")),
                &o.data,
                w as u32,
                h as u32,
            )?;
        }
        println!(
            "{} -> {}/{stem}_{{color,trainid{}}}.png",
            path.display(),
            args.out.display(),
            if args.opacity.is_some() {
                ",overlay"
            } else {
                ""
            }
        );
    }
    Ok(())
}
