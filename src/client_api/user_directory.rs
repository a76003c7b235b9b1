//! `POST /user_directory/search`. Who finds whom is in
//! [`crate::user_directory`].

use std::sync::Arc;

use ruma::{OwnedMxcUri, api::client::user_directory::search_users};

use super::extract::Ruma;
use crate::{error::MatrixError, services::Services, user_directory};

pub async fn search(
    svc: Arc<Services>,
    req: Ruma<search_users::v3::Request>,
) -> Result<search_users::v3::Response, MatrixError> {
    let limit = usize::try_from(u64::from(req.body.limit)).unwrap_or(usize::MAX);
    let (users, limited) =
        user_directory::search(svc.storage.as_ref(), &req.user().user_id, &req.body.search_term, limit).await?;
    let results = users
        .into_iter()
        .map(|u| {
            let mut user = search_users::v3::User::new(u.user_id);
            user.display_name = u.display_name;
            user.avatar_url = u.avatar_url.map(OwnedMxcUri::from);
            user
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited))
}
