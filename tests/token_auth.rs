//! Token auth end to end (SPEC §3.3 "credentials for the registry host"): Debian's
//! `docker-registry` in `auth: token` mode with the harness's token server, as GitLab, Harbor,
//! Docker Hub and GHCR work. The dockerCfg forms people paste: username/password, `identitytoken`
//! (an OAuth2 refresh token) and `registrytoken` (the bearer itself).

mod support;

use std::time::Duration;

use base64::Engine as _;
use mpo_operator::registry::{ModuleRef, Registry, RegistryConfig, RepoName, Transport};
use support::{
    images::{ModuleImage, push},
    proxy::{Fault, FaultProxy},
    registry::{LoggedRequest, RegistryKind, TestRegistry},
    scenario::{REPO_PATH, Scenario, SourceOptions},
    token_server::{Grant, TokenServer},
    wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

fn operator_requests(s: &Scenario) -> Vec<LoggedRequest> {
    s.registry
        .requests()
        .into_iter()
        .filter(|r| r.agent.starts_with("mpo-operator/"))
        .collect()
}

fn tokens(s: &Scenario) -> &TokenServer {
    s.registry.token_server().expect("a token registry")
}

fn scope_of(module: &str) -> String {
    format!("repository:{REPO_PATH}/{module}:pull")
}

/// base64 of `{"auths":{<host>:<entry>}}`.
fn docker_cfg(host: &str, entry: serde_json::Value) -> String {
    let cfg = serde_json::json!({ "auths": { host: entry } });
    base64::engine::general_purpose::STANDARD.encode(cfg.to_string())
}

#[tokio::test]
async fn a_token_registry_is_read_with_a_token_per_repository_reused_until_it_expires() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(
        cluster,
        "token",
        RegistryKind::Token,
        &[],
        &["--source-scan-interval", "2s"],
    )
    .await;
    tokens(&s).set_lifetime(Duration::from_secs(4));
    let (a, b) = (format!("{}-a", s.id.0), format!("{}-b", s.id.0));
    let digest_a = s.push(&a, "dev", &ModuleImage::module(&a, 900, "a")).await;
    let digest_b = s.push(&b, "dev", &ModuleImage::module(&b, 900, "b")).await;
    s.apply_mpo(&a, "dev", "1s");
    s.apply_mpo(&b, "dev", "1s");
    s.wait_for_digest(&a, &digest_a, WAIT).await;
    s.wait_for_digest(&b, &digest_b, WAIT).await;

    // Tokens of 4 s are renewed before they expire, while checks run every second.
    wait_for("three tokens for the first module", WAIT, || async {
        (tokens(&s).issued_for(&scope_of(&a)).len() >= 3).then_some(())
    })
    .await;

    let issued_a = tokens(&s).issued_for(&scope_of(&a)).len();
    assert!(
        !tokens(&s).issued_for(&scope_of(&b)).is_empty(),
        "a token of its own for each repository"
    );
    let operator_token_requests: Vec<_> = tokens(&s)
        .requests()
        .into_iter()
        .filter(|r| r.scopes.iter().any(|sc| sc == &scope_of(&a)))
        .collect();
    assert!(
        operator_token_requests.iter().all(|r| r.method == "GET"
            && matches!(&r.grant, Grant::Basic { user, .. } if user == "tester")),
        "basic credentials on a GET, as the token spec says: {operator_token_requests:?}"
    );

    let requests = operator_requests(&s);
    let heads_a = requests
        .iter()
        .filter(|r| r.method == "HEAD" && r.uri.contains(&format!("/{a}/manifests/")))
        .count();
    assert!(
        heads_a >= 2 * issued_a,
        "each token serves several checks: {heads_a} HEADs, {issued_a} tokens"
    );
    assert!(
        !requests.iter().any(|r| r.uri == "/v2/" || r.uri == "/v2"),
        "the challenge comes from the repository's own 401, no /v2/ probe"
    );
    let refused: Vec<_> = requests.iter().filter(|r| r.status == 401).collect();
    assert!(
        refused.len() <= 6,
        "a 401 only before the first token of each repository, never on expiry: {refused:?}"
    );
    for module in [&a, &b] {
        assert_eq!(s.mpo(module)["status"]["message"], "", "no failed pass");
    }
}

