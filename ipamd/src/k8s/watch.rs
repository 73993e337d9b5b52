//! One reflector loop per watched collection: list + watch through kube's watcher (with its backoff), kept as
//! a small map of the fields ipamd uses, and a `synced` flag that is true only between a completed list (or a
//! resumed stream delivering again) and the next error — so nothing acts on a cache it cannot trust.

use std::collections::BTreeMap;
use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::watch as chan;

use super::{Feed, KubeView, NodeFacts, PodFacts};

/// Follows `api` (restricted by `field_selector` when not empty) into the feed `pick` selects, forever.
pub async fn follow<K, T>(
    api: kube::Api<K>,
    field_selector: String,
    view: chan::Sender<KubeView>,
    pick: fn(&mut KubeView) -> &mut Feed<T>,
    convert: fn(&K) -> (String, T),
) where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Clone,
{
    let mut config = watcher::Config::default();
    if !field_selector.is_empty() {
        config = config.fields(&field_selector);
    }
    let kind = K::kind(&()).to_string();
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    let mut buffer: BTreeMap<String, T> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => buffer.clear(),
            Ok(watcher::Event::InitApply(o)) => {
                let (k, v) = convert(&o);
                buffer.insert(k, v);
            }
            Ok(watcher::Event::InitDone) => {
                let items = std::mem::take(&mut buffer);
                tracing::debug!(kind, count = items.len(), "listed");
                view.send_modify(|v| {
                    let f = pick(v);
                    f.items = items;
                    f.synced = true;
                    f.error.clear();
                });
            }
            Ok(watcher::Event::Apply(o)) => live(&view, pick, convert(&o), false),
            Ok(watcher::Event::Delete(o)) => live(&view, pick, convert(&o), true),
            Err(e) => {
                tracing::warn!(kind, "watch: {e}");
                view.send_modify(|v| {
                    let f = pick(v);
                    f.synced = false;
                    f.error = error_text(&e);
                });
            }
        }
    }
}

/// A live change. It is also the first sign that a resumed watch delivers again, so the feed is current.
fn live<T>(view: &chan::Sender<KubeView>, pick: fn(&mut KubeView) -> &mut Feed<T>, (k, t): (String, T), deleted: bool) {
    view.send_modify(|v| {
        let f = pick(v);
        if deleted {
            f.items.remove(&k);
        } else {
            f.items.insert(k, t);
        }
        f.synced = true;
        f.error.clear();
    });
}

/// The watcher's error with the API server's reason (e.g. "forbidden: … cannot list resource \"pods\"").
fn error_text(e: &watcher::Error) -> String {
    let mut out = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

pub fn node_facts(n: &Node) -> (String, NodeFacts) {
    let capacity_pods = n
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("pods"))
        .and_then(|q| q.0.parse::<u32>().ok());
    let m = &n.metadata;
    (
        m.name.clone().unwrap_or_default(),
        NodeFacts {
            uid: m.uid.clone().unwrap_or_default(),
            labels: m.labels.clone().unwrap_or_default(),
            annotations: m.annotations.clone().unwrap_or_default(),
            capacity_pods,
            unschedulable: n.spec.as_ref().is_some_and(|s| {
                s.unschedulable == Some(true)
                    || s.taints.iter().flatten().any(|t| t.key == "node.kubernetes.io/unschedulable")
            }),
        },
    )
}

pub fn pod_facts(p: &Pod) -> (String, PodFacts) {
    let m = &p.metadata;
    let status = p.status.as_ref();
    (
        format!("{}/{}", m.namespace.as_deref().unwrap_or_default(), m.name.as_deref().unwrap_or_default()),
        PodFacts {
            uid: m.uid.clone().unwrap_or_default(),
            phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
            host_network: p.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false),
            ip: status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()),
        },
    )
}

pub fn policy_facts(np: &k8s_openapi::api::networking::v1::NetworkPolicy) -> (String, super::policies::Converted) {
    let c = super::policies::policy(np);
    (c.policy.key(), c)
}

pub fn cluster_pod_facts(p: &Pod) -> (String, netpol::PodInfo) {
    let info = super::policies::pod(p);
    (info.key(), info)
}
