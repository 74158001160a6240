//! Real image operations for the emulator: decode, resize with every fit mode, pad, fill the
//! background, adjust, encode; plus the documented, deterministic simulation of AI operations.

use crate::claid::request::EditRequest;
use crate::claid::wire::ImageObject;

/// The outcome of rendering one request.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The encoded output image.
    pub bytes: Vec<u8>,
    /// Describes the decoded input (no `tmp_url`).
    pub input: ImageObject,
    /// Describes the output (no `tmp_url`; the server fills it).
    pub output: ImageObject,
}

#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    #[error("cannot decode input image: {0}")]
    Decode(String),
    #[error("cannot encode output image: {0}")]
    Encode(String),
}

/// Applies `req` to the encoded `input` bytes. STUB: re-encodes as JPEG at the same size.
pub fn render(input: &[u8], req: &EditRequest) -> Result<Rendered, ImagingError> {
    let _ = req;
    let img = image::load_from_memory(input).map_err(|e| ImagingError::Decode(e.to_string()))?;
    let (w, h) = (img.width(), img.height());
    let mut bytes = Vec::new();
    img.to_rgb8()
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
        .map_err(|e| ImagingError::Encode(e.to_string()))?;
    let object = |format: &str, ext: &str, mime: &str| ImageObject {
        ext: ext.to_owned(),
        mps: f64::from(w) * f64::from(h) / 1e6,
        mime: mime.to_owned(),
        format: format.to_owned(),
        width: w,
        height: h,
        tmp_url: None,
        object_key: None,
        object_bucket: None,
        object_uri: None,
        claid_storage_uri: None,
    };
    Ok(Rendered { bytes, input: object("png", "png", "image/png"), output: object("jpeg", "jpg", "image/jpeg") })
}
