//! The layer stream: decompressed (gzip or zstd) on a thread of its own, tar's header reads
//! capped, the compressed stream's end checked, the raw stream drained to EOF so that a
//! verifying reader can give its verdict.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    mpsc,
};

use flate2::read::MultiGzDecoder;

use super::*;

pub(super) fn open_archive<R: Read>(reader: R, budget: &HeaderBudget) -> Archive<Metered<R>> {
    let mut archive = Archive::new(Metered {
        inner: reader,
        budget: budget.clone(),
    });
    archive.set_ignore_zeros(false);
    archive
}

/// How a compressed layer is decoded.
#[derive(Clone, Copy, Debug)]
pub(super) enum Codec {
    Gzip,
    Zstd,
}

/// A zstd frame may ask for a window this large at most (the zstd default limit, 128 MiB): the
/// decoder's memory is bounded by it, and a frame asking for more is refused, not obeyed.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Decompressed chunks in flight between the decompressing thread and the unpacker: the most the
/// inflater runs ahead, so memory stays bounded (and a gzip bomb stops with the unpacker).
const DECODED_CHUNKS_IN_FLIGHT: usize = 4;

/// Runs `unpack` on the decompressed stream while another thread decompresses it, so that
/// inflating overlaps with creating files (as `gzip -d | tar -x` does with two processes; on a
/// module of small files this is what kept us slower than `curl | tar -xzf -`). Then the raw
/// stream's verdict is combined as [`finish`] does.
///
/// The decompressing thread stops as soon as the unpacker drops the stream. It then drains the raw
/// stream to EOF (for the verifying reader's verdict) unless the unpacker refused the layer:
/// a refused layer need not be downloaded to its end.
pub(super) fn decompress_on_a_thread<R: Read + Send>(
    raw: R,
    codec: Codec,
    unpack: impl FnOnce(&mut Decoded) -> Result<LayerStats, StorageError>,
) -> Result<LayerStats, StorageError> {
    let (chunks, received) = mpsc::sync_channel(DECODED_CHUNKS_IN_FLIGHT);
    let verdict_wanted = AtomicBool::new(true);
    std::thread::scope(|scope| {
        let wanted = &verdict_wanted;
        // The sender moves into the thread: its end is the unpacker's EOF.
        let inflater = scope.spawn(move || decompress(raw, codec, chunks, wanted));
        let mut decoded = Decoded {
            chunks: received,
            chunk: Vec::new(),
            at: 0,
        };
        let outcome = unpack(&mut decoded);
        let wanted = matches!(outcome, Ok(_) | Err(StorageError::Read { .. }));
        verdict_wanted.store(wanted, Ordering::SeqCst);
        // Hanging up is the signal: the inflater's next send fails and it stops inflating.
        drop(decoded);
        let verdict = inflater
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the decompressing thread panicked")));
        combine(outcome, verdict)
    })
}

/// The decompressing thread, with the decoder `codec` names.
fn decompress<R: Read>(
    raw: R,
    codec: Codec,
    chunks: mpsc::SyncSender<io::Result<Vec<u8>>>,
    verdict_wanted: &AtomicBool,
) -> io::Result<()> {
    match codec {
        // Multi-member gzip is valid gzip (eStargz, `pigz --independent` and concatenated
        // members), and Go-based tools (containerd) accept it.
        Codec::Gzip => {
            let mut decoder = MultiGzDecoder::new(raw);
            if pump(&mut decoder, chunks, verdict_wanted) {
                drain_to_eof(decoder.into_inner())?;
            }
            Ok(())
        }
        // The zstd decoder reads every frame, as `zstd -d` does (a stream may hold several).
        Codec::Zstd => {
            let mut decoder = match zstd_decoder(raw) {
                Ok(decoder) => decoder,
                Err(err) => {
                    let _ = chunks.send(Err(err));
                    return Ok(());
                }
            };
            if pump(&mut decoder, chunks, verdict_wanted) {
                drain_to_eof(decoder.finish())?;
            }
            Ok(())
        }
    }
}

fn zstd_decoder<R: Read>(
    raw: R,
) -> io::Result<zstd::stream::read::Decoder<'static, io::BufReader<R>>> {
    let mut decoder = zstd::stream::read::Decoder::new(raw)?;
    decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
    Ok(decoder)
}

