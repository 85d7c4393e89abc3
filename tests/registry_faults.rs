//! A misbehaving registry, through a fault-injecting proxy in front of a real one: down for a
//! while, 5xx, 429 with `Retry-After`, a connection reset mid-blob, a body that stalls, a slow
//! body, many downloads at once. The operator retries by itself with backoff capped at
//! scanInterval, waits as long as `Retry-After` says, keeps the active module while it fails,
//! limits its requests per registry host, and one stalled download does not hold up other MPOs.

mod support;

use std::time::{Duration, Instant};

use mpo_operator::registry::DEFAULT_MAX_REQUESTS_PER_HOST;
use support::{
    images::{ModuleImage, large_module},
    proxy::{Fault, FaultProxy, Seen},
    registry::RegistryKind,
    scenario::{REPO_PATH, Scenario, files_under},
    wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

/// A scenario whose ModuleSource reaches the registry only through a fault proxy. Source scans
/// are off, so every request the proxy sees comes from an MPO pass.
async fn through_proxy(test: &str, flags: &[&str]) -> (Scenario, FaultProxy) {
    let cluster = support::cluster::cluster().expect("control plane (checked by the caller)");
    let mut all_flags = vec!["--scan-module-sources=false"];
    all_flags.extend_from_slice(flags);
    let mut s = Scenario::start(cluster, test, RegistryKind::Plain, &[], &all_flags).await;
    let proxy = FaultProxy::start(&s.registry);
    s.route_source_through(proxy.host());
    (s, proxy)
}

fn manifests_of(module: &str) -> String {
    format!("/v2/{REPO_PATH}/{module}/manifests/")
}

fn blobs_of(module: &str) -> String {
    format!("/v2/{REPO_PATH}/{module}/blobs/")
}

/// What must survive a failure: the status digest and time, the active version and its files.
struct Snapshot {
    digest: serde_json::Value,
    updated_at: serde_json::Value,
    active: Option<String>,
    files: Vec<(String, Vec<u8>)>,
}

fn snapshot(s: &Scenario, module: &str) -> Snapshot {
    let status = s.mpo(module)["status"].clone();
    Snapshot {
        digest: status["imageDigest"].clone(),
        updated_at: status["updatedAt"].clone(),
        active: s.active_hex(module),
        files: files_under(&s.module_dir(module).join("dev/")),
    }
}

fn assert_untouched(s: &Scenario, module: &str, before: &Snapshot, what: &str) {
    let now = snapshot(s, module);
    assert_eq!(now.digest, before.digest, "{what}: imageDigest changed");
    assert_eq!(
        now.updated_at, before.updated_at,
        "{what}: updatedAt changed"
    );
    assert_eq!(now.active, before.active, "{what}: dev moved");
    assert!(
        now.files == before.files,
        "{what}: the active files changed"
    );
    let ready = &s.mpo(module)["status"]["conditions"][0];
    assert_eq!(ready["status"], "False", "{what}: Ready must be False");
}

fn assert_ready(s: &Scenario, module: &str) {
    let ready = &s.mpo(module)["status"]["conditions"][0];
    assert_eq!(ready["status"], "True", "mop/{module}: {ready}");
}

/// Waits for `n` requests that match and got `status`; returns their arrival times.
async fn wait_for_answers(
    proxy: &FaultProxy,
    method: &str,
    path: &str,
    status: u16,
    n: usize,
    within: Duration,
) -> Vec<Instant> {
    wait_for(
        &format!("{n} {method} {path} answered {status}"),
        within,
        || async {
            let times: Vec<Instant> = proxy
                .matching(method, path)
                .iter()
                .filter(|r| r.status == status)
                .map(|r| r.at)
                .collect();
            (times.len() >= n).then_some(times)
        },
    )
    .await
}

fn gaps(times: &[Instant]) -> Vec<f64> {
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect()
}

/// How many failed checks the operator logged with `text` in the message.
fn logged_failures(s: &Scenario, text: &str) -> usize {
    s.operator
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(text))
        .count()
}

