#![allow(dead_code)] // each test binary uses a different part of the harness
//! A real OCI registry for end-to-end tests: Debian's `docker-registry` (distribution 2.8) on loopback.
//!
//! Each [`TestRegistry`] owns a temp dir holding its own `config.yml` (never the packaged
//! `/etc/docker/registry/config.yml`, which listens on all interfaces), its storage (`data/`), its log
//! (`registry.log`) and, depending on the [`RegistryKind`], an htpasswd file and a fresh CA + server
//! certificate. The process is killed by its own PID on [`TestRegistry::stop`] and on drop.
//!
//! Orphans: the registry is started through `setpriv --pdeathsig KILL` from a dedicated "keeper" thread
//! that lives exactly as long as the process, so if the test binary dies without running destructors
//! (Ctrl-C, SIGKILL, abort) the kernel kills the registry too. The keeper thread (not the caller's
//! thread) is the parent on purpose: `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child
//! exits, and a test thread exits at the end of its test even if the registry is shared, e.g. in a static.
//!
//! Access log: distribution writes, on stdout, one Apache "combined" line per request, including
//! requests refused with 401 (which get no logrus `response completed` line):
//!
//! ```text
//! 127.0.0.1 - - [28/Nov/2026:13:55:58 +0000] "HEAD /v2/foo/manifests/v1 HTTP/1.1" 401 146 "" "curl/7.88.1"
//! ```
//!
//! [`TestRegistry::requests`] and [`TestRegistry::count_requests`] parse those lines. The line is written
//! by the outermost handler, before net/http flushes the last buffered bytes of the response, so in
//! practice a request the client has seen answered is already in the log (the scratch tests count right
//! after curl returns).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::token_server::TokenServer;
use base64::Engine as _;

/// The user of the htpasswd variants.
pub const USER: &str = "tester";
/// What a user asks for when resolving a tag (the operator accepts the same three types).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json";

const READY_DEADLINE: Duration = Duration::from_secs(20);
const POLL_PERIOD: Duration = Duration::from_millis(50);
const PORT_ATTEMPTS: usize = 5;
const LOG_TAIL_LINES: usize = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryKind {
    Plain,
    Htpasswd,
    Tls,
    TlsHtpasswd,
    /// `auth: token` with the harness's [`TokenServer`] (plain HTTP, as the realm is).
    Token,
}

impl RegistryKind {
    pub const ALL: [RegistryKind; 4] = [Self::Plain, Self::Htpasswd, Self::Tls, Self::TlsHtpasswd];

    pub fn has_auth(self) -> bool {
        matches!(self, Self::Htpasswd | Self::TlsHtpasswd | Self::Token)
    }

    fn has_htpasswd(self) -> bool {
        matches!(self, Self::Htpasswd | Self::TlsHtpasswd)
    }

    pub fn has_tls(self) -> bool {
        matches!(self, Self::Tls | Self::TlsHtpasswd)
    }
}

/// One access-log line of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// The request URI as sent, e.g. `/v2/mods/echo/manifests/v1` (with the query string, if any).
    pub uri: String,
    pub status: u16,
    /// The `User-Agent` (the operator's starts with `mpo-operator/`).
    pub agent: String,
}

pub struct TestRegistry {
    kind: RegistryKind,
    dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    host: String,
    password: Option<String>,
    ca_pem: Option<String>,
    ca_file: Option<PathBuf>,
    token_server: Option<TokenServer>,
    /// `notifications:` of the config: where the registry sends its push events.
    notifications: Option<String>,
    running: Option<Running>,
}

/// A live registry process and the thread whose life bounds it (see the module docs).
struct Running {
    child: Child,
    /// Dropping this ends the keeper thread, which makes the kernel SIGKILL the child if still alive.
    _keeper: mpsc::Sender<()>,
}

/// Why one launch attempt failed: a lost port race is retried with another port, the rest is not.
enum LaunchError {
    PortTaken,
    Other(anyhow::Error),
}

