//! The error every API answers with: `{"errcode": "M_…", "error": "…"}`
//! and the HTTP status the spec gives that errcode.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Map, Value, json};

/// The spec's error codes that weft uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrCode {
    Forbidden,
    UnknownToken,
    MissingToken,
    Unauthorized,
    BadJson,
    NotJson,
    NotFound,
    LimitExceeded,
    Unrecognized,
    Unknown,
    UserInUse,
    InvalidUsername,
    RoomInUse,
    InvalidRoomState,
    UnsupportedRoomVersion,
    IncompatibleRoomVersion,
    BadState,
    GuestAccessForbidden,
    MissingParam,
    InvalidParam,
    TooLarge,
    Exclusive,
    UserDeactivated,
    BadAlias,
    UrlNotSet,
    BadStatus,
    ConnectionFailed,
    ConnectionTimeout,
    ResourceLimitExceeded,
    /// A sliding sync `pos` this server cannot continue from: the client
    /// starts its connection again.
    UnknownPos,
}

impl ErrCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrCode::Forbidden => "M_FORBIDDEN",
            ErrCode::UnknownToken => "M_UNKNOWN_TOKEN",
            ErrCode::MissingToken => "M_MISSING_TOKEN",
            ErrCode::Unauthorized => "M_UNAUTHORIZED",
            ErrCode::BadJson => "M_BAD_JSON",
            ErrCode::NotJson => "M_NOT_JSON",
            ErrCode::NotFound => "M_NOT_FOUND",
            ErrCode::LimitExceeded => "M_LIMIT_EXCEEDED",
            ErrCode::ResourceLimitExceeded => "M_RESOURCE_LIMIT_EXCEEDED",
            ErrCode::UnknownPos => "M_UNKNOWN_POS",
            ErrCode::Unrecognized => "M_UNRECOGNIZED",
            ErrCode::Unknown => "M_UNKNOWN",
            ErrCode::UserInUse => "M_USER_IN_USE",
            ErrCode::InvalidUsername => "M_INVALID_USERNAME",
            ErrCode::RoomInUse => "M_ROOM_IN_USE",
            ErrCode::InvalidRoomState => "M_INVALID_ROOM_STATE",
            ErrCode::UnsupportedRoomVersion => "M_UNSUPPORTED_ROOM_VERSION",
            ErrCode::IncompatibleRoomVersion => "M_INCOMPATIBLE_ROOM_VERSION",
            ErrCode::BadState => "M_BAD_STATE",
            ErrCode::GuestAccessForbidden => "M_GUEST_ACCESS_FORBIDDEN",
            ErrCode::MissingParam => "M_MISSING_PARAM",
            ErrCode::InvalidParam => "M_INVALID_PARAM",
            ErrCode::TooLarge => "M_TOO_LARGE",
            ErrCode::Exclusive => "M_EXCLUSIVE",
            ErrCode::UserDeactivated => "M_USER_DEACTIVATED",
            ErrCode::BadAlias => "M_BAD_ALIAS",
            ErrCode::UrlNotSet => "M_URL_NOT_SET",
            ErrCode::BadStatus => "M_BAD_STATUS",
            ErrCode::ConnectionFailed => "M_CONNECTION_FAILED",
            ErrCode::ConnectionTimeout => "M_CONNECTION_TIMEOUT",
        }
    }

    /// The status the spec pairs with this code when nothing more
    /// specific applies.
    pub fn default_status(self) -> StatusCode {
        match self {
            ErrCode::Forbidden | ErrCode::GuestAccessForbidden | ErrCode::UserDeactivated | ErrCode::BadState => {
                StatusCode::FORBIDDEN
            }
            ErrCode::UnknownToken | ErrCode::MissingToken | ErrCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrCode::NotFound => StatusCode::NOT_FOUND,
            ErrCode::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrCode::Unrecognized => StatusCode::NOT_FOUND,
            ErrCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
            ErrCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrCode::BadStatus | ErrCode::ConnectionFailed => StatusCode::BAD_GATEWAY,
            ErrCode::ConnectionTimeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error response. Build with the named constructors.
#[derive(Debug, Clone)]
pub struct MatrixError {
    pub status: StatusCode,
    pub code: ErrCode,
    pub message: String,
    /// More fields for the body (e.g. `soft_logout`, UIA flows).
    pub extra: Option<Box<Map<String, Value>>>,
}

impl std::fmt::Display for MatrixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code.as_str(), self.message)
    }
}

