//! Disk trouble on the operator's own side: a read-only or full download directory. The status
//! says `cannot store module <name>: …` with Ready=False, the active version stays readable and
//! intact, and once the disk is fine again the MPO recovers without anyone touching it.
//!
//! The trouble is real: the download directory is a small tmpfs (remounted read-only, or too
//! small for the new version) or a read-only bind mount. As root, file modes would not stop
//! the operator, so these tests need to mount; where that is not allowed they say so and skip.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    crafted::{names_in, staging_dirs},
    images::{ModuleImage, large_module},
    mounts::{Mounted, can_mount},
    registry::RegistryKind,
    scenario::{Scenario, files_under, sorted},
};

const WAIT: Duration = Duration::from_secs(60);
const TAG: &str = "dev";

/// A module brought to Ready by an operator whose download directory is a tmpfs of `size`.
/// Fields drop in order: the mount goes first, then the operator and its temp dir.
struct OnTmpfs {
    tmpfs: Mounted,
    s: Scenario,
    module: String,
    good: Snapshot,
}

/// What must survive the trouble.
#[derive(Debug, PartialEq)]
struct Snapshot {
    digest: Value,
    updated_at: Value,
    active: Option<String>,
    files: Vec<(String, Vec<u8>)>,
}

impl OnTmpfs {
    async fn start(cluster: &'static support::Cluster, test: &str, size: &str) -> Self {
        let mut s = Scenario::start(
            cluster,
            test,
            RegistryKind::Plain,
            &[],
            &["--scan-module-sources=false"],
        )
        .await;
        // The operator already runs on a plain directory: stop it, mount, start it again.
        s.operator.kill();
        let tmpfs = Mounted::tmpfs(s.operator.download_root(), size);
        s.operator.restart();
        let module = format!("{}-m", s.id.0);
        let image = ModuleImage::module(&module, 900, "good");
        let digest = s.push(&module, TAG, &image).await;
        // An hour: whatever retries happen below come from the failure handling, not a timer.
        s.apply_mpo(&module, TAG, "1h");
        s.wait_for_digest(&module, &digest, WAIT).await;
        let good = snapshot(&s, &module);
        assert_eq!(
            good.files,
            sorted(image.files()),
            "the good version is unpacked"
        );
        Self {
            tmpfs,
            s,
            module,
            good,
        }
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(&self.s, &self.module)
    }

    /// Pushes `image` to the tag and asks for a check now.
    async fn publish(&self, image: &ModuleImage) -> String {
        let digest = self.s.push(&self.module, TAG, image).await;
        self.s
            .cluster
            .kubectl_ok(&["annotate", &format!("mop/{}", self.module), "renew="]);
        digest
    }

    /// `cannot store module <name>: …<cause>…`, Ready=False, and the good version untouched.
    async fn expect_store_failure(&self, cause: &str) -> String {
        let prefix = format!("cannot store module {}: ", self.module);
        let mpo = self.s.wait_for_message(&self.module, &prefix, WAIT).await;
        let message = mpo["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        eprintln!("reported: {message}");
        assert!(message.contains(cause), "{message:?} should name {cause:?}");
        let ready = &mpo["status"]["conditions"][0];
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("StoreFailed")),
            "Ready condition"
        );
        assert_eq!(
            self.snapshot(),
            self.good,
            "the good version must stay as it was"
        );
        message
    }

    /// Back to normal by itself: the new digest active with its files, nothing left over.
    async fn expect_recovery(&self, digest: &str, image: &ModuleImage) {
        self.s.wait_for_digest(&self.module, digest, WAIT).await;
        let dev = self.s.module_dir(&self.module).join("dev/");
        assert_eq!(files_under(&dev), sorted(image.files()));
        let ready = &self.s.mpo(&self.module)["status"]["conditions"][0];
        assert_eq!(ready["status"], "True");
        assert_eq!(
            staging_dirs(&self.s.module_dir(&self.module)),
            Vec::<String>::new()
        );
    }
}

