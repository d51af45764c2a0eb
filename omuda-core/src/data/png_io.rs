//! PNG reading and writing for datasets, with the `png` crate directly (no
//! conversion through a generic image type): RGB images, 8-bit label maps
//! (grey or palette indices, read as stored like PIL's `np.asarray` of a
//! mode-`P` image), and 16-bit multi-channel label maps (SYNTHIA).
//!
//! Every error names the file and says what is wrong with it.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use png::{BitDepth, ColorType, Decoder, Transformations};

use crate::{Error, Result};

/// Width and height of a PNG from its header, without decoding the pixels.
pub fn png_size(path: &Path) -> Result<(usize, usize)> {
    let reader = open(path, Transformations::IDENTITY)?;
    let info = reader.info();
    Ok((info.width as usize, info.height as usize))
}

/// Images with a side above this many pixels are refused before any pixel
/// buffer is allocated (a corrupt or hostile header can claim any size).
pub const DEFAULT_MAX_SIDE: usize = 16384;

/// The side limit: `OMUDA_MAX_IMAGE_SIDE` when set to a positive number,
/// else [`DEFAULT_MAX_SIDE`].
pub fn max_side() -> usize {
    std::env::var("OMUDA_MAX_IMAGE_SIDE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(DEFAULT_MAX_SIDE)
}

fn open(path: &Path, t: Transformations) -> Result<png::Reader<BufReader<File>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut dec = Decoder::new(BufReader::with_capacity(1 << 16, file));
    dec.set_transformations(t);
    dec.set_ignore_text_chunk(true);
    let reader = dec.read_info().map_err(|e| decode_error(path, e))?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    let limit = max_side();
    if w > limit || h > limit {
        return Err(Error::file(
            path,
            format!(
                "the PNG header says {w}×{h} pixels; images above {limit} pixels per side are \
                 refused (set OMUDA_MAX_IMAGE_SIDE to raise the limit)"
            ),
        ));
    }
    Ok(reader)
}

fn decode_error(path: &Path, e: png::DecodingError) -> Error {
    match e {
        png::DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::file(
                path,
                "truncated PNG: the file ends before the image data is complete",
            )
        }
        png::DecodingError::IoError(io) => Error::io(path, io),
        other => Error::file(path, format!("corrupt PNG or not a PNG: {other}")),
    }
}

/// Decode the one frame of `reader` into a buffer of its output size.
fn read_frame(
    path: &Path,
    mut reader: png::Reader<BufReader<File>>,
) -> Result<(png::OutputInfo, Vec<u8>)> {
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::file(path, "PNG dimensions too large to decode"))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| decode_error(path, e))?;
    buf.truncate(info.buffer_size());
    Ok((info, buf))
}

/// An 8-bit RGB image: `(width, height, HWC bytes)`. Grey, grey+alpha, RGBA,
/// palette and 16-bit images are converted (alpha dropped, 16 bits → high byte).
pub fn read_rgb(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let reader = open(path, Transformations::normalize_to_color8())?;
    let (info, buf) = read_frame(path, reader)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let rgb = match info.color_type {
        ColorType::Rgb => buf,
        ColorType::Rgba => buf
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g]).collect(),
        ColorType::GrayscaleAlpha => buf
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        ColorType::Indexed => return Err(Error::file(path, "palette PNG was not expanded to RGB")),
    };
    if rgb.len() != w * h * 3 {
        return Err(Error::file(
            path,
            format!("decoded {} bytes, expected {}×{}×3", rgb.len(), w, h),
        ));
    }
    Ok((w, h, rgb))
}

/// A one-channel label map of at most 8 bits per pixel, values as stored:
/// grey levels, or palette indices for a palette PNG (the GTA5 labels).
pub fn read_label8(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let reader = open(path, Transformations::IDENTITY)?;
    let (ct, bd) = (reader.info().color_type, reader.info().bit_depth);
    if !matches!(ct, ColorType::Grayscale | ColorType::Indexed) {
        return Err(Error::file(
            path,
            format!(
                "label PNG is {ct:?}: expected one channel of ids (8-bit grey or palette indices)"
            ),
        ));
    }
    if bd == BitDepth::Sixteen {
        return Err(Error::file(
            path,
            "label PNG is 16-bit grey: expected 8-bit ids",
        ));
    }
    let (info, buf) = read_frame(path, reader)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let bits = info.bit_depth as usize;
    if bits == 8 {
        return Ok((w, h, buf));
    }
    // Sub-byte depths: rows are packed, most significant bits first.
    let mut out = Vec::with_capacity(w * h);
    let line = info.line_size;
    let mask = (1u16 << bits) as u8 - 1;
    for y in 0..h {
        let row = &buf[y * line..(y + 1) * line];
        for x in 0..w {
            let bit = x * bits;
            let byte = row[bit / 8];
            out.push((byte >> (8 - bits - bit % 8)) & mask);
        }
    }
    Ok((w, h, out))
}

