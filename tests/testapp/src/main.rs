//! The app the container tests run beside sidewatch, std only and built static for an image of
//! its own (`scripts/image --testapp`). It serves HTTP on `--listen` (default `0.0.0.0:8080`,
//! `/healthz` and everything else) as its current mode says, and takes commands on `--control`
//! (default `0.0.0.0:8081`), which no fault touches: `POST /mode/<mode>`, where mode is
//!
//! - `healthy`: 200 `ok`
//! - `5xx`: 503
//! - `404`: 404 (a status outside what the probe expects)
//! - `reset`: read the request, close without a byte
//! - `garbage`: bytes that are not HTTP, then close
//! - `hang`: accept, read, never answer
//! - `refuse`: stop listening (connections refused); `healthy` listens again
//! - `crash`: the process exits with status 3
//! - `leak`: this process allocates and touches `mib` MiB (default 4) every 50 ms, until the
//!   kernel kills it at the container's limit
//! - `worker-leak`: a worker process (this binary, `worker`) does that while this one serves on
//!
//! `GET /mode` says the mode and the workers' PIDs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Healthy,
    Fail5xx,
    NotFound,
    Reset,
    Garbage,
    Hang,
    Refuse,
}

struct State {
    mode: Mode,
    workers: Vec<u32>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        let mib = args.get(2).and_then(|m| m.parse().ok()).unwrap_or(4);
        leak(mib);
    }
    let arg = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    };
    let listen = arg("--listen", "0.0.0.0:8080");
    let control = arg("--control", "0.0.0.0:8081");
    let state = Arc::new(Mutex::new(State {
        mode: Mode::Healthy,
        workers: Vec::new(),
    }));
    let serving = state.clone();
    std::thread::spawn(move || serve(&listen, serving));
    let control = TcpListener::bind(&control).unwrap_or_else(|e| {
        eprintln!("testapp: cannot listen on {control}: {e}");
        std::process::exit(2)
    });
    eprintln!(
        "testapp: serving; control on {}",
        control
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    for stream in control.incoming().flatten() {
        let state = state.clone();
        std::thread::spawn(move || command(stream, &state));
    }
}

/// The app's own port, closed while refusing and opened again after.
fn serve(listen: &str, state: Arc<Mutex<State>>) {
    loop {
        let listener = match TcpListener::bind(listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("testapp: cannot listen on {listen}: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        listener.set_nonblocking(true).ok();
        loop {
            if state
                .lock()
                .map(|s| s.mode == Mode::Refuse)
                .unwrap_or(false)
            {
                break; // dropping the listener refuses connections
            }
            match listener.accept() {
                Ok((stream, _)) => {
                    let mode = state.lock().map(|s| s.mode).unwrap_or(Mode::Healthy);
                    std::thread::spawn(move || answer(stream, mode));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => {}
            }
        }
        drop(listener);
        while state
            .lock()
            .map(|s| s.mode == Mode::Refuse)
            .unwrap_or(false)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn read_head(stream: &mut TcpStream) -> Option<String> {
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    Some(first)
}

fn answer(mut stream: TcpStream, mode: Mode) {
    if read_head(&mut stream).is_none() {
        return;
    }
    let reply: &[u8] = match mode {
        Mode::Healthy | Mode::Refuse => {
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
        }
        Mode::Fail5xx => {
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
        Mode::NotFound => {
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
        Mode::Reset => return,
        Mode::Garbage => b"\x00\x13\x37 not http at all\r\n\r\n",
        Mode::Hang => {
            let mut buf = [0u8; 64];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
            let _ = stream.read(&mut buf);
            return;
        }
    };
    let _ = stream.write_all(reply);
}

fn command(mut stream: TcpStream, state: &Mutex<State>) {
    let Some(first) = read_head(&mut stream) else {
        return;
    };
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut reply = |status: &str, body: String| {
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body.as_bytes());
    };
    let Ok(mut s) = state.lock() else {
        return reply("500 Internal Server Error", "poisoned\n".into());
    };
    let mode = match path.as_str() {
        "/mode" => {
            let workers: Vec<String> = s.workers.iter().map(u32::to_string).collect();
            return reply(
                "200 OK",
                format!("{:?} workers={}\n", s.mode, workers.join(",")),
            );
        }
        "/mode/healthy" => Mode::Healthy,
        "/mode/5xx" => Mode::Fail5xx,
        "/mode/404" => Mode::NotFound,
        "/mode/reset" => Mode::Reset,
        "/mode/garbage" => Mode::Garbage,
        "/mode/hang" => Mode::Hang,
        "/mode/refuse" => Mode::Refuse,
        "/mode/crash" => {
            reply("200 OK", "crashing\n".into());
            std::process::exit(3);
        }
        p if p.starts_with("/mode/leak") => {
            let mib = p
                .rsplit('/')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(4);
            reply("200 OK", "leaking\n".into());
            drop(s);
            leak(mib);
        }
        p if p.starts_with("/mode/worker-leak") => {
            let mib = p
                .rsplit('/')
                .next()
                .and_then(|m| m.parse::<u64>().ok())
                .unwrap_or(4);
            let exe = std::env::current_exe().unwrap_or_else(|_| "/testapp".into());
            match std::process::Command::new(exe)
                .arg("worker")
                .arg(mib.to_string())
                .spawn()
            {
                Ok(child) => {
                    s.workers.push(child.id());
                    // Reaped when it dies, so the kernel's kill leaves no zombie behind.
                    std::thread::spawn(move || {
                        let mut child = child;
                        let _ = child.wait();
                    });
                    return reply("200 OK", "a worker leaks\n".into());
                }
                Err(e) => return reply("500 Internal Server Error", format!("{e}\n")),
            }
        }
        _ => return reply("404 Not Found", "unknown command\n".into()),
    };
    s.mode = mode;
    reply("200 OK", format!("{mode:?}\n"));
}

/// Allocates and touches `mib` MiB every 50 ms, for ever: only the OOM killer ends it.
fn leak(mib: u64) -> ! {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(vec![0x5a; (mib as usize) << 20]);
        std::thread::sleep(Duration::from_millis(50));
    }
}
