//! Bodies of the schedule endpoints. The schedule bodies live with the cron rules in
//! [`crate::schedule`] (their checks need them) and are re-exported here; the query of
//! `GET /v1/schedules/{name}` is defined here.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

pub use crate::schedule::{DeletedResponse, Schedule, SchedulePatch, ScheduleSpec, SchedulesResponse};

/// Most next runs one request may list.
pub const MAX_NEXT_RUNS: usize = 100;

/// How many next runs `GET /v1/schedules/{name}` shows.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NextQuery {
    /// Next runs to list (1..=100, default 5).
    #[param(minimum = 1, maximum = 100)]
    pub count: Option<usize>,
}

impl NextQuery {
    /// The number of next runs asked for, checked (default 5).
    pub fn validate(&self) -> Result<usize> {
        let count = self.count.unwrap_or(5);
        if count == 0 || count > MAX_NEXT_RUNS {
            return Err(Error::invalid("count", format!("count must be 1..={MAX_NEXT_RUNS}")));
        }
        Ok(count)
    }
}
