//! Tests for request: the edit-request schema validator, table-driven over every operation group,
//! every enum, range edges, URI rules, and bodies with several problems at once.

use claid_hotfolder::claid::request::{
    self, BlurLevel, BlurType, Color, Compression, CropMode, Decompress, EditRequest, Fit,
    FormatOptions, InputRule, Length, OutputFormat, PngCompression, Size, Upscale,
};
use serde_json::{Value, json};

/// Wraps `ops` (and optional `output`) in a valid body with an input.
fn body(ops: Value, output: Option<Value>) -> Value {
    let mut b = json!({"input": "https://example.com/a.jpg", "operations": ops});
    if let Some(o) = output {
        b["output"] = o;
    }
    b
}

/// Asserts the body validates (`expect` empty) or fails with exactly the `expect` paths
/// (as a set, each listed once per error).
#[track_caller]
fn check(json: Value, expect: &[&str]) {
    check_rule(json, InputRule::Required, expect);
}

#[track_caller]
fn check_rule(json: Value, rule: InputRule, expect: &[&str]) {
    match request::validate(&json, rule) {
        Ok(_) => assert!(
            expect.is_empty(),
            "{json} validated, expected errors at {expect:?}"
        ),
        Err(errors) => {
            let mut got: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
            got.sort_unstable();
            let mut want = expect.to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "{json}: errors {errors:#?}");
            for e in &errors {
                assert!(!e.message.is_empty(), "empty message for {}", e.path);
            }
        }
    }
}

fn ok(json: Value) -> EditRequest {
    match request::validate(&json, InputRule::Required) {
        Ok(r) => r,
        Err(e) => panic!("{json} rejected: {e:#?}"),
    }
}

fn op(ops: Value) -> Value {
    body(ops, None)
}

fn out(output: Value) -> Value {
    body(json!({}), Some(output))
}

#[test]
fn top_level_and_input_rules() {
    check(
        json!({"input": "https://x.com/a.jpg", "operations": {}}),
        &[],
    );
    check(
        json!({"input": "http://x.com/a.jpg", "operations": {}}),
        &[],
    );
    check(
        json!({"input": "storage://demo/p-10x10.png", "operations": {}}),
        &[],
    );
    check(json!({"operations": {}}), &["input"]);
    check(json!({"input": "https://x.com/a.jpg"}), &["operations"]);
    check(json!({}), &["input", "operations"]);
    check(json!([]), &["body"]);
    check(json!("x"), &["body"]);
    check(json!(null), &["body"]);
    check(json!({"input": "", "operations": {}}), &["input"]);
    check(json!({"input": 5, "operations": {}}), &["input"]);
    check(
        json!({"input": "ftp://x.com/a.jpg", "operations": {}}),
        &["input"],
    );
    check(json!({"input": "https://", "operations": {}}), &["input"]);
    check(
        json!({"input": "https://x.com/a b.jpg", "operations": {}}),
        &["input"],
    );
    check(
        json!({"input": "storage://demo", "operations": {}}),
        &["input"],
    );
    check(
        json!({"input": "storage://demo/", "operations": {}}),
        &["input"],
    );
    check(
        json!({"input": "storage:///x.png", "operations": {}}),
        &["input"],
    );
    check(
        json!({"input": "/local/file.png", "operations": {}}),
        &["input"],
    );
    let long = format!("https://x.com/{}", "a".repeat(4096 - 14));
    assert_eq!(long.len(), 4096);
    check(json!({"input": long, "operations": {}}), &[]);
    check(
        json!({"input": format!("{long}a"), "operations": {}}),
        &["input"],
    );
    check(
        json!({"input": "https://x.com/a", "operations": {}, "extra": 1}),
        &["extra"],
    );
    check(
        json!({"input": "https://x.com/a", "operations": [], "foo": 1}),
        &["operations", "foo"],
    );
    check(
        json!({"input": "https://x.com/a", "operations": {"nope": {}}}),
        &["operations.nope"],
    );
}

#[test]
fn upload_data_part_forbids_input() {
    check_rule(json!({"operations": {}}), InputRule::Forbidden, &[]);
    check_rule(
        json!({"operations": {}, "output": "storage://s/o.jpg"}),
        InputRule::Forbidden,
        &[],
    );
    check_rule(
        json!({"input": "https://x.com/a", "operations": {}}),
        InputRule::Forbidden,
        &["input"],
    );
    check_rule(
        json!({"output": "png"}),
        InputRule::Forbidden,
        &["operations", "output"],
    );
    let r = request::validate(&json!({"operations": {}}), InputRule::Forbidden).map(|r| r.input);
    assert_eq!(r, Ok(None));
}

