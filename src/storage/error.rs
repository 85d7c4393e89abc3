//! The storage layer's one error type, and how the controller should treat each failure.

use std::{
    fmt, io,
    path::{Path, PathBuf},
};

/// Which status message (SPEC §5) a storage failure belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// `cannot download <ref>@<digest>: <cause>`: the image content is bad or the stream broke.
    Download,
    /// `invalid module <name>@<digest>: <cause>`: unpacked fine, but not a usable module.
    InvalidModule,
    /// `cannot store module <name>: <cause>`: our own disk refused (full, read-only, permissions).
    Store,
}

/// Which configured limit an image exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// Sum of the sizes of all entries' data, across layers.
    UnpackedBytes,
    /// Number of tar entries, across layers.
    Entries,
    /// Bytes tar buffers in memory for one entry's headers (PAX records, GNU long names).
    HeaderBytes,
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnpackedBytes => "unpacked size exceeds the limit of",
            Self::Entries => "number of entries exceeds the limit of",
            Self::HeaderBytes => "tar header data of one entry exceeds",
        })
    }
}

/// Every message is one short human line; entry paths are quoted with `{:?}` so that hostile
/// names (control characters, NUL) cannot forge the rest of the message, and shortened (see
/// [`Quoted`]) so that a 4 KiB name cannot bloat it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The layer stream itself failed: corrupt or truncated gzip/tar, or an error from the reader
    /// (such as its digest or size check), whose message is kept.
    #[error("cannot read the layer{}: {source}", at_entry(.entry))]
    Read {
        entry: Option<PathBuf>,
        source: io::Error,
    },

    /// An entry that could escape the module directory or is not allowed in a module.
    #[error("refused entry {}: {reason}", Quoted(.path))]
    Unsafe { path: PathBuf, reason: String },

    /// The image is bigger than a configured limit.
    #[error("{kind} {limit}{}{}", unit(*.kind), at_entry(.entry))]
    Limit {
        kind: LimitKind,
        limit: u64,
        entry: Option<PathBuf>,
    },

    /// The unpacked tree is not a valid module (SPEC §7); `file` is relative to the module root.
    #[error("{file}: {cause}")]
    Invalid { file: String, cause: String },

    /// The module name cannot be used as a directory name in the store.
    #[error("module name {name:?} {reason}")]
    BadModuleName { name: String, reason: &'static str },

    /// Our own disk failed: permissions, no space, read-only filesystem. The path is shown with
    /// the random suffix of work entries (`.staging-<hex>-<random>`) cut, so that the same failure
    /// repeated gives the same message (no new status write or Event per retry).
    #[error("cannot write {}: {source}", Quoted(&stable_path(.path)))]
    Write { path: PathBuf, source: io::Error },

    /// The store's commit gate closed (the writer lost the right to write) before the switch.
    #[error("the commit was cancelled before the switch")]
    Cancelled,
}

impl StorageError {
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Read { .. } | Self::Unsafe { .. } | Self::Limit { .. } => FailureClass::Download,
            Self::Invalid { .. } | Self::BadModuleName { .. } => FailureClass::InvalidModule,
            Self::Write { .. } | Self::Cancelled => FailureClass::Store,
        }
    }

    /// A failure of the layer stream as a whole, e.g. the blocking task that read it died.
    pub fn read(source: io::Error) -> Self {
        Self::Read {
            entry: None,
            source,
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Write { path, source }
    }

    pub(crate) fn unsafe_entry(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Unsafe {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(file: impl Into<String>, cause: impl fmt::Display) -> Self {
        // serde_yaml and io messages may span lines; the status message must stay on one.
        let cause = cause
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Self::Invalid {
            file: file.into(),
            cause,
        }
    }
}

/// Prefixes of the store's work entries, whose names end in `-<16 hex digits>` of randomness.
const WORK_PREFIXES: &[&str] = &[".staging-", ".replaced-", ".dev-tmp-", ".tmp-"];

/// `path` with the random suffix of any work entry in it removed.
fn stable_path(path: &Path) -> PathBuf {
    path.components()
        .map(|component| {
            let name = component.as_os_str();
            match name.to_str() {
                Some(text) if WORK_PREFIXES.iter().any(|p| text.starts_with(p)) => {
                    match text.rsplit_once('-') {
                        Some((stem, random))
                            if random.len() == 16
                                && random.bytes().all(|b| b.is_ascii_hexdigit()) =>
                        {
                            std::ffi::OsString::from(stem)
                        }
                        _ => name.to_owned(),
                    }
                }
                _ => name.to_owned(),
            }
        })
        .collect()
}

fn at_entry(entry: &Option<PathBuf>) -> String {
    entry
        .as_ref()
        .map(|path| format!(" at entry {}", Quoted(path)))
        .unwrap_or_default()
}

/// Quoted paths longer than this many characters are cut in the middle. The message becomes
/// `status.message` and an Event, whose message the API server caps at 1024 bytes.
const MAX_QUOTED_CHARS: usize = 160;
/// How much of the end of a long path is kept: the file name tells the most.
const QUOTED_TAIL_CHARS: usize = 48;

/// `{path:?}`, or for a long path its start and end around `…`, followed by its length.
struct Quoted<'a>(&'a Path);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted = format!("{:?}", self.0);
        let chars = quoted.chars().count();
        if chars <= MAX_QUOTED_CHARS {
            return f.write_str(&quoted);
        }
        let head: String = quoted
            .chars()
            .take(MAX_QUOTED_CHARS - QUOTED_TAIL_CHARS)
            .collect();
        let tail: String = quoted.chars().skip(chars - QUOTED_TAIL_CHARS).collect();
        let bytes = self.0.as_os_str().len();
        write!(f, "{head}…{tail} ({bytes} bytes)")
    }
}

