//! The body of a layer as a stream that fails unless its bytes match the manifest's size and
//! digest, and that holds the registry host's request slot until the body is done.
//!
//! The unpacker reads it as `std::io::Read` and so only sees `io::Error`s; the typed reason a body
//! failed is left in a [`BodyFailure`] beside it, for the installer to report (a broken connection
//! is transient, bad bytes are not).

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::OwnedSemaphorePermit;

use super::RegistryError;
use crate::Digest;

/// The typed reason a layer body failed, if it did. Cheap to clone: the reader keeps one copy.
#[derive(Clone, Debug, Default)]
pub struct BodyFailure(Arc<Mutex<Option<RegistryError>>>);

impl BodyFailure {
    /// The failure of the body, once its reader has returned an error.
    pub fn take(&self) -> Option<RegistryError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Keeps `err` and returns what the reader hands on: an `io::Error` with the same message.
    fn record(&self, kind: io::ErrorKind, err: RegistryError) -> io::Error {
        let reader_error = io::Error::new(kind, err.to_string());
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
        reader_error
    }
}

/// How long a whole body may take, and the rate that allowance came from (for the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Deadline {
    pub(super) allowed: Duration,
    pub(super) min_rate: u64,
}

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
    failure: BodyFailure,
    /// Fires when the whole body took longer than allowed, even if it never stalls for a read
    /// timeout (a trickle).
    deadline: Option<(Deadline, Pin<Box<tokio::time::Sleep>>)>,
    done: bool,
}

impl<S> Verified<S> {
    pub(super) fn new(
        inner: S,
        expected_digest: Digest,
        expected_size: u64,
        read_timeout: Duration,
        permit: Option<OwnedSemaphorePermit>,
        failure: BodyFailure,
    ) -> Self {
        Self {
            inner,
            expected_digest,
            expected_size,
            seen: 0,
            hasher: Sha256::new(),
            read_timeout,
            permit,
            failure,
            deadline: None,
            done: false,
        }
    }

    pub(super) fn with_deadline(mut self, deadline: Option<Deadline>) -> Self {
        self.deadline = deadline.map(|d| (d, Box::pin(tokio::time::sleep(d.allowed))));
        self
    }

    fn past_deadline(&mut self, cx: &mut Context<'_>) -> Option<RegistryError> {
        let (deadline, sleep) = self.deadline.as_mut()?;
        sleep
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| RegistryError::TooSlow {
                size: self.expected_size,
                allowed: deadline.allowed,
                min_rate: deadline.min_rate,
            })
    }

    fn finish(&mut self, outcome: Option<io::Result<Bytes>>) -> Poll<Option<io::Result<Bytes>>> {
        self.done = true;
        self.permit = None;
        Poll::Ready(outcome)
    }

    fn fail(&mut self, kind: io::ErrorKind, err: RegistryError) -> Poll<Option<io::Result<Bytes>>> {
        let err = self.failure.record(kind, err);
        self.finish(Some(Err(err)))
    }

    fn size_mismatch(&mut self) -> Poll<Option<io::Result<Bytes>>> {
        let err = RegistryError::BlobSize {
            expected: self.expected_size,
            seen: self.seen,
        };
        self.fail(io::ErrorKind::InvalidData, err)
    }

    fn on_chunk(&mut self, chunk: Bytes) -> Poll<Option<io::Result<Bytes>>> {
        self.seen += chunk.len() as u64;
        if self.seen > self.expected_size {
            return self.size_mismatch();
        }
        self.hasher.update(&chunk);
        Poll::Ready(Some(Ok(chunk)))
    }

    fn on_end(&mut self) -> Poll<Option<io::Result<Bytes>>> {
        if self.seen < self.expected_size {
            return self.size_mismatch();
        }
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if actual != self.expected_digest.hex() {
            let err = RegistryError::BlobDigest {
                expected: self.expected_digest.clone(),
                actual,
            };
            return self.fail(io::ErrorKind::InvalidData, err);
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
        if let Some(err) = this.past_deadline(cx) {
            return this.fail(io::ErrorKind::TimedOut, err);
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => this.on_chunk(chunk),
            Poll::Ready(Some(Err(err))) => {
                let (kind, err) = broken_body(err, this.read_timeout);
                this.fail(kind, err)
            }
            Poll::Ready(None) => this.on_end(),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The connection failed mid-body: transient, and for a stall the message names the setting.
fn broken_body(err: reqwest::Error, read_timeout: Duration) -> (io::ErrorKind, RegistryError) {
    if err.is_timeout() {
        return (
            io::ErrorKind::TimedOut,
            RegistryError::Stalled(read_timeout),
        );
    }
    (io::ErrorKind::Other, RegistryError::transport(err))
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
            BodyFailure::default(),
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
    async fn a_body_slower_than_its_deadline_fails_even_if_it_never_stalls() {
        let failure = BodyFailure::default();
        let trickle = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Some((Ok::<_, reqwest::Error>(Bytes::from_static(b"a")), ()))
        });
        let deadline = Deadline {
            allowed: Duration::from_millis(100),
            min_rate: 10,
        };
        let body = Verified::new(
            Box::pin(trickle),
            Digest::of(b"x"),
            1 << 20,
            Duration::from_secs(30),
            None,
            failure.clone(),
        )
        .with_deadline(Some(deadline));
        let started = std::time::Instant::now();
        let err = body.try_collect::<Vec<_>>().await.expect_err("too slow");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let typed = failure.take().expect("recorded");
        assert!(typed.is_transient());
        assert_eq!(
            typed.to_string(),
            "the blob of 1048576 bytes did not arrive within 100ms (minimum rate 10 bytes/s, --min-download-rate)"
        );
    }

    #[tokio::test]
    async fn the_typed_failure_is_left_beside_the_reader() {
        let failure = BodyFailure::default();
        let chunks: Vec<reqwest::Result<Bytes>> = vec![Ok(Bytes::from_static(b"ab"))];
        let body = Verified::new(
            futures::stream::iter(chunks),
            Digest::of(b"abc"),
            3,
            Duration::from_secs(1),
            None,
            failure.clone(),
        );
        let err = body.try_collect::<Vec<_>>().await.expect_err("short");
        let typed = failure.take().expect("recorded");
        assert!(matches!(
            typed,
            RegistryError::BlobSize {
                expected: 3,
                seen: 2
            }
        ));
        assert!(!typed.is_transient());
        assert_eq!(err.to_string(), typed.to_string());
        assert!(failure.take().is_none(), "taken once");
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
            BodyFailure::default(),
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
