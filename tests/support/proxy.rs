//! A fault-injecting HTTP reverse proxy on loopback, in front of a plain-HTTP [`TestRegistry`]:
//! the operator is pointed at the proxy's host and the test decides, at any moment, how the
//! "registry" misbehaves: down (connections refused), an error status (500/502/503, 429 with
//! `Retry-After`), a connection reset after some body bytes, a body that never comes, a slow body.
//!
//! Every request the proxy sees is recorded with its arrival time, the status it got and when its
//! response ended (or was abandoned by the client), so tests can measure retry spacing, tell
//! whether a request overlapped a stalled one, and see how many requests were in flight at once.
//!
//! The proxy runs on its own thread and tokio runtime: the tests block their own runtime with
//! `kubectl` calls, which must not freeze (and so time out) the proxy's connections.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use http_body_util::{BodyExt, StreamBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::registry::TestRegistry;

/// How the proxy treats the requests a rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (and `Retry-After: <seconds>` when given); the registry is not asked.
    Status { code: u16, retry_after: Option<u64> },
    /// Forward, send this many bytes of the response body, then reset the connection (RST).
    ResetAfter(usize),
    /// [`Fault::ResetAfter`] for requests without a `Range` header; ranged requests (a client
    /// resuming) are forwarded untouched: a connection that broke once.
    ResetAfterUnlessRanged(usize),
    /// Forward the status and headers, then never send a body byte.
    Stall,
    /// Forward, sending the body at about this many bytes per second.
    Slow(usize),
    /// Forward, but drop this response header (e.g. `docker-content-digest` from a HEAD).
    DropHeader(String),
    /// Forward, but replace this response header's value when the response has it (e.g. a
    /// `WWW-Authenticate` written as another registry writes it).
    ReplaceHeader { name: String, value: String },
    /// Answer `307 Temporary Redirect` to `<base><path and query>`, as S3/GCS-backed registries
    /// send blobs elsewhere; the registry is not asked.
    RedirectTo(String),
    /// A tag list in pages of this many tags, with `Link: <…?last=…&n=…>; rel="next"` headers,
    /// as registries that page (distribution 2.8 ignores `n` without a catalog limit).
    PageTags(usize),
    /// Like [`Fault::PageTags`], the link target written as [`LinkForm`] says.
    PageTagsLinked(usize, LinkForm),
    /// Answer with this status and no body at all, as a CDN or a proxy in front of a registry
    /// does; the registry is not asked.
    Bare(u16),
    /// Answer 200 with this body and `Content-Type` (e.g. a manifest the registry would not
    /// store, such as a Docker schema 1 one); the registry is not asked.
    Respond { content_type: String, body: Vec<u8> },
}

/// How a paging registry writes the `Link` target of the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkForm {
    /// `/v2/<repo>/tags/list?…` (distribution, Harbor, GitLab).
    Path,
    /// `?n=…&last=…`, relative to the request.
    Relative,
    /// `<prefix>/v2/<repo>/tags/list?…`: an absolute URL, e.g. `http://LOCALHOST:<port>` (a
    /// proxy writing its own host in capitals) or another host altogether.
    Absolute(String),
}

impl Fault {
    pub fn status(code: u16) -> Self {
        Self::Status {
            code,
            retry_after: None,
        }
    }

    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::Status {
            code: 429,
            retry_after: Some(retry_after_secs),
        }
    }
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query, e.g. `/v2/deckhouse/modules/echo/manifests/dev`.
    pub path: String,
    pub at: Instant,
    /// When the response body ended or the client gave up on it; `None` while it is in flight.
    pub done: Option<Instant>,
    /// The status sent (502 when the registry could not be reached).
    pub status: u16,
    pub fault: Option<Fault>,
    /// Whether the request carried an `Authorization` header.
    pub authorization: bool,
    /// Its `Range` header, e.g. `bytes=16384-`.
    pub range: Option<String>,
}

impl Seen {
    /// Whether this request was in flight during all of `other` (which must have ended).
    pub fn spans(&self, other: &Seen) -> bool {
        let (Some(other_done), ends) = (other.done, self.done) else {
            return false;
        };
        self.at <= other.at && ends.is_none_or(|end| end >= other_done)
    }
}

struct Rule {
    method: Option<String>,
    path_part: String,
    fault: Fault,
}

