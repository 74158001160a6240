//! An image's `input`: a remote URL (`http(s)://`, `storage://`) checked for form, or a local
//! file that must resolve inside the inbox, be a regular file, not be empty, and start like an
//! image Claid accepts (so nothing unusable is uploaded and billed). A local file is read once
//! per manifest: its content hash is part of the job key.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::problems::Collector;
use crate::manifest::validate::Context;
use crate::manifest::{Input, LocalFile};

/// Longest input URL the API accepts (docs/claid-api.md).
const MAX_INPUT_LEN: usize = 4096;

/// Bytes read to tell an image's format by its signature.
pub(crate) const HEAD_LEN: usize = 64;

/// The input formats Claid accepts (docs/claid-api.md), as messages name them.
pub(crate) const ACCEPTED: &str = "BMP, GIF, JPEG, PNG, TIFF, WEBP, AVIF or HEIC";

/// Local files already read in this manifest: their hash, or why they cannot be an input.
#[derive(Default)]
pub struct LocalFiles {
    seen: HashMap<PathBuf, Result<String, Unusable>>,
}

/// Why a readable local file cannot be uploaded.
#[derive(Clone, Debug)]
enum Unusable {
    Empty,
    /// Not an image Claid accepts; says what it looks like instead.
    NotAnImage(String),
    Unreadable(String),
}

/// Classifies and checks one input string; `None` after adding its problem.
pub fn check_input(
    text: &str,
    path: &str,
    ctx: &Context<'_>,
    local: &mut LocalFiles,
    problems: &mut Collector,
) -> Option<Input> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        problems.add(
            path,
            "is empty; give a URL, a storage:// URI or a relative path".into(),
        );
        return None;
    }
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("http://")
        || lower.starts_with("https://")
        || lower.starts_with("storage://")
    {
        // The scheme in lower case (`HTTPS://` is the same URL, and Claid reads only `https`).
        let scheme_end = trimmed.find("://").map_or(0, |i| i + 3);
        let normalized = format!("{}{}", &lower[..scheme_end], &trimmed[scheme_end..]);
        let trimmed = normalized.as_str();
        let input = check_remote(trimmed, path, problems)?;
        if lower.starts_with("storage://") {
            check_storage_key(trimmed, path, ctx, problems)?;
        }
        return Some(rename_storage(input, ctx));
    }
    if let Some(idx) = trimmed.find("://") {
        problems.add(
            path,
            format!(
                "unsupported scheme `{}://`; use http(s)://, storage:// or a path relative to the manifest",
                &trimmed[..idx]
            ),
        );
        return None;
    }
    check_local(trimmed, path, ctx, local, problems)
}

/// The key of a `storage://NAME/key` input, checked as S3 will see it (no empty, `.` or `..`
/// segment, no leading `/`, within 1024 bytes with a configured storage's prefix): Claid
/// refuses such a key, and with it the whole batch the input would go in.
fn check_storage_key(
    url: &str,
    path: &str,
    ctx: &Context<'_>,
    problems: &mut Collector,
) -> Option<()> {
    let (name, key) = crate::storages::split_uri(url).unwrap_or((&url["storage://".len()..], ""));
    // `storage://user:password@NAME/…`: Claid reads no credentials there (it would be sent,
    // refused, and its answer quote the password into the log). Not repeated here.
    if name.contains('@') {
        problems.add(
            path,
            "a storage input names its storage, not credentials: remove the `user:password@` before the storage's name, like `storage://catalog/a.jpg` (the daemon reaches the bucket with `storages.NAME.credentials_file`, Claid with its connector)".to_owned(),
        );
        return None;
    }
    // In a URI `?` and `#` end the path: whether Claid reads them as part of the key is not
    // said, so the object the daemon checks before the submit (the key as written, in a
    // configured storage) could be another than the one Claid reads. Refused, as for an
    // output's key. (A connector the config does not name is passed on as written, unchecked.)
    let configured = super::validate::storage_prefix(ctx.storages, name).is_some();
    if let Some(mark) = key.chars().find(|c| matches!(c, '?' | '#'))
        && configured
    {
        problems.add(
            path,
            format!(
                "`{}` has a `{mark}` in its key, which ends a storage:// URI's path: whether Claid reads it as part of the key is not documented; copy the object to a key without `?` or `#`",
                crate::text::escape(url)
            ),
        );
        return None;
    }
    let prefix = super::validate::storage_prefix(ctx.storages, name).unwrap_or("");
    match crate::objects::check_key_under(prefix, key) {
        Ok(()) => match super::validate::in_staging_area(ctx.storages, url) {
            None => Some(()),
            Some(staging) => {
                problems.add(
                    path,
                    format!(
                        "`{url}` is in the `staging/` folder of the storage `{staging}`, where the daemon stages local inputs (api.staging) and deletes them once their jobs end; name the original object, or copy it out of `staging/` first"
                    ),
                );
                None
            }
        },
        Err(err) => {
            problems.add(
                path,
                format!("`{url}`: {err}; name the object by its key under the storage's prefix"),
            );
            None
        }
    }
}

