//! The rules for `operations`: restorations, adjustments, background, resizing (sizes and
//! fit), padding, privacy and generative options, per docs/claid-api.md and the decisions in the
//! parent module's doc.

use serde_json::Value;

use crate::claid::request::grammar::{
    parse_feathering, parse_hex_color, parse_outpaint_by, parse_padding, parse_percent,
};
use crate::claid::request::walk::{Validator, join, quoted, type_name};
use crate::claid::request::{
    Adjustments, Background, BackgroundBlur, BackgroundRemove, BlurLevel, BlurType, Category,
    Color, CropMode, Decompress, Fit, Generative, Length, MAX_URI_LEN, Operations, Padding,
    Privacy, Resizing, Restorations, Size, StyleTransfer, Upscale,
};

impl Validator {
    pub(super) fn operations(&mut self, value: &Value, path: &str) -> Operations {
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
}
