//! Recording metadata (`application/rs-metadata+xml`, RFC 7865) and the
//! variants that real SRCs send.
//!
//! One model, three dialects, told apart by element and attribute names
//! rather than by namespace (SRCs get namespaces wrong):
//! - RFC 7865 (`urn:ietf:params:xml:ns:recording:1`): `participant_id`,
//!   `stream_id`, association elements (`participantstreamassoc`, ...).
//! - The pre-RFC draft used by Acme/Oracle and Avaya SBCs
//!   (`urn:ietf:params:xml:ns:recording`): `id`/`session` attributes and
//!   `<send>` directly inside `<participant>`.
//! - BroadWorks (`recording_metadata`, `urn:ietf:params:xml:ns:siprec`):
//!   `dataMode`, `<aor>` children, `<send><id>..</id></send>` and
//!   `<extensiondata parent=..>` at the root.
//!
//! Vendor extensions (`extensiondata` or any foreign-namespace element) are
//! kept verbatim, and their leaf values are indexed as "hints" so callers
//! can find e.g. Acme's `callingParty` or BroadWorks' `callingPartyNumber`.
//! DTDs are refused by the XML parser, so entity tricks cannot expand.

use std::collections::BTreeMap;

use roxmltree::{Document, Node};
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

/// Why a metadata body was refused (the SIP layer answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("invalid XML in metadata: {0}")]
    Xml(String),
    #[error("metadata root element <{0}> is not a recording")]
    NotMetadata(String),
}

const RECORDING_NAMESPACES: &[&str] =
    &["urn:ietf:params:xml:ns:recording:1", "urn:ietf:params:xml:ns:recording", "urn:ietf:params:xml:ns:siprec"];

fn is_recording_ns(node: Node) -> bool {
    match node.tag_name().namespace() {
        None => true,
        Some(ns) => RECORDING_NAMESPACES.contains(&ns),
    }
}

fn local(node: Node) -> String {
    node.tag_name().name().to_ascii_lowercase()
}

fn text(node: Node) -> Option<String> {
    let t: String = node.descendants().filter(|n| n.is_text()).filter_map(|n| n.text()).collect();
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.is_element() && local(*c) == name)
}

fn child_text(node: Node, name: &str) -> Option<String> {
    child(node, name).and_then(text)
}

fn attr(node: Node, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| node.attribute(*n)).map(|v| v.trim().to_owned())
}

/// Stream ids in a `<send>`/`<recv>` element: text, or `<id>` children (BroadWorks).
fn stream_refs(node: Node) -> Vec<String> {
    let ids: Vec<String> = node.children().filter(|c| c.is_element() && local(*c) == "id").filter_map(text).collect();
    if !ids.is_empty() {
        return ids;
    }
    text(node).into_iter().collect()
}

fn collect_hints(node: Node, into: &mut BTreeMap<String, String>) {
    for d in node.descendants().filter(|d| d.is_element()) {
        let direct: String = d.children().filter(|c| c.is_text()).filter_map(|c| c.text()).collect();
        into.entry(d.tag_name().name().to_owned()).or_insert_with(|| direct.trim().to_owned());
    }
}

fn is_extension(node: Node) -> bool {
    local(node) == "extensiondata" || !is_recording_ns(node)
}

