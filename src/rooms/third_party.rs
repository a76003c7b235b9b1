//! Third-party invites: inviting someone by an email address through an
//! identity server. A bound address is an ordinary invite of the user it
//! is bound to; an unbound one is stored with the identity server and
//! becomes an `m.room.third_party_invite` state event (its state key the
//! identity server's token). When the address is later bound, the identity
//! server tells the invitee's server (`/3pid/onbind`), which turns the
//! third-party invite into an `m.room.member` invite signed by the identity
//! server (`third_party_invite.signed`) — here if this server is in the
//! room, else through the inviter's server
//! (`/exchange_third_party_invite`). A `/join` with `third_party_signed`
//! does the same exchange first.

use base64::Engine as _;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, RoomId, UserId, api::federation::thirdparty::exchange_invite,
    events::StateEventType, serde::Raw,
};
use serde_json::{Value, json};

use super::{RoomError, invites, membership, send::send_event};
use crate::{
    error::MatrixError,
    events::EventTemplate,
    identity::{InviteDetails, PublicKey},
    services::Services,
};

/// `POST /rooms/{roomId}/invite` (and `/createRoom`'s `invite_3pid`) with
/// a third-party identifier.
pub async fn invite(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    id_server: &str,
    token: &str,
    medium: &str,
    address: &str,
) -> Result<(), MatrixError> {
    if let Some(user) = svc.identity.lookup(id_server, token, medium, address).await? {
        membership::invite(svc, room_id, sender, &user, None, false).await?;
        return Ok(());
    }
    let (_, state) = svc.state.current(room_id).await?.ok_or(RoomError::UnknownRoom)?;
    // The inviter must be able to send the event before the identity
    // server is asked to send an invitation.
    if svc.state.membership(&state, sender).await?.as_deref() != Some("join") {
        return Err(MatrixError::forbidden(format!("{sender} is not in the room")));
    }
    let text = async |kind: StateEventType, key: &str, field: &str| -> Result<Option<String>, RoomError> {
        let event = svc.state.event_for(&state, kind, key).await?;
        Ok(event.and_then(|e| {
            e.pdu
                .content_value()
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
        }))
    };
    let details = InviteDetails {
        room_id: room_id.to_string(),
        sender: sender.to_string(),
        medium: medium.to_owned(),
        address: address.to_owned(),
        room_name: text(StateEventType::RoomName, "", "name").await?,
        room_avatar_url: text(StateEventType::RoomAvatar, "", "url").await?,
        room_join_rules: text(StateEventType::RoomJoinRules, "", "join_rule").await?,
        room_alias: text(StateEventType::RoomCanonicalAlias, "", "alias").await?,
        sender_display_name: text(StateEventType::RoomMember, sender.as_str(), "displayname").await?,
        sender_avatar_url: text(StateEventType::RoomMember, sender.as_str(), "avatar_url").await?,
    };
    let stored = svc.identity.store_invite(id_server, token, &details).await?;
    let default_validity = format!("https://{id_server}/_matrix/identity/v2/pubkey/isvalid");
    let mut public_keys = stored.public_keys.clone();
    if let Some(key) = &stored.public_key
        && !public_keys.iter().any(|k| &k.public_key == key)
    {
        public_keys.insert(
            0,
            PublicKey {
                public_key: key.clone(),
                key_validity_url: Some(default_validity.clone()),
            },
        );
    }
    let first = public_keys
        .first()
        .cloned()
        .ok_or_else(|| MatrixError::unknown("the identity server gave no public key"))?;
    let content = json!({
        "display_name": stored.display_name,
        "key_validity_url": first.key_validity_url.clone().unwrap_or(default_validity),
        "public_key": first.public_key,
        "public_keys": public_keys,
    });
    let template = EventTemplate::state("m.room.third_party_invite", stored.token, content);
    send_event(svc, room_id, sender, template, None).await?;
    Ok(())
}

/// An identity server's `signed` for `mxid` (`/3pid/onbind`, or a `/join`'s
/// `third_party_signed`) becomes an invite: made here when this server is in
/// the room, else by the inviter's server.
pub async fn exchange(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    mxid: &UserId,
    signed: &Value,
) -> Result<(), MatrixError> {
    if crate::acl::server_in_room(svc, room_id, svc.server_name()).await? {
        make_invite(svc, room_id, sender, mxid, signed).await?;
        return Ok(());
    }
    let content = json!({
        "membership": "invite",
        "third_party_invite": { "display_name": "", "signed": signed },
    });
    let content = Raw::new(&content)
        .map_err(|e| MatrixError::bad_json(e.to_string()))?
        .cast_unchecked();
    let request = exchange_invite::v1::Request::new(room_id.to_owned(), sender.to_owned(), mxid.to_owned(), content);
    svc.federation.send(sender.server_name(), request).await.map_err(|e| {
        MatrixError::unknown(format!("the inviter's server could not make the invite: {e}"))
            .with_status(http::StatusCode::BAD_GATEWAY)
    })?;
    Ok(())
}