#[test]
fn restorations_table() {
    for v in ["moderate", "strong", "auto"] {
        check(op(json!({"restorations": {"decompress": v}})), &[]);
    }
    check(op(json!({"restorations": {"decompress": null}})), &[]);
    check(
        op(json!({"restorations": {"decompress": "heavy"}})),
        &["operations.restorations.decompress"],
    );
    check(
        op(json!({"restorations": {"decompress": 1}})),
        &["operations.restorations.decompress"],
    );
    for v in [
        "smart_enhance",
        "smart_resize",
        "faces",
        "digital_art",
        "photo",
    ] {
        check(op(json!({"restorations": {"upscale": v}})), &[]);
    }
    check(op(json!({"restorations": {"upscale": null}})), &[]);
    for v in ["1", "2", "3"] {
        check(
            op(json!({"restorations": {"upscale": {"type": "photo", "version": v}}})),
            &[],
        );
    }
    let up = "operations.restorations.upscale";
    check(op(json!({"restorations": {"upscale": "magic"}})), &[up]);
    check(op(json!({"restorations": {"upscale": true}})), &[up]);
    check(
        op(json!({"restorations": {"upscale": {"type": "photo"}}})),
        &["operations.restorations.upscale.version"],
    );
    check(
        op(json!({"restorations": {"upscale": {"version": "2"}}})),
        &["operations.restorations.upscale.type"],
    );
    check(
        op(json!({"restorations": {"upscale": {"type": "faces", "version": "4"}}})),
        &[
            "operations.restorations.upscale.type",
            "operations.restorations.upscale.version",
        ],
    );
    check(
        op(json!({"restorations": {"upscale": {"type": "photo", "version": 2}}})),
        &["operations.restorations.upscale.version"],
    );
    check(
        op(json!({"restorations": {"upscale": {"type": "photo", "version": "2", "x": 1}}})),
        &["operations.restorations.upscale.x"],
    );
    check(op(json!({"restorations": {"polish": true}})), &[]);
    check(
        op(json!({"restorations": {"polish": "yes"}})),
        &["operations.restorations.polish"],
    );
    check(
        op(json!({"restorations": {"sharpen": true}})),
        &["operations.restorations.sharpen"],
    );
    check(op(json!({"restorations": 3})), &["operations.restorations"]);

    let r = ok(op(
        json!({"restorations": {"decompress": "strong", "upscale": {"type": "photo", "version": "3"}, "polish": true}}),
    ));
    let rest = r.operations.restorations.expect("restorations");
    assert_eq!(rest.decompress, Some(Decompress::Strong));
    assert_eq!(rest.upscale, Some(Upscale::Photo(Some(3))));
    assert!(rest.polish);
}

#[test]
fn adjustments_table() {
    for key in ["exposure", "saturation", "contrast"] {
        let path = format!("operations.adjustments.{key}");
        for v in [-100, 0, 100] {
            check(op(json!({"adjustments": {key: v}})), &[]);
        }
        for v in [
            json!(-101),
            json!(101),
            json!(1.5),
            json!("10"),
            json!(null),
        ] {
            check(op(json!({"adjustments": {key: v}})), &[path.as_str()]);
        }
    }
    check(op(json!({"adjustments": {"sharpness": 0}})), &[]);
    check(op(json!({"adjustments": {"sharpness": 100}})), &[]);
    check(
        op(json!({"adjustments": {"sharpness": -1}})),
        &["operations.adjustments.sharpness"],
    );
    check(
        op(json!({"adjustments": {"sharpness": 101}})),
        &["operations.adjustments.sharpness"],
    );
    check(op(json!({"adjustments": {"hdr": 0}})), &[]);
    check(op(json!({"adjustments": {"hdr": 100}})), &[]);
    check(
        op(json!({"adjustments": {"hdr": 101}})),
        &["operations.adjustments.hdr"],
    );
    check(
        op(json!({"adjustments": {"hdr": true}})),
        &["operations.adjustments.hdr"],
    );
    check(op(json!({"adjustments": {"hdr": {}}})), &[]);
    check(
        op(json!({"adjustments": {"hdr": {"intensity": 50, "stitching": true}}})),
        &[],
    );
    check(
        op(json!({"adjustments": {"hdr": {"intensity": -1}}})),
        &["operations.adjustments.hdr.intensity"],
    );
    check(
        op(json!({"adjustments": {"hdr": {"stitching": 1}}})),
        &["operations.adjustments.hdr.stitching"],
    );
    check(
        op(json!({"adjustments": {"hdr": {"level": 1}}})),
        &["operations.adjustments.hdr.level"],
    );
    check(
        op(json!({"adjustments": {"brightness": 1}})),
        &["operations.adjustments.brightness"],
    );

    let a = ok(op(
        json!({"adjustments": {"hdr": {}, "exposure": -100, "sharpness": 7}}),
    ))
    .operations
    .adjustments
    .expect("adjustments");
    assert_eq!((a.hdr.intensity, a.exposure, a.sharpness), (100, -100, 7));
    let a = ok(op(json!({"adjustments": {"hdr": 40}})))
        .operations
        .adjustments
        .expect("adjustments");
    assert_eq!(a.hdr.intensity, 40);
}

