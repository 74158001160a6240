//! Manifests (SPEC §4.1): parsing, profile → manifest → image deep-merge, and validation of the
//! whole manifest before any spend.
//!
//! Merge rules: objects merge key by key, recursively; scalars and lists replace; an explicit
//! `null` removes the key. The order is profile, then the manifest's `operations`/`output`,
//! then the image's.
//!
//! Every problem is collected (capped at [`MAX_PROBLEMS`]) with the field it concerns and the
//! line it is on; lines come from a second YAML pass that only runs when there is a problem.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::claid::request::{self, InputRule, OutputFormat};
use crate::config::{Limits, Profile};
use crate::yaml::{self, LineMap};

mod doc;

use doc::{Doc, Item};

/// At most this many problems are listed; the rest are counted.
pub const MAX_PROBLEMS: usize = 200;

/// Longest input URL the API accepts (CONTRACT §4).
const MAX_INPUT_LEN: usize = 4096;

/// Placeholder input used to validate operations with the request schema: the input itself is
/// checked here (URL scheme, local file), so the schema only sees a well-formed one.
const PLACEHOLDER_INPUT: &str = "https://example.invalid/input.jpg";

const TOP_KEYS: &[&str] = &["profile", "operations", "output", "images"];
const IMAGE_KEYS: &[&str] = &["input", "output", "operations"];

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
    /// sent as the upload's `data` part as is). Shared: images without their own operations or
    /// output hold the manifest's one body, so a 100,000-image manifest keeps one copy.
    pub body: Arc<Value>,
    /// Output path relative to the outbox root (`a/b/shoes/sku-1.webp`).
    pub output_rel: PathBuf,
    /// Hex sha256 of input identity, canonical body and `output_rel` (SPEC §5.4).
    pub key: String,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `http(s)://` or `storage://`: submitted to the async endpoint.
    Remote(String),
    /// A file in the inbox, uploaded through the sync upload endpoint.
    Local {
        /// Canonical absolute path, inside the inbox.
        path: PathBuf,
        /// Path relative to the inbox (for reports).
        rel: PathBuf,
        /// Hex sha256 of the content when validated: the job key depends on it.
        sha256: String,
    },
}

impl Input {
    /// What the job key hashes for the input: the URL, or `local:` + content hash.
    pub fn identity(&self) -> String {
        match self {
            Input::Remote(url) => url.clone(),
            Input::Local { sha256, .. } => format!("local:{sha256}"),
        }
    }

