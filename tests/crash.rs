//! Crash consistency: the operator is killed with SIGKILL at pseudo-random moments while it
//! resolves, downloads, unpacks or switches a module in, and started again. After every kill
//! `dev` points at one complete version (byte for byte one of the two images), the restarted
//! operator sweeps what the dead one left behind, and the MPO ends Ready with the tag's digest.

mod support;

use std::{
    os::unix::fs::MetadataExt,
    time::{Duration, Instant},
};

use support::{
    crafted::{names_in, staging_dirs},
    images::{BuiltImage, ModuleImage, push_built},
    registry::RegistryKind,
    scenario::{REPO_PATH, Scenario, files_under, sorted},
    wait_for,
};

const WAIT: Duration = Duration::from_secs(90);
const TAG: &str = "dev";
const TRIALS: usize = 24;
/// Every fourth trial forces a fresh download of the digest already active, which replaces the
/// version directory in place (moved aside, renamed in): a different window to crash in.
const FORCE_EVERY: usize = 4;
/// Enough files that unpacking and fsyncing them takes a noticeable time.
const FILES: usize = 400;
const FILE_BYTES: usize = 8 << 10;

/// A deterministic pseudo-random sequence (splitmix64), so a failing trial can be replayed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Uniform enough in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64 {
        self.next() % (max + 1)
    }
}

/// A module of a few MiB in many small incompressible files; `marker` makes the two versions
/// differ in every file.
fn many_files_module(module: &str, marker: &str) -> ModuleImage {
    let mut random = SplitMix(marker.bytes().fold(7, |h, b| h * 31 + u64::from(b)));
    (0..FILES).fold(ModuleImage::module(module, 900, marker), |image, i| {
        image.file(
            &format!("files/{:02}/{i:04}.bin", i % 16),
            random.bytes(FILE_BYTES),
        )
    })
}

/// One of the two images the tag alternates between.
struct Version {
    built: BuiltImage,
    files: Vec<(String, Vec<u8>)>,
}

impl Version {
    fn new(module: &str, marker: &str) -> Self {
        let image = many_files_module(module, marker);
        Self {
            built: image.build().expect("build"),
            files: sorted(image.files()),
        }
    }

    fn hex(&self) -> &str {
        self.built.digest.trim_start_matches("sha256:")
    }
}

/// Where the operator was when the kill landed, told from the disk it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Moment {
    /// Nothing changed on disk: resolving, fetching the manifest, or not started yet.
    BeforeDownload,
    /// A staging directory existed: downloading, unpacking or sealing.
    DuringDownload,
    /// The new copy was renamed into `versions/` (or the old one set aside), `dev` not yet
    /// swapped.
    Unpacked,
    /// `dev` names the new copy: writing the status or done.
    AfterSwitch,
}

/// What a trial may change: the version `dev` names, and the inodes of that directory and of
/// the target version's directory (a same-digest download replaces them under the same name).
#[derive(Clone, Debug, PartialEq, Eq)]
struct DiskState {
    active: Option<String>,
    active_inode: Option<u64>,
    target_inode: Option<u64>,
}

struct Trial {
    force: bool,
    delay: Duration,
}

struct Crash {
    s: Scenario,
    module: String,
    versions: [Version; 2],
}

