//! What a downloaded result must be before it is written as an output: an image of the size
//! Claid's result object gives, read from its header (an AVIF/HEIF file from its `ispe` boxes,
//! which the `image` crate cannot read without a native AV1 decoder), and whole: a body that
//! ends before its format's end (a server that closed a response cleanly but early, a cache
//! that kept half a file) is a cut-short download, fetched again, never written.

use std::path::Path;

/// The image's dimensions from its header: `expected` among several an AVIF file may carry.
/// `None` when the bytes are no image this can read.
pub fn dimensions(bytes: &[u8], expected: (u32, u32)) -> Option<(u32, u32)> {
    image_dimensions(bytes)
        .or_else(|| heif_dimensions(bytes, expected))
        .or_else(|| tiff_dimensions(bytes))
}

/// The image format `bytes` start as (`jpeg`, `png`, `webp`, `avif`, `heic`, `tiff`, `gif`),
/// by their magic numbers; `None` for anything else.
pub fn format_of(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Some("webp")
    } else if bytes.get(4..8) == Some(b"ftyp") {
        match bytes.get(8..12) {
            Some(b"avif" | b"avis") => Some("avif"),
            Some(b"heic" | b"heix" | b"mif1" | b"msf1") => Some("heic"),
            _ => None,
        }
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        Some("tiff")
    } else if bytes.starts_with(b"GIF8") {
        Some("gif")
    } else {
        None
    }
}

/// The format an output file named with `extension` holds ([`format_of`]'s names); `None` for
/// one this does not know.
pub fn format_of_extension(extension: &str) -> Option<&'static str> {
    match extension.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => Some("jpeg"),
        "png" => Some("png"),
        "webp" => Some("webp"),
        "avif" => Some("avif"),
        "tif" | "tiff" => Some("tiff"),
        "gif" => Some("gif"),
        _ => None,
    }
}

/// How far past a format's end marker other bytes may follow (padding some encoders add, or
/// metadata appended after it) before the marker is taken for an embedded one.
const TRAILER_SLACK: usize = 4096;

/// Why `bytes` are not a whole image of the format they start as: `None` when they are (or
/// the format is not one checked: GIF and BMP end without a marker worth trusting).
/// - JPEG ends with its end-of-image marker `FF D9` (an embedded thumbnail's marker sits near
///   the start, so only one near the end counts);
/// - PNG with its `IEND` chunk (and that chunk's CRC);
/// - WebP (RIFF) and AVIF/HEIF (ISO boxes) say their own lengths: the bytes must hold them;
/// - a classic TIFF's first directory, which its writers put after the image data, must lie
///   within the bytes.
pub fn cut_short(bytes: &[u8]) -> Option<&'static str> {
    // Whether `marker` and `after` more bytes end within the slack of the end.
    let near_end = |marker: &[u8], after: usize| {
        bytes
            .windows(marker.len())
            .enumerate()
            .rev()
            .take(TRAILER_SLACK + marker.len())
            .any(|(at, w)| w == marker && at + marker.len() + after <= bytes.len())
    };
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return (!near_end(&[0xFF, 0xD9], 0)).then_some("the JPEG has no end-of-image marker");
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        // The IEND chunk's type, then its 4-byte CRC.
        return (!near_end(b"IEND", 4)).then_some("the PNG has no whole IEND chunk");
    }
    if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        let declared = bytes
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX);
        return (bytes.len() < declared.saturating_add(8))
            .then_some("the WebP file is shorter than its RIFF header says");
    }
    if let Some(cut) = tiff_cut(bytes, bytes.len() as u64) {
        return cut;
    }
    if bytes.get(4..8) == Some(b"ftyp") {
        // Top-level boxes: each says its length (0: to the end; 1: a 64-bit length follows).
        let mut at = 0usize;
        while at < bytes.len() {
            let Some(head) = bytes.get(at..at + 8) else {
                return Some("the file ends inside a box header");
            };
            let size = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
            let size = match size {
                0 => return None,
                1 => match bytes.get(at + 8..at + 16) {
                    Some(large) => u64::from_be_bytes(large.try_into().unwrap_or_default()),
                    None => return Some("the file ends inside a box header"),
                },
                n => n,
            };
            if size < 8 {
                return Some("a box has an impossible length");
            }
            at = match usize::try_from(size).ok().and_then(|n| at.checked_add(n)) {
                Some(next) => next,
                None => return Some("the file is shorter than its boxes say"),
            };
        }
        return (at > bytes.len()).then_some("the file is shorter than its boxes say");
    }
    None
}

