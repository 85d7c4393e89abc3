//! The requests of the MPO path (manifest HEAD/GET, blob GET), sent with reqwest so that the
//! response headers stay visible: oci-client drops them, and with them `Retry-After`. oci-client
//! still does what it is good at: answering an auth challenge with a bearer token or basic
//! credentials. The `Authorization` that worked is kept per repository, so an idle check is one
//! request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use oci_client::{Client, RegistryOperation, secrets::RegistryAuth};
use reqwest::{
    Method, Response, StatusCode,
    header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue},
};
use tokio::sync::OwnedSemaphorePermit;

use super::{ModuleRef, RegistryError, RequestObserver, limits};

/// Error bodies are read only this far: they are for the message, not for storing.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub(super) struct Http {
    pub(super) client: reqwest::Client,
    pub(super) oci: Client,
    pub(super) auth: RegistryAuth,
    pub(super) scheme: &'static str,
    pub(super) request_timeout: Duration,
    /// repository → the `Authorization` the registry last accepted (or asked for).
    pub(super) authorization: Mutex<HashMap<String, HeaderValue>>,
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
        format!(
            "{}://{}/v2/{}/{kind}/{reference}",
            self.scheme,
            image.endpoint(),
            image.repository()
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
        let permit = limits::acquire(&image.endpoint()).await;
        let response = self
            .bounded(self.send_authorized(method, image, url, accept))
            .await??;
        Ok(Exchange { response, permit })
    }

    /// The error for a non-success response, its body read (bounded) unless it is a HEAD.
    pub(super) async fn status_error(&self, response: Response) -> RegistryError {
        let status = response.status();
        let headers = response.headers().clone();
        let body = match self.bounded(read_body(response, MAX_ERROR_BODY)).await {
            Ok(Ok((body, _))) => body,
            // The status says enough; a body that cannot be read adds nothing.
            _ => Vec::new(),
        };
        RegistryError::from_status(status, &headers, &body)
    }

    pub(super) async fn bounded<T>(
        &self,
        fut: impl Future<Output = T>,
    ) -> Result<T, RegistryError> {
        tokio::time::timeout(self.request_timeout, fut)
            .await
            .map_err(|_| RegistryError::Timeout(self.request_timeout))
    }

    /// Sends with the remembered `Authorization`; on 401 asks oci-client for a fresh one (a new
    /// bearer token, or basic credentials when the registry wants those) and resends once.
    async fn send_authorized(
        &self,
        method: Method,
        image: &ModuleRef,
        url: &str,
        accept: &str,
    ) -> Result<Response, RegistryError> {
        let repository = image.repository();
        let remembered = self.remembered(&repository);
        let response = self
            .send(method.clone(), url, accept, remembered.as_ref())
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(fresh) = self.authorize(image).await? else {
            return Ok(response);
        };
        if remembered.as_ref() == Some(&fresh) {
            // The same credentials were just refused; asking again would only repeat that.
            return Ok(response);
        }
        self.remember(repository, fresh.clone());
        self.send(method, url, accept, Some(&fresh)).await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        accept: &str,
        authorization: Option<&HeaderValue>,
    ) -> Result<Response, RegistryError> {
        let label = method.as_str().to_owned();
        let mut request = self.client.request(method, url).header(ACCEPT, accept);
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value.clone());
        }
        let started = std::time::Instant::now();
        let result = request.send().await;
        if let Some(observer) = &self.observer {
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            observer.request(&label, status, started.elapsed());
        }
        result.map_err(RegistryError::transport)
    }

    /// What to send after a 401: `None` when we have nothing better than what was refused.
    async fn authorize(&self, image: &ModuleRef) -> Result<Option<HeaderValue>, RegistryError> {
        let token = self
            .oci
            .auth(&image.by_tag(), &self.auth, RegistryOperation::Pull)
            .await?;
        let value = match (token, &self.auth) {
            (Some(token), _) => format!("Bearer {token}"),
            (None, RegistryAuth::Basic(user, password)) => {
                let pair = format!("{user}:{password}");
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            (None, _) => return Ok(None),
        };
        let mut header = HeaderValue::from_str(&value).map_err(|_| {
            RegistryError::Client("the registry's token is not a valid header value")
        })?;
        // Keeps it out of any Debug output of requests and headers.
        header.set_sensitive(true);
        Ok(Some(header))
    }

    fn remembered(&self, repository: &str) -> Option<HeaderValue> {
        self.authorization
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(repository)
            .cloned()
    }

    fn remember(&self, repository: String, value: HeaderValue) {
        self.authorization
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(repository, value);
    }
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
