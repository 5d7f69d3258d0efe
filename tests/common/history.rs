//! The history invariant, checked on the bytes the world heard: every stretch of output a node
//! released must be the guest's console history at the place that node said it released from.
//! One history for everybody, so nothing released is ever contradicted; and it must still be
//! in the history of the node that holds the guest at the end, so nothing released is lost.
#![allow(dead_code)]

/// What one node wrote to stdout during one of its primary roles.
#[derive(Debug, Clone)]
pub struct Segment {
    pub node: usize,
    /// Console byte of the guest's history where this stretch starts.
    pub from: usize,
    pub bytes: Vec<u8>,
}

/// What a check found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub segments: usize,
    pub released: usize,
    /// Bytes released more than once (a new primary repeating what its predecessor may not
    /// have released: at-least-once output).
    pub repeated: usize,
}

/// Splits node `node`'s stdout into its primary roles' segments, given where each role started:
/// (console byte released from, stdout byte), as its `booting`/`going_live` events say.
pub fn segments(node: usize, starts: &[(usize, usize)], out: &[u8]) -> Vec<Segment> {
    let mut segs = Vec::new();
    for (i, &(from, at)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(out.len(), |&(_, next)| next);
        let bytes = out.get(at..end.min(out.len())).unwrap_or_default().to_vec();
        segs.push(Segment { node, from, bytes });
    }
    // Output before the first role line is output no role accounted for: report it as from
    // byte 0, where it would have to be (a node's first role always says where it starts).
    let first = starts.first().map_or(out.len(), |&(_, at)| at);
    if first > 0 {
        segs.insert(
            0,
            Segment {
                node,
                from: 0,
                bytes: out[..first.min(out.len())].to_vec(),
            },
        );
    }
    segs
}

/// Checks `segs` against `history`, the whole console of the node that holds the guest now
/// (read after the segments, so it covers everything they could contain).
pub fn check(history: &[u8], segs: &[Segment]) -> Result<Report, String> {
    let mut report = Report::default();
    let mut covered = vec![false; history.len()];
    for s in segs {
        if s.bytes.is_empty() {
            continue;
        }
        report.segments += 1;
        report.released += s.bytes.len();
        let end = s.from + s.bytes.len();
        match history.get(s.from..end) {
            Some(h) if h == s.bytes.as_slice() => {}
            Some(h) => {
                let at = h
                    .iter()
                    .zip(&s.bytes)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(format!(
                    "node {} released bytes {}..{} that contradict the history at byte {}: released {:?}, history {:?}",
                    s.node,
                    s.from,
                    end,
                    s.from + at,
                    String::from_utf8_lossy(&s.bytes[at..(at + 60).min(s.bytes.len())]),
                    String::from_utf8_lossy(&h[at..(at + 60).min(h.len())])
                ));
            }
            None => {
                return Err(format!(
                    "node {} released bytes {}..{} but the surviving history has only {} bytes: released output was lost",
                    s.node,
                    s.from,
                    end,
                    history.len()
                ));
            }
        }
        for c in &mut covered[s.from..end] {
            if *c {
                report.repeated += 1;
            }
            *c = true;
        }
    }
    // Between the start of the history and the last byte anyone released, nobody may have
    // skipped a byte: a new primary releases from where it heard its predecessor stopped.
    let last = covered.iter().rposition(|c| *c).map_or(0, |i| i + 1);
    if let Some(gap) = covered[..last].iter().position(|c| !*c) {
        return Err(format!(
            "byte {gap} of the history was never released although later bytes were: output lost"
        ));
    }
    Ok(report)
}
