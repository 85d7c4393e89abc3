//! Talking to the OCI registry of a ModuleSource: reference building, client configuration
//! (credentials, CA, scheme, timeouts), resolving a tag to a digest, pulling an image by digest
//! as verified byte streams, and listing module names. Knows nothing about Kubernetes.
//!
//! Faults: every request runs in one of a few slots per registry host ([`limits`]), within a
//! request timeout, and a body that stops flowing fails after the read timeout. Errors say
//! whether they are transient and carry the registry's `Retry-After`, so the caller can wait
//! as long as the registry asked.

mod artifacts;
mod auth;
mod client;
mod credentials;
mod error;
mod http;
mod limits;
mod media;
mod observe;
mod pages;
mod platform;
mod reference;
mod resume;
mod signatures;
mod verify;

pub use artifacts::is_digest_tag;
pub use client::{
    ConfigBlob, ImageManifest, Layer, LayerMediaType, Registry, RegistryConfig, Transport,
};
pub use credentials::RegistryCredentials;
pub use error::{MAX_RETRY_AFTER, RegistryCode, RegistryError, TransportKind};
pub use limits::{DEFAULT_MAX_REQUESTS_PER_HOST, max_requests_per_host, set_max_requests_per_host};
pub use media::NotAModule;
pub use observe::RequestObserver;
pub use platform::{ChoiceReason, ChosenPlatform, choose_platform};
pub use reference::{ModuleRef, RepoName};
pub use signatures::{SIMPLE_SIGNING_MEDIA_TYPE, referrers_tag, signature_tag};
pub use verify::BodyFailure;
