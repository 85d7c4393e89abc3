//! What is sent to a registry host, without the Kubernetes type it is decoded from (the dockerCfg
//! of a ModuleSource lives in `crd`, which depends on this layer, never the other way).

use std::fmt;

/// What the operator sends to one registry host. `Debug` prints the kind and user, never a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryCredentials {
    Anonymous,
    Basic { username: String, password: String },
    Bearer(String),
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}
