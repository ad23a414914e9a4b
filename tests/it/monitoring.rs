//! The chart's alert rules and dashboard (`helm/credit-sidecar/files/`) name only metrics the
//! binary exports (`telemetry::EXPORTED`, `telemetry::PROCESS_METRICS`): a renamed metric fails
//! here, not silently in someone's Grafana. (promtool checks and unit-tests the rules in CI;
//! `process.rs` scrapes the real binary.)

use std::collections::BTreeSet;
use std::path::Path;

use credit_sidecar::telemetry::{EXPORTED, PROCESS_METRICS};

const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// Every `credit_sidecar_*` and `process_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["credit_sidecar_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            if text[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String =
                text[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            names.insert(name);
        }
    }
    names
}

fn exported(name: &str) -> bool {
    let known = |candidate: &str| EXPORTED.contains(&candidate) || PROCESS_METRICS.contains(&candidate);
    known(name) || HISTOGRAM_SUFFIXES.iter().any(|suffix| name.strip_suffix(suffix).is_some_and(known))
}

#[test]
fn alerts_and_dashboard_name_only_exported_metrics() {
    assert!(!exported("credit_sidecar_settle_lag_secs"), "the check can fail");
    assert!(exported("credit_sidecar_call_duration_seconds_bucket"));
    let files = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/credit-sidecar/files");
    for file in ["alerts.yaml", "alerts_test.yaml", "dashboard.json"] {
        let text = std::fs::read_to_string(files.join(file)).expect("a file of the chart");
        let names = metric_names(&text);
        assert!(names.len() >= 5, "{file} names only {names:?}: the pattern no longer matches");
        let unknown: Vec<&String> = names.iter().filter(|name| !exported(name)).collect();
        assert!(unknown.is_empty(), "{file} names metrics the binary does not export: {unknown:?}");
    }
}