#[tokio::test]
async fn wrong_credentials_at_the_token_server_are_unauthorized_and_leak_nothing() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "token-wrong", RegistryKind::Token, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    s.push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    let wrong = "Wr0ng-T0ken-Passw0rd";
    s.apply_source(&SourceOptions {
        docker_cfg: Some(s.docker_cfg_for("tester", wrong)),
        with_ca: false,
    });
    s.apply_mpo(&module, "dev", "2s");
    let mpo = s
        .wait_for_message(&module, "the token server refused the credentials", WAIT)
        .await;
    let message = mpo["status"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("cannot resolve "), "{message}");
    assert!(message.contains("unauthorized"), "{message}");
    assert!(!message.contains(wrong), "{message}");
    assert!(
        !s.operator.log().contains(wrong),
        "the password is not logged"
    );
}

#[tokio::test]
async fn a_failing_token_server_is_a_transient_failure_that_heals_by_itself() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "token-down", RegistryKind::Token, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    tokens(&s).fail(503, None);
    s.apply_mpo(&module, "dev", "30s");
    let mpo = s
        .wait_for_message(&module, "token server error (HTTP 503)", WAIT)
        .await;
    let message = mpo["status"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("unauthorized"), "{message}");
    // Retried with backoff, well before the 30 s interval.
    wait_for("a retry of the token request", WAIT, || async {
        let failed = tokens(&s)
            .requests()
            .iter()
            .filter(|r| r.status == 503 && r.scopes.contains(&scope_of(&module)))
            .count();
        (failed >= 3).then_some(())
    })
    .await;

    tokens(&s).fail(429, Some(1));
    s.wait_for_message(
        &module,
        "the token server is rate limiting (HTTP 429)",
        WAIT,
    )
    .await;
    tokens(&s).heal();
    s.wait_for_digest(&module, &digest, WAIT).await;
    assert_eq!(s.mpo(&module)["status"]["message"], "");
}

#[tokio::test]
async fn an_identity_token_is_a_refresh_token_with_a_fallback_for_realms_without_oauth() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "token-identity", RegistryKind::Token, &[], &[]).await;
    let refresh = "identity-7d1e-refresh";
    tokens(&s).set_refresh_token(refresh);
    tokens(&s).set_lifetime(Duration::from_secs(2));
    let cfg = docker_cfg(
        s.registry.host(),
        serde_json::json!({ "identitytoken": refresh }),
    );
    s.apply_source(&SourceOptions {
        docker_cfg: Some(cfg),
        with_ca: false,
    });
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    s.apply_mpo(&module, "dev", "1s");
    s.wait_for_digest(&module, &digest, WAIT).await;
    let refreshed = tokens(&s).issued_for(&scope_of(&module));
    assert!(
        refreshed
            .iter()
            .all(|r| r.method == "POST" && r.grant == Grant::RefreshToken(refresh.into())),
        "an OAuth2 refresh-token grant: {refreshed:?}"
    );

    // A realm without OAuth2 answers POST with 404: the identity token goes as a basic password.
    tokens(&s).set_oauth(false);
    wait_for("a token by GET with the identity token", WAIT, || async {
        tokens(&s)
            .issued_for(&scope_of(&module))
            .iter()
            .any(|r| {
                r.method == "GET"
                    && r.grant
                        == Grant::Basic {
                            user: "<token>".into(),
                            password: refresh.into(),
                        }
            })
            .then_some(())
    })
    .await;
    assert_eq!(s.mpo(&module)["status"]["message"], "");
    assert!(
        !s.operator.log().contains(refresh),
        "the token is not logged"
    );
}

