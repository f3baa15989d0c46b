//! The accept side: a hardened accept loop in front of tonic, and the
//! handle that stops it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use aegis_tls::NodeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::caller::{Caller, CallerError, MeshConnectInfo};
use crate::dial::check_address;
use crate::{Credentials, TransportError};

/// Limits and timeouts of the accept loop and the HTTP/2 server. Every
/// limit is named in the log line of the connection it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Concurrent HTTP/2 streams allowed on one connection. Default: 256.
    pub max_concurrent_streams: u32,
    /// Time a client has to finish the TLS handshake. Default: 5 s.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; connections beyond are closed at
    /// once. Default: 256.
    pub max_pending_handshakes: usize,
    /// Handshakes in progress at once from one source address; beyond it
    /// that address's new connections are closed at once, so one host's
    /// silent connections cannot lock out the others. Default: 16.
    pub max_pending_handshakes_per_source: usize,
    /// Time a new connection has to send its first byte (the start of its
    /// TLS handshake); a connection that stays silent is closed then,
    /// well before `handshake_timeout`. Default: 1 s.
    pub first_byte_timeout: Duration,
    /// Time a connection has, after its handshake, to start speaking
    /// HTTP/2; a connection that stays silent is closed. Default: 5 s.
    pub preface_timeout: Duration,
    /// Open connections in total; new ones beyond are closed at once.
    /// Default: 4096.
    pub max_connections: usize,
    /// Open connections of one calling node (by its certificate); beyond
    /// it that node's new connections are closed after the handshake.
    /// A node normally holds two or three to another. Default: 32.
    pub max_connections_per_caller: usize,
    /// Longest time a call may take to be answered (tonic's server
    /// timeout: the handler, including reading a request body, not the
    /// streaming of a response); a client's `grpc-timeout` may ask for
    /// less. `None`: no limit. Default: 60 s.
    pub request_timeout: Option<Duration>,
    /// HTTP/2 keep-alive pings to clients, to drop dead connections.
    /// Default: every 30 s.
    pub keep_alive_interval: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            handshake_timeout: Duration::from_secs(5),
            max_pending_handshakes: 256,
            max_pending_handshakes_per_source: 16,
            first_byte_timeout: Duration::from_secs(1),
            preface_timeout: Duration::from_secs(5),
            max_connections: 4096,
            max_connections_per_caller: 32,
            request_timeout: Some(Duration::from_secs(60)),
            keep_alive_interval: Some(Duration::from_secs(30)),
        }
    }
}

/// Serves tonic routes over mutual TLS: binds `address` (`host:port`; port
/// 0 picks a free port), accepts connections through the limits of
/// `config`, and serves until [`ServerHandle::shutdown`] or the handle is
/// dropped. Each handshake presents the certificate `credentials` hold at
/// that moment and requires a client certificate from the CAs they trust
/// then.
///
/// # Errors
/// [`TransportError::InvalidAddress`] for an address that is not
/// `host:port`, [`TransportError::Bind`] naming the address when it cannot
/// be bound.
pub async fn serve_routes(
    credentials: impl Into<Credentials>,
    address: &str,
    routes: tonic::service::Routes,
    config: impl Into<ServerConfig>,
) -> Result<ServerHandle, TransportError> {
    let credentials: Credentials = credentials.into();
    let config: ServerConfig = config.into();
    check_address(address)?;
    let listener = bind(address).await?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| TransportError::Bind {
            address: address.to_owned(),
            source,
        })?;
    let node_id = credentials.node_id();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (conn_tx, conn_rx) = mpsc::channel::<io::Result<MeshStream>>(64);
    let connections = Arc::new(Connections::default());
    let accept = tokio::spawn(accept_loop(
        listener,
        credentials,
        conn_tx,
        shutdown_rx.clone(),
        config,
        Arc::clone(&connections),
    ));
    let mut signal = shutdown_rx;
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(config.keep_alive_interval);
    if let Some(limit) = config.request_timeout {
        builder = builder.timeout(limit);
    }
    let serve = tokio::spawn(
        builder
            .layer(crate::metrics::RpcMetricsLayer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
                let _ = signal.wait_for(|stop| *stop).await;
            }),
    );
    tracing::info!(node_id = %node_id, address = %local_addr, "server listening");
    Ok(ServerHandle {
        local_addr,
        node_id,
        shutdown: shutdown_tx,
        tasks: Some(Tasks { accept, serve }),
        extra: Vec::new(),
        connections,
    })
}

