//! What one client may ask of this process: rate limits on sends, logins
//! and registrations, and a bound on requests in flight per client and in
//! total. Past a limit the answer is `429 M_LIMIT_EXCEEDED` with
//! `retry_after_ms` (and `Retry-After`), as the spec says.
//!
//! **Process-local.** Each process keeps its own buckets and counts, as
//! Synapse's workers do: behind a load balancer spreading one client over
//! N processes, that client gets up to N times the rate. The buckets are
//! not worth a database round trip per request.
//!
//! The rate limits are GCRA buckets ([`governor`]), one per user, account
//! or address, pruned by [`Limits::prune`] once they are full again, so
//! that the maps do not grow with every client ever seen.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use ruma::UserId;

use crate::{
    config::Config,
    error::{ErrCode, MatrixError},
};

/// A rate: `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Option<Quota> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return None;
        }
        let period = Duration::from_secs_f64(1.0 / self.per_second);
        Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(self.burst.max(1))?))
    }
}

/// One rate limit, one bucket per key.
struct Limiter<K: std::hash::Hash + Eq + Clone> {
    buckets: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
}

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    fn new(rate: Rate) -> Option<Self> {
        Some(Limiter {
            buckets: RateLimiter::keyed(rate.quota()?),
            clock: DefaultClock::default(),
        })
    }

    /// Takes one from `key`'s bucket, or says how long until it can.
    fn take(&self, key: &K) -> Result<(), Duration> {
        self.buckets
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    fn prune(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// The `429` for a limit that frees up in `wait`.
pub fn limit_exceeded(wait: Duration) -> MatrixError {
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    MatrixError::new(ErrCode::LimitExceeded, "Too many requests").with_field("retry_after_ms", ms.into())
}

/// This process's limits (see the module doc).
pub struct Limits {
    sends: Option<Limiter<ruma::OwnedUserId>>,
    logins: Option<Limiter<IpAddr>>,
    account_logins: Option<Limiter<String>>,
    registrations: Option<Limiter<IpAddr>>,
    in_flight: Arc<InFlight>,
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        fn limiter<K: std::hash::Hash + Eq + Clone>(on: bool, per_second: f64, burst: u32) -> Option<Limiter<K>> {
            if on {
                Limiter::new(Rate { per_second, burst })
            } else {
                None
            }
        }
        let on = config.rate_limits;
        Limits {
            sends: limiter(on, config.rate_limit_sends_per_second, config.rate_limit_sends_burst),
            logins: limiter(on, config.rate_limit_logins_per_second, config.rate_limit_logins_burst),
            account_logins: limiter(
                on,
                config.rate_limit_account_logins_per_second,
                config.rate_limit_account_logins_burst,
            ),
            registrations: limiter(
                on,
                config.rate_limit_registrations_per_second,
                config.rate_limit_registrations_burst,
            ),
            in_flight: Arc::new(InFlight {
                per_client: config.max_requests_per_client,
                total: config.max_requests,
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// A user's event (message, state, redaction) may be sent.
    pub fn send(&self, user: &UserId) -> Result<(), MatrixError> {
        match &self.sends {
            Some(limiter) => limiter.take(&user.to_owned()).map_err(limit_exceeded),
            None => Ok(()),
        }
    }

    /// A login may be tried from `ip`.
    pub fn login(&self, ip: Option<IpAddr>) -> Result<(), MatrixError> {
        match (&self.logins, ip) {
            (Some(limiter), Some(ip)) => limiter.take(&ip).map_err(limit_exceeded),
            _ => Ok(()),
        }
    }

    /// A login to `account` may be tried (from any address): guessing
    /// one account's password from many addresses is as slow as from one.
    pub fn account_login(&self, account: &str) -> Result<(), MatrixError> {
        match &self.account_logins {
            Some(limiter) => limiter.take(&account.to_lowercase()).map_err(limit_exceeded),
            None => Ok(()),
        }
    }

    /// An account may be registered from `ip`.
    pub fn registration(&self, ip: Option<IpAddr>) -> Result<(), MatrixError> {
        match (&self.registrations, ip) {
            (Some(limiter), Some(ip)) => limiter.take(&ip).map_err(limit_exceeded),
            _ => Ok(()),
        }
    }

    /// Counts a request of `client` in flight until the returned guard is
    /// dropped; `Err` when the client, or the process, has too many.
    pub fn start_request(&self, client: ClientKey) -> Result<RequestGuard, MatrixError> {
        self.in_flight.clone().start(client)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.counts.lock().expect("in-flight lock").total
    }

    /// Forgets the buckets that are full again (nothing to remember).
    pub fn prune(&self) {
        if let Some(limiter) = &self.sends {
            limiter.prune();
        }
        if let Some(limiter) = &self.logins {
            limiter.prune();
        }
        if let Some(limiter) = &self.registrations {
            limiter.prune();
        }
        if let Some(limiter) = &self.account_logins {
            limiter.prune();
        }
    }

    /// How many keys the rate limits remember (for tests and metrics).
    pub fn remembered(&self) -> usize {
        self.sends.as_ref().map_or(0, Limiter::len)
            + self.logins.as_ref().map_or(0, Limiter::len)
            + self.registrations.as_ref().map_or(0, Limiter::len)
            + self.account_logins.as_ref().map_or(0, Limiter::len)
    }

    /// Prunes every minute until cancelled.
    pub async fn run_pruner(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => self.prune(),
            }
        }
    }
}

/// Who a request in flight is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// A client's access token.
    Token(String),
    /// A server (its claimed `X-Matrix` origin) from an address: a forger
    /// claiming the origin from elsewhere does not use up its share.
    Origin(String, Option<IpAddr>),
    /// A request with neither, by address.
    Address(Option<IpAddr>),
    /// Not limited per client (application services), only in total.
    Unlimited,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only clients with a request in flight have an entry.
    per_client: HashMap<ClientKey, usize>,
}

struct InFlight {
    per_client: usize,
    total: usize,
    counts: Mutex<Counts>,
}

impl InFlight {
    fn start(self: Arc<Self>, client: ClientKey) -> Result<RequestGuard, MatrixError> {
        {
            let mut counts = self.counts.lock().expect("in-flight lock");
            if counts.total >= self.total {
                return Err(limit_exceeded(Duration::from_secs(1)));
            }
            if client != ClientKey::Unlimited {
                let count = counts.per_client.entry(client.clone()).or_default();
                if *count >= self.per_client {
                    return Err(limit_exceeded(Duration::from_secs(1)));
                }
                *count += 1;
            }
            counts.total += 1;
        }
        Ok(RequestGuard {
            in_flight: self,
            client,
        })
    }
}

/// A request in flight; dropping it ends it.
pub struct RequestGuard {
    in_flight: Arc<InFlight>,
    client: ClientKey,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut counts = self.in_flight.counts.lock().expect("in-flight lock");
        counts.total -= 1;
        if let Some(count) = counts.per_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                counts.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(per_client: usize, total: usize) -> Config {
        Config {
            max_requests_per_client: per_client,
            max_requests: total,
            ..Config::default()
        }
    }

    #[test]
    fn requests_in_flight_are_bounded_per_client_and_in_total() {
        let limits = Limits::new(&config(2, 3));
        let a = || ClientKey::Token("a".into());
        let g1 = limits.start_request(a()).unwrap();
        let _g2 = limits.start_request(a()).unwrap();
        let e = limits.start_request(a()).err().unwrap();
        assert_eq!(e.code, ErrCode::LimitExceeded);
        let _g3 = limits.start_request(ClientKey::Address(None)).unwrap();
        // Three in flight: the total is reached, even for an unlimited one.
        assert!(limits.start_request(ClientKey::Unlimited).is_err());
        drop(g1);
        let _g4 = limits.start_request(a()).unwrap();
        assert!(limits.start_request(a()).is_err());
    }

    #[test]
    fn ended_requests_leave_nothing_behind() {
        let limits = Limits::new(&config(2, 100));
        for i in 0..50 {
            drop(limits.start_request(ClientKey::Token(format!("t{i}"))).unwrap());
        }
        let counts = limits.in_flight.counts.lock().unwrap();
        assert_eq!((counts.total, counts.per_client.len()), (0, 0));
    }

    #[test]
    fn a_burst_then_a_wait() {
        let mut config = config(8, 8);
        config.rate_limit_sends_per_second = 0.5;
        config.rate_limit_sends_burst = 3;
        let limits = Limits::new(&config);
        let user = ruma::user_id!("@a:example.org");
        for _ in 0..3 {
            limits.send(user).unwrap();
        }
        let error = limits.send(user).unwrap_err();
        assert_eq!(error.status, http::StatusCode::TOO_MANY_REQUESTS);
        let wait = error.body()["retry_after_ms"].as_u64().unwrap();
        assert!((1..=2000).contains(&wait), "{wait}");
        // Another user has a bucket of its own.
        limits.send(ruma::user_id!("@b:example.org")).unwrap();
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let mut config = config(8, 8);
        config.rate_limit_sends_per_second = 1000.0;
        config.rate_limit_sends_burst = 1;
        let limits = Limits::new(&config);
        for i in 0..20 {
            limits
                .send(&ruma::UserId::parse(format!("@u{i}:example.org")).unwrap())
                .unwrap();
        }
        assert_eq!(limits.remembered(), 20);
        std::thread::sleep(Duration::from_millis(20));
        limits.prune();
        assert_eq!(limits.remembered(), 0);
    }

    #[test]
    fn switched_off_limits_limit_nothing() {
        let mut config = config(8, 8);
        config.rate_limits = false;
        let limits = Limits::new(&config);
        for _ in 0..1000 {
            limits.send(ruma::user_id!("@a:example.org")).unwrap();
            limits.login(Some(IpAddr::from([127, 0, 0, 1]))).unwrap();
        }
        assert_eq!(limits.remembered(), 0);
    }
}