#[tokio::test]
async fn a_registry_token_is_the_bearer_and_asks_the_token_server_nothing() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "token-bearer", RegistryKind::Token, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    let token = tokens(&s)
        .issue(&[&scope_of(&module)], Duration::from_secs(600))
        .expect("a token");
    s.apply_source(&SourceOptions {
        docker_cfg: Some(docker_cfg(
            s.registry.host(),
            serde_json::json!({ "registrytoken": token }),
        )),
        with_ca: false,
    });
    let asked_before = tokens(&s).issued_for(&scope_of(&module)).len();
    s.apply_mpo(&module, "dev", "15s");
    s.wait_for_digest(&module, &digest, WAIT).await;
    assert_eq!(
        tokens(&s).issued_for(&scope_of(&module)).len(),
        asked_before,
        "the registry token is used as it is"
    );
    assert!(
        !s.operator.log().contains(&token),
        "the token is not logged"
    );
}

#[tokio::test]
async fn a_token_server_redirecting_elsewhere_gets_no_credentials_and_a_same_origin_one_is_followed()
 {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "token-redirect", RegistryKind::Token, &[], &[]).await;
    let refresh = "identity-9f2c-refresh";
    tokens(&s).set_refresh_token(refresh);
    let elsewhere_dir = tempfile::tempdir().expect("temp dir");
    let elsewhere = TokenServer::start(elsewhere_dir.path(), "tester", "other").expect("server");
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    tokens(&s).redirect_to(Some(&elsewhere.realm()));
    s.apply_source(&SourceOptions {
        docker_cfg: Some(docker_cfg(
            s.registry.host(),
            serde_json::json!({ "identitytoken": refresh }),
        )),
        with_ca: false,
    });
    s.apply_mpo(&module, "dev", "2s");

    let origin = elsewhere.realm().trim_end_matches("/token").to_owned();
    let mpo = s
        .wait_for_message(
            &module,
            &format!("the token server redirected to {origin}, another origin"),
            WAIT,
        )
        .await;
    let message = mpo["status"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains(refresh), "{message}");
    assert!(
        elsewhere.requests().is_empty(),
        "the refresh token went nowhere else: {:?}",
        elsewhere.requests()
    );

    // A redirect within the token server's own origin is followed.
    tokens(&s).redirect_to(Some(&tokens(&s).moved_url()));
    s.wait_for_digest(&module, &digest, WAIT).await;
    assert!(
        tokens(&s)
            .issued_for(&scope_of(&module))
            .iter()
            .any(|r| r.path == "/moved" && r.grant == Grant::RefreshToken(refresh.into())),
        "the token came from the redirect target: {:?}",
        tokens(&s).requests()
    );
    assert!(elsewhere.requests().is_empty());
}

#[tokio::test]
async fn a_token_server_failing_near_the_end_of_a_token_s_life_is_bridged_by_the_kept_token() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "token-blip", RegistryKind::Token, &[], &[]).await;
    // Renewal is due at 90 % (27 s); the token is valid until 30 s: three checks in between.
    tokens(&s).set_lifetime(Duration::from_secs(30));
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    s.apply_mpo(&module, "dev", "1s");
    s.wait_for_digest(&module, &digest, WAIT).await;
    tokens(&s).fail(503, None);
    let heads = || {
        operator_requests(&s)
            .iter()
            .filter(|r| r.method == "HEAD" && r.status == 200 && r.uri.contains(&module))
            .count()
    };

    let failed_renewals = || {
        tokens(&s)
            .requests()
            .iter()
            .filter(|r| r.status == 503 && r.scopes.contains(&scope_of(&module)))
            .count()
    };
    wait_for("a failed renewal", WAIT, || async {
        (failed_renewals() >= 1).then_some(())
    })
    .await;
    let heads_at_first_failure = heads();
    wait_for("a second failed renewal", WAIT, || async {
        (failed_renewals() >= 2).then_some(())
    })
    .await;
    assert!(
        heads() > heads_at_first_failure,
        "checks went on with the kept token"
    );
    assert_eq!(
        s.mpo(&module)["status"]["message"],
        "",
        "no failed pass while the kept token was valid"
    );
    assert!(
        s.operator
            .log()
            .contains("renewing the registry token failed; the current token is still valid"),
        "the failed renewal is logged"
    );

    // Once it has expired, the failure shows; healing the server heals the override.
    s.wait_for_message(&module, "token server error (HTTP 503)", WAIT)
        .await;
    tokens(&s).heal();
    wait_for("the message cleared", WAIT, || async {
        (s.mpo(&module)["status"]["message"] == "").then_some(())
    })
    .await;
}

