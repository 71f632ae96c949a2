//! Who is on the call, from whatever the platform told us: SIPREC
//! metadata, Cisco fork parameters, or plain From/To headers.
//!
//! Caller and callee are reported when a vendor says which participant
//! called (Acme/Oracle/Avaya `callingParty`, BroadWorks
//! `callingPartyNumber`); otherwise the participant on channel 0 is listed
//! as caller. Forked calls carry no direction: caller is the near end.

use model::Participant;
use sip_proto::NameAddr;
use siprec::forked::ForkedLeg;
use siprec::metadata::Metadata;
use siprec::number_of;

/// Participants and the caller/callee/direction summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallParties {
    pub participants: Vec<Participant>,
    pub caller: Option<String>,
    pub callee: Option<String>,
    pub direction: Option<String>,
}

fn label_of(p: &Participant) -> Option<String> {
    p.number.clone().or_else(|| p.aor.clone()).or_else(|| p.name.clone())
}

/// From SIPREC metadata; `labels` maps each accepted stream's label to its channel.
pub fn from_metadata(md: &Metadata, labels: &[(Option<String>, u8)]) -> CallParties {
    let calling = siprec::metadata::calling_participant(md).map(|p| p.id.clone());
    let mut participants: Vec<Participant> = md
        .participants
        .iter()
        .filter(|p| !p.id.is_empty() || p.aor.is_some())
        .map(|p| {
            let channel = labels.iter().find_map(|(label, ch)| {
                let label = label.as_deref()?;
                md.sender_of_label(label).filter(|s| s.id == p.id).map(|_| *ch)
            });
            Participant {
                id: Some(p.id.clone()).filter(|i| !i.is_empty()),
                name: p.name.clone(),
                aor: p.aor.clone(),
                number: p.aor.as_deref().and_then(number_of),
                role: calling.as_ref().map(|c| if *c == p.id { "caller".to_owned() } else { "callee".to_owned() }),
                channel,
                device: None,
                joined_at: p.associate_time.clone(),
                left_at: p.disassociate_time.clone(),
            }
        })
        .collect();
    let caller_idx = participants
        .iter()
        .position(|p| p.role.as_deref() == Some("caller"))
        .or_else(|| participants.iter().position(|p| p.channel == Some(0)))
        .or((!participants.is_empty()).then_some(0));
    let callee_idx = caller_idx.and_then(|ci| {
        participants
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != ci)
            .min_by_key(|(_, p)| (p.channel.is_none(), p.channel))
            .map(|(i, _)| i)
    });
    if calling.is_none() {
        if let Some(i) = caller_idx {
            participants[i].role.get_or_insert_with(|| "caller".to_owned());
        }
        if let Some(i) = callee_idx {
            participants[i].role.get_or_insert_with(|| "callee".to_owned());
        }
    }
    CallParties {
        caller: caller_idx.and_then(|i| label_of(&participants[i])),
        callee: callee_idx.and_then(|i| label_of(&participants[i])),
        direction: md.direction_hint().map(str::to_owned),
        participants,
    }
}

/// From one Cisco BiB leg (both legs carry the same information).
pub fn from_fork(leg: &ForkedLeg, from: &NameAddr) -> CallParties {
    let near_number = leg.near_end_addr.clone().or_else(|| from.uri.number());
    let near = Participant {
        name: leg.near_end_name.clone(),
        aor: Some(from.uri.aor()),
        number: near_number.clone(),
        role: Some("near-end".into()),
        channel: Some(0),
        device: leg.near_end_device.clone(),
        ..Participant::default()
    };
    let far = Participant {
        number: leg.far_end_addr.clone(),
        role: Some("far-end".into()),
        channel: Some(1),
        device: leg.far_end_device.clone(),
        ..Participant::default()
    };
    CallParties { caller: label_of(&near), callee: label_of(&far), participants: vec![near, far], direction: None }
}

/// From the From and To headers of a plain INVITE.
pub fn from_headers(from: &NameAddr, to: &NameAddr, channels: u16) -> CallParties {
    let caller = Participant {
        name: from.display_name.clone(),
        aor: Some(from.uri.aor()),
        number: from.uri.number(),
        role: Some("caller".into()),
        channel: Some(0),
        ..Participant::default()
    };
    let callee = Participant {
        name: to.display_name.clone(),
        aor: Some(to.uri.aor()),
        number: to.uri.number(),
        role: Some("callee".into()),
        channel: Some(if channels > 1 { 1 } else { 0 }),
        ..Participant::default()
    };
    CallParties {
        caller: label_of(&caller),
        callee: label_of(&callee),
        participants: vec![caller, callee],
        direction: None,
    }
}
