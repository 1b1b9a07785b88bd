//! The URLs of a workflow (`base_url`, `token_url`): only `http://` and `https://` reach an
//! API, so any other scheme (`file://`, a forgotten scheme read as one, `localhost:8080`) is
//! refused when the file is validated, and again once `${VAR}` is expanded at run time.

/// Parses `text` as an absolute `http://` or `https://` URL; the message says what is wrong
/// and quotes `text`.
pub fn http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text);
    match url {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(url),
        // `localhost:8080` parses, with the scheme `localhost`.
        _ if !text.contains("://") && !text.starts_with('/') => Err(format!(
            "`{text}` is not an http:// or https:// URL; write the scheme, e.g. \
             \"https://{text}\""
        )),
        Ok(url) => Err(format!(
            "`{text}` is not an http:// or https:// URL (its scheme is `{}`)",
            url.scheme()
        )),
        Err(e) => Err(format!(
            "`{text}` is not a URL ({e}); write e.g. \"https://api.example.com/v1\""
        )),
    }
}

/// Checks a URL as the file writes it, `${VAR}` included: each variable stands for a plain
/// value, and a URL that starts with one (the whole address from the environment) is
/// checked once expanded, at run time.
pub(super) fn check_written(text: &str) -> Result<(), String> {
    if text.starts_with("${") {
        return Ok(());
    }
    let mut probe = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        probe.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            return Err(format!("unclosed `${{` in `{text}`"));
        };
        probe.push('x');
        rest = &rest[start + end + 1..];
    }
    probe.push_str(rest);
    http_url(&probe)
        .map(drop)
        .map_err(|why| why.replacen(&format!("`{probe}`"), &format!("`{text}`"), 1))
}
