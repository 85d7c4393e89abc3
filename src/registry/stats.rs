//! Counts of registry requests by method and HTTP status, for the metrics endpoint. Kept here so
//! that the registry layer stays free of any metrics or Kubernetes dependency.

use std::{
    collections::BTreeMap,
    sync::{LazyLock, Mutex},
};

static REQUESTS: LazyLock<Mutex<BTreeMap<(String, String), u64>>> = LazyLock::new(Mutex::default);

/// One request sent; `status` is `None` when no response came (connection refused, timeout).
pub(super) fn record(method: &str, status: Option<u16>) {
    let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
    let mut counts = REQUESTS.lock().unwrap_or_else(|p| p.into_inner());
    *counts.entry((method.to_owned(), status)).or_default() += 1;
}

/// `((method, status), count)` for every request sent so far by this process.
pub fn request_counts() -> Vec<((String, String), u64)> {
    let counts = REQUESTS.lock().unwrap_or_else(|p| p.into_inner());
    counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
}
