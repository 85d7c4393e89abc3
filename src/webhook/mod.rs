//! Push notifications (#19): a listener on its own port (`--webhook-addr`, off by default) that
//! turns a registry's or a CI pipeline's word that a tag was pushed into a check of the overrides
//! following it, at once instead of at their next `scanInterval`.
//!
//! Any replica may receive a notification (a Service spreads them), so the wake-up is handed to
//! the leader through the API: the override gets the `renew` annotation, as `kubectl annotate mop
//! echo renew=""` does. It survives a failover (the new leader's first pass serves it) and loses
//! nothing; several notifications for one override before its pass make one check. The check is
//! the normal one: HEAD, then a download only if the digest moved.
//!
//! `POST /hooks/<sender>` (`registry`, `harbor`, `dockerhub`, `quay`, `github`, `generic`), or
//! `/hooks/<sender>/<token>` for senders that cannot set a header. Answers: 202 with the woken
//! overrides (none for an unknown repository), 400 malformed, 401 without the token, 404, 405,
//! 408 a body too slow, 413 a body over 1 MiB, 429 after too many refusals from one address, 503 not synced
//! yet or the hand-off failed (senders retry).

mod auth;
mod events;
mod matching;
mod rate;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode, body::Bytes, body::Incoming, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, info, warn};

pub use events::{PayloadError, Sender, Wake};

use crate::{
    crd::{ModulePullOverride, ModuleSource, RENEW_ANNOTATION},
    metrics::Metrics,
};

/// Bodies larger than this are refused (413): real notifications are a few kilobytes.
pub const MAX_BODY: usize = 1024 * 1024;
/// How much of a body over the limit is read and dropped before the 413.
const DRAIN_LIMIT: usize = 8 * MAX_BODY;
/// A body must arrive within this (408), and request headers too.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Wake-ups of one override are at least this far apart (a flood makes one per window).
const COALESCE: Duration = Duration::from_millis(500);
/// Overrides whose last wake-up time is remembered before idle ones are forgotten.
const MAX_REMEMBERED: usize = 4096;
/// The annotation's value starts so, so that `kubectl get mop -o yaml` tells who asked.
const WAKE_VALUE: &str = "webhook";

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot listen for webhooks on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the webhook token from {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the webhook token file {0} is empty")]
    EmptyToken(PathBuf),
}

/// Where to listen and what token to expect.
#[derive(Clone, Debug)]
pub struct Config {
    pub addr: SocketAddr,
    pub token_file: PathBuf,
    /// The operator's `--watch-selector`: a shard wakes only its own overrides.
    pub selector: String,
}

struct Listener {
    token_file: PathBuf,
    client: Client,
    mpos: Store<ModulePullOverride>,
    sources: Store<ModuleSource>,
    metrics: Arc<Metrics>,
    rate: Mutex<rate::PerAddress>,
    /// Per override: when this replica last sent its wake-up, behind a lock that orders them.
    woken: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

/// Binds and serves in the background, with watches of its own (every replica listens, leader
/// or not). The token is read now, so that a missing Secret fails the start, and again for each
/// request, so that a rotated Secret takes effect without a restart.
pub async fn serve(
    config: Config,
    client: Client,
    metrics: Arc<Metrics>,
) -> Result<JoinHandle<()>, WebhookError> {
    read_token(&config.token_file)?;
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| WebhookError::Bind {
            addr: config.addr,
            source,
        })?;
    let watch = if config.selector.trim().is_empty() {
        watcher::Config::default()
    } else {
        watcher::Config::default().labels(config.selector.trim())
    };
    let (mpos, mpo_writer) = reflector::store::<ModulePullOverride>();
    let (sources, source_writer) = reflector::store::<ModuleSource>();
    let mpo_events = watcher(
        Api::<ModulePullOverride>::all(client.clone()),
        watch.clone(),
    )
    .default_backoff()
    .modify(|mpo| mpo.managed_fields_mut().clear())
    .reflect(mpo_writer);
    let source_events = watcher(Api::<ModuleSource>::all(client.clone()), watch)
        .default_backoff()
        .reflect(source_writer);
    let state = Arc::new(Listener {
        token_file: config.token_file,
        client,
        mpos,
        sources,
        metrics,
        rate: Mutex::new(rate::PerAddress::default()),
        woken: Mutex::default(),
    });
    info!(addr = %config.addr, "listening for push notifications on /hooks/<sender>");
    Ok(tokio::spawn(async move {
        tokio::select! {
            () = drain(mpo_events) => {}
            () = drain(source_events) => {}
            () = accept_loop(listener, state) => {}
        }
    }))
}

/// Polls a watch so that its store fills and stays current.
async fn drain<T, E: std::fmt::Display>(events: impl futures::Stream<Item = Result<T, E>>) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        if let Err(err) = event {
            debug!("webhook watch: {err}");
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Listener>) {
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(state.clone(), remote, req));
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(BODY_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!("webhook connection: {e}");
            }
        });
    }
}