impl std::error::Error for MatrixError {}

impl MatrixError {
    pub fn new(code: ErrCode, message: impl Into<String>) -> Self {
        MatrixError {
            status: code.default_status(),
            code,
            message: message.into(),
            extra: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_field(mut self, key: &str, value: Value) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value);
        self
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrCode::NotFound, message)
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(ErrCode::BadJson, message)
    }
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(ErrCode::NotJson, message)
    }
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(ErrCode::InvalidParam, message)
    }
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::new(ErrCode::MissingParam, message)
    }
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(ErrCode::Unknown, message)
    }
    pub fn unrecognized(message: impl Into<String>) -> Self {
        Self::new(ErrCode::Unrecognized, message)
    }
    /// Another server's error, relayed as it was: its status, and every
    /// field of its body (its `errcode`, which may be one this server
    /// does not know, and `error` among them). `None` when the body is
    /// not a Matrix error.
    pub fn relayed(status: StatusCode, body: &str) -> Option<Self> {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(body) else {
            return None;
        };
        if !fields.get("errcode").is_some_and(Value::is_string) {
            return None;
        }
        let message = fields
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut error = Self::new(ErrCode::Unknown, message).with_status(status);
        // `body` writes the extra fields last: the remote's errcode wins.
        error.extra = Some(Box::new(fields));
        Some(error)
    }

    /// An internal failure: logged in full, answered without details.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        Self::new(ErrCode::Unknown, format!("internal error: {context}"))
    }

    pub fn body(&self) -> Value {
        let mut body = Map::new();
        // A user-interactive-auth challenge (with `flows`) is not an error
        // in itself and carries no errcode.
        if !self.extra.as_ref().is_some_and(|e| e.contains_key("flows")) {
            body.insert("errcode".to_owned(), json!(self.code.as_str()));
            body.insert("error".to_owned(), json!(self.message));
        }
        if let Some(extra) = &self.extra {
            body.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Value::Object(body)
    }
}

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.status, axum::Json(&body)).into_response();
        // The server's administrator's contact is added by the listener
        // (`crate::server`), which has the configuration.
        if self.code == ErrCode::ResourceLimitExceeded {
            response.extensions_mut().insert(ResourceLimitBody(body));
        }
        // `Retry-After` (whole seconds) beside `retry_after_ms`, as the
        // spec recommends since v1.10.
        if let Some(ms) = self
            .extra
            .as_ref()
            .and_then(|e| e.get("retry_after_ms"))
            .and_then(Value::as_u64)
        {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(ms.div_ceil(1000)));
        }
        response
    }
}

/// The body of an `M_RESOURCE_LIMIT_EXCEEDED` answer, which must also
/// give `admin_contact`: kept with the response for the listener to add it.
#[derive(Clone, Debug)]
pub struct ResourceLimitBody(pub Value);

impl From<crate::storage::StorageError> for MatrixError {
    fn from(e: crate::storage::StorageError) -> Self {
        match e {
            // The database server is down or restarting: the request may
            // be tried again in a moment.
            crate::storage::StorageError::Unavailable(_) => {
                tracing::warn!(error = %e, "storage unavailable");
                MatrixError::unknown("The database is unavailable; try again shortly")
                    .with_status(StatusCode::SERVICE_UNAVAILABLE)
            }
            crate::storage::StorageError::DiskFull(_) => disk_full(&e),
            e => MatrixError::internal("storage", e),
        }
    }
}

/// A write refused because the server's disk is full:
/// `507 M_RESOURCE_LIMIT_EXCEEDED` (the spec's code for a server out of a
/// resource, disk space its example), which clients show as such.
pub fn disk_full(cause: &dyn std::fmt::Display) -> MatrixError {
    tracing::error!(error = %cause, "disk full: writes are refused until space is freed");
    MatrixError::new(
        ErrCode::ResourceLimitExceeded,
        "The server's disk is full: nothing can be stored until its administrator frees space",
    )
    .with_status(StatusCode::INSUFFICIENT_STORAGE)
}
