//! Progress of a long pull on a terminal: bytes and percent on one rewritten stderr line, at
//! most ten times a second. Nothing at all when stderr is not a terminal.

use std::{
    io::{IsTerminal, Write},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::install::Progress;

const EVERY: Duration = Duration::from_millis(100);

pub struct TerminalProgress {
    label: String,
    total: AtomicU64,
    done: AtomicU64,
    last_drawn: Mutex<Option<Instant>>,
}

impl TerminalProgress {
    /// A display for `label`, or `None` when stderr is not a terminal.
    pub fn on_terminal(label: String) -> Option<Arc<Self>> {
        std::io::stderr().is_terminal().then(|| {
            Arc::new(Self {
                label,
                total: AtomicU64::new(0),
                done: AtomicU64::new(0),
                last_drawn: Mutex::new(None),
            })
        })
    }

    /// The final line, then a newline so that the result starts on its own line.
    pub fn finish(&self) {
        self.draw();
        eprintln!();
    }

    fn draw(&self) {
        let line = progress_line(
            &self.label,
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        );
        let mut stderr = std::io::stderr().lock();
        // Best effort: a progress line that cannot be drawn is no reason to fail the pull.
        let _ = write!(stderr, "\r\x1b[2K{line}").and_then(|()| stderr.flush());
    }
}

impl Progress for TerminalProgress {
    fn started(&self, total_bytes: u64) {
        self.total.store(total_bytes, Ordering::Relaxed);
        self.draw();
    }

    fn advanced(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        let mut last = match self.last_drawn.lock() {
            Ok(last) => last,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.is_none_or(|at| at.elapsed() >= EVERY) {
            *last = Some(Instant::now());
            drop(last);
            self.draw();
        }
    }
}

/// `pulling echo:v1 12.3 MiB / 45.4 MiB (27%)`.
pub fn progress_line(label: &str, done: u64, total: u64) -> String {
    let percent = (done.min(total) * 100).checked_div(total).unwrap_or(100);
    format!(
        "pulling {label} {} / {} ({percent}%)",
        human_bytes(done),
        human_bytes(total)
    )
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_bytes_and_percent() {
        assert_eq!(
            progress_line("echo:v1", 12 << 20, 48 << 20),
            "pulling echo:v1 12.0 MiB / 48.0 MiB (25%)"
        );
        assert_eq!(progress_line("e", 0, 0), "pulling e 0 B / 0 B (100%)");
        assert_eq!(progress_line("e", 10, 5), "pulling e 10 B / 5 B (100%)");
    }

    #[test]
    fn sizes_are_binary_units() {
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
