//! Real image operations for the emulator: decode, resize with every fit mode, pad, fill the
//! background, adjust, encode; plus the documented, deterministic simulation of AI operations.
//!
//! # Geometry (what [`output_dimensions`] computes and [`render`] produces)
//!
//! Sizes: pixels as given; a percentage is of the input side, rounded, at least 1 px;
//! `"auto"` (or absent) is unspecified. Following the Claid resizing docs:
//! - no size given (or both `"auto"`): the size is unchanged, whatever the fit;
//! - `crop` (the default; `smart` is simulated as `center`): the output is exactly the
//!   requested size; a side not given keeps the input's side; the image is scaled to cover
//!   that size and centre-cropped;
//! - any other fit with one side given: the other side follows the input's aspect ratio;
//! - `cover`, both sides: scaled to cover the box, so one side equals the box and the other may
//!   exceed it; the output is the scaled image (nothing cropped);
//! - `bounds`, both sides: scaled to fit inside the box, one side may be smaller;
//! - `canvas`, both sides: the output is the box; the image is fitted inside it, centred, and
//!   the rest is filled with the background colour;
//! - `outpaint` is simulated as `canvas` (no generative fill, the extra area gets the background
//!   colour). With no sizes and an `outpaint_by`, the canvas grows by `outpaint_by` (width
//!   value added to the width, height value to the height; percentages of the input side) and
//!   the image stays at its scale, centred.
//!
//! No mode stretches the image. Images are scaled up as well as down (Claid interpolates when no
//! `upscale` model is asked for).
//!
//! # Padding rule
//!
//! The Claid padding docs say padding "preserves the actual image size, hence squeezing the
//! image": padding never changes the output dimensions. The canvas is the size computed above;
//! the padding (percentages of the output width for left/right and of the output height for
//! top/bottom; pixels as given) is taken off its edges, the image (the crop region for `crop`,
//! the whole image otherwise) is fitted inside the remaining area keeping its aspect ratio,
//! centred there, and the rest is filled with the background colour. Pixel padding that would
//! leave no room is clamped so the image keeps at least 1 px.
//!
//! # Background colour
//!
//! `background.color` hex: every transparent area (padding, canvas, removed background, input
//! alpha) becomes that colour and the output is opaque. `"transparent"`: alpha is kept for
//! png/webp/tiff output; jpeg has no alpha, so it is flattened onto white. Absent: transparent
//! when the input has alpha, else white (the documented default).
//!
//! # Simulated operations (deterministic, no AI)
//!
//! - `background.remove`: pixels within 32 levels (per channel) of the border colour (the mean
//!   of the four corner pixels) become background (transparent, then the background colour).
//!   `clipping`, `selective` and `category` are accepted but do not change the geometry or mask.
//! - `background.blur`: the same border-colour mask; masked pixels are replaced by a box blur
//!   (low/medium/high = radius 2/4/8 px; `lens` = `regular`).
//! - `restorations.upscale` (any model): a Catmull-Rom resize instead of bilinear.
//! - `restorations.decompress`: a light blur (σ 0.5 moderate/auto, 1.0 strong).
//! - `restorations.polish`: an unsharp mask (σ 1.0).
//! - `adjustments`: exposure (±1 stop at ±100), contrast and saturation (linear around mid-grey
//!   / luma, ×0..×2), sharpness (unsharp mask, σ up to 2), `hdr` = contrast and saturation each
//!   raised by 0.3 × intensity.
//! - `privacy` and `generative.style_transfer`: accepted, no pixel change.
//!
//! # Output formats
//!
//! jpeg (quality honoured, `progressive` ignored: baseline), png (compression mapped to the
//! encoder's fast/best/default), webp (the `image` crate only encodes lossless webp: lossy
//! requests are encoded lossless), tiff (written with the `image` crate's default TIFF
//! compression whatever is asked). **avif is not supported** (the crate is built without it):
//! an avif request yields [`ImagingError::Unsupported`], code `unsupported-format`, which the
//! emulator answers with 422.
//!
//! # Limits
//!
//! Inputs and outputs above [`MAX_PIXELS`] are rejected with [`ImagingError::TooLarge`] before
//! any pixel buffer is allocated. Undecodable input is [`ImagingError::Decode`]; nothing here
//! panics on bad input.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::codecs::tiff::TiffEncoder;
use image::codecs::webp::WebPEncoder;
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageFormat, ImageReader, Rgba, RgbaImage};

