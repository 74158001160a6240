//! A manifest's (or recipe's) bytes turned into data, or the one problem that stops it: empty,
//! binary or not UTF-8, not valid YAML or JSON, nested deeper than `yaml::MAX_DEPTH`, or with
//! more images than `limits.max_images` (refused as the list streams in).

use crate::config::Limits;
use crate::manifest::Problem;
use crate::manifest::doc::{self, Doc};
use crate::yaml::value::{Bounds, LongList, Syntax};
use crate::yaml::{self, ParseError, ParseErrorKind};

/// Most entries of a list or mapping in a manifest other than `images`: nothing else needs
/// more than a handful, and a list of millions would cost gigabytes before it is refused.
pub const MAX_OTHER_ENTRIES: usize = 10_000;

/// The bounds a manifest or recipe is parsed within: [`yaml::MAX_DEPTH`] levels,
/// `limits.max_images` entries in `images`, [`MAX_OTHER_ENTRIES`] in any other list or mapping.
pub fn bounds(limits: &Limits) -> Bounds {
    Bounds {
        max_depth: yaml::MAX_DEPTH,
        max_entries: MAX_OTHER_ENTRIES,
        long_list: Some(LongList {
            key: "images",
            max_entries: limits.max_images,
        }),
    }
}

/// Parses a manifest's bytes; its text (for line lookups) and data, or the problem.
pub fn parse_manifest<'b>(
    bytes: &'b [u8],
    syntax: Syntax,
    limits: &Limits,
) -> Result<(&'b str, Doc), Problem> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Problem {
            line: None,
            message: "the manifest is empty; it needs an `images` list (the README shows one under \"How it works\")".into(),
        });
    }
    let text = utf8_text(bytes, "manifest", "YAML or JSON")?;
    let doc = doc::parse(text, syntax, &bounds(limits)).map_err(|err| {
        let invalid = matches!(err.kind, ParseErrorKind::Invalid);
        let mut told = problem(err, syntax, text);
        // A YAML manifest saved under `.json` (most often beside its `.yaml` twin): a mapping
        // (plain text, an HTML page, is a YAML scalar, and no manifest under any name).
        if invalid
            && syntax == Syntax::Json
            && doc::parse(text, Syntax::Yaml, &bounds(limits))
                .is_ok_and(|doc| doc.root.is_object() || doc.images.is_some())
        {
            told.message.push_str(
                "; the file holds YAML, not JSON: give it the extension `.yaml` (the extension decides how a manifest is read)",
            );
        }
        told
    })?;
    Ok((text, doc))
}

/// The problem a parse error of `text` is: a syntax or bound error, or too many entries (worded
/// for `images` and `limits.max_images`). A syntax error the parser gives no line for, when
/// `text` holds a control character neither YAML nor JSON allows (what such an error most
/// often is: "control characters are not allowed"), is placed on that character's line.
pub fn problem(err: ParseError, syntax: Syntax, text: &str) -> Problem {
    if err.line.is_none()
        && matches!(err.kind, ParseErrorKind::Invalid)
        && let Some((line, column, c)) = first_control_character(text)
    {
        let what = match syntax {
            Syntax::Yaml => "YAML",
            Syntax::Json => "JSON",
        };
        return Problem {
            line: Some(line),
            message: format!(
                "not valid {what}: column {column} holds the control character U+{:04X}, which {what} does not allow ({}); delete it (it often comes from a copy and paste)",
                u32::from(c),
                err.message
            ),
        };
    }
    let mut line = err.line;
    let message = match err.kind {
        ParseErrorKind::Invalid => {
            let what = match syntax {
                Syntax::Yaml => "YAML",
                Syntax::Json => "JSON",
            };
            format!("not valid {what}: {}", err.message)
        }
        ParseErrorKind::TooManyEntries {
            within,
            is_top_value,
            entry_line,
            max,
        } => {
            let at = entry_line.map_or_else(String::new, |line| {
                format!(" (entry {} is on line {line})", max + 1)
            });
            // Told at the entry past the limit, except for the list of images, told at its
            // key (`images:`, where `limits.max_images` applies): the start of the document
            // or of the list said nothing of where to look.
            if !(within == "images" && is_top_value) && entry_line.is_some() {
                line = entry_line;
            }
            match (within.as_str(), is_top_value) {
                ("images", true) => format!(
                    "images: more than {max} images, over the limit of {max} (limits.max_images){at}; split the manifest into manifests of at most {max} images, or raise limits.max_images in the config"
                ),
                ("", _) => format!(
                    "the document has more than {max} entries at its top{at}; a manifest has only `profile`, `operations`, `output` and `images`"
                ),
                // Inside one image (its `operations`, `output` or input list), not the list of
                // images: told as such, so the fix is not looked for in `limits.max_images`.
                ("images", false) => format!(
                    "images: a list or mapping inside an image (its `operations` or `output`) has more than {max} entries{at}; no image needs that many: check the image around that line"
                ),
                (key, _) => format!(
                    "{key}: a list or mapping here has more than {max} entries{at}; only `images` may be that long: check what is under `{key}`"
                ),
            }
        }
    };
    Problem {
        line,
        message: crate::text::unsafe_escaped(message),
    }
}