/// `storage://NAME/…` where NAME is a configured storage whose connector is called otherwise
/// on Claid's side: the URI Claid understands, `storage://CLAID_NAME/…`.
fn rename_storage(input: Input, ctx: &Context<'_>) -> Input {
    let Input::Remote(url) = &input else {
        return input;
    };
    let Some(rest) = url.strip_prefix("storage://") else {
        return input;
    };
    let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
    match ctx.storages.get(name) {
        Some(entry) if entry.claid_name != name => {
            Input::Remote(format!("storage://{}/{path}", entry.claid_name))
        }
        _ => input,
    }
}

fn check_remote(url: &str, path: &str, problems: &mut Collector) -> Option<Input> {
    let rest = &url[url.find("://").map_or(0, |i| i + 3)..];
    if rest.is_empty() || rest.starts_with('/') {
        problems.add(
            path,
            format!(
                "`{url}` has no host or storage name; write it whole, like `https://cdn.example.com/a.jpg` or `storage://my-storage/a.jpg`"
            ),
        );
        return None;
    }
    if url.len() > MAX_INPUT_LEN {
        problems.add(
            path,
            format!(
                "the URL is {} characters; Claid accepts at most {MAX_INPUT_LEN}: host the image under a shorter URL",
                url.len()
            ),
        );
        return None;
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        let fix = if url.starts_with("storage://") {
            // A storage key is read as written (`%20` is three characters of the key), and
            // Claid refuses a key with a space.
            "Claid cannot read an object whose key has a space or a control character: copy the object to a key without them"
        } else {
            "percent-encode them (`%20`)"
        };
        problems.add(
            path,
            format!(
                "`{}` contains spaces or control characters; {fix}",
                // Its password redacted (a space in it was quoted whole in the error file).
                crate::text::escape(&crate::text::redact_credentials(url))
            ),
        );
        return None;
    }
    // A host or port no client can reach (`http://[::1/a.png`, a port above 65535): Claid
    // would be sent it, and a batch it went in refused or billed for nothing.
    if !url.starts_with("storage://")
        && let Err(err) = reqwest::Url::parse(url)
    {
        problems.add(
            path,
            format!(
                "`{}` is not a valid URL ({err}); fix its host and port, like `https://cdn.example.com:8443/a.jpg`",
                crate::text::escape(url)
            ),
        );
        return None;
    }
    Some(Input::Remote(url.to_owned()))
}

