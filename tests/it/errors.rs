//! Machine-readable errors: the `google.rpc` details the statuses carry (the other reasons are
//! checked where their refusal is provoked, through `harness::error_reason`), and the README's
//! catalogue, which must list every reason the server sends with its code.

use credit_sidecar::api::pb;
use credit_sidecar::api::status::REASONS;
use tonic_types::StatusExt;

use crate::harness::{EngineKind, Harness, amount_cost, error_reason};

/// A reservation that does not exist is named in a `ResourceInfo`; usage without a database is
/// `NOT_CONFIGURED`; on both engines the details are the same.
#[tokio::test]
async fn not_found_and_not_configured_carry_their_details() {
    for kind in [EngineKind::Embedded, EngineKind::Redis] {
        let h = Harness::start(kind).await;
        h.account("acme", 100).await;
        let commit = pb::CommitRequest {
            reservation_id: "acme/99".into(),
            cost: Some(amount_cost(1)),
            request_id: "c-1".into(),
            ..Default::default()
        };
        let status = h.auth.clone().commit(commit).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        assert_eq!(error_reason(&status), "RESERVATION_NOT_FOUND");
        let resource = status.get_error_details().resource_info().cloned().unwrap();
        assert_eq!((resource.resource_type.as_str(), resource.resource_name.as_str()), ("reservation", "acme/99"));

        let usage = pb::GetUsageRequest { account_id: "acme".into(), ..Default::default() };
        let status = h.admin.clone().get_usage(usage).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert_eq!(error_reason(&status), "NOT_CONFIGURED");
        let history = pb::GetAccountHistoryRequest { account_id: "acme".into(), ..Default::default() };
        let status = h.admin.clone().get_account_history(history).await.unwrap_err();
        assert_eq!(error_reason(&status), "NOT_CONFIGURED", "history comes from the ledger too");
        h.stop().await;
    }
}

/// README "Errors and declines", under "#### Errors", has one row per reason —
/// `| `REASON` | `CODE` | … |` — and no other.
#[test]
fn the_readme_catalogues_every_reason() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("\n#### Errors\n").nth(1).expect("README has '#### Errors'");
    let section = section.split("\n#").next().unwrap_or_default();
    let mut listed: Vec<(String, String)> = section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(|cell| cell.trim().trim_matches('`')).collect();
            (cells[1].to_owned(), cells[2].to_owned())
        })
        .collect();
    listed.sort();
    let mut reasons: Vec<(String, String)> =
        REASONS.iter().map(|(reason, code)| (reason.to_string(), to_upper_snake(&format!("{code:?}")))).collect();
    reasons.sort();
    assert_eq!(listed, reasons, "README's catalogue vs api::status::REASONS");
}

/// `InvalidArgument` → `INVALID_ARGUMENT`, as gRPC names its codes.
fn to_upper_snake(name: &str) -> String {
    let mut out = String::new();
    for (index, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
