//! How many pods a node can run, as EKS computes it for kubelet's `--max-pods`:
//!
//! - secondary-IP mode: `ENIs × (IPv4 addresses per ENI − 1) + 2`, the figure of EKS' published
//!   eni-max-pods.txt (737 for m5.24xlarge): each ENI's primary address serves no pod, and the `+ 2` are
//!   host-network pods (kube-proxy, the CNI's own DaemonSet) that take no VPC address;
//! - prefix mode: each secondary slot holds a /28 (16 addresses) instead of one, so `ENIs × (per ENI − 1) × 16 + 2`,
//!   then capped as EKS' max-pods-calculator caps it: 110 up to 30 vCPUs, 250 above (kubelet's tested density, not
//!   an address limit);
//! - custom networking: the primary ENI serves no pods (its subnet is the node's, pods' are the ENIConfig's), so
//!   one ENI fewer.
//!
//! MAX_ENI lowers the ENI count the same way it does in ipamd.
//!
//! On instance types with several network cards (p5.48xlarge: 32 cards, 64 ENIs in all, 2 per card) pods use
//! the default card's ENIs only, as EKS and aws-vpc-cni count them ([`pod_eni_limit`]): p5.48xlarge runs 100
//! pods, not 3138.

/// The ceiling in prefix mode up to [`HIGH_CPU_THRESHOLD`] vCPUs.
pub const LOW_CPU_CEILING: u32 = 110;
/// The ceiling in prefix mode above [`HIGH_CPU_THRESHOLD`] vCPUs.
pub const HIGH_CPU_CEILING: u32 = 250;
pub const HIGH_CPU_THRESHOLD: u32 = 30;
/// Addresses in one delegated /28 prefix.
pub const IPS_PER_PREFIX: u32 = 16;

/// An instance type's network limits (DescribeInstanceTypes' `NetworkInfo` and `VCpuInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceNetwork {
    pub max_enis: u32,
    /// IPv4 addresses per interface, the primary included.
    pub ipv4_per_eni: u32,
    pub vcpus: u32,
}

/// One network card of an instance type (DescribeInstanceTypes' `NetworkInfo.NetworkCards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkCard {
    pub index: u32,
    pub max_enis: u32,
}

/// The ENIs that can hold pod addresses: the default network card's limit (`default_card`, else card 0) when the
/// type lists its cards, else the instance-wide `MaximumNetworkInterfaces`. ENIs are attached on the default card
/// only: the instance-wide figure counts every card's, which pods cannot use without multi-card support.
pub fn pod_eni_limit(instance_wide: u32, cards: &[NetworkCard], default_card: Option<u32>) -> u32 {
    let default = default_card.unwrap_or(0);
    cards.iter().find(|c| c.index == default).map_or(instance_wide, |c| c.max_enis)
}

/// How the node's CNI is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mode {
    pub prefix_delegation: bool,
    pub custom_networking: bool,
    /// MAX_ENI, when set.
    pub max_eni: Option<u32>,
}

/// The figure and how it came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPods {
    /// ENIs that can hold pod addresses.
    pub pod_enis: u32,
    /// Pod addresses per such ENI.
    pub per_eni: u32,
    /// `pod_enis × per_eni + 2`.
    pub by_addresses: u32,
    /// The vCPU ceiling when one applies (prefix mode).
    pub ceiling: Option<u32>,
    pub max_pods: u32,
}

