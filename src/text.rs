//! Untrusted text made safe to print: file names, Claid's messages and manifest text may hold
//! newlines, carriage returns, terminal escapes or Unicode line separators, and printed raw
//! they would forge log lines or repaint a terminal.
//!
//! [`Escaped`] is the one wrapper for them: its `Display` writes the text with every such
//! character escaped the way Rust writes it (`\n`, `\r`, `\t`, `\x1b`, `\u{2028}`) and a
//! backslash doubled, so the escaped form is unambiguous. Bytes of a path that are not UTF-8 are
//! written as `\xNN`. [`write_unsafe_escaped`] is the lower layer the log formatter uses on
//! whole field values (it leaves backslashes alone, so text escaped once is not escaped again).

use std::ffi::OsStr;
use std::fmt::{self, Write};
use std::path::Path;

/// Untrusted text (a `str`, a path or an OS string) whose `Display` escapes every character
/// that could break or forge a line: see the module doc.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(Source<'a>);

#[derive(Clone, Copy)]
enum Source<'a> {
    Str(&'a str),
    /// Raw bytes of an `OsStr` (a path): mostly UTF-8, possibly not.
    Bytes(&'a [u8]),
}

impl<'a> Escaped<'a> {
    /// Text known to be UTF-8 (a Claid message, a manifest value).
    pub fn str(text: &'a str) -> Escaped<'a> {
        Escaped(Source::Str(text))
    }

    /// A path as the file system holds it; bytes that are not UTF-8 are written as `\xNN`.
    pub fn path(path: &'a Path) -> Escaped<'a> {
        Escaped::os(path.as_os_str())
    }

    /// An OS string (a file name).
    pub fn os(name: &'a OsStr) -> Escaped<'a> {
        Escaped(Source::Bytes(name.as_encoded_bytes()))
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Source::Str(text) => write_escaped(f, text, true),
            Source::Bytes(bytes) => {
                for chunk in bytes.utf8_chunks() {
                    write_escaped(f, chunk.valid(), true)?;
                    for byte in chunk.invalid() {
                        write!(f, "\\x{byte:02x}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The path a `*_file` key names (the API key's, a webhook secret's, an alert sink's URL,
/// the dashboard's token), as an error about reading it shows it: escaped, unless it looks like
/// the secret itself pasted where the file's name goes (a URL, or a long name of letters and
/// digits without a dot): then it is not shown at all, and the text says so. Such a value is
/// resolved as a path beside the config and fails as a missing file, and its error must not
/// print the secret into the journal.
pub struct SecretFilePath<'a>(pub &'a Path);

impl fmt::Display for SecretFilePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if looks_like_a_secret(self.0) {
            f.write_str("(a value that looks like the secret itself, not a file name: not shown; put the secret in a file and name that file here)")
        } else {
            write!(f, "{}", Escaped::path(self.0))
        }
    }
}

/// See [`SecretFilePath`].
fn looks_like_a_secret(path: &Path) -> bool {
    let whole = path.to_string_lossy();
    if whole.contains("http:/") || whole.contains("https:/") {
        return true;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.chars().count() >= 20
        && !name.contains('.')
        && name.chars().any(|c| c.is_ascii_digit())
        && name.chars().any(|c| c.is_ascii_alphabetic())
}

/// Whether `c` must never reach a log line or a terminal raw: C0 controls (newline, carriage
/// return, tab, ESC, …), DEL, C1 controls (including NEL, U+0085), the Unicode line and
/// paragraph separators (U+2028, U+2029), and the bidirectional controls that make text read
/// differently from what it is: the overrides and isolates (U+202A–U+202E, U+2066–U+2069) and
/// the invisible direction marks (U+061C, U+200E, U+200F).
pub fn is_unsafe_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{61c}' | '\u{200e}' | '\u{200f}'
        | '\u{2028}' | '\u{2029}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
    )
}

/// Writes `text` to `out` with every [`is_unsafe_char`] escaped, leaving backslashes as they
/// are (for text that may already hold escapes, such as a log field holding an [`Escaped`]).
pub fn write_unsafe_escaped(out: &mut impl Write, text: &str) -> fmt::Result {
    write_escaped(out, text, false)
}

/// `text` with every [`is_unsafe_char`] escaped, backslashes left as they are: for a message
/// that quotes values it was given (a manifest's `"\e]0;…"` cleared the screen of whoever
/// read its error file). Returned as it was when it holds none.
pub fn unsafe_escaped(text: String) -> String {
    if !text.chars().any(is_unsafe_char) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    let _ = write_unsafe_escaped(&mut out, &text);
    out
}

/// `text` with every unsafe character escaped and backslashes doubled (the [`Escaped`] form),
/// as an owned string: for messages stored or sent on.
pub fn escape(text: &str) -> String {
    Escaped::str(text).to_string()
}

fn write_escaped(out: &mut impl Write, text: &str, backslash: bool) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| is_unsafe_char(c) || (backslash && c == '\\')) {
        out.write_str(&rest[..at])?;
        let c = rest[at..]
            .chars()
            .next()
            .expect("find returned a char boundary");
        match c {
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32)?,
            c => write!(out, "\\u{{{:x}}}", c as u32)?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// `n` and a countable English noun, plural unless `n` is 1: "1 job", "2 jobs", "0 jobs".
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The text an [`escape`]d (or [`Escaped::str`]) form was made of: `\\`, `\n`, `\r`, `\t`,
/// `\xNN` (below 0x80) and `\u{…}` read back. `None` when `text` holds another escape, or
/// none at all (nothing to read back).
pub fn unescape(text: &str) -> Option<String> {
    if !text.contains('\\') {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                let code = u8::from_str_radix(&hex, 16).ok().filter(|b| *b < 0x80)?;
                out.push(char::from(code));
            }
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let hex: String = chars.by_ref().take_while(|c| *c != '}').collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Longest text of Claid's (an error message, its errors for images it did not name) a
/// job's record keeps: each row of a report, the dashboard and alerts carry it, and one
/// answer can be long (seen: 6,000 characters copied into every image of a batch).
pub const KEPT_TEXT_MAX: usize = 2_000;

/// Longest field value of a log line (Claid's message can be megabytes long), far above any
/// of the daemon's own (a list of a config's errors, of folders it cannot read).
pub const LOG_VALUE_MAX: usize = 16 * 1024;

/// `text` cut to [`KEPT_TEXT_MAX`] bytes at most at a character boundary, followed by how
/// much was cut (`… (N more bytes)`).
pub fn capped(text: &str) -> std::borrow::Cow<'_, str> {
    capped_at(text, KEPT_TEXT_MAX)
}

/// [`capped`] at `max` bytes.
pub fn capped_at(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end).into()
}

/// Distinct texts in their first order, joined with `; `, a repeated one followed by how
/// often it came (`Image processing failed (×2)`).
pub fn tally(texts: &[String]) -> String {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for text in texts {
        match seen.iter_mut().find(|(known, _)| *known == text.as_str()) {
            Some((_, n)) => *n += 1,
            None => seen.push((text, 1)),
        }
    }
    seen.iter()
        .map(|(text, n)| {
            if *n > 1 {
                format!("{text} (×{n})")
            } else {
                (*text).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// An error and its sources, joined with `: ` (for logs and stderr).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The daemon's own secrets (the API key, the webhook secret, a storage's secret key), told
/// by [`register_secret`] when they are read: an answer may echo one (a proxy or a WAF
/// quoting the request's `Authorization` header), and such text reaches the log, the store
/// and the reports.
static SECRETS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Shortest secret [`redact_urls_in`] replaces: a shorter one would hit ordinary words.
const MIN_SECRET: usize = 6;

/// Makes [`redact_urls_in`] (the log's, the store's and the reports' filter) replace `secret`
/// wherever it appears.
pub fn register_secret(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_SECRET {
        return;
    }
    let mut secrets = SECRETS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !secrets.iter().any(|known| known == secret) {
        secrets.push(secret.to_owned());
    }
}

/// `text` with every registered secret replaced by `REDACTED`; `None` when it holds none.
fn redact_known_secrets(text: &str) -> Option<String> {
    let secrets = SECRETS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out: Option<String> = None;
    for secret in secrets.iter() {
        let current = out.as_deref().unwrap_or(text);
        if current.contains(secret.as_str()) {
            out = Some(current.replace(secret.as_str(), "REDACTED"));
        }
    }
    out
}

/// `text` with the credentials of every URL in it redacted ([`redact_credentials`]): a URL
/// runs from its scheme to the next space, quote or angle bracket. For whole log lines and
/// field values: Claid's messages quote the inputs they could not fetch.
pub fn redact_urls_in(text: &str) -> std::borrow::Cow<'_, str> {
    if let Some(redacted) = redact_known_secrets(text) {
        return redact_urls_in(&redacted).into_owned().into();
    }
    match redact_whole_urls_in(text) {
        std::borrow::Cow::Borrowed(text) => redact_loose_params(text),
        std::borrow::Cow::Owned(text) => redact_loose_params(&text).into_owned().into(),
    }
}

/// `text` with the value of every secret query parameter ([`SECRET_PARAMS`]) that follows a
/// `?` or `&` redacted, wherever it stands: a URL cut short by a space (`…/a b.jpg?sig=…`)
/// leaves its query outside what [`redact_whole_urls_in`] takes for the URL.
fn redact_loose_params(text: &str) -> std::borrow::Cow<'_, str> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let value_ends =
        |c: char| c.is_whitespace() || matches!(c, '&' | '#' | '"' | '\'' | '<' | '>' | '`' | '\\');
    let mut out = String::new();
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = text[at..].find(['?', '&']) {
        let name_start = at + found + 1;
        let name_len = text[name_start..]
            .find(|c: char| !name_char(c))
            .unwrap_or(text.len() - name_start);
        let name = &text[name_start..name_start + name_len];
        let after = name_start + name_len;
        at = name_start;
        if name.is_empty() || !text[after..].starts_with('=') {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if !SECRET_PARAMS.iter().any(|secret| lower.contains(secret)) {
            continue;
        }
        let value_start = after + 1;
        let value_end = text[value_start..]
            .find(value_ends)
            .map_or(text.len(), |i| value_start + i);
        let value = &text[value_start..value_end];
        if value != "REDACTED" {
            out.push_str(&text[copied..value_start]);
            out.push_str("REDACTED");
            copied = value_end;
        }
        at = value_end;
    }
    if copied == 0 {
        return text.into();
    }
    out.push_str(&text[copied..]);
    out.into()
}

/// [`redact_urls_in`]'s first pass: every whole URL through [`redact_credentials`].
fn redact_whole_urls_in(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") {
        return text.into();
    }
    // A backslash too: inside a JSON or quoted Debug string a quote comes as `\"`.
    let ends = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | '\\');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(at) = rest.find("://") {
        // The scheme starts after the last character that cannot be in one, whatever its
        // width (`é` is two bytes: one past its start cut it, a panic on any text with a
        // non-ASCII character right before a scheme, such as a rejected manifest's line).
        let start = rest[..at]
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = rest[at..].find(ends).map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        let url = &rest[start..end];
        let redacted = redact_credentials(url);
        changed |= redacted != url;
        out.push_str(&redacted);
        rest = &rest[end..];
    }
    out.push_str(rest);
    if changed { out.into() } else { text.into() }
}

/// Query parameters whose values are secrets (`X-Amz-Signature`, `token`, `sig`, …): a name
/// holding any of these, in any letter case.
const SECRET_PARAMS: [&str; 9] = [
    "sig",
    "token",
    "key",
    "secret",
    "pass",
    "auth",
    "credential",
    "x-amz-",
    "x-goog-",
];

/// Whether a URL carries user information (`user:password@host`) in its authority.
pub fn has_user_info(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(_, rest)| rest[..authority_len(rest)].contains('@'))
}

/// The length of the authority (`user:password@host:port`) at the start of `rest`, a URL
/// after its `scheme://`. A password holding a `/` (S3 secret keys often do) would cut it short
/// at that slash (`KEY:abc/def@host`): a `:` followed by more than a port, with an `@` further
/// on before the query, is taken for user information running up to that `@`.
/// A `?` or `#` in the password (`KEY:SE?CRET@host`) would cut it short the same way, and
/// had the rest of it echoed: the user information then runs up to the first `@`.
pub(crate) fn authority_len(rest: &str) -> usize {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if let Some((_, after_colon)) = rest[..end].split_once(':')
        && !after_colon.bytes().all(|b| b.is_ascii_digit())
        && !rest[..end].contains('@')
        && let Some(at) = rest.find('@')
    {
        return rest[at..]
            .find(['/', '?', '#'])
            .map_or(rest.len(), |end| at + end);
    }
    end
}

/// A URL as logs may show it: the password of its user information (or a bare token there)
/// and the values of query parameters that carry secrets (a presigned URL's signature, an
/// access token) replaced by `REDACTED`; anything else as it is. Manifests may hold such URLs,
/// and the journal is read by more people than the manifest.
pub fn redact_credentials(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.into();
    };
    let rest = &url[scheme_end..];
    let authority_end = authority_len(rest);
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..scheme_end]);
    let mut changed = false;
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user_info = &rest[..at];
            match user_info.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":REDACTED");
                }
                None => out.push_str("REDACTED"),
            }
            out.push_str(&rest[at..authority_end]);
            changed = true;
        }
        None => out.push_str(&rest[..authority_end]),
    }
    let tail = &rest[authority_end..];
    let (before_fragment, fragment) = tail.split_at(tail.find('#').unwrap_or(tail.len()));
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((name, _))
                        if SECRET_PARAMS
                            .iter()
                            .any(|secret| name.to_ascii_lowercase().contains(secret)) =>
                    {
                        out.push_str(name);
                        out.push_str("=REDACTED");
                        changed = true;
                    }
                    _ => out.push_str(pair),
                }
            }
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    if changed { out.into() } else { url.into() }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    /// A URL right after a character of more than one byte is found and redacted, not cut
    /// inside that character (it panicked: found by the manifest property test with
    /// `…/éstorage://…` in a rejected line).
    #[test]
    fn a_url_after_a_wide_character_is_redacted_without_a_panic() {
        assert_eq!(
            redact_urls_in("x éstorage://demo/a.png ok"),
            "x éstorage://demo/a.png ok"
        );
        assert_eq!(
            redact_urls_in("éhttps://u:pw@h/a?sig=1 ok"),
            "éhttps://u:REDACTED@h/a?sig=REDACTED ok"
        );
    }

    /// Long text is cut at a character boundary under the cap, saying how much went;
    /// repeated texts are counted, not repeated.
    #[test]
    fn long_text_is_capped_and_repeats_are_counted() {
        let short = "Image processing failed";
        assert_eq!(capped(short), short);
        let long = "é".repeat(KEPT_TEXT_MAX);
        let cut = capped(&long);
        assert!(cut.len() < KEPT_TEXT_MAX + 30, "{}", cut.len());
        assert!(cut.ends_with(&format!("… ({} more bytes)", long.len() - KEPT_TEXT_MAX)));
        let texts = [short, "Bad input", short].map(str::to_owned);
        assert_eq!(tally(&texts), "Image processing failed (×2); Bad input");
        assert_eq!(tally(&[]), "");
    }

    /// What `escape` writes, `unescape` reads back, for every kind of escaped character.
    #[test]
    fn unescape_reads_back_what_escape_wrote() {
        for text in [
            "new\nline.yaml",
            "a\\b\\c.yaml",
            "tab\there\r.yaml",
            "esc\u{1b}[31m.yaml",
            "sep\u{2028}\u{202e}.yaml",
            "nul\u{0}\u{85}.yaml",
        ] {
            let escaped = escape(text);
            assert_ne!(escaped, text);
            assert_eq!(unescape(&escaped).as_deref(), Some(text), "{escaped}");
        }
        assert_eq!(unescape("plain.yaml"), None, "nothing to read back");
        for broken in ["end\\", "odd\\q", "hex\\x9z", "wide\\u{zz}", "big\\xff"] {
            assert_eq!(unescape(broken), None, "{broken}");
        }
    }

    /// A password holding `/` (an S3 secret key) is still user information: redacted, and
    /// named by `has_user_info`; a path with `@` after a port is not.
    #[test]
    fn a_password_with_slashes_is_redacted() {
        let url = "http://AKIAEXAMPLE:wJalr/K7MDENG/bPxRfiCY@127.0.0.1:9000";
        assert_eq!(
            redact_credentials(url),
            "http://AKIAEXAMPLE:REDACTED@127.0.0.1:9000"
        );
        assert!(has_user_info(url));
        let text = format!("`{url}` is not a valid URL");
        assert!(!redact_urls_in(&text).contains("bPxRfiCY"));
        let path = "https://cdn.example.com:8443/users/@anna/a.jpg";
        assert_eq!(redact_credentials(path), path);
        assert!(!has_user_info(path));
        // A `?` or `#` in the password does not end the user information either.
        for url in [
            "http://AKIA:SE?KRET@127.0.0.1:19201",
            "http://AKIA:SE#KRET@127.0.0.1:19201/v1",
        ] {
            let redacted = redact_credentials(url);
            assert!(
                !redacted.contains("KRET") && redacted.contains("@127.0.0.1:19201"),
                "{redacted}"
            );
            assert!(has_user_info(url), "{url}");
            assert!(!crate::config::print::redact_url(url).contains("KRET"));
        }
    }

    /// A registered secret is replaced wherever it stands; short ones are not registered.
    #[test]
    fn registered_secrets_are_redacted_anywhere() {
        register_secret("sk-unit-test-Secret-42");
        register_secret("abc");
        assert_eq!(
            redact_urls_in("Authorization: Bearer sk-unit-test-Secret-42 was refused"),
            "Authorization: Bearer REDACTED was refused"
        );
        assert_eq!(redact_urls_in("abc def"), "abc def");
    }

    #[test]
    fn a_secret_pasted_as_a_file_name_is_not_shown() {
        for secret in [
            "/etc/claid/sk-live-ApiKeySecret0123456789",
            "/etc/claid/https:/hooks.slack.com/services/T0/B0/Token",
        ] {
            let shown = SecretFilePath(Path::new(secret)).to_string();
            assert!(shown.contains("not shown"), "{shown}");
        }
        for path in [
            "/etc/claid-hotfolder/api-key",
            "/etc/claid/ops-hook.url",
            "key",
        ] {
            assert_eq!(SecretFilePath(Path::new(path)).to_string(), path);
        }
    }

    /// Passwords in user information and secret query values never reach a log; the rest of
    /// the URL stays readable, and a URL without secrets is untouched.
    #[test]
    fn credentials_in_urls_are_redacted_for_logs() {
        assert_eq!(
            redact_credentials("http://user:hunter2pw@127.0.0.1:19102/p1.png"),
            "http://user:REDACTED@127.0.0.1:19102/p1.png"
        );
        assert_eq!(
            redact_credentials("https://tok3n@cdn.example/a.png"),
            "https://REDACTED@cdn.example/a.png"
        );
        assert_eq!(
            redact_credentials(
                "https://b.s3.amazonaws.com/a.png?X-Amz-Credential=AK%2F1&X-Amz-Expires=60&X-Amz-Signature=abc&size=2#top"
            ),
            "https://b.s3.amazonaws.com/a.png?X-Amz-Credential=REDACTED&X-Amz-Expires=REDACTED&X-Amz-Signature=REDACTED&size=2#top"
        );
        assert_eq!(
            redact_credentials("https://x/p3.png?token=SECRETTOKEN"),
            "https://x/p3.png?token=REDACTED"
        );
        assert_eq!(
            redact_urls_in(
                "reason=http://u:pw@h/a.png: cannot fetch http://u:pw@h/a.png: 404 \"https://x/b?sig=S\""
            ),
            "reason=http://u:REDACTED@h/a.png: cannot fetch http://u:REDACTED@h/a.png: 404 \"https://x/b?sig=REDACTED\""
        );
        assert_eq!(redact_urls_in("no url here"), "no url here");
        // A URL cut short by a space: its query's secrets are redacted all the same.
        assert_eq!(
            redact_urls_in(
                "`https://bob:PW@x.example/a b.jpg?X-Amz-Signature=SIG&w=4` is not a URL; &token=T2 and ?size=2"
            ),
            "`https://bob:REDACTED@x.example/a b.jpg?X-Amz-Signature=REDACTED&w=4` is not a URL; &token=REDACTED and ?size=2"
        );
        assert!(matches!(
            redact_urls_in("a ? b & c=d ?w=1"),
            std::borrow::Cow::Borrowed(_)
        ));
        for plain in [
            "https://cdn.example/shoes/a.png?w=400",
            "storage://catalog/a.png",
            "photos/local.png",
        ] {
            assert_eq!(redact_credentials(plain), plain);
        }
    }

    fn check(input: &str, expect: &str) {
        assert_eq!(Escaped::str(input).to_string(), expect, "{input:?}");
    }

    #[test]
    fn escapes_every_line_breaking_and_terminal_character() {
        check("plain name.yaml", "plain name.yaml");
        check("a\nb", "a\\nb");
        check("a\r\nb", "a\\r\\nb");
        check("tab\there", "tab\\there");
        check("\x1b[31mred", "\\x1b[31mred");
        check("nul\0", "nul\\x00");
        check("del\x7f", "del\\x7f");
        check("nel\u{85}", "nel\\u{85}");
        check("csi\u{9b}", "csi\\u{9b}");
        check("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}");
        check("rlo\u{202e}gpj.exe", "rlo\\u{202e}gpj.exe");
        check(
            "rlm\u{200f}lrm\u{200e}alm\u{61c}",
            "rlm\\u{200f}lrm\\u{200e}alm\\u{61c}",
        );
        check("back\\slash", "back\\\\slash");
        check("Ünïcödé ok ✓", "Ünïcödé ok ✓");
        // The escaped form of a literal `\n` differs from the escaped newline.
        assert_ne!(
            Escaped::str("a\\nb").to_string(),
            Escaped::str("a\nb").to_string()
        );
    }

    #[test]
    fn counts_read_as_english() {
        assert_eq!(count(1, "job"), "1 job");
        assert_eq!(count(0, "job"), "0 jobs");
        assert_eq!(count(2, "failed job"), "2 failed jobs");
    }

    #[test]
    fn paths_escape_invalid_utf8_as_bytes() {
        let name = OsStr::from_bytes(b"caf\xe9\n.yaml");
        assert_eq!(Escaped::os(name).to_string(), "caf\\xe9\\n.yaml");
        let path = Path::new("team/a\u{2028}b.yaml");
        assert_eq!(Escaped::path(path).to_string(), "team/a\\u{2028}b.yaml");
    }

    #[test]
    fn the_log_layer_leaves_backslashes_alone() {
        let mut out = String::new();
        write_unsafe_escaped(&mut out, "already\\nescaped\nraw").unwrap();
        assert_eq!(out, "already\\nescaped\\nraw");
    }

    #[test]
    fn nothing_unsafe_survives_for_any_char() {
        for code in 0..0x3000u32 {
            let Some(c) = char::from_u32(code) else {
                continue;
            };
            let text = Escaped::str(&c.to_string()).to_string();
            assert!(
                !text.chars().any(is_unsafe_char),
                "U+{code:04X} survives as {text:?}"
            );
        }
    }
}
