//! Running in a cluster: the deploy/ manifests against the real apiserver, the operator working
//! under its own ServiceAccount's RBAC, leader election, metrics, events and graceful shutdown.

mod support;

use std::{path::PathBuf, time::Duration};

use support::{
    Operator,
    cluster::{Cluster, repo_root, stderr},
    images::{ModuleImage, large_module},
    proxy::{Fault, FaultProxy},
    registry::RegistryKind,
    scenario::Scenario,
    tcp_cut::TcpCut,
    wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

/// Applies deploy/ for real (no pods run: there is no controller-manager) and returns a
/// kubeconfig holding a TokenRequest token of the operator's ServiceAccount.
fn service_account_kubeconfig(cluster: &Cluster, dir: &std::path::Path) -> PathBuf {
    let deploy = repo_root().join("deploy");
    cluster.kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-k",
        deploy.to_str().expect("utf-8"),
    ]);
    let token = cluster.kubectl_ok(&[
        "create",
        "token",
        "mpo-operator",
        "-n",
        "mpo-operator",
        "--duration=1h",
    ]);
    let admin = std::fs::read_to_string(&cluster.kubeconfig).expect("kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).expect("yaml");
    config["users"][0]["user"] =
        serde_yaml::from_str(&format!("token: {}", token.trim())).expect("token yaml");
    config["users"][0]["name"] = "mpo-operator".into();
    config["contexts"][0]["context"]["user"] = "mpo-operator".into();
    let path = dir.join("sa.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).expect("yaml")).expect("write");
    path
}

#[test]
fn the_deploy_manifests_pass_a_server_side_dry_run() {
    let cluster = require_cluster!();
    cluster.install_crds();
    // Namespaced objects can only be dry-run into an existing namespace.
    let _ = cluster.kubectl(&["create", "namespace", "mpo-operator"]);
    let deploy = repo_root().join("deploy");
    let out = cluster.kubectl_ok(&[
        "apply",
        "--dry-run=server",
        "-k",
        deploy.to_str().expect("utf-8"),
    ]);
    for object in [
        "serviceaccount/mpo-operator",
        "clusterrole.rbac.authorization.k8s.io/mpo-operator",
        "deployment.apps/mpo-operator",
    ] {
        assert!(out.contains(object), "{object} missing from:\n{out}");
    }
    let deployment: serde_json::Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "apply",
        "--dry-run=server",
        "-k",
        deploy.to_str().expect("utf-8"),
        "-o",
        "json",
    ]))
    .expect("json");
    let items = deployment["items"].as_array().expect("items");
    let spec = items
        .iter()
        .find(|i| i["kind"] == "Deployment")
        .expect("deployment")["spec"]["template"]["spec"]
        .clone();
    let container = &spec["containers"][0];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(
        container["args"]
            .as_array()
            .expect("args")
            .iter()
            .any(|a| a == "--leader-election=true")
    );
}

#[tokio::test]
async fn the_operator_works_with_only_its_service_account_rights() {
    let cluster = require_cluster!();
    let dir = tempfile::tempdir().expect("temp dir");
    cluster.install_crds();
    let kubeconfig = service_account_kubeconfig(cluster, dir.path());
    let mut s = Scenario::start(cluster, "rbac", RegistryKind::Htpasswd, &["a"], &[]).await;
    s.operator.kill();
    s.operator = Operator::start_as(
        &kubeconfig,
        &s.id,
        &[
            "--leader-election=true",
            "--lease-namespace=mpo-operator",
            "--source-scan-interval=2s",
            "--lease-name",
            &s.id.0,
        ],
    );
    let module = format!("{}-m", s.id.0);
    support::images::push_module_names(&s.registry, support::scenario::REPO_PATH, &[&module])
        .await
        .expect("names");
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    s.apply_mpo(&module, "dev", "15s");
    s.wait_for_digest(&module, &digest, WAIT).await;
    wait_for("the scan under the ServiceAccount", WAIT, || async {
        (s.source_object()["status"]["modulesCount"] == 2).then_some(())
    })
    .await;
    let log = s.operator.log();
    assert!(
        !log.contains("forbidden"),
        "the ServiceAccount lacked a right:\n{log}"
    );

    // Denied what it does not need.
    let kc = kubeconfig.to_str().expect("utf-8");
    for args in [
        &["get", "secrets", "-A"][..],
        &["get", "pods", "-n", "mpo-operator"],
        &["delete", "ms", s.source.as_str()],
    ] {
        let mut full = vec!["--kubeconfig", kc];
        full.extend_from_slice(args);
        let out = cluster.kubectl(&full);
        assert!(!out.status.success(), "kubectl {args:?} was allowed");
        assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
    }
}