#[test]
fn background_table() {
    check(op(json!({"background": {"remove": true}})), &[]);
    check(op(json!({"background": {"remove": false}})), &[]);
    check(op(json!({"background": {"remove": {}}})), &[]);
    for c in ["general", "cars", "products"] {
        check(op(json!({"background": {"remove": {"category": c}}})), &[]);
        check(op(json!({"background": {"blur": {"category": c}}})), &[]);
    }
    check(
        op(json!({"background": {"remove": {"category": "people"}}})),
        &["operations.background.remove.category"],
    );
    check(
        op(
            json!({"background": {"remove": {"clipping": true, "selective": {"object_to_keep": "car"}}}}),
        ),
        &[],
    );
    check(
        op(json!({"background": {"remove": {"selective": {"object_to_keep": "ab"}}}})),
        &["operations.background.remove.selective.object_to_keep"],
    );
    check(
        op(json!({"background": {"remove": {"selective": {"object_to_keep": "a".repeat(129)}}}})),
        &["operations.background.remove.selective.object_to_keep"],
    );
    check(
        op(json!({"background": {"remove": {"selective": {"object_to_keep": "a".repeat(128)}}}})),
        &[],
    );
    check(
        op(json!({"background": {"remove": {"selective": {}}}})),
        &["operations.background.remove.selective.object_to_keep"],
    );
    check(
        op(json!({"background": {"remove": "yes"}})),
        &["operations.background.remove"],
    );
    check(
        op(json!({"background": {"remove": {"clip": true}}})),
        &["operations.background.remove.clip"],
    );
    for c in ["#ffffff", "#000000", "#FFF", "#a1B2c3", "transparent"] {
        check(op(json!({"background": {"color": c}})), &[]);
    }
    for c in [
        json!("white"),
        json!("ffffff"),
        json!("#fffff"),
        json!("#ggg"),
        json!(0xffffff),
    ] {
        check(
            op(json!({"background": {"color": c}})),
            &["operations.background.color"],
        );
    }
    check(op(json!({"background": {"blur": true}})), &[]);
    for t in ["regular", "lens"] {
        check(op(json!({"background": {"blur": {"type": t}}})), &[]);
    }
    for l in ["low", "medium", "high"] {
        check(op(json!({"background": {"blur": {"level": l}}})), &[]);
    }
    check(
        op(json!({"background": {"blur": {"type": "motion"}}})),
        &["operations.background.blur.type"],
    );
    check(
        op(json!({"background": {"blur": {"level": "max"}}})),
        &["operations.background.blur.level"],
    );
    check(
        op(json!({"background": {"blur": 1}})),
        &["operations.background.blur"],
    );
    check(op(json!({"background": {"use_original_alpha": true}})), &[]);
    check(
        op(json!({"background": {"alpha": true}})),
        &["operations.background.alpha"],
    );

    let b = ok(op(json!({"background": {"remove": true, "color": "#ff0000", "blur": {"type": "lens", "level": "high"}}})))
        .operations
        .background
        .expect("background");
    assert!(b.remove.is_some());
    assert_eq!(b.color, Some(Color::Rgb(255, 0, 0)));
    let blur = b.blur.expect("blur");
    assert_eq!((blur.kind, blur.level), (BlurType::Lens, BlurLevel::High));
    let b = ok(op(json!({"background": {"color": "transparent"}})))
        .operations
        .background
        .expect("bg");
    assert_eq!(b.color, Some(Color::Transparent));
}

