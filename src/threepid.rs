//! Third-party identifiers (3PIDs) bound to local users at identity
//! servers through this server. A bind (`POST /account/3pid/bind`) is
//! recorded (user, medium, address, identity server), so that unbinding
//! (`/account/3pid/unbind`, `/account/3pid/delete`, deactivation) knows
//! where to ask when the client names no identity server. Accounts hold
//! no 3PIDs of their own here (no email or phone verification).

use ruma::{UserId, api::client::account::ThirdPartyIdRemovalStatus};

use crate::{error::MatrixError, services::Services, storage::threepid::ThreepidBinding};

/// Binds the 3PID validated in session `sid` at `id_server` to `user_id`,
/// and records the binding.
pub async fn bind(
    svc: &Services,
    user_id: &UserId,
    id_server: &str,
    token: &str,
    sid: &str,
    client_secret: &str,
) -> Result<(), MatrixError> {
    let (medium, address) = svc.identity.bind(id_server, token, sid, client_secret, user_id).await?;
    let binding = ThreepidBinding {
        medium,
        address,
        id_server: id_server.to_owned(),
    };
    svc.storage.add_threepid_binding(user_id, &binding).await?;
    tracing::info!(%user_id, medium = %binding.medium, %id_server, "3PID bound");
    Ok(())
}

/// Unbinds `medium`/`address` from `user_id` at `id_server` when given
/// (even if this server did not bind it: bound out of band), else at every
/// identity server it was bound at through this server; those records
/// go. `Success` only when every identity server asked unbound it (and
/// there was one to ask).
pub async fn unbind(
    svc: &Services,
    user_id: &UserId,
    medium: &str,
    address: &str,
    id_server: Option<&str>,
) -> Result<ThirdPartyIdRemovalStatus, MatrixError> {
    let recorded = svc.storage.threepid_bindings(user_id, Some((medium, address))).await?;
    let servers: Vec<String> = match id_server {
        Some(server) => vec![server.to_owned()],
        None => recorded.iter().map(|b| b.id_server.clone()).collect(),
    };
    if servers.is_empty() {
        return Ok(ThirdPartyIdRemovalStatus::NoSupport);
    }
    let mut all_unbound = true;
    for server in &servers {
        all_unbound &= svc.identity.unbind(&svc.keys, server, user_id, medium, address).await?;
        let binding = ThreepidBinding {
            medium: medium.to_owned(),
            address: address.to_owned(),
            id_server: server.clone(),
        };
        svc.storage.remove_threepid_binding(user_id, &binding).await?;
    }
    Ok(status(all_unbound))
}

/// Unbinds every 3PID bound to `user_id` through this server (at
/// `id_server` when given, else where each was bound): deactivation.
/// `Success` when there was nothing to unbind.
pub async fn unbind_all(
    svc: &Services,
    user_id: &UserId,
    id_server: Option<&str>,
) -> Result<ThirdPartyIdRemovalStatus, MatrixError> {
    let mut threepids: Vec<(String, String)> = svc
        .storage
        .threepid_bindings(user_id, None)
        .await?
        .into_iter()
        .map(|b| (b.medium, b.address))
        .collect();
    threepids.dedup();
    let mut all_unbound = true;
    for (medium, address) in threepids {
        all_unbound &= matches!(
            unbind(svc, user_id, &medium, &address, id_server).await?,
            ThirdPartyIdRemovalStatus::Success
        );
        if id_server.is_some() {
            // The records of other identity servers go too: the account
            // is gone.
            for binding in svc
                .storage
                .threepid_bindings(user_id, Some((&medium, &address)))
                .await?
            {
                svc.storage.remove_threepid_binding(user_id, &binding).await?;
            }
        }
    }
    Ok(status(all_unbound))
}

fn status(all_unbound: bool) -> ThirdPartyIdRemovalStatus {
    if all_unbound {
        ThirdPartyIdRemovalStatus::Success
    } else {
        ThirdPartyIdRemovalStatus::NoSupport
    }
}
