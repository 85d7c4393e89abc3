//! The Deployment from deploy/ on a real node (hack/node.sh: kubelet, containerd, CNI,
//! controller manager, scheduler, kube-proxy, with a control plane of its own), driven by
//! `kubectl` as a user types it: `apply -k` → both replicas Ready and one leader applying the
//! example override into its pod's volume; `rollout restart` completes with the module applied
//! throughout; deleting the leader pod hands over within the lease; the pods run non-root,
//! read-only, without capabilities, with their ServiceAccount's RBAC only.

mod support;

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    cluster::repo_root,
    images::{ModuleImage, PushTarget, push_to},
    wait_for,
};

const NS: &str = "mpo-operator";
const ROLLOUT: Duration = Duration::from_secs(180);
/// The Deployment's lease duration (src/controller/leader.rs).
const LEASE: Duration = Duration::from_secs(15);
const MODULE: &str = "echo";
const TAG: &str = "main-patch-03354";
const NONROOT: &str = "65532";

/// The node tier of this run (`MPO_NODE_DIR`, written by hack/node.sh via hack/test.sh).
struct Node {
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    registry: String,
    image: String,
}

fn node() -> Option<Node> {
    let Some(dir) = std::env::var_os("MPO_NODE_DIR").map(PathBuf::from) else {
        if std::env::var_os("CI").is_some() {
            panic!("no node tier: MPO_NODE_DIR is not set (hack/test.sh starts hack/node.sh)");
        }
        eprintln!("SKIPPED: no node tier (run the tests through hack/test.sh)");
        return None;
    };
    let env = std::fs::read_to_string(dir.join("env")).expect("the node tier's env file");
    let value = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {key}=")))
            .unwrap_or_else(|| panic!("{key} in {}/env", dir.display()))
            .to_owned()
    };
    Some(Node {
        kubeconfig: PathBuf::from(value("KUBECONFIG")),
        registry: value("MPO_NODE_REGISTRY"),
        image: value("MPO_NODE_IMAGE"),
        kubectl: std::env::var_os("MPO_TEST_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("kubectl")),
        dir,
    })
}

impl Node {
    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .output()
            .expect("kubectl runs")
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, yaml: &str) {
        let mut child = Command::new(&self.kubectl)
            .args(["apply", "-f", "-"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("yaml written");
        let out = child.wait_with_output().expect("kubectl apply");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all)).expect("JSON")
    }

    /// The operator pods that are not being deleted: (name, uid, ready).
    fn pods(&self) -> Vec<(String, String, bool)> {
        let list = self.json(&[
            "-n",
            NS,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=mpo-operator",
        ]);
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    p["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
                    ready,
                )
            })
            .collect()
    }

    /// The pod whose replica holds the Lease (identities are `<pod name>-<pid>`).
    fn leader(&self) -> Option<(String, String)> {
        let out = self.kubectl(&[
            "-n",
            NS,
            "get",
            "lease",
            "mpo-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        let holder = String::from_utf8_lossy(&out.stdout).into_owned();
        self.pods()
            .into_iter()
            .find(|(name, _, _)| holder.starts_with(&format!("{name}-")))
            .map(|(name, uid, _)| (name, uid))
    }

    /// Where the kubelet keeps the pod's `downloaded` emptyDir on this host.
    fn volume(&self, pod_uid: &str) -> PathBuf {
        self.dir
            .join("kubelet/pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~empty-dir/downloaded")
    }

    fn mpo(&self) -> Value {
        self.json(&["get", "mop", MODULE])
    }

    /// Blob GETs of the module in the node registry's access log so far.
    fn blob_gets(&self) -> usize {
        let log = std::fs::read_to_string(self.dir.join("logs/registry.log"))
            .expect("the node registry's log");
        let blobs = format!("\"GET /v2/deckhouse/modules/{MODULE}/blobs/");
        log.lines().filter(|l| l.contains(&blobs)).count()
    }
}

/// deploy/ as a user would overlay it: only the image, and `imagePullPolicy: Never` because
/// the node has it imported and no registry to pull it from.
fn overlay(node: &Node) -> PathBuf {
    let dir = repo_root().join("target/node-overlay");
    std::fs::create_dir_all(&dir).expect("overlay dir");
    let (name, tag) = node.image.rsplit_once(':').expect("image with a tag");
    let kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../deploy\nimages:\n  - name: mpo-operator\n    newName: {name}\n    newTag: {tag}\npatches:\n  - target: {{kind: Deployment, name: mpo-operator}}\n    patch: |-\n      - op: replace\n        path: /spec/template/spec/containers/0/imagePullPolicy\n        value: Never\n"
    );
    std::fs::write(dir.join("kustomization.yaml"), kustomization).expect("overlay");
    dir
}

