// Test-only module: included from storage/mod.rs under #[cfg(test)].
//! Property test of the unpacker over arbitrary, hostile-leaning tar streams (Hardening item 7).
//!
//! Each case builds 1–3 layers as raw tar bytes (names with `..`, absolute paths, paths into a
//! canary directory next to the store, symlink chains, hard links, whiteouts, duplicates, long
//! names in ustar, GNU and PAX form, odd entry types), maybe gzips them, maybe truncates or
//! corrupts them, applies them to a [`Staging`] and checks that:
//! - nothing outside the staging directory changes (a canary directory beside the store root
//!   stays empty, a canary module inside the root keeps its one file, no other names appear);
//! - a failure is never blamed on our own disk (the disk is fine here), and dropping the staging
//!   removes it;
//! - when every layer applies, validation refuses any symlink that the kernel resolves outside
//!   the tree, hard links share inodes only inside it, and commit either switches in a tree with
//!   the same properties or fails leaving no staging behind.
//!
//! Panics anywhere fail the case. The default is proptest's 256 cases (a few seconds); for a
//! longer hunt: `PROPTEST_CASES=20000 cargo test --lib storage::proptests` (about 4 minutes on
//! 2 cores). Failures are saved in `proptest-regressions/storage/proptests.txt` and replayed
//! first on every run; keep that file in git.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use proptest::{collection::vec, prelude::*, sample::Index};
use tar::{EntryType, Header};
use tempfile::TempDir;

use super::{
    LayerCompression, Limits, ModuleStore, Staging, StorageError,
    testkit::{gzip, header, pax_record},
    tree,
};
use crate::digest::Digest;

const MODULE: &str = "m";
const CANARY_MODULE: &str = "canary";
const CANARY_DATA: &[u8] = b"must not change";

/// Few distinct names, so that entries collide, replace, hide and link to each other.
const WORDS: &[&str] = &[
    "a",
    "b",
    "c",
    ".wh.a",
    ".wh.b",
    ".wh..wh..opq",
    ".wh..wh.plnk",
    "module.yaml",
    "openapi",
    "values.yaml",
];
/// Names each refused on their own; rare, so that most cases get past the first layer.
const HOSTILE_WORDS: &[&str] = &[".", "..", "", ".wh.", ".wh..", "back\\slash", "n\0ul"];

/// Name lengths around the ustar field (100) and NAME_MAX (255).
const LONG_NAMES: &[usize] = &[99, 100, 101, 155, 255, 256];
/// Depths of `d/d/…` around PATH_MAX (4096 bytes of name).
const DEPTHS: &[usize] = &[3, 60, 2047, 2049];

/// Entry type bytes the unpacker must refuse or tolerate: devices, fifo, contiguous, PAX global,
/// sparse, volume label, unknown, old-style regular, and stray PAX / GNU long-name records.
const ODD_TYPES: &[u8] = b"3467gSVZ\0xLK";

#[derive(Clone, Debug)]
enum Part {
    Word(&'static str),
    Long(usize),
    Deep(usize),
}

/// How a path starts: relative, `./`, `/`, climbing into the canary, or absolute into the
/// canary or the store root (filled in per case, since the temp dir is only known then).
#[derive(Clone, Debug)]
enum Lead {
    None,
    Dot,
    Slash,
    Climb,
    OutsideAbs,
    RootAbs,
}

#[derive(Clone, Debug)]
struct PathSpec {
    lead: Lead,
    parts: Vec<Part>,
    trailing_slash: bool,
}

#[derive(Clone, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir,
    DirWithData(Vec<u8>),
    Symlink(PathSpec),
    Hardlink(LinkTo),
    Odd(u8, Vec<u8>),
}

/// A hard link's target: mostly a file written earlier (so that the link is made), else any path.
#[derive(Clone, Debug)]
enum LinkTo {
    Earlier(Index),
    Path(PathSpec),
}

/// Where the entry's name (and link target) goes: the 100-byte header fields (cut to fit),
/// GNU long-name records, or a PAX extended header.
#[derive(Clone, Copy, Debug)]
enum Encoding {
    Ustar,
    Gnu,
    Pax,
}

#[derive(Clone, Debug)]
struct EntrySpec {
    name: PathSpec,
    kind: Kind,
    mode: u32,
    encoding: Encoding,
}