/// Sends the decoded stream in chunks until its end, an error, or the unpacker hanging up.
/// Whether the raw stream should then be drained for the verifying reader's verdict: not when
/// the unpacker refused the layer (it need not be downloaded to its end).
fn pump(
    decoder: &mut impl Read,
    chunks: mpsc::SyncSender<io::Result<Vec<u8>>>,
    verdict_wanted: &AtomicBool,
) -> bool {
    loop {
        let mut chunk = vec![0; COPY_BUFFER_BYTES];
        let sent = match read_retrying(decoder, &mut chunk) {
            Ok(0) => break,
            Ok(read) => {
                chunk.truncate(read);
                chunks.send(Ok(chunk))
            }
            Err(err) => {
                // The unpacker reports it; the raw verdict may explain it better.
                let _ = chunks.send(Err(err));
                break;
            }
        };
        if sent.is_err() {
            return verdict_wanted.load(Ordering::SeqCst);
        }
    }
    // Hanging up is the unpacker's EOF.
    drop(chunks);
    true
}

fn read_retrying(from: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        match from.read(buffer) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// The decompressed layer, chunk by chunk from the decompressing thread; EOF when it hangs up.
pub(super) struct Decoded {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Ok(Err(err)) => return Err(err),
                Err(mpsc::RecvError) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The unpacker's outcome and the raw stream's verdict, as [`finish`] combines them.
fn combine(
    outcome: Result<LayerStats, StorageError>,
    verdict: io::Result<()>,
) -> Result<LayerStats, StorageError> {
    match (outcome, verdict) {
        (Ok(_) | Err(StorageError::Read { .. }), Err(source)) => Err(StorageError::Read {
            entry: None,
            source,
        }),
        (outcome, _) => outcome,
    }
}

/// After the entries: drain the raw stream so its reader can deliver its verdict at EOF. When
/// the stream was unreadable, that verdict (say, a digest mismatch) explains more than a gzip
/// or tar complaint does, so it wins.
pub(super) fn finish(
    outcome: Result<LayerStats, StorageError>,
    raw: impl Read,
) -> Result<LayerStats, StorageError> {
    match outcome {
        Ok(stats) => {
            drain_to_eof(raw).map_err(|source| StorageError::Read {
                entry: None,
                source,
            })?;
            Ok(stats)
        }
        Err(err @ StorageError::Read { .. }) => match drain_to_eof(raw) {
            Err(source) => Err(StorageError::Read {
                entry: None,
                source,
            }),
            Ok(()) => Err(err),
        },
        Err(err) => Err(err),
    }
}

/// Lets the decoder reach the end of its stream (gzip's CRC and size trailer, zstd's frame
/// checksum), past the zero blocks that usually follow the tar end-of-archive marker. Junk
/// beyond a bound is left to the raw drain instead of decompressed.
pub(super) fn check_trailer(decoder: &mut impl Read) -> Result<(), StorageError> {
    io::copy(&mut decoder.take(MAX_TRAILER_BYTES), &mut io::sink())
        .map(|_| ())
        .map_err(|source| StorageError::Read {
            entry: None,
            source,
        })
}

pub(super) fn drain_to_eof(mut raw: impl Read) -> io::Result<()> {
    let mut buffer = vec![0; COPY_BUFFER_BYTES];
    loop {
        match raw.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

pub(super) fn stream_error(err: io::Error) -> StorageError {
    if err
        .get_ref()
        .is_some_and(|inner| inner.is::<HeaderTooLarge>())
    {
        return StorageError::Limit {
            kind: LimitKind::HeaderBytes,
            limit: MAX_HEADER_BYTES,
            entry: None,
        };
    }
    StorageError::Read {
        entry: None,
        source: err,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("tar header data exceeds {MAX_HEADER_BYTES} bytes")]
pub(super) struct HeaderTooLarge;

/// How much tar may still read by itself; `None` while we read entry data ourselves.
#[derive(Clone, Default)]
pub(super) struct HeaderBudget(Rc<Cell<Option<u64>>>);

impl HeaderBudget {
    pub(super) fn restrict(&self, bytes: u64) {
        self.0.set(Some(bytes));
    }

    pub(super) fn lift(&self) {
        self.0.set(None);
    }
}

/// The decompressed tar stream, capped by [`HeaderBudget`] so that a huge PAX record or GNU long
/// name (which tar buffers whole) fails instead of filling memory.
pub(super) struct Metered<R> {
    pub(super) inner: R,
    budget: HeaderBudget,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.budget.0.get() else {
            return self.inner.read(buf);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        if left == 0 {
            return Err(io::Error::other(HeaderTooLarge));
        }
        let allowed = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..allowed])?;
        self.budget.0.set(Some(left - read as u64));
        Ok(read)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::{fs, io::Write as _};

    use super::super::test_support::*;
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn stops_a_gzip_bomb_early() {
        let fixture = Fixture::with_limits(Limits {
            max_unpacked_bytes: 1 << 20,
            ..Limits::default()
        });
        let bomb = TarLayer::new().file("zeros", &vec![0; 50 << 20]).gzip();
        let mut reader = Counting {
            inner: &bomb[..],
            consumed: 0,
        };
        let mut staging = fixture.stage(MODULE, &Digest::of(b"bomb"));
        let err = staging
            .apply_layer(&mut reader, LayerCompression::Gzip)
            .unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Limit {
                    kind: LimitKind::UnpackedBytes,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            reader.consumed < bomb.len() as u64 / 4,
            "read {} of {}",
            reader.consumed,
            bomb.len()
        );
        assert!(
            !staging.path().join("zeros").exists(),
            "nothing of the bomb was written"
        );

        // The same size split into files that each look harmless stops at the limit too.
        let mut layer = TarLayer::new();
        for index in 0..50 {
            layer = layer.file(&format!("part{index}"), &vec![0; 1 << 20]);
        }
        let err = fixture
            .unpack(MODULE, &[layer.tar()])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains(r#"at entry "part1""#), "{err}");
    }

    #[test]
    fn caps_header_data_tar_would_buffer() {
        let mut pax = header(EntryType::XHeader, 0o644);
        pax.set_path("PaxHeaders/f").unwrap();
        let record = {
            let value = "v".repeat(2 << 20);
            let body = format!(" comment={value}\n");
            format!("{}{body}", body.len() + (body.len() + 8).to_string().len())
        };
        pax.set_size(record.len() as u64);
        pax.set_cksum();
        let layer = TarLayer::new()
            .header_with_data(&pax, record.as_bytes())
            .file("f", b"x")
            .tar();
        let err = limit_error(Limits::default(), &[layer]);
        assert!(
            matches!(
                err,
                StorageError::Limit {
                    kind: LimitKind::HeaderBytes,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn broken_streams_are_read_errors() {
        let fixture = Fixture::new();
        let gz = sample_layer().gzip();
        let truncated = &gz[..gz.len() / 2];
        let mut staging = fixture.stage(MODULE, &Digest::of(b"t"));
        let err = staging
            .apply_layer(truncated, LayerCompression::Gzip)
            .unwrap_err();
        assert!(matches!(err, StorageError::Read { .. }), "{err:?}");
        assert_eq!(err.class(), FailureClass::Download);
        drop(staging);

        let mut garbage = gz.clone();
        garbage[gz.len() / 3..gz.len() / 3 + 64].fill(0x55);
        let err = fixture
            .stage(MODULE, &Digest::of(b"g"))
            .apply_layer(&garbage[..], LayerCompression::Gzip)
            .unwrap_err();
        assert!(matches!(err, StorageError::Read { .. }), "{err:?}");

        let err = fixture
            .stage(MODULE, &Digest::of(b"n"))
            .apply_layer(&b"not gzip"[..], LayerCompression::Gzip)
            .unwrap_err();
        assert!(matches!(err, StorageError::Read { .. }), "{err:?}");

        let tar = TarLayer::new().file("f", &[7; 5000]).tar();
        let err = fixture
            .stage(MODULE, &Digest::of(b"p"))
            .apply_layer(&tar[..2000], LayerCompression::None)
            .unwrap_err();
        assert!(
            matches!(err, StorageError::Read { entry: Some(_), .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(r#"at entry "f""#), "{err}");
        assert!(fixture.module_dir_names(MODULE).is_empty());
    }

    #[test]
    fn reads_to_eof_so_the_reader_can_report_a_mismatch() {
        let fixture = Fixture::new();
        for (bytes, compression) in [
            (sample_layer().tar(), LayerCompression::None),
            (sample_layer().gzip(), LayerCompression::Gzip),
        ] {
            // Padding after the end-of-archive marker must be read too.
            let mut reader = FailAtEof {
                bytes: &bytes,
                consumed: 0,
            };
            let err = fixture
                .stage(MODULE, &Digest::of(b"m"))
                .apply_layer(&mut reader, compression)
                .unwrap_err();
            assert_eq!(reader.consumed, bytes.len());
            assert!(matches!(err, StorageError::Read { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                "cannot read the layer: blob digest mismatch: expected sha256:aa, got sha256:bb"
            );
        }
        // When the content is corrupt too, the reader's verdict still wins over gzip's complaint.
        let mut corrupt = sample_layer().gzip();
        let middle = corrupt.len() / 2;
        corrupt[middle..middle + 64].fill(0);
        let err = fixture
            .stage(MODULE, &Digest::of(b"c"))
            .apply_layer(
                FailAtEof {
                    bytes: &corrupt,
                    consumed: 0,
                },
                LayerCompression::Gzip,
            )
            .unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
    }

    #[test]
    fn accepts_multi_member_gzip() {
        let fixture = Fixture::new();
        let tar = TarLayer::new()
            .file("a", b"first half")
            .file("b", b"second half")
            .tar();
        let mut joined = gzip(&tar[..1024]);
        joined.extend(gzip(&tar[1024..]));
        let mut staging = fixture.stage(MODULE, &Digest::of(b"mm"));
        staging
            .apply_layer(&joined[..], LayerCompression::Gzip)
            .unwrap();
        assert_eq!(fs::read(staging.path().join("b")).unwrap(), b"second half");
    }

    fn zstd(bytes: &[u8]) -> Vec<u8> {
        crate::storage::testkit::zstd(bytes, 3)
    }

    #[test]
    fn unpacks_zstd_of_one_frame_or_several() {
        let fixture = Fixture::new();
        let mut staging = fixture.stage(MODULE, &Digest::of(b"z"));
        staging
            .apply_layer(&sample_layer().zstd()[..], LayerCompression::Zstd)
            .unwrap();
        assert_sample_unpacked(staging.path());

        let tar = TarLayer::new()
            .file("a", b"first frame")
            .file("b", b"second frame")
            .tar();
        let mut frames = zstd(&tar[..1024]);
        frames.extend(zstd(&tar[1024..]));
        let mut staging = fixture.stage(MODULE, &Digest::of(b"zz"));
        staging
            .apply_layer(&frames[..], LayerCompression::Zstd)
            .unwrap();
        assert_eq!(fs::read(staging.path().join("b")).unwrap(), b"second frame");
    }

    #[test]
    fn broken_zstd_is_a_read_error_and_a_zstd_bomb_stops_early() {
        let fixture = Fixture::new();
        let frame = sample_layer().zstd();
        for broken in [
            frame[..frame.len() / 2].to_vec(),
            b"not zstd at all".to_vec(),
            {
                // The content checksum at the end of the frame no longer matches.
                let mut flipped = frame.clone();
                let last = flipped.len() - 1;
                flipped[last] ^= 0xff;
                flipped
            },
        ] {
            let err = fixture
                .stage(MODULE, &Digest::of(b"b"))
                .apply_layer(&broken[..], LayerCompression::Zstd)
                .unwrap_err();
            assert!(matches!(err, StorageError::Read { .. }), "{err:?}");
            assert_eq!(err.class(), FailureClass::Download);
        }

        let fixture = Fixture::with_limits(Limits {
            max_unpacked_bytes: 1 << 20,
            ..Limits::default()
        });
        // 64 MiB of zeros in a few KiB: the whole bomb is read at once, so what matters is that
        // the unpacker stops at the limit and writes nothing of it.
        let bomb = crate::storage::testkit::zstd(
            &TarLayer::new().file("zeros", &vec![0; 64 << 20]).tar(),
            3,
        );
        let mut staging = fixture.stage(MODULE, &Digest::of(b"zb"));
        let err = staging
            .apply_layer(&bomb[..], LayerCompression::Zstd)
            .unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Limit {
                    kind: LimitKind::UnpackedBytes,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!staging.path().join("zeros").exists());
    }

    #[test]
    fn a_zstd_window_past_the_limit_is_refused() {
        // Level 22 --ultra with a 256 MiB window (window log 28): a decoder obeying it could need
        // that much memory per layer.
        let tar = TarLayer::new().file("f", b"x").tar();
        let frame = {
            let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
            encoder.window_log(28).unwrap();
            encoder.write_all(&tar).unwrap();
            encoder.finish().unwrap()
        };
        let err = Fixture::new()
            .stage(MODULE, &Digest::of(b"w"))
            .apply_layer(&frame[..], LayerCompression::Zstd)
            .unwrap_err();
        assert!(matches!(err, StorageError::Read { .. }), "{err:?}");
    }
}