    /// How the input is shown in reports: the URL or the inbox-relative path.
    pub fn display(&self) -> String {
        match self {
            Input::Remote(url) => url.clone(),
            Input::Local { rel, .. } => rel.display().to_string(),
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
    #[error("cannot read manifest {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid manifest {path} ({} problem{})", problems.len(), if problems.len() == 1 { "" } else { "s" })]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
    /// An image dropped into a recipe folder that cannot become a job: the folder's recipe is
    /// invalid or unreadable, or the image itself is (SPEC §4.3).
    #[error("image {image} not processed: folder recipe {recipe} ({} problem{})", problems.len(), if problems.len() == 1 { "" } else { "s" })]
    Recipe {
        /// The dropped image (it is the file moved to `rejected/`).
        image: PathBuf,
        /// The `.claid.yaml` the problems' lines refer to.
        recipe: PathBuf,
        problems: Vec<Problem>,
    },
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

    /// Contents of `rejected/<name>.error.txt`: the file and every problem with its line.
    pub fn error_txt(&self) -> String {
        let mut out = String::new();
        match self {
            ManifestError::Read { path, source } => {
                let _ = writeln!(out, "manifest: {}", path.display());
                let _ = writeln!(out, "cannot read the file: {source}");
                let _ = writeln!(
                    out,
                    "Check its permissions, then drop it into the inbox again."
                );
            }
            ManifestError::Invalid { path, problems } => {
                let _ = writeln!(out, "manifest: {}", path.display());
                let shown = problems
                    .iter()
                    .filter(|p| !p.message.starts_with('…'))
                    .count();
                let _ = writeln!(
                    out,
                    "rejected: {} problem{} found; nothing was submitted.",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                );
                let _ = shown;
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
            } => recipe_error_txt(&mut out, image, recipe, problems),
        }
        out
    }
}

/// Whether a file in the inbox is a manifest: `*.yaml`, `*.yml`, `*.json`, but not hidden,
/// temporary, partial, office lock, editor swap or backup files, folder recipes, or reports.
pub fn is_manifest_name(path: &Path) -> bool {
    let Some(name) = path.file_name() else {
        return false;
    };
    // By bytes, not `to_str`: a name that is not UTF-8 (Latin-1 from an SMB share) is still a
    // manifest, which `load` rejects with a message instead of it lying unseen in the inbox.
    let lower = String::from_utf8_lossy(name.as_encoded_bytes()).to_ascii_lowercase();
    if lower.starts_with('.') || lower.starts_with("~$") || lower.ends_with('~') {
        return false;
    }
    for suffix in [".tmp", ".part", ".crdownload", ".swp", ".report.json"] {
        if lower.ends_with(suffix) {
            return false;
        }
    }
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// Reads and validates the manifest at `manifest` (inside `inbox`).
pub fn load(
    inbox: &Path,
    manifest: &Path,
    profiles: &BTreeMap<String, Profile>,
    limits: &Limits,
) -> Result<ManifestSpec, ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: manifest.to_owned(),
        source,
    };
    let invalid = |message: String| ManifestError::Invalid {
        path: manifest.to_owned(),
        problems: vec![Problem {
            line: None,
            message,
        }],
    };
    if relative_to(inbox, manifest).to_str().is_none() {
        return Err(invalid(format!(
            "the path `{}` is not valid UTF-8; rename the file (and its folders) using UTF-8 names",
            relative_to(inbox, manifest).to_string_lossy()
        )));
    }
    let meta = std::fs::metadata(manifest).map_err(read_err)?;
    if !meta.is_file() {
        return Err(invalid("the manifest is not a regular file".into()));
    }
    let too_large = |size: u64| {
        format!(
            "the manifest is {size} bytes, over the limit of {} bytes (limits.max_manifest_bytes); split it into smaller manifests",
            limits.max_manifest_bytes
        )
    };
    if meta.len() > limits.max_manifest_bytes {
        return Err(invalid(too_large(meta.len())));
    }
    let file = std::fs::File::open(manifest).map_err(read_err)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limits.max_manifest_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limits.max_manifest_bytes {
        return Err(invalid(too_large(bytes.len() as u64)));
    }
    let rel = relative_to(inbox, manifest);
    let is_json = manifest
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
    let ctx = Context {
        inbox_canonical: std::fs::canonicalize(inbox).unwrap_or_else(|_| inbox.to_owned()),
        manifest_dir: manifest.parent().unwrap_or(inbox),
        out_dir: rel.with_extension(""),
        profiles,
        limits,
    };
    let sha256 = hex::encode(Sha256::digest(&bytes));
    match parse_bytes(&bytes, is_json, &ctx) {
        Ok(jobs) => Ok(ManifestSpec { rel, sha256, jobs }),
        Err(problems) => Err(ManifestError::Invalid {
            path: manifest.to_owned(),
            problems,
        }),
    }
}

/// Inputs of one validation that do not change per image.
struct Context<'a> {
    /// The inbox with symlinks resolved: local inputs must resolve inside it.
    inbox_canonical: PathBuf,
    /// Local inputs are relative to this folder.
    manifest_dir: &'a Path,
    /// The manifest's output folder relative to the outbox (`a/b/shoes`).
    out_dir: PathBuf,
    profiles: &'a BTreeMap<String, Profile>,
    limits: &'a Limits,
}

/// A problem before line lookup: the dotted path it concerns, and a fallback path.
struct Pending {
    /// Dotted path shown in the message and looked up first (`images[3].output`).
    path: String,
    /// Looked up when `path` is not in the document (a value merged from elsewhere).
    fallback: Option<String>,
    message: String,
}

#[derive(Default)]
struct Collector {
    pending: Vec<Pending>,
    /// Problems beyond the cap, only counted.
    more: usize,
    /// A problem with a known line (syntax errors).
    fixed: Vec<Problem>,
}

