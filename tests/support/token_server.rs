#![allow(dead_code)] // each test binary uses a different part of the harness
//! A token server for Debian's `docker-registry` in `auth: token` mode, as GitLab, Harbor, Docker
//! Hub and GHCR run one: it checks basic credentials (GET, as the token spec says) or an OAuth2
//! refresh token / password grant (POST), and issues ES256 JWTs with the requested repository
//! scopes, signed by a key whose certificate (in the token's `x5c` header) a test CA signed. The
//! registry trusts that CA (`rootcertbundle`).
//!
//! The test controls it: the token lifetime, an error status to answer with (5xx, 429 with
//! `Retry-After`), whether POST (OAuth2) is offered at all; and it records every request it
//! answered (method, grant, scopes, status).
//!
//! It runs on its own thread and tokio runtime, like the fault proxy, so that tests blocking their
//! own runtime with `kubectl` do not freeze it.

use std::{
    convert::Infallible,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

pub const SERVICE: &str = "mpo-test-registry";
pub const ISSUER: &str = "mpo-test-token-server";

/// How a token request authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// GET with `Authorization: Basic` (user and password as given).
    Basic { user: String, password: String },
    /// GET without credentials.
    Anonymous,
    /// POST `grant_type=refresh_token`.
    RefreshToken(String),
    /// POST `grant_type=password`.
    Password { user: String },
}

/// One request the server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    pub grant: Grant,
    pub scopes: Vec<String>,
    /// How many `scope` parameters carried them (a GET repeats the parameter per scope).
    pub scope_params: usize,
    /// The path asked for: `/token`, or `/moved` after a redirect.
    pub path: String,
    pub service: Option<String>,
    pub status: u16,
    pub at: Instant,
}

struct Settings {
    lifetime: Duration,
    fault: Option<(u16, Option<u64>)>,
    oauth: bool,
    refresh_token: Option<String>,
    /// Answer `/token` with `307` to this URL (the query kept); `/moved` is served as `/token`.
    redirect: Option<String>,
}

struct Shared {
    user: String,
    password: String,
    key: EncodingKey,
    /// base64 (standard) DER of the signing certificate, the token header's `x5c`.
    x5c: String,
    settings: Mutex<Settings>,
    requests: Mutex<Vec<TokenRequest>>,
}

