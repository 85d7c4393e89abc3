//! The `overridden` flags of a ModuleSource follow the MPOs (SPEC §3.6): one field manager for
//! all of them, no flag left on a source an MPO moved away from, and no phantom entry for a module
//! the source does not list — before its first scan and after it.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    images::{push_many_module_names, push_module_names},
    registry::RegistryKind,
    scenario::{REPO_PATH, Scenario},
    wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

/// The source's entry for `module`, if any.
fn entry(source: &Value, module: &str) -> Option<Value> {
    source["status"]["modules"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == module)
        .cloned()
}

fn flagged(source: &Value, module: &str) -> bool {
    entry(source, module).is_some_and(|e| e["overridden"] == true)
}

/// Field managers that own anything in the source's status.
fn status_managers(source: &Value) -> Vec<String> {
    source["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["subresource"] == "status")
        .filter_map(|m| m["manager"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn moving_spec_source_moves_the_flag_and_leaves_nothing_behind() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "move-src", RegistryKind::Plain, &[], &[]).await;
    let (module, digest) = s.ready_module("15s").await;
    wait_for("the flag on the first source", WAIT, || async {
        flagged(&s.source_object(), &module).then_some(())
    })
    .await;
    let managers = status_managers(&s.source_named(&s.source));
    assert!(
        // With --watch-selector (every test operator has one) the flags manager is the shard's.
        managers
            .iter()
            .filter(|m| m.as_str() == "mpo-operator-flags" || m.starts_with("mpo-operator-flags-"))
            .count()
            == 1
            && !managers
                .iter()
                .any(|m| m.starts_with("mpo-operator-override")),
        "one manager for the flags, none per MPO: {managers:?}"
    );

    let other = format!("{}-b", s.source);
    s.apply_other_source(&other);
    let moved = s.mpo_yaml(&module, "dev", "15s").replace(
        &format!("source: {}\n", s.source),
        &format!("source: {other}\n"),
    );
    cluster.apply_ok(&moved);

    wait_for("the flag on the new source", WAIT, || async {
        flagged(&s.source_named(&other), &module).then_some(())
    })
    .await;
    wait_for("no entry left on the old source", WAIT, || async {
        entry(&s.source_object(), &module).is_none().then_some(())
    })
    .await;
    s.wait_for_digest(&module, &digest, WAIT).await;
}

#[tokio::test]
async fn an_unlisted_module_has_no_entry_after_the_first_scan_and_gets_one_once_listed() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(
        cluster,
        "unlisted",
        RegistryKind::Plain,
        &[],
        &["--source-scan-interval", "2s"],
    )
    .await;
    // Before the source lists anything, an override may run (SPEC §3.2) and is flagged.
    let (module, _) = s.ready_module("15s").await;
    wait_for("the flag before the first scan", WAIT, || async {
        flagged(&s.source_object(), &module).then_some(())
    })
    .await;

    // The scan now lists another module only: the MPO is refused and its entry disappears.
    push_module_names(&s.registry, REPO_PATH, &["other"])
        .await
        .expect("names pushed");
    s.wait_for_message(&module, "is not in ModuleSource", WAIT)
        .await;
    wait_for("no phantom entry for the unlisted module", WAIT, || async {
        let source = s.source_object();
        (source["status"]["modulesCount"] == 1 && entry(&source, &module).is_none()).then_some(())
    })
    .await;

    // Listed again: Ready, and the flag is back on the scan's entry.
    push_module_names(&s.registry, REPO_PATH, &[module.as_str()])
        .await
        .expect("names pushed");
    wait_for("the flag once the module is listed", WAIT, || async {
        let source = s.source_object();
        let ready = s.mpo(&module)["status"]["message"] == "";
        (ready && flagged(&source, &module) && source["status"]["modulesCount"] == 2).then_some(())
    })
    .await;
}

/// Issue 22: one ModuleSource holds about 1.5 MiB (etcd's default request limit). A registry
/// with more module names than that is said once in the source's message, the source counts as
/// not scanned, and its overrides go on.
#[tokio::test]
async fn a_source_with_more_modules_than_one_object_holds_says_so_once_and_its_overrides_go_on() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(
        cluster,
        "too-many",
        RegistryKind::Plain,
        &[],
        &["--source-scan-interval", "2s"],
    )
    .await;
    // 6000 names of 128 characters (the longest tag): about 1.8 MiB with managedFields.
    let names: Vec<String> = (0..6000)
        .map(|i| format!("m{i:05}{}", "x".repeat(122)))
        .collect();
    push_many_module_names(&s.registry, REPO_PATH, &names)
        .await
        .expect("module names pushed");
    // A scan may meet the list half pushed; the one that sees all 6000 is the one to check.
    let too_large = "cannot list 6000 modules in the status:";
    let source = wait_for("the source to say its list does not fit", WAIT, || async {
        let source = s.source_object();
        source["status"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(too_large))
            .then_some(source)
    })
    .await;
    let message = source["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("is more than one ModuleSource can hold"),
        "{message}"
    );
    assert!(
        source["status"]["modulesCount"].is_null(),
        "no count: the source is not scanned, so no module is refused: {}",
        source["status"]
    );

    let (module, _) = s.ready_module("15s").await;
    wait_for("the override's flag", WAIT, || async {
        flagged(&s.source_object(), &module).then_some(())
    })
    .await;

    // Two more scans meet the same refusal: still one warning in the log.
    for scan in 0..2 {
        let before = s.source_object()["status"]["syncTime"].clone();
        wait_for(&format!("scan {scan} after the refusal"), WAIT, || async {
            (s.source_object()["status"]["syncTime"] != before).then_some(())
        })
        .await;
    }
    // Repeats are logged at debug (which the test operator shows), the first one as a warning.
    let log = s.operator.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains(too_large) && l.contains("WARN"))
        .count();
    let repeats = log
        .lines()
        .filter(|l| l.contains(too_large) && l.contains("DEBUG"))
        .count();
    assert_eq!(warnings, 1, "said once, not at every scan:\n{log}");
    assert!(repeats >= 2, "the later scans met the same refusal:\n{log}");
    assert_eq!(s.status_str(&module, "message").as_deref(), Some(""));
}

