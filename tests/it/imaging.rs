//! Tests for imaging: rendered output dimensions for every fit mode and size kind (decoded back
//! from real encoded images), padding, background colour and transparency, every output format,
//! simulated operations, and clean errors for undecodable, avif and oversized requests.

use std::io::Cursor;

use claid_hotfolder::claid::request::{self, EditRequest, InputRule};
use claid_hotfolder::emulator::imaging::{self, ImagingError, MAX_PIXELS};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use serde_json::{Value, json};

/// An opaque blue image (so white/transparent fill is easy to tell apart), encoded as PNG.
fn blue_png(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, _| Rgb([0, (x % 8) as u8, 255]));
    encode(DynamicImage::ImageRgb8(img), ImageFormat::Png)
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode test image");
    out.into_inner()
}

fn req(ops: Value, output: Value) -> EditRequest {
    let body = json!({"input": "https://x.com/a.png", "operations": ops, "output": output});
    match request::validate(&body, InputRule::Required) {
        Ok(r) => r,
        Err(e) => panic!("{body} rejected: {e:#?}"),
    }
}

fn decode(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).expect("decode rendered output")
}

/// Renders `ops` on a `w`×`h` blue PNG and asserts that both `output_dimensions` and the decoded
/// output have the expected size.
#[track_caller]
fn check(w: u32, h: u32, ops: Value, expect: (u32, u32)) {
    let r = req(ops.clone(), json!({"format": "png"}));
    assert_eq!(
        imaging::output_dimensions(w, h, &r),
        expect,
        "output_dimensions {w}x{h} {ops}"
    );
    let rendered = imaging::render(&blue_png(w, h), &r).expect("render");
    let out = decode(&rendered.bytes);
    assert_eq!(
        (out.width(), out.height()),
        expect,
        "rendered {w}x{h} {ops}"
    );
    assert_eq!(
        (rendered.output.width, rendered.output.height),
        expect,
        "output object {ops}"
    );
    assert_eq!((rendered.input.width, rendered.input.height), (w, h));
}

fn rz(width: Value, height: Value, fit: &str) -> Value {
    let mut r = json!({"fit": fit});
    if !width.is_null() {
        r["width"] = width;
    }
    if !height.is_null() {
        r["height"] = height;
    }
    json!({"resizing": r})
}

#[test]
fn fit_modes_by_size_kind() {
    let n = Value::Null;
    let auto = || json!("auto");
    // (width, height, fit, expected) on a 400x200 input.
    let cases: Vec<(Value, Value, &str, (u32, u32))> = vec![
        // No size, or both auto: unchanged, whatever the fit.
        (n.clone(), n.clone(), "crop", (400, 200)),
        (auto(), auto(), "crop", (400, 200)),
        (auto(), auto(), "cover", (400, 200)),
        (n.clone(), n.clone(), "bounds", (400, 200)),
        (n.clone(), n.clone(), "canvas", (400, 200)),
        (n.clone(), n.clone(), "outpaint", (400, 200)),
        // crop: exact size; one side keeps the input's other side.
        (json!(100), n.clone(), "crop", (100, 200)),
        (json!(100), auto(), "crop", (100, 200)),
        (n.clone(), json!(100), "crop", (400, 100)),
        (json!(100), json!(100), "crop", (100, 100)),
        (json!(300), json!(50), "crop", (300, 50)),
        (json!(800), json!(100), "crop", (800, 100)),
        (json!("50%"), n.clone(), "crop", (200, 200)),
        (json!("50%"), json!("50%"), "crop", (200, 100)),
        (json!("25%"), json!("150%"), "crop", (100, 300)),
        // cover: covers the box; one side may exceed it.
        (json!(100), n.clone(), "cover", (100, 50)),
        (n.clone(), json!(100), "cover", (200, 100)),
        (json!(100), json!(100), "cover", (200, 100)),
        (json!(300), json!(50), "cover", (300, 150)),
        (json!("50%"), auto(), "cover", (200, 100)),
        (json!("200%"), json!("200%"), "cover", (800, 400)),
        // bounds: inside the box; one side may be smaller.
        (json!(100), n.clone(), "bounds", (100, 50)),
        (auto(), json!(100), "bounds", (200, 100)),
        (json!(100), json!(100), "bounds", (100, 50)),
        (json!(300), json!(50), "bounds", (100, 50)),
        (json!(1000), json!(1000), "bounds", (1000, 500)),
        (json!("50%"), json!("50%"), "bounds", (200, 100)),
        (n.clone(), json!("10%"), "bounds", (40, 20)),
        // canvas: the box exactly with both sides; one side follows the aspect.
        (json!(100), n.clone(), "canvas", (100, 50)),
        (json!(100), json!(100), "canvas", (100, 100)),
        (json!(300), json!(50), "canvas", (300, 50)),
        (auto(), json!("50%"), "canvas", (200, 100)),
        (json!("50%"), json!("100%"), "canvas", (200, 200)),
        // outpaint = canvas.
        (json!(100), json!(100), "outpaint", (100, 100)),
        (json!(100), n.clone(), "outpaint", (100, 50)),
        (json!("150%"), json!("150%"), "outpaint", (600, 300)),
    ];
    for (w, h, fit, expect) in cases {
        check(400, 200, rz(w.clone(), h.clone(), fit), expect);
        // The object form of `fit` behaves the same.
        let mut ops = rz(w, h, fit);
        ops["resizing"]["fit"] = json!({"type": fit});
        check(400, 200, ops, expect);
    }
}