async fn bind(address: &str) -> Result<TcpListener, TransportError> {
    let err = |source| TransportError::Bind {
        address: address.to_owned(),
        source,
    };
    let addr = tokio::net::lookup_host(address)
        .await
        .map_err(err)?
        .next()
        .ok_or_else(|| {
            err(io::Error::new(
                io::ErrorKind::NotFound,
                "the host resolves to no address",
            ))
        })?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    // So that a restarted node can bind its port again at once, despite
    // connections of its previous life in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// Pending handshakes per source address.
#[derive(Default)]
struct PendingBySource(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One pending handshake of a source; leaving frees its place.
struct SourceSlot {
    ip: std::net::IpAddr,
    table: Arc<PendingBySource>,
}

impl PendingBySource {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one more pending handshake from `ip`, if it has fewer
    /// than `max`.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<SourceSlot> {
        let mut table = self.lock();
        let n = table.entry(ip).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            ip,
            table: Arc::clone(self),
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        if let Some(n) = table.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

/// Accepts TCP connections and runs each TLS handshake in its own task, with
/// a timeout and a cap on how many run at once, so a slow or silent client
/// never holds up the others.
async fn accept_loop(
    listener: TcpListener,
    credentials: Credentials,
    conns: mpsc::Sender<io::Result<MeshStream>>,
    mut shutdown: watch::Receiver<bool>,
    config: ServerConfig,
    connections: Arc<Connections>,
) {
    let pending = Arc::new(Semaphore::new(config.max_pending_handshakes));
    let per_source = Arc::new(PendingBySource::default());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off a little
                // rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(source_slot) =
            per_source.enter(remote.ip(), config.max_pending_handshakes_per_source)
        else {
            crate::metrics::handshake("dropped_per_source");
            tracing::debug!(
                remote = %remote,
                limit = config.max_pending_handshakes_per_source,
                "too many pending handshakes from this address (max_pending_handshakes_per_source); connection dropped"
            );
            continue;
        };
        if connections.count() >= config.max_connections {
            crate::metrics::handshake("dropped_max_connections");
            tracing::warn!(remote = %remote, limit = config.max_connections, "too many open connections (max_connections); connection dropped");
            continue;
        }
        let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
            crate::metrics::handshake("dropped_overload");
            tracing::warn!(remote = %remote, limit = config.max_pending_handshakes, "too many pending handshakes (max_pending_handshakes); connection dropped");
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(remote = %remote, error = %e, "set_nodelay failed");
        }
        // The configuration current now: a renewed certificate is
        // presented from the next handshake on.
        let acceptor = TlsAcceptor::from(credentials.server_config());
        let (conns, connections) = (conns.clone(), Arc::clone(&connections));
        tokio::spawn(async move {
            let _permit = permit;
            let _source_slot = source_slot;
            // A connection that does not even start its handshake is gone
            // long before the handshake deadline.
            let started = tokio::time::Instant::now();
            if tokio::time::timeout(config.first_byte_timeout, tcp.readable())
                .await
                .is_err()
            {
                crate::metrics::handshake("silent");
                tracing::debug!(remote = %remote, after = ?config.first_byte_timeout, "no first byte (first_byte_timeout); connection closed");
                return;
            }
            let left = config.handshake_timeout.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let stream = match MeshStream::new(tls, Some(remote), &connections, &config) {
                        Ok(stream) => stream,
                        Err(refused) => {
                            crate::metrics::handshake("dropped_per_caller");
                            tracing::warn!(remote = %remote, caller = %refused.caller, limit = refused.limit, "too many open connections from this node (max_connections_per_caller); connection closed");
                            return;
                        }
                    };
                    crate::metrics::handshake("accepted");
                    tracing::debug!(remote = %remote, caller = ?stream.caller_id(), "accepted");
                    let _ = conns.send(Ok(stream)).await;
                }
                Ok(Err(e)) => {
                    crate::metrics::handshake("refused");
                    tracing::info!(remote = %remote, error = %e, "TLS handshake refused");
                }
                Err(_) => {
                    crate::metrics::handshake("timed_out");
                    tracing::info!(remote = %remote, "TLS handshake timed out");
                }
            }
        });
    }
    tracing::debug!("accept loop stopped; listener closed");
}

