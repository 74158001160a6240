//! The edit request schema of CONTRACT.md §4 (`EditRequest` = `AsyncEditRequest`, and the
//! `data` part of an upload): typed operations and output options, and validation of a JSON
//! body against the contract's enums and ranges, reporting every problem by dotted field path.
//! Shared by the manifest validator (before any spend) and the emulator (422 responses).
//!
//! Validation walks the `serde_json::Value` by hand (serde's `deny_unknown_fields` stops at the
//! first problem) and collects every [`FieldError`]. Every object forbids unknown fields
//! (`additionalProperties: false` in the OpenAPI schema), except that
//! `operations.background.use_original_alpha` is accepted and ignored (CONTRACT §15.5).
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

use serde::Serialize;
use serde_json::{Map, Value};

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

/// Collects problems while walking the JSON.
#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Validator {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// Checks that `value` is an object whose keys are all in `allowed` (+ `ignored`).
    fn object<'a>(
        &mut self,
        value: &'a Value,
        path: &str,
        allowed: &[&str],
        ignored: &[&str],
    ) -> Option<&'a Map<String, Value>> {
        let Some(map) = value.as_object() else {
            let at = if path.is_empty() { "body" } else { path };
            self.err(at, format!("must be an object, got {}", type_name(value)));
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) && !ignored.contains(&key.as_str()) {
                self.err(
                    &join(path, key),
                    format!("unknown field; allowed fields: {}", allowed.join(", ")),
                );
            }
        }
        Some(map)
    }

    fn boolean(&mut self, value: &Value, path: &str) -> Option<bool> {
        match value.as_bool() {
            Some(b) => Some(b),
            None => {
                self.err(
                    path,
                    format!("must be true or false, got {}", type_name(value)),
                );
                None
            }
        }
    }

    fn int_in(&mut self, value: &Value, path: &str, min: i64, max: i64) -> Option<i64> {
        match value.as_i64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.err(path, format!("must be an integer in {min}..{max}, got {n}"));
                None
            }
            None => {
                let got = if value.is_number() {
                    "a non-integer or out-of-range number"
                } else {
                    type_name(value)
                };
                self.err(
                    path,
                    format!("must be an integer in {min}..{max}, got {got}"),
                );
                None
            }
        }
    }

    fn number_in(&mut self, value: &Value, path: &str, min: f64, max: f64) -> Option<f64> {
        match value.as_f64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.err(path, format!("must be a number in {min}..{max}, got {n}"));
                None
            }
            None => {
                self.err(
                    path,
                    format!("must be a number in {min}..{max}, got {}", type_name(value)),
                );
                None
            }
        }
    }

    fn string<'a>(
        &mut self,
        value: &'a Value,
        path: &str,
        min: usize,
        max: usize,
    ) -> Option<&'a str> {
        let Some(s) = value.as_str() else {
            self.err(
                path,
                format!(
                    "must be a string of {min}..{max} characters, got {}",
                    type_name(value)
                ),
            );
            return None;
        };
        let n = s.chars().count();
        if n < min || n > max {
            self.err(
                path,
                format!("must be {min}..{max} characters long, got {n}"),
            );
            return None;
        }
        Some(s)
    }

    /// A string enum: returns the index of the matching name.
    fn enumeration(&mut self, value: &Value, path: &str, names: &[&str]) -> Option<usize> {
        let found = value
            .as_str()
            .and_then(|s| names.iter().position(|n| *n == s));
        if found.is_none() {
            let got = match value {
                Value::String(s) => format!("\"{s}\""),
                other => type_name(other).to_owned(),
            };
            self.err(path, format!("must be one of {}, got {got}", quoted(names)));
        }
        found
    }

    /// The `type` of a tagged object (`fit`, `format`, `compression`, ...). When it is missing or
    /// invalid, the other keys are still checked against `all_keys` (the union over variants)
    /// so that unknown fields are reported too.
    fn tag(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        names: &[&str],
        all_keys: &[&str],
    ) -> Option<usize> {
        let found = match map.get("type") {
            Some(t) => self.enumeration(t, &join(path, "type"), names),
            None => {
                self.err(
                    &join(path, "type"),
                    format!("required: one of {}", quoted(names)),
                );
                None
            }
        };
        if found.is_none() {
            for key in map.keys().filter(|k| !all_keys.contains(&k.as_str())) {
                self.err(
                    &join(path, key),
                    format!("unknown field; allowed fields: {}", all_keys.join(", ")),
                );
            }
        }
        found
    }

    fn uri(&mut self, value: &Value, path: &str) -> Option<String> {
        let s = self.string(value, path, 1, MAX_URI_LEN)?;
        if let Err(why) = check_uri(s) {
            self.err(path, why);
            return None;
        }
        Some(s.to_owned())
    }

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

    fn operations(&mut self, value: &Value, path: &str) -> Operations {
        let mut ops = Operations::default();
        let allowed = [
            "restorations",
            "adjustments",
            "background",
            "resizing",
            "padding",
            "privacy",
            "generative",
        ];
        let Some(map) = self.object(value, path, &allowed, &[]) else {
            return ops;
        };
        if let Some(v) = map.get("restorations") {
            ops.restorations = Some(self.restorations(v, &join(path, "restorations")));
        }
        if let Some(v) = map.get("adjustments") {
            ops.adjustments = Some(self.adjustments(v, &join(path, "adjustments")));
        }
        if let Some(v) = map.get("background") {
            ops.background = Some(self.background(v, &join(path, "background")));
        }
        if let Some(v) = map.get("resizing") {
            ops.resizing = Some(self.resizing(v, &join(path, "resizing")));
        }
        if let Some(v) = map.get("padding") {
            ops.padding = self.padding(v, &join(path, "padding"));
        }
        if let Some(v) = map.get("privacy") {
            ops.privacy = Some(self.privacy(v, &join(path, "privacy")));
        }
        if let Some(v) = map.get("generative") {
            ops.generative = Some(self.generative(v, &join(path, "generative")));
        }
        ops
    }

    fn restorations(&mut self, value: &Value, path: &str) -> Restorations {
        let mut r = Restorations::default();
        let Some(map) = self.object(value, path, &["decompress", "upscale", "polish"], &[]) else {
            return r;
        };
        if let Some(v) = map.get("decompress").filter(|v| !v.is_null()) {
            const NAMES: [&str; 3] = ["moderate", "strong", "auto"];
            r.decompress = self
                .enumeration(v, &join(path, "decompress"), &NAMES)
                .map(|i| [Decompress::Moderate, Decompress::Strong, Decompress::Auto][i]);
        }
        if let Some(v) = map.get("upscale").filter(|v| !v.is_null()) {
            r.upscale = self.upscale(v, &join(path, "upscale"));
        }
        if let Some(v) = map.get("polish") {
            r.polish = self.boolean(v, &join(path, "polish")).unwrap_or(false);
        }
        r
    }

    fn upscale(&mut self, value: &Value, path: &str) -> Option<Upscale> {
        const NAMES: [&str; 5] = [
            "smart_enhance",
            "smart_resize",
            "faces",
            "digital_art",
            "photo",
        ];
        if value.is_object() {
            let map = self.object(value, path, &["type", "version"], &[])?;
            let kind = match map.get("type") {
                Some(t) => self.enumeration(t, &join(path, "type"), &["photo"]),
                None => {
                    self.err(&join(path, "type"), "required: must be \"photo\"");
                    None
                }
            };
            let version = match map.get("version") {
                Some(v) => self
                    .enumeration(v, &join(path, "version"), &["1", "2", "3"])
                    .and_then(|i| u8::try_from(i + 1).ok()),
                None => {
                    self.err(
                        &join(path, "version"),
                        "required: one of \"1\", \"2\", \"3\"",
                    );
                    None
                }
            };
            kind?;
            return version.map(|v| Upscale::Photo(Some(v)));
        }
        if !value.is_string() {
            self.err(
                path,
                format!(
                    "must be null, one of {} or {{\"type\":\"photo\",\"version\":\"1\"|\"2\"|\"3\"}}, got {}",
                    quoted(&NAMES),
                    type_name(value)
                ),
            );
            return None;
        }
        self.enumeration(value, path, &NAMES).map(|i| match i {
            0 => Upscale::SmartEnhance,
            1 => Upscale::SmartResize,
            2 => Upscale::Faces,
            3 => Upscale::DigitalArt,
            _ => Upscale::Photo(None),
        })
    }

    fn adjustments(&mut self, value: &Value, path: &str) -> Adjustments {
        let mut a = Adjustments::default();
        let allowed = ["hdr", "exposure", "saturation", "contrast", "sharpness"];
        let Some(map) = self.object(value, path, &allowed, &[]) else {
            return a;
        };
        if let Some(v) = map.get("hdr") {
            let p = join(path, "hdr");
            if v.is_object() {
                if let Some(h) = self.object(v, &p, &["intensity", "stitching"], &[]) {
                    a.hdr.intensity = 100;
                    if let Some(i) = h.get("intensity") {
                        a.hdr.intensity =
                            self.int_in(i, &join(&p, "intensity"), 0, 100).unwrap_or(0) as u8;
                    }
                    if let Some(s) = h.get("stitching") {
                        a.hdr.stitching = self.boolean(s, &join(&p, "stitching")).unwrap_or(false);
                    }
                }
            } else if v.is_number() {
                a.hdr.intensity = self.int_in(v, &p, 0, 100).unwrap_or(0) as u8;
            } else {
                self.err(
                    &p,
                    format!(
                        "must be an integer in 0..100 or {{\"intensity\": 0..100, \"stitching\": bool}}, got {}",
                        type_name(v)
                    ),
                );
            }
        }
        let signed = |v: &mut Validator, key: &str| -> i8 {
            map.get(key)
                .and_then(|x| v.int_in(x, &join(path, key), -100, 100))
                .and_then(|n| i8::try_from(n).ok())
                .unwrap_or(0)
        };
        a.exposure = signed(self, "exposure");
        a.saturation = signed(self, "saturation");
        a.contrast = signed(self, "contrast");
        if let Some(v) = map.get("sharpness") {
            a.sharpness = self
                .int_in(v, &join(path, "sharpness"), 0, 100)
                .unwrap_or(0) as u8;
        }
        a
    }

    fn category(&mut self, value: &Value, path: &str) -> Option<Category> {
        self.enumeration(value, path, &["general", "cars", "products"])
            .map(|i| [Category::General, Category::Cars, Category::Products][i])
    }

    fn selective(&mut self, value: &Value, path: &str) -> Option<String> {
        let map = self.object(value, path, &["object_to_keep"], &[])?;
        match map.get("object_to_keep") {
            Some(v) => self
                .string(v, &join(path, "object_to_keep"), 3, 128)
                .map(str::to_owned),
            None => {
                self.err(
                    &join(path, "object_to_keep"),
                    "required: a string of 3..128 characters",
                );
                None
            }
        }
    }

    fn background(&mut self, value: &Value, path: &str) -> Background {
        let mut b = Background::default();
        let Some(map) = self.object(
            value,
            path,
            &["remove", "color", "blur"],
            &["use_original_alpha"],
        ) else {
            return b;
        };
        if let Some(v) = map.get("remove") {
            let p = join(path, "remove");
            match v {
                Value::Bool(true) => b.remove = Some(BackgroundRemove::default()),
                Value::Bool(false) => {}
                Value::Object(_) => {
                    let mut r = BackgroundRemove::default();
                    if let Some(m) = self.object(v, &p, &["clipping", "selective", "category"], &[]) {
                        if let Some(c) = m.get("clipping") {
                            r.clipping = self.boolean(c, &join(&p, "clipping")).unwrap_or(false);
                        }
                        if let Some(s) = m.get("selective") {
                            r.object_to_keep = self.selective(s, &join(&p, "selective"));
                        }
                        if let Some(c) = m.get("category") {
                            r.category = self.category(c, &join(&p, "category"));
                        }
                    }
                    b.remove = Some(r);
                }
                other => self.err(
                    &p,
                    format!(
                        "must be true, false or {{\"clipping\", \"selective\", \"category\"}}, got {}",
                        type_name(other)
                    ),
                ),
            }
        }
        if let Some(v) = map.get("color") {
            let p = join(path, "color");
            match v.as_str() {
                Some("transparent") => b.color = Some(Color::Transparent),
                Some(s) => match parse_hex_color(s) {
                    Some((r, g, bl)) => b.color = Some(Color::Rgb(r, g, bl)),
                    None => self.err(
                        &p,
                        format!(
                            "must be a hex colour like \"#ffffff\" or \"transparent\", got \"{s}\""
                        ),
                    ),
                },
                None => self.err(
                    &p,
                    format!(
                        "must be a hex colour like \"#ffffff\" or \"transparent\", got {}",
                        type_name(v)
                    ),
                ),
            }
        }
        if let Some(v) = map.get("blur") {
            let p = join(path, "blur");
            match v {
                Value::Bool(true) => b.blur = Some(BackgroundBlur::default()),
                Value::Bool(false) => {}
                Value::Object(_) => {
                    let mut bl = BackgroundBlur::default();
                    if let Some(m) = self.object(v, &p, &["selective", "category", "type", "level"], &[]) {
                        if let Some(s) = m.get("selective") {
                            bl.object_to_keep = self.selective(s, &join(&p, "selective"));
                        }
                        if let Some(c) = m.get("category") {
                            bl.category = self.category(c, &join(&p, "category"));
                        }
                        if let Some(t) = m.get("type") {
                            if let Some(i) = self.enumeration(t, &join(&p, "type"), &["regular", "lens"]) {
                                bl.kind = [BlurType::Regular, BlurType::Lens][i];
                            }
                        }
                        if let Some(l) = m.get("level") {
                            if let Some(i) = self.enumeration(l, &join(&p, "level"), &["low", "medium", "high"]) {
                                bl.level = [BlurLevel::Low, BlurLevel::Medium, BlurLevel::High][i];
                            }
                        }
                    }
                    b.blur = Some(bl);
                }
                other => self.err(
                    &p,
                    format!(
                        "must be true, false or {{\"selective\", \"category\", \"type\", \"level\"}}, got {}",
                        type_name(other)
                    ),
                ),
            }
        }
        b
    }

    fn size(&mut self, value: &Value, path: &str) -> Option<Size> {
        const WHAT: &str = "must be a pixel integer ≥ 1, a percentage like \"200%\", or \"auto\"";
        match value {
            Value::Number(n) => match n.as_u64() {
                Some(px) if px >= 1 => match u32::try_from(px) {
                    Ok(px) => Some(Size::Px(px)),
                    Err(_) => {
                        self.err(path, format!("{WHAT}, got {px} (too large)"));
                        None
                    }
                },
                _ => {
                    self.err(path, format!("{WHAT}, got {n}"));
                    None
                }
            },
            Value::String(s) if s == "auto" => Some(Size::Auto),
            Value::String(s) => match parse_percent(s) {
                Some(p) if p > 0.0 => Some(Size::Percent(p)),
                _ => {
                    self.err(path, format!("{WHAT}, got \"{s}\""));
                    None
                }
            },
            other => {
                self.err(path, format!("{WHAT}, got {}", type_name(other)));
                None
            }
        }
    }

    fn resizing(&mut self, value: &Value, path: &str) -> Resizing {
        let mut r = Resizing::default();
        let Some(map) = self.object(value, path, &["width", "height", "fit"], &[]) else {
            return r;
        };
        let width = map.get("width").map(|v| self.size(v, &join(path, "width")));
        let height = map
            .get("height")
            .map(|v| self.size(v, &join(path, "height")));
        r.width = width.flatten().unwrap_or(Size::Auto);
        r.height = height.flatten().unwrap_or(Size::Auto);
        let mixed = matches!(
            (r.width, r.height),
            (Size::Px(_), Size::Percent(_)) | (Size::Percent(_), Size::Px(_))
        );
        if mixed {
            self.err(
                &join(path, "height"),
                "must be the same kind as width (both pixels or both percentages) or \"auto\"",
            );
        }
        if let Some(v) = map.get("fit") {
            r.fit = self.fit(v, &join(path, "fit")).unwrap_or_default();
        }
        r
    }

    fn fit(&mut self, value: &Value, path: &str) -> Option<Fit> {
        const NAMES: [&str; 5] = ["crop", "cover", "bounds", "canvas", "outpaint"];
        match value {
            Value::String(_) => self.enumeration(value, path, &NAMES).map(|i| match i {
                0 => Fit::Crop(CropMode::Center),
                1 => Fit::Cover,
                2 => Fit::Bounds,
                3 => Fit::Canvas,
                _ => Fit::Outpaint {
                    feathering: 15,
                    outpaint_by: None,
                },
            }),
            Value::Object(map) => {
                let i = self.tag(
                    map,
                    path,
                    &NAMES,
                    &["type", "crop", "feathering", "outpaint_by"],
                )?;
                match i {
                    0 => {
                        let m = self.object(value, path, &["type", "crop"], &[])?;
                        let mode = match m.get("crop") {
                            Some(c) => self
                                .enumeration(c, &join(path, "crop"), &["center", "smart"])
                                .map(|i| [CropMode::Center, CropMode::Smart][i])?,
                            None => CropMode::Center,
                        };
                        Some(Fit::Crop(mode))
                    }
                    1..=3 => {
                        self.object(value, path, &["type"], &[])?;
                        Some([Fit::Cover, Fit::Bounds, Fit::Canvas][i - 1].clone())
                    }
                    _ => {
                        let m =
                            self.object(value, path, &["type", "feathering", "outpaint_by"], &[])?;
                        let mut feathering = 15;
                        if let Some(f) = m.get("feathering") {
                            match f.as_str().and_then(parse_feathering) {
                                Some(n) => feathering = n,
                                None => self.err(
                                    &join(path, "feathering"),
                                    "must be a whole percentage without leading zeros, like \"15%\" or \"60%\"",
                                ),
                            }
                        }
                        let mut outpaint_by = None;
                        if let Some(o) = m.get("outpaint_by") {
                            match o.as_str().and_then(parse_outpaint_by) {
                                Some(by) => outpaint_by = Some(by),
                                None => self.err(
                                    &join(path, "outpaint_by"),
                                    "must be one or two values in px or %, like \"10%\", \"5% 15%\", \"1024px 512px\"",
                                ),
                            }
                        }
                        Some(Fit::Outpaint {
                            feathering,
                            outpaint_by,
                        })
                    }
                }
            }
            other => {
                self.err(
                    path,
                    format!(
                        "must be one of {} or an object with \"type\", got {}",
                        quoted(&NAMES),
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn padding(&mut self, value: &Value, path: &str) -> Option<Padding> {
        const WHAT: &str = "must be 1, 2 or 4 space-separated values in % or px, like \"10%\", \"5% 25%\", \"0px 400px 0px 0px\"";
        let Some(s) = value.as_str() else {
            self.err(path, format!("{WHAT}, got {}", type_name(value)));
            return None;
        };
        let Some(p) = parse_padding(s) else {
            self.err(path, format!("{WHAT}, got \"{s}\""));
            return None;
        };
        let pct = |l: Length| if let Length::Percent(x) = l { x } else { 0.0 };
        let sides = [p.top, p.right, p.bottom, p.left];
        if sides.iter().any(|l| pct(*l) > 50.0) {
            self.err(
                path,
                format!("a percentage may not exceed 50% (half the width/height), got \"{s}\""),
            );
            return None;
        }
        if pct(p.top) + pct(p.bottom) >= 100.0 || pct(p.left) + pct(p.right) >= 100.0 {
            self.err(
                path,
                format!(
                    "opposite sides must leave room for the image (sum below 100%), got \"{s}\""
                ),
            );
            return None;
        }
        Some(p)
    }

    fn privacy(&mut self, value: &Value, path: &str) -> Privacy {
        let mut p = Privacy::default();
        if let Some(map) = self.object(value, path, &["blur_car_plate", "identity_crop"], &[]) {
            if let Some(v) = map.get("blur_car_plate") {
                p.blur_car_plate = self
                    .boolean(v, &join(path, "blur_car_plate"))
                    .unwrap_or(false);
            }
            if let Some(v) = map.get("identity_crop") {
                p.identity_crop = self
                    .boolean(v, &join(path, "identity_crop"))
                    .unwrap_or(false);
            }
        }
        p
    }

    fn generative(&mut self, value: &Value, path: &str) -> Generative {
        let mut g = Generative::default();
        let Some(map) = self.object(value, path, &["style_transfer"], &[]) else {
            return g;
        };
        let Some(v) = map.get("style_transfer") else {
            return g;
        };
        let p = join(path, "style_transfer");
        let allowed = [
            "style_reference_image",
            "prompt",
            "depth_strength",
            "denoising_strength",
            "style_strength",
        ];
        let Some(m) = self.object(v, &p, &allowed, &[]) else {
            return g;
        };
        let reference = match m.get("style_reference_image") {
            Some(r) => self
                .string(r, &join(&p, "style_reference_image"), 1, MAX_URI_LEN)
                .map(str::to_owned),
            None => {
                self.err(
                    &join(&p, "style_reference_image"),
                    "required: the URL of the style reference image",
                );
                None
            }
        };
        let prompt = m
            .get("prompt")
            .and_then(|x| self.string(x, &join(&p, "prompt"), 3, 1024))
            .map(str::to_owned);
        let mut strength = |key: &str, default: f64| {
            m.get(key)
                .and_then(|x| self.number_in(x, &join(&p, key), 0.0, 1.0))
                .unwrap_or(default)
        };
        let depth_strength = strength("depth_strength", 1.0);
        let denoising_strength = strength("denoising_strength", 0.75);
        let style_strength = strength("style_strength", 0.75);
        g.style_transfer = reference.map(|style_reference_image| StyleTransfer {
            style_reference_image,
            prompt,
            depth_strength,
            denoising_strength,
            style_strength,
        });
        g
    }

    fn output(&mut self, value: &Value, path: &str) -> OutputOptions {
        let mut out = OutputOptions::default();
        if value.is_string() {
            out.destination = self.uri(value, path);
            return out;
        }
        if !value.is_object() {
            self.err(
                path,
                format!(
                    "must be a destination URI string or an object with format/destination/metadata, got {}",
                    type_name(value)
                ),
            );
            return out;
        }
        let Some(map) = self.object(value, path, &["format", "destination", "metadata"], &[])
        else {
            return out;
        };
        if let Some(v) = map.get("format") {
            if let Some(f) = self.format(v, &join(path, "format")) {
                out.format = f;
            }
        }
        if let Some(v) = map.get("destination") {
            out.destination = self.uri(v, &join(path, "destination"));
        }
        if let Some(v) = map.get("metadata") {
            out.metadata = self.metadata(v, &join(path, "metadata"));
        }
        out
    }

    fn format(&mut self, value: &Value, path: &str) -> Option<FormatOptions> {
        const NAMES: [&str; 5] = ["jpeg", "png", "webp", "avif", "tiff"];
        const FORMATS: [OutputFormat; 5] = [
            OutputFormat::Jpeg,
            OutputFormat::Png,
            OutputFormat::Webp,
            OutputFormat::Avif,
            OutputFormat::Tiff,
        ];
        match value {
            Value::String(_) => self
                .enumeration(value, path, &NAMES)
                .map(|i| FormatOptions::default_for(FORMATS[i])),
            Value::Object(map) => {
                let format = FORMATS[self.tag(
                    map,
                    path,
                    &NAMES,
                    &["type", "quality", "progressive", "compression"],
                )?];
                match format {
                    OutputFormat::Jpeg => {
                        let m =
                            self.object(value, path, &["type", "quality", "progressive"], &[])?;
                        let quality = m
                            .get("quality")
                            .map(|q| self.int_in(q, &join(path, "quality"), 1, 100));
                        let progressive = m
                            .get("progressive")
                            .map(|p| self.boolean(p, &join(path, "progressive")));
                        Some(FormatOptions::Jpeg {
                            quality: quality.flatten().unwrap_or(85) as u8,
                            progressive: progressive.flatten().unwrap_or(true),
                        })
                    }
                    OutputFormat::Png => {
                        let m = self.object(value, path, &["type", "compression"], &[])?;
                        let compression = match m.get("compression") {
                            Some(c) => self
                                .enumeration(
                                    c,
                                    &join(path, "compression"),
                                    &["fast", "best", "optimal"],
                                )
                                .map(|i| {
                                    [
                                        PngCompression::Fast,
                                        PngCompression::Best,
                                        PngCompression::Optimal,
                                    ][i]
                                })?,
                            None => PngCompression::Optimal,
                        };
                        Some(FormatOptions::Png { compression })
                    }
                    _ => {
                        let m = self.object(value, path, &["type", "compression"], &[])?;
                        let default_quality = if format == OutputFormat::Avif { 50 } else { 75 };
                        let compression = match m.get("compression") {
                            Some(c) => {
                                self.compression(c, &join(path, "compression"), default_quality)?
                            }
                            None => match FormatOptions::default_for(format) {
                                FormatOptions::Webp { compression }
                                | FormatOptions::Avif { compression }
                                | FormatOptions::Tiff { compression } => compression,
                                _ => Compression::Lossless,
                            },
                        };
                        Some(match format {
                            OutputFormat::Webp => FormatOptions::Webp { compression },
                            OutputFormat::Avif => FormatOptions::Avif { compression },
                            _ => FormatOptions::Tiff { compression },
                        })
                    }
                }
            }
            other => {
                self.err(
                    path,
                    format!(
                        "must be one of {} or an object with \"type\", got {}",
                        quoted(&NAMES),
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn compression(
        &mut self,
        value: &Value,
        path: &str,
        default_quality: u8,
    ) -> Option<Compression> {
        const NAMES: [&str; 2] = ["lossy", "lossless"];
        match value {
            Value::String(_) => self.enumeration(value, path, &NAMES).map(|i| {
                if i == 0 {
                    Compression::Lossy {
                        quality: default_quality,
                    }
                } else {
                    Compression::Lossless
                }
            }),
            Value::Object(map) => {
                if self.tag(map, path, &NAMES, &["type", "quality"])? == 0 {
                    let m = self.object(value, path, &["type", "quality"], &[])?;
                    let quality = match m.get("quality") {
                        Some(q) => self.int_in(q, &join(path, "quality"), 1, 100)? as u8,
                        None => default_quality,
                    };
                    Some(Compression::Lossy { quality })
                } else {
                    self.object(value, path, &["type"], &[])?;
                    Some(Compression::Lossless)
                }
            }
            other => {
                self.err(
                    path,
                    format!(
                        "must be \"lossy\", \"lossless\", {{\"type\":\"lossy\",\"quality\":1..100}} or {{\"type\":\"lossless\"}}, got {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn metadata(&mut self, value: &Value, path: &str) -> Option<Metadata> {
        let map = self.object(value, path, &["dpi", "color_space"], &[])?;
        let mut m = Metadata::default();
        if let Some(d) = map.get("dpi") {
            m.dpi = self
                .int_in(d, &join(path, "dpi"), 1, 65535)
                .and_then(|n| u32::try_from(n).ok());
        }
        if let Some(c) = map.get("color_space") {
            let p = join(path, "color_space");
            const SPACES: [&str; 2] = ["RGB", "CMYK"];
            const PROFILES: [&str; 4] = [
                "ISO_Coated",
                "ISO_Uncoated",
                "USWeb_Coated",
                "USWeb_Uncoated",
            ];
            let profile_of = |i: usize| {
                [
                    CmykProfile::IsoCoated,
                    CmykProfile::IsoUncoated,
                    CmykProfile::UswebCoated,
                    CmykProfile::UswebUncoated,
                ][i]
            };
            m.color_space = match c {
                Value::String(_) => self.enumeration(c, &p, &SPACES).map(|i| {
                    if i == 0 {
                        ColorSpace::Rgb
                    } else {
                        ColorSpace::Cmyk(CmykProfile::UswebCoated)
                    }
                }),
                Value::Object(cm) => match cm.get("type") {
                    None => {
                        self.err(&join(&p, "type"), "required: \"RGB\" or \"CMYK\"");
                        None
                    }
                    Some(t) => match self.enumeration(t, &join(&p, "type"), &SPACES) {
                        Some(0) => self.object(c, &p, &["type"], &[]).map(|_| ColorSpace::Rgb),
                        Some(_) => {
                            let cm = self.object(c, &p, &["type", "color_profile"], &[]);
                            match cm.and_then(|cm| cm.get("color_profile")) {
                                Some(pr) => self
                                    .enumeration(pr, &join(&p, "color_profile"), &PROFILES)
                                    .map(|i| ColorSpace::Cmyk(profile_of(i))),
                                None => Some(ColorSpace::Cmyk(CmykProfile::UswebCoated)),
                            }
                        }
                        None => None,
                    },
                },
                other => {
                    self.err(
                        &p,
                        format!(
                            "must be \"RGB\", \"CMYK\" or an object with \"type\", got {}",
                            type_name(other)
                        ),
                    );
                    None
                }
            };
        }
        Some(m)
    }
}

/// Checks the URI rules for `input` and `output.destination` (length is checked by the caller).
fn check_uri(s: &str) -> Result<(), String> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_owned());
    }
    let lower = s.to_ascii_lowercase();
    if let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() {
            return Err(format!(
                "must be an http(s):// URL with a host, got \"{s}\""
            ));
        }
        return Ok(());
    }
    if let Some(rest) = s.strip_prefix("storage://") {
        let mut parts = rest.splitn(2, '/');
        let name = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        if name.is_empty() || path.is_empty() {
            return Err(format!(
                "must be storage://<storage>/<path> with both parts non-empty, got \"{s}\""
            ));
        }
        return Ok(());
    }
    Err(format!(
        "must start with http://, https:// or storage://<storage>/, got \"{s}\""
    ))
}

/// `#rgb` / `#rrggbb` → RGB.
fn parse_hex_color(s: &str) -> Option<(u8, u8, u8)> {
    let hex = s.strip_prefix('#')?;
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        6 => Some((
            u8::from_str_radix(&hex[0..2], 16).ok()?,
            u8::from_str_radix(&hex[2..4], 16).ok()?,
            u8::from_str_radix(&hex[4..6], 16).ok()?,
        )),
        3 => {
            let d = |i: usize| u8::from_str_radix(&hex[i..=i], 16).ok().map(|v| v * 17);
            Some((d(0)?, d(1)?, d(2)?))
        }
        _ => None,
    }
}

/// A non-negative decimal number: digits with an optional fraction.
fn parse_decimal(s: &str) -> Option<f64> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// `"200%"` → 200.0.
fn parse_percent(s: &str) -> Option<f64> {
    parse_decimal(s.strip_suffix('%')?)
}

/// `"30px"` or `"10%"`.
fn parse_length(s: &str) -> Option<Length> {
    if let Some(px) = s.strip_suffix("px") {
        if px.is_empty() || !px.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return px.parse::<u32>().ok().map(Length::Px);
    }
    parse_percent(s).map(Length::Percent)
}

/// Feathering pattern `^[1-9][0-9]+[%]$|^[0-9][%]$`.
fn parse_feathering(s: &str) -> Option<u32> {
    let digits = s.strip_suffix('%')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

fn parse_outpaint_by(s: &str) -> Option<OutpaintBy> {
    let values: Vec<Length> = s.split(' ').map(parse_length).collect::<Option<_>>()?;
    match values.as_slice() {
        [both] => Some(OutpaintBy {
            width: *both,
            height: *both,
        }),
        [w, h] => Some(OutpaintBy {
            width: *w,
            height: *h,
        }),
        _ => None,
    }
}

fn parse_padding(s: &str) -> Option<Padding> {
    let values: Vec<Length> = s.split(' ').map(parse_length).collect::<Option<_>>()?;
    match values.as_slice() {
        [all] => Some(Padding {
            top: *all,
            right: *all,
            bottom: *all,
            left: *all,
        }),
        [vertical, horizontal] => Some(Padding {
            top: *vertical,
            right: *horizontal,
            bottom: *vertical,
            left: *horizontal,
        }),
        [top, right, bottom, left] => Some(Padding {
            top: *top,
            right: *right,
            bottom: *bottom,
            left: *left,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_colors_parse() {
        assert_eq!(parse_hex_color("#ffffff"), Some((255, 255, 255)));
        assert_eq!(parse_hex_color("#F00"), Some((255, 0, 0)));
        assert_eq!(parse_hex_color("ffffff"), None);
        assert_eq!(parse_hex_color("#fffff"), None);
        assert_eq!(parse_hex_color("#ggg"), None);
    }

    #[test]
    fn lengths_parse() {
        assert_eq!(parse_length("30px"), Some(Length::Px(30)));
        assert_eq!(parse_length("12.5%"), Some(Length::Percent(12.5)));
        assert_eq!(parse_length("px"), None);
        assert_eq!(parse_length("-1px"), None);
        assert_eq!(parse_length("1.%"), None);
        assert_eq!(parse_feathering("15%"), Some(15));
        assert_eq!(parse_feathering("05%"), None);
        assert_eq!(parse_feathering("0%"), Some(0));
    }
}
