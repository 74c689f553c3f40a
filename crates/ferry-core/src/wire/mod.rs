//! HTTP request and response bodies, shared by the server and the client so both sides of
//! the wire use one definition. Field names here are the public API: they do not change.
//!
//! One module per domain, each with the checks of its bodies beside them (`ClaimBody::validate`,
//! `HostBody::validate`, ...): the server calls them, so a client can run the same checks
//! before sending. Everything is re-exported here, so `ferry_core::wire::X` names any body.

pub mod advice;
pub mod checkpoints;
pub mod convoys;
pub mod dlq;
pub mod errors;
pub mod events;
pub mod health;
pub mod hosts;
pub mod items;
pub mod jobs;
pub mod ledger;
pub mod memory;
pub mod messages;
pub mod queues;
pub mod schedules;
pub mod stats;
pub mod tokens;
pub mod workers;

pub use advice::*;
pub use checkpoints::*;
pub use convoys::*;
pub use dlq::*;
pub use errors::*;
pub use events::*;
pub use health::*;
pub use hosts::*;
pub use items::*;
pub use jobs::*;
pub use ledger::*;
pub use memory::*;
pub use messages::*;
pub use queues::*;
pub use schedules::*;
pub use stats::*;
pub use tokens::*;
pub use workers::*;

/// A JSON object of `T`: derived `Deserialize` would also accept an array of the fields in
/// order, which no client means; this refuses anything but an object.
#[derive(Debug)]
pub struct Obj<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Deserializers for nested objects that refuse the array form derived `Deserialize` also
/// takes (`{"context": [null, null]}` is not a context).
pub(crate) mod object {
    use super::Obj;
    use serde::{Deserialize, Deserializer};

    /// An optional nested object.
    pub fn opt<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
        Ok(Option::<Obj<T>>::deserialize(d)?.map(|o| o.0))
    }

    /// A list of objects.
    pub fn vec<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        Ok(Vec::<Obj<T>>::deserialize(d)?.into_iter().map(|o| o.0).collect())
    }
}

/// Checks that a lease token was sent (every lease-fenced body has one).
pub(crate) fn lease_present(lease: &str, field: &str) -> crate::Result<()> {
    if lease.is_empty() { Err(crate::Error::invalid(field, "lease must not be empty")) } else { Ok(()) }
}