use crate::claid::request::{
    Adjustments, BlurLevel, Color, Decompress, EditRequest, Fit, FormatOptions, OutputFormat,
    PngCompression, Size,
};
use crate::claid::wire::ImageObject;

/// Largest input or output image accepted, in pixels (100 megapixels).
pub const MAX_PIXELS: u64 = 100_000_000;

/// The outcome of rendering one request.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The encoded output image.
    pub bytes: Vec<u8>,
    /// Describes the decoded input (no `tmp_url`).
    pub input: ImageObject,
    /// Describes the output (no `tmp_url`; the server fills it).
    pub output: ImageObject,
}

/// Why an image could not be rendered; every variant is the client's problem (422/415 class).
#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    #[error("cannot decode input image: {0}")]
    Decode(String),
    #[error("cannot encode output image: {0}")]
    Encode(String),
    #[error("unsupported output format: {0}")]
    Unsupported(&'static str),
    #[error("{what} image too large: {width}x{height} exceeds {max} pixels")]
    TooLarge {
        what: &'static str,
        width: u64,
        height: u64,
        max: u64,
    },
}

impl ImagingError {
    /// Stable kebab-case code.
    pub fn code(&self) -> &'static str {
        match self {
            ImagingError::Decode(_) => "undecodable-image",
            ImagingError::Encode(_) => "encode-failed",
            ImagingError::Unsupported(_) => "unsupported-format",
            ImagingError::TooLarge { .. } => "image-too-large",
        }
    }
}

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

/// The pure geometry of one request on one input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// Output (canvas) size.
    out_w: u32,
    out_h: u32,
    /// The region of the input that is shown.
    src: Rect,
    /// Where the scaled `src` goes on the canvas; `None` = it fills the canvas exactly.
    place: Option<Rect>,
}

fn clamp_u32(v: f64) -> u32 {
    if v.is_nan() || v < 1.0 {
        1
    } else if v >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        v.round().max(1.0) as u32
    }
}

fn side(size: Size, input: u32) -> Option<u32> {
    match size {
        Size::Auto => None,
        Size::Px(px) => Some(px.max(1)),
        Size::Percent(p) => Some(clamp_u32(f64::from(input) * p / 100.0)),
    }
}

/// `other * num / den`, rounded, at least 1.
fn scale(other: u32, num: u32, den: u32) -> u32 {
    clamp_u32(f64::from(other) * f64::from(num) / f64::from(den.max(1)))
}

/// Size of an `sw`×`sh` image fitted inside `rw`×`rh`, aspect kept.
fn contain(sw: u32, sh: u32, rw: u32, rh: u32) -> (u32, u32) {
    if u64::from(sw) * u64::from(rh) >= u64::from(rw) * u64::from(sh) {
        (rw, scale(sh, rw, sw).min(rh))
    } else {
        (scale(sw, rh, sh).min(rw), rh)
    }
}

fn centered(w: u32, h: u32, region: Rect) -> Rect {
    Rect {
        x: region.x + (region.w - w.min(region.w)) / 2,
        y: region.y + (region.h - h.min(region.h)) / 2,
        w,
        h,
    }
}

