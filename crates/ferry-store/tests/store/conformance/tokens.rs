//! The API token part of the `Store` contract: token records round-trip, list oldest first,
//! conflict on a reused id, and are revoked once (revoked tokens stay listed).

use super::{Harness, T0};
use ferry_core::*;
use uuid::Uuid;

fn token(name: &str, created_at: i64, scopes: Vec<Scope>, queues: Option<Vec<String>>) -> TokenRecord {
    TokenRecord {
        id: Uuid::new_v4(),
        name: name.into(),
        hash: format!("{:064x}", rand_hash(name)),
        scopes,
        // Restricted tokens here are restricted to agents and namespaces too, so every list
        // round-trips.
        agents: queues.as_ref().map(|q| q.iter().map(|n| format!("agent-{n}")).collect()),
        namespaces: queues.as_ref().map(|q| q.iter().map(|n| format!("ns-{n}")).collect()),
        queues,
        created_at,
        revoked_at: None,
    }
}

fn rand_hash(seed: &str) -> u128 {
    seed.bytes().fold(0xcbf2_9ce4_8422_2325_u128, |h, b| (h ^ u128::from(b)).wrapping_mul(0x0100_0000_01b3))
}

pub async fn tokens_round_trip_and_revoke(h: Harness) {
    assert!(h.store.list_tokens().await.unwrap().is_empty());
    let producer =
        token("ci-producer", T0, vec![Scope::Produce, Scope::Read], Some(vec!["a".into(), "b".into()]));
    let admin = token("admin", T0 + 1, vec![Scope::Admin], None);
    let old = token("old", T0 - 5, vec![Scope::Work], Some(vec![]));
    for t in [&producer, &admin, &old] {
        h.store.create_token(t.clone()).await.unwrap();
    }
    assert_eq!(h.store.list_tokens().await.unwrap(), vec![old.clone(), producer.clone(), admin.clone()]);
    let e = h.store.create_token(admin.clone()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    h.clock.advance(100);
    let revoked = h.store.revoke_token(producer.id).await.unwrap();
    assert_eq!(revoked, TokenRecord { revoked_at: Some(T0 + 100), ..producer.clone() });
    h.clock.advance(100);
    let again = h.store.revoke_token(producer.id).await.unwrap();
    assert_eq!(again.revoked_at, Some(T0 + 100), "a second revocation keeps the first time");
    let listed = h.store.list_tokens().await.unwrap();
    assert_eq!(listed[1], revoked, "revoked tokens are listed");
    assert_eq!(listed[2].revoked_at, None);
    let e = h.store.revoke_token(Uuid::new_v4()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! tokens_rules {
    () => {
        domain_tests!(tokens:
            tokens_round_trip_and_revoke,
        );
    };
}
