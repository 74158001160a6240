//! Folder recipes (README "Folder recipes"): an image dropped into a folder holding a `.claid.yaml` becomes a
//! one-job manifest, validated by the same code as a manifest (the recipe plus a one-image
//! list), so recipes get the same merging, checks and line numbers.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::manifest::doc::{Doc, Item};
use crate::manifest::outbox::Outbox;
use crate::manifest::parse::{self, utf8_text};
use crate::manifest::problems::Collector;
use crate::manifest::validate::{Context, unknown_key_message, validate};
use crate::manifest::{
    Input, LoadContext, ManifestError, ManifestSpec, Problem, RECIPE_NAME, recipe_for, relative_to,
};
use crate::yaml::{self, value::Syntax};

/// Keys of a recipe: those of a manifest without `images`.
const RECIPE_KEYS: &[&str] = &["profile", "operations", "output"];

/// Validates the image at `image` against its folder's recipe and builds a one-job manifest.
///
/// `rel` is the image's inbox-relative path (the store keys drops by it); the output goes to the
/// mirrored path with the recipe's format extension (`a/b/shoe.png` → `a/b/shoe.jpg`);
/// `sha256` hashes the recipe bytes and the image content, so a changed recipe or a changed
/// image is a new drop. The recipe is checked by the same code as a manifest, and every problem
/// carries its line in the recipe.
pub fn load_image(ctx: &LoadContext<'_>, image: &Path) -> Result<ManifestSpec, ManifestError> {
    let recipe = recipe_for(image);
    let fail = |problems: Vec<Problem>| ManifestError::Recipe {
        image: image.to_owned(),
        recipe: recipe.clone(),
        problems,
    };
    let one = |line: Option<usize>, message: String| fail(vec![Problem { line, message }]);
    let Some(name) = image.file_name().and_then(|n| n.to_str()) else {
        return Err(one(
            None,
            format!(
                "the image name {} is not UTF-8; rename the file",
                image.display()
            ),
        ));
    };
    let Read {
        bytes,
        text,
        view,
        mut problems,
    } = read(ctx, &recipe).map_err(fail)?;
    let text = text.as_str();
    let rel = relative_to(ctx.inbox, image);
    let validation = image_context(ctx, image);
    let mut outbox = Outbox::new(ctx.outbox);
    let doc = Doc {
        root: Value::Object(view),
        images: Some(vec![Item::other(&Value::String(name.to_owned()))]),
    };
    let jobs = validate(doc, &validation, &mut outbox, &mut problems);
    // Problems about the synthetic `images[0]` are about the dropped image itself, not about a
    // line of the recipe: told first, with no line.
    let (about_image, about_recipe): (Vec<_>, Vec<_>) = std::mem::take(&mut problems.pending)
        .into_iter()
        .partition(|pending| pending.path.starts_with("images[0]"));
    problems.pending = about_recipe;
    if !problems.is_empty() || !about_image.is_empty() {
        let mut all: Vec<Problem> = about_image
            .into_iter()
            .map(|pending| Problem {
                line: None,
                message: format!("image `{name}`: {}", pending.message),
            })
            .collect();
        all.extend(problems.finish(text));
        return Err(fail(all));
    }
    let image_sha = match jobs.first().map(|job| &job.input) {
        Some(Input::Local(file)) => file.sha256.clone(),
        _ => {
            return Err(one(
                None,
                format!("image `{name}` could not be turned into a job"),
            ));
        }
    };
    let mut hasher = Sha256::new();
    hasher.update(&bytes);
    hasher.update([0u8]);
    hasher.update(image_sha.as_bytes());
    Ok(ManifestSpec {
        rel,
        sha256: hex::encode(hasher.finalize()),
        jobs,
    })
}

/// How an image beside `sibling` (the image itself, or the recipe) is validated: relative to
/// its folder, into the mirrored folder of the outbox, as a recipe's image.
fn image_context<'a>(ctx: &LoadContext<'a>, sibling: &'a Path) -> Context<'a> {
    Context {
        inbox_canonical: std::fs::canonicalize(ctx.inbox).unwrap_or_else(|_| ctx.inbox.to_owned()),
        manifest_dir: sibling.parent().unwrap_or(ctx.inbox),
        out_dir: relative_to(ctx.inbox, sibling)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        profiles: ctx.profiles,
        storages: ctx.storages,
        recipe_image: true,
        max_input_bytes: ctx.limits.max_input_bytes,
    }
}

