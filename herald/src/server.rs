//! Running the HTTP server: bind, say where, serve, and shut down gracefully.
//!
//! On SIGINT or SIGTERM the server marks itself as draining (readiness turns 503), stops
//! accepting connections, and gives in-flight requests up to the configured timeout to
//! finish before the process exits anyway.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use herald_telemetry::Health;
use tokio::net::TcpListener;

/// Binds `addr`, with an error that says what to do when it is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}; is another process (perhaps another herald) using it? Choose another address")
    })
}

/// Serves `app` on `listener` until a shutdown signal, then drains for at most
/// `shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    health: Health,
    shutdown_timeout: Duration,
) -> anyhow::Result<()> {
    let (signalled_tx, mut signalled_rx) = tokio::sync::watch::channel(false);
    let drain_health = health.clone();
    let graceful = async move {
        shutdown_signal().await;
        drain_health.drain();
        tracing::info!(
            timeout_s = shutdown_timeout.as_secs_f64(),
            "shutting down: finishing in-flight requests"
        );
        let _ = signalled_tx.send(true);
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
    let deadline = async move {
        let _ = signalled_rx.wait_for(|signalled| *signalled).await;
        tokio::time::sleep(shutdown_timeout).await;
    };
    tokio::select! {
        result = server => {
            result.context("the HTTP server failed")?;
            tracing::info!("stopped");
        }
        () = deadline => {
            tracing::warn!("in-flight requests did not finish within the shutdown timeout; stopping anyway");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
