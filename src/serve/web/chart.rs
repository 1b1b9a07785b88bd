//! Small charts drawn on the server as inline SVG (no script, no library): pure functions
//! of the numbers.

/// A bar chart of `(label, value)` pairs, oldest first: each bar's height is its share of
/// the largest value; its label is the bar's tooltip.
pub fn bars(points: &[(String, u64)]) -> String {
    const WIDTH: u64 = 600;
    const HEIGHT: u64 = 120;
    if points.is_empty() {
        return "<p class=\"muted\">No runs yet.</p>".into();
    }
    let largest = points.iter().map(|(_, v)| *v).max().unwrap_or(0);
    let max = largest.max(1);
    let n = points.len() as u64;
    // A few runs get narrow bars, not the whole width.
    let step = (WIDTH / n).clamp(1, 24);
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {}\" role=\"img\" \
         aria-label=\"{n} runs, at most {largest}\">",
        HEIGHT + 14
    );
    for (i, (label, value)) in points.iter().enumerate() {
        let h = (value * HEIGHT / max).max(u64::from(*value > 0));
        let x = i as u64 * step;
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{h}\"><title>{}: {value}</title></rect>",
            HEIGHT - h,
            step.saturating_sub(1).max(1),
            escape(label)
        ));
    }
    svg.push_str(&format!(
        "<text x=\"0\" y=\"{}\">{n} runs, max {largest}</text></svg>",
        HEIGHT + 12
    ));
    svg
}

/// Text safe inside SVG markup.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_escape_labels() {
        let svg = bars(&[("a<b".into(), 50), ("c".into(), 100), ("d".into(), 0)]);
        assert!(
            svg.contains("height=\"60\"><title>a&lt;b: 50</title>"),
            "{svg}"
        );
        assert!(
            svg.contains("height=\"120\"><title>c: 100</title>"),
            "{svg}"
        );
        assert!(svg.contains("height=\"0\"><title>d: 0</title>"), "{svg}");
        assert_eq!(bars(&[]), "<p class=\"muted\">No runs yet.</p>");
    }
}
