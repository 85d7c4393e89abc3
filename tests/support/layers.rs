#![allow(dead_code)] // each user (test binary, unit tests, bench, example) takes a different part
//! The one builder of tar layers for the tests, the unit tests (src/storage/testkit.rs), the
//! benchmarks and the demo's `examples/push-module.rs`: well-formed entries through `tar`, and
//! hostile ones byte for byte (names `tar` refuses to write, PAX records, GNU long names).
//!
//! Output is deterministic: every header has mtime [`MTIME`], uid/gid 0 and owner `root`, and
//! gzip writes no name or timestamp. [`LayerWriter`] streams into any writer (the benchmarks write
//! gigabytes to a file); [`TarLayer`] is the in-memory, chainable form the tests use.
//!
//! Only `tar`, `flate2` and std: this file is also compiled into the library's unit tests.

use std::io::{self, Read, Write};

use flate2::{Compression, GzBuilder};
use tar::{EntryType, Header};

/// mtime of every entry (2024-01-01T00:00:00Z), so that builds are reproducible.
pub const MTIME: u64 = 1_704_067_200;
pub const FILE_MODE: u32 = 0o644;
pub const DIR_MODE: u32 = 0o755;
const SYMLINK_MODE: u32 = 0o777;

/// A header of `kind` and `mode` with the fixed metadata, size 0, checksum set.
pub fn header(kind: EntryType, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    // "root" always fits the 32-byte owner fields.
    let _ = header.set_username("root");
    let _ = header.set_groupname("root");
    header.set_mtime(MTIME);
    header.set_size(0);
    header.set_cksum();
    header
}

/// One entry of a hand-made tar, written without `tar`'s path checks (which refuse `..` and
/// absolute paths): for hostile layers.
#[derive(Clone, Debug)]
pub struct RawTarEntry {
    /// Raw name bytes: at most 100 in a ustar field, any length with [`TarLayer::pax_entry`].
    pub name: Vec<u8>,
    pub kind: EntryType,
    /// Link target for symlinks and hard links.
    pub link: Vec<u8>,
    pub mode: u32,
    pub data: Vec<u8>,
}

impl RawTarEntry {
    pub fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Self {
        Self::new(name, EntryType::Regular, "", data)
    }

    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Self::new(name, EntryType::Symlink, target, "")
    }

    pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Self::new(name, EntryType::Link, target, "")
    }

    pub fn new(
        name: impl AsRef<[u8]>,
        kind: EntryType,
        link: impl AsRef<[u8]>,
        data: impl AsRef<[u8]>,
    ) -> Self {
        Self {
            name: name.as_ref().to_vec(),
            kind,
            link: link.as_ref().to_vec(),
            mode: FILE_MODE,
            data: data.as_ref().to_vec(),
        }
    }

    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
}

/// A tar stream written entry by entry into `W`.
pub struct LayerWriter<W: Write> {
    builder: tar::Builder<W>,
}

impl<W: Write> LayerWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            builder: tar::Builder::new(out),
        }
    }

    /// A regular file of `size` bytes read from `data`.
    pub fn file(&mut self, path: &str, mode: u32, size: u64, data: impl Read) -> io::Result<()> {
        let mut header = header(EntryType::Regular, mode);
        header.set_size(size);
        self.builder.append_data(&mut header, path, data)
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let mut header = header(EntryType::Directory, mode);
        self.builder.append_data(&mut header, path, io::empty())
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let mut header = header(EntryType::Symlink, SYMLINK_MODE);
        self.builder.append_link(&mut header, path, target)
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let mut header = header(EntryType::Link, FILE_MODE);
        self.builder.append_link(&mut header, path, target)
    }

    /// `entry` with its name and link target in the ustar fields (at most 100 bytes each).
    pub fn raw(&mut self, entry: &RawTarEntry) -> io::Result<()> {
        let mut header = header(entry.kind, entry.mode);
        header.set_size(entry.data.len() as u64);
        set_field(&mut header.as_old_mut().name, &entry.name)?;
        set_field(&mut header.as_old_mut().linkname, &entry.link)?;
        header.set_cksum();
        self.builder.append(&header, entry.data.as_slice())
    }

    /// `entry` behind a PAX extended header whose `path` (and `linkpath`, for links) hold its
    /// name and target, of any length and with any byte; the ustar fields hold a placeholder a
    /// reader must ignore.
    pub fn pax(&mut self, entry: &RawTarEntry) -> io::Result<()> {
        let mut records = pax_record("path", &entry.name);
        if !entry.link.is_empty() {
            records.extend(pax_record("linkpath", &entry.link));
        }
        let mut pax = header(EntryType::XHeader, FILE_MODE);
        pax.set_size(records.len() as u64);
        set_field(&mut pax.as_old_mut().name, b"PaxHeaders/entry")?;
        pax.set_cksum();
        self.builder.append(&pax, records.as_slice())?;
        let placeholder = RawTarEntry {
            name: b"pax-placeholder".to_vec(),
            link: if entry.link.is_empty() {
                Vec::new()
            } else {
                b"pax-placeholder-target".to_vec()
            },
            ..entry.clone()
        };
        self.raw(&placeholder)
    }

    /// A GNU long-name record followed by a regular file, so that the name can hold any byte.
    pub fn long_named_file(&mut self, name: &[u8], data: &[u8]) -> io::Result<()> {
        let mut long = header(EntryType::GNULongName, FILE_MODE);
        set_field(&mut long.as_old_mut().name, b"././@LongLink")?;
        long.set_size(name.len() as u64 + 1);
        long.set_cksum();
        let mut record = name.to_vec();
        record.push(0);
        self.builder.append(&long, &record[..])?;
        self.raw(&RawTarEntry::file("placeholder", data))
    }

    /// Any header (odd types, hand-set fields) with its data as is.
    pub fn header_with_data(&mut self, header: &Header, data: &[u8]) -> io::Result<()> {
        self.builder.append(header, data)
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(self) -> io::Result<W> {
        self.builder.into_inner()
    }
}

