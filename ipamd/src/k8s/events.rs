//! Kubernetes Events (events.k8s.io/v1, reporting controller `vpc-cni`). Recording never waits: a note goes
//! into a bounded queue (a full queue drops it) and one task sends them; the same note about the same object
//! is sent at most once per [`REPEAT_WINDOW`], so a failing reconcile loop cannot flood the API server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::{mpsc, watch as chan};

use super::KubeView;
use crate::cloud::ec2::{Ec2Error, ErrorKind};
use crate::tasks::Tasks;

pub const REPORTING_CONTROLLER: &str = "vpc-cni";
pub const NODE_EVENTS_NAMESPACE: &str = "kube-system";
/// The same event is not repeated within this window.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(600);
const QUEUE: usize = 64;

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Regarding {
    /// This node. Events about a cluster-scoped object go to `kube-system`: the only namespace every API server
    /// accepts for them with an eventTime (1.20 refuses `default`); `kubectl describe node` searches them all.
    Node,
    Pod {
        namespace: String,
        name: String,
        uid: String,
    },
    NetworkPolicy {
        namespace: String,
        name: String,
        uid: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Note {
    pub warning: bool,
    /// CamelCase, e.g. `MissingIAMPermissions`.
    pub reason: &'static str,
    /// What ipamd was doing, e.g. `CreateENI`.
    pub action: &'static str,
    pub note: String,
    pub regarding: Regarding,
}

/// Cloneable sender of notes.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Note>>,
}

impl Recorder {
    /// Records nothing (no API server in use).
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    pub fn record(&self, note: Note) {
        if let Some(tx) = &self.tx
            && tx.try_send(note).is_err()
        {
            tracing::debug!("event queue full or closed; event dropped");
        }
    }

    pub fn warning(&self, reason: &'static str, action: &'static str, note: String) {
        self.record(Note { warning: true, reason, action, note, regarding: Regarding::Node });
    }

    pub fn normal(&self, reason: &'static str, action: &'static str, note: String) {
        self.record(Note { warning: false, reason, action, note, regarding: Regarding::Node });
    }
}

/// The Warning an EC2 error deserves, if any: missing IAM permissions (named as the policy action, as
/// aws-vpc-cni does) and an exhausted subnet are things an operator must fix; throttling is not.
pub fn for_ec2_error(e: &Ec2Error) -> Option<(&'static str, String)> {
    match e.kind {
        ErrorKind::Unauthorized => Some((
            "MissingIAMPermissions",
            format!(
                "ec2:{} is not allowed for this node's IAM role ({}): add it to the role's policy (docs/iam-policy.json)",
                e.op, e.code
            ),
        )),
        ErrorKind::InsufficientAddresses => {
            Some(("SubnetExhausted", format!("ec2:{} failed: the subnet has no free addresses: {}", e.op, e.message)))
        }
        _ => None,
    }
}

/// Starts the sender task.
pub fn spawn(
    client: chan::Receiver<Option<Client>>,
    view: chan::Receiver<KubeView>,
    node_name: String,
    instance: String,
    tasks: &Tasks,
) -> Recorder {
    let (tx, rx) = mpsc::channel(QUEUE);
    tasks.spawn_loop("kube events", send_loop(rx, client, view, node_name, instance));
    Recorder { tx: Some(tx) }
}

async fn send_loop(
    mut rx: mpsc::Receiver<Note>,
    mut client: chan::Receiver<Option<Client>>,
    view: chan::Receiver<KubeView>,
    node_name: String,
    instance: String,
) {
    let mut sent: HashMap<Note, Instant> = HashMap::new();
    while let Some(note) = rx.recv().await {
        if sent.get(&note).is_some_and(|t| t.elapsed() < REPEAT_WINDOW) {
            continue;
        }
        let c = match client.wait_for(Option::is_some).await {
            Ok(c) => c.clone(),
            Err(_) => return,
        };
        let Some(c) = c else { continue };
        let node_uid = view.borrow().node.items.get(&node_name).map(|n| n.uid.clone());
        let event = build(&note, &node_name, node_uid, &instance);
        let ns = event.metadata.namespace.clone().unwrap_or_default();
        match Api::<Event>::namespaced(c, &ns).create(&PostParams::default(), &event).await {
            Ok(_) => {
                tracing::info!(reason = note.reason, "event recorded: {}", note.note);
                sent.retain(|_, t| t.elapsed() < REPEAT_WINDOW);
                sent.insert(note, Instant::now());
            }
            Err(e) => tracing::warn!(reason = note.reason, "recording an event: {e}"),
        }
    }
}

fn build(note: &Note, node_name: &str, node_uid: Option<String>, instance: &str) -> Event {
    let (namespace, regarding) = match &note.regarding {
        Regarding::Node => (
            NODE_EVENTS_NAMESPACE.to_string(),
            ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node_name.to_string()),
                uid: node_uid,
                ..Default::default()
            },
        ),
        Regarding::Pod { namespace, name, uid } => namespaced("v1", "Pod", namespace, name, uid),
        Regarding::NetworkPolicy { namespace, name, uid } => {
            namespaced("networking.k8s.io/v1", "NetworkPolicy", namespace, name, uid)
        }
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let subject = regarding.name.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{subject}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(if note.warning { "Warning" } else { "Normal" }.into()),
        reason: Some(note.reason.into()),
        action: Some(note.action.into()),
        // The API server caps notes at 1 kB.
        note: Some(truncate(&note.note, 1000)),
        regarding: Some(regarding),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(truncate(instance, 128)),
        ..Default::default()
    }
}