pub struct TokenServer {
    port: u16,
    root_bundle: PathBuf,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TokenServer {
    /// Creates the CA and signing key under `dir` and starts serving on a loopback port. `user`
    /// and `password` are the only credentials it accepts.
    pub fn start(dir: &Path, user: &str, password: &str) -> Result<Self> {
        let material = signing_material(dir)?;
        let shared = Arc::new(Shared {
            user: user.to_owned(),
            password: password.to_owned(),
            key: EncodingKey::from_ec_pem(&material.key_pem).context("the token signing key")?,
            x5c: material.x5c,
            settings: Mutex::new(Settings {
                lifetime: Duration::from_secs(300),
                fault: None,
                oauth: true,
                refresh_token: None,
                redirect: None,
            }),
            requests: Mutex::default(),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("token server port")?;
        listener
            .set_nonblocking(true)
            .context("non-blocking listener")?;
        let port = listener
            .local_addr()
            .context("token server address")?
            .port();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let serving = shared.clone();
        thread::Builder::new()
            .name("token-server".into())
            .spawn(move || serve(listener, serving, stopped))
            .context("starting the token server thread")?;
        Ok(Self {
            port,
            root_bundle: material.ca,
            shared,
            stop: Some(stop),
        })
    }

    /// `http://127.0.0.1:<port>/token`, the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The CA the registry trusts for token signatures (`rootcertbundle`).
    pub fn root_bundle(&self) -> &Path {
        &self.root_bundle
    }

    /// Lifetime of the tokens issued from now on (`expires_in` and the JWT's `exp`).
    pub fn set_lifetime(&self, lifetime: Duration) {
        lock(&self.shared.settings).lifetime = lifetime;
    }

    /// Answer every request with `status` (and `Retry-After`), until [`Self::heal`].
    pub fn fail(&self, status: u16, retry_after: Option<u64>) {
        lock(&self.shared.settings).fault = Some((status, retry_after));
    }

    pub fn heal(&self) {
        lock(&self.shared.settings).fault = None;
    }

    /// Whether POST (OAuth2 grants) is served; without it POST answers 404, as on registries
    /// that only speak the GET flow.
    pub fn set_oauth(&self, enabled: bool) {
        lock(&self.shared.settings).oauth = enabled;
    }

    /// The refresh token (a dockerCfg `identitytoken`) the server accepts: by POST as a refresh
    /// token, by GET as the basic password of any user.
    pub fn set_refresh_token(&self, token: &str) {
        lock(&self.shared.settings).refresh_token = Some(token.to_owned());
    }

    /// Answer token requests with `307 Temporary Redirect` to `url` (its query replaced by the
    /// request's) until `None`; [`Self::moved_url`] is this server's own redirect target.
    pub fn redirect_to(&self, url: Option<&str>) {
        lock(&self.shared.settings).redirect = url.map(str::to_owned);
    }

    /// `http://127.0.0.1:<port>/moved`: served like the realm, a same-origin redirect target.
    pub fn moved_url(&self) -> String {
        format!("http://127.0.0.1:{}/moved", self.port)
    }

    /// A token for `scopes`, issued directly (for a dockerCfg `registrytoken`).
    pub fn issue(&self, scopes: &[&str], lifetime: Duration) -> Result<String> {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        sign(&self.shared, &self.shared.user, &scopes, lifetime)
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Successful token requests whose scopes include `scope`.
    pub fn issued_for(&self, scope: &str) -> Vec<TokenRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200 && r.scopes.iter().any(|s| s == scope))
            .collect()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("token server: cannot start a runtime");
        return;
    };
    runtime.block_on(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            eprintln!("token server: cannot use the listener");
            return;
        };
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| answer(req, shared.clone()));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        }
    });
}

