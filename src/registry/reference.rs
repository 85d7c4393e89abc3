use std::fmt;

use oci_client::Reference;

use super::RegistryError;
use crate::Digest;

/// `spec.registry.repo` split into the registry host and the repository path under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoName {
    host: String,
    path: String,
}

impl RepoName {
    /// Parses `host[:port]/path`. A scheme prefix is tolerated (the scheme comes from
    /// `spec.registry.scheme`); userinfo is refused so that no password can hide in a reference.
    pub fn parse(repo: &str) -> Result<Self, RegistryError> {
        let bad = |reason: &str| RegistryError::BadRepo {
            repo: redact_userinfo(repo),
            reason: reason.into(),
        };
        let trimmed = repo.trim().trim_end_matches('/');
        let trimmed = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
        let (host, path) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        if host.is_empty() {
            return Err(bad("no registry host"));
        }
        if host.contains('@') {
            return Err(bad(
                "credentials in the repo are not allowed; use dockerCfg",
            ));
        }
        if let Err(reason) = valid_host(host) {
            return Err(bad(reason));
        }
        let path_ok = path
            .split('/')
            .all(|part| part.is_empty() || valid_path_component(part));
        if !path_ok || path.contains("//") {
            return Err(bad(
                "the path must be lowercase letters, digits and separators",
            ));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            path: path.to_owned(),
        })
    }

    /// `name[:port]`, as it appears in a dockerCfg.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The repository of a module: `<path>/<module>`.
    pub fn module_repository(&self, module: &str) -> String {
        if self.path.is_empty() {
            module.to_owned()
        } else {
            format!("{}/{module}", self.path)
        }
    }

    /// The root repository's path, whose tags are the module names.
    pub(super) fn root_repository(&self) -> &str {
        &self.path
    }

    /// The host requests go to, as for module images (see [`ModuleRef::endpoint`]).
    pub(super) fn endpoint(&self) -> String {
        self.root_reference().resolve_registry().to_owned()
    }

    /// The root repository, whose tags are the module names.
    pub fn root_reference(&self) -> Reference {
        Reference::with_tag(self.host.clone(), self.path.clone(), "latest".into())
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.host)
        } else {
            write!(f, "{}/{}", self.host, self.path)
        }
    }
}

/// The image of one module at one tag: `<repo>/<module>:<tag>`, or its release image
/// `<repo>/<module>/release:<version|channel>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleRef {
    repo: RepoName,
    module: String,
    tag: String,
    release: bool,
}

impl ModuleRef {
    pub fn new(repo: RepoName, module: &str, tag: &str) -> Result<Self, RegistryError> {
        if !valid_path_component(module) {
            return Err(RegistryError::BadReference(format!(
                "{module:?} is not a valid repository name"
            )));
        }
        if !valid_tag(tag) {
            return Err(RegistryError::BadReference(format!(
                "{tag:?} is not a valid image tag"
            )));
        }
        Ok(Self {
            repo,
            module: module.to_owned(),
            tag: tag.to_owned(),
            release: false,
        })
    }

    /// The release image of `module`: `<repo>/<module>/release:<tag>` (a `version.json`, with a
    /// version or a channel name as the tag).
    pub fn release(repo: RepoName, module: &str, tag: &str) -> Result<Self, RegistryError> {
        Ok(Self {
            release: true,
            ..Self::new(repo, module, tag)?
        })
    }

    /// The same image repository at another tag.
    pub fn with_tag(&self, tag: &str) -> Result<Self, RegistryError> {
        Ok(Self {
            release: self.release,
            ..Self::new(self.repo.clone(), &self.module, tag)?
        })
    }

    pub fn module(&self) -> &str {
        &self.module
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `<path>/<module>` (or `<path>/<module>/release`): the repository part of the registry
    /// URLs and of token scopes.
    pub(super) fn repository(&self) -> String {
        let module = self.repo.module_repository(&self.module);
        if self.release {
            module + "/release"
        } else {
            module
        }
    }

    /// The host the requests go to (`docker.io` is served by `index.docker.io`), as oci-client
    /// resolves it.
    pub(super) fn endpoint(&self) -> String {
        self.by_tag().resolve_registry().to_owned()
    }

    pub(super) fn by_tag(&self) -> Reference {
        Reference::with_tag(self.repo.host.clone(), self.repository(), self.tag.clone())
    }

    /// `<repo>/<module>` (or `…/release`): the image repository, for messages.
    pub fn name(&self) -> String {
        format!("{}/{}", self.repo.host, self.repository())
    }

    /// `<repo>/<module>@<digest>`, for messages.
    pub fn at_digest(&self, digest: &Digest) -> String {
        format!("{}/{}@{digest}", self.repo.host, self.repository())
    }
}

impl fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.repo.host, self.repository(), self.tag)
    }
}