/// (the event's namespace, the reference) for a namespaced object.
fn namespaced(api_version: &str, kind: &str, namespace: &str, name: &str, uid: &str) -> (String, ObjectReference) {
    let reference = ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        uid: (!uid.is_empty()).then(|| uid.to_string()),
        ..Default::default()
    };
    (namespace.to_string(), reference)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let cut = (0..=max - 3).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    format!("{}…", &s[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iam_errors_name_the_action_and_throttling_is_quiet() {
        let e = Ec2Error::new("CreateNetworkInterface", "UnauthorizedOperation", "no");
        let (reason, note) = for_ec2_error(&e).unwrap();
        assert_eq!(reason, "MissingIAMPermissions");
        assert!(note.contains("ec2:CreateNetworkInterface"), "{note}");
        let t = Ec2Error::new("AssignPrivateIpAddresses", "RequestLimitExceeded", "");
        assert!(for_ec2_error(&t).is_none());
    }

    #[test]
    fn node_events_live_in_kube_system_and_pod_events_with_their_pod() {
        let n = Note { warning: true, reason: "R", action: "A", note: "x".repeat(2000), regarding: Regarding::Node };
        let e = build(&n, "node-1", Some("u".into()), "vpc-cni-abcde");
        assert_eq!(e.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert!(e.note.unwrap().len() <= 1000);
        let p =
            Note { regarding: Regarding::Pod { namespace: "web".into(), name: "p".into(), uid: String::new() }, ..n };
        let e = build(&p, "node-1", None, "i");
        assert_eq!(e.metadata.namespace.as_deref(), Some("web"));
        assert_eq!(e.regarding.unwrap().uid, None);
        let np = Note {
            regarding: Regarding::NetworkPolicy { namespace: "db".into(), name: "p".into(), uid: "u1".into() },
            ..p
        };
        let e = build(&np, "node-1", None, "i");
        let r = e.regarding.unwrap();
        assert_eq!((e.metadata.namespace.as_deref(), r.kind.as_deref()), (Some("db"), Some("NetworkPolicy")));
        assert_eq!((r.api_version.as_deref(), r.uid.as_deref()), (Some("networking.k8s.io/v1"), Some("u1")));
    }
}