/// examples/*.yaml pointed at the node's registry, which pods reach on the node address.
fn example(node: &Node, file: &str) -> String {
    std::fs::read_to_string(repo_root().join("examples").join(file))
        .expect("example")
        .replace(
            "registry.example.com/deckhouse/modules",
            &format!("{}/deckhouse/modules", node.registry),
        )
        .replace("scheme: HTTPS", "scheme: HTTP")
}

async fn push_example_module(node: &Node) -> String {
    let target = PushTarget {
        https: false,
        ca_pem: None,
        credentials: None,
    };
    let names = ModuleImage::new()
        .file("README.md", "module list\n")
        .build()
        .expect("build");
    push_to(&target, &node.registry, "deckhouse/modules", MODULE, &names)
        .await
        .expect("module name pushed");
    let image = ModuleImage::module(MODULE, 910, "on-a-node")
        .build()
        .expect("build");
    push_to(
        &target,
        &node.registry,
        &format!("deckhouse/modules/{MODULE}"),
        TAG,
        &image,
    )
    .await
    .expect("module pushed")
}

/// `probe` until it answers or `within` passed (the answer, or None).
fn wait_for_opt<T>(within: Duration, probe: impl Fn() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A /proc/<pid>/status field.
fn proc_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// The host PIDs of the operator process in pod `uid` (its cgroup path names the pod).
fn operator_pids(uid: &str) -> Vec<u32> {
    let marker = format!("pod{uid}");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            cgroup.contains(&marker) && comm.trim() == "mpo-operator"
        })
        .collect()
}

fn root_is_read_only(pid: u32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    info.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(4) == Some(&"/")
            && fields
                .get(5)
                .is_some_and(|o| o.split(',').any(|x| x == "ro"))
    })
}

async fn both_ready_and_one_leader(node: &Node) -> (String, String) {
    wait_for("two Ready replicas and a leader", ROLLOUT, || async {
        let pods = node.pods();
        let ready = pods.len() == 2 && pods.iter().all(|(_, _, ready)| *ready);
        ready.then(|| node.leader()).flatten()
    })
    .await
}

