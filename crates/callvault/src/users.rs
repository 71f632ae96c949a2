//! `callvault users` and `callvault audit`: manage who may sign in, and
//! check the audit trail, on the node's data directory directly (so the
//! first admin can be created before anyone can sign in). Users and tokens
//! are cluster settings: a running node picks up a change at once (it
//! reads them per request) and its peers within a heartbeat.

use std::io::BufRead;

use anyhow::{bail, Context};
use clap::Subcommand;
use model::access::{AuditAction, AuditEvent, Role, Scope, UserRecord};
use model::NodeId;
use store::{AuditQuery, DataDir, Stores};

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// Create a user (or change an existing one's role and scope).
    Add {
        name: String,
        /// admin, auditor, supervisor, agent or monitor (metrics only).
        #[arg(long)]
        role: RoleArg,
        /// Number patterns the user's recordings must match, e.g. 1001,44*
        /// (supervisors and agents; an empty scope sees nothing).
        #[arg(long, value_delimiter = ',')]
        scope: Vec<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Also issue an API token for the user and print it.
        #[arg(long)]
        token: bool,
    },
    /// List users.
    List,
    /// Set a user's password (first line of standard input); ends their sessions.
    Passwd { name: String },
    /// Issue an API token for a user; prints it once.
    Token {
        name: String,
        #[arg(long, default_value = "")]
        label: String,
        /// Lifetime in days (default: until revoked).
        #[arg(long)]
        days: Option<u32>,
    },
    /// Delete a user (their sessions and tokens stop working everywhere).
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every entry's hash and its chaining to the one before.
    Verify,
    /// Print the newest entries.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        actor: Option<String>,
    },
}

impl std::str::FromStr for RoleArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::parse(s)
            .map(RoleArg)
            .ok_or_else(|| format!("{s:?} is not a role (admin, auditor, supervisor, agent, monitor)"))
    }
}

/// A role as a command-line value.
#[derive(Debug, Clone, Copy)]
pub struct RoleArg(pub Role);

struct Local {
    stores: Stores,
    node: NodeId,
    rt: tokio::runtime::Runtime,
}

fn open(cfg: &Config) -> anyhow::Result<Local> {
    let dir = DataDir::open(&cfg.data_dir)
        .with_context(|| format!("opening the data directory {}", cfg.data_dir.display()))?;
    let node = NodeId(dir.node_id(cfg.node_id.as_deref())?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stores = rt.block_on(Stores::open_local(&dir)).context("opening the metadata index")?;
    Ok(Local { stores, node, rt })
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    web::passwords::check_policy(&pw).map_err(|e| anyhow::anyhow!(e))?;
    Ok(pw)
}

impl Local {
    fn user(&self, name: &str) -> anyhow::Result<Option<UserRecord>> {
        let s = self.rt.block_on(self.stores.index.setting(&format!("user.{name}")))?;
        Ok(s.and_then(|s| serde_json::from_str::<UserRecord>(&s.value).ok()).filter(|u| !u.deleted))
    }

    fn put(&self, key: &str, value: serde_json::Value) -> anyhow::Result<()> {
        self.rt
            .block_on(crate::serve::put_local_setting(self.stores.index.as_ref(), &self.node, key, value))
            .map_err(|e| anyhow::anyhow!(e))
    }

    fn audit(&self, action: AuditAction, target: &str, detail: &str) -> anyhow::Result<()> {
        let actor = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "-".into());
        let event = AuditEvent {
            at_ms: now_ms(),
            actor: format!("cli:{actor}"),
            from: "cli".into(),
            action,
            target: target.to_owned(),
            outcome: "ok".into(),
            detail: detail.to_owned(),
        };
        self.rt.block_on(self.stores.access.audit_append(event))?;
        Ok(())
    }

    fn issue_token(&self, name: &str, label: &str, days: Option<u32>) -> anyhow::Result<String> {
        let now = now_ms();
        let t = web::directory::NewToken::make(name, label, now, days.map(|d| now + d as i64 * 86_400_000));
        self.put(&format!("token.{}", t.id), serde_json::to_value(&t.record)?)?;
        self.audit(AuditAction::TokenChange, name, &format!("token {} issued", t.id))?;
        Ok(t.bearer)
    }
}

