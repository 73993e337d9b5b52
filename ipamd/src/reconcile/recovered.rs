//! Allocations rebuilt from host state after a corrupt checkpoint was moved aside (see
//! [`crate::state::datastore::RECOVERED_NETWORK`]): each holds its IP until the host no longer routes it to a pod
//! veth — the runtime has deleted that pod's namespace — and is then released. Until then the IP can go to no
//! other pod.

use super::Reconciler;
use crate::cloud::ec2::Ec2Api;
use crate::cloud::imds::Metadata;
use crate::state::datastore::RECOVERED_NETWORK;
use datapath::HostNet;

impl<E: Ec2Api, M: Metadata, N: HostNet> Reconciler<E, M, N> {
    pub(super) async fn release_recovered(&mut self) {
        let Some(net) = self.hostnet.clone() else { return };
        let Ok(snapshot) = self.pool.snapshot().await else { return };
        let recovered: Vec<_> =
            snapshot.ds.allocations.iter().filter(|(k, _)| k.network_name == RECOVERED_NETWORK).collect();
        if recovered.is_empty() {
            self.settings.recovered = false;
            return;
        }
        let Ok(live) = datapath::pod_ips(net.as_ref(), &self.settings.veth_prefix).await else { return };
        for (key, a) in recovered {
            if live.iter().any(|(ip, _)| *ip == a.ip) {
                continue;
            }
            if let Ok(Some(_)) = self.pool.del(key.clone()).await {
                self.pool
                    .emit("recovered-released", format!("{} (rebuilt from host state): its pod's route is gone", a.ip));
            }
        }
    }
}