/// `--watch-selector` shards: two operators, each with its own MPOs, over one ModuleSource that
/// both watch. Each writes its flags under a field manager of its own, so one shard's apply of
/// its whole set never erases the other's; under one shared manager, every write of shard A
/// dropped shard B's flag.
#[tokio::test]
async fn two_shards_over_one_source_keep_each_others_flags() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "shards", RegistryKind::Plain, &[], &[]).await;
    s.operator.kill();
    let id = s.id.0.clone();
    let (x, y, z) = (format!("{id}-x"), format!("{id}-y"), format!("{id}-z"));
    for module in [&x, &y, &z] {
        s.push(
            module,
            "dev",
            &support::images::ModuleImage::module(module, 900, "1"),
        )
        .await;
    }
    cluster.kubectl_ok(&["label", "ms", &s.source, "shard=common"]);
    let shard = |name: &str| format!("mpo-test={id},shard in ({name},common)");
    let flags = ["--scan-module-sources=false"];
    let a = support::operator::Operator::start_selecting(cluster, &shard("a"), &flags);
    let mut b = support::operator::Operator::start_selecting(cluster, &shard("b"), &flags);
    let label = |module: &str, shard: &str| {
        cluster.kubectl_ok(&["label", "mop", module, &format!("shard={shard}")]);
    };
    s.apply_mpo(&x, "dev", "1h");
    label(&x, "a");
    s.apply_mpo(&y, "dev", "1h");
    label(&y, "b");
    wait_for("both shards' flags", WAIT, || async {
        let source = s.source_object();
        (flagged(&source, &x) && flagged(&source, &y)).then_some(())
    })
    .await;

    // Shard A writes its set again ({x, z}); shard B's flag for y stays.
    s.apply_mpo(&z, "dev", "1h");
    label(&z, "a");
    wait_for("shard a's new flag", WAIT, || async {
        flagged(&s.source_object(), &z).then_some(())
    })
    .await;
    let source = s.source_object();
    assert!(
        flagged(&source, &y),
        "shard b's flag survived: {}",
        source["status"]
    );
    assert!(flagged(&source, &x));
    let managers = status_managers(&s.source_named(&s.source));
    let shard_managers: Vec<&String> = managers
        .iter()
        .filter(|m| m.starts_with("mpo-operator-flags-"))
        .collect();
    assert_eq!(
        shard_managers.len(),
        2,
        "one manager per shard: {managers:?}"
    );
    // Shard a takes every override over, so that the scenario's cleanup finds their finalizers
    // handled.
    b.kill();
    cluster.kubectl_ok(&["label", "--overwrite", "mop", &y, "shard=a"]);
    s.operator = a;
}

