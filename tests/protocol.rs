//! The protocol corners real registries put in front of a pull (SPEC §3.4, §6): a HEAD that is
//! refused or carries no digest, Docker schema2 images, blobs redirected to another host, tag
//! lists in pages; and layers applied as container runtimes apply them (whiteouts, opaque
//! directories, a directory turned into a symlink).

mod support;

use std::{path::Path, process::Command, time::Duration};

use base64::Engine as _;

use support::{
    images::{BuiltImage, ModuleImage, OCI_MANIFEST, push_module_names},
    proxy::{Fault, FaultProxy, LinkForm},
    registry::{HeadAuth, RegistryKind, curl_head_digest},
    scenario::{REPO_PATH, Scenario, SourceOptions, files_under, sorted},
    wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

fn manifests_of(module: &str) -> String {
    format!("/v2/{REPO_PATH}/{module}/manifests/")
}

#[tokio::test]
async fn a_head_without_a_digest_or_refused_falls_back_to_a_get_and_hashes_the_body() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "head-get", RegistryKind::Plain, &[], &[]).await;
    let proxy = FaultProxy::start(&s.registry);
    s.route_source_through(proxy.host());
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;

    proxy.fail_method(
        "HEAD",
        &manifests_of(&module),
        Fault::DropHeader("docker-content-digest".into()),
    );
    s.apply_mpo(&module, "dev", "2s");
    s.wait_for_digest(&module, &digest, WAIT).await;
    let tag_gets = |proxy: &FaultProxy| {
        proxy
            .matching("GET", &format!("{}dev", manifests_of(&module)))
            .len()
    };
    assert!(
        tag_gets(&proxy) >= 1,
        "a GET by tag after the digest-less HEAD"
    );

    // A registry (or a proxy in front of it) that does not allow HEAD at all.
    proxy.clear();
    proxy.fail_method("HEAD", &manifests_of(&module), Fault::status(405));
    let before = tag_gets(&proxy);
    wait_for("GETs after HEADs refused with 405", WAIT, || async {
        (tag_gets(&proxy) >= before + 2).then_some(())
    })
    .await;
    assert_eq!(s.mpo(&module)["status"]["message"], "", "still in sync");
    assert_eq!(s.mpo(&module)["status"]["imageDigest"], digest.as_str());
}

/// Writes `built` as an OCI image layout (the input `skopeo copy oci:` reads).
fn write_oci_layout(dir: &Path, built: &BuiltImage, tag: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout dir");
    let hex = |digest: &str| digest.trim_start_matches("sha256:").to_owned();
    for blob in built.layers.iter().chain(std::iter::once(&built.config)) {
        std::fs::write(blobs.join(hex(&blob.digest)), &blob.data).expect("blob");
    }
    std::fs::write(blobs.join(hex(&built.digest)), &built.manifest).expect("manifest");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("marker");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": built.digest,
            "size": built.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
}

#[tokio::test]
async fn a_docker_schema2_image_pushed_by_skopeo_is_applied() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "schema2", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let image = ModuleImage::module(&module, 900, "v2s2");
    let work = tempfile::tempdir().expect("work dir");
    write_oci_layout(
        &work.path().join("layout"),
        &image.build().expect("built"),
        "dev",
    );
    let policy = work.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .expect("policy");
    let output = Command::new("skopeo")
        .arg("--policy")
        .arg(&policy)
        .args([
            "copy",
            "--quiet",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:dev", work.path().join("layout").display()))
        .arg(format!(
            "docker://{}/{REPO_PATH}/{module}:dev",
            s.registry.host()
        ))
        .output()
        .expect("skopeo runs");
    assert!(
        output.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let head = curl_head_digest(
        &s.registry,
        &format!("{REPO_PATH}/{module}"),
        "dev",
        HeadAuth::None,
    )
    .expect("curl");
    let digest = head.digest.expect("a digest for the schema2 manifest");
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!(
            "docker://{}/{REPO_PATH}/{module}:dev",
            s.registry.host()
        ))
        .output()
        .expect("skopeo inspect");
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).expect("manifest JSON");
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );

    s.apply_mpo(&module, "dev", "15s");
    s.wait_for_digest(&module, &digest, WAIT).await;
    assert_eq!(
        files_under(&s.version_dir(&module, &digest)),
        sorted(image.files())
    );
}

