//! When a ModulePullOverride gets a pass (SPEC §3, Triggers): one pure piece, so that every rule —
//! renew once, backoff, `Retry-After`, jitter, "our own status writes never trigger a pass" — is
//! a table test here instead of a property of the reconcile loop.
//!
//! The reconciler calls [`decide`] on every wake-up (a watch event, a ModuleSource change that
//! matters, or the requeue timer) and [`after_pass`] once a pass has finished.

use std::time::{Duration, Instant};

use super::rules::{
    backoff::{jittered, retry_delay},
    renew::Renew,
};

/// What the operator remembers of the last pass over one object (in memory only: after a restart
/// every object gets one full pass, which also re-verifies the disk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastCheck {
    /// Hash of everything the pass read from the API (see `triggers::fingerprint`).
    pub fingerprint: u64,
    /// When the next pass is due.
    pub due: Instant,
    /// Whether the last pass ended in a failure.
    pub failed: bool,
    /// Transient failures in a row, for the backoff.
    pub failures: u32,
    /// Object versions whose renew annotation was already handled: the watch hands back the
    /// annotated object (and our own status write on it) after the pass consumed the annotation.
    pub renew_handled: Vec<String>,
    /// Status writes refused in a row because the object changed mid-pass (409). While the
    /// backoff they earn runs, nothing starts a pass: an object another controller stamps faster
    /// than a pass takes would otherwise be passed over again and again.
    pub conflicts: u32,
    /// The forced renew pending on the object already downloaded its module; only the write of
    /// that result was refused. The redo records what is on disk instead of downloading again.
    pub forced_download_done: bool,
}

/// What the reconciler sees now.
#[derive(Clone, Copy, Debug)]
pub struct Seen<'a> {
    pub fingerprint: u64,
    /// The renew annotation on the object, if any.
    pub renew: Renew,
    pub resource_version: Option<&'a str>,
    /// The digest in the status is the active version on this replica's disk.
    pub module_on_disk: bool,
}

/// Why a pass runs, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunReason {
    FirstPass,
    Renew(Renew),
    InputsChanged,
    Due,
    ModuleMissingOnDisk,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Run(RunReason),
    Wait(Duration),
}

/// Run a pass now, or wait: a pass runs when there was none yet, a renew is pending on a version
/// not handled before, anything the pass reads changed, the check is due, or (after a success)
/// the module vanished from disk. Anything else — our own status write echoing back, another
/// MPO's flag on the source, its `syncTime` — waits for the time already planned.
pub fn decide(now: Instant, last: Option<&LastCheck>, seen: &Seen<'_>) -> Decision {
    let Some(last) = last else {
        return Decision::Run(RunReason::FirstPass);
    };
    if last.conflicts > 0 && now < last.due {
        return Decision::Wait(last.due - now);
    }
    let renew = pending_renew(seen.renew, seen.resource_version, Some(last));
    if renew != Renew::None {
        return Decision::Run(RunReason::Renew(renew));
    }
    if last.fingerprint != seen.fingerprint {
        return Decision::Run(RunReason::InputsChanged);
    }
    if now >= last.due {
        return Decision::Run(RunReason::Due);
    }
    if !last.failed && !seen.module_on_disk {
        return Decision::Run(RunReason::ModuleMissingOnDisk);
    }
    Decision::Wait(last.due - now)
}

/// The renew to act on: the annotation's, unless this very object version was handled already.
pub fn pending_renew(
    requested: Renew,
    resource_version: Option<&str>,
    last: Option<&LastCheck>,
) -> Renew {
    let handled = last
        .is_some_and(|l| resource_version.is_some_and(|v| l.renew_handled.iter().any(|h| h == v)));
    if handled { Renew::None } else { requested }
}

/// The renew a pass acts on: a forced one whose download already happened (its status write was
/// refused) is only checked and recorded, so a forced renew downloads at most once.
pub fn renew_for_pass(pending: Renew, last: Option<&LastCheck>) -> Renew {
    match pending {
        Renew::Force if last.is_some_and(|l| l.forced_download_done) => Renew::Check,
        other => other,
    }
}

/// The longest wait after status writes refused in a row for a changed object.
pub const MAX_CONFLICT_BACKOFF: Duration = Duration::from_secs(60);