/// The flags writer converges from what the apiserver has, not from its memory: a foreign status
/// update that drops the flag, and a source deleted and re-created under its name within the
/// writer's debounce, each get the flag back within seconds. Before, the writer compared with
/// what it last wrote and waited for its 5-minute resync.
#[tokio::test]
async fn flags_come_back_after_a_foreign_update_and_on_a_recreated_source() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "flags-converge", RegistryKind::Plain, &[], &[]).await;
    let (module, _) = s.ready_module("1h").await;
    let quick = Duration::from_secs(20);
    wait_for("the flag", WAIT, || async {
        flagged(&s.source_object(), &module).then_some(())
    })
    .await;

    // Another writer replaces the module list (a merge patch replaces a list whole).
    let patch = serde_json::json!({"status": {"modules": [{"name": module}]}}).to_string();
    cluster.kubectl_ok(&[
        "patch",
        "ms",
        &s.source,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
    wait_for("the flag back after the foreign update", quick, || async {
        flagged(&s.source_object(), &module).then_some(())
    })
    .await;

    // Deleted and re-created in one command, faster than the writer's debounce.
    let yaml = s.source_yaml(&support::scenario::SourceOptions {
        docker_cfg: None,
        with_ca: false,
    });
    let out = cluster.kubectl_with_stdin(&["replace", "--force", "-f", "-"], Some(&yaml));
    assert!(
        out.status.success(),
        "kubectl replace --force: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the flag on the re-created source", quick, || async {
        flagged(&s.source_object(), &module).then_some(())
    })
    .await;
}

/// A policy that refuses any status of the ModuleSource `source` carrying an `overridden` flag:
/// what an admission webhook, a quota or a size limit does to one source's flags write.
fn deny_flags_policy(name: &str, source: &str) -> String {
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: {name}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: ["deckhouse.io"]
      apiVersions: ["*"]
      operations: ["CREATE", "UPDATE"]
      resources: ["modulesources/status"]
  validations:
  - expression: >-
      object.metadata.name != '{source}' || !has(object.status) || !has(object.status.modules)
      || !object.status.modules.exists(m, has(m.overridden) && m.overridden)
    message: overridden flags are refused on this source (test policy)
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {name}
spec:
  policyName: {name}
  validationActions: [Deny]
"#
    )
}

