//! The `roentgen` command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use roentgen_server::{Config, RunningServer};

/// Ingest allocates and frees many small parsed documents across threads; with glibc's allocator
/// the server's peak RSS under sustained load was 1.8 times higher (see BENCHMARKS.md).
/// mimalloc is built without asking for transparent huge pages (`no_thp`): the live documents'
/// memory comes and goes with every flush, and faulting it in 2 MiB at a time cost 15% of the
/// server's CPU under load, against under 4% in 4 KiB pages (the reason Redis and MongoDB
/// advise against THP too). `roentgen_alloc` says how it is called.
#[global_allocator]
static ALLOCATOR: roentgen_alloc::Mimalloc = roentgen_alloc::Mimalloc;

#[derive(Debug, Parser)]
#[command(name = "roentgen", version, about = "Self-hosted distributed tracing that speaks AWS X-Ray's protocols")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the all-in-one server: UDP daemon protocol, X-Ray API, /metrics, embedded storage.
    Serve(ServeArgs),
}

/// Settings given as flags override the config file and `ROENTGEN_*` environment variables.
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file (also `ROENTGEN_CONFIG`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for the write-ahead log and, by default, the blocks [default: ./roentgen-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where blocks are stored: a directory or file:///path [default: <data-dir>/blocks].
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
    /// UDP address for segment documents, as the X-Ray daemon receives them [default: 127.0.0.1:2000].
    #[arg(long, value_name = "HOST:PORT")]
    udp_address: Option<String>,
    /// TCP address for the X-Ray API and /metrics [default: 127.0.0.1:2000].
    #[arg(long, value_name = "HOST:PORT")]
    http_address: Option<String>,
    /// Reserved for OTLP/gRPC ingest, not served by this version yet [default: 127.0.0.1:4317].
    #[arg(long, value_name = "HOST:PORT")]
    otlp_grpc_address: Option<String>,
    /// Reserved for OTLP/HTTP ingest, not served by this version yet [default: 127.0.0.1:4318].
    #[arg(long, value_name = "HOST:PORT")]
    otlp_http_address: Option<String>,
    /// Listen on non-loopback addresses although requests are not authenticated.
    #[arg(long)]
    allow_insecure_remote: bool,
    /// Log filter, e.g. info or roentgen_server=debug [default: info].
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

impl ServeArgs {
    fn config(self) -> anyhow::Result<Config> {
        let file = self.config.or_else(|| std::env::var_os("ROENTGEN_CONFIG").map(PathBuf::from));
        let mut config = Config::load(file.as_deref(), std::env::vars())?;
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.storage {
            config.storage = v;
        }
        if let Some(v) = self.udp_address {
            config.udp_address = v;
        }
        if let Some(v) = self.http_address {
            config.http_address = v;
        }
        if let Some(v) = self.otlp_grpc_address {
            config.otlp_grpc_address = v;
        }
        if let Some(v) = self.otlp_http_address {
            config.otlp_http_address = v;
        }
        if let Some(v) = self.log {
            config.log = v;
        }
        config.allow_insecure_remote |= self.allow_insecure_remote;
        Ok(config.finish()?)
    }
}

fn main() -> std::process::ExitCode {
    roentgen_alloc::reuse_freed_pages_until_the_kernel_needs_them();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roentgen: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each once: the libraries' errors show their cause in
/// their own message, as the logs print them, and give it as their source as well.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.config()?;
            init_logging(&config.log)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(config))
        }
    }
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let store = &config.store;
    let (live_mib, cache_mib, bloom_mib) =
        (store.max_live_bytes >> 20, store.summary_cache_bytes >> 20, store.bloom_filter_bytes >> 20);
    // Handlers go in before the listeners open, so a signal sent as soon as they are logged
    // still shuts down cleanly instead of killing the process.
    let signals = Signals::install()?;
    let server = RunningServer::start(config).await?;
    tracing::info!(
        data_dir = %data_dir.display(),
        max_live_mib = live_mib,
        summary_cache_mib = cache_mib,
        bloom_filter_mib = bloom_mib,
        "roentgen is ready"
    );
    signals.wait().await;
    tracing::info!("shutting down");
    server.shutdown().await.context("flushing on shutdown")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// SIGINT and SIGTERM, either of which stops the server.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let denied = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let address = "127.0.0.1:2000".parse().unwrap();
        let bind = roentgen_server::StartError::Bind { setting: "udp_address", address, source: denied() };
        assert_eq!(one_line(&bind.into()), format!("cannot listen on 127.0.0.1:2000 (udp_address): {}", denied()));
        let flushing = anyhow::Error::new(denied()).context("flushing on shutdown");
        assert_eq!(one_line(&flushing), format!("flushing on shutdown: {}", denied()));
    }
}
