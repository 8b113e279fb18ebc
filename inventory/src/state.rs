//! The machine lifecycle. The allowed transitions live here and nowhere else.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a machine is in its life, Ironic-style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    /// Enrolled or discovered, not yet inspected.
    New,
    /// The agent or BMC is reading its hardware.
    Inspecting,
    /// Ready to be allocated.
    Available,
    /// Held by a lease, not yet deployed.
    Allocated,
    /// An image is being written.
    Deploying,
    /// Running its image.
    Deployed,
    /// Being wiped before going back to the pool.
    Releasing,
    /// Taken out of service by staff.
    Maintenance,
    /// Something went wrong; see the state reason.
    Failed,
    /// Gone for good, kept for history.
    Retired,
}

impl MachineState {
    /// Every state, in lifecycle order.
    pub const ALL: [MachineState; 10] = [
        MachineState::New,
        MachineState::Inspecting,
        MachineState::Available,
        MachineState::Allocated,
        MachineState::Deploying,
        MachineState::Deployed,
        MachineState::Releasing,
        MachineState::Maintenance,
        MachineState::Failed,
        MachineState::Retired,
    ];

    /// The lowercase name used in the API and database.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::New => "new",
            MachineState::Inspecting => "inspecting",
            MachineState::Available => "available",
            MachineState::Allocated => "allocated",
            MachineState::Deploying => "deploying",
            MachineState::Deployed => "deployed",
            MachineState::Releasing => "releasing",
            MachineState::Maintenance => "maintenance",
            MachineState::Failed => "failed",
            MachineState::Retired => "retired",
        }
    }

    /// The states this one may move to. The single source of truth for the lifecycle.
    pub fn allowed_next(self) -> &'static [MachineState] {
        use MachineState::*;
        match self {
            New => &[Inspecting, Available, Maintenance, Failed, Retired],
            Inspecting => &[Available, Failed, Maintenance],
            Available => &[
                Allocated,
                Inspecting,
                Deploying,
                Releasing,
                Maintenance,
                Retired,
            ],
            Allocated => &[Deploying, Releasing, Maintenance],
            Deploying => &[Deployed, Failed, Maintenance],
            Deployed => &[Deploying, Releasing, Maintenance],
            Releasing => &[Available, Failed, Maintenance],
            Maintenance => &[New, Inspecting, Available, Releasing, Failed, Retired],
            Failed => &[
                Inspecting,
                Available,
                Deploying,
                Releasing,
                Maintenance,
                Retired,
            ],
            Retired => &[Maintenance],
        }
    }

    /// Whether `self → to` is allowed.
    pub fn can_go_to(self, to: MachineState) -> bool {
        self.allowed_next().contains(&to)
    }

    /// States in which a machine may be deleted from the inventory.
    pub fn deletable(self) -> bool {
        matches!(
            self,
            MachineState::New
                | MachineState::Available
                | MachineState::Maintenance
                | MachineState::Failed
                | MachineState::Retired
        )
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineState {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                crate::Error::invalid(
                    "state",
                    format!(
                        "'{s}' is not a machine state (one of: {})",
                        MachineState::ALL.map(|s| s.as_str()).join(", ")
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in MachineState::ALL {
            assert_eq!(s.as_str().parse::<MachineState>().ok(), Some(s));
        }
        assert!("bogus".parse::<MachineState>().is_err());
    }

    #[test]
    fn happy_path_is_allowed() {
        use MachineState::*;
        let path = [
            New, Inspecting, Available, Allocated, Deploying, Deployed, Releasing, Available,
        ];
        for w in path.windows(2) {
            assert!(w[0].can_go_to(w[1]), "{} -> {}", w[0], w[1]);
        }
    }

    #[test]
    fn shortcuts_are_forbidden() {
        use MachineState::*;
        assert!(!New.can_go_to(Deployed));
        assert!(!Available.can_go_to(Deployed));
        assert!(!Retired.can_go_to(Available));
        assert!(!Deploying.can_go_to(Available));
        for s in MachineState::ALL {
            assert!(
                !s.can_go_to(s),
                "{s} -> itself must not count as a transition"
            );
        }
    }

    #[test]
    fn every_state_can_reach_maintenance_or_is_it() {
        for s in MachineState::ALL {
            assert!(s == MachineState::Maintenance || s.can_go_to(MachineState::Maintenance));
        }
    }
}
