//! The tasks beside the claim loop of a [`Worker`](super::Worker):
//! publishing results in batches, heartbeats, revocation checks.

use super::*;

/// Publishes finished envelopes in batches: one `complete` for everything
/// that finished since the last one. Transient errors (Redis away) are
/// retried until they pass; a permanent one (the broker refuses the batch)
/// is retried call by call, and a call the broker still refuses is dropped
/// from the running set, counted and logged: heartbeats stop keeping its
/// entry fresh, so it is redelivered after the lease, up to the delivery
/// limit, rather than retried here forever.
pub(super) async fn publish_loop<B: Broker>(
    broker: Arc<B>,
    mut rx: mpsc::UnboundedReceiver<(Delivery, Envelope)>,
    running: Arc<Mutex<HashMap<String, Running>>>,
    stats: Arc<WorkerStats>,
) {
    const MAX_BATCH: usize = 256;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Err(e) = publish(&*broker, &batch, &stats).await {
            if batch.len() == 1 {
                refused(&batch[0].0, &e, &stats);
            } else {
                for one in batch.chunks(1) {
                    if let Err(e) = publish(&*broker, one, &stats).await {
                        refused(&one[0].0, &e, &stats);
                    }
                }
            }
        }
        let mut r = lock(&running);
        for (d, _) in batch.drain(..) {
            r.remove(&d.token);
        }
    }
}

/// One `complete`, retried while the error is transient.
async fn publish<B: Broker>(
    broker: &B,
    batch: &[(Delivery, Envelope)],
    stats: &WorkerStats,
) -> wasq_broker::Result<()> {
    let mut backoff = Backoff::new();
    loop {
        match broker.complete(batch).await {
            Ok(accepted) => {
                for ((d, _), ok) in batch.iter().zip(accepted) {
                    if !ok {
                        debug!(call_id = %d.call.id, "result not accepted (stale delivery or already final)");
                    }
                }
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                stats.broker_errors.fetch_add(1, Ordering::Relaxed);
                let wait = backoff.next();
                warn!(cause = %e, calls = batch.len(), retry_in = ?wait, "cannot publish results; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn refused(delivery: &Delivery, cause: &wasq_broker::Error, stats: &WorkerStats) {
    stats.unpublished.fetch_add(1, Ordering::Relaxed);
    error!(call_id = %delivery.call.id, cause = %cause,
        "the broker refused this call's result; leaving the call for redelivery");
}

/// Renews the lease and keeps running entries fresh, on its own timer: no
/// other work shares this task, so nothing delays a heartbeat past the
/// lease. Calls the broker says another host reclaimed are interrupted and
/// forgotten here (their results would be refused anyway).
pub(super) async fn heartbeat_loop<B: Broker>(
    broker: Arc<B>,
    config: WorkerConfig,
    stats: Arc<WorkerStats>,
    running: Arc<Mutex<HashMap<String, Running>>>,
) {
    let mut beat = tokio::time::interval(config.heartbeat.max(Duration::from_millis(10)));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.tick().await;
        let deliveries: Vec<Delivery> = lock(&running)
            .values()
            .map(|r| r.delivery.clone())
            .collect();
        // A heartbeat that hangs (a half-open link) must not hold the next
        // one back: give it at most one interval.
        let sent = tokio::time::timeout(
            config.heartbeat.max(Duration::from_millis(10)),
            broker.heartbeat(&config.host_id, &stats.snapshot(), &deliveries),
        )
        .await;
        match sent {
            Ok(Ok(lost)) => {
                stats.last_broker_ok_ms.store(now_ms(), Ordering::Relaxed);
                if !lost.is_empty() {
                    let mut running = lock(&running);
                    for token in &lost {
                        // A finished call's envelope is with the publisher,
                        // whose complete will be refused: nothing to stop.
                        if let Some(r) = running.get(token)
                            && !r.finished
                        {
                            warn!(call_id = %r.delivery.call.id, "call reclaimed by another host; interrupting it here");
                            r.cancel.cancel();
                            running.remove(token);
                            stats.reclaimed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                stats.broker_errors.fetch_add(1, Ordering::Relaxed);
                warn!(cause = %e, "heartbeat failed");
            }
            Err(_) => {
                stats.broker_errors.fetch_add(1, Ordering::Relaxed);
                warn!("heartbeat timed out");
            }
        }
    }
}

/// Checks running calls for revocation, all in one round trip per interval,
/// and interrupts the revoked ones.
pub(super) async fn revoke_loop<B: Broker>(
    broker: Arc<B>,
    config: WorkerConfig,
    running: Arc<Mutex<HashMap<String, Running>>>,
) {
    let mut revoke = tokio::time::interval(config.revoke_check.max(Duration::from_millis(10)));
    revoke.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        revoke.tick().await;
        let (ids, cancels): (Vec<String>, Vec<Cancel>) = lock(&running)
            .values()
            // Short calls finish before a check would matter; only calls
            // running longer than one interval are checked.
            .filter(|r| {
                !r.finished && !r.cancel.is_cancelled() && r.since.elapsed() >= config.revoke_check
            })
            .map(|r| (r.delivery.call.id.clone(), r.cancel.clone()))
            .unzip();
        if ids.is_empty() {
            continue;
        }
        match broker.revoked_many(&ids).await {
            Ok(revoked) => {
                for ((id, cancel), revoked) in ids.iter().zip(&cancels).zip(revoked) {
                    if revoked {
                        info!(call_id = %id, "revoked while running; interrupting");
                        cancel.cancel();
                    }
                }
            }
            Err(e) => debug!(cause = %e, "cannot check running calls for revocation"),
        }
    }
}
