//! The image from the Dockerfile, built by `hack/image.sh` with Debian's podman on local
//! stand-ins for the public base images, run as the Deployment runs it: read-only root
//! filesystem, user 65532, no capabilities, the download directory a mounted volume. It must
//! apply the example override (examples/*.yaml) from the test registry into that volume.

mod support;

use std::{
    net::TcpListener,
    os::unix::fs::MetadataExt,
    process::{Command, Output},
    time::Duration,
};

use support::{
    Cluster, TestId,
    cluster::repo_root,
    images::{ModuleImage, push, push_module_names},
    registry::{RegistryKind, TestRegistry},
    scenario::REPO_PATH,
    wait_for,
};

const READY: Duration = Duration::from_secs(90);
/// The target for the runtime image.
const MAX_IMAGE_BYTES: u64 = 40 * 1000 * 1000;
const NONROOT: u32 = 65532;

/// Podman as this machine needs it (see hack/image.sh).
fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
        .args(args)
        .output()
        .expect("podman runs")
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The image built by hack/image.sh (`MPO_IMAGE`); `None` outside CI when there is none.
fn built_image() -> Option<String> {
    let image = std::env::var("MPO_IMAGE").ok().filter(|i| !i.is_empty());
    let present = image
        .as_deref()
        .is_some_and(|i| podman(&["image", "exists", i]).status.success());
    match (image, present) {
        (Some(image), true) => Some(image),
        _ if std::env::var_os("CI").is_some() => {
            panic!("no operator image: run bash hack/image.sh and set MPO_IMAGE")
        }
        _ => {
            eprintln!("SKIPPED: no operator image (bash hack/image.sh, MPO_IMAGE)");
            None
        }
    }
}

/// Deletes the objects while the container still runs (it owns their finalizers), then the
/// container; prints the container's log when the test failed.
struct Running<'a> {
    cluster: &'a Cluster,
    container: String,
    objects: Vec<String>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = podman(&["logs", &self.container]);
            eprintln!(
                "---- container log ----\n{}",
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        for object in &self.objects {
            let _ =
                self.cluster
                    .kubectl(&["delete", object, "--ignore-not-found", "--timeout=20s"]);
        }
        let _ = podman(&["rm", "-f", "-t", "2", &self.container]);
    }
}

/// examples/*.yaml with the test's names (MPOs are cluster-scoped and other tests use `echo`
/// and `test`), the test registry as repo, and the label this container watches.
fn example_yaml(file: &str, id: &TestId, module: &str, registry: &TestRegistry) -> String {
    let text = std::fs::read_to_string(repo_root().join("examples").join(file)).expect("example");
    text.replace("name: echo", &format!("name: {module}"))
        .replace("name: test", &format!("name: {}", id.0))
        .replace("source: test", &format!("source: {}", id.0))
        .replace(
            "registry.example.com/deckhouse/modules",
            &format!("{}/{REPO_PATH}", registry.host()),
        )
        .replace("scheme: HTTPS", "scheme: HTTP")
        .replace(
            "metadata:\n",
            &format!("metadata:\n  labels: {{mpo-test: {}}}\n", id.0),
        )
}

/// A field of /proc/<pid>/status of the container's main process, as the host sees it.
fn proc_status(pid: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_built_image_runs_read_only_as_nonroot_without_capabilities_and_applies_the_example() {
    let cluster = require_cluster!();
    let Some(image) = built_image() else { return };
    cluster.install_crds();
    let id = TestId::new("image");
    let module = "image-echo";
    let registry = TestRegistry::start(RegistryKind::Plain).expect("registry");
    push_module_names(&registry, REPO_PATH, &[module])
        .await
        .expect("names");
    let tag = "main-patch-03354";
    let pushed = push(
        &registry,
        &format!("{REPO_PATH}/{module}"),
        tag,
        &ModuleImage::module(module, 905, "image"),
    )
    .await
    .expect("push");

    let work = tempfile::tempdir().expect("tempdir");
    let downloads = work.path().join("downloaded");
    std::fs::create_dir(&downloads).expect("volume");
    std::os::unix::fs::chown(&downloads, Some(NONROOT), Some(NONROOT)).expect("chown");
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::copy(&cluster.kubeconfig, &kubeconfig).expect("kubeconfig");
    std::fs::set_permissions(
        &kubeconfig,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("readable by 65532");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let container = format!("mpo-{}", id.0);
    let volume = format!("{}:/var/lib/mpo/downloaded", downloads.display());
    let config = format!("{}:/etc/mpo/kubeconfig:ro", kubeconfig.display());
    let label = id.label();
    // --network=host: the test apiserver and registry listen on the host's loopback.
    podman_ok(&[
        "run",
        "-d",
        "--name",
        &container,
        "--network=host",
        "--read-only",
        "--user",
        "65532:65532",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "-v",
        &volume,
        "-v",
        &config,
        "-e",
        "KUBECONFIG=/etc/mpo/kubeconfig",
        &image,
        "run",
        "--download-dir",
        "/var/lib/mpo/downloaded",
        "--metrics-addr",
        &metrics,
        "--watch-selector",
        &label,
        "--log-format",
        "json",
    ]);
    let mut running = Running {
        cluster,
        container: container.clone(),
        objects: vec![format!("ms/{}", id.0)],
    };
    cluster.apply_ok(&example_yaml("module-source.yaml", &id, module, &registry));
    cluster.apply_ok(&example_yaml(
        "module-pull-override.yaml",
        &id,
        module,
        &registry,
    ));
    running.objects.insert(0, format!("mop/{module}"));

    let path = format!("mop/{module}");
    let digest = wait_for("the container to apply the example", READY, || async {
        let digest = cluster.jsonpath(&path, "{.status.imageDigest}");
        (digest == pushed).then_some(digest)
    })
    .await;
    assert_eq!(digest, pushed);
    let applied = downloads.join(module).join("dev/module.yaml");
    assert!(applied.is_file(), "module.yaml in the mounted volume");
    assert_eq!(
        applied.metadata().expect("meta").uid(),
        NONROOT,
        "written as 65532"
    );
    assert!(
        downloads.join("modules/905-image-echo").exists(),
        "loader link"
    );

    let inspect = podman_ok(&[
        "inspect",
        "--format",
        "{{.State.Pid}} {{.HostConfig.ReadonlyRootfs}} {{.Config.User}}",
        &container,
    ]);
    let fields: Vec<&str> = inspect.split_whitespace().collect();
    assert_eq!(fields[1..], ["true", "65532:65532"], "{inspect}");
    let pid = fields[0];
    assert_eq!(
        proc_status(pid, "Uid").split_whitespace().next(),
        Some("65532")
    );
    assert_eq!(
        proc_status(pid, "CapEff"),
        "0000000000000000",
        "no capabilities"
    );
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    let health = reqwest::get(format!("http://{metrics}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(health.status(), 200, "ready");

    let size: u64 = podman_ok(&["image", "inspect", "--format", "{{.Size}}", &image])
        .parse()
        .expect("size");
    eprintln!("image {image}: {size} bytes");
    assert!(
        size <= MAX_IMAGE_BYTES,
        "image is {size} bytes, over {MAX_IMAGE_BYTES}"
    );
    drop(running);
}
