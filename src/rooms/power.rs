//! Power levels of a room state, for the checks the auth rules leave to
//! the server (who may redact whose events) and for clients' errors.

use ruma::{
    OwnedUserId,
    events::{
        StateEventType,
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent},
    },
    room_version_rules::AuthorizationRules,
};

use super::RoomError;
use crate::{
    services::Services,
    state::{StateMap, key},
};

/// The power levels in force in `state`, room creators included.
pub async fn power_levels(
    svc: &Services,
    state: &StateMap,
    rules: &AuthorizationRules,
) -> Result<RoomPowerLevels, RoomError> {
    let events = svc
        .state
        .events_for(
            state,
            &[
                key(StateEventType::RoomCreate, ""),
                key(StateEventType::RoomPowerLevels, ""),
            ],
        )
        .await?;
    let create = events
        .iter()
        .find(|e| e.pdu.kind == ruma::events::TimelineEventType::RoomCreate)
        .ok_or(RoomError::UnknownRoom)?;
    let creators: Vec<OwnedUserId> = ruma::state_res::events::RoomCreateEvent::new(&*create.pdu)
        .creators(rules)
        .map_err(RoomError::Invalid)?
        .into_iter()
        .collect();
    let content = events
        .iter()
        .find(|e| e.pdu.kind == ruma::events::TimelineEventType::RoomPowerLevels)
        .and_then(|e| serde_json::from_str::<RoomPowerLevelsEventContent>(e.pdu.content.get()).ok());
    Ok(RoomPowerLevels::new(content.into(), rules, creators))
}
