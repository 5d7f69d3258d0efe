//! What the view service tells its operator: leadership, view changes, etcd trouble. The library
//! prints nothing itself; the program embedding it decides what to do with each event (the
//! `understudy viewserver` command prints it as a line on stderr and, with `--events FILE`,
//! appends it to FILE as a JSON line).

use std::sync::Arc;

use serde::Serialize;

use crate::{Finished, View};

/// One thing worth telling the operator, serialised as `{"event": "<snake_case name>", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ServiceEvent {
    /// This process now leads the service (term `term`, service id `service`), at `view`.
    Leading {
        /// The store's leadership term (a new number whenever leadership is gained).
        term: u64,
        /// The service's identity, the same across restarts and leaders.
        service: String,
        /// The view it took over.
        view: View,
    },
    /// Another viewserver leads; this one forwards nobody and answers "not leader".
    Following {
        /// The leader's advertised address.
        leader: String,
    },
    /// This process lost the leadership it had.
    NoLongerLeading,
    /// The view changed (stored before any answer revealed it).
    ViewChanged {
        /// The new view.
        view: View,
    },
    /// The primary reported that the guest ended and everything it said was released (stored
    /// before any answer revealed it): no view changes any more.
    EndRecorded {
        /// How and in which view.
        finished: Finished,
    },
    /// etcd stopped answering (said once, until it answers again).
    EtcdFailing {
        /// What the last call failed with.
        error: String,
    },
    /// etcd answers again after [`ServiceEvent::EtcdFailing`].
    EtcdAnswersAgain,
}

impl std::fmt::Display for ServiceEvent {
    /// The human form, as the `understudy viewserver` command prints it after `viewserver: `.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Leading {
                term,
                service,
                view,
            } => write!(f, "leading (term {term}, service {service}); {view}"),
            Self::Following { leader } => write!(f, "following {leader}"),
            Self::NoLongerLeading => write!(f, "no longer leading"),
            Self::ViewChanged { view } => write!(f, "{view}"),
            Self::EndRecorded { finished } => write!(
                f,
                "the guest finished in view {} ({}); no view changes any more",
                finished.view, finished.end
            ),
            Self::EtcdFailing { error } => write!(f, "etcd: {error}"),
            Self::EtcdAnswersAgain => write!(f, "etcd answers again"),
        }
    }
}

/// Receives every [`ServiceEvent`] on the thread that caused it, sometimes while the service's
/// lock is held: it must be quick and must not call back into the service.
#[derive(Clone)]
pub struct Observer(Arc<dyn Fn(&ServiceEvent) + Send + Sync>);

impl Observer {
    /// An observer calling `f` with each event.
    pub fn new(f: impl Fn(&ServiceEvent) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Hands `event` to the observer.
    pub fn emit(&self, event: &ServiceEvent) {
        (self.0)(event);
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Hands `event` to `observer` if there is one.
pub(crate) fn emit(observer: Option<&Observer>, event: ServiceEvent) {
    if let Some(o) = observer {
        o.emit(&event);
    }
}
