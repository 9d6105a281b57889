//! [`Secret`]: a value that never shows up in logs, `Debug` output or error messages.

use std::fmt;

/// Holds a secret. `Debug` and `Display` print `[redacted]`; read it with [`Secret::expose`].
///
/// A `Secret<String>` deserializes from a string only, and its error for anything else does
/// not repeat the value (serde's usual "invalid type: integer `123`" would).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself. Call sites of this are the places to review.
    pub const fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> serde::Deserialize<'de> for Secret<String> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<String, E> {
                Ok(value.to_owned())
            }
            fn visit_string<E: serde::de::Error>(self, value: String) -> Result<String, E> {
                Ok(value)
            }
        }
        // serde's own error would quote the offending value; replace it with one that doesn't.
        deserializer
            .deserialize_string(Visitor)
            .map(Secret)
            .map_err(|_| {
                serde::de::Error::custom("must be a string (the value is secret and not shown)")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let secret = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn deserialize_errors_do_not_echo_the_value() {
        let ok: Secret<String> = serde_json::from_str("\"s3cret\"").unwrap();
        assert_eq!(ok.expose(), "s3cret");
        let err = serde_json::from_str::<Secret<String>>("918273645").unwrap_err();
        assert!(!err.to_string().contains("918273645"), "{err}");
        assert!(err.to_string().contains("must be a string"), "{err}");
    }
}
