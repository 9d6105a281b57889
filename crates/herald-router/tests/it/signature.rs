//! Signing and verifying deliveries.

use herald_router::signature::{SecretError, SigningSecret, VerifyError};

/// The example in the Standard Webhooks specification; the signature was recomputed with an
/// independent HMAC-SHA256 implementation before being written here.
const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SPEC_TIMESTAMP: i64 = 1_614_265_330;
const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

#[test]
fn matches_the_specification_example() {
    let secret = SigningSecret::parse(SPEC_SECRET).unwrap();
    assert_eq!(
        secret.sign(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
        SPEC_SIGNATURE
    );
    let ts = SPEC_TIMESTAMP.to_string();
    secret
        .verify(SPEC_ID, &ts, SPEC_SIGNATURE, SPEC_BODY, SPEC_TIMESTAMP, 300)
        .unwrap();
}

#[test]
fn generated_secrets_round_trip() {
    let secret = SigningSecret::generate().unwrap();
    let text = secret.to_text();
    assert!(text.starts_with("whsec_"), "{text}");
    assert_ne!(text, SigningSecret::generate().unwrap().to_text());
    let again = SigningSecret::parse(&text).unwrap();
    let signature = secret.sign("evt_1", 1_700_000_000, b"{}");
    again
        .verify("evt_1", "1700000000", &signature, b"{}", 1_700_000_010, 300)
        .unwrap();
    assert!(
        !format!("{secret:?}").contains(&text[6..]),
        "Debug hides the key"
    );
}

#[test]
fn any_matching_v1_signature_is_enough() {
    let old = SigningSecret::generate().unwrap();
    let new = SigningSecret::generate().unwrap();
    let body = b"{\"n\":1}";
    let header = format!(
        "v2,abc {} {}",
        old.sign("evt_2", 100, body),
        new.sign("evt_2", 100, body)
    );
    old.verify("evt_2", "100", &header, body, 100, 300).unwrap();
    new.verify("evt_2", "100", &header, body, 100, 300).unwrap();
}

#[test]
fn tampering_and_stale_deliveries_are_rejected() {
    let secret = SigningSecret::parse(SPEC_SECRET).unwrap();
    let other = SigningSecret::generate().unwrap();
    let ts = SPEC_TIMESTAMP.to_string();
    let now = SPEC_TIMESTAMP;
    let verify = |secret: &SigningSecret, id: &str, ts: &str, sig: &str, body: &[u8], now: i64| {
        secret.verify(id, ts, sig, body, now, 300)
    };
    let cases = [
        (
            verify(&secret, SPEC_ID, &ts, SPEC_SIGNATURE, b"{\"test\": 1}", now),
            VerifyError::Mismatch,
        ),
        (
            verify(&secret, "msg_other", &ts, SPEC_SIGNATURE, SPEC_BODY, now),
            VerifyError::Mismatch,
        ),
        (
            verify(&other, SPEC_ID, &ts, SPEC_SIGNATURE, SPEC_BODY, now),
            VerifyError::Mismatch,
        ),
        (
            verify(&secret, SPEC_ID, &ts, "v1,not base64!", SPEC_BODY, now),
            VerifyError::Mismatch,
        ),
        (
            verify(&secret, SPEC_ID, &ts, "v2,abc", SPEC_BODY, now),
            VerifyError::NoSignature,
        ),
        (
            verify(&secret, SPEC_ID, &ts, "", SPEC_BODY, now),
            VerifyError::NoSignature,
        ),
        (
            verify(
                &secret,
                SPEC_ID,
                "yesterday",
                SPEC_SIGNATURE,
                SPEC_BODY,
                now,
            ),
            VerifyError::Timestamp,
        ),
        (
            verify(&secret, SPEC_ID, &ts, SPEC_SIGNATURE, SPEC_BODY, now + 301),
            VerifyError::Stale {
                sent: now,
                now: now + 301,
            },
        ),
        (
            verify(&secret, SPEC_ID, &ts, SPEC_SIGNATURE, SPEC_BODY, now - 301),
            VerifyError::Stale {
                sent: now,
                now: now - 301,
            },
        ),
    ];
    for (index, (result, expected)) in cases.into_iter().enumerate() {
        assert_eq!(result, Err(expected), "case {index}");
    }
    // A different timestamp in the header than the one signed fails too.
    let shifted = (SPEC_TIMESTAMP + 1).to_string();
    assert_eq!(
        verify(&secret, SPEC_ID, &shifted, SPEC_SIGNATURE, SPEC_BODY, now),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn bad_secrets_are_refused_without_echoing_them() {
    let cases = [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", SecretError::Prefix),
        ("whsec_!!!not-base64!!!", SecretError::Encoding),
        ("whsec_c2hvcnQ=", SecretError::Length(5)),
        ("whsec_", SecretError::Length(0)),
    ];
    for (text, expected) in cases {
        let err = SigningSecret::parse(text).unwrap_err();
        assert_eq!(err, expected, "{text}");
        assert!(!err.to_string().contains(text.trim_start_matches("whsec_")) || text == "whsec_");
    }
    let long = format!("whsec_{}", "A".repeat(88));
    assert_eq!(
        SigningSecret::parse(&long).unwrap_err(),
        SecretError::Length(66)
    );
}