/// The line and column (1-based, in characters) of the first control character in `text`
/// other than tab, line feed and carriage return (C0 and DEL, and C1 but NEL: what YAML's
/// printable set leaves out, and JSON allows only as escapes).
fn first_control_character(text: &str) -> Option<(usize, usize, char)> {
    for (n, line) in text.split('\n').enumerate() {
        for (column, c) in line.chars().enumerate() {
            let allowed = matches!(c, '\t' | '\r' | '\u{85}');
            if c.is_control() && !allowed {
                return Some((n + 1, column + 1, c));
            }
        }
    }
    None
}

/// The text of a manifest or recipe (`what`), or the problem: binary (NUL bytes) or not UTF-8,
/// with the line of the first bad byte.
pub fn utf8_text<'b>(bytes: &'b [u8], what: &str, formats: &str) -> Result<&'b str, Problem> {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => Ok(text),
        Ok(_) => Err(Problem {
            line: None,
            message: format!(
                "the {what} contains NUL bytes: it is binary, not {formats} text; save it as text"
            ),
        }),
        Err(err) => {
            let line = bytes[..err.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            Err(Problem {
                line: Some(line),
                message: format!(
                    "the {what} is not UTF-8 text (invalid byte at offset {}); save it as UTF-8 {formats}",
                    err.valid_up_to()
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_list_inside_an_image_is_told_apart_from_too_many_images() {
        let limits = Limits::default();
        let items = vec!["1"; MAX_OTHER_ENTRIES + 1].join(", ");
        let text =
            format!("images:\n  - input: a.jpg\n    operations:\n      adjustments: [{items}]\n");
        let problem = parse_manifest(text.as_bytes(), Syntax::Yaml, &limits).unwrap_err();
        assert!(
            problem.message.contains("inside an image")
                && !problem.message.contains("limits.max_images"),
            "{}",
            problem.message
        );
        assert_eq!(problem.line, Some(4), "{}", problem.message);
    }

    #[test]
    fn yaml_saved_as_json_is_told_to_take_the_yaml_extension() {
        let limits = Limits::default();
        let yaml = "images:\n  - input: https://example.com/a.png\n";
        let problem = parse_manifest(yaml.as_bytes(), Syntax::Json, &limits).unwrap_err();
        assert!(
            problem.message.starts_with("not valid JSON")
                && problem.message.contains("holds YAML, not JSON")
                && problem.message.contains("`.yaml`"),
            "{}",
            problem.message
        );
        // Broken JSON that is no YAML either gets no such hint, nor text that YAML reads as
        // a scalar (an error page saved as `.json`).
        for text in [
            "{\"images\": [",
            "<html><body>502 Bad Gateway</body></html>",
        ] {
            let broken = parse_manifest(text.as_bytes(), Syntax::Json, &limits).unwrap_err();
            assert!(!broken.message.contains("holds YAML"), "{}", broken.message);
        }
    }
}
