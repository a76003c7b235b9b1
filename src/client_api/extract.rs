//! Turning HTTP into ruma's typed requests and back, with access-token
//! authentication, so that handlers see exactly the spec's types.

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{FromRequest, RawPathParams, Request, State},
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use bytes::BytesMut;
use ruma::api::{
    IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
    auth_scheme::{
        AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken, NoAuthentication,
    },
    error::{DeserializationError, FromHttpRequestError},
    path_builder::PathBuilder,
};

use crate::{
    appservice::Registration,
    error::{ErrCode, MatrixError},
    services::Services,
    storage::TokenOwner,
};

/// Largest request body accepted (events themselves are limited to
/// 65536 bytes by the PDU format).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Whether an endpoint wants an access token.
pub trait AuthRequirement {
    /// `Some(true)`: required; `Some(false)`: optional; `None`: unused.
    const TOKEN: Option<bool>;
}
impl AuthRequirement for AccessToken {
    const TOKEN: Option<bool> = Some(true);
}
impl AuthRequirement for AppserviceToken {
    const TOKEN: Option<bool> = Some(true);
}
impl AuthRequirement for AccessTokenOptional {
    const TOKEN: Option<bool> = Some(false);
}
impl AuthRequirement for AppserviceTokenOptional {
    const TOKEN: Option<bool> = Some(false);
}
impl AuthRequirement for NoAuthentication {
    const TOKEN: Option<bool> = None;
}
impl AuthRequirement for NoAccessToken {
    const TOKEN: Option<bool> = None;
}

/// A parsed request and who made it.
pub struct Ruma<T> {
    pub body: T,
    /// The authenticated user and device (when a token was given).
    pub owner: Option<TokenOwner>,
    pub access_token: Option<String>,
    /// The application service that made the request (with its
    /// `as_token`), if one did.
    pub appservice: Option<Arc<Registration>>,
    /// The request had no body: parsed as `{}`, which most endpoints take
    /// for "nothing given"; an event's content must be given
    /// ([`Ruma::content_given`]).
    pub empty_body: bool,
    /// The client's address ([`crate::connections::client_ip`]).
    pub client_ip: Option<std::net::IpAddr>,
}

impl<T> Ruma<T> {
    /// The authenticated user: set for endpoints that require a token.
    pub fn user(&self) -> &TokenOwner {
        self.owner.as_ref().expect("endpoint requires authentication")
    }

    /// The authenticated user may send an event now ([`send_rate`]).
    pub fn send_rate(&self, svc: &Services) -> Result<(), MatrixError> {
        send_rate(svc, &self.user().user_id, self.appservice.as_deref())
    }

    /// For endpoints whose body is an event's content: none at all is
    /// `400 M_NOT_JSON` (as Synapse answers), not an empty content.
    pub fn content_given(&self) -> Result<(), MatrixError> {
        if self.empty_body {
            return Err(MatrixError::not_json(
                "The request has no body: an event's content must be JSON",
            ));
        }
        Ok(())
    }
}

pub fn access_token(parts: &http::request::Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(http::header::AUTHORIZATION) {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
    }
    parts.uri.query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
    })
}

/// The send rate limit of `user` ([`crate::limits`]), unless an application
/// service registered with `rate_limited: false` sends for them.
pub fn send_rate(svc: &Services, user: &ruma::UserId, appservice: Option<&Registration>) -> Result<(), MatrixError> {
    match appservice {
        Some(appservice) if !appservice.rate_limited => Ok(()),
        _ => svc.limits.send(user),
    }
}

/// The user whose access token (header or `access_token` query
/// parameter) the request carries, for handlers without a ruma request.
pub async fn token_owner(svc: &Services, parts: &http::request::Parts) -> Result<TokenOwner, MatrixError> {
    Ok(token_owner_and_appservice(svc, parts).await?.0)
}

/// [`token_owner`], and the application service that made the request.
pub async fn token_owner_and_appservice(
    svc: &Services,
    parts: &http::request::Parts,
) -> Result<(TokenOwner, Option<Arc<Registration>>), MatrixError> {
    let Some(token) = access_token(parts) else {
        return Err(MatrixError::new(ErrCode::MissingToken, "Missing access token"));
    };
    authenticate(svc, parts, &token).await
}

