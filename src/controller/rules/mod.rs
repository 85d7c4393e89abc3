//! The pure rules the controller's parts share, kept below all of them so that none of the
//! parts imports another for a rule: which modules a source lists and who writes its flags
//! ([`listing`]), what a renew annotation asks ([`renew`]), and how long to wait after failures
//! ([`backoff`]). Nothing here imports any other controller module.

pub mod backoff;
pub mod listing;
pub mod renew;