#[tokio::test]
async fn layers_apply_as_container_runtimes_apply_them() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "layers", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let image = ModuleImage::module(&module, 900, "1")
        .file("templates/old.yaml", "old")
        .file("templates/keep.yaml", "keep")
        .file("crds/a.yaml", "a")
        .file("crds/b.yaml", "b")
        .file("docs/x.md", "x")
        .file("shared/y.md", "y")
        .new_layer()
        .whiteout("templates/old.yaml")
        .opaque_dir("crds")
        .file("crds/c.yaml", "c")
        .symlink("docs", "shared");
    let digest = s.push(&module, "dev", &image).await;
    s.apply_mpo(&module, "dev", "15s");
    s.wait_for_digest(&module, &digest, WAIT).await;
    let version = s.version_dir(&module, &digest);
    assert!(!version.join("templates/old.yaml").exists(), "whiteout");
    assert!(version.join("templates/keep.yaml").exists());
    assert!(!version.join("crds/a.yaml").exists(), "opaque directory");
    assert!(version.join("crds/c.yaml").exists());
    assert_eq!(
        std::fs::read_link(version.join("docs")).expect("docs is a symlink"),
        Path::new("shared"),
        "a directory replaced by a symlink inside the root"
    );
    assert_eq!(
        std::fs::read(version.join("docs/y.md")).expect("through it"),
        b"y"
    );
    assert_eq!(files_under(&version), sorted(image.files()));

    // The same replacement pointing outside the module is refused; the module stays.
    let hostile = ModuleImage::module(&module, 900, "2")
        .file("docs/x.md", "x")
        .new_layer()
        .symlink("docs", "../../../etc");
    s.push(&module, "dev", &hostile).await;
    s.wait_for_message(&module, "leaves the module root", WAIT)
        .await;
    assert_eq!(s.mpo(&module)["status"]["imageDigest"], digest.as_str());
    assert_eq!(
        s.active_hex(&module).as_deref(),
        digest.strip_prefix("sha256:")
    );
}

#[tokio::test]
async fn blobs_redirected_to_another_host_are_fetched_without_our_credentials() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "redirect", RegistryKind::Htpasswd, &[], &[]).await;
    let front = FaultProxy::start(&s.registry);
    // The storage host: it needs none of the client's credentials (as a pre-signed URL).
    let storage = FaultProxy::start(&s.registry);
    let (user, password) = s.registry.credentials().expect("htpasswd");
    storage.inject_authorization(user, password);
    let cfg =
        serde_json::json!({"auths": {front.host(): {"username": user, "password": password}}});
    let options = SourceOptions {
        docker_cfg: Some(base64::engine::general_purpose::STANDARD.encode(cfg.to_string())),
        with_ca: false,
    };
    cluster.apply_ok(&s.source_yaml_at(front.host(), &options));
    front.fail_method(
        "GET",
        "/blobs/",
        Fault::RedirectTo(format!("http://{}", storage.host())),
    );
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    s.apply_mpo(&module, "dev", "15s");
    s.wait_for_digest(&module, &digest, WAIT).await;

    let redirected = front.matching("GET", "/blobs/");
    assert!(
        !redirected.is_empty()
            && redirected
                .iter()
                .all(|r| r.status == 307 && r.authorization),
        "the registry gets our credentials and redirects: {redirected:?}"
    );
    let fetched = storage.matching("GET", "/blobs/");
    assert!(
        !fetched.is_empty() && fetched.iter().all(|r| !r.authorization),
        "the other host never sees our Authorization: {fetched:?}"
    );

    // The storage host refuses (an expired pre-signed link): the message names that host, not
    // the registry's credentials, and the applied module stays.
    storage.fail_method("GET", "/blobs/", Fault::status(403));
    let next = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "2"))
        .await;
    assert_ne!(next, digest);
    let mpo = s
        .wait_for_message(
            &module,
            &format!(
                "denied by {}, where the registry redirected the download of the blob",
                storage.host()
            ),
            WAIT,
        )
        .await;
    assert_eq!(mpo["status"]["imageDigest"], digest.as_str(), "kept");

    // A bodyless 404 of a blob from the registry itself reads as a missing blob, not manifest.
    front.clear();
    front.fail_method("GET", "/blobs/", Fault::Bare(404));
    s.wait_for_message(&module, "blob unknown", WAIT).await;
    front.clear();
    storage.clear();
    s.wait_for_digest(&module, &next, WAIT).await;
}

