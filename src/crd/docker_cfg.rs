use std::{borrow::Cow, collections::BTreeMap, fmt};

use base64::{Engine, engine::general_purpose::STANDARD};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// `spec.registry.dockerCfg`: base64 of a docker `config.json` (raw JSON is accepted too).
/// Its `Debug` never prints the content, so it is safe inside any logged struct.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DockerCfg(String);

/// What the operator sends to one registry host. `Debug` prints the kind and user, never a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryCredentials {
    Anonymous,
    Basic { username: String, password: String },
    Bearer(String),
}

/// Why a dockerCfg cannot be used. Messages never quote the secret itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DockerCfgError {
    #[error("dockerCfg is neither base64 nor JSON")]
    NotBase64,
    #[error("dockerCfg is not a docker config.json: {0}")]
    NotJson(String),
    #[error("no credentials for {host} in the dockerCfg")]
    NoEntryForHost { host: String },
    #[error("the dockerCfg entry for {host} has an `auth` that is not base64 of user:password")]
    BadAuthField { host: String },
    #[error("the dockerCfg entry for {host} has neither username/password, auth nor a token")]
    EmptyEntry { host: String },
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    username: Option<String>,
    password: Option<String>,
    auth: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

impl DockerCfg {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// The credentials for `host` (`name[:port]`, as in the repo). An empty dockerCfg means
    /// anonymous access; a non-empty one without an entry for the host is an error, because a
    /// silent anonymous fallback would hide a typo behind a confusing `unauthorized`.
    pub fn credentials_for(&self, host: &str) -> Result<RegistryCredentials, DockerCfgError> {
        if self.is_empty() {
            return Ok(RegistryCredentials::Anonymous);
        }
        let config = self.parse()?;
        let entry = config
            .auths
            .into_iter()
            .find(|(key, _)| auth_key_host(key).eq_ignore_ascii_case(host))
            .map(|(_, entry)| entry)
            .ok_or_else(|| DockerCfgError::NoEntryForHost {
                host: host.to_owned(),
            })?;
        entry.into_credentials(host)
    }

    fn parse(&self) -> Result<ConfigJson, DockerCfgError> {
        let text = self.0.trim();
        let json = if text.starts_with('{') {
            text.as_bytes().to_vec()
        } else {
            let compact: String = text.split_whitespace().collect();
            STANDARD
                .decode(compact)
                .map_err(|_| DockerCfgError::NotBase64)?
        };
        // serde_json's message names a line and column, never the content, so it is safe to show.
        serde_json::from_slice(&json).map_err(|e| DockerCfgError::NotJson(e.to_string()))
    }
}

impl AuthEntry {
    fn into_credentials(self, host: &str) -> Result<RegistryCredentials, DockerCfgError> {
        if let Some(token) = self.registrytoken.filter(|t| !t.is_empty()) {
            return Ok(RegistryCredentials::Bearer(token));
        }
        if let Some(token) = self.identitytoken.filter(|t| !t.is_empty()) {
            // Docker sends an identity token as the password of a token request.
            let username = self.username.unwrap_or_else(|| "<token>".to_owned());
            return Ok(RegistryCredentials::Basic {
                username,
                password: token,
            });
        }
        if let (Some(username), Some(password)) = (self.username.clone(), self.password) {
            return Ok(RegistryCredentials::Basic { username, password });
        }
        if let Some(auth) = self.auth.filter(|a| !a.is_empty()) {
            return decode_auth_field(&auth).ok_or_else(|| DockerCfgError::BadAuthField {
                host: host.to_owned(),
            });
        }
        Err(DockerCfgError::EmptyEntry {
            host: host.to_owned(),
        })
    }
}

fn decode_auth_field(auth: &str) -> Option<RegistryCredentials> {
    let decoded = STANDARD.decode(auth.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(RegistryCredentials::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// `https://registry.example.com:5000/v1/` → `registry.example.com:5000`.
fn auth_key_host(key: &str) -> &str {
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    without_scheme.split('/').next().unwrap_or(without_scheme)
}

impl fmt::Debug for DockerCfg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            f.write_str("DockerCfg(empty)")
        } else {
            write!(f, "DockerCfg(<redacted {} bytes>)", self.0.len())
        }
    }
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl JsonSchema for DockerCfg {
    fn schema_name() -> Cow<'static, str> {
        "DockerCfg".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "Base64 of a docker config.json ({\"auths\": {\"host:port\": {...}}}); empty means anonymous access."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> DockerCfg {
        DockerCfg::new(STANDARD.encode(json))
    }

    fn basic(u: &str, p: &str) -> RegistryCredentials {
        RegistryCredentials::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn picks_the_entry_of_the_host_with_port_ignoring_scheme_and_path() {
        let c = cfg(r#"{"auths":{"other:5000":{"username":"x","password":"y"},
            "https://127.0.0.1:5000/v1/":{"username":"tester","password":"s3cret"}}}"#);
        assert_eq!(
            c.credentials_for("127.0.0.1:5000"),
            Ok(basic("tester", "s3cret"))
        );
    }

    #[test]
    fn decodes_the_auth_field_and_accepts_raw_json() {
        let auth = STANDARD.encode("tester:pa:ss");
        let c = DockerCfg::new(format!(
            r#"{{"auths":{{"r.example":{{"auth":"{auth}"}}}}}}"#
        ));
        assert_eq!(c.credentials_for("r.example"), Ok(basic("tester", "pa:ss")));
    }

    #[test]
    fn uses_tokens() {
        let c = cfg(r#"{"auths":{"r":{"registrytoken":"tok"}}}"#);
        assert_eq!(
            c.credentials_for("r"),
            Ok(RegistryCredentials::Bearer("tok".into()))
        );
    }

    #[test]
    fn empty_is_anonymous_and_missing_host_is_an_error() {
        assert_eq!(
            DockerCfg::default().credentials_for("r"),
            Ok(RegistryCredentials::Anonymous)
        );
        assert_eq!(
            cfg(r#"{"auths":{}}"#).credentials_for("r:1"),
            Err(DockerCfgError::NoEntryForHost { host: "r:1".into() })
        );
        assert_eq!(
            DockerCfg::new("%%%").credentials_for("r"),
            Err(DockerCfgError::NotBase64)
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = cfg(r#"{"auths":{"r":{"username":"u","password":"hunter2"}}}"#);
        let creds = c.credentials_for("r").expect("entry");
        for text in [format!("{c:?}"), format!("{creds:?}")] {
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
}