#[tokio::test]
async fn a_registry_down_for_a_while_keeps_the_module_and_is_recovered_from_without_help() {
    let _cluster = require_cluster!();
    let (mut s, proxy) = through_proxy("fault-down", &[]).await;
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    s.apply_mpo(&module, "dev", "4s");
    s.wait_for_digest(&module, &digest, WAIT).await;
    let before = snapshot(&s, &module);
    let blob_gets = proxy.count("GET", &blobs_of(&module));

    proxy.down();
    let reference = format!("{}/{REPO_PATH}/{module}:dev", proxy.host());
    s.wait_for_message(
        &module,
        &format!("cannot resolve {reference}: cannot connect to the registry"),
        WAIT,
    )
    .await;
    // Several retries while it stays down (backoff 1 s, 2 s, 4 s, capped at the 4 s interval).
    wait_for("three failed checks while down", WAIT, || async {
        (logged_failures(&s, "cannot connect to the registry") >= 3).then_some(())
    })
    .await;
    assert_untouched(&s, &module, &before, "registry down");

    proxy.up();
    s.wait_for_digest(&module, &digest, WAIT).await;
    assert_ready(&s, &module);
    let after = snapshot(&s, &module);
    assert_eq!(
        after.updated_at, before.updated_at,
        "nothing new was downloaded"
    );
    assert_eq!(after.active, before.active);
    assert_eq!(
        proxy.count("GET", &blobs_of(&module)),
        blob_gets,
        "the module on disk was kept, not downloaded again"
    );
}

#[tokio::test]
async fn server_errors_are_named_and_retried_with_growing_backoff_capped_at_the_interval() {
    let _cluster = require_cluster!();
    let (mut s, proxy) = through_proxy("fault-5xx", &[]).await;
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    let interval = 8.0;
    s.apply_mpo(&module, "dev", "8s");
    s.wait_for_digest(&module, &digest, WAIT).await;
    let before = snapshot(&s, &module);
    let reference = format!("{}/{REPO_PATH}/{module}:dev", proxy.host());
    let manifests = manifests_of(&module);

    for code in [500, 502] {
        proxy.clear();
        proxy.fail_method("HEAD", &manifests, Fault::status(code));
        let mpo = s
            .wait_for_message(
                &module,
                &format!("cannot resolve {reference}: registry error (HTTP {code})"),
                WAIT,
            )
            .await;
        assert_eq!(mpo["status"]["conditions"][0]["reason"], "ResolveFailed");
        assert_untouched(&s, &module, &before, &format!("HTTP {code}"));
    }
    // Healthy again: the failure count starts over, so the spacing below starts at 1 s.
    proxy.clear();
    s.wait_for_digest(&module, &digest, WAIT).await;

    proxy.fail_method("HEAD", &manifests, Fault::status(503));
    let times = wait_for_answers(&proxy, "HEAD", &manifests, 503, 6, Duration::from_secs(90)).await;
    let spacing = gaps(&times[..6]);
    eprintln!("503 retry spacing (s): {spacing:.2?}");
    assert!(
        (0.8..3.0).contains(&spacing[0]),
        "first retry after about 1 s: {spacing:.2?}"
    );
    for pair in spacing[..3].windows(2) {
        assert!(pair[1] > pair[0] * 1.5, "backoff must grow: {spacing:.2?}");
    }
    for gap in &spacing {
        assert!(
            *gap < interval + 2.0,
            "backoff is capped at the interval: {spacing:.2?}"
        );
    }
    assert!(
        spacing[4] > interval - 1.0,
        "the backoff reaches the interval: {spacing:.2?}"
    );
    s.wait_for_message(&module, "registry error (HTTP 503)", WAIT)
        .await;
    assert_untouched(&s, &module, &before, "HTTP 503");

    proxy.clear();
    s.wait_for_digest(&module, &digest, WAIT).await;
    assert_ready(&s, &module);
}

