//! Request templates: `{window.start}`, `{window.end}`, `{cursor}` and `{parent.<path>}` in
//! a stream's path, query parameters, headers and body, each with an optional format:
//! `{window.start|unix}`. Formats: `rfc3339`, `unix`, `unix_ms`, `date`.

use serde_json::Value;

use waymark_engine::Window;

use crate::config::template::{format_of, placeholders, Placeholder};
use crate::config::TimeFormat;
use crate::record::{lookup, scalar};

/// What a template can refer to.
pub struct Context<'a> {
    /// The run's window.
    pub window: Window,
    /// The window's format when a placeholder names none.
    pub format: TimeFormat,
    /// The page's cursor, if any.
    pub cursor: Option<&'a str>,
    /// The parent record of a child stream.
    pub parent: Option<&'a Value>,
}

/// Renders a template; an absent value (no window start yet, no cursor) is empty.
pub fn render(template: &str, ctx: &Context<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut copied = 0;
    for Placeholder {
        range,
        name,
        format,
    } in placeholders(template)?
    {
        out.push_str(&template[copied..range.start]);
        copied = range.end;
        let format = format.map(format_of).transpose()?.unwrap_or(ctx.format);
        let value = match name {
            "window.start" => ctx.window.start.map(|t| format.format(t)),
            "window.end" => Some(format.format(ctx.window.end)),
            "cursor" => ctx.cursor.map(str::to_string),
            _ => {
                let path = name.strip_prefix("parent.").unwrap_or(name);
                let parent = ctx.parent.ok_or("no parent record")?;
                Some(
                    lookup(parent, path)
                        .and_then(scalar)
                        .ok_or_else(|| format!("the parent record has no scalar at `{path}`"))?,
                )
            }
        };
        out.push_str(&value.unwrap_or_default());
    }
    out.push_str(&template[copied..]);
    Ok(out)
}

/// Renders every string in a JSON value.
pub fn render_json(value: &Value, ctx: &Context<'_>) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => Value::String(render(s, ctx)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_json(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use waymark_engine::Timestamp;

    #[test]
    fn renders_window_cursor_and_parent_with_formats() -> Result<(), String> {
        let parent = serde_json::json!({"id": 7, "org": {"slug": "acme"}});
        let ctx = Context {
            window: Window {
                start: Some(Timestamp(1_767_225_600_000)),
                end: Timestamp(1_767_312_000_500),
            },
            format: TimeFormat::Rfc3339,
            cursor: Some("c9"),
            parent: Some(&parent),
        };
        assert_eq!(
            render(
                "/orgs/{parent.org.slug}/customers/{parent.id}/invoices",
                &ctx
            )?,
            "/orgs/acme/customers/7/invoices"
        );
        assert_eq!(
            render(
                "{window.start}..{window.end|unix}|{window.end|date}|{cursor}",
                &ctx
            )?,
            "2026-01-01T00:00:00.000Z..1767312000|2026-01-02|c9"
        );
        let first = Context {
            window: Window {
                start: None,
                end: Timestamp(0),
            },
            cursor: None,
            ..ctx
        };
        assert_eq!(render("a{window.start}b{cursor}c", &first)?, "abc");
        assert_eq!(render("Bearer ${TOKEN}", &first)?, "Bearer ${TOKEN}");
        Ok(())
    }
}
