//! `kubectl-mpo` as a module author types it: every registry command on the seed's layout (two
//! modules, module and application images, releases `v1.23.1`/`v1.23.2`, channels
//! `alpha`/`beta`), against htpasswd and TLS registries, with a ModuleSource read from the
//! cluster and with `--repo`; the same answers as the crane recipes it replaces; pagination;
//! `pull` refusing hostile images; `renew --wait` and `status` against the running operator.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use base64::Engine as _;
use serde_json::{Value, json};
use support::{
    Cluster,
    images::{ModuleImage, OCI_LAYER_GZIP, RawTarEntry, push},
    layers::TarLayer,
    proxy::{Fault, FaultProxy},
    registry::{RegistryKind, TestRegistry},
    scenario::{REPO_PATH, Scenario, files_under, sorted},
};

const READY: Duration = Duration::from_secs(60);
const MODULES: [&str; 2] = ["cli-echo", "cli-hello"];
const APP_TAG: &str = "3f9a1c0d5e7b";

/// What the seed pushed, to compare the CLI's answers with.
struct Seed {
    /// Per module: tag → manifest digest of its module images.
    v1: Vec<(String, String)>,
    v1_image: ModuleImage,
    app_digest: String,
}

/// The layout of the module-development guide, for each of [`MODULES`]: module images
/// `v1.23.1` and `v1.23.2`, an application image, and release images for both versions plus
/// `alpha` (→ v1.23.2) and `beta` (→ v1.23.1).
async fn seed(registry: &TestRegistry) -> Seed {
    let app = ModuleImage::new()
        .file("usr/bin/app", "#!/bin/true\n")
        .entrypoint("/usr/bin/app");
    let mut v1 = Vec::new();
    let (mut v1_image, mut app_digest) = (None, String::new());
    for module in MODULES {
        let repository = format!("{REPO_PATH}/{module}");
        app_digest = push(registry, &repository, APP_TAG, &app)
            .await
            .expect("app");
        let first = module_image(module, "v1.23.1", &app_digest)
            .file("templates/old.yaml", "kind: ConfigMap\n");
        let second = module_image(module, "v1.23.2", &app_digest)
            .file("templates/new.yaml", "kind: Secret\n");
        let digest = push(registry, &repository, "v1.23.1", &first)
            .await
            .expect("v1");
        v1.push((module.to_owned(), digest));
        push(registry, &repository, "v1.23.2", &second)
            .await
            .expect("v2");
        let release = format!("{repository}/release");
        for (tag, version) in [
            ("v1.23.1", "v1.23.1"),
            ("v1.23.2", "v1.23.2"),
            ("alpha", "v1.23.2"),
            ("beta", "v1.23.1"),
        ] {
            let image = ModuleImage::new()
                .file("version.json", json!({ "version": version }).to_string())
                .file("changelog.yaml", format!("version: {version}\n"));
            push(registry, &release, tag, &image)
                .await
                .expect("release");
        }
        v1_image = Some(first);
    }
    Seed {
        v1,
        v1_image: v1_image.expect("seeded"),
        app_digest,
    }
}

/// A module image as the guide's layout has it, each path once (crane's tar listing would show
/// a path twice if a layer held it twice).
fn module_image(module: &str, version: &str, app_digest: &str) -> ModuleImage {
    ModuleImage::new()
        .file("module.yaml", format!("name: {module}\nweight: 910\n"))
        .file("openapi/config-values.yaml", "type: object\n")
        .file(
            "images_digests.json",
            json!({ "app": app_digest }).to_string(),
        )
        .file("version.json", json!({ "version": version }).to_string())
}

/// The CLI binary with the cluster's kubeconfig, as the plugin runs under kubectl.
fn mpo(cluster: &Cluster, args: &[&str]) -> Output {
    mpo_with_env(cluster, args, &[])
}

fn mpo_with_env(cluster: &Cluster, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubectl-mpo"));
    command
        .args(args)
        .env("KUBECONFIG", &cluster.kubeconfig)
        // No credentials of the machine's own docker config may leak into a test.
        .env("DOCKER_CONFIG", "/nonexistent")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("kubectl-mpo runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and returns stdout, failing the test with the one-line error otherwise.
fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn json_of(out: Output, what: &str) -> Value {
    let stdout = ok(out, what);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}"))
}

/// How a test names the registry: `SOURCE` (a ModuleSource in the cluster) or `--repo …` flags.
#[derive(Clone)]
struct Via(Vec<String>);

impl Via {
    fn source(name: &str) -> Self {
        Self(vec![name.to_owned()])
    }

    fn args<'a>(&'a self, command: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![command];
        args.extend(self.0.iter().map(String::as_str));
        args.extend(rest);
        args
    }
}

/// A docker config.json (raw JSON, as `docker login` writes it) for the registry, in `dir`.
fn docker_config_dir(registry: &TestRegistry, dir: &Path) -> PathBuf {
    let cfg = registry.docker_cfg();
    let json = base64::engine::general_purpose::STANDARD
        .decode(cfg.trim())
        .expect("docker_cfg is base64");
    std::fs::create_dir_all(dir).expect("docker config dir");
    std::fs::write(dir.join("config.json"), json).expect("config.json");
    dir.to_owned()
}

