//! Who may do what: roles, a user's scope over recordings, API tokens and
//! the tamper-evident audit trail.
//!
//! Users and tokens are cluster settings (`user.<name>`, `token.<id>`), so
//! a user created on one node signs in on every node; their values are the
//! records below. Everything here is pure: the web crate enforces it, the
//! store keeps it, and the tests check the rules without a server.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::RecordingMeta;

/// A person's role. Each role is a fixed set of [`Permission`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Users, settings, deletes, node operations; every recording.
    Admin,
    /// Reads the audit trail; no recordings.
    Auditor,
    /// Recordings of their groups (scope), live calls, the cluster page.
    Supervisor,
    /// Their own calls only (scope = their extensions).
    Agent,
    /// Prometheus metrics only (a scraper's token): least privilege.
    Monitor,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Admin, Role::Auditor, Role::Supervisor, Role::Agent, Role::Monitor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Supervisor => "supervisor",
            Role::Agent => "agent",
            Role::Monitor => "monitor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role holds `p`.
    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        match p {
            Public | SignedIn => true,
            Recordings => matches!(self, Role::Admin | Role::Supervisor | Role::Agent),
            LiveCalls | ClusterView => matches!(self, Role::Admin | Role::Supervisor),
            Audit => matches!(self, Role::Admin | Role::Auditor),
            Metrics => matches!(self, Role::Admin | Role::Monitor),
            Administer => self == Role::Admin,
        }
    }

    /// Whether the role sees every recording whatever its scope.
    pub fn unscoped(self) -> bool {
        self == Role::Admin
    }
}

/// What a route needs. The web crate maps every route to one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Anyone, signed in or not (liveness, readiness, the sign-in page).
    Public,
    /// Any signed-in user (their own account, sign-out).
    SignedIn,
    /// Search, detail, playback and download of recordings in scope.
    Recordings,
    /// Calls being recorded now.
    LiveCalls,
    /// Nodes, health, replication queues.
    ClusterView,
    /// The audit trail.
    Audit,
    /// Prometheus metrics (when not made public by the operator).
    Metrics,
    /// Users, settings, deletes, drain, cluster operations.
    Administer,
}

/// Which recordings a user may see: number patterns matched against every
/// party of a call (caller, callee, each participant's number or AOR).
/// `1001` matches that number exactly; `44*` any number starting `44`.
/// An empty scope sees nothing (a scoped role must be given a scope).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Scope(pub Vec<String>);

/// Longest pattern and most patterns a scope may hold.
pub const MAX_SCOPE_PATTERNS: usize = 256;
pub const MAX_PATTERN_LEN: usize = 64;

impl Scope {
    /// Checks the patterns: digits, `+`, letters, `.-_@` and one trailing `*`.
    pub fn validate(&self) -> Result<(), String> {
        if self.0.len() > MAX_SCOPE_PATTERNS {
            return Err(format!("a scope holds at most {MAX_SCOPE_PATTERNS} patterns"));
        }
        for p in &self.0 {
            let body = p.strip_suffix('*').unwrap_or(p);
            let ok = !body.is_empty()
                && p.len() <= MAX_PATTERN_LEN
                && body.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-' | '_' | '@'));
            if !ok {
                return Err(format!("{p:?} is not a number pattern (e.g. 1001 or 44*)"));
            }
        }
        Ok(())
    }

    /// Whether `party` (a number, or a URI whose user part is one) matches.
    pub fn matches_party(&self, party: &str) -> bool {
        let user = party_user(party);
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => user.starts_with(prefix),
            None => user == p,
        })
    }

    /// Whether a recording is in scope: any party matches.
    pub fn covers(&self, meta: &RecordingMeta) -> bool {
        meta.caller.iter().chain(meta.callee.iter()).any(|p| self.matches_party(p))
            || meta.participants.iter().any(|p| {
                p.number.as_deref().is_some_and(|n| self.matches_party(n))
                    || p.aor.as_deref().is_some_and(|a| self.matches_party(a))
            })
    }
}

/// The user part of `sip:1001@host`, `tel:+44...`, or the text itself.
pub fn party_user(party: &str) -> &str {
    let s = party.trim().trim_start_matches('<');
    let s = s.strip_prefix("sip:").or_else(|| s.strip_prefix("sips:")).or_else(|| s.strip_prefix("tel:")).unwrap_or(s);
    let end = s.find(['@', ';', '>']).unwrap_or(s.len());
    &s[..end]
}

