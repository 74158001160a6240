//! Manifests (README "How it works"): a manifest's bytes plus the profiles → a [`ManifestSpec`] with one
//! [`JobSpec`] per image, or every problem with its line, before anything is spent.
//!
//! The work is split by reason to change: `doc` turns text into data (one seed, bounded as it
//! streams), `parse` turns a parse failure into a problem, `validate` checks keys, merges and
//! images, `input` checks inputs (a local file must be a non-empty image inside the inbox),
//! `output_name` derives and checks output names, `outbox` checks them against the outbox as
//! it is (links, `NAME_MAX`, `PATH_MAX`), `merge` and `key` hold the merge rules and the job
//! key, `recipe` folder recipes, and `problems` collects problems and finds their lines.
//!
//! Merge rules: objects merge key by key, recursively; scalars and lists replace; an explicit
//! `null` removes the key. The order is profile, then the manifest's `operations`/`output`,
//! then the image's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{Limits, Profile};
use crate::filename;
use crate::manifest::outbox::Outbox;
use crate::manifest::problems::Collector;
pub(crate) use crate::manifest::validate::destination_problem;
pub(crate) use crate::manifest::validate::object_place;
use crate::manifest::validate::{Context, validate};
use crate::yaml::value::Syntax;

pub mod doc;
pub(crate) mod input;
pub mod key;
mod merge;
mod outbox;
mod output_name;
mod parse;
mod problems;
mod recipe;
mod validate;

/// At most this many problems are listed; the rest are counted.
pub const MAX_PROBLEMS: usize = 200;

/// What a manifest is validated against besides its own bytes.
#[derive(Clone, Copy, Debug)]
pub struct LoadContext<'a> {
    /// The inbox the manifest is in: local inputs must stay inside it, and the manifest's path
    /// relative to it is mirrored in the outbox.
    pub inbox: &'a Path,
    /// The outbox: outputs must not run through links or onto folders already in it, and must
    /// fit its filesystem's `NAME_MAX` and `PATH_MAX`. `None` (`validate` without a config)
    /// checks lengths only, against 255 / 4096.
    pub outbox: Option<&'a Path>,
    pub profiles: &'a BTreeMap<String, Profile>,
    pub limits: &'a Limits,
    /// The config's `storages`: `storage://NAME/…` inputs and destinations are checked against
    /// them (and NAME rewritten to the connector's `claid_name`).
    pub storages: &'a BTreeMap<String, crate::config::StorageEntry>,
}

/// A validated manifest: everything needed to register its jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestSpec {
    /// Path relative to the inbox (`a/b/shoes.yaml`); the outbox mirrors it.
    pub rel: PathBuf,
    /// Hex sha256 of the file bytes: a re-drop with the same hash is the same manifest.
    pub sha256: String,
    pub jobs: Vec<JobSpec>,
}

/// One image edit of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Position in the manifest's `images` list.
    pub idx: usize,
    pub input: Input,
    /// `{"operations": .., "output": ..}` after the merge, WITHOUT `input` (added at submit, or
    /// sent as the upload's `data` part as is). Shared: images with the same body (all those
    /// without operations or output of their own) hold one text.
    pub body: Body,
    /// Output path relative to the outbox root (`a/b/shoes/sku-1.webp`).
    pub output_rel: PathBuf,
    /// Sha256 of input identity, canonical body and `output_rel` (README "Incremental").
    pub key: key::JobKey,
}

/// A job's request body as its canonical JSON text (keys sorted, no whitespace:
/// [`key::canonical_json`], what the job key hashes). Kept as text until registration parses
/// it: a parsed body of a few operations is about 3 KB of maps, its text about 100 bytes, and
/// a validated manifest holds every image's body until the last job is registered (100,000
/// images with operations of their own peaked at 335 MB). Equal bodies share one text.
#[derive(Clone, PartialEq, Eq)]
pub struct Body(Arc<str>);

impl Body {
    /// The body, parsed. (Its text was written from a JSON value, so it always parses.)
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or_default()
    }

    /// The canonical JSON text.
    pub fn text(&self) -> &str {
        &self.0
    }

    /// Whether two bodies are one shared text (not only equal ones).
    pub fn shares(&self, other: &Body) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bodies as texts shared by every image that has the same one.
