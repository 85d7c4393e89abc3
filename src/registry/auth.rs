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
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use base64::Engine as _;
use reqwest::{
    StatusCode,
    header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE},
};
use serde::Deserialize;
use url::Url;

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
    /// The challenge to answer from all `WWW-Authenticate` headers (each may hold several
    /// challenges): Bearer when offered, as Docker does, else Basic.
    pub(super) fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let offered: Vec<Self> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(Self::parse_all)
            .collect();
        prefer_bearer(offered)
    }

    /// The challenge to answer from one header value (see [`Self::from_headers`]).
    #[cfg(test)]
    pub(super) fn parse(text: &str) -> Option<Self> {
        prefer_bearer(Self::parse_all(text))
    }

    /// Every challenge of a scheme we speak in one header value, e.g.
    /// `Basic realm="r", Bearer realm="…",service="…"`; schemes compared case-insensitively.
    pub(super) fn parse_all(text: &str) -> Vec<Self> {
        split_challenges(text)
            .into_iter()
            .filter_map(|(scheme, params)| Self::from_parts(&scheme, &params))
            .collect()
    }

    fn from_parts(scheme: &str, params: &str) -> Option<Self> {
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Self::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(params);
        let realm = params.get("realm")?.clone();
        Some(Self::Bearer {
            realm,
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

fn prefer_bearer(offered: Vec<Challenge>) -> Option<Challenge> {
    let bearer = offered
        .iter()
        .position(|c| matches!(c, Challenge::Bearer { .. }));
    let mut offered = offered;
    match bearer {
        Some(at) => Some(offered.swap_remove(at)),
        None => offered.into_iter().next(),
    }
}

/// `Basic realm="a, b", Bearer realm="r",scope="x"` → `[("Basic", "realm=\"a, b\""),
/// ("Bearer", "realm=\"r\", scope=\"x\"")]`. RFC 9110 §11.6.1: challenges and their parameters
/// are both comma-separated; an item that starts with a token not followed by `=` opens a new
/// challenge.
fn split_challenges(text: &str) -> Vec<(String, String)> {
    let mut challenges: Vec<(String, String)> = Vec::new();
    for item in split_outside_quotes(text) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (first, rest) = item.split_once(char::is_whitespace).unwrap_or((item, ""));
        let opens_challenge = !first.contains('=') && !rest.trim_start().starts_with('=');
        if opens_challenge {
            challenges.push((first.to_owned(), rest.trim().to_owned()));
        } else if let Some((_, params)) = challenges.last_mut() {
            if !params.is_empty() {
                params.push_str(", ");
            }
            params.push_str(item);
        }
    }
    challenges
}

/// Splits at commas that are not inside a quoted string.
fn split_outside_quotes(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
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

/// An `Authorization` the registry accepted or asked for, per repository, and one token fetch at
/// a time per repository: concurrent requests that all need a token share the first one's.
#[derive(Default)]
pub(super) struct Authorizations {
    by_repository: Mutex<HashMap<String, Kept>>,
    fetches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Clone)]
struct Kept {
    header: HeaderValue,
    /// When a token should be renewed and when it stops being valid; `None` for basic
    /// credentials and registry tokens.
    renew_at: Option<Instant>,
    expires_at: Option<Instant>,
    /// The challenge it answered, to renew the token without another 401 first.
    challenge: Challenge,
}

/// What to send to a repository.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Known {
    /// Nothing known yet: send without, and answer the 401's challenge.
    Nothing,
    Valid(HeaderValue),
    /// A token due for renewal, the challenge to renew it with, and the token itself while it
    /// is still valid (used if the renewal fails: a token-server blip must not fail requests).
    Renew {
        challenge: Challenge,
        still_valid: Option<HeaderValue>,
    },
}

impl Authorizations {
    /// The kept `Authorization` for `repository`, or the challenge to renew its token with.
    pub(super) fn current(&self, repository: &str) -> Known {
        let Some(kept) = self.lock().get(repository).cloned() else {
            return Known::Nothing;
        };
        let now = Instant::now();
        match kept.renew_at {
            Some(at) if now >= at => Known::Renew {
                challenge: kept.challenge,
                still_valid: kept
                    .expires_at
                    .filter(|expires| now < *expires)
                    .map(|_| kept.header),
            },
            _ => Known::Valid(kept.header),
        }
    }

    pub(super) fn keep(
        &self,
        repository: String,
        authorization: Authorization,
        challenge: Challenge,
    ) {
        let now = Instant::now();
        let kept = Kept {
            header: authorization.header,
            renew_at: authorization
                .lifetime
                .map(|life| now + life * RENEW_AT_LIFETIME_PERCENT / 100),
            expires_at: authorization.lifetime.map(|life| now + life),
            challenge,
        };
        self.lock().insert(repository, kept);
    }

    /// The lock whose holder fetches `repository`'s token; the others wait and reuse it.
    pub(super) fn fetch_turn(&self, repository: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.fetches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(repository.to_owned())
            .or_default()
            .clone()
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
    let realm = realm_url(realm, registry_is_https, credentials)?;
    let scope = scope.unwrap_or_else(|| format!("repository:{repository}:pull"));
    let request = TokenRequest {
        realm,
        service,
        scopes: scope.split_whitespace().collect(),
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

/// The realm as a URL; credentials go to an HTTPS realm only when the registry is HTTPS (the
/// scheme compared as the URL standard folds it: `HTTPS://` is HTTPS).
fn realm_url(
    realm: &str,
    registry_is_https: bool,
    credentials: &RegistryCredentials,
) -> Result<Url, RegistryError> {
    let url =
        Url::parse(realm).map_err(|_| RegistryError::BadToken("the token realm is not a URL"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if !registry_is_https || *credentials == RegistryCredentials::Anonymous => Ok(url),
        "http" => Err(RegistryError::InsecureRealm),
        _ => Err(RegistryError::BadToken(
            "the token realm is neither HTTP nor HTTPS",
        )),
    }
}

struct TokenRequest<'a> {
    realm: Url,
    service: Option<&'a str>,
    /// The challenge's scopes (space-separated there): repeated `scope` parameters of a GET, one
    /// space-separated `scope` field of an OAuth2 POST, as the token spec and Docker do.
    scopes: Vec<&'a str>,
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
        let mut query: Vec<(&str, &str)> = self.scopes.iter().map(|s| ("scope", *s)).collect();
        if let Some(service) = self.service {
            query.push(("service", service));
        }
        let mut request = client.get(self.realm.clone()).query(&query);
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
        let scope = self.scopes.join(" ");
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", CLIENT_ID),
            ("scope", scope.as_str()),
        ];
        if let Some(service) = self.service {
            form.push(("service", service));
        }
        let response = client
            .post(self.realm.clone())
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
    if status.is_redirection() {
        // The token client follows only same-origin redirects: anything else would carry the
        // credentials (a POST body is re-sent on 307/308) to a host nobody configured.
        return Err(RegistryError::TokenRedirect(redirect_target(&response)));
    }
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

/// Where a refused redirect pointed, as `scheme://host:port` only: the rest of a URL may carry a
/// signed query.
fn redirect_target(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|location| response.url().join(location).ok())
        .map_or_else(
            || "an unreadable location".to_owned(),
            |url| url.origin().ascii_serialization(),
        )
}

/// The redirect policy of token requests: the same origin only (scheme, host and port), a few
/// hops at most.
pub(super) fn token_redirect_policy() -> reqwest::redirect::Policy {
    const MAX_HOPS: usize = 5;
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if same_origin && attempt.previous().len() <= MAX_HOPS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
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
            Known::Renew {
                challenge,
                still_valid: None
            },
            "due for renewal and expired"
        );
        assert_eq!(kept.current("c"), Known::Nothing);
    }

    #[test]
    fn a_token_due_for_renewal_is_still_offered_until_it_expires() {
        let kept = Authorizations::default();
        let header = HeaderValue::from_static("Bearer t");
        let challenge = Challenge::Basic;
        kept.keep(
            "a".into(),
            Authorization {
                header: header.clone(),
                lifetime: Some(Duration::from_secs(3600)),
            },
            challenge.clone(),
        );
        // Pretend 95 % of the lifetime has passed.
        if let Some(entry) = kept.lock().get_mut("a") {
            entry.renew_at = Some(Instant::now() - Duration::from_secs(1));
        }
        assert_eq!(
            kept.current("a"),
            Known::Renew {
                challenge,
                still_valid: Some(header)
            }
        );
    }

    /// `WWW-Authenticate` as each registry documents or sends it for an anonymous pull.
    #[test]
    fn vendor_challenges_are_read_as_they_are_sent() {
        let cases = [
            (
                "Docker Hub",
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
            ),
            (
                "GHCR",
                r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:owner/module:pull""#,
                "https://ghcr.io/token",
                Some("ghcr.io"),
            ),
            (
                "GitLab",
                r#"Bearer realm="https://gitlab.com/jwt/auth",service="container_registry",scope="repository:group/project/module:pull""#,
                "https://gitlab.com/jwt/auth",
                Some("container_registry"),
            ),
            (
                "Harbor",
                r#"Bearer realm="https://harbor.example.com/service/token",service="harbor-registry",scope="repository:library/module:pull""#,
                "https://harbor.example.com/service/token",
                Some("harbor-registry"),
            ),
            (
                "Quay",
                r#"Bearer realm="https://quay.io/v2/auth",service="quay.io",scope="repository:org/module:pull""#,
                "https://quay.io/v2/auth",
                Some("quay.io"),
            ),
        ];
        for (vendor, header, realm, service) in cases {
            match Challenge::parse(header) {
                Some(Challenge::Bearer {
                    realm: r,
                    service: s,
                    scope: Some(_),
                }) => {
                    assert_eq!(r, realm, "{vendor}");
                    assert_eq!(s.as_deref(), service, "{vendor}");
                }
                other => panic!("{vendor}: {other:?}"),
            }
        }
        // ECR asks for basic credentials (from `aws ecr get-login-password`).
        let ecr = r#"Basic realm="https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/",service="ecr.amazonaws.com""#;
        assert_eq!(Challenge::parse(ecr), Some(Challenge::Basic));
    }

    #[test]
    fn bearer_is_preferred_wherever_it_is_offered() {
        let both =
            r#"Basic realm="Registry Realm", BEARER realm="https://t.example/token",service="s""#;
        assert_eq!(
            Challenge::parse(both),
            Some(Challenge::Bearer {
                realm: "https://t.example/token".into(),
                service: Some("s".into()),
                scope: None,
            })
        );
        assert_eq!(
            split_challenges(r#"Basic realm="a, b", Bearer realm="r",scope="x y""#),
            vec![
                ("Basic".to_owned(), r#"realm="a, b""#.to_owned()),
                ("Bearer".to_owned(), r#"realm="r", scope="x y""#.to_owned()),
            ]
        );
        let mut headers = HeaderMap::new();
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="r""#),
        );
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="https://t/token""#),
        );
        assert!(matches!(
            Challenge::from_headers(&headers),
            Some(Challenge::Bearer { .. })
        ));
        assert_eq!(
            Challenge::parse(r#"Negotiate abc==, Basic realm="r""#),
            Some(Challenge::Basic)
        );
    }

    #[test]
    fn realms_are_urls_and_credentials_go_to_https_ones_only() {
        let user = RegistryCredentials::Basic {
            username: "u".into(),
            password: "p".into(),
        };
        let anonymous = RegistryCredentials::Anonymous;
        assert!(realm_url("HTTPS://Auth.Example.com/token", true, &user).is_ok());
        assert!(matches!(
            realm_url("http://auth.example.com/token", true, &user),
            Err(RegistryError::InsecureRealm)
        ));
        assert!(realm_url("http://auth.example.com/token", true, &anonymous).is_ok());
        assert!(realm_url("http://127.0.0.1:5001/token", false, &user).is_ok());
        assert!(matches!(
            realm_url("/token", true, &user),
            Err(RegistryError::BadToken(_))
        ));
        assert!(matches!(
            realm_url("ftp://auth.example.com/token", true, &anonymous),
            Err(RegistryError::BadToken(_))
        ));
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
