//! Output file names: a name given in the manifest (a safe relative path: not absolute, no
//! `..`, no hidden or unsafe characters; its extension kept, added or checked against the output
//! format), or the name derived from the input (its stem plus the format's extension).
//!
//! What the outbox can hold (links, name lengths) is `manifest::outbox`'s to check.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::claid::request::OutputFormat;
use crate::manifest::Input;
use crate::manifest::problems::Collector;

/// Checks a user-given output path and adds or checks the extension.
pub fn check_output_name(
    name: &str,
    format: OutputFormat,
    path: &str,
    problems: &mut Collector,
) -> Option<PathBuf> {
    match safe_relative(name) {
        Ok(rel) => with_extension(rel, format, path, problems),
        Err(why) => {
            problems.add(path, why);
            None
        }
    }
}

/// The input's file stem plus the output format's extension.
pub fn default_output_name(
    input: &Input,
    format: OutputFormat,
    input_path: &str,
    problems: &mut Collector,
) -> Option<PathBuf> {
    let stem = match input {
        Input::Remote(url) => {
            let after_scheme = url.find("://").map_or(url.as_str(), |i| &url[i + 3..]);
            // A storage key is read as written (`#` and `?` are part of S3 keys); a web
            // URL's query and fragment are not part of its file name.
            let path_part = if url.starts_with("storage://") {
                after_scheme
            } else {
                after_scheme.split(['?', '#']).next().unwrap_or_default()
            };
            let last = path_part
                .split('/')
                .skip(1)
                .filter(|s| !s.is_empty())
                .last()
                .unwrap_or_default();
            stem_of(last)
        }
        Input::Local(file) => file
            .rel
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned(),
    };
    let stem: String = stem
        .chars()
        .map(|c| {
            // (Kept as it was: a name derived from an input is part of its job's key, so
            // replacing more characters would bill again every image already made so.)
            if c.is_control() || "/\\<>:\"|?*".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    let stem = stem.trim_start_matches('.').to_owned();
    if stem.is_empty() {
        problems.add(
            input_path,
            "cannot derive an output name from this input; set `output` for this image".into(),
        );
        return None;
    }
    Some(PathBuf::from(format!("{stem}.{}", format.extension())))
}

/// `photo.large.jpg` → `photo.large`; `photo` → `photo`.
fn stem_of(name: &str) -> String {
    match name.rfind('.') {
        Some(idx) if idx > 0 => name[..idx].to_owned(),
        _ => name.to_owned(),
    }
}

/// A safe relative path: not empty or absolute, no `..`, no hidden or unsafe names.
fn safe_relative(name: &str) -> Result<PathBuf, String> {
    if name.trim().is_empty() {
        return Err("is empty; give a file name like `sku-1.webp` or remove the key".into());
    }
    // A storage destination written where an image's output file name goes: said so (it was
    // refused for "the unsafe character `:`").
    if name.contains("://") {
        return Err(format!(
            "`{name}` is a URI, not a file name: an image's `output` names its file under the manifest's output folder (`sku-1.webp`); to have Claid write into a storage, set the manifest's (or the profile's) `output: {{ destination: storage://NAME/folder/ }}`"
        ));
    }
    if name.starts_with('/')
        || name.starts_with('\\')
        || Path::new(name).is_absolute()
        || (name.len() >= 2 && name.as_bytes()[1] == b':')
    {
        return Err(format!(
            "`{name}` is absolute; give a path relative to the manifest's output folder"
        ));
    }
    if name.contains('\\') {
        return Err(format!("`{name}` contains `\\`; separate folders with `/`"));
    }
    let mut out = PathBuf::new();
    for part in name.split('/') {
        match part {
            "" => {
                return Err(format!(
                    "`{name}` has an empty path segment (`//` or a trailing `/`); give a file name"
                ));
            }
            "." => continue,
            ".." => {
                return Err(format!(
                    "`{name}` contains `..`; outputs must stay inside the manifest's output folder"
                ));
            }
            _ => {}
        }
        if part.starts_with('.') {
            return Err(format!(
                "`{name}` has a hidden name `{part}`; names may not start with `.`"
            ));
        }
        // `z.png ` was written as `z.png .png`, and ` lead.png` kept its space, without a
        // word (inputs with such spaces are refused; acceptance run).
        if part.starts_with(char::is_whitespace) || part.ends_with(char::is_whitespace) {
            return Err(format!(
                "`{name}` has a name `{part}` that starts or ends with a space; remove it (names in the outbox are easy to get wrong so)"
            ));
        }
        if let Some(bad) = part
            .chars()
            .find(|c| c.is_control() || crate::text::is_unsafe_char(*c) || "<>:\"|?*".contains(*c))
        {
            let shown = if bad.is_control() {
                format!("U+{:04X} (a control character)", u32::from(bad))
            } else if crate::text::is_unsafe_char(bad) {
                // A bidirectional override shows the name reversed (`\u{202e}gpj.exe` reads
                // as `exe.jpg`); a line separator breaks the line it is printed on.
                format!(
                    "U+{:04X} (a character that changes how the name is shown)",
                    u32::from(bad)
                )
            } else {
                format!("`{bad}`")
            };
            return Err(format!(
                "`{}` contains the unsafe character {shown}; use letters, digits, `-`, `_` and `.`",
                name.escape_debug()
            ));
        }
        out.push(part);
    }
    if out.components().next().is_none()
        || out.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "`{name}` is not a file name; give one like `sku-1.webp`"
        ));
    }
    Ok(out)
}

