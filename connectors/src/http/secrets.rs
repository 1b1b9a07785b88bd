//! Values that must never be shown, in every form an API may echo them in. A careless API
//! repeats the request in its errors, its records or its next-page URLs, and rarely as
//! sent: JSON-escaped, percent-encoded, base64-encoded inside a larger value, or cut
//! short. [`Secrets`] masks each registered value in all of these forms:
//!
//! - as it is;
//! - JSON-escaped: minimal (`\"`, `\\`, as serde or JavaScript write it), with `\/` (PHP,
//!   some Java), ASCII-only (`\u00e9`, Python's default; with `\/`, PHP's), HTML-safe
//!   (`\u003c`, Go's);
//! - percent-encoded: as a form value (`+` for a space) and as a URI component (`%20`),
//!   with upper- or lower-case hex digits;
//! - base64, standard and URL-safe, with and without padding; and the part of the encoding
//!   that the secret alone determines when it stands inside a longer encoded value, at
//!   each of the three byte alignments (`base64("user:" + secret)` holds it);
//! - any of the above with `/` written `\/` (base64 inside PHP's JSON);
//! - cut short: every prefix of any of those forms (not of the base64 parts) at least
//!   three quarters as long as the form and at least 8 characters long.
//!
//! Limits: a form combining two encodings (a URL-encoded value inside base64, a prefix of
//! an encoded part), a secret cut at its start (a suffix), or an encoding not listed here
//! (hex, base32, a hash) is not recognised. Values shorter than 4 characters are not
//! registered at all (they would mask ordinary words), and derived parts and prefixes
//! shorter than 8 characters are not (they could occur by chance).

use std::cmp::Reverse;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;

/// Values shorter than this are not registered.
const SHORTEST: usize = 4;

/// Derived texts shorter than this (prefixes, parts of a base64 text) are not registered.
const SHORTEST_PART: usize = 8;

/// Values that must never be shown, and the masking of them in messages.
#[derive(Clone, Debug, Default)]
pub struct Secrets(Arc<Mutex<Vec<String>>>);

impl Secrets {
    /// Registers a secret value, with every form of it the module lists.
    pub fn add(&self, value: &str) {
        if value.chars().count() < SHORTEST {
            return;
        }
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for form in forms(value) {
            if !all.contains(&form) {
                all.push(form);
            }
        }
        // Longest first, so a form containing another is masked whole.
        all.sort_by_key(|s| Reverse(s.len()));
    }

    /// `text` with every registered form of a secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = text.to_string();
        for secret in all.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }

    /// The start of a body, on one line, for messages: masked before it is cut, so no
    /// part of a secret survives at the cut.
    pub fn excerpt(&self, body: &[u8]) -> String {
        let head = String::from_utf8_lossy(&body[..body.len().min(4096)]);
        crate::http::excerpt::excerpt(self.redact(&head).as_bytes())
    }

    /// Whether `text` holds a registered form of a secret.
    pub fn reveals(&self, text: &str) -> bool {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.iter().any(|s| text.contains(s.as_str()))
    }
}

/// Every text that reveals `value` (see the module's list), duplicates included.
fn forms(value: &str) -> Vec<String> {
    let mut whole = vec![value.to_string()];
    // (escape `/`, only ASCII, HTML-safe)
    for (slash, ascii, html) in [
        (false, false, false),
        (true, false, false),
        (false, true, false),
        (true, true, false),
        (false, false, true),
    ] {
        whole.push(json(value, slash, ascii, html));
    }
    for form in [true, false] {
        for upper in [true, false] {
            whole.push(percent(value, form, upper));
        }
    }
    let mut parts = Vec::new();
    for engine in [&STANDARD, &URL_SAFE] {
        let encoded = engine.encode(value);
        whole.push(encoded.trim_end_matches('=').to_string());
        whole.push(encoded);
        parts.extend(embedded_base64(engine, value.as_bytes()));
    }
    let slashed = |forms: &[String]| -> Vec<String> {
        forms
            .iter()
            .filter(|f| f.contains('/'))
            .map(|f| f.replace('/', "\\/"))
            .collect()
    };
    whole.extend(slashed(&whole));
    parts.extend(slashed(&parts));
    let mut all = Vec::new();
    for form in &whole {
        all.extend(prefixes(form));
    }
    all.extend(whole);
    all.extend(parts.into_iter().filter(|p| p.len() >= SHORTEST_PART));
    all
}

/// `value` as the content of a JSON string: `"` and `\` escaped, and control characters;
/// `slash`: `/` as `\/`; `ascii`: everything beyond ASCII as `\uXXXX` (UTF-16); `html`:
/// `<`, `>`, `&`, U+2028 and U+2029 as `\u003c`… (Go's `encoding/json`).
fn json(value: &str, slash: bool, ascii: bool, html: bool) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if slash => out.push_str("\\/"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if html => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if c < ' ' || (ascii && !c.is_ascii()) => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// `value` percent-encoded: `form`: as an `application/x-www-form-urlencoded` value
/// (`+` for a space, `*` kept), else as a URI component (RFC 3986's unreserved characters
/// kept); hex digits in `upper` case or lower.
fn percent(value: &str, form: bool, upper: bool) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte));
            }
            b'~' if !form => out.push('~'),
            b'*' if form => out.push('*'),
            b' ' if form => out.push('+'),
            _ if upper => {
                let _ = write!(out, "%{byte:02X}");
            }
            _ => {
                let _ = write!(out, "%{byte:02x}");
            }
        }
    }
    out
}

