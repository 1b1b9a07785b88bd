//! Where a key is in the file's text: line and column of a byte offset, the offset of a
//! semantic key path, and the key path at an offset (for TOML's own errors).

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The byte offset of a semantic key path (`stream.orders.pagination.since_param`) in the
/// text: the key itself, else the nearest enclosing key or table that is there.
pub(super) fn locate(text: &str, key: &str) -> usize {
    let mut parts = key.split('.');
    let Some(table) = parts.next() else {
        return 0;
    };
    let mut rest: Vec<&str> = parts.collect();
    // Stream keys name their stream: `stream.<name>.…`.
    let name = (table == "stream" && !rest.is_empty()).then(|| rest.remove(0));
    let mut blocks = Vec::new();
    let (mut offset, mut open) = (0, None);
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            if let Some(start) = open.take() {
                blocks.push((start, offset));
            }
            let header = t.trim_start_matches('[').split(']').next().unwrap_or("");
            if header.trim() == table {
                open = Some(offset);
            }
        }
        offset += line.len();
    }
    if let Some(start) = open {
        blocks.push((start, text.len()));
    }
    let named = |body: &str, name: &str| {
        body.lines()
            .any(|l| l.replace(' ', "") == format!("name=\"{name}\""))
    };
    let Some((start, end)) = blocks
        .into_iter()
        .find(|(s, e)| name.is_none_or(|n| named(&text[*s..*e], n)))
    else {
        return 0;
    };
    let body = &text[start..end];
    let (mut found, mut from) = (0, 0);
    for part in rest {
        // `on_response[2]` is found by its key.
        let part = part.split('[').next().unwrap_or(part);
        let is_key = |i: usize| {
            let before = body[..i].chars().last();
            !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && body[i + part.len()..].trim_start().starts_with('=')
        };
        match body[from..]
            .match_indices(part)
            .map(|(i, _)| i + from)
            .find(|&i| is_key(i))
        {
            Some(i) => (found, from) = (i, i + part.len()),
            None => break,
        }
    }
    start + found
}

/// The key path (`stream[1].pagination.kind`) of the key or value at `offset` of a TOML
/// text, for error messages: the enclosing table header, the key of the line, and the key
/// inside an inline table.
pub(super) fn key_path(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    // The table: the last header above this line, with the index of an array of tables.
    let mut table = String::new();
    for line in text[..line_start].lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim();
            let index = text[..line_start]
                .lines()
                .filter(|l| {
                    l.trim()
                        .strip_prefix("[[")
                        .and_then(|l| l.split("]]").next())
                        .map(str::trim)
                        == Some(name)
                })
                .count();
            table = format!("{name}[{}]", index.saturating_sub(1));
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.chars().all(ident));
    // Inside an inline table: the key just before the offset's `=` (or at the offset).
    let column = offset - line_start;
    let inner = line.find('{').filter(|open| *open < column).and_then(|_| {
        let head = &line[..column.min(line.len())];
        let word_at: String = line[column.min(line.len())..]
            .chars()
            .take_while(|c| ident(*c))
            .collect();
        if !word_at.is_empty() && !head.ends_with(|c: char| ident(c)) {
            return Some(word_at);
        }
        let eq = head.rfind('=')?;
        let name: String = head[..eq]
            .trim_end()
            .chars()
            .rev()
            .take_while(|c| ident(*c))
            .collect();
        Some(name.chars().rev().collect::<String>()).filter(|n| !n.is_empty())
    });
    let parts: Vec<&str> = [Some(table.as_str()), key, inner.as_deref()]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("."))
}
