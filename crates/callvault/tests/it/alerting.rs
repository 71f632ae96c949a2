//! The alert rules and the Grafana dashboard that ship in `deploy/`: every
//! metric they name exists on a live node (single and cluster), promtool
//! accepts the rules and passes their unit tests, and the no-RTP alert
//! fires on the counter a real one-way call produced.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{call, temp_dir, Node};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(path)
}

/// `callvault_*` names in a text (rules, dashboard queries).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("callvault_") {
        // Not part of a longer word (e.g. a label value).
        let before_ok = rest[..i].chars().last().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        if before_ok {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Metric families a scrape declares (`# TYPE name kind`).
fn families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

fn scrape(node: &Node) -> String {
    node.raw_get("/metrics").call().unwrap().body_mut().read_to_string().unwrap()
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("promtool not found ({e}); scripts/install-test-deps.sh installs it"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_and_dashboard_name_real_metrics_and_pass_promtool() {
    // A one-member cluster, so the cluster families are there too.
    let port = crate::harness::free_port();
    let node = Node::start_with(
        "alerting",
        &[
            ("CALLVAULT_MEDIA__NO_RTP_ALARM_SECS", "1"),
            ("CALLVAULT_NODE_ID", "alerting-1"),
            ("CALLVAULT_CLUSTER__SECRET", "alerting-secret"),
            ("CALLVAULT_CLUSTER__LISTEN", &format!("127.0.0.1:{port}")),
        ],
    );
    let before = node.metric("callvault_streams_without_rtp_total");
    let s = call(node.sip_udp, &["--duration", "3", "--no-rtp-b"]);
    assert_eq!(s["established"], 1, "{s:#}");
    let after = node.metric("callvault_streams_without_rtp_total");
    assert_eq!((before, after), (0.0, 1.0), "the one-way call counted");
    let declared = families(&scrape(&node));

    let rules = std::fs::read_to_string(deploy("prometheus/callvault-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(deploy("grafana/callvault-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() > 10));
    let mut unknown = Vec::new();
    for name in metric_names(&rules).union(&metric_names(&dashboard)) {
        let family = ["_bucket", "_count", "_sum", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| declared.contains(*f))
            .unwrap_or(name);
        if !declared.contains(family) {
            unknown.push(name.clone());
        }
    }
    assert!(unknown.is_empty(), "rules or dashboard name metrics the node does not export: {unknown:?}");

    let rules_path = deploy("prometheus/callvault-alerts.yml");
    promtool(&["check", "rules", rules_path.to_str().unwrap()]);
    promtool(&["test", "rules", deploy("prometheus/callvault-alerts.test.yml").to_str().unwrap()]);

    // The no-RTP alert on the figures this node just exported: before the
    // call, then after it, one sample a minute.
    let dir = temp_dir("promtool");
    let (b, a) = (before as u64, after as u64);
    let test = format!(
        "rule_files: [{rules:?}]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n      \
         - series: 'callvault_streams_without_rtp_total{{instance=\"it\",job=\"callvault\"}}'\n        \
         values: '{b} {b} {b} {a} {a} {a}'\n    alert_rule_test:\n      \
         - eval_time: 2m\n        alertname: CallvaultStreamWithoutRtp\n        exp_alerts: []\n      \
         - eval_time: 5m\n        alertname: CallvaultStreamWithoutRtp\n        exp_alerts:\n          \
         - exp_labels: {{severity: warning, instance: it, job: callvault}}\n            exp_annotations:\n              \
         summary: \"callvault it: streams without any RTP\"\n              \
         description: \"{n} streams received no RTP at all (firewall, NAT or a media path the platform set up \
         wrong): those recordings are silent on that side.\"\n",
        rules = rules_path.to_str().unwrap(),
        n = a - b,
    );
    let file = dir.join("live.test.yml");
    std::fs::write(&file, test).unwrap();
    promtool(&["test", "rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(dir);
}
