//! The `direct` phase: calls straight to a real `wasq serve` process over
//! HTTP, no broker: sequential round trips, then throughput over several
//! keep-alive connections, with the server's CPU per call (from
//! `/proc/PID/stat`), which is HTTP, instantiate and call together.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasq_broker::{CallLimits, DirectClient};

use super::stats::{LatencyStats, pid_cpu, process_cpu};

/// What the direct phase measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Direct {
    /// Sequential round trips of `add(1, 2)`.
    pub latency: LatencyStats,
    /// Calls in the throughput pass.
    pub calls: usize,
    /// Keep-alive connections (calls in flight) of the throughput pass.
    pub connections: usize,
    /// Calls per second of the throughput pass.
    pub throughput_per_s: f64,
    /// CPU of the `wasq serve` process per call (HTTP, instantiate, call).
    pub server_cpu_us_per_call: Option<f64>,
    /// CPU of this process (the client) per call.
    pub client_cpu_us_per_call: Option<f64>,
}

/// A `wasq serve` child, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `wasq serve` on a port of the system's choosing; its address.
fn start(wasq: &Path, connections: usize) -> anyhow::Result<(Server, String)> {
    let mut child = Command::new(wasq)
        .args(["serve", "--listen", "127.0.0.1:0", "--compile", "optimized"])
        .args(["--concurrency", &(connections * 2).to_string()])
        .env("RUST_LOG", "wasq_host=info")
        .env_remove("WASQ_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take();
    let server = Server(child);
    let mut lines = BufReader::new(stderr.ok_or_else(|| anyhow::anyhow!("no stderr"))?).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.split("answering calls at ").nth(1) {
            let url = rest.split("/v1/").next().unwrap_or_default().to_string();
            // Keep draining its log so it never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok((server, url));
        }
    }
    anyhow::bail!("wasq serve exited before it listened")
}

/// Runs the phase: `latency_calls` sequential calls, then `calls` over
/// `connections` connections.
///
/// # Errors
/// If the server does not start or a call does not answer 3.
pub async fn direct(
    wasq: &Path,
    examples: &[u8],
    latency_calls: usize,
    calls: usize,
    connections: usize,
) -> anyhow::Result<Direct> {
    let (server, url) = start(wasq, connections)?;
    let pid = server.0.id().to_string();
    let client = DirectClient::new(&url, None)?;
    let module = format!("sha256:{}", client.upload(examples).await?);
    let add = |client: DirectClient, module: String| async move {
        let env = client
            .call_raw(&module, "add", "[1, 2]", &CallLimits::default())
            .await?;
        anyhow::ensure!(env.result == serde_json::json!(3), "add(1, 2) gave {env:?}");
        anyhow::Ok(())
    };
    for _ in 0..200 {
        add(client.clone(), module.clone()).await?;
    }
    let mut samples = Vec::with_capacity(latency_calls);
    for _ in 0..latency_calls {
        let started = Instant::now();
        add(client.clone(), module.clone()).await?;
        samples.push(started.elapsed());
    }
    let latency = LatencyStats::of(&samples);

    let connections = connections.max(1);
    let per_connection = calls.div_ceil(connections);
    let (server_cpu, client_cpu) = (pid_cpu(&pid), process_cpu());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, module) = (client.clone(), module.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_connection {
                add(client.clone(), module.clone()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let done = per_connection * connections;
    let per_call = |before: Option<Duration>, after: Option<Duration>| {
        Some((after? - before?).as_secs_f64() * 1e6 / done as f64)
    };
    Ok(Direct {
        latency,
        calls: done,
        connections,
        throughput_per_s: done as f64 / seconds,
        server_cpu_us_per_call: per_call(server_cpu, pid_cpu(&pid)),
        client_cpu_us_per_call: per_call(client_cpu, process_cpu()),
    })
}

/// RPyC's and Pyro5's figures from `bench/rpc/bench.py` (`rpc-*.json`), the
/// median over runs per framework.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RpcBaseline {
    /// (framework, p50 ms, p99 ms, calls/s), in file order of frameworks.
    pub frameworks: Vec<(String, f64, f64, f64)>,
}

impl RpcBaseline {
    /// Reads every `rpc-*.json` in `dir`.
    ///
    /// # Errors
    /// On unreadable or malformed files.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let mut per: std::collections::BTreeMap<String, [Vec<f64>; 3]> = Default::default();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !(name.starts_with("rpc-") && name.ends_with(".json")) {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
            let label = v["label"].as_str().unwrap_or("rpc").to_string();
            let e = per.entry(label).or_default();
            for (i, key) in ["p50_ms", "p99_ms", "throughput_per_s"].iter().enumerate() {
                if let Some(x) = v[key].as_f64() {
                    e[i].push(x);
                }
            }
        }
        let frameworks = per
            .into_iter()
            .filter_map(|(label, [p50, p99, tput])| {
                Some((
                    label,
                    super::median(&p50)?,
                    super::median(&p99)?,
                    super::median(&tput)?,
                ))
            })
            .collect();
        Ok(Self { frameworks })
    }
}

/// The direct-call table of `--summarize`: wasq's direct phase (medians over
/// runs) against RPyC and Pyro5 measured in the same runs, with the goals
/// of the direct-call issue (p50 at most half of each, throughput at least
/// 5× RPyC's, server CPU under 20 µs per call).
pub fn direct_table(runs: &[super::BenchReport], rpc: &RpcBaseline) -> String {
    use std::fmt::Write;
    let pick = |f: &dyn Fn(&Direct) -> Option<f64>| {
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.direct.as_ref())
            .filter_map(f)
            .collect();
        super::median(&v)
    };
    let (p50, p99, tput, cpu) = (
        pick(&|d| Some(d.latency.p50_ms)),
        pick(&|d| Some(d.latency.p99_ms)),
        pick(&|d| Some(d.throughput_per_s)),
        pick(&|d| d.server_cpu_us_per_call),
    );
    let mut s = String::new();
    let Some(p50) = p50 else {
        return s;
    };
    let _ = writeln!(
        s,
        "\nDirect calls (wasq serve over HTTP) against RPyC and Pyro5, same runs:\n"
    );
    let _ = writeln!(
        s,
        "| framework | p50 | p99 | calls/s | wasq p50 ratio | wasq calls/s ratio |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let _ = writeln!(
        s,
        "| wasq direct | {p50:.3} ms | {:.3} ms | {:.0} | – | – |",
        p99.unwrap_or(f64::NAN),
        tput.unwrap_or(f64::NAN)
    );
    for (label, rp50, rp99, rtput) in &rpc.frameworks {
        let _ = writeln!(
            s,
            "| {label} | {rp50:.3} ms | {rp99:.3} ms | {rtput:.0} | {:.2}× of it (goal ≤ 0.5×) | {:.2}× (goal ≥ 5× RPyC's) |",
            p50 / rp50,
            tput.unwrap_or(f64::NAN) / rtput
        );
    }
    if rpc.frameworks.is_empty() {
        let _ = writeln!(
            s,
            "| RPyC, Pyro5 | not measured (`make bench` installs them) | | | | |"
        );
    }
    if let Some(cpu) = cpu {
        let _ = writeln!(
            s,
            "\nServer CPU per direct call (HTTP, instantiate, call): {cpu:.1} µs (goal < 20 µs)"
        );
    }
    s
}
