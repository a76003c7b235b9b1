//! Push notifications: users' push rules (`rules`), what an event stored
//! in a room means for each local member (`evaluate`: notification
//! counts, `GET /notifications`), and pushes to push gateways
//! (`gateway`, off the write path).

pub mod evaluate;
pub mod gateway;
pub mod rules;

use std::sync::Arc;

use crate::storage::Storage;

/// The push state the server keeps in memory.
pub struct Push {
    pub(crate) rules: rules::RulesCache,
    pub gateway: gateway::Gateway,
}

impl Push {
    /// `verify_tls`: check push gateways' certificates (only test rigs
    /// turn it off, as for federation).
    pub fn start(storage: Arc<dyn Storage>, verify_tls: bool, cancel: tokio_util::sync::CancellationToken) -> Push {
        Push {
            rules: rules::RulesCache::default(),
            gateway: gateway::Gateway::start(storage, verify_tls, cancel),
        }
    }
}
