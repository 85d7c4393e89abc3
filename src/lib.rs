//! mpo-operator: makes a ModulePullOverride run the module image tag it names.
//!
//! Layers, from the outside in: [`crd`] (the resource types), [`registry`] (talking to the OCI
//! registry), [`storage`] (unpacking and switching modules on disk), [`controller`] (the
//! Kubernetes reconcile loop), [`cli`] (the `kubectl-mpo` tool). Registry and storage know nothing
//! about Kubernetes.

pub mod cli;
pub mod controller;
pub mod crd;
pub mod digest;
pub mod install;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod settings;
pub mod signing;
pub mod storage;
pub mod telemetry;
pub mod webhook;

pub use digest::Digest;