/// Who a token stands for: a user's session, or an application service
/// acting as its own user or, with the `user_id` query parameter, as a
/// registered user of its namespaces.
pub async fn authenticate(
    svc: &Services,
    parts: &http::request::Parts,
    token: &str,
) -> Result<(TokenOwner, Option<Arc<Registration>>), MatrixError> {
    if let Some(appservice) = svc.appservices.by_token(token) {
        let user_id = match query_param(parts, "user_id") {
            Some(user_id) => ruma::UserId::parse(user_id.as_str())
                .map_err(|e| MatrixError::invalid_param(format!("Invalid user_id: {e}")))?,
            None => appservice.sender.clone(),
        };
        if !appservice.is_user_in_namespace(&user_id) {
            return Err(MatrixError::forbidden(
                "Application service cannot masquerade as this user",
            ));
        }
        if user_id != appservice.sender {
            match svc.storage.user(&user_id).await? {
                None => {
                    return Err(MatrixError::forbidden(
                        "Application service has not registered this user",
                    ));
                }
                Some(user) if user.deactivated => {
                    return Err(MatrixError::new(
                        ErrCode::UserDeactivated,
                        "This account has been deactivated",
                    ));
                }
                Some(_) => {}
            }
        }
        let owner = TokenOwner {
            user_id,
            device_id: format!("AS_{}", appservice.id).into(),
            is_guest: false,
        };
        return Ok((owner, Some(appservice)));
    }
    match svc.storage.token_owner(token).await? {
        Some(owner) => {
            super::guest::check(parts, owner.is_guest)?;
            seen(svc, &owner, parts).await;
            Ok((owner, None))
        }
        None => Err(MatrixError::new(ErrCode::UnknownToken, "Unknown access token")
            .with_field("soft_logout", serde_json::json!(false))),
    }
}

fn query_param(parts: &http::request::Parts, name: &str) -> Option<String> {
    parts.uri.query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    })
}

/// Notes where the device's request came from (a failure to store it
/// fails nothing).
async fn seen(svc: &Services, owner: &TokenOwner, parts: &http::request::Parts) {
    if let Err(error) = svc
        .connections
        .record(&*svc.storage, owner, parts, svc.config.x_forwarded)
        .await
    {
        tracing::warn!(%error, "device's last request not recorded");
    }
}

/// Maps ruma's parse failures to the spec's error codes.
pub fn request_error(error: FromHttpRequestError) -> MatrixError {
    match error {
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
            if e.is_syntax() || e.is_eof() {
                MatrixError::not_json(format!("Content not JSON: {e}"))
            } else if e.to_string().starts_with("missing field") {
                MatrixError::new(ErrCode::BadJson, format!("Missing field: {e}"))
            } else {
                MatrixError::bad_json(e.to_string())
            }
        }
        FromHttpRequestError::Deserialization(DeserializationError::Query(e)) => {
            let message = e.to_string();
            if message.starts_with("missing field") {
                MatrixError::missing_param(message)
            } else {
                MatrixError::invalid_param(message)
            }
        }
        FromHttpRequestError::Deserialization(DeserializationError::Ident(e)) => {
            MatrixError::invalid_param(format!("Invalid identifier: {e}"))
        }
        FromHttpRequestError::Deserialization(e) => MatrixError::bad_json(e.to_string()),
        FromHttpRequestError::MethodMismatch { .. } => {
            MatrixError::unrecognized("Method not allowed").with_status(http::StatusCode::METHOD_NOT_ALLOWED)
        }
        _ => MatrixError::bad_json("Bad request"),
    }
}

impl<T> FromRequest<Arc<Services>> for Ruma<T>
where
    T: IncomingRequest + Send,
    T::Authentication: AuthRequirement,
{
    type Rejection = MatrixError;

    async fn from_request(req: Request, svc: &Arc<Services>) -> Result<Self, MatrixError> {
        let (mut parts, body) = req.into_parts();
        let params = <RawPathParams as axum::extract::FromRequestParts<_>>::from_request_parts(&mut parts, svc)
            .await
            .map_err(|e| MatrixError::invalid_param(format!("bad path: {e}")))?;
        let mut path_args: Vec<String> = params.iter().map(|(_, v)| v.to_owned()).collect();
        // Routes without a trailing `{state_key}` stand for the empty one.
        let wanted = T::PATH_BUILDER.all_paths().next().map_or(0, |p| p.matches('{').count());
        while path_args.len() < wanted {
            path_args.push(String::new());
        }
        let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| MatrixError::new(ErrCode::TooLarge, "Request body too large"))?;

        let token = access_token(&parts);
        let (owner, appservice) = match (T::Authentication::TOKEN, &token) {
            (None, _) | (Some(false), None) => (None, None),
            (Some(_), Some(token)) => {
                let (owner, appservice) = authenticate(svc, &parts, token).await?;
                (Some(owner), appservice)
            }
            (Some(true), None) => {
                return Err(MatrixError::new(ErrCode::MissingToken, "Missing access token"));
            }
        };

        let client_ip = crate::connections::client_ip(&parts, svc.config.x_forwarded);
        let body = legacy_password_auth(body);
        let empty_body = body.is_empty();
        let body_slice: &[u8] = if empty_body { b"{}" } else { &body };
        let http_req = http::Request::from_parts(parts, body_slice);
        let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        let body = T::try_from_http_request(http_req, &args).map_err(request_error)?;
        Ok(Ruma {
            body,
            owner,
            access_token: token,
            appservice,
            empty_body,
            client_ip,
        })
    }
}

