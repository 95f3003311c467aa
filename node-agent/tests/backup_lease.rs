//! The backup lease against the test API server: of many nodes that try to take a project's
//! backup lease at the same moment exactly one holds it; another node's work waits (`Busy`,
//! naming the holder) and nothing of it runs; a released lease is taken at once, an
//! unrenewed one once it stood unchanged for its duration (whatever time its holder wrote in
//! it); and work whose lease is taken over meanwhile is stopped (its future dropped) before
//! it can write on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams};
use projstore_agent::backup::BackupError;
use projstore_agent::backup::lease::{election, lease_name, leased};
use projstore_agent::streams::ProjectKey;
use projstore_api::lease::{Election, Observed};
use projstore_e2e::testkit::TestApi;

const NS: &str = "projstore-system";

fn key() -> ProjectKey {
    ProjectKey {
        namespace: "alice".into(),
        name: "thesis".into(),
    }
}

async fn api() -> TestApi {
    let api = TestApi::start().await.unwrap();
    api.create_namespaces(&[NS]).await.unwrap();
    api
}

fn short(api: &TestApi, node: &str, secs: u64) -> Election {
    Election {
        duration: Duration::from_secs(secs),
        ..election(api.client.clone(), NS, &key(), node, Observed::default())
    }
}

async fn holder(api: &TestApi) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(api.client.clone(), NS);
    leases
        .get(&lease_name(&key()))
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
}

#[tokio::test]
async fn of_nodes_that_try_at_once_exactly_one_holds_the_lease() {
    let api = api().await;
    for round in 0..3 {
        let nodes: Vec<Election> = (0..8)
            .map(|i| short(&api, &format!("host-{round}-{i}"), 600))
            .collect();
        let won = futures::future::join_all(nodes.iter().map(Election::try_acquire)).await;
        let winners: Vec<&str> = won
            .iter()
            .zip(&nodes)
            .filter(|(w, _)| *w.as_ref().unwrap())
            .map(|(_, n)| n.identity.as_str())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(holder(&api).await.as_deref(), Some(winners[0]));
        // The others are told who holds it.
        for n in nodes.iter().filter(|n| n.identity != winners[0]) {
            assert_eq!(n.holder().await.unwrap().as_deref(), Some(winners[0]));
        }
        // Released: the next round's nodes need not wait for it to expire.
        let w = nodes.iter().find(|n| n.identity == winners[0]).unwrap();
        w.release().await.unwrap();
        assert_eq!(holder(&api).await, None, "released");
    }
}

#[tokio::test]
async fn work_waits_while_another_node_holds_the_lease_and_runs_once_it_is_released() {
    let api = api().await;
    let a = short(&api, "host-a", 600);
    let b = short(&api, "host-b", 600);
    assert!(a.try_acquire().await.unwrap());
    let ran = AtomicBool::new(false);
    let out = leased(&b, async {
        ran.store(true, Ordering::SeqCst);
        Ok::<_, BackupError>(())
    })
    .await;
    match out {
        Err(BackupError::Busy(why)) => assert!(
            why.contains("host-a holds this project's backup lease"),
            "{why}"
        ),
        other => panic!("B ran beside A: {other:?}"),
    }
    assert!(!ran.load(Ordering::SeqCst), "B's work ran");
    a.release().await.unwrap();
    let out = leased(&b, async {
        assert_eq!(
            holder(&api).await.as_deref(),
            Some("host-b"),
            "B holds it while it works"
        );
        Ok::<_, BackupError>(7)
    })
    .await;
    assert_eq!(out.unwrap(), 7);
    assert_eq!(
        holder(&api).await,
        None,
        "B released it when its work ended"
    );
}

#[tokio::test]
async fn a_lease_not_renewed_is_taken_over_and_its_holders_work_is_stopped() {
    let api = api().await;
    // A dead holder: it took the lease and never renewed it.
    let dead = short(&api, "host-dead", 2);
    assert!(dead.try_acquire().await.unwrap());
    // Its clock says nothing: B counts how long the Lease stands unchanged on its own.
    Api::<Lease>::namespaced(api.client.clone(), NS)
        .patch(
            &lease_name(&key()),
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"renewTime": "2099-01-01T00:00:00.000000Z"}}),
            ),
        )
        .await
        .unwrap();
    let b = short(&api, "host-b", 3);
    assert!(!b.try_acquire().await.unwrap(), "taken while fresh");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        !b.try_acquire().await.unwrap(),
        "taken before its duration passed"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        b.try_acquire().await.unwrap(),
        "not taken over once expired"
    );
    let transitions = Api::<Lease>::namespaced(api.client.clone(), NS)
        .get(&lease_name(&key()))
        .await
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions;
    assert_eq!(transitions, Some(1));
    b.release().await.unwrap();

    // B works holding the lease; it is taken from under it (as by a node that thought it
    // expired): B's work stops at its next renewal, and it does not release another's lease.
    let stopped = Arc::new(AtomicBool::new(true));
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = stopped.clone();
    let thief = api.client.clone();
    let out = leased(&b, async move {
        flag.store(false, Ordering::SeqCst);
        let _guard = Dropped(flag);
        let leases: Api<Lease> = Api::namespaced(thief, NS);
        leases
            .patch(
                &lease_name(&key()),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"holderIdentity": "host-thief"}})),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, BackupError>(())
    })
    .await;
    match out {
        Err(BackupError::Busy(why)) => {
            assert!(why.contains("host-thief holds the lease now"), "{why}")
        }
        other => panic!("B's work was not stopped: {other:?}"),
    }
    assert!(stopped.load(Ordering::SeqCst), "B's work was not dropped");
    assert_eq!(
        holder(&api).await.as_deref(),
        Some("host-thief"),
        "B released the thief's lease"
    );
}