#[tokio::test]
async fn too_many_requests_waits_as_long_as_retry_after_says() {
    let cluster = require_cluster!();
    let (mut s, proxy) = through_proxy("fault-429", &[]).await;
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    // A long interval: any retry within seconds is the backoff or Retry-After, not the timer.
    s.apply_mpo(&module, "dev", "1m");
    s.wait_for_digest(&module, &digest, WAIT).await;
    let before = snapshot(&s, &module);

    let manifests = manifests_of(&module);
    let limited_since = Instant::now();
    proxy.fail_method("HEAD", &manifests, Fault::too_many_requests(3));
    cluster.kubectl_ok(&["annotate", &format!("mop/{module}"), "renew="]);
    // Backoff alone would retry after 1 s and then 2 s.
    let times = wait_for_answers(&proxy, "HEAD", &manifests, 429, 3, WAIT).await;
    let spacing = gaps(&times[..3]);
    eprintln!("429 (Retry-After: 3) retry spacing (s): {spacing:.2?}");
    for gap in &spacing {
        assert!(
            (2.5..8.0).contains(gap),
            "retries come after Retry-After (3 s), and soon after it: {spacing:.2?}"
        );
    }
    let mpo = s.wait_for_message(&module, "cannot resolve", WAIT).await;
    let message = mpo["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("too many requests"), "{message}");
    assert_untouched(&s, &module, &before, "HTTP 429");
    let gets = proxy
        .matching("GET", &manifests)
        .iter()
        .filter(|r| r.at >= limited_since)
        .count();
    assert_eq!(
        gets, 0,
        "a refused HEAD is not followed by a GET that would add to the load"
    );

    proxy.clear();
    s.wait_for_digest(&module, &digest, WAIT).await;
    assert_ready(&s, &module);
}

#[tokio::test]
async fn a_connection_reset_mid_blob_keeps_the_old_module_until_a_download_succeeds() {
    let _cluster = require_cluster!();
    let (mut s, proxy) = through_proxy("fault-reset", &[]).await;
    let module = format!("{}-m", s.id.0);
    let v1 = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    s.apply_mpo(&module, "dev", "3s");
    s.wait_for_digest(&module, &v1, WAIT).await;
    let before = snapshot(&s, &module);

    proxy.fail("/blobs/", Fault::ResetAfter(16 * 1024));
    let v2 = s
        .push(&module, "dev", &large_module(&module, 256 * 1024))
        .await;
    let reference = format!("{}/{REPO_PATH}/{module}@{v2}", proxy.host());
    let mpo = s
        .wait_for_message(&module, &format!("cannot download {reference}: "), WAIT)
        .await;
    let message = mpo["status"]["message"].as_str().unwrap_or_default();
    eprintln!("reset mid-blob: {message}");
    assert!(
        message.contains("the connection broke while reading the response"),
        "the message says the connection broke: {message}"
    );
    assert_eq!(mpo["status"]["conditions"][0]["reason"], "DownloadFailed");
    assert!(
        proxy
            .matching("GET", &blobs_of(&module))
            .iter()
            .any(|r| r.fault == Some(Fault::ResetAfter(16 * 1024)) && r.status == 200),
        "a blob download was cut off after its headers"
    );
    assert_untouched(&s, &module, &before, "reset mid-blob");

    proxy.clear();
    s.wait_for_digest(&module, &v2, WAIT).await;
    assert_ready(&s, &module);
    let blob = std::fs::read(s.module_dir(&module).join("dev/files/blob.bin")).expect("blob");
    assert_eq!(blob.len(), 256 * 1024, "the whole layer arrived");
}

#[tokio::test]
async fn a_blob_whose_connection_breaks_once_is_resumed_from_where_it_stopped() {
    let _cluster = require_cluster!();
    let (mut s, proxy) = through_proxy("fault-resume", &[]).await;
    let module = format!("{}-m", s.id.0);
    let cut = 64 * 1024;
    proxy.fail(&blobs_of(&module), Fault::ResetAfterUnlessRanged(cut));
    let digest = s
        .push(&module, "dev", &large_module(&module, 512 * 1024))
        .await;
    s.apply_mpo(&module, "dev", "1h");
    s.wait_for_digest(&module, &digest, WAIT).await;
    assert_eq!(
        s.mpo(&module)["status"]["message"],
        "",
        "one pass did it, with no failure in between"
    );

    let blob_gets = proxy.matching("GET", &blobs_of(&module));
    let broken: Vec<&Seen> = blob_gets
        .iter()
        .filter(|r| r.fault == Some(Fault::ResetAfter(cut)))
        .collect();
    let resumed: Vec<&Seen> = blob_gets.iter().filter(|r| r.range.is_some()).collect();
    assert_eq!(broken.len(), 1, "the layer broke once: {blob_gets:?}");
    assert_eq!(resumed.len(), 1, "and resumed once: {blob_gets:?}");
    // From what had arrived: a reset discards what the kernel had not handed over yet.
    let from: u64 = resumed[0]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a Range of bytes=N-: {:?}", resumed[0].range));
    assert!(from > 0 && from <= cut as u64, "resumed at {from}");
    assert_eq!(resumed[0].status, 206);
    assert!(
        s.operator
            .log()
            .contains("the blob download broke; resuming it where it stopped"),
        "the resume is logged"
    );
    let blob = std::fs::read(s.module_dir(&module).join("dev/files/blob.bin")).expect("blob");
    assert_eq!(blob.len(), 512 * 1024, "the whole layer arrived, verified");
}

/// A pass that hangs with no progress (here a body that never sends a byte, under a read
/// timeout longer than the stall bound) makes `/healthz` fail, so the kubelet restarts the
/// replica instead of leaving a leader that holds its lease and does nothing.
#[tokio::test]
async fn liveness_fails_while_passes_are_in_flight_and_none_makes_progress() {
    let _cluster = require_cluster!();
    let (mut s, proxy) = through_proxy(
        "fault-wedged",
        &["--liveness-stall-timeout=3s", "--registry-read-timeout=10m"],
    )
    .await;
    let module = format!("{}-m", s.id.0);
    s.push(&module, "dev", &ModuleImage::module(&module, 900, "a"))
        .await;
    assert_eq!(
        s.operator.http_get("/healthz").map(|(code, _)| code),
        Some(200),
        "alive while idle"
    );
    proxy.fail(&blobs_of(&module), Fault::Stall);
    s.apply_mpo(&module, "dev", "1h");
    wait_for("the download to hang", WAIT, || async {
        s.operator.log().contains("downloading").then_some(())
    })
    .await;
    let (code, body) = wait_for("/healthz to fail", WAIT, || async {
        s.operator
            .http_get("/healthz")
            .filter(|(code, _)| *code == 503)
    })
    .await;
    assert_eq!(code, 503);
    assert_eq!(
        body.trim(),
        "wedged: passes are in flight and none made progress"
    );
}

#[tokio::test]
async fn a_stalled_body_times_out_and_does_not_hold_up_another_override() {
    let cluster = require_cluster!();
    let (mut s, proxy) = through_proxy("fault-stall", &["--registry-read-timeout=2s"]).await;
    let stalled = format!("{}-a", s.id.0);
    let other = format!("{}-b", s.id.0);
    let stalled_digest = s
        .push(&stalled, "dev", &ModuleImage::module(&stalled, 900, "a"))
        .await;
    let other_digest = s
        .push(&other, "dev", &ModuleImage::module(&other, 900, "b"))
        .await;
    proxy.fail(&blobs_of(&stalled), Fault::Stall);
    // A broken body is retried at the interval (the storage layer reports it as a download
    // failure, not a transient one), so keep the interval short enough to see it recover.
    s.apply_mpo(&stalled, "dev", "10s");

    // The other MPO's download must go through while a stalled body holds a connection (and a
    // worker). A stall lasts the 2 s read timeout; should the other download miss that window
    // on a busy machine, it is forced again during a later stall.
    let mut overlapped = None;
    for attempt in 0..3 {
        let stall = wait_for("a stalled body in flight", WAIT, || async {
            fresh_stall(&proxy, &blobs_of(&stalled))
        })
        .await;
        let downloads_before = finished(&proxy, &blobs_of(&other)).len();
        if attempt == 0 {
            s.apply_mpo(&other, "dev", "1m");
        } else {
            cluster.kubectl_ok(&[
                "annotate",
                &format!("mop/{other}"),
                "modules.deckhouse.io/renew=true",
                "--overwrite",
            ]);
        }
        let download = wait_for("the other module's download", WAIT, || async {
            finished(&proxy, &blobs_of(&other))
                .get(downloads_before)
                .cloned()
        })
        .await;
        let stall = latest(&proxy, &stall);
        if stall.spans(&download) {
            overlapped = Some((stall, download));
            break;
        }
        eprintln!("attempt {attempt}: the download missed the stall window; trying again");
    }
    let (stall, download) = overlapped.expect("a download completed during a stalled body");
    eprintln!(
        "other download took {:?}, inside a stall that started {:?} before it",
        download.done.map(|d| d - download.at),
        download.at - stall.at
    );
    s.wait_for_digest(&other, &other_digest, WAIT).await;
    assert_ready(&s, &other);

    let mpo = s
        .wait_for_message(
            &stalled,
            "timed out: no data from the registry for 2s",
            WAIT,
        )
        .await;
    let message = mpo["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "cannot download {}/{REPO_PATH}/{stalled}@",
            proxy.host()
        )),
        "{message}"
    );
    let stalls: Vec<f64> = proxy
        .matching("GET", &blobs_of(&stalled))
        .iter()
        .filter_map(|r| r.done.map(|d| (d - r.at).as_secs_f64()))
        .collect();
    eprintln!("stalled bodies were given up after (s): {stalls:.2?}");
    assert!(
        stalls.iter().all(|d| (1.5..6.0).contains(d)),
        "the 2 s read timeout ends each stall: {stalls:.2?}"
    );

    proxy.clear();
    s.wait_for_digest(&stalled, &stalled_digest, WAIT).await;
    assert_ready(&s, &stalled);
}

