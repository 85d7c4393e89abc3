//! Talking to the OCI registry of a ModuleSource: reference building, client configuration
//! (credentials, CA, scheme, timeouts), resolving a tag to a digest, pulling an image by digest
//! as verified byte streams, and listing module names. Knows nothing about Kubernetes.

mod client;
mod error;
mod reference;

pub use client::{ImageManifest, Layer, LayerMediaType, Registry, RegistryConfig, Transport};
pub use error::RegistryError;
pub use reference::{ModuleRef, RepoName};