fn repo_flags(registry: &TestRegistry, work: &Path, host: &str) -> Via {
    let mut flags = vec!["--repo".to_owned(), format!("{host}/{REPO_PATH}")];
    if registry.kind().has_auth() {
        let dir = docker_config_dir(registry, &work.join("docker"));
        flags.push("--docker-config".into());
        flags.push(dir.join("config.json").display().to_string());
    }
    match registry.ca_file() {
        Some(ca) => flags.extend(["--ca".to_owned(), ca.display().to_string()]),
        None => flags.push("--insecure-http".into()),
    }
    Via(flags)
}

/// Every registry command on the seed, through `via`; nothing printed may carry the password.
async fn check_every_registry_command(
    cluster: &Cluster,
    registry: &TestRegistry,
    via: &Via,
    seed: &Seed,
) {
    let mut printed = String::new();
    let mut run = |args: Vec<&str>| {
        let out = mpo(cluster, &args);
        printed.push_str(&text(&out.stdout));
        printed.push_str(&text(&out.stderr));
        json_of(out, &args.join(" "))
    };
    let module = MODULES[0];

    let modules = run(via.args("modules", &["-o", "json"]));
    let names: Vec<&str> = modules
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, MODULES, "modules");

    let tags = run(via.args("tags", &[module, "-o", "json"]));
    let kinds: Vec<(&str, &str)> = tags
        .as_array()
        .expect("list")
        .iter()
        .map(|t| {
            (
                t["tag"].as_str().unwrap_or(""),
                t["kind"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (APP_TAG, "application"),
            ("v1.23.1", "module"),
            ("v1.23.2", "module")
        ],
        "tags with their kinds"
    );
    let v1_digest = &seed.v1.iter().find(|(m, _)| m == module).expect("seeded").1;
    assert_eq!(tags[1]["digest"].as_str(), Some(v1_digest.as_str()));
    assert_eq!(tags[0]["digest"].as_str(), Some(seed.app_digest.as_str()));

    let releases = run(via.args("releases", &[module, "-o", "json"]));
    assert_eq!(
        releases,
        json!({"versions": ["v1.23.1", "v1.23.2"], "channels": ["alpha", "beta"]})
    );

    let alpha = run(via.args("channel", &[module, "alpha", "-o", "json"]));
    assert_eq!(alpha[0]["version"], "v1.23.2", "{alpha}");
    let all = run(via.args("channel", &[module, "-o", "json"]));
    let pairs: Vec<(&str, &str)> = all
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["channel"].as_str().unwrap_or(""),
                c["version"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(pairs, [("alpha", "v1.23.2"), ("beta", "v1.23.1")]);

    let image = format!("{module}:v1.23.1");
    let files = run(via.args("files", &[&image, "-o", "json"]));
    let listed: Vec<&str> = files
        .as_array()
        .expect("list")
        .iter()
        .filter(|f| f["type"] == "file")
        .filter_map(|f| f["path"].as_str())
        .collect();
    let expected: Vec<String> = seed
        .v1_image
        .files()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert_eq!(listed, expected, "files of {image}");

    let images = run(via.args("images", &[&image, "-o", "json"]));
    assert_eq!(images, json!([{"name": "app", "digest": seed.app_digest}]));

    let by_digest = format!("{module}@{v1_digest}");
    let same = run(via.args("files", &[&by_digest, "-o", "json"]));
    assert_eq!(same, files, "MODULE@digest is the same image");
    // As docker and crane read `name:tag@digest`: the digest wins over the tag beside it.
    let tag_and_digest = format!("{module}:v1.23.2@{v1_digest}");
    let pinned = run(via.args("files", &[&tag_and_digest, "-o", "json"]));
    assert_eq!(pinned, files, "MODULE:TAG@digest is the digest's image");

    // diff(1)'s exit codes: 1 when the images differ, 0 when not (or with --exit-zero), 2 when
    // it cannot compare.
    let differing = mpo(
        cluster,
        &via.args("diff", &[module, "v1.23.1", "v1.23.2", "-o", "json"]),
    );
    printed.push_str(&text(&differing.stderr));
    assert_eq!(
        differing.status.code(),
        Some(1),
        "diff of differing tags: {}",
        text(&differing.stderr)
    );
    let diff: Value = serde_json::from_slice(&differing.stdout).expect("diff JSON");
    let same = mpo(cluster, &via.args("diff", &[module, "v1.23.1", "v1.23.1"]));
    assert_eq!(same.status.code(), Some(0), "diff of one tag with itself");
    let opted_out = mpo(
        cluster,
        &via.args("diff", &[module, "v1.23.1", "v1.23.2", "--exit-zero"]),
    );
    assert_eq!(opted_out.status.code(), Some(0), "--exit-zero");
    let trouble = mpo(
        cluster,
        &via.args("diff", &[module, "v1.23.1", "no-such-tag"]),
    );
    assert_eq!(trouble.status.code(), Some(2), "{}", text(&trouble.stderr));
    let changes: Vec<(&str, &str)> = diff
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap_or(""),
                c["path"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("added", "templates/new.yaml"),
            ("removed", "templates/old.yaml"),
            ("changed", "version.json"),
        ],
        "diff v1.23.1 v1.23.2: {diff}"
    );

    if let Some((_, password)) = registry.credentials() {
        assert!(!printed.contains(password), "the password was printed");
    }
}

#[tokio::test]
async fn every_command_on_a_tls_htpasswd_registry_named_by_a_module_source_from_the_cluster() {
    let cluster = require_cluster!();
    let s = Scenario::start(
        cluster,
        "cli-source",
        RegistryKind::TlsHtpasswd,
        &MODULES,
        &[],
    )
    .await;
    let seed = seed(&s.registry).await;
    check_every_registry_command(cluster, &s.registry, &Via::source(&s.source), &seed).await;

    let table = ok(mpo(cluster, &["tags", &s.source, MODULES[0]]), "tags table");
    let header = table.lines().next().unwrap_or("");
    assert!(
        header.starts_with("TAG") && header.contains("KIND") && header.contains("DIGEST"),
        "{table}"
    );

    let missing = mpo(cluster, &["modules", "no-such-source"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        text(&missing.stderr),
        "kubectl-mpo: ModuleSource \"no-such-source\" not found\n"
    );
}

#[tokio::test]
async fn every_command_on_an_htpasswd_registry_with_repo_and_a_docker_config() {
    let cluster = require_cluster!();
    let s = Scenario::start(
        cluster,
        "cli-htpasswd",
        RegistryKind::Htpasswd,
        &MODULES,
        &[],
    )
    .await;
    let seed = seed(&s.registry).await;
    let work = tempfile::tempdir().expect("tempdir");
    let via = repo_flags(&s.registry, work.path(), s.registry.host());
    check_every_registry_command(cluster, &s.registry, &via, &seed).await;

    let repo = format!("{}/{REPO_PATH}", s.registry.host());
    let anonymous = mpo(cluster, &["modules", "--repo", &repo, "--insecure-http"]);
    assert_eq!(anonymous.status.code(), Some(1));
    let message = text(&anonymous.stderr);
    assert!(
        message.contains("unauthorized") || message.contains("401"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "one line: {message}");
}

#[tokio::test]
async fn every_command_on_a_tls_registry_with_repo_and_a_ca_file() {
    let cluster = require_cluster!();
    let s = Scenario::start(cluster, "cli-tls", RegistryKind::Tls, &MODULES, &[]).await;
    let seed = seed(&s.registry).await;
    let work = tempfile::tempdir().expect("tempdir");
    let via = repo_flags(&s.registry, work.path(), s.registry.host());
    check_every_registry_command(cluster, &s.registry, &via, &seed).await;

    let repo = format!("{}/{REPO_PATH}", s.registry.host());
    let untrusted = mpo(cluster, &["modules", "--repo", &repo]);
    assert_eq!(
        untrusted.status.code(),
        Some(1),
        "{}",
        text(&untrusted.stderr)
    );
    assert!(
        text(&untrusted.stderr).contains("certificate"),
        "{}",
        text(&untrusted.stderr)
    );
}

/// crane, built from the Go module proxy by hack/crane.sh; `None` outside CI when it is missing.
fn crane() -> Option<PathBuf> {
    let path = std::env::var_os("MPO_CRANE")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("HOME")
                .map(PathBuf::from)?
                .join(".cache/mpo-operator/crane/v0.22.1/crane");
            cache.is_file().then_some(cache)
        });
    match path {
        Some(path) if path.is_file() => Some(path),
        _ if std::env::var_os("CI").is_some() => {
            panic!("crane is missing: run bash hack/crane.sh (MPO_CRANE)")
        }
        _ => {
            eprintln!("SKIPPED: crane is missing (bash hack/crane.sh)");
            None
        }
    }
}

fn crane_out(crane: &Path, docker: &Path, args: &[&str]) -> String {
    let out = Command::new(crane)
        .args(args)
        .env("DOCKER_CONFIG", docker)
        .output()
        .expect("crane runs");
    assert!(
        out.status.success(),
        "crane {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `crane export IMAGE - | tar <tar_args> -`: the guide's recipes for reading an image's files.
fn crane_export_tar(crane: &Path, docker: &Path, image: &str, tar_args: &[&str]) -> String {
    let mut export = Command::new(crane)
        .args(["export", "--insecure", image, "-"])
        .env("DOCKER_CONFIG", docker)
        .stdout(Stdio::piped())
        .spawn()
        .expect("crane export runs");
    let stdout = export.stdout.take().expect("pipe");
    let out = Command::new("tar")
        .args(tar_args)
        .stdin(stdout)
        .output()
        .expect("tar runs");
    assert!(
        export.wait().expect("crane export ends").success(),
        "crane export {image}"
    );
    assert!(
        out.status.success(),
        "tar {}: {}",
        tar_args.join(" "),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn field(value: &Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = value
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v[key].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn answers_match_the_crane_recipes_of_the_module_guide() {
    let cluster = require_cluster!();
    let Some(crane) = crane() else { return };
    let s = Scenario::start(cluster, "cli-crane", RegistryKind::Htpasswd, &MODULES, &[]).await;
    let seed = seed(&s.registry).await;
    let work = tempfile::tempdir().expect("tempdir");
    let docker = docker_config_dir(&s.registry, &work.path().join("docker"));
    let repo = format!("{}/{REPO_PATH}", s.registry.host());
    let source = s.source.as_str();
    let module = MODULES[1];
    let ours = |args: &[&str]| json_of(mpo(cluster, args), &args.join(" "));

    let crane_ls = |path: &str| lines(&crane_out(&crane, &docker, &["ls", "--insecure", path]));
    assert_eq!(
        field(&ours(&["modules", source, "-o", "json"]), "name"),
        crane_ls(&repo)
    );
    assert_eq!(
        field(
            &ours(&["tags", source, module, "--no-kind", "-o", "json"]),
            "tag"
        ),
        crane_ls(&format!("{repo}/{module}"))
    );
    let releases = ours(&["releases", source, module, "-o", "json"]);
    let mut all: Vec<String> = ["versions", "channels"]
        .iter()
        .flat_map(|k| releases[k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    all.sort();
    assert_eq!(all, crane_ls(&format!("{repo}/{module}/release")));

    for channel in ["alpha", "beta"] {
        let image = format!("{repo}/{module}/release:{channel}");
        let theirs: Value = serde_json::from_str(&crane_export_tar(
            &crane,
            &docker,
            &image,
            &["-Oxf", "-", "version.json"],
        ))
        .expect("version.json");
        let ours = ours(&["channel", source, module, channel, "-o", "json"]);
        assert_eq!(ours[0]["version"], theirs["version"], "{channel}");
    }

    let image = format!("{repo}/{module}:v1.23.2");
    // Every entry, directories included (tar -t writes them as the layer names them).
    let theirs: Vec<String> = lines(&crane_export_tar(&crane, &docker, &image, &["-tf", "-"]))
        .into_iter()
        .map(|p| p.trim_end_matches('/').to_owned())
        .collect();
    let files = ours(&["files", source, &format!("{module}:v1.23.2"), "-o", "json"]);
    let ours_files = field(&files, "path");
    assert_eq!(ours_files, theirs, "files");

    let theirs: Value = serde_json::from_str(&crane_export_tar(
        &crane,
        &docker,
        &image,
        &["-Oxf", "-", "images_digests.json"],
    ))
    .expect("images_digests.json");
    let ours_images = ours(&["images", source, &format!("{module}:v1.23.2"), "-o", "json"]);
    assert_eq!(
        ours_images,
        json!([{"name": "app", "digest": theirs["app"]}])
    );
    assert_eq!(theirs["app"], seed.app_digest);
}

#[tokio::test]
async fn tag_lists_follow_pagination_through_a_registry_that_pages() {
    let cluster = require_cluster!();
    let many: Vec<String> = (0..7).map(|i| format!("cli-page-{i}")).collect();
    let names: Vec<&str> = many.iter().map(String::as_str).collect();
    let s = Scenario::start(cluster, "cli-pages", RegistryKind::Plain, &names, &[]).await;
    let proxy = FaultProxy::start(&s.registry);
    proxy.fail("/tags/list", Fault::PageTags(2));
    let tag_image = ModuleImage::module("cli-page-0", 900, "x");
    for i in 0..5 {
        s.push("cli-page-0", &format!("t{i}"), &tag_image).await;
    }
    let repo = format!("{}/{REPO_PATH}", proxy.host());
    let out = mpo(
        cluster,
        &["modules", "--repo", &repo, "--insecure-http", "-o", "json"],
    );
    assert_eq!(
        field(&json_of(out, "modules"), "name"),
        many,
        "every page of modules"
    );
    let out = mpo(
        cluster,
        &[
            "tags",
            "--repo",
            &repo,
            "--insecure-http",
            "cli-page-0",
            "--no-kind",
            "-o",
            "json",
        ],
    );
    assert_eq!(
        field(&json_of(out, "tags"), "tag"),
        ["t0", "t1", "t2", "t3", "t4"]
    );
    assert!(
        proxy.count("GET", "/tags/list") >= 4 + 3,
        "pages: {}",
        proxy.count("GET", "/tags/list")
    );
}

#[tokio::test]
async fn pull_unpacks_safely_and_refuses_what_the_operator_refuses() {
    let cluster = require_cluster!();
    let s = Scenario::start(cluster, "cli-pull", RegistryKind::Plain, &["cli-pull"], &[]).await;
    let module = "cli-pull";
    let good = ModuleImage::module(module, 920, "good");
    let digest = s.push(module, "good", &good).await;
    let work = tempfile::tempdir().expect("tempdir");
    let via = repo_flags(&s.registry, work.path(), s.registry.host());

    let into = work.path().join("out");
    let into_arg = into.display().to_string();
    let out = mpo(
        cluster,
        &via.args(
            "pull",
            &[&format!("{module}:good"), &into_arg, "-o", "json"],
        ),
    );
    assert!(
        out.stderr.is_empty(),
        "no progress when not a terminal: {}",
        text(&out.stderr)
    );
    let pulled = json_of(out, "pull");
    assert_eq!(pulled["digest"], digest.as_str());
    assert_eq!(pulled["weight"], 920);
    assert_eq!(files_under(&into), sorted(good.files()), "byte for byte");

    let again = mpo(
        cluster,
        &via.args("pull", &[&format!("{module}:good"), &into_arg]),
    );
    assert_eq!(
        again.status.code(),
        Some(1),
        "a non-empty target is refused"
    );
    assert_eq!(files_under(&into), sorted(good.files()), "and left alone");

    let store = work.path().join("store");
    let store_arg = store.display().to_string();
    ok(
        mpo(
            cluster,
            &via.args(
                "pull",
                &["--store", &format!("{module}@{digest}"), &store_arg],
            ),
        ),
        "pull --store",
    );
    let hex = digest.trim_start_matches("sha256:");
    assert_eq!(
        std::fs::read_link(store.join(module).join("dev")).expect("dev link"),
        Path::new("versions").join(hex)
    );
    assert!(store.join("modules/920-cli-pull/module.yaml").is_file());

    let hostile: Vec<(&str, ModuleImage, &str)> = vec![
        (
            "dotdot",
            with_layer(module, "dotdot", &[RawTarEntry::file("../../escape", "x")]),
            "path leaves the module root",
        ),
        (
            "absolute",
            with_layer(module, "abs", &[RawTarEntry::file("/tmp/cli-abs", "x")]),
            "absolute path",
        ),
        (
            "symlink",
            with_layer(module, "sym", &[RawTarEntry::symlink("out", "/etc")]),
            "leaves the module root",
        ),
        (
            "device",
            with_layer(
                module,
                "dev",
                &[RawTarEntry::new("null", tar::EntryType::Char, "", "")],
            ),
            "refused entry",
        ),
        (
            "bad module.yaml",
            ModuleImage::new().file("module.yaml", "weight: [unclosed\n"),
            "module.yaml",
        ),
        (
            "other name",
            ModuleImage::module("someone-else", 900, "x"),
            "name",
        ),
    ];
    for (case, image, expected) in hostile {
        let tag = format!("hostile-{}", case.replace([' ', '.'], "-"));
        s.push(module, &tag, &image).await;
        let target = work.path().join(&tag);
        let out = mpo(
            cluster,
            &via.args(
                "pull",
                &[&format!("{module}:{tag}"), &target.display().to_string()],
            ),
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case} refused: {stderr}");
        assert!(stderr.contains(expected), "{case}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{case}: one line: {stderr}");
        assert!(!target.exists(), "{case}: nothing left at the target");
        let leftovers: Vec<_> = std::fs::read_dir(work.path())
            .expect("work dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".kubectl-mpo-"))
            .collect();
        assert!(leftovers.is_empty(), "{case}: work directory removed");
    }
    assert!(!Path::new("/tmp/cli-abs").exists());
}

fn with_layer(module: &str, marker: &str, entries: &[RawTarEntry]) -> ModuleImage {
    let tar = entries.iter().fold(TarLayer::new(), |tar, e| tar.entry(e));
    ModuleImage::module(module, 900, marker).raw_layer(tar.gzip(), OCI_LAYER_GZIP)
}

#[tokio::test]
async fn a_pull_on_a_terminal_shows_progress() {
    let cluster = require_cluster!();
    let s = Scenario::start(
        cluster,
        "cli-progress",
        RegistryKind::Plain,
        &["cli-progress"],
        &[],
    )
    .await;
    let module = "cli-progress";
    s.push(
        module,
        "big",
        &support::images::large_module(module, 4 << 20),
    )
    .await;
    let work = tempfile::tempdir().expect("tempdir");
    let target = work.path().join("out");
    let repo = format!("{}/{REPO_PATH}", s.registry.host());
    let command = format!(
        "KUBECONFIG=/nonexistent {} pull --repo {repo} --insecure-http {module}:big {}",
        env!("CARGO_BIN_EXE_kubectl-mpo"),
        target.display()
    );
    // util-linux's script(1) runs the command on a pseudo-terminal, as a user's shell would.
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script runs");
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("pulling ") && shown.contains("(100%)"),
        "{shown}"
    );
    assert!(shown.contains("MiB"), "{shown}");
}

#[tokio::test]
async fn renew_waits_for_the_operator_and_says_how_it_went() {
    let cluster = require_cluster!();
    let module = "cli-renew";
    let mut s = Scenario::start(cluster, "cli-renew", RegistryKind::Plain, &[module], &[]).await;
    let first = s
        .push(module, "main", &ModuleImage::module(module, 900, "one"))
        .await;
    s.apply_mpo(module, "main", "1h");
    s.wait_for_digest(module, &first, READY).await;

    let second = s
        .push(module, "main", &ModuleImage::module(module, 900, "two"))
        .await;
    let out = mpo(
        cluster,
        &["renew", module, "--wait", "--timeout", "60s", "-o", "json"],
    );
    let renewed = json_of(out, "renew --wait");
    assert_eq!(
        renewed["digest"],
        second.as_str(),
        "the new digest, at once despite the 1h interval"
    );
    assert_eq!(
        s.status_str(module, "imageDigest").as_deref(),
        Some(second.as_str())
    );

    s.push(
        module,
        "main",
        &ModuleImage::new().file("module.yaml", "weight: [unclosed\n"),
    )
    .await;
    let out = mpo(cluster, &["renew", module, "--wait", "--timeout", "60s"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "kubectl-mpo: modulepulloverride/{module}: invalid module {module}@"
        )),
        "{stderr}"
    );
    assert_eq!(
        s.status_str(module, "imageDigest").as_deref(),
        Some(second.as_str()),
        "kept"
    );

    let status = json_of(mpo(cluster, &["status", module, "-o", "json"]), "status");
    assert_eq!(status["digest"], second.as_str());
    assert_eq!(status["overridden"], true);
    assert_eq!(status["ready"], "False");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains("invalid module"),
        "{status}"
    );
    let table = ok(mpo(cluster, &["status"]), "status table");
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{module} ")))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains(&second[..19]) && row.contains(" true "),
        "{row}"
    );

    let plugin_path = format!(
        "{}:{}",
        Path::new(env!("CARGO_BIN_EXE_kubectl-mpo"))
            .parent()
            .expect("dir")
            .display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(&cluster.kubectl)
        .args(["mpo", "status", module, "-o", "json"])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("PATH", plugin_path)
        .output()
        .expect("kubectl runs");
    assert_eq!(
        json_of(out, "kubectl mpo status")["name"],
        module,
        "works as a kubectl plugin"
    );

    let gone = mpo(cluster, &["renew", "cli-no-such-mpo"]);
    assert_eq!(gone.status.code(), Some(1));
    assert_eq!(
        text(&gone.stderr),
        "kubectl-mpo: ModulePullOverride \"cli-no-such-mpo\" not found\n"
    );

    // An MPO that no operator watches (every test operator watches only its own label), so
    // nobody handles the renew. Stopping our operator instead would leave its finalizer behind.
    let orphan = "cli-renew-unwatched";
    let yaml = s
        .mpo_yaml(orphan, "main", "1h")
        .replace(&format!("mpo-test: {}", s.id.0), "mpo-test: nobody");
    cluster.apply_ok(&yaml);
    s.track(&format!("mop/{orphan}"));
    let out = mpo(
        cluster,
        &["renew", orphan, "--force", "--wait", "--timeout", "2s"],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "timed out: {stderr}");
    assert!(stderr.contains("timed out after 2s"), "{stderr}");
    let annotations = cluster.jsonpath(&format!("mop/{orphan}"), "{.metadata.annotations}");
    assert!(
        annotations.contains("modules.deckhouse.io/renew"),
        "{annotations}"
    );

    // Without --wait: -o prints the object as kubectl annotate -o does; --timeout is a mistake.
    let annotated = json_of(
        mpo(cluster, &["renew", orphan, "-o", "json"]),
        "renew -o json",
    );
    assert_eq!(annotated["name"], orphan, "{annotated}");
    let out = mpo(cluster, &["renew", orphan, "--timeout", "5s"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
    assert!(stderr.contains("--wait"), "{stderr}");
}

#[tokio::test]
async fn names_and_texts_from_an_image_cannot_drive_the_terminal() {
    let cluster = require_cluster!();
    let module = "cli-escape";
    let s = Scenario::start(cluster, "cli-escape", RegistryKind::Plain, &[module], &[]).await;
    // OSC 52 would write "evil" to the user's clipboard; CSI would recolour the terminal.
    let osc52 = "templates/\u{1b}]52;c;ZXZpbA==\u{7}.yaml";
    let image = ModuleImage::module(module, 900, "x")
        .file(osc52, "kind: ConfigMap\n")
        .symlink("templates/link", "\u{1b}[31mred");
    s.push(module, "v1", &image).await;
    let repo = format!("{}/{REPO_PATH}", s.registry.host());
    let image_ref = format!("{module}:v1");
    let table = mpo(
        cluster,
        &["files", "--repo", &repo, "--insecure-http", &image_ref],
    );
    let shown = ok(table, "files");
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert!(
        shown.contains(r"templates/\x1b]52;c;ZXZpbA==\x07.yaml"),
        "{shown}"
    );
    assert!(shown.contains(r"\x1b[31mred"), "{shown}");
    // JSON keeps the real name (its encoder escapes it), for scripts.
    let json = json_of(
        mpo(
            cluster,
            &[
                "files",
                "--repo",
                &repo,
                "--insecure-http",
                &image_ref,
                "-o",
                "json",
            ],
        ),
        "files -o json",
    );
    assert!(field(&json, "path").iter().any(|p| p == osc52), "{json}");
}

#[tokio::test]
async fn tags_lists_an_unreadable_tag_as_a_row_with_its_error() {
    let cluster = require_cluster!();
    let module = "cli-broken-tag";
    let s = Scenario::start(
        cluster,
        "cli-broken-tag",
        RegistryKind::Plain,
        &[module],
        &[],
    )
    .await;
    let good = s
        .push(module, "good", &ModuleImage::module(module, 900, "good"))
        .await;
    let broken = ModuleImage::module(module, 900, "broken")
        .build()
        .expect("build");
    support::images::push_built(
        &s.registry,
        &format!("{REPO_PATH}/{module}"),
        "broken",
        &broken,
    )
    .await
    .expect("push");
    // The config blob is gone from the registry's storage: that tag cannot be read.
    support::crafted::delete_blob(&s.registry, &broken.config.digest);
    let repo = format!("{}/{REPO_PATH}", s.registry.host());
    let out = mpo(
        cluster,
        &["tags", "--repo", &repo, "--insecure-http", module],
    );
    let table = ok(out, "tags with one unreadable tag");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].ends_with("ERROR"), "{table}");
    let broken_row = lines
        .iter()
        .find(|l| l.starts_with("broken"))
        .expect("a row for it");
    assert!(broken_row.contains("blob unknown"), "{table}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("good") && l.contains(&good)),
        "the readable tag is listed: {table}"
    );
    let json = json_of(
        mpo(
            cluster,
            &[
                "tags",
                "--repo",
                &repo,
                "--insecure-http",
                module,
                "-o",
                "json",
            ],
        ),
        "tags -o json",
    );
    assert!(
        json.as_array()
            .expect("list")
            .iter()
            .any(|r| r["tag"] == "broken" && r["error"].is_string()),
        "{json}"
    );

    // Every tag unreadable: the command fails.
    support::crafted::delete_blob(
        &s.registry,
        &ModuleImage::module(module, 900, "good")
            .build()
            .expect("build")
            .config
            .digest,
    );
    let out = mpo(
        cluster,
        &["tags", "--repo", &repo, "--insecure-http", module],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("none of the 2 tags"),
        "{}",
        text(&out.stderr)
    );
}

/// A `docker-credential-<name>` script in `dir` answering `user`/`password` for `host` only (and
/// "credentials not found" otherwise, as the docker-credential-helpers library does), logging
/// each server URL it was asked for to `<dir>/<name>.log`.
fn credential_helper(dir: &Path, name: &str, host: &str, user: &str, password: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join(format!("{name}.log"));
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nIFS= read -r server || true\nprintf '%s\\n' \"$server\" >> '{}'\nif [ \"$server\" = '{host}' ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
        log.display()
    );
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&path, script).expect("helper script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    log
}

#[tokio::test]
async fn credentials_come_from_the_docker_credential_helpers_as_docker_desktop_and_clouds_keep_them()
 {
    let cluster = require_cluster!();
    let module = "cli-helper";
    let s = Scenario::start(
        cluster,
        "cli-helper",
        RegistryKind::Htpasswd,
        &[module],
        &[],
    )
    .await;
    let digest = s
        .push(module, "v1", &ModuleImage::module(module, 900, "v1"))
        .await;
    let (user, password) = s.registry.credentials().expect("htpasswd credentials");
    let work = tempfile::tempdir().expect("temp dir");
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let host = s.registry.host().to_owned();
    let log = credential_helper(&bin, "mpotest", &host, user, password);
    let path = PathBuf::from(format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    ));
    let repo = format!("{host}/{REPO_PATH}");
    let tags = |docker: &Path, extra: &[&str]| {
        let mut args = vec!["tags", "--repo", &repo, "--insecure-http", module];
        args.extend(extra);
        mpo_with_env(
            cluster,
            &args,
            &[("PATH", &path), ("DOCKER_CONFIG", docker)],
        )
    };

    // Docker Desktop's shape: an empty entry and `credsStore`.
    let desktop = work.path().join("desktop");
    std::fs::create_dir_all(&desktop).expect("dir");
    std::fs::write(
        desktop.join("config.json"),
        json!({"auths": {&host: {}}, "credsStore": "mpotest"}).to_string(),
    )
    .expect("config.json");
    let table = ok(tags(&desktop, &[]), "tags with credsStore");
    assert!(table.contains(&digest), "{table}");
    let asked = std::fs::read_to_string(&log).expect("the helper was run");
    assert!(
        asked.lines().all(|l| l == host),
        "asked with the host: {asked}"
    );

    // `credHelpers` names a helper per host and wins over `credsStore`; given explicitly too.
    let per_host = work.path().join("per-host");
    std::fs::create_dir_all(&per_host).expect("dir");
    let nothing_log = credential_helper(&bin, "mponothing", "other.example", user, password);
    let config = per_host.join("config.json");
    std::fs::write(
        &config,
        json!({"credsStore": "mpotest", "credHelpers": {&host: "mponothing"}}).to_string(),
    )
    .expect("config.json");
    let config_arg = config.display().to_string();
    let out = tags(&per_host, &["--docker-config", &config_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("unauthorized") || stderr.contains("authentication required"),
        "a helper without credentials means anonymous: {stderr}"
    );
    assert!(std::fs::read_to_string(&nothing_log).is_ok_and(|l| l.contains(&host)));

    // A helper that is not installed is named; a name that is a path is refused unrun.
    for (store, expected) in [
        ("absent", "docker-credential-absent is not on PATH"),
        ("../../bin/sh", "not a plain name"),
    ] {
        std::fs::write(
            desktop.join("config.json"),
            json!({"auths": {&host: {}}, "credsStore": store}).to_string(),
        )
        .expect("config.json");
        let out = tags(&desktop, &[]);
        assert_eq!(out.status.code(), Some(1));
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains(password), "{stderr}");
    }
}

#[tokio::test]
async fn every_command_has_its_own_help_and_kubectl_completes_the_plugin() {
    let cluster = require_cluster!();
    for (command, usage) in [
        ("modules", "modules [OPTIONS] [SOURCE]"),
        ("tags", "tags [OPTIONS] [SOURCE] MODULE"),
        ("releases", "releases [OPTIONS] [SOURCE] MODULE"),
        ("channel", "channel [OPTIONS] [SOURCE] MODULE [CHANNEL]"),
        ("files", "files [OPTIONS] [SOURCE] MODULE:TAG"),
        ("images", "images [OPTIONS] [SOURCE] MODULE:TAG"),
        ("pull", "pull [OPTIONS] [SOURCE] MODULE:TAG DIR"),
        ("diff", "diff [OPTIONS] [SOURCE] MODULE TAG_A TAG_B"),
        ("renew", "renew [OPTIONS] MPO"),
        ("status", "status [OPTIONS] [MPO]"),
        (
            "verify",
            "verify [OPTIONS] [--key FILE] [SOURCE] MODULE:TAG",
        ),
        ("completion", "completion bash|zsh|kubectl"),
    ] {
        let help = ok(mpo(cluster, &[command, "--help"]), "--help");
        assert!(
            help.contains(&format!("Usage: kubectl mpo {usage}\n")),
            "{command}: {help}"
        );
        assert!(
            help.contains(&format!("Examples:\n  kubectl mpo {command}"))
                || help.contains(&format!("Examples:\n  source <(kubectl mpo {command} ")),
            "{command} shows an example of itself: {help}"
        );
    }

    // The plugin helper kubectl (>= 1.26) runs to complete `kubectl mpo …`, installed as a user
    // would: beside kubectl-mpo on PATH.
    let module = "cli-complete";
    let s = Scenario::start(cluster, "cli-complete", RegistryKind::Plain, &[module], &[]).await;
    let bin = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_kubectl-mpo"),
        bin.path().join("kubectl-mpo"),
    )
    .expect("plugin on PATH");
    let helper = ok(
        mpo(cluster, &["completion", "kubectl"]),
        "completion kubectl",
    );
    let helper_path = bin.path().join("kubectl_complete-mpo");
    std::fs::write(&helper_path, helper).expect("helper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper_path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let complete = |words: &[&str]| {
        let out = Command::new(&cluster.kubectl)
            .arg("__complete")
            .arg("mpo")
            .args(words)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("PATH", &path)
            .output()
            .expect("kubectl runs");
        text(&out.stdout)
    };
    let commands = complete(&["ta"]);
    assert!(
        commands.lines().any(|l| l.starts_with("tags")),
        "{commands}"
    );
    let flags = complete(&["tags", "--no"]);
    assert!(flags.lines().any(|l| l == "--no-kind"), "{flags}");
    let sources = complete(&["tags", ""]);
    assert!(
        sources.lines().any(|l| l == s.source),
        "ModuleSource names from the cluster: {sources}"
    );

    // bash: the generated script registers a completion for kubectl-mpo.
    let out = Command::new("bash")
        .args([
            "-c",
            "source <(\"$0\" completion bash) && complete -p kubectl-mpo",
            env!("CARGO_BIN_EXE_kubectl-mpo"),
        ])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success() && text(&out.stdout).contains("kubectl-mpo"),
        "{} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// cosign stores a signature under `sha256-<hex>.sig` beside the image it signs (and `.att`,
/// `.sbom`); the OCI referrers tag schema stores `sha256-<hex>`. The registry lists them with
/// the other tags, so without care they read as module names of a source and as versions.
/// (The tags here are pushed by the harness under the names cosign gives them: what the
/// registry lists is the same.)
#[tokio::test]
async fn signature_and_referrer_tags_are_neither_modules_nor_versions() {
    let cluster = require_cluster!();
    let s = Scenario::start(cluster, "cli-sigtags", RegistryKind::Plain, &MODULES, &[]).await;
    let seed = seed(&s.registry).await;
    let module = MODULES[0];
    let hex = |digest: &str| digest.trim_start_matches("sha256:").to_owned();
    let v1 = hex(&seed.v1.iter().find(|(m, _)| m == module).expect("seeded").1);
    let artifact = ModuleImage::new().file("payload.json", "{}\n");
    let artifact_tags = [
        format!("sha256-{v1}.sig"),
        format!("sha256-{v1}.att"),
        format!("sha256-{v1}.sbom"),
        format!("sha256-{v1}"),
    ];
    let module_repository = format!("{REPO_PATH}/{module}");
    let release_repository = format!("{module_repository}/release");
    for repository in [REPO_PATH, &module_repository, &release_repository] {
        for tag in &artifact_tags {
            push(&s.registry, repository, tag, &artifact)
                .await
                .expect("artifact tag");
        }
    }
    let source = s.source.as_str();

    let modules = json_of(mpo(cluster, &["modules", source, "-o", "json"]), "modules");
    assert_eq!(field(&modules, "name"), MODULES, "modules");
    let tags = json_of(
        mpo(
            cluster,
            &["tags", source, module, "--no-kind", "-o", "json"],
        ),
        "tags",
    );
    assert_eq!(field(&tags, "tag"), [APP_TAG, "v1.23.1", "v1.23.2"], "tags");
    let releases = json_of(
        mpo(cluster, &["releases", source, module, "-o", "json"]),
        "releases",
    );
    assert_eq!(
        releases,
        json!({"versions": ["v1.23.1", "v1.23.2"], "channels": ["alpha", "beta"]})
    );

    // The operator's scan of the source: the module names only.
    let scanned_before = s.source_object()["status"]["syncTime"].clone();
    cluster.kubectl_ok(&[
        "annotate",
        "--overwrite",
        &format!("ms/{source}"),
        "renew=now",
    ]);
    let listed = support::wait_for("a scan after the artifact tags", READY, || async {
        let status = s.source_object()["status"].clone();
        (status["syncTime"] != scanned_before).then(|| {
            assert_eq!(status["modulesCount"], json!(MODULES.len()), "{status}");
            field(&status["modules"], "name")
        })
    })
    .await;
    assert_eq!(listed, MODULES);
}
