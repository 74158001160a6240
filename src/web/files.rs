//! Files the dashboard serves, all from inside the outbox: thumbnails of outputs (generated
//! with the `image` crate, cached under `<state>/thumbnails/`) and reports. A requested path
//! is taken from the raw URL and refused when it holds an encoded separator (`%2F`), a raw `\`
//! (a browser would have made it a `/`) or NUL, a `.` or `..` component, is absolute, or leads through a symlink
//! ([`crate::output::safe_join`]); the file is then opened without following a link, must be a
//! regular file, and must still be inside the outbox once resolved.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// The longest side of a thumbnail, in pixels.
pub const THUMB_SIZE: u32 = 160;
/// Thumbnails generated at once (each decodes a whole output).
pub const MAX_THUMBNAILING: usize = 2;
/// The largest output decoded for a thumbnail.
pub const MAX_DECODE_BYTES: u64 = 64 * 1024 * 1024;
/// Cached thumbnails older than this are removed (at start and once a day).
pub const CACHE_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The folder under the state folder that holds cached thumbnails.
pub const CACHE_DIR: &str = "thumbnails";
/// Output extensions a thumbnail is made for.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// Why a file is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The path is not acceptable (traversal, encoded separator, link): 400.
    #[error("refused path: {0}")]
    Unsafe(&'static str),
    /// Nothing servable there: 404.
    #[error("not found")]
    NotFound,
    /// There, but no thumbnail can be made of it: 415.
    #[error("not an image a thumbnail can be made of")]
    NotAnImage,
}

/// The outbox-relative path in a raw URL path after `prefix` (`/thumb/`), checked and
/// percent-decoded. Encoded separators and NUL are refused before decoding, so `..%2F` cannot
/// become a component; after decoding, an absolute path and `.`, `..` or empty components are
/// refused (links are [`open_inside`]'s to refuse).
pub fn rel_from_url(raw_path: &str, prefix: &str) -> Result<PathBuf, Refused> {
    let encoded = raw_path
        .strip_prefix(prefix)
        .ok_or(Refused::Unsafe("wrong prefix"))?;
    let lower = encoded.to_ascii_lowercase();
    // An encoded backslash (`%5C`) is an ordinary byte of a Unix file name (a manifest named
    // `a\b.yaml` has outputs under `a\b/`): it was refused, and every link to them answered 400.
    if lower.contains("%2f") || lower.contains("%00") || encoded.contains('\\') {
        return Err(Refused::Unsafe("encoded separator"));
    }
    let bytes = percent_decode(encoded).ok_or(Refused::Unsafe("bad percent-encoding"))?;
    if bytes.is_empty() || bytes.starts_with(b"/") {
        return Err(Refused::Unsafe("absolute or empty path"));
    }
    if bytes
        .split(|b| *b == b'/')
        .any(|part| part.is_empty() || part == b"." || part == b"..")
    {
        return Err(Refused::Unsafe("`.`, `..` or empty path component"));
    }
    Ok(PathBuf::from(OsStr::from_bytes(&bytes)))
}

/// Resolves `rel` inside `outbox` and opens it as a regular file, never through a link.
pub fn open_inside(outbox: &Path, rel: &Path) -> Result<(std::fs::File, PathBuf), Refused> {
    let path = crate::output::safe_join(outbox, rel).map_err(|err| match err {
        crate::output::OutputError::UnsafePath { reason, .. } => Refused::Unsafe(reason),
        _ => Refused::NotFound,
    })?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ELOOP) => Refused::Unsafe("symlink"),
            _ => Refused::NotFound,
        })?;
    let meta = file.metadata().map_err(|_| Refused::NotFound)?;
    if !meta.is_file() {
        return Err(Refused::NotFound);
    }
    // Belt and braces: the resolved path is inside the resolved outbox.
    let (Ok(real), Ok(root)) = (path.canonicalize(), outbox.canonicalize()) else {
        return Err(Refused::NotFound);
    };
    if !real.starts_with(&root) {
        return Err(Refused::Unsafe("outside the outbox"));
    }
    Ok((file, path))
}

