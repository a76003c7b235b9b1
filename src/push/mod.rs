//! Push notifications: users' push rules (`rules`), what an event stored
//! in a room means for each local member (`evaluate`: notification
//! counts, `GET /notifications`, pushes queued in storage), and pushes to
//! push gateways (`gateway`: the requests; `sender`: the queue's sender,
//! off the write path, one process of the cluster at a time).

pub mod evaluate;
pub mod gateway;
pub mod rules;
pub mod sender;

use std::sync::Arc;

use crate::{cluster::Cluster, storage::Storage};

/// The push state the server keeps in memory.
pub struct Push {
    pub(crate) rules: rules::RulesCache,
    pub gateway: Arc<gateway::Gateway>,
    pub sender: Arc<sender::PushSender>,
}

impl Push {
    /// Starts the sender of queued pushes (it ends with `cancel`);
    /// `verify_tls`: check push gateways' certificates (only test rigs
    /// turn it off, as for federation).
    pub fn start(
        (storage, cluster): (Arc<dyn Storage>, Arc<dyn Cluster>),
        verify_tls: bool,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Push {
        let gateway = Arc::new(gateway::Gateway::new(verify_tls));
        let sender = sender::PushSender::new(storage, cluster, gateway.clone());
        tokio::spawn(sender.clone().run(cancel));
        Push {
            rules: rules::RulesCache::default(),
            gateway,
            sender,
        }
    }
}
