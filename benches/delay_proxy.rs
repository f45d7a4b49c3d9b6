//! A loopback TCP proxy that adds a fixed delay to every byte in each direction: the added
//! round trip of the object-store benchmarks (`benches/s3_server.sh` builds it with
//! `cargo build --release --example delay_proxy`). Not a measurement itself.
//!
//! usage: delay_proxy LISTEN_PORT UPSTREAM_PORT ONE_WAY_MS
//!
//! With ONE_WAY_MS = 10 every request and its response pay 20 ms more round trip, as an object
//! store 20 ms away would on a kept-alive connection, while bandwidth stays what loopback gives.
//! A new connection's handshake is not charged: moto's server (werkzeug) closes every connection
//! after one response, so clients cannot reuse connections there as they do with a real store,
//! and charging the handshake would make each request pay two round trips. Each direction of
//! each connection has a reader thread that stamps every chunk it reads with the time it is due
//! and queues it, and a sender thread that sends each chunk when it is due. Reading never waits
//! for the delay, so data in flight is pipelined as on a long link instead of paying the delay
//! once per chunk, and connections are independent, so concurrent requests are not serialised.
//!
//! A real link costs the machine nothing, so the proxy costs it as little as it can: the
//! benchmark machine has two cores, and what the proxy burns lands on the wall clock of what it
//! measures. Each byte is copied twice (into the proxy and out), into buffers kept for the next
//! read once sent. The Python (asyncio) proxy this replaced spent 0.65-0.7 CPU seconds
//! per 1.5 GiB restore, as much as the S3 server itself.
//! Prints `ready` on stdout once it listens; runs until killed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Bytes read at most at a time.
const CHUNK: usize = 256 * 1024;

/// Chunks in flight per direction before the reader waits (bounds memory at 64 MiB).
const QUEUED: usize = 256;

/// Buffers sent and not yet read into again, for every connection: each request comes on a
/// connection of its own, and buffers made for each would fault their pages in every time.
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, one_way_ms] = args.as_slice() else {
        eprintln!("usage: delay_proxy LISTEN_PORT UPSTREAM_PORT ONE_WAY_MS");
        std::process::exit(2);
    };
    let (listen, upstream): (u16, u16) = (listen.parse().expect("a port"), upstream.parse().expect("a port"));
    let delay = Duration::from_secs_f64(one_way_ms.parse::<f64>().expect("milliseconds") / 1000.0);
    let listener = TcpListener::bind(("127.0.0.1", listen)).expect("listening");
    println!("ready");
    for client in listener.incoming().flatten() {
        thread::spawn(move || connection(client, upstream, delay));
    }
}

/// Carries one client connection to a connection of its own to the upstream server.
fn connection(client: TcpStream, upstream: u16, delay: Duration) -> std::io::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let back = {
        let (from, to) = (server.try_clone()?, client.try_clone()?);
        thread::spawn(move || pump(from, to, delay))
    };
    pump(client.try_clone()?, server.try_clone()?, delay);
    let _ = back.join();
    // Wakes a reader still waiting on a side whose other direction failed.
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    Ok(())
}

/// Copies `from` to `to`, each chunk `delay` after it arrived, and passes the end of the stream
/// on; returns when it has, or when `to` fails.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (queue, chunks) = sync_channel::<(Instant, Vec<u8>, usize)>(QUEUED);
    thread::spawn(move || loop {
        let mut buf = SPARE.lock().expect("poisoned").pop().unwrap_or_else(|| vec![0; CHUNK]);
        let n = from.read(&mut buf).unwrap_or(0);
        if queue.send((Instant::now() + delay, buf, n)).is_err() || n == 0 {
            return;
        }
    });
    for (due, buf, n) in chunks {
        thread::sleep(due.saturating_duration_since(Instant::now()));
        if n == 0 {
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
        SPARE.lock().expect("poisoned").push(buf);
    }
}