/// `a/b c.jpg` → `a/b%20c.jpg`: every byte but unreserved ones and `/` percent-encoded.
pub fn encode_path(rel: &str) -> String {
    let mut out = String::with_capacity(rel.len());
    for b in rel.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Thumbnails of outputs, cached on disk.
#[derive(Clone)]
pub struct Thumbnails {
    outbox: PathBuf,
    cache: PathBuf,
    /// Bounds the decodes running at once.
    working: Arc<Semaphore>,
}

impl Thumbnails {
    /// Creates the cache folder and removes thumbnails older than [`CACHE_MAX_AGE`].
    pub fn new(outbox: PathBuf, state: &Path) -> Thumbnails {
        let cache = state.join(CACHE_DIR);
        if let Err(err) = std::fs::create_dir_all(&cache) {
            warn!(error = %crate::os_error::OsCause(&err), "Cannot create the thumbnail cache; thumbnails are made without it");
        }
        let thumbs = Thumbnails {
            outbox,
            cache,
            working: Arc::new(Semaphore::new(MAX_THUMBNAILING)),
        };
        thumbs.prune();
        thumbs
    }

    /// The PNG thumbnail of the output at `rel` (outbox-relative).
    pub async fn get(&self, rel: PathBuf) -> Result<Vec<u8>, Refused> {
        let ext = rel
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if !IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            return Err(Refused::NotAnImage);
        }
        let Ok(_permit) = self.working.clone().acquire_owned().await else {
            return Err(Refused::NotFound);
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.get_blocking(&rel))
            .await
            .unwrap_or(Err(Refused::NotFound))
    }

    fn get_blocking(&self, rel: &Path) -> Result<Vec<u8>, Refused> {
        let (file, _) = open_inside(&self.outbox, rel)?;
        let meta = file.metadata().map_err(|_| Refused::NotFound)?;
        if meta.len() > MAX_DECODE_BYTES {
            return Err(Refused::NotAnImage);
        }
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .unwrap_or_default();
        let mut key = Sha256::new();
        key.update(rel.as_os_str().as_bytes());
        key.update(meta.len().to_be_bytes());
        key.update(mtime.as_nanos().to_be_bytes());
        key.update(THUMB_SIZE.to_be_bytes());
        let cached = self
            .cache
            .join(format!("{}.png", hex::encode(key.finalize())));
        if let Ok(bytes) = std::fs::read(&cached) {
            return Ok(bytes);
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        (&file)
            .take(MAX_DECODE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|_| Refused::NotFound)?;
        let png = thumbnail_png(&bytes).ok_or(Refused::NotAnImage)?;
        if let Err(err) =
            crate::output::write_atomic_with(&cached, |w| std::io::Write::write_all(w, &png))
        {
            debug!(error = %err, "Cannot cache a thumbnail");
        }
        Ok(png)
    }

    /// Removes cached thumbnails older than [`CACHE_MAX_AGE`].
    pub fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.cache) else {
            return;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > CACHE_MAX_AGE);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            info!(removed, "Removed old cached thumbnails");
        }
    }
}

/// A PNG of at most [`THUMB_SIZE`]² pixels of the image in `bytes`, or `None` when it does not
/// decode (within the decoder's memory limits).
pub fn thumbnail_png(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(20_000);
    limits.max_image_height = Some(20_000);
    limits.max_alloc = Some(512 * 1024 * 1024);
    reader.limits(limits);
    let image = reader.decode().ok()?;
    let thumb = image.thumbnail(THUMB_SIZE, THUMB_SIZE);
    let mut out = Vec::new();
    thumb
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths_with_traversal_or_encoded_separators_are_refused() {
        let check = |raw: &str| rel_from_url(raw, "/thumb/");
        assert_eq!(
            check("/thumb/spring/a%20b.jpg"),
            Ok(PathBuf::from("spring/a b.jpg"))
        );
        // A backslash in a name, as the dashboard's links encode it.
        assert_eq!(
            check(&format!("/thumb/{}", encode_path("a\\b/x.jpg"))),
            Ok(PathBuf::from("a\\b/x.jpg"))
        );
        for raw in [
            "/thumb/..%2F..%2Fetc%2Fpasswd",
            "/thumb/a%2fb.jpg",
            "/thumb/a%00.jpg",
            "/thumb/a\\b.jpg",
            "/thumb/a%zz.jpg",
            "/thumb/../x.jpg",
            "/thumb/%2e%2e/x.jpg",
            "/thumb/a/./x.jpg",
            "/thumb//etc/passwd",
            "/thumb/",
        ] {
            assert!(matches!(check(raw), Err(Refused::Unsafe(_))), "{raw}");
        }
        let dir = tempfile::tempdir().expect("dir");
        let outbox = dir.path().join("outbox");
        std::fs::create_dir_all(outbox.join("a")).expect("outbox");
        std::fs::write(outbox.join("a/x.jpg"), b"x").expect("file");
        std::fs::write(dir.path().join("secret.jpg"), b"secret").expect("secret");
        std::os::unix::fs::symlink(dir.path().join("secret.jpg"), outbox.join("a/link.jpg"))
            .expect("link");
        std::os::unix::fs::symlink(dir.path(), outbox.join("up")).expect("dir link");
        assert!(open_inside(&outbox, Path::new("a/x.jpg")).is_ok());
        for rel in [
            "../secret.jpg",
            "a/../../secret.jpg",
            "a/link.jpg",
            "up/secret.jpg",
            "/etc/passwd",
            "a/./x.jpg",
        ] {
            assert!(
                matches!(
                    open_inside(&outbox, Path::new(rel)),
                    Err(Refused::Unsafe(_))
                ),
                "{rel}"
            );
        }
        assert_eq!(
            open_inside(&outbox, Path::new("a")).map(|_| ()),
            Err(Refused::NotFound)
        );
    }

    #[test]
    fn encoded_paths_round_trip() {
        let rel = "spring/<img src=x>/a b%.jpg";
        let url = format!("/thumb/{}", encode_path(rel));
        assert!(!url.contains('<') && !url.contains(' '));
        assert_eq!(rel_from_url(&url, "/thumb/"), Ok(PathBuf::from(rel)));
    }

    #[test]
    fn thumbnails_fit_the_box() {
        let img = image::RgbImage::from_pixel(640, 320, image::Rgb([10, 20, 30]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("png");
        let thumb = thumbnail_png(&png).expect("thumbnail");
        let decoded = image::load_from_memory(&thumb).expect("decodes");
        assert_eq!(
            (decoded.width(), decoded.height()),
            (THUMB_SIZE, THUMB_SIZE / 2)
        );
        assert!(thumbnail_png(b"not an image").is_none());
    }
}