/// A user, as the value of the cluster setting `user.<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub role: Role,
    #[serde(default)]
    pub scope: Scope,
    /// Argon2id PHC string; `None`: the user signs in with API tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    /// A deleted user (a tombstone, so the deletion replicates).
    #[serde(default)]
    pub deleted: bool,
    /// Sessions issued before this time are void (sign out everywhere).
    #[serde(default)]
    pub sessions_valid_after_ms: i64,
}

impl UserRecord {
    /// A new user with `role`, no scope (sees nothing scoped) and no password.
    pub fn new(role: Role) -> UserRecord {
        UserRecord {
            role,
            scope: Scope::default(),
            password: None,
            disabled: false,
            deleted: false,
            sessions_valid_after_ms: 0,
        }
    }

    pub fn active(&self) -> bool {
        !self.disabled && !self.deleted
    }
}

/// An API token, as the value of the cluster setting `token.<id>`. Only the
/// SHA-256 of the secret is kept: tokens are 256 random bits, so a fast
/// hash is as safe as a slow one and costs nothing per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user: String,
    pub sha256: String,
    #[serde(default)]
    pub label: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    #[serde(default)]
    pub revoked: bool,
}

/// A user name: 1–64 of letters, digits and `.-_@`.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
}

/// One audit event before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub at_ms: i64,
    /// The user name, or `-` when nobody signed in (a failed sign-in names
    /// the attempted user in `target`).
    pub actor: String,
    /// Client address (or `cli` for the command line).
    pub from: String,
    pub action: AuditAction,
    /// What was acted on: a recording id, a user name, a setting key.
    pub target: String,
    /// `ok`, or why it was refused.
    pub outcome: String,
    /// Anything else worth keeping (search filters, changed fields).
    pub detail: String,
}

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    SignIn,
    SignInFailed,
    SignOut,
    Search,
    View,
    Play,
    Download,
    SignedLink,
    Delete,
    Setting,
    UserChange,
    TokenChange,
    NodeOperation,
    Denied,
}

impl AuditAction {
    pub const ALL: [AuditAction; 14] = [
        AuditAction::SignIn,
        AuditAction::SignInFailed,
        AuditAction::SignOut,
        AuditAction::Search,
        AuditAction::View,
        AuditAction::Play,
        AuditAction::Download,
        AuditAction::SignedLink,
        AuditAction::Delete,
        AuditAction::Setting,
        AuditAction::UserChange,
        AuditAction::TokenChange,
        AuditAction::NodeOperation,
        AuditAction::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::SignIn => "sign_in",
            AuditAction::SignInFailed => "sign_in_failed",
            AuditAction::SignOut => "sign_out",
            AuditAction::Search => "search",
            AuditAction::View => "view",
            AuditAction::Play => "play",
            AuditAction::Download => "download",
            AuditAction::SignedLink => "signed_link",
            AuditAction::Delete => "delete",
            AuditAction::Setting => "setting",
            AuditAction::UserChange => "user_change",
            AuditAction::TokenChange => "token_change",
            AuditAction::NodeOperation => "node_operation",
            AuditAction::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// An audit event in the chain: its place and hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub event: AuditEvent,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash before the first entry.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of entry `seq` holding `event`, chained to `prev_hash`: every
/// field is length-prefixed so no two different entries hash alike.
pub fn audit_hash(seq: i64, prev_hash: &str, event: &AuditEvent) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    field(&seq.to_be_bytes());
    field(prev_hash.as_bytes());
    field(&event.at_ms.to_be_bytes());
    field(event.actor.as_bytes());
    field(event.from.as_bytes());
    field(event.action.as_str().as_bytes());
    field(event.target.as_bytes());
    field(event.outcome.as_bytes());
    field(event.detail.as_bytes());
    let digest = h.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Chains `event` after `last` (or as the first entry).
pub fn audit_next(last: Option<(i64, &str)>, event: AuditEvent) -> AuditRecord {
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq + 1, hash.to_owned()),
        None => (1, AUDIT_GENESIS.to_owned()),
    };
    let hash = audit_hash(seq, &prev, &event);
    AuditRecord { seq, event, prev_hash: prev, hash }
}

/// Where a chain stops verifying, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    pub seq: i64,
    pub why: String,
}

