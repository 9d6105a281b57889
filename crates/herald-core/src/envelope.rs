//! The event envelope: CloudEvents 1.0 in its structured JSON form, plus Herald's extensions.
//!
//! Attributes: `id`, `source`, `specversion` (always `1.0`), `type` (required); `time`,
//! `subject`, `datacontenttype`, `dataschema`, `data` or `data_base64` (optional); and the
//! extensions Herald reads, `partitionkey` (the message group, for FIFO order),
//! `correlationid` and `traceparent`. Other extension attributes are kept as they are.
//!
//! `data` is kept as the exact JSON text that was received ([`RawValue`]), so what a webhook
//! endpoint receives, and what its signature covers, is byte for byte what the producer sent.
//!
//! [`Event::parse`] checks every attribute and reports all problems at once, each located by a
//! JSON pointer, so an API can answer a bad event with one complete problem+json body.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::correlation::{self, CorrelationId};
use crate::id::EventId;
use crate::problem::FieldError;

/// The only CloudEvents version Herald speaks.
pub const SPEC_VERSION: &str = "1.0";
/// The largest encoded event accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// The longest `id`, `type` and `partitionkey`.
pub const MAX_NAME_LEN: usize = 256;
/// The longest `source`, `subject` and `dataschema`.
pub const MAX_URI_LEN: usize = 1024;
/// The most extension attributes beyond Herald's own.
pub const MAX_EXTENSIONS: usize = 32;

/// One event. See the [module docs](self).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique per `source`; Herald-made events use an [`EventId`].
    pub id: String,
    /// Who produced the event (a URI reference), e.g. `/identity`.
    pub source: String,
    /// Always `1.0`.
    pub specversion: SpecVersion,
    /// What happened, in reverse-DNS style, e.g. `identity.user.registered`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it happened.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_time"
    )]
    pub time: Option<OffsetDateTime>,
    /// What it happened to, within the source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The media type of `data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// A URI of the schema `data` follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// The payload, as the exact JSON text received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// A binary payload, base64-encoded (never together with `data`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// The message group: events with one key are delivered in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitionkey: Option<String>,
    /// The correlation id of the request that caused this event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// W3C trace context of the producer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Any other extension attributes: strings, integers or booleans.
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

/// The `specversion` attribute; it can only be `1.0`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecVersion;

impl Serialize for SpecVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(SPEC_VERSION)
    }
}

fn serialize_time<S: Serializer>(
    time: &Option<OffsetDateTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => {
            let text = time.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
            serializer.serialize_str(&text)
        }
        None => serializer.serialize_none(),
    }
}

/// Why [`Event::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NewEventError {
    /// The payload could not be encoded as JSON.
    #[error("the event data cannot be encoded as JSON")]
    Data(#[source] serde_json::Error),
    /// An attribute is not valid.
    #[error("the event is not valid: {}", describe(.0))]
    Invalid(Vec<FieldError>),
}

fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{} {}", e.pointer, e.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Event {
    /// A new event made by Herald code: a fresh [`EventId`], the current time, JSON `data`, and
    /// the correlation id of the current request, if any.
    ///
    /// ```
    /// use herald_core::Event;
    ///
    /// let event = Event::new("identity.user.registered", "/identity", &serde_json::json!({"user_id": "usr_1"}))?
    ///     .with_partition_key("usr_1");
    /// assert!(event.id.starts_with("evt_"));
    /// assert_eq!(event.data.unwrap().get(), r#"{"user_id":"usr_1"}"#);
    /// # Ok::<(), herald_core::envelope::NewEventError>(())
    /// ```
    pub fn new(
        event_type: impl Into<String>,
        source: impl Into<String>,
        data: &impl Serialize,
    ) -> Result<Self, NewEventError> {
        let data = serde_json::value::to_raw_value(data).map_err(NewEventError::Data)?;
        let event = Self {
            id: EventId::new().to_string(),
            source: source.into(),
            specversion: SpecVersion,
            event_type: event_type.into(),
            time: Some(OffsetDateTime::now_utc()),
            subject: None,
            datacontenttype: Some("application/json".to_owned()),
            dataschema: None,
            data: Some(data),
            data_base64: None,
            partitionkey: None,
            correlationid: correlation::current().map(|id| id.to_string()),
            traceparent: None,
            extensions: BTreeMap::new(),
        };
        let errors = event.check();
        if errors.is_empty() {
            Ok(event)
        } else {
            Err(NewEventError::Invalid(errors))
        }
    }

    /// Sets the partition key (message group).
    #[must_use]
    pub fn with_partition_key(mut self, key: impl Into<String>) -> Self {
        self.partitionkey = Some(key.into());
        self
    }

    /// Sets the subject.
    #[must_use]
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Parses and checks one structured-mode JSON event. Every problem is reported, each with a
    /// JSON pointer relative to the event (prefix it for events inside a batch).
    pub fn parse(json: &str) -> Result<Self, Vec<FieldError>> {
        if json.len() > MAX_EVENT_BYTES {
            return Err(vec![FieldError::new(
                "",
                format!(
                    "the event is {} bytes; the limit is {MAX_EVENT_BYTES}",
                    json.len()
                ),
            )]);
        }
        let attributes: BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(json).map_err(|err| {
                vec![FieldError::new(
                    "",
                    format!("must be a JSON object ({err})"),
                )]
            })?;
        Self::from_attributes(attributes)
    }

    fn from_attributes(
        mut attrs: BTreeMap<String, Box<RawValue>>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut take = |name: &str| attrs.remove(name).filter(|raw| raw.get() != "null");
        let mut string = |name: &str, errors: &mut Vec<FieldError>| -> Option<String> {
            let raw = take(name)?;
            match serde_json::from_str::<String>(raw.get()) {
                Ok(text) => Some(text),
                Err(_) => {
                    errors.push(FieldError::new(format!("/{name}"), "must be a string"));
                    None
                }
            }
        };
        let id = string("id", &mut errors);
        let source = string("source", &mut errors);
        let specversion = string("specversion", &mut errors);
        let event_type = string("type", &mut errors);
        let time = string("time", &mut errors);
        let subject = string("subject", &mut errors);
        let datacontenttype = string("datacontenttype", &mut errors);
        let dataschema = string("dataschema", &mut errors);
        let data_base64 = string("data_base64", &mut errors);
        let partitionkey = string("partitionkey", &mut errors);
        let correlationid = string("correlationid", &mut errors);
        let traceparent = string("traceparent", &mut errors);
        let data = take("data");

        for (name, value) in [
            ("id", &id),
            ("source", &source),
            ("specversion", &specversion),
            ("type", &event_type),
        ] {
            if value.is_none() && !errors.iter().any(|e| e.pointer == format!("/{name}")) {
                errors.push(FieldError::new(format!("/{name}"), "is required"));
            }
        }
        if let Some(version) = &specversion
            && version != SPEC_VERSION
        {
            errors.push(FieldError::new(
                "/specversion",
                format!("must be \"{SPEC_VERSION}\""),
            ));
        }
        let time = time.and_then(|text| match OffsetDateTime::parse(&text, &Rfc3339) {
            Ok(time) => Some(time),
            Err(_) => {
                errors.push(FieldError::new("/time", "must be an RFC 3339 timestamp"));
                None
            }
        });

        let mut extensions = BTreeMap::new();
        for (name, raw) in attrs {
            let pointer = format!("/{}", escape_pointer(&name));
            if !(1..=20).contains(&name.len())
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                errors.push(FieldError::new(
                    pointer,
                    "is not a CloudEvents attribute; extension names are 1 to 20 lower-case letters or digits",
                ));
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(raw.get()) {
                Ok(value @ (serde_json::Value::String(_) | serde_json::Value::Bool(_))) => {
                    extensions.insert(name, value);
                }
                Ok(value @ serde_json::Value::Number(_)) if value.is_i64() => {
                    extensions.insert(name, value);
                }
                Ok(serde_json::Value::Null) => {}
                _ => errors.push(FieldError::new(
                    pointer,
                    "an extension must be a string, an integer or a boolean",
                )),
            }
        }

        let event = Self {
            id: id.unwrap_or_default(),
            source: source.unwrap_or_default(),
            specversion: SpecVersion,
            event_type: event_type.unwrap_or_default(),
            time,
            subject,
            datacontenttype,
            dataschema,
            data,
            data_base64,
            partitionkey,
            correlationid,
            traceparent,
            extensions,
        };
        // Attribute rules only apply to attributes that were read; skip ones already reported.
        for error in event.check() {
            if !errors.iter().any(|e| e.pointer == error.pointer) {
                errors.push(error);
            }
        }
        if errors.is_empty() {
            Ok(event)
        } else {
            Err(errors)
        }
    }

    /// Checks the attribute rules; an empty list means the event is valid.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut rule = |name: &str, ok: bool, detail: &str| {
            if !ok {
                errors.push(FieldError::new(format!("/{name}"), detail));
            }
        };
        rule(
            "id",
            text_ok(&self.id, MAX_NAME_LEN),
            "must be 1 to 256 characters with no control characters",
        );
        rule(
            "source",
            uri_ok(&self.source),
            "must be a URI reference of 1 to 1024 characters with no spaces",
        );
        rule(
            "type",
            (1..=MAX_NAME_LEN).contains(&self.event_type.len())
                && self
                    .event_type
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b)),
            "must be 1 to 256 ASCII letters, digits or `._-:/`",
        );
        if let Some(subject) = &self.subject {
            rule(
                "subject",
                text_ok(subject, MAX_URI_LEN),
                "must be 1 to 1024 characters with no control characters",
            );
        }
        if let Some(media) = &self.datacontenttype {
            rule(
                "datacontenttype",
                text_ok(media, MAX_NAME_LEN) && media.contains('/'),
                "must be a media type such as `application/json`",
            );
        }
        if let Some(schema) = &self.dataschema {
            rule(
                "dataschema",
                uri_ok(schema),
                "must be a URI of 1 to 1024 characters with no spaces",
            );
        }
        if let Some(encoded) = &self.data_base64 {
            rule(
                "data_base64",
                self.data.is_none(),
                "must not be sent together with `data`",
            );
            rule("data_base64", base64_ok(encoded), "must be standard base64");
        }
        if let Some(key) = &self.partitionkey {
            rule(
                "partitionkey",
                text_ok(key, MAX_NAME_LEN),
                "must be 1 to 256 characters with no control characters",
            );
        }
        if let Some(id) = &self.correlationid {
            rule(
                "correlationid",
                CorrelationId::parse(id).is_some(),
                "must be 1 to 128 ASCII letters, digits or `-_.:/+=@`",
            );
        }
        if let Some(parent) = &self.traceparent {
            rule(
                "traceparent",
                traceparent_ok(parent),
                "must be a W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`)",
            );
        }
        if self.extensions.len() > MAX_EXTENSIONS {
            errors.push(FieldError::new(
                "",
                format!("at most {MAX_EXTENSIONS} extension attributes are allowed"),
            ));
        }
        // Deduplicate: two rules may fail on one attribute; the first says enough.
        errors.dedup_by(|a, b| a.pointer == b.pointer);
        errors
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let attributes = BTreeMap::<String, Box<RawValue>>::deserialize(deserializer)?;
        Self::from_attributes(attributes).map_err(|errors| D::Error::custom(describe(&errors)))
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} from {}", self.event_type, self.id, self.source)
    }
}

