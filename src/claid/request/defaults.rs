//! The documented defaults of an edit request's fields (the OpenAPI schema's `default`s), and
//! [`same_request`]: whether a request Claid echoes (in a result or a webhook) is the one the
//! daemon sent, when Claid writes it as its model holds it, with the fields the daemon left
//! out filled in with their defaults (`"restorations": {"polish": false}`, `"fit": "crop"`), or
//! `null`, or a shorthand in its object form (`"format": "png"` as `{"type": "png",
//! "compression": "optimal"}`).
//!
//! Only a field whose value is its documented default (or `null`) may be present on one side
//! and absent on the other: a field with any other value is another request (another job's,
//! with the same edit and more), never taken for this one.

use serde_json::Value;

/// The schema's default of the field at `path` (dotted keys from the request's root; the
/// fields of a typed object form, such as a format's options, under `<path>.<type>.`).
fn default_at(path: &str) -> Option<Value> {
    let text = match path {
        "output" => r#"{"format":"jpeg"}"#,
        "output.format" => r#""jpeg""#,
        "output.format.jpeg.quality" => "85",
        "output.format.jpeg.progressive" => "true",
        "output.format.png.compression" => r#""optimal""#,
        "output.format.webp.compression" => r#"{"type":"lossy","quality":75}"#,
        "output.format.webp.compression.lossy.quality" => "75",
        "output.format.avif.compression" => r#"{"type":"lossy","quality":50}"#,
        "output.format.avif.compression.lossy.quality" => "50",
        "output.format.tiff.compression" => r#"{"type":"lossless"}"#,
        "output.format.tiff.compression.lossy.quality" => "75",
        "operations.restorations" => r#"{"polish":false}"#,
        "operations.restorations.polish" => "false",
        "operations.adjustments.hdr"
        | "operations.adjustments.exposure"
        | "operations.adjustments.saturation"
        | "operations.adjustments.contrast"
        | "operations.adjustments.sharpness" => "0",
        "operations.adjustments.hdr.intensity" => "100",
        "operations.adjustments.hdr.stitching" => "false",
        "operations.background" => r#"{"remove":false,"blur":false,"use_original_alpha":false}"#,
        "operations.background.remove"
        | "operations.background.blur"
        | "operations.background.use_original_alpha"
        | "operations.background.remove.clipping" => "false",
        "operations.background.blur.type" => r#""regular""#,
        "operations.background.blur.level" => r#""medium""#,
        "operations.resizing" => r#"{"width":"auto","height":"auto","fit":"crop"}"#,
        "operations.resizing.width" | "operations.resizing.height" => r#""auto""#,
        "operations.resizing.fit" => r#""crop""#,
        "operations.resizing.fit.crop.crop" => r#""center""#,
        "operations.resizing.fit.outpaint.feathering" => r#""15%""#,
        "operations.privacy" => r#"{"blur_car_plate":false,"identity_crop":false}"#,
        "operations.privacy.blur_car_plate" | "operations.privacy.identity_crop" => "false",
        "operations.generative.style_transfer.depth_strength" => "1",
        "operations.generative.style_transfer.denoising_strength"
        | "operations.generative.style_transfer.style_strength" => "0.75",
        "input.recursive" => "false",
        _ => return None,
    };
    serde_json::from_str(text).ok()
}