/// Makes the `m.room.member` invite of `mxid` by `sender` (who may be a
/// user of another server) that `signed` allows, in a room this server is
/// in: the display name from the room's `m.room.third_party_invite`, the
/// signature checked against its public keys and the key not revoked (the
/// key validity URL), then checked by the auth rules, stored and sent (to
/// the invitee's server first, when it is another).
pub async fn make_invite(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    mxid: &UserId,
    signed: &Value,
) -> Result<(), MatrixError> {
    let token = signed
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| MatrixError::bad_json("signed has no token"))?;
    if signed.get("mxid").and_then(Value::as_str) != Some(mxid.as_str()) {
        return Err(MatrixError::forbidden("signed names another user"));
    }
    let (_, state) = svc.state.current(room_id).await?.ok_or(RoomError::UnknownRoom)?;
    let invite_event = svc
        .state
        .event_for(&state, StateEventType::RoomThirdPartyInvite, token)
        .await?
        .ok_or_else(|| MatrixError::forbidden("Could not find invite"))?;
    let invite_content = invite_event.pdu.content_value();
    check_signed(svc, &invite_content, signed).await?;
    let content = json!({
        "membership": "invite",
        "third_party_invite": {
            "display_name": invite_content.get("display_name").cloned().unwrap_or(Value::Null),
            "signed": signed,
        },
    });
    if mxid.server_name() == svc.server_name() {
        let template = EventTemplate::state("m.room.member", mxid.as_str(), content);
        send_event(svc, room_id, sender, template, None).await?;
    } else {
        invites::invite_remote(svc, room_id, sender, mxid, content).await?;
    }
    Ok(())
}

/// The public keys of an `m.room.third_party_invite`'s content.
fn public_keys(content: &Value) -> Vec<PublicKey> {
    let mut keys: Vec<PublicKey> = content
        .get("public_keys")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    if let Some(key) = content.get("public_key").and_then(Value::as_str) {
        keys.push(PublicKey {
            public_key: key.to_owned(),
            key_validity_url: content
                .get("key_validity_url")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }
    keys
}

/// `signed` must carry an ed25519 signature by one of the invite's public
/// keys, and that key must still be valid by its identity server's
/// account (its key validity URL); an identity server that cannot be asked
/// does not vouch for it.
async fn check_signed(svc: &Services, invite_content: &Value, signed: &Value) -> Result<(), MatrixError> {
    let refused = |m: &str| MatrixError::forbidden(format!("third-party invite refused: {m}"));
    let mut object: CanonicalJsonObject = serde_json::from_value(signed.clone())
        .ok()
        .and_then(|v: Value| ruma::canonical_json::try_from_json_map(v.as_object()?.clone()).ok())
        .ok_or_else(|| refused("signed is not canonical JSON"))?;
    let signatures = match object.remove("signatures") {
        Some(CanonicalJsonValue::Object(s)) => s,
        _ => return Err(refused("signed has no signatures")),
    };
    object.remove("unsigned");
    let bytes = serde_json::to_vec(&object).map_err(|e| refused(&e.to_string()))?;
    let b64 = |s: &str| {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(s.trim_end_matches('='))
            .ok()
    };
    for key in public_keys(invite_content) {
        let Some(public) = b64(&key.public_key) else { continue };
        let verified = signatures.values().any(|by_server| {
            let CanonicalJsonValue::Object(by_key) = by_server else {
                return false;
            };
            by_key.iter().any(|(key_id, signature)| {
                let (true, CanonicalJsonValue::String(signature)) = (key_id.starts_with("ed25519:"), signature) else {
                    return false;
                };
                b64(signature).is_some_and(|signature| {
                    ruma::signatures::verify_canonical_json_bytes(
                        &ruma::SigningKeyAlgorithm::Ed25519,
                        &public,
                        &signature,
                        &bytes,
                    )
                    .is_ok()
                })
            })
        });
        if !verified {
            continue;
        }
        if let Some(url) = &key.key_validity_url
            && !svc.identity.key_is_valid(url, &key.public_key).await
        {
            return Err(refused("the identity server does not vouch for its key"));
        }
        return Ok(());
    }
    Err(refused("no signature by the invite's public keys"))
}
