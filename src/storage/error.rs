//! The storage layer's one error type, and how the controller should treat each failure.

use std::{fmt, io, path::PathBuf};

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

/// Every message is one human line; entry paths are quoted with `{:?}` so that hostile names
/// (control characters, NUL) cannot forge the rest of the message.
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
    #[error("refused entry {path:?}: {reason}")]
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

    /// Our own disk failed: permissions, no space, read-only filesystem.
    #[error("cannot write {path:?}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl StorageError {
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Read { .. } | Self::Unsafe { .. } | Self::Limit { .. } => FailureClass::Download,
            Self::Invalid { .. } | Self::BadModuleName { .. } => FailureClass::InvalidModule,
            Self::Write { .. } => FailureClass::Store,
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

fn at_entry(entry: &Option<PathBuf>) -> String {
    entry
        .as_ref()
        .map(|path| format!(" at entry {path:?}"))
        .unwrap_or_default()
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
}
