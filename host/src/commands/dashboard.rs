//! `wasq dashboard`: a web page showing the cluster, served by the binary.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use wasq_broker::BrokerConfig;
use wasq_host::{DEFAULT_DASHBOARD_ADDR, Dashboard, DashboardConfig};

use super::host::shutdown_signal;
use super::{HttpArgs, RedisArgs};

/// Serve a live web dashboard of the cluster: hosts, queues, recent calls
/// and their envelopes, throughput. Read-only; stops on SIGINT/SIGTERM.
#[derive(Debug, Args)]
#[command(after_help = "\
The page refreshes itself from a JSON API on the same address:
  GET /api/overview          hosts, queues, totals, throughput, recent calls, dead letters
  GET /api/calls/ID          a call's envelope (404 if unknown)
  GET /api/events?after=ID&count=N   raw events (N <= 1000)

Anyone who can reach the address can read call results: keep it on loopback,
set --token (open the page once as http://ADDR/?token=TOKEN), or put it
behind an authenticating proxy. Requests naming another Host than loopback or
the listen address are refused (DNS rebinding); --allow-host adds names.

Examples:
  wasq dashboard                              # http://127.0.0.1:7878/
  wasq dashboard --listen 0.0.0.0:8080 --prefix staging")]
pub struct DashboardCommand {
    #[command(flatten)]
    redis: RedisArgs,
    /// Address to serve the page on
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_DASHBOARD_ADDR)]
    listen: SocketAddr,
    /// How often the page refreshes (seconds)
    #[arg(long, value_name = "SECS", value_parser = super::parse_limit_secs, default_value = "1", allow_hyphen_values = true)]
    refresh: Duration,
    /// Recent calls kept and shown
    #[arg(long, value_name = "N", default_value_t = wasq_host::DEFAULT_RECENT_CALLS, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    recent: usize,
    #[command(flatten)]
    http: HttpArgs,
}

impl DashboardCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let broker = Arc::new(self.redis.connect(BrokerConfig::default()).await?);
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let addr = listener.local_addr().unwrap_or(self.listen);
        let dashboard = Dashboard::start(
            broker,
            DashboardConfig {
                prefix: self.redis.prefix.clone(),
                recent_calls: self.recent.max(1),
                refresh: self.refresh.max(Duration::from_millis(200)),
            },
        );
        eprintln!("wasq dashboard: http://{addr}/ (Ctrl-C to stop)");
        dashboard
            .serve(listener, self.http.guard(addr), shutdown_signal())
            .await
            .with_context(|| format!("dashboard server on {addr} failed"))?;
        Ok(ExitCode::SUCCESS)
    }
}
