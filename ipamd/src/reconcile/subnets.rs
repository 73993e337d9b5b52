//! Subnet discovery (ENABLE_SUBNET_DISCOVERY): which subnet a new ENI goes to when no ENIConfig decides. Pure, so
//! the rule is unit-tested here; the reconciler asks EC2 for the zone's subnets only when it is about to create
//! an ENI.
//!
//! The rule, as aws-vpc-cni users know it: the candidates are the node's own subnet (unless tagged
//! `kubernetes.io/role/cni=0`) and every subnet of the VPC in the node's zone tagged `kubernetes.io/role/cni=1`;
//! the one with the most free addresses wins (ties: the node's own, then by id, so the choice is stable); a
//! subnet without room for the new ENI (its primary address and its IPs) is skipped; a subnet tagged `0`, or
//! not tagged at all (other than the node's own), is never used.

use crate::cloud::ec2::SubnetInfo;

/// The decision and why, for the pool event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub subnet_id: String,
    pub free: u32,
    /// The other candidates, `id (N free)`, in the order they ranked.
    pub others: Vec<String>,
}

fn candidate(s: &SubnetInfo, node_subnet: &str) -> bool {
    match s.cni_role.as_deref().map(str::trim) {
        Some("1") => true,
        Some("0") => false,
        _ => s.id == node_subnet,
    }
}

/// Picks the subnet for an ENI that needs `need` addresses (its own primary address included).
pub fn choose(subnets: &[SubnetInfo], node_subnet: &str, need: u32) -> Result<Choice, String> {
    let mut ranked: Vec<&SubnetInfo> = subnets.iter().filter(|s| candidate(s, node_subnet)).collect();
    ranked.sort_by(|a, b| {
        b.free.cmp(&a.free).then((a.id != node_subnet).cmp(&(b.id != node_subnet))).then(a.id.cmp(&b.id))
    });
    let describe = |s: &&SubnetInfo| format!("{} ({} free)", s.id, s.free);
    match ranked.iter().position(|s| s.free >= need) {
        Some(i) => Ok(Choice {
            subnet_id: ranked[i].id.clone(),
            free: ranked[i].free,
            others: ranked.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, s)| describe(s)).collect(),
        }),
        None if ranked.is_empty() => Err(format!(
            "no subnet to place an ENI in: the node's subnet {node_subnet} is tagged kubernetes.io/role/cni=0 and no \
             subnet of its zone is tagged kubernetes.io/role/cni=1"
        )),
        None => Err(format!(
            "no subnet has {need} free addresses for a new ENI: {}",
            ranked.iter().map(describe).collect::<Vec<_>>().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(id: &str, free: u32, role: Option<&str>) -> SubnetInfo {
        SubnetInfo { id: id.into(), cidr: "10.0.0.0/24".parse().unwrap(), free, cni_role: role.map(String::from) }
    }

    #[test]
    fn the_tagged_subnet_with_most_free_addresses_wins() {
        let s = [
            subnet("subnet-node", 20, None),
            subnet("subnet-a", 200, Some("1")),
            subnet("subnet-b", 100, Some("1")),
            subnet("subnet-untagged", 4000, None),
            subnet("subnet-off", 8000, Some("0")),
        ];
        let c = choose(&s, "subnet-node", 10).unwrap();
        assert_eq!(c.subnet_id, "subnet-a");
        assert_eq!(c.others, ["subnet-b (100 free)", "subnet-node (20 free)"]);
    }

    #[test]
    fn a_subnet_without_room_is_skipped() {
        let s = [subnet("subnet-node", 5, None), subnet("subnet-a", 9, Some("1")), subnet("subnet-b", 3, Some("1"))];
        assert_eq!(choose(&s, "subnet-node", 4).unwrap().subnet_id, "subnet-a");
        assert_eq!(
            choose(&s, "subnet-node", 10).unwrap_err(),
            "no subnet has 10 free addresses for a new ENI: subnet-a (9 free), subnet-node (5 free), subnet-b (3 free)"
        );
    }

    #[test]
    fn the_node_subnet_wins_a_tie_and_can_be_opted_out() {
        let s = [subnet("subnet-a", 50, Some("1")), subnet("subnet-node", 50, None)];
        assert_eq!(choose(&s, "subnet-node", 10).unwrap().subnet_id, "subnet-node");
        let off = [subnet("subnet-a", 5, Some("1")), subnet("subnet-node", 50, Some("0"))];
        assert_eq!(choose(&off, "subnet-node", 5).unwrap().subnet_id, "subnet-a");
        let none = [subnet("subnet-node", 50, Some("0")), subnet("subnet-x", 500, None)];
        assert!(choose(&none, "subnet-node", 5).unwrap_err().contains("role/cni=0"));
    }

    #[test]
    fn without_tagged_subnets_it_is_the_node_subnet() {
        let s = [subnet("subnet-node", 50, None), subnet("subnet-x", 500, None)];
        let c = choose(&s, "subnet-node", 5).unwrap();
        assert_eq!((c.subnet_id.as_str(), c.others.len()), ("subnet-node", 0));
    }
}
