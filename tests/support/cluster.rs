use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use std::io::Write as _;

/// The control plane started by `hack/test.sh` (`hack/control-plane.sh start`).
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub dir: PathBuf,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
static CRDS: OnceLock<()> = OnceLock::new();

/// `None` (the test returns early) when no control plane runs, except under `CI=true`, where a
/// missing harness is a failure: CI must not go green by skipping.
pub fn cluster() -> Option<&'static Cluster> {
    let cluster = CLUSTER.get_or_init(|| {
        let kubeconfig = std::env::var_os("MPO_TEST_KUBECONFIG").map(PathBuf::from)?;
        let kubectl = std::env::var_os("MPO_TEST_KUBECTL")
            .map_or_else(|| PathBuf::from("kubectl"), PathBuf::from);
        let dir = std::env::var_os("MPO_TEST_CONTROL_PLANE")
            .map(PathBuf::from)
            .unwrap_or_default();
        Some(Cluster {
            kubeconfig,
            kubectl,
            dir,
        })
    });
    if cluster.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but no control plane: run the tests through hack/test.sh");
        }
        eprintln!("SKIPPED: no control plane (run the tests through hack/test.sh)");
    }
    cluster.as_ref()
}

impl Cluster {
    pub async fn client(&self) -> kube::Client {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("readable kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("valid kubeconfig");
        kube::Client::try_from(config).expect("client")
    }

    /// `kubectl ARGS`, as a user runs it against this control plane.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_stdin(args, None)
    }

    pub fn kubectl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(&self.kubectl);
        command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = command.spawn().expect("kubectl runs");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("kubectl finishes")
    }

    /// `kubectl ARGS` that must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` with `yaml`.
    pub fn apply(&self, yaml: &str) -> Output {
        self.kubectl_with_stdin(&["apply", "-f", "-"], Some(yaml))
    }

    pub fn apply_ok(&self, yaml: &str) {
        let out = self.apply(yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Installs `crds/` once per test binary and waits until they are Established.
    /// Waits (up to `deadline`) until an Event with `reason` about the object named `object` is
    /// stored, in any namespace.
    pub async fn wait_for_event(&self, object: &str, reason: &str, deadline: Duration) {
        let selector = format!("regarding.name={object},reason={reason}");
        super::wait_for(&format!("the {reason} event"), deadline, || async {
            let events = self.kubectl_ok(&[
                "get",
                "events.events.k8s.io",
                "-A",
                "--field-selector",
                &selector,
                "-o",
                "name",
            ]);
            (!events.trim().is_empty()).then_some(())
        })
        .await;
    }

    pub fn install_crds(&self) {
        CRDS.get_or_init(|| {
            let crds = repo_root().join("crds");
            let crds = crds.to_str().expect("utf-8 path");
            self.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-k", crds]);
            self.kubectl_ok(&[
                "wait",
                "--for=condition=Established",
                "crd",
                "--all",
                "--timeout=60s",
            ]);
        });
    }

    /// Reads a JSONPath of one object with `kubectl get -o jsonpath`.
    pub fn jsonpath(&self, kind_name: &str, path: &str) -> String {
        let arg = format!("jsonpath={path}");
        let out = self.kubectl(&["get", kind_name, "-o", &arg]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A short unique id per test, used in object names and the operator's watch selector so that
/// tests run in parallel against one control plane without seeing each other's objects.
#[derive(Clone, Debug)]
pub struct TestId(pub String);

impl TestId {
    pub fn new(test: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        Self(format!("{test}-{:05x}", nanos % 0xfffff))
    }

    pub fn label(&self) -> String {
        format!("mpo-test={}", self.0)
    }
}

/// Removes objects when a test ends, also when it fails.
pub struct Cleanup<'a> {
    pub cluster: &'a Cluster,
    pub objects: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for object in &self.objects {
            let _ = self
                .cluster
                .kubectl(&["delete", object, "--ignore-not-found", "--wait=false"]);
        }
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `f` until it succeeds or the deadline passes (blocking variant for sync tests).
pub fn retry<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Result<T>) -> T {
    let until = std::time::Instant::now() + deadline;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() >= until => {
                panic!("timed out waiting for {what}: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

pub fn ensure(condition: bool, what: &str) -> Result<()> {
    if condition { Ok(()) } else { bail!("{what}") }
}

pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}
