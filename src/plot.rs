//! PNG charts (line and bar) drawn with plotters, written atomically.
//!
//! Text is drawn with the DejaVu Sans font embedded in the binary
//! (`assets/DejaVuSans.ttf`), so charts look the same on every machine.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::core::io::write_atomic;
use crate::{Error, Result};

/// Chart size in pixels.
pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 540;

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Register the embedded font with plotters under the family name `sans-serif` (once).
pub fn register_font() -> Result<()> {
    let mut ok = true;
    REGISTER.call_once(|| {
        ok = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok();
    });
    if ok {
        Ok(())
    } else {
        Err(Error::msg(
            "embedded font assets/DejaVuSans.ttf could not be parsed",
        ))
    }
}

/// One named line: (x, y) points in x order.
pub type Series = (String, Vec<(f64, f64)>);

/// Draw `series` as lines with a legend into the PNG `path`. Non-finite points
/// are left out. A chart with no finite point is an error naming `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    line_chart_scaled(path, title, x_label, y_label, series, false)
}

/// As [`line_chart`], with a logarithmic y axis when `log_y` (values ≤ 0 are left out).
pub fn line_chart_scaled(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<()> {
    draw_lines(path, title, x_label, y_label, series, &[], log_y)
}

/// One named line with a band: (x, mean, spread) points in x order; the band
/// covers mean ± spread.
pub type BandSeries = (String, Vec<(f64, f64, f64)>);

/// [`line_chart`] with a shaded band of ± spread around each line (e.g. the
/// standard deviation over seeds).
pub fn line_chart_band(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[BandSeries],
) -> Result<()> {
    let lines: Vec<Series> = series
        .iter()
        .map(|(n, p)| (n.clone(), p.iter().map(|&(x, m, _)| (x, m)).collect()))
        .collect();
    let bands: Vec<Vec<(f64, f64, f64)>> = series
        .iter()
        .map(|(_, p)| {
            p.iter()
                .copied()
                .filter(|&(x, m, s)| x.is_finite() && m.is_finite() && s.is_finite())
                .collect()
        })
        .collect();
    draw_lines(path, title, x_label, y_label, &lines, &bands, false)
}

fn draw_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    bands: &[Vec<(f64, f64, f64)>],
    log_y: bool,
) -> Result<()> {
    register_font()?;
    let keep = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0);
    let clean: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, pts)| (n.clone(), pts.iter().copied().filter(keep).collect()))
        .collect();
    let mut all: Vec<(f64, f64)> = clean.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if !all.is_empty() {
        for &(x, m, s) in bands.iter().flatten() {
            all.extend([(x, m - s.abs()), (x, m + s.abs())]);
        }
    }
    if all.is_empty() {
        return Err(Error::file(
            path,
            format!("chart {title:?}: no finite data point to plot"),
        ));
    }
    let (x0, x1) = padded_range(all.iter().map(|p| p.0), false);
    let (y0, y1) = padded_range(all.iter().map(|p| p.1), log_y);
    let err = |e: String| Error::file(path, format!("drawing chart {title:?}: {e}"));

    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, (FONT, 24))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(x_label)
                    .y_desc(y_label)
                    .x_label_formatter(&|v| fmt_tick(*v))
                    .y_label_formatter(&|v| fmt_tick(*v))
                    .label_style((FONT, 14))
                    .axis_desc_style((FONT, 16))
                    .draw()
                    .map_err(|e| err(e.to_string()))?;
                for (i, band) in bands.iter().enumerate() {
                    if band.len() < 2 {
                        continue;
                    }
                    let upper = band.iter().map(|&(x, m, s)| (x, m + s.abs()));
                    let lower = band.iter().rev().map(|&(x, m, s)| (x, m - s.abs()));
                    let colour = Palette99::pick(i).to_rgba().mix(0.18);
                    chart
                        .draw_series(std::iter::once(Polygon::new(
                            upper.chain(lower).collect::<Vec<_>>(),
                            colour.filled(),
                        )))
                        .map_err(|e| err(e.to_string()))?;
                }
                for (i, (name, pts)) in clean.iter().enumerate() {
                    if pts.is_empty() {
                        continue;
                    }
                    let colour = Palette99::pick(i).to_rgba();
                    chart
                        .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                        .map_err(|e| err(e.to_string()))?
                        .label(name.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                        });
                    if pts.len() == 1 {
                        chart
                            .draw_series(std::iter::once(Circle::new(pts[0], 4, colour.filled())))
                            .map_err(|e| err(e.to_string()))?;
                    }
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .label_font((FONT, 14))
                    .draw()
                    .map_err(|e| err(e.to_string()))?;
            }};
        }
        if log_y {
            draw!(builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(|e| err(e.to_string()))?);
        } else {
            draw!(builder
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| err(e.to_string()))?);
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    write_rgb_png(path, &buf, WIDTH, HEIGHT)
}

