//! The two live event streams: server-sent events (`GET /v1/events/stream`, read by
//! [`EventStream`]) and the WebSocket (`GET /v1/ws`, read and steered by [`EventSocket`]).
//! Both yield the same [`StreamMessage`]s: events, and the notices that answer a WebSocket
//! request or end a stream (`lagged`, `error`).

use crate::{ClientError, Result, api_error};
use ferry_core::wire::{ClientMsg, StreamMessage};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

/// An open server-sent-event stream.
pub struct EventStream {
    resp: reqwest::Response,
    /// Bytes received and not yet parsed start at `start` (parsed lines are dropped once per
    /// chunk, not once per line, so a chunk of many events is parsed in one pass).
    buf: Vec<u8>,
    start: usize,
    data: Option<String>,
}

impl EventStream {
    pub(crate) fn new(resp: reqwest::Response) -> EventStream {
        EventStream { resp, buf: Vec::new(), start: 0, data: None }
    }

    /// The next message; `None` once the server ends the stream (after `lagged` or `error`,
    /// or at shutdown).
    pub async fn next(&mut self) -> Option<Result<StreamMessage>> {
        loop {
            while let Some(len) = self.buf[self.start..].iter().position(|b| *b == b'\n') {
                let (from, end) = (self.start, self.start + len);
                self.start = end + 1;
                let line = String::from_utf8_lossy(&self.buf[from..end]);
                let line = line.trim_end_matches('\r');
                if line.is_empty() {
                    // A blank line ends an event; one without data (a keep-alive) is skipped.
                    if let Some(data) = self.data.take() {
                        return Some(
                            StreamMessage::parse(&data).map_err(|e| ClientError::Decode(e.to_string())),
                        );
                    }
                } else if let Some(value) = line.strip_prefix("data:") {
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match &mut self.data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(value);
                        }
                        None => self.data = Some(value.to_string()),
                    }
                }
                // `id:` (the event's cursor, also in its JSON), `event:` (the JSON's `type`
                // says the same) and `:` comments carry nothing more.
            }
            self.buf.drain(..self.start);
            self.start = 0;
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                Ok(None) => return None,
                Err(e) => {
                    return Some(Err(ClientError::Transport(format!(
                        "lost the event stream from ferry: {e}"
                    ))));
                }
            }
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An open WebSocket on `/v1/ws`.
pub struct EventSocket {
    ws: Socket,
}

impl EventSocket {
    /// Opens the socket for `req` (its URL, query, and token and name headers).
    pub(crate) async fn connect(req: reqwest::Request) -> Result<EventSocket> {
        let mut url = req.url().clone();
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|()| ClientError::Transport(format!("cannot use {url} for a WebSocket")))?;
        let mut ws_req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Invalid(format!("cannot open a WebSocket to {url}: {e}")))?;
        ws_req.headers_mut().extend(req.headers().clone());
        match tokio_tungstenite::connect_async(ws_req).await {
            Ok((ws, _)) => Ok(EventSocket { ws }),
            Err(tungstenite::Error::Http(resp)) => Err(api_error(
                resp.status().as_u16(),
                resp.body().as_deref().unwrap_or_default(),
                url.as_str(),
            )),
            Err(e) => Err(ClientError::Transport(format!("cannot open a WebSocket to ferry at {url}: {e}"))),
        }
    }

    /// Sends a request; its answer arrives through [`EventSocket::next`] as a notice.
    pub async fn send(&mut self, msg: &ClientMsg) -> Result<()> {
        let text = serde_json::to_string(msg).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| ClientError::Transport(format!("lost the WebSocket to ferry: {e}")))
    }

    /// Joins rooms: `queue:<name>`, `job:<id>`, `tag:<t>`, or `*` for every event.
    pub async fn subscribe(&mut self, rooms: &[&str]) -> Result<()> {
        let rooms = rooms.iter().map(|r| r.to_string()).collect();
        self.send(&ClientMsg { op: "subscribe".into(), rooms, room: None }).await
    }

    /// Leaves rooms.
    pub async fn unsubscribe(&mut self, rooms: &[&str]) -> Result<()> {
        let rooms = rooms.iter().map(|r| r.to_string()).collect();
        self.send(&ClientMsg { op: "unsubscribe".into(), rooms, room: None }).await
    }

    /// Asks for a `pong` carrying the stream's cursor.
    pub async fn ping(&mut self) -> Result<()> {
        self.send(&ClientMsg { op: "ping".into(), ..Default::default() }).await
    }

    /// The next message; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Result<StreamMessage>> {
        loop {
            return match self.ws.next().await? {
                Ok(Message::Text(t)) => {
                    Some(StreamMessage::parse(&t).map_err(|e| ClientError::Decode(e.to_string())))
                }
                Ok(Message::Close(_)) => None,
                Ok(_) => continue,
                Err(e) => Some(Err(ClientError::Transport(format!("lost the WebSocket to ferry: {e}")))),
            };
        }
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
