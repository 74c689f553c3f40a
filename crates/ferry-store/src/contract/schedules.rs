//! The schedule domain of the storage contract: cron schedules and their exactly-once firing.

use async_trait::async_trait;
use ferry_core::Result;
use ferry_core::schedule::Schedule;

/// Schedules: stored by name, fired by every node without double-firing a tick.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Stores a new schedule; `conflict` if the name is taken, 422 past `max_schedules`.
    async fn create_schedule(&self, s: Schedule) -> Result<Schedule>;

    /// Replaces an existing schedule; `not_found` if absent.
    async fn update_schedule(&self, s: Schedule) -> Result<Schedule>;

    /// One schedule; `not_found` if absent.
    async fn get_schedule(&self, name: &str) -> Result<Schedule>;

    /// Every schedule, by name.
    async fn list_schedules(&self) -> Result<Vec<Schedule>>;

    /// Deletes a schedule; `not_found` if absent.
    async fn delete_schedule(&self, name: &str) -> Result<()>;

    /// Enqueues the jobs of up to `max` due schedules, each tick exactly once even when every
    /// node runs this (the schedule row is locked, and each job's unique key holds its tick);
    /// returns the jobs enqueued.
    async fn fire_schedules(&self, max: usize) -> Result<u64>;

    /// The earliest next tick of any active schedule.
    async fn next_schedule_ms(&self) -> Result<Option<i64>>;
}
