//! Schedules as SQL over SQLite: CRUD, and the firing pass that enqueues due ticks in the
//! writer's transaction (so a tick's job and the schedule's next tick commit together).

use super::SqliteStore;
use super::db_err;
use crate::ScheduleStore;
use crate::effects::Effects;
use crate::rows::*;
use async_trait::async_trait;
use ferry_core::schedule::{Schedule, plan_fire};
use ferry_core::{Error, ErrorCode, Limits, Result};
use rusqlite::{Connection, OptionalExtension, Row, params};

fn row(r: &Row) -> rusqlite::Result<ScheduleRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn write(conn: &Connection, s: &Schedule, insert: bool) -> Result<usize> {
    let sql = if insert {
        format!(
            "INSERT INTO schedules ({SCHEDULE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        )
    } else {
        "UPDATE schedules SET cron = ?2, timezone = ?3, job = ?4, misfire = ?5, catch_up_max = ?6, paused = ?7,
            next_run_at = ?8, last_run_at = ?9, created_at = ?10, updated_at = ?11 WHERE name = ?1"
            .to_string()
    };
    conn.prepare_cached(&sql)
        .and_then(|mut st| {
            st.execute(params![
                s.name,
                s.cron,
                s.timezone,
                s.job.to_string(),
                s.misfire.as_str(),
                s.catch_up_max,
                s.paused,
                s.next_run_at.map(|t| t.0),
                s.last_run_at.map(|t| t.0),
                s.created_at.0,
                s.updated_at.0
            ])
        })
        .map_err(db_err)
}

/// Inserts a new schedule (checks first: the name is free, the count under the limit).
pub fn create(conn: &Connection, s: Schedule, limits: &Limits) -> Result<Schedule> {
    let exists: Option<i64> = conn
        .query_row("SELECT 1 FROM schedules WHERE name = ?1", [&s.name], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    if exists.is_some() {
        return Err(Error::new(ErrorCode::Conflict, format!("schedule {:?} exists already", s.name)));
    }
    let n: i64 = conn.query_row("SELECT count(*) FROM schedules", [], |r| r.get(0)).map_err(db_err)?;
    if n as usize >= limits.max_schedules {
        return Err(Error::invalid(
            "name",
            format!("ferry keeps at most {} schedules", limits.max_schedules),
        ));
    }
    write(conn, &s, true)?;
    Ok(s)
}

/// Replaces an existing schedule.
pub fn update(conn: &Connection, s: Schedule) -> Result<Schedule> {
    match write(conn, &s, false)? {
        0 => Err(schedule_not_found(&s.name)),
        _ => Ok(s),
    }
}

/// One schedule.
pub fn get(conn: &Connection, name: &str) -> Result<Schedule> {
    conn.prepare_cached(&format!("SELECT {SCHEDULE_COLS} FROM schedules WHERE name = ?1"))
        .and_then(|mut st| st.query_row([name], row).optional())
        .map_err(db_err)?
        .map(schedule_from)
        .transpose()?
        .ok_or_else(|| schedule_not_found(name))
}

/// Every schedule, by name.
pub fn list(conn: &Connection) -> Result<Vec<Schedule>> {
    let rows: Vec<ScheduleRow> = conn
        .prepare_cached(&format!("SELECT {SCHEDULE_COLS} FROM schedules ORDER BY name"))
        .and_then(|mut st| st.query_map([], row)?.collect())
        .map_err(db_err)?;
    rows.into_iter().map(schedule_from).collect()
}

/// Deletes one schedule.
pub fn delete(conn: &Connection, name: &str) -> Result<()> {
    match conn.execute("DELETE FROM schedules WHERE name = ?1", [name]).map_err(db_err)? {
        0 => Err(schedule_not_found(name)),
        _ => Ok(()),
    }
}

/// The earliest next tick of an active schedule.
pub fn next_due(conn: &Connection) -> Result<Option<i64>> {
    conn.query_row(
        "SELECT min(next_run_at) FROM schedules WHERE paused = 0 AND next_run_at IS NOT NULL",
        [],
        |r| r.get(0),
    )
    .map_err(db_err)
}

/// Enqueues the due ticks of up to `max` schedules and moves each to its next tick.
pub fn fire(conn: &Connection, now: i64, max: usize, limits: &Limits, fx: &mut Effects) -> Result<u64> {
    let rows: Vec<ScheduleRow> = conn
        .prepare_cached(&format!(
            "SELECT {SCHEDULE_COLS} FROM schedules WHERE paused = 0 AND next_run_at IS NOT NULL AND next_run_at <= ?1
             ORDER BY next_run_at LIMIT ?2"
        ))
        .and_then(|mut st| st.query_map(params![now, max as i64], row)?.collect())
        .map_err(db_err)?;
    // Plan every schedule before writing anything (the writer's check-then-write rule).
    let mut plans = Vec::with_capacity(rows.len());
    let mut broken = Vec::new();
    for r in rows {
        let name = r.0.clone();
        match schedule_from(r).and_then(|s| plan_fire(&s, now, limits).map(|p| (s, p))) {
            Ok(plan) => plans.push(plan),
            Err(e) => {
                tracing::error!(schedule = %name, error = %e, "schedule cannot fire; parked until it is changed");
                broken.push(name);
            }
        }
    }
    // A schedule that cannot fire stops being due, so the pass does not retry it in a loop;
    // a PATCH that fixes it sets its next run again.
    for name in broken {
        conn.prepare_cached("UPDATE schedules SET next_run_at = NULL WHERE name = ?1")
            .and_then(|mut st| st.execute([name]))
            .map_err(db_err)?;
    }
    let mut enqueued = 0;
    for (s, (jobs, next)) in plans {
        let ticks: Vec<i64> = jobs.iter().map(|(t, _)| *t).collect();
        let (queues, tags): (Vec<String>, Vec<Vec<String>>) =
            jobs.iter().map(|(_, j)| (j.queue.clone(), j.tags.clone())).unzip();
        let out = super::jobs::enqueue(
            conn,
            now,
            jobs.into_iter().map(|(_, j)| j).collect(),
            &crate::LedgerSettings::default(),
            fx,
        )?;
        for (i, o) in out.iter().enumerate() {
            fx.event(fired_event(now, &s.name, ticks[i], o, &queues[i], &tags[i]));
            enqueued += u64::from(!o.duplicate);
        }
        conn.prepare_cached(
            "UPDATE schedules SET next_run_at = ?1, last_run_at = coalesce(?2, last_run_at), updated_at = ?3
             WHERE name = ?4",
        )
        .and_then(|mut st| st.execute(params![next, ticks.last(), now, s.name]))
        .map_err(db_err)?;
        if let Some(n) = next {
            fx.due(n);
        }
    }
    Ok(enqueued)
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn create_schedule(&self, s: Schedule) -> Result<Schedule> {
        let (limits, wake) = (self.limits.clone(), s.next_run_at);
        let out =
            self.write_raw("create_schedule", move |c, _| super::schedules::create(c, s, &limits)).await?;
        if let Some(t) = wake {
            self.notifier.due_at(t.0);
        }
        Ok(out)
    }

    async fn update_schedule(&self, s: Schedule) -> Result<Schedule> {
        let wake = s.next_run_at;
        let out = self.write_raw("update_schedule", move |c, _| super::schedules::update(c, s)).await?;
        if let Some(t) = wake {
            self.notifier.due_at(t.0);
        }
        Ok(out)
    }

    async fn get_schedule(&self, name: &str) -> Result<Schedule> {
        let name = name.to_string();
        self.readers.read(move |c| super::schedules::get(c, &name)).await
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>> {
        self.readers.read(super::schedules::list).await
    }

    async fn delete_schedule(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.write_raw("delete_schedule", move |c, _| super::schedules::delete(c, &name)).await
    }

    async fn fire_schedules(&self, max: usize) -> Result<u64> {
        let (now, limits) = (self.clock.now_ms(), self.limits.clone());
        self.write_raw("fire_schedules", move |c, fx| super::schedules::fire(c, now, max, &limits, fx)).await
    }

    async fn next_schedule_ms(&self) -> Result<Option<i64>> {
        self.readers.read(super::schedules::next_due).await
    }
}
