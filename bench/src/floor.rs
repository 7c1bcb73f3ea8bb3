//! The floor: what the kernel alone costs to deliver a frame here. A minimal server accepts
//! the subscribers' WebSocket upgrades, then writes the same message frame to every open
//! socket with one plain `write` each, at the requested rate. Its CPU per delivery is the
//! least any server could spend on this machine; the module's is reported as a multiple.

use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::payload::{now_ns, sample_message};
use chatup_tests::raw::accept_for;

use crate::wsclient::server_text_frame;
use crate::{emit_line, BenchError};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum FloorCommand {
    /// Send `rate` messages per second for `seconds` on `channel`, `size`-byte texts.
    Send {
        channel: String,
        rate: f64,
        seconds: f64,
        size: usize,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloorEvent {
    Listening { addr: String },
    Sent(FloorSent),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorSent {
    pub first: u64,
    pub last: u64,
    /// Writes that did not take the whole frame (a full socket buffer).
    pub short_writes: u64,
    pub frame_bytes: usize,
    pub sockets: usize,
}

/// Entry point of `chatup-bench floor-server`.
pub fn run_server() -> Result<(), BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    emit_line(&FloorEvent::Listening {
        addr: addr.to_string(),
    })?;
    let sockets: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    {
        let sockets = sockets.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Ok(stream) = upgrade(stream) {
                    if let Ok(mut s) = sockets.lock() {
                        s.push(stream);
                    }
                }
            }
        });
    }
    for line in io::stdin().lock().lines() {
        let line = line?;
        let FloorCommand::Send {
            channel,
            rate,
            seconds,
            size,
        } = serde_json::from_str(&line)?;
        let streams = sockets
            .lock()
            .map_err(|_| BenchError::Protocol("floor sockets poisoned".into()))?;
        let sent = send(&streams, &channel, rate, seconds, size);
        drop(streams);
        emit_line(&FloorEvent::Sent(sent))?;
    }
    Ok(())
}

/// Answers one WebSocket upgrade and leaves the socket non-blocking.
fn upgrade(mut stream: TcpStream) -> io::Result<TcpStream> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 || request.len() > 8192 {
            return Err(io::ErrorKind::InvalidData.into());
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let key = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .ok_or(io::ErrorKind::InvalidData)?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_for(&key)
    );
    stream.write_all(response.as_bytes())?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

fn send(streams: &[TcpStream], channel: &str, rate: f64, seconds: f64, size: usize) -> FloorSent {
    let count = (rate * seconds).round().max(1.0) as u64;
    let start = Instant::now();
    let mut short_writes = 0;
    let mut frame_bytes = 0;
    for id in 1..=count {
        let due = start + Duration::from_secs_f64((id - 1) as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let frame = server_text_frame(sample_message(channel, id, now_ns(), size).as_bytes());
        frame_bytes = frame.len();
        for mut stream in streams {
            if !matches!(stream.write(&frame), Ok(n) if n == frame.len()) {
                short_writes += 1;
            }
        }
    }
    FloorSent {
        first: 1,
        last: count,
        short_writes,
        frame_bytes,
        sockets: streams.len(),
    }
}
