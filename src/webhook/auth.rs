//! Who may wake overrides: whoever shows the shared token. Pure.
//!
//! Senders differ in what they can send: docker-registry, GitLab's registry and Harbor set an
//! `Authorization` header (`Bearer <token>`); GitHub signs the body (`X-Hub-Signature-256`, an
//! HMAC-SHA256 with the token as key); Docker Hub and Quay send neither, so the token may be the
//! last path segment (`/hooks/dockerhub/<token>`). Every comparison takes the same time whatever
//! the bytes, so the token cannot be guessed byte by byte from response times.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// What a request offers as proof.
#[derive(Clone, Copy, Debug, Default)]
pub struct Proof<'a> {
    pub authorization: Option<&'a str>,
    pub path_token: Option<&'a str>,
    pub hub_signature: Option<&'a str>,
}

/// Whether `proof` shows `token` (for a signature: over `body`).
pub fn authorized(token: &[u8], proof: &Proof<'_>, body: &[u8]) -> bool {
    let bearer = proof
        .authorization
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, offered)| same(offered.trim().as_bytes(), token));
    let in_path = proof
        .path_token
        .is_some_and(|offered| same(offered.as_bytes(), token));
    let signed = proof
        .hub_signature
        .is_some_and(|signature| signature_valid(token, signature, body));
    bearer | in_path | signed
}

fn same(offered: &[u8], token: &[u8]) -> bool {
    !token.is_empty() && bool::from(offered.ct_eq(token))
}

/// `sha256=<hex of HMAC-SHA256(token, body)>`, as GitHub sends it.
fn signature_valid(token: &[u8], signature: &str, body: &[u8]) -> bool {
    let Some(hex_mac) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(offered) = hex::decode(hex_mac.trim()) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(token) else {
        return false;
    };
    mac.update(body);
    // Constant time.
    !token.is_empty() && mac.verify_slice(&offered).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"s3cret-token-of-the-hook";

    fn sign(body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(TOKEN).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn a_bearer_token_in_any_case_of_the_scheme() {
        for header in [
            "Bearer s3cret-token-of-the-hook",
            "bearer s3cret-token-of-the-hook ",
        ] {
            let proof = Proof {
                authorization: Some(header),
                ..Proof::default()
            };
            assert!(authorized(TOKEN, &proof, b"{}"), "{header}");
        }
        for header in [
            "Bearer s3cret",
            "Basic s3cret-token-of-the-hook",
            "s3cret-token-of-the-hook",
            "Bearer ",
        ] {
            let proof = Proof {
                authorization: Some(header),
                ..Proof::default()
            };
            assert!(!authorized(TOKEN, &proof, b"{}"), "{header}");
        }
    }

    #[test]
    fn a_token_in_the_path() {
        let good = Proof {
            path_token: Some("s3cret-token-of-the-hook"),
            ..Proof::default()
        };
        assert!(authorized(TOKEN, &good, b""));
        let bad = Proof {
            path_token: Some("s3cret-token-of-the-hooK"),
            ..Proof::default()
        };
        assert!(!authorized(TOKEN, &bad, b""));
    }

    #[test]
    fn a_github_signature_over_this_very_body() {
        let body = br#"{"action":"published"}"#;
        let signature = sign(body);
        let proof = Proof {
            hub_signature: Some(&signature),
            ..Proof::default()
        };
        assert!(authorized(TOKEN, &proof, body));
        assert!(!authorized(TOKEN, &proof, br#"{"action":"published" }"#));
        let sha1 = Proof {
            hub_signature: Some("sha1=00"),
            ..Proof::default()
        };
        assert!(!authorized(TOKEN, &sha1, body));
    }

    #[test]
    fn nothing_and_an_empty_token_authorize_nobody() {
        assert!(!authorized(TOKEN, &Proof::default(), b""));
        let empty = Proof {
            authorization: Some("Bearer "),
            path_token: Some(""),
            ..Proof::default()
        };
        assert!(!authorized(b"", &empty, b""));
    }
}
