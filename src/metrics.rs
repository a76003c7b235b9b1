//! Metrics in the Prometheus text format, served at `/metrics` on the
//! `metrics_listen` address when it is set (off by default).

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Everything weft counts.
pub struct Metrics {
    registry: Registry,
    /// `/backfill` requests made, by outcome (`events`, `empty`, `error`).
    pub backfill_requests: Family<OutcomeLabel, Counter>,
    /// Events added to timelines by backfill.
    pub backfill_events: Counter,
    /// Failed `/backfill` requests, by server asked.
    pub backfill_failures: Family<ServerLabel, Counter>,
    /// Time spent filling a gap (fetching, checking, storing), seconds.
    pub backfill_seconds: Histogram,
    /// Parked `/sync` requests woken (not timed out), each building its
    /// answer again: what a change costs beyond whom it concerns.
    pub sync_wakeups: Counter,
    /// `/sync` answers built, counting each round of a request (its
    /// first, and again after a wake-up or a change it may have missed):
    /// beyond the requests themselves, what parked requests cost.
    pub sync_rounds: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let backfill_requests = Family::<OutcomeLabel, Counter>::default();
        let backfill_events = Counter::default();
        let backfill_failures = Family::<ServerLabel, Counter>::default();
        let backfill_seconds = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        let sync_wakeups = Counter::default();
        let sync_rounds = Counter::default();
        registry.register(
            "backfill_requests",
            "Backfill requests to other servers, by outcome",
            backfill_requests.clone(),
        );
        registry.register(
            "backfill_events",
            "Events added to timelines by backfill",
            backfill_events.clone(),
        );
        registry.register(
            "backfill_failures",
            "Failed backfill requests, by server",
            backfill_failures.clone(),
        );
        registry.register(
            "backfill_seconds",
            "Time spent filling a gap in a timeline",
            backfill_seconds.clone(),
        );
        registry.register(
            "sync_wakeups",
            "Parked /sync requests woken to build their answer again",
            sync_wakeups.clone(),
        );
        registry.register(
            "sync_rounds",
            "Rounds of /sync requests: answers built, the first and again after a wake-up",
            sync_rounds.clone(),
        );
        Metrics {
            registry,
            sync_wakeups,
            sync_rounds,
            backfill_requests,
            backfill_events,
            backfill_failures,
            backfill_seconds,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    pub fn backfill_request(&self, outcome: &str) {
        self.backfill_requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn backfill_failure(&self, server: &ruma::ServerName) {
        self.backfill_failures
            .get_or_create(&ServerLabel {
                server: server.to_string(),
            })
            .inc();
    }
}