#[test]
fn portrait_and_tiny_inputs() {
    check(200, 400, rz(json!(100), json!(100), "cover"), (100, 200));
    check(200, 400, rz(json!(100), json!(100), "bounds"), (50, 100));
    check(200, 400, rz(json!(100), json!(100), "crop"), (100, 100));
    check(1, 1, rz(json!(50), json!(20), "crop"), (50, 20));
    check(1, 1, rz(json!("1%"), Value::Null, "bounds"), (1, 1));
    check(3, 1000, rz(json!(10), json!(10), "bounds"), (1, 10));
    check(
        400,
        200,
        json!({"resizing": {"width": 100, "height": 100, "fit": {"type": "crop", "crop": "smart"}}}),
        (100, 100),
    );
}

#[test]
fn outpaint_by_grows_the_canvas() {
    let op = |by: &str| json!({"resizing": {"fit": {"type": "outpaint", "outpaint_by": by}}});
    check(400, 200, op("10%"), (440, 220));
    check(400, 200, op("20px 10px"), (420, 210));
    check(400, 200, op("0% 50%"), (400, 300));
}

#[test]
fn padding_keeps_the_size_and_fills_the_border() {
    let cases = [
        (json!({"padding": "10%"}), (400, 200)),
        (json!({"padding": "30px"}), (400, 200)),
        (json!({"padding": "10px 20px"}), (400, 200)),
        (json!({"padding": "0px 100px 0px 0px"}), (400, 200)),
        (
            json!({"padding": "25%", "resizing": {"width": 100, "height": 100}}),
            (100, 100),
        ),
        (
            json!({"padding": "10px", "resizing": {"width": 100, "height": 100, "fit": "canvas"}}),
            (100, 100),
        ),
        (
            json!({"padding": "5% 10%", "resizing": {"width": 300, "height": 300, "fit": "bounds"}}),
            (300, 150),
        ),
        (json!({"padding": "1000px"}), (400, 200)),
    ];
    for (ops, expect) in cases {
        check(400, 200, ops.clone(), expect);
    }
    // The border is white (the default for an opaque input), the centre is the image.
    let r = req(json!({"padding": "10%"}), json!({"format": "png"}));
    let out = decode(
        &imaging::render(&blue_png(400, 200), &r)
            .expect("render")
            .bytes,
    )
    .to_rgba8();
    assert_eq!(*out.get_pixel(2, 2), Rgba([255, 255, 255, 255]));
    assert_eq!(
        *out.get_pixel(200, 10),
        Rgba([255, 255, 255, 255]),
        "top padding is 10% of 200 = 20 px"
    );
    assert_eq!(out.get_pixel(200, 100)[2], 255);
    assert!(out.get_pixel(200, 100)[0] < 10, "centre keeps the image");
    // Pixel padding on one side only: the right 100 px are fill, the left edge is image.
    let r = req(
        json!({"padding": "0px 100px 0px 0px"}),
        json!({"format": "png"}),
    );
    let out = decode(
        &imaging::render(&blue_png(400, 200), &r)
            .expect("render")
            .bytes,
    )
    .to_rgba8();
    assert_eq!(*out.get_pixel(390, 100), Rgba([255, 255, 255, 255]));
    assert!(out.get_pixel(150, 100)[0] < 10);
}