#[derive(Clone, Debug)]
enum Damage {
    None,
    Truncate(Index),
    Flip(Index, u8),
    Garbage(Vec<u8>),
}

#[derive(Clone, Debug)]
struct LayerSpec {
    entries: Vec<EntrySpec>,
    gzip: bool,
    damage: Damage,
}

/// A component of an entry name: mostly plain names, rarely a refused or extreme one.
fn name_part() -> impl Strategy<Value = Part> {
    prop_oneof![
        40 => prop::sample::select(WORDS).prop_map(Part::Word),
        1 => prop::sample::select(HOSTILE_WORDS).prop_map(Part::Word),
        1 => prop::sample::select(LONG_NAMES).prop_map(Part::Long),
        1 => prop::sample::select(DEPTHS).prop_map(Part::Deep),
    ]
}

/// A component of a symlink target, where `..` and `.` are legitimate and common.
fn target_part() -> impl Strategy<Value = Part> {
    prop_oneof![
        12 => prop::sample::select(WORDS).prop_map(Part::Word),
        3 => Just(Part::Word("..")),
        1 => Just(Part::Word(".")),
        1 => prop::sample::select(HOSTILE_WORDS).prop_map(Part::Word),
        1 => prop::sample::select(LONG_NAMES).prop_map(Part::Long),
    ]
}

/// How a path starts; `plain` weighs the harmless relative start against the others.
fn lead(plain: u32) -> impl Strategy<Value = Lead> {
    prop_oneof![
        plain => Just(Lead::None),
        plain / 5 + 1 => Just(Lead::Dot),
        1 => Just(Lead::Slash),
        1 => Just(Lead::Climb),
        1 => Just(Lead::OutsideAbs),
        1 => Just(Lead::RootAbs),
    ]
}

fn name_spec() -> impl Strategy<Value = PathSpec> {
    (
        lead(120),
        vec(name_part(), 1..4),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(lead, parts, trailing_slash)| PathSpec {
            lead,
            parts,
            trailing_slash,
        })
}

fn target_spec() -> impl Strategy<Value = PathSpec> {
    (
        lead(40),
        vec(target_part(), 1..5),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(lead, parts, trailing_slash)| PathSpec {
            lead,
            parts,
            trailing_slash,
        })
}

fn link_to() -> impl Strategy<Value = LinkTo> {
    prop_oneof![
        4 => any::<Index>().prop_map(LinkTo::Earlier),
        1 => name_spec().prop_map(LinkTo::Path),
    ]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..40),
        1 => Just(b"name: m\nweight: 7\n".to_vec()),
        1 => Just(b"type: object\n".to_vec()),
        1 => Just(b"- not a mapping\n".to_vec()),
        1 => Just(vec![b'z'; 70_000]),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        20 => data().prop_map(Kind::File),
        8 => Just(Kind::Dir),
        1 => data().prop_map(Kind::DirWithData),
        16 => target_spec().prop_map(Kind::Symlink),
        8 => link_to().prop_map(Kind::Hardlink),
        1 => (prop::sample::select(ODD_TYPES), vec(any::<u8>(), 0..40))
            .prop_map(|(byte, data)| Kind::Odd(byte, data)),
    ]
}

fn mode() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => Just(0o644),
        1 => Just(0o755),
        1 => Just(0o555),
        1 => Just(0o4755),
        1 => any::<u32>().prop_map(|mode| mode & 0o7777),
    ]
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![
        3 => Just(Encoding::Ustar),
        1 => Just(Encoding::Gnu),
        1 => Just(Encoding::Pax),
    ]
}

fn entry() -> impl Strategy<Value = EntrySpec> {
    (name_spec(), kind(), mode(), encoding()).prop_map(|(name, kind, mode, encoding)| EntrySpec {
        name,
        kind,
        mode,
        encoding,
    })
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        24 => Just(Damage::None),
        1 => any::<Index>().prop_map(Damage::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Damage::Flip(at, byte)),
        1 => vec(any::<u8>(), 1..600).prop_map(Damage::Garbage),
    ]
}

fn layer() -> impl Strategy<Value = LayerSpec> {
    (vec(entry(), 0..10), any::<bool>(), damage()).prop_map(|(entries, gzip, damage)| LayerSpec {
        entries,
        gzip,
        damage,
    })
}