#[derive(Default)]
pub(crate) struct Bodies(std::collections::HashSet<Arc<str>>);

impl Bodies {
    /// The body of this canonical text, sharing the text of an equal one made before.
    pub(crate) fn intern(&mut self, canonical: String) -> Body {
        if let Some(text) = self.0.get(canonical.as_str()) {
            return Body(Arc::clone(text));
        }
        let text: Arc<str> = Arc::from(canonical);
        self.0.insert(Arc::clone(&text));
        Body(text)
    }
}

/// Jobs' bodies parsed for their store records, parsed once for a run of jobs sharing one
/// text (a manifest whose images share a body keeps one parsed copy in its records too).
#[derive(Default)]
pub struct ParsedBodies {
    last: Option<(Body, Arc<Value>)>,
}

impl ParsedBodies {
    /// `body` parsed (the last one again when it shares its text).
    pub fn get(&mut self, body: &Body) -> Arc<Value> {
        match &self.last {
            Some((last, value)) if last.shares(body) => Arc::clone(value),
            _ => {
                let value = Arc::new(body.value());
                self.last = Some((body.clone(), Arc::clone(&value)));
                value
            }
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `http(s)://` or `storage://`: submitted to the async endpoint.
    Remote(String),
    /// A file in the inbox, uploaded through the sync upload endpoint. Boxed: an `Input` is
    /// then the size of a URL's string (a 100,000-image manifest of URLs holds 5 MB less).
    Local(Box<LocalFile>),
}

/// A local input: a file in the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// Canonical absolute path, inside the inbox.
    pub path: PathBuf,
    /// Path relative to the inbox (for reports).
    pub rel: PathBuf,
    /// Hex sha256 of the content when validated: the job key depends on it.
    pub sha256: String,
}

impl Input {
    /// What the job key hashes for the input: the URL, or `local:` + content hash.
    pub fn identity(&self) -> String {
        match self {
            Input::Remote(url) => url.clone(),
            Input::Local(file) => format!("local:{}", file.sha256),
        }
    }

    /// How the input is shown in reports: the URL or the inbox-relative path.
    pub fn display(&self) -> String {
        match self {
            Input::Remote(url) => url.clone(),
            Input::Local(file) => file.rel.display().to_string(),
        }
    }
}

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Names the field and the fix (`images[3].output: ... ; use ...`).
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "cannot read manifest {}: {}",
        crate::text::Escaped::path(path),
        crate::os_error::OsCause(source)
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid manifest {path} ({})", problems_told(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
    /// An image dropped into a recipe folder that cannot become a job: the folder's recipe is
    /// invalid or unreadable, or the image itself is (README "Folder recipes").
    #[error(
        "image {image} not processed ({}; its folder recipe is {recipe})",
        problems_told(problems)
    )]
    Recipe {
        /// The dropped image (it is the file moved to `rejected/`).
        image: PathBuf,
        /// The `.claid.yaml` the problems' lines refer to.
        recipe: PathBuf,
        problems: Vec<Problem>,
    },
}