impl TestRegistry {
    /// Starts a registry of `kind` on `127.0.0.1:<port picked at run time>` and waits until `/v2/`
    /// answers 200 or 401 (deadline 20 s). Blocks the calling thread (about 0.1–0.3 s).
    pub fn start(kind: RegistryKind) -> Result<Self> {
        let binary = registry_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("mpo-registry-")
            .tempdir()
            .context("creating the registry's temp dir")?;
        let data = dir.path().join("data");
        fs::create_dir(&data).with_context(|| format!("creating {}", data.display()))?;

        let password = if kind.has_auth() {
            let password = random_hex(16)?;
            if kind.has_htpasswd() {
                write_htpasswd(&dir.path().join("htpasswd"), USER, &password)?;
            }
            Some(password)
        } else {
            None
        };
        let token_server = match (kind, &password) {
            (RegistryKind::Token, Some(password)) => {
                Some(TokenServer::start(dir.path(), USER, password)?)
            }
            _ => None,
        };
        let (ca_pem, ca_file) = if kind.has_tls() {
            let ca_file = make_tls_material(dir.path())?;
            let pem = fs::read_to_string(&ca_file)
                .with_context(|| format!("reading {}", ca_file.display()))?;
            (Some(pem), Some(ca_file))
        } else {
            (None, None)
        };

        let mut reg = TestRegistry {
            kind,
            dir,
            data,
            port: 0,
            host: String::new(),
            password,
            ca_pem,
            ca_file,
            token_server,
            notifications: None,
            running: None,
        };
        for _ in 0..PORT_ATTEMPTS {
            reg.set_port(free_loopback_port()?);
            reg.write_config()?;
            match reg.launch(&binary) {
                Ok(()) => return Ok(reg),
                // Another process took the port between our probe and the registry's bind.
                Err(LaunchError::PortTaken) => continue,
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
        bail!(
            "docker-registry ({kind:?}) lost the race for a free port {PORT_ATTEMPTS} times; log tail:\n{}",
            reg.log_tail()
        )
    }

    pub fn kind(&self) -> RegistryKind {
        self.kind
    }

    /// The token server of a [`RegistryKind::Token`] registry.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// `127.0.0.1:PORT`, as it appears in references and in dockerCfg `auths` keys.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn scheme(&self) -> &'static str {
        if self.kind.has_tls() { "https" } else { "http" }
    }

    /// `scheme://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.host)
    }