impl Collector {
    fn push(&mut self, path: impl Into<String>, fallback: Option<String>, message: String) {
        if self.pending.len() + self.fixed.len() >= MAX_PROBLEMS {
            self.more += 1;
            return;
        }
        self.pending.push(Pending {
            path: path.into(),
            fallback,
            message,
        });
    }

    fn add(&mut self, path: &str, message: String) {
        self.push(path, None, message);
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.fixed.is_empty() && self.more == 0
    }

    /// Resolves lines (building the line map once) and renders the final list.
    fn finish(self, text: Option<&str>) -> Vec<Problem> {
        let lines = text.map(LineMap::build).unwrap_or_default();
        let mut problems = self.fixed;
        for pending in self.pending {
            let line = lines
                .exact(&pending.path)
                .or_else(|| pending.fallback.as_deref().and_then(|f| lines.exact(f)))
                .or_else(|| lines.line(&pending.path));
            let message = if pending.path.is_empty() {
                pending.message
            } else {
                format!("{}: {}", pending.path, pending.message)
            };
            problems.push(Problem { line, message });
        }
        problems.sort_by_key(|p| p.line.unwrap_or(0));
        if self.more > 0 {
            problems.push(Problem {
                line: None,
                message: format!("… and {} more problems", self.more),
            });
        }
        problems
    }
}

fn parse_bytes(
    bytes: &[u8],
    is_json: bool,
    ctx: &Context<'_>,
) -> Result<Vec<JobSpec>, Vec<Problem>> {
    let single = |line: Option<usize>, message: String| vec![Problem { line, message }];
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(single(
            None,
            "the manifest is empty; it needs an `images` list (see SPEC §4.1)".into(),
        ));
    }
    let text = utf8_text(bytes, "manifest", "YAML or JSON").map_err(|(line, m)| single(line, m))?;
    let parsed = if is_json {
        doc::parse_json(yaml::strip_bom(text)).map_err(|err| yaml::ParseError {
            line: Some(err.line()).filter(|l| *l > 0),
            message: {
                let m = err.to_string();
                match m.find(" at line ") {
                    Some(idx) => m[..idx].to_owned(),
                    None => m,
                }
            },
        })
    } else {
        yaml::parse_with(text, doc::parse_yaml)
    };
    let doc = match parsed {
        Ok(doc) => doc,
        Err(err) => {
            let what = if is_json { "JSON" } else { "YAML" };
            return Err(single(
                err.line,
                format!("not valid {what}: {}", err.message),
            ));
        }
    };
    let mut problems = Collector::default();
    let jobs = validate(&doc, ctx, &mut problems);
    if problems.is_empty() {
        Ok(jobs)
    } else {
        Err(problems.finish(Some(text)))
    }
}

