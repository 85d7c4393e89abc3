//! Hostile module images. Whatever a careless or malicious author pushes to the tag, the operator
//! refuses it with a clear `status.message`, keeps the previous version active and byte for byte
//! intact, and writes nothing outside the module's staging directory. A few odd but harmless
//! images are accepted, with the dangerous part (setuid/setgid/sticky bits) dropped.
//!
//! One MPO per test goes through every case in turn (pushed to the same tag, then checked at once
//! with the `renew` annotation), which is much faster than one operator per case.

mod support;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use support::{
    Cluster,
    crafted::{self, Canary, names_in, staging_dirs, zeros},
    images::{
        BuiltImage, ModuleImage, OCI_LAYER_GZIP, OCI_LAYER_TAR, RawTarEntry, large_module,
        push_built, push_index,
    },
    layers::TarLayer,
    registry::RegistryKind,
    scenario::{REPO_PATH, Scenario, files_under, sorted},
    wait_for,
};

const WAIT: Duration = Duration::from_secs(60);
const TAG: &str = "dev";
/// Small limits, so that the limit cases need no big images.
const MAX_ENTRIES: u64 = 50;
const MAX_UNPACKED: u64 = 8 << 20;
const MAX_COMPRESSED: u64 = 4 << 20;
/// Where the hostile entries aim: from `<dl>/<module>/.staging-*/`, three levels up is the
/// operator's temp dir, which holds the canary directory next to the download directory.
const UP_TO_CANARY: &str = "../../../canary";

/// One operator with small limits, one MPO brought to Ready with a good image, and a canary.
struct World {
    s: Scenario,
    module: String,
    canary: Canary,
    good_files: Vec<(String, Vec<u8>)>,
}

impl World {
    async fn start(cluster: &'static Cluster, test: &str) -> Self {
        let flags = [
            format!("--max-entries={MAX_ENTRIES}"),
            format!("--max-unpacked-size={MAX_UNPACKED}"),
            format!("--max-compressed-size={MAX_COMPRESSED}"),
            "--scan-module-sources=false".to_owned(),
            // Two kept versions: a hostile tree (deep, read-only) is collected two switches on.
            "--keep-versions=2".to_owned(),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut s = Scenario::start(cluster, test, RegistryKind::Plain, &[], &flags).await;
        let module = format!("{}-m", s.id.0);
        let canary = Canary::beside(&s.operator.download_dir);
        let good = ModuleImage::module(&module, 900, "good");
        let digest = s.push(&module, TAG, &good).await;
        // An hour: only the renew annotation starts a pass, so nothing runs between our checks.
        s.apply_mpo(&module, TAG, "1h");
        s.wait_for_digest(&module, &digest, WAIT).await;
        Self {
            s,
            module,
            canary,
            good_files: sorted(good.files()),
        }
    }

    fn repo(&self) -> String {
        format!("{REPO_PATH}/{}", self.module)
    }

    fn reference_at(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.s.registry.host(), self.repo())
    }

    fn module_dir(&self) -> PathBuf {
        self.s.module_dir(&self.module)
    }

    /// Asks for a check now, once the previous `renew` has been consumed (adding it again while
    /// it is still there would change nothing and start no pass).
    async fn renew(&self) {
        wait_for(
            "the previous renew annotation to be consumed",
            WAIT,
            || async {
                let mpo = self.s.mpo(&self.module);
                mpo["metadata"]["annotations"]
                    .get("renew")
                    .is_none()
                    .then_some(())
            },
        )
        .await;
        self.s
            .cluster
            .kubectl_ok(&["annotate", &format!("mop/{}", self.module), "renew="]);
    }
}

/// How a case reaches the registry.
enum Publish {
    Image(ModuleImage),
    /// Pushed, then the stored bytes of its last layer altered (same length).
    CorruptLastLayer(ModuleImage),
    /// Pushed, then the stored bytes of its last layer deleted.
    DeleteLastLayer(ModuleImage),
    /// Pushed exactly as built (e.g. with a hand-written manifest).
    Built(BuiltImage),
    /// An image index over these platforms.
    Index(Vec<((&'static str, &'static str), ModuleImage)>),
}