impl Crash {
    fn version_by_hex(&self, hex: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.hex() == hex)
    }

    async fn point_tag_at(&self, version: &Version) {
        push_built(
            &self.s.registry,
            &format!("{REPO_PATH}/{}", self.module),
            TAG,
            &version.built,
        )
        .await
        .expect("push");
    }

    /// Adds `annotation` once no renew annotation is left from an earlier pass (one that is
    /// still there would make the new one a no-op).
    async fn annotate(&self, annotation: &str) {
        wait_for("earlier renew annotations to be consumed", WAIT, || async {
            let annotations = self.s.mpo(&self.module)["metadata"]["annotations"].clone();
            (annotations.get("renew").is_none()
                && annotations.get("modules.deckhouse.io/renew").is_none())
            .then_some(())
        })
        .await;
        self.s
            .cluster
            .kubectl_ok(&["annotate", &format!("mop/{}", self.module), annotation]);
    }

    fn disk_state(&self, target: &Version) -> DiskState {
        let inode = |path: std::path::PathBuf| std::fs::metadata(path).ok().map(|m| m.ino());
        DiskState {
            active: self.s.active_hex(&self.module),
            active_inode: inode(self.s.module_dir(&self.module).join("dev")),
            target_inode: inode(self.s.version_dir(&self.module, &target.built.digest)),
        }
    }

    /// The state the kill left: `dev` must name a complete version whatever the moment was.
    fn inspect_after_kill(&self, before: &DiskState, target: &Version, trial: usize) -> Moment {
        let module_dir = self.s.module_dir(&self.module);
        let active = self
            .s
            .active_hex(&self.module)
            .unwrap_or_else(|| panic!("trial {trial}: no dev link after the kill"));
        let version = self
            .version_by_hex(&active)
            .unwrap_or_else(|| panic!("trial {trial}: dev names {active}, which is neither image"));
        let on_disk = files_under(&module_dir.join("dev/"));
        // A forced renew of the active digest may have been killed between moving the old copy
        // aside and renaming the new one in: then `dev` dangles until the startup sweep puts
        // the old copy back. Anything else must be complete.
        let set_aside = names_in(&module_dir)
            .iter()
            .any(|n| n.starts_with(".replaced-"));
        if !(on_disk.is_empty() && set_aside) {
            assert!(
                on_disk == version.files,
                "trial {trial}: dev -> {active} is not a complete copy of that image \
                 ({} of {} files)",
                on_disk.len(),
                version.files.len()
            );
        }
        let now = self.disk_state(target);
        let forced = before.active.as_deref() == Some(target.hex());
        if now.active.as_deref() == Some(target.hex()) && (!forced || now != *before) {
            Moment::AfterSwitch
        } else if set_aside || now.target_inode != before.target_inode {
            Moment::Unpacked
        } else if !staging_dirs(&module_dir).is_empty() {
            Moment::DuringDownload
        } else {
            Moment::BeforeDownload
        }
    }

    /// After a restart: the sweep removed the dead operator's leftovers, and the pass that
    /// follows brought the module in line with the tag.
    async fn assert_recovered(&self, tag_target: &Version, trial: usize) {
        let module_dir = self.s.module_dir(&self.module);
        self.s
            .wait_for_digest(&self.module, &tag_target.built.digest, WAIT)
            .await;
        let ready = &self.s.mpo(&self.module)["status"]["conditions"][0];
        assert_eq!(ready["status"], "True", "trial {trial}: Ready");
        assert_eq!(
            self.s.active_hex(&self.module).as_deref(),
            Some(tag_target.hex()),
            "trial {trial}: dev after recovery"
        );
        assert_eq!(
            files_under(&module_dir.join("dev/")),
            tag_target.files,
            "trial {trial}: files after recovery"
        );
        // The pass that ran after the restart may itself have been a download; once it
        // reported, its staging is gone too, so any left now is a leftover.
        wait_for(
            &format!("trial {trial}: no staging or set-aside copy left"),
            WAIT,
            || async {
                names_in(&module_dir)
                    .iter()
                    .all(|n| ["dev", "history", "versions"].contains(&n.as_str()))
                    .then_some(())
            },
        )
        .await;
        let links = names_in(&self.s.operator.download_root().join("modules"));
        assert_eq!(
            links,
            [format!("900-{}", self.module)],
            "trial {trial}: loader links (no temporary link left)"
        );
        let versions = names_in(&module_dir.join("versions"));
        assert!(
            versions.iter().all(|v| self.version_by_hex(v).is_some()),
            "trial {trial}: unexpected versions {versions:?}"
        );
    }
}

