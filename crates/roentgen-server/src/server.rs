//! `roentgen serve`: opens the store, binds the listeners, serves until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;

use roentgen_store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::groups::Groups;
use crate::metrics::Metrics;
use crate::sampling::Sampling;
use crate::udp;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{setting} {address:?} is not a socket address (host:port): {reason}")]
    Address { setting: &'static str, address: String, reason: String },
    #[error(
        "refusing to listen on {address} ({setting}): requests are not authenticated, so anyone who can \
         reach it could read and write traces; bind a loopback address, or set allow_insecure_remote = true \
         (--allow-insecure-remote) if the network is trusted"
    )]
    InsecureBind { setting: &'static str, address: SocketAddr },
    #[error("cannot listen on {address} ({setting}): {source}")]
    Bind { setting: &'static str, address: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot load the sampling rules: {0}")]
    Sampling(#[from] roentgen_sampling::RuleError),
    #[error("cannot load the groups: {0}")]
    Groups(String),
}

/// A running server and the addresses it actually bound (useful with port 0).
#[derive(Debug)]
pub struct RunningServer {
    pub udp_address: SocketAddr,
    pub http_address: SocketAddr,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn resolve(setting: &'static str, address: &str, allow_remote: bool) -> Result<SocketAddr, StartError> {
    let resolved: SocketAddr = address.parse().map_err(|e: std::net::AddrParseError| StartError::Address {
        setting,
        address: address.to_owned(),
        reason: e.to_string(),
    })?;
    if !resolved.ip().is_loopback() && !allow_remote {
        return Err(StartError::InsecureBind { setting, address: resolved });
    }
    Ok(resolved)
}

impl RunningServer {
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let remote = config.allow_insecure_remote;
        let udp_address = resolve("udp_address", &config.udp_address, remote)?;
        let http_address = resolve("http_address", &config.http_address, remote)?;
        resolve("otlp_grpc_address", &config.otlp_grpc_address, remote)?;
        resolve("otlp_http_address", &config.otlp_http_address, remote)?;

        let store = Store::open(config.store.clone()).await?;
        let settings = Sampling::open(&config)
            .map_err(StartError::from)
            .and_then(|sampling| Ok((sampling, Groups::open(&config).map_err(StartError::Groups)?)));
        let (sampling, groups) = match settings {
            Ok(both) => both,
            Err(e) => {
                let _ = store.close().await;
                return Err(e);
            }
        };
        let bound = async {
            let socket = udp::bind(udp_address).map_err(|source| StartError::Bind {
                setting: "udp_address",
                address: udp_address,
                source,
            })?;
            let listener = TcpListener::bind(http_address).await.map_err(|source| StartError::Bind {
                setting: "http_address",
                address: http_address,
                source,
            })?;
            Ok::<_, StartError>((socket, listener))
        };
        let (socket, listener) = match bound.await {
            Ok(pair) => pair,
            Err(e) => {
                let _ = store.close().await;
                return Err(e);
            }
        };
        let udp_address = socket.local_addr().unwrap_or(udp_address);
        let http_address = listener.local_addr().unwrap_or(http_address);
        tracing::info!(address = %udp_address, "listening for segment documents (X-Ray daemon protocol, udp)");
        tracing::info!(address = %http_address, "listening for the X-Ray API and /metrics (http)");
        tracing::info!(
            grpc = %config.otlp_grpc_address,
            http = %config.otlp_http_address,
            "otlp addresses reserved; otlp ingest is not served by this version"
        );

        let metrics = Metrics::with_udp_socket(udp::socket_inode(&socket));
        let state = Arc::new(AppState { config, store, metrics, sampling, groups });
        let (stop, stopped) = watch::channel(false);
        let udp_task = {
            let state = state.clone();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = udp::serve(socket, state) => {}
                    _ = stopped.changed() => {}
                }
            })
        };
        let http_task = {
            let app = api::router(state.clone());
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.changed().await;
                };
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                    tracing::error!(error = %e, "http server failed");
                }
            })
        };
        Ok(Self { udp_address, http_address, state, stop, tasks: vec![udp_task, http_task] })
    }

    /// Stops accepting, finishes requests in flight, and makes everything received durable.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.state.store.close().await
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }
}