/// A scenario whose own operator is gone, for replicas with leader election on a lease of its own.
async fn leader_scenario(cluster: &'static support::Cluster, test: &str) -> (Scenario, String) {
    let mut s = Scenario::start(
        cluster,
        test,
        RegistryKind::Plain,
        &[],
        &["--scan-module-sources=false"],
    )
    .await;
    s.operator.kill();
    let lease_name = s.id.0.clone();
    (s, lease_name)
}

fn lease_flags(lease_name: &str) -> [&str; 5] {
    [
        "--leader-election=true",
        "--lease-namespace=default",
        "--lease-name",
        lease_name,
        "--scan-module-sources=false",
    ]
}

/// `mpo_leader 1` on the replica's /metrics.
fn leads(operator: &Operator) -> bool {
    operator
        .http_get("/metrics")
        .is_some_and(|(code, body)| code == 200 && body.lines().any(|l| l == "mpo_leader 1"))
}

#[tokio::test]
async fn one_leader_reconciles_and_a_standby_takes_over() {
    let cluster = require_cluster!();
    let (mut s, lease_name) = leader_scenario(cluster, "leader").await;
    let lease = lease_flags(&lease_name);
    let mut first = Operator::start(cluster, &s.id, &lease);
    wait_for("the first replica to lead", WAIT, || async {
        leads(&first).then_some(())
    })
    .await;
    let mut second = Operator::start(cluster, &s.id, &lease);
    wait_for("the standby to be ready", WAIT, || async {
        (second.http_get("/readyz")?.0 == 200).then_some(())
    })
    .await;
    assert!(
        !leads(&second),
        "a ready standby, not a leader (mpo_leader 0)"
    );
    assert!(leads(&first));

    let (module, digest) = s.ready_module("1h").await;
    assert!(
        first.module_dir(&module).join("dev").exists(),
        "the leader downloaded"
    );
    // Warm standby: the standby pulls the recorded digest into its own directory.
    let active = |operator: &Operator| {
        std::fs::read_link(operator.module_dir(&module).join("dev"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    };
    let hex = digest.trim_start_matches("sha256:").to_owned();
    wait_for("the standby to hold the recorded digest", WAIT, || async {
        (active(&second).as_deref() == Some(hex.as_str())).then_some(())
    })
    .await;
    assert_eq!(
        support::scenario::sorted(support::scenario::files_under(
            &second.module_dir(&module).join("dev")
        )),
        support::scenario::sorted(support::scenario::files_under(
            &first.module_dir(&module).join("dev")
        )),
        "the standby's files are the leader's"
    );
    wait_for("the standby to count it held", WAIT, || async {
        let (_, metrics) = second.http_get("/metrics")?;
        (metrics.contains("mpo_standby_digests{state=\"held\"} 1")
            && metrics.contains("mpo_standby_digests{state=\"missing\"} 0"))
        .then_some(())
    })
    .await;
    let standby_agent = format!("({})", replica_identity(&second));
    let standby_writes: Vec<_> = audited_writes()
        .into_iter()
        .filter(|w| w.agent.contains(&standby_agent))
        .collect();
    assert!(
        standby_writes.is_empty(),
        "the standby wrote to the API: {standby_writes:?}"
    );
    // Metrics of the leader moved.
    let (code, metrics) = first.http_get("/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("mpo_reconciles_total{result=\"Updated\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("mpo_seconds_since_last_check{{mpo=\"{module}\"}}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("mpo_registry_requests_total{method=\"HEAD\",status=\"200\"}"),
        "{metrics}"
    );
    let downloaded: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mpo_downloaded_bytes_total "))
        .and_then(|v| v.parse().ok())
        .expect("bytes counter");
    assert!(downloaded > 0.0, "{metrics}");

    // Kill the leader: the standby takes over within the lease duration and downloads nothing,
    // its first pass finding the recorded digest already active.
    let blobs_before = s.registry.count_requests("GET", "/blobs/");
    first.kill();
    let took = std::time::Instant::now();
    wait_for(
        "the standby to take over and check",
        Duration::from_secs(40),
        || async {
            let (_, metrics) = second.http_get("/metrics")?;
            let unchanged = metrics
                .lines()
                .find_map(|l| l.strip_prefix("mpo_reconciles_total{result=\"Unchanged\"} "))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            (leads(&second) && unchanged >= 1.0).then_some(())
        },
    )
    .await;
    assert!(
        took.elapsed() < Duration::from_secs(15 + 10),
        "took over after {:?}",
        took.elapsed()
    );
    assert_eq!(
        s.registry.count_requests("GET", "/blobs/"),
        blobs_before,
        "the new leader downloaded a blob"
    );
    assert_eq!(active(&second).as_deref(), Some(hex.as_str()));
    assert_eq!(second.http_get("/readyz").map(|r| r.0), Some(200));
    assert!(leads(&second), "the standby leads now");

    // SIGTERM releases the lease: a new standby takes over long before the lease would expire.
    let third = Operator::start(cluster, &s.id, &lease);
    wait_for("the third replica to serve", WAIT, || async {
        (third.http_get("/healthz")?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(second.stop(), Some(0), "SIGTERM exits 0");
    let handover = std::time::Instant::now();
    wait_for(
        "the third replica to lead",
        Duration::from_secs(30),
        || async { (leads(&third) && third.http_get("/readyz")?.0 == 200).then_some(()) },
    )
    .await;
    assert!(
        handover.elapsed() < Duration::from_secs(10),
        "released lease taken after {:?}",
        handover.elapsed()
    );
    s.operator = third;
}

/// A standby whose download directory is the leader's (a shared hostPath) writes nothing to it
/// and says why; one with `--warm-standby=false` pulls nothing, while a private one does.
#[tokio::test]
async fn a_standby_on_the_leaders_volume_or_turned_off_leaves_its_directory_alone() {
    let cluster = require_cluster!();
    let (mut s, lease_name) = leader_scenario(cluster, "shared").await;
    let lease = lease_flags(&lease_name);
    let leader = Operator::start(cluster, &s.id, &lease);
    wait_for("the first replica to lead", WAIT, || async {
        leads(&leader).then_some(())
    })
    .await;
    let sharing = Operator::start_in(cluster, &s.id, leader.download_root(), &lease);
    let mut off_flags = lease.to_vec();
    off_flags.push("--warm-standby=false");
    let off = Operator::start(cluster, &s.id, &off_flags);
    let warm = Operator::start(cluster, &s.id, &lease);
    for (what, standby) in [("sharing", &sharing), ("off", &off), ("warm", &warm)] {
        wait_for(&format!("the {what} standby to be ready"), WAIT, || async {
            (standby.http_get("/readyz")?.0 == 200).then_some(())
        })
        .await;
    }
    let (module, digest) = s.ready_module("1h").await;
    let hex = digest.trim_start_matches("sha256:");
    wait_for("the warm standby to hold the digest", WAIT, || async {
        let target = std::fs::read_link(warm.module_dir(&module).join("dev")).ok()?;
        (target.file_name()? == hex).then_some(())
    })
    .await;
    wait_for("the sharing standby to stand aside", WAIT, || async {
        let (_, metrics) = sharing.http_get("/metrics")?;
        metrics
            .lines()
            .any(|l| l == "mpo_standby_volume_shared 1")
            .then_some(())
    })
    .await;
    assert!(
        sharing
            .log()
            .contains("not writing the download directory: another running operator holds it"),
        "{}",
        sharing.log()
    );
    assert!(
        !sharing.log().contains("pulling recorded digests"),
        "{}",
        sharing.log()
    );
    assert!(
        !off.module_dir(&module).exists(),
        "the standby turned off pulled"
    );
    assert!(!off.log().contains("warm standby"), "{}", off.log());
    assert!(leads(&leader));
    s.operator = leader;
}

#[tokio::test]
async fn events_tell_of_a_digest_change_and_of_a_failure_once() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(
        cluster,
        "events",
        RegistryKind::Plain,
        &[],
        &["--scan-module-sources=false"],
    )
    .await;
    let (module, digest) = s.ready_module("2s").await;
    let describe = wait_for("the ModuleUpdated event", WAIT, || async {
        let text = cluster.kubectl_ok(&["describe", "mop", &module]);
        text.contains("ModuleUpdated").then_some(text)
    })
    .await;
    assert!(describe.contains(&digest), "{describe}");
    // A second change is an event of its own, naming the new digest.
    let second = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "2"))
        .await;
    s.wait_for_digest(&module, &second, WAIT).await;
    wait_for(
        "a ModuleUpdated event for the second digest",
        WAIT,
        || async {
            let text = cluster.kubectl_ok(&["describe", "mop", &module]);
            (text.contains(&second) && text.contains(&digest)).then_some(())
        },
    )
    .await;

    s.apply_mpo(&module, "missing-tag", "2s");
    s.wait_for_message(&module, "manifest unknown", WAIT).await;
    // Several more failing checks at a 2 s interval, each identical.
    let checks = s.registry.count_requests("HEAD", "missing-tag");
    wait_for("three more failing checks", WAIT, || async {
        (s.registry.count_requests("HEAD", "missing-tag") >= checks + 3).then_some(())
    })
    .await;
    let selector = format!("regarding.name={module},reason=ResolveFailed");
    let events = cluster.kubectl_ok(&[
        "get",
        "events.events.k8s.io",
        "-A",
        "--field-selector",
        &selector,
        "-o",
        "json",
    ]);
    let events: serde_json::Value = serde_json::from_str(&events).expect("json");
    let items = events["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "one event for the failure: {items:?}");
    assert!(
        items[0]["series"].is_null(),
        "identical failures are not re-published: {}",
        items[0]
    );
    let describe = cluster.kubectl_ok(&["describe", "mop", &module]);
    assert!(
        describe.contains("ResolveFailed") && describe.contains("Warning"),
        "{describe}"
    );
}

#[tokio::test]
async fn json_logs_have_one_line_per_step_and_nothing_at_info_when_idle() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(
        cluster,
        "logs",
        RegistryKind::Plain,
        &[],
        &[
            "--log-format=json",
            "--log-level=info",
            "--scan-module-sources=false",
        ],
    )
    .await;
    let (module, _) = s.ready_module("1s").await;
    // The source's flag is written (and logged) just after the status: part of the change.
    wait_for("the overridden flag", WAIT, || async {
        let source = s.source_object();
        source["status"]["modules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == module.as_str() && m["overridden"] == true)
            .then_some(())
            .filter(|()| s.operator.log().contains("overridden flags written"))
    })
    .await;
    let lines_when_ready = s.operator.log().lines().count();
    let heads = s.registry.count_requests("HEAD", &module);
    wait_for("a few idle checks", WAIT, || async {
        (s.registry.count_requests("HEAD", &module) >= heads + 3).then_some(())
    })
    .await;
    let log = s.operator.log();
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for step in [
        "resolved a digest to download",
        "downloading",
        "unpacked and switched in",
        "status patched",
    ] {
        assert!(
            entries.iter().any(|e| e["message"] == step),
            "no {step:?} line in:\n{log}"
        );
    }
    let idle: Vec<&serde_json::Value> = entries[lines_when_ready..]
        .iter()
        .filter(|e| e["level"] == "INFO")
        .collect();
    assert!(idle.is_empty(), "info lines while idle: {idle:?}");
}

/// Fencing: a leader cut off from the apiserver stops on its own clock before its lease can
/// expire (renew deadline 10 s < lease 15 s), and the standby takes over within the lease
/// duration plus a few seconds.
#[tokio::test]
async fn a_leader_cut_off_from_the_apiserver_stops_and_the_standby_takes_over() {
    let cluster = require_cluster!();
    let (mut s, lease_name) = leader_scenario(cluster, "fence").await;
    let lease = lease_flags(&lease_name);
    let relay = TcpCut::start(&cluster.kubeconfig);
    let mut first = Operator::start_as(relay.kubeconfig(), &s.id, &lease);
    wait_for("the first replica to lead", WAIT, || async {
        leads(&first).then_some(())
    })
    .await;
    let second = Operator::start(cluster, &s.id, &lease);
    wait_for("the standby to be ready", WAIT, || async {
        (second.http_get("/readyz")?.0 == 200).then_some(())
    })
    .await;
    let (module, _) = s.ready_module("2s").await;
    assert!(first.module_dir(&module).join("dev").exists());

    let old_agent = format!("({})", replica_identity(&first));
    relay.cut();
    let cut_at = std::time::Instant::now();
    let cut_wall = chrono::Utc::now();
    // `is_running` reaps the child, so it needs `&mut`: a polling loop with a deadline.
    let deadline = cut_at + Duration::from_secs(30);
    while first.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old leader never stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped_after = cut_at.elapsed();
    assert!(
        stopped_after < Duration::from_secs(15),
        "stopped after {stopped_after:?}, before the lease could expire"
    );
    assert!(
        first
            .log()
            .contains("not renewed within the renew deadline"),
        "{}",
        first.log()
    );
    wait_for(
        "the standby to take over",
        Duration::from_secs(40),
        || async {
            (leads(&second) && second.module_dir(&module).join("dev/module.yaml").is_file())
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "cut off: the old leader stopped after {stopped_after:?}, the standby led after {:?}",
        cut_at.elapsed()
    );
    assert!(
        cut_at.elapsed() < Duration::from_secs(15 + 8),
        "took over {:?} after the cut",
        cut_at.elapsed()
    );

    // The apiserver's own record: the old leader's writes (its User-Agent names its identity)
    // all arrived before the cut, none after, while the new leader's came after it.
    let writes = audited_writes();
    let old: Vec<&AuditedWrite> = writes
        .iter()
        .filter(|w| w.agent.contains(&old_agent))
        .collect();
    assert!(
        !old.is_empty(),
        "the old leader's writes are in the audit log"
    );
    let late: Vec<&str> = old
        .iter()
        .filter(|w| w.received >= cut_wall)
        .map(|w| w.what.as_str())
        .collect();
    assert!(
        late.is_empty(),
        "the old leader wrote after it was cut off: {late:?}"
    );
    let new_agent = format!("({})", replica_identity(&second));
    assert!(
        writes
            .iter()
            .any(|w| w.agent.contains(&new_agent) && w.received > cut_wall),
        "the new leader's writes after the cut are in the audit log"
    );
    s.operator = second;
}

/// A leader (with `extra` flags) in the middle of downloading a module of `size` bytes that the
/// fault proxy sends at 128 KiB/s.
struct SlowDownload {
    s: Scenario,
    lease_name: String,
    proxy: FaultProxy,
    leader: Operator,
    module: String,
}

async fn leading_a_slow_download(
    cluster: &'static support::Cluster,
    test: &str,
    extra: &[&str],
    size: usize,
) -> SlowDownload {
    let (mut s, lease_name) = leader_scenario(cluster, test).await;
    let proxy = FaultProxy::start(&s.registry);
    s.route_source_through(proxy.host());
    let mut flags = lease_flags(&lease_name).to_vec();
    flags.extend_from_slice(extra);
    let leader = Operator::start(cluster, &s.id, &flags);
    wait_for("the replica to lead", WAIT, || async {
        leads(&leader).then_some(())
    })
    .await;
    let module = format!("{}-slow", s.id.0);
    s.push(&module, "dev", &large_module(&module, size)).await;
    proxy.fail("/blobs/", Fault::Slow(128 * 1024));
    s.apply_mpo(&module, "dev", "1h");
    wait_for("the download to start", WAIT, || async {
        leader.log().contains("downloading").then_some(())
    })
    .await;
    SlowDownload {
        s,
        lease_name,
        proxy,
        leader,
        module,
    }
}

/// Faults that overlap: SIGTERM starts a graceful drain of a long download, then the lease is
/// taken by someone else while the drain goes on. The fence stays armed after SIGTERM: the
/// draining pass is dropped and the old leader writes nothing more (the audit log says so);
/// on c16ab6e the drain finished and wrote its status after the lease was gone.
#[tokio::test]
async fn a_leader_draining_after_sigterm_is_still_fenced_when_it_loses_the_lease() {
    let cluster = require_cluster!();
    // 2 MiB at 128 KiB/s: a download of about 16 s, long enough to overlap both faults.
    let SlowDownload {
        mut s,
        lease_name,
        proxy: _proxy,
        mut leader,
        module,
    } = leading_a_slow_download(cluster, "drain-fence", &[], 2 << 20).await;
    let agent = format!("({})", replica_identity(&leader));
    let pid = leader.pid().expect("running").to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(term.success());
    wait_for("the drain to begin", WAIT, || async {
        leader.log().contains("shutdown requested").then_some(())
    })
    .await;

    // Another holder writes itself into the Lease, as a standby does once the lease expires.
    let renew_time = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let patch = format!(
        r#"{{"spec":{{"holderIdentity":"someone-else","renewTime":"{renew_time}","leaseDurationSeconds":15}}}}"#
    );
    let taken = chrono::Utc::now();
    cluster.kubectl_ok(&[
        "patch",
        "lease",
        &lease_name,
        "-n",
        "default",
        "--type",
        "merge",
        "-p",
        &patch,
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while leader.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old leader never stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = leader.log();
    assert!(log.contains("another replica holds the lease now"), "{log}");
    assert!(
        !leader.module_dir(&module).join("dev").exists(),
        "the fenced pass switched nothing in"
    );
    // Grace for the renewer to notice (its retry period is 2 s), then nothing at all.
    let fenced_by = taken + chrono::Duration::seconds(3);
    let late: Vec<String> = audited_writes()
        .into_iter()
        .filter(|w| w.agent.contains(&agent) && w.received > fenced_by)
        .filter(|w| !w.what.contains("leases/"))
        .map(|w| w.what)
        .collect();
    assert!(
        late.is_empty(),
        "the old leader wrote after it lost the lease: {late:?}"
    );
    assert!(
        mpo_digest(cluster, &module).is_none(),
        "no status from the fenced pass"
    );
    s.operator = leader;
}

/// A drain that would outlast the pod's grace period (a large download on a slow link) is cut
/// at `--shutdown-timeout`: the pass is fenced (nothing switched in or written), the lease is
/// released for the standby, and the process exits 0 before the kubelet's SIGKILL. Before, the
/// drain waited for the whole download.
#[tokio::test]
async fn a_drain_longer_than_the_shutdown_timeout_is_cut_and_the_lease_released() {
    let cluster = require_cluster!();
    // 8 MiB at 128 KiB/s: about a minute, far beyond the 3 s bound.
    let SlowDownload {
        mut s,
        lease_name,
        proxy: _proxy,
        mut leader,
        module,
    } = leading_a_slow_download(cluster, "drain-bound", &["--shutdown-timeout=3s"], 8 << 20).await;
    let asked = std::time::Instant::now();
    let code = leader.stop();
    let took = asked.elapsed();
    assert_eq!(code, Some(0), "a clean exit: {}", leader.log());
    assert!(
        took < Duration::from_secs(20),
        "the drain was cut at the timeout, not at the end of the download: {took:?}"
    );
    let log = leader.log();
    assert!(
        log.contains("passes still in flight after the shutdown timeout; cancelling them"),
        "{log}"
    );
    assert!(log.contains("released the lease"), "{log}");
    let holder = cluster.kubectl_ok(&[
        "get",
        "lease",
        &lease_name,
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder.trim(), "", "the lease is free for the standby");
    assert!(
        !leader.module_dir(&module).join("dev").exists(),
        "the cut pass switched nothing in"
    );
    assert!(
        mpo_digest(cluster, &module).is_none(),
        "and wrote no status"
    );
    s.operator = leader;
}

fn mpo_digest(cluster: &Cluster, module: &str) -> Option<String> {
    let out = cluster.kubectl_ok(&["get", "mop", module, "-o", "jsonpath={.status.imageDigest}"]);
    Some(out.trim().to_owned()).filter(|d| !d.is_empty())
}

/// A stalled (not closed) connection to the apiserver: every connection the leader has open
/// freezes at once, as when the apiserver's node loses power, while new connections go through.
/// On c16ab6e the replica stayed leader and Ready and did nothing: its watches waited out kube's
/// 290 s timeout and a write on a stalled pooled connection waited forever. Now every request is
/// bounded and watches time out within a minute, so a user's renew is acted on.
#[tokio::test]
async fn a_stalled_apiserver_connection_is_replaced_and_the_leader_goes_on() {
    let cluster = require_cluster!();
    let (mut s, lease_name) = leader_scenario(cluster, "stall").await;
    let lease = lease_flags(&lease_name);
    let relay = TcpCut::start(&cluster.kubeconfig);
    let leader = Operator::start_as(relay.kubeconfig(), &s.id, &lease);
    wait_for("the replica to lead", WAIT, || async {
        leads(&leader).then_some(())
    })
    .await;
    let (module, _) = s.ready_module("1h").await;

    relay.stall();
    let stalled_at = std::time::Instant::now();
    let next = s
        .push(
            &module,
            "dev",
            &ModuleImage::module(&module, 900, "after the stall"),
        )
        .await;
    cluster.kubectl_ok(&["annotate", &format!("mop/{module}"), "renew="]);
    s.wait_for_digest(&module, &next, Duration::from_secs(120))
        .await;
    eprintln!(
        "stalled connections: the renew was acted on after {:?}",
        stalled_at.elapsed()
    );
    assert!(leads(&leader), "still the leader, on new connections");
    // The scenario's objects are deleted while the leader still reaches the apiserver (through
    // the relay, which must outlive them): it owns their finalizers.
    s.operator = leader;
    drop(s);
    drop(relay);
}

/// The identity a test replica uses in the Lease and in its User-Agent: `<hostname>-<pid>`.
fn replica_identity(operator: &Operator) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    format!("{}-{}", host.trim(), operator.pid().expect("running"))
}

#[derive(Debug)]
struct AuditedWrite {
    agent: String,
    received: chrono::DateTime<chrono::Utc>,
    what: String,
}

/// Writes to deckhouse.io objects and Leases from the control plane's audit log.
fn audited_writes() -> Vec<AuditedWrite> {
    let path = std::env::var("MPO_TEST_AUDIT_LOG").expect("the control plane writes an audit log");
    let text = std::fs::read_to_string(&path).expect("audit log");
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["stage"] == "ResponseComplete")
        .filter_map(|event| {
            let received = event["requestReceivedTimestamp"].as_str()?;
            Some(AuditedWrite {
                agent: event["userAgent"].as_str().unwrap_or_default().to_owned(),
                received: chrono::DateTime::parse_from_rfc3339(received).ok()?.into(),
                what: format!(
                    "{} {}/{} {}",
                    event["verb"].as_str().unwrap_or_default(),
                    event["objectRef"]["resource"].as_str().unwrap_or_default(),
                    event["objectRef"]["name"].as_str().unwrap_or_default(),
                    event["responseStatus"]["code"]
                ),
            })
        })
        .collect()
}
