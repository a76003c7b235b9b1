//! Per-destination back-off: a server that cannot be reached is not tried
//! again until its back-off has passed, so one dead server does not cost
//! every request that would go to it. Doubles from `INITIAL` up to `MAX`;
//! forgotten on the first success.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{OwnedServerName, ServerName};

const INITIAL: Duration = Duration::from_secs(5);
const MAX: Duration = Duration::from_secs(60 * 60);
/// Servers kept before those whose back-off ran out are dropped.
const ENTRIES: usize = 4096;

#[derive(Default)]
pub struct Backoff {
    down: Mutex<HashMap<OwnedServerName, Down>>,
}

struct Down {
    until: Instant,
    wait: Duration,
}

impl Backoff {
    /// When `server` may be tried again, if it is backing off now.
    pub fn retry_at(&self, server: &ServerName) -> Option<Instant> {
        let down = self.down.lock().expect("backoff lock");
        down.get(server)
            .map(|d| d.until)
            .filter(|until| *until > Instant::now())
    }

    pub fn failed(&self, server: &ServerName) {
        let mut down = self.down.lock().expect("backoff lock");
        // Servers that failed long ago are forgotten once the map is large
        // (their next failure starts a back-off anew).
        if down.len() >= ENTRIES {
            let now = Instant::now();
            down.retain(|_, d| d.until > now);
        }
        let wait = down.get(server).map_or(INITIAL, |d| (d.wait * 2).min(MAX));
        down.insert(
            server.to_owned(),
            Down {
                until: Instant::now() + wait,
                wait,
            },
        );
    }

    pub fn succeeded(&self, server: &ServerName) {
        let mut down = self.down.lock().expect("backoff lock");
        if !down.is_empty() {
            down.remove(server);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_resets() {
        let backoff = Backoff::default();
        let server: &ServerName = "down.example".try_into().unwrap();
        assert!(backoff.retry_at(server).is_none());
        backoff.failed(server);
        let first = backoff.retry_at(server).unwrap();
        backoff.failed(server);
        let second = backoff.retry_at(server).unwrap();
        assert!(second > first + INITIAL / 2, "the wait doubles");
        backoff.succeeded(server);
        assert!(backoff.retry_at(server).is_none());
    }
}
