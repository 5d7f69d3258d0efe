//! Where an interrupt may land mid-execution, and how replay gets back to such a place.
//!
//! A precise position is (guest exits so far, instruction counter, all registers). Recording one
//! is cheap: stop the vCPU, read the counter and the registers. Replaying one is the hard part:
//! nothing on this host interrupts the guest after N instructions, so the replayer approaches
//! the count in steps, as rr does with its branch counter: timed kicks aimed well short of the
//! target while it is far away, then a hardware breakpoint on the recorded `rip` (each hit
//! costs a step-over, so it is used only for the last few passes), or single steps when the
//! remaining distance is a handful of instructions.

use logging_channel::format::CounterKind;

/// At which privilege levels interrupts may land mid-execution on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrecisePolicy {
    /// Interrupts may land mid-execution in kernel code.
    pub cpl0: bool,
    /// Interrupts may land mid-execution in user code.
    pub cpl3: bool,
}

impl Default for PrecisePolicy {
    /// On PVM: CPL0 yes (exact counter, working breakpoints and single-step); CPL3 no (the
    /// counter does not see native CPL3 code and guest debugging does not work there).
    fn default() -> Self {
        Self {
            cpl0: true,
            cpl3: false,
        }
    }
}

impl PrecisePolicy {
    /// Interrupts land only at guest exits.
    pub const NONE: Self = Self {
        cpl0: false,
        cpl3: false,
    };

    /// Whether an interrupt may land mid-execution at privilege level `cpl`: never without a
    /// counter, since replay could not find the place again.
    pub fn allows(&self, cpl: u8, counter: CounterKind) -> bool {
        if counter == CounterKind::None {
            return false;
        }
        match cpl {
            0 => self.cpl0,
            3 => self.cpl3,
            _ => false,
        }
    }
}

/// What the replayer does next to reach a recorded count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ApproachStep {
    /// Let the guest run and kick it after this many nanoseconds.
    Kick {
        /// Timer delay in ns.
        after_ns: u64,
    },
    /// Run to the recorded `rip` with a hardware breakpoint.
    Breakpoint,
    /// Execute exactly one instruction.
    SingleStep,
}

/// Tuning of the approach, measured on this host (see docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApproachTuning {
    /// Rate assumed before any has been measured, ns per counted instruction. Deliberately
    /// fast (PVM's simplest instructions take ~280 ns) so the first kicks land short.
    pub initial_insn_ns: f64,
    /// Time from a timer's expiry to the vCPU's stop during which the guest keeps running, ns.
    pub kick_latency_ns: f64,
    /// Fraction of the remaining distance each kick aims to cover. Leaves room for the guest
    /// to run up to 1/aim times faster than estimated without passing the target.
    pub aim: f64,
    /// Kicks shorter than this are not worth a round trip: use breakpoints instead, ns.
    pub min_kick_ns: f64,
    /// Below this distance, single-step instead of breakpoints.
    pub single_step_within: u64,
}

impl Default for ApproachTuning {
    fn default() -> Self {
        Self {
            initial_insn_ns: 200.0,
            kick_latency_ns: 15_000.0,
            aim: 0.4,
            min_kick_ns: 20_000.0,
            single_step_within: 8,
        }
    }
}

impl ApproachTuning {
    /// For a replay that just overshot, until its next checkpoint (or the second attempt of
    /// one without checkpoints): aims at under a sixth of the distance and assumes kicks may
    /// come 100 µs late.
    pub fn cautious() -> Self {
        Self {
            aim: 0.15,
            kick_latency_ns: 100_000.0,
            ..Self::default()
        }
    }
}

impl ApproachTuning {
    /// The tuning for try number `attempt` (from 1) of a replay that starts over after an
    /// overshoot: normal, then cautious, then assuming kicks a millisecond late.
    pub fn for_attempt(attempt: u32) -> Self {
        match attempt {
            0 | 1 => Self::default(),
            2 => Self::cautious(),
            _ => Self::final_stretch(),
        }
    }