fn check_local(
    trimmed: &str,
    path: &str,
    ctx: &Context<'_>,
    local: &mut LocalFiles,
    problems: &mut Collector,
) -> Option<Input> {
    let joined = ctx.manifest_dir.join(trimmed);
    let canonical = match std::fs::canonicalize(&joined) {
        Ok(canonical) => canonical,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            problems.add(
                path,
                format!(
                    "local file `{trimmed}` not found (looked for {}); fix the path, relative to the manifest's folder, or add the file",
                    joined.display()
                ),
            );
            return None;
        }
        Err(err) => {
            problems.add(
                path,
                format!(
                    "local file `{trimmed}` cannot be resolved: {err}; check the path and the permissions of its folders"
                ),
            );
            return None;
        }
    };
    let Ok(rel) = canonical.strip_prefix(&ctx.inbox_canonical) else {
        problems.add(
            path,
            format!(
                "local file `{trimmed}` resolves to {}, outside the inbox; local inputs must stay inside the inbox (no `..` or symlinks out of it)",
                canonical.display()
            ),
        );
        return None;
    };
    let rel = rel.to_owned();
    // A link is never followed, wherever it points (README; one out of the inbox is refused
    // above): the file itself belongs in the inbox (a link inside it was read through, its
    // target uploaded under its own name).
    if std::fs::symlink_metadata(&joined).is_ok_and(|meta| meta.file_type().is_symlink()) {
        problems.add(
            path,
            format!(
                "local file `{trimmed}` is a symbolic link, which the daemon does not follow; put the image itself in the inbox"
            ),
        );
        return None;
    }
    // Nor a link to a folder inside the inbox on the way to it (`imgdir/a.png` with `imgdir`
    // a link to `imgs`: read through, as the watcher never enters such a folder). A link
    // above the inbox (the inbox itself a link to another disk) is not the inbox's.
    // (Only the folders below the manifest's: the manifest itself was found without entering
    // a link. One `lstat` per folder of the path there, none for an input beside it.)
    if let Some(link) = joined
        .ancestors()
        .skip(1)
        .take_while(|folder| *folder != ctx.manifest_dir && folder.starts_with(ctx.manifest_dir))
        .find(|folder| {
            std::fs::symlink_metadata(folder).is_ok_and(|meta| meta.file_type().is_symlink())
                && folder
                    .parent()
                    .and_then(|parent| std::fs::canonicalize(parent).ok())
                    .is_some_and(|parent| parent.starts_with(&ctx.inbox_canonical))
        })
    {
        let shown = link.strip_prefix(ctx.manifest_dir).unwrap_or(link);
        problems.add(
            path,
            format!(
                "local file `{trimmed}` is reached through a symbolic link to a folder (`{}`), which the daemon does not follow; name the folder itself (its real path in the inbox)",
                shown.display()
            ),
        );
        return None;
    }
    match std::fs::metadata(&canonical) {
        // Read whole to be sent (once per image in flight): a 400 MB file in a PNG's clothes
        // took 1.7 GB of memory before Claid refused it.
        Ok(meta) if meta.is_file() && meta.len() > ctx.max_input_bytes => {
            problems.add(
                path,
                format!(
                    "local file `{trimmed}` is {} bytes, over the limit of {} bytes (limits.max_input_bytes); make the image smaller, or raise the limit",
                    meta.len(),
                    ctx.max_input_bytes
                ),
            );
            return None;
        }
        Ok(meta) if meta.is_file() => {}
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            let kind = meta.file_type();
            let what = if kind.is_dir() {
                "a folder"
            } else if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "a device"
            };
            problems.add(
                path,
                format!(
                    "local input `{trimmed}` is not a regular file (it is {what}); name an image file"
                ),
            );
            return None;
        }
        Err(err) => {
            problems.add(
                path,
                format!("local file `{trimmed}` cannot be read: {err}; check its permissions"),
            );
            return None;
        }
    }
    // An image a folder recipe governs is the recipe's: it makes it and moves it away when
    // done, so a manifest's job could not read it afterwards (and both would bill it).
    if !ctx.recipe_image
        && crate::manifest::is_image_name(&canonical)
        && let Some(recipe) = canonical
            .parent()
            .map(|dir| dir.join(crate::manifest::RECIPE_NAME))
            .filter(|recipe| recipe.is_file())
    {
        let recipe = recipe
            .strip_prefix(&ctx.inbox_canonical)
            .unwrap_or(&recipe)
            .display()
            .to_string();
        problems.add(
            path,
            format!(
                "local file `{trimmed}` is in a folder with a recipe ({recipe}), which makes every image dropped there itself and then moves it away: this manifest could not read it, and both would bill it; list images kept in a folder without `.claid.yaml`, or let the recipe make them"
            ),
        );
        return None;
    }
    let read = local
        .seen
        .entry(canonical.clone())
        .or_insert_with(|| read_local(&canonical));
    match read {
        Ok(sha256) => Some(Input::Local(Box::new(LocalFile {
            path: canonical,
            rel,
            sha256: sha256.clone(),
        }))),
        Err(why) => {
            let message = match why {
                Unusable::Empty => format!(
                    "local file `{trimmed}` is empty (0 bytes): it was probably not copied completely; {}",
                    if ctx.recipe_image {
                        "copy the whole image into the folder again"
                    } else {
                        "copy the image again, then drop the manifest again"
                    }
                ),
                Unusable::NotAnImage(what) => format!(
                    "local file `{trimmed}` is not an image Claid accepts: {what}; give a {ACCEPTED} file (convert it, or fix the path)"
                ),
                Unusable::Unreadable(err) => {
                    format!("local file `{trimmed}` cannot be read: {err}; check its permissions")
                }
            };
            problems.add(path, message);
            None
        }
    }
}

