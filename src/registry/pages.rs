//! The `Link: <…>; rel="next"` pagination of tag lists (distribution spec, RFC 8288).
//!
//! The target is resolved against the URL of the request that returned it, as a browser
//! would: registries write it as a path (`/v2/…`), relative (`?last=…`), or absolute with the
//! host in another case or with its default port. A target on another origin is an error,
//! never the end of the list: our credentials must not follow it, and stopping there would hand
//! the scan a partial list of modules as if it were whole.

use url::Url;

use super::RegistryError;

/// The next page to ask for after the response to `request`, if the response names one.
pub fn next_page(
    headers: &reqwest::header::HeaderMap,
    request: &Url,
) -> Result<Option<Url>, RegistryError> {
    let Some(target) = headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(next_target)
    else {
        return Ok(None);
    };
    let next = request.join(target).map_err(|_| {
        RegistryError::BadManifest("the tag list's next-page link is not a URL".into())
    })?;
    if next.origin() != request.origin() {
        return Err(RegistryError::BadManifest(format!(
            "the tag list's next page is on another origin ({}); it is not followed, and the list is not used cut short",
            origin_name(&next)
        )));
    }
    Ok(Some(next))
}

/// `scheme://host[:port]` of a URL, for a message (no path, no query, no credentials).
fn origin_name(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The target of the first link-value of `value` whose `rel` includes `next`.
fn next_target(value: &str) -> Option<&str> {
    link_values(value)
        .find(|(_, params)| has_rel_next(params))
        .map(|(target, _)| target)
}

/// `(target, params)` of each `<target>; params` in a `Link` header value. A target may hold
/// commas, so values are split at `<`, not at `,`.
fn link_values(value: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = value;
    std::iter::from_fn(move || {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        let target = rest[open + 1..close].trim();
        let after = &rest[close + 1..];
        let params_end = after.find('<').unwrap_or(after.len());
        let params = &after[..params_end];
        rest = &after[params_end..];
        Some((target, params))
    })
}

/// `rel="next"`, `rel=next`, `REL="prev next"`: relation names are case-insensitive and a `rel`
/// may list several, separated by spaces.
fn has_rel_next(params: &str) -> bool {
    params.split(';').any(|param| {
        let Some((name, value)) = param.split_once('=') else {
            return false;
        };
        name.trim().eq_ignore_ascii_case("rel")
            && value
                .trim()
                .trim_end_matches(',')
                .trim()
                .trim_matches('"')
                .split_ascii_whitespace()
                .any(|rel| rel.eq_ignore_ascii_case("next"))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        for value in values {
            headers.append(
                reqwest::header::LINK,
                reqwest::header::HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn next(request: &str, link: &str) -> Result<Option<String>, RegistryError> {
        let request = Url::parse(request).unwrap();
        next_page(&headers(&[link]), &request).map(|url| url.map(String::from))
    }

    const FIRST: &str = "https://r.example:5000/v2/mods/tags/list?n=1000";

    #[test]
    fn registries_link_forms_resolve_on_the_same_registry() {
        for (link, expected) in [
            // distribution (Docker Hub, Harbor, GitLab): a path.
            (
                r#"</v2/mods/tags/list?last=b&n=1000>; rel="next""#,
                "https://r.example:5000/v2/mods/tags/list?last=b&n=1000",
            ),
            // Relative to the request, as RFC 3986 resolves it.
            (
                r#"<?last=b&n=1000>; rel="next""#,
                "https://r.example:5000/v2/mods/tags/list?last=b&n=1000",
            ),
            // Absolute, host in another case.
            (
                r#"<https://R.Example:5000/v2/mods/tags/list?last=b>; rel=next"#,
                "https://r.example:5000/v2/mods/tags/list?last=b",
            ),
            // Several relations, names in capitals.
            (
                r#"</v2/mods/tags/list?last=a>; rel="prev", </v2/mods/tags/list?last=c>; REL="next last""#,
                "https://r.example:5000/v2/mods/tags/list?last=c",
            ),
            // A comma inside the target does not split it.
            (
                r#"</v2/mods/tags/list?last=a,b>; rel="next""#,
                "https://r.example:5000/v2/mods/tags/list?last=a,b",
            ),
        ] {
            assert_eq!(
                next(FIRST, link).unwrap().as_deref(),
                Some(expected),
                "{link}"
            );
        }
    }

    /// `Link` headers of tag lists as each registry sends them (their documentation and answers
    /// seen in the wild), each resolved on the registry that was asked.
    #[test]
    fn vendor_links_resolve_on_the_registry_asked() {
        for (vendor, request, link, expected) in [
            (
                "Docker Hub",
                "https://registry-1.docker.io/v2/library/alpine/tags/list?n=100",
                r#"</v2/library/alpine/tags/list?last=3.19&n=100>; rel="next""#,
                "https://registry-1.docker.io/v2/library/alpine/tags/list?last=3.19&n=100",
            ),
            (
                "GHCR",
                "https://ghcr.io/v2/owner/modules/echo/tags/list?n=1000",
                r#"</v2/owner/modules/echo/tags/list?last=main-patch-03354&n=0>; rel="next""#,
                "https://ghcr.io/v2/owner/modules/echo/tags/list?last=main-patch-03354&n=0",
            ),
            (
                "GitLab",
                "https://registry.gitlab.com/v2/group/project/echo/tags/list?n=1000",
                r#"<https://registry.gitlab.com/v2/group/project/echo/tags/list?last=v1.2.0&n=1000>; rel="next""#,
                "https://registry.gitlab.com/v2/group/project/echo/tags/list?last=v1.2.0&n=1000",
            ),
            (
                "Harbor",
                "https://harbor.example.com/v2/library/echo/tags/list?n=1000",
                r#"</v2/library/echo/tags/list?last=v1.0.9&n=1000>; rel="next""#,
                "https://harbor.example.com/v2/library/echo/tags/list?last=v1.0.9&n=1000",
            ),
            (
                "Quay",
                "https://quay.io/v2/org/echo/tags/list?n=50",
                r#"</v2/org/echo/tags/list?n=50&next_page=gAAAAABl8x_Qb2Q%3D>; rel="next""#,
                "https://quay.io/v2/org/echo/tags/list?n=50&next_page=gAAAAABl8x_Qb2Q%3D",
            ),
            (
                "ECR",
                "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/v2/modules/echo/tags/list?n=1000",
                r#"</v2/modules/echo/tags/list?last=ukD72mdD%2FmC8b5xV3susmJzzaTgp3hKwR9nRUW1yZZ7&n=1000>; rel="next""#,
                "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/v2/modules/echo/tags/list?last=ukD72mdD%2FmC8b5xV3susmJzzaTgp3hKwR9nRUW1yZZ7&n=1000",
            ),
        ] {
            assert_eq!(
                next(request, link).unwrap().as_deref(),
                Some(expected),
                "{vendor}"
            );
        }
    }

    #[test]
    fn a_default_port_written_or_not_is_the_same_origin() {
        // GHCR and Quay: the repo written as ghcr.io:443, the link without a port, and back.
        let got = next(
            "https://ghcr.io:443/v2/o/m/tags/list?n=1000",
            r#"<https://ghcr.io/v2/o/m/tags/list?last=x&n=1000>; rel="next""#,
        )
        .unwrap();
        assert_eq!(
            got.as_deref(),
            Some("https://ghcr.io/v2/o/m/tags/list?last=x&n=1000")
        );
        let got = next(
            "https://ghcr.io/v2/o/m/tags/list?n=1000",
            r#"<https://ghcr.io:443/v2/o/m/tags/list?last=x>; rel="next""#,
        )
        .unwrap();
        assert!(got.is_some());
    }

    #[test]
    fn another_origin_is_an_error_never_the_end_of_the_list() {
        for link in [
            r#"<https://evil.example/v2/mods/tags/list?last=b>; rel="next""#,
            r#"<http://r.example:5000/v2/mods/tags/list?last=b>; rel="next""#,
            r#"<https://r.example:5001/v2/mods/tags/list?last=b>; rel="next""#,
            r#"<//evil.example/v2/x>; rel="next""#,
        ] {
            let err = next(FIRST, link).unwrap_err();
            assert!(err.to_string().contains("another origin"), "{link}: {err}");
            assert!(
                !err.to_string().contains("last=b"),
                "no path or query: {err}"
            );
        }
    }

    #[test]
    fn no_next_relation_is_the_last_page() {
        assert_eq!(
            next(FIRST, r#"</v2/mods/tags/list?last=a>; rel="prev""#).unwrap(),
            None
        );
        assert_eq!(
            next(FIRST, r#"</v2/mods/tags/list?last=a>; rel="nextish""#).unwrap(),
            None
        );
        let request = Url::parse(FIRST).unwrap();
        assert_eq!(
            next_page(&reqwest::header::HeaderMap::new(), &request).unwrap(),
            None
        );
        // Two Link headers: the second carries next.
        let two = headers(&[
            r#"</v2/mods/tags/list?last=a>; rel="prev""#,
            r#"</v2/mods/tags/list?last=c>; rel="next""#,
        ]);
        assert!(next_page(&two, &request).unwrap().is_some());
    }
}
