//! What a guest account may call (client-server "Guest access"): the
//! spec's list, plus the few endpoints every client needs to run at all
//! (capabilities, logout, joined rooms, the room directory). Anything
//! else answers 403 `M_GUEST_ACCESS_FORBIDDEN`.

use http::Method;

use crate::error::{ErrCode, MatrixError};

/// Endpoints open to guests: method, and the path after
/// `/_matrix/client/<version>/`, `*` standing for one path parameter.
const ALLOWED: &[(Method, &str)] = &[
    // reading rooms
    (Method::GET, "rooms/*/state"),
    (Method::GET, "rooms/*/state/*"),
    (Method::GET, "rooms/*/state/*/*"),
    (Method::GET, "rooms/*/context/*"),
    (Method::GET, "rooms/*/event/*"),
    (Method::GET, "rooms/*/messages"),
    (Method::GET, "rooms/*/members"),
    (Method::GET, "rooms/*/joined_members"),
    (Method::GET, "rooms/*/initialSync"),
    (Method::GET, "rooms/*/relations/*"),
    (Method::GET, "rooms/*/relations/*/*"),
    (Method::GET, "rooms/*/relations/*/*/*"),
    (Method::GET, "sync"),
    (Method::GET, "events"),
    (Method::GET, "joined_rooms"),
    (Method::GET, "publicRooms"),
    (Method::POST, "publicRooms"),
    // taking part
    (Method::POST, "rooms/*/join"),
    (Method::POST, "join/*"),
    (Method::POST, "rooms/*/leave"),
    (Method::PUT, "rooms/*/send/*/*"),
    (Method::POST, "rooms/*/send/*"),
    (Method::PUT, "rooms/*/state/*"),
    (Method::PUT, "rooms/*/state/*/*"),
    (Method::PUT, "sendToDevice/*/*"),
    // the account
    (Method::GET, "profile/*"),
    (Method::GET, "profile/*/displayname"),
    (Method::PUT, "profile/*/displayname"),
    (Method::DELETE, "profile/*/displayname"),
    (Method::GET, "profile/*/avatar_url"),
    (Method::GET, "devices"),
    (Method::GET, "devices/*"),
    (Method::PUT, "devices/*"),
    (Method::GET, "account/whoami"),
    (Method::POST, "logout"),
    (Method::GET, "capabilities"),
    // end-to-end encryption
    (Method::POST, "keys/upload"),
    (Method::POST, "keys/query"),
    (Method::POST, "keys/claim"),
    (Method::GET, "keys/changes"),
];

/// Whether a guest may make this request; `route` is the matched route
/// (`/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`).
pub fn allowed(method: &Method, route: &str) -> bool {
    let Some(rest) = route.strip_prefix("/_matrix/client/") else {
        return false;
    };
    // the version: r0, v1, v3, unstable
    let Some((_, rest)) = rest.split_once('/') else {
        return false;
    };
    let rest = rest.trim_end_matches('/');
    ALLOWED.iter().any(|(m, pattern)| {
        m == method && {
            let (mut got, mut want) = (rest.split('/'), pattern.split('/'));
            loop {
                match (got.next(), want.next()) {
                    (None, None) => break true,
                    (Some(g), Some("*")) if g.starts_with('{') && g.ends_with('}') => {}
                    (Some(g), Some(w)) if g == w => {}
                    _ => break false,
                }
            }
        }
    })
}

/// The refusal of a request a guest may not make.
pub fn forbidden() -> MatrixError {
    MatrixError::new(ErrCode::GuestAccessForbidden, "Guest access not allowed")
}

/// Checks a guest's request against [`ALLOWED`] (full accounts pass).
pub fn check(parts: &http::request::Parts, is_guest: bool) -> Result<(), MatrixError> {
    if !is_guest {
        return Ok(());
    }
    let route = parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str())
        .unwrap_or_else(|| parts.uri.path());
    if allowed(&parts.method, route) {
        Ok(())
    } else {
        Err(forbidden())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_by_shape() {
        assert!(allowed(
            &Method::PUT,
            "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"
        ));
        assert!(allowed(&Method::GET, "/_matrix/client/r0/events"));
        assert!(allowed(
            &Method::GET,
            "/_matrix/client/v3/rooms/{roomId}/state/{eventType}/"
        ));
        assert!(!allowed(&Method::POST, "/_matrix/client/v3/createRoom"));
        assert!(!allowed(&Method::PUT, "/_matrix/client/v3/profile/{userId}/avatar_url"));
        assert!(!allowed(&Method::POST, "/_matrix/client/v3/rooms/{roomId}/invite"));
        // a literal where the pattern has a parameter does not match
        assert!(!allowed(&Method::GET, "/_matrix/client/v3/rooms/x/messages"));
        assert!(!allowed(&Method::GET, "/_matrix/federation/v1/version"));
    }
}
