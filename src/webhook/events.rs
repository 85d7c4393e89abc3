//! What a push notification says, read from each sender's own payload (#19): the distribution
//! envelope (docker-registry, GitLab's registry, Harbor's core), Harbor and Docker Hub webhooks,
//! Quay's repository push, GitHub's `registry_package`/`package` events, and a generic body for
//! CI. Pure: no I/O, no Kubernetes.

use serde::Deserialize;
use serde_json::Value;

/// The senders this listener understands, each on its own path (`/hooks/<kind>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// The distribution notification envelope (`application/vnd.docker.distribution.events.v1+json`).
    Registry,
    Harbor,
    DockerHub,
    Quay,
    GitHub,
    /// `{"repository": "<host>/<path>", "tag": "<tag>"}` or `{"mpo": "<name>"}`.
    Generic,
}

impl Sender {
    pub fn from_path(segment: &str) -> Option<Self> {
        Some(match segment {
            "registry" => Self::Registry,
            "harbor" => Self::Harbor,
            "dockerhub" => Self::DockerHub,
            "quay" => Self::Quay,
            "github" => Self::GitHub,
            "generic" => Self::Generic,
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Harbor => "harbor",
            Self::DockerHub => "dockerhub",
            Self::Quay => "quay",
            Self::GitHub => "github",
            Self::Generic => "generic",
        }
    }
}

/// One thing a notification asks to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wake {
    /// A tag pushed to a repository; `host` when the sender names it.
    Push {
        host: Option<String>,
        repository: String,
        tag: String,
    },
    /// An override named directly (the generic body).
    Mpo(String),
}

/// Why a body is refused (400), in one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a {sender} payload: {reason}")]
    Shape {
        sender: &'static str,
        reason: String,
    },
}

/// The pushes (or overrides) `body` from `sender` names. Events that are not pushes of a tag
/// (pulls, deletes, blob uploads, pings) name nothing and are no error.
pub fn parse(sender: Sender, body: &[u8]) -> Result<Vec<Wake>, PayloadError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        // serde_json's message names line and column; that is the one line a sender needs.
        PayloadError::NotJson(e.to_string())
    })?;
    let shape = |reason: serde_json::Error| PayloadError::Shape {
        sender: sender.label(),
        reason: reason.to_string(),
    };
    match sender {
        Sender::Registry => serde_json::from_value(value).map(registry).map_err(shape),
        Sender::Harbor => serde_json::from_value(value).map(harbor).map_err(shape),
        Sender::DockerHub => serde_json::from_value(value).map(docker_hub).map_err(shape),
        Sender::Quay => serde_json::from_value(value).map(quay).map_err(shape),
        Sender::GitHub => serde_json::from_value(value).map(github).map_err(shape),
        Sender::Generic => serde_json::from_value(value)
            .map_err(shape)
            .and_then(generic),
    }
}

// The distribution envelope: {"events": [{"action", "target": {...}, "request": {"host"}}]}.

#[derive(Deserialize)]
struct Envelope {
    events: Vec<RegistryEvent>,
}

#[derive(Deserialize)]
struct RegistryEvent {
    action: String,
    target: RegistryTarget,
    #[serde(default)]
    request: Option<RegistryRequest>,
}

#[derive(Deserialize)]
struct RegistryTarget {
    repository: String,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Deserialize)]
struct RegistryRequest {
    #[serde(default)]
    host: Option<String>,
}

fn registry(envelope: Envelope) -> Vec<Wake> {
    envelope
        .events
        .into_iter()
        .filter(|event| event.action == "push")
        .filter_map(|event| {
            let tag = event.target.tag.filter(|tag| !tag.is_empty())?;
            Some(Wake::Push {
                host: event.request.and_then(|r| r.host).filter(|h| !h.is_empty()),
                repository: event.target.repository,
                tag,
            })
        })
        .collect()
}

// Harbor: {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"tag", "resource_url"}],
// "repository": {"repo_full_name"}}}.

#[derive(Deserialize)]
struct HarborHook {
    #[serde(rename = "type")]
    kind: String,
    event_data: HarborData,
}

#[derive(Deserialize)]
struct HarborData {
    #[serde(default)]
    resources: Vec<HarborResource>,
    repository: HarborRepository,
}

#[derive(Deserialize)]
struct HarborResource {
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    resource_url: Option<String>,
}

#[derive(Deserialize)]
struct HarborRepository {
    repo_full_name: String,
}

