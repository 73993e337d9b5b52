//! The EC2 error and its [`ErrorKind`], classified once where an SDK error is converted (or where the fake
//! makes one): retries, Warning Events, the degraded state and the reconcile loop match on the kind, never on
//! code strings.

/// What kind of failure an EC2 answer (or the lack of one) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// EC2 throttled the request (RequestLimitExceeded and friends): nothing was done.
    Throttled,
    /// A server-side failure (5xx): nothing was done.
    Server,
    /// No answer (connection failed, timed out, unreadable answer): the request may have been carried out.
    NoResponse,
    /// The ENI, attachment, subnet or address named no longer exists (`*.NotFound`).
    NotFound,
    /// The resource is still in use (an ENI that is still detaching).
    InUse,
    /// The node's IAM role lacks the permission.
    Unauthorized,
    /// The subnet has no free addresses.
    InsufficientAddresses,
    /// The subnet has no free aligned /28 for a prefix.
    InsufficientCidrBlocks,
    /// An instance limit (ENIs attached, addresses per ENI).
    LimitExceeded,
    /// EC2 answered, but not in a form ipamd can use.
    BadResponse,
    /// Any other refusal of the request: repeating it would only repeat the refusal.
    Client,
}

impl ErrorKind {
    /// Classifies an EC2 error code (or the code ipamd gives an answer without one).
    pub fn of_code(code: &str) -> Self {
        match code {
            "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "RequestThrottled"
            | "EC2ThrottledException" => Self::Throttled,
            "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => Self::Server,
            "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" => Self::Unauthorized,
            "InsufficientFreeAddressesInSubnet" => Self::InsufficientAddresses,
            "InsufficientCidrBlocks" => Self::InsufficientCidrBlocks,
            "AttachmentLimitExceeded" | "PrivateIpAddressLimitExceeded" | "NetworkInterfaceLimitExceeded" => {
                Self::LimitExceeded
            }
            "BadResponse" => Self::BadResponse,
            c if c.ends_with("NotFound") => Self::NotFound,
            c if c.ends_with("InUse") => Self::InUse,
            _ => Self::Client,
        }
    }

    /// EC2 could not be reached or would not answer, as opposed to refusing the request: ipamd serves degraded
    /// from what it knows, and the request is worth another attempt.
    pub fn unreachable(self) -> bool {
        matches!(self, Self::Throttled | Self::Server | Self::NoResponse)
    }
}

/// A failed EC2 call: the operation, its kind, and EC2's own code and message (shown to operators as is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("EC2 {op}: {code}: {message}")]
pub struct Ec2Error {
    pub op: &'static str,
    pub kind: ErrorKind,
    pub code: String,
    pub message: String,
}

impl Ec2Error {
    /// An error carrying EC2's `code`, classified from it.
    pub fn new(op: &'static str, code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        Self { op, kind: ErrorKind::of_code(&code), code, message: message.into() }
    }

    /// An error whose kind is known without a code from EC2 (no answer, a 5xx without a body, a bad answer).
    pub fn of_kind(op: &'static str, kind: ErrorKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { op, kind, code: code.into(), message: message.into() }
    }

    pub fn bad_response(op: &'static str, message: impl Into<String>) -> Self {
        Self::of_kind(op, ErrorKind::BadResponse, "BadResponse", message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_once() {
        for (code, kind) in [
            ("RequestLimitExceeded", ErrorKind::Throttled),
            ("InternalError", ErrorKind::Server),
            ("UnauthorizedOperation", ErrorKind::Unauthorized),
            ("InsufficientFreeAddressesInSubnet", ErrorKind::InsufficientAddresses),
            ("InsufficientCidrBlocks", ErrorKind::InsufficientCidrBlocks),
            ("AttachmentLimitExceeded", ErrorKind::LimitExceeded),
            ("InvalidNetworkInterfaceID.NotFound", ErrorKind::NotFound),
            ("InvalidAttachmentID.NotFound", ErrorKind::NotFound),
            ("InvalidNetworkInterface.InUse", ErrorKind::InUse),
            ("InvalidParameterValue", ErrorKind::Client),
        ] {
            assert_eq!(Ec2Error::new("Op", code, "").kind, kind, "{code}");
        }
        assert!(ErrorKind::NoResponse.unreachable() && ErrorKind::Throttled.unreachable());
        assert!(!ErrorKind::Unauthorized.unreachable() && !ErrorKind::NotFound.unreachable());
    }
}