fn snapshot(s: &Scenario, module: &str) -> Snapshot {
    let mpo = s.mpo(module);
    Snapshot {
        digest: mpo["status"]["imageDigest"].clone(),
        updated_at: mpo["status"]["updatedAt"].clone(),
        active: s.active_hex(module),
        files: files_under(&s.module_dir(module).join("dev/")),
    }
}

/// Says why a test does nothing here, instead of passing silently.
fn mounting_allowed(test: &str) -> bool {
    let allowed = can_mount();
    if !allowed {
        eprintln!("SKIPPED {test}: this machine does not allow mounting a tmpfs");
    }
    allowed
}

#[tokio::test]
async fn a_read_only_download_dir_is_reported_and_recovers_when_writable_again() {
    let cluster = require_cluster!();
    if !mounting_allowed("read-only download dir") {
        return;
    }
    let w = OnTmpfs::start(cluster, "disk-ro", "16m").await;
    w.tmpfs.remount("ro");
    let next = ModuleImage::module(&w.module, 900, "next");
    let digest = w.publish(&next).await;
    w.expect_store_failure("Read-only file system").await;

    // No renew, no timer due for an hour: the store failure is retried on its own.
    w.tmpfs.remount("rw");
    w.expect_recovery(&digest, &next).await;
}

#[tokio::test]
async fn a_full_download_dir_is_reported_cleaned_up_and_recovers_when_space_is_freed() {
    let cluster = require_cluster!();
    if !mounting_allowed("full download dir") {
        return;
    }
    let w = OnTmpfs::start(cluster, "disk-full", "2m").await;
    // 3 MiB of incompressible data: the download fits the limits, not the disk.
    let next = large_module(&w.module, 3 << 20);
    let digest = w.publish(&next).await;
    let message = w.expect_store_failure("No space left on device").await;
    assert!(message.len() < 1000, "one short line: {message:?}");
    // Retried with backoff, the same failure gives the same message: no new status write.
    let failures = |w: &OnTmpfs| {
        w.s.operator
            .log()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("No space left on device"))
            .count()
    };
    support::wait_for("three failed attempts", WAIT, || async {
        (failures(&w) >= 3).then_some(())
    })
    .await;
    assert_eq!(w.s.mpo(&w.module)["status"]["message"], message.as_str());
    let status_writes =
        w.s.operator
            .log()
            .lines()
            .filter(|l| l.contains("status patched") && l.contains("No space left on device"))
            .count();
    assert_eq!(status_writes, 1, "one status write for a repeated failure");
    // The half-written copy is removed, so the space is free again for the module loader.
    support::wait_for("the failed copy to be removed", WAIT, || async {
        staging_dirs(&w.s.module_dir(&w.module))
            .is_empty()
            .then_some(())
    })
    .await;
    let module_dir = w.s.module_dir(&w.module);
    assert_eq!(names_in(&module_dir), ["dev", "history", "versions"]);

    w.tmpfs.remount("size=16m");
    w.expect_recovery(&digest, &next).await;
}

#[tokio::test]
async fn a_read_only_loader_link_dir_fails_the_switch_and_recovers() {
    let cluster = require_cluster!();
    if !mounting_allowed("read-only modules/ dir") {
        return;
    }
    let w = OnTmpfs::start(cluster, "disk-links", "16m").await;
    // The unpack and the rename into versions/ succeed; only the loader link cannot be
    // written, late in the switch: `dev` must not move.
    let links = Mounted::read_only_bind(&w.s.operator.download_root().join("modules"));
    let next = ModuleImage::module(&w.module, 905, "next");
    let digest = w.publish(&next).await;
    w.expect_store_failure("Read-only file system").await;
    assert_eq!(
        names_in(links.path()),
        [format!("900-{}", w.module)],
        "the loader still finds the good version"
    );

    drop(links);
    w.expect_recovery(&digest, &next).await;
    assert_eq!(
        names_in(&w.s.operator.download_root().join("modules")),
        [format!("905-{}", w.module)],
        "the link follows the new weight"
    );
}