    /// `(user, password)` for the htpasswd variants.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.password.as_deref().map(|p| (USER, p))
    }

    /// The CA certificate (PEM) that signed the server certificate (TLS variants).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// A file holding only the CA certificate, alone in its directory (usable as `curl --cacert` and
    /// as a skopeo `--cert-dir`, which would mistake a `*.key` next to it for a client key).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// base64 of a docker `config.json` with this registry's credentials; `""` without auth.
    pub fn docker_cfg(&self) -> String {
        match self.credentials() {
            Some((_, password)) => self.docker_cfg_with_password(password),
            None => String::new(),
        }
    }

    /// Like [`Self::docker_cfg`] but with `password` (for tests of refused credentials). Produced for
    /// every kind, so a test can also hand credentials to a registry that does not ask for any.
    pub fn docker_cfg_with_password(&self, password: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let cfg = serde_json::json!({
            "auths": {
                self.host.as_str(): {
                    "username": USER,
                    "password": password,
                    "auth": b64.encode(format!("{USER}:{password}")),
                }
            }
        });
        b64.encode(cfg.to_string())
    }

    /// The registry's storage root (`rootdirectory`); blobs live under
    /// `docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Path of the blob file for `digest` (`sha256:…`) in the storage, e.g. to corrupt it.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let prefix = hex.get(..2).unwrap_or(hex);
        self.data_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(prefix)
            .join(hex)
            .join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The whole registry log so far (stdout and stderr of every run, restarts appended).
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Every request in the access log so far, oldest first (across restarts).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.log().lines().filter_map(parse_access_line).collect()
    }

    /// How many requests with `method` (e.g. `HEAD`, case-insensitive) have a URI containing `path_part`,
    /// whatever their status (401s included).
    pub fn count_requests(&self, method: &str, path_part: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.uri.contains(path_part))
            .count()
    }

    /// PID of the running registry process, if running.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    /// Kills the registry (SIGKILL by its own PID) and reaps it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            // Errors mean it already exited; either way `wait` reaps it so no zombie stays behind.
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }

    /// Stops and starts the registry again on the same port with the same data and credentials.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let binary = registry_binary()?;
        match self.launch(&binary) {
            Ok(()) => Ok(()),
            Err(LaunchError::PortTaken) => Err(anyhow!(
                "restarting docker-registry: port {} was taken while it was down; log tail:\n{}",
                self.port,
                self.log_tail()
            )),
            Err(LaunchError::Other(e)) => Err(e.context("restarting docker-registry")),
        }
    }

    /// Restarts the registry sending its real notifications (distribution's own retry and
    /// backoff) to `url` with `Authorization: Bearer <token>`. Debian's 2.8 sends pulls too
    /// (`ignore` is distribution 3's).
    pub fn send_notifications_to(&mut self, url: &str, token: &str) -> Result<()> {
        self.notifications = Some(format!(
            "notifications:\n  events:\n    includereferences: true\n  endpoints:\n    - name: mpo-operator\n      url: {url}\n      headers:\n        Authorization: [\"Bearer {token}\"]\n      timeout: 2s\n      threshold: 3\n      backoff: 200ms\n      ignore:\n        actions: [pull]\n"
        ));
        self.write_config()?;
        self.restart()
    }

    fn set_port(&mut self, port: u16) {
        self.port = port;
        self.host = format!("127.0.0.1:{port}");
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn write_config(&self) -> Result<()> {
        let dir = self.dir.path();
        let mut yaml = format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
             http:\n  addr: {host}\n  secret: {secret}\n",
            data = self.data_dir().display(),
            host = self.host,
            secret = random_hex(16)?,
        );
        if self.kind.has_tls() {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("tls.crt").display(),
                dir.join("tls.key").display()
            ));
        }
        if self.kind.has_htpasswd() {
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-registry\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        if let Some(server) = &self.token_server {
            yaml.push_str(&super::token_server::registry_auth_yaml(server));
        }
        if let Some(notifications) = &self.notifications {
            yaml.push_str(notifications);
        }
        let path = self.config_path();
        fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))
    }

    /// Spawns the process and waits for readiness; on failure the process is gone again.
    fn launch(&mut self, binary: &Path) -> Result<(), LaunchError> {
        let log_start = fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
        let running = self.spawn(binary).map_err(LaunchError::Other)?;
        self.running = Some(running);
        let outcome = self.wait_ready(log_start);
        if outcome.is_err() {
            self.stop();
        }
        outcome
    }

    fn spawn(&self, binary: &Path) -> Result<Running> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = match find_in_path("setpriv") {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL"]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.arg("serve")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log);
        let (child, keeper) = spawn_kept(cmd).context("spawning docker-registry")?;
        Ok(Running {
            child,
            _keeper: keeper,
        })
    }

    /// Ready = the log of this run says it listens on our address (so the port is ours, not another
    /// process's) and `GET /v2/` answers 200 or 401.
    fn wait_ready(&mut self, log_start: u64) -> Result<(), LaunchError> {
        let listening = format!("listening on {}", self.host);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let exited = match self.running.as_mut() {
                Some(r) => r.child.try_wait().map_err(|e| {
                    LaunchError::Other(anyhow!(e).context("checking the docker-registry process"))
                })?,
                None => {
                    return Err(LaunchError::Other(anyhow!(
                        "docker-registry is not running"
                    )));
                }
            };
            let this_run = self.log_since(log_start);
            if let Some(status) = exited {
                if this_run.contains("address already in use") {
                    return Err(LaunchError::PortTaken);
                }
                return Err(LaunchError::Other(anyhow!(
                    "docker-registry ({:?}) on {} exited with {status} before becoming ready; log tail:\n{}",
                    self.kind,
                    self.host,
                    tail(&this_run, LOG_TAIL_LINES)
                )));
            }
            if this_run.contains(&listening) && matches!(self.probe_v2(), 200 | 401) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LaunchError::Other(anyhow!(
                    "docker-registry ({:?}) on {} not ready within {READY_DEADLINE:?}; log tail:\n{}",
                    self.kind,
                    self.host,
                    tail(&this_run, LOG_TAIL_LINES)
                )));
            }
            thread::sleep(POLL_PERIOD);
        }
    }

    /// HTTP status of `GET /v2/` (0 when curl gets no answer).
    fn probe_v2(&self) -> u16 {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
            "--noproxy",
            "*",
        ]);
        if let Some(ca) = &self.ca_file {
            cmd.arg("--cacert").arg(ca);
        }
        cmd.arg(format!("{}/v2/", self.base_url()));
        cmd.output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn log_since(&self, offset: u64) -> String {
        let bytes = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    fn log_tail(&self) -> String {
        tail(&self.log(), LOG_TAIL_LINES)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which credentials `curl_head_digest` sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadAuth {
    /// The registry's own credentials, if it has any (none for Plain/Tls).
    Registry,
    /// No `-u` at all.
    None,
    /// User `tester` with this (presumably wrong) password.
    Password(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadResult {
    /// HTTP status; 0 when curl got no HTTP answer (TLS verification failed, connection refused, …).
    pub status: u16,
    /// The `Docker-Content-Digest` response header.
    pub digest: Option<String>,
    /// curl's exit code and stderr when it failed (e.g. `(60) SSL certificate problem`); never holds
    /// the password.
    pub curl_error: Option<String>,
}

/// `HEAD <scheme>://<host>/v2/<repository>/manifests/<tag>` with the real `curl`, as a user would run it:
/// `curl -sS -I -H 'Accept: <oci manifest, docker v2 manifest, oci index>' [--cacert CA] [-u user:pass]`.
/// A transport failure (no HTTP answer) is `Ok` with `status == 0`, not `Err`; `Err` means curl could not
/// be run at all.
pub fn curl_head_digest(
    reg: &TestRegistry,
    repository: &str,
    tag: &str,
    auth: HeadAuth,
) -> Result<HeadResult> {
    curl_head(reg, repository, tag, auth, true)
}

/// Same as [`curl_head_digest`] but without `--cacert`: against a TLS registry, curl must refuse the
/// self-signed chain (status 0, `curl_error` mentions the certificate).
pub fn curl_head_digest_without_ca(
    reg: &TestRegistry,
    repository: &str,
    tag: &str,
    auth: HeadAuth,
) -> Result<HeadResult> {
    curl_head(reg, repository, tag, auth, false)
}

fn curl_head(
    reg: &TestRegistry,
    repository: &str,
    tag: &str,
    auth: HeadAuth,
    use_ca: bool,
) -> Result<HeadResult> {
    let mut cmd = Command::new("curl");
    // --noproxy: an http(s)_proxy in the environment must not intercept loopback requests.
    cmd.args(["-sS", "-I", "--max-time", "10", "--noproxy", "*"])
        .arg("-H")
        .arg(format!("Accept: {MANIFEST_ACCEPT}"));
    if use_ca && let Some(ca) = reg.ca_file() {
        cmd.arg("--cacert").arg(ca);
    }
    let userpass = match &auth {
        HeadAuth::Registry => reg.credentials().map(|(u, p)| format!("{u}:{p}")),
        HeadAuth::None => None,
        HeadAuth::Password(p) => Some(format!("{USER}:{p}")),
    };
    if let Some(userpass) = userpass {
        // Note: on the command line (as a user would type it); visible in `ps` for a moment only.
        cmd.arg("-u").arg(userpass);
    }
    let url = format!("{}/v2/{repository}/manifests/{tag}", reg.base_url());
    cmd.arg(&url);
    let out = cmd
        .output()
        .with_context(|| format!("running curl -I {url}"))?;
    if !out.status.success() {
        let code = out
            .status
            .code()
            .map_or("signal".to_string(), |c| c.to_string());
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Ok(HeadResult {
            status: 0,
            digest: None,
            curl_error: Some(format!("curl exit {code}: {stderr}")),
        });
    }
    let (status, digest) = parse_head_response(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("parsing curl's answer for HEAD {url}"))?;
    Ok(HeadResult {
        status,
        digest,
        curl_error: None,
    })
}

/// Status and `Docker-Content-Digest` from `curl -I` output (the last response, should there be several).
fn parse_head_response(text: &str) -> Result<(u16, Option<String>)> {
    let mut status = None;
    let mut digest = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok());
            digest = None;
        } else if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("docker-content-digest")
        {
            digest = Some(value.trim().to_string());
        }
    }
    let status = status.ok_or_else(|| anyhow!("no HTTP status line in: {text:?}"))?;
    Ok((status, digest))
}

/// Parses `127.0.0.1 - - [date] "METHOD URI PROTO" STATUS SIZE "referer" "agent"`; other lines → None.
fn parse_access_line(line: &str) -> Option<LoggedRequest> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?;
    let uri = parts.next()?;
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    let status = rest.split_whitespace().next()?.parse().ok()?;
    // `… 401 146 "<referer>" "<user agent>"`: the last quoted field.
    let agent = rest
        .trim_end()
        .strip_suffix('"')
        .and_then(|r| r.rsplit_once('"'))
        .map(|(_, agent)| agent.to_string())
        .unwrap_or_default();
    Some(LoggedRequest {
        method: method.to_string(),
        uri: uri.to_string(),
        status,
        agent,
    })
}

