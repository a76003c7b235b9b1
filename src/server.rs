//! Start-up: open storage, load keys and certificate, build the
//! [`Services`], and serve the client API (HTTP) and the federation API
//! (HTTPS) until shut down.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, response::IntoResponse};
use http::{Method, header};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::{catch_panic::CatchPanicLayer, cors::CorsLayer};

use crate::{
    client_api,
    config::Config,
    error::MatrixError,
    federation_api,
    federation_client::{FederationClient, FederationError},
    http_errors::MatrixErrorsAcceptor,
    keys::{KeyError, ServerKeys},
    services::Services,
    storage::StorageError,
    tls::{self, TlsError},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    AppService(#[from] crate::appservice::registration::RegistrationError),
    #[error("application service users: {0}")]
    AppServiceUsers(#[from] crate::accounts::AccountError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("federation client: {0}")]
    Federation(#[from] FederationError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// A started server. Drop it or call [`RunningServer::shutdown`] to stop.
pub struct RunningServer {
    pub client_addr: SocketAddr,
    pub federation_addr: SocketAddr,
    pub services: Arc<Services>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, lets requests in flight finish (briefly), returns
    /// when the listeners are closed.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        // Another process (or this one's restart) takes them at once.
        if let Err(e) = self.services.cluster.release_duties().await {
            tracing::warn!(error = %e, "giving up this process's duties");
        }
    }

    /// Runs until ctrl-c or SIGTERM, then shuts down.
    pub async fn run_until_signal(self) {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-requested-with"),
        ])
}

/// Reads every request body in full before routing. An answer given
/// before its request's body was read (an unknown path, a missing token,
/// any early error) would otherwise leave the rest of the body in the
/// connection, which then cannot carry the client's next request: keep-alive
/// clients (SyTest among them) send it anyway and lose it. Bodies are JSON
/// of at most [`MAX_BODY_BYTES`](client_api::extract::MAX_BODY_BYTES), which
/// the endpoints read whole anyway; a larger one is refused here, and that
/// connection closed.
/// Uploads (`/_matrix/media/v3/upload`) are the exception: files, read up to
/// `max_upload_size`. A body that stops coming for `header_read_timeout_secs`
/// is a 408, and its connection closed.
async fn read_body_first(
    axum::extract::State(svc): axum::extract::State<Arc<Services>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let limit = if client_api::media::is_upload_path(parts.uri.path()) {
        usize::try_from(svc.config.max_upload_size).unwrap_or(usize::MAX)
    } else {
        client_api::extract::MAX_BODY_BYTES
    };
    let idle = Duration::from_secs(svc.config.header_read_timeout_secs);
    let error = match read_body(body, limit, idle).await {
        Ok(bytes) => return next.run(axum::extract::Request::from_parts(parts, bytes.into())).await,
        Err(BodyError::TooLarge) => MatrixError::new(crate::error::ErrCode::TooLarge, "Request body too large"),
        Err(BodyError::Stalled) => {
            MatrixError::unknown("The request's body stopped coming").with_status(http::StatusCode::REQUEST_TIMEOUT)
        }
        Err(BodyError::Broken) => {
            MatrixError::unknown("The request's body could not be read").with_status(http::StatusCode::BAD_REQUEST)
        }
    };
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    response
}

enum BodyError {
    TooLarge,
    /// Nothing came for the idle time: a client that announced a body and
    /// stopped sending it does not keep its connection.
    Stalled,
    Broken,
}

/// A request's body, whole: at most `limit` bytes, each piece coming
/// within `idle` of the one before (a slow upload goes on; a stalled one
/// is cut).
async fn read_body(body: axum::body::Body, limit: usize, idle: Duration) -> Result<bytes::Bytes, BodyError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(BodyError::Stalled),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(_))) => return Err(BodyError::Broken),
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

/// Which listener a request came to: who it is counted against differs.
#[derive(Clone, Copy)]
enum Listener {
    Client,
    Federation,
}

/// Counts each request against its client's and the process's share of
/// requests in flight ([`crate::limits`]) until its answer is made; past
/// either, `429` at once. The body is not read then, so the connection is
/// closed.
async fn count_in_flight(
    axum::extract::State((svc, listener)): axum::extract::State<(Arc<Services>, Listener)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let client = client_key(&svc, listener, &parts);
    match svc.limits.start_request(client) {
        Ok(guard) => {
            let response = next.run(axum::extract::Request::from_parts(parts, body)).await;
            drop(guard);
            response
        }
        Err(error) => {
            let mut response = error.into_response();
            response
                .headers_mut()
                .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            response
        }
    }
}

