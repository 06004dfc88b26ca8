//! The hooks the hot path calls for the `testing` feature's counters and
//! aids. Without the feature each is an empty inline function, so the
//! default build carries none of them.

#[cfg(feature = "testing")]
pub(crate) use crate::testing::{
    count_host_read as host_read, count_launch as launch, emulating, nvrtc_hidden, poisoning,
};

#[cfg(not(feature = "testing"))]
mod off {
    #[inline(always)]
    pub(crate) fn launch() {}
    #[inline(always)]
    pub(crate) fn host_read() {}
    #[inline(always)]
    pub(crate) fn emulating() -> bool {
        false
    }
    #[inline(always)]
    pub(crate) fn poisoning() -> bool {
        false
    }
    #[inline(always)]
    pub(crate) fn nvrtc_hidden() -> bool {
        false
    }
}
#[cfg(not(feature = "testing"))]
pub(crate) use off::*;
