//! Media forking without SIPREC (Cisco Built-in-Bridge, CUCM "SIP trunk"
//! recording): one plain INVITE per direction, both carrying the same call
//! reference in their From URI parameters:
//!
//! ```text
//! From: <sip:4062@cucm;x-nearend;x-refci=82731258;x-nearenddevice=SEP..;
//!        x-nearendaddr=4062;x-farendrefci=82730980;x-farendaddr=8172710497>;tag=...
//! ```
//!
//! The first parameter says which voice the leg carries (`x-nearend`: the
//! recorded device's own, `x-farend`: the other party's); `x-refci` is the
//! same on both legs and links them into one recording.

use sip_proto::NameAddr;

/// Which voice a forked leg carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LegRole {
    NearEnd,
    FarEnd,
}

impl LegRole {
    /// Channel of the recording this voice goes to (near end left).
    pub fn channel(self) -> u8 {
        match self {
            LegRole::NearEnd => 0,
            LegRole::FarEnd => 1,
        }
    }
}

/// What one forked-leg INVITE says about the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkedLeg {
    pub role: LegRole,
    /// Shared call reference linking the legs.
    pub link: String,
    pub near_end_addr: Option<String>,
    pub near_end_device: Option<String>,
    pub far_end_addr: Option<String>,
    pub far_end_device: Option<String>,
    pub near_end_name: Option<String>,
    /// CUCM cluster of the near end (`x-nearendclusterid`): `x-refci` is
    /// unique within one cluster only.
    pub cluster_id: Option<String>,
}

impl ForkedLeg {
    /// The call this leg belongs to, the same on every recorder the legs
    /// were forked to: the call reference within its CUCM cluster (the
    /// signalling host stands in when the cluster id is not sent).
    pub fn call_key(&self, host: &str) -> String {
        format!("bib:{}@{}", self.link, self.cluster_id.as_deref().unwrap_or(host))
    }
}

impl ForkedLeg {
    /// Reads the fork parameters from a From header; `None` for an
    /// ordinary INVITE.
    pub fn from_header(from: &NameAddr) -> Option<ForkedLeg> {
        let link = from.any_param("x-refci").flatten().filter(|v| !v.is_empty())?.to_owned();
        let role = if from.any_param("x-farend").is_some() { LegRole::FarEnd } else { LegRole::NearEnd };
        let p = |n: &str| from.any_param(n).flatten().map(str::to_owned).filter(|v| !v.is_empty());
        Some(ForkedLeg {
            role,
            link,
            near_end_addr: p("x-nearendaddr"),
            near_end_device: p("x-nearenddevice"),
            far_end_addr: p("x-farendaddr"),
            far_end_device: p("x-farenddevice"),
            near_end_name: from.display_name.clone(),
            cluster_id: p("x-nearendclusterid"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cisco_bib_legs() {
        let near = NameAddr::parse(r#""Janice Holland" <sip:4062@10.0.0.1;x-nearend;x-refci=82731258;x-nearenddevice=SEP189C5DB7C8AC;x-nearendaddr=4062;x-farendrefci=82730980;x-farenddevice=10.1.20.11;x-farendaddr=8172710497>;tag=1"#).unwrap();
        let far = NameAddr::parse(r#""Janice Holland" <sip:4062@10.0.0.1;x-farend;x-refci=82731258;x-nearendaddr=4062;x-farendaddr=8172710497>;tag=2"#).unwrap();
        let n = ForkedLeg::from_header(&near).unwrap();
        let f = ForkedLeg::from_header(&far).unwrap();
        assert_eq!((n.role, f.role), (LegRole::NearEnd, LegRole::FarEnd));
        assert_eq!(n.link, f.link);
        assert_eq!(n.far_end_addr.as_deref(), Some("8172710497"));
        assert_eq!(n.near_end_device.as_deref(), Some("SEP189C5DB7C8AC"));
        assert_eq!(n.call_key("10.0.0.1"), "bib:82731258@10.0.0.1");
        let with_cluster = NameAddr::parse("<sip:4062@h;x-nearend;x-refci=5;x-nearendclusterid=CUCM-A>;tag=1").unwrap();
        assert_eq!(ForkedLeg::from_header(&with_cluster).unwrap().call_key("10.0.0.9"), "bib:5@CUCM-A");
        assert!(ForkedLeg::from_header(&NameAddr::parse("<sip:a@b>;tag=1").unwrap()).is_none());
    }
}
