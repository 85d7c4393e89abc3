//! A blob body that survives a broken connection: when the body breaks (reset, stall) after some
//! bytes arrived, the rest is asked for with `Range: bytes=<offset>-` and the new body continues
//! the old one. The verifier above ([`super::verify::Verified`]) keeps hashing across the seam,
//! so the digest still covers every byte. A registry that answers anything but `206` with a
//! `Content-Range` starting at the offset gets no resume: the body fails as before and the next
//! attempt starts over.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, stream::BoxStream};
use reqwest::{StatusCode, header::CONTENT_RANGE};
use tracing::info;

use super::http::Http;

/// Resumes per blob; each needs bytes to have arrived since the previous one, so a registry that
/// breaks every connection at once cannot keep a download going forever.
const MAX_RESUMES: u32 = 3;

/// Where the rest of a blob can be asked for.
pub(super) struct ResumeAt {
    pub(super) http: Arc<Http>,
    pub(super) repository: String,
    pub(super) url: String,
    /// For the log line: the blob's digest.
    pub(super) blob: String,
}

type Body = BoxStream<'static, reqwest::Result<Bytes>>;

struct State {
    body: Body,
    at: Arc<ResumeAt>,
    offset: u64,
    progress_since_resume: bool,
    resumes_left: u32,
    ended: bool,
}

/// `first` (the body of the first GET), resumed from where it broke when it breaks.
pub(super) fn resumable(
    first: Body,
    at: ResumeAt,
) -> impl Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static {
    let state = State {
        body: first,
        at: Arc::new(at),
        offset: 0,
        progress_since_resume: false,
        resumes_left: MAX_RESUMES,
        ended: false,
    };
    Box::pin(futures::stream::unfold(state, next_chunk))
}

async fn next_chunk(mut state: State) -> Option<(reqwest::Result<Bytes>, State)> {
    if state.ended {
        return None;
    }
    loop {
        match state.body.next().await {
            Some(Ok(chunk)) => {
                state.offset += chunk.len() as u64;
                state.progress_since_resume |= !chunk.is_empty();
                return Some((Ok(chunk), state));
            }
            Some(Err(err)) if worth_resuming(&err, &state) => {
                match reopen(&state.at, state.offset).await {
                    Some(rest) => {
                        info!(blob = %state.at.blob, offset = state.offset, error = %err, "the blob download broke; resuming it where it stopped");
                        state.body = rest;
                        state.resumes_left -= 1;
                        state.progress_since_resume = false;
                    }
                    None => {
                        state.ended = true;
                        return Some((Err(err), state));
                    }
                }
            }
            Some(Err(err)) => {
                state.ended = true;
                return Some((Err(err), state));
            }
            None => return None,
        }
    }
}

fn worth_resuming(err: &reqwest::Error, state: &State) -> bool {
    (err.is_body() || err.is_timeout() || err.is_decode())
        && state.resumes_left > 0
        && state.progress_since_resume
}

/// The rest of the blob from `offset`, if the registry serves that range.
async fn reopen(at: &ResumeAt, offset: u64) -> Option<Body> {
    let response = at
        .http
        .resend_from(&at.repository, &at.url, offset)
        .await
        .ok()?;
    if response.status() != StatusCode::PARTIAL_CONTENT {
        return None;
    }
    let starts = response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(content_range_start)?;
    (starts == offset).then(|| response.bytes_stream().boxed())
}

/// `bytes 1024-4095/4096` (or `bytes 1024-4095/*`) → 1024.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes ")?;
    let (span, _total) = range.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let (start, end) = (
        start.trim().parse::<u64>().ok()?,
        end.trim().parse::<u64>().ok()?,
    );
    (start <= end).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_names_where_the_part_starts() {
        assert_eq!(content_range_start("bytes 1024-4095/4096"), Some(1024));
        assert_eq!(content_range_start("bytes 0-0/*"), Some(0));
        assert_eq!(content_range_start("bytes */4096"), None, "unsatisfied");
        assert_eq!(content_range_start("bytes 9-3/10"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
        assert_eq!(content_range_start(""), None);
    }
}
