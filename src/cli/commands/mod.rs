//! One file per command, as cargo's `commands/` and kubectl's `pkg/cmd/<verb>/`: each holds the
//! command's arguments (with its own help and examples) and its `run`.

pub mod channel;
pub mod completion;
pub mod diff;
pub mod files;
pub mod images;
pub mod modules;
pub mod pull;
pub mod releases;
pub mod renew;
pub mod status;
pub mod tags;
pub mod undo;
pub mod verify;
pub mod webhook;