/// What the status must say.
enum Refusal {
    /// `cannot download <ref>@<digest>: …<fragment>…`
    Download(String),
    /// `invalid module <name>@<digest>: …<fragment>…`
    Invalid(String),
}

struct Case {
    name: &'static str,
    publish: Publish,
    refusal: Refusal,
    /// The refusal must come from the manifest alone: not one GET of a layer blob.
    before_any_blob: bool,
}

/// The tag's digest after publishing, and the digests of the image's layers.
struct Published {
    digest: String,
    layers: Vec<String>,
}

fn case(name: &'static str, publish: Publish, refusal: Refusal) -> Case {
    Case {
        name,
        publish,
        refusal,
        before_any_blob: false,
    }
}

fn download(fragment: impl Into<String>) -> Refusal {
    Refusal::Download(fragment.into())
}

/// A valid module (so that nothing but the hostile part can be blamed) with `tar` as a gzip layer
/// on top. `marker` makes every case's image, and its blobs, distinct.
fn module_with(module: &str, marker: &str, tar: TarLayer) -> ModuleImage {
    ModuleImage::module(module, 900, marker).raw_layer(tar.gzip_best(), OCI_LAYER_GZIP)
}

fn entries(list: &[RawTarEntry]) -> TarLayer {
    list.iter()
        .fold(TarLayer::new(), |tar, entry| tar.entry(entry))
}

fn dir(name: &str) -> RawTarEntry {
    RawTarEntry::new(name, tar::EntryType::Directory, "", "").mode(0o755)
}

fn file(name: &str, data: &str) -> RawTarEntry {
    RawTarEntry::file(name, data)
}

fn symlink(name: &str, target: &str) -> RawTarEntry {
    RawTarEntry::symlink(name, target)
}