/// Central region of the input with the aspect ratio `w`:`h`.
fn crop_region(in_w: u32, in_h: u32, w: u32, h: u32) -> Rect {
    let full = Rect {
        x: 0,
        y: 0,
        w: in_w,
        h: in_h,
    };
    if u64::from(in_w) * u64::from(h) > u64::from(w) * u64::from(in_h) {
        centered(scale(in_h, w, h).min(in_w), in_h, full)
    } else {
        centered(in_w, scale(in_w, h, w).min(in_h), full)
    }
}

fn plan(in_w: u32, in_h: u32, req: &EditRequest) -> Plan {
    let (in_w, in_h) = (in_w.max(1), in_h.max(1));
    let full = Rect {
        x: 0,
        y: 0,
        w: in_w,
        h: in_h,
    };
    let resizing = req.operations.resizing.clone().unwrap_or_default();
    let tw = side(resizing.width, in_w);
    let th = side(resizing.height, in_h);
    let mut p = Plan {
        out_w: in_w,
        out_h: in_h,
        src: full,
        place: None,
    };
    match (&resizing.fit, tw, th) {
        (
            Fit::Outpaint {
                outpaint_by: Some(by),
                ..
            },
            None,
            None,
        ) => {
            p.out_w = in_w.saturating_add(by.width.resolve(in_w));
            p.out_h = in_h.saturating_add(by.height.resolve(in_h));
            let canvas = Rect {
                x: 0,
                y: 0,
                w: p.out_w,
                h: p.out_h,
            };
            p.place = Some(centered(in_w, in_h, canvas));
        }
        (_, None, None) => {}
        (Fit::Crop(_) | Fit::DefaultCrop, w, h) => {
            p.out_w = w.unwrap_or(in_w);
            p.out_h = h.unwrap_or(in_h);
            p.src = crop_region(in_w, in_h, p.out_w, p.out_h);
        }
        (_, Some(w), None) => (p.out_w, p.out_h) = (w, scale(in_h, w, in_w)),
        (_, None, Some(h)) => (p.out_w, p.out_h) = (scale(in_w, h, in_h), h),
        (Fit::Cover, Some(w), Some(h)) => {
            (p.out_w, p.out_h) = if u64::from(w) * u64::from(in_h) >= u64::from(h) * u64::from(in_w)
            {
                (w, scale(in_h, w, in_w).max(h))
            } else {
                (scale(in_w, h, in_h).max(w), h)
            };
        }
        (Fit::Bounds, Some(w), Some(h)) => (p.out_w, p.out_h) = contain(in_w, in_h, w, h),
        (_, Some(w), Some(h)) => {
            (p.out_w, p.out_h) = (w, h);
            let (cw, ch) = contain(in_w, in_h, w, h);
            p.place = Some(centered(cw, ch, Rect { x: 0, y: 0, w, h }));
        }
    }
    if let Some(pad) = req.operations.padding {
        let (mut l, mut r) = (pad.left.resolve(p.out_w), pad.right.resolve(p.out_w));
        let (mut t, mut b) = (pad.top.resolve(p.out_h), pad.bottom.resolve(p.out_h));
        if u64::from(l) + u64::from(r) >= u64::from(p.out_w) {
            (l, r) = shrink_pair(l, r, p.out_w);
        }
        if u64::from(t) + u64::from(b) >= u64::from(p.out_h) {
            (t, b) = shrink_pair(t, b, p.out_h);
        }
        let inner = Rect {
            x: l,
            y: t,
            w: p.out_w - l - r,
            h: p.out_h - t - b,
        };
        let (cw, ch) = contain(p.src.w, p.src.h, inner.w, inner.h);
        p.place = Some(centered(cw, ch, inner));
    }
    p
}

/// Shrinks two paddings so that they leave at least 1 px of `whole`, keeping their ratio.
fn shrink_pair(a: u32, b: u32, whole: u32) -> (u32, u32) {
    let room = whole.saturating_sub(1);
    let sum = u64::from(a) + u64::from(b);
    if sum == 0 {
        return (0, 0);
    }
    let a2 = u32::try_from(u64::from(a) * u64::from(room) / sum).unwrap_or(room);
    (a2, room - a2)
}