/// One source whose flags write is refused backs off alone. On c16ab6e its failures backed the
/// whole writer off (up to 5 minutes): flags on every other source waited, and every deletion
/// waited its full 10 s for a flush that did not come.
#[tokio::test]
async fn a_source_whose_flags_are_refused_holds_back_no_other_source() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "flags-denied", RegistryKind::Plain, &[], &[]).await;
    let denied = format!("{}-denied", s.id.0);
    let policy = format!("{}-deny-flags", s.id.0);
    cluster.apply_ok(&deny_flags_policy(&policy, &denied));
    s.track(&format!("validatingadmissionpolicybinding/{policy}"));
    s.track(&format!("validatingadmissionpolicy/{policy}"));
    s.apply_other_source(&denied);
    // The policy takes effect a moment after it is created: wait until it refuses a flag.
    let probe = serde_json::json!({"status": {"modules": [{"name": "probe", "overridden": true}]}})
        .to_string();
    wait_for("the policy to refuse a flag", WAIT, || async {
        let out = cluster.kubectl(&[
            "patch",
            "ms",
            &denied,
            "--subresource=status",
            "--type=merge",
            "-p",
            &probe,
        ]);
        (!out.status.success()).then_some(())
    })
    .await;

    let blocked = format!("{}-b", s.id.0);
    let digest = s
        .push(
            &blocked,
            "dev",
            &support::images::ModuleImage::module(&blocked, 900, "1"),
        )
        .await;
    let own_source = std::mem::replace(&mut s.source, denied.clone());
    s.apply_mpo(&blocked, "dev", "1h");
    s.source = own_source;
    s.wait_for_digest(&blocked, &digest, WAIT).await;
    // Three refusals in a row: the denied source's backoff has grown past a deletion's wait.
    let refusal = "cannot write the overridden flags";
    let refusals = |log: &str| {
        log.lines()
            .filter(|l| l.contains(refusal) && l.contains(&denied))
            .count()
    };
    wait_for("three refused flags writes", WAIT, || async {
        (refusals(&s.operator.log()) >= 3).then_some(())
    })
    .await;

    let (kept, _) = s.ready_module("1h").await;
    let quick = Duration::from_secs(10);
    wait_for("the other source's flag", quick, || async {
        flagged(&s.source_object(), &kept).then_some(())
    })
    .await;
    let deleting = std::time::Instant::now();
    cluster.kubectl_ok(&["delete", &format!("mop/{kept}"), "--timeout=30s"]);
    let took = deleting.elapsed();
    s.forget(&format!("mop/{kept}"));
    eprintln!("deletion on the other source took {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "the deletion waited {took:?}: as long as a flush that never came"
    );
    assert!(
        !flagged(&s.source_object(), &kept),
        "the deleted override's flag is gone: {}",
        s.source_object()["status"]
    );
    let log = s.operator.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains(refusal) && l.contains(&denied) && l.contains("WARN"))
        .count();
    assert_eq!(
        warnings, 1,
        "the refusal is said once, then at debug:\n{log}"
    );
    assert!(
        !flagged(&s.source_named(&denied), &blocked),
        "the policy held: no flag on the denied source"
    );
}

/// `count` module names of about 128 characters, `keep` first.
fn names_of(keep: &[String], count: usize) -> Vec<String> {
    keep.iter()
        .cloned()
        .chain((0..).map(|i| format!("n{i:05}{}", "x".repeat(122))))
        .take(count)
        .collect()
}

/// Applies [`names_of`] to the source's status as the scan does, under its field manager; false
/// when the apiserver refuses them for size.
async fn apply_names(
    api: &kube::Api<mpo_operator::crd::ModuleSource>,
    source: &str,
    keep: &[String],
    count: usize,
) -> bool {
    let names = names_of(keep, count).into_iter();
    let body = serde_json::json!({
        "apiVersion": "deckhouse.io/v1alpha1",
        "kind": "ModuleSource",
        "status": {
            "modules": names.map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>(),
            "modulesCount": count,
            // As long as the scan's own (seconds, UTC), so that a scan of the same names fits.
            "syncTime": "2026-01-01T00:00:00Z",
            "phase": "Active",
            "message": "",
        }
    });
    let params = kube::api::PatchParams::apply("mpo-operator-scan").force();
    match api
        .patch_status(source, &params, &kube::api::Patch::Apply(body))
        .await
    {
        Ok(_) => true,
        // 413, etcd's "request is too large", or past 2 MiB the apiserver's etcd client.
        Err(kube::Error::Api(status))
            if status.code == 413
                || status.message.contains("request is too large")
                || status.message.contains("message larger than max") =>
        {
            false
        }
        Err(e) => panic!("applying {count} names: {e}"),
    }
}