/// Parses an rs-metadata document.
pub fn parse(xml: &[u8]) -> Result<Metadata, MetadataError> {
    let text_doc = std::str::from_utf8(xml).map_err(|_| MetadataError::Xml("not UTF-8".into()))?;
    let doc = Document::parse(text_doc).map_err(|e| MetadataError::Xml(e.to_string()))?;
    let root = doc.root_element();
    let root_name = local(root);
    let schema = match (root_name.as_str(), root.tag_name().namespace()) {
        ("recording_metadata", _) => Schema::BroadWorks,
        ("recording", Some("urn:ietf:params:xml:ns:recording")) => Schema::Draft,
        ("recording", _) => Schema::Rfc7865,
        (other, _) => return Err(MetadataError::NotMetadata(other.to_owned())),
    };
    let raw = |n: Node| text_doc[n.range()].to_owned();
    let mut md = Metadata { schema, ..Metadata::default() };
    let mut participant_assocs: Vec<Node> = Vec::new();

    for el in root.children().filter(|c| c.is_element()) {
        if is_extension(el) {
            md.extensions.push(Extension {
                parent_kind: "recording".into(),
                parent_id: el.attribute("parent").map(str::to_owned),
                xml: raw(el),
            });
            let mut hints = BTreeMap::new();
            collect_hints(el, &mut hints);
            for (k, v) in hints {
                md.hints.entry(k).or_insert(v);
            }
            continue;
        }
        match local(el).as_str() {
            "datamode" if text(el).is_some_and(|t| t.eq_ignore_ascii_case("partial")) => {
                md.data_mode = DataMode::Partial;
            }
            "group" => {
                let id = attr(el, &["group_id", "id"]).unwrap_or_default();
                push_extensions(&mut md.extensions, el, "group", &id, &raw);
                md.groups.push(Group { id, associate_time: child_text(el, "associate-time") });
            }
            "session" => {
                let id = attr(el, &["session_id", "id"]).unwrap_or_default();
                push_extensions(&mut md.extensions, el, "session", &id, &raw);
                md.sessions.push(Session {
                    group_ref: child_text(el, "group-ref").or_else(|| attr(el, &["group"])),
                    sip_session_ids: el
                        .children()
                        .filter(|c| c.is_element() && local(*c) == "sipsessionid")
                        .filter_map(text)
                        .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
                        .collect(),
                    start_time: child_text(el, "start-time"),
                    stop_time: child_text(el, "stop-time"),
                    id,
                });
            }
            "participant" => {
                let id = attr(el, &["participant_id", "id"]).unwrap_or_default();
                let mut p = Participant { id: id.clone(), ..Participant::default() };
                if let Some(name_id) = child(el, "nameid") {
                    p.aor = name_id.attribute("aor").map(|a| a.trim().to_owned()).filter(|a| !a.is_empty());
                    p.name = child_text(name_id, "name");
                }
                p.aor = p.aor.or_else(|| child_text(el, "aor"));
                p.name = p.name.or_else(|| child_text(el, "name"));
                if let Some(s) = attr(el, &["session"]) {
                    p.sessions.push(s);
                }
                for c in el.children().filter(|c| c.is_element()) {
                    match local(c).as_str() {
                        "send" => p.send.extend(stream_refs(c)),
                        "recv" => p.recv.extend(stream_refs(c)),
                        "associate-time" => p.associate_time = text(c),
                        "disassociate-time" => p.disassociate_time = text(c),
                        _ if is_extension(c) => collect_hints(c, &mut p.hints),
                        _ => {}
                    }
                }
                push_extensions(&mut md.extensions, el, "participant", &id, &raw);
                upsert_participant(&mut md.participants, p);
            }
            "stream" => {
                let id = attr(el, &["stream_id", "id"]).unwrap_or_default();
                push_extensions(&mut md.extensions, el, "stream", &id, &raw);
                md.streams.push(Stream {
                    session_id: attr(el, &["session_id", "session"]),
                    label: child_text(el, "label"),
                    mode: child_text(el, "mode"),
                    id,
                });
            }
            "participantsessionassoc" | "participantstreamassoc" => participant_assocs.push(el),
            "sessionrecordingassoc" => {
                let id = attr(el, &["session_id"]).unwrap_or_default();
                if !md.sessions.iter().any(|s| s.id == id) && !id.is_empty() {
                    md.sessions.push(Session { id, ..Session::default() });
                }
            }
            _ => {} // `recording` (BroadWorks), unknown standard elements
        }
    }

    // Associations may come before the participant they name.
    for el in participant_assocs {
        let Some(pid) = attr(el, &["participant_id"]) else {
            continue;
        };
        let mut p = Participant { id: pid, ..Participant::default() };
        if local(el) == "participantsessionassoc" {
            if let Some(s) = attr(el, &["session_id"]) {
                p.sessions.push(s);
            }
            p.associate_time = child_text(el, "associate-time");
            p.disassociate_time = child_text(el, "disassociate-time");
        } else {
            for c in el.children().filter(|c| c.is_element()) {
                match local(c).as_str() {
                    "send" => p.send.extend(stream_refs(c)),
                    "recv" => p.recv.extend(stream_refs(c)),
                    _ => {}
                }
            }
        }
        upsert_participant(&mut md.participants, p);
    }
    Ok(md)
}

fn push_extensions(out: &mut Vec<Extension>, el: Node, kind: &str, id: &str, raw: &dyn Fn(Node) -> String) {
    for c in el.children().filter(|c| c.is_element() && is_extension(*c)) {
        out.push(Extension {
            parent_kind: kind.to_owned(),
            parent_id: (!id.is_empty()).then(|| id.to_owned()),
            xml: raw(c),
        });
    }
}

fn merge_list(into: &mut Vec<String>, from: Vec<String>) {
    for s in from {
        if !s.is_empty() && !into.contains(&s) {
            into.push(s);
        }
    }
}

fn upsert_participant(list: &mut Vec<Participant>, p: Participant) {
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

    /// The calling participant, when a vendor extension says which it is
    /// (Acme/Oracle/Avaya `callingParty`, BroadWorks `callingPartyNumber`).
    pub fn calling_participant(&self) -> Option<&Participant> {
        if let Some(p) = self.participants.iter().find(|p| p.hints.get("callingParty").is_some_and(|v| v == "true")) {
            return Some(p);
        }
        let calling = self.hints.get("callingPartyNumber")?;
        let want = crate::number_of(calling)?;
        self.participants.iter().find(|p| p.aor.as_deref().and_then(crate::number_of).as_deref() == Some(want.as_str()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_dtd_and_non_metadata() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><recording>&b;</recording>"#;
        assert!(matches!(parse(bomb.as_bytes()), Err(MetadataError::Xml(_))));
        assert_eq!(parse(b"<html/>"), Err(MetadataError::NotMetadata("html".into())));
        assert!(matches!(parse(b"<recording><participant>"), Err(MetadataError::Xml(_))));
        assert!(matches!(parse(&[0xff, 0xfe]), Err(MetadataError::Xml(_))));
    }
}