/// An answer: a status and one line of text (JSON for 202).
struct Answer {
    status: StatusCode,
    body: String,
}

impl Answer {
    fn new(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
        }
    }
}

async fn respond(
    state: Arc<Listener>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let route = route(req.uri().path());
    let sender = route
        .as_ref()
        .map_or("unknown", |(sender, _)| sender.label());
    let answer = answer(&state, remote.ip(), route, req).await;
    if answer.status.is_client_error() && answer.status != StatusCode::TOO_MANY_REQUESTS {
        lock(&state.rate).charge(remote.ip(), Instant::now());
    }
    state
        .metrics
        .webhook_answered(sender, answer.status.as_u16());
    let mut response = Response::new(Full::new(Bytes::from(format!("{}\n", answer.body))));
    *response.status_mut() = answer.status;
    Ok(response)
}

/// `/hooks/<sender>[/<token>]`.
fn route(path: &str) -> Option<(Sender, Option<String>)> {
    let rest = path.strip_prefix("/hooks/")?;
    let (sender, token) = match rest.split_once('/') {
        Some((sender, token)) if !token.contains('/') => (sender, Some(token.to_owned())),
        Some(_) => return None,
        None => (rest, None),
    };
    Some((Sender::from_path(sender)?, token.filter(|t| !t.is_empty())))
}

async fn answer(
    state: &Listener,
    remote: IpAddr,
    route: Option<(Sender, Option<String>)>,
    req: Request<Incoming>,
) -> Answer {
    if lock(&state.rate).exhausted(remote, Instant::now()) {
        return Answer::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many refused requests from this address",
        );
    }
    let Some((sender, path_token)) = route else {
        return Answer::new(StatusCode::NOT_FOUND, "not found: POST /hooks/<sender>");
    };
    if req.method() != hyper::Method::POST {
        return Answer::new(StatusCode::METHOD_NOT_ALLOWED, "only POST");
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header("authorization");
    let hub_signature = header("x-hub-signature-256");
    let declared = header("content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > DRAIN_LIMIT) {
        return too_large();
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(req.into_body())).await {
        Err(_) => {
            return Answer::new(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            );
        }
        Ok(Body::TooLarge) => return too_large(),
        Ok(Body::Failed(why)) => {
            return Answer::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {why}"),
            );
        }
        Ok(Body::Read(body)) => body,
    };
    let token = match read_token(&state.token_file) {
        Ok(token) => token,
        Err(err) => {
            warn!("webhook: {err}");
            return Answer::new(StatusCode::SERVICE_UNAVAILABLE, "the token is unavailable");
        }
    };
    let proof = auth::Proof {
        authorization: authorization.as_deref(),
        path_token: path_token.as_deref(),
        hub_signature: hub_signature.as_deref(),
    };
    if !auth::authorized(&token, &proof, &body) {
        // Which proof was offered, never its value.
        warn!(
            sender = sender.label(),
            %remote,
            bearer = authorization.is_some(),
            path_token = path_token.is_some(),
            signature = hub_signature.is_some(),
            "webhook refused: no valid token"
        );
        return Answer::new(StatusCode::UNAUTHORIZED, "a valid token is required");
    }
    let wakes = match events::parse(sender, &body) {
        Ok(wakes) => wakes,
        Err(err) => {
            info!(sender = sender.label(), %remote, "webhook refused: {err}");
            return Answer::new(StatusCode::BAD_REQUEST, err.to_string());
        }
    };
    wake_matching(state, sender, &wakes).await
}

enum Body {
    Read(Vec<u8>),
    TooLarge,
    Failed(String),
}

/// The body, kept up to [`MAX_BODY`]; past that it is read on and dropped (up to
/// [`DRAIN_LIMIT`]), so that the sender reads the 413 instead of a connection reset while it
/// still writes. Memory stays bounded by `MAX_BODY` per request.
async fn read_body(mut body: Incoming) -> Body {
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => return Body::Failed(err.to_string()),
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= MAX_BODY {
            kept.extend_from_slice(data);
        } else if seen > DRAIN_LIMIT {
            return Body::TooLarge;
        }
    }
    if seen > MAX_BODY {
        Body::TooLarge
    } else {
        Body::Read(kept)
    }
}

fn too_large() -> Answer {
    Answer::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is over {MAX_BODY} bytes"),
    )
}

