//! Requests to identity servers (the identity service API, v2), on behalf
//! of a user who named one and gave its access token: who a third-party
//! identifier (an email address) is bound to (`hash_details` then
//! `lookup`, hashed with the server's pepper), and storing an invite for an
//! unbound one (`store-invite`); binding a validated 3PID to a user
//! (`3pid/bind`, with the user's token) and unbinding it (`3pid/unbind`,
//! a request of this server signed with its key, `X-Matrix`, as the spec
//! says of a homeserver's unbind). Identity servers are reached over HTTPS;
//! their certificates are checked as other servers' are
//! (`federation_verify_tls`).

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::MatrixError;

/// A client for identity servers.
#[derive(Clone)]
pub struct IdentityClient {
    http: reqwest::Client,
}

/// What an identity server answered `store-invite`.
#[derive(Debug, Clone, Deserialize)]
pub struct StoredInvite {
    pub token: String,
    pub display_name: String,
    pub public_key: Option<String>,
    #[serde(default)]
    pub public_keys: Vec<PublicKey>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct PublicKey {
    pub public_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_validity_url: Option<String>,
}

/// The room an invite is stored for, as the identity server shows it in
/// the invitation it sends.
#[derive(Debug, Default)]
pub struct InviteDetails {
    pub room_id: String,
    pub sender: String,
    pub medium: String,
    pub address: String,
    pub room_name: Option<String>,
    pub room_avatar_url: Option<String>,
    pub room_join_rules: Option<String>,
    pub room_alias: Option<String>,
    pub sender_display_name: Option<String>,
    pub sender_avatar_url: Option<String>,
}

#[derive(Deserialize)]
struct HashDetails {
    #[serde(default)]
    algorithms: Vec<String>,
    lookup_pepper: String,
}

#[derive(Deserialize)]
struct Lookup {
    #[serde(default)]
    mappings: serde_json::Map<String, Value>,
}

impl IdentityClient {
    pub fn new(verify_tls: bool) -> IdentityClient {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(!verify_tls)
            // SyTest's identity server takes one request per connection.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        IdentityClient { http }
    }

    /// The Matrix user `address` (of `medium`) is bound to, if any.
    pub async fn lookup(
        &self,
        id_server: &str,
        token: &str,
        medium: &str,
        address: &str,
    ) -> Result<Option<ruma::OwnedUserId>, MatrixError> {
        let details: HashDetails = self.get(id_server, "hash_details", token).await?;
        let (algorithm, hashed) = if details.algorithms.iter().any(|a| a == "sha256") {
            let digest = Sha256::digest(format!("{address} {medium} {}", details.lookup_pepper).as_bytes());
            let hashed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
            ("sha256", hashed)
        } else if details.algorithms.iter().any(|a| a == "none") {
            ("none", format!("{address} {medium}"))
        } else {
            return Err(MatrixError::unknown(format!(
                "identity server {id_server} offers no lookup algorithm this server knows"
            ))
            .with_status(http::StatusCode::BAD_GATEWAY));
        };
        let body = json!({
            "addresses": [hashed],
            "algorithm": algorithm,
            "pepper": details.lookup_pepper,
        });
        let answer: Lookup = self.post(id_server, "lookup", token, &body).await?;
        Ok(answer
            .mappings
            .get(&hashed)
            .and_then(Value::as_str)
            .and_then(|id| ruma::UserId::parse(id).ok()))
    }

    /// Stores an invite for an unbound address (`store-invite`).
    pub async fn store_invite(
        &self,
        id_server: &str,
        token: &str,
        details: &InviteDetails,
    ) -> Result<StoredInvite, MatrixError> {
        let mut body = json!({
            "medium": details.medium,
            "address": details.address,
            "room_id": details.room_id,
            "sender": details.sender,
        });
        let optional = [
            ("room_name", &details.room_name),
            ("room_avatar_url", &details.room_avatar_url),
            ("room_join_rules", &details.room_join_rules),
            ("room_alias", &details.room_alias),
            ("sender_display_name", &details.sender_display_name),
            ("sender_avatar_url", &details.sender_avatar_url),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                body[key] = json!(value);
            }
        }
        self.post(id_server, "store-invite", token, &body).await
    }

    /// Binds the 3PID the identity server validated in session `sid` to
    /// `mxid` (`3pid/bind`); the 3PID bound (medium, address). An answer
    /// that binds it to someone else is refused.
    pub async fn bind(
        &self,
        id_server: &str,
        token: &str,
        sid: &str,
        client_secret: &str,
        mxid: &ruma::UserId,
    ) -> Result<(String, String), MatrixError> {
        #[derive(Deserialize)]
        struct Bound {
            medium: String,
            address: String,
            mxid: String,
        }
        let body = json!({"sid": sid, "client_secret": client_secret, "mxid": mxid});
        let bound: Bound = self.post(id_server, "3pid/bind", token, &body).await?;
        if bound.mxid != mxid.as_str() {
            return Err(MatrixError::unknown(format!(
                "identity server {id_server} bound the 3PID to {} instead",
                bound.mxid
            ))
            .with_status(http::StatusCode::BAD_GATEWAY));
        }
        Ok((bound.medium, bound.address))
    }

