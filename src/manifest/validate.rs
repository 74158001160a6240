//! Validation of a parsed manifest before any spend: top-level keys, the profile →
//! manifest → image merge, each image's input, request body (with the schema the emulator also
//! uses for its 422s) and output path; every problem is collected with the field it concerns.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::claid::request::{self, InputRule};
use crate::config::{Profile, StorageEntry};
use crate::manifest::doc::{Doc, Item};
use crate::manifest::input::{LocalFiles, check_input};
use crate::manifest::key::{canonical_json, job_key};
use crate::manifest::merge::{merge, merge_opt};
use crate::manifest::outbox::{Naming, Outbox};
use crate::manifest::output_name::{check_output_name, default_output_name, output_format};
use crate::manifest::problems::Collector;
use crate::manifest::{Bodies, JobSpec};
use crate::yaml;

/// Placeholder input used to validate operations with the request schema: the input itself is
/// checked here (URL scheme, local file), so the schema only sees a well-formed one.
const PLACEHOLDER_INPUT: &str = "https://example.invalid/input.jpg";

const TOP_KEYS: &[&str] = &["profile", "operations", "output", "images"];
const IMAGE_KEYS: &[&str] = &["input", "output", "operations"];

/// Inputs of one validation that do not change per image.
pub struct Context<'a> {
    /// The inbox with symlinks resolved: local inputs must resolve inside it.
    pub inbox_canonical: PathBuf,
    /// Local inputs are relative to this folder.
    pub manifest_dir: &'a Path,
    /// The manifest's output folder relative to the outbox (`a/b/shoes`).
    pub out_dir: PathBuf,
    pub profiles: &'a BTreeMap<String, Profile>,
    /// The config's storages (`storage://NAME/…` inputs and destinations).
    pub storages: &'a BTreeMap<String, StorageEntry>,
    /// Validating an image a folder recipe governs (its own folder has a recipe), not a
    /// manifest: a manifest may not list such images.
    pub recipe_image: bool,
    /// `limits.max_input_bytes`: a larger local input is refused.
    pub max_input_bytes: u64,
}

