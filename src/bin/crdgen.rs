//! Writes `crds/*.yaml` from the Rust types: `cargo run --bin crdgen [DIR]` (default `crds`).
//! With `--check` it writes nothing and exits 1 when a file differs.

use std::{path::PathBuf, process::ExitCode};

use mpo_operator::crd::{all_crds, crd_yaml, kustomization_yaml};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    let dir = PathBuf::from(
        args.iter()
            .find(|a| !a.starts_with("--"))
            .map_or("crds", |s| s),
    );
    let mut files = Vec::new();
    for (file, crd) in all_crds() {
        match crd_yaml(&crd) {
            Ok(text) => files.push((file, text)),
            Err(e) => {
                eprintln!("crdgen: cannot render {file}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    files.push(("kustomization.yaml", kustomization_yaml()));
    let mut drifted = false;
    for (file, text) in files {
        let path = dir.join(file);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == text {
            continue;
        }
        if check {
            eprintln!(
                "crdgen: {} is out of date: run `cargo run --bin crdgen`",
                path.display()
            );
            drifted = true;
        } else if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text))
        {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if drifted {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
