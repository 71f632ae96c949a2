//! Who is asking: the signed-in user (or the holder of a playback link)
//! and what they may see.

use model::access::{Permission, Role, Scope};
use model::RecordingMeta;

/// How the request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A browser session (state changes need its CSRF token).
    Session { id_hash: String, csrf: String },
    /// An API token (`Authorization: Bearer cvt_...`).
    Token { id: String },
    /// A signed playback link: that one recording's audio, nothing else.
    Link { recording: String },
}

/// The caller of a request that passed authentication; handlers read it
/// from the request extensions.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    pub role: Role,
    pub scope: Scope,
    pub via: Via,
}

impl Principal {
    pub fn may(&self, p: Permission) -> bool {
        match &self.via {
            Via::Link { .. } => false,
            _ => self.role.allows(p),
        }
    }

    /// Whether this caller may see `meta` (search, detail, audio).
    pub fn sees(&self, meta: &RecordingMeta) -> bool {
        match &self.via {
            Via::Link { recording } => *recording == meta.id.to_string(),
            _ if !self.role.allows(Permission::Recordings) => false,
            _ if self.role.unscoped() => true,
            _ => self.scope.covers(meta),
        }
    }

    /// The scope to put in a search (`None`: every recording).
    pub fn search_scope(&self) -> Option<Vec<String>> {
        if self.role.unscoped() && !matches!(self.via, Via::Link { .. }) {
            None
        } else {
            Some(self.scope.0.clone())
        }
    }

    pub fn csrf(&self) -> Option<&str> {
        match &self.via {
            Via::Session { csrf, .. } => Some(csrf),
            _ => None,
        }
    }
}