/// Validates a parsed manifest: its keys, the profile merge and each image (input, merged
/// body, output path); returns the jobs of the images without problems. The document is
/// consumed: each image entry's contents are freed once its job is made, so the entries'
/// strings and the jobs of a long manifest are not both held (the list's own slots, 32 bytes
/// an entry, stay until the last).
pub fn validate(
    doc: Doc,
    ctx: &Context<'_>,
    outbox: &mut Outbox<'_>,
    problems: &mut Collector,
) -> Vec<JobSpec> {
    let Doc { root, images } = doc;
    let Value::Object(top) = &root else {
        problems.add(
            "",
            format!(
                "the manifest must be a mapping with an `images` list, found {}",
                yaml::kind(&root)
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
            format!(
                "expected a profile name, found {}; write `profile: NAME` with a profile of the config",
                yaml::kind(other)
            ),
        ),
    }
    match top.get("operations") {
        None => {}
        Some(Value::Null) => base_ops = Value::Object(Map::new()),
        Some(ops @ Value::Object(_)) => merge(&mut base_ops, ops),
        Some(other) => problems.add(
            "operations",
            format!(
                "expected a mapping of operations, found {}; write them like `{{ resizing: {{ width: 1000 }} }}`",
                yaml::kind(other)
            ),
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
                yaml::kind(other)
            ),
        ),
    }

    let images: Vec<Item> = match (images, top.get("images")) {
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
                format!(
                    "expected a list of images, found {}; write one `- input: …` line per image under `images:`",
                    yaml::kind(other)
                ),
            );
            return Vec::new();
        }
    };

    // A storage destination names a configured storage; the body carries its Claid name.
    let shared_dest_ok = resolve_destination(&mut base_output, "output", ctx.storages, problems);
    // The shared body is validated once: a problem in it is reported once, not per image.
    let shared_value = make_body(&base_ops, base_output.as_ref());
    let shared_ok =
        check_schema(&shared_value, "", None, profile_name.as_deref(), problems) & shared_dest_ok;
    let mut bodies = Bodies::default();
    let shared_body = bodies.intern(canonical_json(&shared_value));
    let shared_format = output_format(base_output.as_ref());

    let mut jobs = Vec::with_capacity(images.len());
    let mut outputs = Outputs::with_capacity(images.len());
    // Storage outputs by their object's place (`object_place`), at its key as written (`true`)
    // and at its twin (`false`, `objects::output_keys`), with the image writing it: two images
    // may not write the same object either, nor may an image read one.
    let mut objects: HashMap<String, (usize, bool)> = HashMap::new();
    // Where `storage://` inputs point: no image's output may be another image's input (Claid
    // would write an edit over an original it reads).
    let mut input_places: HashMap<String, usize> = HashMap::new();
    let mut local = LocalFiles::default();
    for (idx, item) in images.into_iter().enumerate() {
        let image = item.to_value();
        let image = &image;
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
                        "expected a mapping with `input` (and optional `output`, `operations`), found {}; write `- input: URL or path`",
                        yaml::kind(other)
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
            Some(Value::String(text)) => check_input(text, &input_path, ctx, &mut local, problems),
            Some(other) => {
                problems.add(
                    &input_path,
                    format!(
                        "expected a URL or path string, found {}; quote it if it looks like a number",
                        yaml::kind(other)
                    ),
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
                            format!(
                                "expected a relative file path, found {}; give one like `sub/sku-1.webp`",
                                yaml::kind(other)
                            ),
                        ),
                    }
                    own_options = Some(options);
                }
                Some(other) => problems.add(
                    &format!("{at}.output"),
                    format!(
                        "expected a relative file name like `sku-1.webp` (or output options), found {}",
                        yaml::kind(other)
                    ),
                ),
            }
            match map.get("operations") {
                None => {}
                Some(ops @ (Value::Object(_) | Value::Null)) => own_ops = Some(ops),
                Some(other) => problems.add(
                    &format!("{at}.operations"),
                    format!(
                        "expected a mapping of operations, found {}; write them like `{{ resizing: {{ width: 1000 }} }}`",
                        yaml::kind(other)
                    ),
                ),
            }
        }

        // The image's own body, parsed while it is checked (the shared one otherwise).
        let (own_value, body, format, body_ok) = if own_ops.is_none() && own_options.is_none() {
            (None, shared_body.clone(), shared_format, shared_ok)
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
            let dest_ok = own_options.is_none()
                || resolve_destination(
                    &mut output,
                    &format!("{at}.output"),
                    ctx.storages,
                    problems,
                );
            let body = make_body(&ops, output.as_ref());
            let ok =
                check_schema(&body, &at, Some(image), profile_name.as_deref(), problems) & dest_ok;
            let format = output_format(output.as_ref());
            let text = bodies.intern(canonical_json(&body));
            (Some(body), text, format, ok)
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
        let (output_at, naming) = match &own_output_name {
            Some((_, path)) => (path.clone(), Naming::Given),
            None => (input_path.clone(), Naming::FromInput),
        };
        if let Some(first) = outputs.writer_of(&output_rel, &jobs) {
            problems.add(
                &output_at,
                format!(
                    "the output `{}` is also written by images[{first}]; give one of them a different `output`",
                    name.display()
                ),
            );
            continue;
        }
        if let Some((first, other)) = outputs.file_and_folder(&output_rel, &jobs) {
            let other = other.strip_prefix(&ctx.out_dir).unwrap_or(&other);
            problems.add(
                &output_at,
                format!(
                    "the output `{}` and images[{first}]'s output `{}` cannot both be written: one would be a file where the other needs a folder of that name; rename one of them",
                    name.display(),
                    other.display()
                ),
            );
            continue;
        }
        if let Err(why) = outbox.check_output(&output_rel, naming) {
            // Told at the input's line when the output is named after it: say it is the
            // output's path that cannot be written, not the input.
            let why = match naming {
                Naming::FromInput => format!(
                    "its output `{}` (named after the input): {why}",
                    crate::text::escape(&output_rel.to_string_lossy())
                ),
                Naming::Given => why,
            };
            problems.add(&output_at, why);
            continue;
        }
        let input_place = match &input {
            super::Input::Remote(url) if url.starts_with("storage://") => {
                Some(object_place(ctx.storages, url).unwrap_or_else(|| url.clone()))
            }
            _ => None,
        };
        if let Some(&(first, as_written)) =
            input_place.as_ref().and_then(|place| objects.get(place))
        {
            problems.add(
                &input_path,
                format!(
                    "this input is the object images[{first}] writes its output to{}: Claid would write that edit over the original this image reads; give images[{first}] another `output` or `output.destination`",
                    if as_written { "" } else { TWIN_NOTE }
                ),
            );
            continue;
        }
        if let Some(object) = crate::storages::destination_of(
            own_value.as_ref().unwrap_or(&shared_value),
            &output_rel.to_string_lossy(),
        ) {
            // By the object's place: two storages on one bucket name one object two ways.
            let place = object_place(ctx.storages, &object).unwrap_or_else(|| object.clone());
            // The places it occupies: its key and its twin with the format's other extension
            // (`x.jpg` and `x.jpeg`), where Claid may write it and the daemon takes it from.
            let places: Vec<String> = crate::objects::output_keys(&place).collect();
            if let Some((at, (first, as_written))) = places
                .iter()
                .enumerate()
                .find_map(|(at, place)| Some((at, *objects.get(place)?)))
            {
                // Told as a twin when they meet at another key than either's as written.
                let twin = at > 0 || !as_written;
                problems.add(
                    &output_at,
                    format!(
                        "the object `{object}` is also written by images[{first}]{}; give one of them a different `output`",
                        if twin { TWIN_NOTE } else { "" }
                    ),
                );
                continue;
            }
            let checked = match crate::storages::split_uri(&object) {
                Some((name, key)) => crate::objects::check_key_under(
                    storage_prefix(ctx.storages, name).unwrap_or(""),
                    key,
                )
                .and_then(|()| crate::objects::check_written_key(key)),
                None => crate::objects::check_written_key(&object["storage://".len()..]),
            };
            if let Err(err) = checked {
                // Told at the input's line when the output is named after it: said to be the
                // output's key (it read as a problem of the input).
                let whose = match naming {
                    Naming::FromInput => "its output, named after this input, is ",
                    Naming::Given => "",
                };
                let mut source = unsafe_key_source(ctx, &name);
                if source.is_empty() && err.to_string().contains("longer than") {
                    let prefix = crate::storages::split_uri(&object)
                        .and_then(|(connector, _)| storage_prefix(ctx.storages, connector))
                        .unwrap_or("");
                    source = long_key_source(&object, &output_rel, prefix);
                }
                problems.add(
                    &output_at,
                    format!("{whose}the object `{object}`: {err}{source}"),
                );
                continue;
            }
            // Claid would write the edit over the very photo it reads: the source is lost.
            // (Its own input through another storage on the bucket, or the connector's name,
            // has the same place.)
            if matches!(&input, super::Input::Remote(url) if *url == object)
                || input_place
                    .as_ref()
                    .is_some_and(|input| places.contains(input))
            {
                problems.add(
                    &output_at,
                    format!(
                        "the object `{object}`{} is this image's own input: Claid would write the edit over the original; give `output.destination` another folder (e.g. `storage://NAME/edited/`) or the image another `output`",
                        if input_place.as_ref() == Some(&place) { "" } else { TWIN_NOTE }
                    ),
                );
                continue;
            }
            if let Some((at, first)) = places
                .iter()
                .enumerate()
                .find_map(|(at, place)| Some((at, *input_places.get(place)?)))
            {
                problems.add(
                    &output_at,
                    format!(
                        "the object `{object}`{} is images[{first}]'s input: Claid would write this edit over that original; give `output.destination` another folder (e.g. `storage://NAME/edited/`) or this image another `output`",
                        if at > 0 { TWIN_NOTE } else { "" }
                    ),
                );
                continue;
            }
            if let Some(staging) = in_staging_area(ctx.storages, &object) {
                problems.add(
                    &output_at,
                    format!(
                        "the object `{object}` is in the `staging/` folder of the storage `{staging}`, where the daemon stages local inputs (api.staging) and deletes them once their jobs end; give `output.destination` another folder (e.g. `storage://{staging}/edited/`)"
                    ),
                );
                continue;
            }
            if object.chars().any(|c| c.is_whitespace() || c.is_control()) {
                // Claid refuses such an `output.destination` (it holds the mirrored folders
                // and, for an image sent alone, the file name): refused here, before any spend.
                let part = object
                    .split('/')
                    .find(|part| part.chars().any(|c| c.is_whitespace() || c.is_control()))
                    .unwrap_or(&object);
                // An image of a folder recipe has no `output` of its own: its name and its
                // folders' are the key.
                let fix = if ctx.recipe_image {
                    "rename the image file, or its folders in the inbox, without spaces (e.g. `spring-sale/red-shoe.png`)"
                } else {
                    "rename the manifest (or its folders in the inbox), or give the image an `output` without spaces (e.g. `spring-sale/red-shoe.png`)"
                };
                problems.add(
                    &output_at,
                    format!(
                        "the object `{}` has a space or a control character in its key (in `{}`), and Claid refuses such a destination; {fix}",
                        crate::text::escape(&object),
                        crate::text::escape(part)
                    ),
                );
                continue;
            }
            for (at, place) in places.into_iter().enumerate() {
                objects.insert(place, (idx, at == 0));
            }
        }
        let key = job_key(&input, body.text(), &output_rel);
        if let Some(place) = input_place {
            input_places.entry(place).or_insert(idx);
        }
        let at = jobs.len();
        jobs.push(JobSpec {
            idx,
            input,
            body,
            output_rel,
            key,
        });
        outputs.insert(&jobs[at].output_rel, at);
    }
    jobs
}

