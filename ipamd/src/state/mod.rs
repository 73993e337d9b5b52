//! The node's address book and how it survives: the [`datastore`] (ENIs, their IPs and each IP's state, pod
//! allocations), the [`checkpoint`] file that holds it across restarts (checked on load), and [`migrate`], the
//! one-time import of aws-node's checkpoint.
//!
//! May use: planner (the views the datastore hands it), cloud (the node facts saved in the checkpoint), clock
//! (deadlines and ages).

pub mod checkpoint;
pub mod datastore;
pub mod file;
pub mod migrate;