fn validate(doc: &Doc, ctx: &Context<'_>, problems: &mut Collector) -> Vec<JobSpec> {
    let root = &doc.root;
    let Value::Object(top) = root else {
        problems.add(
            "",
            format!(
                "the manifest must be a mapping with an `images` list, found {}",
                kind(root)
            ),
        );
        return Vec::new();
    };
    for key in top.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            problems.add(key, unknown_key_message(key, TOP_KEYS));
        }
    }

    // The profile, then the manifest's operations and output over it.
    let mut profile_name = None;
    let mut base_ops = Value::Object(Map::new());
    let mut base_output: Option<Value> = None;
    match top.get("profile") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) => match ctx.profiles.get(name) {
            Some(profile) => {
                profile_name = Some(name.clone());
                base_ops = profile.operations.clone();
                base_output = profile.output.clone();
            }
            None => {
                let known: Vec<String> = ctx.profiles.keys().map(|k| format!("`{k}`")).collect();
                problems.add(
                    "profile",
                    format!(
                        "unknown profile `{name}`; {}",
                        if known.is_empty() {
                            "the config defines no profiles".to_owned()
                        } else {
                            format!("use one of {}", known.join(", "))
                        }
                    ),
                );
            }
        },
        Some(other) => problems.add(
            "profile",
            format!("expected a profile name, found {}", kind(other)),
        ),
    }
    match top.get("operations") {
        None => {}
        Some(Value::Null) => base_ops = Value::Object(Map::new()),
        Some(ops @ Value::Object(_)) => merge(&mut base_ops, ops),
        Some(other) => problems.add(
            "operations",
            format!("expected a mapping of operations, found {}", kind(other)),
        ),
    }
    match top.get("output") {
        None => {}
        Some(Value::Null) => base_output = None,
        Some(out @ (Value::Object(_) | Value::String(_))) => merge_opt(&mut base_output, out),
        Some(other) => problems.add(
            "output",
            format!(
                "expected output options like `{{ format: webp }}`, found {}",
                kind(other)
            ),
        ),
    }

    let images: &[Item] = match (&doc.images, top.get("images")) {
        (Some(items), _) if items.is_empty() => {
            problems.add(
                "images",
                "the list is empty; add at least one image".to_owned(),
            );
            return Vec::new();
        }
        (Some(items), _) => items,
        (None, None) => {
            problems.add(
                "",
                "missing `images`: list the images to edit under `images:`".to_owned(),
            );
            return Vec::new();
        }
        (None, Some(other)) => {
            problems.add(
                "images",
                format!("expected a list of images, found {}", kind(other)),
            );
            return Vec::new();
        }
    };
    if images.len() > ctx.limits.max_images {
        problems.add(
            "images",
            format!(
                "{} images, over the limit of {} (limits.max_images); split the manifest",
                images.len(),
                ctx.limits.max_images
            ),
        );
        return Vec::new();
    }

    // The shared body is validated once: a problem in it is reported once, not per image.
    let shared_body = Arc::new(make_body(&base_ops, base_output.as_ref()));
    let shared_ok = check_schema(&shared_body, "", None, profile_name.as_deref(), problems)
        & check_no_destination(base_output.as_ref(), "output", problems);
    let shared_canonical = canonical_json(&shared_body);
    let shared_format = output_format(base_output.as_ref());

    let mut jobs = Vec::with_capacity(images.len());
    let mut outputs: HashMap<PathBuf, usize> = HashMap::with_capacity(images.len());
    let mut local_hashes: HashMap<PathBuf, String> = HashMap::new();
    for (idx, item) in images.iter().enumerate() {
        let image = item.to_value();
        let image = image.as_ref();
        let at = format!("images[{idx}]");
        let (input_value, image_map) = match image {
            Value::String(_) => (Some(image), None),
            Value::Object(map) => {
                for key in map.keys() {
                    if !IMAGE_KEYS.contains(&key.as_str()) {
                        problems.add(&format!("{at}.{key}"), unknown_key_message(key, IMAGE_KEYS));
                    }
                }
                (map.get("input"), Some(map))
            }
            other => {
                problems.add(
                    &at,
                    format!(
                        "expected a mapping with `input` (and optional `output`, `operations`), found {}",
                        kind(other)
                    ),
                );
                continue;
            }
        };
        let input_path = if image_map.is_some() {
            format!("{at}.input")
        } else {
            at.clone()
        };
        let input = match input_value {
            None | Some(Value::Null) => {
                problems.add(
                    &at,
                    "missing `input`: give a URL, a storage:// URI or a path relative to the manifest"
                        .to_owned(),
                );
                None
            }
            Some(Value::String(text)) => {
                check_input(text, &input_path, ctx, &mut local_hashes, problems)
            }
            Some(other) => {
                problems.add(
                    &input_path,
                    format!("expected a URL or path string, found {}", kind(other)),
                );
                None
            }
        };

        // Per-image overrides.
        let mut own_output_name: Option<(&str, String)> = None;
        let mut own_options: Option<&Value> = None;
        let mut own_ops: Option<&Value> = None;
        if let Some(map) = image_map {
            match map.get("output") {
                None | Some(Value::Null) => {}
                Some(Value::String(name)) => own_output_name = Some((name, format!("{at}.output"))),
                Some(options @ Value::Object(fields)) => {
                    match fields.get("path") {
                        None | Some(Value::Null) => {}
                        Some(Value::String(name)) => {
                            own_output_name = Some((name, format!("{at}.output.path")))
                        }
                        Some(other) => problems.add(
                            &format!("{at}.output.path"),
                            format!("expected a relative file path, found {}", kind(other)),
                        ),
                    }
                    own_options = Some(options);
                }
                Some(other) => problems.add(
                    &format!("{at}.output"),
                    format!(
                        "expected a relative file name like `sku-1.webp` (or output options), found {}",
                        kind(other)
                    ),
                ),
            }
            match map.get("operations") {
                None => {}
                Some(ops @ (Value::Object(_) | Value::Null)) => own_ops = Some(ops),
                Some(other) => problems.add(
                    &format!("{at}.operations"),
                    format!("expected a mapping of operations, found {}", kind(other)),
                ),
            }
        }

        let (body, canonical, format, body_ok) = if own_ops.is_none() && own_options.is_none() {
            (Arc::clone(&shared_body), None, shared_format, shared_ok)
        } else {
            let mut ops = base_ops.clone();
            match own_ops {
                Some(Value::Null) => ops = Value::Object(Map::new()),
                Some(over) => merge(&mut ops, over),
                None => {}
            }
            let mut output = base_output.clone();
            if let Some(options) = own_options {
                let mut options = options.clone();
                if let Value::Object(fields) = &mut options {
                    fields.remove("path");
                }
                merge_opt(&mut output, &options);
                if output
                    .as_ref()
                    .is_some_and(|o| o.as_object().is_some_and(Map::is_empty))
                {
                    output = None;
                }
            }
            let body = make_body(&ops, output.as_ref());
            let ok = check_schema(&body, &at, Some(image), profile_name.as_deref(), problems)
                & (own_options.is_none()
                    || check_no_destination(output.as_ref(), &format!("{at}.output"), problems));
            let format = output_format(output.as_ref());
            let canonical = canonical_json(&body);
            (Arc::new(body), Some(canonical), format, ok)
        };

        let name = match &own_output_name {
            Some((name, path)) => check_output_name(name, format, path, problems),
            None => match &input {
                Some(input) => default_output_name(input, format, &input_path, problems),
                None => None,
            },
        };
        let (Some(input), Some(name), true) = (input, name, body_ok) else {
            continue;
        };
        let output_rel = ctx.out_dir.join(&name);
        if let Some(first) = outputs.get(&output_rel) {
            let path = own_output_name
                .as_ref()
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| input_path.clone());
            problems.add(
                &path,
                format!(
                    "the output `{}` is also written by images[{first}]; give one of them a different `output`",
                    name.display()
                ),
            );
            continue;
        }
        outputs.insert(output_rel.clone(), idx);
        let key = job_key(
            &input,
            canonical.as_deref().unwrap_or(&shared_canonical),
            &output_rel,
        );
        jobs.push(JobSpec {
            idx,
            input,
            body,
            output_rel,
            key,
        });
    }
    jobs
}