/// How many problems, and the first with its line, as one log line tells them (the rest are
/// in the error file): a journal reader sees what to fix without opening it.
fn problems_told(problems: &[Problem]) -> String {
    let count = match problems.len() {
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    match problems.first() {
        Some(first) => {
            let line = first
                .line
                .map(|l| format!("line {l}: "))
                .unwrap_or_default();
            let first_of = if problems.len() > 1 {
                "the first: "
            } else {
                ""
            };
            format!(
                "{count}; {first_of}{line}{}",
                crate::text::escape(&crate::text::redact_urls_in(&first.message))
            )
        }
        None => count,
    }
}

impl ManifestError {
    /// Stable kebab-case code.
    pub fn code(&self) -> &'static str {
        match self {
            ManifestError::Read { .. } => "manifest-unreadable",
            ManifestError::Invalid { .. } => "manifest-invalid",
            ManifestError::Recipe { .. } => "recipe-invalid",
        }
    }

    /// The problems of an invalid manifest (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ManifestError::Invalid { problems, .. } => problems,
            ManifestError::Recipe { problems, .. } => problems,
            ManifestError::Read { .. } => &[],
        }
    }

    /// What `validate` and `plan` print: [`ManifestError::error_txt`]'s problems, said of a
    /// check (nothing was rejected or dropped).
    pub fn check_txt(&self) -> String {
        let text = self.error_txt();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for line in &mut lines {
            if let Some(rest) = line.strip_prefix("rejected: ") {
                *line = format!("invalid: {}", rest.replace("; nothing was submitted.", "."));
            } else if line.starts_with("Fix every problem below, then drop") {
                *line = "Fix every problem below.".to_owned();
            } else if line.starts_with("Check its permissions, then drop") {
                *line = "Check its permissions.".to_owned();
            }
        }
        let mut out = lines.join("\n");
        out.push('\n');
        out
    }

    /// Contents of `rejected/<name>.error.txt`: the file and every problem with its line.
    pub fn error_txt(&self) -> String {
        let mut out = String::new();
        match self {
            ManifestError::Read { path, source } => {
                let _ = writeln!(out, "manifest: {}", crate::text::Escaped::path(path));
                let _ = writeln!(
                    out,
                    "cannot read the file: {}",
                    crate::os_error::OsCause(source)
                );
                let _ = writeln!(
                    out,
                    "Check its permissions, then drop it into the inbox again."
                );
            }
            ManifestError::Invalid { path, problems } => {
                let _ = writeln!(out, "manifest: {}", crate::text::Escaped::path(path));
                let _ = writeln!(
                    out,
                    "rejected: {} problem{} found; nothing was submitted.",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                );
                let _ = writeln!(
                    out,
                    "Fix every problem below, then drop the file into the inbox again.\n"
                );
                for problem in problems {
                    match problem.line {
                        Some(line) => {
                            let _ = writeln!(out, "line {line}: {}", problem.message);
                        }
                        None => {
                            let _ = writeln!(out, "{}", problem.message);
                        }
                    }
                }
            }
            ManifestError::Recipe {
                image,
                recipe,
                problems,
            } => recipe::recipe_error_txt(&mut out, image, recipe, problems),
        }
        // Written to `rejected/`, printed by `validate` and `plan` (a terminal, a CI log): a
        // password in a URL of the manifest (an input's or a destination's) is `REDACTED`.
        crate::text::redact_urls_in(&out).into_owned()
    }
}

/// Endings of a file still being copied or downloaded (`shoes.yaml.part`): never a manifest
/// ([`is_manifest_name`]), and named by the watcher once one lies there unchanged for long.
pub const COPY_IN_PROGRESS: [&str; 3] = [".tmp", ".part", ".crdownload"];

