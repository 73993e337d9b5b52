//! The AWS boundary: [`ec2`] (the EC2 API as a trait, its aws-sdk-ec2 implementation with typed errors, retries
//! and the EC2_API_QPS bucket, and an in-memory fake for tests), [`imds`] (the instance metadata service) and
//! [`imds_only`] (EC2's reads answered from IMDS, for ENABLE_IMDS_ONLY_MODE).
//!
//! May use: nothing else of ipamd (calls are reported to whoever implements [`ec2::CallMeter`]).

pub mod ec2;
pub mod imds;
pub mod imds_only;
