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
mod users;

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
        /// A node's HTTP address (e.g. https://recorder-a:8080) to ask
        /// through its API with the token in CALLVAULT_TOKEN, instead of
        /// reading the local data directory.
        #[arg(long, global = true)]
        url: Option<String>,
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
    /// Users who may sign in (UI and API), their roles, scopes and API tokens.
    Users {
        #[command(flatten)]
        node: NodeArgs,
        #[command(subcommand)]
        action: users::UsersAction,
    },
    /// The audit trail: verify its hash chain, list entries.
    Audit {
        #[command(flatten)]
        node: NodeArgs,
        #[command(subcommand)]
        action: users::AuditCommand,
    },
    /// Check a configuration: validate it and print every effective value with its source.
    Config {
        #[command(flatten)]
        node: NodeArgs,
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Measure RTP ingest cost against a bare recvmmsg sink, and call setup rate.
    Bench(bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Validate the configuration (file, environment) and print the effective values.
    Check,
}

/// Sets up logging; returns what changes the filter later (a reload).
/// `RUST_LOG`, when set, wins over the configured level (and over reloads).
fn init_logging(format: &str, level: &str) -> serve::SetLogLevel {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{reload, EnvFilter};
    let from_env = std::env::var("RUST_LOG").ok();
    let filter = from_env.as_deref().and_then(|f| EnvFilter::try_new(f).ok()).unwrap_or_else(|| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    // ANSI colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    if format == "json" {
        registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).init();
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).init();
    }
    Box::new(move |level: &str| {
        if from_env.is_some() {
            return Ok(()); // RUST_LOG decides
        }
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    })
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
            let set_log_level = init_logging(&cfg.log.format, &cfg.log.level);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("callvault").build()?;
            let reload = serve::Reload { file: node.config.clone(), set_log_level };
            rt.block_on(serve::run(cfg, reload))
        }
        Command::Call(args) => {
            let _ = init_logging("text", "warn");
            client::run(*args)
        }
        Command::Recordings { url: Some(url), action, .. } => admin::remote_recordings(&url, action),
        Command::Recordings { node, action, url: None } => admin::recordings(node.load()?, action),
        Command::Complete { node, id } => admin::complete(node.load()?, &id),
        Command::Cluster { node, action } => admin::cluster(node.load()?, action),
        Command::Replication { node, action } => admin::replication(node.load()?, action),
        Command::Users { node, action } => users::users(node.load()?, action),
        Command::Audit { node, action } => users::audit(node.load()?, action),
        Command::Config { node, action: ConfigAction::Check } => {
            match config::Config::explain(node.config.as_deref()) {
                Ok(lines) => {
                    let width = lines.iter().map(|(k, v, _)| k.len() + v.len()).max().unwrap_or(0) + 3;
                    for (k, v, source) in lines {
                        let kv = format!("{k} = {v}");
                        println!("{kv:<width$}  # {source}");
                    }
                    eprintln!("configuration is valid");
                    Ok(())
                }
                Err(e) => {
                    eprintln!("configuration is NOT valid: {e:#}");
                    std::process::exit(2);
                }
            }
        }
        Command::Bench(args) => {
            let _ = init_logging("text", "warn");
            bench::run(args)
        }
    }
}