    /// For the last entries of a stream whose primary is gone: they are replayed once, and an
    /// overshoot now would lose the only copy of the guest (the backup dropped its state when a
    /// kick landed late as its primary died: a CI run of 20 SIGKILLs lost the guest so). Kicks
    /// are assumed up to a millisecond late (seen with ten processes on two cores) and aim at
    /// under a third of the distance; the last stretch is breakpoints. Costs a few ms per
    /// interrupt, once, at failover.
    pub fn final_stretch() -> Self {
        Self {
            aim: 0.3,
            kick_latency_ns: 1_000_000.0,
            ..Self::default()
        }
    }
}

/// Decides the next step for `remaining` instructions to go when the guest currently executes
/// about `insn_ns` nanoseconds per counted instruction. Pure, so it is tested exhaustively.
pub fn plan(remaining: u64, insn_ns: f64, t: &ApproachTuning) -> ApproachStep {
    if remaining <= t.single_step_within {
        return ApproachStep::SingleStep;
    }
    // The guest runs for `after_ns` plus the kick latency; that must stay within `aim` of the
    // distance at the estimated rate.
    let budget_ns = remaining as f64 * insn_ns * t.aim - t.kick_latency_ns;
    if budget_ns < t.min_kick_ns {
        return ApproachStep::Breakpoint;
    }
    ApproachStep::Kick {
        after_ns: budget_ns as u64,
    }
}

/// Running estimate of how fast the counter advances, from the replay's own runs.
///
/// The estimate is the fastest rate ever measured in this replay. Overshooting a target is
/// fatal while stopping short only costs another kick, and slow samples are mostly artefacts
/// (the vCPU thread was descheduled, the guest spent time in code the counter does not see, a
/// breakpoint run paid for its exit), so a slow sample must never make the next kick aim far.
/// (The estimate used to be the fastest of the last 16 samples: after a stretch of slow code
/// and breakpoint runs it planned at 1.2 µs per instruction where the guest then ran at
/// 0.46 µs, a 2.6x overshoot; that happened in most compute replays on this host.)
///
/// For its first samples it plans no slower than the deliberately fast initial rate: right after
/// a start (boot code, or a backup's freshly installed memory, whose first touches are slow
/// here) every sample is slow, and the guest may then run much faster than any of them (a saved
/// state that replayed its first kicks at boot speed overshot once the computation began).
#[derive(Debug, Clone, PartialEq)]
pub struct RateEstimate {
    fastest: f64,
    initial: f64,
    samples: u32,
}

impl RateEstimate {
    /// Samples after which the measured rate alone is planned with.
    const WARM_UP: u32 = 512;

    /// An estimate with no samples, planning at `t.initial_insn_ns`.
    pub fn new(t: &ApproachTuning) -> Self {
        Self {
            fastest: f64::INFINITY,
            initial: t.initial_insn_ns,
            samples: 0,
        }
    }

    /// Nanoseconds per counted instruction to plan with.
    pub fn insn_ns(&self) -> f64 {
        if self.samples < Self::WARM_UP {
            self.fastest.min(self.initial)
        } else {
            self.fastest
        }
    }

    /// Learns from a run that let the guest execute `ran` counted instructions in `ran_ns`.
    pub fn observe(&mut self, ran: u64, ran_ns: f64) {
        if ran < 16 || ran_ns <= 0.0 {
            return;
        }
        self.fastest = self.fastest.min(ran_ns / ran as f64);
        self.samples = self.samples.saturating_add(1);
    }
}

/// The shortest kick worth arming on this host, learnt during a replay.
///
/// A kick whose timer fires before the guest has executed a counted instruction (the vCPU was
/// still on its way back into the guest: a stop and re-entry took ~50 µs on one host, against a
/// 20 µs shortest kick) made no progress, and the same plan would arm it again without end
/// (450,000 kicks for 117 interrupts, 20x the recording's time). After two such kicks in a
/// row, kicks shorter than twice the second one's timer are not armed; the approach takes a
/// breakpoint instead, which always gets somewhere. On a host whose round trip is longer
/// still, two more idle kicks double the floor again: a few idle kicks, each one round trip,
/// find it.
///
/// One idle kick alone is a hiccup, not the host: here one in a few thousand kicks stops the
/// guest before it ran, at 30 µs and at 600 µs alike (the vCPU did not get back into the guest
/// in time). The floor used to rise at the first, to 1.5x its time from arming to stop, for the
/// rest of the replay: the breakpoint phases then grew from ~90 µs to ~300 µs of guest time, or
/// to 1.3 ms, and one replay of `compute` took 2 to 8 times as many stops as another. Two such
/// hiccups in a row happen too on a busy host: an idle kick armed for more than
/// [`KickFloor::HICCUP_ABOVE`] times the floor does not count (two at 250 µs raised the floor to
/// its 500 µs ceiling, and that replay took 4x the breakpoint runs of the next).
#[derive(Debug, Clone, PartialEq)]
pub struct KickFloor {
    ns: f64,
    /// Idle kicks in a row, up to the last kick.
    idle_streak: u32,
}

