//! RFC 7865 recording metadata as data: the document a SIPREC source
//! sends (in any of the dialects the `siprec` crate parses), merged over
//! the updates of a call and kept verbatim with the recording.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which dialect a document used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Schema {
    #[default]
    Rfc7865,
    /// Pre-RFC draft namespace without `:1` (Acme/Oracle, Avaya, Sonus).
    Draft,
    /// BroadWorks `recording_metadata`.
    BroadWorks,
}

/// `datamode`: a whole snapshot or a change set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataMode {
    #[default]
    Complete,
    Partial,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Group {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub associate_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Session {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sip_session_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Participant {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Address of record as sent (`sip:...`, `tel:...` or bare `user@host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aor: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<String>,
    /// Stream ids this participant sends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub send: Vec<String>,
    /// Stream ids this participant receives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recv: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub associate_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disassociate_time: Option<String>,
    /// Leaf values of this participant's vendor extensions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hints: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Stream {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The SDP `a=label` this stream is carried on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `separate` or `mixed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// A vendor extension element, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    /// Element kind it is attached to (`recording`, `session`, `participant`, ...).
    pub parent_kind: String,
    /// Id of the element it is attached to, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    pub xml: String,
}

/// A parsed (or merged) metadata document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Metadata {
    pub schema: Schema,
    pub data_mode: DataMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<Session>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<Participant>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<Stream>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<Extension>,
    /// Leaf values of document-level vendor extensions (first wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hints: BTreeMap<String, String>,
}

impl Metadata {
    /// Applies an update from a re-INVITE/UPDATE. Elements are upserted by
    /// id in both data modes; participants and streams missing from a
    /// `complete` snapshot are kept, because a recording's metadata must
    /// still name everyone who was on the call (transfer, 3-way).
    pub fn apply_update(&mut self, update: Metadata) {
        self.data_mode = update.data_mode;
        for g in update.groups {
            match self.groups.iter_mut().find(|x| x.id == g.id) {
                Some(x) => *x = g,
                None => self.groups.push(g),
            }
        }
        for s in update.sessions {
            match self.sessions.iter_mut().find(|x| x.id == s.id) {
                Some(x) => {
                    x.group_ref = s.group_ref.or(x.group_ref.take());
                    merge_list(&mut x.sip_session_ids, s.sip_session_ids);
                    x.start_time = s.start_time.or(x.start_time.take());
                    x.stop_time = s.stop_time.or(x.stop_time.take());
                }
                None => self.sessions.push(s),
            }
        }
        for p in update.participants {
            upsert_participant(&mut self.participants, p);
        }
        for s in update.streams {
            match self.streams.iter_mut().find(|x| x.id == s.id && !s.id.is_empty()) {
                Some(x) => {
                    x.label = s.label.or(x.label.take());
                    x.mode = s.mode.or(x.mode.take());
                    x.session_id = s.session_id.or(x.session_id.take());
                }
                None => self.streams.push(s),
            }
        }
        for e in update.extensions {
            if !self.extensions.contains(&e) {
                self.extensions.push(e);
            }
        }
        for (k, v) in update.hints {
            self.hints.entry(k).or_insert(v);
        }
    }

    /// The participant sending the stream carried on SDP label `label`.
    pub fn sender_of_label(&self, label: &str) -> Option<&Participant> {
        let stream = self.streams.iter().find(|s| s.label.as_deref() == Some(label) && !s.id.is_empty())?;
        self.participants.iter().find(|p| p.send.contains(&stream.id))
    }

    /// Participants receiving the stream carried on SDP label `label`.
    pub fn receivers_of_label(&self, label: &str) -> Vec<&Participant> {
        let Some(stream) = self.streams.iter().find(|s| s.label.as_deref() == Some(label) && !s.id.is_empty()) else {
            return Vec::new();
        };
        self.participants.iter().filter(|p| p.recv.contains(&stream.id)).collect()
    }

    /// Call direction from the recorded party's view, when a vendor says.
    pub fn direction_hint(&self) -> Option<&'static str> {
        if self.hints.contains_key("termCall") {
            Some("inbound")
        } else if self.hints.contains_key("origCall") {
            Some("outbound")
        } else {
            None
        }
    }
}

fn merge_list(into: &mut Vec<String>, from: Vec<String>) {
    for s in from {
        if !s.is_empty() && !into.contains(&s) {
            into.push(s);
        }
    }
}

pub fn upsert_participant(list: &mut Vec<Participant>, p: Participant) {
    match list.iter_mut().find(|x| x.id == p.id) {
        None => list.push(p),
        Some(x) => {
            x.name = p.name.or(x.name.take());
            x.aor = p.aor.or(x.aor.take());
            merge_list(&mut x.sessions, p.sessions);
            if !p.send.is_empty() {
                x.send = p.send;
            }
            if !p.recv.is_empty() {
                x.recv = p.recv;
            }
            x.associate_time = p.associate_time.or(x.associate_time.take());
            x.disassociate_time = p.disassociate_time.or(x.disassociate_time.take());
            for (k, v) in p.hints {
                x.hints.insert(k, v);
            }
        }
    }
}