fn unit(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::Entries => "",
        LimitKind::UnpackedBytes | LimitKind::HeaderBytes => " bytes",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_quote_paths() {
        let refused = StorageError::unsafe_entry("../x", "path leaves the module root");
        assert_eq!(
            refused.to_string(),
            r#"refused entry "../x": path leaves the module root"#
        );
        assert_eq!(refused.class(), FailureClass::Download);

        let hostile = StorageError::unsafe_entry("a\nb", "x");
        assert!(!hostile.to_string().contains('\n'));

        let limit = StorageError::Limit {
            kind: LimitKind::Entries,
            limit: 3,
            entry: Some("d/f".into()),
        };
        assert_eq!(
            limit.to_string(),
            r#"number of entries exceeds the limit of 3 at entry "d/f""#
        );

        let invalid = StorageError::invalid("module.yaml", "bad\n  yaml");
        assert_eq!(invalid.to_string(), "module.yaml: bad yaml");
        assert_eq!(invalid.class(), FailureClass::InvalidModule);

        let read = StorageError::read(io::Error::other("digest mismatch"));
        assert_eq!(read.to_string(), "cannot read the layer: digest mismatch");

        let write = StorageError::write("/d")(io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(write.class(), FailureClass::Store);
        assert!(write.to_string().starts_with(r#"cannot write "/d": "#));
    }

    #[test]
    fn the_same_disk_failure_gives_the_same_message_whatever_the_staging_name() {
        let full = |random: &str| {
            let path = format!("/d/echo/.staging-abcd-{random}/files/x");
            StorageError::write(path)(io::Error::from(io::ErrorKind::StorageFull)).to_string()
        };
        assert_eq!(full("0123456789abcdef"), full("fedcba9876543210"));
        assert!(full("0123456789abcdef").contains(r#""/d/echo/.staging-abcd/files/x""#));
        // Names that only look alike are kept.
        assert_eq!(
            stable_path(Path::new("/d/.staging-x/files/.tmp-notrandom")),
            Path::new("/d/.staging-x/files/.tmp-notrandom")
        );
    }

    /// Found by tests/hostile.rs: a 4 KiB entry name made a 4 KiB `status.message`, and the
    /// Event carrying it was rejected by the API server (at most 1024 bytes).
    #[test]
    fn long_paths_are_shortened_in_messages() {
        let long = format!("{}file.yaml", "dir/".repeat(1024));
        let refused = StorageError::unsafe_entry(&long, "path is longer than 4096 bytes");
        let message = refused.to_string();
        assert!(message.len() < 300, "{} bytes: {message}", message.len());
        assert!(
            message.starts_with(r#"refused entry "dir/dir/"#),
            "{message}"
        );
        assert!(
            message.contains(r#"dir/file.yaml" (4105 bytes): path is longer than 4096 bytes"#),
            "{message}"
        );
        let write = StorageError::write(&long)(io::Error::from(io::ErrorKind::StorageFull));
        assert!(write.to_string().len() < 300, "{write}");
        let limit = StorageError::Limit {
            kind: LimitKind::Entries,
            limit: 3,
            entry: Some(long.into()),
        };
        assert!(limit.to_string().len() < 300, "{limit}");
        // Short ones stay exactly as `{:?}` shows them.
        let short = StorageError::unsafe_entry("a\nb", "x");
        assert_eq!(short.to_string(), r#"refused entry "a\nb": x"#);
    }
}
