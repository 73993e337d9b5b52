//! Which EC2 failures are worth another attempt, and how long to wait before it.
//!
//! Only throttling, server errors (5xx) and requests that got no answer are retried; everything else
//! (UnauthorizedOperation, InsufficientFreeAddressesInSubnet, AttachmentLimitExceeded, …) goes straight back
//! to the reconcile loop, which backs off as a whole. A request that got no answer may have been carried out,
//! so it is retried only for operations that are safe to repeat. Each attempt passes the EC2_API_QPS bucket
//! again (the SDK's own retries are off), so retries never push a node over its budget.

use std::time::Duration;

use crate::ec2::Ec2Error;

/// Attempts per call, the first included.
pub const MAX_ATTEMPTS: u32 = 5;
const BASE: Duration = Duration::from_millis(250);
const CAP: Duration = Duration::from_secs(10);

/// Codes EC2 uses when it throttles.
const THROTTLE_CODES: &[&str] =
    &["RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled", "EC2ThrottledException"];
/// Codes of server-side failures.
const SERVER_CODES: &[&str] = &["InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"];
/// Codes ipamd gives requests that got no answer (see `ec2::sdk_err`).
pub const NO_RESPONSE_CODES: &[&str] = &["DispatchFailure", "Timeout", "ResponseError"];
/// Prefix of the code given to a 5xx answer that carried no EC2 error code.
pub const HTTP_5XX: &str = "HTTP5xx";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Throttled,
    Server,
    NoResponse,
    /// Anything else: retrying would only repeat it.
    Final,
}

pub fn classify(e: &Ec2Error) -> Failure {
    let code = e.code.as_str();
    if THROTTLE_CODES.contains(&code) {
        Failure::Throttled
    } else if SERVER_CODES.contains(&code) || code.starts_with(HTTP_5XX) {
        Failure::Server
    } else if NO_RESPONSE_CODES.contains(&code) {
        Failure::NoResponse
    } else {
        Failure::Final
    }
}

/// Whether `op` may be sent again after `e` (the `attempt`-th try, counted from 1).
pub fn should_retry(op: &str, e: &Ec2Error, attempt: u32) -> bool {
    if attempt >= MAX_ATTEMPTS {
        return false;
    }
    match classify(e) {
        Failure::Throttled | Failure::Server => true,
        // A create (ENI) or assign (by count) that may have happened would happen twice.
        Failure::NoResponse => !matches!(op, "CreateNetworkInterface" | "AssignPrivateIpAddresses"),
        Failure::Final => false,
    }
}

/// "Full jitter" backoff before attempt `attempt + 1`: uniform in [0, min(CAP, BASE × 2^attempt)].
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = BASE.saturating_mul(1 << attempt.min(16)).min(CAP);
    ceiling.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str) -> Ec2Error {
        Ec2Error { op: "DescribeNetworkInterfaces", code: code.into(), message: String::new() }
    }

    #[test]
    fn only_throttling_server_errors_and_lost_answers_are_retried() {
        for code in ["RequestLimitExceeded", "InternalError", "HTTP5xx 502", "ServiceUnavailable", "Timeout"] {
            assert!(should_retry("DescribeNetworkInterfaces", &err(code), 1), "{code}");
        }
        for code in [
            "UnauthorizedOperation",
            "InsufficientFreeAddressesInSubnet",
            "AttachmentLimitExceeded",
            "PrivateIpAddressLimitExceeded",
            "InvalidParameterValue",
        ] {
            assert!(!should_retry("DescribeNetworkInterfaces", &err(code), 1), "{code}");
        }
        assert!(!should_retry("DescribeNetworkInterfaces", &err("RequestLimitExceeded"), MAX_ATTEMPTS));
    }

    #[test]
    fn a_lost_answer_is_not_retried_where_repeating_would_double_the_effect() {
        assert!(!should_retry("CreateNetworkInterface", &err("DispatchFailure"), 1));
        assert!(!should_retry("AssignPrivateIpAddresses", &err("Timeout"), 1));
        assert!(should_retry("CreateNetworkInterface", &err("RequestLimitExceeded"), 1), "throttled: not carried out");
        assert!(should_retry("DeleteNetworkInterface", &err("DispatchFailure"), 1));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..30 {
            let ceiling = BASE.saturating_mul(1 << attempt.min(16)).min(CAP);
            for _ in 0..50 {
                assert!(backoff(attempt) <= ceiling);
            }
        }
        assert_eq!(BASE.saturating_mul(1 << 16).min(CAP), CAP);
    }
}