/// Measures one uninterrupted switch, from the annotation to `dev` moving (watched on disk
/// every few milliseconds: the status poll is too coarse), so that kill delays span the pass.
async fn time_one_switch(c: &Crash, to: &Version) -> Duration {
    c.point_tag_at(to).await;
    c.annotate("renew=").await;
    let started = Instant::now();
    while c.s.active_hex(&c.module).as_deref() != Some(to.hex()) {
        assert!(started.elapsed() < WAIT, "the first switch did not happen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pass = started.elapsed();
    c.s.wait_for_digest(&c.module, &to.built.digest, WAIT).await;
    pass
}

#[tokio::test]
async fn sigkill_at_any_moment_leaves_a_complete_version_and_recovers() {
    let cluster = require_cluster!();
    let s = Scenario::start(
        cluster,
        "crash",
        RegistryKind::Plain,
        &[],
        // One version kept: a switch back to a kept version is a rename, no download, and the
        // kills must also land in downloads (and in collections of the old version).
        &["--scan-module-sources=false", "--keep-versions", "1"],
    )
    .await;
    let module = format!("{}-m", s.id.0);
    let versions = [Version::new(&module, "a"), Version::new(&module, "b")];
    let mut c = Crash {
        s,
        module,
        versions,
    };
    c.point_tag_at(&c.versions[0]).await;
    // An hour: only the renew annotations start a pass, so each kill aims at a known pass.
    c.s.apply_mpo(&c.module, TAG, "1h");
    c.s.wait_for_digest(&c.module, &c.versions[0].built.digest, WAIT)
        .await;
    let pass = time_one_switch(&c, &c.versions[1]).await;
    // Twice the switch: about half the kills land in the download and unpack, the rest in the
    // switch, the status write or after (the pass time varies with the load of the machine).
    let max_delay = u64::try_from(pass.as_millis() * 2).unwrap_or(5000);
    eprintln!("one switch takes {pass:?}; kills within 0..={max_delay} ms");

    let mut random = SplitMix(0x5eed_c0de);
    let mut current = 1;
    let mut moments = std::collections::BTreeMap::<(bool, Moment), usize>::new();
    // Staging directories the dead operator left: only the startup sweep can remove them (a new
    // pass stages under a new random name), and assert_recovered finds none left.
    let mut left_by_kills = 0;
    let started = Instant::now();
    for trial in 0..TRIALS {
        let t = Trial {
            force: trial % FORCE_EVERY == FORCE_EVERY - 1,
            delay: Duration::from_millis(random.up_to(max_delay)),
        };
        if !t.force {
            current = 1 - current;
            c.point_tag_at(&c.versions[current]).await;
        }
        let target = &c.versions[current];
        let before = c.disk_state(target);
        let annotation = if t.force {
            "modules.deckhouse.io/renew=true"
        } else {
            "renew="
        };
        c.annotate(annotation).await;
        tokio::time::sleep(t.delay).await;
        c.s.operator.kill();
        let moment = c.inspect_after_kill(&before, target, trial);
        *moments.entry((t.force, moment)).or_default() += 1;
        left_by_kills += staging_dirs(&c.s.module_dir(&c.module)).len();
        eprintln!(
            "trial {trial}: {} killed after {:?}: {moment:?}",
            if t.force { "forced renew" } else { "switch" },
            t.delay
        );
        c.s.operator.restart();
        c.assert_recovered(&c.versions[current], trial).await;
    }
    eprintln!(
        "{TRIALS} kills in {:?}; (forced, moment) -> count: {moments:?}; \
         {left_by_kills} staging directories left by kills, all swept",
        started.elapsed()
    );
    let switches_during_download = moments
        .get(&(false, Moment::DuringDownload))
        .copied()
        .unwrap_or(0);
    assert!(
        switches_during_download > 0,
        "no kill landed during a download; the delays do not cover the pass: {moments:?}"
    );
}