/// Spawns `cmd` from a dedicated thread that stays alive until the returned sender is dropped, so that
/// `--pdeathsig` is tied to that thread rather than to the caller's (see the module docs).
fn spawn_kept(mut cmd: Command) -> Result<(Child, mpsc::Sender<()>)> {
    let (child_tx, child_rx) = mpsc::channel();
    let (keep_tx, keep_rx) = mpsc::channel::<()>();
    thread::Builder::new()
        .name("registry-keeper".into())
        .spawn(move || {
            let spawned = cmd.spawn();
            let ok = spawned.is_ok();
            let _ = child_tx.send(spawned);
            if ok {
                // Returns once the owner drops its sender (no message is ever sent).
                let _ = keep_rx.recv();
            }
        })
        .context("starting the registry keeper thread")?;
    let child = child_rx
        .recv()
        .context("the registry keeper thread died")?
        .context("spawning the registry process")?;
    Ok((child, keep_tx))
}

fn registry_binary() -> Result<PathBuf> {
    find_in_path("docker-registry").ok_or_else(|| {
        anyhow!("docker-registry not found in PATH (apt-get install -y docker-registry)")
    })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Binds `127.0.0.1:0` and returns the port the kernel chose; the socket is closed again, so the
/// registry may still lose a race for it (handled by retrying in `start`).
fn free_loopback_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to pick a port")?;
    Ok(listener
        .local_addr()
        .context("reading the picked port")?
        .port())
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(hex::encode(buf))
}

