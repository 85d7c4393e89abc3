//! Registry authentication as registries ask for it: the `WWW-Authenticate` challenge of the
//! 401 a request got (from the repository itself, not only from `/v2/`), then either basic
//! credentials or a bearer token from the challenge's realm (the distribution token spec), kept
//! per repository until it expires.
//!
//! Which credential goes where:
//! - `username`/`password` (or `auth`): basic, or a token GET to the realm with basic auth;
//! - `identitytoken`: an OAuth2 refresh token, POSTed to the realm (`grant_type=refresh_token`),
//!   as Docker does; a realm without OAuth2 (404, 405) gets a token GET with the identity token
//!   as the basic password instead;
//! - `registrytoken`: the bearer token itself, sent as is;
//! - none: an anonymous token GET (public repositories).
//!
//! Credentials are never sent to a plain-HTTP realm of an HTTPS registry.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use base64::Engine as _;
use reqwest::{
    StatusCode,
    header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE},
};
use serde::Deserialize;

use super::{RegistryCredentials, RegistryError, error::parse_retry_after, http::read_body};

/// The token spec's default when a token response names no lifetime.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A token is renewed once this share of its lifetime has passed, before the registry refuses it.
const RENEW_AT_LIFETIME_PERCENT: u32 = 90;
/// Token responses are small; more is not a token response.
const MAX_TOKEN_RESPONSE: usize = 1024 * 1024;
/// OAuth2 `client_id` of refresh-token requests.
const CLIENT_ID: &str = "mpo-operator";

/// What a registry's 401 asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// The first challenge of a scheme we speak, from all `WWW-Authenticate` headers.
    pub(super) fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(Self::parse)
    }

    /// `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
    pub(super) fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (scheme, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Self::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(rest);
        let realm = params.get("realm")?.clone();
        Some(Self::Bearer {
            realm,
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// `key="quoted, value", key2=token` → map with lower-case keys.
fn auth_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = match after.strip_prefix('"') {
            Some(quoted) => quoted_string(quoted),
            None => match after.split_once(',') {
                Some((value, remainder)) => (value.trim().to_owned(), remainder),
                None => (after.trim().to_owned(), ""),
            },
        };
        params.insert(key, value);
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    params
}

/// The content of a quoted string (after its opening quote) and what follows its closing quote.
fn quoted_string(text: &str) -> (String, &str) {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return (value, &text[at + 1..]),
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    value.push(escaped);
                }
            }
            c => value.push(c),
        }
    }
    (value, "")
}

/// An `Authorization` the registry accepted or asked for, per repository.
#[derive(Default)]
pub(super) struct Authorizations {
    by_repository: Mutex<HashMap<String, Kept>>,
}

#[derive(Clone)]
struct Kept {
    header: HeaderValue,
    /// When a token should be renewed; `None` for basic credentials and registry tokens.
    renew_at: Option<Instant>,
    /// The challenge it answered, to renew the token without another 401 first.
    challenge: Challenge,
}

/// What to send to a repository.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Known {
    /// Nothing known yet: send without, and answer the 401's challenge.
    Nothing,
    Valid(HeaderValue),
    /// A token due for renewal, and the challenge to renew it with.
    Renew(Challenge),
}

impl Authorizations {
    /// The kept `Authorization` for `repository`, or the challenge to renew its token with.
    pub(super) fn current(&self, repository: &str) -> Known {
        let Some(kept) = self.lock().get(repository).cloned() else {
            return Known::Nothing;
        };
        match kept.renew_at {
            Some(at) if Instant::now() >= at => Known::Renew(kept.challenge),
            _ => Known::Valid(kept.header),
        }
    }

    pub(super) fn keep(
        &self,
        repository: String,
        authorization: Authorization,
        challenge: Challenge,
    ) {
        let renew_at = authorization
            .lifetime
            .map(|life| Instant::now() + life * RENEW_AT_LIFETIME_PERCENT / 100);
        let kept = Kept {
            header: authorization.header,
            renew_at,
            challenge,
        };
        self.lock().insert(repository, kept);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        self.by_repository
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An `Authorization` header value and, for a token, how long it is valid.
pub(super) struct Authorization {
    pub(super) header: HeaderValue,
    pub(super) lifetime: Option<Duration>,
}

/// Answers `challenge` for `repository` with `credentials`: `None` when there is nothing to
/// send (a basic challenge and no credentials).
pub(super) async fn authorize(
    client: &reqwest::Client,
    credentials: &RegistryCredentials,
    challenge: &Challenge,
    repository: &str,
    registry_is_https: bool,
) -> Result<Option<Authorization>, RegistryError> {
    let (realm, service, scope) = match challenge {
        Challenge::Basic => return Ok(basic_for(credentials).map(permanent)),
        Challenge::Bearer {
            realm,
            service,
            scope,
        } => (realm, service.as_deref(), scope.clone()),
    };
    if let RegistryCredentials::Bearer(token) = credentials {
        return Ok(Some(permanent(bearer(token)?)));
    }
    if registry_is_https
        && !realm.starts_with("https://")
        && *credentials != RegistryCredentials::Anonymous
    {
        return Err(RegistryError::InsecureRealm);
    }
    let scope = scope.unwrap_or_else(|| format!("repository:{repository}:pull"));
    let request = TokenRequest {
        realm,
        service,
        scope: &scope,
    };
    let token = match credentials {
        RegistryCredentials::IdentityToken { username, token } => {
            request.refresh(client, username.as_deref(), token).await?
        }
        other => request.get(client, basic_for(other)).await?,
    };
    Ok(Some(Authorization {
        header: bearer(&token.token)?,
        lifetime: Some(token.lifetime),
    }))
}

fn permanent(header: HeaderValue) -> Authorization {
    Authorization {
        header,
        lifetime: None,
    }
}

/// Basic credentials for the registry or its token server, if the dockerCfg has any.
fn basic_for(credentials: &RegistryCredentials) -> Option<HeaderValue> {
    let (user, password) = match credentials {
        RegistryCredentials::Basic { username, password } => (username.as_str(), password),
        // Registries without OAuth2 take an identity token as the password (Docker's `<token>`).
        RegistryCredentials::IdentityToken { username, token } => {
            (username.as_deref().unwrap_or("<token>"), token)
        }
        RegistryCredentials::Anonymous | RegistryCredentials::Bearer(_) => return None,
    };
    let pair = format!("{user}:{password}");
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    sensitive(&format!("Basic {encoded}")).ok()
}

fn bearer(token: &str) -> Result<HeaderValue, RegistryError> {
    sensitive(&format!("Bearer {token}"))
}

/// A header value kept out of any Debug output of requests and headers.
fn sensitive(value: &str) -> Result<HeaderValue, RegistryError> {
    let mut header =
        HeaderValue::from_str(value).map_err(|_| RegistryError::BadToken("not a header value"))?;
    header.set_sensitive(true);
    Ok(header)
}

struct TokenRequest<'a> {
    realm: &'a str,
    service: Option<&'a str>,
    scope: &'a str,
}

struct Token {
    token: String,
    lifetime: Duration,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenRequest<'_> {
    /// `GET <realm>?service=…&scope=…`, with basic auth when there are credentials.
    async fn get(
        &self,
        client: &reqwest::Client,
        basic: Option<HeaderValue>,
    ) -> Result<Token, RegistryError> {
        let mut query = vec![("scope", self.scope)];
        if let Some(service) = self.service {
            query.push(("service", service));
        }
        let mut request = client.get(self.realm).query(&query);
        if let Some(basic) = basic {
            request = request.header(AUTHORIZATION, basic);
        }
        let response = request.send().await.map_err(RegistryError::transport)?;
        token_from(response).await
    }