fn harbor(hook: HarborHook) -> Vec<Wake> {
    if hook.kind != "PUSH_ARTIFACT" {
        return Vec::new();
    }
    let repository = hook.event_data.repository.repo_full_name;
    hook.event_data
        .resources
        .into_iter()
        .filter_map(|resource| {
            let tag = resource.tag.filter(|tag| !tag.is_empty())?;
            Some(Wake::Push {
                host: resource.resource_url.as_deref().and_then(host_of),
                repository: repository.clone(),
                tag,
            })
        })
        .collect()
}

// Docker Hub: {"push_data": {"tag"}, "repository": {"repo_name"}}.

#[derive(Deserialize)]
struct DockerHubHook {
    push_data: DockerHubPush,
    repository: DockerHubRepository,
}

#[derive(Deserialize)]
struct DockerHubPush {
    tag: String,
}

#[derive(Deserialize)]
struct DockerHubRepository {
    repo_name: String,
}

fn docker_hub(hook: DockerHubHook) -> Vec<Wake> {
    let repository = hook.repository.repo_name;
    // Official images are `library/<name>` in the registry, `<name>` on the hub.
    let repository = if repository.contains('/') {
        repository
    } else {
        format!("library/{repository}")
    };
    if hook.push_data.tag.is_empty() {
        return Vec::new();
    }
    vec![Wake::Push {
        host: Some("docker.io".to_owned()),
        repository,
        tag: hook.push_data.tag,
    }]
}

// Quay: {"repository": "ns/name", "docker_url": "quay.io/ns/name", "updated_tags": [...]}.

#[derive(Deserialize)]
struct QuayHook {
    repository: String,
    #[serde(default)]
    docker_url: Option<String>,
    #[serde(default)]
    updated_tags: Vec<String>,
}

fn quay(hook: QuayHook) -> Vec<Wake> {
    let host = hook.docker_url.as_deref().and_then(host_of);
    hook.updated_tags
        .into_iter()
        .filter(|tag| !tag.is_empty())
        .map(|tag| Wake::Push {
            host: host.clone(),
            repository: hook.repository.clone(),
            tag,
        })
        .collect()
}

// GitHub: {"action": "published", "package" | "registry_package": {"namespace", "name",
// "package_type", "package_version": {"package_url", "container_metadata": {"tag": {"name"}}}}}.

#[derive(Deserialize)]
struct GitHubHook {
    #[serde(default)]
    action: Option<String>,
    #[serde(default, alias = "registry_package")]
    package: Option<GitHubPackage>,
}

#[derive(Deserialize)]
struct GitHubPackage {
    #[serde(default)]
    namespace: Option<String>,
    name: String,
    #[serde(default)]
    package_type: Option<String>,
    #[serde(default)]
    package_version: Option<GitHubVersion>,
}

#[derive(Deserialize)]
struct GitHubVersion {
    #[serde(default)]
    package_url: Option<String>,
    #[serde(default)]
    container_metadata: Option<GitHubContainer>,
}

#[derive(Deserialize)]
struct GitHubContainer {
    #[serde(default)]
    tag: Option<GitHubTag>,
}

#[derive(Deserialize)]
struct GitHubTag {
    #[serde(default)]
    name: Option<String>,
}

fn github(hook: GitHubHook) -> Vec<Wake> {
    // `ping` (sent when the hook is made) and other actions name nothing.
    let Some(package) = hook.package else {
        return Vec::new();
    };
    if hook.action.as_deref() != Some("published")
        || !package
            .package_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("container"))
    {
        return Vec::new();
    }
    let Some(version) = package.package_version else {
        return Vec::new();
    };
    let tag = version
        .container_metadata
        .and_then(|c| c.tag)
        .and_then(|t| t.name)
        .filter(|t| !t.is_empty());
    let Some(tag) = tag else { return Vec::new() };
    // `ghcr.io/<owner>/<name>:<tag>` names the repository whole, nested names included.
    let from_url = version.package_url.as_deref().and_then(|url| {
        let (host, rest) = url.split_once('/')?;
        let repository = rest.rsplit_once(':').map_or(rest, |(repo, _)| repo);
        Some((host.to_owned(), repository.to_owned()))
    });
    let (host, repository) = from_url.unwrap_or_else(|| {
        let owner = package.namespace.unwrap_or_default();
        ("ghcr.io".to_owned(), format!("{owner}/{}", package.name))
    });
    vec![Wake::Push {
        host: Some(host),
        repository: repository.to_lowercase(),
        tag,
    }]
}

