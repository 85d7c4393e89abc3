//! SPEC §10: the registry, storage and digest layers know nothing about Kubernetes or the
//! controller, so that the benchmarks and the CLI can use them alone. This reads their sources
//! and fails on any import of kube, k8s-openapi, `crate::crd` or `crate::controller`.

use std::path::{Path, PathBuf};

const KUBE_FREE: &[&str] = &[
    "src/registry",
    "src/storage",
    "src/digest.rs",
    "src/install.rs",
    "src/signing",
];
const FORBIDDEN: &[&str] = &[
    "kube::",
    "kube_runtime",
    "kube_client",
    "kube_lease_manager",
    "k8s_openapi",
    "crate::crd",
    "crate::controller",
    "super::super::crd",
    "super::super::controller",
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        out.push(path.to_owned());
        return;
    }
    let entries = std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() || path.extension().is_some_and(|e| e == "rs") {
            rust_files(&path, out);
        }
    }
}

#[test]
fn registry_storage_and_digest_import_nothing_from_kubernetes_or_the_controller() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for layer in KUBE_FREE {
        rust_files(&root.join(layer), &mut files);
    }
    assert!(files.len() > 10, "found only {} files", files.len());
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            // `use kube::…`, `kube::Error` and `{ kube, … }` alike.
            let names_kube = code
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .any(|word| word == "kube" || word == "k8s_openapi");
            if names_kube || FORBIDDEN.iter().any(|f| code.contains(f)) {
                offences.push(format!(
                    "{}:{}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "kube-free layers import Kubernetes or the controller:\n{}",
        offences.join("\n")
    );
}

/// The CLI shares the registry, storage, install and CRD layers with the operator, but never
/// the controller's internals: what it does by hand must not depend on reconcile machinery.
#[test]
fn the_cli_imports_nothing_from_the_controller() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/cli"), &mut files);
    rust_files(&root.join("src/bin/kubectl-mpo.rs"), &mut files);
    assert!(files.len() > 5, "found only {} files", files.len());
    let offences: Vec<String> = files
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).expect("readable source");
            text.lines()
                .enumerate()
                .filter(|(_, line)| {
                    let code = line.split("//").next().unwrap_or_default();
                    code.contains("controller::") || code.contains("mpo_operator::controller")
                })
                .map(|(n, line)| format!("{}:{}: {}", file.display(), n + 1, line.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        offences.is_empty(),
        "the CLI imports the controller:\n{}",
        offences.join("\n")
    );
}
