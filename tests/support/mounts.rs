#![allow(dead_code)] // each test binary uses a different part of the harness
//! Real file-system trouble for the disk tests: a small tmpfs (which can fill up, or be
//! remounted read-only) and read-only bind mounts. Needs root with CAP_SYS_ADMIN; tests ask
//! [`can_mount`] first and say so when this machine does not allow it.
//!
//! Every mount is undone when its guard drops (lazily if something still uses it), so a failing
//! test does not leave mounts behind.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// One mount made by a test.
pub struct Mounted {
    path: PathBuf,
}

impl Mounted {
    /// A tmpfs of `size` (as `mount` takes it: `2m`, `512k`) on `dir`, created if missing.
    pub fn tmpfs(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let options = format!("size={size},mode=0755");
        run_mount(&["-t", "tmpfs", "-o", &options, "tmpfs"], dir);
        Self {
            path: dir.to_path_buf(),
        }
    }

    /// `dir` bound onto itself, read-only: what is there stays readable, nothing can change.
    pub fn read_only_bind(dir: &Path) -> Self {
        run_mount(&["--bind", &dir.display().to_string()], dir);
        let mounted = Self {
            path: dir.to_path_buf(),
        };
        mounted.remount("bind,ro");
        mounted
    }

    /// `mount -o remount,<options>` (e.g. `ro`, `rw`, `size=16m`, `bind,rw`).
    pub fn remount(&self, options: &str) {
        run_mount(&["-o", &format!("remount,{options}")], &self.path);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .arg(&self.path)
                .status()
                .is_ok_and(|s| s.success())
        };
        // Lazily when busy (the operator may still be inside), so the temp dir can go.
        if !quiet(&[]) && !quiet(&["--lazy"]) {
            eprintln!("warning: could not unmount {}", self.path.display());
        }
    }
}

/// Whether this process may mount (root with CAP_SYS_ADMIN, not a restricted container):
/// probed once with a tiny tmpfs.
pub fn can_mount() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        let Ok(dir) = tempfile::tempdir() else {
            return false;
        };
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if mounted {
            let _ = Command::new("umount").arg(dir.path()).status();
        }
        mounted
    })
}

fn run_mount(args: &[&str], target: &Path) {
    let out = Command::new("mount")
        .args(args)
        .arg(target)
        .output()
        .expect("mount runs");
    assert!(
        out.status.success(),
        "mount {} {} failed: {}",
        args.join(" "),
        target.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
