//! The rules a node follows, as pure functions: which views it believes,
//! what it says in its pings, and what it does when it learns a view.
//! `understudy node` runs exactly these, and the model checker
//! (`tests/model.rs`) drives them against the real [`ViewService`] with
//! crashes, restarts and a network that loses, delays, reorders and
//! duplicates messages.
//!
//! A node's *holding* is what it has of the guest: nothing, a backup's
//! replica, or the running guest. Its role follows from the latest view and
//! its holding ([`step`]); docs/design.md draws the resulting state machine.
//!
//! [`ViewService`]: crate::ViewService

use crate::service::{Status, View};

/// Who this node is: its name in views and its process identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Me<'a> {
    /// The server name views use for this node.
    pub name: &'a str,
    /// This process's identity: nonzero, larger at every start of the node.
    pub incarnation: u64,
}

/// What a node has of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holding {
    /// Nothing: just started, or dropped what it had.
    Nothing,
    /// A backup's replica, installed from the primary of view `view` and
    /// kept current by its log stream (every entry it acknowledged is in
    /// it, or in its receive buffer on the way in).
    Replica {
        /// The view whose primary sent the state.
        view: u64,
    },
    /// The running guest, as primary of view `view`.
    Guest {
        /// The view it acknowledged as primary.
        view: u64,
    },
}

impl Holding {
    /// What the node says it holds in its pings (`holds`): the view of its
    /// state, 0 for none.
    pub fn holds(self) -> u64 {
        match self {
            Holding::Nothing => 0,
            Holding::Replica { view } | Holding::Guest { view } => view,
        }
    }
}

/// What a node does on learning a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// A fresh view names this node primary and it has nothing: start the
    /// guest from its image.
    Boot,
    /// The view promotes this node, which holds the previous view's replica:
    /// replay every entry received, then run the guest live as primary.
    GoLive,
    /// Keep running the guest, as primary of this view (ack it; stream to
    /// its backup, if any).
    Serve,
    /// This node runs a guest but is not the view's primary: stop it at
    /// once and release nothing more.
    StepDown,
    /// Be the view's backup. `keep`: the replica held is this view's and
    /// stays; otherwise drop whatever is held and wait for the primary's
    /// state.
    Backup {
        /// The replica held is this view's and stays.
        keep: bool,
    },
    /// Not in the view: drop whatever is held and wait.
    Idle,
    /// The view names this node primary but it holds nothing and the view
    /// is not fresh: starting the guest afresh would contradict what it
    /// already said, so never serve; wait (the service is stuck unless its
    /// real holder comes back).
    Stranded,
}

/// Whether a node that has followed `latest` should believe `new`: the same
/// service (a viewserver that lost its state has another identity, and its
/// views describe another history), and not older than what it knows (an
/// answer that was overtaken, or a deposed viewserver's).
pub fn believe(latest: Option<&Status>, new: &Status) -> bool {
    match latest {
        None => true,
        Some(l) => l.service == new.service && new.view.viewnum >= l.view.viewnum,
    }
}

/// The `viewnum` and `holds` of this node's next ping.
pub fn ping_fields(holding: Holding, latest: Option<&View>) -> (u64, u64) {
    (latest.map_or(0, |v| v.viewnum), holding.holds())
}

/// What a node holding `holding` does on learning `view`.
pub fn step(holding: Holding, view: &View, me: Me<'_>) -> Step {
    if view.is_primary(me.name, me.incarnation) {
        return match holding {
            Holding::Guest { .. } => Step::Serve,
            // Promotion: the service promotes only the backup that holds
            // the previous view's state.
            Holding::Replica { view: v } if v + 1 == view.viewnum => Step::GoLive,
            Holding::Nothing if view.fresh => Step::Boot,
            Holding::Replica { .. } | Holding::Nothing => Step::Stranded,
        };
    }
    if let Holding::Guest { .. } = holding {
        return Step::StepDown;
    }
    if view.is_backup(me.name, me.incarnation) {
        return Step::Backup {
            keep: holding == Holding::Replica { view: view.viewnum },
        };
    }
    Step::Idle
}

