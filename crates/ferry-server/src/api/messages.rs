//! Agent-message endpoints: sends and broadcasts, receives that long-poll until a commit wakes
//! them (on any node), acks and nacks by receipt, dead letters and their replay, channel
//! subscriptions and the inbox list. A token restricted to agents acts only as them.

use crate::AppState;
use crate::auth::Access;
use crate::error::{ApiPath, ApiQuery, ApiResult, JsonBody};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_core::message::{
    self, AgentInfo, BroadcastSent, ChannelCursor, ReceiptOutcome, Sent, wake_agent, wake_channel,
};
use ferry_core::wire::*;
use ferry_core::{Error, ErrorCode, ResourceKind};
use ferry_store::{AgentFilter, MessageSweep};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Description of an agent in a path.
const AGENT: &str = "The agent (1-128 of A-Z a-z 0-9 . _ : -)";

/// An agent name from a path: one that cannot exist names no inbox (404).
fn path_agent(st: &AppState, agent: &str) -> Result<(), Error> {
    inbox_name(agent, &st.limits, "agent").map_err(|_| message::agent_not_found(agent))
}

/// Send a message to 1..=`limits.max_recipients` agents: 201 once committed, or 200 with the
/// first answer (`duplicate: true`) for a repeat of `from` + `dedup_key` before it expires.
#[utoipa::path(post, path = "/v1/messages", tag = "messages", operation_id = "send_message", request_body = SendBody,
    responses(
    (status = 201, description = "stored for every recipient", body = Sent),
    (status = 200, description = "a repeat of an earlier send with this `dedup_key`: its answer, `duplicate: true`", body = Sent),
    (status = 403, description = "forbidden: the token may not send as `from`", body = ErrorBody),
    (status = 413, description = "payload_too_large: `body` is over limits.max_message_bytes", body = ErrorBody),
    (status = 422, description = "validation_failed: a field is invalid (named)", body = ErrorBody),
    (status = 429, description = "rate_limited: `from` is over its send rate (`Retry-After`); or queue_full: a recipient's inbox is full (`details.agent`); nothing was written", body = ErrorBody)))]
pub async fn send(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<SendBody>,
) -> ApiResult<(StatusCode, Json<Sent>)> {
    access.check_agent(Some(&body.from))?;
    let msg = body.validate(&st.limits)?;
    let _permit = st.protection.writes(msg.to.len())?;
    let sent = st.store.send_message(msg, st.messages.rate()).await?;
    let status = if sent.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(sent)))
}

/// Broadcast on a channel (default `all`): one row however many read it; every subscriber
/// but the sender receives it once past its cursor.
#[utoipa::path(post, path = "/v1/broadcasts", tag = "messages", operation_id = "send_broadcast", request_body = BroadcastBody,
    responses(
    (status = 201, description = "stored and numbered in its channel", body = BroadcastSent),
    (status = 403, description = "forbidden: the token may not send as `from`", body = ErrorBody),
    (status = 413, description = "payload_too_large: `body` is over limits.max_message_bytes", body = ErrorBody),
    (status = 422, description = "validation_failed: a field is invalid (named)", body = ErrorBody),
    (status = 429, description = "rate_limited: `from` is over its send rate (`Retry-After`)", body = ErrorBody)))]
pub async fn broadcast(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<BroadcastBody>,
) -> ApiResult<(StatusCode, Json<BroadcastSent>)> {
    access.check_agent(Some(&body.from))?;
    let b = body.validate(&st.limits)?;
    let _permit = st.protection.writes(1)?;
    Ok((StatusCode::CREATED, Json(st.store.send_broadcast(b, st.messages.rate()).await?)))
}

/// Receive up to `max` messages, oldest first, each held for `visibility_ms`; with `wait_ms`,
/// waits for a first one (woken by the commit that sends it, on any node). Names the inbox.
#[utoipa::path(post, path = "/v1/agents/{agent}/receive", tag = "messages", operation_id = "receive_messages",
    params(("agent" = ferry_core::validate::names::AgentName, Path, description = AGENT)), request_body = ReceiveBody,
    responses((status = 200, description = "the messages received (none when the wait ended empty)", body = ReceiveResponse),
    (status = 422, description = "validation_failed: max, wait_ms or visibility_ms out of range", body = ErrorBody)))]
