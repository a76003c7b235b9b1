//! The federation API (server-server) listener: keys and version without
//! authentication; everything else only for requests whose `X-Matrix`
//! signature checks out ([`extract::Fed`]).

mod devices;
pub mod extract;
mod history;
mod keys;
mod media;
mod membership;
pub mod openid;
mod query;
pub mod third_party;
pub(crate) mod transactions;

use std::sync::Arc;

use axum::{
    Json, Router,
    routing::{get, post, put},
};
use serde_json::{Value, json};

use crate::{client_api::extract::RumaRouter, services::Services};
use extract::FedRouter;

pub use history::MAX_HISTORY_PAGE;

pub fn router() -> Router<Arc<Services>> {
    Router::new()
        .route("/_matrix/key/v2/server", get(keys::server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(keys::server_keys))
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/federation/v1/openid/userinfo", get(openid::userinfo))
        .route("/_matrix/key/v2/query/{server_name}/{key_id}", get(keys::query_one_key))
        .ruma(keys::query_one)
        .ruma(keys::query_batch)
        .federation(history::event)
        .federation(history::state)
        .federation(history::state_ids)
        .federation(history::event_auth)
        .federation(history::backfill)
        .federation(history::timestamp_to_event)
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            post(history::missing_events),
        )
        .federation(membership::make_join)
        .federation(membership::send_join)
        .federation(membership::make_leave)
        .federation(membership::send_leave)
        .federation(membership::invite)
        .federation(third_party::exchange_third_party_invite)
        .route("/_matrix/federation/v1/3pid/onbind", post(third_party::on_bind))
        // The v1 forms of send_join/send_leave/invite, which ruma no longer
        // has (or whose body it does not keep whole):
        // the v2 requests, answered in v1's `[200, {...}]` array.
        .route(
            "/_matrix/federation/v1/send_join/{room_id}/{event_id}",
            put(membership::send_join_v1),
        )
        .route(
            "/_matrix/federation/v1/send_leave/{room_id}/{event_id}",
            put(membership::send_leave_v1),
        )
        .route(
            "/_matrix/federation/v1/invite/{room_id}/{event_id}",
            put(membership::invite_v1),
        )
        .federation(transactions::send)
        .federation(query::directory)
        .federation(query::profile)
        .federation(query::public_rooms)
        .federation(query::public_rooms_filtered)
        .federation(devices::user_devices)
        .federation(devices::query_keys)
        .federation(devices::claim_keys)
        .federation(media::download)
}

async fn version() -> Json<Value> {
    Json(json!({ "server": { "name": "weft", "version": env!("CARGO_PKG_VERSION") } }))
}