/// Checks a run of consecutive entries continues from `last` (the entry
/// before the first of `records`, `None` at the start of the chain).
/// Returns the new last `(seq, hash)` or where the chain breaks.
pub fn audit_verify<'a>(
    mut last: Option<(i64, String)>,
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> Result<Option<(i64, String)>, ChainBreak> {
    for r in records {
        let (want_seq, want_prev) = match &last {
            Some((s, h)) => (s + 1, h.clone()),
            None => (1, AUDIT_GENESIS.to_owned()),
        };
        if r.seq != want_seq {
            return Err(ChainBreak { seq: r.seq, why: format!("entry {want_seq} is missing") });
        }
        if r.prev_hash != want_prev {
            return Err(ChainBreak { seq: r.seq, why: "does not follow the entry before it".into() });
        }
        if audit_hash(r.seq, &r.prev_hash, &r.event) != r.hash {
            return Err(ChainBreak { seq: r.seq, why: "its content does not match its hash (altered)".into() });
        }
        last = Some((r.seq, r.hash.clone()));
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: i64) -> AuditEvent {
        AuditEvent {
            at_ms: 1_700_000_000_000 + i,
            actor: "alice".into(),
            from: "127.0.0.1".into(),
            action: AuditAction::Play,
            target: format!("rec-{i}"),
            outcome: "ok".into(),
            detail: String::new(),
        }
    }

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let last = out.last().map(|r| (r.seq, r.hash.as_str()));
            out.push(audit_next(last, ev(i)));
        }
        out
    }

    #[test]
    fn a_chain_verifies_and_any_change_breaks_it() {
        let c = chain(5);
        assert_eq!(audit_verify(None, &c).unwrap().unwrap().0, 5);
        // Verifying in two runs gives the same result.
        let mid = audit_verify(None, &c[..2]).unwrap();
        assert_eq!(audit_verify(mid, &c[2..]).unwrap().unwrap().1, c[4].hash);

        let mut altered = c.clone();
        altered[2].event.target = "rec-x".into();
        assert_eq!(audit_verify(None, &altered).unwrap_err().seq, 3);

        let mut removed = c.clone();
        removed.remove(1);
        assert!(audit_verify(None, &removed).unwrap_err().why.contains("missing"));

        // Rehashing an altered entry does not help: the next one no longer follows.
        let mut rehashed = c.clone();
        rehashed[1].event.actor = "mallory".into();
        rehashed[1].hash = audit_hash(2, &rehashed[1].prev_hash, &rehashed[1].event);
        assert_eq!(audit_verify(None, &rehashed).unwrap_err().seq, 3);
    }

    #[test]
    fn fields_are_delimited_in_the_hash() {
        let mut a = ev(1);
        let mut b = ev(1);
        a.actor = "ab".into();
        a.from = "c".into();
        b.actor = "a".into();
        b.from = "bc".into();
        assert_ne!(audit_hash(1, AUDIT_GENESIS, &a), audit_hash(1, AUDIT_GENESIS, &b));
    }

    #[test]
    fn scope_patterns_match_numbers_and_uris() {
        let s = Scope(vec!["1001".into(), "44*".into()]);
        assert!(s.matches_party("1001"));
        assert!(s.matches_party("sip:1001@pbx.example"));
        assert!(s.matches_party("<sip:4420771234@gw>"));
        assert!(s.matches_party("tel:4412;phone-context=x"));
        assert!(!s.matches_party("10011"));
        assert!(!s.matches_party("sip:2001@pbx"));
        assert!(Scope::default().0.is_empty() && !Scope::default().matches_party("1001"));
        assert!(s.validate().is_ok());
        assert!(Scope(vec!["1%".into()]).validate().is_err());
        assert!(Scope(vec!["*".into()]).validate().is_err());
        assert!(Scope(vec!["1*2".into()]).validate().is_err());
    }

    #[test]
    fn roles_grant_what_they_say() {
        use Permission::*;
        assert!(Role::Admin.allows(Administer) && Role::Admin.allows(Audit));
        assert!(Role::Auditor.allows(Audit) && !Role::Auditor.allows(Recordings));
        assert!(Role::Supervisor.allows(LiveCalls) && !Role::Supervisor.allows(Administer));
        assert!(Role::Agent.allows(Recordings) && !Role::Agent.allows(LiveCalls) && !Role::Agent.allows(Audit));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert!(r.allows(Public) && r.allows(SignedIn));
        }
        assert!(valid_user_name("alice.b@x") && !valid_user_name("a b") && !valid_user_name(""));
    }
}