/// The memory after a pass whose status write was refused (the object changed since the pass
/// read it): the pass is redone on the newer object after 1 s, then 2 s, 4 s … up to a minute
/// (plus the object's jitter) while the refusals go on. The renew stays pending; what the pass
/// did on disk is remembered so that the redo does not download it again.
pub fn after_conflict(
    now: Instant,
    previous: Option<&LastCheck>,
    name: &str,
    fingerprint: u64,
    renew: Renew,
) -> LastCheck {
    let conflicts = previous.map_or(0, |c| c.conflicts).saturating_add(1);
    let base = Duration::from_secs(1u64 << (conflicts - 1).min(16)).min(MAX_CONFLICT_BACKOFF);
    LastCheck {
        fingerprint,
        due: now + jittered(base, name),
        failed: true,
        failures: previous.map_or(0, |c| c.failures),
        renew_handled: previous
            .map(|c| c.renew_handled.clone())
            .unwrap_or_default(),
        conflicts,
        forced_download_done: renew == Renew::Force
            || previous.is_some_and(|c| c.forced_download_done),
    }
}

/// How a pass ended, as far as scheduling cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassResult {
    InSync,
    /// Needs a change (bad spec, unauthorized, invalid module): look again at the interval.
    Permanent,
    /// May pass by itself (network, 5xx, 429): back off, never sooner than `Retry-After`.
    Transient {
        retry_after: Option<Duration>,
    },
}

