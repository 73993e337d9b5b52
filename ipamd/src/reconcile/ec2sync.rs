//! When the reconcile loop may ask EC2 what is attached, and what it believes in between.
//!
//! EC2's account-wide budget for Describe calls is shared by every node, so a node does not poll it: each round
//! reads IMDS (local, free) and compares it with the ENIs and IPs EC2 last reported, updated in place with the
//! results of ipamd's own EC2 actions. EC2 is asked again only when:
//! - nothing is known yet (start, or an action failed half-way and ipamd cannot know what it changed);
//! - IMDS shows something the view does not explain, and it is not merely catching up with ipamd's own
//!   action (IMDS lags EC2 by seconds after an attach or assign), and EC2 was not already asked about this
//!   very IMDS state;
//! - the periodic full sync is due (at least IPAMD_EC2_RESYNC_INTERVAL, jittered so nodes spread out).
//!
//! Pure state and decisions, no I/O: unit-tested below.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::cloud::ec2::Ec2Eni;
use crate::cloud::imds::MacInfo;

/// How long IMDS may disagree after ipamd's own EC2 action before the disagreement counts as news.
pub const SETTLE: Duration = Duration::from_secs(20);

/// The node's interfaces as IMDS shows them, by ENI id.
pub type ImdsEnis = BTreeMap<String, MacInfo>;

/// Why EC2 is to be asked this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No trustworthy view: first round, or after an action whose outcome is unknown.
    Unknown,
    /// IMDS shows a change ipamd did not make.
    Mismatch,
    /// The periodic full sync.
    FullSync,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Unknown => "no view yet",
            Why::Mismatch => "IMDS disagrees",
            Why::FullSync => "periodic full sync",
        }
    }
}

#[derive(Debug)]
pub struct Ec2Sync {
    view: Option<Vec<Ec2Eni>>,
    /// IMDS as it was when EC2 was last asked: the same disagreement is not asked about twice.
    verified: Option<ImdsEnis>,
    settle_until: Option<Instant>,
    next_full: Instant,
    resync: Duration,
}

/// An interval stretched by up to 20 % so that nodes started together do not resync together.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::random::<f64>() * 0.2)
}

/// The addresses EC2 reports for `e` (primary included), comparable with IMDS's `local-ipv4s`.
fn addresses(e: &Ec2Eni) -> BTreeSet<Ipv4Addr> {
    e.primary_ip.into_iter().chain(e.secondary_ips.iter().copied()).collect()
}

/// The prefixes EC2 reports for `e`, comparable with IMDS's `ipv4-prefix`.
fn prefixes(e: &Ec2Eni) -> BTreeSet<Ipv4Net> {
    e.prefixes.iter().copied().collect()
}

impl Ec2Sync {
    pub fn new(resync: Duration, now: Instant) -> Self {
        Self { view: None, verified: None, settle_until: None, next_full: now, resync }
    }

    /// Whether EC2 must be asked this round, and why.
    pub fn due(&self, imds: &ImdsEnis, now: Instant) -> Option<Why> {
        if self.view.is_none() {
            return Some(Why::Unknown);
        }
        if now >= self.next_full {
            return Some(Why::FullSync);
        }
        if self.agrees(imds) || self.settle_until.is_some_and(|t| now < t) {
            return None;
        }
        (self.verified.as_ref() != Some(imds)).then_some(Why::Mismatch)
    }

    /// Records what EC2 reported, against the IMDS state of the same round.
    pub fn described(&mut self, enis: Vec<Ec2Eni>, imds: &ImdsEnis, now: Instant, why: Why) {
        self.view = Some(enis);
        self.verified = Some(imds.clone());
        self.settle_until = None;
        if why != Why::Mismatch {
            self.next_full = now + jittered(self.resync);
        }
    }

    /// Forgets the view: the next round asks EC2 (an action failed and its effect is unknown).
    pub fn invalidate(&mut self) {
        self.view = None;
    }

    /// The ENIs attached to the node as far as EC2 and ipamd's own actions say.
    pub fn enis(&self) -> &[Ec2Eni] {
        self.view.as_deref().unwrap_or_default()
    }

    /// IMDS shows exactly the view's ENIs with exactly their addresses.
    pub fn agrees(&self, imds: &ImdsEnis) -> bool {
        let Some(view) = &self.view else { return false };
        view.len() == imds.len()
            && view.iter().all(|e| imds.get(&e.id).is_some_and(|m| m.ips == addresses(e) && m.prefixes == prefixes(e)))
    }

    /// IMDS shows every ENI of the view with all its addresses: nothing waits for IMDS to catch up.
    pub fn confirmed(&self, imds: &ImdsEnis) -> bool {
        self.enis().iter().all(|e| {
            imds.get(&e.id).is_some_and(|m| m.ips.is_superset(&addresses(e)) && m.prefixes.is_superset(&prefixes(e)))
        })
    }

