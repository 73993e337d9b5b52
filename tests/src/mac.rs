//! Valid MACs for LocalStack ENIs. LocalStack returns malformed MacAddress values, so the IMDS emulator (and
//! later the node links vpc-sim creates) use a locally administered unicast MAC derived from the ENI id.

/// `02:` + five bytes from the ENI id's trailing hex digits (an FNV-1a hash when the id is not hex).
pub fn mac_for_eni(eni_id: &str) -> String {
    let hex: String = eni_id.trim_start_matches("eni-").chars().filter(char::is_ascii_hexdigit).collect();
    let bytes: [u8; 5] = if hex.len() >= 10 {
        let tail = &hex[hex.len() - 10..];
        std::array::from_fn(|i| u8::from_str_radix(&tail[2 * i..2 * i + 2], 16).unwrap_or(0))
    } else {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in eni_id.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        std::array::from_fn(|i| (h >> (8 * i)) as u8)
    };
    let mut s = String::from("02");
    for b in bytes {
        s.push_str(&format!(":{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_macs_are_valid_stable_and_distinct() {
        let a = mac_for_eni("eni-42560fbee9b65f3dc");
        assert_eq!(a, "02:ee:9b:65:f3:dc");
        assert_eq!(a, mac_for_eni("eni-42560fbee9b65f3dc"));
        assert_ne!(a, mac_for_eni("eni-1825c6b1cdc56ce92"));
        assert_eq!(a.len(), 17);
        assert!(a.starts_with("02:"), "locally administered, unicast");
        assert_eq!(mac_for_eni("weird").len(), 17);
    }
}
