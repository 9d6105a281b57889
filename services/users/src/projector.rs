//! [`Projector`]: the inbox handler that keeps `users_profiles` in step with identity.

use herald_broker::BoxFuture;
use herald_core::Event;
use herald_inbox::{Handler, HandlerError, Tx};
use time::OffsetDateTime;

use crate::profile::{self, UserSnapshot};

/// The consumer group (and inbox consumer name) of the users service.
pub const CONSUMER: &str = "users";

/// A user signed up.
pub const REGISTERED: &str = "identity.user.registered";

/// A user's public details changed.
pub const UPDATED: &str = "identity.user.updated";

/// Applies `identity.user.registered` and `identity.user.updated` to `users_profiles`; other
/// event types are left alone (acked without an inbox record).
///
/// An event whose data is not a valid [`UserSnapshot`] can never succeed: it fails as
/// permanent and goes to the dead letters with the reason. An event older than the stored
/// profile (a lower or equal `version`) is recorded and changes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Projector;

impl Handler for Projector {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        mut tx: Tx<'a>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let snapshot = UserSnapshot::from_event(event).map_err(HandlerError::permanent)?;
            let at = event.time.unwrap_or_else(OffsetDateTime::now_utc);
            let changed = profile::apply(&mut tx, &snapshot, at)
                .await
                .map_err(|err| {
                    HandlerError::transient(format!("cannot store the profile: {err}"))
                })?;
            if !changed {
                tracing::debug!(
                    user_id = %snapshot.user_id,
                    version = snapshot.version,
                    "the stored profile is as new or newer; nothing changed"
                );
            }
            Ok(())
        })
    }

    fn wants(&self, event: &Event) -> bool {
        event.event_type == REGISTERED || event.event_type == UPDATED
    }
}