#[test]
fn resizing_table() {
    let rz = |v: Value| op(json!({"resizing": v}));
    check(rz(json!({})), &[]);
    check(rz(json!({"width": "auto", "height": "auto"})), &[]);
    check(rz(json!({"width": 1})), &[]);
    check(rz(json!({"width": 4000, "height": 3000})), &[]);
    check(rz(json!({"width": "50%", "height": "auto"})), &[]);
    check(rz(json!({"width": "200%", "height": "150%"})), &[]);
    check(rz(json!({"width": "12.5%"})), &[]);
    check(rz(json!({"width": 0})), &["operations.resizing.width"]);
    check(rz(json!({"width": -5})), &["operations.resizing.width"]);
    check(rz(json!({"width": 10.5})), &["operations.resizing.width"]);
    check(
        rz(json!({"width": 5_000_000_000u64})),
        &["operations.resizing.width"],
    );
    check(rz(json!({"height": "0%"})), &["operations.resizing.height"]);
    check(rz(json!({"height": "%"})), &["operations.resizing.height"]);
    check(
        rz(json!({"height": "-10%"})),
        &["operations.resizing.height"],
    );
    check(
        rz(json!({"height": "100px"})),
        &["operations.resizing.height"],
    );
    check(
        rz(json!({"height": "Auto"})),
        &["operations.resizing.height"],
    );
    check(rz(json!({"height": null})), &["operations.resizing.height"]);
    check(
        rz(json!({"width": 100, "height": "50%"})),
        &["operations.resizing.height"],
    );
    check(
        rz(json!({"width": "50%", "height": 100})),
        &["operations.resizing.height"],
    );
    check(rz(json!({"depth": 3})), &["operations.resizing.depth"]);
    for f in ["crop", "cover", "bounds", "canvas", "outpaint"] {
        check(rz(json!({"width": 10, "fit": f})), &[]);
        check(rz(json!({"width": 10, "fit": {"type": f}})), &[]);
    }
    check(rz(json!({"fit": "stretch"})), &["operations.resizing.fit"]);
    check(rz(json!({"fit": 1})), &["operations.resizing.fit"]);
    check(rz(json!({"fit": {}})), &["operations.resizing.fit.type"]);
    check(
        rz(json!({"fit": {"type": "fill"}})),
        &["operations.resizing.fit.type"],
    );
    check(rz(json!({"fit": {"type": "crop", "crop": "center"}})), &[]);
    check(rz(json!({"fit": {"type": "crop", "crop": "smart"}})), &[]);
    check(
        rz(json!({"fit": {"type": "crop", "crop": "top"}})),
        &["operations.resizing.fit.crop"],
    );
    check(
        rz(json!({"fit": {"type": "cover", "crop": "smart"}})),
        &["operations.resizing.fit.crop"],
    );
    check(
        rz(json!({"fit": {"type": "canvas", "color": "#fff"}})),
        &["operations.resizing.fit.color"],
    );
    for f in ["0%", "9%", "15%", "60%", "200%"] {
        check(
            rz(json!({"fit": {"type": "outpaint", "feathering": f}})),
            &[],
        );
    }
    for f in [
        json!("05%"),
        json!("15"),
        json!("1.5%"),
        json!(15),
        json!("%"),
    ] {
        check(
            rz(json!({"fit": {"type": "outpaint", "feathering": f}})),
            &["operations.resizing.fit.feathering"],
        );
    }
    for by in [
        "10%",
        "5% 15%",
        "5% 0%",
        "1024px",
        "1024px 512px",
        "0px 1024px",
    ] {
        check(
            rz(json!({"fit": {"type": "outpaint", "outpaint_by": by}})),
            &[],
        );
    }
    for by in [
        json!("10"),
        json!("1px 2px 3px"),
        json!("10 %"),
        json!(""),
        json!(10),
        json!("5%  5%"),
    ] {
        check(
            rz(json!({"fit": {"type": "outpaint", "outpaint_by": by}})),
            &["operations.resizing.fit.outpaint_by"],
        );
    }

    let r = ok(rz(
        json!({"width": "50%", "fit": {"type": "crop", "crop": "smart"}}),
    ))
    .operations
    .resizing
    .expect("rz");
    assert_eq!(
        (r.width, r.height, r.fit),
        (Size::Percent(50.0), Size::Auto, Fit::Crop(CropMode::Smart))
    );
    let r = ok(rz(
        json!({"width": 10, "height": 20, "fit": {"type": "outpaint", "outpaint_by": "5% 20px"}}),
    ))
    .operations
    .resizing
    .expect("rz");
    match r.fit {
        Fit::Outpaint {
            feathering,
            outpaint_by: Some(by),
        } => {
            assert_eq!(feathering, 15);
            assert_eq!(
                (by.width, by.height),
                (Length::Percent(5.0), Length::Px(20))
            );
        }
        other => panic!("unexpected fit {other:?}"),
    }
}

