//! The edit request schema of docs/claid-api.md (`EditRequest` = `AsyncEditRequest`, and the
//! `data` part of an upload): typed operations and output options, and validation of a JSON
//! body against the contract's enums and ranges, reporting every problem by dotted field path.
//! Shared by the manifest validator (before any spend) and the emulator (422 responses).
//!
//! Validation walks the `serde_json::Value` by hand (serde's `deny_unknown_fields` stops at the
//! first problem) and collects every [`FieldError`]. Every object forbids unknown fields
//! (`additionalProperties: false` in the OpenAPI schema), except that
//! `operations.background.use_original_alpha` is accepted and ignored (docs/claid-api.md).
//!
//! Decisions where the sources are silent or disagree:
//! - `resizing` with both sides `"auto"` is "no resize" (the schema's own default).
//! - Percent sizes (`"200%"`) are digits with an optional fraction, greater than 0; pixel sizes
//!   are integers ≥ 1. Two percentages may differ.
//! - `padding` takes 1, 2 or 4 space-separated values, each `"<n>%"` or `"<n>px"` (units may
//!   mix), CSS order: one value = all sides; two = top/bottom then left/right; four = top,
//!   right, bottom, left. A percent value may not exceed 50% and opposite sides together must
//!   stay below 100% ("cannot be more than half the width/height").
//! - Colours are `#rgb` or `#rrggbb` (case-insensitive) or `"transparent"`.
//! - `input` / `output.destination` are `http://`, `https://` (with a host) or
//!   `storage://<name>/<path>`, 1..4096 characters, no whitespace or control characters.
//!
//! Files, one reason to change each: this one holds the typed schema and [`validate`] (the
//! body's top level); `walk` the validator and its checks of one value; `operations` and
//! `output` the rules of those two parts of the body; `grammar` the grammars of string values
//! (URIs, colours, lengths, padding); `defaults` the schema's defaults, and whether an echoed
//! request is the one sent.

mod defaults;
mod grammar;
mod operations;
mod output;
mod walk;

pub use defaults::{same_request, with_defaults};

use serde::Serialize;
use serde_json::Value;

use crate::claid::request::walk::Validator;

/// One validation problem: `path` is the dotted field path (`operations.resizing.width`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path from the body root; `body` when the body itself is not an object. Used as the
    /// `error_details` key of a 422 and in manifest error files.
    pub path: String,
    /// Says what is wrong and what is allowed (values, range or pattern).
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Whether the body must carry `input` (sync/async edits) or must not (the upload `data` part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRule {
    Required,
    Forbidden,
}

/// Output image formats (`FormatEnum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Jpeg,
    Png,
    Webp,
    Avif,
    Tiff,
}

impl OutputFormat {
    /// File extension used for default output names.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
            OutputFormat::Avif => "avif",
            OutputFormat::Tiff => "tiff",
        }
    }

    /// The `FormatEnum` spelling (`"jpeg"`, `"png"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
            OutputFormat::Avif => "avif",
            OutputFormat::Tiff => "tiff",
        }
    }

    /// The MIME type of the encoded image.
    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
            OutputFormat::Webp => "image/webp",
            OutputFormat::Avif => "image/avif",
            OutputFormat::Tiff => "image/tiff",
        }
    }
}

/// A validated edit request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EditRequest {
    /// `None` for the upload `data` part, where the file part is the input.
    pub input: Option<String>,
    /// Every operation group; absent groups hold their contract defaults.
    pub operations: Operations,
    /// Output options; the string shorthand lands in `destination`.
    pub output: OutputOptions,
}

impl EditRequest {
    /// The output format the request asks for (`jpeg` when `output` is absent).
    pub fn output_format(&self) -> OutputFormat {
        self.output.format.format()
    }
}

/// `ImageOperations`: every group is optional; `None` means the group was absent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Operations {
    pub restorations: Option<Restorations>,
    pub adjustments: Option<Adjustments>,
    pub background: Option<Background>,
    pub resizing: Option<Resizing>,
    pub padding: Option<Padding>,
    pub privacy: Option<Privacy>,
    pub generative: Option<Generative>,
}

/// `RestorationsOptions`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Restorations {
    /// `None` = no decompression (the default `null`).
    pub decompress: Option<Decompress>,
    /// `None` = plain interpolation when resizing (the default `null`).
    pub upscale: Option<Upscale>,
    pub polish: bool,
}

