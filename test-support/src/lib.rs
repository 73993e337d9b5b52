//! Helpers shared by the unit tests of several crates: the one proptest strategy for arbitrary JSON, which the
//! fuzzing of CNI requests (plugin) and of checkpoint files (ipamd) mutates valid documents with.

use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value, up to three levels deep: nulls, booleans, integers, floats, strings (some of them
/// number- or address-like, the shapes parsers trip on), arrays and objects.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[0-9./:]{0,18}".prop_map(Value::String),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