/// Finds the overrides `wakes` name and hands each its check.
async fn wake_matching(state: &Listener, sender: Sender, wakes: &[Wake]) -> Answer {
    if wakes.is_empty() {
        debug!(sender = sender.label(), "webhook: nothing pushed by tag");
        return Answer::new(StatusCode::ACCEPTED, r#"{"woken":[]}"#);
    }
    let synced = tokio::time::timeout(BODY_TIMEOUT, async {
        state.mpos.wait_until_ready().await.is_ok()
            && state.sources.wait_until_ready().await.is_ok()
    })
    .await;
    if synced != Ok(true) {
        return Answer::new(StatusCode::SERVICE_UNAVAILABLE, "not synced yet");
    }
    let matched = matching_overrides(state, wakes);
    let sources = matching_sources(state, wakes);
    if matched.is_empty() && sources.is_empty() {
        info!(sender = sender.label(), pushes = ?wakes, "webhook: no override follows what was pushed");
        return Answer::new(StatusCode::ACCEPTED, r#"{"woken":[]}"#);
    }
    let mut failed = Vec::new();
    for mpo in &matched {
        if let Err(err) = hand_over(state, mpo.as_ref()).await {
            warn!(mpo = %mpo.name_any(), "webhook: cannot hand the check to the leader: {err}");
            failed.push(mpo.name_any());
        }
    }
    for source in &sources {
        if let Err(err) = hand_over(state, source.as_ref()).await {
            warn!(source = %source.name_any(), "webhook: cannot hand the scan to the leader: {err}");
            failed.push(source.name_any());
        }
    }
    let names: Vec<String> = matched.iter().map(|mpo| mpo.name_any()).collect();
    let scanned: Vec<String> = sources.iter().map(|source| source.name_any()).collect();
    info!(sender = sender.label(), woken = ?names, scanned = ?scanned, "webhook: push notification; checking now");
    state
        .metrics
        .webhook_woke(names.len() + scanned.len() - failed.len());
    if !failed.is_empty() {
        return Answer::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot wake {}; try again", failed.join(", ")),
        );
    }
    let answer = if scanned.is_empty() {
        json!({ "woken": names })
    } else {
        json!({ "woken": names, "scanned": scanned })
    };
    Answer::new(StatusCode::ACCEPTED, answer.to_string())
}

/// Sources whose root repository (the module names, SPEC §8) was pushed to: their scan is due.
fn matching_sources(state: &Listener, wakes: &[Wake]) -> Vec<Arc<ModuleSource>> {
    state
        .sources
        .state()
        .into_iter()
        .filter(|source| {
            wakes
                .iter()
                .any(|wake| matching::lists_modules(wake, &source.spec.registry.repo))
        })
        .collect()
}

fn matching_overrides(state: &Listener, wakes: &[Wake]) -> Vec<Arc<ModulePullOverride>> {
    state
        .mpos
        .state()
        .into_iter()
        .filter(|mpo| {
            let source = state.sources.get(&ObjectRef::new(&mpo.spec.source));
            let source_repo = source
                .as_ref()
                .map_or("", |s| s.spec.registry.repo.as_str());
            let target = matching::Override {
                name: mpo.metadata.name.as_deref().unwrap_or_default(),
                tag: &mpo.spec.image_tag,
                pinned: mpo.spec.image_digest.is_some(),
                source_repo,
            };
            wakes.iter().any(|wake| matching::wakes(wake, &target))
        })
        .collect()
}

/// Sets the `renew` annotation on `object` (an override, or a source whose scan is due) to a
/// value of its own (`webhook <time>`), so that the
/// write always changes the object: a pass that began before this push then cannot clear it
/// (its removal carries the resourceVersion it read and is refused), and the next pass sees the
/// push. Wake-ups of one override are ordered and at most one per [`COALESCE`]: a request
/// covered by a wake-up sent after it arrived writes nothing, so a flood makes one write per
/// window and none is lost.
async fn hand_over<K>(state: &Listener, object: &K) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object.name_any();
    let key = format!("{}/{name}", K::kind(&()));
    let arrived = Instant::now();
    let slot = {
        let mut woken = lock(&state.woken);
        if woken.len() > MAX_REMEMBERED {
            woken.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        woken.entry(key).or_default().clone()
    };
    let mut last_sent = slot.lock().await;
    if last_sent.is_some_and(|sent| sent >= arrived) {
        return Ok(());
    }
    if let Some(next) = last_sent.map(|sent| sent + COALESCE) {
        tokio::time::sleep_until(next.into()).await;
    }
    let sent = Instant::now();
    let value = format!(
        "{WAKE_VALUE} {}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let patch = json!({ "metadata": { "annotations": { RENEW_ANNOTATION: value } } });
    Api::<K>::all(state.client.clone())
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    *last_sent = Some(sent);
    Ok(())
}

fn read_token(path: &Path) -> Result<Vec<u8>, WebhookError> {
    let text = std::fs::read(path).map_err(|source| WebhookError::Token {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(WebhookError::EmptyToken(path.to_owned()));
    }
    Ok(token)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/hooks/registry"), Some((Sender::Registry, None)));
        assert_eq!(
            route("/hooks/quay/abc"),
            Some((Sender::Quay, Some("abc".into())))
        );
        assert_eq!(route("/hooks/quay/"), Some((Sender::Quay, None)));
        assert_eq!(route("/hooks/quay/a/b"), None);
        assert_eq!(route("/hooks/nope"), None);
        assert_eq!(route("/metrics"), None);
    }
}
