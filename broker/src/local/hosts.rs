//! Host records, heartbeats and hosts whose lease lapsed.

use super::*;

impl LocalBroker {
    pub(super) async fn add_host(&self, info: &HostInfo) -> Result<()> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.emit_host(&mut inner, "host_online", &info.id, None);
        inner.hosts.insert(
            info.id.clone(),
            HostRecord {
                info: info.clone(),
                stats: HostStats {
                    heartbeat_ms: now_ms(),
                    ..HostStats::default()
                },
                lease_until: now + self.config.lease,
            },
        );
        Ok(())
    }

    pub(super) async fn record_heartbeat(
        &self,
        host_id: &str,
        stats: &HostStats,
        running: &[Delivery],
    ) -> Result<Vec<String>> {
        let now = Instant::now();
        let mut inner = self.lock();
        let stats = HostStats {
            heartbeat_ms: now_ms(),
            ..stats.clone()
        };
        let lease_until = now + self.config.lease;
        match inner.hosts.get_mut(host_id) {
            Some(h) => {
                h.stats = stats;
                h.lease_until = lease_until;
            }
            None => {
                let info = HostInfo::unknown(host_id);
                inner.hosts.insert(
                    host_id.to_string(),
                    HostRecord {
                        info,
                        stats,
                        lease_until,
                    },
                );
            }
        }
        let mut lost = Vec::new();
        for d in running {
            let pending = d.entry_id.parse::<u64>().ok().and_then(|entry| {
                inner
                    .queues
                    .get_mut(&d.queue)
                    .and_then(|q| q.pending.get_mut(&entry))
            });
            match pending {
                Some(p) if p.consumer == host_id && p.deliveries == d.deliveries => p.touched = now,
                // Acknowledged: its result is out, nothing to keep fresh.
                None => {}
                Some(_) => {
                    tracing::warn!(host = host_id, entry = %d.entry_id,
                        "a running call was reclaimed by another host (this host's lease lapsed)");
                    lost.push(d.token.clone());
                }
            }
        }
        self.emit_host(&mut inner, "host_heartbeat", host_id, None);
        self.reap_hosts(&mut inner, now);
        Ok(lost)
    }

    pub(super) async fn remove_host(&self, host_id: &str) -> Result<()> {
        let mut inner = self.lock();
        if inner.hosts.remove(host_id).is_some() {
            self.emit_host(&mut inner, "host_offline", host_id, None);
        }
        Ok(())
    }

    pub(super) async fn list_hosts(&self) -> Result<Vec<(HostInfo, HostStats)>> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.reap_hosts(&mut inner, now);
        let mut out: Vec<(HostInfo, HostStats)> = inner
            .hosts
            .values()
            .map(|h| (h.info.clone(), h.stats.clone()))
            .collect();
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(out)
    }
}
