//! Which kind of API request, as a label value.

/// The `op` label of `sidewatch_kube_errors_total`: which kind of API request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Watch,
    PatchStatus,
    CreateEvent,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Watch, Op::PatchStatus, Op::CreateEvent];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Watch => "watch",
            Op::PatchStatus => "patch_status",
            Op::CreateEvent => "create_event",
        }
    }
}