/// The store, its surroundings and the canaries of one case.
struct World {
    dir: TempDir,
    store: ModuleStore,
    outside: PathBuf,
    canary_file: PathBuf,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let root = dir.path().join("root");
        let canary_file = root.join(CANARY_MODULE).join("file");
        fs::create_dir_all(canary_file.parent().unwrap()).unwrap();
        fs::write(&canary_file, CANARY_DATA).unwrap();
        let store = ModuleStore::new(root, Limits::default());
        Self {
            dir,
            store,
            outside,
            canary_file,
        }
    }

    fn module_dir(&self) -> PathBuf {
        self.store.root().join(MODULE)
    }

    /// Everything but `<root>/<module>` is exactly as created; `<root>/<module>` holds only
    /// `allowed` names.
    fn assert_untouched_except(&self, allowed: &[&str]) {
        assert_eq!(
            names_in(&self.outside),
            BTreeSet::new(),
            "canary dir written"
        );
        assert_eq!(names_in(self.dir.path()), set(&["outside", "root"]));
        let root_names = names_in(self.store.root());
        let expected_root = set(&[CANARY_MODULE, MODULE, "modules"]);
        assert!(root_names.is_subset(&expected_root), "{root_names:?}");
        assert_eq!(names_in(self.canary_file.parent().unwrap()), set(&["file"]));
        let meta = self.canary_file.symlink_metadata().unwrap();
        assert!(meta.is_file() && meta.nlink() == 1, "canary file linked");
        assert_eq!(fs::read(&self.canary_file).unwrap(), CANARY_DATA);
        let module_names = names_in(&self.module_dir());
        let unexpected: Vec<_> = module_names
            .iter()
            .filter(|name| !allowed.contains(&name.as_str()))
            .collect();
        assert!(unexpected.is_empty(), "unexpected {unexpected:?}");
    }

    fn assert_no_staging_left(&self) {
        let left: Vec<_> = names_in(&self.module_dir())
            .into_iter()
            .filter(|name| name.starts_with(super::STAGING_PREFIX))
            .collect();
        assert!(left.is_empty(), "staging left behind: {left:?}");
    }

    fn render(&self, path: &PathSpec) -> Vec<u8> {
        let mut out = match path.lead {
            Lead::None => Vec::new(),
            Lead::Dot => b"./".to_vec(),
            Lead::Slash => b"/".to_vec(),
            // staging is <tmp>/root/m/.staging-*: three levels up is <tmp>.
            Lead::Climb => b"../../../outside/".to_vec(),
            Lead::OutsideAbs => absolute_dir(&self.outside),
            Lead::RootAbs => absolute_dir(self.store.root()),
        };
        let parts: Vec<Vec<u8>> = path.parts.iter().map(render_part).collect();
        out.extend(parts.join(&b'/'));
        if path.trailing_slash {
            out.push(b'/');
        }
        out
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // A committed module may hold 0555 or 0000 directories, which TempDir cannot remove.
        let _ = tree::remove_tree(self.dir.path());
    }
}

fn render_part(part: &Part) -> Vec<u8> {
    match part {
        Part::Word(word) => word.as_bytes().to_vec(),
        Part::Long(len) => vec![b'x'; *len],
        Part::Deep(depth) => vec![b"d".as_slice(); *depth].join(&b'/'),
    }
}