/// `{"operations": .., "output": ..}` (output omitted when unset).
fn make_body(ops: &Value, output: Option<&Value>) -> Value {
    let mut body = Map::new();
    body.insert("operations".into(), ops.clone());
    if let Some(output) = output {
        body.insert("output".into(), output.clone());
    }
    Value::Object(body)
}

/// The daemon downloads every result into the outbox, so a Claid-side `destination` (or the
/// string shorthand for one) would leave nothing to download.
fn check_no_destination(output: Option<&Value>, path: &str, problems: &mut Collector) -> bool {
    match output {
        Some(Value::String(_)) => {
            problems.add(
                path,
                "a destination URI is not supported: results are downloaded into the outbox; give output options like `{ format: webp }`".into(),
            );
            false
        }
        Some(Value::Object(fields)) if fields.contains_key("destination") => {
            problems.push(
                format!("{path}.destination"),
                Some(path.to_owned()),
                "not supported: results are downloaded into the outbox; remove it".into(),
            );
            false
        }
        _ => true,
    }
}

/// Validates a body with the request schema; maps each field error to the image's path when
/// the image sets that field, else to the manifest's, else to the profile line.
fn check_schema(
    body: &Value,
    image_at: &str,
    image: Option<&Value>,
    profile: Option<&str>,
    problems: &mut Collector,
) -> bool {
    let mut with_input = body.clone();
    if let Value::Object(map) = &mut with_input {
        map.insert("input".into(), Value::String(PLACEHOLDER_INPUT.into()));
    }
    let Err(errors) = request::validate(&with_input, InputRule::Required) else {
        return true;
    };
    let mut any = false;
    for error in errors {
        if error.path == "input" {
            continue; // The input is checked by this module.
        }
        any = true;
        let in_image = image.is_some_and(|image| value_at(image, &error.path).is_some());
        let path = if in_image {
            format!("{image_at}.{}", error.path)
        } else {
            error.path.clone()
        };
        let from_profile = profile.is_some() && image.is_none();
        let message = match (from_profile, profile) {
            (true, Some(name)) => format!(
                "{} (after merging profile `{name}`; set the key to null here to drop the profile's value)",
                error.message
            ),
            _ => error.message,
        };
        let fallback = if profile.is_some() {
            Some("profile".to_owned())
        } else if image.is_some() {
            Some(image_at.to_owned())
        } else {
            None
        };
        problems.push(path, fallback, message);
    }
    !any
}