/// Hashes a local file, refusing it when empty or not an image Claid accepts.
fn read_local(path: &Path) -> Result<String, Unusable> {
    let unreadable = |err: std::io::Error| Unusable::Unreadable(err.to_string());
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::with_capacity(HEAD_LEN);
    loop {
        let n = file.read(&mut buf).map_err(unreadable)?;
        if n == 0 {
            break;
        }
        if head.len() < HEAD_LEN {
            let take = n.min(HEAD_LEN - head.len());
            head.extend_from_slice(&buf[..take]);
        }
        hasher.update(&buf[..n]);
    }
    if head.is_empty() {
        return Err(Unusable::Empty);
    }
    check_image_signature(&head).map_err(Unusable::NotAnImage)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Whether `head` (a file's first bytes) starts like an image Claid accepts; else what it
/// looks like, for the message.
pub(crate) fn check_image_signature(head: &[u8]) -> Result<(), String> {
    use image::ImageFormat as F;
    match image::guess_format(head) {
        Ok(F::Png | F::Jpeg | F::Gif | F::WebP | F::Tiff | F::Bmp | F::Avif) => return Ok(()),
        Ok(other) => {
            return Err(format!(
                "it is {} image, a format Claid does not take",
                format_name(other)
            ));
        }
        Err(_) => {}
    }
    // HEIC/AVIF boxes, and BigTIFF (a TIFF with 64-bit offsets, which `image` does not
    // name): left to Claid, as TIFF is.
    if is_heif(head) || head.starts_with(b"II+\0") || head.starts_with(b"MM\0+") {
        return Ok(());
    }
    let text = String::from_utf8_lossy(head);
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("<svg") || (lower.starts_with("<?xml") && lower.contains("<svg")) {
        return Err("it is an SVG drawing (text), not a bitmap".to_owned());
    }
    if lower.starts_with('<') {
        return Err("it is HTML or XML text, not an image (a saved web page?)".to_owned());
    }
    if std::str::from_utf8(head).is_ok() || head.iter().all(|b| b.is_ascii()) {
        return Err("it is text, not an image".to_owned());
    }
    Err(format!(
        "its first bytes ({}) match no image format",
        head.iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    ))
}

/// HEIC/HEIF (and AVIF sequences): an ISO-BMFF `ftyp` box with an image brand.
fn is_heif(head: &[u8]) -> bool {
    const BRANDS: &[&[u8]] = &[
        b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis",
    ];
    head.len() >= 12 && &head[4..8] == b"ftyp" && BRANDS.contains(&&head[8..12])
}

fn format_name(format: image::ImageFormat) -> String {
    let name = format
        .extensions_str()
        .first()
        .map_or_else(|| format!("{format:?}"), |ext| ext.to_ascii_uppercase());
    let article = if name.starts_with(['A', 'E', 'I', 'O', 'U', 'H']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert!(check_image_signature(png).is_ok());
        assert!(check_image_signature(b"\xff\xd8\xff\xe0\0\x10JFIF").is_ok());
        assert!(check_image_signature(b"\0\0\0\x18ftypheic\0\0\0\0").is_ok());
        assert!(check_image_signature(b"\0\0\0\x1cftypavif\0\0\0\0").is_ok());
        // BigTIFF, little- and big-endian: a TIFF, not text.
        assert!(check_image_signature(b"II+\0\x08\0\0\0\x10\0\0\0\0\0\0\0").is_ok());
        assert!(check_image_signature(b"MM\0+\0\x08\0\0\0\0\0\0\0\0\0\x10").is_ok());
        let svg = check_image_signature(b"<?xml version=\"1.0\"?>\n<svg xmlns=").unwrap_err();
        assert!(svg.contains("SVG"), "{svg}");
        let text = check_image_signature(b"this is not a png").unwrap_err();
        assert!(text.contains("text"), "{text}");
        let qoi = check_image_signature(b"qoif\0\0\0\x01").unwrap_err();
        assert!(qoi.contains("a QOI image"), "{qoi}");
        let binary = check_image_signature(&[0x00, 0xfe, 0x13, 0x80, 0x81]).unwrap_err();
        assert!(binary.contains("00 fe 13 80 81"), "{binary}");
    }
}
