//! `demo worker`: serves step requests from the queue until it is stopped.

use anyhow::bail;
use typed_saga::amqp::redact_url;

use crate::cli::{Broker, Settings};
use crate::saga_log::print_stdout;
use crate::transport::{count_consumers, open_worker, start_consumer};

/// Consumes `settings.queue` with a worker on `settings.data_dir` until
/// Ctrl-C or SIGTERM, then lets the running requests finish.
///
/// # Errors
///
/// When `--broker in-process` is given, the databases cannot be opened, or
/// RabbitMQ is unreachable. The last message names the URL with its
/// password hidden and the command that starts RabbitMQ.
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    if settings.broker == Broker::InProcess {
        bail!(
            "`demo worker` serves a RabbitMQ queue, so --broker in-process does not apply; \
             run `demo provision --broker in-process` to use the worker without a broker"
        );
    }
    let url = redact_url(&settings.amqp_url);

    // Several workers may share a queue to scale out, but only on one data
    // directory, and the broker cannot tell which directory each one uses.
    // Best effort: when the broker is unreachable, starting the consumer
    // below reports it with the command that starts RabbitMQ.
    if let Ok(others) = count_consumers(settings).await
        && others > 0
    {
        eprintln!(
            "note: queue `{}` already has {others} consumer(s); every worker on it must use the \
             same data directory as this one, {}, or one user's rows end up split between \
             directories",
            settings.queue,
            settings.data_dir.display()
        );
    }
    let worker = open_worker(settings).await?;
    let consumer = start_consumer(settings, worker).await?;
    print_stdout(format_args!(
        "worker consuming queue `{}` at {url} with databases in {}; press Ctrl-C to stop",
        settings.queue,
        settings.data_dir.display()
    ));

    let signal = stop_signal().await;
    print_stdout(format_args!(
        "{signal}: stopping after the running requests are answered"
    ));
    consumer.shutdown().await;
    Ok(())
}

/// Waits for Ctrl-C, or on Unix for SIGTERM too, and returns its name.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};

        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = terminate.recv() => "terminated",
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stop the worker with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
                "interrupted"
            }
        }
    }

    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted"
    }
}