/// Who a request is counted against: its access token (an application
/// service's is not limited per client), the server it claims to come
/// from with its address, or else its address.
fn client_key(svc: &Services, listener: Listener, parts: &http::request::Parts) -> crate::limits::ClientKey {
    use crate::limits::ClientKey;
    let ip = crate::connections::client_ip(parts, svc.config.x_forwarded);
    match listener {
        Listener::Client => match client_api::extract::access_token(parts) {
            Some(token) if svc.appservices.by_token(&token).is_some() => ClientKey::Unlimited,
            Some(token) => ClientKey::Token(token),
            None => ClientKey::Address(ip),
        },
        Listener::Federation => parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| ruma::api::federation::authentication::XMatrix::try_from(value).ok())
            .map_or(ClientKey::Address(ip), |x| ClientKey::Origin(x.origin.to_string(), ip)),
    }
}

/// An `M_RESOURCE_LIMIT_EXCEEDED` answer gets the `admin_contact` the spec
/// requires of it, when the configuration gives one.
async fn add_admin_contact(
    axum::extract::State(svc): axum::extract::State<Arc<Services>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(req).await;
    let (Some(contact), Some(crate::error::ResourceLimitBody(body))) = (
        &svc.config.admin_contact,
        response.extensions().get::<crate::error::ResourceLimitBody>(),
    ) else {
        return response;
    };
    let mut body = body.clone();
    body["admin_contact"] = serde_json::Value::String(contact.clone());
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    MatrixError::unknown("internal error").into_response()
}

