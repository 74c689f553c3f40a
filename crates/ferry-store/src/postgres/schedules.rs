//! Schedules as PostgreSQL statements. The firing pass locks due schedule rows with
//! `FOR UPDATE SKIP LOCKED`, so when every node runs it each schedule is fired by one node,
//! and moves `next_run_at` in the same transaction as the tick's jobs; the jobs' unique keys
//! (`schedule:<name>:<tick>`) are a second guard.

use super::PgStore;
use super::jobs;
use super::{RowExt, pg_err};
use crate::ScheduleStore;
use crate::effects::Effects;
use crate::rows::*;
use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper as Client, Transaction};
use ferry_core::schedule::{Schedule, plan_fire};
use ferry_core::{Error, ErrorCode, Limits, Result};
use tokio_postgres::Row;

fn row(r: &Row) -> Result<ScheduleRow> {
    Ok((
        r.col(0)?,
        r.col(1)?,
        r.col(2)?,
        r.col(3)?,
        r.col(4)?,
        r.col::<i32>(5)? as i64,
        r.col(6)?,
        r.col(7)?,
        r.col(8)?,
        r.col(9)?,
        r.col(10)?,
    ))
}

/// Runs `sql` with the schedule's columns as `$1..$11`, in [`SCHEDULE_COLS`] order.
async fn write(tx: &Transaction<'_>, sql: &str, s: &Schedule) -> Result<u64> {
    tx.execute(
        sql,
        &[
            &s.name,
            &s.cron,
            &s.timezone,
            &s.job.to_string(),
            &s.misfire.as_str(),
            &(s.catch_up_max.min(i32::MAX as u32) as i32),
            &s.paused,
            &s.next_run_at.map(|t| t.0),
            &s.last_run_at.map(|t| t.0),
            &s.created_at.0,
            &s.updated_at.0,
        ],
    )
    .await
    .map_err(pg_err)
}

/// Inserts a new schedule.
pub async fn create(tx: &Transaction<'_>, s: Schedule, limits: &Limits) -> Result<Schedule> {
    let n: i64 = tx.query_one("SELECT count(*) FROM schedules", &[]).await.map_err(pg_err)?.col(0)?;
    if n as usize >= limits.max_schedules {
        return Err(Error::invalid(
            "name",
            format!("ferry keeps at most {} schedules", limits.max_schedules),
        ));
    }
    let sql = format!(
        "INSERT INTO schedules ({SCHEDULE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (name) DO NOTHING"
    );
    let inserted = write(tx, &sql, &s).await?;
    if inserted == 0 {
        return Err(Error::new(ErrorCode::Conflict, format!("schedule {:?} exists already", s.name)));
    }
    Ok(s)
}

/// Replaces an existing schedule.
pub async fn update(tx: &Transaction<'_>, s: Schedule) -> Result<Schedule> {
    let sql = "UPDATE schedules SET cron = $2, timezone = $3, job = $4, misfire = $5, catch_up_max = $6,
                   paused = $7, next_run_at = $8, last_run_at = $9, created_at = $10, updated_at = $11
               WHERE name = $1";
    match write(tx, sql, &s).await? {
        0 => Err(schedule_not_found(&s.name)),
        _ => Ok(s),
    }
}

/// One schedule.
pub async fn get(c: &Client, name: &str) -> Result<Schedule> {
    let r = c
        .query_opt(&format!("SELECT {SCHEDULE_COLS} FROM schedules WHERE name = $1"), &[&name])
        .await
        .map_err(pg_err)?
        .ok_or_else(|| schedule_not_found(name))?;
    schedule_from(row(&r)?)
}

/// Every schedule, by name.
pub async fn list(c: &Client) -> Result<Vec<Schedule>> {
    let rows = c
        .query(&format!("SELECT {SCHEDULE_COLS} FROM schedules ORDER BY name"), &[])
        .await
        .map_err(pg_err)?;
    rows.iter().map(|r| schedule_from(row(r)?)).collect()
}

/// Deletes one schedule.
pub async fn delete(tx: &Transaction<'_>, name: &str) -> Result<()> {
    match tx.execute("DELETE FROM schedules WHERE name = $1", &[&name]).await.map_err(pg_err)? {
        0 => Err(schedule_not_found(name)),
        _ => Ok(()),
    }
}

