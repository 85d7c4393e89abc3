//! Reaching each kind of registry (plain HTTP, htpasswd, TLS with a private CA) the way the
//! operator does: the same digest through curl's HEAD and through the operator's own client with
//! the right credentials and CA, and a refusal without them.

mod support;

use mpo_operator::{
    crd::{DockerCfg, RegistryCredentials},
    registry::{ModuleRef, Registry, RegistryConfig, RepoName, Transport},
};
use std::time::Duration;
use support::{
    images::{ModuleImage, push},
    registry::{
        HeadAuth, RegistryKind, TestRegistry, curl_head_digest, curl_head_digest_without_ca,
    },
};

fn client_config(reg: &TestRegistry, docker_cfg: &str, with_ca: bool) -> RegistryConfig {
    let repo = RepoName::parse(&format!("{}/deckhouse/modules", reg.host())).expect("repo");
    let credentials = DockerCfg::new(docker_cfg)
        .credentials_for(repo.host())
        .expect("credentials");
    RegistryConfig {
        repo,
        transport: if reg.kind().has_tls() {
            Transport::Https
        } else {
            Transport::Http
        },
        ca_pem: if with_ca {
            reg.ca_pem().map(str::to_owned)
        } else {
            None
        },
        credentials,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        min_download_rate: 64 * 1024,
    }
}

async fn resolve(config: &RegistryConfig) -> Result<String, String> {
    let registry = Registry::new(config).map_err(|e| e.to_string())?;
    let image = ModuleRef::new(config.repo.clone(), "echo", "main-patch-03354").expect("reference");
    registry
        .resolve(&image)
        .await
        .map(|d| d.to_string())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn every_registry_variant_resolves_the_pushed_digest_only_with_its_credentials() {
    for kind in RegistryKind::ALL {
        let reg = TestRegistry::start(kind).expect("registry starts");
        let pushed = push(
            &reg,
            "deckhouse/modules/echo",
            "main-patch-03354",
            &ModuleImage::echo_module(910, "a"),
        )
        .await
        .expect("push");

        let head = curl_head_digest(
            &reg,
            "deckhouse/modules/echo",
            "main-patch-03354",
            HeadAuth::Registry,
        )
        .expect("curl");
        assert_eq!(
            (head.status, head.digest.as_deref()),
            (200, Some(pushed.as_str())),
            "{kind:?}"
        );
        let ours = resolve(&client_config(&reg, &reg.docker_cfg(), true)).await;
        assert_eq!(
            ours.as_deref(),
            Ok(pushed.as_str()),
            "{kind:?}: the operator's client"
        );

        if kind.has_auth() {
            let anonymous = curl_head_digest(
                &reg,
                "deckhouse/modules/echo",
                "main-patch-03354",
                HeadAuth::None,
            )
            .expect("curl");
            assert_eq!(anonymous.status, 401, "{kind:?}");
            let wrong = resolve(&client_config(
                &reg,
                &reg.docker_cfg_with_password("wrong"),
                true,
            ))
            .await;
            let err = wrong.expect_err("a wrong password is refused");
            assert!(err.contains("unauthorized"), "{kind:?}: {err}");
            assert!(
                !err.contains("wrong"),
                "{kind:?}: the password leaked into {err}"
            );
        }
        if kind.has_tls() {
            let untrusted = curl_head_digest_without_ca(
                &reg,
                "deckhouse/modules/echo",
                "main-patch-03354",
                HeadAuth::Registry,
            )
            .expect("curl");
            assert_eq!(
                untrusted.status, 0,
                "{kind:?}: curl must not trust the private CA by default"
            );
            let err = resolve(&client_config(&reg, &reg.docker_cfg(), false))
                .await
                .expect_err("unknown CA refused");
            assert!(
                err.contains("certificate") || err.contains("connect"),
                "{kind:?}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn a_missing_tag_is_reported_as_manifest_unknown() {
    let reg = TestRegistry::start(RegistryKind::Plain).expect("registry starts");
    push(
        &reg,
        "deckhouse/modules/echo",
        "other",
        &ModuleImage::echo_module(900, "b"),
    )
    .await
    .expect("push");
    let err = resolve(&client_config(&reg, "", true))
        .await
        .expect_err("missing tag");
    assert_eq!(err, "manifest unknown");
}

#[test]
fn credentials_never_show_in_debug_output() {
    let cfg = DockerCfg::new(r#"{"auths":{"r:1":{"username":"u","password":"hunter2"}}}"#);
    let creds = cfg.credentials_for("r:1").expect("entry");
    assert!(matches!(creds, RegistryCredentials::Basic { .. }));
    assert!(!format!("{cfg:?} {creds:?}").contains("hunter2"));
}