// Generic: {"repository": "<host>/<path>", "tag": "<tag>"} or {"mpo": "<name>"}.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenericHook {
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    mpo: Option<String>,
}

fn generic(hook: GenericHook) -> Result<Vec<Wake>, PayloadError> {
    let bad = |reason: &str| PayloadError::Shape {
        sender: Sender::Generic.label(),
        reason: reason.to_owned(),
    };
    match (hook.mpo, hook.repository, hook.tag) {
        (Some(mpo), None, None) if !mpo.is_empty() => Ok(vec![Wake::Mpo(mpo)]),
        (None, Some(repository), Some(tag)) if !tag.is_empty() => {
            let repository = repository.trim().trim_end_matches('/');
            let repository = repository
                .split_once("://")
                .map_or(repository, |(_, rest)| rest);
            let Some((host, path)) = repository.split_once('/') else {
                return Err(bad("repository must be <host>/<path>"));
            };
            if host.is_empty() || path.is_empty() {
                return Err(bad("repository must be <host>/<path>"));
            }
            Ok(vec![Wake::Push {
                host: Some(host.to_owned()),
                repository: path.to_owned(),
                tag,
            }])
        }
        _ => Err(bad(
            "expected {\"repository\": \"<host>/<path>\", \"tag\": \"<tag>\"} or {\"mpo\": \"<name>\"}",
        )),
    }
}

