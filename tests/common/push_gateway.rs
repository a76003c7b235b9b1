//! A push gateway on loopback (the push gateway API's
//! `POST /_matrix/push/v1/notify`): every request it gets is kept, with
//! whether it was accepted; while down it answers 503.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use serde_json::Value;
use tokio::sync::mpsc;

/// A request the gateway got.
pub struct Push {
    /// It answered 200 (not down).
    pub accepted: bool,
    pub body: Value,
}

impl Push {
    /// The event ID of an event's push (`None` for a badge).
    pub fn event_id(&self) -> Option<&str> {
        self.body["notification"]["event_id"].as_str()
    }
}

pub struct PushGateway {
    /// The URL a pusher names.
    pub url: String,
    down: Arc<AtomicBool>,
    rx: mpsc::UnboundedReceiver<Push>,
}

type GatewayState = (mpsc::UnboundedSender<Push>, Value, Arc<AtomicBool>);

impl PushGateway {
    /// A gateway that answers `answer` (`{"rejected": [...]}` rejects
    /// pushkeys).
    pub async fn start(answer: Value) -> PushGateway {
        let (tx, rx) = mpsc::unbounded_channel();
        let down = Arc::new(AtomicBool::new(false));
        let app = Router::new()
            .route(
                "/_matrix/push/v1/notify",
                post(
                    |State((tx, answer, down)): State<GatewayState>, Json(body): Json<Value>| async move {
                        let accepted = !down.load(Ordering::SeqCst);
                        let _ = tx.send(Push { accepted, body });
                        if accepted {
                            (StatusCode::OK, Json(answer))
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({})))
                        }
                    },
                ),
            )
            .with_state((tx, answer, down.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        PushGateway {
            url: format!("http://{addr}/_matrix/push/v1/notify"),
            down,
            rx,
        }
    }

    /// Down (503 to every request) or up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The next request; panics after 20 s without one.
    pub async fn next(&mut self, what: &str) -> Push {
        tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no push for {what}"))
            .expect("gateway running")
    }

    /// The next request within `wait`, if any.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Push> {
        tokio::time::timeout(wait, self.rx.recv()).await.ok().flatten()
    }

    /// The pusher of `pushkey` sending here, as `/pushers/set` takes it.
    pub fn pusher(&self, pushkey: &str) -> Value {
        pusher(&self.url, pushkey)
    }
}

/// An HTTP pusher of `pushkey` sending to `url`, as `/pushers/set` takes it.
pub fn pusher(url: &str, pushkey: &str) -> Value {
    serde_json::json!({
        "kind": "http", "app_id": "weft.test", "pushkey": pushkey,
        "app_display_name": "Test", "device_display_name": "Phone", "lang": "en",
        "profile_tag": "tag", "data": { "url": url, "extra": "kept" }
    })
}