/// Draw one bar per label into the PNG `path`, with the value printed above
/// each bar. Lengths must match; a non-finite value is an error naming its label.
pub fn bar_chart(path: &Path, title: &str, labels: &[String], values: &[f64]) -> Result<()> {
    register_font()?;
    check_bars(path, title, labels, values)?;
    let err = |e: String| Error::file(path, format!("drawing chart {title:?}: {e}"));
    let lo = values.iter().copied().fold(0.0f64, f64::min);
    let hi = values.iter().copied().fold(0.0f64, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let (y0, y1) = (
        if lo < 0.0 { lo - 0.1 * span } else { 0.0 },
        hi + 0.12 * span,
    );
    let n = labels.len();

    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 24))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d((0..n).into_segmented(), y0..y1)
            .map_err(|e| err(e.to_string()))?;
        let names = labels.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|seg| match seg {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .label_style((FONT, 14))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (i, &v) in values.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), v),
                    ],
                    colour.filled(),
                )))
                .map_err(|e| err(e.to_string()))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{v:.2}"),
                    (SegmentValue::CenterOf(i), v.max(0.0) + 0.02 * span),
                    (FONT, 14).into_font(),
                )))
                .map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    write_rgb_png(path, &buf, WIDTH, HEIGHT)
}

/// Horizontal bars sorted by value (largest at the top), one per label, each
/// value printed beside its bar inside the frame: green for gains, red for
/// losses. Lengths must match; a non-finite value is an error naming its label.
pub fn sorted_hbar_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    labels: &[String],
    values: &[f64],
) -> Result<()> {
    register_font()?;
    check_bars(path, title, labels, values)?;
    let mut bars: Vec<(String, f64)> = labels.iter().cloned().zip(values.iter().copied()).collect();
    // Ascending, so that the largest value is drawn at the top (y grows upwards).
    bars.sort_by(|a, b| a.1.total_cmp(&b.1));
    let err = |e: String| Error::file(path, format!("drawing chart {title:?}: {e}"));
    let lo = bars.iter().map(|b| b.1).fold(0.0f64, f64::min);
    let hi = bars.iter().map(|b| b.1).fold(0.0f64, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    // Room beside the longest bars for their printed values.
    let (x0, x1) = (lo - 0.16 * span, hi + 0.16 * span);
    let n = bars.len();
    let height = (HEIGHT).max(120 + 26 * n as u32);
    let mut buf = vec![0u8; (WIDTH * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(130)
            .build_cartesian_2d(x0..x1, (0..n.saturating_sub(1).max(1)).into_segmented())
            .map_err(|e| err(e.to_string()))?;
        let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|seg| match seg {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc(x_desc)
            .x_label_formatter(&|v| fmt_tick(*v))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let zero = [(0.0, SegmentValue::Exact(0)), (0.0, SegmentValue::Exact(n))];
        chart
            .draw_series(std::iter::once(PathElement::new(
                zero,
                BLACK.stroke_width(1),
            )))
            .map_err(|e| err(e.to_string()))?;
        for (i, (_, v)) in bars.iter().enumerate() {
            let colour = if *v >= 0.0 {
                RGBColor(46, 139, 87)
            } else {
                RGBColor(200, 60, 50)
            };
            chart
                .draw_series(std::iter::once({
                    let mut bar = Rectangle::new(
                        [
                            (0.0, SegmentValue::Exact(i)),
                            (*v, SegmentValue::Exact(i + 1)),
                        ],
                        colour.filled(),
                    );
                    bar.set_margin(3, 3, 0, 0);
                    bar
                }))
                .map_err(|e| err(e.to_string()))?;
            let text = format!("{v:+.2}");
            let style = (FONT, 13).into_font().color(&BLACK);
            let (x, anchor) = if *v >= 0.0 {
                (v + 0.01 * span, Pos::new(HPos::Left, VPos::Center))
            } else {
                (v - 0.01 * span, Pos::new(HPos::Right, VPos::Center))
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (x, SegmentValue::CenterOf(i)),
                    style.pos(anchor),
                )))
                .map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    write_rgb_png(path, &buf, WIDTH, height)
}

/// One finite value per label and at least one bar; errors name `path`.
fn check_bars(path: &Path, title: &str, labels: &[String], values: &[f64]) -> Result<()> {
    if labels.len() != values.len() {
        return Err(Error::file(
            path,
            format!(
                "bar chart {title:?}: {} labels for {} values",
                labels.len(),
                values.len()
            ),
        ));
    }
    if labels.is_empty() {
        return Err(Error::file(path, format!("bar chart {title:?}: no bars")));
    }
    if let Some((l, v)) = labels.iter().zip(values).find(|(_, v)| !v.is_finite()) {
        return Err(Error::file(
            path,
            format!("bar chart {title:?}: value of {l:?} is {v}"),
        ));
    }
    Ok(())
}

/// Encode an RGB8 buffer as PNG and write it atomically.
pub fn write_rgb_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    let img = image::RgbImage::from_raw(width, height, rgb.to_vec()).ok_or_else(|| {
        Error::file(
            path,
            format!(
                "image buffer of {} bytes is not {width}×{height} RGB",
                rgb.len()
            ),
        )
    })?;
    encode_png(path, &image::DynamicImage::ImageRgb8(img))
}

/// Encode an image as PNG and write it atomically.
pub fn encode_png(path: &Path, img: &image::DynamicImage) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::file(path, format!("PNG encoding: {e}")))?;
    write_atomic(path, &bytes)
}

