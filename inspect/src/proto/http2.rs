//! http2: identification and analysis (not written yet: identifies nothing).

use crate::protocol::{Analysis, Context, Ident, Streams, Watch};

/// Whether `s` is this protocol.
pub fn identify(_s: &Streams<'_>) -> Ident {
    Ident::No
}

/// What `s` holds that the policy acts on.
pub fn analyze(_s: &Streams<'_>, _cx: &Context<'_>) -> Analysis {
    Analysis::default()
}

/// What one `segment` (from the server when `from_server`) of a flow whose analysis is done
/// says on its own.
pub fn watch(_from_server: bool, _segment: &[u8], _cx: &Context<'_>) -> Watch {
    Watch::default()
}
