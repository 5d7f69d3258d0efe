//! Condition variables notified only while someone waits on them. Every logged entry, ack and
//! release passes one of these; a `notify_all` with nobody waiting still costs a system call
//! on some platforms and a cache-line round trip on all, and on the primary's hot path nobody
//! is usually waiting. So waiters count themselves in the state the mutex guards, and a
//! notifier that sees no count skips the call. The count is changed and read under the mutex,
//! so no wake-up can be missed.

use std::sync::{Condvar, MutexGuard};
use std::time::Instant;

/// Waits on `cond` until notified or `deadline`, counted in `count(state)` meanwhile.
pub fn wait_counted<'a, S>(
    cond: &Condvar,
    mut g: MutexGuard<'a, S>,
    deadline: Instant,
    count: impl Fn(&mut S) -> &mut usize,
) -> MutexGuard<'a, S> {
    *count(&mut g) += 1;
    let left = deadline.saturating_duration_since(Instant::now());
    let mut g = match cond.wait_timeout(g, left) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    };
    *count(&mut g) -= 1;
    g
}

/// Releases `g` and wakes everyone waiting on `cond`, if `count(state)` says anyone is.
pub fn notify_counted<S>(cond: &Condvar, g: MutexGuard<'_, S>, count: impl Fn(&S) -> usize) {
    let anyone = count(&g) > 0;
    drop(g);
    if anyone {
        cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Default)]
    struct State {
        value: u32,
        waiting: usize,
    }

    #[test]
    fn a_waiter_is_counted_while_it_waits_and_woken_by_a_counted_notify() {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let s = Arc::clone(&shared);
        let waiter = std::thread::spawn(move || {
            let (m, c) = &*s;
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut g = m.lock().unwrap();
            while g.value == 0 && Instant::now() < deadline {
                g = wait_counted(c, g, deadline, |s| &mut s.waiting);
            }
            (g.value, g.waiting)
        });
        let (m, c) = &*shared;
        // Once the waiter counts itself, a notify reaches it.
        while m.lock().unwrap().waiting == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut g = m.lock().unwrap();
        g.value = 7;
        notify_counted(c, g, |s| s.waiting);
        assert_eq!(
            waiter.join().unwrap(),
            (7, 0),
            "woken, and no longer counted"
        );
    }
}
