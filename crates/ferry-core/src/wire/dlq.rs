//! Bodies of the dead-letter queue endpoints: list, replay and purge, with the selector's
//! checks.

use super::jobs::ListParams;
use crate::error::{Error, Result};
use crate::job::{DeadSelector, JobState};
use crate::limits::Limits;
use crate::validate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Query of `GET /v1/dlq`: [`ListParams`] without `state` (always `dead`).
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DlqParams {
    /// Only this queue (empty: every queue).
    #[param(pattern = "^[A-Za-z0-9._:-]{0,128}$", max_length = 128)]
    pub queue: Option<String>,
    /// Page size: 1..=`limits.max_page_size`, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (empty: the first page): an integer in the int64
    /// range (the document's pattern says exactly that).
    pub cursor: Option<String>,
}

impl From<DlqParams> for ListParams {
    fn from(p: DlqParams) -> ListParams {
        ListParams {
            queue: p.queue,
            state: Some(JobState::Dead.as_str().into()),
            limit: p.limit,
            cursor: p.cursor,
        }
    }
}

/// Which dead jobs a replay or purge applies to: `ids` or `queue`, exactly one (the other
/// absent or `null`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DlqSelectorBody {
    /// These dead jobs (ids that name no dead job are skipped); at most `limits.max_batch`
    /// (else 413).
    #[serde(default)]
    #[schema(max_items = 10_000)]
    pub ids: Option<Vec<String>>,
    /// Every dead job of this queue.
    #[serde(default)]
    #[schema(value_type = Option<crate::validate::names::QueueName>)]
    pub queue: Option<String>,
}

impl DlqSelectorBody {
    /// Checks the selector (exactly one of `ids` and `queue`, within the limits) and returns
    /// what the store selects by. Ids that are not UUIDs name no dead job: they are skipped
    /// like any other id of a job that is not dead.
    pub fn validate(self, limits: &Limits) -> Result<DeadSelector> {
        match (self.ids, self.queue) {
            (Some(ids), None) => {
                if ids.len() > limits.max_batch {
                    return Err(Error::too_large(
                        "ids",
                        format!("{} ids; the limit is {}", ids.len(), limits.max_batch),
                    ));
                }
                Ok(DeadSelector::Ids(ids.iter().filter_map(|i| uuid::Uuid::parse_str(i).ok()).collect()))
            }
            (None, Some(q)) => {
                validate::queue_name(&q, limits, "queue")?;
                Ok(DeadSelector::Queue(q))
            }
            _ => Err(Error::invalid("ids", "give exactly one of ids or queue")),
        }
    }
}

/// `POST /v1/dlq/replay` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplayResponse {
    /// Jobs returned to `ready`.
    pub replayed: u64,
    /// Paid jobs left dead because their new hold was refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusedReplay>,
}

/// A paid dead job a replay left dead.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RefusedReplay {
    /// The job.
    pub id: uuid::Uuid,
    /// Why its hold was refused.
    pub error: crate::Error,
}

/// `POST /v1/dlq/purge` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PurgeResponse {
    /// Dead jobs deleted.
    pub purged: u64,
}