/// A SYNTHIA label: a 16-bit PNG with at least two channels, the class id
/// in the first and the instance id in the second. Any other format is an
/// error naming the file and what it is (an 8-bit or one-channel file is a
/// converted or foreign label, whose values would read as wrong ids).
pub fn read_synthia_label(path: &Path) -> Result<(usize, usize, Vec<u16>)> {
    let reader = open(path, Transformations::IDENTITY)?;
    let (depth, channels) = (reader.info().bit_depth, reader.info().color_type.samples());
    if depth != BitDepth::Sixteen || channels < 2 || reader.info().color_type == ColorType::Indexed
    {
        return Err(Error::file(
            path,
            format!(
                "a SYNTHIA label must be a 16-bit PNG with the class id in its first channel \
                 and the instance id in its second; this one has {channels} channel(s) of \
                 {depth:?} bits ({:?})",
                reader.info().color_type
            ),
        ));
    }
    drop(reader);
    read_label16(path, 0)
}

/// A 16-bit label map, one value per pixel: channel `channel` (in PNG order,
/// R = 0) of a multi-channel PNG, or the grey value of a one-channel one.
/// 8-bit files are accepted and widened.
pub fn read_label16(path: &Path, channel: usize) -> Result<(usize, usize, Vec<u16>)> {
    let reader = open(path, Transformations::IDENTITY)?;
    let ct = reader.info().color_type;
    if ct == ColorType::Indexed {
        return Err(Error::file(
            path,
            "label PNG is a palette image: expected 16-bit grey or multi-channel ids",
        ));
    }
    let (info, buf) = read_frame(path, reader)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let ch = if channels == 1 { 0 } else { channel };
    if ch >= channels {
        return Err(Error::file(
            path,
            format!("label PNG has {channels} channels, channel {channel} requested"),
        ));
    }
    let out: Vec<u16> = match info.bit_depth {
        BitDepth::Sixteen => buf
            .chunks_exact(2 * channels)
            .map(|p| u16::from_be_bytes([p[2 * ch], p[2 * ch + 1]]))
            .collect(),
        BitDepth::Eight => buf
            .chunks_exact(channels)
            .map(|p| u16::from(p[ch]))
            .collect(),
        other => {
            return Err(Error::file(
                path,
                format!("label PNG has {other:?}-bit channels: expected 8 or 16"),
            ));
        }
    };
    if out.len() != w * h {
        return Err(Error::file(
            path,
            format!("decoded {} pixels, expected {}×{}", out.len(), w, h),
        ));
    }
    Ok((w, h, out))
}

fn write_png(
    path: &Path,
    w: usize,
    h: usize,
    color: ColorType,
    depth: BitDepth,
    data: &[u8],
) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    // Write to a temporary name then rename, so an interrupted run never
    // leaves a truncated PNG under the final name.
    let tmp = path.with_extension("png.tmp");
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), w as u32, h as u32);
    enc.set_color(color);
    enc.set_depth(depth);
    enc.set_compression(png::Compression::Fast);
    let werr = |e: png::EncodingError| Error::file(&tmp, format!("cannot write PNG: {e}"));
    let mut writer = enc.write_header().map_err(werr)?;
    writer.write_image_data(data).map_err(werr)?;
    writer.finish().map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Write an 8-bit one-channel PNG (a trainId label map).
pub fn write_gray8(path: &Path, w: usize, h: usize, data: &[u8]) -> Result<()> {
    check_len(path, data.len(), w * h)?;
    write_png(path, w, h, ColorType::Grayscale, BitDepth::Eight, data)
}

/// Write an 8-bit RGB PNG (HWC bytes).
pub fn write_rgb8(path: &Path, w: usize, h: usize, data: &[u8]) -> Result<()> {
    check_len(path, data.len(), w * h * 3)?;
    write_png(path, w, h, ColorType::Rgb, BitDepth::Eight, data)
}

/// Write a 16-bit PNG with `channels` (1, 3 or 4) interleaved channels.
pub fn write_u16(path: &Path, w: usize, h: usize, channels: usize, data: &[u16]) -> Result<()> {
    check_len(path, data.len(), w * h * channels)?;
    let color = match channels {
        1 => ColorType::Grayscale,
        3 => ColorType::Rgb,
        4 => ColorType::Rgba,
        n => {
            return Err(Error::file(
                path,
                format!("cannot write a {n}-channel 16-bit PNG"),
            ))
        }
    };
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_be_bytes()).collect();
    write_png(path, w, h, color, BitDepth::Sixteen, &bytes)
}

/// Write an 8-bit palette PNG (indices plus an RGB palette), the format of
/// the GTA5 label files.
pub fn write_indexed8(
    path: &Path,
    w: usize,
    h: usize,
    data: &[u8],
    palette: &[[u8; 3]],
) -> Result<()> {
    check_len(path, data.len(), w * h)?;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), w as u32, h as u32);
    enc.set_color(ColorType::Indexed);
    enc.set_depth(BitDepth::Eight);
    let pal: Vec<u8> = palette.iter().flatten().copied().collect();
    enc.set_palette(pal);
    let werr = |e: png::EncodingError| Error::file(path, format!("cannot write PNG: {e}"));
    let mut writer = enc.write_header().map_err(werr)?;
    writer.write_image_data(data).map_err(werr)?;
    writer.finish().map_err(werr)
}

fn check_len(path: &Path, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::file(
            path,
            format!("{got} values given for a PNG that needs {want}"),
        ));
    }
    Ok(())
}