impl KickFloor {
    /// Ceiling: kicks are never turned off for good.
    pub const MAX_NS: f64 = 500_000.0;

    /// Starts at the tuning's own shortest kick.
    pub fn new(t: &ApproachTuning) -> Self {
        Self {
            ns: t.min_kick_ns,
            idle_streak: 0,
        }
    }

    /// An idle kick armed for more than this many times the floor says nothing about short
    /// kicks: no host takes that long to re-enter the guest, the host was busy.
    pub const HICCUP_ABOVE: f64 = 4.0;

    /// Learns from a kick armed for `after_ns`; `idle`: it stopped the guest before it ran.
    pub fn kicked(&mut self, after_ns: f64, idle: bool) {
        if !idle {
            self.idle_streak = 0;
            return;
        }
        if after_ns > self.ns * Self::HICCUP_ABOVE {
            return;
        }
        self.idle_streak += 1;
        if self.idle_streak >= 2 {
            self.ns = (after_ns * 2.0).clamp(self.ns, Self::MAX_NS);
        }
    }

    /// The shortest kick it allows now, in ns.
    pub fn ns(&self) -> f64 {
        self.ns
    }

    /// `t` with its shortest kick raised to what this host needs.
    pub fn apply(&self, t: ApproachTuning) -> ApproachTuning {
        ApproachTuning {
            min_kick_ns: t.min_kick_ns.max(self.ns),
            ..t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_needs_a_counter() {
        let p = PrecisePolicy::default();
        assert!(p.allows(0, CounterKind::PvmInsnEmulation));
        assert!(!p.allows(3, CounterKind::PvmInsnEmulation));
        assert!(!p.allows(0, CounterKind::None));
        assert!(!PrecisePolicy::NONE.allows(0, CounterKind::PvmInsnEmulation));
    }

    #[test]
    fn idle_kicks_in_a_row_raise_the_shortest_kick_until_its_ceiling_and_never_lower_it() {
        let t = ApproachTuning::default();
        let mut floor = KickFloor::new(&t);
        assert_eq!(floor.apply(t), t);
        // One idle kick between kicks that ran is a hiccup: nothing changes.
        floor.kicked(600_000.0, true);
        floor.kicked(30_000.0, false);
        assert_eq!(floor.apply(t), t);
        // Two 45 µs kicks in a row that stopped the guest before it ran: kicks under 90 µs
        // are not armed.
        floor.kicked(45_000.0, true);
        floor.kicked(45_000.0, true);
        assert_eq!(floor.apply(t).min_kick_ns, 90_000.0);
        // Shorter idle kicks later do not lower it; longer ones raise it.
        floor.kicked(10_000.0, true);
        assert_eq!(floor.apply(t).min_kick_ns, 90_000.0);
        floor.kicked(75_000.0, true);
        assert_eq!(floor.apply(t).min_kick_ns, 150_000.0);
        // A kick that ran ends the streak but keeps the floor.
        floor.kicked(150_000.0, false);
        floor.kicked(200_000.0, true);
        assert_eq!(floor.apply(t).min_kick_ns, 150_000.0);
        // Idle kicks armed far above the floor are the host's hiccups: they count for nothing.
        floor.kicked(150_000.0, false);
        floor.kicked(700_000.0, true);
        floor.kicked(10_000_000.0, true);
        assert_eq!(floor.apply(t).min_kick_ns, 150_000.0);
        // Idle kicks near the floor keep doubling it, never past the ceiling.
        for _ in 0..4 {
            let at = floor.apply(t).min_kick_ns;
            floor.kicked(at, true);
            floor.kicked(at, true);
        }
        assert_eq!(floor.apply(t).min_kick_ns, KickFloor::MAX_NS);
        // The floor only ever raises a tuning's own shortest kick.
        let cautious = ApproachTuning {
            min_kick_ns: 1_000_000.0,
            ..t
        };
        assert_eq!(floor.apply(cautious), cautious);
        // Under the raised floor, a target a normal kick would go for is breakpointed instead.
        let floor = {
            let mut f = KickFloor::new(&t);
            f.kicked(45_000.0, true);
            f.kicked(45_000.0, true);
            f
        };
        assert!(matches!(plan(700, 200.0, &t), ApproachStep::Kick { .. }));
        assert_eq!(plan(700, 200.0, &floor.apply(t)), ApproachStep::Breakpoint);
    }

    #[test]
    fn near_targets_are_stepped_then_breakpointed_then_kicked() {
        let t = ApproachTuning::default();
        assert_eq!(plan(0, 1000.0, &t), ApproachStep::SingleStep);
        assert_eq!(
            plan(t.single_step_within, 1000.0, &t),
            ApproachStep::SingleStep
        );
        assert_eq!(
            plan(t.single_step_within + 1, 1000.0, &t),
            ApproachStep::Breakpoint
        );
        assert_eq!(plan(50, 1000.0, &t), ApproachStep::Breakpoint);
        assert!(matches!(
            plan(1_000_000, 1000.0, &t),
            ApproachStep::Kick { .. }
        ));
    }

    #[test]
    fn a_kick_never_aims_past_the_target_even_if_the_guest_runs_faster_than_estimated() {
        let t = ApproachTuning::default();
        for insn_ns in [150.0, 280.0, 1000.0, 3000.0] {
            for remaining in (0..2_000_000u64).step_by(997) {
                if let ApproachStep::Kick { after_ns } = plan(remaining, insn_ns, &t) {
                    // Up to 1/aim (2.5x) faster than estimated still stops short.
                    let worst = (after_ns as f64 + t.kick_latency_ns) / (insn_ns * t.aim * 1.0001);
                    assert!(
                        worst <= remaining as f64,
                        "{insn_ns} ns/insn, remaining {remaining}: may overshoot"
                    );
                }
            }
        }
    }

    #[test]
    fn the_final_stretch_leaves_a_millisecond_of_late_kick_before_every_target() {
        let (fast, last) = (ApproachTuning::default(), ApproachTuning::final_stretch());
        // 3 ms away at 300 ns per instruction: a normal replay kicks, the final stretch does
        // not dare (a kick a millisecond late would land past a third of the way).
        assert!(matches!(
            plan(10_000, 300.0, &fast),
            ApproachStep::Kick { .. }
        ));
        assert_eq!(plan(10_000, 300.0, &last), ApproachStep::Breakpoint);
        // Far away it kicks, stopping short of the target by the assumed lateness and more.
        for remaining in [100_000u64, 1_000_000, 10_000_000] {
            match plan(remaining, 300.0, &last) {
                ApproachStep::Kick { after_ns } => {
                    let distance_ns = remaining as f64 * 300.0;
                    assert!(after_ns as f64 + 1_000_000.0 <= distance_ns * 0.3 + 1.0);
                }
                other => panic!("{remaining}: {other:?}"),
            }
        }
    }

    #[test]
    fn kicks_shrink_geometrically() {
        let t = ApproachTuning::default();
        let insn_ns = 1000.0;
        let mut remaining = 1_000_000u64;
        let mut kicks = 0;
        while let ApproachStep::Kick { after_ns } = plan(remaining, insn_ns, &t) {
            remaining -= ((after_ns as f64 + t.kick_latency_ns) / insn_ns) as u64;
            kicks += 1;
        }
        assert!(kicks <= 20, "{kicks} kicks");
        assert!(
            remaining < 200,
            "ended kicking {remaining} instructions away"
        );
    }

    #[test]
    fn rate_estimate_is_the_fastest_sample_ever() {
        let t = ApproachTuning::default();
        let mut r = RateEstimate::new(&t);
        assert_eq!(r.insn_ns(), t.initial_insn_ns);
        r.observe(1000, 1_000_000.0);
        assert_eq!(
            r.insn_ns(),
            t.initial_insn_ns,
            "warming up, it plans no slower than the initial rate"
        );
        for _ in 0..RateEstimate::WARM_UP {
            r.observe(1000, 1_000_000.0);
        }
        assert_eq!(r.insn_ns(), 1000.0);
        r.observe(1000, 9_000_000.0);
        assert_eq!(
            r.insn_ns(),
            1000.0,
            "a slow sample does not slow the estimate down"
        );
        r.observe(10, 1.0);
        assert_eq!(r.insn_ns(), 1000.0, "tiny samples are ignored");
        r.observe(1000, 460_000.0);
        assert_eq!(r.insn_ns(), 460.0);
        // A long stretch of slow samples (slow code, breakpoint runs) must not make the replay
        // forget how fast the guest can run: the next kick would aim past its target.
        for _ in 0..1000 {
            r.observe(1000, 1_200_000.0);
        }
        assert_eq!(r.insn_ns(), 460.0);
    }

    #[test]
    fn cautious_tuning_aims_shorter_and_expects_later_kicks() {
        let (d, c) = (ApproachTuning::default(), ApproachTuning::cautious());
        assert!(c.aim < d.aim && c.kick_latency_ns > d.kick_latency_ns);
    }

    /// docs/design.md quotes the approach tuning in a table, one row per constant: changing a
    /// constant without its row (or a row without its constant) fails here.
    #[test]
    fn design_md_quotes_the_approach_tuning() {
        const DESIGN: &str = include_str!("../../docs/design.md");
        let (d, c, f) = (
            ApproachTuning::default(),
            ApproachTuning::cautious(),
            ApproachTuning::final_stretch(),
        );
        let code: [(&str, f64); 10] = [
            ("ApproachTuning::default().aim", d.aim),
            (
                "ApproachTuning::default().kick_latency_ns",
                d.kick_latency_ns,
            ),
            ("ApproachTuning::default().min_kick_ns", d.min_kick_ns),
            (
                "ApproachTuning::default().single_step_within",
                d.single_step_within as f64,
            ),
            (
                "ApproachTuning::default().initial_insn_ns",
                d.initial_insn_ns,
            ),
            ("RateEstimate::WARM_UP", f64::from(RateEstimate::WARM_UP)),
            ("ApproachTuning::cautious().aim", c.aim),
            (
                "ApproachTuning::cautious().kick_latency_ns",
                c.kick_latency_ns,
            ),
            ("ApproachTuning::final_stretch().aim", f.aim),
            (
                "ApproachTuning::final_stretch().kick_latency_ns",
                f.kick_latency_ns,
            ),
        ];
        // Rows look like "| `ApproachTuning::default().aim` | 0.4 | meaning |".
        let mut quoted: Vec<(&str, &str)> = Vec::new();
        for line in DESIGN.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let Some(name) = cells
                .get(1)
                .and_then(|c| c.strip_prefix('`'))
                .and_then(|c| c.strip_suffix('`'))
            else {
                continue;
            };
            if name.starts_with("ApproachTuning::") || name.starts_with("RateEstimate::") {
                quoted.push((name, cells.get(2).copied().unwrap_or("")));
            }
        }
        let mut wrong = Vec::new();
        for (name, value) in &code {
            let rows: Vec<&str> = quoted
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .collect();
            match rows[..] {
                [doc] if doc.replace('_', "").parse::<f64>() == Ok(*value) => {}
                [doc] => wrong.push(format!(
                    "{name}: design.md says {doc}, the code has {value}"
                )),
                [] => wrong.push(format!(
                    "{name}: no row in design.md (the code has {value})"
                )),
                _ => wrong.push(format!("{name}: {} rows in design.md", rows.len())),
            }
        }
        for (name, _) in &quoted {
            if !code.iter().any(|(n, _)| n == name) {
                wrong.push(format!(
                    "{name}: design.md quotes it, this test does not know it"
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "docs/design.md's approach tuning table disagrees with vmm/src/precise.rs; update \
             both together:\n  {}",
            wrong.join("\n  ")
        );
        // The table lists only aim and kick latency for the other tunings.
        for (name, other) in [("cautious", c), ("final_stretch", f)] {
            let rest = ApproachTuning {
                aim: d.aim,
                kick_latency_ns: d.kick_latency_ns,
                ..other
            };
            assert_eq!(
                rest, d,
                "{name}() now differs from default() in a field design.md's table does not list"
            );
        }
    }
}