fn absolute_dir(path: &Path) -> Vec<u8> {
    format!("{}/", path.display()).into_bytes()
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(listing) => listing
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

/// The layer as bytes, with its damage, and how to read it. `files` collects the names of
/// regular files written so far, across layers, as hard link targets.
fn layer_bytes(
    world: &World,
    spec: &LayerSpec,
    files: &mut Vec<Vec<u8>>,
) -> (Vec<u8>, LayerCompression) {
    let mut tar = Vec::new();
    for entry in &spec.entries {
        append_entry(&mut tar, world, entry, files);
    }
    tar.extend_from_slice(&[0; 1024]);
    let (mut bytes, compression) = if spec.gzip {
        (gzip(&tar), LayerCompression::Gzip)
    } else {
        (tar, LayerCompression::None)
    };
    match &spec.damage {
        Damage::None => {}
        Damage::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        Damage::Flip(at, byte) => {
            let at = at.index(bytes.len());
            bytes[at] ^= byte | 1;
        }
        Damage::Garbage(garbage) => bytes.extend_from_slice(garbage),
    }
    (bytes, compression)
}

fn append_entry(tar: &mut Vec<u8>, world: &World, entry: &EntrySpec, files: &mut Vec<Vec<u8>>) {
    let name = world.render(&entry.name);
    let (type_byte, link, data) = match &entry.kind {
        Kind::File(data) => {
            if !is_whiteout(&name) {
                files.push(name.clone());
            }
            (b'0', Vec::new(), data.clone())
        }
        Kind::Dir => (b'5', Vec::new(), Vec::new()),
        Kind::DirWithData(data) => (b'5', Vec::new(), data.clone()),
        Kind::Symlink(target) => (b'2', world.render(target), Vec::new()),
        Kind::Hardlink(LinkTo::Earlier(at)) if !files.is_empty() => {
            (b'1', files[at.index(files.len())].clone(), Vec::new())
        }
        // Nothing to link to yet: a file then, so that later links have a target.
        Kind::Hardlink(LinkTo::Earlier(_)) => {
            files.push(name.clone());
            (b'0', Vec::new(), Vec::new())
        }
        Kind::Hardlink(LinkTo::Path(target)) => (b'1', world.render(target), Vec::new()),
        Kind::Odd(byte, data) => (*byte, Vec::new(), data.clone()),
    };
    match entry.encoding {
        Encoding::Ustar => {}
        Encoding::Gnu => {
            if name.len() > 100 {
                append_record(tar, b'L', &nul_terminated(&name));
            }
            if link.len() > 100 {
                append_record(tar, b'K', &nul_terminated(&link));
            }
        }
        Encoding::Pax => {
            let mut records = pax_record("path", &name);
            if !link.is_empty() {
                records.extend(pax_record("linkpath", &link));
            }
            append_record(tar, b'x', &records);
        }
    }
    let mut head = header(EntryType::new(type_byte), entry.mode);
    copy_cut(&mut head.as_old_mut().name, &name);
    copy_cut(&mut head.as_old_mut().linkname, &link);
    head.set_size(data.len() as u64);
    head.set_cksum();
    append_raw(tar, &head, &data);
}

fn is_whiteout(name: &[u8]) -> bool {
    let base = name.rsplit(|byte| *byte == b'/').next().unwrap_or(name);
    base.starts_with(b".wh.")
}

/// A header-only record (GNU long name/link, PAX) carrying `data`.
fn append_record(tar: &mut Vec<u8>, type_byte: u8, data: &[u8]) {
    let mut head = header(EntryType::new(type_byte), 0o644);
    copy_cut(&mut head.as_old_mut().name, b"././@LongLink");
    head.set_size(data.len() as u64);
    head.set_cksum();
    append_raw(tar, &head, data);
}

fn append_raw(tar: &mut Vec<u8>, head: &Header, data: &[u8]) {
    tar.extend_from_slice(head.as_bytes());
    tar.extend_from_slice(data);
    let padding = (512 - data.len() % 512) % 512;
    tar.resize(tar.len() + padding, 0);
}

fn copy_cut(field: &mut [u8], value: &[u8]) {
    let len = value.len().min(field.len());
    field.fill(0);
    field[..len].copy_from_slice(&value[..len]);
}

fn nul_terminated(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out.push(0);
    out
}

/// Symlinks under `top` that the kernel resolves, at any prefix of their target, to a place
/// outside `top`. Independent of the unpacker's own (lexical) check: it asks `realpath`.
fn escaping_symlinks(top: &Path) -> Vec<(PathBuf, PathBuf)> {
    let top = fs::canonicalize(top).unwrap();
    let mut escaping = Vec::new();
    for (rel, kind) in tree::walk(&top).unwrap() {
        if !kind.is_symlink() {
            continue;
        }
        let target = fs::read_link(top.join(&rel)).unwrap();
        let mut probe = top.join(rel.parent().unwrap_or(Path::new("")));
        for component in target.components() {
            probe.push(component);
            match fs::canonicalize(&probe) {
                Ok(resolved) if !resolved.starts_with(&top) => {
                    escaping.push((rel.clone(), target.clone()));
                    break;
                }
                Ok(_) => {}
                // Dangling, a loop, or through a file: the kernel gets no further.
                Err(_) => break,
            }
        }
    }
    escaping
}

/// Regular files and directories and symlinks only; every inode of a file is named only
/// inside `top` (its link count equals the names found here).
fn assert_tree_is_self_contained(top: &Path) {
    let mut names_per_inode: HashMap<u64, u64> = HashMap::new();
    let mut nlinks: HashMap<u64, u64> = HashMap::new();
    for (rel, kind) in tree::walk(top).unwrap() {
        assert!(
            kind.is_dir() || kind.is_file() || kind.is_symlink(),
            "{rel:?} is {kind:?}"
        );
        if kind.is_file() {
            let meta = top.join(&rel).symlink_metadata().unwrap();
            *names_per_inode.entry(meta.ino()).or_default() += 1;
            nlinks.insert(meta.ino(), meta.nlink());
        }
    }
    for (inode, names) in names_per_inode {
        assert_eq!(nlinks[&inode], names, "inode {inode} has names outside");
    }
}

fn assert_no_special_bits(top: &Path) {
    for (rel, kind) in tree::walk(top).unwrap() {
        if kind.is_symlink() {
            continue;
        }
        let mode = top
            .join(&rel)
            .symlink_metadata()
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0, "{rel:?} has mode {mode:o}");
    }
}