/// The output size Claid would produce for an `in_w`×`in_h` input (see the module doc).
pub fn output_dimensions(in_w: u32, in_h: u32, req: &EditRequest) -> (u32, u32) {
    let p = plan(in_w, in_h, req);
    (p.out_w, p.out_h)
}

fn too_large(what: &'static str, w: u32, h: u32) -> Result<(), ImagingError> {
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(ImagingError::TooLarge {
            what,
            width: u64::from(w),
            height: u64::from(h),
            max: MAX_PIXELS,
        });
    }
    Ok(())
}

fn format_names(format: ImageFormat) -> (&'static str, &'static str) {
    match format {
        ImageFormat::Png => ("png", "png"),
        ImageFormat::Jpeg => ("jpeg", "jpg"),
        ImageFormat::WebP => ("webp", "webp"),
        ImageFormat::Tiff => ("tiff", "tiff"),
        ImageFormat::Gif => ("gif", "gif"),
        ImageFormat::Bmp => ("bmp", "bmp"),
        ImageFormat::Avif => ("avif", "avif"),
        _ => ("unknown", "bin"),
    }
}

fn object(format: &str, ext: &str, mime: &str, w: u32, h: u32) -> ImageObject {
    ImageObject {
        ext: ext.to_owned(),
        mps: f64::from(w) * f64::from(h) / 1e6,
        mime: mime.to_owned(),
        format: format.to_owned(),
        width: w,
        height: h,
        tmp_url: None,
        object_key: None,
        object_bucket: None,
        object_uri: None,
        claid_storage_uri: None,
        gcs_key: None,
        gcs_bucket: None,
    }
}

/// Applies `req` to the encoded `input` bytes.
pub fn render(input: &[u8], req: &EditRequest) -> Result<Rendered, ImagingError> {
    let decode = |e: &dyn std::fmt::Display| ImagingError::Decode(e.to_string());
    let reader = ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|e| decode(&e))?;
    let Some(in_format) = reader.format() else {
        return Err(ImagingError::Decode("unknown image format".to_owned()));
    };
    let (in_w, in_h) = reader.into_dimensions().map_err(|e| decode(&e))?;
    if in_w == 0 || in_h == 0 {
        return Err(ImagingError::Decode("image has no pixels".to_owned()));
    }
    too_large("input", in_w, in_h)?;
    let p = plan(in_w, in_h, req);
    too_large("output", p.out_w, p.out_h)?;
    let out_format = req.output_format();
    if out_format == OutputFormat::Avif {
        return Err(ImagingError::Unsupported(
            "avif output is not supported by the emulator",
        ));
    }

    let mut reader = ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|e| decode(&e))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| decode(&e))?;
    let input_has_alpha = decoded.color().has_alpha();
    let mut img = decoded.to_rgba8();
    drop(decoded);
    let (in_w, in_h) = img.dimensions();

    let ops = &req.operations;
    let background = ops.background.clone().unwrap_or_default();
    if let Some(restorations) = &ops.restorations {
        if let Some(d) = restorations.decompress {
            let sigma = if d == Decompress::Strong { 1.0 } else { 0.5 };
            img = imageops::blur(&img, sigma);
        }
        if restorations.polish {
            img = imageops::unsharpen(&img, 1.0, 0);
        }
    }
    if background.remove.is_some() || background.blur.is_some() {
        let key = border_colour(&img);
        if let Some(blur) = &background.blur {
            let radius = match blur.level {
                BlurLevel::Low => 2.0,
                BlurLevel::Medium => 4.0,
                BlurLevel::High => 8.0,
            };
            let blurred = imageops::fast_blur(&img, radius);
            for (px, bl) in img.pixels_mut().zip(blurred.pixels()) {
                if near(*px, key) {
                    *px = *bl;
                }
            }
        }
        if background.remove.is_some() {
            for px in img.pixels_mut() {
                if near(*px, key) {
                    *px = Rgba([0, 0, 0, 0]);
                }
            }
        }
    }

    // Geometry: take the shown region, scale it to its final size.
    let src = p.src;
    let region = if (src.x, src.y, src.w, src.h) == (0, 0, in_w, in_h) {
        img
    } else {
        imageops::crop_imm(&img, src.x, src.y, src.w.min(in_w), src.h.min(in_h)).to_image()
    };
    let (cw, ch) = p.place.map_or((p.out_w, p.out_h), |r| (r.w, r.h));
    let filter = if ops
        .restorations
        .as_ref()
        .is_some_and(|r| r.upscale.is_some())
    {
        FilterType::CatmullRom
    } else {
        FilterType::Triangle
    };
    let mut content = if region.dimensions() == (cw, ch) {
        region
    } else {
        imageops::resize(&region, cw, ch, filter)
    };
    if let Some(adj) = &ops.adjustments {
        adjust(&mut content, adj);
    }

    let bg = match background.color {
        Some(Color::Rgb(r, g, b)) => Rgba([r, g, b, 255]),
        Some(Color::Transparent) => Rgba([0, 0, 0, 0]),
        None if input_has_alpha => Rgba([0, 0, 0, 0]),
        None => Rgba([255, 255, 255, 255]),
    };
    let mut canvas = match p.place {
        None => content,
        Some(at) => {
            let mut canvas = RgbaImage::from_pixel(p.out_w, p.out_h, bg);
            imageops::replace(&mut canvas, &content, i64::from(at.x), i64::from(at.y));
            canvas
        }
    };
    if bg[3] == 255 {
        flatten(&mut canvas, bg);
    }
    let bytes = encode(canvas, &req.output.format)?;
    let (in_name, in_ext) = format_names(in_format);
    Ok(Rendered {
        bytes,
        input: object(in_name, in_ext, in_format.to_mime_type(), in_w, in_h),
        output: object(
            out_format.name(),
            out_format.extension(),
            out_format.mime(),
            p.out_w,
            p.out_h,
        ),
    })
}

