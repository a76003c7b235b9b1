//! Application service registrations: the YAML files of the application
//! service API ("Registration"), read at start. A file that cannot be read
//! or makes no sense stops the server with an error naming it.

use std::path::{Path, PathBuf};

use regex::Regex;
use ruma::{OwnedUserId, RoomAliasId, RoomId, ServerName, UserId};
use serde::Deserialize;

/// Why the registrations could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("application service registration {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("application service registration {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A registration file as written.
#[derive(Debug, Deserialize)]
struct RegistrationFile {
    id: String,
    url: Option<String>,
    as_token: String,
    hs_token: String,
    sender_localpart: String,
    #[serde(default)]
    namespaces: NamespacesFile,
    #[serde(default)]
    rate_limited: Option<bool>,
    #[serde(default)]
    protocols: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct NamespacesFile {
    #[serde(default)]
    users: Option<Vec<NamespaceFile>>,
    #[serde(default)]
    aliases: Option<Vec<NamespaceFile>>,
    #[serde(default)]
    rooms: Option<Vec<NamespaceFile>>,
}

#[derive(Debug, Deserialize)]
struct NamespaceFile {
    regex: String,
    exclusive: bool,
}

/// One namespace: a regular expression (matched from the start of the ID,
/// as Synapse does) and whether the application service has it alone.
#[derive(Debug, Clone)]
pub struct Namespace {
    regex: Regex,
    pub exclusive: bool,
}

impl Namespace {
    fn matches(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

/// A loaded registration.
#[derive(Debug, Clone)]
pub struct Registration {
    pub id: String,
    /// Where the application service listens; none: it is sent nothing.
    pub url: Option<String>,
    /// The token the application service authenticates with.
    pub as_token: String,
    /// The token this server authenticates with to the application service.
    pub hs_token: String,
    /// The application service's own user.
    pub sender: OwnedUserId,
    pub users: Vec<Namespace>,
    pub aliases: Vec<Namespace>,
    pub rooms: Vec<Namespace>,
    pub rate_limited: bool,
    pub protocols: Vec<String>,
}

fn any_match(namespaces: &[Namespace], value: &str, exclusive_only: bool) -> bool {
    namespaces
        .iter()
        .any(|n| (!exclusive_only || n.exclusive) && n.matches(value))
}

impl Registration {
    /// Whether `user` is the application service's own user or in its user
    /// namespaces: a user it may act as.
    pub fn is_user_in_namespace(&self, user: &UserId) -> bool {
        *user == self.sender || any_match(&self.users, user.as_str(), false)
    }

    /// Whether `user` is in one of its exclusive user namespaces.
    pub fn is_exclusive_user(&self, user: &UserId) -> bool {
        *user == self.sender || any_match(&self.users, user.as_str(), true)
    }

    pub fn is_alias_in_namespace(&self, alias: &RoomAliasId) -> bool {
        any_match(&self.aliases, alias.as_str(), false)
    }

    pub fn is_exclusive_alias(&self, alias: &RoomAliasId) -> bool {
        any_match(&self.aliases, alias.as_str(), true)
    }

    pub fn is_room_in_namespace(&self, room_id: &RoomId) -> bool {
        any_match(&self.rooms, room_id.as_str(), false)
    }
}

fn namespaces(path: &Path, kind: &str, list: Option<Vec<NamespaceFile>>) -> Result<Vec<Namespace>, RegistrationError> {
    list.unwrap_or_default()
        .into_iter()
        .map(|n| {
            Regex::new(&format!("^(?:{})", n.regex))
                .map(|regex| Namespace {
                    regex,
                    exclusive: n.exclusive,
                })
                .map_err(|e| RegistrationError::Invalid {
                    path: path.to_owned(),
                    message: format!("namespaces.{kind}: bad regex {:?}: {e}", n.regex),
                })
        })
        .collect()
}

/// Parses one registration (YAML; JSON is YAML too).
pub fn parse(path: &Path, text: &str, server_name: &ServerName) -> Result<Registration, RegistrationError> {
    let invalid = |message: String| RegistrationError::Invalid {
        path: path.to_owned(),
        message,
    };
    let file: RegistrationFile = serde_norway::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if file.id.is_empty() || file.as_token.is_empty() || file.hs_token.is_empty() {
        return Err(invalid("id, as_token and hs_token must not be empty".to_owned()));
    }
    let sender = UserId::parse_with_server_name(file.sender_localpart.as_str(), server_name)
        .map_err(|e| invalid(format!("sender_localpart {:?}: {e}", file.sender_localpart)))?;
    let url = file.url.filter(|u| !u.is_empty());
    if let Some(url) = &url
        && reqwest::Url::parse(url).is_err()
    {
        return Err(invalid(format!("url {url:?} is not a URL")));
    }
    Ok(Registration {
        users: namespaces(path, "users", file.namespaces.users)?,
        aliases: namespaces(path, "aliases", file.namespaces.aliases)?,
        rooms: namespaces(path, "rooms", file.namespaces.rooms)?,
        id: file.id,
        url,
        as_token: file.as_token,
        hs_token: file.hs_token,
        sender,
        rate_limited: file.rate_limited.unwrap_or(true),
        protocols: file.protocols.unwrap_or_default(),
    })
}

/// Reads every registration file; two with the same ID or `as_token` are
/// refused.
pub fn load(paths: &[PathBuf], server_name: &ServerName) -> Result<Vec<Registration>, RegistrationError> {
    let mut loaded: Vec<Registration> = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| RegistrationError::Read {
            path: path.clone(),
            source,
        })?;
        let registration = parse(path, &text, server_name)?;
        if loaded
            .iter()
            .any(|r| r.id == registration.id || r.as_token == registration.as_token)
        {
            return Err(RegistrationError::Invalid {
                path: path.clone(),
                message: format!(
                    "id {:?} or its as_token is used by another registration",
                    registration.id
                ),
            });
        }
        loaded.push(registration);
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYTEST_STYLE: &str = r#"---
as_token: "ab[c\\d"
hs_token: hs-secret
id: AS-1
namespaces:
  aliases:
  - exclusive: true
    regex: '#astest-.*'
  rooms: []
  users:
  - exclusive: false
    regex: '@_.*:example.org'
  - exclusive: true
    regex: '@astest-.*'
protocols:
- ymca
sender_localpart: as-user-1
url: https://127.0.0.1:4000/appservs/1
"#;

    fn server() -> &'static ServerName {
        "example.org".try_into().unwrap()
    }