/// The disk is healthy in these tests, so every failure is the image's fault.
fn assert_blames_the_image(err: &StorageError) {
    if let StorageError::Write { path, source } = err {
        // Hostile paths can be 4 KiB long; the end says what went wrong.
        let path = path.to_string_lossy();
        let tail = &path[path.floor_char_boundary(path.len().saturating_sub(120))..];
        panic!("a bad image reported as our disk failing: {source} at …{tail}");
    }
}

/// Applies the layers in order; `None` when one failed (after checking the failure's cleanup).
fn apply_all(world: &World, staging: &mut Staging, layers: &[LayerSpec]) -> Option<()> {
    let staging_name = staging.path().file_name().unwrap().to_string_lossy();
    let staging_name = staging_name.into_owned();
    let mut files = Vec::new();
    for spec in layers {
        let (bytes, compression) = layer_bytes(world, spec, &mut files);
        let outcome = staging.apply_layer(&bytes[..], compression);
        world.assert_untouched_except(&[&staging_name]);
        if let Err(err) = outcome {
            assert_blames_the_image(&err);
            return None;
        }
    }
    Some(())
}

fn check_case(layers: &[LayerSpec]) {
    let world = World::new();
    let mut staging = world.store.stage(MODULE, &Digest::of(b"case")).unwrap();
    if apply_all(&world, &mut staging, layers).is_none() {
        drop(staging);
        world.assert_no_staging_left();
        world.assert_untouched_except(&[]);
        return;
    }
    assert_tree_is_self_contained(staging.path());
    let escaping = escaping_symlinks(staging.path());
    match staging.validate(MODULE) {
        Ok(info) => {
            assert!(escaping.is_empty(), "validate accepted {escaping:?}");
            check_commit(&world, staging, &info);
        }
        Err(err) => {
            assert_blames_the_image(&err);
            drop(staging);
            world.assert_no_staging_left();
            world.assert_untouched_except(&[]);
        }
    }
}

fn check_commit(world: &World, staging: Staging, info: &super::ModuleInfo) {
    match staging.commit(info) {
        Ok(installed) => {
            world.assert_untouched_except(&[super::VERSIONS, super::DEV, "history"]);
            assert!(world.store.is_active(MODULE, &installed.digest));
            let escaping = escaping_symlinks(&installed.path);
            assert!(escaping.is_empty(), "committed {escaping:?}");
            assert_tree_is_self_contained(&installed.path);
            assert_no_special_bits(&installed.path);
        }
        Err(err) => {
            assert_blames_the_image(&err);
            world.assert_no_staging_left();
            world.assert_untouched_except(&[]);
        }
    }
}

proptest! {
    #[test]
    fn hostile_layers_stay_inside_the_staging_directory(layers in vec(layer(), 1..=3)) {
        check_case(&layers);
    }
}
