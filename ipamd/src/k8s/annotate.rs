//! ANNOTATE_POD_IP: the pod's `vpc.amazonaws.com/pod-ips` annotation carries the IP ipamd gave it, for tools that
//! read a pod's IP before the kubelet reports it (as aws-vpc-cni does). Set on ADD with a merge patch within
//! [`PATCH_TIMEOUT`] (the ADD waits: a pod whose annotation is missing would be read as having no IP); emptied on
//! DEL with a JSON patch that first tests the value is still the released IP, so a newer ADD's value is never
//! wiped.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};

use super::Kube;

/// The annotation aws-vpc-cni writes.
pub const POD_IPS: &str = "vpc.amazonaws.com/pod-ips";
/// Longest an ADD waits for its patch.
pub const PATCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The merge patch that sets the annotation to `ip`.
pub fn set_patch(ip: Ipv4Addr) -> serde_json::Value {
    serde_json::json!({ "metadata": { "annotations": { POD_IPS: ip.to_string() } } })
}

/// The JSON patch that empties the annotation only while it still says `ip`.
pub fn clear_patch(ip: Ipv4Addr) -> serde_json::Value {
    // JSON pointer: '/' in a key is written '~1'.
    let path = format!("/metadata/annotations/{}", POD_IPS.replace('~', "~0").replace('/', "~1"));
    serde_json::json!([
        { "op": "test", "path": path, "value": ip.to_string() },
        { "op": "replace", "path": path, "value": "" },
    ])
}

impl Kube {
    /// Sets `namespace/name`'s annotation to `ip` (within [`PATCH_TIMEOUT`]); the error says why not.
    pub async fn annotate_pod_ip(&self, namespace: &str, name: &str, ip: Ipv4Addr) -> Result<(), String> {
        let client = self.client.borrow().clone().ok_or("the Kubernetes API is not connected yet")?;
        let pods = kube::Api::<Pod>::namespaced(client, namespace);
        let patch = Patch::Merge(set_patch(ip));
        match tokio::time::timeout(PATCH_TIMEOUT, pods.patch(name, &PatchParams::default(), &patch)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("patching pod {namespace}/{name}: {e}")),
            Err(_) => Err(format!("patching pod {namespace}/{name}: no answer in {PATCH_TIMEOUT:?}")),
        }
    }

    /// Empties `namespace/name`'s annotation if it still says `ip`, in the background (a DEL never waits on the
    /// API server); a failure is logged.
    pub fn clear_pod_ip(&self, namespace: String, name: String, ip: Ipv4Addr) {
        let Some(client) = self.client.borrow().clone() else { return };
        tokio::spawn(async move {
            let pods = kube::Api::<Pod>::namespaced(client, &namespace);
            let patch: json_patch::Patch = match serde_json::from_value(clear_patch(ip)) {
                Ok(p) => p,
                Err(e) => return tracing::warn!("{POD_IPS}: {e}"),
            };
            let (params, patch) = (PatchParams::default(), Patch::<()>::Json(patch));
            match tokio::time::timeout(PATCH_TIMEOUT * 10, pods.patch(&name, &params, &patch)).await {
                Ok(Ok(_)) => {}
                // 422: the test failed (a newer value) or the pod has no such annotation; 404: the pod is gone.
                Ok(Err(kube::Error::Api(e))) if e.code == 422 || e.code == 404 => {}
                Ok(Err(e)) => tracing::warn!("{POD_IPS} of {namespace}/{name} not emptied: {e}"),
                Err(_) => tracing::warn!("{POD_IPS} of {namespace}/{name} not emptied: no answer"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patches_name_the_annotation_as_the_api_reads_it() {
        let ip: Ipv4Addr = "10.0.1.7".parse().unwrap();
        assert_eq!(set_patch(ip)["metadata"]["annotations"]["vpc.amazonaws.com/pod-ips"], "10.0.1.7");
        let clear = clear_patch(ip);
        assert_eq!(clear[0]["op"], "test");
        assert_eq!(clear[0]["path"], "/metadata/annotations/vpc.amazonaws.com~1pod-ips");
        assert_eq!(clear[0]["value"], "10.0.1.7");
        assert_eq!(clear[1]["op"], "replace");
    }
}
