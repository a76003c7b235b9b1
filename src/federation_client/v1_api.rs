//! The v1 forms of `send_join` and `invite`, for servers without the v2
//! ones (ruma has no types for them): the request body is the event, and
//! the answer comes wrapped in a `[200, {...}]` array.

use http::{Method, StatusCode};
use ruma::{EventId, RoomId, ServerName, api::federation::membership::create_join_event};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::{FederationClient, FederationError};

impl FederationError {
    /// Whether the server said it has no such endpoint (404, or 400
    /// `M_UNRECOGNIZED`): the cue to try the v1 form.
    pub fn lacks_endpoint(&self) -> bool {
        match self {
            FederationError::Status { status, body, .. } => {
                *status == StatusCode::NOT_FOUND
                    || (*status == StatusCode::BAD_REQUEST
                        && serde_json::from_str::<serde_json::Value>(body)
                            .is_ok_and(|b| b["errcode"] == "M_UNRECOGNIZED"))
            }
            _ => false,
        }
    }
}

/// The `[200, answer]` array of a v1 endpoint.
#[derive(serde::Deserialize)]
struct Wrapped<T>(#[allow(dead_code)] u16, T);

#[derive(serde::Deserialize)]
pub struct InviteAnswer {
    pub event: Box<RawValue>,
}

impl FederationClient {
    /// `PUT /v1/send_join/{room}/{event}`.
    pub async fn send_join_v1(
        &self,
        destination: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        event: &RawValue,
    ) -> Result<create_join_event::v2::RoomState, FederationError> {
        self.put_v1(destination, "send_join", room_id, event_id, event).await
    }

    /// `PUT /v1/invite/{room}/{event}`: the invite, countersigned.
    pub async fn invite_v1(
        &self,
        destination: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        event: &RawValue,
    ) -> Result<InviteAnswer, FederationError> {
        self.put_v1(destination, "invite", room_id, event_id, event).await
    }

    async fn put_v1<T: DeserializeOwned>(
        &self,
        destination: &ServerName,
        endpoint: &str,
        room_id: &RoomId,
        event_id: &EventId,
        event: &RawValue,
    ) -> Result<T, FederationError> {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let path = format!(
            "/_matrix/federation/v1/{endpoint}/{}/{}",
            enc(room_id.as_str()),
            enc(event_id.as_str())
        );
        let body: serde_json::Value =
            serde_json::from_str(event.get()).map_err(|e| FederationError::Request(e.to_string()))?;
        let (status, answer) = self.raw(destination, Method::PUT, &path, Some(&body)).await?;
        if !status.is_success() {
            return Err(FederationError::Status {
                server: destination.to_owned(),
                status,
                body: String::from_utf8_lossy(&answer).into_owned(),
            });
        }
        let Wrapped(_, answer) =
            serde_json::from_slice::<Wrapped<T>>(&answer).map_err(|e| FederationError::InvalidResponse {
                server: destination.to_owned(),
                reason: format!("v1 {endpoint} answer: {e}"),
            })?;
        Ok(answer)
    }
}
