//! Authenticated federation requests: the `X-Matrix` signature checked
//! against the origin's keys before ruma parses the request.

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    extract::{FromRequest, RawPathParams, Request, State},
    routing::{MethodFilter, on},
};
use ruma::{
    CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedServerName, ServerName,
    api::{
        IncomingRequest, IncomingRequestExt, Metadata,
        federation::authentication::{ServerSignatures, XMatrix},
        path_builder::PathBuilder,
    },
};

use crate::{
    client_api::extract::{MAX_BODY_BYTES, RumaResponse, request_error},
    error::{ErrCode, MatrixError},
    events::loose_json::Loose,
    services::Services,
};

/// A federation request whose signature checked out, and its origin.
pub struct Fed<T> {
    pub body: T,
    pub origin: OwnedServerName,
}

/// A federation request whose signature checked out, unparsed: for the v1
/// endpoints ruma has no type for.
pub struct FedRaw {
    pub origin: OwnedServerName,
    /// The path parameters, in order.
    pub path_args: Vec<String>,
    pub body: bytes::Bytes,
}

impl FromRequest<Arc<Services>> for FedRaw {
    type Rejection = MatrixError;

    async fn from_request(req: Request, svc: &Arc<Services>) -> Result<Self, MatrixError> {
        let (http_req, path_args, origin) = authenticate(req, svc).await?;
        Ok(FedRaw {
            origin,
            path_args,
            body: http_req.into_body(),
        })
    }
}

fn unauthorized(message: impl Into<String>) -> MatrixError {
    MatrixError::new(ErrCode::Unauthorized, message)
}

impl<T> FromRequest<Arc<Services>> for Fed<T>
where
    T: IncomingRequest<Authentication = ServerSignatures> + Send,
{
    type Rejection = MatrixError;

    async fn from_request(req: Request, svc: &Arc<Services>) -> Result<Self, MatrixError> {
        let (http_req, path_args, origin) = authenticate(req, svc).await?;
        let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        let (parts, bytes) = http_req.into_parts();
        let http_req = http::Request::from_parts(parts, &bytes[..]);
        match T::try_from_http_request(http_req, &args) {
            Ok(body) => Ok(Fed { body, origin }),
            Err(error) => {
                // Who may ask comes before what was asked: a server the
                // room's ACL bans is refused as such, even with a bad body
                // (a good one meets the same check in the handler).
                for arg in &path_args {
                    if let Ok(room_id) = <&ruma::RoomId>::try_from(arg.as_str())
                        && !crate::acl::allows(svc, room_id, &origin).await?
                    {
                        return Err(MatrixError::forbidden(
                            "Server is banned from this room by its server ACL",
                        ));
                    }
                }
                Err(request_error(error))
            }
        }
    }
}

/// Checks the `X-Matrix` signature of a request: the request (its body
/// read), its path parameters and its origin.
async fn authenticate(
    req: Request,
    svc: &Arc<Services>,
) -> Result<(http::Request<bytes::Bytes>, Vec<String>, OwnedServerName), MatrixError> {
    {
        let (mut parts, body) = req.into_parts();
        let params = <RawPathParams as axum::extract::FromRequestParts<_>>::from_request_parts(&mut parts, svc)
            .await
            .map_err(|e| MatrixError::invalid_param(format!("bad path: {e}")))?;
        let path_args: Vec<String> = params.iter().map(|(_, v)| v.to_owned()).collect();
        let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| MatrixError::new(ErrCode::TooLarge, "Request body too large"))?;

        let mut headers: Vec<XMatrix> = Vec::new();
        let mut malformed = None;
        for value in parts.headers.get_all(http::header::AUTHORIZATION) {
            match XMatrix::try_from(value) {
                Ok(xmatrix) => headers.push(xmatrix),
                // An X-Matrix header that does not parse (e.g. an origin
                // that is no server name) is a bad request, as Synapse has it.
                Err(e)
                    if value
                        .as_bytes()
                        .get(..9)
                        .is_some_and(|s| s.eq_ignore_ascii_case(b"X-Matrix ")) =>
                {
                    malformed = Some(e.to_string())
                }
                Err(_) => {}
            }
        }
        if headers.is_empty() {
            return Err(match malformed {
                Some(e) => unauthorized(format!("Malformed X-Matrix Authorization header: {e}"))
                    .with_status(http::StatusCode::BAD_REQUEST),
                None => unauthorized("Missing X-Matrix Authorization header"),
            });
        }
        // The signature covers the body as canonical JSON. A transaction
        // with numbers canonical JSON has not (a float, an integer out of
        // range: an event of room versions 1–5 may hold them) is checked as
        // Synapse signs it (`events::loose_json`), so that one such event
        // does not make the whole transaction unverifiable: it gets an
        // error of its own. Any other request with them is bad input (as
        // the spec has it for the events of `send_join`, `send_leave`,
        // `invite` in rooms v6+; SyTest checks `M_BAD_JSON` there).
        let signed = signed_body(parts.uri.path(), &body)?;
        let own_name = svc.server_name();
        let http_req = http::Request::from_parts(parts, body);
        let now: u64 = MilliSecondsSinceUnixEpoch::now().get().into();
        let mut failure = String::new();
        let mut origin = None;
        for xmatrix in headers {
            if xmatrix.destination.as_deref().is_some_and(|d| d != own_name) {
                failure = format!(
                    "request is for {}, not for this server",
                    xmatrix.destination.as_deref().unwrap()
                );
                continue;
            }
            let keys = match svc.keyring.key_map(&xmatrix.origin, &[xmatrix.key.as_str()], now).await {
                Ok(keys) => keys,
                Err(e) => {
                    failure = format!("cannot get the keys of {}: {e}", xmatrix.origin);
                    continue;
                }
            };
            match verify_signed(&xmatrix, &http_req, own_name, &keys, &signed) {
                Ok(()) => {
                    origin = Some(xmatrix.origin);
                    break;
                }
                Err(e) => failure = format!("bad signature from {}: {e}", xmatrix.origin),
            }
        }
        let Some(origin) = origin else {
            tracing::debug!(uri = %http_req.uri(), %failure, "federation request refused");
            return Err(unauthorized(failure));
        };
        Ok((http_req, path_args, origin))
    }
}

