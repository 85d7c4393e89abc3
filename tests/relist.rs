//! A relist: the operator's watches are down while objects change, and come back to an apiserver
//! that restarted, so they cannot resume where they were (410, "too old resource version") and
//! list everything again. What changed in the gap must be acted on as soon as the list is in,
//! not a whole `scanInterval` later, and a source deleted in the gap must be noticed although
//! no `Delete` event ever comes for it.
//!
//! A test binary of its own: it restarts the control plane's apiserver, which every test running
//! beside it would feel (`cargo test` runs the binaries one after another).

mod support;

use std::time::Duration;

use support::{
    Operator, images::ModuleImage, registry::RegistryKind, scenario::Scenario, tcp_cut::TcpCut,
    wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

/// `mpo_watch_lists_total{resource="<resource>"}` from the operator's metrics.
fn lists(operator: &Operator, resource: &str) -> Option<u64> {
    let (_, body) = operator.http_get("/metrics")?;
    let prefix = format!("mpo_watch_lists_total{{resource=\"{resource}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

fn restart_apiserver(dir: &std::path::Path) {
    let status = std::process::Command::new("bash")
        .arg(support::cluster::repo_root().join("hack/control-plane.sh"))
        .arg("restart-apiserver")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("hack/control-plane.sh runs");
    assert!(status.success(), "restart-apiserver: {status}");
}

/// On c16ab6e the overrides of a relist were woken at `InitApply`, before the store held the
/// new objects, and a source gone in the gap woke nobody: with an interval of an hour, both
/// changes below waited an hour.
#[tokio::test]
async fn changes_made_while_the_watches_were_down_are_acted_on_right_after_the_relist() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "relist", RegistryKind::Plain, &[], &[]).await;
    let relay = TcpCut::start(&cluster.kubeconfig);
    s.operator = Operator::start_as(relay.kubeconfig(), &s.id, &[]);
    let (moved, _) = s.ready_module("1h").await;
    // A second override on a source of its own, which goes away in the gap.
    let doomed_source = format!("{}-gone", s.id.0);
    s.apply_other_source(&doomed_source);
    let orphan = format!("{}-o", s.id.0);
    let orphan_digest = s
        .push(&orphan, "dev", &ModuleImage::module(&orphan, 900, "1"))
        .await;
    let main_source = std::mem::replace(&mut s.source, doomed_source.clone());
    s.apply_mpo(&orphan, "dev", "1h");
    s.source = main_source;
    s.wait_for_digest(&orphan, &orphan_digest, WAIT).await;
    let before = (
        lists(&s.operator, "modulepulloverrides").expect("the MPO list count"),
        lists(&s.operator, "modulesources").expect("the source list count"),
    );

    relay.cut();
    let next = s
        .push(&moved, "v2", &ModuleImage::module(&moved, 900, "2"))
        .await;
    cluster.kubectl_ok(&[
        "patch",
        &format!("mop/{moved}"),
        "--type=merge",
        "-p",
        r#"{"spec":{"imageTag":"v2"}}"#,
    ]);
    cluster.kubectl_ok(&["delete", &format!("ms/{doomed_source}"), "--timeout=30s"]);
    s.forget(&format!("ms/{doomed_source}"));
    // The new apiserver's watch cache starts after these writes, so the watches cannot resume.
    restart_apiserver(&cluster.dir);
    relay.restore();
    let restored_at = std::time::Instant::now();

    s.wait_for_digest(&moved, &next, WAIT).await;
    s.wait_for_message(
        &orphan,
        &format!("ModuleSource \"{doomed_source}\" not found"),
        WAIT,
    )
    .await;
    eprintln!(
        "both changes acted on {:?} after the watches could reach the apiserver again",
        restored_at.elapsed()
    );
    // The changes came through lists, not through a resumed watch.
    let after = wait_for("both watches to list again", WAIT, || async {
        let after = (
            lists(&s.operator, "modulepulloverrides")?,
            lists(&s.operator, "modulesources")?,
        );
        (after.0 > before.0 && after.1 > before.1).then_some(after)
    })
    .await;
    eprintln!("lists (MPOs, sources): {before:?} before, {after:?} after");
    // The orphan's files stay: a missing source is no reason to remove a module.
    assert!(s.module_dir(&orphan).join("dev/module.yaml").is_file());
    drop(s);
    drop(relay);
}
