//! The server side of `roentgen serve`: the UDP receiver of the X-Ray daemon protocol, the X-Ray
//! REST-JSON API, `/metrics`, and the configuration tree that sets them up.

mod api;
mod config;
mod convert;
mod error;
mod graph;
mod groups;
mod metrics;
mod persist;
mod sampling;
mod server;
mod udp;

pub use config::{Config, ConfigError, GroupsConfig, IngestConfig, QueryConfig, SamplingConfig};
pub use error::{ApiError, ErrorKind};
pub use metrics::DatagramError;
pub use server::{RunningServer, StartError};
pub use udp::split_datagram;