#[tokio::test]
async fn a_tag_list_in_pages_is_listed_whole() {
    let cluster = require_cluster!();
    let names = ["m-a", "m-b", "m-c", "m-d", "m-e"];
    let mut s = Scenario::start(
        cluster,
        "pages",
        RegistryKind::Plain,
        &names,
        &["--source-scan-interval", "2s"],
    )
    .await;
    let proxy = FaultProxy::start(&s.registry);
    proxy.fail_method("GET", "/tags/list", Fault::PageTags(2));
    s.route_source_through(proxy.host());
    // The first scan went to the registry directly and may already have listed all five: wait
    // for a scan through the proxy's pages first, then for the whole list.
    wait_for("a scan through pages of two", WAIT, || async {
        proxy
            .matching("GET", "/tags/list")
            .iter()
            .any(|p| p.path.contains("last="))
            .then_some(())
    })
    .await;
    wait_for(
        "all five modules listed through pages of two",
        WAIT,
        || async {
            let source = s.source_object();
            let listed: Vec<String> = source["status"]["modules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["name"].as_str().map(str::to_owned))
                .collect();
            (source["status"]["modulesCount"] == 5
                && names.iter().all(|n| listed.iter().any(|l| l == n)))
            .then_some(())
        },
    )
    .await;
    let pages = proxy.matching("GET", "/tags/list");
    assert!(
        pages.iter().any(|p| p.path.contains("last=")),
        "the next pages were asked for: {pages:?}"
    );
}

/// The modules a source's status lists.
fn listed_modules(source: &serde_json::Value) -> Vec<String> {
    source["status"]["modules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_next_page_link_in_any_same_origin_form_is_followed_and_another_origin_fails_the_scan() {
    let cluster = require_cluster!();
    let names = ["l-a", "l-b", "l-c", "l-d", "l-e"];
    let mut s = Scenario::start(
        cluster,
        "links",
        RegistryKind::Plain,
        &names,
        &["--source-scan-interval", "2s"],
    )
    .await;
    let proxy = FaultProxy::start(&s.registry);
    let port = proxy.host().rsplit(':').next().expect("port").to_owned();
    s.route_source_through(proxy.host());
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    // Each form must list a module pushed after the previous form was seen working.
    for (round, form) in [
        LinkForm::Relative,
        LinkForm::Absolute(format!("HTTP://127.0.0.1:{port}")),
        LinkForm::Absolute(format!("http://127.0.0.1:{port}")),
    ]
    .into_iter()
    .enumerate()
    {
        proxy.clear();
        proxy.fail_method("GET", "/tags/list", Fault::PageTagsLinked(2, form.clone()));
        let name = format!("l-new{round}");
        push_module_names(&s.registry, REPO_PATH, &[&name])
            .await
            .expect("module name pushed");
        expected.push(name);
        let want = expected.clone();
        wait_for(
            &format!("all modules listed with links {form:?}"),
            WAIT,
            || async {
                let listed = listed_modules(&s.source_object());
                want.iter().all(|n| listed.contains(n)).then_some(())
            },
        )
        .await;
    }

    // A link to another origin (here the same proxy by another name) is not followed: the scan
    // fails and says so, and the status keeps the whole list it had, not the first page.
    proxy.clear();
    let switched = std::time::Instant::now();
    proxy.fail_method(
        "GET",
        "/tags/list",
        Fault::PageTagsLinked(2, LinkForm::Absolute(format!("http://localhost:{port}"))),
    );
    push_module_names(&s.registry, REPO_PATH, &["l-unseen"])
        .await
        .expect("module name pushed");
    let source = wait_for("the scan reports the foreign link", WAIT, || async {
        let source = s.source_object();
        source["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("another origin"))
            .then_some(source)
    })
    .await;
    let message = source["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("http://localhost:"),
        "names the origin: {message}"
    );
    assert!(!message.contains("last="), "no path or query: {message}");
    let listed = listed_modules(&source);
    assert!(
        expected.iter().all(|n| listed.contains(n)) && !listed.iter().any(|n| n == "l-unseen"),
        "the last whole list is kept: {listed:?}"
    );
    // "localhost" is this very proxy: a followed link would have shown up as a second page.
    let followed: Vec<_> = proxy
        .matching("GET", "/tags/list")
        .into_iter()
        .filter(|r| r.at > switched && r.path.contains("last="))
        .collect();
    assert!(
        followed.is_empty(),
        "the other origin was asked: {followed:?}"
    );
}
