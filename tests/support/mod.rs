//! The end-to-end harness: a real kube-apiserver + etcd (started once per run by
//! `hack/test.sh`), real Debian docker-registry instances, module images built and pushed by the
//! tests, the real operator binary and `kubectl` exactly as a user types it.
#![allow(dead_code, unused_imports)]

pub mod bulk;
pub mod cluster;
pub mod crafted;
pub mod images;
pub mod layers;
pub mod mounts;
pub mod operator;
pub mod proxy;
pub mod registry;
pub mod scenario;
pub mod tcp_cut;
pub mod token_server;
pub mod wait;

pub use cluster::{Cluster, TestId};
pub use operator::Operator;
pub use wait::wait_for;

/// The control plane of this run, or return from the test when there is none (and fail under CI).
#[macro_export]
macro_rules! require_cluster {
    () => {
        match $crate::support::cluster::cluster() {
            Some(cluster) => cluster,
            None => return,
        }
    };
}
