//! The engine suite (rules, flows, edges), unchanged, on a Redis Cluster of three masters on loopback. One cluster
//! serves every test body in turn (forming a cluster takes seconds); each body gets its own key
//! prefix, so none sees another's accounts.

use crate::servers::RedisCluster;
use crate::{edges, flows, harness::Harness, rules};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_suite_passes_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3);
    // An emptied suite would make this test pass without testing anything.
    for (name, suite) in [("rules", rules::SUITE), ("flows", flows::SUITE), ("edges", edges::SUITE)] {
        assert!(!suite.is_empty(), "the {name} suite has no test bodies");
    }
    let suite = rules::SUITE.iter().chain(flows::SUITE).chain(edges::SUITE);
    for (index, (name, body)) in suite.enumerate() {
        eprintln!("cluster: {name}");
        body(Harness::on_cluster(&cluster, &format!("t{index}")).await).await;
    }
    // The accounts were spread over the masters, not piled on one.
    let counts = cluster.key_counts();
    assert!(counts.iter().filter(|count| **count > 0).count() >= 2, "keys per master: {counts:?}");
}
