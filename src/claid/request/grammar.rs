//! The grammars of string values in an edit request: URIs, colours, decimals, percentages,
//! lengths, feathering, `outpaint_by` and `padding`.

use crate::claid::request::{Length, OutpaintBy, Padding};

/// Checks the URI rules for `input` and `output.destination` (length is checked by the caller).
pub(super) fn check_uri(s: &str) -> Result<(), String> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_owned());
    }
    let lower = s.to_ascii_lowercase();
    if let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() {
            return Err(format!(
                "must be an http(s):// URL with a host, got \"{s}\""
            ));
        }
        return Ok(());
    }
    if let Some(rest) = s.strip_prefix("storage://") {
        let mut parts = rest.splitn(2, '/');
        let name = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        if name.is_empty() || path.is_empty() {
            return Err(format!(
                "must be storage://<storage>/<path> with both parts non-empty, got \"{s}\""
            ));
        }
        return Ok(());
    }
    Err(format!(
        "must start with http://, https:// or storage://<storage>/, got \"{s}\""
    ))
}

/// `#rgb` / `#rrggbb` → RGB.
pub(super) fn parse_hex_color(s: &str) -> Option<(u8, u8, u8)> {
    let hex = s.strip_prefix('#')?;
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        6 => Some((
            u8::from_str_radix(&hex[0..2], 16).ok()?,
            u8::from_str_radix(&hex[2..4], 16).ok()?,
            u8::from_str_radix(&hex[4..6], 16).ok()?,
        )),
        3 => {
            let d = |i: usize| u8::from_str_radix(&hex[i..=i], 16).ok().map(|v| v * 17);
            Some((d(0)?, d(1)?, d(2)?))
        }
        _ => None,
    }
}

/// A non-negative decimal number: digits with an optional fraction.
pub(super) fn parse_decimal(s: &str) -> Option<f64> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// `"200%"` → 200.0.
pub(super) fn parse_percent(s: &str) -> Option<f64> {
    parse_decimal(s.strip_suffix('%')?)
}

/// `"30px"` or `"10%"`.
pub(super) fn parse_length(s: &str) -> Option<Length> {
    if let Some(px) = s.strip_suffix("px") {
        if px.is_empty() || !px.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return px.parse::<u32>().ok().map(Length::Px);
    }
    parse_percent(s).map(Length::Percent)
}

/// Feathering pattern `^[1-9][0-9]+[%]$|^[0-9][%]$`.
pub(super) fn parse_feathering(s: &str) -> Option<u32> {
    let digits = s.strip_suffix('%')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn parse_outpaint_by(s: &str) -> Option<OutpaintBy> {
    let values: Vec<Length> = s.split(' ').map(parse_length).collect::<Option<_>>()?;
    match values.as_slice() {
        [both] => Some(OutpaintBy {
            width: *both,
            height: *both,
        }),
        [w, h] => Some(OutpaintBy {
            width: *w,
            height: *h,
        }),
        _ => None,
    }
}

pub(super) fn parse_padding(s: &str) -> Option<Padding> {
    let values: Vec<Length> = s.split(' ').map(parse_length).collect::<Option<_>>()?;
    match values.as_slice() {
        [all] => Some(Padding {
            top: *all,
            right: *all,
            bottom: *all,
            left: *all,
        }),
        [vertical, horizontal] => Some(Padding {
            top: *vertical,
            right: *horizontal,
            bottom: *vertical,
            left: *horizontal,
        }),
        [top, right, bottom, left] => Some(Padding {
            top: *top,
            right: *right,
            bottom: *bottom,
            left: *left,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_colors_parse() {
        assert_eq!(parse_hex_color("#ffffff"), Some((255, 255, 255)));
        assert_eq!(parse_hex_color("#F00"), Some((255, 0, 0)));
        assert_eq!(parse_hex_color("ffffff"), None);
        assert_eq!(parse_hex_color("#fffff"), None);
        assert_eq!(parse_hex_color("#ggg"), None);
    }

    #[test]
    fn lengths_parse() {
        assert_eq!(parse_length("30px"), Some(Length::Px(30)));
        assert_eq!(parse_length("12.5%"), Some(Length::Percent(12.5)));
        assert_eq!(parse_length("px"), None);
        assert_eq!(parse_length("-1px"), None);
        assert_eq!(parse_length("1.%"), None);
        assert_eq!(parse_feathering("15%"), Some(15));
        assert_eq!(parse_feathering("05%"), None);
        assert_eq!(parse_feathering("0%"), Some(0));
    }
}
