//! The body of a layer as a stream that fails unless its bytes match the manifest's size and
//! digest, and that holds the registry host's request slot until the body is done.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::OwnedSemaphorePermit;

use super::RegistryError;
use crate::Digest;

pub(super) struct Verified<S> {
    inner: S,
    expected_digest: Digest,
    expected_size: u64,
    seen: u64,
    hasher: Sha256,
    /// Named in the message when the connection stalls, so the user sees which setting fired.
    read_timeout: Duration,
    /// Released as soon as the body ends or fails, even if the reader is kept around.
    permit: Option<OwnedSemaphorePermit>,
    done: bool,
}

impl<S> Verified<S> {
    pub(super) fn new(
        inner: S,
        expected_digest: Digest,
        expected_size: u64,
        read_timeout: Duration,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            inner,
            expected_digest,
            expected_size,
            seen: 0,
            hasher: Sha256::new(),
            read_timeout,
            permit,
            done: false,
        }
    }

    fn finish(&mut self, outcome: Option<io::Result<Bytes>>) -> Poll<Option<io::Result<Bytes>>> {
        self.done = true;
        self.permit = None;
        Poll::Ready(outcome)
    }

    fn on_chunk(&mut self, chunk: Bytes) -> Poll<Option<io::Result<Bytes>>> {
        self.seen += chunk.len() as u64;
        if self.seen > self.expected_size {
            let err = size_error(self.expected_size, self.seen, "more than");
            return self.finish(Some(Err(err)));
        }
        self.hasher.update(&chunk);
        Poll::Ready(Some(Ok(chunk)))
    }

    fn on_end(&mut self) -> Poll<Option<io::Result<Bytes>>> {
        if self.seen < self.expected_size {
            let err = size_error(self.expected_size, self.seen, "only");
            return self.finish(Some(Err(err)));
        }
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if actual != self.expected_digest.hex() {
            let err = io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "digest mismatch: the manifest says {}, the bytes are sha256:{actual}",
                    self.expected_digest
                ),
            );
            return self.finish(Some(Err(err)));
        }
        self.finish(None)
    }
}

impl<S> Stream for Verified<S>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => this.on_chunk(chunk),
            Poll::Ready(Some(Err(err))) => {
                let err = broken_body(&err, this.read_timeout);
                this.finish(Some(Err(err)))
            }
            Poll::Ready(None) => this.on_end(),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The connection failed mid-body. The `RegistryError` inside says so (and that it is transient)
/// to whoever looks behind the unpacker's `io::Error` (see [`RegistryError::in_io_error`]).
fn broken_body(err: &reqwest::Error, read_timeout: Duration) -> io::Error {
    if err.is_timeout() {
        let cause = RegistryError::Request {
            message: format!(
                "timed out: no data from the registry for {}",
                humantime::format_duration(read_timeout)
            ),
            transient: true,
            retry_after: None,
        };
        return io::Error::new(io::ErrorKind::TimedOut, cause);
    }
    io::Error::other(RegistryError::transport(err))
}

fn size_error(expected: u64, seen: u64, how: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "blob size mismatch: the manifest says {expected} bytes, the registry sent {how} {seen}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn verified(
        chunks: &[&'static [u8]],
        digest_of: &[u8],
        size: u64,
    ) -> Verified<impl Stream<Item = reqwest::Result<Bytes>> + Unpin> {
        let chunks: Vec<reqwest::Result<Bytes>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Verified::new(
            futures::stream::iter(chunks),
            Digest::of(digest_of),
            size,
            Duration::from_secs(1),
            None,
        )
    }

    #[tokio::test]
    async fn only_the_exact_bytes_pass() {
        let exact = verified(&[b"ab", b"c"], b"abc", 3)
            .try_collect::<Vec<_>>()
            .await;
        assert_eq!(exact.expect("exact").concat(), b"abc");

        let short = verified(&[b"abc"], b"abc", 4).try_collect::<Vec<_>>().await;
        assert!(short.expect_err("short").to_string().contains("only 3"));
        let long = verified(&[b"abc"], b"abc", 2).try_collect::<Vec<_>>().await;
        assert!(long.expect_err("long").to_string().contains("more than"));
        let other = verified(&[b"abd"], b"abc", 3).try_collect::<Vec<_>>().await;
        assert!(
            other
                .expect_err("corrupt")
                .to_string()
                .contains("digest mismatch")
        );
    }

    #[tokio::test]
    async fn the_host_slot_is_released_at_the_end_of_the_body() {
        let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let permit = semaphore.clone().try_acquire_owned().expect("permit");
        let chunks = vec![Ok(Bytes::from_static(b"abc"))];
        let mut body = Verified::new(
            futures::stream::iter(chunks),
            Digest::of(b"abc"),
            3,
            Duration::from_secs(1),
            Some(permit),
        );
        assert_eq!(semaphore.available_permits(), 0);
        while body.try_next().await.expect("body").is_some() {}
        assert_eq!(
            semaphore.available_permits(),
            1,
            "released while the reader lives"
        );
    }
}
