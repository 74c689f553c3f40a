//! The monitored-host part of the `Store` contract: a host is created once per name, listed by
//! name and deleted.

use super::{Harness, T0};
use ferry_core::*;

pub async fn hosts_crud(h: Harness) {
    assert!(h.store.list_hosts().await.unwrap().is_empty());
    let host = |name: &str| HostRecord {
        name: name.into(),
        health_url: format!("http://{name}.internal:8080/health"),
        created_at: T0,
    };
    h.store.create_host(host("db")).await.unwrap();
    h.store.create_host(host("api")).await.unwrap();
    let e = h
        .store
        .create_host(HostRecord { health_url: "http://other/".into(), ..host("db") })
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(h.store.list_hosts().await.unwrap(), vec![host("api"), host("db")]);
    h.store.delete_host("api").await.unwrap();
    assert_eq!(h.store.delete_host("api").await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(h.store.list_hosts().await.unwrap(), vec![host("db")]);
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! hosts_rules {
    () => {
        domain_tests!(hosts:
            hosts_crud,
        );
    };
}
