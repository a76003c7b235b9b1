//! Account data (the spec's "Client Config") and room tags ("Room
//! Tagging"), which are the room's `m.tag` account data.

use std::sync::Arc;

use ruma::{
    UserId,
    api::client::{
        config::{get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data},
        tag::{create_tag, delete_tag, get_tags},
    },
    events::tag::{TagInfo, TagName, Tags},
    serde::Raw,
};
use serde_json::{Map, Value};

use super::extract::Ruma;
use crate::{
    account_data::{self, TAG},
    error::MatrixError,
    services::Services,
};

/// The spec's limit on a tag's name.
const MAX_TAG_BYTES: usize = 255;

/// Only the owner of the account data may read or change it.
fn must_be_self(req_user: &UserId, path_user: &UserId, action: &str) -> Result<(), MatrixError> {
    if req_user != path_user {
        return Err(MatrixError::forbidden(format!("Cannot {action} for other users")));
    }
    Ok(())
}

/// The request body as a JSON value.
fn content_of<T>(raw: &Raw<T>) -> Result<Value, MatrixError> {
    serde_json::from_str(raw.json().get()).map_err(|e| MatrixError::bad_json(format!("Bad account data: {e}")))
}

fn raw_content<T>(content: Value) -> Result<Raw<T>, MatrixError> {
    let json = serde_json::value::to_raw_value(&content).map_err(|e| MatrixError::internal("account data", e))?;
    Ok(Raw::from_json(json))
}

pub async fn set_global(
    svc: Arc<Services>,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response, MatrixError> {
    let b = &req.body;
    must_be_self(&req.user().user_id, &b.user_id, "add account data")?;
    let data_type = b.event_type.to_string();
    let content = content_of(&b.data)?;
    account_data::check_client_content(&data_type, &content)?;
    account_data::put(&svc, &b.user_id, None, &data_type, &content).await?;
    Ok(set_global_account_data::v3::Response::new())
}

pub async fn get_global(
    svc: Arc<Services>,
    req: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response, MatrixError> {
    let b = &req.body;
    must_be_self(&req.user().user_id, &b.user_id, "get account data")?;
    let data_type = b.event_type.to_string();
    match account_data::get(&svc, &b.user_id, None, &data_type).await? {
        Some(content) => Ok(get_global_account_data::v3::Response::new(raw_content(content)?)),
        None => Err(MatrixError::not_found(format!("Account data {data_type} not found"))),
    }
}

pub async fn set_room(
    svc: Arc<Services>,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response, MatrixError> {
    let b = &req.body;
    must_be_self(&req.user().user_id, &b.user_id, "add account data")?;
    let data_type = b.event_type.to_string();
    let content = content_of(&b.data)?;
    account_data::check_client_content(&data_type, &content)?;
    account_data::put(&svc, &b.user_id, Some(&b.room_id), &data_type, &content).await?;
    Ok(set_room_account_data::v3::Response::new())
}

pub async fn get_room(
    svc: Arc<Services>,
    req: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response, MatrixError> {
    let b = &req.body;
    must_be_self(&req.user().user_id, &b.user_id, "get account data")?;
    let data_type = b.event_type.to_string();
    match account_data::get(&svc, &b.user_id, Some(&b.room_id), &data_type).await? {
        Some(content) => Ok(get_room_account_data::v3::Response::new(raw_content(content)?)),
        None => Err(MatrixError::not_found(format!(
            "Room account data {data_type} not found in {}",
            b.room_id
        ))),
    }
}

pub async fn get_tags(
    svc: Arc<Services>,
    req: Ruma<get_tags::v3::Request>,
) -> Result<get_tags::v3::Response, MatrixError> {
    let b = &req.body;
    must_be_self(&req.user().user_id, &b.user_id, "get tags")?;
    let content = account_data::get(&svc, &b.user_id, Some(&b.room_id), TAG).await?;
    // Content set through the account data API may hold anything: a tag
    // whose info is not an object (or has a bad `order`) is listed bare.
    let tags: Tags = account_data::tags_of(content)
        .into_iter()
        .map(|(name, info)| {
            let info = serde_json::from_value::<TagInfo>(info).unwrap_or_default();
            (TagName::from(name), info)
        })
        .collect();
    Ok(get_tags::v3::Response::new(tags))
}

/// Replaces the `tags` of `m.tag` content by `change`'s result, keeping
/// any other keys.
fn with_tags(current: Option<Value>, change: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut content = match current {
        Some(Value::Object(content)) => content,
        _ => Map::new(),
    };
    let mut tags = match content.remove("tags") {
        Some(Value::Object(tags)) => tags,
        _ => Map::new(),
    };
    change(&mut tags);
    content.insert("tags".to_owned(), Value::Object(tags));
    Value::Object(content)
}

pub async fn create_tag(
    svc: Arc<Services>,
    req: Ruma<create_tag::v3::Request>,
) -> Result<create_tag::v3::Response, MatrixError> {
    let b = &req.body;
    must_be_self(&req.user().user_id, &b.user_id, "add tags")?;
    if b.tag.is_empty() || b.tag.len() > MAX_TAG_BYTES {
        return Err(MatrixError::invalid_param(format!(
            "A tag name must have 1 to {MAX_TAG_BYTES} bytes"
        )));
    }
    if let Some(order) = b.tag_info.order
        && !order.is_finite()
    {
        return Err(MatrixError::bad_json("A tag's order must be a number"));
    }
    let info = serde_json::to_value(&b.tag_info).map_err(|e| MatrixError::internal("tag info", e))?;
    let tag = b.tag.clone();
    account_data::update(&svc, &b.user_id, Some(&b.room_id), TAG, |current| {
        with_tags(current, |tags| {
            tags.insert(tag, info);
        })
    })
    .await?;
    Ok(create_tag::v3::Response::new())
}

pub async fn delete_tag(
    svc: Arc<Services>,
    req: Ruma<delete_tag::v3::Request>,
) -> Result<delete_tag::v3::Response, MatrixError> {
    let b = &req.body;
    must_be_self(&req.user().user_id, &b.user_id, "remove tags")?;
    let tag = b.tag.clone();
    account_data::update(&svc, &b.user_id, Some(&b.room_id), TAG, |current| {
        with_tags(current, |tags| {
            tags.remove(&tag);
        })
    })
    .await?;
    Ok(delete_tag::v3::Response::new())
}
