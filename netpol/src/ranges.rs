//! Closed intervals of integers (addresses as u32, ports): merging and subtraction.
//!
//! nftables interval sets reject overlapping elements, so every set is built as sorted, disjoint,
//! non-adjacent intervals; this module is where that normal form is made.

/// Sorted, disjoint, non-adjacent intervals covering exactly the union of `intervals` (empty ones,
/// `lo > hi`, dropped).
pub(crate) fn merge(mut intervals: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    intervals.retain(|(lo, hi)| lo <= hi);
    intervals.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(intervals.len());
    for (lo, hi) in intervals {
        match out.last_mut() {
            // Overlapping or adjacent (`lo == last.hi + 1`): extend; `saturating_add` keeps u32::MAX safe.
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// `whole` minus every interval of `holes`, in normal form.
pub(crate) fn subtract(whole: (u32, u32), holes: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut next = Some(whole.0); // the lowest value not yet ruled in or out; None once past u32::MAX
    for (lo, hi) in merge(holes.to_vec()) {
        let Some(start) = next else { break };
        if hi < start {
            continue;
        }
        if lo > whole.1 {
            break;
        }
        if lo > start {
            out.push((start, lo - 1));
        }
        next = hi.checked_add(1);
    }
    if let Some(start) = next.filter(|s| *s <= whole.1) {
        out.push((start, whole.1));
    }
    out
}

/// Whether `value` lies in one of the (normal-form) `intervals`.
#[cfg(test)]
fn contains(intervals: &[(u32, u32)], value: u32) -> bool {
    intervals.iter().any(|(lo, hi)| (*lo..=*hi).contains(&value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_overlapping_and_adjacent() {
        assert_eq!(merge(vec![(5, 9), (1, 2), (3, 4), (20, 30), (8, 12), (7, 6)]), vec![(1, 12), (20, 30)]);
        assert_eq!(merge(vec![(0, u32::MAX), (u32::MAX, u32::MAX)]), vec![(0, u32::MAX)]);
    }

    #[test]
    fn subtracts() {
        assert_eq!(subtract((0, 100), &[(10, 19), (50, 200)]), vec![(0, 9), (20, 49)]);
        assert_eq!(subtract((0, u32::MAX), &[(0, 0), (u32::MAX, u32::MAX)]), vec![(1, u32::MAX - 1)]);
        assert_eq!(subtract((10, 20), &[(0, 100)]), vec![]);
        assert_eq!(subtract((10, 20), &[(0, 5), (30, 40)]), vec![(10, 20)]);
        assert_eq!(subtract((10, 20), &[]), vec![(10, 20)]);
    }

    proptest! {
        #[test]
        fn merge_and_subtract_keep_membership(
            items in prop::collection::vec((0u32..64, 0u32..64), 0..6),
            holes in prop::collection::vec((0u32..64, 0u32..64), 0..4),
            whole in (0u32..64, 0u32..64),
        ) {
            let merged = merge(items.clone());
            let diff = subtract(whole, &holes);
            for v in 0..70 {
                prop_assert_eq!(contains(&merged, v), items.iter().any(|(lo, hi)| (*lo..=*hi).contains(&v)));
                let in_whole = (whole.0..=whole.1).contains(&v);
                prop_assert_eq!(contains(&diff, v), in_whole && !holes.iter().any(|(lo, hi)| (*lo..=*hi).contains(&v)));
            }
            for w in merged.windows(2).chain(diff.windows(2)) {
                prop_assert!(w[0].1.saturating_add(1) < w[1].0, "not in normal form: {:?}", w);
            }
        }
    }
}
