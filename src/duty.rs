//! A background duty held by one process of the cluster at a time (see
//! `docs/cluster.md`): sending to one destination, to one application
//! service. A worker takes the duty ([`Duty::hold`]) before it does the
//! work, renews it while it works or backs off, and leaves it to run out
//! when idle. Another process that finds work for a duty held elsewhere
//! notifies the holder through storage (`OtherWrite::Queued`); a duty
//! whose holder died runs out, and the first process to look takes it.
//! Where one process runs (SQLite), every duty is its own.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::cluster::Cluster;

/// How long a duty lasts unrenewed: another process takes the work over
/// this long after its holder died (plus however long it takes to look).
pub const TTL: Duration = Duration::from_secs(10);
/// How often a worker renews the duty it holds.
const RENEW: Duration = Duration::from_secs(3);

/// A worker's hold on its duty.
pub struct Duty {
    name: String,
    cluster: Arc<dyn Cluster>,
    /// When it was last taken or renewed, while held.
    renewed: Option<Instant>,
}

impl Duty {
    pub fn new(name: String, cluster: Arc<dyn Cluster>) -> Duty {
        Duty {
            name,
            cluster,
            renewed: None,
        }
    }

    /// Takes or renews the duty (in storage at most every [`RENEW`]);
    /// false while another process holds it.
    pub async fn hold(&mut self) -> bool {
        if self.renewed.is_some_and(|at| at.elapsed() < RENEW) {
            return true;
        }
        let held = match self.cluster.hold_duty(&self.name, TTL).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(duty = %self.name, error = %e, "cannot take or renew a duty");
                false
            }
        };
        self.renewed = held.then(Instant::now);
        held
    }

    /// Sleeps `wait`, renewing the duty meanwhile if it is held (another
    /// process would not know of the back-off).
    pub async fn back_off(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while self.renewed.is_some() {
            let next = (Instant::now() + RENEW).min(until);
            tokio::time::sleep_until(next).await;
            if next >= until {
                return;
            }
            self.hold().await;
        }
        tokio::time::sleep_until(until).await;
    }
}