pub async fn receive(
    State(st): State<AppState>,
    ApiPath(agent): ApiPath<String>,
    JsonBody(body): JsonBody<ReceiveBody>,
) -> ApiResult<Json<ReceiveResponse>> {
    path_agent(&st, &agent)?;
    let req = body.validate(&st.limits)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms as u64);
    let mut stop = st.shutdown.clone();
    let mut keys: Option<Vec<Arc<tokio::sync::Notify>>> = None;
    loop {
        let parked: Vec<Arc<tokio::sync::Notify>> = keys.clone().unwrap_or_default();
        let mut notified: Vec<_> = parked.iter().map(|n| Box::pin(n.notified())).collect();
        for n in &mut notified {
            n.as_mut().enable();
        }
        let got = {
            let _permit = st.protection.writes(1)?;
            st.store.receive_messages(&agent, req, st.messages.max_deliveries.max(1)).await?
        };
        for w in &got.first_waits_ms {
            st.store.metrics().message_wait_seconds.observe(*w as f64 / 1000.0);
        }
        let now = tokio::time::Instant::now();
        if !got.messages.is_empty() || now >= deadline || *stop.borrow() {
            return Ok(Json(ReceiveResponse { messages: got.messages }));
        }
        if keys.is_none() {
            // Park on the inbox and on each subscribed channel, then look once more.
            let info = st.store.get_agent(&agent).await?;
            let mut ks = vec![st.store.notifier().queue(&wake_agent(&agent))];
            for c in info.channels.unwrap_or_default() {
                ks.push(st.store.notifier().queue(&wake_channel(&c.channel)));
            }
            keys = Some(ks);
            continue;
        }
        let until = st.store.fallback_poll().map_or(deadline, |p| deadline.min(now + p));
        let any = futures_util::future::select_all(notified);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = any => {}
            _ = stop.changed() => {}
        }
    }
}

fn results(st: &AppState, out: Vec<ReceiptOutcome>) -> ReceiptResults {
    let results = out
        .into_iter()
        .map(|o| {
            if o.error.as_ref().is_some_and(|e| e.code == ErrorCode::StaleLease) {
                st.metrics.conflict("stale_receipt");
            }
            ReceiptResult { id: o.id, ok: o.error.is_none(), error: o.error }
        })
        .collect();
    ReceiptResults { results }
}

/// Ack received messages by receipt: each is done with (never delivered again); a receipt
/// whose message was delivered again, acked or expired since is `stale_lease`, changing nothing.
#[utoipa::path(post, path = "/v1/agents/{agent}/ack", tag = "messages", operation_id = "ack_messages",
    params(("agent" = ferry_core::validate::names::AgentName, Path, description = AGENT)), request_body = AckBody,
    responses((status = 200, description = "one result per receipt, in order", body = ReceiptResults),
    (status = 413, description = "payload_too_large: more than limits.max_batch receipts", body = ErrorBody),
    (status = 422, description = "validation_failed: no receipts, or one this server did not hand out (receipts[i])", body = ErrorBody)))]
pub async fn ack(
    State(st): State<AppState>,
    ApiPath(agent): ApiPath<String>,
    JsonBody(body): JsonBody<AckBody>,
) -> ApiResult<Json<ReceiptResults>> {
    path_agent(&st, &agent)?;
    let receipts = body.validate(&st.limits)?;
    let _permit = st.protection.writes(receipts.len())?;
    let out = st.store.ack_messages(&agent, receipts).await?;
    Ok(Json(results(&st, out)))
}

/// Hand received messages back: visible again after `delay_ms`; their receipts go stale.
#[utoipa::path(post, path = "/v1/agents/{agent}/nack", tag = "messages", operation_id = "nack_messages",
    params(("agent" = ferry_core::validate::names::AgentName, Path, description = AGENT)), request_body = NackBody,
    responses((status = 200, description = "one result per receipt, in order", body = ReceiptResults),
    (status = 413, description = "payload_too_large: more than limits.max_batch receipts", body = ErrorBody),
    (status = 422, description = "validation_failed: delay_ms out of range, or a receipt this server did not hand out", body = ErrorBody)))]
pub async fn nack(
    State(st): State<AppState>,
    ApiPath(agent): ApiPath<String>,
    JsonBody(body): JsonBody<NackBody>,
) -> ApiResult<Json<ReceiptResults>> {
    path_agent(&st, &agent)?;
    let (receipts, delay_ms) = body.validate(&st.limits)?;
    let _permit = st.protection.writes(receipts.len())?;
    let out = st.store.nack_messages(&agent, receipts, delay_ms).await?;
    Ok(Json(results(&st, out)))
}

/// An agent's dead letters (messages past `[messages] max_deliveries`), in send order.
#[utoipa::path(get, path = "/v1/agents/{agent}/dead", tag = "messages", operation_id = "dead_messages",
    params(("agent" = ferry_core::validate::names::AgentName, Path, description = AGENT), PageQuery),
    responses((status = 200, description = "a page of dead letters", body = DeadPage)))]
pub async fn dead(
    State(st): State<AppState>,
    ApiPath(agent): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<DeadPage>> {
    path_agent(&st, &agent)?;
    let limit = super::page_size(&st, q.limit)?;
    let after = match q.cursor.filter(|c| !c.is_empty()) {
        Some(c) => Some(
            c.parse::<i64>().map_err(|_| Error::invalid("cursor", "not a cursor returned by this server"))?,
        ),
        None => None,
    };
    let page = st.store.dead_messages(&agent, after, limit).await?;
    let next_cursor = (page.len() == limit).then(|| page.last().map(|(p, _)| p.to_string())).flatten();
    Ok(Json(DeadPage { messages: page.into_iter().map(|(_, m)| m).collect(), next_cursor }))
}

/// Put dead letters (`ids`, or all) back in the inbox: delivery count reset, ttl restarted.
#[utoipa::path(post, path = "/v1/agents/{agent}/dead/replay", tag = "messages", operation_id = "replay_dead_messages",
    params(("agent" = ferry_core::validate::names::AgentName, Path, description = AGENT)), request_body = ReplayMessagesBody,
    responses((status = 200, description = "how many were put back", body = ReplayedResponse),
    (status = 422, description = "validation_failed: ids empty or over limits.max_batch", body = ErrorBody)))]