/// A stalled request still in flight, if any.
fn fresh_stall(proxy: &FaultProxy, path: &str) -> Option<Seen> {
    proxy
        .matching("GET", path)
        .into_iter()
        .rev()
        .find(|r| r.fault == Some(Fault::Stall) && r.done.is_none())
}

/// The current record of `seen` (its `done` may have been set since).
fn latest(proxy: &FaultProxy, seen: &Seen) -> Seen {
    proxy
        .requests()
        .into_iter()
        .find(|r| r.at == seen.at && r.path == seen.path)
        .unwrap_or_else(|| seen.clone())
}

/// Matching GETs that were answered 200 and whose body has been sent completely.
fn finished(proxy: &FaultProxy, path: &str) -> Vec<Seen> {
    proxy
        .matching("GET", path)
        .into_iter()
        .filter(|r| r.status == 200 && r.done.is_some())
        .collect()
}

#[tokio::test]
async fn a_slow_body_still_completes() {
    let _cluster = require_cluster!();
    // A short read timeout: a body that keeps trickling must not trip it.
    let (mut s, proxy) = through_proxy(
        "fault-slow",
        &["--registry-read-timeout=2s", "--min-download-rate=16384"],
    )
    .await;
    let module = format!("{}-m", s.id.0);
    proxy.fail("/blobs/", Fault::Slow(64 * 1024));
    let digest = s
        .push(&module, "dev", &large_module(&module, 256 * 1024))
        .await;
    s.apply_mpo(&module, "dev", "1m");
    s.wait_for_digest(&module, &digest, WAIT).await;
    assert_ready(&s, &module);
    let took: Vec<f64> = finished(&proxy, &blobs_of(&module))
        .iter()
        .filter_map(|r| r.done.map(|d| (d - r.at).as_secs_f64()))
        .collect();
    eprintln!("slow blob downloads took (s): {took:.2?}");
    assert_eq!(took.len(), 1, "one download, no retry: {took:.2?}");
    assert!(took[0] > 3.0, "the body really was slow: {took:.2?}");
}