    /// Asks `id_server` to unbind `medium`/`address` from `mxid`
    /// (`3pid/unbind`), signed by this server (`keys`). `Ok(true)`: it
    /// did; `Ok(false)`: it does not do this (it answered 400, 404 or
    /// 501, as servers without unbinding, or with nothing bound, do).
    pub async fn unbind(
        &self,
        keys: &crate::keys::ServerKeys,
        id_server: &str,
        mxid: &ruma::UserId,
        medium: &str,
        address: &str,
    ) -> Result<bool, MatrixError> {
        use ruma::api::{
            auth_scheme::AuthScheme as _,
            federation::authentication::{ServerSignatures, XMatrixSigningInput},
        };
        let url = endpoint_url(id_server, "3pid/unbind")?;
        let destination = ruma::ServerName::parse(id_server)
            .map_err(|_| MatrixError::invalid_param(format!("id_server {id_server:?} is not a server name")))?;
        let body = json!({"mxid": mxid, "threepid": {"medium": medium, "address": address}});
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).expect("JSON values serialise"))
            .map_err(|e| MatrixError::internal("building an unbind request", e))?;
        let input = XMatrixSigningInput::new(keys.server_name().clone(), destination, keys.key_pair());
        ServerSignatures::add_authentication(&mut request, input)
            .map_err(|e| MatrixError::internal("signing an unbind request", e))?;
        let request = reqwest::Request::try_from(request).map_err(|e| MatrixError::internal("unbind request", e))?;
        let unreachable = |e: String| {
            MatrixError::unknown(format!("identity server {id_server}: {e}")).with_status(http::StatusCode::BAD_GATEWAY)
        };
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(true);
        }
        if [400, 404, 501].contains(&status.as_u16()) {
            tracing::info!(%id_server, %status, "identity server did not unbind");
            return Ok(false);
        }
        Err(unreachable(format!("answered {status} to unbind")))
    }

    /// Whether the identity server says `public_key` is still valid (its
    /// `key_validity_url`); `false` when it cannot be asked.
    pub async fn key_is_valid(&self, url: &str, public_key: &str) -> bool {
        let Ok(mut url) = reqwest::Url::parse(url) else {
            return false;
        };
        if url.scheme() != "https" {
            return false;
        }
        url.query_pairs_mut().append_pair("public_key", public_key);
        match answer::<Value>(url.host_str().unwrap_or_default(), self.http.get(url.clone())).await {
            Ok(body) => body.get("valid").and_then(Value::as_bool) == Some(true),
            Err(e) => {
                tracing::info!(%url, error = %e.body(), "key validity not confirmed");
                false
            }
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        id_server: &str,
        endpoint: &str,
        token: &str,
    ) -> Result<T, MatrixError> {
        let url = endpoint_url(id_server, endpoint)?;
        let request = self.http.get(url).bearer_auth(token);
        answer(id_server, request).await
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        id_server: &str,
        endpoint: &str,
        token: &str,
        body: &Value,
    ) -> Result<T, MatrixError> {
        let url = endpoint_url(id_server, endpoint)?;
        let request = self.http.post(url).bearer_auth(token).json(body);
        answer(id_server, request).await
    }
}

/// `https://{id_server}/_matrix/identity/v2/{endpoint}`; `id_server` is a
/// host with an optional port, nothing more.
fn endpoint_url(id_server: &str, endpoint: &str) -> Result<reqwest::Url, MatrixError> {
    let bad = || MatrixError::invalid_param(format!("id_server {id_server:?} is not a server name"));
    if id_server.is_empty() || id_server.contains(['/', '?', '#', '@']) {
        return Err(bad());
    }
    let url = reqwest::Url::parse(&format!("https://{id_server}/_matrix/identity/v2/{endpoint}")).map_err(|_| bad())?;
    Ok(url)
}

/// The identity server's answer as `T`; its Matrix errors are passed on
/// (an unauthorised token stays a 401/403), anything else is a 502.
async fn answer<T: serde::de::DeserializeOwned>(
    id_server: &str,
    request: reqwest::RequestBuilder,
) -> Result<T, MatrixError> {
    let unreachable = |e: String| {
        MatrixError::unknown(format!("identity server {id_server}: {e}")).with_status(http::StatusCode::BAD_GATEWAY)
    };
    let response = request.send().await.map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| unreachable(e.to_string()))?;
    if !status.is_success() {
        if let Some(error) = MatrixError::relayed(status, &body) {
            // The identity server's token is not this server's: its 401
            // must not read as the user's session having ended.
            let status = if status == http::StatusCode::UNAUTHORIZED {
                http::StatusCode::FORBIDDEN
            } else {
                status
            };
            return Err(error.with_status(status));
        }
        return Err(unreachable(format!("answered {status}")));
    }
    serde_json::from_str(&body).map_err(|e| unreachable(format!("unexpected answer: {e}")))
}