/// The output paths of the jobs made so far, to find two images that would write one file.
/// Each path is kept once, in its job: the index holds its hash and the job's position (a map
/// keyed by the paths held a second copy of each, 6 MB of a 100,000-image manifest's peak). A
/// hash shared by different paths (keys are random per process) falls back to comparing paths.
struct Outputs<S = std::hash::RandomState> {
    by_hash: HashMap<u64, usize>,
    /// Jobs whose path's hash was already taken by another path.
    collided: Vec<usize>,
    /// The hash of each folder the outputs so far are in (their ancestors), and the first job
    /// writing inside it: a manifest has few folders, so this stays small.
    folders: HashMap<u64, usize>,
    hasher: S,
}

impl Outputs {
    fn with_capacity(n: usize) -> Outputs {
        Outputs {
            by_hash: HashMap::with_capacity(n),
            collided: Vec::new(),
            folders: HashMap::new(),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl<S: BuildHasher> Outputs<S> {
    /// The `images` index of the job among `jobs` that writes `path`, if one does.
    fn writer_of(&self, path: &Path, jobs: &[JobSpec]) -> Option<usize> {
        let hash = self.hasher.hash_one(path);
        self.by_hash
            .get(&hash)
            .into_iter()
            .chain(&self.collided)
            .map(|&at| &jobs[at])
            .find(|job| job.output_rel == path)
            .map(|job| job.idx)
    }

    /// An earlier job whose output is a file where `path` needs a folder (a folder of `path`),
    /// or inside the folder `path` would be: its `images` index and its output.
    fn file_and_folder(&self, path: &Path, jobs: &[JobSpec]) -> Option<(usize, PathBuf)> {
        for folder in folders_of(path) {
            if let Some(idx) = self.writer_of(folder, jobs) {
                return Some((idx, folder.to_path_buf()));
            }
        }
        let at = *self.folders.get(&self.hasher.hash_one(path))?;
        let job = &jobs[at];
        job.output_rel
            .starts_with(path)
            .then(|| (job.idx, job.output_rel.clone()))
    }

    /// Records that the job at `at` of the jobs writes `path` (not written by any so far).
    fn insert(&mut self, path: &Path, at: usize) {
        for folder in folders_of(path) {
            self.folders
                .entry(self.hasher.hash_one(folder))
                .or_insert(at);
        }
        let hash = self.hasher.hash_one(path);
        match self.by_hash.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => self.collided.push(at),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(at);
            }
        }
    }
}

/// The folders `path` is in, innermost first (`a/b/c.jpg` → `a/b`, `a`).
fn folders_of(path: &Path) -> impl Iterator<Item = &Path> {
    path.ancestors()
        .skip(1)
        .take_while(|folder| !folder.as_os_str().is_empty())
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

/// A Claid-side `destination` is allowed only as `output.destination: storage://NAME/folder/`
/// where NAME is a configured storage (`storages`): the outputs then mirror the inbox tree under
/// that folder of the bucket, and the daemon checks each object instead of downloading it.
/// NAME is rewritten to the storage's `claid_name` (what Claid knows it by); `true` when fine.
/// A destination found wrong is taken out of the output, so the schema's check that follows
/// does not tell the same fault a second time.
fn resolve_destination(
    output: &mut Option<Value>,
    path: &str,
    storages: &BTreeMap<String, StorageEntry>,
    problems: &mut Collector,
) -> bool {
    let ok = check_destination(output, path, storages, problems);
    if !ok {
        match output {
            Some(Value::Object(fields)) => {
                fields.remove("destination");
            }
            Some(Value::String(_)) => *output = None,
            _ => {}
        }
    }
    ok
}

/// The first problem a manifest's `output` would meet in its `destination` (as
/// [`check_destination`] finds it): the config's check holds a profile's destination to it,
/// else every manifest using the profile was refused, naming a key it does not hold.
pub fn destination_problem(
    output: &Value,
    storages: &BTreeMap<String, StorageEntry>,
) -> Option<String> {
    let mut output = Some(output.clone());
    let mut problems = Collector::default();
    if check_destination(&mut output, "output", storages, &mut problems) {
        return None;
    }
    problems.pending.into_iter().next().map(|p| p.message)
}

/// [`resolve_destination`]'s check and rewrite.
fn check_destination(
    output: &mut Option<Value>,
    path: &str,
    storages: &BTreeMap<String, StorageEntry>,
    problems: &mut Collector,
) -> bool {
    let configured = || {
        if storages.is_empty() {
            "the config has no `storages`; add one (docs/storage.md)".to_owned()
        } else {
            format!(
                "configured storages: {}",
                storages
                    .keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    match output {
        Some(Value::String(text)) => {
            problems.add(
                path,
                format!(
                    "a destination URI alone is not supported; write `{{ destination: {} }}` with a storage folder (`storage://NAME/folder/`, {}), or give output options like `{{ format: webp }}`",
                    if text.starts_with("storage://") { text.as_str() } else { "storage://NAME/folder/" },
                    configured()
                ),
            );
            false
        }
        Some(Value::Object(fields)) => {
            let Some(destination) = fields.get("destination") else {
                return true;
            };
            let at = format!("{path}.destination");
            let fail = |problems: &mut Collector, message: String| {
                problems.push(at.clone(), Some(path.to_owned()), message);
                false
            };
            let Value::String(text) = destination else {
                return fail(
                    problems,
                    format!(
                        "expected a storage folder like `storage://NAME/folder/`, found {}",
                        yaml::kind(destination)
                    ),
                );
            };
            let Some(rest) = text.strip_prefix("storage://") else {
                // `STORAGE://catalog/out/`: the scheme in capitals (an input may be written
                // so); told as such, not as "not a storage folder" beside the very name.
                if text.len() > 10
                    && text.is_char_boundary(10)
                    && text[..10].eq_ignore_ascii_case("storage://")
                {
                    return fail(
                        problems,
                        format!(
                            "`{text}`: write the scheme in lower case, `storage://{}`",
                            &text[10..]
                        ),
                    );
                }
                return fail(
                    problems,
                    format!(
                        "`{text}` is not a storage folder: results go to the outbox unless the destination is `storage://NAME/folder/` with NAME a configured storage ({})",
                        configured()
                    ),
                );
            };
            let (name, folder) = rest.split_once('/').unwrap_or((rest, ""));
            let Some(entry) = storage_entry(storages, name) else {
                return fail(
                    problems,
                    format!(
                        "`storage://{name}/…` names no configured storage; {}",
                        configured()
                    ),
                );
            };
            if folder.trim_matches('/').is_empty() {
                return fail(
                    problems,
                    format!(
                        "`{text}` names no folder; give one, like `storage://{name}/out/` (each output is written under it at its path in the outbox)"
                    ),
                );
            }
            // A folder inside the staging area is told once, at the destination (per image,
            // it was told at each image's input line); before the missing `/` (the fix that
            // suggested was refused in turn).
            let as_folder = format!("storage://{name}/{}/x", folder.trim_end_matches('/'));
            if let Some(staging) = in_staging_area(storages, &as_folder) {
                return fail(
                    problems,
                    format!(
                        "`{text}` is in the `staging/` folder of the storage `{staging}`, where the daemon stages local inputs (api.staging) and deletes them once their jobs end; give another folder (e.g. `storage://{staging}/edited/`)"
                    ),
                );
            }
            if !folder.ends_with('/') {
                return fail(
                    problems,
                    format!(
                        "`{text}` must be a folder (end with `/`): each output is written under it at its path in the outbox, like `storage://{name}/{folder}/`"
                    ),
                );
            }
            // Claid refuses a destination with a blank or a control character: told once
            // here (each image's object key would tell it again, with a fix about names).
            if folder.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return fail(
                    problems,
                    format!(
                        "`{}` has a space or a control character in its folder, and Claid refuses such a destination; name the folder without spaces (e.g. `storage://{name}/spring-sale/`)",
                        crate::text::escape(text)
                    ),
                );
            }
            // `out//` is another key prefix than `out/` (an empty segment) but the same place
            // to the eye: it was accepted, and a re-drop with only that edit billed every image
            // again, over the same objects.
            if folder.ends_with("//") {
                return fail(
                    problems,
                    format!(
                        "`{text}` ends with an empty folder name (`//`); write `storage://{name}/{}/`",
                        folder.trim_end_matches('/')
                    ),
                );
            }
            let trimmed = folder.trim_end_matches('/');
            if !trimmed.is_empty()
                && let Err(err) = crate::objects::check_written_key(trimmed)
            {
                return fail(problems, format!("`{text}`: {err}"));
            }
            let resolved = format!("storage://{}/{folder}", entry.claid_name);
            fields.insert("destination".into(), Value::String(resolved));
            true
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
        // A field the image does not write, inside one it does (its `output.format`, where a
        // profile's jpeg `quality` was merged into the png it asks for): told at the image's
        // own field, naming where the value came from, not at the profile's line.
        let merged_into = (!in_image)
            .then(|| image.and_then(|image| deepest_set(image, &error.path)))
            .flatten();
        let path = if in_image {
            format!("{image_at}.{}", error.path)
        } else if let Some(field) = merged_into {
            format!("{image_at}.{field}")
        } else {
            error.path.clone()
        };
        let from_profile = profile.is_some() && image.is_none();
        let message = match (merged_into, from_profile, profile) {
            (Some(field), _, _) => {
                let key = error.path.rsplit('.').next().unwrap_or(&error.path);
                let source = match profile {
                    Some(name) => format!("profile `{name}` or the manifest's own options"),
                    None => "the manifest's own options".to_owned(),
                };
                format!(
                    "`{}`: {} (this image does not write `{key}`: it comes from {source}, merged into this image's `{field}`; write `{key}: null` there to drop it)",
                    error.path, error.message
                )
            }
            (None, true, Some(name)) => format!(
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

/// The longest proper prefix of the dotted `path` that `image` sets itself (`output.format`
/// of `output.format.quality`), if any.
fn deepest_set<'p>(image: &Value, path: &'p str) -> Option<&'p str> {
    path.char_indices()
        .filter(|(_, c)| *c == '.')
        .map(|(i, _)| &path[..i])
        .rev()
        .find(|prefix| value_at(image, prefix).is_some())
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

/// `unknown key `x`; did you mean `y`?` or the list of keys allowed here.
pub fn unknown_key_message(key: &str, known: &[&str]) -> String {
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

/// What a refusal of a storage output's key adds when the part that makes it unsafe is not in
/// the destination folder: the manifest's folders and name in the inbox (mirrored into the key:
/// rename them) or the image's output name (give another). The refusal was told at the image's
/// `input` with no word of the inbox folder (`%2e%2e/m.yaml`) that caused it.
fn unsafe_key_source(ctx: &Context<'_>, name: &Path) -> String {
    let unsafe_part = |part: &std::ffi::OsStr| {
        crate::objects::check_written_key(&part.to_string_lossy()).is_err()
    };
    if let Some(part) = ctx.out_dir.iter().find(|part| unsafe_part(part)) {
        let (what, fix) = if ctx.recipe_image {
            ("a folder of this image in the inbox", "rename that folder")
        } else {
            (
                "a folder (or the name) of this manifest in the inbox",
                "rename it, or move the manifest",
            )
        };
        return format!(
            "; the unsafe part `{}` is {what}, which the key mirrors: {fix}",
            crate::text::escape(&part.to_string_lossy())
        );
    }
    if name.iter().any(unsafe_part) {
        let fix = if ctx.recipe_image {
            "rename the image file"
        } else {
            "give the image another `output`"
        };
        return format!("; the unsafe part is in the image's output name: {fix}");
    }
    String::new()
}

/// What a refusal of an output key longer than S3 allows adds: the parts the bucket's key is
/// made of and their lengths (the destination folder, on the manifest's `output` line, may
/// be the long one, while the problem is told at the image's line).
fn long_key_source(object: &str, output_rel: &Path, prefix: &str) -> String {
    let rel = output_rel.to_string_lossy();
    let folder = object.strip_suffix(rel.as_ref()).unwrap_or(object);
    let folder = crate::storages::split_uri(folder).map_or(folder, |(_, key)| key);
    let file = output_rel
        .file_name()
        .map_or(0, |name| name.to_string_lossy().len());
    let dirs = rel.len().saturating_sub(file);
    let prefix = if prefix.is_empty() {
        0
    } else {
        prefix.len() + 1
    };
    format!(
        "; its key is {} bytes: the storage's prefix ({prefix}), `output.destination`'s folder ({}), the manifest's folders and name ({dirs}) and the file name ({file}): shorten the longest",
        prefix + folder.len() + rel.len(),
        folder.len(),
    )
}

/// What a refusal adds when two objects meet at a key one of them has as its twin (the format's
/// other extension), not as written: rows writing `x.jpg` and `x.jpeg` are refused as writing
/// one object, which they do.
const TWIN_NOTE: &str = " (at its twin key: an output at a key with `.jpg` or `.jpeg`, `.tif` or `.tiff`, is one object under either extension, as Claid may write either)";

/// Where a `storage://NAME/key` URI points: `s3://bucket/prefix/key`, whatever the storage's
/// `endpoint` (see [`folder_place`]); `None` for a storage that is not configured. Two
/// URIs name one object when their places are equal: their storages (by name or connector
/// name) may point into one bucket, one prefix inside the other. (An output also occupies its
/// place's twin, [`crate::objects::output_keys`].)
pub(crate) fn object_place(storages: &BTreeMap<String, StorageEntry>, uri: &str) -> Option<String> {
    let (name, key) = crate::storages::split_uri(uri)?;
    let entry = storage_entry(storages, name)?;
    Some(format!(
        "{}/{}",
        folder_place(entry),
        key.trim_start_matches('/')
    ))
}

/// `s3://bucket/prefix`: a storage's folder, as [`object_place`] spells places. Not told
/// apart by `endpoint`: one bucket reached through two spellings of its server (Amazon's
/// default and `https://s3.us-east-1.amazonaws.com`, or `127.0.0.1` and `localhost`) is one
/// place (two storages on it were taken for two places, and one billed image was written
/// over another), as the reservations across manifests already take it.
fn folder_place(entry: &StorageEntry) -> String {
    entry.url().trim_end_matches('/').to_owned()
}

/// The staging storage (`api.staging`) whose `staging/` folder `uri` is in, reached through
/// any storage on the same bucket: the daemon's staged inputs live there and are deleted once
/// their jobs end, so no manifest reads from it or writes into it.
pub fn in_staging_area<'a>(
    storages: &'a BTreeMap<String, StorageEntry>,
    uri: &str,
) -> Option<&'a str> {
    let place = object_place(storages, uri)?;
    // Also as percent-decoded (`st%61ging/`): whether Claid decodes a storage URI is not
    // said, so a spelling that may reach the folder is refused as the folder is.
    let decoded = crate::claid::wire::decoded(&place);
    storages
        .iter()
        .filter(|(_, entry)| entry.staging)
        .find(|(_, entry)| {
            let folder = format!("{}/staging/", folder_place(entry));
            place.starts_with(&folder) || decoded.starts_with(&folder)
        })
        .map(|(name, _)| name.as_str())
}

/// The configured storage called `name` here or on Claid's side (its connector's name).
fn storage_entry<'a>(
    storages: &'a BTreeMap<String, StorageEntry>,
    name: &str,
) -> Option<&'a StorageEntry> {
    storages
        .get(name)
        .or_else(|| storages.values().find(|entry| entry.claid_name == name))
}

/// The key prefix of the configured storage called `name` here or on Claid's side.
pub fn storage_prefix<'a>(
    storages: &'a BTreeMap<String, StorageEntry>,
    name: &str,
) -> Option<&'a str> {
    storage_entry(storages, name).map(|entry| entry.prefix.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Input;
    use crate::manifest::key::job_key;

    /// Every path hashes alike: each lookup goes through the collision fallback.
    #[derive(Default)]
    struct OneHash;

    impl std::hash::Hasher for OneHash {
        fn finish(&self) -> u64 {
            7
        }
        fn write(&mut self, _: &[u8]) {}
    }

    fn job(idx: usize, output: &str) -> JobSpec {
        let input = Input::Remote(format!("https://cdn.example.com/{idx}.jpg"));
        JobSpec {
            idx,
            key: job_key(&input, "{}", Path::new(output)),
            input,
            body: crate::manifest::Bodies::default().intern("null".to_owned()),
            output_rel: PathBuf::from(output),
        }
    }

    /// Jobs for `a`, `b`, `c` (images 0, 2, 3); then who writes each of `b`, `d`, `a`, `c`.
    fn writers<S: BuildHasher>(hasher: S) -> Vec<Option<usize>> {
        let mut outputs = Outputs {
            by_hash: HashMap::new(),
            collided: Vec::new(),
            folders: HashMap::new(),
            hasher,
        };
        let mut jobs = Vec::new();
        for (idx, output) in [(0, "m/a.jpg"), (2, "m/b.jpg"), (3, "m/c.jpg")] {
            assert_eq!(outputs.writer_of(Path::new(output), &jobs), None);
            outputs.insert(Path::new(output), jobs.len());
            jobs.push(job(idx, output));
        }
        ["m/b.jpg", "m/d.jpg", "m/a.jpg", "m/c.jpg"]
            .iter()
            .map(|path| outputs.writer_of(Path::new(path), &jobs))
            .collect()
    }

    #[test]
    fn two_images_writing_one_output_are_found_even_when_different_paths_share_a_hash() {
        let expected = vec![Some(2), None, Some(0), Some(3)];
        assert_eq!(writers(std::hash::RandomState::new()), expected);
        assert_eq!(
            writers(std::hash::BuildHasherDefault::<OneHash>::default()),
            expected,
            "every path with the same hash: found by comparing the paths"
        );
    }
}