struct Shared {
    upstream: String,
    /// Sent upstream instead of the client's `Authorization`, as a pre-signed URL grants access.
    inject_authorization: Mutex<Option<HeaderValue>>,
    client: reqwest::Client,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

pub struct FaultProxy {
    port: u16,
    host: String,
    shared: Arc<Shared>,
    /// `true` = accepting connections. Dropping it stops the proxy thread.
    up: Option<watch::Sender<bool>>,
    thread: Option<thread::JoinHandle<()>>,
}

const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

impl FaultProxy {
    /// A pass-through proxy on `127.0.0.1:<free port>` in front of `registry` (plain HTTP).
    pub fn start(registry: &TestRegistry) -> Self {
        assert!(
            !registry.kind().has_tls(),
            "the fault proxy speaks plain HTTP to the registry"
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            upstream: registry.host().to_owned(),
            inject_authorization: Mutex::default(),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("upstream client"),
            rules: Mutex::default(),
            seen: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let (up, up_rx) = watch::channel(true);
        let thread_shared = shared.clone();
        let thread = thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(accept_loop(thread_shared, listener, port, up_rx));
            })
            .expect("proxy thread");
        Self {
            port,
            host: format!("127.0.0.1:{port}"),
            shared,
            up: Some(up),
            thread: Some(thread),
        }
    }

    /// Forward every request with this `Authorization` (the registry's own credentials), whatever
    /// the client sent: a stand-in for a storage host that needs no credentials of the client.
    pub fn inject_authorization(&self, user: &str, password: &str) {
        use base64::Engine as _;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let value = HeaderValue::from_str(&format!("Basic {encoded}")).expect("header value");
        *lock(&self.shared.inject_authorization) = Some(value);
    }

    /// `127.0.0.1:PORT`, to use as the registry host of a ModuleSource.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Requests whose path contains `path_part` (any method) get `fault`. The first matching
    /// rule wins; rules added later come after.
    pub fn fail(&self, path_part: &str, fault: Fault) {
        self.add_rule(None, path_part, fault);
    }

    /// Like [`Self::fail`], for one method only (e.g. `HEAD`).
    pub fn fail_method(&self, method: &str, path_part: &str, fault: Fault) {
        self.add_rule(Some(method.to_owned()), path_part, fault);
    }

    /// Back to pass-through (does not bring a downed proxy up).
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Closes the listener and every open connection: new connections are refused until [`Self::up`].
    pub fn down(&self) {
        self.set_up(false);
        self.wait_until("the proxy to refuse connections", |reachable| !reachable);
    }

    /// Listens again on the same port.
    pub fn up(&self) {
        self.set_up(true);
        self.wait_until("the proxy to accept connections", |reachable| reachable);
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// The requests with this method whose path contains `path_part`.
    pub fn matching(&self, method: &str, path_part: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.method == method && s.path.contains(path_part))
            .collect()
    }

    pub fn count(&self, method: &str, path_part: &str) -> usize {
        self.matching(method, path_part).len()
    }

    /// Arrival times of the matching requests.
    pub fn times(&self, method: &str, path_part: &str) -> Vec<Instant> {
        self.matching(method, path_part)
            .iter()
            .map(|s| s.at)
            .collect()
    }

    /// The most requests that were in flight at once (arrival to end of the response body).
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    fn add_rule(&self, method: Option<String>, path_part: &str, fault: Fault) {
        lock(&self.shared.rules).push(Rule {
            method,
            path_part: path_part.to_owned(),
            fault,
        });
    }

    fn set_up(&self, value: bool) {
        if let Some(up) = &self.up {
            up.send_replace(value);
        }
    }

