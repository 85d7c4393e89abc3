//! Push notifications (issue "from push to running"), end to end: docker-registry's real
//! notifications (`notifications.endpoints`, its own retry and backoff) wake an override with
//! `scanInterval: 1h` at once; each vendor's payload shape wakes the override it names; bad
//! input is refused and wakes nothing; a notification a standby received is applied by the next
//! leader after the old one is killed.

mod support;

use std::{
    net::TcpListener,
    path::PathBuf,
    time::{Duration, Instant},
};

use hmac::{Hmac, KeyInit, Mac};
use support::{
    Operator,
    images::ModuleImage,
    registry::RegistryKind,
    scenario::{REPO_PATH, Scenario},
    wait_for,
};

const WAIT: Duration = Duration::from_secs(60);
/// Far beyond any test: only a notification can make the operator look at the tag.
const NEVER: &str = "1h";
const TOKEN: &str = "t0ken-of-the-webhook-test-3f9a";

/// A webhook listener's address and token file, for one operator.
struct Hook {
    addr: String,
    token_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Hook {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self {
            addr: format!("127.0.0.1:{port}"),
            token_file,
            _dir: dir,
        }
    }

    fn flags(&self) -> Vec<String> {
        vec![
            "--webhook-addr".into(),
            self.addr.clone(),
            "--webhook-token-file".into(),
            self.token_file.display().to_string(),
        ]
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// POSTs `body` to `path` with `headers`; the status and the one-line answer.
async fn post(hook: &Hook, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, String) {
    let mut request = reqwest::Client::new().post(hook.url(path)).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("the webhook answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

fn bearer() -> (&'static str, String) {
    ("authorization", format!("Bearer {TOKEN}"))
}

/// The listener answers once its watches synced (a POST naming nothing answers 202 at once).
async fn wait_for_listener(hook: &Hook) {
    wait_for("the webhook listener", WAIT, || async {
        let response = reqwest::Client::new()
            .post(hook.url("/hooks/generic"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(r#"{"mpo":"nothing-here"}"#)
            .send()
            .await
            .ok()?;
        (response.status().as_u16() == 202).then_some(())
    })
    .await;
}

/// A scenario whose operator listens for webhooks, once the listener answers.
async fn listening(cluster: &'static support::Cluster, test: &str) -> (Hook, Scenario) {
    let hook = Hook::new();
    let s = Scenario::start(
        cluster,
        test,
        RegistryKind::Plain,
        &[],
        &strs(&hook.flags()),
    )
    .await;
    wait_for_listener(&hook).await;
    (hook, s)
}

async fn push_version(s: &Scenario, module: &str, version: &str) -> String {
    s.push(module, "dev", &ModuleImage::module(module, 900, version))
        .await
}

#[tokio::test]
async fn a_registry_push_is_applied_at_once_through_its_notification() {
    let cluster = require_cluster!();
    let (hook, mut s) = listening(cluster, "hook-registry").await;
    s.registry
        .send_notifications_to(&hook.url("/hooks/registry"), TOKEN)
        .expect("registry restarted with notifications");
    let (module, _) = s.ready_module(NEVER).await;
    let mut took = Vec::new();
    for version in ["2", "3", "4"] {
        let digest = push_version(&s, &module, version).await;
        let pushed = Instant::now();
        s.wait_for_digest(&module, &digest, Duration::from_secs(20))
            .await;
        took.push(pushed.elapsed());
    }
    eprintln!("push → status.imageDigest through docker-registry's notifications: {took:?}");

    // A new module name pushed to the source's root repository: its scan is due at once (the
    // scan interval is 3 minutes).
    let added = format!("{module}-added");
    support::images::push_module_names(&s.registry, REPO_PATH, &[&added])
        .await
        .expect("module name pushed");
    let listed = Instant::now();
    wait_for(
        "the source to list the new module",
        Duration::from_secs(20),
        || async {
            let modules = s.source_object()["status"]["modules"].clone();
            modules
                .as_array()?
                .iter()
                .any(|m| m["name"] == added.as_str())
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "module name push → listed by the source: {:?}",
        listed.elapsed()
    );
    let (_, metrics) = s.operator.http_get("/metrics").expect("metrics");
    assert!(
        metrics.contains("mpo_webhook_requests_total{sender=\"registry\",code=\"202\"}"),
        "{metrics}"
    );
    assert!(!s.operator.log().contains(TOKEN), "the token is in the log");
    let mpo = s.mpo(&module);
    assert!(
        mpo["metadata"]["annotations"]["renew"].is_null(),
        "the wake-up was served and taken away: {mpo}"
    );
}

#[tokio::test]
async fn bad_webhook_input_is_refused_and_wakes_nothing() {
    let cluster = require_cluster!();
    let (hook, mut s) = listening(cluster, "hook-bad").await;
    let (module, applied) = s.ready_module(NEVER).await;
    let moved = push_version(&s, &module, "2").await;
    let named = format!(r#"{{"mpo":"{module}"}}"#).into_bytes();

    let refused = [
        ("no token", "/hooks/generic", vec![], named.clone(), 401),
        (
            "a wrong token",
            "/hooks/generic",
            vec![("authorization", "Bearer not-the-token".to_owned())],
            named.clone(),
            401,
        ),
        (
            "a wrong path token",
            "/hooks/generic/nope",
            vec![],
            named.clone(),
            401,
        ),
        (
            "a body over 1 MiB",
            "/hooks/generic",
            vec![bearer()],
            vec![b' '; 2 * 1024 * 1024],
            413,
        ),
        (
            "malformed JSON",
            "/hooks/generic",
            vec![bearer()],
            b"{\"mpo\": ".to_vec(),
            400,
        ),
        (
            "an unknown sender",
            "/hooks/nope",
            vec![bearer()],
            named.clone(),
            404,
        ),
    ];
    for (what, path, headers, body, expected) in refused {
        let (status, answer) = post(&hook, path, &headers, body).await;
        assert_eq!(status, expected, "{what}: {answer}");
        assert_eq!(
            answer.trim().lines().count(),
            1,
            "{what}: one line: {answer}"
        );
    }
    let (status, answer) = post(&hook, "/hooks/generic", &[bearer()], b"{\"mpo\": ".to_vec()).await;
    assert_eq!(status, 400);
    assert!(answer.starts_with("not JSON: "), "{answer}");
    let get = reqwest::get(hook.url("/hooks/generic")).await.expect("GET");
    assert_eq!(get.status().as_u16(), 405);

    // An unknown repository: accepted, nothing done.
    let unknown = format!(
        r#"{{"repository":"{}/{REPO_PATH}/no-such-module","tag":"dev"}}"#,
        s.registry.host()
    );
    let (status, answer) = post(&hook, "/hooks/generic", &[bearer()], unknown.into_bytes()).await;
    assert_eq!((status, answer.trim()), (202, r#"{"woken":[]}"#));

    let mpo = s.mpo(&module);
    assert!(mpo["metadata"]["annotations"]["renew"].is_null(), "{mpo}");
    assert_eq!(
        mpo["status"]["imageDigest"],
        applied.as_str(),
        "nothing applied"
    );
    assert!(
        !s.operator.log().contains(TOKEN) && !s.operator.log().contains("not-the-token"),
        "a token is in the log"
    );
    assert!(
        s.operator.log().contains("webhook refused: no valid token"),
        "{}",
        s.operator.log()
    );

    // The right token wakes it.
    let (status, answer) = post(&hook, "/hooks/generic", &[bearer()], named).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer.trim(), format!(r#"{{"woken":["{module}"]}}"#));
    s.wait_for_digest(&module, &moved, WAIT).await;
}

fn github_signature(body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(TOKEN.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sender, path, headers, body.
type Payload = (&'static str, String, Vec<(&'static str, String)>, String);

#[tokio::test]
async fn each_vendors_payload_wakes_the_override_it_names() {
    let cluster = require_cluster!();
    let (hook, mut s) = listening(cluster, "hook-vendors").await;
    let (module, _) = s.ready_module(NEVER).await;
    let host = s.registry.host().to_owned();
    let repository = format!("{REPO_PATH}/{module}");
    // Shaped as each vendor documents its payload; only the fields that matter here vary.
    let payloads: Vec<Payload> = vec![
        (
            "harbor",
            "/hooks/harbor".into(),
            vec![bearer()],
            format!(
                r#"{{"type":"PUSH_ARTIFACT","occur_at":1702000000,"operator":"ci","event_data":{{"resources":[{{"digest":"sha256:00","tag":"dev","resource_url":"{host}/{repository}:dev"}}],"repository":{{"date_created":1702000000,"name":"{module}","namespace":"deckhouse","repo_full_name":"{repository}","repo_type":"private"}}}}}}"#
            ),
        ),
        (
            "dockerhub",
            format!("/hooks/dockerhub/{TOKEN}"),
            vec![],
            format!(
                r#"{{"callback_url":"https://registry.hub.docker.com/u/x/hook/1/","push_data":{{"pushed_at":1702000000,"pusher":"ci","tag":"dev"}},"repository":{{"name":"{module}","namespace":"{REPO_PATH}","repo_name":"{repository}","status":"Active"}}}}"#
            ),
        ),
        (
            "quay",
            format!("/hooks/quay/{TOKEN}"),
            vec![],
            format!(
                r#"{{"name":"{module}","repository":"{repository}","namespace":"deckhouse","docker_url":"{host}/{repository}","homepage":"https://{host}/repository/{repository}","updated_tags":["dev"]}}"#
            ),
        ),
        (
            "github",
            "/hooks/github".into(),
            vec![("x-github-event", "package".to_owned())],
            format!(
                r#"{{"action":"published","package":{{"id":1,"name":"{module}","namespace":"deckhouse","package_type":"CONTAINER","ecosystem":"CONTAINER","package_version":{{"version":"sha256:00","package_url":"{host}/{repository}:dev","container_metadata":{{"tag":{{"name":"dev","digest":"sha256:00"}}}}}},"registry":{{"url":"https://{host}"}}}}}}"#
            ),
        ),
        (
            "generic",
            "/hooks/generic".into(),
            vec![bearer()],
            format!(r#"{{"repository":"{host}/{repository}","tag":"dev"}}"#),
        ),
    ];
    for (n, (sender, path, mut headers, body)) in payloads.into_iter().enumerate() {
        let digest = push_version(&s, &module, &format!("v{n}")).await;
        if sender == "github" {
            headers.push(("x-hub-signature-256", github_signature(body.as_bytes())));
        }
        let (status, answer) = post(&hook, &path, &headers, body.into_bytes()).await;
        assert_eq!(status, 202, "{sender}: {answer}");
        assert_eq!(
            answer.trim(),
            format!(r#"{{"woken":["{module}"]}}"#),
            "{sender}"
        );
        s.wait_for_digest(&module, &digest, Duration::from_secs(20))
            .await;
    }
}

/// A notification is handed to the leader through the API, so the one a standby received while
/// the leader was frozen is applied by the next leader once the old one is killed.
#[tokio::test]
async fn a_notification_a_standby_received_is_applied_by_the_next_leader() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(
        cluster,
        "hook-failover",
        RegistryKind::Plain,
        &[],
        &["--scan-module-sources=false"],
    )
    .await;
    s.operator.kill();
    let lease = [
        "--leader-election=true".to_owned(),
        "--lease-namespace=default".to_owned(),
        "--lease-name".to_owned(),
        s.id.0.clone(),
        "--scan-module-sources=false".to_owned(),
    ];
    let (first_hook, second_hook) = (Hook::new(), Hook::new());
    let with = |hook: &Hook| [lease.to_vec(), hook.flags()].concat();
    let mut first = Operator::start(cluster, &s.id, &strs(&with(&first_hook)));
    let leads = |operator: &Operator| {
        operator
            .http_get("/metrics")
            .is_some_and(|(_, body)| body.lines().any(|l| l == "mpo_leader 1"))
    };
    wait_for("the first replica to lead", WAIT, || async {
        leads(&first).then_some(())
    })
    .await;
    let second = Operator::start(cluster, &s.id, &strs(&with(&second_hook)));
    wait_for_listener(&second_hook).await;
    let (module, _) = s.ready_module(NEVER).await;

    let pid = first.pid().expect("running").to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let digest = push_version(&s, &module, "2").await;
    let (status, answer) = post(
        &second_hook,
        "/hooks/generic",
        &[bearer()],
        format!(r#"{{"mpo":"{module}"}}"#).into_bytes(),
    )
    .await;
    assert_eq!(status, 202, "the standby took the notification: {answer}");
    let renew = s.mpo(&module)["metadata"]["annotations"]["renew"].clone();
    assert!(
        renew.as_str().is_some_and(|v| v.starts_with("webhook ")),
        "the hand-off is on the object: {renew}"
    );
    first.kill();
    s.wait_for_digest(&module, &digest, WAIT).await;
    assert!(leads(&second), "the standby leads now");
    s.operator = second;
}

/// `kubectl mpo webhook` as a user runs it after `kubectl apply -f deploy/webhook.yaml`: the
/// Service's in-cluster name, then its load balancer once it has one, each sender's URL, and
/// the CI curl line under the table with the token left to `$MPO_WEBHOOK_TOKEN`.
#[tokio::test]
async fn kubectl_mpo_webhook_prints_the_urls_of_the_deployed_service() {
    let cluster = require_cluster!();
    let id = support::TestId::new("hook-cli");
    let namespace = format!("{}-ns", id.0);
    let mpo = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-mpo"))
            .args(args)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .output()
            .expect("kubectl-mpo runs")
    };
    let missing = mpo(&["webhook", "echo", "--namespace", &namespace]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("pass --url"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    cluster.kubectl_ok(&["create", "namespace", &namespace]);
    let manifest =
        std::fs::read_to_string(support::cluster::repo_root().join("deploy/webhook.yaml"))
            .expect("deploy/webhook.yaml")
            .replace(
                "namespace: mpo-operator",
                &format!("namespace: {namespace}"),
            );
    cluster.apply_ok(&manifest);
    let table = |args: &[&str]| {
        let out = mpo(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let printed = table(&["webhook", "echo", "--namespace", &namespace]);
    let base = format!("http://mpo-operator-webhook.{namespace}.svc:9443/hooks");
    assert!(printed.contains(&format!("{base}/registry")), "{printed}");
    assert!(
        printed.contains(&format!("{base}/quay/<token>")),
        "{printed}"
    );
    let (rows, ci) = printed
        .split_once("\nA CI job, after its push:\n")
        .expect("the CI line under the table");
    assert!(!rows.contains("curl"), "the table has no curl row: {rows}");
    assert!(
        ci.contains(r#"-H "Authorization: Bearer $MPO_WEBHOOK_TOKEN""#)
            && ci.contains(r#"-d '{"mpo":"echo"}'"#)
            && ci.trim_end().ends_with(&format!("{base}/generic")),
        "{ci}"
    );

    // A load balancer's address, once the Service has one, is what outside senders need.
    cluster.kubectl_ok(&[
        "-n",
        &namespace,
        "patch",
        "service",
        "mpo-operator-webhook",
        "--type=merge",
        "-p",
        r#"{"spec":{"type":"LoadBalancer"}}"#,
    ]);
    cluster.kubectl_ok(&[
        "-n",
        &namespace,
        "patch",
        "service",
        "mpo-operator-webhook",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.10"}]}}}"#,
    ]);
    let json = mpo(&["webhook", "--namespace", &namespace, "-o", "json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(
        value["endpoints"][0]["url"], "http://192.0.2.10:9443/hooks/registry",
        "{value}"
    );
    assert!(
        value["ci"]
            .as_str()
            .is_some_and(|c| c.contains("$IMAGE_REPO")),
        "{value}"
    );
    cluster.kubectl_ok(&["delete", "namespace", &namespace, "--wait=false"]);
}