/// Whether a file in the inbox is a manifest: `*.yaml`, `*.yml`, `*.json`, but not hidden,
/// temporary, partial, office lock, editor swap or backup files, folder recipes, or reports.
pub fn is_manifest_name(path: &Path) -> bool {
    let Some(name) = path.file_name() else {
        return false;
    };
    // By bytes, not `to_str`: a name that is not UTF-8 (Latin-1 from an SMB share) is still a
    // manifest, which `load` rejects with a message instead of it lying unseen in the inbox.
    let lower = String::from_utf8_lossy(name.as_encoded_bytes()).to_ascii_lowercase();
    if lower.starts_with('.') || is_tool_file(&lower) || lower.ends_with(".report.json") {
        return false;
    }
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// Whether a file name (in lower case) is one a tool writes beside the team's files, never a
/// drop: a file still being copied or downloaded ([`COPY_IN_PROGRESS`]), an office lock file
/// (`~$…`), an editor's swap (`.swp`) or backup (`…~`).
pub fn is_tool_file(lower: &str) -> bool {
    lower.starts_with("~$")
        || lower.ends_with('~')
        || COPY_IN_PROGRESS
            .iter()
            .chain(&[".swp"])
            .any(|suffix| lower.ends_with(suffix))
}

/// Reads and validates the manifest at `manifest` (inside `ctx.inbox`).
pub fn load(ctx: &LoadContext<'_>, manifest: &Path) -> Result<ManifestSpec, ManifestError> {
    let limits = ctx.limits;
    let read_err = |source| ManifestError::Read {
        path: manifest.to_owned(),
        source,
    };
    let invalid = |problems: Vec<Problem>| ManifestError::Invalid {
        path: manifest.to_owned(),
        problems,
    };
    let one = |message: String| {
        invalid(vec![Problem {
            line: None,
            message,
        }])
    };
    let rel = relative_to(ctx.inbox, manifest);
    if rel.to_str().is_none() {
        return Err(one(format!(
            "the path `{}` is not valid UTF-8; rename the file (and its folders) using UTF-8 names",
            rel.to_string_lossy()
        )));
    }
    let meta = std::fs::metadata(manifest).map_err(read_err)?;
    if !meta.is_file() {
        return Err(one(
            "the manifest is not a regular file; drop a YAML or JSON file".into(),
        ));
    }
    let too_large = |size: u64| {
        format!(
            "the manifest is {size} bytes, over the limit of {} bytes (limits.max_manifest_bytes); split it into smaller manifests",
            limits.max_manifest_bytes
        )
    };
    if meta.len() > limits.max_manifest_bytes {
        return Err(one(too_large(meta.len())));
    }
    let file = std::fs::File::open(manifest).map_err(read_err)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limits.max_manifest_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limits.max_manifest_bytes {
        return Err(one(too_large(bytes.len() as u64)));
    }
    let syntax = if manifest
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
    {
        Syntax::Json
    } else {
        Syntax::Yaml
    };
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let (text, doc) =
        parse::parse_manifest(&bytes, syntax, limits).map_err(|problem| invalid(vec![problem]))?;
    let validation = Context {
        inbox_canonical: std::fs::canonicalize(ctx.inbox).unwrap_or_else(|_| ctx.inbox.to_owned()),
        manifest_dir: manifest.parent().unwrap_or(ctx.inbox),
        out_dir: rel.with_extension(""),
        profiles: ctx.profiles,
        storages: ctx.storages,
        recipe_image: false,
        max_input_bytes: ctx.limits.max_input_bytes,
    };
    let mut outbox = Outbox::new(ctx.outbox);
    let mut problems = Collector::default();
    let reports = filename::report_names(&rel, outbox.limits());
    for report in [&reports.json, &reports.csv] {
        if let Err(why) = outbox.check_report(report) {
            problems.add("", why);
            break;
        }
    }
    let jobs = validate(doc, &validation, &mut outbox, &mut problems);
    if problems.is_empty() {
        Ok(ManifestSpec { rel, sha256, jobs })
    } else {
        Err(invalid(problems.finish(text)))
    }
}

/// Validates the image at `image` against its folder's recipe and builds a one-job manifest.
///
/// `rel` is the image's inbox-relative path (the store keys drops by it); the output goes to the
/// mirrored path with the recipe's format extension (`a/b/shoe.png` → `a/b/shoe.jpg`);
/// `sha256` hashes the recipe bytes and the image content, so a changed recipe or a changed
/// image is a new drop. The recipe is checked by the same code as a manifest, and every problem
/// carries its line in the recipe.
pub fn load_recipe_image(
    ctx: &LoadContext<'_>,
    image: &Path,
) -> Result<ManifestSpec, ManifestError> {
    recipe::load_image(ctx, image)
}

/// Checks a folder recipe on its own (`validate .claid.yaml`); the problems carry its lines.
pub fn check_recipe(ctx: &LoadContext<'_>, recipe: &Path) -> Result<(), ManifestError> {
    recipe::check(ctx, recipe)
}

/// File name of a folder recipe: every image dropped directly into its folder becomes a job.
pub const RECIPE_NAME: &str = ".claid.yaml";

/// Extensions (lowercase) of the files a recipe folder turns into jobs.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "tiff", "tif", "bmp", "gif", "avif", "heic",
];