#[test]
fn padding_table() {
    for p in [
        "10%",
        "5% 25%",
        "0%",
        "49.5%",
        "0% 49%",
        "30px",
        "100px 150px",
        "0px 400px 0px 0px",
        "1% 2% 3% 4%",
        "10% 20px",
    ] {
        check(op(json!({"padding": p})), &[]);
    }
    for p in [
        json!("51%"),
        json!("50%"),
        json!("50% 10% 50% 10%"),
        json!("10"),
        json!("10pt"),
        json!("1px 2px 3px"),
        json!("1px 2px 3px 4px 5px"),
        json!(""),
        json!(" 10%"),
        json!(10),
        json!({"top": "10%"}),
    ] {
        check(op(json!({"padding": p})), &["operations.padding"]);
    }
    let p = ok(op(json!({"padding": "0px 400px 10px 5px"})))
        .operations
        .padding
        .expect("padding");
    assert_eq!(
        (p.top, p.right, p.bottom, p.left),
        (
            Length::Px(0),
            Length::Px(400),
            Length::Px(10),
            Length::Px(5)
        )
    );
    let p = ok(op(json!({"padding": "5% 25%"})))
        .operations
        .padding
        .expect("padding");
    assert_eq!(
        (p.top, p.right),
        (Length::Percent(5.0), Length::Percent(25.0))
    );
}

#[test]
fn privacy_and_generative_table() {
    check(
        op(json!({"privacy": {"blur_car_plate": true, "identity_crop": false}})),
        &[],
    );
    check(
        op(json!({"privacy": {"blur_car_plate": "true"}})),
        &["operations.privacy.blur_car_plate"],
    );
    check(
        op(json!({"privacy": {"blur_faces": true}})),
        &["operations.privacy.blur_faces"],
    );
    let st = |v: Value| op(json!({"generative": {"style_transfer": v}}));
    check(
        st(json!({"style_reference_image": "https://x.com/s.jpg"})),
        &[],
    );
    check(
        st(
            json!({"style_reference_image": "https://x.com/s.jpg", "prompt": "oil", "depth_strength": 0, "denoising_strength": 1, "style_strength": 0.5}),
        ),
        &[],
    );
    check(
        st(json!({})),
        &["operations.generative.style_transfer.style_reference_image"],
    );
    check(
        st(json!({"style_reference_image": "https://x.com/s.jpg", "prompt": "ab"})),
        &["operations.generative.style_transfer.prompt"],
    );
    check(
        st(
            json!({"style_reference_image": "https://x.com/s.jpg", "depth_strength": 1.01, "style_strength": -0.1, "denoising_strength": "1"}),
        ),
        &[
            "operations.generative.style_transfer.depth_strength",
            "operations.generative.style_transfer.style_strength",
            "operations.generative.style_transfer.denoising_strength",
        ],
    );
    check(
        op(json!({"generative": {"inpaint": {}}})),
        &["operations.generative.inpaint"],
    );
}