/// Classifies and checks one input string.
fn check_input(
    text: &str,
    path: &str,
    ctx: &Context<'_>,
    local_hashes: &mut HashMap<PathBuf, String>,
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
        let rest = &trimmed[trimmed.find("://").map_or(0, |i| i + 3)..];
        if rest.is_empty() || rest.starts_with('/') {
            problems.add(path, format!("`{trimmed}` has no host or storage name"));
            return None;
        }
        if trimmed.len() > MAX_INPUT_LEN {
            problems.add(
                path,
                format!(
                    "the URL is {} characters; Claid accepts at most {MAX_INPUT_LEN}",
                    trimmed.len()
                ),
            );
            return None;
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            problems.add(
                path,
                format!("`{trimmed}` contains spaces; percent-encode them (`%20`)"),
            );
            return None;
        }
        return Some(Input::Remote(trimmed.to_owned()));
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
                format!("local file `{trimmed}` cannot be resolved: {err}"),
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
    match std::fs::metadata(&canonical) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            problems.add(
                path,
                format!("local input `{trimmed}` is not a regular file"),
            );
            return None;
        }
        Err(err) => {
            problems.add(
                path,
                format!("local file `{trimmed}` cannot be read: {err}"),
            );
            return None;
        }
    }
    if let Some(sha256) = local_hashes.get(&canonical) {
        return Some(Input::Local {
            path: canonical,
            rel,
            sha256: sha256.clone(),
        });
    }
    match sha256_of_file(&canonical) {
        Ok(sha256) => {
            local_hashes.insert(canonical.clone(), sha256.clone());
            Some(Input::Local {
                path: canonical,
                rel,
                sha256,
            })
        }
        Err(err) => {
            problems.add(
                path,
                format!("local file `{trimmed}` cannot be read: {err}; check its permissions"),
            );
            None
        }
    }
}

fn sha256_of_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks a user-given output path and adds or checks the extension.
fn check_output_name(
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
fn default_output_name(
    input: &Input,
    format: OutputFormat,
    input_path: &str,
    problems: &mut Collector,
) -> Option<PathBuf> {
    let stem = match input {
        Input::Remote(url) => {
            let after_scheme = url.find("://").map_or(url.as_str(), |i| &url[i + 3..]);
            let path_part = after_scheme.split(['?', '#']).next().unwrap_or_default();
            let last = path_part
                .split('/')
                .skip(1)
                .filter(|s| !s.is_empty())
                .last()
                .unwrap_or_default();
            stem_of(last)
        }
        Input::Local { rel, .. } => rel
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned(),
    };
    let stem: String = stem
        .chars()
        .map(|c| {
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
        if let Some(bad) = part
            .chars()
            .find(|c| c.is_control() || "<>:\"|?*".contains(*c))
        {
            return Err(format!(
                "`{}` contains the unsafe character {bad:?}; use letters, digits, `-`, `_` and `.`",
                name.escape_debug()
            ));
        }
        if part.len() > 255 {
            return Err(format!("a segment of `{name}` is longer than 255 bytes"));
        }
        out.push(part);
    }
    if out.components().next().is_none()
        || out.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!("`{name}` is not a file name"));
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
fn output_format(output: Option<&Value>) -> OutputFormat {
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

/// Deep merge: objects merge recursively, scalars and lists replace, `null` removes the key.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match value {
                    Value::Null => {
                        base.remove(key);
                    }
                    Value::Object(_) => match base.get_mut(key) {
                        Some(existing @ Value::Object(_)) => merge(existing, value),
                        _ => {
                            base.insert(key.clone(), without_nulls(value));
                        }
                    },
                    _ => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, over) => *base = without_nulls(over),
    }
}