/// `DecompressEnum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decompress {
    Moderate,
    Strong,
    Auto,
}

/// `UpscaleEnum` or `UpscalePhotoOptions` (`Photo(Some(version))`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upscale {
    SmartEnhance,
    SmartResize,
    Faces,
    DigitalArt,
    /// `"photo"` alone is `Photo(None)`; the object form carries its version 1..=3.
    Photo(Option<u8>),
}

/// `AdjustmentsOptions`; absent fields are 0 (no change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Adjustments {
    pub hdr: Hdr,
    /// −100..=100.
    pub exposure: i8,
    /// −100..=100.
    pub saturation: i8,
    /// −100..=100.
    pub contrast: i8,
    /// 0..=100.
    pub sharpness: u8,
}

/// `hdr` as an integer (intensity) or `HdrOptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hdr {
    /// 0..=100; the object form defaults to 100, the integer form is the value itself.
    pub intensity: u8,
    pub stitching: bool,
}

/// `BackgroundOptions`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Background {
    /// `None` = keep the background (`false`).
    pub remove: Option<BackgroundRemove>,
    /// `None` = white, or transparent when the input has alpha.
    pub color: Option<Color>,
    /// `None` = no blur (`false`).
    pub blur: Option<BackgroundBlur>,
}

/// `remove: true` is the default object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackgroundRemove {
    /// Crop to the object's edges.
    pub clipping: bool,
    /// `selective.object_to_keep`.
    pub object_to_keep: Option<String>,
    pub category: Option<Category>,
}

/// `BackgroundCategoryEnum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    General,
    Cars,
    Products,
}

/// `blur: true` is the default object (regular, medium).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackgroundBlur {
    pub object_to_keep: Option<String>,
    pub category: Option<Category>,
    pub kind: BlurType,
    pub level: BlurLevel,
}

/// `BackgroundBlurTypeEnum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlurType {
    #[default]
    Regular,
    Lens,
}

/// `BackgroundBlurLevelEnum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlurLevel {
    Low,
    #[default]
    Medium,
    High,
}

/// A background colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Rgb(u8, u8, u8),
    Transparent,
}

/// `ResizingOptions`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resizing {
    pub width: Size,
    pub height: Size,
    pub fit: Fit,
}

/// One side of the requested size.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Size {
    #[default]
    Auto,
    /// Pixels, ≥ 1.
    Px(u32),
    /// Percent of the input side, > 0 (`"200%"` = 200.0).
    Percent(f64),
}

/// `fit` in string or object form.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Fit {
    Crop(CropMode),
    Cover,
    Bounds,
    Canvas,
    Outpaint {
        /// Percent, default 15.
        feathering: u32,
        /// `None` = outpaint in one direction from width/height.
        outpaint_by: Option<OutpaintBy>,
    },
    /// The default (`"crop"` with center cropping) when `fit` is absent.
    #[default]
    DefaultCrop,
}

impl Fit {
    /// The `FitEnum` name.
    pub fn name(&self) -> &'static str {
        match self {
            Fit::Crop(_) | Fit::DefaultCrop => "crop",
            Fit::Cover => "cover",
            Fit::Bounds => "bounds",
            Fit::Canvas => "canvas",
            Fit::Outpaint { .. } => "outpaint",
        }
    }
}

/// `FitCropEnum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CropMode {
    #[default]
    Center,
    Smart,
}

/// A length in pixels or percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    Px(u32),
    Percent(f64),
}

impl Length {
    /// Resolves against `whole` pixels (percent rounds to nearest).
    pub fn resolve(self, whole: u32) -> u32 {
        match self {
            Length::Px(px) => px,
            Length::Percent(p) => {
                let v = (f64::from(whole) * p / 100.0).round();
                if v >= f64::from(u32::MAX) {
                    u32::MAX
                } else {
                    v.max(0.0) as u32
                }
            }
        }
    }
}

/// `outpaint_by`: first value for width, second for height (one value = both).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutpaintBy {
    pub width: Length,
    pub height: Length,
}

/// `padding`, expanded to four sides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Padding {
    pub top: Length,
    pub right: Length,
    pub bottom: Length,
    pub left: Length,
}

/// `PrivacyOptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Privacy {
    pub blur_car_plate: bool,
    pub identity_crop: bool,
}

