//! Event type patterns, as subscriptions name the events they want.
//!
//! An event type is dot-separated segments (`identity.user.registered`). A pattern is the same
//! with wildcards:
//!
//! - `*` matches exactly one segment: `identity.user.*` matches `identity.user.registered`
//!   but not `identity.user` or `identity.user.email.changed`;
//! - `**`, only as the last segment, matches one or more segments: `identity.**` matches every
//!   identity event, and `**` alone matches every event.
//!
//! Segments are 1 to 64 ASCII letters, digits, `_` or `-`; a pattern is at most 200 bytes.

use std::fmt;
use std::str::FromStr;

/// The longest pattern, in bytes.
pub const MAX_LEN: usize = 200;
const MAX_SEGMENT: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

/// A checked event type pattern. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern {
    text: String,
    segments: Vec<Segment>,
}

/// Why a text is not a pattern; the message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an event type pattern: {reason}")]
pub struct PatternError {
    text: String,
    reason: &'static str,
}

impl FromStr for TypePattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| PatternError {
            text: text.chars().take(MAX_LEN).collect(),
            reason,
        };
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        if text.len() > MAX_LEN {
            return Err(fail("it is longer than 200 bytes"));
        }
        let parts: Vec<&str> = text.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let segment = match *part {
                "" => {
                    return Err(fail(
                        "it has an empty segment (two dots, or a dot at an end)",
                    ));
                }
                "*" => Segment::One,
                "**" if index + 1 == parts.len() => Segment::Rest,
                "**" => return Err(fail("`**` may only be the last segment")),
                literal => {
                    if literal.len() > MAX_SEGMENT {
                        return Err(fail("a segment is longer than 64 bytes"));
                    }
                    if !literal
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        return Err(fail(
                            "segments are letters, digits, `_` or `-`, or the wildcards `*` and `**`",
                        ));
                    }
                    Segment::Literal(literal.to_owned())
                }
            };
            segments.push(segment);
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }
}

impl TypePattern {
    /// Whether `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        let mut parts = event_type.split('.');
        for segment in &self.segments {
            match segment {
                Segment::Rest => return parts.next().is_some_and(|p| !p.is_empty()),
                Segment::One => {
                    if parts.next().is_none_or(str::is_empty) {
                        return false;
                    }
                }
                Segment::Literal(literal) => {
                    if parts.next() != Some(literal.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
