//! What an unpacked tree holds, and what changed between two of them. Pure functions on
//! snapshots, so that the comparison is unit-tested without a registry.

use std::{
    collections::BTreeMap,
    io::Read,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::CliError;
use crate::storage;

/// One entry of an unpacked image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Relative to the image root, `/`-separated, without a trailing slash.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Permission bits in octal, e.g. `0644`.
    pub mode: String,
    /// Bytes of a file; 0 otherwise.
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Of a file's content, when asked for (diff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

impl Entry {
    /// The path as `tar -t` shows it: directories end in `/`.
    pub fn display_path(&self) -> String {
        match self.kind {
            Kind::Dir => format!("{}/", self.path),
            _ => self.path.clone(),
        }
    }
}

/// Every entry under `root`, sorted by path; with `hash`, files carry their SHA-256.
pub fn snapshot(root: &Path, hash: bool) -> Result<Vec<Entry>, CliError> {
    let mut entries = Vec::new();
    for (rel, kind) in storage::list_tree(root)? {
        let full = root.join(&rel);
        let meta = full.symlink_metadata().map_err(read_error(&full))?;
        let kind = if kind.is_dir() {
            Kind::Dir
        } else if kind.is_symlink() {
            Kind::Symlink
        } else {
            Kind::File
        };
        let target = match kind {
            Kind::Symlink => Some(
                std::fs::read_link(&full)
                    .map_err(read_error(&full))?
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => None,
        };
        let sha256 = match (kind, hash) {
            (Kind::File, true) => Some(file_sha256(&full)?),
            _ => None,
        };
        entries.push(Entry {
            path: rel.to_string_lossy().into_owned(),
            kind,
            mode: format!("{:04o}", meta.permissions().mode() & 0o7777),
            size: if kind == Kind::File { meta.size() } else { 0 },
            target,
            sha256,
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

fn file_sha256(path: &Path) -> Result<String, CliError> {
    let mut file = std::fs::File::open(path).map_err(read_error(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(read_error(path))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |cause| CliError::ReadFile {
        path: path.to_owned(),
        cause,
    }
}

/// One difference between tree A and tree B.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub change: ChangeKind,
    pub path: String,
    /// For `changed`: what changed, e.g. `content (120 → 98 bytes)`, `mode 0644 → 0755`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

/// Entries only in `b` (added), only in `a` (removed), and in both but different, by path.
pub fn compare(a: &[Entry], b: &[Entry]) -> Vec<Change> {
    let before: BTreeMap<&str, &Entry> = a.iter().map(|e| (e.path.as_str(), e)).collect();
    let after: BTreeMap<&str, &Entry> = b.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut paths: Vec<&str> = before.keys().chain(after.keys()).copied().collect();
    paths.sort_unstable();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|path| match (before.get(path), after.get(path)) {
            (None, Some(new)) => Some(change(ChangeKind::Added, new, String::new())),
            (Some(old), None) => Some(change(ChangeKind::Removed, old, String::new())),
            (Some(old), Some(new)) => {
                let details = differences(old, new);
                (!details.is_empty()).then(|| change(ChangeKind::Changed, new, details.join(", ")))
            }
            (None, None) => None,
        })
        .collect()
}

fn change(kind: ChangeKind, entry: &Entry, detail: String) -> Change {
    Change {
        change: kind,
        path: entry.display_path(),
        detail,
    }
}

fn differences(old: &Entry, new: &Entry) -> Vec<String> {
    if old.kind != new.kind {
        return vec![format!("type {:?} → {:?}", old.kind, new.kind).to_lowercase()];
    }
    let mut details = Vec::new();
    if old.sha256 != new.sha256 || old.size != new.size {
        details.push(if old.size == new.size {
            "content".to_owned()
        } else {
            format!("content ({} → {} bytes)", old.size, new.size)
        });
    }
    if old.target != new.target {
        details.push(format!(
            "target {} → {}",
            old.target.as_deref().unwrap_or(""),
            new.target.as_deref().unwrap_or("")
        ));
    }
    if old.mode != new.mode {
        details.push(format!("mode {} → {}", old.mode, new.mode));
    }
    details
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str, mode: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File,
            mode: mode.into(),
            size: content.len() as u64,
            target: None,
            sha256: Some(hex::encode(Sha256::digest(content))),
        }
    }

    fn link(path: &str, target: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::Symlink,
            mode: "0777".into(),
            size: 0,
            target: Some(target.into()),
            sha256: None,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::Dir,
            mode: "0755".into(),
            size: 0,
            target: None,
            sha256: None,
        }
    }

    #[test]
    fn reports_added_removed_and_changed_in_path_order() {
        let a = [
            file("a.txt", "one", "0644"),
            dir("gone"),
            file("same", "x", "0644"),
            link("l", "a.txt"),
        ];
        let b = [
            file("a.txt", "two!", "0644"),
            link("l", "same"),
            dir("new"),
            file("same", "x", "0644"),
        ];
        let changes = compare(&a, &b);
        let summary: Vec<(ChangeKind, &str, &str)> = changes
            .iter()
            .map(|c| (c.change, c.path.as_str(), c.detail.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (ChangeKind::Changed, "a.txt", "content (3 → 4 bytes)"),
                (ChangeKind::Removed, "gone/", ""),
                (ChangeKind::Changed, "l", "target a.txt → same"),
                (ChangeKind::Added, "new/", ""),
            ]
        );
    }

    #[test]
    fn same_size_content_mode_and_type_changes_are_named() {
        let a = [file("f", "abc", "0644"), file("t", "x", "0644")];
        let b = [file("f", "abd", "0755"), link("t", "f")];
        let details: Vec<String> = compare(&a, &b).into_iter().map(|c| c.detail).collect();
        assert_eq!(
            details,
            ["content, mode 0644 → 0755", "type file → symlink"]
        );
    }

    #[test]
    fn identical_trees_have_no_changes() {
        let a = [dir("d"), file("d/f", "x", "0600")];
        assert!(compare(&a, &a).is_empty());
    }

    #[test]
    fn snapshots_list_types_modes_and_targets() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("d")).expect("dir");
        std::fs::write(root.path().join("d/f"), "hello").expect("file");
        std::os::unix::fs::symlink("d/f", root.path().join("l")).expect("link");
        let entries = snapshot(root.path(), true).expect("snapshot");
        let paths: Vec<String> = entries.iter().map(Entry::display_path).collect();
        assert_eq!(paths, ["d/", "d/f", "l"]);
        assert_eq!(entries[1].size, 5);
        assert_eq!(
            entries[1].sha256.as_deref(),
            Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        assert_eq!(entries[2].target.as_deref(), Some("d/f"));
    }
}
