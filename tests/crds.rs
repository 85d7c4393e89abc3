//! The CRDs as users meet them: generated from the Rust types, installed in a real apiserver,
//! the spec's examples accepted, printer columns, defaults and schema validation via kubectl.

mod support;

use mpo_operator::crd::{all_crds, crd_yaml, kustomization_yaml};
use support::cluster::{Cleanup, repo_root, stderr, stdout};

#[test]
fn committed_crds_match_the_rust_types() {
    let mut expected: Vec<(&str, String)> = all_crds()
        .into_iter()
        .map(|(file, crd)| (file, crd_yaml(&crd).expect("renders")))
        .collect();
    expected.push(("kustomization.yaml", kustomization_yaml()));
    for (file, generated) in expected {
        let committed =
            std::fs::read_to_string(repo_root().join("crds").join(file)).unwrap_or_default();
        assert!(
            committed == generated,
            "crds/{file} is out of date with src/crd/: run `cargo run --bin crdgen` and commit the result"
        );
    }
}

#[test]
fn crds_become_established_and_the_examples_apply() {
    let cluster = require_cluster!();
    cluster.install_crds();
    let established = cluster.kubectl_ok(&[
        "get", "crd", "modulepulloverrides.deckhouse.io", "modulesources.deckhouse.io",
        "-o", "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Established\")].status}{\"\\n\"}{end}",
    ]);
    assert_eq!(established.lines().collect::<Vec<_>>(), ["True", "True"]);

    let examples = repo_root().join("examples");
    let _cleanup = Cleanup {
        cluster,
        objects: vec!["mop/echo".into(), "ms/test".into()],
    };
    let applied = cluster.kubectl_ok(&["apply", "-f", examples.to_str().expect("utf-8")]);
    assert!(
        applied.contains("modulepulloverride.deckhouse.io/echo"),
        "{applied}"
    );
    assert!(
        applied.contains("modulesource.deckhouse.io/test"),
        "{applied}"
    );
    assert_eq!(
        cluster.jsonpath("mop/echo", "{.spec.imageTag}"),
        "main-patch-03354"
    );
    assert_eq!(
        cluster.jsonpath("ms/test", "{.spec.registry.scheme}"),
        "HTTPS"
    );

    for short in ["mop", "mpo", "modulepulloverrides"] {
        let table = cluster.kubectl_ok(&["get", short]);
        let header: Vec<&str> = table
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            ["NAME", "TAG", "DIGEST", "UPDATED", "PINNED", "MESSAGE"],
            "kubectl get {short}:\n{table}"
        );
        assert!(
            table.contains("echo") && table.contains("main-patch-03354"),
            "{table}"
        );
    }
    let sources = cluster.kubectl_ok(&["get", "ms"]);
    let header: Vec<&str> = sources
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "COUNT", "SYNC", "MESSAGE"], "{sources}");
    assert!(sources.contains("test"), "{sources}");
}

#[test]
fn scan_interval_defaults_to_15s() {
    let cluster = require_cluster!();
    cluster.install_crds();
    let _cleanup = Cleanup {
        cluster,
        objects: vec!["mop/defaulted".into()],
    };
    cluster.apply_ok(
        "apiVersion: deckhouse.io/v1alpha1\nkind: ModulePullOverride\nmetadata: {name: defaulted}\nspec: {imageTag: v1.2.3, source: test}\n",
    );
    assert_eq!(
        cluster.jsonpath("mop/defaulted", "{.spec.scanInterval}"),
        "15s"
    );
}

#[test]
fn the_schema_rejects_invalid_objects() {
    let cluster = require_cluster!();
    cluster.install_crds();
    let mpo = |spec: &str| {
        format!(
            "apiVersion: deckhouse.io/v1alpha1\nkind: ModulePullOverride\nmetadata: {{name: rejected}}\nspec: {spec}\n"
        )
    };
    let ms = |registry: &str| {
        format!(
            "apiVersion: deckhouse.io/v1alpha1\nkind: ModuleSource\nmetadata: {{name: rejected}}\nspec: {{registry: {registry}}}\n"
        )
    };
    let cases = [
        ("missing imageTag", mpo("{source: test}"), "imageTag"),
        ("missing source", mpo("{imageTag: v1}"), "source"),
        (
            "scanInterval in words",
            mpo("{imageTag: v1, source: test, scanInterval: \"15 seconds\"}"),
            "scanInterval",
        ),
        (
            "zero scanInterval",
            mpo("{imageTag: v1, source: test, scanInterval: 0s}"),
            "at least 1s",
        ),
        (
            "tag with a slash",
            mpo("{imageTag: a/b, source: test}"),
            "imageTag",
        ),
        (
            "scheme FTP",
            ms("{repo: r.example/m, scheme: FTP}"),
            "scheme",
        ),
        ("missing repo", ms("{scheme: HTTPS}"), "repo"),
        (
            "signature policy without keys",
            ms("{repo: r.example/m}, verify: {provider: cosign, publicKeys: []}"),
            "publicKeys",
        ),
        (
            "unknown signature provider",
            ms("{repo: r.example/m}, verify: {provider: notation, publicKeys: [k]}"),
            "provider",
        ),
    ];
    for (what, yaml, field) in cases {
        let out = cluster.apply(&yaml);
        assert!(!out.status.success(), "{what}: accepted\n{}", stdout(&out));
        assert!(
            stderr(&out).contains(field),
            "{what}: the error should name {field}: {}",
            stderr(&out)
        );
    }
}
