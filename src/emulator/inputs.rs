//! Resolving edit inputs to bytes: `http://` URLs (hyper-util client), `storage://NAME/path`
//! under the storage root (connectors' buckets are read by `emulator::storage`), and the
//! built-in virtual storage `storage://demo/<name>-<W>x<H>.<ext>` that synthesizes a
//! deterministic product-like image.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

/// Largest input the emulator downloads or reads.
pub const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;
/// Largest side of a synthesized demo image.
pub const MAX_DEMO_SIDE: u32 = 4096;
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an input could not be obtained (a 400 for sync edits, an ERROR task for async ones).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(
        "https inputs are not supported by the emulator (serve the file over http, e.g. --static-dir)"
    )]
    Https,
    #[error("unsupported input scheme in {0:?}: use http:// or storage://")]
    Scheme(String),
    #[error("cannot fetch {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error(
        "storage {0:?} is not connected (no connector of that name, no --storage-root, and only storage://demo is built in)"
    )]
    NoStorage(String),
    #[error("object not found in storage: {0}")]
    NotFound(String),
    #[error("invalid storage path {0:?}")]
    BadPath(String),
    #[error("demo inputs are named <anything>-<W>x<H>.<png|jpg|webp> with sides 1..={max}: {name:?}", max = MAX_DEMO_SIDE)]
    DemoName { name: String },
    #[error("cannot synthesize demo image: {0}")]
    Synth(String),
}

/// The HTTP client used for `http://` inputs.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A plain-HTTP client for input downloads.
pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Resolves `input` to its encoded bytes.
pub async fn fetch(
    client: &HttpClient,
    storage_root: Option<&Path>,
    input: &str,
) -> Result<Vec<u8>, InputError> {
    if let Some(rest) = input.strip_prefix("storage://") {
        let (storage, path) = rest.split_once('/').unwrap_or((rest, ""));
        if storage == "demo" {
            let name = path.to_owned();
            return tokio::task::spawn_blocking(move || demo_image(&name))
                .await
                .map_err(|e| InputError::Synth(e.to_string()))?;
        }
        let root = storage_root.ok_or_else(|| InputError::NoStorage(storage.to_owned()))?;
        let file = storage_path(root, storage, path)?;
        return match tokio::fs::read(&file).await {
            Ok(bytes) if bytes.len() <= MAX_INPUT_BYTES => Ok(bytes),
            Ok(_) => Err(InputError::Fetch {
                url: input.to_owned(),
                reason: "input too large".to_owned(),
            }),
            Err(_) => Err(InputError::NotFound(input.to_owned())),
        };
    }
    if input.starts_with("https://") {
        return Err(InputError::Https);
    }
    if !input.starts_with("http://") {
        return Err(InputError::Scheme(input.to_owned()));
    }
    let fail = |reason: String| InputError::Fetch {
        url: input.to_owned(),
        reason,
    };
    let uri: hyper::Uri = input
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| fail(e.to_string()))?;
    let response = tokio::time::timeout(FETCH_TIMEOUT, client.get(uri))
        .await
        .map_err(|_| fail("timed out".to_owned()))?
        .map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("http status {}", response.status())));
    }
    let body = Limited::new(response.into_body(), MAX_INPUT_BYTES);
    let collected = tokio::time::timeout(FETCH_TIMEOUT, body.collect())
        .await
        .map_err(|_| fail("timed out".to_owned()))?
        .map_err(|e| fail(e.to_string()))?;
    Ok(collected.to_bytes().to_vec())
}

/// `<root>/<storage>/<path>`, refusing anything that could leave the root.
pub fn storage_path(root: &Path, storage: &str, path: &str) -> Result<PathBuf, InputError> {
    let rel = Path::new(storage).join(path);
    safe_rel(root, &rel).ok_or_else(|| InputError::BadPath(format!("{storage}/{path}")))
}