/// `host[:port]` of `host[:port]/path[:tag]`, without a scheme.
fn host_of(url: &str) -> Option<String> {
    let url = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (host, _) = url.split_once('/')?;
    (!host.is_empty()).then(|| host.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn push(host: Option<&str>, repository: &str, tag: &str) -> Wake {
        Wake::Push {
            host: host.map(str::to_owned),
            repository: repository.into(),
            tag: tag.into(),
        }
    }

    /// As docker-registry 2.8 sends it (docs/notifications.md), with a blob push and a pull
    /// beside the tagged manifest push.
    #[test]
    fn the_distribution_envelope_names_only_tagged_manifest_pushes() {
        let body = br#"{"events":[
          {"id":"1","timestamp":"2026-12-07T10:00:00Z","action":"push",
           "target":{"mediaType":"application/octet-stream","size":10,"digest":"sha256:aa","length":10,
                     "repository":"deckhouse/modules/echo","url":"http://127.0.0.1:5000/v2/deckhouse/modules/echo/blobs/sha256:aa"},
           "request":{"id":"r","addr":"127.0.0.1:1","host":"127.0.0.1:5000","method":"PUT","useragent":"crane"},
           "actor":{},"source":{"addr":"h:5000","instanceID":"i"}},
          {"id":"2","timestamp":"2026-12-07T10:00:01Z","action":"push",
           "target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":500,"digest":"sha256:bb",
                     "length":500,"repository":"deckhouse/modules/echo","url":"http://x","tag":"main"},
           "request":{"host":"127.0.0.1:5000","method":"PUT"},"actor":{},"source":{}},
          {"id":"3","action":"pull","target":{"repository":"deckhouse/modules/echo","tag":"main"}}
        ]}"#;
        assert_eq!(
            parse(Sender::Registry, body).unwrap(),
            [push(
                Some("127.0.0.1:5000"),
                "deckhouse/modules/echo",
                "main"
            )]
        );
    }

    #[test]
    fn harbor_push_artifact() {
        let body = br#"{"type":"PUSH_ARTIFACT","occur_at":1702000000,"operator":"admin",
          "event_data":{"resources":[{"digest":"sha256:cc","tag":"main-patch-03354",
            "resource_url":"harbor.example.com/deckhouse/modules/echo:main-patch-03354"}],
            "repository":{"date_created":1,"name":"modules/echo","namespace":"deckhouse",
              "repo_full_name":"deckhouse/modules/echo","repo_type":"private"}}}"#;
        assert_eq!(
            parse(Sender::Harbor, body).unwrap(),
            [push(
                Some("harbor.example.com"),
                "deckhouse/modules/echo",
                "main-patch-03354"
            )]
        );
        let other = br#"{"type":"DELETE_ARTIFACT","event_data":{"resources":[{"tag":"x"}],"repository":{"repo_full_name":"a/b"}}}"#;
        assert_eq!(parse(Sender::Harbor, other).unwrap(), []);
    }

    #[test]
    fn docker_hub_push() {
        let body = br#"{"callback_url":"https://registry.hub.docker.com/u/acme/echo/hook/x/",
          "push_data":{"pushed_at":1417566161,"pusher":"trustedbuilder","tag":"main"},
          "repository":{"name":"echo","namespace":"acme","repo_name":"acme/echo","status":"Active"}}"#;
        assert_eq!(
            parse(Sender::DockerHub, body).unwrap(),
            [push(Some("docker.io"), "acme/echo", "main")]
        );
    }

    #[test]
    fn quay_repository_push() {
        let body = br#"{"name":"echo","repository":"acme/echo","namespace":"acme",
          "docker_url":"quay.io/acme/echo","homepage":"https://quay.io/repository/acme/echo",
          "updated_tags":["main","latest"]}"#;
        assert_eq!(
            parse(Sender::Quay, body).unwrap(),
            [
                push(Some("quay.io"), "acme/echo", "main"),
                push(Some("quay.io"), "acme/echo", "latest")
            ]
        );
    }

    #[test]
    fn github_package_and_registry_package_events() {
        for key in ["package", "registry_package"] {
            let body = format!(
                r#"{{"action":"published","{key}":{{"id":1,"name":"modules/echo","namespace":"Acme",
                  "package_type":"CONTAINER","ecosystem":"CONTAINER",
                  "package_version":{{"version":"sha256:dd","package_url":"ghcr.io/acme/modules/echo:main",
                    "container_metadata":{{"tag":{{"name":"main","digest":"sha256:dd"}}}}}},
                  "registry":{{"url":"https://ghcr.io"}}}}}}"#
            );
            assert_eq!(
                parse(Sender::GitHub, body.as_bytes()).unwrap(),
                [push(Some("ghcr.io"), "acme/modules/echo", "main")],
                "{key}"
            );
        }
        let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
        assert_eq!(parse(Sender::GitHub, ping).unwrap(), []);
        let npm = br#"{"action":"published","package":{"name":"x","package_type":"npm","package_version":{}}}"#;
        assert_eq!(parse(Sender::GitHub, npm).unwrap(), []);
    }

    #[test]
    fn generic_bodies() {
        assert_eq!(
            parse(
                Sender::Generic,
                br#"{"repository":"registry.example.com/deckhouse/modules/echo","tag":"main"}"#
            )
            .unwrap(),
            [push(
                Some("registry.example.com"),
                "deckhouse/modules/echo",
                "main"
            )]
        );
        assert_eq!(
            parse(Sender::Generic, br#"{"mpo":"echo"}"#).unwrap(),
            [Wake::Mpo("echo".into())]
        );
        for bad in [
            &br#"{"repository":"echo","tag":"main"}"#[..],
            br#"{"tag":"main"}"#,
            br#"{"mpo":"echo","tag":"main"}"#,
            br#"{"mpo":"echo","extra":1}"#,
            br#"[]"#,
        ] {
            let err = parse(Sender::Generic, bad).unwrap_err();
            assert!(
                !err.to_string().contains('\n'),
                "one line: {err} for {}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn malformed_json_is_one_line() {
        let err = parse(Sender::Registry, b"{\"events\": [").unwrap_err();
        assert!(matches!(err, PayloadError::NotJson(_)), "{err}");
        assert!(!err.to_string().contains('\n'));
        let err = parse(Sender::Registry, br#"{"events": 3}"#).unwrap_err();
        assert!(
            err.to_string().starts_with("not a registry payload"),
            "{err}"
        );
    }

    proptest::proptest! {
        /// Random and truncated payloads never panic, whatever the sender.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), cut in 0usize..2000) {
            for sender in [Sender::Registry, Sender::Harbor, Sender::DockerHub, Sender::Quay, Sender::GitHub, Sender::Generic] {
                let _ = parse(sender, &bytes);
                let sample = br#"{"events":[{"action":"push","target":{"repository":"a/b","tag":"t"},"request":{"host":"h"}}],"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"t","resource_url":"h/a/b:t"}],"repository":{"repo_full_name":"a/b"}},"push_data":{"tag":"t"},"repository":{"repo_name":"a/b"},"updated_tags":["t"],"action":"published","package":{"name":"b","package_type":"container","package_version":{"package_url":"h/a/b:t","container_metadata":{"tag":{"name":"t"}}}}}"#;
                let _ = parse(sender, &sample[..cut.min(sample.len())]);
            }
        }
    }
}
