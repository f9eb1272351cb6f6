//! The X-Ray daemon protocol on UDP: one datagram is `{"format":"json","version":1}`, a newline,
//! and one segment document.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use roentgen_model::parse_document_and_text;
use roentgen_store::{Source, StoreError, StoredDocument};
use tokio::net::UdpSocket;

use crate::api::AppState;
use crate::metrics::DatagramError;

/// Largest UDP payload; a datagram is never larger.
const MAX_DATAGRAM: usize = 65_535;
/// Documents handed to the store in one batch at most.
const BATCH: usize = 512;
/// Datagrams taken from the socket in one system call at most.
const AT_ONCE: usize = 32;

/// Binds the UDP socket with a receive buffer large enough to absorb bursts.
pub fn bind(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if address.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // The kernel caps this at net.core.rmem_max; a smaller buffer only means more drops under load.
    let _ = socket.set_recv_buffer_size(8 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

/// The kernel's number for a socket (its inode), by which `/proc/net/udp` lists it; `None` off
/// Linux.
pub fn socket_inode(socket: &UdpSocket) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Datagrams the kernel dropped for the socket of this inode because its receive buffer was
/// full: what the receiver did not read in time, which nothing else counts.
pub fn receive_buffer_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .into_iter()
        .find_map(|table| drops_in_table(&std::fs::read_to_string(table).ok()?, inode))
}

/// A `/proc/net/udp` table's drop count for one socket: its tenth column is the inode, its
/// thirteenth and last the drops.
fn drops_in_table(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        if fields.get(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        fields.get(12)?.parse().ok()
    })
}

