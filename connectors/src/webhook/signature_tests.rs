//! Each scheme against vectors from its documentation (Standard Webhooks' and GitHub's
//! published examples) or computed from its documented algorithm with Python's `hmac`
//! (Stripe, Shopify, the generic scheme) — never by the code under test.

use super::*;
use reqwest::header::{HeaderName, HeaderValue};

const MIN: Duration = Duration::from_secs(60);

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

fn keys(scheme: &Scheme, secrets: &[&str]) -> Vec<Vec<u8>> {
    secrets.iter().filter_map(|s| key(scheme, s)).collect()
}

fn at(seconds: u64) -> Timestamp {
    Timestamp(seconds * 1000)
}

// Standard Webhooks' example (its spec and Svix's documentation).
const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STANDARD_BODY: &[u8] = br#"{"test": 2432232314}"#;
const STANDARD_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn standard(signature: &str, timestamp: &str) -> HeaderMap {
    headers(&[
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", timestamp),
        ("webhook-signature", signature),
    ])
}

#[test]
fn standard_webhooks_example_verifies_with_its_id_and_time() {
    let s = Scheme::Standard;
    let k = keys(&s, &[STANDARD_SECRET]);
    let h = standard(STANDARD_SIGNATURE, "1614265330");
    let ok = verify(&s, &k, &h, STANDARD_BODY, at(1_614_265_330), 5 * MIN);
    assert_eq!(
        ok,
        Ok(Verified {
            event_id: Some("msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
            signed_at: Some(at(1_614_265_330)),
        })
    );
    // Several signatures, one valid (a sender signing with old and new secrets).
    let several = format!("v1,AAAA v1a,whatever {STANDARD_SIGNATURE}");
    let h = standard(&several, "1614265330");
    assert!(verify(&s, &k, &h, STANDARD_BODY, at(1_614_265_330), 5 * MIN).is_ok());
    // Rotation: the valid secret second among ours.
    let rotated = keys(&s, &["whsec_AAAAAAAAAAAAAAAAAAAAAAAA", STANDARD_SECRET]);
    let h = standard(STANDARD_SIGNATURE, "1614265330");
    assert!(verify(&s, &rotated, &h, STANDARD_BODY, at(1_614_265_330), 5 * MIN).is_ok());
}

#[test]
fn standard_webhooks_refuses_tampering_wrong_secrets_replays_and_missing_headers() {
    let s = Scheme::Standard;
    let k = keys(&s, &[STANDARD_SECRET]);
    let h = standard(STANDARD_SIGNATURE, "1614265330");
    let now = at(1_614_265_330);
    let tampered = br#"{"test": 2432232315}"#;
    assert_eq!(
        verify(&s, &k, &h, tampered, now, 5 * MIN),
        Err(Refusal::Mismatch)
    );
    let wrong = keys(&s, &["whsec_AAAAAAAAAAAAAAAAAAAAAAAA"]);
    assert_eq!(
        verify(&s, &wrong, &h, STANDARD_BODY, now, 5 * MIN),
        Err(Refusal::Mismatch)
    );
    // The timestamp is signed: changing it breaks the signature.
    let moved = standard(STANDARD_SIGNATURE, "1614265331");
    assert_eq!(
        verify(&s, &k, &moved, STANDARD_BODY, now, 5 * MIN),
        Err(Refusal::Mismatch)
    );
    // Replayed six minutes later, or arriving from six minutes ahead.
    let late = verify(&s, &k, &h, STANDARD_BODY, at(1_614_265_330 + 360), 5 * MIN);
    assert_eq!(late, Err(Refusal::TooOld(Duration::from_secs(360))));
    let early = verify(&s, &k, &h, STANDARD_BODY, at(1_614_265_330 - 360), 5 * MIN);
    assert_eq!(early, Err(Refusal::InTheFuture(Duration::from_secs(360))));
    let missing = headers(&[
        ("webhook-id", "x"),
        ("webhook-signature", STANDARD_SIGNATURE),
    ]);
    assert_eq!(
        verify(&s, &k, &missing, STANDARD_BODY, now, 5 * MIN),
        Err(Refusal::Missing("webhook-timestamp".into()))
    );
    assert_eq!(key(&s, "whsec_not base64!"), None);
}

// Computed: hmac.new(b"whsec_stripe_test", b"1700000000." + body, sha256).hexdigest().
const STRIPE_BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
const STRIPE_V1: &str = "a898e3d79c323403a1fae570a6a85c94a49f50d22b8ebc757a021998864a58f3";
// The same with the secret b"whsec_old".
const STRIPE_OLD_V1: &str = "9119b75c4afa8bb5f71433cb34179a57aa261c58b80b417f1f537251b0cd38a8";

#[test]
fn stripe_signatures_are_checked_over_the_time_and_body() {
    let s = Scheme::Stripe;
    let now = at(1_700_000_100);
    let k = keys(&s, &["whsec_stripe_test"]);
    let header = format!("t=1700000000,v1={STRIPE_V1},v0=deadbeef");
    let h = headers(&[("stripe-signature", &header)]);
    assert_eq!(
        verify(&s, &k, &h, STRIPE_BODY, now, 5 * MIN),
        Ok(Verified {
            event_id: None,
            signed_at: Some(at(1_700_000_000)),
        })
    );
    // Stripe signs with each active secret during a rotation: two v1, one ours.
    let both = format!("t=1700000000,v1={STRIPE_OLD_V1},v1={STRIPE_V1}");
    let h2 = headers(&[("stripe-signature", &both)]);
    assert!(verify(
        &s,
        &keys(&s, &["whsec_old"]),
        &h2,
        STRIPE_BODY,
        now,
        5 * MIN
    )
    .is_ok());
    assert!(verify(&s, &k, &h2, STRIPE_BODY, now, 5 * MIN).is_ok());
    assert_eq!(
        verify(
            &s,
            &keys(&s, &["whsec_other"]),
            &h,
            STRIPE_BODY,
            now,
            5 * MIN
        ),
        Err(Refusal::Mismatch)
    );
    let tampered = br#"{"id":"evt_2","object":"event"}"#;
    assert_eq!(
        verify(&s, &k, &h, tampered, now, 5 * MIN),
        Err(Refusal::Mismatch)
    );
    let replayed = verify(&s, &k, &h, STRIPE_BODY, at(1_700_001_000), 5 * MIN);
    assert_eq!(replayed, Err(Refusal::TooOld(Duration::from_secs(1000))));
    let no_time = headers(&[("stripe-signature", &format!("v1={STRIPE_V1}"))]);
    assert_eq!(
        verify(&s, &k, &no_time, STRIPE_BODY, now, 5 * MIN),
        Err(Refusal::Malformed("stripe-signature".into()))
    );
}

#[test]
fn github_example_from_its_documentation() {
    // GitHub's documented example: secret "It's a Secret to Everybody", body
    // "Hello, World!".
    let s = Scheme::Github;
    let k = keys(&s, &["It's a Secret to Everybody"]);
    let h = headers(&[
        (
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ]);
    let now = at(1_700_000_000);
    assert_eq!(
        verify(&s, &k, &h, b"Hello, World!", now, 5 * MIN),
        Ok(Verified {
            event_id: Some("72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
            signed_at: None,
        })
    );
    assert_eq!(
        verify(&s, &k, &h, b"Hello, World?", now, 5 * MIN),
        Err(Refusal::Mismatch)
    );
    let unprefixed = headers(&[("x-hub-signature-256", "757107ea")]);
    assert_eq!(
        verify(&s, &k, &unprefixed, b"Hello, World!", now, 5 * MIN),
        Err(Refusal::Malformed("x-hub-signature-256".into()))
    );
}

#[test]
fn shopify_signatures_are_base64_over_the_body() {
    // Computed: base64(hmac.new(b"shpss_secret", body, sha256).digest()).
    let s = Scheme::Shopify;
    let body = br#"{"id":820982911946154508}"#;
    let h = headers(&[
        (
            "x-shopify-hmac-sha256",
            "jqbalbO3Z8mDmrF2/+wzM3KYvbgqzVBF969vgiIy80I=",
        ),
        (
            "x-shopify-webhook-id",
            "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        ),
    ]);
    let now = at(1_700_000_000);
    let ok = verify(&s, &keys(&s, &["shpss_secret"]), &h, body, now, 5 * MIN);
    assert_eq!(
        ok.map(|v| v.event_id),
        Ok(Some("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043".into()))
    );
    let wrong = verify(&s, &keys(&s, &["shpss_other"]), &h, body, now, 5 * MIN);
    assert_eq!(wrong, Err(Refusal::Mismatch));
}

#[test]
fn a_generic_hmac_signs_a_template_of_headers_and_body() {
    // Computed: hmac.new(b"generic-secret", b"1700000000:" + body, sha256).hexdigest().
    let s = Scheme::Hmac(Generic {
        header: "X-Signature".into(),
        signed: Some("{header:X-Timestamp}:{body}".into()),
        encoding: Encoding::Hex,
        prefix: Some("v0=".into()),
        timestamp_header: Some("X-Timestamp".into()),
        id_header: Some("X-Event-Id".into()),
    });
    let h = headers(&[
        (
            "x-signature",
            "v0=f2fead6bc5bbe4441eb4de5f548e9428f8b8dc9b11cb73f15d3384d4972b1db6",
        ),
        ("x-timestamp", "1700000000"),
        ("x-event-id", "e-1"),
    ]);
    let k = keys(&s, &["generic-secret"]);
    assert_eq!(
        verify(&s, &k, &h, STRIPE_BODY, at(1_700_000_060), 5 * MIN),
        Ok(Verified {
            event_id: Some("e-1".into()),
            signed_at: Some(at(1_700_000_000)),
        })
    );
    let stale = verify(&s, &k, &h, STRIPE_BODY, at(1_700_000_000 + 301), 5 * MIN);
    assert_eq!(stale.map_err(|e| e.reason()), Err("too_old"));
    let no_id = headers(&[
        (
            "x-signature",
            "v0=f2fead6bc5bbe4441eb4de5f548e9428f8b8dc9b11cb73f15d3384d4972b1db6",
        ),
        ("x-timestamp", "1700000000"),
    ]);
    assert_eq!(
        verify(&s, &k, &no_id, STRIPE_BODY, at(1_700_000_000), 5 * MIN),
        Err(Refusal::Missing("x-event-id".into()))
    );
}

#[test]
fn templates_fill_headers_and_body_and_keep_other_braces() {
    let h = headers(&[("x-a", "1")]);
    assert_eq!(
        fill("{header:X-A}.{body}.{other}{", &h, b"B"),
        Ok(b"1.B.{other}{".to_vec())
    );
    assert_eq!(hex("0aFf"), Some(vec![0x0a, 0xff]));
    assert_eq!(hex("0a0"), None);
    assert_eq!(hex("zz"), None);
}

/// The headers `sign` writes, as a request would carry them.
fn signed(scheme: &Scheme, key: &[u8], id: &str, at: Timestamp, body: &[u8]) -> HeaderMap {
    let pairs = sign(scheme, key, id, at, body).expect("a preset always signs");
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let map = headers(&pairs);
    assert_eq!(
        map.len(),
        pairs.len(),
        "every header is a valid name and value"
    );
    map
}

#[test]
fn what_sign_writes_verify_accepts_and_a_changed_byte_is_refused() {
    let body = br#"{"id":"evt_7","type":"orders.updated","data":{"id":7}}"#;
    let now = at(1_700_000_000);
    for (scheme, secret) in [
        (Scheme::Standard, STANDARD_SECRET),
        (Scheme::Stripe, "whsec_stripe_test"),
        (Scheme::Github, "It's a Secret to Everybody"),
        (Scheme::Shopify, "shpss_secret"),
    ] {
        let k = keys(&scheme, &[secret]);
        let h = signed(&scheme, &k[0], "evt_7", now, body);
        let verified = verify(&scheme, &k, &h, body, now, 5 * MIN);
        let expected_id = (scheme != Scheme::Stripe).then(|| "evt_7".to_string());
        assert_eq!(
            verified.as_ref().map(|v| &v.event_id),
            Ok(&expected_id),
            "{scheme:?}"
        );
        let mut changed = body.to_vec();
        changed[10] ^= 1;
        assert_eq!(
            verify(&scheme, &k, &h, &changed, now, 5 * MIN),
            Err(Refusal::Mismatch),
            "{scheme:?}"
        );
    }
}

#[test]
fn sign_matches_the_documented_examples() {
    // Standard Webhooks' published example, signed rather than verified.
    let s = Scheme::Standard;
    let k = keys(&s, &[STANDARD_SECRET]);
    let pairs = sign(
        &s,
        &k[0],
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        at(1_614_265_330),
        STANDARD_BODY,
    );
    assert_eq!(
        pairs,
        Some(vec![
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".to_string()),
            ("webhook-timestamp", "1614265330".to_string()),
            ("webhook-signature", STANDARD_SIGNATURE.to_string()),
        ])
    );
    // The Stripe vector above: the time and a lower-case hex signature.
    let s = Scheme::Stripe;
    let pairs = sign(
        &s,
        b"whsec_stripe_test",
        "evt_1",
        at(1_700_000_000),
        STRIPE_BODY,
    );
    assert_eq!(
        pairs,
        Some(vec![(
            "Stripe-Signature",
            format!("t=1700000000,v1={STRIPE_V1}")
        )])
    );
}

#[test]
fn a_generic_scheme_signs_from_its_own_headers_only() {
    let mut generic = Generic {
        header: "X-Signature".into(),
        signed: Some("{header:X-Timestamp}:{body}".into()),
        encoding: Encoding::Hex,
        prefix: Some("v0=".into()),
        timestamp_header: Some("X-Timestamp".into()),
        id_header: Some("X-Event-Id".into()),
    };
    let s = Scheme::Hmac(generic.clone());
    let pairs = sign(&s, b"generic-secret", "e-1", at(1_700_000_000), STRIPE_BODY);
    assert_eq!(
        pairs,
        Some(vec![
            ("X-Timestamp", "1700000000".to_string()),
            ("X-Event-Id", "e-1".to_string()),
            (
                "X-Signature",
                "v0=f2fead6bc5bbe4441eb4de5f548e9428f8b8dc9b11cb73f15d3384d4972b1db6".to_string()
            ),
        ])
    );
    // A template naming a header the sender does not write cannot be signed.
    generic.signed = Some("{header:X-Other}.{body}".into());
    let s = Scheme::Hmac(generic);
    assert_eq!(sign(&s, b"k", "e-1", at(1), b"{}"), None);
}
