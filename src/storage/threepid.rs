//! What storage keeps of third-party identifiers (3PIDs): the bindings
//! made through this server at identity servers, so that they can be
//! undone (see [`crate::threepid`]). A supertrait of [`super::Storage`].

use async_trait::async_trait;
use ruma::UserId;

use super::Result;

/// A 3PID bound to a local user at an identity server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreepidBinding {
    pub medium: String,
    pub address: String,
    pub id_server: String,
}

#[async_trait]
pub trait ThreepidStorage: Send + Sync {
    /// Records that `user_id` bound `medium`/`address` at `id_server`.
    async fn add_threepid_binding(&self, user_id: &UserId, binding: &ThreepidBinding) -> Result<()>;
    /// The bindings of `user_id`, all of them or those of one 3PID.
    async fn threepid_bindings(&self, user_id: &UserId, threepid: Option<(&str, &str)>)
    -> Result<Vec<ThreepidBinding>>;
    /// Forgets a binding (nothing happens when there is none).
    async fn remove_threepid_binding(&self, user_id: &UserId, binding: &ThreepidBinding) -> Result<()>;
}