/// Mean of the four corner pixels.
fn border_colour(img: &RgbaImage) -> Rgba<u8> {
    let (w, h) = img.dimensions();
    let corners = [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)];
    let mut sum = [0u32; 4];
    for (x, y) in corners {
        let px = img.get_pixel(x, y);
        for (s, c) in sum.iter_mut().zip(px.0) {
            *s += u32::from(c);
        }
    }
    Rgba(sum.map(|s| u8::try_from(s / 4).unwrap_or(u8::MAX)))
}

fn near(a: Rgba<u8>, b: Rgba<u8>) -> bool {
    a.0.iter()
        .zip(b.0)
        .take(3)
        .all(|(x, y)| x.abs_diff(y) <= 32)
}

/// Composites every pixel over the opaque `bg`.
fn flatten(img: &mut RgbaImage, bg: Rgba<u8>) {
    for px in img.pixels_mut() {
        let a = u32::from(px[3]);
        if a == 255 {
            continue;
        }
        for c in 0..3 {
            let v = (u32::from(px[c]) * a + u32::from(bg[c]) * (255 - a) + 127) / 255;
            px[c] = u8::try_from(v).unwrap_or(u8::MAX);
        }
        px[3] = 255;
    }
}

fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

fn adjust(img: &mut RgbaImage, adj: &Adjustments) {
    let hdr = f32::from(adj.hdr.intensity) * 0.3;
    let exposure = 2f32.powf(f32::from(adj.exposure) / 100.0);
    let contrast = (1.0 + (f32::from(adj.contrast) + hdr) / 100.0).clamp(0.0, 2.0);
    let saturation = (1.0 + (f32::from(adj.saturation) + hdr) / 100.0).clamp(0.0, 2.0);
    if exposure != 1.0 || contrast != 1.0 {
        let lut: Vec<u8> = (0..=255u8)
            .map(|v| to_u8((f32::from(v) * exposure - 128.0) * contrast + 128.0))
            .collect();
        for px in img.pixels_mut() {
            for c in 0..3 {
                px[c] = lut[usize::from(px[c])];
            }
        }
    }
    if saturation != 1.0 {
        for px in img.pixels_mut() {
            let [r, g, b] = [f32::from(px[0]), f32::from(px[1]), f32::from(px[2])];
            let luma = 0.299 * r + 0.587 * g + 0.114 * b;
            px[0] = to_u8(luma + (r - luma) * saturation);
            px[1] = to_u8(luma + (g - luma) * saturation);
            px[2] = to_u8(luma + (b - luma) * saturation);
        }
    }
    if adj.sharpness > 0 {
        *img = imageops::unsharpen(img, f32::from(adj.sharpness) / 50.0, 0);
    }
}