/// bcrypt htpasswd line via `htpasswd -niB` (password on stdin, so not in argv).
fn write_htpasswd(path: &Path, user: &str, password: &str) -> Result<()> {
    let mut child = Command::new("htpasswd")
        .args(["-niB", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running htpasswd (apt-get install -y apache2-utils)")?;
    child
        .stdin
        .take()
        .context("htpasswd stdin")?
        .write_all(format!("{password}\n").as_bytes())
        .context("writing the password to htpasswd")?;
    let out = child.wait_with_output().context("waiting for htpasswd")?;
    if !out.status.success() {
        bail!(
            "htpasswd -niB failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .ok_or_else(|| anyhow!("htpasswd printed no entry for {user}"))?;
    fs::write(path, format!("{line}\n")).with_context(|| format!("writing {}", path.display()))
}

/// A fresh CA (`ca/ca.crt`, alone in its dir) and a server certificate it signed (`tls.crt`/`tls.key`,
/// SAN IP:127.0.0.1 and DNS:localhost, EKU serverAuth, as rustls/webpki require). Returns the CA path.
fn make_tls_material(dir: &Path) -> Result<PathBuf> {
    let ca_dir = dir.join("ca");
    fs::create_dir(&ca_dir).with_context(|| format!("creating {}", ca_dir.display()))?;
    let ca_crt = ca_dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let ext = dir.join("server.ext");
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )
    .with_context(|| format!("writing {}", ext.display()))?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];

    let mut ca = Command::new("openssl");
    ca.args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=mpo-test-ca"]);
    ca.args(["-addext", "basicConstraints=critical,CA:TRUE"]);
    ca.args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    ca.arg("-keyout").arg(&ca_key).arg("-out").arg(&ca_crt);
    run_openssl(ca, "creating the test CA")?;

    let csr = dir.join("tls.csr");
    let mut req = Command::new("openssl");
    req.arg("req")
        .args(["-new"])
        .args(ec)
        .args(["-subj", "/CN=127.0.0.1"]);
    req.arg("-keyout")
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(&csr);
    run_openssl(req, "creating the server key and CSR")?;

    // A random serial (rather than -CAcreateserial, which would drop ca.srl next to ca.crt).
    let mut sign = Command::new("openssl");
    sign.args(["x509", "-req", "-days", "2", "-set_serial"])
        .arg(format!("0x{}", random_hex(8)?));
    sign.arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca_crt)
        .arg("-CAkey")
        .arg(&ca_key);
    sign.arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(dir.join("tls.crt"));
    run_openssl(sign, "signing the server certificate")?;
    Ok(ca_crt)
}

fn run_openssl(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: running openssl"))?;
    if !out.status.success() {
        bail!(
            "{what}: openssl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