/// For a classic TIFF (`II*\0` or `MM\0*`) of `size` bytes whose first bytes are `head`:
/// `Some(Some(why))` when its first directory lies past its end (a TIFF writer puts it after
/// the image data, so a file cut short loses it), or runs past it when `head` holds it;
/// `Some(None)` when it is whole as far as that tells; `None` for anything else.
fn tiff_cut(head: &[u8], size: u64) -> Option<Option<&'static str>> {
    let little = match head.get(0..4)? {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let read = |at: usize, n: usize| -> Option<u64> {
        let bytes = head.get(at..at + n)?;
        Some(bytes.iter().enumerate().fold(0u64, |acc, (i, b)| {
            let shift = if little { 8 * i } else { 8 * (n - 1 - i) };
            acc | (u64::from(*b) << shift)
        }))
    };
    let Some(ifd) = read(4, 4) else {
        return Some(Some("the TIFF file ends inside its header"));
    };
    // The directory: a 2-byte count, 12 bytes an entry, then the 4-byte offset of the next.
    if ifd < 8 {
        return Some(Some(
            "the TIFF header's directory offset is invalid (inside the header)",
        ));
    }
    if ifd.saturating_add(2) > size {
        return Some(Some(
            "the TIFF file is shorter than its header says (its first directory is past the end)",
        ));
    }
    let within_head = usize::try_from(ifd).ok().and_then(|at| read(at, 2));
    if let Some(entries) = within_head
        && ifd + 2 + 12 * entries + 4 > size
    {
        return Some(Some("the TIFF file ends inside its first directory"));
    }
    Some(None)
}

/// How many last bytes of an object [`ends_cut_short`] needs: an end marker may be followed
/// by [`TRAILER_SLACK`] bytes.
pub const TAIL_BYTES: u64 = TRAILER_SLACK as u64 + 16;

/// [`cut_short`] for an object read only at its ends: `head` its first bytes (16 at least),
/// `tail` its last [`TAIL_BYTES`] (or all of it), `size` its length. A WebP's RIFF length and
/// a TIFF's first directory are checked against `size`; AVIF/HEIF, whose boxes need the whole
/// file, are not checked.
pub fn ends_cut_short(head: &[u8], tail: &[u8], size: u64) -> Option<&'static str> {
    if head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WEBP") {
        let declared = head
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .map_or(u64::MAX, u64::from);
        return (size < declared.saturating_add(8))
            .then_some("the WebP file is shorter than its RIFF header says");
    }
    if head.get(4..8) == Some(b"ftyp") {
        return None;
    }
    if let Some(cut) = tiff_cut(head, size) {
        return cut;
    }
    let mut ends = head[..head.len().min(16)].to_vec();
    ends.extend_from_slice(tail);
    cut_short(&ends)
}

/// Reads the dimensions from an encoded image's header without decoding it.
fn image_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// An image file's dimensions from its header; 0 × 0 when it is not an image we can read.
pub fn file_dimensions(path: &Path) -> (u32, u32) {
    image::ImageReader::open(path)
        .and_then(|reader| reader.with_guessed_format())
        .ok()
        .and_then(|reader| reader.into_dimensions().ok())
        .or_else(|| {
            // The boxes that size a HEIF file come first: its head is enough.
            use std::io::Read;
            let mut head = Vec::new();
            std::fs::File::open(path)
                .ok()?
                .take(256 * 1024)
                .read_to_end(&mut head)
                .ok()?;
            heif_dimensions(&head, (0, 0))
        })
        .or_else(|| {
            // A TIFF's first directory may be anywhere in it: read whole (outputs are bounded
            // by `limits.max_download_bytes`).
            use std::io::Read;
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .ok()?
                .take(MAX_TIFF_READ)
                .read_to_end(&mut bytes)
                .ok()?;
            tiff_dimensions(&bytes)
        })
        .unwrap_or((0, 0))
}

