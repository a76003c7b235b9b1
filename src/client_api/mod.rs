//! The client-server API (`/_matrix/client/…`): ruma's typed requests in,
//! ruma's typed responses out. Each file holds one area of the spec.

mod account;
mod account_data;
mod admin;
mod backup;
mod devices;
pub(crate) mod directory;
mod e2e_sync;
mod ephemeral;
mod events;
pub mod extract;
pub mod format;
mod guest;
mod initial_sync;
mod keys;
pub mod media;
mod membership;
mod messages;
mod openid;
mod presence;
mod profile;
mod push;
mod rooms;
pub mod sliding_sync;
mod state;
pub(crate) mod sync;
pub(crate) mod sync_token;
mod thirdparty;
mod threepid;
mod to_device;
mod upgrade;
mod user_directory;

pub use keys::claim_local;
pub use to_device::receive_direct_to_device;

use std::sync::Arc;

use axum::{
    Router,
    response::IntoResponse,
    routing::{any, get, post, put},
};
use serde_json::json;

use crate::{error::MatrixError, services::Services};
use extract::RumaRouter;

/// The content repository: `/_matrix/client/v1/media/…` and the legacy
/// `/_matrix/media/{v3,r0}/…`.
fn media_router() -> Router<Arc<Services>> {
    let mut router = Router::new()
        .route("/_matrix/client/v1/media/config", get(media::config))
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}",
            get(media::download),
        )
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}",
            get(media::download),
        )
        .route(
            "/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}",
            get(media::thumbnail),
        );
    for version in ["v3", "r0"] {
        let base = format!("/_matrix/media/{version}");
        router = router
            .route(&format!("{base}/upload"), post(media::upload))
            .route(&format!("{base}/config"), get(media::legacy_config))
            .route(
                &format!("{base}/download/{{server_name}}/{{media_id}}"),
                get(media::legacy_download),
            )
            .route(
                &format!("{base}/download/{{server_name}}/{{media_id}}/{{file_name}}"),
                get(media::legacy_download),
            )
            .route(
                &format!("{base}/thumbnail/{{server_name}}/{{media_id}}"),
                get(media::legacy_thumbnail),
            );
    }
    router
}

