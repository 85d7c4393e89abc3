//! The compatibility matrix (docs/compat.md): module images as today's tools push them, each run
//! through the operator (an MPO per image) and through `kubectl mpo tags`, `files` and `pull`.
//!
//! Built by the real tools here: `podman build` of a `FROM scratch` module pushed as Docker v2s2
//! and as OCI, gzip and zstd; indexes made with `buildah manifest` (arm64 only; arm64 + amd64).
//! Crafted byte for byte where the tool is not available here: BuildKit's index with its
//! attestation manifest, a multi-member gzip layer, a Helm chart, a foreign layer, and a Docker
//! schema 1 manifest (distribution 2.8 will not store one, so a proxy serves it).

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use support::{
    Cluster,
    crafted::{artifact, buildkit_attestation, buildkit_attestation_annotations},
    images::{IndexEntry, ModuleImage, OCI_CONFIG, OCI_LAYER_GZIP, push_built, push_index_of},
    layers::{TarLayer, gzip, zstd},
    proxy::{Fault, FaultProxy},
    registry::{HeadAuth, RegistryKind, curl_head_digest},
    scenario::{REPO_PATH, Scenario, files_under, sorted},
};

const READY: Duration = Duration::from_secs(90);
const TAG: &str = "dev";

/// What one row of the matrix must come to.
enum Expect {
    /// Installed; the files of this image (the one an index resolves to).
    Installed(Vec<(String, Vec<u8>)>),
    /// Refused; the MPO's message and the CLI's error contain this.
    Refused(&'static str),
}

struct Row {
    module: String,
    made_by: &'static str,
    /// The tag's digest, as the registry reports it.
    digest: String,
    expect: Expect,
}

fn module_files(module: &str, marker: &str) -> ModuleImage {
    ModuleImage::new()
        .file("module.yaml", format!("name: {module}\nweight: 900\n"))
        .file(
            "templates/cm.yaml",
            format!("kind: ConfigMap\n# {marker}\n"),
        )
}

/// Podman and buildah as this machine needs them (see hack/image.sh).
fn tool(program: &str, args: &[&str]) -> Output {
    let mut command = Command::new(program);
    if program == "podman" {
        command.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("{program} runs: {err}"))
}

fn tool_ok(program: &str, args: &[&str]) -> String {
    let out = tool(program, args);
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether podman and buildah are here; under CI=true their absence fails the test.
fn have_podman() -> bool {
    let found = ["podman", "buildah"].iter().all(|program| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !found && std::env::var_os("CI").is_some() {
        panic!("podman and buildah are needed for the compatibility matrix (hack/install-deps.sh)");
    }
    if !found {
        eprintln!("SKIPPED: the podman/buildah rows (no podman or buildah)");
    }
    found
}

/// `podman build` of a `FROM scratch` image holding `image`'s files; returns the local name.
fn podman_build(dir: &Path, name: &str, image: &ModuleImage) -> String {
    let context = dir.join(name);
    for (path, content) in image.files() {
        let file = context.join(&path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("context dir");
        std::fs::write(&file, content).expect("context file");
    }
    let containerfile = dir.join(format!("{name}.Containerfile"));
    std::fs::write(&containerfile, "FROM scratch\nCOPY . /\n").expect("Containerfile");
    let local = format!("localhost/mpo-compat/{name}:{TAG}");
    tool_ok(
        "podman",
        &[
            "build",
            "-q",
            "-f",
            &containerfile.to_string_lossy(),
            "-t",
            &local,
            &context.to_string_lossy(),
        ],
    );
    local
}

fn destination(s: &Scenario, module: &str) -> String {
    format!("docker://{}/{REPO_PATH}/{module}:{TAG}", s.registry.host())
}

fn registry_digest(s: &Scenario, module: &str) -> String {
    let head = curl_head_digest(
        &s.registry,
        &format!("{REPO_PATH}/{module}"),
        TAG,
        HeadAuth::Registry,
    )
    .expect("curl");
    match head.digest {
        Some(digest) => digest,
        None => panic!("the registry has no {module}:{TAG}: {:?}", head.curl_error),
    }
}

/// The layer media types of the manifest behind `module:TAG` (the first image of an index), to
/// prove the row is what it claims to be.
fn layer_media_types(s: &Scenario, module: &str) -> Vec<String> {
    let get = |reference: &str| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", "--noproxy", "*", "-H"])
            .arg("Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json")
            .arg(format!(
                "{}/v2/{REPO_PATH}/{module}/manifests/{reference}",
                s.registry.base_url()
            ))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).expect("manifest JSON")
    };
    let mut manifest = get(TAG);
    if let Some(first) = manifest["manifests"][0]["digest"].as_str() {
        manifest = get(first);
    }
    manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["mediaType"].as_str().map(str::to_owned))
        .collect()
}

async fn podman_rows(s: &Scenario, dir: &Path, id: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for (module, made_by, push_args, layer_type) in [
        (
            "podman-zstd",
            "podman build; podman push --format oci --compression-format zstd",
            &["--format", "oci", "--compression-format", "zstd"][..],
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        (
            "podman-v2s2",
            "podman build; podman push --format v2s2",
            &["--format", "v2s2"][..],
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
        (
            "podman-oci",
            "podman build; podman push --format oci",
            &["--format", "oci"][..],
            OCI_LAYER_GZIP,
        ),
    ] {
        // Content of its own: a layer pushed once as gzip would be reused for the zstd push.
        let image = module_files(module, &format!("{id} {module}"));
        let local = podman_build(dir, module, &image);
        let mut args = vec!["push", "-q", "--tls-verify=false"];
        args.extend_from_slice(push_args);
        let target = destination(s, module);
        args.extend([local.as_str(), target.as_str()]);
        tool_ok("podman", &args);
        assert_eq!(layer_media_types(s, module), [layer_type], "{made_by}");
        rows.push(Row {
            digest: registry_digest(s, module),
            module: module.to_owned(),
            made_by,
            expect: Expect::Installed(sorted(image.files())),
        });
    }

    // `buildah manifest`: an index of arm64 only, and one of arm64 then amd64.
    let arm64 = module_files("buildah-arm64", &format!("{id} arm64"));
    let amd64 = module_files("buildah-multi", &format!("{id} amd64"));
    let arm64_local = podman_build(dir, "arm64", &arm64);
    let amd64_local = podman_build(dir, "amd64", &amd64);
    for (module, made_by, members, chosen) in [
        (
            "buildah-arm64",
            "buildah manifest create/add --arch arm64/push --all",
            vec![("arm64", &arm64_local)],
            &arm64,
        ),
        (
            "buildah-multi",
            "buildah manifest of arm64 then amd64",
            vec![("arm64", &arm64_local), ("amd64", &amd64_local)],
            &amd64,
        ),
    ] {
        let list = format!("mpo-compat-{id}-{module}");
        tool_ok("buildah", &["manifest", "create", &list]);
        for (arch, local) in members {
            let image = format!("containers-storage:{local}");
            tool_ok(
                "buildah",
                &[
                    "manifest", "add", "--os", "linux", "--arch", arch, &list, &image,
                ],
            );
        }
        let target = destination(s, module);
        tool_ok(
            "buildah",
            &[
                "manifest",
                "push",
                "-q",
                "--all",
                "--tls-verify=false",
                &list,
                &target,
            ],
        );
        let _ = tool("buildah", &["manifest", "rm", &list]);
        rows.push(Row {
            digest: registry_digest(s, module),
            module: module.to_owned(),
            made_by,
            expect: Expect::Installed(sorted(chosen.files())),
        });
    }
    rows
}

async fn crafted_rows(s: &Scenario, id: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let push = |module: &str, built| {
        let repository = format!("{REPO_PATH}/{module}");
        async move {
            push_built(&s.registry, &repository, TAG, &built)
                .await
                .expect("push")
        }
    };

    // BuildKit's default push from an arm64 laptop: the image and its provenance attestation.
    let module = "buildkit-attestation";
    let image = module_files(module, id);
    let built = image.build().expect("build");
    let attestation = buildkit_attestation(&built);
    let digest = push_index_of(
        &s.registry,
        &format!("{REPO_PATH}/{module}"),
        TAG,
        &[
            IndexEntry {
                image: &built,
                platform: Some(("linux", "arm64")),
                annotations: Vec::new(),
            },
            IndexEntry {
                image: &attestation,
                platform: Some(("unknown", "unknown")),
                annotations: buildkit_attestation_annotations(&built),
            },
        ],
    )
    .await
    .expect("push index");
    rows.push(Row {
        module: module.into(),
        made_by: "crafted: BuildKit index, linux/arm64 + attestation-manifest",
        digest,
        expect: Expect::Installed(sorted(image.files())),
    });

    // One tar in two gzip members, as eStargz and concatenating tools write it; and in zstd.
    for (module, made_by, media_type) in [
        (
            "multi-member-gzip",
            "crafted: one tar in two gzip members",
            OCI_LAYER_GZIP,
        ),
        (
            "zstd-frames",
            "crafted: one tar in two zstd frames",
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    ] {
        let marker = format!("{id} {module}");
        let tar = TarLayer::new()
            .file(
                "module.yaml",
                format!("name: {module}\nweight: 900\n").as_bytes(),
            )
            .file(
                "templates/cm.yaml",
                format!("kind: ConfigMap\n# {marker}\n").as_bytes(),
            )
            .tar();
        let (head, tail) = tar.split_at(1024);
        let compress = |part: &[u8]| {
            if media_type == OCI_LAYER_GZIP {
                gzip(part, flate2::Compression::fast())
            } else {
                zstd(part, 3)
            }
        };
        let mut layer = compress(head);
        layer.extend(compress(tail));
        let image = ModuleImage::new().raw_layer(layer, media_type);
        let expected = sorted(module_files(module, &marker).files());
        rows.push(Row {
            digest: push(module, image.build().expect("build")).await,
            module: module.into(),
            made_by,
            expect: Expect::Installed(expected),
        });
    }

    // A Helm chart pushed with `helm push` (its media types, chart.tgz as the one layer).
    let chart = TarLayer::new()
        .file(
            "mychart/Chart.yaml",
            b"apiVersion: v2\nname: mychart\nversion: 0.1.0\n",
        )
        .gzip();
    let helm = artifact(
        "application/vnd.cncf.helm.config.v1+json",
        br#"{"name":"mychart","version":"0.1.0","apiVersion":"v2"}"#,
        &[(chart, "application/vnd.cncf.helm.chart.content.v1.tar+gzip")],
    );
    rows.push(Row {
        digest: push("helm-chart", helm).await,
        module: "helm-chart".into(),
        made_by: "crafted: helm push (Helm chart OCI artifact)",
        expect: Expect::Refused("is a Helm chart"),
    });

    // A non-distributable ("foreign") layer, as Windows base images carry.
    let foreign_layer = TarLayer::new()
        .file("module.yaml", b"name: foreign-layer\n")
        .gzip();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":[]}},"marker":"{id}"}}"#
    );
    let foreign = artifact(
        OCI_CONFIG,
        config.as_bytes(),
        &[(
            foreign_layer,
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        )],
    );
    rows.push(Row {
        digest: push("foreign-layer", foreign).await,
        module: "foreign-layer".into(),
        made_by: "crafted: a non-distributable (foreign) layer",
        expect: Expect::Refused("foreign (non-distributable) layer"),
    });
    rows
}

/// A Docker schema 1 manifest (signed, `application/vnd.docker.distribution.manifest.v1+prettyjws`)
/// as old registries still serve it; the proxy answers with it for `schema1`.
fn schema1_manifest() -> Vec<u8> {
    br#"{
   "schemaVersion": 1,
   "name": "deckhouse/modules/schema1",
   "tag": "dev",
   "architecture": "amd64",
   "fsLayers": [{"blobSum": "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}],
   "history": [{"v1Compatibility": "{\"id\":\"e45a5af57b00862e5ef5782a9925979a02ba2b12dff832fd0991335f4a11e5c5\",\"architecture\":\"amd64\"}"}],
   "signatures": [{"header": {"jwk": {"crv": "P-256","kid": "OD6I:6DRK:JXEJ:KBM4:255X:NSAA:MUSF:E4VM:ZI6W:CUN2:L4Z6:LSF4","kty": "EC","x": "3gAwX48IQ5oaYQAYSxor6rYYc_6yjuLCjtQ9LUakg4A","y": "t72ge6kIA1XOjqjVoEOiPPAURltJFBMGDSQvEGVB010"},"alg": "ES256"},"signature": "XREm0L8WNn27Ga_iE_vRnTxVMhhYY0Zst_FfkKopg6gWSoTOZTuW4rK0fg_IqnKkEKlbD83tD46LKEGi5aIVFg","protected": "eyJmb3JtYXRMZW5ndGgiOjY2MjgsImZvcm1hdFRhaWwiOiJDbjAiLCJ0aW1lIjoiMjAxNS0wNC0wOFQxODo1Mjo1OVoifQ"}]
}"#
    .to_vec()
}

/// `kubectl mpo ARGS` as a user types it: kubectl finds the plugin on PATH.
fn kubectl_mpo(cluster: &Cluster, args: &[&str]) -> Output {
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-mpo"));
    let path = format!(
        "{}:{}",
        plugin.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(&cluster.kubectl)
        .arg("mpo")
        .args(args)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("PATH", path)
        .env("DOCKER_CONFIG", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("kubectl mpo runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn module_images_as_todays_tools_push_them_install_or_are_refused_by_name() {
    let cluster = require_cluster!();
    let podman = have_podman();
    let mut modules = vec![
        "buildkit-attestation",
        "multi-member-gzip",
        "zstd-frames",
        "helm-chart",
        "foreign-layer",
        "schema1",
    ];
    if podman {
        modules.extend([
            "podman-zstd",
            "podman-v2s2",
            "podman-oci",
            "buildah-arm64",
            "buildah-multi",
        ]);
    }
    let mut s = Scenario::start(cluster, "compat", RegistryKind::Plain, &modules, &[]).await;
    let id = s.id.0.clone();
    let dir = tempfile::tempdir().expect("build dir");

    let mut rows = crafted_rows(&s, &id).await;
    if podman {
        rows.extend(podman_rows(&s, dir.path(), &id).await);
    }
    let schema1 = schema1_manifest();
    rows.push(Row {
        module: "schema1".into(),
        made_by: "crafted: Docker schema 1 (signed), served by a proxy",
        digest: format!("sha256:{}", hex_sha256(&schema1)),
        expect: Expect::Refused("Docker schema 1 manifest"),
    });
    let proxy = FaultProxy::start(&s.registry);
    proxy.fail(
        "/schema1/manifests/",
        Fault::Respond {
            content_type: "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
            body: schema1,
        },
    );
    s.route_source_through(proxy.host());

    for row in &rows {
        s.apply_mpo(&row.module, TAG, "15s");
    }
    let mut table = vec![format!(
        "{:<22} {:<62} {:<10} {}",
        "MODULE", "MADE BY", "OPERATOR", "CLI files / pull"
    )];
    for row in &rows {
        let operator = match &row.expect {
            Expect::Installed(files) => {
                s.wait_for_digest(&row.module, &row.digest, READY).await;
                assert_eq!(
                    files_under(&s.version_dir(&row.module, &row.digest)),
                    *files,
                    "{}: unpacked byte for byte",
                    row.made_by
                );
                "installed"
            }
            Expect::Refused(text) => {
                let mpo = s.wait_for_message(&row.module, text, READY).await;
                let message = mpo["status"]["message"].as_str().unwrap_or_default();
                assert!(!message.contains('\n'), "one line: {message}");
                assert!(
                    !s.module_dir(&row.module).join("dev").exists(),
                    "{}: nothing installed",
                    row.made_by
                );
                "refused"
            }
        };
        let cli = check_cli(cluster, &s, row, dir.path());
        table.push(format!(
            "{:<22} {:<62} {:<10} {cli}",
            row.module, row.made_by, operator
        ));
    }
    eprintln!("{}", table.join("\n"));
}

/// `kubectl mpo files`, `pull` and `tags` on the row; what the CLI said, for the table.
fn check_cli(cluster: &Cluster, s: &Scenario, row: &Row, dir: &Path) -> String {
    let image = format!("{}:{TAG}", row.module);
    let files = kubectl_mpo(cluster, &["files", &s.source, &image]);
    let into = dir.join(format!("pulled-{}", row.module));
    let pull = kubectl_mpo(
        cluster,
        &["pull", &s.source, &image, &into.to_string_lossy()],
    );
    let tags = kubectl_mpo(cluster, &["tags", &s.source, &row.module]);
    match &row.expect {
        Expect::Installed(expected) => {
            assert!(
                files.status.success(),
                "files {image}: {}",
                text(&files.stderr)
            );
            assert!(
                text(&files.stdout).contains("templates/cm.yaml"),
                "{}",
                text(&files.stdout)
            );
            assert!(
                pull.status.success(),
                "pull {image}: {}",
                text(&pull.stderr)
            );
            assert_eq!(files_under(&into), *expected, "pull {image}");
            assert!(
                tags.status.success(),
                "tags {}: {}",
                row.module,
                text(&tags.stderr)
            );
            assert!(
                text(&tags.stdout).contains(&row.digest),
                "tags shows the digest: {}",
                text(&tags.stdout)
            );
            "listed, pulled".into()
        }
        Expect::Refused(reason) => {
            for (what, out) in [("files", &files), ("pull", &pull)] {
                assert!(!out.status.success(), "{what} {image} refused");
                let stderr = text(&out.stderr);
                assert!(stderr.contains(reason), "{what} {image}: {stderr}");
            }
            assert!(!into.join("module.yaml").exists(), "pull wrote nothing");
            format!("refused: {reason}")
        }
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