/// The operator's own client, straight against the token registry (no cluster needed).
fn direct_client(reg: &TestRegistry) -> (Registry, RepoName) {
    direct_client_at(reg, reg.host())
}

/// [`direct_client`] through `host` (e.g. a fault proxy in front of the registry).
fn direct_client_at(reg: &TestRegistry, host: &str) -> (Registry, RepoName) {
    let repo = RepoName::parse(&format!("{host}/deckhouse/modules")).expect("repo");
    let (user, password) = reg.credentials().expect("credentials");
    let config = RegistryConfig {
        repo: repo.clone(),
        transport: Transport::Http,
        ca_pem: None,
        credentials: mpo_operator::registry::RegistryCredentials::Basic {
            username: user.to_owned(),
            password: password.to_owned(),
        },
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        min_download_rate: 64 * 1024,
    };
    (Registry::new(&config).expect("client"), repo)
}

#[tokio::test]
async fn concurrent_requests_needing_a_token_share_one_token_request() {
    let reg = TestRegistry::start(RegistryKind::Token).expect("registry");
    let pushed = push(
        &reg,
        "deckhouse/modules/echo",
        "v1",
        &ModuleImage::echo_module(910, "a"),
    )
    .await
    .expect("push");
    let (registry, repo) = direct_client(&reg);
    let image = ModuleRef::new(repo, "echo", "v1").expect("reference");
    let resolved = futures::future::join_all((0..8).map(|_| registry.resolve(&image))).await;
    for digest in resolved {
        assert_eq!(digest.expect("resolved").to_string(), pushed);
    }
    let tokens = reg.token_server().expect("token server");
    let issued = tokens.issued_for("repository:deckhouse/modules/echo:pull");
    assert_eq!(
        issued.len(),
        1,
        "eight concurrent first requests, one token: {:?}",
        tokens.requests()
    );
}

#[tokio::test]
async fn a_bearer_challenge_is_taken_after_a_basic_one_in_any_case_with_each_scope_its_own_parameter()
 {
    let reg = TestRegistry::start(RegistryKind::Token).expect("registry");
    let pushed = push(
        &reg,
        "deckhouse/modules/echo",
        "v1",
        &ModuleImage::echo_module(910, "a"),
    )
    .await
    .expect("push");
    let tokens = reg.token_server().expect("token server");
    let proxy = FaultProxy::start(&reg);
    let scopes = "repository:deckhouse/modules/echo:pull repository:deckhouse/modules/other:pull";
    proxy.fail(
        "/v2/deckhouse/modules/echo/",
        Fault::ReplaceHeader {
            name: "www-authenticate".into(),
            value: format!(
                r#"Basic realm="Registry Realm", BEARER realm="{}",service="{}",scope="{scopes}""#,
                tokens.realm(),
                support::token_server::SERVICE
            ),
        },
    );
    let (registry, repo) = direct_client_at(&reg, proxy.host());
    let image = ModuleRef::new(repo, "echo", "v1").expect("reference");
    let digest = registry
        .resolve(&image)
        .await
        .expect("resolved via the bearer challenge");
    assert_eq!(digest.to_string(), pushed);
    let asked: Vec<_> = tokens.requests();
    assert!(
        asked
            .iter()
            .any(|r| r.status == 200 && r.scope_params == 2 && r.scopes.len() == 2),
        "one scope parameter per scope: {asked:?}"
    );
}
