//! Tests of classification, comparison and repair sets.

use serde_json::Value;

use waymark_engine::Timestamp;

use super::classify::{classify, compare_values, Digest, Gap, Values};
use super::compare::version_time;
use super::repair::deletion_record;
use crate::record::{key_by, lookup, Fields};
use crate::sink::plan::Binding;

#[test]
fn versions_read_as_times() {
    let t = Timestamp(1_767_225_600_000);
    assert_eq!(version_time("2026-01-01T00:00:00Z"), Some(t));
    assert_eq!(version_time("2026-01-01T00:00:00.000Z"), Some(t));
    assert_eq!(version_time("1767225600"), Some(t));
    assert_eq!(version_time("1767225600000"), Some(t));
    assert_eq!(version_time("1767225600000000"), Some(t));
    assert_eq!(version_time("v7"), None);
}

#[test]
fn each_pair_of_sides_falls_in_one_class() {
    use Values::*;
    let live = |v: &'static str| Some((Some(v), false));
    assert_eq!(classify(Some("2"), false, None, None), Some(Gap::Missing));
    assert_eq!(
        classify(Some("2"), false, Some((Some("2"), true)), Some(Same)),
        Some(Gap::Missing)
    );
    assert_eq!(
        classify(Some("3"), false, live("2"), None),
        Some(Gap::Stale)
    );
    assert_eq!(
        classify(Some("1"), false, live("2"), None),
        Some(Gap::Newer)
    );
    assert_eq!(
        classify(Some("2"), false, live("2"), Some(Different)),
        Some(Gap::Differing)
    );
    assert_eq!(
        classify(Some("2"), false, live("2"), Some(Unreadable)),
        Some(Gap::Unreadable)
    );
    assert_eq!(
        classify(Some("3"), false, live("2"), Some(Unreadable)),
        Some(Gap::Stale),
        "versions are read whatever the values"
    );
    assert_eq!(classify(Some("2"), false, live("2"), None), None);
    assert_eq!(classify(Some("2"), false, live("2"), Some(Same)), None);
    assert_eq!(
        classify(Some("2"), true, live("2"), None),
        Some(Gap::Deleted)
    );
    assert_eq!(classify(Some("2"), true, None, None), None);
    // Exact versions: two integers beyond 2^64 that an f64 would make equal.
    assert_eq!(
        classify(
            Some("12345678901234567890124"),
            false,
            live("12345678901234567890123"),
            None
        ),
        Some(Gap::Stale)
    );
}

#[test]
fn values_compare_by_tree_or_else_by_text() {
    let tree = |hash| Some(Digest { hash, raw: false });
    let text = |hash| Some(Digest { hash, raw: true });
    assert_eq!(compare_values(None, tree(1)), None, "not compared");
    assert_eq!(compare_values(tree(1), tree(1)), Some(Values::Same));
    assert_eq!(compare_values(tree(1), tree(2)), Some(Values::Different));
    assert_eq!(compare_values(tree(1), None), Some(Values::Different));
    assert_eq!(compare_values(text(1), text(1)), Some(Values::Same));
    assert_eq!(compare_values(text(1), text(2)), Some(Values::Unreadable));
    assert_eq!(compare_values(text(1), tree(1)), Some(Values::Unreadable));
    assert_eq!(compare_values(tree(1), text(1)), Some(Values::Unreadable));
}

#[test]
fn deletion_records_carry_key_and_version_at_their_paths() -> Result<(), String> {
    let mut b = Binding {
        primary_key: vec!["shop.id".into(), "n".into()],
        version_field: Some("meta.v".into()),
        marked_deletions: true,
        ..crate::sink::plan::tests_binding()
    };
    let record = deletion_record(&b, r#"["s1","7"]"#, Some("5"));
    let value: Value = serde_json::from_str(&record).map_err(|e| e.to_string())?;
    let fields = Fields::parse(&record).map_err(|e| e.to_string())?;
    assert_eq!(
        key_by(&b.primary_key, |p| fields.scalar(p)).as_deref(),
        Some(r#"["s1","7"]"#)
    );
    assert_eq!(lookup(&value, "meta.v"), Some(&Value::String("5".into())));
    assert!(b.is_deletion(&fields));
    b.marked_deletions = false;
    assert!(!b.is_deletion(&fields));
    Ok(())
}

#[test]
fn a_repairs_deletion_record_has_the_key_it_deletes() -> Result<(), String> {
    let b = Binding {
        marked_deletions: true,
        ..crate::sink::plan::tests_binding()
    };
    // Written as a string, read back as the same text: the same key (7 and "7" are one).
    for key in ["12345678901234567890123", "1e2", "-0", "7", "a\"b"] {
        let record = deletion_record(&b, key, Some("5"));
        let fields = Fields::parse(&record).map_err(|e| e.to_string())?;
        assert_eq!(fields.scalar("id").as_deref(), Some(key), "{record}");
        assert!(b.is_deletion(&fields));
    }
    Ok(())
}