pub fn router() -> Router<Arc<Services>> {
    Router::new()
        .route("/_matrix/client/versions", get(versions))
        .route("/.well-known/matrix/client", get(well_known))
        .merge(media_router())
        .route(
            "/_synapse/admin/v1/register",
            get(admin::register_nonce).post(admin::register),
        )
        .ruma(admin::whois)
        .ruma(account::get_login_types)
        .ruma(account::login)
        .ruma(account::logout)
        .ruma(account::logout_all)
        .ruma(account::whoami)
        .merge(
            Router::new()
                .ruma(account::register)
                .layer(axum::middleware::map_response(extract::without_null_fields)),
        )
        .ruma(account::username_available)
        .ruma(account::change_password)
        .ruma(account::create_filter)
        .ruma(account::get_filter)
        .ruma(profile::get_profile)
        .ruma(profile::get_display_name)
        .ruma(profile::set_display_name)
        .ruma(profile::get_avatar_url)
        .ruma(profile::set_avatar_url)
        .ruma(rooms::create_room)
        .ruma(rooms::joined_rooms)
        .ruma(directory::get_alias)
        .ruma(directory::create_alias)
        .ruma(directory::delete_alias)
        .ruma(directory::room_aliases)
        .ruma(directory::get_visibility)
        .ruma(directory::set_visibility)
        .ruma(directory::public_rooms)
        .ruma(directory::public_rooms_filtered)
        .ruma(directory::set_appservice_visibility)
        .ruma(thirdparty::ping)
        .route(
            "/_matrix/client/r0/directory/list/appservice/{network_id}/{room_id}",
            axum::routing::delete(directory::delete_appservice_visibility),
        )
        .route(
            "/_matrix/client/v3/directory/list/appservice/{network_id}/{room_id}",
            axum::routing::delete(directory::delete_appservice_visibility),
        )
        .ruma(membership::join_by_id)
        .ruma(membership::join_by_id_or_alias)
        .ruma(membership::leave)
        .ruma(membership::forget)
        .ruma(membership::invite)
        .ruma(membership::kick)
        .ruma(membership::ban)
        .ruma(membership::unban)
        .ruma(membership::members)
        .ruma(membership::joined_members)
        .ruma(state::get_state_event)
        .ruma(state::send_state_event)
        .ruma(state::get_state)
        .ruma(messages::send_message)
        .ruma(messages::redact)
        .ruma(messages::get_event)
        .ruma(messages::messages)
        .ruma(messages::context)
        .ruma(messages::timestamp_to_event)
        // Not `.ruma`: see `ephemeral::typing`.
        .route(
            "/_matrix/client/r0/rooms/{room_id}/typing/{user_id}",
            put(ephemeral::typing),
        )
        .route(
            "/_matrix/client/v3/rooms/{room_id}/typing/{user_id}",
            put(ephemeral::typing),
        )
        .ruma(ephemeral::create_receipt)
        .ruma(ephemeral::read_markers)
        .ruma(account_data::set_global)
        .ruma(account_data::get_global)
        .ruma(account_data::set_room)
        .ruma(account_data::get_room)
        .ruma(account_data::get_tags)
        .ruma(account_data::create_tag)
        .ruma(account_data::delete_tag)
        .ruma(user_directory::search)
        .ruma(openid::request_token)
        // The federation API's, also here (see `federation_api::openid`).
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(crate::federation_api::openid::userinfo),
        )
        .route(
            "/_matrix/federation/v1/3pid/onbind",
            post(crate::federation_api::third_party::on_bind),
        )
        .ruma(presence::set_status)
        .ruma(presence::get_status)
        .route("/_matrix/client/r0/capabilities", get(account::capabilities))
        .route("/_matrix/client/v3/capabilities", get(account::capabilities))
        // The older forms of send and redact, without a transaction ID.
        .route(
            "/_matrix/client/r0/rooms/{room_id}/send/{event_type}",
            post(messages::send_without_txn),
        )
        .route(
            "/_matrix/client/v3/rooms/{room_id}/send/{event_type}",
            post(messages::send_without_txn),
        )
        .route(
            "/_matrix/client/r0/rooms/{room_id}/redact/{event_id}",
            post(messages::redact_without_txn),
        )
        .route(
            "/_matrix/client/v3/rooms/{room_id}/redact/{event_id}",
            post(messages::redact_without_txn),
        )
        // Not `.ruma`: ruma's request needs the `room_id` that the
        // original, all-rooms form of the endpoint goes without.
        .route("/_matrix/client/r0/thirdparty/protocols", get(thirdparty::protocols))
        .route("/_matrix/client/v3/thirdparty/protocols", get(thirdparty::protocols))
        .route(
            "/_matrix/client/r0/thirdparty/protocol/{protocol}",
            get(thirdparty::protocol),
        )
        .route(
            "/_matrix/client/v3/thirdparty/protocol/{protocol}",
            get(thirdparty::protocol),
        )
        .route("/_matrix/client/r0/thirdparty/user/{protocol}", get(thirdparty::users))
        .route("/_matrix/client/v3/thirdparty/user/{protocol}", get(thirdparty::users))
        .route(
            "/_matrix/client/r0/thirdparty/location/{protocol}",
            get(thirdparty::locations),
        )
        .route(
            "/_matrix/client/v3/thirdparty/location/{protocol}",
            get(thirdparty::locations),
        )
        .route("/_matrix/client/r0/events", get(events::events))
        .route("/_matrix/client/v3/events", get(events::events))
        // Not `.ruma`: see `upgrade`.
        .route(
            "/_matrix/client/r0/rooms/{room_id}/upgrade",
            post(upgrade::upgrade_room),
        )
        .route(
            "/_matrix/client/v3/rooms/{room_id}/upgrade",
            post(upgrade::upgrade_room),
        )
        // Not `.ruma`: see `initial_sync`.
        .route("/_matrix/client/r0/initialSync", get(initial_sync::initial_sync))
        .route("/_matrix/client/v3/initialSync", get(initial_sync::initial_sync))
        .route(
            "/_matrix/client/r0/rooms/{room_id}/initialSync",
            get(initial_sync::room_initial_sync),
        )
        .route(
            "/_matrix/client/v3/rooms/{room_id}/initialSync",
            get(initial_sync::room_initial_sync),
        )
        .ruma(devices::get_devices)
        .ruma(devices::get_device)
        .ruma(devices::update_device)
        .ruma(devices::delete_device)
        .ruma(devices::delete_devices)
        .ruma(devices::deactivate)
        .route("/_matrix/client/r0/account/3pid", get(threepid::get_3pids))
        .route("/_matrix/client/v3/account/3pid", get(threepid::get_3pids))
        .ruma_with_paths(&["/_matrix/client/unstable/account/3pid/bind"], threepid::bind)
        .ruma_with_paths(&["/_matrix/client/unstable/account/3pid/unbind"], threepid::unbind)
        .ruma(threepid::delete)
        .ruma(keys::upload_keys)
        .merge(
            Router::new()
                .ruma(keys::get_keys)
                .ruma(keys::claim_keys)
                .layer(axum::middleware::map_response(keys::with_failures)),
        )
        .ruma(keys::key_changes)
        .ruma(keys::upload_signing_keys)
        .ruma(keys::upload_signatures)
        .ruma(to_device::send_to_device)
        .ruma(backup::create_version)
        .ruma(backup::latest_version)
        .ruma(backup::get_version)
        .ruma(backup::update_version)
        .ruma(backup::delete_version)
        .ruma(backup::put_session)
        .ruma(backup::put_room)
        .ruma(backup::put_all)
        .ruma(backup::get_session)
        .ruma(backup::get_room)
        .ruma(backup::get_all)
        .ruma(backup::delete_session)
        .ruma(backup::delete_room)
        .ruma(backup::delete_all)
        .ruma(push::get_all)
        .ruma(push::get_global)
        .ruma(push::get_rule)
        .ruma(push::set_rule)
        .ruma(push::delete_rule)
        .ruma(push::get_actions)
        .ruma(push::set_actions)
        .ruma(push::get_enabled)
        .ruma(push::set_enabled)
        .route("/_matrix/client/r0/pushrules/{*rest}", any(push::other_path))
        .route("/_matrix/client/v3/pushrules/{*rest}", any(push::other_path))
        // `PUT /pushrules/` (no scope): a bad request, not a wrong method.
        .route("/_matrix/client/r0/pushrules/", put(bad_request).delete(bad_request))
        .route("/_matrix/client/v3/pushrules/", put(bad_request).delete(bad_request))
        .ruma(push::get_pushers)
        .ruma(push::set_pusher)
        .merge(
            Router::new()
                .ruma(push::notifications)
                .layer(axum::middleware::map_response(push::with_profile_tags)),
        )
        .ruma(sliding_sync::sync)
        .merge(
            Router::new()
                .ruma(sync::sync)
                .layer(axum::middleware::map_response(sync::complete_response)),
        )
}

