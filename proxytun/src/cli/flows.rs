//! `proxytun flows`: the flow table, the reply-address cache and the
//! recent policy denials.

use serde_json::Value;

use super::render::format_tables;

/// The flows and replies, then the recent policy denials.
pub(super) fn format_flows(v: &Value) -> String {
    let mut rest = v.clone();
    let denied = rest
        .as_object_mut()
        .and_then(|m| m.remove("denied"))
        .unwrap_or(Value::Null);
    let mut out = format_tables(&rest);
    if let Some(list) = denied.as_array() {
        out.push('\n');
        out.push_str(&format_tables(&serde_json::json!({ "denied": list })));
    }
    out
}
