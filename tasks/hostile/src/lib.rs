//! Hostile and misbehaving guests, built into `hostile.wasm`, for the host's
//! security and limit tests. Each task tries one thing a sandbox must contain:
//! reaching files, environment or network, or exhausting fuel, memory, stack,
//! wall time or output. The ones that try to reach outside return what the
//! guest saw (usually an error text) so tests can assert on it.

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasq_guest::log::info;
use wasq_guest::task;

/// Reads a file with `std::fs`; fails with the error text (there are no
/// preopened directories, so every path fails).
#[task]
pub fn read_file(path: String) -> Result<String, String> {
    std::fs::read_to_string(&path).map_err(|err| err.to_string())
}

/// Lists a directory with `std::fs::read_dir`; fails with the error text.
#[task]
pub fn list_dir(path: String) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(&path).map_err(|err| err.to_string())?;
    entries
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|err| err.to_string())
}

/// The environment the guest sees (`std::env::vars`): should be empty.
#[task]
pub fn read_env() -> Vec<(String, String)> {
    std::env::vars().collect()
}

/// The guest's argv (`std::env::args`): should be `[<task name>]`.
#[task]
pub fn args() -> Vec<String> {
    std::env::args().collect()
}

/// Panics with `msg`: the call fails with kind `task_error` and a message that
/// contains `msg` (reported by the SDK's panic hook before the trap).
#[task]
pub fn panic_now(msg: String) {
    panic!("{msg}");
}

/// Writes `bytes` bytes (lines of `x`) to stdout; returns how many it wrote or the
/// error the write met.
#[task]
pub fn print_flood(bytes: u64) -> Result<u64, String> {
    flood(&mut std::io::stdout().lock(), bytes)
}

/// Writes `bytes` bytes (lines of `x`) to stderr; returns how many it wrote or the
/// error the write met.
#[task]
pub fn eprint_flood(bytes: u64) -> Result<u64, String> {
    flood(&mut std::io::stderr().lock(), bytes)
}

fn flood(out: &mut impl Write, bytes: u64) -> Result<u64, String> {
    let mut line = [b'x'; 64];
    line[63] = b'\n';
    let mut written = 0;
    while written < bytes {
        let n = (bytes - written).min(line.len() as u64) as usize;
        out.write_all(&line[..n])
            .map_err(|err| format!("after {written} bytes: {err}"))?;
        written += n as u64;
    }
    out.flush()
        .map_err(|err| format!("after {written} bytes: {err}"))?;
    Ok(written)
}

/// Sends `lines` log lines at level info; returns `lines`.
#[task]
pub fn log_flood(lines: u64) -> u64 {
    for i in 0..lines {
        info!("log line {i} of {lines}");
    }
    lines
}

/// Allocates a `Vec` of `bytes` bytes, writes to every page of it, and returns its
/// length. Past the memory limit, the allocation fails and the guest aborts.
#[task]
pub fn alloc(bytes: u64) -> Result<u64, String> {
    let len =
        usize::try_from(bytes).map_err(|_| format!("{bytes} bytes do not fit in wasm32 memory"))?;
    let mut buf = vec![0u8; len];
    for i in (0..len).step_by(4096) {
        buf[i] = 1;
    }
    Ok(black_box(buf).len() as u64)
}

/// Busy-loops forever: only fuel or the wall-time limit stops it.
#[task]
pub fn spin() {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Sleeps forever through WASI: only the wall-time limit stops it (it burns no fuel).
#[task]
pub fn sleep_forever() {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Recurses `depth` calls deep (not a tail call: each frame adds to the callee's
/// result) and returns `depth`. A large depth overflows the stack and traps.
#[task]
pub fn recurse(depth: u64) -> u64 {
    fn go(depth: u64) -> u64 {
        if depth == 0 {
            return 0;
        }
        // black_box on both sides keeps the optimiser from turning this into a loop.
        black_box(go(black_box(depth - 1))) + 1
    }
    go(depth)
}

/// A string of `bytes` `x`s: the JSON result is `bytes + 2` bytes long.
#[task]
pub fn big_output(bytes: u64) -> Result<String, String> {
    let len =
        usize::try_from(bytes).map_err(|_| format!("{bytes} bytes do not fit in wasm32 memory"))?;
    Ok("x".repeat(len))
}

/// Tries a TCP connection with `std::net::TcpStream::connect`; fails with the
/// error text (WASI preview 1 has no sockets to open).
#[task]
pub fn connect(addr: String) -> Result<String, String> {
    match std::net::TcpStream::connect(&addr) {
        Ok(stream) => Ok(format!(
            "connected to {addr} from {:?}",
            stream.local_addr()
        )),
        Err(err) => Err(err.to_string()),
    }
}

/// `[unix time in milliseconds, a random u64]`: clocks and randomness work.
#[task]
pub fn now_and_random() -> Result<(u64, u64), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|err| format!("clock before 1970: {err}"))?;
    let random = getrandom::u64().map_err(|err| err.to_string())?;
    Ok((now.as_millis() as u64, random))
}

/// Reads stdin to its end (it is empty in the sandbox).
#[task]
pub fn stdin() -> Result<String, String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|err| err.to_string())?;
    Ok(text)
}

/// Calls `std::process::exit(code)` (WASI `proc_exit`) in the middle of a task.
#[task]
pub fn exit(code: i32) {
    std::process::exit(code);
}
