//! What the override commands (`renew`, `status`) share: an override as a row, with its
//! source's `overridden` flag, and the table of them.

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use serde::Serialize;

use super::{CliError, output::Table};
use crate::crd::{ModulePullOverride, ModuleSource};

/// One override as `status` and `renew --wait` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OverrideRow {
    pub name: String,
    pub source: String,
    pub tag: String,
    pub digest: Option<String>,
    pub updated_at: Option<String>,
    pub ready: Option<String>,
    pub message: String,
    /// `overridden` of this module in the source's status; `None` when the source is missing
    /// or has no entry for the module.
    pub overridden: Option<bool>,
}

pub(super) fn status_table(rows: &[OverrideRow], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "SOURCE",
        "TAG",
        "DIGEST",
        "AGE",
        "READY",
        "OVERRIDDEN",
        "MESSAGE",
    ]);
    for row in rows {
        table.row(vec![
            row.name.clone(),
            row.source.clone(),
            row.tag.clone(),
            row.digest.as_deref().map(short).unwrap_or_default(),
            row.updated_at
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| age(now - t.with_timezone(&Utc)))
                .unwrap_or_default(),
            row.ready.clone().unwrap_or_default(),
            row.overridden
                .map(|o| o.to_string())
                .unwrap_or_else(|| "-".into()),
            row.message.clone(),
        ]);
    }
    table
}

pub fn override_row(mpo: &ModulePullOverride, source: Option<&ModuleSource>) -> OverrideRow {
    let status = mpo.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone());
    let name = mpo.name_any();
    let overridden = source
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.modules.as_ref())
        .and_then(|modules| modules.iter().find(|m| m.name == name))
        .map(|m| m.overridden.unwrap_or(false));
    OverrideRow {
        source: mpo.spec.source.clone(),
        tag: mpo.spec.image_tag.clone(),
        digest: status.image_digest,
        updated_at: status.updated_at,
        ready,
        message: status.message.unwrap_or_default(),
        overridden,
        name,
    }
}

pub(super) fn not_found_as(err: kube::Error, replacement: impl FnOnce() -> CliError) -> CliError {
    match err {
        kube::Error::Api(status) if status.code == 404 => replacement(),
        other => CliError::from(other),
    }
}

/// `sha256:` and the first 12 hex digits, as a table shows an image id.
fn short(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// kubectl's style: `45s`, `12m`, `5h`, `3d`.
pub fn age(elapsed: chrono::TimeDelta) -> String {
    let secs = elapsed.num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        ModulePullOverrideSpec, ModulePullOverrideStatus, ModuleSourceStatus, SourceModule,
    };

    fn mpo(message: Option<&str>) -> ModulePullOverride {
        let spec: ModulePullOverrideSpec =
            serde_json::from_value(serde_json::json!({"imageTag": "main", "source": "test"}))
                .expect("spec");
        let mut mpo = ModulePullOverride::new("echo", spec);
        mpo.status = Some(ModulePullOverrideStatus {
            image_digest: Some(format!("sha256:{}", "a".repeat(64))),
            updated_at: Some("2026-12-02T10:00:00Z".into()),
            message: message.map(String::from),
            ..Default::default()
        });
        mpo
    }

    fn source(overridden: Option<bool>) -> ModuleSource {
        let mut source = crate::crd::test_source("test");
        source.status = Some(ModuleSourceStatus {
            modules: Some(vec![SourceModule {
                name: "echo".into(),
                overridden,
                ..Default::default()
            }]),
            ..Default::default()
        });
        source
    }

    #[test]
    fn rows_carry_the_sources_flag() {
        let row = override_row(&mpo(Some("")), Some(&source(Some(true))));
        assert_eq!(row.overridden, Some(true));
        assert_eq!(row.tag, "main");
        assert_eq!(
            override_row(&mpo(None), Some(&source(None))).overridden,
            Some(false)
        );
        assert_eq!(override_row(&mpo(None), None).overridden, None);
    }

    #[test]
    fn the_table_shortens_digests_and_shows_age() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let row = override_row(&mpo(Some("cannot resolve x")), None);
        let text = status_table(&[row], now).render();
        let line = text.lines().nth(1).expect("row");
        assert!(line.contains("sha256:aaaaaaaaaaaa "), "{line}");
        assert!(line.contains(" 2h "), "{line}");
        assert!(line.ends_with("cannot resolve x"), "{line}");
        assert!(line.contains(" - "), "no source: {line}");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let s = chrono::TimeDelta::seconds;
        assert_eq!(age(s(5)), "5s");
        assert_eq!(age(s(125)), "2m");
        assert_eq!(age(s(7300)), "2h");
        assert_eq!(age(s(200_000)), "2d");
        assert_eq!(age(s(-3)), "0s");
    }
}