/// `GenerativeOptions`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Generative {
    pub style_transfer: Option<StyleTransfer>,
}

/// `StyleTransferOptions`.
#[derive(Debug, Clone, PartialEq)]
pub struct StyleTransfer {
    pub style_reference_image: String,
    pub prompt: Option<String>,
    pub depth_strength: f64,
    pub denoising_strength: f64,
    pub style_strength: f64,
}

/// `ImageOutputOptions` (the string shorthand fills `destination` only).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OutputOptions {
    pub format: FormatOptions,
    /// Where Claid writes the result; `None` = temporary bucket + `tmp_url`.
    pub destination: Option<String>,
    pub metadata: Option<Metadata>,
}

/// `format` as a name or a format object, with its defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatOptions {
    Jpeg { quality: u8, progressive: bool },
    Png { compression: PngCompression },
    Webp { compression: Compression },
    Avif { compression: Compression },
    Tiff { compression: Compression },
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions::Jpeg {
            quality: 85,
            progressive: true,
        }
    }
}

impl FormatOptions {
    /// The format alone.
    pub fn format(&self) -> OutputFormat {
        match self {
            FormatOptions::Jpeg { .. } => OutputFormat::Jpeg,
            FormatOptions::Png { .. } => OutputFormat::Png,
            FormatOptions::Webp { .. } => OutputFormat::Webp,
            FormatOptions::Avif { .. } => OutputFormat::Avif,
            FormatOptions::Tiff { .. } => OutputFormat::Tiff,
        }
    }

    fn default_for(format: OutputFormat) -> FormatOptions {
        match format {
            OutputFormat::Jpeg => FormatOptions::default(),
            OutputFormat::Png => FormatOptions::Png {
                compression: PngCompression::Optimal,
            },
            OutputFormat::Webp => FormatOptions::Webp {
                compression: Compression::Lossy { quality: 75 },
            },
            OutputFormat::Avif => FormatOptions::Avif {
                compression: Compression::Lossy { quality: 50 },
            },
            OutputFormat::Tiff => FormatOptions::Tiff {
                compression: Compression::Lossless,
            },
        }
    }
}

/// `FormatCompressionLevelEnum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PngCompression {
    Fast,
    Best,
    #[default]
    Optimal,
}

/// webp / avif / tiff compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Quality 1..=100.
    Lossy {
        quality: u8,
    },
    Lossless,
}

/// `MetadataOptions`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    pub dpi: Option<u32>,
    pub color_space: Option<ColorSpace>,
}

/// `color_space`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorSpace {
    Rgb,
    /// CMYK with its profile (schema default `USWeb_Coated`).
    Cmyk(CmykProfile),
}

/// `CMYKColorProfileEnum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmykProfile {
    IsoCoated,
    IsoUncoated,
    UswebCoated,
    UswebUncoated,
}

/// Maximum length of `input` and `output.destination`.
pub const MAX_URI_LEN: usize = 4096;

/// Validates `body` against the contract and returns the typed request, or every problem found.
pub fn validate(body: &Value, input: InputRule) -> Result<EditRequest, Vec<FieldError>> {
    let mut v = Validator::default();
    let req = v.request(body, input);
    if v.errors.is_empty() {
        Ok(req)
    } else {
        Err(v.errors)
    }
}

impl Validator {
    /// The body's top level: `input` (per `input_rule`), `operations`, `output`.
    fn request(&mut self, body: &Value, input_rule: InputRule) -> EditRequest {
        let mut req = EditRequest::default();
        let Some(map) = self.object(body, "", &["input", "operations", "output"], &[]) else {
            return req;
        };
        match (map.get("input"), input_rule) {
            (Some(v), InputRule::Required) => req.input = self.uri(v, "input"),
            (None, InputRule::Required) => self.err(
                "input",
                "required: an http(s):// URL or storage://<storage>/<path> of the input image",
            ),
            (Some(_), InputRule::Forbidden) => self.err(
                "input",
                "not allowed in the upload data part: the file part is the input",
            ),
            (None, InputRule::Forbidden) => {}
        }
        match map.get("operations") {
            Some(v) => req.operations = self.operations(v, "operations"),
            None => self.err(
                "operations",
                "required: an object of operation groups (may be {})",
            ),
        }
        if let Some(v) = map.get("output") {
            req.output = self.output(v, "output");
        }
        req
    }
}
