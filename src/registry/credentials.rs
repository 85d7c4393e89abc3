//! What is sent to a registry host, without the Kubernetes type it is decoded from (the dockerCfg
//! of a ModuleSource lives in `crd`, which depends on this layer, never the other way).

use std::fmt;

/// What the operator sends to one registry host. `Debug` prints the kind and user, never a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryCredentials {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A dockerCfg `identitytoken`: an OAuth2 refresh token for the registry's token server.
    IdentityToken {
        username: Option<String>,
        token: String,
    },
    /// A dockerCfg `registrytoken`: the bearer token itself.
    Bearer(String),
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::IdentityToken { username, .. } => match username {
                Some(username) => write!(f, "IdentityToken({username}, <redacted>)"),
                None => f.write_str("IdentityToken(<redacted>)"),
            },
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}