    /// The OAuth2 refresh-token grant; a realm that does not speak OAuth2 gets a GET instead.
    async fn refresh(
        &self,
        client: &reqwest::Client,
        username: Option<&str>,
        refresh_token: &str,
    ) -> Result<Token, RegistryError> {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", CLIENT_ID),
            ("scope", self.scope),
        ];
        if let Some(service) = self.service {
            form.push(("service", service));
        }
        let response = client
            .post(self.realm)
            .form(&form)
            .send()
            .await
            .map_err(RegistryError::transport)?;
        if matches!(
            response.status(),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            let credentials = RegistryCredentials::IdentityToken {
                username: username.map(str::to_owned),
                token: refresh_token.to_owned(),
            };
            return self.get(client, basic_for(&credentials)).await;
        }
        token_from(response).await
    }
}

async fn token_from(response: reqwest::Response) -> Result<Token, RegistryError> {
    let status = response.status();
    if !status.is_success() {
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        return Err(RegistryError::TokenServer {
            status: status.as_u16(),
            retry_after,
        });
    }
    let (body, truncated) = read_body(response, MAX_TOKEN_RESPONSE).await?;
    if truncated {
        return Err(RegistryError::BadToken("the token response is too large"));
    }
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|_| RegistryError::BadToken("the token response is not the expected JSON"))?;
    let token = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or(RegistryError::BadToken("the token response holds no token"))?;
    let lifetime = parsed
        .expires_in
        .filter(|seconds| *seconds > 0)
        .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
    Ok(Token { token, lifetime })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_challenges_with_quoted_commas_and_basic_ones() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        let spaced = Challenge::parse(r#"bearer  realm="r", error="invalid_token""#);
        assert_eq!(
            spaced,
            Some(Challenge::Bearer {
                realm: "r".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse(r#"Bearer service="s""#), None, "no realm");
        let escaped = auth_params(r#"realm="a\"b", x=y"#);
        assert_eq!(escaped.get("realm").map(String::as_str), Some("a\"b"));
        assert_eq!(escaped.get("x").map(String::as_str), Some("y"));
    }

    #[test]
    fn a_token_is_kept_until_most_of_its_lifetime_has_passed() {
        let kept = Authorizations::default();
        let header = HeaderValue::from_static("Bearer t");
        let challenge = Challenge::Bearer {
            realm: "r".into(),
            service: None,
            scope: None,
        };
        kept.keep(
            "a".into(),
            Authorization {
                header: header.clone(),
                lifetime: Some(Duration::from_secs(3600)),
            },
            challenge.clone(),
        );
        assert_eq!(kept.current("a"), Known::Valid(header.clone()));
        kept.keep(
            "b".into(),
            Authorization {
                header,
                lifetime: Some(Duration::ZERO),
            },
            challenge.clone(),
        );
        assert_eq!(
            kept.current("b"),
            Known::Renew(challenge),
            "due for renewal"
        );
        assert_eq!(kept.current("c"), Known::Nothing);
    }

    #[test]
    fn basic_credentials_for_each_form() {
        let basic = RegistryCredentials::Basic {
            username: "u".into(),
            password: "p".into(),
        };
        let header = basic_for(&basic).expect("basic");
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().ok(), Some("Basic dTpw"));
        let identity = RegistryCredentials::IdentityToken {
            username: None,
            token: "t".into(),
        };
        let header = basic_for(&identity).expect("identity");
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("<token>:t")
        );
        assert_eq!(header.to_str().ok(), Some(expected.as_str()));
        assert!(basic_for(&RegistryCredentials::Anonymous).is_none());
        assert!(basic_for(&RegistryCredentials::Bearer("x".into())).is_none());
    }
}