/// `request` as a server that holds it in its model may echo it: every group of operations and
/// every field with a documented default filled in, the other fields `null`, and the format
/// and fit shorthands in their object forms. What [`same_request`] takes for the request sent
/// (the emulator's `echo_defaults`).
pub fn with_defaults(request: &Value) -> Value {
    let mut request = request.clone();
    let Some(root) = request.as_object_mut() else {
        return request;
    };
    let operations = root
        .entry("operations")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Some(operations) = operations.as_object_mut() {
        for (group, fields) in [
            ("restorations", &["decompress", "upscale", "polish"][..]),
            (
                "adjustments",
                &["hdr", "exposure", "saturation", "contrast", "sharpness"][..],
            ),
            (
                "background",
                &["remove", "color", "blur", "use_original_alpha"][..],
            ),
            ("resizing", &["width", "height", "fit"][..]),
            ("privacy", &["blur_car_plate", "identity_crop"][..]),
        ] {
            let path = format!("operations.{group}");
            let value = operations
                .entry(group)
                .or_insert_with(|| default_at(&path).unwrap_or(Value::Null));
            if value.is_null() && group == "adjustments" {
                *value = Value::Object(serde_json::Map::new());
            }
            if let Some(value) = value.as_object_mut() {
                for field in fields {
                    value
                        .entry(*field)
                        .or_insert_with(|| default_at(&join(&path, field)).unwrap_or(Value::Null));
                }
            }
        }
        for group in ["padding", "generative"] {
            operations.entry(group).or_insert(Value::Null);
        }
        if let Some(fit) = operations
            .get_mut("resizing")
            .and_then(|resizing| resizing.get_mut("fit"))
            && fit == "crop"
        {
            *fit = serde_json::json!({"type": "crop", "crop": "center"});
        }
    }
    let output = root
        .entry("output")
        .or_insert_with(|| default_at("output").unwrap_or(Value::Null));
    if let Some(output) = output.as_object_mut() {
        let format = output
            .entry("format")
            .or_insert_with(|| Value::String("jpeg".to_owned()));
        if let Value::String(name) = format.clone() {
            let mut form = serde_json::Map::new();
            form.insert("type".to_owned(), Value::String(name.clone()));
            let options: &[&str] = match name.as_str() {
                "jpeg" => &["quality", "progressive"],
                _ => &["compression"],
            };
            for option in options {
                if let Some(default) = default_at(&format!("output.format.{name}.{option}")) {
                    form.insert((*option).to_owned(), default);
                }
            }
            *format = Value::Object(form);
        }
        for field in ["destination", "metadata"] {
            output.entry(field).or_insert(Value::Null);
        }
    }
    request
}

/// Objects that have no default of their own but are nothing when each of their fields is
/// its default: `operations` (no operation) and `adjustments` (every value 0).
const NOTHING_WHEN_DEFAULT: &[&str] = &["operations", "operations.adjustments"];

/// Whether `echo` is the request `sent`: the same fields with the same values, recursively
/// (lists item by item), except that a field present on one side only must hold its default
/// (or `null`), and a shorthand string may stand for its typed object form with default
/// options. Both are taken as they are: normalise numbers and input order first.
pub fn same_request(sent: &Value, echo: &Value) -> bool {
    same_at("", sent, echo)
}

fn same_at(path: &str, sent: &Value, echo: &Value) -> bool {
    match (sent, echo) {
        (Value::Object(sent), Value::Object(echo)) => {
            let typed = typed_path(path, sent.get("type").or_else(|| echo.get("type")));
            sent.iter().all(|(key, value)| {
                let at = join(&typed, key);
                echo.get(key).map_or_else(
                    || is_default(&at, value),
                    |echoed| same_at(&at, value, echoed),
                )
            }) && echo
                .iter()
                .all(|(key, value)| sent.contains_key(key) || is_default(&join(&typed, key), value))
        }
        (Value::Array(sent), Value::Array(echo)) => {
            sent.len() == echo.len() && sent.iter().zip(echo).all(|(s, e)| same_at(path, s, e))
        }
        (Value::String(name), Value::Object(form)) | (Value::Object(form), Value::String(name)) => {
            discriminated(path) && shorthand_of(path, name, form)
        }
        // `hdr: 40` is `{"intensity": 40}` with `stitching` at its default.
        (Value::Number(n), Value::Object(form)) | (Value::Object(form), Value::Number(n))
            if path == "operations.adjustments.hdr" =>
        {
            let intensity = form
                .get("intensity")
                .cloned()
                .or_else(|| default_at("operations.adjustments.hdr.intensity"));
            intensity.as_ref().and_then(Value::as_f64) == n.as_f64()
                && form
                    .iter()
                    .all(|(key, value)| key == "intensity" || is_default(&join(path, key), value))
        }
        // `remove: true` is the removal with its default options (`{"clipping": false}`).
        (Value::Bool(true), Value::Object(form)) | (Value::Object(form), Value::Bool(true)) => {
            TRUE_IS_DEFAULT_FORM.contains(&path)
                && form
                    .iter()
                    .all(|(key, value)| is_default(&join(path, key), value))
        }
        _ => sent == echo,
    }
}

