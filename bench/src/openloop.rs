//! A constant-rate (open-loop) load generator: `conns` keep-alive HTTP/1.1
//! connections, each on its own thread, each sending on a fixed schedule.
//!
//! wrk is closed-loop: when the server stalls, wrk stops sending, so the
//! stall shows up as one slow request instead of every request that should
//! have been sent meanwhile ("coordinated omission"). Here a request's
//! latency counts from the time it was *scheduled*, so a stall is charged to
//! every request it delayed. wrk2 does this but is not packaged in Debian.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::stats::{percentile, Load};

/// One keep-alive connection speaking just enough HTTP/1.1 for our targets.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends a complete request and reads the whole response; returns its
    /// status and whether the server keeps the connection open.
    pub fn round_trip(&mut self, request: &[u8]) -> io::Result<(u16, bool)> {
        self.stream.write_all(request)?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| bad("response head is not UTF-8"))?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status code"))?;
        let mut length = None;
        let mut chunked = false;
        let mut keep_alive = true;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
        if chunked {
            self.read_chunked(head_end)?;
        } else {
            let end = head_end + length.ok_or_else(|| bad("no content-length"))?;
            while self.buf.len() < end {
                self.fill()?;
            }
        }
        Ok((status, keep_alive))
    }

    fn read_chunked(&mut self, mut pos: usize) -> io::Result<()> {
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf[pos..], b"\r\n") {
                    break pos + i;
                }
                self.fill()?;
            };
            let size_text =
                std::str::from_utf8(&self.buf[pos..line_end]).map_err(|_| bad("chunk size"))?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            // Chunk data and its CRLF; the last chunk is followed by an
            // (assumed empty) trailer section ending in CRLF.
            let end = line_end + 2 + size + 2;
            while self.buf.len() < end {
                self.fill()?;
            }
            if size == 0 {
                return Ok(());
            }
            pos = end;
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

pub fn post_request(addr: SocketAddr, path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

struct ConnResult {
    latencies_us: Vec<f64>,
    errors: u64,
    non_2xx: BTreeMap<u16, u64>,
}

/// Runs `rate` requests per second in total over `conns` connections for
/// `duration`, all sending `request`.
pub fn run(
    addr: SocketAddr,
    request: &[u8],
    conns: usize,
    rate: f64,
    duration: Duration,
) -> Result<Load> {
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    // Every connection is opened before the clock starts.
    let mut opened = Vec::with_capacity(conns);
    for _ in 0..conns {
        opened.push(Conn::connect(addr).context("constant-rate client: connect")?);
    }
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + duration;
    let handles: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let request = request.to_vec();
            // Staggered so the connections' sends interleave evenly.
            let first = start + interval.mul_f64(i as f64 / conns as f64);
            thread::spawn(move || one_connection(addr, conn, &request, first, interval, end))
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    let mut statuses = BTreeMap::new();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        all.extend(r.latencies_us);
        errors += r.errors;
        for (status, n) in r.non_2xx {
            *statuses.entry(status).or_default() += n;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(Load {
        requests: all.len() as f64,
        seconds,
        rps: all.len() as f64 / seconds,
        errors: errors as f64,
        non_2xx: statuses.values().sum::<u64>() as f64,
        statuses,
        p50_us: percentile(&all, 50.0),
        p90_us: percentile(&all, 90.0),
        p99_us: percentile(&all, 99.0),
        p999_us: percentile(&all, 99.9),
        max_us: all.last().copied().unwrap_or(f64::NAN),
        target_rps: Some(rate),
    })
}

fn one_connection(
    addr: SocketAddr,
    mut conn: Conn,
    request: &[u8],
    first: Instant,
    interval: Duration,
    end: Instant,
) -> ConnResult {
    let mut out = ConnResult {
        latencies_us: Vec::new(),
        errors: 0,
        non_2xx: BTreeMap::new(),
    };
    let mut next = first;
    let mut previous_done = Instant::now();
    // A server that cannot keep up would stretch the run without bound;
    // past this point the requests still due are counted as errors.
    let give_up = end + (end - first);
    while next < end {
        let now = Instant::now();
        if now > give_up {
            let unsent = ((end - next).as_secs_f64() / interval.as_secs_f64()).ceil();
            out.errors += unsent as u64;
            break;
        }
        if now < next {
            thread::sleep(next - now);
        }
        let sent = Instant::now();
        // If the previous response came back before this request was due,
        // any lateness of the send is our own sleep/wake-up slack, not the
        // server's: count from the actual send. Otherwise the server kept
        // the request waiting, and it counts from when it was due.
        let from = if previous_done <= next { sent } else { next };
        match conn.round_trip(request) {
            Ok((status, keep_alive)) => {
                if !(200..300).contains(&status) {
                    *out.non_2xx.entry(status).or_default() += 1;
                }
                if !keep_alive {
                    match Conn::connect(addr) {
                        Ok(c) => conn = c,
                        Err(_) => out.errors += 1,
                    }
                }
            }
            Err(_) => {
                out.errors += 1;
                match Conn::connect(addr) {
                    Ok(c) => conn = c,
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        let done = Instant::now();
        out.latencies_us.push((done - from).as_secs_f64() * 1e6);
        previous_done = done;
        next += interval;
    }
    out
}
