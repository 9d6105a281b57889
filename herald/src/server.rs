//! Running the HTTP server: bind, serve, and shut down gracefully.
//!
//! [`shutdown_channel`] turns SIGINT or SIGTERM into a `watch` flag every part of the process
//! waits on. When it flips, the server marks itself as draining (readiness turns 503), stops
//! accepting connections, and gives in-flight requests up to the configured timeout to
//! finish before it returns anyway.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use herald_telemetry::Health;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Binds `addr`, with an error that says what to do when it is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}; is another process (perhaps another herald) using it? Choose another address")
    })
}

/// A flag that becomes `true` on SIGINT or SIGTERM.
pub fn shutdown_channel() -> watch::Receiver<bool> {
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = sender.send(true);
    });
    receiver
}

/// Resolves once `shutdown` is (or becomes) true, or its sender is gone.
pub async fn until_shutdown(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Serves `app` on `listener` until `shutdown`, then drains for at most `shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    health: Health,
    shutdown_timeout: Duration,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let signalled = shutdown.clone();
    let graceful = async move {
        until_shutdown(signalled).await;
        health.drain();
        tracing::info!(
            timeout_s = shutdown_timeout.as_secs_f64(),
            "finishing in-flight requests"
        );
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
    let deadline = async move {
        until_shutdown(shutdown).await;
        tokio::time::sleep(shutdown_timeout).await;
    };
    tokio::select! {
        result = server => {
            result.context("the HTTP server failed")?;
            tracing::info!("HTTP server stopped");
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
