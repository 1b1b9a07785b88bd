//! Tests of classification, comparison and repair sets.

use serde_json::Value;

use waymark_engine::Timestamp;

use super::classify::{classify, Gap};
use super::compare::version_time;
use super::repair::deletion_record;
use crate::record::{key_of, lookup};
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
    let live = |v: &'static str, d: i64| Some((Some(v), Some(d), false));
    assert_eq!(
        classify(Some("2"), Some(1), false, None, true),
        Some(Gap::Missing)
    );
    assert_eq!(
        classify(
            Some("2"),
            Some(1),
            false,
            Some((Some("2"), Some(1), true)),
            true
        ),
        Some(Gap::Missing)
    );
    assert_eq!(
        classify(Some("3"), Some(1), false, live("2", 1), true),
        Some(Gap::Stale)
    );
    assert_eq!(
        classify(Some("1"), Some(1), false, live("2", 1), true),
        Some(Gap::Newer)
    );
    assert_eq!(
        classify(Some("2"), Some(1), false, live("2", 9), true),
        Some(Gap::Differing)
    );
    assert_eq!(
        classify(Some("2"), Some(1), false, live("2", 9), false),
        None
    );
    assert_eq!(classify(Some("2"), None, false, live("2", 9), true), None);
    assert_eq!(
        classify(Some("2"), Some(1), false, live("2", 1), true),
        None
    );
    assert_eq!(
        classify(Some("2"), None, true, live("2", 1), true),
        Some(Gap::Deleted)
    );
    assert_eq!(classify(Some("2"), None, true, None, true), None);
}

#[test]
fn deletion_records_carry_key_and_version_at_their_paths() -> Result<(), String> {
    let mut b = Binding {
        primary_key: vec!["shop.id".into(), "n".into()],
        version_field: Some("meta.v".into()),
        repair: true,
        ..crate::sink::plan::tests_binding()
    };
    let record = deletion_record(&b, r#"["s1","7"]"#, Some("5"));
    let value: Value = serde_json::from_str(&record).map_err(|e| e.to_string())?;
    assert_eq!(
        key_of(&value, &b.primary_key).as_deref(),
        Some(r#"["s1","7"]"#)
    );
    assert_eq!(lookup(&value, "meta.v"), Some(&Value::String("5".into())));
    assert!(b.is_deletion(&value));
    b.repair = false;
    assert!(!b.is_deletion(&value));
    Ok(())
}
