//! The life of a manifest run, as one explicit state machine: every phase a drop can be in and
//! every legal transition, in one place. The pipeline's intake and finisher move runs through
//! it (`Phase::next`); anything not in the table is a bug, refused and logged, never silently
//! applied. The persisted part of a phase is [`crate::store::ManifestState`].
//!
//! ```text
//!  Found ──valid──▶ Validated ──reserved──▶ Reserved ──registered──▶ Running ──all settled──▶ Finishing ──reported──▶ Finished
//!    │                  │                                              │  ▲                       │
//!    └──invalid──▶ Rejected ◀──conflict──┘                             │  └──────replayed─────────┤ (jobs held in doubt)
//!                                                                      │                          ▼
//!                                                              file saved again                 Held ──replayed──▶ Running
//!                                                                      ▼
//!                                                                  Draining ──all settled──▶ Finishing(superseded) ──reported──▶ Superseded
//! ```
//!
//! A run that has ended (Finished, Superseded) can be replayed: `Finished ──replayed──▶ Running`.

use std::fmt;

/// Where a manifest run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The watcher found a stable file; nothing is known about it yet.
    Found,
    /// The file parsed and every row is valid; nothing is reserved yet.
    Validated,
    /// Every output and report path is reserved for this run.
    Reserved,
    /// Its jobs are in the store; some are still open.
    Running,
    /// A newer version of the file arrived: no new submits; tasks at Claid finish.
    Draining,
    /// Every job has ended (or is held); the report is being written and the file moved.
    Finishing {
        /// Whether the run ends as superseded (it was draining).
        superseded: bool,
    },
    /// The report is written; some jobs are held in doubt for a human (`replay --in-doubt`).
    Held,
    /// Every job ended; report written; the manifest moved per `on_manifest_done`.
    Finished,
    /// Refused before anything was spent: invalid, or it would write another run's outputs.
    Rejected,
    /// Ended after a newer version of the same file replaced it.
    Superseded,
}

/// What happened to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Validation found no problem.
    Valid,
    /// Validation found problems (or the file is a link, or unreadable).
    Invalid,
    /// Every path it writes is reserved for it.
    Reserved,
    /// A path it would write is reserved by another run that has not ended.
    Conflict,
    /// Its jobs are recorded in the store.
    Registered,
    /// The file was saved again with other content.
    Changed,
    /// No job is open any more; `held` jobs wait in doubt.
    AllSettled { held: bool },
    /// The report is written and the file moved (or kept, with jobs held).
    Reported,
    /// Jobs were requeued by a replay.
    Replayed,
}

/// A transition the table does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("manifest run in phase {from} cannot take event {event:?}")]
pub struct IllegalTransition {
    pub from: Phase,
    pub event: Event,
}

impl Phase {
    /// The phase after `event`, or the refusal.
    pub fn next(self, event: Event) -> Result<Phase, IllegalTransition> {
        use Event as E;
        use Phase as P;
        let next = match (self, event) {
            (P::Found, E::Valid) => P::Validated,
            (P::Found, E::Invalid) => P::Rejected,
            (P::Validated, E::Reserved) => P::Reserved,
            (P::Validated, E::Conflict) => P::Rejected,
            (P::Reserved, E::Registered) => P::Running,
            (P::Running, E::AllSettled { .. }) => P::Finishing { superseded: false },
            (P::Running, E::Changed) => P::Draining,
            (P::Running, E::Replayed) => P::Running,
            (P::Draining, E::AllSettled { .. }) => P::Finishing { superseded: true },
            (P::Draining, E::Changed) => P::Draining,
            (P::Finishing { superseded: false }, E::Reported) => P::Finished,
            (P::Finishing { superseded: true }, E::Reported) => P::Superseded,
            (P::Finishing { .. }, E::Replayed) => P::Running,
            (P::Held, E::Replayed) => P::Running,
            (P::Held, E::Changed) => P::Draining,
            (P::Finished, E::Replayed) => P::Running,
            (from, event) => return Err(IllegalTransition { from, event }),
        };
        Ok(next)
    }

    /// After the report of a run that ended with jobs held in doubt: it waits for a human.
    pub fn held(self) -> Result<Phase, IllegalTransition> {
        match self {
            Phase::Finishing { superseded: false } => Ok(Phase::Held),
            from => Err(IllegalTransition {
                from,
                event: Event::Reported,
            }),
        }
    }

    /// Finished, Rejected or Superseded: nothing more happens to the run without a replay.
    pub fn is_ended(self) -> bool {
        matches!(self, Phase::Finished | Phase::Rejected | Phase::Superseded)
    }

    /// Whether the run's queued jobs may be submitted.
    pub fn submits(self) -> bool {
        matches!(self, Phase::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Found => "found",
            Phase::Validated => "validated",
            Phase::Reserved => "reserved",
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Finishing { .. } => "finishing",
            Phase::Held => "held",
            Phase::Finished => "finished",
            Phase::Rejected => "rejected",
            Phase::Superseded => "superseded",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One check per row of the table: `Some(phase)` for a legal transition, `None` for a refusal.
    fn check(from: Phase, event: Event, expect: Option<Phase>) {
        let got = from.next(event).ok();
        assert_eq!(got, expect, "{from} + {event:?}");
    }

    #[test]
    fn transitions() {
        use Event as E;
        use Phase as P;
        let fin = P::Finishing { superseded: false };
        let fin_sup = P::Finishing { superseded: true };
        check(P::Found, E::Valid, Some(P::Validated));
        check(P::Found, E::Invalid, Some(P::Rejected));
        check(P::Found, E::Registered, None);
        check(P::Validated, E::Reserved, Some(P::Reserved));
        check(P::Validated, E::Conflict, Some(P::Rejected));
        check(P::Validated, E::Registered, None);
        check(P::Reserved, E::Registered, Some(P::Running));
        check(P::Reserved, E::Changed, None);
        check(P::Running, E::AllSettled { held: false }, Some(fin));
        check(P::Running, E::AllSettled { held: true }, Some(fin));
        check(P::Running, E::Changed, Some(P::Draining));
        check(P::Running, E::Replayed, Some(P::Running));
        check(P::Running, E::Reported, None);
        check(P::Draining, E::AllSettled { held: false }, Some(fin_sup));
        check(P::Draining, E::Changed, Some(P::Draining));
        check(P::Draining, E::Replayed, None);
        check(fin, E::Reported, Some(P::Finished));
        check(fin_sup, E::Reported, Some(P::Superseded));
        check(fin, E::Replayed, Some(P::Running));
        check(P::Held, E::Replayed, Some(P::Running));
        check(P::Held, E::Changed, Some(P::Draining));
        check(P::Finished, E::Replayed, Some(P::Running));
        check(P::Finished, E::Changed, None);
        check(P::Rejected, E::Valid, None);
        check(P::Superseded, E::Replayed, None);
        assert_eq!(fin.held(), Ok(P::Held));
        assert!(fin_sup.held().is_err());
        for ended in [P::Finished, P::Rejected, P::Superseded] {
            assert!(ended.is_ended());
            assert!(!ended.submits());
        }
        assert!(P::Running.submits());
        assert!(!P::Draining.submits());
    }
}
