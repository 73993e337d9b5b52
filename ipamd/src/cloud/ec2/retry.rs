//! Which EC2 failures are worth another attempt, and how long to wait before it.
//!
//! Only throttling, server errors (5xx) and requests that got no answer are retried; everything else
//! (UnauthorizedOperation, InsufficientFreeAddressesInSubnet, AttachmentLimitExceeded, …) goes straight back
//! to the reconcile loop, which backs off as a whole. A request that got no answer may have been carried out,
//! so it is retried only for operations that are safe to repeat. Each attempt passes the EC2_API_QPS bucket
//! again (the SDK's own retries are off), so retries never push a node over its budget.

use std::time::Duration;

use backoff::{Backoff, Jitter};

use super::error::{Ec2Error, ErrorKind};

/// Attempts per call, the first included.
pub const MAX_ATTEMPTS: u32 = 5;
/// Full jitter from 250 ms doubling to 10 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10)).jitter(Jitter::Full);

/// Whether `op` may be sent again after `e` (the `attempt`-th try, counted from 1).
pub fn should_retry(op: &str, e: &Ec2Error, attempt: u32) -> bool {
    if attempt >= MAX_ATTEMPTS {
        return false;
    }
    match e.kind {
        ErrorKind::Throttled | ErrorKind::Server => true,
        // A create (ENI) or assign (by count) that may have happened would happen twice.
        ErrorKind::NoResponse => !matches!(op, "CreateNetworkInterface" | "AssignPrivateIpAddresses"),
        _ => false,
    }
}

/// The wait before attempt `attempt + 1`: uniform in [0, min(10 s, 250 ms × 2^attempt)].
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF.delay(attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str) -> Ec2Error {
        Ec2Error::new("DescribeNetworkInterfaces", code, "")
    }

    #[test]
    fn only_throttling_server_errors_and_lost_answers_are_retried() {
        let lost = Ec2Error::of_kind("DescribeNetworkInterfaces", ErrorKind::NoResponse, "Timeout", "");
        let http_5xx = Ec2Error::of_kind("DescribeNetworkInterfaces", ErrorKind::Server, "HTTP 502", "");
        assert!(should_retry("DescribeNetworkInterfaces", &lost, 1));
        assert!(should_retry("DescribeNetworkInterfaces", &http_5xx, 1));
        for code in ["RequestLimitExceeded", "InternalError", "ServiceUnavailable"] {
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
        let lost = |op| Ec2Error::of_kind(op, ErrorKind::NoResponse, "DispatchFailure", "");
        assert!(!should_retry("CreateNetworkInterface", &lost("CreateNetworkInterface"), 1));
        assert!(!should_retry("AssignPrivateIpAddresses", &lost("AssignPrivateIpAddresses"), 1));
        assert!(should_retry("CreateNetworkInterface", &err("RequestLimitExceeded"), 1), "throttled: not carried out");
        assert!(should_retry("DeleteNetworkInterface", &lost("DeleteNetworkInterface"), 1));
    }

    #[test]
    fn backoff_is_capped() {
        for attempt in 0..30 {
            for _ in 0..50 {
                assert!(backoff(attempt) <= Duration::from_secs(10));
            }
        }
    }
}
