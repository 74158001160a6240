//! The rules for `output`: destination, format (with its per-format options and
//! compression) and metadata, per docs/claid-api.md

use serde_json::Value;

use crate::claid::request::walk::{Validator, join, quoted, type_name};
use crate::claid::request::{
    CmykProfile, ColorSpace, Compression, FormatOptions, Metadata, OutputFormat, OutputOptions,
    PngCompression,
};

impl Validator {
    pub(super) fn output(&mut self, value: &Value, path: &str) -> OutputOptions {
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