pub fn users(cfg: Config, action: UsersAction) -> anyhow::Result<()> {
    let l = open(&cfg)?;
    match action {
        UsersAction::Add { name, role: RoleArg(role), scope, password_stdin, token } => {
            if !model::access::valid_user_name(&name) {
                bail!("a user name is 1-64 letters, digits or .-_@");
            }
            let scope = Scope(scope.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect());
            scope.validate().map_err(|e| anyhow::anyhow!(e))?;
            let mut u = l.user(&name)?.unwrap_or_else(|| UserRecord::new(role));
            u.role = role;
            u.scope = scope;
            if password_stdin {
                u.password = Some(web::passwords::hash(&read_password()?).map_err(|e| anyhow::anyhow!(e))?);
                u.sessions_valid_after_ms = now_ms();
            }
            l.put(&format!("user.{name}"), serde_json::to_value(&u)?)?;
            l.audit(AuditAction::UserChange, &name, &format!("role {}", role.as_str()))?;
            eprintln!("user {name} ({}) saved", role.as_str());
            if token {
                println!("{}", l.issue_token(&name, "created with the user", None)?);
            }
        }
        UsersAction::List => {
            let all = l.rt.block_on(l.stores.index.settings())?;
            println!("{:<24}  {:<10}  {:<8}  SCOPE", "NAME", "ROLE", "PASSWORD");
            for s in all {
                let Some(name) = s.key.strip_prefix("user.") else { continue };
                let Ok(u) = serde_json::from_str::<UserRecord>(&s.value) else { continue };
                if u.deleted {
                    continue;
                }
                let pw = if u.disabled {
                    "disabled"
                } else if u.password.is_some() {
                    "set"
                } else {
                    "none"
                };
                println!("{name:<24}  {:<10}  {pw:<8}  {}", u.role.as_str(), u.scope.0.join(","));
            }
        }
        UsersAction::Passwd { name } => {
            let mut u = l.user(&name)?.with_context(|| format!("no user {name}"))?;
            u.password = Some(web::passwords::hash(&read_password()?).map_err(|e| anyhow::anyhow!(e))?);
            u.sessions_valid_after_ms = now_ms();
            l.put(&format!("user.{name}"), serde_json::to_value(&u)?)?;
            l.audit(AuditAction::UserChange, &name, "password set")?;
            eprintln!("password of {name} set; their sessions have ended");
        }
        UsersAction::Token { name, label, days } => {
            l.user(&name)?.with_context(|| format!("no user {name}"))?;
            println!("{}", l.issue_token(&name, &label, days)?);
        }
        UsersAction::Remove { name } => {
            let mut u = l.user(&name)?.with_context(|| format!("no user {name}"))?;
            u.deleted = true;
            u.password = None;
            u.sessions_valid_after_ms = now_ms();
            l.put(&format!("user.{name}"), serde_json::to_value(&u)?)?;
            l.rt.block_on(l.stores.access.revoke_sessions_of(&name))?;
            l.audit(AuditAction::UserChange, &name, "deleted")?;
            eprintln!("user {name} deleted");
        }
    }
    l.rt.block_on(l.stores.index.close());
    Ok(())
}

pub fn audit(cfg: Config, action: AuditCommand) -> anyhow::Result<()> {
    let l = open(&cfg)?;
    match action {
        AuditCommand::Verify => match l.rt.block_on(store::verify_audit_chain(l.stores.access.as_ref(), None))? {
            store::ChainCheck::Intact { entries: 0, .. } => println!("audit trail intact: empty"),
            store::ChainCheck::Intact { entries, head } => {
                println!("audit trail intact: {entries} entries, head {}", head.unwrap_or_default())
            }
            store::ChainCheck::Broken { at, .. } => {
                eprintln!("audit trail BROKEN at entry {}: {}", at.seq, at.why);
                std::process::exit(1);
            }
        },
        AuditCommand::List { limit, actor } => {
            let q = AuditQuery { actor, limit, ..Default::default() };
            for e in l.rt.block_on(l.stores.access.audit_list(&q))? {
                println!("{}", serde_json::to_string(&e)?);
            }
        }
    }
    Ok(())
}
