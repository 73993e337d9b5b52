//! vpc-sim: local VPC emulation for tests and the demo — LocalStack EC2 fixtures, an IMDSv2 emulator, and a
//! harness that runs the real ipamd binary, a real Kubernetes API server (`kubeapi`) and an EC2 fault proxy. The integration suites live in `tests/tests/`.

pub mod bench;
pub mod cni_exec;
pub mod ec2faults;
pub mod ec2prefix;
pub mod fixture;
pub mod imds;
pub mod ipamd_proc;
pub mod kubeapi;
pub mod localstack;
pub mod mac;
pub mod netns;
pub mod sim;
pub mod testkit;