/// What the node holds once `step` is done (for `Backup { keep: false }`:
/// until a state is installed, which makes it `Replica { view }`).
pub fn after(holding: Holding, step: Step, view: &View) -> Holding {
    match step {
        Step::Boot | Step::GoLive | Step::Serve => Holding::Guest { view: view.viewnum },
        Step::Backup { keep: true } => holding,
        Step::StepDown | Step::Backup { keep: false } | Step::Idle | Step::Stranded => {
            Holding::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Me<'static> = Me {
        name: "a",
        incarnation: 7,
    };

    fn view(viewnum: u64, primary: (&str, u64), backup: (&str, u64), fresh: bool) -> View {
        View {
            viewnum,
            primary: primary.0.into(),
            primary_incarnation: primary.1,
            backup: backup.0.into(),
            backup_incarnation: backup.1,
            fresh,
        }
    }

    #[test]
    fn a_fresh_view_boots_and_no_other_does() {
        let v = view(1, ("a", 7), ("", 0), true);
        assert_eq!(step(Holding::Nothing, &v, ME), Step::Boot);
        let v = view(4, ("a", 7), ("", 0), false);
        assert_eq!(step(Holding::Nothing, &v, ME), Step::Stranded);
    }

    #[test]
    fn the_same_name_in_another_incarnation_is_someone_else() {
        // This process restarted: the view's primary "a" is its dead self.
        let v = view(3, ("a", 6), ("b", 1), false);
        assert_eq!(step(Holding::Nothing, &v, ME), Step::Idle);
        assert_eq!(step(Holding::Guest { view: 3 }, &v, ME), Step::StepDown);
    }

    #[test]
    fn only_the_previous_views_replica_goes_live() {
        let v = view(5, ("a", 7), ("c", 1), false);
        assert_eq!(step(Holding::Replica { view: 4 }, &v, ME), Step::GoLive);
        assert_eq!(step(Holding::Replica { view: 2 }, &v, ME), Step::Stranded);
        assert_eq!(step(Holding::Guest { view: 4 }, &v, ME), Step::Serve);
    }

    #[test]
    fn a_backup_keeps_only_its_views_replica() {
        let v = view(5, ("b", 1), ("a", 7), false);
        assert_eq!(
            step(Holding::Replica { view: 5 }, &v, ME),
            Step::Backup { keep: true }
        );
        // Dropped from view 3, co-opted again in 5: what it had is stale.
        assert_eq!(
            step(Holding::Replica { view: 3 }, &v, ME),
            Step::Backup { keep: false }
        );
        assert_eq!(
            after(
                Holding::Replica { view: 3 },
                Step::Backup { keep: false },
                &v
            ),
            Holding::Nothing
        );
        assert_eq!(step(Holding::Guest { view: 4 }, &v, ME), Step::StepDown);
    }

    #[test]
    fn pings_say_the_latest_view_and_the_state_held() {
        let v = view(5, ("b", 1), ("a", 7), false);
        assert_eq!(ping_fields(Holding::Nothing, None), (0, 0));
        assert_eq!(ping_fields(Holding::Replica { view: 5 }, Some(&v)), (5, 5));
        assert_eq!(ping_fields(Holding::Guest { view: 4 }, Some(&v)), (5, 4));
    }

    #[test]
    fn views_of_another_service_or_older_ones_are_not_believed() {
        let s = |viewnum: u64, service: &str| Status {
            view: view(viewnum, ("a", 1), ("", 0), false),
            service: service.into(),
            ..Status::default()
        };
        assert!(believe(None, &s(1, "x")));
        assert!(believe(Some(&s(3, "x")), &s(3, "x")));
        assert!(believe(Some(&s(3, "x")), &s(4, "x")));
        assert!(!believe(Some(&s(3, "x")), &s(2, "x")));
        assert!(!believe(Some(&s(3, "x")), &s(9, "y")));
    }

    /// design.md draws the role state machine; every transition `step` and `after` make
    /// (holding before → holding after, labelled with the step) is an edge of that diagram, and
    /// every edge labelled with a step is one they make.
    #[test]
    fn design_md_draws_exactly_the_transitions_of_step() {
        fn state(h: Holding) -> &'static str {
            match h {
                Holding::Nothing => "Nothing",
                Holding::Replica { .. } => "Replica",
                Holding::Guest { .. } => "Guest",
            }
        }
        fn label(s: Step) -> &'static str {
            match s {
                Step::Boot => "Boot",
                Step::GoLive => "GoLive",
                Step::Serve => "Serve",
                Step::StepDown => "StepDown",
                Step::Backup { keep: true } => "Backup{keep: true}",
                Step::Backup { keep: false } => "Backup{keep: false}",
                Step::Idle => "Idle",
                Step::Stranded => "Stranded",
            }
        }
        let mut made = std::collections::BTreeSet::new();
        let holdings = [
            Holding::Nothing,
            Holding::Replica { view: 4 },
            Holding::Replica { view: 5 },
            Holding::Replica { view: 2 },
            Holding::Guest { view: 4 },
        ];
        for fresh in [false, true] {
            for primary in [("a", 7), ("a", 6), ("b", 1), ("", 0)] {
                for backup in [("a", 7), ("c", 2), ("", 0)] {
                    let v = view(5, primary, backup, fresh);
                    for h in holdings {
                        let st = step(h, &v, ME);
                        made.insert((state(h), state(after(h, st, &v)), label(st)));
                    }
                }
            }
        }
        let doc = include_str!("../../docs/design.md");
        let start = doc
            .find("### Role state machine of a node")
            .expect("design.md has the role state machine");
        let block = doc[start..]
            .split("```mermaid")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a mermaid diagram follows");
        let labels = [
            "Boot",
            "GoLive",
            "Serve",
            "StepDown",
            "Backup{keep: true}",
            "Backup{keep: false}",
            "Idle",
            "Stranded",
        ];
        let mut drawn = std::collections::BTreeSet::new();
        for line in block.lines() {
            let Some((edge, text)) = line.trim().split_once(": ") else {
                continue;
            };
            let Some((from, to)) = edge.split_once(" --> ") else {
                continue;
            };
            for l in labels {
                // A label names its step in parentheses, possibly with others: "(Idle / ...)".
                let named = ["(", "/ "].iter().any(|before| {
                    text.match_indices(&format!("{before}{l}")).any(|(at, m)| {
                        matches!(text[at + m.len()..].chars().next(), Some(')' | ':' | ' '))
                    })
                });
                if named {
                    let st = |s: &str| -> &'static str {
                        match s {
                            "Nothing" => "Nothing",
                            "Replica" => "Replica",
                            "Guest" => "Guest",
                            other => panic!("design.md draws an unknown state {other:?}"),
                        }
                    };
                    drawn.insert((st(from.trim()), st(to.trim()), l));
                }
            }
        }
        let missing: Vec<_> = made.difference(&drawn).collect();
        let extra: Vec<_> = drawn.difference(&made).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "design.md's role diagram disagrees with node::step:\n  not drawn: {missing:?}\n  drawn but never made: {extra:?}"
        );
    }
}
