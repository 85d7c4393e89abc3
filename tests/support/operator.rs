use std::{
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{Cluster, TestId};

/// The real `mpo-operator` binary, run as a user would run it, watching only this test's objects.
pub struct Operator {
    child: Option<Child>,
    pub download_dir: PathBuf,
    pub log_path: PathBuf,
    pub metrics_addr: String,
    args: Vec<String>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    /// Starts the operator for test `id` with extra flags (e.g. `--log-format json`).
    pub fn start(cluster: &Cluster, id: &TestId, extra: &[&str]) -> Self {
        Self::start_as(&cluster.kubeconfig, id, extra)
    }

    /// Starts an operator that watches `selector` instead of the test's own label (a shard).
    pub fn start_selecting(cluster: &Cluster, selector: &str, extra: &[&str]) -> Self {
        Self::start_inner(&cluster.kubeconfig, selector, extra)
    }

    /// Starts the operator authenticated by `kubeconfig` (e.g. a ServiceAccount token's).
    pub fn start_as(kubeconfig: &Path, id: &TestId, extra: &[&str]) -> Self {
        Self::start_inner(kubeconfig, &id.label(), extra)
    }

    /// Starts an operator whose download directory is `download_dir` (another's: a shared volume).
    pub fn start_in(cluster: &Cluster, id: &TestId, download_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with(&cluster.kubeconfig, &id.label(), Some(download_dir), extra)
    }

    fn start_inner(kubeconfig: &Path, selector: &str, extra: &[&str]) -> Self {
        Self::start_with(kubeconfig, selector, None, extra)
    }

    fn start_with(
        kubeconfig: &Path,
        selector: &str,
        download_dir: Option<&Path>,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let download_dir =
            download_dir.map_or_else(|| dir.path().join("downloaded"), Path::to_owned);
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let metrics_addr = format!("127.0.0.1:{port}");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--download-dir".into(),
            download_dir.display().to_string(),
            "--metrics-addr".into(),
            metrics_addr.clone(),
            "--watch-selector".into(),
            selector.to_owned(),
        ];
        if !extra.iter().any(|a| a.starts_with("--log-level")) {
            args.extend(["--log-level".into(), "info,mpo_operator=debug".into()]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut operator = Self {
            child: None,
            download_dir,
            log_path: dir.path().join("operator.log"),
            metrics_addr,
            args,
            kubeconfig: kubeconfig.to_owned(),
            _dir: dir,
        };
        operator.spawn();
        operator
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        // MPO_OPERATOR_BIN runs another build (a benchmark's "before" side by side with "after").
        let binary = std::env::var_os("MPO_OPERATOR_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_mpo-operator").into());
        let child = Command::new(binary)
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("operator starts");
        self.child = Some(child);
    }

    /// Everything the operator logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn module_dir(&self, module: &str) -> PathBuf {
        self.download_dir.join(module)
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("operator did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same operator again (same flags, same download dir, same log).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// GET `path` on the metrics server: (status, body), or None when it does not answer.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let out = Command::new("curl")
            .args(["-s", "--noproxy", "*", "-m", "5", "-w", "\n%{http_code}"])
            .arg(format!("http://{}{path}", self.metrics_addr))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        let code: u16 = code.trim().parse().ok()?;
        (code != 0).then(|| (code, body.to_owned()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn download_root(&self) -> &Path {
        &self.download_dir
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- operator log ----\n{}", self.log());
        }
    }
}
