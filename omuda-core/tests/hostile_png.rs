//! A PNG whose header claims a huge size is refused before any pixel buffer
//! is allocated, with an error naming the file and both numbers.

use omuda_core::data::png_io::{read_label8, read_rgb, DEFAULT_MAX_SIDE};

/// CRC-32 (ISO-HDLC) of PNG chunks, bitwise.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG signature and IHDR chunk for a `w × h` 8-bit RGB image, with an
/// empty IDAT and IEND: a header that claims the size, and no pixels.
fn header_only_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[]);
    chunk(b"IEND", &[]);
    out
}

#[test]
fn crc_matches_the_published_check_value() {
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
}

#[test]
fn oversized_headers_are_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.png");
    std::fs::write(&p, header_only_png(100_000, 100_000)).unwrap();
    for err in [
        read_rgb(&p).unwrap_err().to_string(),
        read_label8(&p).unwrap_err().to_string(),
    ] {
        assert!(err.contains("huge.png"), "{err}");
        assert!(err.contains("100000×100000"), "{err}");
        assert!(err.contains(&DEFAULT_MAX_SIDE.to_string()), "{err}");
    }
    // Within the limit, the same empty file fails as truncated data, not on its size.
    let q = dir.path().join("small.png");
    std::fs::write(&q, header_only_png(64, 32)).unwrap();
    let err = read_rgb(&q).unwrap_err().to_string();
    assert!(
        err.contains("small.png") && !err.contains("refused"),
        "{err}"
    );
}

#[test]
fn synthia_labels_must_be_16_bit_with_two_channels() {
    use omuda_core::data::png_io::{read_synthia_label, write_gray8, write_u16};
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (4, 2);
    let eight = dir.path().join("eight.png");
    write_gray8(&eight, w, h, &[3u8; 8]).unwrap();
    let e = read_synthia_label(&eight).unwrap_err().to_string();
    assert!(
        e.contains("eight.png") && e.contains("16-bit") && e.contains("Eight"),
        "{e}"
    );
    let one = dir.path().join("one.png");
    write_u16(&one, w, h, 1, &[3u16; 8]).unwrap();
    let e = read_synthia_label(&one).unwrap_err().to_string();
    assert!(e.contains("one.png") && e.contains("1 channel(s)"), "{e}");
    let ok = dir.path().join("ok.png");
    let data: Vec<u16> = (0..8).flat_map(|i| [i as u16, 7, 0]).collect();
    write_u16(&ok, w, h, 3, &data).unwrap();
    let (rw, rh, ids) = read_synthia_label(&ok).unwrap();
    assert_eq!((rw, rh), (w, h));
    assert_eq!(ids, (0..8).collect::<Vec<u16>>());
}
