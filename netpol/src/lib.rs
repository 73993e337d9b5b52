//! Kubernetes NetworkPolicy (networking.k8s.io/v1, IPv4) for vpc-cni, with no I/O:
//!
//! * [`model`]: the policies and the cluster they are judged against;
//! * [`selector`]: label selectors;
//! * [`eval`]: the reference semantics, flow by flow, with reasons (what `vpcctl policy explain` prints);
//! * [`mod@compile`]: the shape of the nftables table, and an interpreter of it that the tests hold
//!   to the reference semantics;
//! * [`mod@render`]: that shape as an nft script;
//! * [`mod@delta`]: the element changes from one such table to the next, when only pods changed.
//!
//! The daemon gathers the state, calls [`compile()`] then [`render()`] and loads the script; none of
//! that I/O is here.

pub mod compile;
pub mod delta;
pub mod eval;
pub mod model;
mod ranges;
pub mod render;
pub mod selector;

pub use compile::{Chain, ChainRule, Compiled, Hook, PeerSet, Ports, compile};
pub use delta::{Delta, Maps, delta};
pub use eval::{Decision, Side, evaluate};
pub use model::{
    Cluster, Direction, Endpoint, Flow, Peer, PodInfo, Policy, PolicyTypes, PortRef, PortSpec, Proto, Rule,
};
pub use render::{TABLE, render};
pub use selector::{LabelSelector, Labels, Operator, Requirement};