/// Whether `form` is the typed object form of the shorthand `name` at `path` with nothing
/// but default options: `{"type": "png", "compression": "optimal"}` for `"png"`.
fn shorthand_of(path: &str, name: &str, form: &serde_json::Map<String, Value>) -> bool {
    if form.get("type").and_then(Value::as_str) != Some(name) {
        return false;
    }
    let typed = typed_path(path, form.get("type"));
    form.iter()
        .all(|(key, value)| key == "type" || is_default(&join(&typed, key), value))
}

/// Whether `value` at `path` is what leaving the field out means.
fn is_default(path: &str, value: &Value) -> bool {
    if value.is_null() {
        return true;
    }
    match default_at(path) {
        Some(default) => {
            *value == default
                || (!default.is_boolean()
                    && !default.is_number()
                    && (value.is_object() || default.is_object())
                    && same_at(path, &default, value))
        }
        None => {
            NOTHING_WHEN_DEFAULT.contains(&path)
                && value.as_object().is_some_and(|fields| {
                    fields
                        .iter()
                        .all(|(key, value)| is_default(&join(path, key), value))
                })
        }
    }
}

/// Fields whose `true` stands for their object form with default options.
const TRUE_IS_DEFAULT_FORM: &[&str] =
    &["operations.background.remove", "operations.background.blur"];

/// Whether the value at `path` is a shorthand string or an object told apart by its `type`
/// (a format, a fit, a compression); elsewhere `type` is an ordinary field (a blur's).
fn discriminated(path: &str) -> bool {
    path == "output.format"
        || path == "operations.resizing.fit"
        || (path.starts_with("output.format.") && path.ends_with(".compression"))
}