#[test]
fn output_table() {
    check(body(json!({}), None), &[]);
    check(out(json!("storage://bucket/folder/out.jpg")), &[]);
    check(out(json!("https://x.com/out")), &[]);
    check(out(json!("")), &["output"]);
    check(out(json!("bucket/out.jpg")), &["output"]);
    check(out(json!(5)), &["output"]);
    check(out(json!({})), &[]);
    check(out(json!({"destination": "storage://b/f/"})), &[]);
    check(
        out(json!({"destination": "nowhere"})),
        &["output.destination"],
    );
    check(out(json!({"dest": "storage://b/f/"})), &["output.dest"]);
    for f in ["jpeg", "png", "webp", "avif", "tiff"] {
        check(out(json!({"format": f})), &[]);
        check(out(json!({"format": {"type": f}})), &[]);
    }
    check(out(json!({"format": "jpg"})), &["output.format"]);
    check(
        out(json!({"format": {"type": "gif"}})),
        &["output.format.type"],
    );
    check(out(json!({"format": {}})), &["output.format.type"]);
    check(
        out(json!({"format": {"type": "bmp", "quality": 5, "level": 1}})),
        &["output.format.type", "output.format.level"],
    );
    check(out(json!({"format": 1})), &["output.format"]);
    for q in [1, 100] {
        check(
            out(json!({"format": {"type": "jpeg", "quality": q, "progressive": false}})),
            &[],
        );
    }
    for q in [json!(0), json!(101), json!(85.5), json!("85")] {
        check(
            out(json!({"format": {"type": "jpeg", "quality": q}})),
            &["output.format.quality"],
        );
    }
    check(
        out(json!({"format": {"type": "jpeg", "progressive": 1}})),
        &["output.format.progressive"],
    );
    check(
        out(json!({"format": {"type": "jpeg", "compression": "lossy"}})),
        &["output.format.compression"],
    );
    for c in ["fast", "best", "optimal"] {
        check(
            out(json!({"format": {"type": "png", "compression": c}})),
            &[],
        );
    }
    check(
        out(json!({"format": {"type": "png", "compression": "lossless"}})),
        &["output.format.compression"],
    );
    check(
        out(json!({"format": {"type": "png", "quality": 5}})),
        &["output.format.quality"],
    );
    for f in ["webp", "avif", "tiff"] {
        for c in [
            json!("lossy"),
            json!("lossless"),
            json!({"type": "lossy"}),
            json!({"type": "lossy", "quality": 1}),
            json!({"type": "lossy", "quality": 100}),
            json!({"type": "lossless"}),
        ] {
            check(out(json!({"format": {"type": f, "compression": c}})), &[]);
        }
        check(
            out(json!({"format": {"type": f, "compression": "best"}})),
            &["output.format.compression"],
        );
        check(
            out(json!({"format": {"type": f, "compression": {"type": "lossy", "quality": 0}}})),
            &["output.format.compression.quality"],
        );
        check(
            out(json!({"format": {"type": f, "compression": {"type": "lossless", "quality": 50}}})),
            &["output.format.compression.quality"],
        );
        check(
            out(json!({"format": {"type": f, "compression": {}}})),
            &["output.format.compression.type"],
        );
        check(
            out(json!({"format": {"type": f, "compression": 3}})),
            &["output.format.compression"],
        );
    }
    check(out(json!({"metadata": {"dpi": 300}})), &[]);
    check(
        out(json!({"metadata": {"dpi": 0}})),
        &["output.metadata.dpi"],
    );
    check(
        out(json!({"metadata": {"dpi": "300"}})),
        &["output.metadata.dpi"],
    );
    for cs in [
        json!("RGB"),
        json!("CMYK"),
        json!({"type": "RGB"}),
        json!({"type": "CMYK"}),
    ] {
        check(out(json!({"metadata": {"color_space": cs}})), &[]);
    }
    for p in [
        "ISO_Coated",
        "ISO_Uncoated",
        "USWeb_Coated",
        "USWeb_Uncoated",
    ] {
        check(
            out(json!({"metadata": {"color_space": {"type": "CMYK", "color_profile": p}}})),
            &[],
        );
    }
    check(
        out(json!({"metadata": {"color_space": "rgb"}})),
        &["output.metadata.color_space"],
    );
    check(
        out(json!({"metadata": {"color_space": {"type": "CMYK", "color_profile": "FOGRA"}}})),
        &["output.metadata.color_space.color_profile"],
    );
    check(
        out(json!({"metadata": {"color_space": {"type": "RGB", "color_profile": "ISO_Coated"}}})),
        &["output.metadata.color_space.color_profile"],
    );
    check(
        out(json!({"metadata": {"color_space": {}}})),
        &["output.metadata.color_space.type"],
    );
    check(
        out(json!({"metadata": {"exif": true}})),
        &["output.metadata.exif"],
    );
}

