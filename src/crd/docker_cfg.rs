use std::{borrow::Cow, collections::BTreeMap, fmt};

use base64::{Engine, engine::general_purpose::STANDARD};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::registry::RegistryCredentials;

/// `spec.registry.dockerCfg`: base64 of a docker `config.json` (raw JSON is accepted too).
/// Its `Debug` never prints the content, so it is safe inside any logged struct.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DockerCfg(String);

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
    #[error(
        "a credential helper name in the docker config is not a plain name (letters, digits, - _ .)"
    )]
    BadHelperName,
}

struct ConfigJson {
    auths: BTreeMap<String, AuthEntry>,
    /// `credsStore`: the helper for every host without a `credHelpers` entry.
    creds_store: Option<String>,
    /// `credHelpers`: host → helper name.
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Default)]
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
        let mut auths = self.parse()?.auths;
        // An exact host first; then Docker Hub's names for each other (`docker login` writes
        // `https://index.docker.io/v1/`, repos say `docker.io/…` or `registry-1.docker.io/…`).
        let key = auths
            .keys()
            .find(|key| auth_key_host(key).eq_ignore_ascii_case(host))
            .or_else(|| {
                auths
                    .keys()
                    .find(|key| is_docker_hub(auth_key_host(key)) && is_docker_hub(host))
            })
            .cloned()
            .ok_or_else(|| DockerCfgError::NoEntryForHost {
                host: host.to_owned(),
            })?;
        match auths.remove(&key) {
            Some(entry) => entry.into_credentials(host),
            None => Err(DockerCfgError::NoEntryForHost {
                host: host.to_owned(),
            }),
        }
    }

    /// The credential helper docker would ask for `host` (`credHelpers[host]`, else
    /// `credsStore`), as the name after `docker-credential-`. Only the CLI runs helpers: the
    /// operator never executes anything a dockerCfg names.
    pub fn credential_helper_for(&self, host: &str) -> Result<Option<String>, DockerCfgError> {
        if self.is_empty() {
            return Ok(None);
        }
        let config = self.parse()?;
        let helper = config
            .cred_helpers
            .iter()
            .find(|(key, _)| auth_key_host(key).eq_ignore_ascii_case(host))
            .map(|(_, helper)| helper.clone())
            .or(config.creds_store)
            .filter(|helper| !helper.is_empty());
        match helper {
            Some(name) if !is_helper_name(&name) => Err(DockerCfgError::BadHelperName),
            other => Ok(other),
        }
    }

    /// What docker sends a credential helper for `host`: Docker Hub's legacy index URL, as
    /// `docker login` stored it, else the host itself.
    pub fn helper_server_url(host: &str) -> String {
        if is_docker_hub(host) {
            "https://index.docker.io/v1/".to_owned()
        } else {
            host.to_owned()
        }
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
        // Only the position of a syntax error is reported: serde_json's own messages quote
        // values ("invalid type: string \"dXNlcjpw…\""), which would put a password in the status.
        let value: Value = serde_json::from_slice(&json).map_err(|e| {
            DockerCfgError::NotJson(format!(
                "invalid JSON at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        config_from_value(&value)
    }
}

impl AuthEntry {
    fn into_credentials(self, host: &str) -> Result<RegistryCredentials, DockerCfgError> {
        if let Some(token) = self.registrytoken.filter(|t| !t.is_empty()) {
            return Ok(RegistryCredentials::Bearer(token));
        }
        if let Some(token) = self.identitytoken.filter(|t| !t.is_empty()) {
            // An OAuth2 refresh token for the registry's token server (see registry::auth).
            return Ok(RegistryCredentials::IdentityToken {
                username: self.username.filter(|u| !u.is_empty()),
                token,
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

/// The docker config from parsed JSON, checked by hand so that a wrong-typed value is reported by
/// its place and expected type, never by its content (often a base64 `user:password`).
fn config_from_value(value: &Value) -> Result<ConfigJson, DockerCfgError> {
    let root = value
        .as_object()
        .ok_or_else(|| shape("the top level", "an object"))?;
    let creds_store = match root.get("credsStore") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name.clone()),
        Some(_) => return Err(shape("\"credsStore\"", "a string")),
    };
    let cred_helpers = helpers_from(root.get("credHelpers"))?;
    let Some(auths) = root.get("auths").filter(|a| !a.is_null()) else {
        return Ok(ConfigJson {
            auths: BTreeMap::new(),
            creds_store,
            cred_helpers,
        });
    };
    let auths = auths
        .as_object()
        .ok_or_else(|| shape("\"auths\"", "an object"))?;
    let total = auths.len();
    let mut out = BTreeMap::new();
    for (index, (host, entry)) in auths.iter().enumerate() {
        let place = format!("auths entry {} of {total}", index + 1);
        let entry = entry
            .as_object()
            .ok_or_else(|| shape(&place, "an object"))?;
        let field = |name: &str| -> Result<Option<String>, DockerCfgError> {
            match entry.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(_) => Err(shape(&format!("{place}: {name:?}"), "a string")),
            }
        };
        let parsed = AuthEntry {
            username: field("username")?,
            password: field("password")?,
            auth: field("auth")?,
            identitytoken: field("identitytoken")?,
            registrytoken: field("registrytoken")?,
        };
        out.insert(host.clone(), parsed);
    }
    Ok(ConfigJson {
        auths: out,
        creds_store,
        cred_helpers,
    })
}

fn helpers_from(value: Option<&Value>) -> Result<BTreeMap<String, String>, DockerCfgError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(BTreeMap::new());
    };
    let helpers = value
        .as_object()
        .ok_or_else(|| shape("\"credHelpers\"", "an object"))?;
    helpers
        .iter()
        .map(|(host, helper)| match helper {
            Value::String(name) => Ok((host.clone(), name.clone())),
            _ => Err(shape("a \"credHelpers\" entry", "a string")),
        })
        .collect()
}

/// A helper name becomes part of a program name (`docker-credential-<name>`): no path
/// separators or anything else that could name another program.
fn is_helper_name(name: &str) -> bool {
    !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn shape(place: &str, expected: &str) -> DockerCfgError {
    DockerCfgError::NotJson(format!("{place} is not {expected}"))
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

const DOCKER_HUB_HOSTS: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_HOSTS
        .iter()
        .any(|hub| hub.eq_ignore_ascii_case(host))
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
    #[test]
    fn the_helper_for_a_host_is_its_cred_helper_else_the_store() {
        let cfg = DockerCfg::new(
            r#"{"auths":{"ghcr.io":{}},"credsStore":"desktop","credHelpers":{"123.dkr.ecr.eu-west-1.amazonaws.com":"ecr-login","https://gcr.io":"gcloud"}}"#,
        );
        let helper = |host| cfg.credential_helper_for(host).expect("parses");
        assert_eq!(helper("ghcr.io").as_deref(), Some("desktop"));
        assert_eq!(
            helper("123.dkr.ecr.eu-west-1.amazonaws.com").as_deref(),
            Some("ecr-login")
        );
        assert_eq!(helper("GCR.io").as_deref(), Some("gcloud"));
        let plain = DockerCfg::new(r#"{"auths":{"r.example":{"auth":"dTpw"}}}"#);
        assert_eq!(
            plain.credential_helper_for("r.example").expect("parses"),
            None
        );
        for bad in [
            r#"{"credsStore":"../../bin/sh"}"#,
            r#"{"credsStore":".hidden"}"#,
        ] {
            assert!(matches!(
                DockerCfg::new(bad).credential_helper_for("r.example"),
                Err(DockerCfgError::BadHelperName)
            ));
        }
        assert!(matches!(
            DockerCfg::new(r#"{"credHelpers":{"r":1}}"#).credential_helper_for("r"),
            Err(DockerCfgError::NotJson(_))
        ));
        assert_eq!(
            DockerCfg::helper_server_url("docker.io"),
            "https://index.docker.io/v1/"
        );
        assert_eq!(DockerCfg::helper_server_url("ghcr.io"), "ghcr.io");
    }

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
    fn docker_hubs_login_key_serves_its_other_names() {
        let c = cfg(r#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"}}}"#);
        for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(c.credentials_for(host), Ok(basic("u", "p")), "{host}");
        }
        assert!(c.credentials_for("ghcr.io").is_err());
        // An exact entry wins over the alias.
        let both = cfg(
            r#"{"auths":{"https://index.docker.io/v1/":{"username":"a","password":"1"},"registry-1.docker.io":{"username":"b","password":"2"}}}"#,
        );
        assert_eq!(
            both.credentials_for("registry-1.docker.io"),
            Ok(basic("b", "2"))
        );
        assert_eq!(both.credentials_for("docker.io"), Ok(basic("a", "1")));
    }

    #[test]
    fn an_identity_token_is_a_refresh_token() {
        let c = cfg(r#"{"auths":{"r":{"username":"u","identitytoken":"refresh"}}}"#);
        assert_eq!(
            c.credentials_for("r"),
            Ok(RegistryCredentials::IdentityToken {
                username: Some("u".into()),
                token: "refresh".into()
            })
        );
        assert!(!format!("{:?}", c.credentials_for("r")).contains("refresh"));
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

#[cfg(test)]
mod no_secret_in_errors {
    //! Whatever shape a dockerCfg has, its content never reaches an error message.
    use super::*;
    use proptest::prelude::*;

    const MARKER: &str = "S3CRETmarker";

    /// JSON values that carry the marker wherever a value or key can be.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::String(MARKER.into())),
            Just(Value::String(STANDARD.encode(format!("user:{MARKER}")))),
            Just(Value::Bool(true)),
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(MARKER.to_owned()),
            Just("auths".to_owned()),
            Just("auth".to_owned()),
            Just("username".to_owned()),
            Just("password".to_owned()),
            Just("identitytoken".to_owned()),
            Just("registrytoken".to_owned()),
            Just("r.example".to_owned()),
        ]
    }

    /// Configs of the right outline with wrong-typed or marker-filled parts.
    fn config() -> impl Strategy<Value = Value> {
        prop_oneof![
            value(),
            value().prop_map(|v| serde_json::json!({ "auths": v })),
            value().prop_map(|v| serde_json::json!({ "auths": { "r.example": v } })),
            (key(), value())
                .prop_map(|(k, v)| { serde_json::json!({ "auths": { "r.example": { k: v } } }) }),
        ]
    }

    proptest! {
        #[test]
        fn the_marker_never_appears_in_an_error(config in config(), cut in 0usize..200, raw in any::<bool>()) {
            let text = config.to_string();
            // Whole, and cut short (a syntax error mid-value).
            for candidate in [text.clone(), text.chars().take(cut).collect()] {
                let encoded = if raw { candidate.clone() } else { STANDARD.encode(&candidate) };
                if let Err(e) = DockerCfg::new(encoded).credentials_for("r.example") {
                    let message = e.to_string();
                    prop_assert!(!message.contains(MARKER), "{message}");
                    prop_assert!(!message.contains(&STANDARD.encode(format!("user:{MARKER}"))), "{message}");
                }
            }
        }
    }

    #[test]
    fn a_bare_string_entry_names_its_place() {
        let cfg = DockerCfg::new(format!(r#"{{"auths":{{"r.example":"{MARKER}"}}}}"#));
        let message = cfg
            .credentials_for("r.example")
            .expect_err("refused")
            .to_string();
        assert_eq!(
            message,
            "dockerCfg is not a docker config.json: auths entry 1 of 1 is not an object"
        );
    }
}
