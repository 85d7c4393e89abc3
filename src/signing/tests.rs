//! Keys and signatures made by `openssl` (testdata/), an implementation independent of ours:
//! `openssl dgst -sha256 -sign` for ECDSA and RSA (the encodings cosign writes), `openssl
//! pkeyutl -sign -rawin` for Ed25519.

use base64::Engine as _;

use super::*;

const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
const REPOSITORY: &str = "registry.example.com/modules/echo";
const PAYLOAD: &[u8] = include_bytes!("testdata/payload.json");

fn key(pem: &str) -> PublicKey {
    PublicKey::from_pem(pem).expect("a test key")
}

fn signature(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("base64")
}

fn ecdsa() -> PublicKey {
    key(include_str!("testdata/ecdsa.pub"))
}

#[test]
fn each_supported_kind_of_key_verifies_its_own_signature() {
    for (pem, sig, algorithm) in [
        (
            include_str!("testdata/ecdsa.pub"),
            include_str!("testdata/ecdsa.sig"),
            KeyAlgorithm::EcdsaP256,
        ),
        (
            include_str!("testdata/rsa.pub"),
            include_str!("testdata/rsa.sig"),
            KeyAlgorithm::Rsa,
        ),
        (
            include_str!("testdata/rsa-pkcs1.pub"),
            include_str!("testdata/rsa.sig"),
            KeyAlgorithm::Rsa,
        ),
        (
            include_str!("testdata/ed25519.pub"),
            include_str!("testdata/ed25519.sig"),
            KeyAlgorithm::Ed25519,
        ),
    ] {
        let key = key(pem);
        assert_eq!(key.algorithm(), algorithm);
        let verified = check(&[key], PAYLOAD, &signature(sig), DIGEST, REPOSITORY)
            .unwrap_or_else(|e| panic!("{}: {e}", algorithm.name()));
        assert_eq!(verified.payload.digest, DIGEST);
        assert_eq!(verified.payload.annotations["commit"], "abc123");
    }
}

#[test]
fn one_key_has_one_fingerprint_in_either_rsa_block() {
    let spki = key(include_str!("testdata/rsa.pub"));
    let pkcs1 = key(include_str!("testdata/rsa-pkcs1.pub"));
    assert_eq!(spki.fingerprint(), pkcs1.fingerprint());
    assert!(spki.fingerprint().starts_with("sha256:"));
    assert_eq!(spki.fingerprint().len(), "sha256:".len() + 64);
    assert_ne!(spki.fingerprint(), ecdsa().fingerprint());
}

#[test]
fn a_wrong_key_or_an_altered_payload_does_not_verify() {
    let other = key(include_str!("testdata/ecdsa-other.pub"));
    let sig = signature(include_str!("testdata/ecdsa.sig"));
    assert_eq!(
        check(
            std::slice::from_ref(&other),
            PAYLOAD,
            &sig,
            DIGEST,
            REPOSITORY
        ),
        Err(Refusal::NotVerified { keys: 1 })
    );
    let mut altered = PAYLOAD.to_vec();
    let at = altered.len() - 5;
    altered[at] ^= 1;
    assert_eq!(
        check(&[ecdsa()], &altered, &sig, DIGEST, REPOSITORY),
        Err(Refusal::NotVerified { keys: 1 })
    );
    // A signature of another kind never verifies (an RSA signature under an ECDSA key).
    let rsa_sig = signature(include_str!("testdata/rsa.sig"));
    assert!(!ecdsa().verifies(PAYLOAD, &rsa_sig));
    assert!(!key(include_str!("testdata/ed25519.pub")).verifies(PAYLOAD, &sig));
    // Rotation: with the old and the new key both trusted, either signature counts.
    assert!(check(&[other, ecdsa()], PAYLOAD, &sig, DIGEST, REPOSITORY).is_ok());
}