async fn answer(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().as_str().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let path = request.uri().path().to_owned();
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let params = if method == "POST" {
        form_pairs(&String::from_utf8_lossy(&body))
    } else {
        form_pairs(&query)
    };
    let redirect = lock(&shared.settings).redirect.clone();
    let (status, headers, body, grant) = match (path.as_str(), redirect) {
        ("/token", Some(target)) => (
            307,
            vec![(hyper::header::LOCATION, format!("{target}?{query}"))],
            json!({"error": "moved"}),
            Grant::Anonymous,
        ),
        ("/token" | "/moved", _) => decide(&shared, &method, authorization.as_deref(), &params),
        _ => (
            404,
            Vec::new(),
            json!({"error": "not found"}),
            Grant::Anonymous,
        ),
    };
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let scope_params = params.iter().filter(|(k, _)| k == "scope").count();
    lock(&shared.requests).push(TokenRequest {
        method,
        grant,
        scopes,
        scope_params,
        path,
        service: params
            .iter()
            .find(|(k, _)| k == "service")
            .map(|(_, v)| v.clone()),
        status,
        at: Instant::now(),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

type Answer = (
    u16,
    Vec<(hyper::header::HeaderName, String)>,
    serde_json::Value,
    Grant,
);

fn decide(
    shared: &Shared,
    method: &str,
    authorization: Option<&str>,
    params: &[(String, String)],
) -> Answer {
    let (lifetime, fault, oauth, refresh_token) = {
        let s = lock(&shared.settings);
        (s.lifetime, s.fault, s.oauth, s.refresh_token.clone())
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let grant = match method {
        "POST" => match param("grant_type").as_deref() {
            Some("refresh_token") => {
                Grant::RefreshToken(param("refresh_token").unwrap_or_default())
            }
            Some("password") => Grant::Password {
                user: param("username").unwrap_or_default(),
            },
            _ => Grant::Anonymous,
        },
        _ => basic_of(authorization).map_or(Grant::Anonymous, |(user, password)| Grant::Basic {
            user,
            password,
        }),
    };
    if let Some((status, retry_after)) = fault {
        let headers = retry_after
            .map(|s| (hyper::header::RETRY_AFTER, s.to_string()))
            .into_iter()
            .collect();
        return (status, headers, json!({"error": "injected"}), grant);
    }
    if method == "POST" && !oauth {
        return (404, Vec::new(), json!({"error": "no oauth"}), grant);
    }
    let accepted = match &grant {
        Grant::Basic { user, password } => {
            (*user == shared.user && *password == shared.password)
                || refresh_token.as_deref() == Some(password.as_str())
        }
        Grant::RefreshToken(token) => refresh_token.as_deref() == Some(token.as_str()),
        Grant::Password { user } => {
            *user == shared.user && param("password").as_deref() == Some(shared.password.as_str())
        }
        Grant::Anonymous => false,
    };
    if !accepted {
        let headers = vec![(
            hyper::header::WWW_AUTHENTICATE,
            "Basic realm=\"token\"".to_owned(),
        )];
        return (401, headers, json!({"error": "unauthorized"}), grant);
    }
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    match sign(shared, &shared.user, &scopes, lifetime) {
        Ok(token) => {
            let mut body = json!({
                "token": token,
                "access_token": token,
                "expires_in": lifetime.as_secs(),
            });
            if let Grant::RefreshToken(refresh) = &grant {
                body["refresh_token"] = refresh.clone().into();
            }
            (200, Vec::new(), body, grant)
        }
        Err(err) => (500, Vec::new(), json!({"error": err.to_string()}), grant),
    }
}

/// A JWT in the shape distribution 2.8 verifies: `iss`, `aud` (a string), `exp`/`nbf`, `access`.
fn sign(shared: &Shared, subject: &str, scopes: &[String], lifetime: Duration) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock")?
        .as_secs();
    let access: Vec<serde_json::Value> = scopes.iter().filter_map(|s| access_of(s)).collect();
    let claims = json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + lifetime.as_secs().max(1),
        "nbf": now.saturating_sub(1),
        "iat": now,
        "jti": format!("{now}-{}", rand_suffix()),
        "access": access,
    });
    let mut header = Header::new(Algorithm::ES256);
    header.x5c = Some(vec![shared.x5c.clone()]);
    jsonwebtoken::encode(&header, &claims, &shared.key).context("signing the token")
}

/// `repository:<name>:<actions>` → `{"type", "name", "actions"}`; the name may hold colons.
fn access_of(scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Some(json!({"type": kind, "name": name, "actions": actions}))
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

fn basic_of(authorization: Option<&str>) -> Option<(String, String)> {
    let encoded = authorization?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// `a=1&b=x%20y` → pairs, percent-decoded (`+` is a space in forms).
fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct SigningMaterial {
    ca: PathBuf,
    key_pem: Vec<u8>,
    x5c: String,
}

/// A CA (the registry's `rootcertbundle`) and an EC P-256 signing key with a certificate the CA
/// signed, under `<dir>/token/`.
fn signing_material(dir: &Path) -> Result<SigningMaterial> {
    let dir = dir.join("token");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (key, csr, cert) = (
        dir.join("signer.key"),
        dir.join("signer.csr"),
        dir.join("signer.crt"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "2", "-subj", "/CN=mpo-test-token-ca"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
        "creating the token CA",
    )?;
    openssl(
        Command::new("openssl")
            .args(["req", "-new"])
            .args(ec)
            .args(["-subj", "/CN=mpo-test-token-signer"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
        "creating the token signing key",
    )?;
    let ext = dir.join("signer.ext");
    fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    )
    .context("writing the signer extensions")?;
    openssl(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial", "0x1d"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
        "signing the token certificate",
    )?;
    let pem = fs::read_to_string(&cert).context("reading the signer certificate")?;
    let x5c: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let key_pem = fs::read(&key).context("reading the signing key")?;
    Ok(SigningMaterial { ca, key_pem, x5c })
}

fn openssl(command: &mut Command, what: &str) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("{what}: running openssl"))?;
    if !output.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// Used by [`super::registry`] to write the registry's `auth: token` section.
pub fn registry_auth_yaml(server: &TokenServer) -> String {
    format!(
        "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        server.realm(),
        server.root_bundle().display()
    )
}