/// The parts of base64 texts that `secret` alone determines, when it stands in a longer
/// encoded value at each of the three alignments: base64 encodes 3 bytes as 4 characters,
/// so the characters holding bits of the bytes before or after it differ with them; those
/// between do not.
fn embedded_base64(engine: &base64::engine::GeneralPurpose, secret: &[u8]) -> Vec<String> {
    (0..3usize)
        .filter_map(|offset| {
            let mut bytes = vec![0u8; offset];
            bytes.extend_from_slice(secret);
            let text = engine.encode(&bytes);
            // The first character holding none of the bytes before, and the end of the
            // last one holding none of the bytes after.
            let start = (offset * 8).div_ceil(6);
            let end = bytes.len() * 8 / 6;
            text.get(start..end).map(str::to_string)
        })
        .collect()
}

/// The prefixes of `form` that are masked: at least three quarters of it, 8 characters at
/// least, shorter than the whole.
fn prefixes(form: &str) -> Vec<String> {
    let chars: Vec<char> = form.chars().collect();
    let shortest = SHORTEST_PART.max((chars.len() * 3).div_ceil(4));
    (shortest..chars.len())
        .map(|n| chars[..n].iter().collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret with every character an encoding changes.
    const ODD: &str = r#"pa"ss\wo/rd+X9=Zq~k é<"#;

    fn odd() -> Secrets {
        let secrets = Secrets::default();
        secrets.add(ODD);
        secrets
    }

    fn assert_masked(secrets: &Secrets, form: &str) {
        let text = format!("«{form}»");
        assert!(secrets.reveals(&text), "not recognised: {form}");
        let masked = secrets.redact(&text);
        assert!(masked.starts_with('«') && masked.ends_with('»'), "{masked}");
        assert!(masked.contains("***"), "{masked}");
        assert!(!masked.contains(form), "{form} left in {masked}");
    }

    #[test]
    fn masks_secrets_and_their_encodings() {
        let secrets = Secrets::default();
        secrets.add("s3cr3t/token+x");
        secrets.add("ab");
        assert_eq!(
            secrets.redact("a s3cr3t/token+x b s3cr3t%2Ftoken%2Bx ab"),
            "a *** b *** ab"
        );
        assert!(secrets.reveals("..s3cr3t/token+x.."));
        assert!(!secrets.reveals("nothing here"));
    }

    #[test]
    fn json_escaped_forms_are_masked() {
        let secrets = odd();
        let serde = serde_json::to_string(ODD).unwrap_or_default();
        let minimal = serde.trim_matches('"');
        assert_eq!(minimal, r#"pa\"ss\\wo/rd+X9=Zq~k é<"#);
        for form in [
            minimal.to_string(),
            minimal.replace('/', "\\/"),
            r#"pa\"ss\\wo\/rd+X9=Zq~k \u00e9<"#.to_string(),
            r#"pa\"ss\\wo/rd+X9=Zq~k \u00e9<"#.to_string(),
            r#"pa\"ss\\wo/rd+X9=Zq~k é\u003c"#.to_string(),
        ] {
            assert_masked(&secrets, &form);
        }
    }

    #[test]
    fn percent_encoded_forms_are_masked() {
        let secrets = odd();
        let form: String = reqwest::Url::parse_with_params("x:", [("v", ODD)])
            .ok()
            .and_then(|u| u.query().map(|q| q.trim_start_matches("v=").to_string()))
            .unwrap_or_default();
        assert_eq!(form, "pa%22ss%5Cwo%2Frd%2BX9%3DZq%7Ek+%C3%A9%3C");
        assert_masked(&secrets, &form);
        assert_masked(&secrets, "pa%22ss%5Cwo%2Frd%2BX9%3DZq~k%20%C3%A9%3C");
        assert_masked(&secrets, "pa%22ss%5cwo%2frd%2bX9%3dZq~k%20%c3%a9%3c");
    }

    #[test]
    fn base64_forms_are_masked_alone_and_inside_longer_values() {
        let secrets = odd();
        for engine in [&STANDARD, &URL_SAFE] {
            let alone = engine.encode(ODD);
            assert_masked(&secrets, &alone);
            assert_masked(&secrets, alone.trim_end_matches('='));
            for before in ["", "u", "us", "user:", "{\"token\":\""] {
                let inside = engine.encode(format!("{before}{ODD}\",\"more\":1}}"));
                let masked = secrets.redact(&inside);
                assert!(masked.contains("***"), "{before}: {inside}");
                // What is left of it is at most the characters the neighbours share.
                assert!(masked.len() < inside.len() - 20, "{masked}");
            }
        }
        assert_masked(&secrets, &STANDARD.encode(ODD).replace('/', "\\/"));
    }

    #[test]
    fn long_prefixes_are_masked_and_short_ones_are_not() {
        let secrets = Secrets::default();
        secrets.add("sekrit-Token-4711");
        // 17 characters: prefixes of 13 and more.
        assert_masked(&secrets, "sekrit-Token-47");
        assert_masked(&secrets, "sekrit-Token-");
        assert_eq!(secrets.redact("sekrit-Token"), "sekrit-Token");
        let secrets = odd();
        let json = r#"pa\"ss\\wo/rd+X9=Zq~k é<"#;
        assert_masked(&secrets, &json[..json.len() - 4]);
        assert_masked(&secrets, &ODD[..ODD.len() - 3]);
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let secrets = odd();
        for text in [
            "GET /items?cursor=eyJpZCI6NDJ9&page=2",
            "pa ss wo rd",
            "the password is wrong",
        ] {
            assert!(!secrets.reveals(text), "{text}");
            assert_eq!(secrets.redact(text), text);
        }
        // Values under 4 characters are not registered; 4 are enough for the value and its
        // whole encodings.
        let secrets = Secrets::default();
        secrets.add("abc");
        secrets.add("ab/d");
        assert_eq!(
            secrets.redact("abc ab/d ab%2Fd YWIvZA=="),
            "abc *** *** ***"
        );
    }
}