/// The most of a file read to find a TIFF's first directory.
const MAX_TIFF_READ: u64 = 256 * 1024 * 1024;

/// The dimensions of a TIFF image from its first directory's `ImageWidth` (256) and
/// `ImageLength` (257) tags, for those the `image` crate will not open: a lossy TIFF is JPEG
/// inside TIFF, and libtiff and libvips write it in YCbCr, a photometric the `tiff` crate
/// refuses. Classic TIFF only (`II*\0` or `MM\0*`); `None` for anything else.
fn tiff_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let little = match bytes.get(0..4)? {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u32> {
        let b: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
        Some(u32::from(if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }))
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let entries = usize::try_from(u16_at(ifd)?).ok()?;
    let (mut width, mut height) = (None, None);
    for n in 0..entries {
        let entry = ifd + 2 + n * 12;
        let tag = u16_at(entry)?;
        if tag != 256 && tag != 257 {
            continue;
        }
        // SHORT (3) or LONG (4), one value, in the entry itself.
        let value = match u16_at(entry + 2)? {
            3 => u16_at(entry + 8)?,
            4 => u32_at(entry + 8)?,
            _ => return None,
        };
        if tag == 256 {
            width = Some(value);
        } else {
            height = Some(value);
        }
    }
    match (width?, height?) {
        (0, _) | (_, 0) => None,
        size => Some(size),
    }
}