/// Joins `rel` under `root` when it holds only normal components.
pub fn safe_rel(root: &Path, rel: &Path) -> Option<PathBuf> {
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(rel))
}

/// Parses `<anything>-<W>x<H>.<ext>` (the last path segment).
fn demo_spec(name: &str) -> Option<(u32, u32, image::ImageFormat)> {
    let file = name.rsplit('/').next()?;
    let (stem, ext) = file.rsplit_once('.')?;
    let format = match ext.to_ascii_lowercase().as_str() {
        "png" => image::ImageFormat::Png,
        "jpg" | "jpeg" => image::ImageFormat::Jpeg,
        "webp" => image::ImageFormat::WebP,
        _ => return None,
    };
    let size = stem.rsplit('-').next()?;
    let (w, h) = size.split_once('x')?;
    let (w, h): (u32, u32) = (w.parse().ok()?, h.parse().ok()?);
    if w == 0 || h == 0 || w > MAX_DEMO_SIDE || h > MAX_DEMO_SIDE {
        return None;
    }
    Some((w, h, format))
}

/// Synthesizes the demo image named `name`: a light background with a coloured "product"
/// (an ellipse on a darker base) whose colour and placement derive from the name's hash.
pub fn demo_image(name: &str) -> Result<Vec<u8>, InputError> {
    let (w, h, format) = demo_spec(name).ok_or_else(|| InputError::DemoName {
        name: name.to_owned(),
    })?;
    let digest = Sha256::digest(name.as_bytes());
    let color = [40 + digest[0] / 2, 40 + digest[1] / 2, 40 + digest[2] / 2];
    let (cx, cy) = (
        f64::from(w) * (0.45 + f64::from(digest[3]) / 2550.0),
        f64::from(h) * (0.45 + f64::from(digest[4]) / 2550.0),
    );
    let (rx, ry) = (f64::from(w) * 0.3, f64::from(h) * 0.3);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let dx = (f64::from(x) + 0.5 - cx) / rx;
        let dy = (f64::from(y) + 0.5 - cy) / ry;
        let d = dx * dx + dy * dy;
        if d <= 1.0 {
            // Simple shading so resizes and crops are visible.
            let shade = 1.0 - 0.35 * d;
            image::Rgb(color.map(|c| (f64::from(c) * shade + 20.0).min(255.0) as u8))
        } else if (dy - 1.05).abs() < 0.08 && dx.abs() < 1.1 {
            image::Rgb([170, 170, 170]) // the shadow / stand under the product
        } else {
            image::Rgb([246, 246, 244])
        }
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), format)
        .map_err(|e| InputError::Synth(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_images_are_deterministic_and_sized() {
        let a = demo_image("shoes/sku-1-640x480.png").expect("demo");
        let b = demo_image("shoes/sku-1-640x480.png").expect("demo");
        assert_eq!(a, b);
        let img = image::load_from_memory(&a).expect("decodes");
        assert_eq!((img.width(), img.height()), (640, 480));
        let jpg =
            image::load_from_memory(&demo_image("x-10x20.jpg").expect("demo")).expect("decodes");
        assert_eq!((jpg.width(), jpg.height()), (10, 20));
    }

    #[test]
    fn bad_demo_names_are_refused() {
        for name in [
            "noname.png",
            "a-0x10.png",
            "a-10x10.gif",
            "a-99999x10.png",
            "a-10x10",
        ] {
            assert!(demo_image(name).is_err(), "{name}");
        }
    }

    #[test]
    fn storage_paths_cannot_escape() {
        let root = Path::new("/r");
        assert_eq!(
            storage_path(root, "s", "a/b.png").ok(),
            Some(PathBuf::from("/r/s/a/b.png"))
        );
        assert!(storage_path(root, "s", "../x").is_err());
        assert!(storage_path(root, "..", "x").is_err());
        assert!(storage_path(root, "s", "/etc/passwd").is_err());
    }
}