#[test]
fn a_valid_signature_of_another_image_or_repository_is_refused_as_such() {
    let other_image = check(
        &[ecdsa()],
        include_bytes!("testdata/payload-other-image.json"),
        &signature(include_str!("testdata/other-image.sig")),
        DIGEST,
        REPOSITORY,
    );
    assert_eq!(
        other_image,
        Err(Refusal::OtherImage {
            signed: "sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9"
                .into(),
            expected: DIGEST.into(),
        })
    );
    let other_repo = check(
        &[ecdsa()],
        include_bytes!("testdata/payload-other-repo.json"),
        &signature(include_str!("testdata/other-repo.sig")),
        DIGEST,
        REPOSITORY,
    );
    assert!(
        matches!(other_repo, Err(Refusal::OtherRepository { ref signed, .. }) if signed == "registry.example.com/modules/hello"),
        "{other_repo:?}"
    );
    let wrong_type = check(
        &[ecdsa()],
        include_bytes!("testdata/payload-wrong-type.json"),
        &signature(include_str!("testdata/wrong-type.sig")),
        DIGEST,
        REPOSITORY,
    );
    assert!(
        matches!(wrong_type, Err(Refusal::Malformed(ref m)) if m.contains("something else")),
        "{wrong_type:?}"
    );
}

#[test]
fn of_several_signatures_one_that_verifies_is_enough_and_a_refusal_says_the_most() {
    let good = signature(include_str!("testdata/ecdsa.sig"));
    let other = signature(include_str!("testdata/other-image.sig"));
    let other_payload: &[u8] = include_bytes!("testdata/payload-other-image.json");
    let junk = b"not a signature".to_vec();
    let classic = |payload: &[u8], signature: &[u8]| Signature::Classic {
        payload: payload.to_vec(),
        signature: signature.to_vec(),
        has_tlog_entry: false,
    };
    assert!(
        check_any(
            &[ecdsa()],
            &[classic(PAYLOAD, &junk), classic(PAYLOAD, &good)],
            DIGEST,
            REPOSITORY
        )
        .is_ok()
    );
    assert!(matches!(
        check_any(
            &[ecdsa()],
            &[classic(other_payload, &other), classic(PAYLOAD, &junk)],
            DIGEST,
            REPOSITORY
        ),
        Err(Refusal::OtherImage { .. })
    ));
    assert_eq!(
        check_any(&[ecdsa()], [], DIGEST, REPOSITORY),
        Err(Refusal::Unsigned)
    );
}

#[test]
fn repositories_compare_without_tag_and_with_docker_hub_spelled_either_way() {
    assert!(same_repository(
        "registry.example.com:5000/modules/echo:v1",
        "registry.example.com:5000/modules/echo"
    ));
    assert!(same_repository(
        "Registry.Example.com/modules/echo",
        "registry.example.com/modules/echo"
    ));
    assert!(same_repository(
        "docker.io/org/echo",
        "index.docker.io/org/echo"
    ));
    assert!(!same_repository(
        "registry.example.com:5000/modules/echo",
        "registry.example.com/modules/echo"
    ));
    assert!(!same_repository(
        "registry.example.com/modules/echo-evil",
        "registry.example.com/modules/echo"
    ));
}

#[test]
fn keys_that_are_not_supported_are_said_to_be() {
    assert!(matches!(
        PublicKey::from_pem(include_str!("testdata/p384.pub")),
        Err(KeyError::OtherCurve)
    ));
    assert!(matches!(
        PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
        Err(KeyError::Unsupported)
    ));
    assert!(matches!(
        PublicKey::from_pem("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"),
        Err(KeyError::Unsupported)
    ));
}

#[test]
fn a_payload_that_is_no_simple_signing_document_is_refused_in_one_line() {
    let refused = Claim::parse_simple_signing(b"{\"critical\":{}}").expect_err("refused");
    assert!(!refused.contains('\n'), "{refused}");
    let huge = vec![b' '; payload::MAX_PAYLOAD_BYTES + 1];
    assert!(Claim::parse_simple_signing(&huge).is_err());
}

/// A bundle `cosign sign` v3.1.3 stored as a referrer (`--use-signing-config=false
/// --tlog-upload=false`), and the public key it was made with.
const V3_BUNDLE: &[u8] = include_bytes!("testdata/cosign-v3-bundle.json");
const V3_DIGEST: &str = "sha256:3ede1be3ff4c6c523054e3cc8a27bff129487c4345ec025f878ef41f498849e7";

fn v3_key() -> PublicKey {
    key(include_str!("testdata/cosign-v3.pub"))
}

/// The bundle with its envelope's payload replaced by `edit` of the statement.
fn v3_bundle_with(edit: impl Fn(&str) -> String) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bundle: serde_json::Value = serde_json::from_slice(V3_BUNDLE).expect("JSON");
    let payload = b64
        .decode(bundle["dsseEnvelope"]["payload"].as_str().expect("payload"))
        .expect("base64");
    let edited = edit(&String::from_utf8(payload).expect("UTF-8"));
    bundle["dsseEnvelope"]["payload"] = b64.encode(edited).into();
    bundle.to_string().into_bytes()
}