    fn wait_until(&self, what: &str, want: impl Fn(bool) -> bool) {
        let until = Instant::now() + CONNECT_DEADLINE;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            let reachable =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            if want(reachable) {
                return;
            }
            assert!(
                Instant::now() < until,
                "timed out after {CONNECT_DEADLINE:?} waiting for {what}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Dropping the sender ends the accept loop, then the runtime and every connection.
        self.up.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(
    shared: Arc<Shared>,
    first: std::net::TcpListener,
    port: u16,
    mut up: watch::Receiver<bool>,
) {
    let mut listener = TcpListener::from_std(first).ok();
    loop {
        let Some(current) = listener.take() else {
            // Down: wait to be brought up (or dropped), then listen on the same port again.
            if up.changed().await.is_err() {
                return;
            }
            if *up.borrow_and_update() {
                listener = bind_again(port).await;
            }
            continue;
        };
        tokio::select! {
            accepted = current.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(connection(shared.clone(), stream, up.clone()));
                }
                listener = Some(current);
            }
            changed = up.changed() => {
                if changed.is_err() {
                    return;
                }
                // Dropping `current` when going down makes new connections fail with "refused".
                if *up.borrow_and_update() {
                    listener = Some(current);
                }
            }
        }
    }
}

/// The port was ours a moment ago; tokio sets SO_REUSEADDR, so only a thief could take it.
async fn bind_again(port: u16) -> Option<TcpListener> {
    for _ in 0..50 {
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)).await {
            return Some(listener);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the fault proxy cannot listen on port {port} again");
}

/// What a response body may need of its connection.
#[derive(Clone)]
struct Conn {
    /// Set to make the close a reset.
    reset: Arc<AtomicBool>,
    /// A second handle on the client socket, to notice the client leaving while a body stalls
    /// (hyper does not read while it waits for a body).
    watch: Arc<TcpStream>,
}

/// One client connection, served until it closes or the proxy goes down (then reset).
async fn connection(shared: Arc<Shared>, stream: TcpStream, mut up: watch::Receiver<bool>) {
    let Ok((stream, watch)) = with_watch_handle(stream) else {
        return;
    };
    let conn = Conn {
        reset: Arc::new(AtomicBool::new(false)),
        watch: Arc::new(watch),
    };
    let io = TokioIo::new(ResettableStream {
        inner: stream,
        reset: conn.reset.clone(),
    });
    let service_conn = conn.clone();
    let service = service_fn(move |request| {
        let shared = shared.clone();
        let conn = service_conn.clone();
        async move { Ok::<_, Infallible>(handle(shared, request, conn).await) }
    });
    let serve = http1::Builder::new().serve_connection(io, service);
    tokio::select! {
        _ = serve => {}
        _ = up.wait_for(|up| !*up) => conn.reset.store(true, Ordering::SeqCst),
    }
}

/// The stream and a duplicate of its socket (both non-blocking, both registered with tokio).
fn with_watch_handle(stream: TcpStream) -> io::Result<(TcpStream, TcpStream)> {
    let std = stream.into_std()?;
    let duplicate = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, TcpStream::from_std(duplicate)?))
}