/// The in-memory, chainable layer of the tests. Writing into a `Vec` cannot fail, so the only
/// panics are misuse (a name too long for a ustar field).
pub struct TarLayer {
    writer: LayerWriter<Vec<u8>>,
}

impl Default for TarLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl TarLayer {
    pub fn new() -> Self {
        Self {
            writer: LayerWriter::new(Vec::new()),
        }
    }

    fn with(mut self, add: impl FnOnce(&mut LayerWriter<Vec<u8>>) -> io::Result<()>) -> Self {
        if let Err(err) = add(&mut self.writer) {
            panic!("building a test layer: {err}");
        }
        self
    }

    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_mode(path, data, FILE_MODE)
    }

    pub fn file_mode(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.with(|w| w.file(path, mode, data.len() as u64, data))
    }

    pub fn dir(self, path: &str) -> Self {
        self.dir_mode(path, DIR_MODE)
    }

    pub fn dir_mode(self, path: &str, mode: u32) -> Self {
        self.with(|w| w.dir(path, mode))
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.with(|w| w.symlink(path, target))
    }

    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.with(|w| w.hardlink(path, target))
    }

    /// An entry written byte for byte, for names `tar::Builder` refuses to write.
    pub fn raw(self, name: &[u8], kind: EntryType, link: &[u8], data: &[u8]) -> Self {
        self.entry(&RawTarEntry::new(name, kind, link, data))
    }

    pub fn entry(self, entry: &RawTarEntry) -> Self {
        self.with(|w| w.raw(entry))
    }

    pub fn pax_entry(self, entry: &RawTarEntry) -> Self {
        self.with(|w| w.pax(entry))
    }

    pub fn long_named_file(self, name: &[u8], data: &[u8]) -> Self {
        self.with(|w| w.long_named_file(name, data))
    }

    pub fn header_with_data(self, header: &Header, data: &[u8]) -> Self {
        self.with(|w| w.header_with_data(header, data))
    }

    pub fn tar(self) -> Vec<u8> {
        match self.writer.finish() {
            Ok(bytes) => bytes,
            Err(err) => panic!("finishing a test layer: {err}"),
        }
    }

    /// Gzip at the fast level: tests push tens of MiB of incompressible data on 2 cores.
    pub fn gzip(self) -> Vec<u8> {
        gzip(&self.tar(), Compression::fast())
    }

    /// Gzip at the best ratio (for bombs).
    pub fn gzip_best(self) -> Vec<u8> {
        gzip(&self.tar(), Compression::best())
    }

    /// zstd at its default level (3), with a checksum, as `zstd` and `podman push
    /// --compression-format zstd` write it.
    pub fn zstd(self) -> Vec<u8> {
        zstd(&self.tar(), 3)
    }
}

/// One zstd frame of `bytes` with a content checksum.
pub fn zstd(bytes: &[u8], level: i32) -> Vec<u8> {
    let encoded = zstd::stream::Encoder::new(Vec::new(), level).and_then(|mut encoder| {
        encoder.include_checksum(true)?;
        encoder.write_all(bytes)?;
        encoder.finish()
    });
    match encoded {
        Ok(frame) => frame,
        Err(err) => panic!("zstd into memory: {err}"),
    }
}

/// Gzip without a name or timestamp.
pub fn gzip(bytes: &[u8], level: Compression) -> Vec<u8> {
    let mut encoder = gzip_writer(Vec::new(), level);
    let written = encoder.write_all(bytes).and_then(|()| encoder.finish());
    match written {
        Ok(gz) => gz,
        Err(err) => panic!("gzip into memory: {err}"),
    }
}

/// A streaming gzip encoder with the fixed header (no name, mtime 0).
pub fn gzip_writer<W: Write>(out: W, level: Compression) -> flate2::write::GzEncoder<W> {
    GzBuilder::new().mtime(0).write(out, level)
}

/// One PAX record, `<len> <key>=<value>\n`, where `<len>` counts the whole record itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

fn set_field(field: &mut [u8], value: &[u8]) -> io::Result<()> {
    if value.len() > field.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} bytes do not fit a {}-byte tar field; use a PAX entry",
                value.len(),
                field.len()
            ),
        ));
    }
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
    Ok(())
}
