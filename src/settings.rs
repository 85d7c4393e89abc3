//! Command line and environment settings (SPEC §9).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "mpo-operator",
    version,
    about = "Kubernetes operator for ModulePullOverride: runs a module from a chosen image tag",
    long_about = "Watches ModulePullOverride and ModuleSource objects. For each ModulePullOverride it \
resolves <source repo>/<name>:<imageTag> to a digest every scanInterval, downloads and unpacks the \
module when the digest changes, and reports it in the object's status."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller against the current kubeconfig or the in-cluster config.
    Run(Box<Settings>),
}

#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// Directory that holds the unpacked modules.
    #[arg(
        long,
        env = "DOWNLOADED_MODULES_DIR",
        default_value = "./.mpo/downloaded"
    )]
    pub download_dir: PathBuf,

    /// How many versions of each module stay on disk (the active one and those switched in
    /// before it, newest first): a rollback to any of them is a switch of `dev`, no download.
    #[arg(long, env = "MPO_KEEP_VERSIONS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub keep_versions: u16,

    /// How many ModulePullOverrides are reconciled at once, so a slow download does not stall the rest.
    #[arg(long, env = "MPO_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,

    /// Scan the tags of each ModuleSource and write its status.modules (SPEC §8). Turn off where
    /// another controller owns ModuleSource status.
    #[arg(long, env = "MPO_SCAN_MODULE_SOURCES", default_value_t = true, action = clap::ArgAction::Set)]
    pub scan_module_sources: bool,

    /// How often each ModuleSource's module list is refreshed.
    #[arg(long, env = "MPO_SOURCE_SCAN_INTERVAL", default_value = "3m", value_parser = humantime::parse_duration)]
    pub source_scan_interval: Duration,

    /// Only handle ModulePullOverrides and ModuleSources with these labels (a label selector such
    /// as `team=a`), to shard objects between several operators. Empty: all of them.
    #[arg(long, env = "MPO_WATCH_SELECTOR", default_value = "")]
    pub watch_selector: String,

    /// After SIGTERM, how long passes in flight may run on (a download finishing) before they are
    /// cancelled (their staging removed, nothing written) and the lease is released. Keep it
    /// below the pod's terminationGracePeriodSeconds (deploy/: 120 s).
    #[arg(long, env = "MPO_SHUTDOWN_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// `/healthz` fails when passes are in flight and none has made progress (a pass started or
    /// ended, layer data arrived) for this long, so that the kubelet restarts a wedged replica.
    #[arg(long, env = "MPO_LIVENESS_STALL_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub liveness_stall_timeout: Duration,

    /// Take a Lease before reconciling, so that only one replica works at a time.
    #[arg(long, env = "MPO_LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// While a replica waits for the lease, pull every recorded `status.imageDigest` into its
    /// own download directory (it writes nothing to the API), so that a failover downloads
    /// nothing and a consumer beside any replica sees the modules. Skipped where the directory
    /// is another replica's too.
    #[arg(long, env = "MPO_WARM_STANDBY", default_value_t = true, action = clap::ArgAction::Set)]
    pub warm_standby: bool,

    /// Listen for push notifications (registry webhooks, CI) on this address, e.g.
    /// `0.0.0.0:9443`: a push checks the overrides following the pushed tag at once. Off when
    /// unset; needs --webhook-token-file.
    #[arg(long, env = "MPO_WEBHOOK_ADDR", requires = "webhook_token_file")]
    pub webhook_addr: Option<SocketAddr>,

    /// File with the token webhook senders must show (a mounted Secret: re-read per request, so
    /// a rotation needs no restart). Never logged.
    #[arg(long, env = "MPO_WEBHOOK_TOKEN_FILE")]
    pub webhook_token_file: Option<PathBuf>,

    /// Namespace of the leader-election Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "MPO_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(long, env = "MPO_LEASE_NAME", default_value = "mpo-operator")]
    pub lease_name: String,

    /// Identity of this replica in the Lease (default: the hostname).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Address of the HTTP server with /metrics, /healthz and /readyz.
    #[arg(long, env = "MPO_METRICS_ADDR", default_value = "127.0.0.1:8080")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "MPO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in RUST_LOG syntax (e.g. `info`, `mpo_operator=debug`).
    #[arg(long, env = "MPO_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    #[command(flatten)]
    pub limits: LimitSettings,

    /// Most requests in flight to one registry host at once (a blob holds its slot until its body
    /// ends), so that many MPOs do not overwhelm one registry.
    #[arg(long, env = "MPO_REGISTRY_MAX_CONCURRENT_REQUESTS", default_value_t = crate::registry::DEFAULT_MAX_REQUESTS_PER_HOST)]
    pub registry_max_concurrent_requests: usize,

    /// Timeout for connecting to a registry.
    #[arg(long, env = "MPO_REGISTRY_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub registry_connect_timeout: Duration,

    /// Timeout for one registry request without progress (a stalled body fails after this).
    #[arg(long, env = "MPO_REGISTRY_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub registry_read_timeout: Duration,

    /// Slowest download accepted, in bytes per second: a blob must arrive within the read
    /// timeout plus its size at this rate, so that a trickling body cannot hold a worker and a
    /// registry slot for ever. 0: no such deadline.
    #[arg(long, env = "MPO_MIN_DOWNLOAD_RATE", default_value_t = 64 * 1024)]
    pub min_download_rate: u64,
}

#[derive(Args, Debug, Clone)]
pub struct LimitSettings {
    /// Largest compressed image (sum of its layers) that is downloaded, in bytes.
    #[arg(long, env = "MPO_MAX_COMPRESSED_SIZE", default_value_t = 1 << 30)]
    pub max_compressed_size: u64,

    /// Largest unpacked module, in bytes.
    #[arg(long, env = "MPO_MAX_UNPACKED_SIZE", default_value_t = 2 << 30)]
    pub max_unpacked_size: u64,

    /// Most entries (files, dirs, links) in one module image.
    #[arg(long, env = "MPO_MAX_ENTRIES", default_value_t = 100_000)]
    pub max_entries: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_spec() {
        let Cli {
            command: Command::Run(s),
        } = Cli::try_parse_from(["mpo-operator", "run"]).expect("defaults parse");
        assert_eq!(s.concurrency, 4);
        assert_eq!(s.limits.max_compressed_size, 1 << 30);
        assert_eq!(s.limits.max_unpacked_size, 2 << 30);
        assert_eq!(s.limits.max_entries, 100_000);
        assert!(s.scan_module_sources);
        assert_eq!(s.source_scan_interval, Duration::from_secs(180));
    }
}
