//! Every request to a registry (manifest HEAD/GET, blob GET, tag listing), sent with reqwest so
//! that the response headers stay visible (`Retry-After`, `WWW-Authenticate`, `Link`). A 401 is
//! answered from its own challenge ([`super::auth`]); the `Authorization` that worked is kept
//! per repository, so an idle check is one request.

use std::{sync::Arc, time::Duration};

use reqwest::{
    Method, Response, StatusCode,
    header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, RANGE},
};
use tokio::sync::OwnedSemaphorePermit;
use tracing::warn;

use super::{
    ModuleRef, RegistryCredentials, RegistryError, RequestObserver,
    auth::{self, Authorizations, Challenge, Known},
    error::Resource,
    limits,
};

/// Error bodies are read only this far: they are for the message, not for storing.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub(super) struct Http {
    pub(super) client: reqwest::Client,
    /// For token requests: follows same-origin redirects only ([`auth::token_redirect_policy`]).
    pub(super) token_client: reqwest::Client,
    pub(super) credentials: RegistryCredentials,
    pub(super) scheme: &'static str,
    pub(super) request_timeout: Duration,
    /// repository → the `Authorization` the registry last accepted (or asked for).
    pub(super) authorizations: Authorizations,
    pub(super) observer: Option<Arc<dyn RequestObserver>>,
}

/// A response (any status) and the host slot it holds until dropped.
pub(super) struct Exchange {
    pub(super) response: Response,
    pub(super) permit: Option<OwnedSemaphorePermit>,
}

impl Http {
    /// `<scheme>://<host>/v2/<repository>/<kind>/<reference>`
    pub(super) fn url(&self, image: &ModuleRef, kind: &str, reference: &str) -> String {
        self.url_of(&image.endpoint(), &image.repository(), kind, reference)
    }

    /// `<scheme>://<endpoint>/v2/<repository>/<kind>/<reference>`
    pub(super) fn url_of(
        &self,
        endpoint: &str,
        repository: &str,
        kind: &str,
        reference: &str,
    ) -> String {
        format!(
            "{}://{endpoint}/v2/{repository}/{kind}/{reference}",
            self.scheme
        )
    }

    /// One request in a slot of the registry host, within the request timeout (waiting for the
    /// slot is not counted: that is queueing behind our own requests, not a slow registry).
    pub(super) async fn exchange(
        &self,
        method: Method,
        image: &ModuleRef,
        url: &str,
        accept: &str,
    ) -> Result<Exchange, RegistryError> {
        self.exchange_at(method, &image.endpoint(), &image.repository(), url, accept)
            .await
    }

    /// [`Self::exchange`] for any repository of the host `endpoint`.
    pub(super) async fn exchange_at(
        &self,
        method: Method,
        endpoint: &str,
        repository: &str,
        url: &str,
        accept: &str,
    ) -> Result<Exchange, RegistryError> {
        let permit = limits::acquire(endpoint).await;
        let response = self
            .bounded(self.send_authorized(method, repository, url, accept))
            .await??;
        Ok(Exchange { response, permit })
    }

    /// The error for a non-success response to a request of `requested`, its body read
    /// (bounded) unless it is a HEAD.
    pub(super) async fn status_error(&self, response: Response, requested: &str) -> RegistryError {
        let status = response.status();
        let headers = response.headers().clone();
        let resource = url::Url::parse(requested)
            .ok()
            .and_then(|url| Resource::of_path(url.path()));
        let answered_by = redirected_host(requested, response.url());
        let body = match self.bounded(read_body(response, MAX_ERROR_BODY)).await {
            Ok(Ok((body, _))) => body,
            // The status says enough; a body that cannot be read adds nothing.
            _ => Vec::new(),
        };
        RegistryError::from_status(status, &headers, &body, resource, answered_by)
    }

    pub(super) async fn bounded<T>(
        &self,
        fut: impl Future<Output = T>,
    ) -> Result<T, RegistryError> {
        tokio::time::timeout(self.request_timeout, fut)
            .await
            .map_err(|_| RegistryError::Timeout(self.request_timeout))
    }

    /// A `GET` of `url` from byte `offset` on (`Range: bytes=<offset>-`), within the request
    /// timeout. No host slot is taken: it continues a body whose slot is still held.
    pub(super) async fn resend_from(
        &self,
        repository: &str,
        url: &str,
        offset: u64,
    ) -> Result<Response, RegistryError> {
        let range = HeaderValue::from_str(&format!("bytes={offset}-"))
            .map_err(|_| RegistryError::Client("cannot build a Range header"))?;
        self.bounded(self.send_authorized_with(Method::GET, repository, url, "*/*", Some(&range)))
            .await?
    }

