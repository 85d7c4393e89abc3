//! Layers and assertions shared by the unpacker's tests.

use std::{fs, path::Path};

use tar::EntryType;

use super::super::StorageError;
pub use super::super::{FailureClass, Limits, testkit::*};

pub const MODULE: &str = "echo";

pub fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub fn sample_layer() -> TarLayer {
    let long_name = format!("deep/{}/file.txt", "n".repeat(150));
    TarLayer::new()
        .dir("./")
        .dir("./templates")
        .file("./templates/deployment.yaml", b"kind: Deployment\n")
        .file("empty", b"")
        .file("images/big.bin", &pseudo_random(1 << 20))
        .file(&long_name, b"long")
        .symlink("templates/link.yaml", "deployment.yaml")
        .symlink("top", "templates")
        .hardlink("empty-again", "empty")
}

pub fn assert_sample_unpacked(root: &Path) {
    assert_eq!(
        fs::read(root.join("templates/deployment.yaml")).expect("deployment.yaml unpacked"),
        b"kind: Deployment\n"
    );
    assert_eq!(fs::read(root.join("empty")).expect("empty unpacked"), b"");
    assert_eq!(
        fs::read(root.join("images/big.bin")).expect("big.bin unpacked"),
        pseudo_random(1 << 20)
    );
    let long_name = format!("deep/{}/file.txt", "n".repeat(150));
    assert_eq!(
        fs::read(root.join(long_name)).expect("the long name unpacked"),
        b"long"
    );
    assert_eq!(
        fs::read_link(root.join("templates/link.yaml")).expect("link.yaml is a symlink"),
        Path::new("deployment.yaml")
    );
    assert_eq!(
        fs::read_link(root.join("top")).expect("top is a symlink"),
        Path::new("templates")
    );
    assert_eq!(
        fs::read(root.join("top/link.yaml")).expect("readable through the symlink"),
        b"kind: Deployment\n"
    );
    assert!(
        root.join("empty-again")
            .symlink_metadata()
            .expect("empty-again unpacked")
            .is_file()
    );
}

pub fn refusal(layers: &[Vec<u8>]) -> (Fixture, StorageError) {
    let fixture = Fixture::new();
    let err = fixture
        .unpack(MODULE, layers)
        .map(|_| ())
        .expect_err("the layers are refused");
    (fixture, err)
}

pub fn assert_refused(layers: &[Vec<u8>], expected: &str) {
    let (fixture, err) = refusal(layers);
    assert!(
        matches!(err, StorageError::Unsafe { .. }),
        "{expected}: got {err:?}"
    );
    assert_eq!(err.class(), FailureClass::Download);
    assert!(
        err.to_string().contains(expected),
        "{err} should mention {expected}"
    );
    fixture.assert_outside_untouched();
    assert!(
        fixture.module_dir_names(MODULE).is_empty(),
        "staging left behind"
    );
}

pub fn limit_error(limits: Limits, layers: &[Vec<u8>]) -> StorageError {
    let fixture = Fixture::with_limits(limits);
    let err = fixture
        .unpack(MODULE, layers)
        .map(|_| ())
        .expect_err("the layers are refused");
    assert_eq!(err.class(), FailureClass::Download);
    assert!(fixture.module_dir_names(MODULE).is_empty());
    err
}

pub fn pax_named(layer: TarLayer, name: &[u8], data: &[u8]) -> TarLayer {
    let record = pax_record("path", name);
    let mut pax = header(EntryType::XHeader, 0o644);
    pax.set_path("PaxHeaders/x").expect("a short ustar name");
    pax.set_size(record.len() as u64);
    pax.set_cksum();
    layer
        .header_with_data(&pax, &record)
        .raw(b"placeholder", EntryType::Regular, b"", data)
}
