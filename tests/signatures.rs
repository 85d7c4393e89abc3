//! Module images signed by the real cosign (v2.6.5 from `hack/cosign.sh`, its classic
//! `sha256-<hex>.sig` signatures, `--tlog-upload=false`), checked with `kubectl mpo verify` as
//! a module author types it: the right key, a wrong key, two keys during a rotation, an unsigned
//! image, a signature copied from another image, and a payload altered after signing.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use support::{
    images::ModuleImage,
    registry::RegistryKind,
    scenario::{REPO_PATH, Scenario},
    wait::wait_for,
};

fn cosign() -> Option<PathBuf> {
    cosign_of("MPO_COSIGN", "v2.6.5")
}

/// cosign v3, whose default is a Sigstore bundle stored as an OCI referrer.
fn cosign_v3() -> Option<PathBuf> {
    cosign_of("MPO_COSIGN_V3", "v3.1.3")
}

fn cosign_of(variable: &str, version: &str) -> Option<PathBuf> {
    let path = std::env::var_os(variable).map(PathBuf::from).or_else(|| {
        let cache = std::env::var_os("HOME")
            .map(PathBuf::from)?
            .join(format!(".cache/mpo-operator/cosign/{version}/cosign"));
        cache.is_file().then_some(cache)
    });
    match path {
        Some(path) if path.is_file() => Some(path),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("cosign {version} is missing: run bash hack/cosign.sh {version} ({variable})")
        }
        _ => {
            eprintln!("SKIPPED: cosign {version} is missing (bash hack/cosign.sh {version})");
            None
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// cosign in `dir` with an empty key password and a docker config of its own (no credentials of
/// the machine; the test registry needs none).
fn run_cosign(cosign: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new(cosign)
        .args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", "")
        .env("DOCKER_CONFIG", dir.join("docker"))
        .env("HOME", dir)
        .stdin(Stdio::null())
        .output()
        .expect("cosign runs");
    assert!(
        out.status.success(),
        "cosign {}: {}{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn mpo(s: &Scenario, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-mpo"))
        .args(args)
        .env("KUBECONFIG", &s.cluster.kubeconfig)
        .env("DOCKER_CONFIG", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("kubectl-mpo runs")
}

/// `kubectl mpo verify SOURCE MODULE:TAG --key …` with `keys`: exit code, stdout, stderr.
fn verify(s: &Scenario, image: &str, keys: &[&Path]) -> (i32, String, String) {
    let mut args = vec!["verify", s.source.as_str(), image, "-o", "json"];
    let keys: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
    for key in &keys {
        args.extend(["--key", key.as_str()]);
    }
    let out = mpo(s, &args);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// The registry API by curl, for the surgery a forger would do.
fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sSf", "--noproxy", "*"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
    out.stdout
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn get_manifest(base: &str, tag: &str) -> Value {
    let body = curl(&[
        "-H",
        &format!("Accept: {MANIFEST}"),
        &format!("{base}/manifests/{tag}"),
    ]);
    serde_json::from_slice(&body).expect("a manifest")
}

fn put_manifest(base: &str, tag: &str, manifest: &Value) {
    put_manifest_as(base, tag, manifest, MANIFEST);
}

fn put_manifest_as(base: &str, tag: &str, manifest: &Value, media_type: &str) {
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {media_type}"),
        "--data-binary",
        &manifest.to_string(),
        &format!("{base}/manifests/{tag}"),
    ]);
}

/// A monolithic blob upload (POST for a session, PUT with the digest).
fn put_blob(base: &str, bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
    let headers = text(&curl(&[
        "-X",
        "POST",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{base}/blobs/uploads/"),
    ]));
    let location = headers
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .expect("an upload location");
    let separator = if location.contains('?') { '&' } else { '?' };
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), bytes).expect("blob written");
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.path().display()),
        &format!("{location}{separator}digest={digest}"),
    ]);
    digest
}

