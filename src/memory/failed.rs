//! Memory that cannot be read, from a file here or as the node agent says: no verdict on the app.

use super::assess::Assessor;
use super::read::ReadError;
use super::{MemoryWatcher, Plan, Sent, Target};

impl MemoryWatcher {
    /// Unreadable memory is no verdict on the app: counted, logged once per kind of failure, and
    /// the memory signals do not veto. A vanished cgroup (container restart) is looked up again.
    pub(super) async fn read_failed(
        &self,
        e: ReadError,
        last: &mut Option<String>,
        target: &mut Target,
        sent: &mut Sent,
        assessor: &mut Assessor,
    ) -> bool {
        if matches!(e, ReadError::Missing { .. }) && matches!(self.plan, Plan::Process { .. }) {
            *target = Target::Nothing;
        }
        self.cannot_read(e.kind(), e.to_string(), last, sent, assessor)
            .await
    }

    /// `kind` is the label of `sidewatch_memory_read_errors_total`; `text` is logged when it
    /// differs from the last failure's. False when the engine is gone.
    pub(super) async fn cannot_read(
        &self,
        kind: &'static str,
        text: String,
        last: &mut Option<String>,
        sent: &mut Sent,
        assessor: &mut Assessor,
    ) -> bool {
        self.metrics.read_errors.with_label_values(&[kind]).inc();
        if last.as_deref() != Some(text.as_str()) {
            tracing::warn!(error = %text, "memory: cannot read; memory signals do not veto until it can");
            *last = Some(text);
        }
        let assessment = assessor.unreadable(std::time::Instant::now());
        self.count_ooms(&assessment, None, None);
        self.send_all(assessment, sent).await
    }
}