fn app(router: Router<Arc<Services>>, svc: Arc<Services>, listener: Listener) -> Router {
    router
        .fallback(client_api::unrecognized)
        .method_not_allowed_fallback(client_api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(svc.clone(), add_admin_contact))
        .layer(axum::middleware::from_fn_with_state(svc.clone(), read_body_first))
        .layer(axum::middleware::from_fn_with_state(
            (svc.clone(), listener),
            count_in_flight,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(cors())
        .with_state(svc)
}

/// Starts weft with `config`. Listening addresses may use port 0; the
/// bound addresses are in the result.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let appservices = crate::appservice::registration::load(&config.app_service_config_files, &config.server_name)?;
    let (storage, cluster) = crate::storage::open_with_cluster(&config).await?;
    let keys = ServerKeys::load_or_generate(&config.data_dir, config.server_name.clone())?;
    let tls_config = if config.federation_plain_http {
        None
    } else {
        let configured = config.tls_cert.as_deref().zip(config.tls_key.as_deref());
        let (cert, key) = tls::certificate_files(&config.data_dir, config.server_name.as_str(), configured)?;
        Some(tls::server_config(&cert, &key)?)
    };
    let keys = Arc::new(keys);
    let federation = Arc::new(FederationClient::new(keys.clone(), config.federation_verify_tls)?);
    let cancel = CancellationToken::new();
    let svc = Arc::new(
        Services::new(
            config.clone(),
            keys,
            (storage, cluster),
            federation,
            appservices,
            cancel.clone(),
        )
        .await?,
    );
    svc.sender.resume().await?;
    svc.appservices.create_sender_users(&*svc.storage).await?;
    svc.appservices.resume();
    tokio::spawn(crate::presence::run_sweeper(svc.clone(), cancel.clone()));
    tokio::spawn(svc.ephemeral.clone().run_sweeper(cancel.clone()));
    tokio::spawn(crate::cluster::follow::follow_other_processes(
        svc.clone(),
        cancel.clone(),
    ));
    tokio::spawn(svc.sender.clone().take_over(cancel.clone()));
    tokio::spawn({
        let (svc, cancel) = (svc.clone(), cancel.clone());
        async move { svc.appservices.take_over(cancel).await }
    });
    tokio::spawn(crate::rooms::guests::run_revocations(svc.clone(), cancel.clone()));
    tokio::spawn(crate::rooms::partial_state::run(svc.clone(), cancel.clone()));
    tokio::spawn(svc.limits.clone().run_pruner(cancel.clone()));
    tokio::spawn(crate::client_api::sliding_sync::run_expiry(svc.clone(), cancel.clone()));
    if config.ephemeral_messages {
        tokio::spawn(crate::rooms::expiry::run(svc.clone(), cancel.clone()));
    }

    // Both listeners close a connection that has not sent a request's
    // headers in time (hyper's timer), give hyper's own error answers a
    // Matrix body ([`crate::http_errors`]), and shut down gracefully,
    // waiting up to 5 s for requests under way.
    let header_timeout = Duration::from_secs(config.header_read_timeout_secs);
    let client_listener = std::net::TcpListener::bind(config.client_listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| StartError::Listen {
            addr: config.client_listen,
            source,
        })?;
    let client_addr = client_listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.client_listen,
        source,
    })?;
    let client_app = app(client_api::router(), svc.clone(), Listener::Client);
    let client_handle = axum_server::Handle::new();
    let client_shutdown = client_handle.clone();
    let client_cancel = cancel.clone();
    tokio::spawn(async move {
        client_cancel.cancelled().await;
        client_shutdown.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let client_task = tokio::spawn(async move {
        let result = match axum_server::from_tcp(client_listener) {
            Ok(mut server) => {
                server.http_builder().http1().header_read_timeout(header_timeout);
                server
                    .acceptor(MatrixErrorsAcceptor(axum_server::accept::NoDelayAcceptor::new()))
                    .handle(client_handle)
                    .serve(client_app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "client API listener failed");
        }
    });

    let fed_listener = std::net::TcpListener::bind(config.federation_listen).map_err(|source| StartError::Listen {
        addr: config.federation_listen,
        source,
    })?;
    fed_listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Listen {
            addr: config.federation_listen,
            source,
        })?;
    let federation_addr = fed_listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.federation_listen,
        source,
    })?;
    let fed_app = app(federation_api::router(), svc.clone(), Listener::Federation);
    let handle = axum_server::Handle::new();
    let fed_handle = handle.clone();
    let fed_cancel = cancel.clone();
    tokio::spawn(async move {
        fed_cancel.cancelled().await;
        fed_handle.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let fed_task = tokio::spawn(async move {
        let result = match tls_config {
            // TCP_NODELAY: without it, a multi-segment answer (a page of
            // /backfill) waits on Nagle and the peer's delayed ACK, ~40 ms.
            Some(tls) => {
                let rustls = axum_server::tls_rustls::RustlsConfig::from_config(tls);
                let acceptor = MatrixErrorsAcceptor(
                    axum_server::tls_rustls::RustlsAcceptor::new(rustls)
                        .handshake_timeout(header_timeout.min(Duration::from_secs(10)))
                        .acceptor(axum_server::accept::NoDelayAcceptor::new()),
                );
                match axum_server::from_tcp(fed_listener) {
                    Ok(mut server) => {
                        server.http_builder().http1().header_read_timeout(header_timeout);
                        server
                            .acceptor(acceptor)
                            .handle(handle)
                            .serve(fed_app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            None => match axum_server::from_tcp(fed_listener) {
                Ok(mut server) => {
                    server.http_builder().http1().header_read_timeout(header_timeout);
                    server
                        .acceptor(MatrixErrorsAcceptor(axum_server::accept::NoDelayAcceptor::new()))
                        .handle(handle)
                        .serve(fed_app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                        .await
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "federation listener failed");
        }
    });

    let mut tasks = vec![client_task, fed_task];
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        let metrics_svc = svc.clone();
        let metrics_app = Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let svc = metrics_svc.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        svc.metrics.encode(),
                    )
                }
            }),
        );
        let metrics_cancel = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let serve = axum::serve(listener, metrics_app)
                .with_graceful_shutdown(async move { metrics_cancel.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        }));
        tracing::info!(metrics = %format!("http://{addr}/metrics"), "serving metrics");
    }

    tracing::info!(
        server_name = %config.server_name,
        client_api = %format!("http://{client_addr}"),
        federation_api = %format!("{}://{federation_addr}", if config.federation_plain_http { "http" } else { "https" }),
        data_dir = %config.data_dir.display(),
        "weft is listening"
    );
    Ok(RunningServer {
        client_addr,
        federation_addr,
        services: svc,
        cancel,
        tasks,
    })
}
