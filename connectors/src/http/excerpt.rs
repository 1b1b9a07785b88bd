//! Text from an API made fit to show a person: short, single-line excerpts of response
//! bodies for error messages, and [`printable`], which escapes the control characters an
//! API could use to drive a terminal (set its title, clear the screen, hide text).

use std::borrow::Cow;
use std::fmt::Write as _;

/// The first 200 bytes of a body, on one line, control characters escaped, for error
/// messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text = text.replace(['\n', '\r'], " ");
    let text = printable(&text);
    if body.len() > 200 {
        format!("{text}…")
    } else {
        text.into_owned()
    }
}

/// `text` with every control character escaped — C0 (line breaks and tabs too), DEL and
/// C1 — so that it shows as one line and cannot drive a terminal: ESC as `\x1b`, BEL as
/// `\x07`, DEL as `\u007f`, CSI (U+009B) as `\u009b`. Other Unicode is kept. For values
/// shown in a line: keys, cursors, reasons, excerpts.
///
/// The forms are those of JSON where JSON has one (`\u007f`, `\u009b`), so that a JSON
/// text passed through [`printable_lines`] reads as the same JSON: it never holds a raw C0
/// character, and the escape of a DEL or C1 one, which can only stand inside a string,
/// means that same character. (A backslash in `text` is kept as it is: `\x1b` in the
/// output may also have been those four characters.)
pub fn printable(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// [`printable`] for text of several lines: line breaks and tabs are kept, every other
/// control character is escaped. For whatever reaches stdout or stderr.
pub fn printable_lines(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

fn escape(text: &str, keep_lines: bool) -> Cow<'_, str> {
    let hidden = |c: char| c.is_control() && !(keep_lines && matches!(c, '\n' | '\t'));
    if !text.contains(hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match u32::from(c) {
            _ if !hidden(c) => out.push(c),
            code @ 0..0x7f => {
                let _ = write!(out, "\\x{code:02x}");
            }
            code => {
                let _ = write!(out, "\\u{code:04x}");
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_other_text_kept() {
        let hostile = "a\x1b]0;title\x07b\x1b[2Jc\u{9b}31md\u{7f}e\r\nf\tg";
        assert_eq!(
            printable(hostile),
            r"a\x1b]0;title\x07b\x1b[2Jc\u009b31md\u007fe\x0d\x0af\x09g"
        );
        assert_eq!(
            printable_lines(hostile),
            "a\\x1b]0;title\\x07b\\x1b[2Jc\\u009b31md\\u007fe\\x0d\nf\tg"
        );
        assert!(matches!(
            printable("ordinary: é ü 日本 🙂 \\x"),
            Cow::Borrowed(_)
        ));
        assert_eq!(printable("\u{a0}\u{200b}"), "\u{a0}\u{200b}");
    }

    #[test]
    fn json_passed_through_reads_as_the_same_json() -> Result<(), serde_json::Error> {
        let value = serde_json::json!({"k": "\x1b[2J\u{9b}\u{7f}\u{85}\x00 ok\n"});
        let text = value.to_string();
        let shown = printable_lines(&text);
        assert!(!shown.contains(|c: char| c.is_control()), "{shown}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&shown)?, value);
        Ok(())
    }

    #[test]
    fn excerpts_are_one_printable_line() {
        assert_eq!(
            excerpt(b"{\"e\":\"\x1b]0;x\x07\"}\n"),
            r#"{"e":"\x1b]0;x\x07"} "#
        );
        assert!(excerpt(&[b'a'; 300]).ends_with("a…"));
    }
}