/// Axis tick text: scientific notation for very small or large magnitudes,
/// otherwise up to three decimals without trailing zeros.
fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() >= 1e5 || v.abs() < 1e-2 {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn padded_range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    if log {
        return (lo / 1.5, hi * 1.5);
    }
    if hi <= lo {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        lo -= d;
        hi += d;
        return (lo, hi);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_line_and_bar_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lines.png");
        let s = vec![
            (
                "a".to_string(),
                (0..20).map(|i| (i as f64, (i as f64).sin())).collect(),
            ),
            ("b".to_string(), vec![(3.0, 0.5)]),
        ];
        line_chart(&p, "curves", "iteration", "value", &s).unwrap();
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (WIDTH, HEIGHT));
        // Not a blank canvas: some pixels are not white.
        assert!(
            img.to_rgb8()
                .pixels()
                .filter(|px| px.0 != [255, 255, 255])
                .count()
                > 1000
        );
        let log = dir.path().join("log.png");
        line_chart_scaled(
            &log,
            "lr",
            "iteration",
            "lr",
            &[("lr".into(), vec![(0.0, 1e-4), (1.0, 1e-6), (2.0, 0.0)])],
            true,
        )
        .unwrap();
        let b = dir.path().join("bars.png");
        bar_chart(&b, "mIoU", &["x".into(), "y".into()], &[30.0, 42.5]).unwrap();
        assert!(std::fs::metadata(&b).unwrap().len() > 1000);
    }

    /// The sorted chart puts the largest gain at the top: its green bar is
    /// drawn above the red one of the loss, and the canvas grows with the
    /// number of bars. The band chart shades around its line.
    #[test]
    fn sorted_bars_and_bands() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("gains.png");
        sorted_hbar_chart(
            &b,
            "gains",
            "points",
            &["loss".into(), "gain".into()],
            &[-3.0, 5.0],
        )
        .unwrap();
        let img = image::open(&b).unwrap().to_rgb8();
        let rows_of = |rgb: [u8; 3]| -> Vec<u32> {
            img.enumerate_pixels()
                .filter(|(_, _, p)| p.0 == rgb)
                .map(|(_, y, _)| y)
                .collect()
        };
        let green = rows_of([46, 139, 87]);
        let red = rows_of([200, 60, 50]);
        assert!(!green.is_empty() && !red.is_empty());
        assert!(green.iter().max() < red.iter().min());
        let many: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        let vals: Vec<f64> = (0..40).map(|i| i as f64 - 20.0).collect();
        let tall = dir.path().join("tall.png");
        sorted_hbar_chart(&tall, "t", "x", &many, &vals).unwrap();
        assert!(image::open(&tall).unwrap().height() > HEIGHT);
        let e = sorted_hbar_chart(&tall, "t", "x", &["a".into()], &[f64::NAN])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"a\"") && e.contains("NaN"), "{e}");
        let c = dir.path().join("band.png");
        let with_band = vec![("m".to_string(), vec![(0.0, 1.0, 0.5), (1.0, 2.0, 0.5)])];
        line_chart_band(&c, "b", "x", "y", &with_band).unwrap();
        let no_band = dir.path().join("no_band.png");
        let flat = vec![("m".to_string(), vec![(0.0, 1.0, 0.0), (1.0, 2.0, 0.0)])];
        line_chart_band(&no_band, "b", "x", "y", &flat).unwrap();
        let non_white = |p: &Path| {
            image::open(p)
                .unwrap()
                .to_rgb8()
                .pixels()
                .filter(|px| px.0 != [255, 255, 255])
                .count()
        };
        assert!(non_white(&c) > non_white(&no_band) + 1000);
    }

    #[test]
    fn tick_text() {
        assert_eq!(fmt_tick(5.0), "5");
        assert_eq!(fmt_tick(2.5), "2.5");
        assert_eq!(fmt_tick(4.0000000004e-5), "4.0e-5");
        assert_eq!(fmt_tick(0.0), "0");
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.png");
        let e = line_chart(&p, "t", "x", "y", &[("a".into(), vec![(0.0, f64::NAN)])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty.png"), "{e}");
        let e = bar_chart(&p, "t", &["a".into()], &[1.0, 2.0])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("empty.png") && e.contains("1 labels for 2 values"),
            "{e}"
        );
        assert!(!p.exists());
    }
}