/// Issue 22: a source whose names fit but whose flags do not. The registry lists exactly as many
/// names as the source holds (bisected on the source first), and five overrides are applied on
/// it: their flags no longer fit. The refusal is said once in the log and in `status.message`,
/// the names are left out as when the list alone does not fit (so the source admits every
/// module), the flags are then written, and every override is applied with no message of its
/// own. A later scan does not bring the names back over the flags: its list is refused and said.
#[tokio::test]
async fn a_source_whose_flags_do_not_fit_says_so_and_makes_room_for_them() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(
        cluster,
        "flags-too-large",
        RegistryKind::Plain,
        &[],
        &["--source-scan-interval", "1h"],
    )
    .await;
    let source_ref = format!("ms/{}", s.source);
    let rescan = |value: &str| {
        cluster.kubectl_ok(&[
            "annotate",
            "--overwrite",
            &source_ref,
            &format!("renew={value}"),
        ]);
    };
    // The annotation is there before the bisection, so that later scans (renew=b, renew=c) leave
    // the object's size as it was measured.
    rescan("a");
    let api = kube::Api::<mpo_operator::crd::ModuleSource>::all(cluster.client().await);
    let modules: Vec<String> = (0..5)
        .map(|i| format!("{}-{i}{}", s.id.0, "m".repeat(100)))
        .collect();
    // The largest count that fits: 4000 names of about 128 characters do, 6000 do not.
    let (mut fits, mut refused) = (4000, 6000);
    assert!(apply_names(&api, &s.source, &modules, fits).await);
    assert!(!apply_names(&api, &s.source, &modules, refused).await);
    while refused - fits > 1 {
        let middle = (fits + refused) / 2;
        if apply_names(&api, &s.source, &modules, middle).await {
            fits = middle;
        } else {
            refused = middle;
        }
    }
    eprintln!("the source holds {fits} names, not {refused}");
    push_many_module_names(&s.registry, REPO_PATH, &names_of(&modules, fits))
        .await
        .expect("module names pushed");
    rescan("b");
    wait_for("the scan to list every name", WAIT, || async {
        (s.source_object()["status"]["modulesCount"] == fits).then_some(())
    })
    .await;

    for module in &modules {
        let digest = s
            .push(
                module,
                "dev",
                &support::images::ModuleImage::module(module, 900, "1"),
            )
            .await;
        s.apply_mpo(module, "dev", "1h");
        s.wait_for_digest(module, &digest, WAIT).await;
    }
    let said = "cannot write the overridden flags: the ModuleSource would be larger than the \
                apiserver accepts";
    let source = wait_for("every flag written, the names left out", WAIT, || async {
        let source = s.source_object();
        let flagged_all = modules.iter().all(|m| flagged(&source, m));
        let says = source["status"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(said));
        (flagged_all && says).then_some(source)
    })
    .await;
    let status = &source["status"];
    assert!(
        status["modulesCount"].is_null(),
        "no count: the source is not scanned, so every module is admitted: {}",
        status["modulesCount"]
    );
    assert_eq!(
        status["modules"].as_array().map(Vec::len),
        Some(modules.len()),
        "only the flagged entries are left"
    );
    for module in &modules {
        assert_eq!(s.status_str(module, "message").as_deref(), Some(""));
    }
    let log = s.operator.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains(said) && l.contains("WARN"))
        .count();
    assert_eq!(warnings, 1, "said once in the log:\n{log}");

    // A scan now: the names beside the flags do not fit, so they stay out and the scan says so.
    rescan("c");
    let scan_said = format!("cannot list {fits} modules in the status");
    let source = wait_for("the scan's refusal", WAIT, || async {
        let source = s.source_object();
        source["status"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&scan_said))
            .then_some(source)
    })
    .await;
    assert!(
        modules.iter().all(|m| flagged(&source, m)),
        "the flags stay: {}",
        source["status"]
    );
    assert!(source["status"]["modulesCount"].is_null());
}