/// Keeps a matching extension, adds a missing one, refuses a different image extension.
fn with_extension(
    rel: PathBuf,
    format: OutputFormat,
    path: &str,
    problems: &mut Collector,
) -> Option<PathBuf> {
    let ext = rel
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let Some(ext) = ext else {
        let mut name = rel.into_os_string();
        name.push(".");
        name.push(format.extension());
        return Some(PathBuf::from(name));
    };
    let matches = match ext.as_str() {
        "jpg" | "jpeg" => Some(format == OutputFormat::Jpeg),
        "png" => Some(format == OutputFormat::Png),
        "webp" => Some(format == OutputFormat::Webp),
        "avif" => Some(format == OutputFormat::Avif),
        "tif" | "tiff" => Some(format == OutputFormat::Tiff),
        "gif" | "bmp" | "heic" | "heif" | "jxl" => Some(false),
        _ => None,
    };
    match matches {
        Some(true) => Some(rel),
        Some(false) => {
            let stem = rel.with_extension("");
            problems.add(
                path,
                format!(
                    "`{}` ends in .{ext} but the output format is {}; name it `{}.{}` or set `output.format`",
                    rel.display(),
                    format.extension(),
                    stem.display(),
                    format.extension()
                ),
            );
            None
        }
        None => {
            let mut name = rel.into_os_string();
            name.push(".");
            name.push(format.extension());
            Some(PathBuf::from(name))
        }
    }
}

/// The output format the merged output options ask for (`jpeg` when unset).
///
/// Read from the body itself so the default file name follows exactly what is sent.
pub fn output_format(output: Option<&Value>) -> OutputFormat {
    let format = output.and_then(|o| o.get("format"));
    let name = match format {
        Some(Value::String(name)) => Some(name.as_str()),
        Some(Value::Object(fields)) => fields.get("type").and_then(Value::as_str),
        _ => None,
    };
    match name.map(str::to_ascii_lowercase).as_deref() {
        Some("png") => OutputFormat::Png,
        Some("webp") => OutputFormat::Webp,
        Some("avif") => OutputFormat::Avif,
        Some("tiff") => OutputFormat::Tiff,
        _ => OutputFormat::Jpeg,
    }
}
