//! A hook for whoever counts registry requests (the operator's metrics). The registry layer
//! only reports; it holds no counters and knows no metrics library.

use std::time::Duration;

pub trait RequestObserver: Send + Sync {
    /// One request was answered (`status`) or got no response (`None`: refused, timed out),
    /// `took` until the response headers arrived.
    fn request(&self, method: &str, status: Option<u16>, took: Duration);
}