#[tokio::test]
async fn requests_to_one_registry_host_are_limited() {
    let _cluster = require_cluster!();
    // More workers than the per-host limit, so that only the limit can hold requests back.
    let (mut s, proxy) = through_proxy("fault-limit", &["--concurrency=8"]).await;
    let modules: Vec<String> = (0..6).map(|i| format!("{}-m{i}", s.id.0)).collect();
    let mut digests = Vec::new();
    for module in &modules {
        digests.push(
            s.push(module, "dev", &large_module(module, 128 * 1024))
                .await,
        );
    }
    // Each blob takes about 2 s, so the six passes overlap.
    proxy.fail("/blobs/", Fault::Slow(64 * 1024));
    for module in &modules {
        s.apply_mpo(module, "dev", "1m");
    }
    for (module, digest) in modules.iter().zip(&digests) {
        s.wait_for_digest(module, digest, Duration::from_secs(120))
            .await;
    }
    let max = proxy.max_in_flight();
    eprintln!("at most {max} requests in flight (limit {DEFAULT_MAX_REQUESTS_PER_HOST})");
    assert!(
        max <= DEFAULT_MAX_REQUESTS_PER_HOST,
        "{max} requests in flight to one host"
    );
    assert!(max >= 2, "the downloads did run in parallel: {max}");
}

#[tokio::test]
async fn a_trickling_body_fails_at_its_deadline_and_names_the_setting() {
    let _cluster = require_cluster!();
    // 1 MiB at 64 KiB/s takes 16 s; at the minimum rate of 1 MiB/s it may take 2 s + ~1 s.
    let (mut s, proxy) = through_proxy(
        "fault-trickle",
        &["--registry-read-timeout=2s", "--min-download-rate=1048576"],
    )
    .await;
    let module = format!("{}-m", s.id.0);
    proxy.fail("/blobs/", Fault::Slow(64 * 1024));
    s.push(&module, "dev", &large_module(&module, 1 << 20))
        .await;
    s.apply_mpo(&module, "dev", "1m");
    let mpo = s
        .wait_for_message(&module, "--min-download-rate", WAIT)
        .await;
    let message = mpo["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("did not arrive within"), "{message}");
    assert!(message.starts_with("cannot download "), "{message}");
    let took: Vec<f64> = finished(&proxy, &blobs_of(&module))
        .iter()
        .filter_map(|r| r.done.map(|d| (d - r.at).as_secs_f64()))
        .collect();
    assert!(
        !took.is_empty() && took.iter().all(|t| *t < 10.0),
        "the trickle was cut at its deadline, not after 16 s: {took:.2?}"
    );
}
