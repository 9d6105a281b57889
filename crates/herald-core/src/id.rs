//! Typed, prefixed ids.
//!
//! Every id a user sees is a UUIDv7 written as `<prefix>_<26 base32 chars>`, e.g.
//! `evt_068k2m3v5c7q0w1x2y3z4a5b6c`. The prefix says what kind of thing it names, so an
//! `evt_…` pasted where a `sub_…` belongs is rejected with a clear message. UUIDv7 starts with
//! the creation time in milliseconds, and the encoding keeps byte order, so ids sort by age.
//!
//! All kinds share one generic type, [`Id<K>`]; [`id_kinds!`](crate::id_kinds) declares a kind
//! and its alias in one line.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::base32;

/// What kind of thing an [`Id`] names: it only supplies the prefix.
pub trait IdKind: 'static {
    /// The text before the underscore, e.g. `evt`.
    const PREFIX: &'static str;
    /// The name API documentation gives ids of this kind (`EventId`).
    const NAME: &'static str;
}

/// An id of kind `K`. See the [module docs](self).
pub struct Id<K: IdKind> {
    uuid: Uuid,
    kind: PhantomData<fn() -> K>,
}

/// Why a text is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a valid id: expected `{prefix}_` followed by 26 base32 characters")]
pub struct IdError {
    text: String,
    prefix: &'static str,
}

impl<K: IdKind> Id<K> {
    /// A new id, ordered after every id made before it in this process.
    pub fn new() -> Self {
        Self::from_uuid(Uuid::now_v7())
    }

    /// Wraps an existing UUID (as stored in a database column).
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self {
            uuid,
            kind: PhantomData,
        }
    }

    /// The UUID inside, for storage.
    pub const fn as_uuid(&self) -> Uuid {
        self.uuid
    }
}

impl<K: IdKind> Default for Id<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: IdKind> Clone for Id<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: IdKind> Copy for Id<K> {}
impl<K: IdKind> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.uuid == other.uuid
    }
}
impl<K: IdKind> Eq for Id<K> {}
impl<K: IdKind> PartialOrd for Id<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: IdKind> Ord for Id<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.uuid.cmp(&other.uuid)
    }
}
impl<K: IdKind> Hash for Id<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.uuid.hash(state);
    }
}

impl<K: IdKind> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", K::PREFIX, base32::encode(self.uuid.as_bytes()))
    }
}

impl<K: IdKind> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<K: IdKind> FromStr for Id<K> {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.strip_prefix(K::PREFIX)
            .and_then(|rest| rest.strip_prefix('_'))
            .and_then(base32::decode::<16>)
            .map(|bytes| Self::from_uuid(Uuid::from_bytes(bytes)))
            .ok_or_else(|| IdError {
                text: text.chars().take(64).collect(),
                prefix: K::PREFIX,
            })
    }
}

impl<K: IdKind> Serialize for Id<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de, K: IdKind> Deserialize<'de> for Id<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl<K: IdKind> utoipa::PartialSchema for Id<K> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(format!("^{}_[0-9a-hjkmnp-tv-z]{{26}}$", K::PREFIX)))
            .examples([format!("{}_068k2m3v5c7q0w1x2y3z4a5b6c", K::PREFIX)])
            .into()
    }
}

impl<K: IdKind> utoipa::ToSchema for Id<K> {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed(K::NAME)
    }
}

/// Declares id kinds: `id_kinds! { /// docs
/// EventId = "evt" }` makes a marker type and `pub type EventId = Id<…>`.
#[macro_export]
macro_rules! id_kinds {
    ($($(#[$meta:meta])* $alias:ident = $prefix:literal),+ $(,)?) => {
        $(
            $(#[$meta])*
            pub type $alias = $crate::id::Id<$crate::id::__kind::$alias>;
        )+
        #[doc(hidden)]
        pub mod __kind {
            $(
                #[derive(Debug)]
                pub enum $alias {}
                impl $crate::id::IdKind for $alias {
                    const PREFIX: &'static str = $prefix;
                    const NAME: &'static str = stringify!($alias);
                }
            )+
        }
    };
}

id_kinds! {
    /// An event, end to end: broker message id, inbox key, `webhook-id`.
    EventId = "evt",
    /// A user, as identity registers it and the users service projects it.
    UserId = "usr",
    /// A webhook subscription.
    SubscriptionId = "sub",
    /// One delivery of one event to one subscription.
    DispatchJobId = "job",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_with_prefix_and_parses_back() {
        let id = EventId::new();
        let text = id.to_string();
        assert!(text.starts_with("evt_"), "{text}");
        assert_eq!(text.len(), 4 + 26);
        assert_eq!(text.parse::<EventId>().unwrap(), id);
    }

    #[test]
    fn later_ids_sort_later_as_text() {
        let ids: Vec<String> = (0..200).map(|_| EventId::new().to_string()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn rejects_wrong_prefix_and_garbage() {
        let id = EventId::new().to_string();
        let other = id.replacen("evt_", "sub_", 1);
        let err = other.parse::<EventId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "`{other}` is not a valid id: expected `evt_` followed by 26 base32 characters"
            )
        );
        assert!("evt_".parse::<EventId>().is_err());
        assert!("evt".parse::<EventId>().is_err());
        assert!("".parse::<EventId>().is_err());
        assert!(format!("{id}x").parse::<EventId>().is_err());
    }

    #[test]
    fn serde_uses_the_text_form() {
        let id = EventId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<EventId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<EventId>("\"evt_nope\"").is_err());
    }
}
