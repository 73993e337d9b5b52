//! vpc-sim: local VPC emulation for tests and the demo — LocalStack EC2 fixtures, an IMDSv2 emulator, and a
//! harness that runs the real ipamd binary. The integration suites live in `tests/tests/`.

pub mod fixture;
pub mod imds;
pub mod ipamd_proc;
pub mod localstack;
pub mod mac;
pub mod netns;
pub mod sim;
pub mod testkit;
