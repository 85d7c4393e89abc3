//! Token auth end to end (SPEC §3.3 "credentials for the registry host"): Debian's
//! `docker-registry` in `auth: token` mode with the harness's token server, as GitLab, Harbor,
//! Docker Hub and GHCR work. The dockerCfg forms people paste: username/password, `identitytoken`
//! (an OAuth2 refresh token) and `registrytoken` (the bearer itself).

mod support;

use std::time::Duration;

use base64::Engine as _;
use support::{
    images::ModuleImage,
    registry::{LoggedRequest, RegistryKind},
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
