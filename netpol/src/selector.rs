//! Kubernetes label selectors (`metav1.LabelSelector`): which label sets a selector matches.
//!
//! Every requirement must hold (they are ANDed); an empty selector therefore matches every label set.

use std::collections::BTreeMap;

/// Labels of a pod or a namespace.
pub type Labels = BTreeMap<String, String>;

/// A `metav1.LabelSelector`: `matchLabels` and `matchExpressions`, all of which must hold.
///
/// `Ord` so that compiled peer sets can be keyed (and shared) by the selectors that define them.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
    /// Used by `In` and `NotIn` only (the API rejects values with `Exists` and `DoesNotExist`).
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// The empty selector `{}`: matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector of `matchLabels` only.
    pub fn labels<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self { match_labels: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(), match_expressions: vec![] }
    }

    /// This selector with one more `matchExpressions` entry.
    pub fn with(mut self, key: &str, op: Operator, values: &[&str]) -> Self {
        let values = values.iter().map(|v| v.to_string()).collect();
        self.match_expressions.push(Requirement { key: key.to_string(), op, values });
        self
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        let listed = value.is_some_and(|v| self.values.contains(v));
        match self.op {
            Operator::In => listed,
            // Kubernetes: NotIn holds where the key is absent, as well as where its value is not listed.
            Operator::NotIn => !listed,
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::everything().matches(&labels(&[])));
        assert!(LabelSelector::everything().matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn match_labels_are_anded() {
        let sel = LabelSelector::labels([("app", "web"), ("tier", "front")]);
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "back")])));
    }

    #[test]
    fn operators() {
        let l = labels(&[("app", "web")]);
        let none = labels(&[]);
        let sel = |op, values: &[&str]| LabelSelector::everything().with("app", op, values);
        assert!(sel(Operator::In, &["db", "web"]).matches(&l));
        assert!(!sel(Operator::In, &["db"]).matches(&l));
        assert!(!sel(Operator::In, &["web"]).matches(&none));
        assert!(!sel(Operator::NotIn, &["web"]).matches(&l));
        assert!(sel(Operator::NotIn, &["db"]).matches(&l));
        assert!(sel(Operator::NotIn, &["web"]).matches(&none), "NotIn holds where the key is absent");
        assert!(sel(Operator::Exists, &[]).matches(&l));
        assert!(!sel(Operator::Exists, &[]).matches(&none));
        assert!(!sel(Operator::DoesNotExist, &[]).matches(&l));
        assert!(sel(Operator::DoesNotExist, &[]).matches(&none));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let sel = LabelSelector::labels([("app", "web")]).with("tier", Operator::Exists, &[]);
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "x")])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
        assert!(!sel.matches(&labels(&[("tier", "x")])));
    }
}
