//! What an audit finds: the invariants it checks, each violation with the journal message
//! that shows it, and the report printed by `berth-audit` (a table for people, JSON for
//! programs).

use serde::Serialize;
use std::fmt;

/// The invariant a [`Violation`] breaks (DESIGN.md, "Invariants").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Invariant {
    /// An instance's allocations exceed its registered CPU or memory.
    OverCommit,
    /// A host port is allocated twice on one instance, or is one of its reserved ports.
    PortHeldTwice,
    /// A task appears on two instances.
    TaskPlacedTwice,
    /// A task's lastStatus moved backwards, or its desiredStatus left STOPPED.
    LifecycleBackwards,
    /// A stopped task still holds an allocation on its instance.
    ResourcesNotReturned,
    /// An instance allocates resources to a task that has no record on that instance.
    OrphanAllocation,
    /// A command wrote to the journal but has no outcome.
    MissingOutcome,
    /// A record on an entity subject does not decode as that entity.
    UndecodableRecord,
    /// A command's effect landed under a claim a later delivery had already fenced off:
    /// two executors of one command both placed a task.
    StaleClaim,
    /// A task launched for a service took its non-stopped tasks above `maximumPercent`
    /// of the desired count its step was taken for.
    ServiceAboveMaximum,
    /// A step of the service scheduler stopped healthy tasks below
    /// `minimumHealthyPercent`.
    ServiceBelowHealthyFloor,
}

impl Invariant {
    pub const ALL: [Invariant; 11] = [
        Self::OverCommit,
        Self::PortHeldTwice,
        Self::TaskPlacedTwice,
        Self::LifecycleBackwards,
        Self::ResourcesNotReturned,
        Self::OrphanAllocation,
        Self::MissingOutcome,
        Self::UndecodableRecord,
        Self::StaleClaim,
        Self::ServiceAboveMaximum,
        Self::ServiceBelowHealthyFloor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OverCommit => "OverCommit",
            Self::PortHeldTwice => "PortHeldTwice",
            Self::TaskPlacedTwice => "TaskPlacedTwice",
            Self::LifecycleBackwards => "LifecycleBackwards",
            Self::ResourcesNotReturned => "ResourcesNotReturned",
            Self::OrphanAllocation => "OrphanAllocation",
            Self::MissingOutcome => "MissingOutcome",
            Self::UndecodableRecord => "UndecodableRecord",
            Self::StaleClaim => "StaleClaim",
            Self::ServiceAboveMaximum => "ServiceAboveMaximum",
            Self::ServiceBelowHealthyFloor => "ServiceBelowHealthyFloor",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One breach of an invariant, located at the journal message that shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Stream sequence of the message in `BERTH_STATE`.
    pub sequence: u64,
    pub subject: String,
    pub invariant: Invariant,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {} {}: {}",
            self.sequence, self.subject, self.invariant, self.detail
        )
    }
}

/// The result of one audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct AuditReport {
    /// Journal messages replayed.
    pub messages: u64,
    /// Distinct container instances seen.
    pub instances: usize,
    /// Distinct tasks seen (per cluster).
    pub tasks: usize,
    /// In journal order.
    pub violations: Vec<Violation>,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many violations break `invariant`.
    pub fn count(&self, invariant: Invariant) -> usize {
        self.violations
            .iter()
            .filter(|v| v.invariant == invariant)
            .count()
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const WIDTH: usize = 22;
        writeln!(f, "{:<WIDTH$} {:>8}", "messages", self.messages)?;
        writeln!(f, "{:<WIDTH$} {:>8}", "instances", self.instances)?;
        writeln!(f, "{:<WIDTH$} {:>8}", "tasks", self.tasks)?;
        for invariant in Invariant::ALL {
            writeln!(f, "{:<WIDTH$} {:>8}", invariant, self.count(invariant))?;
        }
        if self.is_clean() {
            writeln!(f, "clean: no invariant violated")?;
        } else {
            writeln!(f, "{} violation(s):", self.violations.len())?;
            for violation in &self.violations {
                writeln!(f, "{violation}")?;
            }
        }
        Ok(())
    }
}
