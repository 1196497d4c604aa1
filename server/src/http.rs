//! The HTTP listener: connections, slow clients and shutdown.
//!
//! axum's own `serve` sets no header timeout, so a client that sends half a
//! request line and then nothing holds its connection (and a file
//! descriptor) for ever. Here hyper gets a timer: request headers must
//! arrive within the client timeout, else the connection is closed; bodies
//! get the same time in the gateway (408). Shutdown lets requests in flight
//! finish, for up to a few seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;

use crate::gateway::Gateway;

/// How long shutdown waits for requests in flight (watches never end).
const DRAIN: Duration = Duration::from_secs(3);

/// Serves the gateway on `http` until SIGINT or SIGTERM. `ready` is printed
/// once the socket is bound, so whoever waits for it can connect at once.
pub async fn serve(gw: Arc<Gateway>, http: SocketAddr, ready: String) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("listen on {http}"))?;
    println!("{ready}");
    let timeout = gw.client_timeout();
    let service = TowerToHyperService::new(gw.router());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stop = crate::shutdown();
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: the listener stays, the client goes.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        // Answers go out at once, not held back by Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service.clone())
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("shutdown: requests still open after {DRAIN:?} were dropped");
    }
    Ok(())
}