    /// Secondary IPs of `eni` (and addresses of its prefixes) that EC2 has but IMDS does not show yet: not to be
    /// handed out.
    pub fn unconfirmed(eni: &Ec2Eni, imds: &ImdsEnis) -> Vec<Ipv4Addr> {
        let m = imds.get(&eni.id);
        let shown = m.map(|m| &m.ips);
        let mut out: Vec<Ipv4Addr> =
            eni.secondary_ips.iter().copied().filter(|ip| shown.is_none_or(|s| !s.contains(ip))).collect();
        for p in eni.prefixes.iter().filter(|p| m.is_none_or(|m| !m.prefixes.contains(p))) {
            out.extend(crate::state::datastore::prefix_addresses(p));
        }
        out
    }

    fn acted(&mut self, now: Instant) {
        self.settle_until = Some(now + SETTLE);
    }

    fn eni_mut(&mut self, eni_id: &str) -> Option<&mut Ec2Eni> {
        self.view.as_mut()?.iter_mut().find(|e| e.id == eni_id)
    }

    /// ipamd created and attached `eni` (with its attachment) at `device_index`.
    pub fn attached(&mut self, mut eni: Ec2Eni, device_index: u32, attachment_id: String, now: Instant) {
        eni.device_index = Some(device_index);
        eni.attachment_id = Some(attachment_id);
        eni.delete_on_termination = Some(true);
        eni.status = "in-use".into();
        if let Some(view) = self.view.as_mut() {
            view.retain(|e| e.id != eni.id);
            view.push(eni);
        }
        self.acted(now);
    }

    /// ipamd assigned `ips` to `eni_id`. Returns how many are new to the view (some EC2 implementations
    /// answer with every address of the ENI, the primary included).
    pub fn assigned(&mut self, eni_id: &str, ips: &[Ipv4Addr], now: Instant) -> usize {
        self.acted(now);
        let Some(e) = self.eni_mut(eni_id) else { return ips.len() };
        let before = e.secondary_ips.len();
        let primary = e.primary_ip;
        e.secondary_ips.extend(ips.iter().copied().filter(|ip| Some(*ip) != primary));
        e.secondary_ips.sort();
        e.secondary_ips.dedup();
        e.secondary_ips.len() - before
    }

    /// ipamd had `prefixes` delegated to `eni_id`.
    pub fn assigned_prefixes(&mut self, eni_id: &str, prefixes: &[Ipv4Net], now: Instant) {
        self.acted(now);
        if let Some(e) = self.eni_mut(eni_id) {
            e.prefixes.extend_from_slice(prefixes);
            e.prefixes.sort();
            e.prefixes.dedup();
        }
    }

    pub fn unassigned_prefixes(&mut self, eni_id: &str, prefixes: &[Ipv4Net], now: Instant) {
        if let Some(e) = self.eni_mut(eni_id) {
            e.prefixes.retain(|p| !prefixes.contains(p));
        }
        self.acted(now);
    }

    pub fn unassigned(&mut self, eni_id: &str, ips: &[Ipv4Addr], now: Instant) {
        if let Some(e) = self.eni_mut(eni_id) {
            e.secondary_ips.retain(|ip| !ips.contains(ip));
        }
        self.acted(now);
    }

    /// DeleteOnTermination was set on `eni_id`.
    pub fn delete_on_termination_done(&mut self, eni_id: &str) {
        if let Some(e) = self.eni_mut(eni_id) {
            e.delete_on_termination = Some(true);
        }
    }

    pub fn deleted(&mut self, eni_id: &str, now: Instant) {
        if let Some(view) = self.view.as_mut() {
            view.retain(|e| e.id != eni_id);
        }
        self.acted(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, last)
    }

    fn eni(id: &str, primary: u8, secondary: &[u8]) -> Ec2Eni {
        Ec2Eni {
            prefixes: Vec::new(),
            id: id.into(),
            subnet_id: "subnet-1".into(),
            primary_ip: Some(ip(primary)),
            secondary_ips: secondary.iter().map(|l| ip(*l)).collect(),
            device_index: Some(0),
            attachment_id: Some(format!("attach-{id}")),
            delete_on_termination: Some(true),
            status: "in-use".into(),
            security_groups: Vec::new(),
            tags: BTreeMap::new(),
        }
    }

    fn imds_of(enis: &[Ec2Eni]) -> ImdsEnis {
        enis.iter()
            .enumerate()
            .map(|(i, e)| {
                let m = MacInfo {
                    mac: format!("02:00:00:00:00:{i:02x}"),
                    eni_id: e.id.clone(),
                    device_number: i as u32,
                    ips: addresses(e),
                    prefixes: prefixes(e),
                };
                (e.id.clone(), m)
            })
            .collect()
    }

    const RESYNC: Duration = Duration::from_secs(1800);