struct Tasks {
    accept: JoinHandle<()>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// A running server. Dropping it stops the server at once; call
/// [`ServerHandle::shutdown`] to let in-flight calls finish.
pub struct ServerHandle {
    local_addr: SocketAddr,
    node_id: NodeId,
    shutdown: watch::Sender<bool>,
    tasks: Option<Tasks>,
    /// Helpers that stop with the server (the health follower).
    extra: Vec<JoinHandle<()>>,
    connections: Arc<Connections>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("node_id", &self.node_id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many client connections are open.
    pub fn open_connections(&self) -> usize {
        self.connections.count()
    }

    /// Runs `task` until the server stops: it is awaited by
    /// [`ServerHandle::shutdown`] and aborted when the handle is dropped. The
    /// task should end when [`ServerHandle::stopping`] turns true.
    pub fn attach(&mut self, task: JoinHandle<()>) {
        self.extra.push(task);
    }

    /// Turns true when the server starts to stop.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Stops accepting, closes the listener (the port can be bound again at
    /// once), lets in-flight calls finish for up to `grace`, then drops what
    /// is left.
    ///
    /// # Errors
    /// [`TransportError::Server`] if the server had failed.
    pub async fn shutdown(mut self, grace: Duration) -> Result<(), TransportError> {
        let _ = self.shutdown.send(true);
        let Some(tasks) = self.tasks.take() else {
            return Ok(());
        };
        let _ = tasks.accept.await;
        for task in self.extra.drain(..) {
            let _ = task.await;
        }
        let mut serve = tasks.serve;
        let result = match tokio::time::timeout(grace, &mut serve).await {
            Ok(Ok(result)) => result.map_err(TransportError::Server),
            Ok(Err(_join)) => Ok(()),
            Err(_) => {
                let dropped = self.connections.close_all();
                tracing::warn!(node_id = %self.node_id, ?grace, dropped, "grace period over; connections closed");
                // The connections end as their sockets close; give the
                // server a moment to see it, then stop waiting.
                if tokio::time::timeout(Duration::from_secs(1), &mut serve)
                    .await
                    .is_err()
                {
                    serve.abort();
                }
                Ok(())
            }
        };
        tracing::info!(node_id = %self.node_id, "server stopped");
        result
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(tasks) = self.tasks.take() {
            tasks.accept.abort();
            tasks.serve.abort();
        }
        for task in &self.extra {
            task.abort();
        }
        self.connections.close_all();
    }
}

/// The server's open connections, so that a stop whose grace period runs
/// out can close them (tonic runs each connection in its own task, which
/// stopping the server does not end), and so that connections can be
/// counted per caller. A connection is closed through a flag its stream
/// checks, not through a second descriptor of its socket.
#[derive(Default)]
pub(crate) struct Connections {
    next: std::sync::atomic::AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
}

struct Open {
    caller: Option<NodeId>,
    close: Arc<CloseFlag>,
}

/// Set once to end a connection; wakes the task that reads it.
#[derive(Default)]
struct CloseFlag {
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl CloseFlag {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// For a read that is about to wait: remembers who to wake on close,
    /// and says whether the connection was closed meanwhile. (Reads that
    /// do not wait take no lock: only an atomic load.)
    fn register(&self, cx: &Context<'_>) -> bool {
        let mut slot = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
        drop(slot);
        self.closed.load(Ordering::Acquire)
    }
}

/// A connection refused because its caller has too many open.
pub(crate) struct TooMany {
    pub(crate) caller: NodeId,
    pub(crate) limit: usize,
}

impl Connections {
    /// Registers a connection of `caller`, unless that caller already has
    /// `per_caller` open.
    fn track(
        self: &Arc<Self>,
        caller: Option<&NodeId>,
        per_caller: usize,
    ) -> Result<Tracked, TooMany> {
        let mut open = self.lock();
        if let Some(caller) = caller
            && open
                .values()
                .filter(|o| o.caller.as_ref() == Some(caller))
                .count()
                >= per_caller
        {
            return Err(TooMany {
                caller: caller.clone(),
                limit: per_caller,
            });
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(CloseFlag::default());
        open.insert(
            id,
            Open {
                caller: caller.cloned(),
                close: Arc::clone(&close),
            },
        );
        Ok(Tracked {
            id,
            close,
            connections: Arc::clone(self),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Open>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends every open connection; their tasks see end-of-stream and end.
    pub(crate) fn close_all(&self) -> usize {
        let open = std::mem::take(&mut *self.lock());
        for o in open.values() {
            o.close.close();
        }
        open.len()
    }

    /// How many connections are open.
    pub(crate) fn count(&self) -> usize {
        self.lock().len()
    }
}

/// Removes its connection from [`Connections`] when the stream is dropped.
struct Tracked {
    id: u64,
    close: Arc<CloseFlag>,
    connections: Arc<Connections>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

/// A server-side mutual-TLS connection with the caller parsed once.
pub(crate) struct MeshStream {
    inner: TlsStream<TcpStream>,
    info: MeshConnectInfo,
    tracked: Tracked,
    /// Until the client's first bytes after the handshake (the HTTP/2
    /// preface): a connection that stays silent is closed then.
    preface: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl MeshStream {
    pub(crate) fn new(
        inner: TlsStream<TcpStream>,
        remote_addr: Option<SocketAddr>,
        connections: &Arc<Connections>,
        config: &ServerConfig,
    ) -> Result<Self, TooMany> {
        let caller = match inner.get_ref().1.peer_certificates() {
            Some(chain) if !chain.is_empty() => Caller::from_chain(chain).map(Arc::new),
            _ => Err(CallerError::NoCertificate),
        };
        let id = caller.as_ref().ok().map(|c| &c.node_id);
        let tracked = connections.track(id, config.max_connections_per_caller)?;
        Ok(Self {
            inner,
            info: MeshConnectInfo {
                remote_addr,
                caller,
            },
            tracked,
            preface: Some(Box::pin(tokio::time::sleep(config.preface_timeout))),
        })
    }

    pub(crate) fn caller_id(&self) -> Option<&NodeId> {
        self.info.caller.as_ref().ok().map(|c| &c.node_id)
    }
}

impl tonic::transport::server::Connected for MeshStream {
    type ConnectInfo = MeshConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // End of stream when closed: the server ends the connection.
        if self.tracked.close.is_closed() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_pending() && self.tracked.close.register(cx) {
            return Poll::Ready(Ok(()));
        }
        if let Some(preface) = self.preface.as_mut() {
            if buf.filled().len() > before {
                self.preface = None;
            } else if polled.is_pending() && preface.as_mut().poll(cx).is_ready() {
                crate::metrics::handshake("silent_after_handshake");
                tracing::debug!(remote = ?self.info.remote_addr, "no HTTP/2 preface after the handshake (preface_timeout); connection closed");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within preface_timeout",
                )));
            }
        }
        polled
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.tracked.close.is_closed() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