/// User-interactive auth by password in its legacy form (`"user"` instead
/// of `"identifier"`, as Synapse still takes it) rewritten to the current
/// one, which is all ruma parses.
fn legacy_password_auth(body: bytes::Bytes) -> bytes::Bytes {
    if !body.windows(6).any(|w| w == b"\"user\"") {
        return body;
    }
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    let Some(auth) = object.get_mut("auth").and_then(serde_json::Value::as_object_mut) else {
        return body;
    };
    if auth.get("type").and_then(serde_json::Value::as_str) != Some("m.login.password")
        || auth.contains_key("identifier")
    {
        return body;
    }
    let Some(user) = auth.remove("user") else {
        return body;
    };
    auth.insert(
        "identifier".to_owned(),
        serde_json::json!({ "type": "m.id.user", "user": user }),
    );
    serde_json::to_vec(&object).map_or(body, Into::into)
}

/// A ruma response, serialised as the spec says.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(res) => {
                let (mut parts, body) = res.into_parts();
                // JSON, but for the multipart answers (federation media
                // downloads), whose type carries their boundary.
                let multipart = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|t| t.as_bytes().starts_with(b"multipart/"));
                if !multipart {
                    parts.headers.insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                }
                Response::from_parts(parts, Body::from(body.freeze()))
            }
            Err(e) => MatrixError::internal("serialising response", e).into_response(),
        }
    }
}

/// Registers ruma endpoints on a router, on every path the spec has
/// given them (`r0`, `v3`, …).
pub trait RumaRouter {
    fn ruma<R, H, Fut>(self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthRequirement,
        R::OutgoingResponse: Send,
        H: Fn(Arc<Services>, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse, MatrixError>> + Send + 'static;

    /// As [`RumaRouter::ruma`], and also on `extra` paths the spec does
    /// not give (the `unstable` ones clients still call); paths with no
    /// path parameters only.
    fn ruma_with_paths<R, H, Fut>(self, extra: &[&'static str], handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthRequirement,
        R::OutgoingResponse: Send,
        H: Fn(Arc<Services>, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse, MatrixError>> + Send + 'static;
}

impl RumaRouter for Router<Arc<Services>> {
    fn ruma<R, H, Fut>(self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthRequirement,
        R::OutgoingResponse: Send,
        H: Fn(Arc<Services>, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse, MatrixError>> + Send + 'static,
    {
        self.ruma_with_paths(&[], handler)
    }

    fn ruma_with_paths<R, H, Fut>(self, extra: &[&'static str], handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthRequirement,
        R::OutgoingResponse: Send,
        H: Fn(Arc<Services>, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse, MatrixError>> + Send + 'static,
    {
        let filter = MethodFilter::try_from(R::METHOD).expect("ruma endpoints use standard methods");
        let mut paths: Vec<&'static str> = R::PATH_BUILDER.all_paths().chain(extra.iter().copied()).collect();
        paths.sort_unstable();
        paths.dedup();
        let mut router = self;
        for path in paths {
            let handler = handler.clone();
            let route = on(filter, move |State(svc): State<Arc<Services>>, req: Ruma<R>| {
                let handler = handler.clone();
                async move { handler(svc, req).await.map(RumaResponse) }
            });
            router = router.route(path, route.clone());
            // `…/{state_key}` also answers without the key (empty key).
            if let Some(short) = path.strip_suffix("/{state_key}") {
                router = router.route(short, route.clone()).route(&format!("{short}/"), route);
            }
        }
        router
    }
}

/// Response middleware: drops the top-level `null` fields of a successful
/// JSON answer, for ruma responses that write `null` where the spec says
/// a field is omitted (registration's `device_id` with `inhibit_login`).
pub async fn without_null_fields(response: Response) -> Response {
    if response.status() != http::StatusCode::OK {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return MatrixError::unknown("response unreadable").into_response();
    };
    let bytes = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.retain(|_, v| !v.is_null());
            serde_json::to_vec(&map).map_or(bytes, Into::into)
        }
        _ => bytes,
    };
    Response::from_parts(parts, Body::from(bytes))
}