fn hex_of(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

#[tokio::test]
async fn kubectl_mpo_verify_accepts_a_cosign_signature_only_with_its_key_and_for_its_image() {
    let cluster = require_cluster!();
    let Some(cosign) = cosign() else { return };
    let module = "signed-echo";
    let s = Scenario::start(cluster, "sig-cli", RegistryKind::Plain, &[module], &[]).await;
    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path();
    std::fs::create_dir_all(dir.join("docker")).expect("docker dir");
    for prefix in ["a", "b"] {
        run_cosign(
            &cosign,
            dir,
            &["generate-key-pair", "--output-key-prefix", prefix],
        );
    }
    let (key_a, key_b) = (dir.join("a.pub"), dir.join("b.pub"));

    let mut digests = Vec::new();
    for (tag, text) in [("v1", "1"), ("v2", "2"), ("v3", "3")] {
        let digest = s
            .push(module, tag, &ModuleImage::module(module, 900, text))
            .await;
        digests.push(digest);
    }
    let repository = format!("{}/{REPO_PATH}/{module}", s.registry.host());
    let base = format!("http://{}/v2/{REPO_PATH}/{module}", s.registry.host());
    run_cosign(
        &cosign,
        dir,
        &[
            "sign",
            "--key",
            "a.key",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--yes",
            "-a",
            "commit=abc123",
            &format!("{repository}@{}", digests[0]),
        ],
    );

    // Signed with key a: verified, and the output names the key and what was signed.
    let (code, stdout, stderr) = verify(&s, &format!("{module}:v1"), &[&key_a]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let rows: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(rows[0]["digest"], digests[0].as_str(), "{rows}");
    assert_eq!(rows[0]["reference"], repository.as_str(), "{rows}");
    assert_eq!(rows[0]["annotations"]["commit"], "abc123", "{rows}");
    assert_eq!(rows[0]["algorithm"], "ECDSA P-256", "{rows}");
    let fingerprint = rows[0]["key"].as_str().unwrap_or_default().to_owned();
    assert!(fingerprint.starts_with("sha256:"), "{rows}");
    let pem = std::fs::read_to_string(&key_a).expect("a.pub");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(
        !stdout.contains(&body) && !stderr.contains(&body),
        "no key material in the output"
    );

    // A wrong key: refused as such, exit 1.
    let (code, _, stderr) = verify(&s, &format!("{module}:v1"), &[&key_b]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("does not verify with any of the 1 trusted keys"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    // A rotation: the new key beside the old one still verifies the old signature.
    let (code, stdout, stderr) = verify(&s, &format!("{module}:v1"), &[&key_b, &key_a]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // Unsigned.
    let (code, _, stderr) = verify(&s, &format!("{module}:v2"), &[&key_a]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("has no signature"), "{stderr}");

    // v1's signature copied to v2's signature tag: it verifies, but names another image.
    let signature_v1 = get_manifest(&base, &format!("sha256-{}.sig", hex_of(&digests[0])));
    put_manifest(
        &base,
        &format!("sha256-{}.sig", hex_of(&digests[1])),
        &signature_v1,
    );
    let (code, _, stderr) = verify(&s, &format!("{module}:v2"), &[&key_a]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("is of another image ({})", digests[0])),
        "{stderr}"
    );

    // The payload altered to name v3, under v3's signature tag, the signature kept.
    let layer = &signature_v1["layers"][0];
    let payload = curl(&[&format!(
        "{base}/blobs/{}",
        layer["digest"].as_str().expect("layer digest")
    )]);
    let altered = text(&payload).replace(&digests[0], &digests[2]);
    assert_ne!(altered.as_bytes(), &payload[..], "the payload names v1");
    let altered_digest = put_blob(&base, altered.as_bytes());
    let mut forged = signature_v1.clone();
    forged["layers"][0]["digest"] = Value::from(altered_digest);
    forged["layers"][0]["size"] = Value::from(altered.len());
    put_manifest(
        &base,
        &format!("sha256-{}.sig", hex_of(&digests[2])),
        &forged,
    );
    let (code, _, stderr) = verify(&s, &format!("{module}:v3"), &[&key_a]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("does not verify") && stderr.contains("payload was altered"),
        "{stderr}"
    );
}

/// The source YAML with a `spec.verify` policy trusting `keys` (PEM files).
fn source_with_policy(s: &Scenario, keys: &[&Path]) -> String {
    let mut yaml = s.source_yaml(&support::scenario::SourceOptions {
        docker_cfg: Some(s.registry.docker_cfg()),
        with_ca: true,
    });
    yaml.push_str("  verify:\n    provider: cosign\n    publicKeys:\n");
    for key in keys {
        yaml.push_str("    - |\n");
        for line in std::fs::read_to_string(key).expect("key").lines() {
            yaml.push_str(&format!("      {line}\n"));
        }
    }
    yaml
}

fn verified_condition(s: &Scenario, module: &str) -> Value {
    let mpo = s.mpo(module);
    mpo["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Verified"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The operator under a source policy: a signed image is applied with `Verified=True`; an
/// unsigned one and one whose signature was made with another key are refused with the reason,
/// the signed module stays active and not one byte of the refused image's layers is requested;
/// adding the other key (a rotation) lets that image in.
#[tokio::test]
async fn a_source_policy_applies_only_images_signed_with_a_trusted_key() {
    let cluster = require_cluster!();
    let Some(cosign) = cosign() else { return };
    let mut s = Scenario::start(cluster, "sig-policy", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path();
    std::fs::create_dir_all(dir.join("docker")).expect("docker dir");
    for prefix in ["a", "b"] {
        run_cosign(
            &cosign,
            dir,
            &["generate-key-pair", "--output-key-prefix", prefix],
        );
    }
    let (key_a, key_b) = (dir.join("a.pub"), dir.join("b.pub"));
    let repository = format!("{}/{REPO_PATH}/{module}", s.registry.host());
    let sign = |key: &str, digest: &str| {
        run_cosign(
            &cosign,
            dir,
            &[
                "sign",
                "--key",
                key,
                "--tlog-upload=false",
                "--allow-http-registry",
                "--yes",
                &format!("{repository}@{digest}"),
            ],
        );
    };
    cluster.apply_ok(&source_with_policy(&s, &[&key_a]));

    let signed = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "signed"))
        .await;
    sign("a.key", &signed);
    s.apply_mpo(&module, "dev", "1h");
    s.wait_for_digest(&module, &signed, std::time::Duration::from_secs(60))
        .await;
    let condition = verified_condition(&s, &module);
    assert_eq!(condition["status"], "True", "{condition}");
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("signature verified with key sha256:")),
        "{condition}"
    );

    let layers = |digest: &str| -> Vec<String> {
        let base = format!("http://{}/v2/{REPO_PATH}/{module}", s.registry.host());
        get_manifest(&base, digest)["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .filter_map(|l| l["digest"].as_str().map(str::to_owned))
            .collect()
    };
    let layer_gets = |digests: &[String]| {
        digests
            .iter()
            .map(|d| s.registry.count_requests("GET", &format!("/blobs/{d}")))
            .sum::<usize>()
    };
    for (case, reason, text, key) in [
        ("unsigned", "Unsigned", "has no signature", None),
        (
            "signed with another key",
            "NotVerified",
            "does not verify with any of the 1 trusted keys",
            Some("b.key"),
        ),
    ] {
        let refused = s
            .push(&module, "dev", &ModuleImage::module(&module, 900, case))
            .await;
        if let Some(key) = key {
            sign(key, &refused);
        }
        cluster.kubectl_ok(&[
            "annotate",
            "--overwrite",
            &format!("mop/{module}"),
            "renew=",
        ]);
        let mpo = s
            .wait_for_message(&module, text, std::time::Duration::from_secs(60))
            .await;
        assert_eq!(
            mpo["status"]["imageDigest"],
            signed.as_str(),
            "{case}: kept"
        );
        assert_eq!(
            s.active_hex(&module).as_deref(),
            Some(signed.trim_start_matches("sha256:")),
            "{case}: the signed module stays active"
        );
        let condition = verified_condition(&s, &module);
        assert_eq!(
            (condition["status"].as_str(), condition["reason"].as_str()),
            (Some("False"), Some(reason)),
            "{case}: {condition}"
        );
        cluster
            .wait_for_event(
                &module,
                "SignatureRefused",
                std::time::Duration::from_secs(30),
            )
            .await;
        assert_eq!(
            layer_gets(&layers(&refused)),
            0,
            "{case}: no layer of the refused image was requested"
        );
        if key.is_some() {
            // A rotation: the new key beside the old one lets the image in.
            cluster.apply_ok(&source_with_policy(&s, &[&key_a, &key_b]));
            s.wait_for_digest(&module, &refused, std::time::Duration::from_secs(60))
                .await;
            let condition = verified_condition(&s, &module);
            assert_eq!(condition["status"], "True", "{condition}");
        }
    }
    let metrics = s
        .operator
        .http_get("/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    for line in [
        "mpo_verifications_total{result=\"Verified\"}",
        "mpo_verifications_total{result=\"Unsigned\"}",
        "mpo_verifications_total{result=\"NotVerified\"}",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    s.track(&format!("mop/{module}"));
}

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// cosign v3.1.3's default format: a Sigstore bundle (DSSE, in-toto statement) stored as an OCI
/// referrer, here through the referrers tag schema (docker-registry 2.8 has no referrers API).
/// `kubectl mpo verify` reads it with the source's own policy keys, `tags` shows a SIGNED column,
/// a referrers index copied to another image is refused, and the operator applies the signed
/// digest with `Verified=True` naming the bundle, the unsigned one refused.
#[tokio::test]
async fn cosign_v3_bundles_are_read_by_the_cli_and_the_operator() {
    let cluster = require_cluster!();
    let Some(cosign) = cosign_v3() else { return };
    let mut s = Scenario::start(cluster, "sig-v3", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path();
    std::fs::create_dir_all(dir.join("docker")).expect("docker dir");
    run_cosign(
        &cosign,
        dir,
        &["generate-key-pair", "--output-key-prefix", "a"],
    );
    let key_a = dir.join("a.pub");
    let repository = format!("{}/{REPO_PATH}/{module}", s.registry.host());
    let base = format!("http://{}/v2/{REPO_PATH}/{module}", s.registry.host());
    let signed = s
        .push(
            &module,
            "v1",
            &ModuleImage::module(&module, 900, "v3 signed"),
        )
        .await;
    let unsigned = s
        .push(
            &module,
            "v2",
            &ModuleImage::module(&module, 900, "unsigned"),
        )
        .await;
    run_cosign(
        &cosign,
        dir,
        &[
            "sign",
            "--key",
            "a.key",
            "--use-signing-config=false",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--yes",
            "-a",
            "commit=abc123",
            &format!("{repository}@{signed}"),
        ],
    );
    // An attestation made with the same trusted key over a third image: a statement of
    // something else (an SLSA provenance), no signature of it.
    let attested = s
        .push(
            &module,
            "v3",
            &ModuleImage::module(&module, 900, "attested only"),
        )
        .await;
    std::fs::write(dir.join("provenance.json"), r#"{"buildType":"test"}"#).expect("predicate file");
    run_cosign(
        &cosign,
        dir,
        &[
            "attest",
            "--key",
            "a.key",
            "--type",
            "slsaprovenance1",
            "--predicate",
            "provenance.json",
            "--use-signing-config=false",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--yes",
            &format!("{repository}@{attested}"),
        ],
    );
    // What cosign v3 wrote: the referrers tag, an index of one bundle referrer.
    let index: Value = serde_json::from_slice(&curl(&[
        "-H",
        &format!("Accept: {INDEX}"),
        &format!("{base}/manifests/sha256-{}", hex_of(&signed)),
    ]))
    .expect("an index");
    assert_eq!(
        index["manifests"][0]["artifactType"], "application/vnd.dev.sigstore.bundle.v0.3+json",
        "{index}"
    );
    cluster.apply_ok(&source_with_policy(&s, &[&key_a]));

    // verify without --key: the source's policy keys.
    let out = mpo(
        &s,
        &["verify", &s.source, &format!("{module}:v1"), "-o", "json"],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let rows: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(rows[0]["format"], "bundle", "{rows}");
    assert_eq!(rows[0]["digest"], signed.as_str(), "{rows}");
    // The signer's `-a` annotation, read from the statement's subject.
    assert_eq!(rows[0]["annotations"]["commit"], "abc123", "{rows}");
    let out = mpo(&s, &["verify", &s.source, &format!("{module}:v3")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("is an attestation")
            && text(&out.stderr).contains("https://slsa.dev/provenance/v1"),
        "{}",
        text(&out.stderr)
    );
    let out = mpo(&s, &["verify", &s.source, &format!("{module}:v2")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("has no signature"),
        "{}",
        text(&out.stderr)
    );

    // tags: a SIGNED column from the policy; the referrers tag is no version.
    let out = mpo(&s, &["tags", &s.source, &module, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let tags: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["tag"].as_str())
        .collect();
    assert_eq!(tags, ["v1", "v2", "v3"], "{rows}");
    assert_eq!(rows[0]["signed"]["verified"], true, "{rows}");
    assert_eq!(rows[0]["signed"]["format"], "bundle", "{rows}");
    assert_eq!(rows[1]["signed"]["verified"], false, "{rows}");
    assert_eq!(rows[1]["signed"]["reason"], "Unsigned", "{rows}");
    let table = text(&mpo(&s, &["tags", &s.source, &module]).stdout);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("SIGNED")),
        "{table}"
    );

    // v1's referrers index put under v2's referrers tag: the bundle verifies but is of v1.
    put_manifest_as(
        &base,
        &format!("sha256-{}", hex_of(&unsigned)),
        &index,
        INDEX,
    );
    let out = mpo(&s, &["verify", &s.source, &format!("{module}:v2")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("another image ({signed})")),
        "{}",
        text(&out.stderr)
    );

    // The operator: the bundle-signed digest is applied, Verified=True names the format.
    s.apply_mpo(&module, "v1", "1h");
    s.wait_for_digest(&module, &signed, std::time::Duration::from_secs(60))
        .await;
    let condition = verified_condition(&s, &module);
    assert_eq!(condition["status"], "True", "{condition}");
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains("Sigstore bundle")),
        "{condition}"
    );

    // v2 (whose referrers tag holds v1's bundle) polled every 2 s: refused once, and the
    // refusal remembered, so the following resolves ask for no signature (three requests each
    // otherwise: the `.sig` tag, the referrers API, the referrers tag).
    s.apply_mpo(&module, "v2", "2s");
    s.wait_for_message(&module, "another image", std::time::Duration::from_secs(60))
        .await;
    let signature_requests = || {
        s.registry
            .count_requests("GET", &format!("sha256-{}", hex_of(&unsigned)))
            + s.registry.count_requests("GET", "/referrers/")
    };
    let resolves = || s.registry.count_requests("HEAD", "/manifests/v2");
    let (requests_at_refusal, resolves_at_refusal) = (signature_requests(), resolves());
    // Well inside the 30 s after which the refusal is looked at again.
    wait_for(
        "three more resolves of v2",
        std::time::Duration::from_secs(20),
        || async { (resolves() >= resolves_at_refusal + 3).then_some(()) },
    )
    .await;
    assert_eq!(
        signature_requests(),
        requests_at_refusal,
        "a remembered refusal asks the registry for no signature"
    );
    // Signed after the fact (cosign adds its bundle to the referrers index): a renew looks again
    // at once, without waiting for the backoff.
    run_cosign(
        &cosign,
        dir,
        &[
            "sign",
            "--key",
            "a.key",
            "--use-signing-config=false",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--yes",
            &format!("{repository}@{unsigned}"),
        ],
    );
    cluster.kubectl_ok(&[
        "annotate",
        "--overwrite",
        &format!("mop/{module}"),
        "renew=",
    ]);
    s.wait_for_digest(&module, &unsigned, std::time::Duration::from_secs(20))
        .await;
    s.track(&format!("mop/{module}"));
}
