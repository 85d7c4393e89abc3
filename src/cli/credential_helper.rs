//! Docker credential helpers (`credsStore`, `credHelpers`), run exactly as docker runs them:
//! `docker-credential-<name> get` with the server URL on stdin, the credentials as JSON on
//! stdout. Docker Desktop (`desktop`), macOS (`osxkeychain`), `pass`, `secretservice`, ECR
//! (`ecr-login`) and GCR (`gcloud`) keep credentials there, leaving `auths` entries empty.
//!
//! The CLI only: the operator never executes anything a dockerCfg names. Nothing a helper
//! prints reaches a message or a log: its output may hold the secret.

use std::{process::Stdio, time::Duration};

use serde::Deserialize;
use tokio::{io::AsyncWriteExt, process::Command};

use crate::registry::RegistryCredentials;

/// Helpers may ask the user (a keychain prompt); this bounds a helper that never answers.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);
/// What the docker-credential-helpers library prints when it has nothing for the server.
const NOT_FOUND: &str = "credentials not found in native keychain";
/// The username helpers return with an identity (refresh) token as the secret.
const IDENTITY_TOKEN_USER: &str = "<token>";

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("the credential helper {program} is not on PATH (named by the docker config)")]
    Missing { program: String },
    #[error("cannot run the credential helper {program}: {cause}")]
    Run {
        program: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("the credential helper {program} did not answer within {}", humantime::format_duration(*waited))]
    Timeout { program: String, waited: Duration },
    // The helper's output is not quoted: it may be, or hold, the secret.
    #[error("the credential helper {program} failed ({status})")]
    Failed { program: String, status: String },
    #[error("the credential helper {program} answered something other than its JSON")]
    BadAnswer { program: String },
}

#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// The credentials `helper` holds for `server_url`; `None` when it has none (docker then goes
/// on without, or with the file's own entry).
pub async fn get(
    helper: &str,
    server_url: &str,
) -> Result<Option<RegistryCredentials>, HelperError> {
    let program = format!("docker-credential-{helper}");
    let output = run(&program, server_url).await?;
    if !output.status.success() {
        if String::from_utf8_lossy(&output.stdout).trim() == NOT_FOUND {
            return Ok(None);
        }
        return Err(HelperError::Failed {
            program,
            status: output.status.to_string(),
        });
    }
    let answer: Answer =
        serde_json::from_slice(&output.stdout).map_err(|_| HelperError::BadAnswer { program })?;
    Ok(credentials_of(answer))
}

fn credentials_of(answer: Answer) -> Option<RegistryCredentials> {
    if answer.secret.is_empty() {
        return None;
    }
    Some(if answer.username == IDENTITY_TOKEN_USER {
        RegistryCredentials::IdentityToken {
            username: None,
            token: answer.secret,
        }
    } else {
        RegistryCredentials::Basic {
            username: answer.username,
            password: answer.secret,
        }
    })
}

async fn run(program: &str, server_url: &str) -> Result<std::process::Output, HelperError> {
    let run_error = |cause: std::io::Error| match cause.kind() {
        std::io::ErrorKind::NotFound => HelperError::Missing {
            program: program.to_owned(),
        },
        _ => HelperError::Run {
            program: program.to_owned(),
            cause,
        },
    };
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // A prompt or diagnostics of the helper go to the user's terminal, as with docker.
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(run_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server_url.as_bytes())
            .await
            .map_err(run_error)?;
        // Dropped here: the helper reads to the end of its input.
    }
    match tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.map_err(run_error),
        Err(_) => Err(HelperError::Timeout {
            program: program.to_owned(),
            waited: HELPER_TIMEOUT,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_answers_become_credentials() {
        let basic = credentials_of(Answer {
            username: "u".into(),
            secret: "p".into(),
        });
        assert_eq!(
            basic,
            Some(RegistryCredentials::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        let identity = credentials_of(Answer {
            username: "<token>".into(),
            secret: "refresh".into(),
        });
        assert_eq!(
            identity,
            Some(RegistryCredentials::IdentityToken {
                username: None,
                token: "refresh".into()
            })
        );
        let empty = credentials_of(Answer {
            username: "u".into(),
            secret: String::new(),
        });
        assert_eq!(empty, None);
    }
}