/// A recipe read and parsed: its bytes and text, the manifest view of its keys (without
/// unknown ones, which are in `problems` already).
struct Read {
    bytes: Vec<u8>,
    text: String,
    view: Map<String, Value>,
    problems: Collector,
}

/// Reads and parses `recipe` and checks its keys; the problems that stop it early.
fn read(ctx: &LoadContext<'_>, recipe: &Path) -> Result<Read, Vec<Problem>> {
    let one = |line: Option<usize>, message: String| vec![Problem { line, message }];
    let bytes = read_recipe(recipe, ctx.limits.max_manifest_bytes).map_err(|m| one(None, m))?;
    let text = utf8_text(&bytes, "recipe", "YAML").map_err(|p| vec![p])?;
    let root = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        match yaml::parse(text, &parse::bounds(ctx.limits)) {
            Ok(Value::Null) => Value::Object(Map::new()),
            Ok(root) => root,
            Err(err) => return Err(vec![parse::problem(err, Syntax::Yaml, text)]),
        }
    };
    let Value::Object(top) = root else {
        return Err(one(
            None,
            format!(
                "the recipe must be a mapping of `profile`, `operations` and `output`, found {}",
                yaml::kind(&root)
            ),
        ));
    };
    let mut problems = Collector::default();
    // Unknown keys are reported here (with recipe wording) and left out of the manifest view.
    let mut view = Map::new();
    for (key, value) in &top {
        if RECIPE_KEYS.contains(&key.as_str()) {
            view.insert(key.clone(), value.clone());
        } else if key == "images" {
            problems.add(
                key,
                "a folder recipe has no `images`: every image dropped into this folder is one; remove the key (or rename the file to make it a manifest)".into(),
            );
        } else {
            problems.add(key, unknown_key_message(key, RECIPE_KEYS));
        }
    }
    let text = text.to_owned();
    Ok(Read {
        bytes,
        text,
        view,
        problems,
    })
}

/// Checks a recipe on its own (`validate .claid.yaml`): its keys, profile, operations and
/// output, as they would apply to an image dropped beside it; every problem with its line.
pub fn check(ctx: &LoadContext<'_>, recipe: &Path) -> Result<(), ManifestError> {
    let fail = |problems: Vec<Problem>| ManifestError::Recipe {
        image: recipe.with_file_name("IMAGE.png"),
        recipe: recipe.to_owned(),
        problems,
    };
    let Read {
        text,
        view,
        mut problems,
        ..
    } = read(ctx, recipe).map_err(fail)?;
    let validation = image_context(ctx, recipe);
    let mut outbox = Outbox::new(ctx.outbox);
    // An image stands in for those dropped later: what is said about it is not the recipe's.
    let doc = Doc {
        root: Value::Object(view),
        images: Some(vec![Item::other(&Value::String(
            "https://recipe.invalid/IMAGE.png".to_owned(),
        ))]),
    };
    let _ = validate(doc, &validation, &mut outbox, &mut problems);
    problems
        .pending
        .retain(|pending| !pending.path.starts_with("images[0]"));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(fail(problems.finish(&text)))
    }
}

/// Reads a recipe, refusing one over `limit` bytes; the error is the problem's message.
fn read_recipe(recipe: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let cannot = |err: std::io::Error| {
        format!(
            "cannot read the folder recipe {}: {err}; check its permissions",
            recipe.display()
        )
    };
    let file = std::fs::File::open(recipe).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "the recipe is over the limit of {limit} bytes (limits.max_manifest_bytes)"
        ));
    }
    Ok(bytes)
}

/// `rejected/<image>.error.txt` for an image its folder recipe could not process.
pub fn recipe_error_txt(out: &mut String, image: &Path, recipe: &Path, problems: &[Problem]) {
    let recipe_name = recipe
        .file_name()
        .map_or_else(|| RECIPE_NAME.into(), |n| n.to_string_lossy());
    let _ = writeln!(out, "image: {}", crate::text::Escaped::path(image));
    let _ = writeln!(out, "recipe: {}", recipe.display());
    let _ = writeln!(
        out,
        "rejected: {} problem{} found; nothing was submitted.",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "Fix every problem below, then drop the image into the folder again.\n"
    );
    for problem in problems {
        match problem.line {
            Some(line) => {
                let _ = writeln!(out, "{recipe_name} line {line}: {}", problem.message);
            }
            None => {
                let _ = writeln!(out, "{}", problem.message);
            }
        }
    }
}
