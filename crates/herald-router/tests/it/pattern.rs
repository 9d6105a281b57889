//! Event type patterns: what matches, and every way a pattern can be wrong.

use herald_router::pattern::TypePattern;

fn pattern(text: &str) -> TypePattern {
    text.parse().unwrap()
}

#[test]
fn wildcards_match_as_documented() {
    let cases: &[(&str, &str, bool)] = &[
        ("identity.user.registered", "identity.user.registered", true),
        ("identity.user.registered", "identity.user.updated", false),
        (
            "identity.user.registered",
            "identity.user.registered.v2",
            false,
        ),
        ("identity.user.*", "identity.user.registered", true),
        ("identity.user.*", "identity.user", false),
        ("identity.user.*", "identity.user.email.changed", false),
        ("identity.*.revoked", "identity.session.revoked", true),
        ("identity.*.revoked", "identity.session.created", false),
        ("identity.**", "identity.user", true),
        ("identity.**", "identity.user.email.changed", true),
        ("identity.**", "identity", false),
        ("identity.**", "messaging.message.sent", false),
        ("**", "anything.at.all", true),
        ("**", "one", true),
        ("*", "one", true),
        ("*", "one.two", false),
        ("identity.user.*", "identity.user.", false),
        ("identity.**", "identity.", false),
    ];
    for (text, event_type, expected) in cases {
        assert_eq!(
            pattern(text).matches(event_type),
            *expected,
            "{text} against {event_type}"
        );
    }
}

#[test]
fn bad_patterns_are_explained() {
    let cases = [
        ("", "empty"),
        ("identity..user", "empty segment"),
        (".identity", "empty segment"),
        ("identity.", "empty segment"),
        ("identity.**.user", "last segment"),
        ("identity.us er", "letters, digits"),
        ("identity.user.*x", "letters, digits"),
        ("identity/user", "letters, digits"),
    ];
    for (text, expected) in cases {
        let err = text.parse::<TypePattern>().unwrap_err().to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
    let long = format!("a.{}", "b".repeat(65));
    assert!(
        long.parse::<TypePattern>()
            .unwrap_err()
            .to_string()
            .contains("64 bytes")
    );
    let longest = vec!["abc"; 51].join(".");
    assert!(
        longest
            .parse::<TypePattern>()
            .unwrap_err()
            .to_string()
            .contains("200 bytes")
    );
    assert_eq!(pattern("identity.user.*").to_string(), "identity.user.*");
}
