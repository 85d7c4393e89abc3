//! Which overrides a notification wakes. Pure.
//!
//! A push wakes the overrides whose image, `<source repo path>/<override name>`, is the pushed
//! repository and whose `imageTag` is the pushed tag. The host is not compared: senders name the
//! registry as the pusher typed it (`localhost:5000`, an IP, an alias of a mirror), so comparing
//! it would miss wakes, and a wake too many costs one HEAD that finds nothing new.

use super::events::Wake;

/// An override as the listener sees it.
#[derive(Clone, Debug)]
pub struct Override<'a> {
    pub name: &'a str,
    pub tag: &'a str,
    /// `spec.imageDigest` set: the tag is not followed, so a push to it changes nothing.
    pub pinned: bool,
    /// Its source's `spec.registry.repo` (`host[:port]/path`, a scheme tolerated).
    pub source_repo: &'a str,
}

/// Whether `wake` asks to check `target`.
pub fn wakes(wake: &Wake, target: &Override<'_>) -> bool {
    match wake {
        Wake::Mpo(name) => name == target.name,
        Wake::Push {
            repository, tag, ..
        } => {
            !target.pinned
                && tag == target.tag
                && image_path(target).is_some_and(|path| same_path(repository, &path))
        }
    }
}

/// Whether `wake` is a push to the root repository of a source whose `spec.registry.repo` is
/// `source_repo`: a tag there is a module name (SPEC §8), so the source's scan is due.
pub fn lists_modules(wake: &Wake, source_repo: &str) -> bool {
    match wake {
        Wake::Mpo(_) => false,
        Wake::Push { repository, .. } => {
            let path = repo_path(source_repo);
            !path.is_empty() && same_path(repository, path)
        }
    }
}

/// The path of `host[:port]/path` (a scheme tolerated).
fn repo_path(repo: &str) -> &str {
    let repo = repo.trim().trim_end_matches('/');
    let repo = repo.split_once("://").map_or(repo, |(_, rest)| rest);
    repo.split_once('/').map_or("", |(_, path)| path)
}

/// `<source repo path>/<name>`.
fn image_path(target: &Override<'_>) -> Option<String> {
    let path = repo_path(target.source_repo);
    Some(if path.is_empty() {
        target.name.to_owned()
    } else {
        format!("{path}/{}", target.name)
    })
}

/// Repository paths are lowercase in every registry; senders may add slashes at the ends.
fn same_path(a: &str, b: &str) -> bool {
    a.trim_matches('/')
        .eq_ignore_ascii_case(b.trim_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(source_repo: &str) -> Override<'_> {
        Override {
            name: "echo",
            tag: "main",
            pinned: false,
            source_repo,
        }
    }

    fn push(repository: &str, tag: &str) -> Wake {
        Wake::Push {
            host: Some("elsewhere:5000".into()),
            repository: repository.into(),
            tag: tag.into(),
        }
    }

    #[test]
    fn a_push_wakes_the_override_of_that_repository_and_tag_whatever_the_host() {
        let target = echo("registry.example.com/deckhouse/modules");
        assert!(wakes(&push("deckhouse/modules/echo", "main"), &target));
        assert!(wakes(&push("/Deckhouse/modules/echo/", "main"), &target));
        assert!(!wakes(&push("deckhouse/modules/echo", "other"), &target));
        assert!(!wakes(&push("deckhouse/modules/echo2", "main"), &target));
        assert!(!wakes(&push("deckhouse/modules", "main"), &target));
        assert!(!wakes(&push("other/modules/echo", "main"), &target));
    }

    #[test]
    fn sources_with_a_scheme_or_at_the_registry_root() {
        assert!(wakes(
            &push("deckhouse/modules/echo", "main"),
            &echo("https://registry.example.com/deckhouse/modules/")
        ));
        assert!(wakes(&push("echo", "main"), &echo("registry.example.com")));
    }

    #[test]
    fn a_push_to_the_source_root_is_a_module_name_listed() {
        let repo = "registry.example.com/deckhouse/modules";
        assert!(lists_modules(
            &push("deckhouse/modules", "new-module"),
            repo
        ));
        assert!(!lists_modules(
            &push("deckhouse/modules/echo", "main"),
            repo
        ));
        assert!(!lists_modules(&Wake::Mpo("echo".into()), repo));
        assert!(!lists_modules(
            &push("echo", "main"),
            "registry.example.com"
        ));
    }

    #[test]
    fn a_pinned_override_ignores_pushes_but_not_its_name() {
        let target = Override {
            pinned: true,
            ..echo("r/deckhouse/modules")
        };
        assert!(!wakes(&push("deckhouse/modules/echo", "main"), &target));
        assert!(wakes(&Wake::Mpo("echo".into()), &target));
        assert!(!wakes(&Wake::Mpo("other".into()), &target));
    }
}
