//! What ipamd does to the node besides its ENIs: the readiness-gated CNI [`install`], node [`snat`] (nftables)
//! and the conntrack janitor ([`ctjanitor`]) that forgets released pod IPs' flows.
//!
//! May use: config, tasks.

pub mod ctjanitor;
pub mod install;
pub mod libnft;
pub mod snat;