type ProxyBody = StreamBody<BoxStream<'static, Result<Frame<Bytes>, io::Error>>>;

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    conn: Conn,
) -> Response<ProxyBody> {
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let fault = match shared.fault_for(&method, &path) {
        Some(Fault::ResetAfterUnlessRanged(_)) if range.is_some() => None,
        Some(Fault::ResetAfterUnlessRanged(bytes)) => Some(Fault::ResetAfter(bytes)),
        other => other,
    };
    let authorization = request.headers().contains_key(header::AUTHORIZATION);
    let tracker = Tracker::new(
        shared.clone(),
        &method,
        &path,
        fault.clone(),
        authorization,
        range,
    );
    let (status, headers, body) = match &fault {
        Some(Fault::Status { code, retry_after }) => {
            let (headers, body) = error_response(*code, *retry_after);
            (*code, headers, body)
        }
        Some(Fault::RedirectTo(base)) => redirect_response(&format!("{base}{path}")),
        Some(Fault::PageTags(size)) => {
            page_of_tags(&shared, request, &path, *size, &LinkForm::Path).await
        }
        Some(Fault::PageTagsLinked(size, form)) => {
            page_of_tags(&shared, request, &path, *size, form).await
        }
        Some(Fault::Respond { content_type, body }) => canned_response(content_type, body),
        Some(Fault::Bare(code)) => {
            let empty: BodyStream = futures::stream::empty().boxed();
            (*code, HeaderMap::new(), empty)
        }
        _ => forward(&shared, request, fault.as_ref(), conn).await,
    };
    tracker.set_status(status);
    // The tracker lives as long as the body: it records when the client got (or gave up) the end.
    let body = body.map(move |chunk| {
        let _ = &tracker;
        chunk.map(Frame::data)
    });
    let mut response = Response::new(StreamBody::new(body.boxed()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = headers;
    response
}

type BodyStream = BoxStream<'static, Result<Bytes, io::Error>>;

async fn forward(
    shared: &Shared,
    request: Request<Incoming>,
    fault: Option<&Fault>,
    conn: Conn,
) -> (u16, HeaderMap, BodyStream) {
    let (parts, body) = request.into_parts();
    let url = format!(
        "http://{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream = shared.client.request(parts.method, url);
    let injected = lock(&shared.inject_authorization).clone();
    for (name, value) in &parts.headers {
        let replaced = injected.is_some() && name == header::AUTHORIZATION;
        if !hop_by_hop(name) && name != header::HOST && !replaced {
            upstream = upstream.header(name, value);
        }
    }
    if let Some(value) = injected {
        upstream = upstream.header(header::AUTHORIZATION, value);
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let response = match upstream.body(body).send().await {
        Ok(response) => response,
        Err(_) => return (502, HeaderMap::new(), futures::stream::empty().boxed()),
    };
    let status = response.status().as_u16();
    let dropped = match fault {
        Some(Fault::DropHeader(name)) => Some(name.to_ascii_lowercase()),
        _ => None,
    };
    let replaced = match fault {
        Some(Fault::ReplaceHeader { name, value }) => HeaderValue::from_str(value)
            .ok()
            .map(|value| (name.to_ascii_lowercase(), value)),
        _ => None,
    };
    let mut headers = HeaderMap::new();
    let mut replaced_once = false;
    for (name, value) in response.headers() {
        if hop_by_hop(name) || dropped.as_deref() == Some(name.as_str()) {
            continue;
        }
        match &replaced {
            Some((target, new)) if target == name.as_str() => {
                if !replaced_once {
                    headers.append(name, new.clone());
                    replaced_once = true;
                }
            }
            _ => {
                headers.append(name, value.clone());
            }
        }
    }
    let body = response.bytes_stream().map_err(io::Error::other).boxed();
    (status, headers, apply_body_fault(body, fault, conn))
}

fn apply_body_fault(body: BodyStream, fault: Option<&Fault>, conn: Conn) -> BodyStream {
    match fault {
        Some(Fault::ResetAfter(bytes)) => reset_after(body, *bytes, conn.reset),
        Some(Fault::Stall) => stall_until_the_client_leaves(conn.watch),
        Some(Fault::Slow(bytes_per_second)) => throttle(body, *bytes_per_second),
        _ => body,
    }
}

/// The first `limit` bytes, then an error that makes hyper drop the connection, which the
/// connection's stream turns into a reset (SO_LINGER 0).
fn reset_after(body: BodyStream, limit: usize, reset: Arc<AtomicBool>) -> BodyStream {
    let mut sent = 0usize;
    body.flat_map(move |chunk| {
        let items: Vec<Result<Bytes, io::Error>> = match chunk {
            Ok(bytes) if sent + bytes.len() < limit => {
                sent += bytes.len();
                vec![Ok(bytes)]
            }
            Ok(bytes) => {
                let head = bytes.slice(..limit - sent);
                sent = limit;
                reset.store(true, Ordering::SeqCst);
                vec![
                    Ok(head),
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "fault: reset",
                    )),
                ]
            }
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(items)
    })
    .boxed()
}

/// No body byte, ever; the body fails (ending the connection and its record) once the client
/// closed or reset the connection, so `Seen::done` is when the client gave up.
fn stall_until_the_client_leaves(watch: Arc<TcpStream>) -> BodyStream {
    futures::stream::once(async move {
        let mut byte = [0u8; 1];
        // Ok(0) is the client's FIN, Err its RST; bytes would be a pipelined request: keep waiting.
        while let Ok(1..) = watch.peek(&mut byte).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the client gave up on the stalled body",
        ))
    })
    .boxed()
}

/// Re-chunks the body into pieces sent every 50 ms, about `bytes_per_second` in all.
fn throttle(body: BodyStream, bytes_per_second: usize) -> BodyStream {
    const TICK: Duration = Duration::from_millis(50);
    let piece = (bytes_per_second / 20).max(1);
    body.flat_map(move |chunk| {
        let pieces: Vec<Result<Bytes, io::Error>> = match chunk {
            Ok(bytes) => (0..bytes.len())
                .step_by(piece)
                .map(|start| Ok(bytes.slice(start..(start + piece).min(bytes.len()))))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(pieces)
    })
    .then(|piece| async move {
        tokio::time::sleep(TICK).await;
        piece
    })
    .boxed()
}

fn redirect_response(location: &str) -> (u16, HeaderMap, BodyStream) {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    (307, headers, futures::stream::empty().boxed())
}

/// The whole tag list from upstream, cut into the page after `last`, with a `Link` to the next.
async fn page_of_tags(
    shared: &Shared,
    request: Request<Incoming>,
    path: &str,
    size: usize,
    form: &LinkForm,
) -> (u16, HeaderMap, BodyStream) {
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let last = query
        .split('&')
        .find_map(|p| p.strip_prefix("last="))
        .map(str::to_owned);
    let mut upstream = shared
        .client
        .get(format!("http://{}{base}", shared.upstream));
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        upstream = upstream.header(header::AUTHORIZATION, value);
    }
    let Ok(response) = upstream.send().await else {
        return (502, HeaderMap::new(), futures::stream::empty().boxed());
    };
    let status = response.status().as_u16();
    let full: serde_json::Value = response.json().await.unwrap_or_default();
    if status != 200 {
        return (status, HeaderMap::new(), futures::stream::empty().boxed());
    }
    let mut tags: Vec<String> = full["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    tags.sort();
    let start = last.map_or(0, |last| tags.partition_point(|t| *t <= last));
    let page: Vec<String> = tags.iter().skip(start).take(size).cloned().collect();
    let mut headers = HeaderMap::new();
    if start + page.len() < tags.len()
        && let Some(last) = page.last()
    {
        let query = format!("?n={size}&last={last}");
        let target = match form {
            LinkForm::Path => format!("{base}{query}"),
            LinkForm::Relative => query,
            LinkForm::Absolute(prefix) => format!("{prefix}{base}{query}"),
        };
        let link = format!("<{target}>; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, value);
        }
    }
    let body = serde_json::json!({ "name": full["name"], "tags": page }).to_string();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let body = futures::stream::once(async move { Ok(Bytes::from(body)) }).boxed();
    (200, headers, body)
}

fn canned_response(content_type: &str, body: &[u8]) -> (u16, HeaderMap, BodyStream) {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let body = Bytes::copy_from_slice(body);
    (
        200,
        headers,
        futures::stream::once(async move { Ok(body) }).boxed(),
    )
}

/// An error as distribution would send it: an OCI error envelope and, for 429, `Retry-After`.
fn error_response(code: u16, retry_after: Option<u64>) -> (HeaderMap, BodyStream) {
    let error_code = if code == 429 {
        "TOOMANYREQUESTS"
    } else {
        "UNAVAILABLE"
    };
    let body = format!(r#"{{"errors":[{{"code":"{error_code}","message":"fault injected"}}]}}"#);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    let body = futures::stream::once(async move { Ok(Bytes::from(body)) }).boxed();
    (headers, body)
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "te" | "trailer" | "upgrade"
    )
}

impl Shared {
    fn fault_for(&self, method: &str, path: &str) -> Option<Fault> {
        lock(&self.rules)
            .iter()
            .find(|r| {
                r.method.as_deref().is_none_or(|m| m == method) && path.contains(&r.path_part)
            })
            .map(|r| r.fault.clone())
    }
}

/// Records one request from arrival until its response body is dropped.
struct Tracker {
    shared: Arc<Shared>,
    index: usize,
}

impl Tracker {
    fn new(
        shared: Arc<Shared>,
        method: &str,
        path: &str,
        fault: Option<Fault>,
        authorization: bool,
        range: Option<String>,
    ) -> Self {
        let index = {
            let mut seen = lock(&shared.seen);
            seen.push(Seen {
                method: method.to_owned(),
                path: path.to_owned(),
                at: Instant::now(),
                done: None,
                status: 0,
                fault,
                authorization,
                range,
            });
            seen.len() - 1
        };
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self { shared, index }
    }

    fn set_status(&self, status: u16) {
        if let Some(seen) = lock(&self.shared.seen).get_mut(self.index) {
            seen.status = status;
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(seen) = lock(&self.shared.seen).get_mut(self.index) {
            seen.done = Some(Instant::now());
        }
    }
}

/// The client socket; once `reset` is set, closing it sends RST instead of FIN (SO_LINGER 0), as a
/// crashing registry or a middlebox dropping the connection would.
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