#[test]
fn a_cosign_v3_bundle_verifies_with_its_key_for_its_digest_in_any_repository() {
    let verified =
        check_bundle(&[ecdsa(), v3_key()], V3_BUNDLE, V3_DIGEST, REPOSITORY).expect("verified");
    assert_eq!(verified.key, v3_key().fingerprint());
    assert_eq!(verified.format, Format::Bundle);
    assert!(!verified.has_tlog_entry);
    // cosign v3 names the subject by digest only.
    assert_eq!(verified.payload.reference, "");
    assert_eq!(
        check_bundle(&[ecdsa()], V3_BUNDLE, V3_DIGEST, REPOSITORY),
        Err(Refusal::NotVerified { keys: 1 })
    );
}

#[test]
fn a_bundle_of_another_digest_or_altered_or_of_another_kind_is_refused() {
    let other = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    assert!(matches!(
        check_bundle(&[v3_key()], V3_BUNDLE, other, REPOSITORY),
        Err(Refusal::OtherImage { .. })
    ));
    let altered = v3_bundle_with(|s| {
        s.replace(
            V3_DIGEST.trim_start_matches("sha256:"),
            other.trim_start_matches("sha256:"),
        )
    });
    assert_eq!(
        check_bundle(&[v3_key()], &altered, other, REPOSITORY),
        Err(Refusal::NotVerified { keys: 1 })
    );
    let message_signature = br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","messageSignature":{"signature":"AA=="}}"#;
    assert!(matches!(
        check_bundle(&[v3_key()], message_signature, V3_DIGEST, REPOSITORY),
        Err(Refusal::Malformed(m)) if m.contains("message signature")
    ));
    assert!(matches!(
        check_bundle(&[v3_key()], b"{}", V3_DIGEST, REPOSITORY),
        Err(Refusal::Malformed(_))
    ));
    // Among several, the bundle that verifies is enough.
    let signatures = [
        Signature::Bundle(altered),
        Signature::Bundle(V3_BUNDLE.to_vec()),
    ];
    assert!(check_any(&[v3_key()], &signatures, V3_DIGEST, REPOSITORY).is_ok());
}

#[test]
fn dsse_pre_authentication_encoding_binds_the_type_and_the_length() {
    assert_eq!(
        bundle::pre_authentication_encoding("application/vnd.in-toto+json", b"{}"),
        b"DSSEv1 28 application/vnd.in-toto+json 2 {}".to_vec()
    );
}

/// An in-toto statement as cosign v3 writes it, with `predicate_type` and the subject's
/// annotations given.
fn statement(predicate_type: &str, annotations: &str) -> String {
    format!(
        r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha256":"{}"}},"annotations":{annotations}}}],"predicateType":"{predicate_type}","predicate":{{"commit":"from-the-predicate"}}}}"#,
        V3_DIGEST.trim_start_matches("sha256:")
    )
}

#[test]
fn a_statement_carries_the_signers_annotations_on_its_subject() {
    let parsed = bundle::Statement::parse(
        "application/vnd.in-toto+json",
        statement(bundle::COSIGN_SIGN_PREDICATE_TYPE, r#"{"commit":"abc123"}"#).as_bytes(),
    )
    .expect("a signature statement");
    assert_eq!(parsed.subjects.len(), 1);
    assert_eq!(parsed.subjects[0].digest.as_deref(), Some(V3_DIGEST));
    // The subject's, not the predicate's: cosign v3 puts `-a key=value` there.
    assert_eq!(parsed.subjects[0].annotations["commit"], "abc123");
}

#[test]
fn an_attestation_signed_with_a_trusted_key_is_no_signature() {
    for predicate_type in [
        "https://slsa.dev/provenance/v1",
        "https://spdx.dev/Document",
        "https://cosign.sigstore.dev/attestation/v1",
        "",
    ] {
        let refused = bundle::Statement::parse(
            "application/vnd.in-toto+json",
            statement(predicate_type, "{}").as_bytes(),
        )
        .expect_err(predicate_type);
        assert!(
            refused.contains("attestation") && refused.contains(predicate_type),
            "{refused}"
        );
        assert!(!refused.contains('\n'));
    }
}