pub async fn replay(
    State(st): State<AppState>,
    ApiPath(agent): ApiPath<String>,
    JsonBody(body): JsonBody<ReplayMessagesBody>,
) -> ApiResult<Json<ReplayedResponse>> {
    path_agent(&st, &agent)?;
    body.validate(&st.limits)?;
    let _permit = st.protection.writes(1)?;
    let replayed = st.store.replay_dead_messages(&agent, body.ids).await?;
    Ok(Json(ReplayedResponse { replayed }))
}

/// Replace an agent's channel subscriptions (up to `limits.max_agent_channels`; `all` may be
/// dropped); a new subscription starts at its channel's head. Names the inbox.
#[utoipa::path(put, path = "/v1/agents/{agent}/channels", tag = "messages", operation_id = "set_channels",
    params(("agent" = ferry_core::validate::names::AgentName, Path, description = AGENT)), request_body = ChannelsBody,
    responses((status = 200, description = "the subscriptions now, with their cursors", body = ChannelsResponse),
    (status = 422, description = "validation_failed: too many channels, or a bad name (channels[i])", body = ErrorBody)))]
pub async fn channels(
    State(st): State<AppState>,
    ApiPath(agent): ApiPath<String>,
    JsonBody(body): JsonBody<ChannelsBody>,
) -> ApiResult<Json<ChannelsResponse>> {
    path_agent(&st, &agent)?;
    let chans = body.validate(&st.limits)?;
    let _permit = st.protection.writes(1)?;
    let channels: Vec<ChannelCursor> = st.store.set_channels(&agent, chans).await?;
    Ok(Json(ChannelsResponse { channels }))
}

/// Inboxes by name with their counts (a token restricted to agents sees only its own).
#[utoipa::path(get, path = "/v1/agents", tag = "messages", operation_id = "list_agents", params(PageQuery),
    responses((status = 200, description = "a page of agents", body = AgentsPage)))]
pub async fn list(
    State(st): State<AppState>,
    access: Access,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<AgentsPage>> {
    // A token restricted to no agent was refused by the route's `Agents` restriction.
    let names = access.allowed(ResourceKind::Agent).map(<[String]>::to_vec);
    let limit = super::page_size(&st, q.limit)?;
    let after = q.cursor.filter(|c| !c.is_empty());
    let agents = st.store.list_agents(AgentFilter { names, after, limit }).await?;
    let next_cursor = (agents.len() == limit).then(|| agents.last().map(|a| a.name.clone())).flatten();
    Ok(Json(AgentsPage { agents, next_cursor }))
}

/// One inbox: its counts, when it was last heard from, and its channels with their cursors.
#[utoipa::path(get, path = "/v1/agents/{agent}", tag = "messages", operation_id = "get_agent",
    params(("agent" = ferry_core::validate::names::AgentName, Path, description = AGENT)),
    responses((status = 200, description = "the agent", body = AgentInfo),
    (status = 404, description = "not_found: no send or receive has named this agent", body = ErrorBody)))]
pub async fn get(State(st): State<AppState>, ApiPath(agent): ApiPath<String>) -> ApiResult<Json<AgentInfo>> {
    path_agent(&st, &agent)?;
    Ok(Json(st.store.get_agent(&agent).await?))
}

/// Deletes expired messages and moves overdue deliveries to dead letters, every
/// `[messages] sweep_interval_ms`, `batch` rows per step, until shutdown.
pub async fn sweeper(st: AppState, batch: usize, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(st.messages.sweep_interval_ms.max(1));
    let sweep = MessageSweep {
        batch: batch.max(1),
        dead_retention_ms: st.messages.dead_retention_ms,
        max_deliveries: st.messages.max_deliveries.max(1),
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        loop {
            match st.store.sweep_messages(sweep).await {
                Ok(n) if n as usize >= sweep.batch => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e.message, "message sweep failed");
                    break;
                }
            }
        }
    }
}

/// The message routes: writes need scope `messages`, reads `read`; `{agent}` routes check the
/// path's agent against a restricted token, sends and the list check in the handler.
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::Scope;
    use utoipa_axum::routes;
    let agent = Path(ResourceKind::Agent);
    r.add(routes!(send), Scope::Messages, Agents(ResourceKind::Agent))
        .add(routes!(broadcast), Scope::Messages, Agents(ResourceKind::Agent))
        .add(routes!(receive), Scope::Messages, agent)
        .add(routes!(ack), Scope::Messages, agent)
        .add(routes!(nack), Scope::Messages, agent)
        .add(routes!(dead), Scope::Read, agent)
        .add(routes!(replay), Scope::Messages, agent)
        .add(routes!(channels), Scope::Messages, agent)
        .add(routes!(list), Scope::Read, Agents(ResourceKind::Agent))
        .add(routes!(get), Scope::Read, agent)
}