async fn versions() -> impl IntoResponse {
    axum::Json(json!({
        "versions": [
            "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6",
            "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12"
        ],
        // Simplified sliding sync (MSC4186), which Element X needs.
        "unstable_features": { "org.matrix.simplified_msc3575": true }
    }))
}

/// `/.well-known/matrix/client`: where clients that know only the server
/// name find the client API (`public_baseurl`); 404 when not configured.
async fn well_known(axum::extract::State(svc): axum::extract::State<Arc<Services>>) -> axum::response::Response {
    match &svc.config.public_baseurl {
        Some(url) => axum::Json(json!({ "m.homeserver": { "base_url": url } })).into_response(),
        None => MatrixError::not_found("No client discovery is configured (public_baseurl)").into_response(),
    }
}

/// Answer for paths no endpoint matches.
pub async fn unrecognized() -> MatrixError {
    MatrixError::unrecognized("Unrecognized request")
}

/// A known path asked with a method it has no meaning for, where the
/// spec's clients expect 400 (`PUT /pushrules/`).
async fn bad_request() -> MatrixError {
    MatrixError::unrecognized("Unrecognised request").with_status(http::StatusCode::BAD_REQUEST)
}

/// Answer for a known path asked with the wrong method.
pub async fn method_not_allowed() -> MatrixError {
    MatrixError::unrecognized("Method not allowed").with_status(http::StatusCode::METHOD_NOT_ALLOWED)
}