pub fn max_pods(net: InstanceNetwork, mode: Mode) -> MaxPods {
    let enis = mode.max_eni.map_or(net.max_enis, |m| m.min(net.max_enis));
    let pod_enis = if mode.custom_networking { enis.saturating_sub(1) } else { enis };
    let slots = net.ipv4_per_eni.saturating_sub(1);
    let per_eni = if mode.prefix_delegation { slots * IPS_PER_PREFIX } else { slots };
    let by_addresses = pod_enis * per_eni + 2;
    let ceiling = mode.prefix_delegation.then_some(if net.vcpus <= HIGH_CPU_THRESHOLD {
        LOW_CPU_CEILING
    } else {
        HIGH_CPU_CEILING
    });
    MaxPods {
        pod_enis,
        per_eni,
        by_addresses,
        ceiling,
        max_pods: ceiling.map_or(by_addresses, |c| c.min(by_addresses)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M5_LARGE: InstanceNetwork = InstanceNetwork { max_enis: 3, ipv4_per_eni: 10, vcpus: 2 };
    const T3_MEDIUM: InstanceNetwork = InstanceNetwork { max_enis: 3, ipv4_per_eni: 6, vcpus: 2 };
    const M5_24XLARGE: InstanceNetwork = InstanceNetwork { max_enis: 15, ipv4_per_eni: 50, vcpus: 96 };
    const C5_4XLARGE: InstanceNetwork = InstanceNetwork { max_enis: 8, ipv4_per_eni: 30, vcpus: 16 };

    fn pods(net: InstanceNetwork, prefix: bool, custom: bool) -> u32 {
        max_pods(net, Mode { prefix_delegation: prefix, custom_networking: custom, max_eni: None }).max_pods
    }

    /// The figures of EKS' published eni-max-pods.txt and its calculator.
    #[test]
    fn matches_the_figures_eks_publishes() {
        assert_eq!(pods(M5_LARGE, false, false), 29);
        assert_eq!(pods(T3_MEDIUM, false, false), 17);
        assert_eq!(pods(M5_24XLARGE, false, false), 737);
        assert_eq!(pods(C5_4XLARGE, false, false), 234);
        assert_eq!(pods(M5_LARGE, true, false), 110);
        assert_eq!(pods(M5_24XLARGE, true, false), 250);
        assert_eq!(pods(C5_4XLARGE, true, false), 110);
    }

    #[test]
    fn thirty_vcpus_is_still_the_low_ceiling() {
        let at = |vcpus| {
            max_pods(InstanceNetwork { vcpus, ..M5_24XLARGE }, Mode { prefix_delegation: true, ..Mode::default() })
        };
        assert_eq!((at(30).max_pods, at(31).max_pods), (110, 250));
    }

    #[test]
    fn custom_networking_loses_the_primary_eni() {
        assert_eq!(pods(M5_LARGE, false, true), 20);
        assert_eq!(pods(T3_MEDIUM, false, true), 12);
        // Prefix mode on a small type: still far above the ceiling.
        assert_eq!(pods(T3_MEDIUM, true, true), 110);
    }

    #[test]
    fn prefix_mode_below_the_ceiling_counts_whole_prefixes() {
        let tiny = InstanceNetwork { max_enis: 2, ipv4_per_eni: 2, vcpus: 1 };
        let m = max_pods(tiny, Mode { prefix_delegation: true, ..Mode::default() });
        assert_eq!((m.per_eni, m.by_addresses, m.ceiling, m.max_pods), (16, 34, Some(110), 34));
    }

    /// Instance types with several network cards: the default card's ENIs, as in EKS' eni-max-pods.txt
    /// (p5.48xlarge 100, trn1.32xlarge 247, p4d.24xlarge 737).
    #[test]
    fn several_network_cards_count_the_default_cards_enis() {
        let cards = |n: u32, per: u32| (0..n).map(|index| NetworkCard { index, max_enis: per }).collect::<Vec<_>>();
        for (name, wide, n, per, default, want_enis, want_pods) in [
            ("p5.48xlarge", 64, 32, 2, Some(0), 2, 100),
            ("trn1.32xlarge", 40, 8, 5, Some(0), 5, 247),
            ("p4d.24xlarge", 60, 4, 15, None, 15, 737),
            ("m5.large", 3, 1, 3, Some(0), 3, 29),
        ] {
            let enis = pod_eni_limit(wide, &cards(n, per), default);
            assert_eq!(enis, want_enis, "{name}");
            let ipv4_per_eni = if name == "m5.large" { 10 } else { 50 };
            let net = InstanceNetwork { max_enis: enis, ipv4_per_eni, vcpus: 96 };
            assert_eq!(max_pods(net, Mode::default()).max_pods, want_pods, "{name}");
        }
        assert_eq!(pod_eni_limit(15, &[], None), 15, "no cards listed: the instance-wide limit");
        let odd = [NetworkCard { index: 0, max_enis: 4 }, NetworkCard { index: 1, max_enis: 8 }];
        assert_eq!(pod_eni_limit(12, &odd, Some(1)), 8, "the default card, whichever it is");
    }

    #[test]
    fn max_eni_lowers_the_eni_count_never_raises_it() {
        let m = |max_eni| max_pods(M5_LARGE, Mode { max_eni: Some(max_eni), ..Mode::default() }).max_pods;
        assert_eq!(m(1), 11);
        assert_eq!(m(2), 20);
        assert_eq!(m(9), 29);
    }
}
