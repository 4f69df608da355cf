//! How a drain ends, as a label value.

/// How a drain ended: the `outcome` label of `sidewatch_drains_total` and of the `/drain` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The app port's traffic stopped.
    Quiet,
    /// `drain.max` was reached.
    Max,
}

impl Outcome {
    pub const ALL: [Outcome; 2] = [Outcome::Quiet, Outcome::Max];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Quiet => "quiet",
            Outcome::Max => "max",
        }
    }
}
