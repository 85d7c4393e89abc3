use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ScanInterval;

/// Finalizer that lets the operator clear `overridden` in the ModuleSource before the MPO goes.
pub const FINALIZER: &str = "modules.deckhouse.io/mpo-finalizer";
/// `kubectl annotate mop echo renew=""`: check the tag now.
pub const RENEW_ANNOTATION: &str = "renew";
/// `modules.deckhouse.io/renew: "true"`: check now and download again even if the digest is unchanged.
pub const RENEW_FORCE_ANNOTATION: &str = "modules.deckhouse.io/renew";

/// Run the module with this object's name from `<source repo>/<name>:<imageTag>`, bypassing the
/// release channels.
// printcolumn(...) repeats `type_ = "string"`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "deckhouse.io",
    version = "v1alpha1",
    kind = "ModulePullOverride",
    shortname = "mop",
    shortname = "mpo",
    status = "ModulePullOverrideStatus",
    derive = "PartialEq",
    doc = "Runs the module named like this object from a chosen image tag instead of its release channel.",
    printcolumn(name = "TAG", type_ = "string", json_path = ".spec.imageTag"),
    printcolumn(name = "DIGEST", type_ = "string", json_path = ".status.imageDigest"),
    printcolumn(name = "UPDATED", type_ = "date", json_path = ".status.updatedAt"),
    printcolumn(name = "PINNED", type_ = "boolean", json_path = ".status.pinned"),
    printcolumn(name = "MESSAGE", type_ = "string", json_path = ".status.message")
)]
#[serde(rename_all = "camelCase")]
pub struct ModulePullOverrideSpec {
    /// The image tag to run, e.g. `main-patch-03354`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"))]
    pub image_tag: String,
    /// Name of the ModuleSource whose registry holds the module.
    #[schemars(length(min = 1))]
    pub source: String,
    /// How often the tag is checked for a new digest.
    #[serde(default)]
    pub scan_interval: ScanInterval,
    /// Pin: apply exactly this digest (`sha256:…`) and stop following the tag, as Flux's
    /// `ref.digest`; switched in from disk when kept there, else pulled by digest. Clearing it
    /// resumes the tag at once. `kubectl mpo rollback` sets it to an earlier digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub image_digest: Option<String>,
    /// On delete, switch back to the version the module had before this override's first
    /// switch (one another process put there, e.g. a release), as Deckhouse's v1alpha2
    /// `rollback`. Without such a version the override's module stays, and an Event says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<bool>,
}

/// What the operator observed. Written only by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModulePullOverrideStatus {
    /// Digest (`sha256:…`) of the module image unpacked on disk now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// RFC 3339 time of the last download that changed `imageDigest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Empty when the module on disk matches the tag; otherwise what is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The module's weight from its module.yaml (default 900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i32>")]
    pub weight: Option<u32>,
    /// The `Ready` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// True while `spec.imageDigest` pins the module (the tag is not followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
    /// The digests applied most recently, newest first (as many as the operator keeps on disk,
    /// `--keep-versions`): what `kubectl mpo rollback` goes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<AppliedVersion>>,
}

/// One entry of `status.history`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedVersion {
    /// `sha256:…` of the module image.
    pub digest: String,
    /// RFC 3339 time it was switched in.
    pub applied_at: String,
}