fn text_ok(text: &str, max: usize) -> bool {
    (1..=max).contains(&text.chars().count()) && !text.chars().any(char::is_control)
}

fn uri_ok(text: &str) -> bool {
    text_ok(text, MAX_URI_LEN) && !text.chars().any(char::is_whitespace)
}

fn base64_ok(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    text.len().is_multiple_of(4)
        && text.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn traceparent_ok(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if hex(version, 2) && *version != "ff" && hex(trace, 32) && nonzero(trace)
            && hex(parent, 16) && nonzero(parent) && hex(flags, 2))
}

fn escape_pointer(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "specversion": "1.0", "id": "A234-1234-1234", "source": "/orders",
        "type": "com.example.order.created", "time": "2026-11-25T10:00:00Z",
        "datacontenttype": "application/json", "partitionkey": "order-7",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tenant": "acme", "data": {"amount": 12.50, "big": 12345678901234567890}
    }"#;

    #[test]
    fn parses_a_full_event_and_keeps_data_bytes() {
        let event = Event::parse(GOOD).unwrap();
        assert_eq!(event.event_type, "com.example.order.created");
        assert_eq!(event.partitionkey.as_deref(), Some("order-7"));
        assert_eq!(event.extensions["tenant"], "acme");
        assert_eq!(
            event.data.as_ref().unwrap().get(),
            r#"{"amount": 12.50, "big": 12345678901234567890}"#
        );
        let json = serde_json::to_string(&event).unwrap();
        assert!(
            json.contains(r#""data":{"amount": 12.50, "big": 12345678901234567890}"#),
            "{json}"
        );
        assert!(json.contains(r#""time":"2026-11-25T10:00:00Z""#), "{json}");
        assert!(json.contains(r#""tenant":"acme""#), "{json}");
        let again = Event::parse(&json).unwrap();
        assert_eq!(serde_json::to_string(&again).unwrap(), json);
    }

    #[test]
    fn reports_every_problem_at_once() {
        let errors = Event::parse(
            r#"{"specversion":"0.3","type":"has space","source":5,"time":"yesterday",
                "traceparent":"00-abc","data":1,"data_base64":"AAAA","Bad-Name":1,"obj":{"a":1}}"#,
        )
        .unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/source",
                "/id",
                "/specversion",
                "/time",
                "/Bad-Name",
                "/obj",
                "/type",
                "/data_base64",
                "/traceparent"
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn rejects_non_objects_and_oversized_events() {
        assert_eq!(Event::parse("[1]").unwrap_err()[0].pointer, "");
        assert!(Event::parse("{").is_err());
        let huge = format!(r#"{{"data":"{}"}}"#, "x".repeat(MAX_EVENT_BYTES));
        let errors = Event::parse(&huge).unwrap_err();
        assert!(errors[0].detail.contains("limit"), "{errors:?}");
    }

    #[test]
    fn new_events_are_valid_and_carry_the_correlation_id() {
        let event = Event::new(
            "identity.user.registered",
            "/identity",
            &serde_json::json!({"user": 1}),
        )
        .unwrap()
        .with_partition_key("usr_1");
        assert!(event.id.parse::<EventId>().is_ok());
        assert!(event.check().is_empty());
        assert!(event.correlationid.is_none());
        let bad = Event::new("bad type", "/identity", &1).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "the event is not valid: /type must be 1 to 256 ASCII letters, digits or `._-:/`"
        );
    }

    #[test]
    fn deserialize_reports_problems() {
        let err = serde_json::from_str::<Event>(r#"{"id":"1"}"#).unwrap_err();
        assert!(err.to_string().contains("/source is required"), "{err}");
    }

    #[test]
    fn traceparent_rules() {
        assert!(traceparent_ok(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!traceparent_ok(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!traceparent_ok(
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!traceparent_ok(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
    }
}
