//! The user logic: a `helper` program (a command line, split as a shell would) or a
//! `builtin_helper`, not both. Neither is allowed here: user logic may be compiled in
//! instead, and the service refuses to start with none.

use super::{invalid, Problems};
use crate::template::BuiltinHelper;

/// The helper's command line, split (empty when none is given or it does not parse).
pub(super) fn check_helper(
    helper: &str,
    builtin: Option<&BuiltinHelper>,
    p: &mut Problems,
) -> Vec<String> {
    let helper = p
        .ok(shell_words::split(helper)
            .map_err(|e| invalid("helper", format!("cannot parse command: {e}"))))
        .unwrap_or_default();
    if let Some(b) = builtin {
        if !helper.is_empty() {
            p.add(invalid(
                "builtin_helper",
                "set either helper or builtin_helper, not both",
            ));
        }
        p.ok(b.check().map_err(|e| invalid("builtin_helper", e)));
    }
    helper
}