/// The dimensions of an AVIF (or other HEIF) image, which the `image` crate cannot read without
/// a native AV1 decoder, yet Claid writes on request (`output.format: avif`): from the `ispe`
/// (image spatial extent) properties of the file's `meta` box. A file may carry several (a
/// grid's tiles, a thumbnail, an alpha plane): `expected` when one of them has it, else the
/// largest. `None` when the bytes are no HEIF file (no `ftyp` box of an image brand) or carry
/// no extent. Hand-written: a brand check and a scan for 20-byte boxes, no decoding.
fn heif_dimensions(bytes: &[u8], expected: (u32, u32)) -> Option<(u32, u32)> {
    const BRANDS: [&[u8; 4]; 6] = [b"avif", b"avis", b"mif1", b"msf1", b"heic", b"heix"];
    let ftyp_len = usize::try_from(u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?)).ok()?;
    if bytes.get(4..8)? != b"ftyp" || ftyp_len < 16 {
        return None;
    }
    // The major brand, then the compatible brands after the minor version.
    let ftyp = bytes.get(8..ftyp_len.min(bytes.len()))?;
    let branded = ftyp
        .chunks_exact(4)
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .any(|(_, brand)| BRANDS.iter().any(|b| b.as_slice() == brand));
    if !branded {
        return None;
    }
    let mut sizes = Vec::new();
    let mut from = 0;
    while let Some(at) = bytes[from..].windows(4).position(|w| w == b"ispe") {
        let start = from + at;
        from = start + 4;
        // size (4) | "ispe" | version + flags (4) | width (4) | height (4)
        let Some(size) = start.checked_sub(4).and_then(|s| bytes.get(s..s + 4)) else {
            continue;
        };
        let (Some(w), Some(h)) = (
            bytes.get(start + 8..start + 12),
            bytes.get(start + 12..start + 16),
        ) else {
            break;
        };
        if size == 20u32.to_be_bytes() {
            let w = u32::from_be_bytes(w.try_into().ok()?);
            let h = u32::from_be_bytes(h.try_into().ok()?);
            sizes.push((w, h));
        }
    }
    if sizes.contains(&expected) {
        return Some(expected);
    }
    sizes
        .into_iter()
        .max_by_key(|(w, h)| u64::from(*w) * u64::from(*h))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object read at its ends (first 16 KiB, last [`TAIL_BYTES`]) of an image far larger:
    /// whole, it passes; cut anywhere past its head, its end is missing (a WebP's length says
    /// more than the object holds).
    #[test]
    fn an_object_read_at_its_ends_is_told_whole_or_cut_short() {
        let (w, h) = (640u32, 480u32);
        let noise = image::RgbImage::from_fn(w, h, |x, y| {
            let v = x
                .wrapping_mul(2_654_435_761)
                .wrapping_add(y.wrapping_mul(40_503));
            image::Rgb([(v >> 3) as u8, (v >> 11) as u8, (v >> 19) as u8])
        });
        for format in [
            image::ImageFormat::Png,
            image::ImageFormat::Jpeg,
            image::ImageFormat::WebP,
            image::ImageFormat::Tiff,
        ] {
            let mut bytes = Vec::new();
            noise
                .write_to(&mut std::io::Cursor::new(&mut bytes), format)
                .expect("encode");
            assert!(bytes.len() > 40_000, "{format:?}: {} bytes", bytes.len());
            let ends = |bytes: &[u8]| {
                let tail_from = bytes.len() - TAIL_BYTES as usize;
                ends_cut_short(&bytes[..16 * 1024], &bytes[tail_from..], bytes.len() as u64)
            };
            assert_eq!(ends(&bytes), None, "{format:?}");
            assert_eq!(cut_short(&bytes), None, "{format:?}");
            // A TIFF's directory, which sizes it, is written after its image data.
            if format != image::ImageFormat::Tiff {
                assert_eq!(
                    dimensions(&bytes[..16 * 1024], (w, h)),
                    Some((w, h)),
                    "{format:?}"
                );
            }
            let half = &bytes[..bytes.len() / 2];
            assert!(ends(half).is_some(), "{format:?}: half the object");
            assert!(cut_short(half).is_some(), "{format:?}: half the download");
        }
    }

    /// Formats are told by their magic numbers, and an output's extension names its format:
    /// a download of another format than the output's is refused (a JPEG written as
    /// `img.png` was delivered as done).
    #[test]
    fn formats_are_told_by_their_magic_numbers() {
        assert_eq!(format_of(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("jpeg"));
        assert_eq!(format_of(b"\x89PNG\r\n\x1a\n...."), Some("png"));
        assert_eq!(format_of(b"RIFF\0\0\0\0WEBPVP8 "), Some("webp"));
        assert_eq!(format_of(b"\0\0\0\x1cftypavif"), Some("avif"));
        assert_eq!(format_of(b"II*\0...."), Some("tiff"));
        assert_eq!(format_of(b"<html>"), None);
        assert_eq!(format_of_extension("JPG"), Some("jpeg"));
        assert_eq!(format_of_extension("tif"), Some("tiff"));
        assert_eq!(format_of_extension("json"), None);
    }

    /// A minimal TIFF header and first directory: width and height, plus a tag for YCbCr
    /// (photometric 6) and JPEG compression (7), which the `tiff` crate will not open.
    fn tiff(little: bool, width: u32, height: u16) -> Vec<u8> {
        let u16b = |v: u16| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let u32b = |v: u32| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let mut out = if little {
            b"II*\0".to_vec()
        } else {
            b"MM\0*".to_vec()
        };
        out.extend_from_slice(&u32b(8));
        let entries: [(u16, u16, u32); 4] = [
            (256, 4, width),
            (257, 3, u32::from(height)),
            (259, 3, 7),
            (262, 3, 6),
        ];
        out.extend_from_slice(&u16b(entries.len() as u16));
        for (tag, kind, value) in entries {
            out.extend_from_slice(&u16b(tag));
            out.extend_from_slice(&u16b(kind));
            out.extend_from_slice(&u32b(1));
            if kind == 3 {
                out.extend_from_slice(&u16b(value as u16));
                out.extend_from_slice(&[0, 0]);
            } else {
                out.extend_from_slice(&u32b(value));
            }
        }
        out.extend_from_slice(&u32b(0));
        out
    }

    #[test]
    fn a_lossy_ycbcr_tiff_is_sized_from_its_directory() {
        assert_eq!(
            dimensions(&tiff(true, 1000, 750), (1000, 750)),
            Some((1000, 750))
        );
        assert_eq!(dimensions(&tiff(false, 64, 48), (64, 48)), Some((64, 48)));
        assert_eq!(tiff_dimensions(b"II*\0\xff\xff\xff\xff"), None);
        assert_eq!(tiff_dimensions(b"GIF89a"), None);
    }

    /// An ISO box: its length (header included), its kind, its body.
    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len() + 8)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    /// An AVIF file's size comes from its `ispe` boxes (the `image` crate cannot read it): the
    /// expected one among several (a grid's tile and the whole), else the largest; bytes of
    /// another kind, or a HEIF file without an extent, give none.
    #[test]
    fn avif_dimensions_come_from_the_ispe_boxes() {
        fn ispe(w: u32, h: u32) -> Vec<u8> {
            let mut body = vec![0; 4];
            body.extend_from_slice(&w.to_be_bytes());
            body.extend_from_slice(&h.to_be_bytes());
            boxed(b"ispe", &body)
        }
        let ftyp = boxed(b"ftyp", b"avif\0\0\0\0mif1miaf");
        let mut file = ftyp.clone();
        file.extend(boxed(b"meta", &[ispe(512, 512), ispe(1024, 768)].concat()));
        file.extend(boxed(b"mdat", &[0xaa; 64]));
        assert_eq!(heif_dimensions(&file, (1024, 768)), Some((1024, 768)));
        assert_eq!(heif_dimensions(&file, (512, 512)), Some((512, 512)));
        assert_eq!(heif_dimensions(&file, (9, 9)), Some((1024, 768)));
        let mut bare = ftyp;
        bare.extend(boxed(b"mdat", b"ispe"));
        assert_eq!(heif_dimensions(&bare, (9, 9)), None);
        let mp4 = [boxed(b"ftyp", b"isom\0\0\0\0mp41"), ispe(1, 1)].concat();
        assert_eq!(heif_dimensions(&mp4, (1, 1)), None);
        assert_eq!(heif_dimensions(b"\x89PNG\r\n", (1, 1)), None);
        assert_eq!(
            image_dimensions(&file),
            None,
            "what the image crate cannot read"
        );
    }

    fn encoded(format: image::ImageFormat) -> Vec<u8> {
        let img = image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("encodes");
        out.into_inner()
    }

    /// A whole JPEG, PNG or WebP passes; the same bytes cut short anywhere past the header
    /// (where the header still gives the right size) are found out, and so is an ISO-box file
    /// (AVIF) whose last box is cut.
    #[test]
    fn a_result_cut_short_is_found_out_by_its_format_end() {
        for format in [
            image::ImageFormat::Jpeg,
            image::ImageFormat::Png,
            image::ImageFormat::WebP,
        ] {
            let whole = encoded(format);
            assert_eq!(cut_short(&whole), None, "{format:?} whole");
            assert_eq!(dimensions(&whole, (40, 30)), Some((40, 30)), "{format:?}");
            for keep in [whole.len() - 1, whole.len() - 5, whole.len() * 2 / 3] {
                assert!(
                    cut_short(&whole[..keep]).is_some(),
                    "{format:?} cut to {keep} of {}",
                    whole.len()
                );
            }
        }
        // Padding after a JPEG's end marker is no cut.
        let mut padded = encoded(image::ImageFormat::Jpeg);
        padded.extend_from_slice(&[0; 100]);
        assert_eq!(cut_short(&padded), None);

        let avif = [
            boxed(b"ftyp", b"avif\0\0\0\0mif1miaf"),
            boxed(b"meta", &[0; 40]),
            boxed(b"mdat", &[0xaa; 300]),
        ]
        .concat();
        assert_eq!(cut_short(&avif), None);
        assert!(cut_short(&avif[..avif.len() - 10]).is_some());
        // Formats without a trusted end are not judged.
        assert_eq!(cut_short(b"GIF89a..."), None);
    }
}