#[test]
fn output_format_and_defaults() {
    let cases = [
        (None, OutputFormat::Jpeg, "jpg"),
        (Some(json!("storage://b/x.png")), OutputFormat::Jpeg, "jpg"),
        (Some(json!({"format": "png"})), OutputFormat::Png, "png"),
        (
            Some(json!({"format": {"type": "webp"}})),
            OutputFormat::Webp,
            "webp",
        ),
        (Some(json!({"format": "avif"})), OutputFormat::Avif, "avif"),
        (
            Some(json!({"format": {"type": "tiff", "compression": "lossy"}})),
            OutputFormat::Tiff,
            "tiff",
        ),
    ];
    for (output, format, ext) in cases {
        let r = ok(body(json!({}), output));
        assert_eq!(r.output_format(), format);
        assert_eq!(r.output_format().extension(), ext);
    }
    let r = ok(out(json!("storage://b/x.png")));
    assert_eq!(r.output.destination.as_deref(), Some("storage://b/x.png"));
    assert_eq!(
        ok(out(json!({"format": "jpeg"}))).output.format,
        FormatOptions::Jpeg {
            quality: 85,
            progressive: true
        }
    );
    assert_eq!(
        ok(out(json!({"format": "png"}))).output.format,
        FormatOptions::Png {
            compression: PngCompression::Optimal
        }
    );
    assert_eq!(
        ok(out(json!({"format": "webp"}))).output.format,
        FormatOptions::Webp {
            compression: Compression::Lossy { quality: 75 }
        }
    );
    assert_eq!(
        ok(out(
            json!({"format": {"type": "avif", "compression": "lossy"}})
        ))
        .output
        .format,
        FormatOptions::Avif {
            compression: Compression::Lossy { quality: 50 }
        }
    );
    assert_eq!(
        ok(out(json!({"format": "tiff"}))).output.format,
        FormatOptions::Tiff {
            compression: Compression::Lossless
        }
    );
    let r = ok(json!({"input": "storage://demo/a-10x10.png", "operations": {}}));
    assert_eq!(r.input.as_deref(), Some("storage://demo/a-10x10.png"));
}

#[test]
fn reports_every_problem_at_once() {
    let json = json!({
        "input": "ftp://nope",
        "operations": {
            "restorations": {"upscale": "x", "polish": 1},
            "adjustments": {"exposure": 500, "hdr": {"intensity": 101}},
            "background": {"color": "red", "remove": {"category": "x"}},
            "resizing": {"width": 100, "height": "50%", "fit": {"type": "crop", "crop": "top"}},
            "padding": "60%",
            "privacy": {"identity_crop": 0},
            "bogus": true
        },
        "output": {"format": {"type": "jpeg", "quality": 0}, "destination": "x", "more": 1},
        "extra": null
    });
    check(
        json,
        &[
            "input",
            "operations.restorations.upscale",
            "operations.restorations.polish",
            "operations.adjustments.exposure",
            "operations.adjustments.hdr.intensity",
            "operations.background.color",
            "operations.background.remove.category",
            "operations.resizing.height",
            "operations.resizing.fit.crop",
            "operations.padding",
            "operations.privacy.identity_crop",
            "operations.bogus",
            "output.format.quality",
            "output.destination",
            "output.more",
            "extra",
        ],
    );
}

#[test]
fn messages_name_the_allowed_values() {
    let errs = request::validate(
        &op(json!({"resizing": {"fit": {"type": "zoom"}}, "adjustments": {"contrast": 200}})),
        InputRule::Required,
    )
    .expect_err("invalid");
    let msg = |path: &str| {
        errs.iter()
            .find(|e| e.path == path)
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    let fit = msg("operations.resizing.fit.type");
    for name in ["crop", "cover", "bounds", "canvas", "outpaint"] {
        assert!(fit.contains(name), "{fit}");
    }
    assert!(msg("operations.adjustments.contrast").contains("-100..100"));
    let errs = request::validate(&op(json!({"resizing": {"size": 1}})), InputRule::Required)
        .expect_err("invalid");
    assert!(
        errs[0].message.contains("width, height, fit"),
        "{}",
        errs[0].message
    );
}