/// `path.<type>` for the fields of a typed object form (`output.format.png`), else `path`.
fn typed_path(path: &str, kind: Option<&Value>) -> String {
    match kind.and_then(Value::as_str) {
        Some(kind) if discriminated(path) => format!("{path}.{kind}"),
        _ => path.to_owned(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What a model-backed server writes for the fields not sent is the request sent: its
    /// defaults, `null`, or a shorthand's object form with default options.
    #[test]
    fn an_echo_with_the_schemas_defaults_is_the_request_sent() {
        let sent = json!({"input": "https://x/a.jpg",
            "operations": {"resizing": {"width": 400}, "background": {"remove": true}},
            "output": {"format": "png"}});
        for echo in [
            json!({"input": "https://x/a.jpg",
                "operations": {"restorations": {"decompress": null, "upscale": null, "polish": false},
                    "adjustments": {"hdr": 0, "exposure": 0, "saturation": 0, "contrast": 0, "sharpness": 0},
                    "background": {"remove": {"clipping": false, "selective": null, "category": null},
                        "color": null, "blur": false, "use_original_alpha": false},
                    "resizing": {"width": 400, "height": "auto", "fit": {"type": "crop", "crop": "center"}},
                    "padding": null,
                    "privacy": {"blur_car_plate": false, "identity_crop": false},
                    "generative": null},
                "output": {"format": {"type": "png", "compression": "optimal"}, "destination": null, "metadata": null}}),
            json!({"input": "https://x/a.jpg",
                "operations": {"resizing": {"width": 400, "fit": "crop"}, "background": {"remove": {}}},
                "output": {"format": "png"}}),
        ] {
            assert!(same_request(&sent, &echo), "{echo}");
        }
        // A field sent with its default and left out of the echo.
        let sent_default = json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400, "fit": "crop"}}, "output": {"format": "jpeg"}});
        let echo = json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400}}});
        assert!(same_request(&sent_default, &echo));
    }

    /// What the emulator echoes with `echo_defaults` is the request sent, for requests of
    /// every shape the daemon sends.
    #[test]
    fn a_request_with_its_defaults_filled_in_is_the_request_sent() {
        for sent in [
            json!({"input": "https://x/a.jpg", "operations": {}}),
            json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400}, "adjustments": {"hdr": 20}}, "output": {"format": "webp"}}),
            json!({"input": ["https://x/a.jpg", "https://x/b.jpg"], "operations": {"background": {"remove": true, "color": "#ffffff"}, "resizing": {"width": 1000, "height": 1000, "fit": "canvas"}}, "output": {"format": {"type": "jpeg", "quality": 90}}}),
            json!({"input": "https://x/a.jpg", "operations": {"restorations": {"upscale": "smart_enhance"}}, "output": {"format": "png", "destination": "storage://s/out/"}}),
        ] {
            let echo = with_defaults(&sent);
            assert_ne!(echo, sent);
            assert!(same_request(&sent, &echo), "{sent}\n{echo}");
        }
    }

    /// A field that is not its default is another request, on either side and in any form.
    #[test]
    fn a_field_off_its_default_is_another_request() {
        let sent = json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400}}});
        for echo in [
            json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400}}, "output": {"format": "png"}}),
            json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400, "fit": "bounds"}}}),
            json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400, "fit": {"type": "crop", "crop": "smart"}}}}),
            json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400}, "background": {"remove": true}}}),
            json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400}, "background": {"remove": {}}}}),
            json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400}, "adjustments": {"hdr": {"intensity": 100}}}}),
            json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400}, "restorations": {"upscale": "faces"}}}),
            json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400}, "padding": "10%"}}),
            json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400}, "unknown": false}}),
            json!({"input": "https://x/b.jpg", "operations": {"resizing": {"width": 400}}}),
            json!({"input": "https://x/a.jpg", "operations": {"resizing": {"width": 400}}, "output": {"format": {"type": "jpeg", "quality": 90}}}),
        ] {
            assert!(!same_request(&sent, &echo), "{echo}");
            assert!(!same_request(&echo, &sent), "{echo}");
        }
        // `hdr` as an intensity, or as its object form.
        let hdr = |value: Value| json!({"input": "https://x/a.jpg", "operations": {"adjustments": {"hdr": value}}});
        assert!(same_request(
            &hdr(json!(40)),
            &hdr(json!({"intensity": 40, "stitching": false}))
        ));
        assert!(same_request(
            &hdr(json!({"intensity": 40})),
            &hdr(json!(40))
        ));
        assert!(same_request(
            &hdr(json!(100)),
            &hdr(json!({"stitching": false}))
        ));
        assert!(!same_request(
            &hdr(json!(40)),
            &hdr(json!({"intensity": 40, "stitching": true}))
        ));
        assert!(!same_request(
            &hdr(json!(40)),
            &hdr(json!({"intensity": 50}))
        ));
        assert!(!same_request(
            &hdr(json!(40)),
            &hdr(json!({"stitching": false}))
        ));
        let blur =
            json!({"input": "https://x/a.jpg", "operations": {"background": {"blur": true}}});
        let blur_form = json!({"input": "https://x/a.jpg", "operations": {"background": {"blur": {"type": "regular", "level": "medium"}}}});
        let blur_lens = json!({"input": "https://x/a.jpg", "operations": {"background": {"blur": {"type": "lens"}}}});
        assert!(same_request(&blur, &blur_form));
        assert!(!same_request(&blur, &blur_lens));
        let png =
            json!({"input": "https://x/a.jpg", "operations": {}, "output": {"format": "png"}});
        let webp = json!({"input": "https://x/a.jpg", "operations": {}, "output": {"format": {"type": "webp", "compression": {"type": "lossy", "quality": 75}}}});
        assert!(!same_request(&png, &webp));
    }
}