fn encode(img: RgbaImage, format: &FormatOptions) -> Result<Vec<u8>, ImagingError> {
    let opaque = img.pixels().all(|p| p[3] == 255);
    let mut out = Cursor::new(Vec::new());
    let enc = |e: image::ImageError| ImagingError::Encode(e.to_string());
    match *format {
        FormatOptions::Jpeg { quality, .. } => {
            let mut img = img;
            if !opaque {
                flatten(&mut img, Rgba([255, 255, 255, 255]));
            }
            let rgb = DynamicImage::ImageRgba8(img).to_rgb8();
            DynamicImage::ImageRgb8(rgb)
                .write_with_encoder(JpegEncoder::new_with_quality(
                    &mut out,
                    quality.clamp(1, 100),
                ))
                .map_err(enc)?;
        }
        FormatOptions::Png { compression } => {
            let level = match compression {
                PngCompression::Fast => CompressionType::Fast,
                PngCompression::Best => CompressionType::Best,
                PngCompression::Optimal => CompressionType::Default,
            };
            pixels(img, opaque)
                .write_with_encoder(PngEncoder::new_with_quality(
                    &mut out,
                    level,
                    PngFilter::Adaptive,
                ))
                .map_err(enc)?;
        }
        FormatOptions::Webp { .. } => {
            pixels(img, opaque)
                .write_with_encoder(WebPEncoder::new_lossless(&mut out))
                .map_err(enc)?;
        }
        FormatOptions::Tiff { .. } => {
            pixels(img, opaque)
                .write_with_encoder(TiffEncoder::new(&mut out))
                .map_err(enc)?;
        }
        FormatOptions::Avif { .. } => {
            return Err(ImagingError::Unsupported(
                "avif output is not supported by the emulator",
            ));
        }
    }
    Ok(out.into_inner())
}

/// RGB when every pixel is opaque (smaller files), RGBA otherwise.
fn pixels(img: RgbaImage, opaque: bool) -> DynamicImage {
    let img = DynamicImage::ImageRgba8(img);
    if opaque {
        DynamicImage::ImageRgb8(img.to_rgb8())
    } else {
        img
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contain_keeps_aspect() {
        assert_eq!(contain(400, 200, 100, 100), (100, 50));
        assert_eq!(contain(200, 400, 100, 100), (50, 100));
        assert_eq!(contain(1, 10_000, 100, 100), (1, 100));
    }

    #[test]
    fn crop_region_is_centered() {
        assert_eq!(
            crop_region(400, 200, 100, 100),
            Rect {
                x: 100,
                y: 0,
                w: 200,
                h: 200
            }
        );
        assert_eq!(
            crop_region(200, 400, 100, 100),
            Rect {
                x: 0,
                y: 100,
                w: 200,
                h: 200
            }
        );
    }

    #[test]
    fn shrink_pair_leaves_a_pixel() {
        assert_eq!(shrink_pair(100, 100, 50), (24, 25));
        assert_eq!(shrink_pair(0, 0, 1), (0, 0));
    }
}