#[tokio::test]
async fn the_deployment_runs_on_a_real_node_rolls_out_and_fails_over() {
    let Some(node) = node() else { return };
    let pushed = push_example_module(&node).await;
    let overlay = overlay(&node);
    node.kubectl_ok(&[
        "apply",
        "--server-side",
        "-k",
        &overlay.display().to_string(),
    ]);
    node.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/modulepulloverrides.deckhouse.io",
        "--timeout=60s",
    ]);
    node.apply(&example(&node, "module-source.yaml"));
    node.apply(&example(&node, "module-pull-override.yaml"));
    node.kubectl_ok(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deploy/mpo-operator",
        &format!("--timeout={}s", ROLLOUT.as_secs()),
    ]);

    // Both replicas Ready, exactly one leader, the example applied into the leader's volume.
    let (leader, leader_uid) = both_ready_and_one_leader(&node).await;
    wait_for("the example MPO to be applied", ROLLOUT, || async {
        (node.mpo()["status"]["imageDigest"] == pushed.as_str()).then_some(())
    })
    .await;
    let module_yaml = |uid: &str| {
        node.volume(uid)
            .join("downloaded")
            .join(MODULE)
            .join("dev/module.yaml")
    };
    assert!(
        module_yaml(&leader_uid).is_file(),
        "the module in {leader}'s volume"
    );
    let leaders = node
        .pods()
        .iter()
        .filter(|(name, _, _)| node.leader().is_some_and(|(l, _)| &l == name))
        .count();
    assert_eq!(leaders, 1, "exactly one leader");

    // The Deployment's security context and its own ServiceAccount.
    for (pod, uid, _) in node.pods() {
        let pids = operator_pids(&uid);
        assert_eq!(pids.len(), 1, "{pod}: one operator process");
        let pid = pids[0];
        assert_eq!(
            proc_field(pid, "Uid").split_whitespace().next(),
            Some(NONROOT),
            "{pod}: non-root"
        );
        assert_eq!(
            proc_field(pid, "CapEff"),
            "0000000000000000",
            "{pod}: no capabilities"
        );
        assert_eq!(
            proc_field(pid, "NoNewPrivs"),
            "1",
            "{pod}: no new privileges"
        );
        assert!(root_is_read_only(pid), "{pod}: read-only root filesystem");
        let spec = node.json(&["-n", NS, "get", "pod", &pod]);
        assert_eq!(spec["spec"]["serviceAccountName"], "mpo-operator");
    }
    let sa = "system:serviceaccount:mpo-operator:mpo-operator";
    for (verb, resource, allowed) in [
        ("patch", "modulepulloverrides.deckhouse.io/status", "yes"),
        ("delete", "pods", "no"),
        ("get", "secrets", "no"),
    ] {
        let out = node.kubectl(&["auth", "can-i", verb, resource, "-A", "--as", sa]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            allowed,
            "{sa} {verb} {resource}"
        );
    }

    // rollout restart completes while the module stays applied throughout.
    let before: Vec<String> = node.pods().into_iter().map(|(name, _, _)| name).collect();
    node.kubectl_ok(&["-n", NS, "rollout", "restart", "deploy/mpo-operator"]);
    let mut rollout = Command::new(&node.kubectl)
        .args([
            "-n",
            NS,
            "rollout",
            "status",
            "deploy/mpo-operator",
            &format!("--timeout={}s", ROLLOUT.as_secs()),
        ])
        .env("KUBECONFIG", &node.kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rollout status");
    let started = Instant::now();
    let status = loop {
        let mpo = node.mpo();
        assert_eq!(
            mpo["status"]["imageDigest"],
            pushed.as_str(),
            "applied throughout the rollout"
        );
        assert_eq!(
            mpo["status"]["message"], "",
            "no failure during the rollout"
        );
        if let Some(status) = rollout.try_wait().expect("rollout status") {
            break status;
        }
        assert!(
            started.elapsed() < ROLLOUT + Duration::from_secs(10),
            "rollout status hangs"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(status.success(), "kubectl rollout status completed");
    eprintln!("rollout restart completed in {:?}", started.elapsed());
    let (new_leader, new_uid) = both_ready_and_one_leader(&node).await;
    assert!(
        !before.contains(&new_leader),
        "new pods lead after the rollout"
    );
    wait_for("the module on the new leader's volume", ROLLOUT, || async {
        module_yaml(&new_uid).is_file().then_some(())
    })
    .await;

    // Warm standbys: every replica's own volume holds the recorded digest, the standby's
    // pulled while it waited for the lease.
    for (pod, uid, _) in node.pods() {
        wait_for(
            &format!("the module on {pod}'s volume"),
            ROLLOUT,
            || async { module_yaml(&uid).is_file().then_some(()) },
        )
        .await;
    }
    let blobs_before = node.blob_gets();

    // Deleting the leader pod: another replica leads within the lease, with the recorded
    // digest already on its volume, and downloads nothing.
    node.kubectl_ok(&["-n", NS, "delete", "pod", &new_leader, "--wait=false"]);
    let deleted_at = Instant::now();
    let (successor, successor_uid) = wait_for(
        "another replica to lead",
        LEASE + Duration::from_secs(30),
        || async { node.leader().filter(|(name, _)| name != &new_leader) },
    )
    .await;
    wait_for(
        "the digest on the successor's volume",
        LEASE + Duration::from_secs(30),
        || async { module_yaml(&successor_uid).is_file().then_some(()) },
    )
    .await;
    let took = deleted_at.elapsed();
    eprintln!(
        "{successor} led with the module on its volume {took:?} after {new_leader} was deleted"
    );
    assert!(
        took < LEASE + Duration::from_secs(8),
        "took over after {took:?}"
    );
    assert_eq!(node.mpo()["status"]["imageDigest"], pushed.as_str());
    let logs = || {
        let out = node.kubectl(&["-n", NS, "logs", &successor]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let found = wait_for_opt(Duration::from_secs(60), || {
        logs()
            .contains("every recorded digest is already on this disk")
            .then_some(())
    });
    let log = logs();
    assert!(
        found.is_some(),
        "the successor's log has no sign of its restore finding the digest on disk:\n{log}"
    );
    // What it pulled it pulled as a standby (a pod the ReplicaSet just made waits for its
    // warm-up before it stands for the lease); as the leader it downloaded nothing.
    let led = log
        .find("\"became the leader\"")
        .expect("the successor's log says it leads");
    assert!(
        !log[led..].contains("\"message\":\"downloading\""),
        "the new leader downloaded:\n{log}"
    );
    eprintln!(
        "blob GETs in the node registry's log: {blobs_before} before the deletion, {} after",
        node.blob_gets()
    );
}
