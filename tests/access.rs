//! Registry credentials, private CAs and the scheme, end to end, and no secret in any log line or
//! status.

mod support;

use std::time::Duration;

use support::{
    images::ModuleImage,
    registry::RegistryKind,
    scenario::{Scenario, SourceOptions, kind_name},
};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_override_works_with_docker_cfg_ca_and_plain_http() {
    let cluster = require_cluster!();
    for kind in [
        RegistryKind::Htpasswd,
        RegistryKind::Tls,
        RegistryKind::TlsHtpasswd,
        RegistryKind::Plain,
    ] {
        let mut s = Scenario::start(cluster, kind_name(kind), kind, &[], &[]).await;
        let module = format!("{}-m", s.id.0);
        let image = ModuleImage::module(&module, 905, "1");
        let digest = s.push(&module, "dev", &image).await;
        s.apply_mpo(&module, "dev", "15s");
        s.wait_for_digest(&module, &digest, WAIT).await;
        assert_eq!(
            support::scenario::files_under(&s.version_dir(&module, &digest)),
            support::scenario::sorted(image.files()),
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_unauthorized_and_leaks_nothing() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "wrongpass", RegistryKind::TlsHtpasswd, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    let wrong_password = "Wr0ng-S3cret-Passw0rd";
    let wrong_cfg = s.docker_cfg_for("tester", wrong_password);
    s.apply_source(&SourceOptions {
        docker_cfg: Some(wrong_cfg.clone()),
        with_ca: true,
    });
    s.apply_mpo(&module, "dev", "2s");
    let mpo = s.wait_for_message(&module, "unauthorized", WAIT).await;
    let message = mpo["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with(&format!("cannot resolve {}/", s.registry.host())),
        "{message}"
    );

    // A dockerCfg without an entry for this host.
    let other_cfg = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(r#"{"auths":{"elsewhere.example":{"auth":"dTpw"}}}"#)
    };
    s.apply_source(&SourceOptions {
        docker_cfg: Some(other_cfg),
        with_ca: true,
    });
    s.wait_for_message(
        &module,
        &format!(
            "no credentials for {} in the dockerCfg of ModuleSource \"{}\"",
            s.registry.host(),
            s.source
        ),
        WAIT,
    )
    .await;

    // Fixed credentials heal it.
    let good = s.registry.docker_cfg();
    s.apply_source(&SourceOptions {
        docker_cfg: Some(good.clone()),
        with_ca: true,
    });
    s.wait_for_digest(&module, &digest, WAIT).await;

    let (_, real_password) = s.registry.credentials().expect("credentials");
    let log = s.operator.log();
    let status = s.mpo(&module).to_string();
    let events = cluster.kubectl_ok(&["get", "events", "-A", "-o", "json"]);
    for secret in [wrong_password, real_password, &wrong_cfg, &good] {
        for (place, text) in [
            ("operator log", &log),
            ("status", &status),
            ("events", &events),
        ] {
            assert!(!text.contains(secret), "a secret appeared in the {place}");
        }
    }
    assert!(log.contains("unauthorized"), "the failure is logged");
}

/// A dockerCfg of the wrong shape (here an `auths` entry that is the bare base64 `user:password`
/// instead of an object) is reported by its place and type; the value appears nowhere.
#[tokio::test]
async fn a_malformed_docker_cfg_is_named_by_its_shape_and_its_content_never_shown() {
    use base64::Engine as _;
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "badcfg", RegistryKind::Htpasswd, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    s.push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let secret = b64.encode("tester:Sh0uld-N3ver-Appear");
    let shapes = [
        (
            serde_json::json!({"auths": {s.registry.host(): secret}}),
            "auths entry 1 of 1 is not an object",
        ),
        (
            serde_json::json!({"auths": {s.registry.host(): {"auth": {"nested": secret}}}}),
            "\"auth\" is not a string",
        ),
        (
            serde_json::json!([secret]),
            "the top level is not an object",
        ),
    ];
    s.apply_mpo(&module, "dev", "2s");
    for (config, expected) in shapes {
        s.apply_source(&SourceOptions {
            docker_cfg: Some(b64.encode(config.to_string())),
            with_ca: false,
        });
        let mpo = s.wait_for_message(&module, expected, WAIT).await;
        let message = mpo["status"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("dockerCfg"), "{message}");
    }
    // Not even broken JSON quotes it: only the position of the syntax error is named.
    s.apply_source(&SourceOptions {
        docker_cfg: Some(b64.encode(format!(r#"{{"auths": {{"x": "{secret}"#))),
        with_ca: false,
    });
    s.wait_for_message(&module, "invalid JSON at line 1", WAIT)
        .await;

    let log = s.operator.log();
    let status = s.mpo(&module).to_string();
    let source = s.source_object().to_string();
    let events = cluster.kubectl_ok(&["get", "events", "-A", "-o", "json"]);
    for (place, text) in [
        ("operator log", &log),
        ("MPO status", &status),
        ("events", &events),
    ] {
        assert!(
            !text.contains(&secret),
            "the dockerCfg value appeared in the {place}"
        );
        assert!(
            !text.contains("Sh0uld-N3ver-Appear"),
            "the password appeared in the {place}"
        );
    }
    assert!(
        !source.contains("Sh0uld-N3ver-Appear"),
        "nor in the source's status"
    );
}