#[test]
fn canvas_fill_colour_and_transparency() {
    // Explicit hex colour.
    let r = req(
        json!({"resizing": {"width": 100, "height": 100, "fit": "canvas"}, "background": {"color": "#ff0000"}}),
        json!({"format": "png"}),
    );
    let out = decode(
        &imaging::render(&blue_png(400, 200), &r)
            .expect("render")
            .bytes,
    )
    .to_rgba8();
    assert_eq!(*out.get_pixel(50, 5), Rgba([255, 0, 0, 255]));
    assert_eq!(out.get_pixel(50, 50)[2], 255);

    // Transparent: alpha kept for png, webp and tiff.
    for format in ["png", "webp", "tiff"] {
        let r = req(
            json!({"resizing": {"width": 100, "height": 100, "fit": "canvas"}, "background": {"color": "transparent"}}),
            json!({"format": format}),
        );
        let out = decode(
            &imaging::render(&blue_png(400, 200), &r)
                .expect("render")
                .bytes,
        );
        assert!(out.color().has_alpha(), "{format} keeps alpha");
        let out = out.to_rgba8();
        assert_eq!(
            out.get_pixel(50, 5)[3],
            0,
            "{format}: canvas fill is transparent"
        );
        assert_eq!(out.get_pixel(50, 50)[3], 255, "{format}: image is opaque");
    }

    // Jpeg has no alpha: transparent fill is flattened onto white.
    let r = req(
        json!({"resizing": {"width": 100, "height": 100, "fit": "canvas"}, "background": {"color": "transparent"}}),
        json!({"format": "jpeg"}),
    );
    let out = decode(
        &imaging::render(&blue_png(400, 200), &r)
            .expect("render")
            .bytes,
    )
    .to_rgb8();
    assert!(
        out.get_pixel(50, 3).0.iter().all(|&c| c > 240),
        "white: {:?}",
        out.get_pixel(50, 3)
    );

    // Default colour for an input with alpha is transparent.
    let rgba = RgbaImage::from_pixel(40, 20, Rgba([10, 200, 10, 255]));
    let input = encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
    let r = req(json!({"padding": "10px"}), json!({"format": "png"}));
    let out = decode(&imaging::render(&input, &r).expect("render").bytes).to_rgba8();
    assert_eq!(out.dimensions(), (40, 20));
    assert_eq!(out.get_pixel(0, 0)[3], 0);
}

#[test]
fn every_output_format_decodes_as_itself() {
    let cases = [
        (
            json!("jpeg"),
            ImageFormat::Jpeg,
            "jpeg",
            "jpg",
            "image/jpeg",
        ),
        (
            json!({"type": "jpeg", "quality": 10, "progressive": true}),
            ImageFormat::Jpeg,
            "jpeg",
            "jpg",
            "image/jpeg",
        ),
        (json!("png"), ImageFormat::Png, "png", "png", "image/png"),
        (
            json!({"type": "png", "compression": "fast"}),
            ImageFormat::Png,
            "png",
            "png",
            "image/png",
        ),
        (
            json!({"type": "png", "compression": "best"}),
            ImageFormat::Png,
            "png",
            "png",
            "image/png",
        ),
        (
            json!("webp"),
            ImageFormat::WebP,
            "webp",
            "webp",
            "image/webp",
        ),
        (
            json!({"type": "webp", "compression": "lossless"}),
            ImageFormat::WebP,
            "webp",
            "webp",
            "image/webp",
        ),
        (
            json!("tiff"),
            ImageFormat::Tiff,
            "tiff",
            "tiff",
            "image/tiff",
        ),
        (
            json!({"type": "tiff", "compression": {"type": "lossy", "quality": 50}}),
            ImageFormat::Tiff,
            "tiff",
            "tiff",
            "image/tiff",
        ),
    ];
    for (format, expect, name, ext, mime) in cases {
        let r = req(
            json!({"resizing": {"width": 64, "height": 48}}),
            json!({"format": format}),
        );
        let rendered = imaging::render(&blue_png(128, 96), &r).expect("render");
        assert_eq!(
            image::guess_format(&rendered.bytes).expect("guess"),
            expect,
            "{format}"
        );
        let out = decode(&rendered.bytes);
        assert_eq!((out.width(), out.height()), (64, 48), "{format}");
        assert_eq!(
            (
                rendered.output.format.as_str(),
                rendered.output.ext.as_str(),
                rendered.output.mime.as_str()
            ),
            (name, ext, mime)
        );
        assert!((rendered.output.mps - 64.0 * 48.0 / 1e6).abs() < 1e-9);
        assert!(rendered.output.tmp_url.is_none());
        assert_eq!(rendered.input.format, "png");
    }
    // Default output (no `output`) is jpeg.
    let body = json!({"input": "https://x.com/a.png", "operations": {}});
    let r = request::validate(&body, InputRule::Required).expect("valid");
    let rendered = imaging::render(&blue_png(10, 10), &r).expect("render");
    assert_eq!(
        image::guess_format(&rendered.bytes).expect("guess"),
        ImageFormat::Jpeg
    );
}