/// Whether a file is an image a recipe folder processes: an image extension, and not hidden,
/// an office lock file or a partial download (those end in another extension).
pub fn is_image_name(path: &Path) -> bool {
    // Read as bytes: a name that is not UTF-8 (`shoe\xfe1.png`) is still an image's, taken in
    // and refused with a reason (it lay in the inbox unseen, with no word).
    let Some(name) = path.file_name() else {
        return false;
    };
    let name = name.as_encoded_bytes();
    if name.starts_with(b".") || name.starts_with(b"~$") {
        return false;
    }
    match name.iter().rposition(|&b| b == b'.') {
        Some(dot) if dot > 0 => {
            let ext = &name[dot + 1..];
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known.as_bytes()))
        }
        _ => false,
    }
}

/// The recipe that governs an image: `.claid.yaml` in the image's own folder.
pub fn recipe_for(image: &Path) -> PathBuf {
    image
        .parent()
        .map_or_else(|| PathBuf::from(RECIPE_NAME), |dir| dir.join(RECIPE_NAME))
}

/// The job key of an input, body (without `input`) and output path (README "Incremental"): the hex sha256
/// of the input's identity, the body's canonical JSON and the path. Public for tools and tests.
pub fn key_for(input: &Input, body: &Value, output_rel: &Path) -> String {
    key::job_key(input, &key::canonical_json(body), output_rel).hex()
}

/// `manifest` relative to `inbox`, or its file name when it is elsewhere (`validate FILE`).
fn relative_to(inbox: &Path, manifest: &Path) -> PathBuf {
    if let Ok(rel) = manifest.strip_prefix(inbox) {
        return rel.to_owned();
    }
    if let (Ok(inbox), Ok(manifest_c)) = (
        std::fs::canonicalize(inbox),
        std::fs::canonicalize(manifest),
    ) {
        if let Ok(rel) = manifest_c.strip_prefix(inbox) {
            return rel.to_owned();
        }
    }
    manifest
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("manifest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body kept as its canonical text parses back to the value it was made from (numbers
    /// of every kind included), equal texts are shared, and a run of jobs sharing one text is
    /// parsed once.
    #[test]
    fn a_body_kept_as_text_is_the_value_it_was_made_from() {
        let value = serde_json::json!({
            "operations": {"resizing": {"width": 1000, "fit": "crop"}, "adjustments": {
                "hdr": 0.1, "exposure": -1.0000000000000002, "tiny": 5e-324, "big": 1.7976931348623157e308,
                "huge": u64::MAX, "neg": i64::MIN, "text": "é\"\n\u{1}", "list": [1, null, true, []]
            }},
            "output": {"format": {"type": "webp", "quality": 85}}
        });
        let mut bodies = Bodies::default();
        let body = bodies.intern(key::canonical_json(&value));
        assert_eq!(body.value(), value);
        assert_eq!(body.text(), key::canonical_json(&body.value()));
        let again = bodies.intern(key::canonical_json(&value.clone()));
        assert!(body.shares(&again), "equal bodies share one text");
        let other = bodies.intern(key::canonical_json(&serde_json::json!({"operations": {}})));
        assert!(!body.shares(&other));
        let mut parsed = ParsedBodies::default();
        let first = parsed.get(&body);
        assert!(Arc::ptr_eq(&first, &parsed.get(&again)), "parsed once");
        assert_eq!(*parsed.get(&other), serde_json::json!({"operations": {}}));
    }

    #[test]
    fn names() {
        for (name, ok) in [
            ("a.yaml", true),
            ("b/c.YML", true),
            ("d.json", true),
            (".hidden.yaml", false),
            ("x.yaml.tmp", false),
            ("x.part", false),
            ("x.yaml.crdownload", false),
            ("~$x.yaml", false),
            (".x.yaml.swp", false),
            ("x.yaml~", false),
            (".claid.yaml", false),
            ("x.report.json", false),
            ("x.txt", false),
            ("x.png", false),
        ] {
            assert_eq!(is_manifest_name(Path::new(name)), ok, "{name}");
        }
    }
}