/// Every image that must be refused, with the reason the status must give.
fn refused_cases(module: &str, canary: &Path) -> Vec<Case> {
    let m = |marker: &str, list: &[RawTarEntry]| module_with(module, marker, entries(list));
    let canary_abs = canary.display().to_string();
    let outside = format!("{UP_TO_CANARY}/pwned");
    let leaves = "leaves the module root";
    let mut cases = vec![
        case(
            "absolute path",
            Publish::Image(m("abs", &[file(&format!("{canary_abs}/abs"), "x")])),
            download(format!(
                r#"refused entry "{canary_abs}/abs": absolute path"#
            )),
        ),
        case(
            "`..` component",
            Publish::Image(m("dotdot", &[file(&outside, "x")])),
            download(format!(r#"refused entry "{outside}": path {leaves}"#)),
        ),
        case(
            "`..` in an uncompressed tar layer",
            Publish::Image(
                ModuleImage::module(module, 900, "plain-tar")
                    .raw_layer(entries(&[file(&outside, "x")]).tar(), OCI_LAYER_TAR),
            ),
            download(format!(r#"refused entry "{outside}": path {leaves}"#)),
        ),
        case(
            "`..` after a normal component",
            Publish::Image(m("dotdot-mid", &[file(&format!("a/../{outside}"), "x")])),
            download(format!("path {leaves}")),
        ),
        case(
            "NUL in a name",
            Publish::Image(module_with(
                module,
                "nul",
                TarLayer::new().pax_entry(&RawTarEntry::file(b"module.yaml\0/../x", "x")),
            )),
            download(r#"refused entry "module.yaml\0/../x": name contains a NUL byte"#),
        ),
        case(
            "backslash in a name",
            Publish::Image(m("backslash", &[file(r"..\..\..\canary\bs", "x")])),
            download(r#"refused entry "..\\..\\..\\canary\\bs": name contains a backslash"#),
        ),
        case(
            "entry replacing the module root",
            Publish::Image(m("root-file", &[file(".", "x")])),
            download("entry replaces the module root"),
        ),
        case(
            "whiteout of the parent directory",
            Publish::Image(m("wh-parent", &[file(".wh...", "")])),
            download("whiteout names no entry"),
        ),
        case(
            "absolute symlink to outside",
            Publish::Image(m("sym-abs", &[symlink("escape", &canary_abs)])),
            download(format!(
                r#"refused entry "escape": symlink target "{canary_abs}" {leaves}"#
            )),
        ),
        case(
            "relative symlink to outside",
            Publish::Image(m("sym-rel", &[symlink("escape", UP_TO_CANARY)])),
            download(format!(
                r#"refused entry "escape": symlink target "{UP_TO_CANARY}" {leaves}"#
            )),
        ),
        case(
            "chain of symlinks whose last hop leaves",
            Publish::Image(m(
                "sym-chain",
                &[
                    symlink("one", "two"),
                    symlink("two", "three"),
                    symlink("three", &format!("../{UP_TO_CANARY}")),
                ],
            )),
            download(r#"refused entry "three": symlink target"#),
        ),
        // Each link is inside when written; only the finished chain climbs out
        // (l1 -> l2/.., l2 -> l3/.., l3 -> .): caught by the check of the whole tree.
        case(
            "chain of symlinks that leaves only once complete",
            Publish::Image(m(
                "sym-late",
                &[
                    symlink("l1", "l2/.."),
                    symlink("l2", "l3/.."),
                    symlink("l3", "."),
                ],
            )),
            download(format!(
                r#"refused entry "l1": symlink target "l2/.." {leaves}"#
            )),
        ),
        case(
            "symlink that points at itself",
            Publish::Image(m("sym-loop", &[symlink("loop", "loop")])),
            download(r#"refused entry "loop": symlink target "loop""#),
        ),
        case(
            "file written through a symlink to outside",
            Publish::Image(m(
                "through-out",
                &[symlink("escape", &canary_abs), file("escape/pwned", "x")],
            )),
            download(r#"refused entry "escape""#),
        ),
        // The symlink is harmless, but writing through any symlink is refused: the layer
        // below could have pointed it anywhere.
        case(
            "file written through a symlink from a lower layer",
            Publish::Image(
                ModuleImage::module(module, 900, "through-in")
                    .raw_layer(
                        entries(&[dir("real"), symlink("alias", "real")]).gzip_best(),
                        OCI_LAYER_GZIP,
                    )
                    .raw_layer(
                        entries(&[file("alias/pwned", "x")]).gzip_best(),
                        OCI_LAYER_GZIP,
                    ),
            ),
            download(r#"refused entry "alias/pwned": parent "alias" is a symlink"#),
        ),
        case(
            "hard link to a file outside",
            Publish::Image(m("hard-out", &[RawTarEntry::hardlink("h", &outside)])),
            download(format!(
                r#"refused entry "h": hard link target "{outside}": path {leaves}"#
            )),
        ),
        case(
            "hard link to an absolute path",
            Publish::Image(m("hard-abs", &[RawTarEntry::hardlink("h", "/etc/passwd")])),
            download(r#"hard link target "/etc/passwd": absolute path"#),
        ),
        case(
            "hard link to a symlink",
            Publish::Image(m(
                "hard-sym",
                &[symlink("s", "module.yaml"), RawTarEntry::hardlink("h", "s")],
            )),
            download("is not an already extracted regular file"),
        ),
        case(
            "directory replaced by a symlink",
            Publish::Image(m(
                "dir-to-sym",
                &[
                    dir("d"),
                    file("d/f", "x"),
                    symlink("d", "."),
                    file("d/g", "x"),
                ],
            )),
            // Accepted as containerd does, but nothing is written through it.
            download(r#"refused entry "d/g": parent "d" is a symlink"#),
        ),
    ];
    for (name, kind) in [
        ("character device", tar::EntryType::Char),
        ("block device", tar::EntryType::Block),
        ("fifo", tar::EntryType::Fifo),
    ] {
        cases.push(case(
            name,
            Publish::Image(m(name, &[RawTarEntry::new("node", kind, "", "")])),
            download(r#"refused entry "node": device and fifo entries are not allowed"#),
        ));
    }
    cases.extend(path_length_cases(module));
    cases.extend(limit_cases(module));
    cases.extend(stream_cases(module));
    cases.extend(manifest_cases(module));
    cases.extend(invalid_module_cases(module));
    cases
}

fn path_length_cases(module: &str) -> Vec<Case> {
    let pax = |marker: &str, name: &str| {
        module_with(
            module,
            marker,
            TarLayer::new().pax_entry(&RawTarEntry::file(name, "x")),
        )
    };
    let too_long = format!("{}f", "a/".repeat(2049));
    let long_name = "n".repeat(300);
    // Under 4096 bytes itself, but with the staging directory in front it no longer fits
    // Linux's PATH_MAX: the image's fault, not a disk problem.
    let deep = format!("{}f", "d/".repeat(2020));
    vec![
        case(
            "path longer than 4096 bytes",
            Publish::Image(pax("long-path", &too_long)),
            download("path is longer than 4096 bytes"),
        ),
        case(
            "path component longer than 255 bytes",
            Publish::Image(pax("long-name", &long_name)),
            download("path component longer than 255 bytes"),
        ),
        case(
            "very deep path",
            Publish::Image(pax("deep", &deep)),
            download("too long to unpack"),
        ),
    ]
}

fn limit_cases(module: &str) -> Vec<Case> {
    let many: Vec<RawTarEntry> = (0..MAX_ENTRIES + 10)
        .map(|i| RawTarEntry::file(format!("many/{i:03}"), "x"))
        .collect();
    let bomb: Vec<RawTarEntry> = (0..16)
        .map(|i| zeros(&format!("bomb/{i:02}"), 4 << 20))
        .collect();
    let too_big = usize::try_from(MAX_UNPACKED).expect("small") + 1;
    let over_size = over_the_compressed_limit(module);
    vec![
        case(
            "more entries than --max-entries",
            Publish::Image(module_with(module, "many", entries(&many))),
            download(format!(
                "number of entries exceeds the limit of {MAX_ENTRIES}"
            )),
        ),
        case(
            "one entry bigger than --max-unpacked-size",
            Publish::Image(module_with(
                module,
                "big",
                entries(&[zeros("big", too_big)]),
            )),
            download(format!(
                r#"unpacked size exceeds the limit of {MAX_UNPACKED} bytes at entry "big""#
            )),
        ),
        // 64 MiB of zeros in 4 MiB files, about 64 KiB gzipped: each file looks harmless, the
        // sum stops at the limit (the module's own files plus two of them are over 8 MiB).
        case(
            "gzip bomb",
            Publish::Image(module_with(module, "bomb", entries(&bomb))),
            download(format!(
                r#"unpacked size exceeds the limit of {MAX_UNPACKED} bytes at entry "bomb/01""#
            )),
        ),
        Case {
            before_any_blob: true,
            ..case(
                "compressed size over --max-compressed-size",
                Publish::Image(over_size),
                download(format!("over the limit of {MAX_COMPRESSED} bytes")),
            )
        },
    ]
}

/// Incompressible data just over the compressed-size limit.
fn over_the_compressed_limit(module: &str) -> ModuleImage {
    let size = usize::try_from(MAX_COMPRESSED).expect("small") + (64 << 10);
    large_module(module, size)
}

fn stream_cases(module: &str) -> Vec<Case> {
    let whole = TarLayer::new()
        .entry(&zeros("padding", 256 << 10))
        .entry(&RawTarEntry::file(
            "noise",
            (0..200_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect::<Vec<u8>>(),
        ))
        .gzip_best();
    let truncated = whole[..whole.len() / 2].to_vec();
    let unique_layer = |marker: &str| {
        ModuleImage::module(module, 900, marker).raw_layer(
            entries(&[file("payload", marker)]).gzip_best(),
            OCI_LAYER_GZIP,
        )
    };
    vec![
        case(
            "truncated gzip",
            Publish::Image(
                ModuleImage::module(module, 900, "truncated").raw_layer(truncated, OCI_LAYER_GZIP),
            ),
            download(r#"cannot read the layer at entry "noise""#),
        ),
        case(
            "not gzip at all under a gzip media type",
            Publish::Image(
                ModuleImage::module(module, 900, "not-gzip")
                    .raw_layer(b"plain text, not gzip".to_vec(), OCI_LAYER_GZIP),
            ),
            download("cannot read the layer"),
        ),
        case(
            "blob bytes that do not match the digest",
            Publish::CorruptLastLayer(unique_layer("corrupt")),
            download("cannot read the layer: digest mismatch"),
        ),
        case(
            "manifest naming a blob the registry lost",
            Publish::DeleteLastLayer(unique_layer("lost")),
            download("blob unknown"),
        ),
    ]
}

fn manifest_cases(module: &str) -> Vec<Case> {
    // zstd is read since issue 23; bzip2 never was an OCI layer type anyone pushes.
    let bzip2 = "application/vnd.oci.image.layer.v1.tar+bzip2";
    vec![
        case(
            "unsupported layer media type",
            Publish::Image(
                ModuleImage::module(module, 900, "bzip2").raw_layer(b"(bzip2)".to_vec(), bzip2),
            ),
            download(format!(r#"unsupported layer media type "{bzip2}""#)),
        ),
        // Since issue 23 any linux image of an index serves (tests/compat.rs); one with two
        // images and no linux one has nothing to take.
        case(
            "image index without a linux image",
            Publish::Index(vec![
                (
                    ("windows", "amd64"),
                    ModuleImage::module(module, 900, "windows"),
                ),
                (
                    ("darwin", "arm64"),
                    ModuleImage::module(module, 900, "darwin"),
                ),
            ]),
            download(
                "the image index holds no module image (its entries: windows/amd64, darwin/arm64)",
            ),
        ),
        case(
            "manifest with zero layers",
            Publish::Built(crafted::without_layers(module)),
            download("image has no layers"),
        ),
    ]
}

fn invalid_module_cases(module: &str) -> Vec<Case> {
    // "Billion laughs": nine levels of ten aliases each.
    let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..10 {
        let prev = format!("*a{}", level - 1);
        let list = [prev.as_str(); 10].join(", ");
        laughs.push_str(&format!("a{level}: &a{level} [{list}]\n"));
    }
    vec![
        case(
            "module.yaml that is a directory",
            Publish::Image(module_with(
                module,
                "yaml-dir",
                entries(&[dir("module.yaml")]),
            )),
            Refusal::Invalid("module.yaml: is not a regular file".into()),
        ),
        case(
            "module.yaml alias bomb",
            Publish::Image(module_with(
                module,
                "laughs",
                entries(&[RawTarEntry::file("module.yaml", laughs)]),
            )),
            Refusal::Invalid("module.yaml: not valid YAML: repetition limit exceeded".into()),
        ),
    ]
}

async fn publish(w: &World, publish: &Publish) -> Published {
    let repo = w.repo();
    let registry = &w.s.registry;
    let push = |built: BuiltImage| async move {
        let digest = push_built(registry, &repo, TAG, &built)
            .await
            .expect("push");
        let layers = built.layers.iter().map(|l| l.digest.clone()).collect();
        (Published { digest, layers }, built)
    };
    match publish {
        Publish::Image(image) => push(image.build().expect("build")).await.0,
        Publish::Built(built) => push(built.clone()).await.0,
        Publish::CorruptLastLayer(image) => {
            let (published, built) = push(image.build().expect("build")).await;
            crafted::corrupt_blob(registry, &built.layers.last().expect("a layer").digest);
            published
        }
        Publish::DeleteLastLayer(image) => {
            let (published, built) = push(image.build().expect("build")).await;
            crafted::delete_blob(registry, &built.layers.last().expect("a layer").digest);
            published
        }
        Publish::Index(platforms) => {
            let built: Vec<_> = platforms
                .iter()
                .map(|(platform, image)| (*platform, image.build().expect("build")))
                .collect();
            let refs: Vec<_> = built.iter().map(|(p, b)| (*p, b)).collect();
            let digest = push_index(registry, &w.repo(), TAG, &refs)
                .await
                .expect("push index");
            let layers = built
                .iter()
                .flat_map(|(_, b)| b.layers.iter().map(|l| l.digest.clone()))
                .collect();
            Published { digest, layers }
        }
    }
}

/// What a refused image must leave exactly as it was.
struct Before {
    digest: Value,
    updated_at: Value,
    active: Option<String>,
}

fn before(w: &World) -> Before {
    let mpo = w.s.mpo(&w.module);
    Before {
        digest: mpo["status"]["imageDigest"].clone(),
        updated_at: mpo["status"]["updatedAt"].clone(),
        active: w.s.active_hex(&w.module),
    }
}

fn ready_condition(mpo: &Value) -> Value {
    mpo["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or(Value::Null)
}

async fn expect_refused(w: &World, case: &Case, before: &Before) {
    let published = publish(w, &case.publish).await;
    w.renew().await;
    let (prefix, fragment, reason) = match &case.refusal {
        Refusal::Download(f) => (
            format!("cannot download {}: ", w.reference_at(&published.digest)),
            f,
            "DownloadFailed",
        ),
        Refusal::Invalid(f) => (
            format!("invalid module {}@{}: ", w.module, published.digest),
            f,
            "InvalidModule",
        ),
    };
    let mpo = w.s.wait_for_message(&w.module, &prefix, WAIT).await;
    let message = mpo["status"]["message"].as_str().unwrap_or_default();
    let what = case.name;
    eprintln!("  -> {}", message.chars().take(240).collect::<String>());
    assert!(
        message.starts_with(&prefix) && message.contains(fragment.as_str()),
        "{what}: message {message:?} should start with {prefix:?} and contain {fragment:?}"
    );
    assert!(!message.contains('\n'), "{what}: one line: {message:?}");
    // It is also the message of an Event, which the API server caps at 1024 bytes.
    assert!(
        message.len() <= 1024,
        "{what}: a short line, not {} bytes",
        message.len()
    );
    let ready = ready_condition(&mpo);
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some(reason)),
        "{what}: Ready condition"
    );
    assert_eq!(
        mpo["status"]["imageDigest"], before.digest,
        "{what}: imageDigest moved"
    );
    assert_eq!(
        mpo["status"]["updatedAt"], before.updated_at,
        "{what}: updatedAt moved"
    );
    no_staging_left(w, what).await;
    assert_unharmed(w, before, what);
    if case.before_any_blob {
        for layer in &published.layers {
            let gets =
                w.s.registry
                    .count_requests("GET", &format!("/blobs/{layer}"));
            assert_eq!(gets, 0, "{what}: layer {layer} was downloaded {gets} times");
        }
    }
}

/// The failed attempt's staging directory is removed. A wait rather than a single look: a
/// `renew` currently runs the pass twice (the watch event of the first pass's own status write
/// still carries the annotation), so a second, equally doomed attempt may be in flight; a leaked
/// directory would stay until the deadline.
async fn no_staging_left(w: &World, what: &str) {
    let module_dir = w.module_dir();
    wait_for(
        &format!("{what}: no staging directory left"),
        WAIT,
        || async { staging_dirs(&module_dir).is_empty().then_some(()) },
    )
    .await;
}

/// `dev` still names the good version with the good files, nothing else was switched in or
/// left behind, and nothing appeared outside the download directory's module area.
fn assert_unharmed(w: &World, before: &Before, what: &str) {
    let module_dir = w.module_dir();
    assert_eq!(
        w.s.active_hex(&w.module),
        before.active,
        "{what}: dev moved"
    );
    assert_eq!(
        files_under(&module_dir.join("dev/")),
        w.good_files,
        "{what}: the active files changed"
    );
    let active = before.active.clone().expect("an active version");
    assert_eq!(
        names_in(&module_dir.join("versions")),
        [active],
        "{what}: versions"
    );
    let others: Vec<String> = names_in(&module_dir)
        .into_iter()
        .filter(|n| !n.starts_with(".staging-"))
        .collect();
    assert_eq!(others, ["dev", "history", "versions"], "{what}: module dir");
    let root = w.s.operator.download_root();
    assert_eq!(
        names_in(root),
        [".writer", w.module.as_str(), "modules"],
        "{what}: download dir"
    );
    assert_eq!(
        names_in(&root.join("modules")),
        [format!("900-{}", w.module)],
        "{what}: loader links"
    );
    assert_eq!(
        w.canary.contents(),
        Vec::<String>::new(),
        "{what}: wrote outside"
    );
}

#[tokio::test]
async fn hostile_images_are_refused_and_the_previous_version_stays() {
    let cluster = require_cluster!();
    let w = World::start(cluster, "hostile").await;
    let before = before(&w);
    let cases = refused_cases(&w.module, &w.canary.path);
    let started = std::time::Instant::now();
    for case in &cases {
        eprintln!("hostile case: {}", case.name);
        expect_refused(&w, case, &before).await;
    }
    eprintln!(
        "{} hostile images refused in {:?}",
        cases.len(),
        started.elapsed()
    );
}

/// Accepted images: each must become the active version.
async fn expect_accepted(w: &World, image: Publish) -> PathBuf {
    let published = publish(w, &image).await;
    w.renew().await;
    w.s.wait_for_digest(&w.module, &published.digest, WAIT)
        .await;
    assert_eq!(w.canary.contents(), Vec::<String>::new(), "wrote outside");
    no_staging_left(w, "accepted image").await;
    w.s.version_dir(&w.module, &published.digest)
}

fn mode(path: &Path) -> u32 {
    path.symlink_metadata()
        .expect("unpacked entry")
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn odd_but_harmless_images_are_accepted_without_privileged_bits() {
    let cluster = require_cluster!();
    let w = World::start(cluster, "harmless").await;
    let module = w.module.clone();
    let m = |marker: &str, list: &[RawTarEntry]| module_with(&module, marker, entries(list));

    // Deep, but every path fits PATH_MAX even inside the staging directory. Accepted first so
    // that it is pruned (deleted) by the versions that follow.
    let deep_name = format!("{}f", "d/".repeat(1000));
    let deep = expect_accepted(
        &w,
        Publish::Image(module_with(
            &module,
            "deep",
            TarLayer::new().pax_entry(&RawTarEntry::file(deep_name.as_str(), "deep")),
        )),
    )
    .await;
    assert_eq!(
        std::fs::read(deep.join(&deep_name)).expect("deep file"),
        b"deep"
    );

    let version = expect_accepted(
        &w,
        Publish::Image(m(
            "setuid",
            &[
                file("bin/suid", "#!/bin/sh\n").mode(0o4755),
                file("bin/sgid", "#!/bin/sh\n").mode(0o2755),
                dir("shared").mode(0o1777),
            ],
        )),
    )
    .await;
    assert_eq!(mode(&version.join("bin/suid")), 0o755, "setuid dropped");
    assert_eq!(mode(&version.join("bin/sgid")), 0o755, "setgid dropped");
    assert_eq!(mode(&version.join("shared")), 0o777, "sticky dropped");

    let version = expect_accepted(
        &w,
        Publish::Image(m(
            "duplicates",
            &[
                file("twice", "first"),
                file("twice", "second"),
                file("dup", "a file first"),
                dir("dup"),
                file("dup/inner", "then a directory"),
                dir("was-dir"),
                file("was-dir/child", "x"),
                file("was-dir", "a file at last"),
            ],
        )),
    )
    .await;
    let read = |p: &str| std::fs::read_to_string(version.join(p)).expect("unpacked file");
    assert_eq!(read("twice"), "second", "the later entry wins");
    assert_eq!(read("dup/inner"), "then a directory");
    assert_eq!(read("was-dir"), "a file at last");

    let links = [
        ("link", "module.yaml"),
        ("tpl", "templates"),
        ("up", "templates/.."),
        ("chain", "link"),
        ("nested/back", "../openapi/values.yaml"),
    ];
    let list: Vec<RawTarEntry> = links.iter().map(|(l, t)| symlink(l, t)).collect();
    let version = expect_accepted(&w, Publish::Image(m("inside-links", &list))).await;
    for (link, target) in links {
        let kept = std::fs::read_link(version.join(link)).expect("symlink kept");
        assert_eq!(kept, Path::new(target), "{link}");
    }
    assert_eq!(
        std::fs::read(version.join("chain")).expect("through the chain"),
        std::fs::read(version.join("module.yaml")).expect("module.yaml")
    );

    // An index with linux/amd64 among others: that one is unpacked.
    let amd64 = ModuleImage::module(&module, 900, "amd64");
    let index = Publish::Index(vec![
        (
            ("linux", "arm64"),
            ModuleImage::module(&module, 900, "arm64"),
        ),
        (("linux", "amd64"), amd64.clone()),
    ]);
    let version = expect_accepted(&w, index).await;
    assert_eq!(files_under(&version), sorted(amd64.files()));

    // Only the active version and the one before it stay (--keep-versions=2); the deep one was
    // collected.
    let versions = names_in(&w.module_dir().join("versions"));
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(!deep.exists(), "the deep version was pruned");
    assert_eq!(w.canary.contents(), Vec::<String>::new());
}
