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

pub use model::rs_metadata::{DataMode, Extension, Group, Metadata, Participant, Schema, Session, Stream};

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
                model::rs_metadata::upsert_participant(&mut md.participants, p);
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
        model::rs_metadata::upsert_participant(&mut md.participants, p);
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

/// The calling participant, when a vendor extension says which it is
/// (Acme/Oracle/Avaya `callingParty`, BroadWorks `callingPartyNumber`).
pub fn calling_participant(md: &Metadata) -> Option<&Participant> {
    if let Some(p) = md.participants.iter().find(|p| p.hints.get("callingParty").is_some_and(|v| v == "true")) {
        return Some(p);
    }
    let calling = md.hints.get("callingPartyNumber")?;
    let want = crate::number_of(calling)?;
    md.participants.iter().find(|p| p.aor.as_deref().and_then(crate::number_of).as_deref() == Some(want.as_str()))
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
