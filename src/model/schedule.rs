//! Update schedules (conventions §5.2): `sync` (one Jacobi group), `async2` (list positions 0, 2, 4, … then
//! 1, 3, 5, …) and explicit `groups`. One iteration updates every free layer exactly once.
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Sync,
    Async2,
    Groups,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub groups: Vec<Vec<usize>>,
}

impl Schedule {
    pub fn sync(n_layers: usize) -> Self {
        Schedule { kind: ScheduleKind::Sync, groups: vec![(0..n_layers).collect()] }
    }
    pub fn async2(n_layers: usize) -> Self {
        let a: Vec<usize> = (0..n_layers).step_by(2).collect();
        let b: Vec<usize> = (1..n_layers).step_by(2).collect();
        let groups = [a, b].into_iter().filter(|g| !g.is_empty()).collect();
        Schedule { kind: ScheduleKind::Async2, groups }
    }
    pub fn groups(groups: Vec<Vec<usize>>) -> Self {
        Schedule { kind: ScheduleKind::Groups, groups }
    }
    pub fn key(&self) -> &'static str {
        match self.kind {
            ScheduleKind::Sync => "sync",
            ScheduleKind::Async2 => "async2",
            ScheduleKind::Groups => "groups",
        }
    }
    pub fn parse(s: &str, n_layers: usize) -> Result<Self> {
        match s {
            "sync" => Ok(Self::sync(n_layers)),
            "async2" => Ok(Self::async2(n_layers)),
            _ => Err(Error::Config(format!("schedule '{s}' is not one of sync, async2"))),
        }
    }
    /// Every free layer appears in exactly one group.
    pub fn validate(&self, n_layers: usize) -> Result<()> {
        let mut seen = vec![0usize; n_layers];
        for g in &self.groups {
            for &k in g {
                if k >= n_layers {
                    return Err(Error::Config(format!("schedule group names layer index {k} of {n_layers}")));
                }
                seen[k] += 1;
            }
        }
        if let Some(k) = seen.iter().position(|&c| c != 1) {
            return Err(Error::Config(format!("schedule must update layer L{} exactly once per iteration", k + 1)));
        }
        Ok(())
    }
}