#[test]
fn inputs_in_every_decodable_format() {
    let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(30, 20, Rgb([1, 2, 3])));
    for (format, name) in [
        (ImageFormat::Png, "png"),
        (ImageFormat::Jpeg, "jpeg"),
        (ImageFormat::WebP, "webp"),
        (ImageFormat::Tiff, "tiff"),
        (ImageFormat::Gif, "gif"),
        (ImageFormat::Bmp, "bmp"),
    ] {
        let input = encode(img.clone(), format);
        let r = req(
            json!({"resizing": {"width": 15}}),
            json!("storage://s/o.png"),
        );
        let rendered = imaging::render(&input, &r).expect("render");
        assert_eq!(rendered.input.format, name);
        assert_eq!((rendered.input.width, rendered.input.height), (30, 20));
        assert_eq!((rendered.output.width, rendered.output.height), (15, 20));
    }
}

#[test]
fn avif_output_is_unsupported() {
    for format in [
        json!("avif"),
        json!({"type": "avif", "compression": "lossless"}),
    ] {
        let r = req(json!({}), json!({"format": format}));
        let err = imaging::render(&blue_png(10, 10), &r).expect_err("avif");
        assert!(matches!(err, ImagingError::Unsupported(_)), "{err}");
        assert_eq!(err.code(), "unsupported-format");
    }
}

#[test]
fn undecodable_input_is_an_error_not_a_panic() {
    let r = req(json!({"resizing": {"width": 10}}), json!({"format": "png"}));
    let png = blue_png(50, 50);
    let inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"not an image at all".to_vec(),
        png[..png.len() / 2].to_vec(),
        png[..20].to_vec(),
        {
            let mut broken = png.clone();
            for b in broken.iter_mut().skip(40) {
                *b ^= 0x5a;
            }
            broken
        },
    ];
    for input in inputs {
        let err = imaging::render(&input, &r).expect_err("undecodable");
        assert!(matches!(err, ImagingError::Decode(_)), "{err}");
        assert_eq!(err.code(), "undecodable-image");
    }
}

/// A BMP header claiming `w`×`h` with no pixel data.
fn bmp_header(w: i32, h: i32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&1000u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0u8; 24]);
    b
}

#[test]
fn huge_dimensions_are_rejected_cleanly() {
    let cases = [
        json!({"resizing": {"width": 20000, "height": 20000}}),
        json!({"resizing": {"width": "100000%", "height": "100000%"}}),
        json!({"resizing": {"width": 4_000_000_000u64, "height": 1, "fit": "cover"}}),
        json!({"resizing": {"fit": {"type": "outpaint", "outpaint_by": "4000000000px"}}}),
    ];
    for ops in cases {
        let r = req(ops.clone(), json!({"format": "png"}));
        let (w, h) = imaging::output_dimensions(40, 20, &r);
        assert!(u64::from(w) * u64::from(h) > MAX_PIXELS, "{ops}");
        let err = imaging::render(&blue_png(40, 20), &r).expect_err("too large");
        assert!(
            matches!(err, ImagingError::TooLarge { what: "output", .. }),
            "{ops}: {err}"
        );
        assert_eq!(err.code(), "image-too-large");
    }
    // Exactly at the cap is fine for output_dimensions (render would allocate 400 MB: not run).
    let r = req(
        json!({"resizing": {"width": 10000, "height": 10000}}),
        json!("storage://s/o.png"),
    );
    assert_eq!(imaging::output_dimensions(40, 20, &r), (10000, 10000));
    // An input header claiming 30000x30000 is refused before decoding.
    let err = imaging::render(
        &bmp_header(30000, 30000),
        &req(json!({}), json!({"format": "png"})),
    )
    .expect_err("too large input");
    assert!(
        matches!(err, ImagingError::TooLarge { what: "input", .. }),
        "{err}"
    );
}

