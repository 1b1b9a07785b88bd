//! Short, single-line excerpts of response bodies for error messages.

/// The first 200 bytes of a body, on one line, for error messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text = text.replace(['\n', '\r'], " ");
    if body.len() > 200 {
        format!("{text}…")
    } else {
        text
    }
}