/// The headers the official SDKs send, byte for byte (the Python and .NET SDKs' without spaces,
/// the Node.js, Go and Java SDKs' with): accepted without parsing them into a map, which
/// allocates.
const SDK_HEADERS: [&[u8]; 2] = [br#"{"format":"json","version":1}"#, br#"{"format": "json", "version": 1}"#];

/// Splits a datagram into header and document, checking the header as the X-Ray daemon does:
/// split at the first newline, `format` equal to `json` ignoring case, `version` exactly 1, and
/// key names matched ignoring case.
pub fn split_datagram(datagram: &[u8]) -> Result<&[u8], DatagramError> {
    let newline = datagram.iter().position(|&b| b == b'\n').ok_or(DatagramError::MissingHeader)?;
    let (header, body) = (&datagram[..newline], &datagram[newline + 1..]);
    if body.iter().all(u8::is_ascii_whitespace) {
        // A document and a newline, or a header sent apart from its document.
        return Err(if is_header(header) { DatagramError::MissingDocument } else { DatagramError::MissingHeader });
    }
    if is_header(header) { Ok(body) } else { Err(DatagramError::InvalidHeader) }
}

fn is_header(line: &[u8]) -> bool {
    if SDK_HEADERS.contains(&line) {
        return true;
    }
    let Ok(header) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(line) else { return false };
    let field = |name: &str| header.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    let format_ok = field("format").and_then(|v| v.as_str()).is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let version_ok = field("version").and_then(|v| v.as_i64()) == Some(1);
    format_ok && version_ok
}

/// Receives datagrams until the task is dropped. Bad datagrams are counted and logged at debug
/// level at most once a second; they never stop the receiver.
pub async fn serve(socket: UdpSocket, state: Arc<AppState>) {
    let mut received = Received::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if let Err(e) = socket.readable().await {
            tracing::warn!(error = %e, "udp receive failed");
            continue;
        }
        // Drain what is already queued so one store submission carries many documents.
        while batch.len() < BATCH {
            match received.receive(&socket) {
                Ok(()) => received.datagrams().for_each(|datagram| handle(datagram, &state, &mut batch)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "udp receive failed");
                    break;
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let docs = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        let count = docs.len() as u64;
        let dropped: u64 = docs.iter().map(|d: &Arc<StoredDocument>| u64::from(d.parsed.dropped_annotations)).sum();
        match state.store.submit(docs).await {
            Ok(()) => state.metrics.accepted(Source::Udp, count, dropped),
            // Counted by the store; the receiver goes on, to store again once there is room.
            Err(StoreError::DiskFull { .. }) => {}
            Err(e) => {
                tracing::error!(error = %e, "udp receiver stopping: the store is closed");
                return;
            }
        }
    }
}

/// The datagrams of one receive, in buffers kept from one to the next.
struct Received {
    /// `AT_ONCE` buffers of `MAX_DATAGRAM` bytes, one after another.
    buffers: Vec<u8>,
    lengths: Vec<usize>,
}

impl Received {
    fn new() -> Self {
        Self { buffers: vec![0; AT_ONCE * MAX_DATAGRAM], lengths: Vec::with_capacity(AT_ONCE) }
    }

    fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.lengths.iter().zip(self.buffers.chunks(MAX_DATAGRAM)).map(|(&n, buffer)| &buffer[..n])
    }

    /// Takes up to `AT_ONCE` of the datagrams queued on the socket in one system call: a call
    /// for each took nearly a tenth of the server's CPU at 80,000 datagrams a second. `WouldBlock`
    /// when none is queued.
    #[cfg(target_os = "linux")]
    fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<()> {
        use nix::sys::socket::{MsgFlags, MultiHeaders, recvmmsg};
        socket.try_io(tokio::io::Interest::READABLE, || {
            let mut headers = MultiHeaders::<()>::preallocate(AT_ONCE, None);
            let mut slices: Vec<[std::io::IoSliceMut<'_>; 1]> =
                self.buffers.chunks_mut(MAX_DATAGRAM).map(|buffer| [std::io::IoSliceMut::new(buffer)]).collect();
            let messages = recvmmsg(socket.as_raw_fd(), &mut headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?;
            self.lengths.clear();
            self.lengths.extend(messages.map(|message| message.bytes));
            Ok(())
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<()> {
        let (n, _) = socket.try_recv_from(&mut self.buffers[..MAX_DATAGRAM])?;
        self.lengths.clear();
        self.lengths.push(n);
        Ok(())
    }
}

fn handle(datagram: &[u8], state: &AppState, batch: &mut Vec<Arc<StoredDocument>>) {
    let body = match split_datagram(datagram) {
        Ok(body) => body,
        Err(reason) => {
            state.metrics.datagram_dropped(reason);
            debug_rate_limited(format_args!("dropping a udp datagram: {}", reason.describe()));
            return;
        }
    };
    state.metrics.received(Source::Udp, 1);
    match parse_document_and_text(body, state.config.ingest.max_document_bytes) {
        Ok((text, parsed)) => {
            batch.push(Arc::new(StoredDocument { raw: text.into(), parsed, source: Source::Udp }));
        }
        Err(e) => {
            state.metrics.rejected(Source::Udp, e.code);
            debug_rate_limited(format_args!("rejecting a udp segment document: {}", e.message()));
        }
    }
}

fn debug_rate_limited(message: std::fmt::Arguments<'_>) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::debug!("{message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_read_from_the_socket_row() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  521: 0100007F:07D0 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17
  522: 0100007F:A410 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0
";
        assert_eq!(drops_in_table(table, 4242), Some(17));
        assert_eq!(drops_in_table(table, 4243), Some(0));
        assert_eq!(drops_in_table(table, 99), None);
        assert_eq!(drops_in_table("header only", 4242), None);
    }

    /// Datagrams sent to a socket nobody reads overflow its buffer, and the kernel's count of
    /// them is found.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_full_receive_buffer_is_counted() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let inode = socket_inode(&socket).expect("a socket's inode on Linux");
        assert_eq!(receive_buffer_drops(inode), Some(0));
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let datagram = vec![b'x'; 60_000];
        // Far more than any receive buffer the kernel grants (net.core.rmem_max).
        for _ in 0..2_000 {
            let _ = sender.send_to(&datagram, socket.local_addr().unwrap());
        }
        assert!(receive_buffer_drops(inode).unwrap() > 0);
    }

    #[test]
    fn headers_as_the_sdks_send_them() {
        assert_eq!(split_datagram(b"{\"format\":\"json\",\"version\":1}\n{}").unwrap(), b"{}");
        assert_eq!(
            split_datagram(b"{\"format\": \"json\", \"version\": 1}\n{\"a\":\"\\n\"}\nx").unwrap(),
            b"{\"a\":\"\\n\"}\nx"
        );
        assert_eq!(split_datagram(b"{\"FORMAT\":\"JSON\",\"Version\":1}\n{}").unwrap(), b"{}");
    }

    #[test]
    fn datagrams_that_are_not_a_header_and_a_document() {
        assert_eq!(split_datagram(b"{}"), Err(DatagramError::MissingHeader));
        assert_eq!(split_datagram(b"{\"format\":\"json\",\"version\":1}\n"), Err(DatagramError::MissingDocument));
        assert_eq!(split_datagram(b"{\"format\": \"json\", \"version\": 1}\n \n"), Err(DatagramError::MissingDocument));
        assert_eq!(split_datagram(b"{\"name\":\"a document\"}\n"), Err(DatagramError::MissingHeader));
        assert_eq!(split_datagram(b"{\"format\":\"json\",\"version\":2}\n{}"), Err(DatagramError::InvalidHeader));
        assert_eq!(split_datagram(b"{\"format\":\"xml\",\"version\":1}\n{}"), Err(DatagramError::InvalidHeader));
        assert_eq!(split_datagram(b"garbage\n{}"), Err(DatagramError::InvalidHeader));
        assert_eq!(split_datagram(b"{\"format\":\"json\"}\n{}"), Err(DatagramError::InvalidHeader));
    }
}