/// The earliest next tick of an active schedule.
pub async fn next_due(c: &Client) -> Result<Option<i64>> {
    let r = c
        .query_one("SELECT min(next_run_at) FROM schedules WHERE NOT paused AND next_run_at IS NOT NULL", &[])
        .await
        .map_err(pg_err)?;
    r.col(0)
}

/// Enqueues the due ticks of up to `max` schedules no other node is firing.
pub async fn fire(
    tx: &Transaction<'_>,
    now: i64,
    max: usize,
    limits: &Limits,
    w: &mut Effects,
) -> Result<u64> {
    let rows = tx
        .query(
            &format!(
                "SELECT {SCHEDULE_COLS} FROM schedules
                 WHERE NOT paused AND next_run_at IS NOT NULL AND next_run_at <= $1
                 ORDER BY next_run_at LIMIT $2 FOR UPDATE SKIP LOCKED"
            ),
            &[&now, &(max as i64)],
        )
        .await
        .map_err(pg_err)?;
    let mut enqueued = 0;
    for r in rows {
        let r = row(&r)?;
        let name = r.0.clone();
        let (s, (jobs, next)) = match schedule_from(r)
            .and_then(|s| plan_fire(&s, now, limits).map(|p| (s, p)))
        {
            Ok(p) => p,
            Err(e) => {
                // Parked: no longer due, so the pass does not retry it in a loop; a PATCH that
                // fixes it sets its next run again.
                tracing::error!(schedule = %name, error = %e, "schedule cannot fire; parked until it is changed");
                tx.execute("UPDATE schedules SET next_run_at = NULL WHERE name = $1", &[&name])
                    .await
                    .map_err(pg_err)?;
                continue;
            }
        };
        let ticks: Vec<i64> = jobs.iter().map(|(t, _)| *t).collect();
        let (queues, tags): (Vec<String>, Vec<Vec<String>>) =
            jobs.iter().map(|(_, j)| (j.queue.clone(), j.tags.clone())).unzip();
        let out = jobs::enqueue(
            tx,
            now,
            jobs.into_iter().map(|(_, j)| j).collect(),
            &crate::LedgerSettings::default(),
            w,
        )
        .await?;
        for (i, o) in out.iter().enumerate() {
            w.events.push(fired_event(now, &s.name, ticks[i], o, &queues[i], &tags[i]));
            enqueued += u64::from(!o.duplicate);
        }
        tx.execute(
            "UPDATE schedules SET next_run_at = $1, last_run_at = coalesce($2, last_run_at), updated_at = $3
             WHERE name = $4",
            &[&next, &ticks.last(), &now, &s.name],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(enqueued)
}

#[async_trait]
impl ScheduleStore for PgStore {
    async fn create_schedule(&self, s: Schedule) -> Result<Schedule> {
        let limits = self.limits.clone();
        self.tx("create_schedule", move |tx, _, _| boxed!(super::schedules::create(tx, s, &limits).await))
            .await
    }

    async fn update_schedule(&self, s: Schedule) -> Result<Schedule> {
        self.tx("update_schedule", move |tx, _, _| boxed!(super::schedules::update(tx, s).await)).await
    }

    async fn get_schedule(&self, name: &str) -> Result<Schedule> {
        let name = name.to_string();
        self.read(move |c| boxed!(super::schedules::get(c, &name).await)).await
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>> {
        self.read(|c| boxed!(super::schedules::list(c).await)).await
    }

    async fn delete_schedule(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.tx("delete_schedule", move |tx, _, _| boxed!(super::schedules::delete(tx, &name).await)).await
    }

    async fn fire_schedules(&self, max: usize) -> Result<u64> {
        let limits = self.limits.clone();
        self.tx("fire_schedules", move |tx, now, w| {
            boxed!(super::schedules::fire(tx, now, max, &limits, w).await)
        })
        .await
    }

    async fn next_schedule_ms(&self) -> Result<Option<i64>> {
        self.read(|c| boxed!(super::schedules::next_due(c).await)).await
    }
}
