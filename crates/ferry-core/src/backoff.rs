//! Retry delays: exponential backoff with jitter.
//!
//! `delay = min(max_ms, base_ms × factor^(attempt−1))`, then a `jitter` fraction of it is
//! randomized: the result is uniform in `[delay × (1 − jitter), delay]`. `jitter = 1` is
//! "full jitter", `0` none. The random draw is a parameter so the function stays pure.

use serde::{Deserialize, Serialize};

/// How a job's retries are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the first retry; default 1,000.
    #[serde(deserialize_with = "crate::validate::whole::int")]
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub base_ms: i64,
    /// Growth per attempt, 1..=100; default 2.
    #[schema(minimum = 1, maximum = 100)]
    pub factor: f64,
    /// Cap on any single delay, at most `limits.max_delay_ms`; default 3,600,000.
    #[serde(deserialize_with = "crate::validate::whole::int")]
    #[schema(minimum = 0, maximum = 31_622_400_000_i64)]
    pub max_ms: i64,
    /// Randomized fraction of the delay, 0..=1, or `"full"` (1), `"equal"` (0.5) or `"none"`
    /// (0); default 0.25.
    pub jitter: Jitter,
}

/// A jitter fraction in 0..=1, written as a number or a name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Jitter(pub f64);

impl utoipa::PartialSchema for Jitter {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let fraction = ObjectBuilder::new().schema_type(Type::Number).minimum(Some(0)).maximum(Some(1));
        let name =
            ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["full", "equal", "none"]));
        OneOfBuilder::new()
            .item(fraction)
            .item(name)
            .description(Some("a fraction in 0..=1, or full (1), equal (0.5) or none (0)"))
            .into()
    }
}

impl utoipa::ToSchema for Jitter {}

impl<'de> Deserialize<'de> for Jitter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(x) => Ok(Jitter(x)),
            Raw::Name(n) => match n.as_str() {
                "full" => Ok(Jitter(1.0)),
                "equal" => Ok(Jitter(0.5)),
                "none" => Ok(Jitter(0.0)),
                other => Err(serde::de::Error::custom(format!(
                    "jitter must be a number in 0..=1 or one of full, equal, none; got {other:?}"
                ))),
            },
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base_ms: 1_000, factor: 2.0, max_ms: 3_600_000, jitter: Jitter(0.25) }
    }
}

impl Backoff {
    /// The delay before retrying after failed attempt `attempt` (1-based), given a uniform
    /// random draw `u` in `[0, 1)`.
    pub fn delay_ms(&self, attempt: u32, u: f64) -> i64 {
        let exp = attempt.saturating_sub(1).min(1_000) as i32;
        let raw = self.base_ms as f64 * self.factor.powi(exp);
        let capped = if raw.is_finite() { raw.min(self.max_ms as f64) } else { self.max_ms as f64 };
        let capped = capped.max(0.0);
        let jitter = self.jitter.0.clamp(0.0, 1.0);
        let u = u.clamp(0.0, 1.0);
        let delay = capped * (1.0 - jitter * u);
        debug_assert!(delay >= 0.0 && delay <= capped + 0.5);
        delay.round() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grows_exponentially_and_caps() {
        let b = Backoff { base_ms: 100, factor: 2.0, max_ms: 1_000, jitter: Jitter(0.0) };
        let delays: Vec<i64> = (1..=6).map(|a| b.delay_ms(a, 0.5)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn full_jitter_spans_zero_to_delay() {
        let b = Backoff { base_ms: 1_000, factor: 1.0, max_ms: 10_000, jitter: Jitter(1.0) };
        assert_eq!(b.delay_ms(1, 0.0), 1_000);
        assert_eq!(b.delay_ms(1, 0.999_999), 0);
    }

    #[test]
    fn jitter_names_parse() {
        let b: Backoff = serde_json::from_str(r#"{"jitter":"full"}"#).unwrap();
        assert_eq!(b.jitter, Jitter(1.0));
        assert!(serde_json::from_str::<Backoff>(r#"{"jitter":"lots"}"#).is_err());
    }

    proptest! {
        #[test]
        fn delay_is_bounded_and_monotone_without_jitter(
            base in 0i64..100_000, factor in 1.0f64..10.0, max in 0i64..10_000_000,
            jitter in 0.0f64..=1.0, attempt in 1u32..2_000, u in 0.0f64..1.0,
        ) {
            let b = Backoff { base_ms: base, factor, max_ms: max, jitter: Jitter(jitter) };
            let d = b.delay_ms(attempt, u);
            prop_assert!(d >= 0);
            prop_assert!(d <= max.max(0));
            let nj = Backoff { jitter: Jitter(0.0), ..b };
            prop_assert!(nj.delay_ms(attempt, u) <= nj.delay_ms(attempt + 1, u));
            // Jitter only ever shortens, never by more than its fraction.
            let full = nj.delay_ms(attempt, 0.0) as f64;
            prop_assert!(d as f64 >= full * (1.0 - jitter) - 1.0);
        }
    }
}