    #[test]
    fn a_prefix_imds_does_not_show_yet_is_unconfirmed_and_not_news() {
        let t0 = Instant::now();
        let mut s = Ec2Sync::new(RESYNC, t0);
        let enis = vec![eni("eni-a", 4, &[])];
        let before = imds_of(&enis);
        s.described(enis.clone(), &before, t0, Why::Unknown);
        let net: Ipv4Net = "10.0.1.16/28".parse().unwrap();
        s.assigned_prefixes("eni-a", &[net], t0);
        assert!(!s.confirmed(&before), "IMDS lags the delegation");
        assert_eq!(Ec2Sync::unconfirmed(&s.enis()[0], &before).len(), 16, "its 16 addresses wait for IMDS");
        assert_eq!(s.due(&before, t0 + Duration::from_secs(1)), None, "catching up is not a mismatch");
        let after = imds_of(s.enis());
        assert!(s.confirmed(&after) && s.agrees(&after));
        assert!(Ec2Sync::unconfirmed(&s.enis()[0], &after).is_empty());
        s.unassigned_prefixes("eni-a", &[net], t0);
        assert!(!s.agrees(&after), "IMDS still shows the prefix given back");
    }

    #[test]
    fn asks_ec2_first_then_never_while_imds_agrees() {
        let t0 = Instant::now();
        let mut s = Ec2Sync::new(RESYNC, t0);
        let enis = vec![eni("eni-a", 4, &[10, 11])];
        let imds = imds_of(&enis);
        assert_eq!(s.due(&imds, t0), Some(Why::Unknown));
        s.described(enis, &imds, t0, Why::Unknown);
        for minute in 1..30 {
            assert_eq!(s.due(&imds, t0 + Duration::from_secs(60 * minute)), None, "minute {minute}");
        }
        assert_eq!(s.due(&imds, t0 + Duration::from_secs(37 * 60)), Some(Why::FullSync));
    }

    #[test]
    fn own_actions_update_the_view_and_imds_lag_is_not_news() {
        let t0 = Instant::now();
        let mut s = Ec2Sync::new(RESYNC, t0);
        let before = vec![eni("eni-a", 4, &[10])];
        let imds_before = imds_of(&before);
        s.described(before.clone(), &imds_before, t0, Why::Unknown);
        // Answered with every address of the ENI: the primary is not a secondary, old ones are not new.
        assert_eq!(s.assigned("eni-a", &[ip(4), ip(10), ip(11), ip(12)], t0), 2);
        let t1 = t0 + Duration::from_secs(1);
        // IMDS has not caught up: no Describe, and the new IPs are not to be used yet.
        assert_eq!(s.due(&imds_before, t1), None);
        assert!(!s.agrees(&imds_before) && !s.confirmed(&imds_before));
        assert_eq!(Ec2Sync::unconfirmed(&s.enis()[0], &imds_before), [ip(11), ip(12)]);
        // Half caught up, still inside the settle window: still no Describe.
        let mut partial = imds_before.clone();
        partial.get_mut("eni-a").unwrap().ips.insert(ip(11));
        assert_eq!(s.due(&partial, t1), None);
        // Caught up.
        let after = imds_of(&[eni("eni-a", 4, &[10, 11, 12])]);
        assert!(s.agrees(&after) && s.confirmed(&after));
        assert!(Ec2Sync::unconfirmed(&s.enis()[0], &after).is_empty());
        assert_eq!(s.due(&after, t0 + SETTLE * 2), None);
    }

    #[test]
    fn a_change_ipamd_did_not_make_is_asked_about_once() {
        let t0 = Instant::now();
        let mut s = Ec2Sync::new(RESYNC, t0);
        let enis = vec![eni("eni-a", 4, &[10])];
        s.described(enis.clone(), &imds_of(&enis), t0, Why::Unknown);
        // Someone attached an ENI.
        let outside = imds_of(&[eni("eni-a", 4, &[10]), eni("eni-user", 40, &[])]);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(s.due(&outside, t1), Some(Why::Mismatch));
        // EC2 does not show it yet (its reads lag too): the same IMDS state is not asked about again.
        s.described(enis, &outside, t1, Why::Mismatch);
        assert_eq!(s.due(&outside, t1 + Duration::from_secs(5)), None);
        // A mismatch-driven Describe does not push the full sync back.
        assert_eq!(s.due(&outside, t0 + Duration::from_secs(40 * 60)), Some(Why::FullSync));
    }

    #[test]
    fn created_and_deleted_enis_join_and_leave_the_view() {
        let t0 = Instant::now();
        let mut s = Ec2Sync::new(RESYNC, t0);
        let prim = eni("eni-a", 4, &[10]);
        s.described(vec![prim.clone()], &imds_of(std::slice::from_ref(&prim)), t0, Why::Unknown);
        let mut new = eni("eni-b", 20, &[21, 22]);
        new.device_index = None;
        new.attachment_id = None;
        s.attached(new, 1, "attach-x".into(), t0);
        let b = s.enis().iter().find(|e| e.id == "eni-b").unwrap();
        assert_eq!((b.device_index, b.attachment_id.as_deref()), (Some(1), Some("attach-x")));
        s.deleted("eni-b", t0);
        assert!(s.agrees(&imds_of(&[prim])));
        s.invalidate();
        assert_eq!(s.due(&ImdsEnis::new(), t0), Some(Why::Unknown));
    }
}