    #[test]
    fn parses_a_registration_and_matches_namespaces() {
        let r = parse(Path::new("a.yaml"), SYTEST_STYLE, server()).unwrap();
        assert_eq!(r.id, "AS-1");
        assert_eq!(r.as_token, "ab[c\\d");
        assert_eq!(r.sender, "@as-user-1:example.org");
        assert_eq!(r.protocols, ["ymca"]);
        let user = |s: &str| UserId::parse(s).unwrap();
        assert!(r.is_exclusive_user(&user("@astest-1:example.org")));
        assert!(r.is_user_in_namespace(&user("@_bridged:example.org")));
        assert!(!r.is_exclusive_user(&user("@_bridged:example.org")));
        assert!(!r.is_user_in_namespace(&user("@alice:example.org")));
        assert!(r.is_exclusive_user(&user("@as-user-1:example.org")));
        let alias = |s: &str| RoomAliasId::parse(s).unwrap();
        assert!(r.is_exclusive_alias(&alias("#astest-room:example.org")));
        assert!(!r.is_alias_in_namespace(&alias("#room:example.org")));
    }

    #[test]
    fn bad_registrations_are_refused_with_the_reason() {
        let err = parse(Path::new("b.yaml"), "id: x\n", server()).unwrap_err();
        assert!(err.to_string().contains("b.yaml"), "{err}");
        assert!(err.to_string().contains("as_token"), "{err}");
        let bad_regex = SYTEST_STYLE.replace("'#astest-.*'", "'#astest-(.*'");
        let err = parse(Path::new("c.yaml"), &bad_regex, server()).unwrap_err();
        assert!(err.to_string().contains("namespaces.aliases"), "{err}");
        let err = load(&[PathBuf::from("/nonexistent/as.yaml")], server()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/as.yaml"), "{err}");
    }
}