/// Merge into an optional base (output options may be unset, or a string shorthand).
fn merge_opt(base: &mut Option<Value>, over: &Value) {
    match base {
        Some(existing) => merge(existing, over),
        None => *base = Some(without_nulls(over)),
    }
}

/// A copy with `null` members of objects removed (a null removes; it never stays in a body).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// JSON with object keys sorted at every level, no whitespace: stable for hashing.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Job key: hex sha256 of input identity, canonical body JSON and output path (SPEC §5.4).
fn job_key(input: &Input, canonical_body: &str, output_rel: &Path) -> String {
    let mut hasher = Sha256::new();
    hasher.update(input.identity().as_bytes());
    hasher.update([0u8]);
    hasher.update(canonical_body.as_bytes());
    hasher.update([0u8]);
    hasher.update(output_rel.to_string_lossy().as_bytes());
    hex::encode(hasher.finalize())
}

/// The job key of an input, body (without `input`) and output path; public for tools and tests.
/// The text of a manifest or recipe (`what`), or the problem: binary (NUL bytes) or not UTF-8,
/// with the line of the first bad byte.
fn utf8_text<'b>(
    bytes: &'b [u8],
    what: &str,
    formats: &str,
) -> Result<&'b str, (Option<usize>, String)> {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => Ok(text),
        Ok(_) => Err((
            None,
            format!("the {what} contains NUL bytes: it is binary, not {formats} text"),
        )),
        Err(err) => {
            let line = bytes[..err.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            Err((
                Some(line),
                format!(
                    "the {what} is not UTF-8 text (invalid byte at offset {}); save it as UTF-8 {formats}",
                    err.valid_up_to()
                ),
            ))
        }
    }
}

pub fn key_for(input: &Input, body: &Value, output_rel: &Path) -> String {
    job_key(input, &canonical_json(body), output_rel)
}

/// The value at a dotted path like `operations.resizing.width` or `a[2].b`.
fn value_at<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    let mut value = root;
    for part in path.split('.') {
        let (name, index) = match part.find('[') {
            Some(i) => (
                &part[..i],
                part[i + 1..].trim_end_matches(']').parse::<usize>().ok(),
            ),
            None => (part, None),
        };
        if !name.is_empty() {
            value = value.as_object()?.get(name)?;
        }
        if let Some(index) = index {
            value = value.as_array()?.get(index)?;
        }
    }
    Some(value)
}

fn unknown_key_message(key: &str, known: &[&str]) -> String {
    match yaml::closest(key, known) {
        Some(hint) => format!("unknown key `{key}`; did you mean `{hint}`?"),
        None => format!(
            "unknown key `{key}`; allowed here: {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
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

// ---------------------------------------------------------------------------------------------
// Folder recipes (SPEC §4.3)
// ---------------------------------------------------------------------------------------------

/// File name of a folder recipe: every image dropped directly into its folder becomes a job.
pub const RECIPE_NAME: &str = ".claid.yaml";

/// Keys of a recipe: those of a manifest without `images`.
const RECIPE_KEYS: &[&str] = &["profile", "operations", "output"];

/// Extensions (lowercase) of the files a recipe folder turns into jobs.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "tiff", "tif", "bmp", "gif", "avif", "heic",
];

/// Whether a file is an image a recipe folder processes: an image extension, and not hidden,
/// an office lock file or a partial download (those end in another extension).
pub fn is_image_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') || name.starts_with("~$") {
        return false;
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => IMAGE_EXTENSIONS
            .iter()
            .any(|known| ext.eq_ignore_ascii_case(known)),
        _ => false,
    }
}

/// The recipe that governs an image: `.claid.yaml` in the image's own folder.
pub fn recipe_for(image: &Path) -> PathBuf {
    image
        .parent()
        .map_or_else(|| PathBuf::from(RECIPE_NAME), |dir| dir.join(RECIPE_NAME))
}