#[test]
fn background_remove_makes_the_border_colour_transparent() {
    let img = RgbImage::from_fn(60, 40, |x, y| {
        if (20..40).contains(&x) && (10..30).contains(&y) {
            Rgb([200, 0, 0])
        } else {
            Rgb([250, 250, 250])
        }
    });
    let input = encode(DynamicImage::ImageRgb8(img), ImageFormat::Png);
    let r = req(
        json!({"background": {"remove": true, "color": "transparent"}}),
        json!({"format": "png"}),
    );
    let out = decode(&imaging::render(&input, &r).expect("render").bytes).to_rgba8();
    assert_eq!(out.get_pixel(2, 2)[3], 0);
    assert_eq!(*out.get_pixel(30, 20), Rgba([200, 0, 0, 255]));
    // Default colour for an opaque input is white.
    let r = req(
        json!({"background": {"remove": {"clipping": true}}}),
        json!({"format": "png"}),
    );
    let out = decode(&imaging::render(&input, &r).expect("render").bytes).to_rgba8();
    assert_eq!(*out.get_pixel(2, 2), Rgba([255, 255, 255, 255]));
    // Blur keeps the size and the object.
    let r = req(
        json!({"background": {"blur": {"level": "high"}}}),
        json!({"format": "png"}),
    );
    let out = decode(&imaging::render(&input, &r).expect("render").bytes).to_rgba8();
    assert_eq!(out.dimensions(), (60, 40));
    assert_eq!(*out.get_pixel(30, 20), Rgba([200, 0, 0, 255]));
}

#[test]
fn adjustments_change_pixels_deterministically() {
    let grey = encode(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(20, 20, Rgb([100, 120, 140]))),
        ImageFormat::Png,
    );
    let pixel = |ops: Value| {
        let r = req(ops, json!({"format": "png"}));
        *decode(&imaging::render(&grey, &r).expect("render").bytes)
            .to_rgb8()
            .get_pixel(10, 10)
    };
    let base = pixel(json!({}));
    assert_eq!(base, Rgb([100, 120, 140]));
    let brighter = pixel(json!({"adjustments": {"exposure": 100}}));
    assert!(
        brighter[0] > base[0] && brighter[2] > base[2],
        "{brighter:?}"
    );
    let darker = pixel(json!({"adjustments": {"exposure": -100}}));
    assert!(darker[0] < base[0], "{darker:?}");
    let grey_out = pixel(json!({"adjustments": {"saturation": -100}}));
    assert!(grey_out[0].abs_diff(grey_out[2]) <= 1, "{grey_out:?}");
    let flat = pixel(json!({"adjustments": {"contrast": -100}}));
    assert_eq!(flat, Rgb([128, 128, 128]));
    let hdr = pixel(json!({"adjustments": {"hdr": 100}}));
    assert!(hdr[2] - hdr[0] > base[2] - base[0], "{hdr:?}");
    let again = pixel(json!({"adjustments": {"hdr": 100}}));
    assert_eq!(hdr, again);
    // Sharpness, restorations, privacy and generative keep the size.
    check(
        80,
        60,
        json!({
            "adjustments": {"sharpness": 100},
            "restorations": {"decompress": "strong", "upscale": "smart_enhance", "polish": true},
            "privacy": {"blur_car_plate": true, "identity_crop": true},
            "generative": {"style_transfer": {"style_reference_image": "https://x.com/s.jpg"}},
            "resizing": {"width": "200%"}
        }),
        (160, 60),
    );
}
