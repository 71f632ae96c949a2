//! The `callvault` binary: wires the library crates together.
//!
//! - `serve`: run a recording node (see [`serve`]).
//! - `call`: place real test calls against a recorder (see [`client`]).
//! - `recordings`, `complete`: look after the recordings of a node.
//! - `bench`: measure ingest cost and setup rate (see [`bench`]).

mod admin;
mod bench;
mod client;
mod config;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "callvault", version, about = "High-availability call recording server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options that locate a node's configuration and data.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// TOML configuration file (also CALLVAULT_CONFIG).
    #[arg(long, env = "CALLVAULT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides the configuration).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

impl NodeArgs {
    fn load(&self) -> anyhow::Result<config::Config> {
        let mut cfg = config::Config::load(self.config.as_deref())?;
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        Ok(cfg)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a recording node (SIP, RTP, HTTP). Needs no configuration file.
    Serve {
        #[command(flatten)]
        node: NodeArgs,
        /// SIP UDP listen address ("" disables).
        #[arg(long)]
        sip_udp: Option<String>,
        /// SIP TCP listen address ("" disables).
        #[arg(long)]
        sip_tcp: Option<String>,
        /// HTTP listen address ("" disables).
        #[arg(long)]
        http: Option<String>,
        /// RTP port range, e.g. 20000-29999.
        #[arg(long)]
        media_ports: Option<String>,
    },
    /// Place test calls (SIPREC, forked or plain) with real RTP.
    Call(Box<client::CallArgs>),
    /// List, show or export recordings of a node.
    Recordings {
        #[command(flatten)]
        node: NodeArgs,
        #[command(subcommand)]
        action: admin::RecordingsAction,
    },
    /// Complete an active recording (sends BYE when the node is running).
    Complete {
        #[command(flatten)]
        node: NodeArgs,
        /// Recording id.
        id: String,
    },
    /// Cluster membership, health and the job leader, from the running node.
    Cluster {
        #[command(flatten)]
        node: NodeArgs,
        #[command(subcommand)]
        action: admin::ClusterAction,
    },
    /// The replication outbox of the running node: status per target, retry.
    Replication {
        #[command(flatten)]
        node: NodeArgs,
        #[command(subcommand)]
        action: admin::ReplicationAction,
    },
    /// Measure RTP ingest cost against a bare recvmmsg sink, and call setup rate.
    Bench(bench::BenchArgs),
}

fn init_logging(format: &str, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { node, sip_udp, sip_tcp, http, media_ports } => {
            let mut cfg = node.load()?;
            if let Some(v) = sip_udp {
                cfg.sip.udp = v;
            }
            if let Some(v) = sip_tcp {
                cfg.sip.tcp = v;
            }
            if let Some(v) = http {
                cfg.http.listen = v;
            }
            if let Some(r) = media_ports {
                let (a, b) = r.split_once('-').ok_or_else(|| anyhow::anyhow!("--media-ports wants FIRST-LAST"))?;
                cfg.media.port_min = a.trim().parse()?;
                cfg.media.port_max = b.trim().parse()?;
            }
            cfg.validate()?;
            init_logging(&cfg.log.format, &cfg.log.level);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("callvault").build()?;
            rt.block_on(serve::run(cfg))
        }
        Command::Call(args) => {
            init_logging("text", "warn");
            client::run(*args)
        }
        Command::Recordings { node, action } => admin::recordings(node.load()?, action),
        Command::Complete { node, id } => admin::complete(node.load()?, &id),
        Command::Cluster { node, action } => admin::cluster(node.load()?, action),
        Command::Replication { node, action } => admin::replication(node.load()?, action),
        Command::Bench(args) => {
            init_logging("text", "warn");
            bench::run(args)
        }
    }
}
