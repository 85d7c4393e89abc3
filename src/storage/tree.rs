//! Helpers on a directory tree that never follow a symlink out of it.

use std::{
    ffi::OsString,
    fs::{self, FileType},
    io,
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
};

use super::StorageError;

/// Linux's own limit on symlinks followed while resolving one path.
const MAX_SYMLINK_HOPS: usize = 40;

/// Removes `path` and everything under it; a missing path is fine. Directories without write or
/// search permission (a module may ship `0555` dirs) are opened up first, as `rm -rf` would need.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match path.symlink_metadata() {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    make_dirs_writable(path)?;
    fs::remove_dir_all(path)
}

/// Top-down so that a locked directory is unlocked before we try to list it.
fn make_dirs_writable(top: &Path) -> io::Result<()> {
    let mut pending = vec![top.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mode = dir.symlink_metadata()?.permissions().mode();
        if mode & 0o700 != 0o700 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode | 0o700))?;
        }
        for child in fs::read_dir(&dir)? {
            let child = child?;
            if child.file_type()?.is_dir() {
                pending.push(child.path());
            }
        }
    }
    Ok(())
}

/// Every entry under `root` as (path relative to `root`, type), parents before children.
/// Iterative, because a hostile tree may be thousands of levels deep.
pub(crate) fn walk(root: &Path) -> Result<Vec<(PathBuf, FileType)>, StorageError> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let full = root.join(&dir);
        for child in fs::read_dir(&full).map_err(StorageError::write(&full))? {
            let child = child.map_err(StorageError::write(&full))?;
            let kind = child
                .file_type()
                .map_err(StorageError::write(child.path()))?;
            let rel = dir.join(child.file_name());
            if kind.is_dir() {
                pending.push(rel.clone());
            }
            found.push((rel, kind));
        }
    }
    // `pending` is a stack, so order is not yet parents-first across branches; sorting by path
    // puts every directory before its descendants.
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// `fsync` a directory so that renames and new names inside it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(StorageError::write(dir))
}

/// Whether the symlink at `link` (relative to `root`) with `target` resolves inside `root`.
///
/// Resolution is lexical, except that components which are symlinks already present under `root`
/// are replaced by their own targets, as the kernel would: `s -> .` makes `s/..` the parent of
/// the root. Components that do not exist (yet) are taken as plain names; the whole tree is
/// checked again before commit, so a symlink created later cannot turn an earlier one hostile.
pub(crate) fn symlink_stays_inside(
    root: &Path,
    link: &Path,
    target: &Path,
) -> Result<bool, StorageError> {
    let mut resolved: Vec<OsString> = normal_components(link.parent().unwrap_or(Path::new("")));
    let mut pending: Vec<OsString> = Vec::new();
    if !push_target(&mut pending, target) {
        return Ok(false);
    }
    let mut hops = 0;
    // `pending` holds the remaining components in reverse, so the next one is at the end.
    while let Some(component) = pending.pop() {
        if component == ".." {
            if resolved.pop().is_none() {
                return Ok(false);
            }
            continue;
        }
        let candidate: PathBuf = resolved.iter().chain([&component]).collect();
        let full = root.join(&candidate);
        match full.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                let next = fs::read_link(&full).map_err(StorageError::write(&full))?;
                if hops > MAX_SYMLINK_HOPS || !push_target(&mut pending, &next) {
                    return Ok(false);
                }
            }
            Ok(_) => resolved.push(component),
            Err(err) if err.kind() == io::ErrorKind::NotFound => resolved.push(component),
            // ENAMETOOLONG: the unpacker refuses names that long, so, like a missing one, this
            // is a plain name; asking the kernel cannot tell more.
            Err(err) if err.kind() == io::ErrorKind::InvalidFilename => resolved.push(component),
            // A regular file in the middle of the path: the kernel stops with ENOTDIR there,
            // nothing beyond it can be reached.
            Err(err) if err.kind() == io::ErrorKind::NotADirectory => return Ok(true),
            Err(err) => return Err(StorageError::write(&full)(err)),
        }
    }
    Ok(true)
}

/// Queues `target`'s components (reversed) for resolution; false if it is absolute.
fn push_target(pending: &mut Vec<OsString>, target: &Path) -> bool {
    let mut components = Vec::new();
    for component in target.components() {
        match component {
            Component::Normal(name) => components.push(name.to_os_string()),
            Component::ParentDir => components.push(OsString::from("..")),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    pending.extend(components.into_iter().rev());
    true
}

fn normal_components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_os_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_symlink_chains_like_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        symlink(".", root.join("self")).unwrap();
        symlink("a/b", root.join("deep")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();

        let inside = |link: &str, target: &str| {
            symlink_stays_inside(root, Path::new(link), Path::new(target)).unwrap()
        };
        assert!(inside("l", "a/b"));
        assert!(inside("a/b/l", "../.."));
        assert!(inside("l", "deep/../.."));
        assert!(inside("l", "missing/.."));
        assert!(!inside("l", ".."));
        assert!(!inside("a/l", "../../x"));
        assert!(!inside("l", "/etc"));
        assert!(!inside("l", "self/.."));
        assert!(!inside("l", "deep/../../.."));
        assert!(!inside("l", "loop1"));
    }

    #[test]
    fn removes_trees_with_locked_directories() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("t");
        fs::create_dir_all(top.join("locked/inner")).unwrap();
        fs::write(top.join("locked/inner/f"), b"x").unwrap();
        fs::set_permissions(top.join("locked/inner"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(top.join("locked"), fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        remove_tree(&top).unwrap();
    }

    #[test]
    fn walk_lists_parents_before_children() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        fs::write(dir.path().join("a/b/c/f"), b"").unwrap();
        fs::write(dir.path().join("z"), b"").unwrap();
        let names: Vec<PathBuf> = walk(dir.path()).unwrap().into_iter().map(|e| e.0).collect();
        let expected: Vec<PathBuf> = ["a", "a/b", "a/b/c", "a/b/c/f", "z"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(names, expected);
    }
}