/// The memory after a pass: when to look again and how many transient failures in a row.
pub fn after_pass(
    now: Instant,
    result: PassResult,
    interval: Duration,
    name: &str,
    previous: Option<&LastCheck>,
    fingerprint: u64,
    renew_handled: Vec<String>,
) -> LastCheck {
    let previous_failures = previous.map_or(0, |c| c.failures);
    let (wait, failures) = match result {
        PassResult::InSync => (jittered(interval, name), 0),
        PassResult::Permanent => (jittered(interval, name), 0),
        PassResult::Transient { retry_after } => (
            retry_delay(previous_failures, interval, retry_after),
            previous_failures.saturating_add(1),
        ),
    };
    LastCheck {
        fingerprint,
        due: now + wait,
        failed: result != PassResult::InSync,
        failures,
        renew_handled,
        conflicts: 0,
        forced_download_done: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(15);

    fn last(now: Instant, due_in: u64) -> LastCheck {
        LastCheck {
            fingerprint: 7,
            due: now + Duration::from_secs(due_in),
            failed: false,
            failures: 0,
            renew_handled: vec!["10".into()],
            conflicts: 0,
            forced_download_done: false,
        }
    }

    fn seen(renew: Renew, version: &str) -> Seen<'_> {
        Seen {
            fingerprint: 7,
            renew,
            resource_version: Some(version),
            module_on_disk: true,
        }
    }

    #[test]
    fn decisions() {
        let now = Instant::now();
        let settled = last(now, 10);
        let wait = Decision::Wait(Duration::from_secs(10));
        let cases: Vec<(&str, Option<LastCheck>, Seen<'_>, Decision)> = vec![
            (
                "first pass",
                None,
                seen(Renew::None, "1"),
                Decision::Run(RunReason::FirstPass),
            ),
            (
                "own status write echoing back",
                Some(settled.clone()),
                seen(Renew::None, "11"),
                wait,
            ),
            (
                "renew on a new version",
                Some(settled.clone()),
                seen(Renew::Check, "12"),
                Decision::Run(RunReason::Renew(Renew::Check)),
            ),
            (
                "forced renew",
                Some(settled.clone()),
                seen(Renew::Force, "12"),
                Decision::Run(RunReason::Renew(Renew::Force)),
            ),
            (
                "renew already handled on this version",
                Some(settled.clone()),
                seen(Renew::Check, "10"),
                wait,
            ),
            (
                "spec or source changed",
                Some(settled.clone()),
                Seen {
                    fingerprint: 8,
                    ..seen(Renew::None, "11")
                },
                Decision::Run(RunReason::InputsChanged),
            ),
            (
                "due",
                Some(last(now, 0)),
                seen(Renew::None, "11"),
                Decision::Run(RunReason::Due),
            ),
            (
                "module removed from disk",
                Some(settled.clone()),
                Seen {
                    module_on_disk: false,
                    ..seen(Renew::None, "11")
                },
                Decision::Run(RunReason::ModuleMissingOnDisk),
            ),
            (
                "a failed pass has nothing on disk to miss",
                Some(LastCheck {
                    failed: true,
                    ..settled.clone()
                }),
                Seen {
                    module_on_disk: false,
                    ..seen(Renew::None, "11")
                },
                wait,
            ),
        ];
        for (name, last, seen, expected) in cases {
            assert_eq!(decide(now, last.as_ref(), &seen), expected, "{name}");
        }
    }

    #[test]
    fn next_checks() {
        let now = Instant::now();
        let secs = Duration::from_secs;
        let failing = |failures| LastCheck {
            failures,
            failed: true,
            ..last(now, 0)
        };
        let cases: Vec<(&str, PassResult, Option<LastCheck>, Duration, u32)> = vec![
            ("in sync", PassResult::InSync, None, INTERVAL, 0),
            ("permanent", PassResult::Permanent, None, INTERVAL, 0),
            (
                "first transient",
                PassResult::Transient { retry_after: None },
                None,
                secs(1),
                1,
            ),
            (
                "third transient doubles",
                PassResult::Transient { retry_after: None },
                Some(failing(2)),
                secs(4),
                3,
            ),
            (
                "backoff capped at the interval",
                PassResult::Transient { retry_after: None },
                Some(failing(9)),
                INTERVAL,
                10,
            ),
            (
                "Retry-After is a floor",
                PassResult::Transient {
                    retry_after: Some(secs(3)),
                },
                None,
                secs(3),
                1,
            ),
            (
                "Retry-After above the interval",
                PassResult::Transient {
                    retry_after: Some(secs(60)),
                },
                Some(failing(9)),
                secs(60),
                10,
            ),
            (
                "success resets the failures",
                PassResult::InSync,
                Some(failing(5)),
                INTERVAL,
                0,
            ),
        ];
        for (name, result, previous, min_wait, failures) in cases {
            let next = after_pass(now, result, INTERVAL, "echo", previous.as_ref(), 7, vec![]);
            let wait = next.due - now;
            let max_wait = if matches!(result, PassResult::Transient { .. }) {
                min_wait
            } else {
                min_wait.mul_f64(1.05)
            };
            assert!(
                wait >= min_wait && wait <= max_wait,
                "{name}: {wait:?} not in {min_wait:?}..={max_wait:?}"
            );
            assert_eq!(next.failures, failures, "{name}");
            assert_eq!(next.failed, result != PassResult::InSync, "{name}");
        }
    }

    #[test]
    fn refused_writes_back_off_and_a_forced_renew_downloads_once() {
        let now = Instant::now();
        let secs = Duration::from_secs;
        let first = after_conflict(now, None, "m", 7, Renew::Force);
        assert_eq!((first.conflicts, first.forced_download_done), (1, true));
        assert!(
            first.due - now >= secs(1) && first.due - now < secs(2),
            "{:?}",
            first.due - now
        );
        // The newer object arrives with the renew still on it: it waits out the backoff.
        let newer = Seen {
            fingerprint: 8,
            renew: Renew::Force,
            resource_version: Some("12"),
            module_on_disk: false,
        };
        assert!(matches!(
            decide(now, Some(&first), &newer),
            Decision::Wait(_)
        ));
        assert_eq!(
            decide(first.due, Some(&first), &newer),
            Decision::Run(RunReason::Renew(Renew::Force))
        );
        // …and the redo only checks and records.
        assert_eq!(renew_for_pass(Renew::Force, Some(&first)), Renew::Check);
        assert_eq!(renew_for_pass(Renew::Force, None), Renew::Force);
        assert_eq!(renew_for_pass(Renew::Check, Some(&first)), Renew::Check);

        // Refusals in a row double the wait up to a minute; the download stays remembered.
        let mut check = first;
        for _ in 0..10 {
            check = after_conflict(now, Some(&check), "m", 7, Renew::Check);
        }
        assert_eq!(check.conflicts, 11);
        assert!(check.forced_download_done);
        let wait = check.due - now;
        assert!(
            wait >= MAX_CONFLICT_BACKOFF && wait <= MAX_CONFLICT_BACKOFF.mul_f64(1.05),
            "{wait:?}"
        );
        // A pass whose write went through starts over.
        let settled = after_pass(
            now,
            PassResult::InSync,
            INTERVAL,
            "m",
            Some(&check),
            7,
            Vec::new(),
        );
        assert_eq!(
            (settled.conflicts, settled.forced_download_done),
            (0, false)
        );
    }
}