/// OCI distribution: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`; checked loosely (separators not at the ends).
/// `name[:port]` as docker's reference grammar has it: DNS labels of letters, digits and inner
/// `-`, separated by `.`; or `[IPv6]`; a port of 1–65535. Anything else (`?`, `#`, `%`, spaces,
/// `\\`) would change the meaning of the URLs built from it.
fn valid_host(host: &str) -> Result<(), &'static str> {
    let (name, port) = match host.strip_prefix('[') {
        Some(bracketed) => {
            let (address, rest) = bracketed
                .split_once(']')
                .ok_or("the host has an unclosed [")?;
            address
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| "the host in [ ] is not an IPv6 address")?;
            match rest {
                "" => return Ok(()),
                _ => (
                    "",
                    rest.strip_prefix(':')
                        .ok_or("junk after the ] of the host")?,
                ),
            }
        }
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, port),
            None => (host, ""),
        },
    };
    let port_ok = port.is_empty()
        || (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok || (host.ends_with(':')) {
        return Err("the port must be a number from 1 to 65535");
    }
    if host.starts_with('[') {
        return Ok(());
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(
            "the host must be a DNS name or an IP address, optionally with :port (letters, digits, - and .)",
        )
    }
}

fn valid_path_component(part: &str) -> bool {
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-');
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    part.bytes().all(allowed) && edge(part.as_bytes().first()) && edge(part.as_bytes().last())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
pub(crate) fn valid_tag(tag: &str) -> bool {
    let first_ok = tag
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    first_ok
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn redact_userinfo(repo: &str) -> String {
    match repo.rsplit_once('@') {
        Some((_, rest)) => format!("<redacted>@{rest}"),
        None => repo.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_module_references() {
        let repo = RepoName::parse("127.0.0.1:5000/deckhouse/modules").expect("valid");
        assert_eq!(repo.host(), "127.0.0.1:5000");
        let r = ModuleRef::new(repo, "echo", "main-patch-03354").expect("valid");
        assert_eq!(
            r.to_string(),
            "127.0.0.1:5000/deckhouse/modules/echo:main-patch-03354"
        );
        assert_eq!(r.by_tag().repository(), "deckhouse/modules/echo");
        let digest = Digest::of(b"m");
        assert_eq!(
            r.at_digest(&digest),
            format!("127.0.0.1:5000/deckhouse/modules/echo@{digest}")
        );
        let release = ModuleRef::release(r.repo.clone(), "echo", "alpha").expect("valid");
        assert_eq!(
            release.to_string(),
            "127.0.0.1:5000/deckhouse/modules/echo/release:alpha"
        );
        let moved = release.with_tag("v1.23.1").expect("valid");
        assert_eq!(moved.repository(), "deckhouse/modules/echo/release");
        assert_eq!(moved.tag(), "v1.23.1");
        let bare = RepoName::parse("r.example").expect("valid");
        let at_root = ModuleRef::new(bare, "echo", "t").expect("valid");
        assert_eq!(at_root.to_string(), "r.example/echo:t");
    }

    #[test]
    fn hosts_are_names_or_addresses_with_a_port_at_most() {
        for good in [
            "registry.example.com/m",
            "Registry.Example.COM:443/m",
            "127.0.0.1:5000/m",
            "[::1]:5000/m",
            "[fd00::1]/m",
            "localhost/m",
            "my-registry/m",
        ] {
            assert!(RepoName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "r.example?x=1/m",
            "r.example#frag/m",
            "r example/m",
            "r.example:/m",
            "r.example:0/m",
            "r.example:99999/m",
            "r.example:80a/m",
            "r..example/m",
            "-r.example/m",
            "r_x.example/m",
            "r%2e.example/m",
            "[::1/m",
            "[not-v6]/m",
            "[::1]x/m",
        ] {
            let err = RepoName::parse(bad).expect_err(bad);
            assert!(matches!(err, RegistryError::BadRepo { .. }), "{bad}: {err}");
        }
        let upper = RepoName::parse("Registry.Example.COM:443/m").expect("valid");
        assert_eq!(upper.host(), "registry.example.com:443");
    }

    #[test]
    fn refuses_userinfo_without_echoing_it() {
        let err = RepoName::parse("user:hunter2@r.example/m").expect_err("refused");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn validates_tags_and_names() {
        assert!(valid_tag("v1.23.1") && valid_tag("_x") && !valid_tag(".x") && !valid_tag(""));
        assert!(!valid_tag(&"a".repeat(129)));
        let repo = RepoName::parse("r/m").expect("valid");
        assert!(ModuleRef::new(repo.clone(), "Echo", "t").is_err());
        assert!(ModuleRef::new(repo, "echo", "bad tag").is_err());
    }
}
