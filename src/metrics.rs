//! Counters exposed at /metrics in the Prometheus text format.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

#[derive(Default)]
pub struct Metrics {
    reconciles: Mutex<BTreeMap<&'static str, (u64, f64)>>,
    bytes_downloaded: AtomicU64,
    unpack_seconds_total: Mutex<f64>,
    unpacks: AtomicU64,
    last_check: Mutex<BTreeMap<String, f64>>,
    ready: AtomicBool,
}

impl Metrics {
    pub fn reconciled(&self, result: &'static str, took: Duration) {
        let mut map = self.reconciles.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(result).or_default();
        entry.0 += 1;
        entry.1 += took.as_secs_f64();
    }

    pub fn bytes_downloaded(&self, bytes: u64) {
        self.bytes_downloaded.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn unpacked(&self, took: Duration) {
        self.unpacks.fetch_add(1, Ordering::Relaxed);
        *self
            .unpack_seconds_total
            .lock()
            .unwrap_or_else(|p| p.into_inner()) += took.as_secs_f64();
    }

    /// A successful registry check of an MPO, for `seconds since the last successful check`.
    pub fn resolved(&self, mpo: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.last_check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mpo.to_owned(), now);
    }

    /// Drops the per-MPO series of a deleted MPO.
    pub fn forget(&self, mpo: &str) {
        self.last_check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(mpo);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP mpo_reconciles_total Passes over ModulePullOverrides by result."
        );
        let _ = writeln!(out, "# TYPE mpo_reconciles_total counter");
        let reconciles = self
            .reconciles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (result, (count, _)) in &reconciles {
            let _ = writeln!(out, "mpo_reconciles_total{{result=\"{result}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP mpo_reconcile_seconds_total Time spent in passes by result."
        );
        let _ = writeln!(out, "# TYPE mpo_reconcile_seconds_total counter");
        for (result, (_, seconds)) in &reconciles {
            let _ = writeln!(
                out,
                "mpo_reconcile_seconds_total{{result=\"{result}\"}} {seconds}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP mpo_registry_requests_total Registry requests by method and HTTP status (error: no response)."
        );
        let _ = writeln!(out, "# TYPE mpo_registry_requests_total counter");
        for ((method, status), count) in crate::registry::request_counts() {
            let _ = writeln!(
                out,
                "mpo_registry_requests_total{{method=\"{method}\",status=\"{status}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# TYPE mpo_downloaded_bytes_total counter");
        let _ = writeln!(
            out,
            "mpo_downloaded_bytes_total {}",
            self.bytes_downloaded.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE mpo_unpacks_total counter");
        let _ = writeln!(
            out,
            "mpo_unpacks_total {}",
            self.unpacks.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE mpo_unpack_seconds_total counter");
        let unpack = *self
            .unpack_seconds_total
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "mpo_unpack_seconds_total {unpack}");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let _ = writeln!(
            out,
            "# HELP mpo_seconds_since_last_check Seconds since the tag of an MPO was last resolved."
        );
        let _ = writeln!(out, "# TYPE mpo_seconds_since_last_check gauge");
        for (mpo, at) in self
            .last_check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "mpo_seconds_since_last_check{{mpo=\"{mpo}\"}} {:.3}",
                now - at
            );
        }
        out
    }
}