    /// Sends with the kept `Authorization`; on 401 answers that response's own challenge (a new
    /// bearer token for this repository, or basic credentials) and resends once.
    async fn send_authorized(
        &self,
        method: Method,
        repository: &str,
        url: &str,
        accept: &str,
    ) -> Result<Response, RegistryError> {
        self.send_authorized_with(method, repository, url, accept, None)
            .await
    }

    async fn send_authorized_with(
        &self,
        method: Method,
        repository: &str,
        url: &str,
        accept: &str,
        range: Option<&HeaderValue>,
    ) -> Result<Response, RegistryError> {
        let kept = match self.authorizations.current(repository) {
            Known::Nothing => None,
            Known::Valid(header) => Some(header),
            // Renewed before it expires, from the challenge it answered: no 401 round trip.
            Known::Renew {
                challenge,
                still_valid,
            } => self.renew(&challenge, repository, still_valid).await?,
        };
        let response = self
            .send(method.clone(), url, accept, kept.as_ref(), range)
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(challenge) = Challenge::from_headers(response.headers()) else {
            return Ok(response);
        };
        let Some(fresh) = self.answer(&challenge, repository, kept.as_ref()).await? else {
            return Ok(response);
        };
        if kept.as_ref() == Some(&fresh) {
            // The same credentials were just refused; asking again would only repeat that.
            return Ok(response);
        }
        self.send(method, url, accept, Some(&fresh), range).await
    }

    /// Renews a token due for renewal; if the token server fails, the kept token serves while
    /// it is valid (the next request tries the renewal again).
    async fn renew(
        &self,
        challenge: &Challenge,
        repository: &str,
        still_valid: Option<HeaderValue>,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        match self.answer(challenge, repository, None).await {
            Ok(fresh) => Ok(fresh.or(still_valid)),
            Err(err) => match still_valid {
                Some(kept) => {
                    warn!(repository, error = %err, "renewing the registry token failed; the current token is still valid and is used");
                    Ok(Some(kept))
                }
                None => Err(err),
            },
        }
    }

    /// Answers `challenge` for `repository` and keeps the result for the next requests. One
    /// answer at a time per repository: a request that waited for another's answer uses it
    /// unless it is `stale`, the `Authorization` the registry just refused.
    async fn answer(
        &self,
        challenge: &Challenge,
        repository: &str,
        stale: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let turn = self.authorizations.fetch_turn(repository);
        let _turn = turn.lock().await;
        if let Known::Valid(current) = self.authorizations.current(repository)
            && Some(&current) != stale
        {
            return Ok(Some(current));
        }
        let https = self.scheme == "https";
        let Some(fresh) = auth::authorize(
            &self.token_client,
            &self.credentials,
            challenge,
            repository,
            https,
        )
        .await?
        else {
            return Ok(None);
        };
        let header = fresh.header.clone();
        self.authorizations
            .keep(repository.to_owned(), fresh, challenge.clone());
        Ok(Some(header))
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        accept: &str,
        authorization: Option<&HeaderValue>,
        range: Option<&HeaderValue>,
    ) -> Result<Response, RegistryError> {
        let label = method.as_str().to_owned();
        let mut request = self.client.request(method, url).header(ACCEPT, accept);
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value.clone());
        }
        if let Some(value) = range {
            request = request.header(RANGE, value.clone());
        }
        let started = std::time::Instant::now();
        let result = request.send().await;
        if let Some(observer) = &self.observer {
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            observer.request(&label, status, started.elapsed());
        }
        result.map_err(RegistryError::transport)
    }
}

/// The host (and port) that answered when it is not the one asked: the registry redirected the
/// request there. Only the host: the rest of a storage URL is often a signed query.
fn redirected_host(requested: &str, answered: &url::Url) -> Option<String> {
    let requested = url::Url::parse(requested).ok()?;
    if requested.origin() == answered.origin() {
        return None;
    }
    let host = answered.host_str()?;
    Some(match answered.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// Reads at most `limit` bytes of the body; the flag says whether there was more.
pub(super) async fn read_body(
    mut response: Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(RegistryError::transport)? {
        if body.len() + chunk.len() > limit {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The `Docker-Content-Digest` header, if the registry sent one.
pub(super) fn content_digest(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
}

pub(super) type SharedHttp = Arc<Http>;