/// The body of a request as its signature covers it, parsed once
/// ([`signed_body`]).
pub(crate) enum SignedBody {
    /// No body.
    Empty,
    /// Canonical JSON.
    Canonical(CanonicalJsonValue),
    /// A transaction with numbers canonical JSON has not, kept as Synapse
    /// writes them.
    Loose(Loose),
}

/// The body of a request to `path` as its signature covers it: canonical
/// JSON, or the loose form for a transaction with numbers canonical JSON
/// has not; any other body is refused.
pub(crate) fn signed_body(path: &str, body: &[u8]) -> Result<SignedBody, MatrixError> {
    if body.is_empty() {
        return Ok(SignedBody::Empty);
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| MatrixError::not_json(format!("Content not JSON: {e}")))?;
    let transaction = path.starts_with("/_matrix/federation/v1/send/");
    if transaction && crate::events::loose_json::is_loose(&value) {
        return Ok(SignedBody::Loose(
            Loose::new(value).ok_or_else(|| MatrixError::bad_json("Content is not canonical JSON"))?,
        ));
    }
    CanonicalJsonValue::try_from(value)
        .map(SignedBody::Canonical)
        .map_err(|e| MatrixError::bad_json(format!("Content is not canonical JSON: {e}")))
}

/// Checks an `X-Matrix` signature over a request whose body was read as
/// `body` ([`signed_body`]): the body is not parsed again.
pub(crate) fn verify_signed(
    xmatrix: &XMatrix,
    request: &http::Request<bytes::Bytes>,
    own_name: &ServerName,
    keys: &ruma::signatures::PublicKeyMap,
    body: &SignedBody,
) -> Result<(), String> {
    let content = match body {
        SignedBody::Empty => {
            return xmatrix
                .verify_http_request(request, own_name, keys)
                .map_err(|e| e.to_string());
        }
        SignedBody::Canonical(value) => value,
        SignedBody::Loose(loose) => loose.value(),
    };
    if xmatrix.destination.as_deref().is_some_and(|d| d != own_name) {
        return Err(format!(
            "request is for {}, not for this server",
            xmatrix.destination.as_deref().unwrap_or(own_name)
        ));
    }
    // ruma's signed object of the request without its body (which it
    // would parse again), and the body as read.
    let bare = http::Request::builder()
        .method(request.method().clone())
        .uri(request.uri().clone())
        .body(bytes::Bytes::new())
        .map_err(|e| e.to_string())?;
    let mut object = XMatrix::request_object(&bare, &xmatrix.origin, own_name).map_err(|e| e.to_string())?;
    let key = keys
        .get(xmatrix.origin.as_str())
        .and_then(|set| set.get(xmatrix.key.as_str()))
        .ok_or_else(|| format!("no key {} of {}", xmatrix.key, xmatrix.origin))?;
    let signed = match body {
        SignedBody::Loose(loose) => {
            object.insert("content".to_owned(), content.clone());
            loose.write_object(&object)
        }
        // `content` sorts before the object's other keys (`destination`,
        // `method`, `origin`, `uri`): the canonical text is the body's
        // followed by theirs, without copying the body.
        _ => {
            let rest = serde_json::to_string(&object).map_err(|e| e.to_string())?;
            let content = serde_json::to_string(content).map_err(|e| e.to_string())?;
            format!("{{\"content\":{content},{}", &rest[1..])
        }
    };
    ruma::signatures::verify_canonical_json_bytes(
        &xmatrix.key.algorithm(),
        key.as_bytes(),
        xmatrix.sig.as_bytes(),
        signed.as_bytes(),
    )
    .map_err(|e| e.to_string())
}

/// Registers signed federation endpoints on a router.
pub trait FedRouter {
    fn federation<R, H, Fut>(self, handler: H) -> Self
    where
        R: IncomingRequest<Authentication = ServerSignatures> + Send + 'static,
        R::OutgoingResponse: Send,
        H: Fn(Arc<Services>, Fed<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse, MatrixError>> + Send + 'static;
}

impl FedRouter for Router<Arc<Services>> {
    fn federation<R, H, Fut>(self, handler: H) -> Self
    where
        R: IncomingRequest<Authentication = ServerSignatures> + Send + 'static,
        R::OutgoingResponse: Send,
        H: Fn(Arc<Services>, Fed<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse, MatrixError>> + Send + 'static,
    {
        let route = on(
            method_filter::<R>(),
            move |State(svc): State<Arc<Services>>, req: Fed<R>| {
                let handler = handler.clone();
                async move { handler(svc, req).await.map(RumaResponse) }
            },
        );
        paths::<R>()
            .into_iter()
            .fold(self, |router, path| router.route(path, route.clone()))
    }
}

/// Every path the spec has given an endpoint, once each.
pub fn paths<R: Metadata>() -> Vec<&'static str> {
    let mut paths: Vec<&'static str> = R::PATH_BUILDER.all_paths().collect();
    paths.sort_unstable();
    paths.dedup();
    paths
}

pub fn method_filter<R: Metadata>() -> MethodFilter {
    MethodFilter::try_from(R::METHOD).expect("ruma endpoints use standard methods")
}
