//! `wasq serve`: a host that answers calls over HTTP, no broker needed; and
//! `wasq call`, its client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use wasq_broker::{BrokerConfig, DirectClient, ErrorKind, ModuleHash, ModuleRef, RedisBroker};
use wasq_host::{
    Compilation, Compiler, DirectConfig, DirectServer, Sandbox, SandboxConfig, server_tls,
};

use super::host::{HostLimitsArgs, shutdown_signal};
use super::{HttpArgs, LimitsArgs, RedisArgs, UsageError, print_envelope};

/// Where and how the direct-call API listens (`serve`, `host run --listen`).
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// PEM certificate chain: serve HTTPS (needs --tls-key)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Listen beyond loopback without --token (anyone who reaches the port
    /// runs code here)
    #[arg(long)]
    insecure: bool,
}

impl ListenArgs {
    /// `https` with a certificate, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Starts answering calls with `server` on `addr` until SIGINT/SIGTERM.
    pub async fn start(
        &self,
        addr: SocketAddr,
        http: &HttpArgs,
        server: &DirectServer,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let token = http.token.as_deref().filter(|t| !t.is_empty());
        if !addr.ip().is_loopback() && token.is_none() && !self.insecure {
            return Err(UsageError(format!(
                "refusing to listen on {addr} without a token: anyone who can reach it could run code here; set --token (WASQ_TOKEN), listen on 127.0.0.1, or pass --insecure"
            ))
            .into());
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(server_tls(cert, key)?),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for calls on {addr}"))?;
        let local = listener.local_addr()?;
        let router = server.router(http.guard(local));
        Ok(tokio::spawn(async move {
            if let Err(e) = wasq_host::serve(listener, router, tls, shutdown_signal()).await {
                tracing::error!(cause = %e, "the call server stopped");
            }
        }))
    }
}

/// Answer calls over HTTP: `PUT /v1/modules`, `POST /v1/call/MODULE/TASK`,
/// `GET /v1/health` (docs/http.md). Without --redis no broker is needed:
/// modules are uploaded to it.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  wasq serve                                   # 127.0.0.1:7070, modules uploaded to it
  wasq serve --listen 0.0.0.0:7070 --token \"$TOKEN\" --tls-cert cert.pem --tls-key key.pem
  wasq serve --redis redis://127.0.0.1:6379    # also finds stored modules and names
  curl -s -X PUT --data-binary @target/tasks/examples.wasm http://127.0.0.1:7070/v1/modules
  curl -s -d '[4, 5]' http://127.0.0.1:7070/v1/call/sha256:HEX/add")]
pub struct ServeCommand {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", env = "WASQ_LISTEN", default_value = wasq_host::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Also find modules and names in this deployment's module store
    #[arg(long = "redis", value_name = "URL")]
    redis: Option<String>,
    /// Key prefix of that deployment (with --redis)
    #[arg(
        long,
        value_name = "PREFIX",
        env = "WASQ_PREFIX",
        default_value = "wasq"
    )]
    prefix: String,
    /// Calls run at once; one more is answered 429
    #[arg(long, value_name = "N", default_value_t = 16, env = "WASQ_CONCURRENCY", value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    concurrency: usize,
    #[command(flatten)]
    limits: HostLimitsArgs,
    /// How new modules compile: tiered, optimized or quick
    #[arg(
        long,
        value_name = "HOW",
        default_value = "tiered",
        env = "WASQ_COMPILE"
    )]
    compile: Compilation,
    #[command(flatten)]
    listen_args: ListenArgs,
    #[command(flatten)]
    http: HttpArgs,
}

impl ServeCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let concurrency = self.concurrency.max(1);
        let broker = match &self.redis {
            None => None,
            Some(url) => {
                let redis = RedisArgs {
                    url: url.clone(),
                    prefix: self.prefix.clone(),
                    redis_ca: None,
                    redis_cert: None,
                    redis_key: None,
                };
                let config = BrokerConfig {
                    max_module: self.limits.max_module(),
                    ..BrokerConfig::default()
                };
                Some(Arc::new(redis.connect(config).await?))
            }
        };
        let sandbox = Sandbox::new(SandboxConfig {
            limits: self.limits.limits(),
            max_module: self.limits.max_module(),
            pool_size: u32::try_from(concurrency)
                .unwrap_or(u32::MAX)
                .saturating_add(4),
            compilation: self.compile,
            compiler: Compiler::current_exe().context("cannot find the wasq executable")?,
            ..SandboxConfig::default()
        })?;
        let server = direct_server(sandbox, broker, concurrency);
        let running = self
            .listen_args
            .start(self.listen, &self.http, &server)
            .await?;
        let _ = running.await;
        Ok(ExitCode::SUCCESS)
    }
}

/// The direct-call server of a host.
pub fn direct_server(
    sandbox: Sandbox,
    broker: Option<Arc<RedisBroker>>,
    concurrency: usize,
) -> DirectServer {
    DirectServer::new(
        sandbox,
        broker,
        DirectConfig {
            concurrency,
            ..DirectConfig::default()
        },
    )
}

/// Call TASK of MODULE on a `wasq serve` host and print the result (exit
/// status as `submit --wait`).
#[derive(Debug, Args)]
#[command(after_help = "\
MODULE is a .wasm/.wat path (uploaded first if the server lacks it),
sha256:HEX, or a name the server's module store knows (serve --redis).

Examples:
  wasq call http://127.0.0.1:7070 target/tasks/examples.wasm add '[4, 5]'
  wasq call http://host:7070 examples@1.0 fib '[30]' --token \"$TOKEN\" --json")]
pub struct CallCommand {
    /// The server, http://HOST:PORT or https://HOST:PORT
    url: String,
    /// The module: a file path, sha256:HEX, or a name
    module: String,
    /// The task to call
    task: String,
    #[arg(default_value = "[]", help = super::args::ARGS_HELP, allow_hyphen_values = true)]
    args: String,
    #[command(flatten)]
    limits: LimitsArgs,
    /// Bearer token of the server
    #[arg(long, value_name = "TOKEN", env = "WASQ_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of the CA that signed an https:// server's certificate
    /// (default: the public CAs)
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Print exactly one JSON envelope on stdout
    #[arg(long)]
    json: bool,
}

impl CallCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let args = super::args::read_args(&self.args)?;
        let client = DirectClient::with_ca(&self.url, self.token.clone(), self.ca.as_deref())
            .map_err(|e| UsageError(e.to_string()))?;
        let (module, bytes) = match super::module_ref(&self.module)? {
            ModuleRef::Bytes(bytes) => (format!("sha256:{}", ModuleHash::of(&bytes)), Some(bytes)),
            ModuleRef::Hash(hash) => (format!("sha256:{hash}"), None),
            ModuleRef::Name(name) => (name, None),
        };
        let limits = self.limits.to_call_limits();
        let reached = |e: wasq_broker::Error| -> anyhow::Error {
            anyhow::Error::new(e).context(format!("cannot call {}", self.url))
        };
        let mut envelope = client
            .call_raw(&module, &self.task, args.get(), &limits)
            .await
            .map_err(reached)?;
        let missing = envelope.error.as_ref().map(|e| e.kind) == Some(ErrorKind::ModuleNotFound);
        if let (true, Some(bytes)) = (missing, &bytes) {
            client.upload(bytes).await.map_err(reached)?;
            envelope = client
                .call_raw(&module, &self.task, args.get(), &limits)
                .await
                .map_err(reached)?;
        }
        Ok(print_envelope(&envelope, self.json))
    }
}