/// Validates the image at `image` against its folder's recipe and builds a one-job manifest.
///
/// `rel` is the image's inbox-relative path (the store keys drops by it); the output goes to the
/// mirrored path with the recipe's format extension (`a/b/shoe.png` → `a/b/shoe.jpg`);
/// `sha256` hashes the recipe bytes and the image content, so a changed recipe or a changed
/// image is a new drop. The recipe is checked by the same code as a manifest, and every problem
/// carries its line in the recipe.
pub fn load_recipe_image(
    inbox: &Path,
    image: &Path,
    profiles: &BTreeMap<String, Profile>,
    limits: &Limits,
) -> Result<ManifestSpec, ManifestError> {
    let recipe = recipe_for(image);
    let fail = |problems: Vec<Problem>| ManifestError::Recipe {
        image: image.to_owned(),
        recipe: recipe.clone(),
        problems,
    };
    let one = |line: Option<usize>, message: String| fail(vec![Problem { line, message }]);
    let bytes = read_recipe(&recipe, limits.max_manifest_bytes).map_err(|m| one(None, m))?;
    let text = utf8_text(&bytes, "recipe", "YAML").map_err(|(line, m)| one(line, m))?;
    let root = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        match yaml::parse(text) {
            Ok(Value::Null) => Value::Object(Map::new()),
            Ok(root) => root,
            Err(err) => {
                return Err(one(err.line, format!("not valid YAML: {}", err.message)));
            }
        }
    };
    let Value::Object(top) = root else {
        return Err(one(
            None,
            format!(
                "the recipe must be a mapping of `profile`, `operations` and `output`, found {}",
                kind(&root)
            ),
        ));
    };
    let Some(name) = image.file_name().and_then(|n| n.to_str()) else {
        return Err(one(
            None,
            format!(
                "the image name {} is not UTF-8; rename the file",
                image.display()
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

    let rel = relative_to(inbox, image);
    let out_dir = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    let ctx = Context {
        inbox_canonical: std::fs::canonicalize(inbox).unwrap_or_else(|_| inbox.to_owned()),
        manifest_dir: image.parent().unwrap_or(inbox),
        out_dir,
        profiles,
        limits,
    };
    let doc = Doc {
        root: Value::Object(view),
        images: Some(vec![Item::Other(Value::String(name.to_owned()))]),
    };
    let jobs = validate(&doc, &ctx, &mut problems);
    // Problems about the synthetic `images[0]` are about the dropped image itself.
    for pending in &mut problems.pending {
        if pending.path.starts_with("images[0]") {
            pending.message = format!("image `{name}`: {}", pending.message);
            pending.path = String::new();
            pending.fallback = None;
        }
    }
    if !problems.is_empty() {
        return Err(fail(problems.finish(Some(text))));
    }
    let image_sha = match jobs.first().map(|job| &job.input) {
        Some(Input::Local { sha256, .. }) => sha256.clone(),
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

/// Reads a recipe, refusing one over `limit` bytes; the error is the problem's message.
fn read_recipe(recipe: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let cannot =
        |err: std::io::Error| format!("cannot read the folder recipe {}: {err}", recipe.display());
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
fn recipe_error_txt(out: &mut String, image: &Path, recipe: &Path, problems: &[Problem]) {
    let recipe_name = recipe
        .file_name()
        .map_or_else(|| RECIPE_NAME.into(), |n| n.to_string_lossy());
    let _ = writeln!(out, "image: {}", image.display());
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_rules() {
        let mut base = json!({"a": {"x": 1, "y": 2}, "b": [1, 2], "c": "s"});
        merge(
            &mut base,
            &json!({"a": {"y": null, "z": 3}, "b": [3], "c": {"k": null, "v": 1}}),
        );
        assert_eq!(
            base,
            json!({"a": {"x": 1, "z": 3}, "b": [3], "c": {"v": 1}})
        );
    }

    #[test]
    fn canonical_is_sorted() {
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": {"d": [1, {"f": 1, "e": 2}], "c": null}})),
            r#"{"a":{"c":null,"d":[1,{"e":2,"f":1}]},"b":1}"#
        );
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
