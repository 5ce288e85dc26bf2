//! Connection balance between the per-worker runtimes (`[server] connection_balance`).
//!
//! With `SO_REUSEPORT` the kernel puts each new connection on one worker's socket by a hash of
//! its addresses and ports, blind to how many each worker already serves: 64 keep-alive
//! connections often split 29 / 35 or 26 / 38, and the busier worker then holds its clients back
//! while the other idles. With `"exact"` (the default) the worker that accepted a connection
//! gives it, before reading a byte, to the worker serving the fewest (itself on a tie), as
//! HAProxy's threads and Envoy's `exact_balance` do: the socket leaves its runtime's poller and
//! joins the other's, one channel message and one wake-up per moved connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::conn_limit::Admitted;
use crate::snapshot::ConnectionBalance;

/// Every worker's count of the connections it serves, and the way to give one a connection.
pub(crate) struct Balance {
    serving: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handed>]>,
}

/// A connection one worker accepted for another: not yet read, its connection-limit place and
/// its count on the worker that is to serve it already taken.
pub(crate) struct Handed {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub place: Admitted,
    pub slot: Slot,
}

/// A connection's place in its worker's count, given back when the connection ends.
pub(crate) struct Slot {
    balance: Arc<Balance>,
    worker: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.balance.serving[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where `Balance::assign` puts a connection.
pub(crate) enum Assigned {
    /// The worker that accepted it serves it.
    Here(Slot),
    /// Another worker does: the one the slot counts it on.
    There(Slot),
}

/// How many more connections than the worker serving the fewest a CPU's worker may serve once it
/// has taken that CPU's next connection: 2, or an eighth of the fewest (64 connections arriving
/// on one CPU, two workers: 31 / 33).
fn cpu_slack(fewest: usize) -> usize {
    (fewest / 8).max(2)
}

impl Balance {
    /// The balance of `workers` workers, and each one's inbox (in worker order) of connections
    /// handed to it.
    pub(crate) fn new(workers: usize) -> (Arc<Balance>, Vec<mpsc::UnboundedReceiver<Handed>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Arc::new(Balance {
            serving: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders.into_boxed_slice(),
        });
        (balance, receivers)
    }

    /// Which worker serves a connection worker `me` has just accepted, its count taken: `me`
    /// with `Kernel`; with `Exact`, the worker serving the fewest, `me` on a tie; with `Cpu`,
    /// the worker numbered after `cpu` (the CPU that received the connection's packets, modulo
    /// the workers) unless it would then serve more than `cpu_slack` beyond the fewest, then as `Exact`
    /// (and as `Exact` when the CPU is not known). Two workers accepting at the same instant may
    /// both choose the same one; the next connections even that out.
    pub(crate) fn assign(
        self: &Arc<Self>,
        me: usize,
        how: ConnectionBalance,
        cpu: Option<usize>,
    ) -> Assigned {
        let mut to = me;
        if how != ConnectionBalance::Kernel {
            let mut fewest = self.serving[me].load(Ordering::Relaxed);
            for (worker, serving) in self.serving.iter().enumerate() {
                let n = serving.load(Ordering::Relaxed);
                if n < fewest {
                    fewest = n;
                    to = worker;
                }
            }
            if let (ConnectionBalance::Cpu, Some(cpu)) = (how, cpu) {
                let preferred = cpu % self.serving.len();
                if self.serving[preferred].load(Ordering::Relaxed) < fewest + cpu_slack(fewest) {
                    to = preferred;
                }
            }
        }
        let slot = self.slot(to);
        if to == me {
            Assigned::Here(slot)
        } else {
            Assigned::There(slot)
        }
    }

    /// A place in `worker`'s count.
    pub(crate) fn slot(self: &Arc<Self>, worker: usize) -> Slot {
        self.serving[worker].fetch_add(1, Ordering::Relaxed);
        Slot {
            balance: Arc::clone(self),
            worker,
        }
    }

    /// Gives `handed` to its worker; gives it back when that worker no longer takes any (it has
    /// stopped for shutdown).
    pub(crate) fn hand(&self, handed: Handed) -> Result<(), Handed> {
        let to = handed.slot.worker;
        self.inboxes[to].send(handed).map_err(|e| e.0)
    }

    /// The connections counted on each worker, in worker order.
    #[cfg(test)]
    fn serving(&self) -> Vec<u64> {
        self.serving
            .iter()
            .map(|n| n.load(Ordering::Relaxed) as u64)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(a: &Assigned) -> Option<usize> {
        match a {
            Assigned::Here(_) => None,
            Assigned::There(slot) => Some(slot.worker),
        }
    }

    #[test]
    fn exact_gives_each_connection_to_the_worker_serving_the_fewest() {
        let (balance, _inboxes) = Balance::new(3);
        let mut held = Vec::new();
        // Worker 0 accepts everything: it keeps the first, then the others catch up in turn.
        for _ in 0..9 {
            held.push(balance.assign(0, ConnectionBalance::Exact, None));
        }
        let moved: Vec<_> = held.iter().map(worker).collect();
        assert_eq!(
            moved,
            [
                None,
                Some(1),
                Some(2),
                None,
                Some(1),
                Some(2),
                None,
                Some(1),
                Some(2)
            ]
        );
        assert_eq!(balance.serving(), [3, 3, 3]);
        // Two of worker 1's connections end: the next two go there, wherever they were accepted.
        held.remove(1);
        held.remove(3);
        assert_eq!(balance.serving(), [3, 1, 3]);
        held.push(balance.assign(2, ConnectionBalance::Exact, None));
        held.push(balance.assign(0, ConnectionBalance::Exact, None));
        // On a tie the worker that accepted it keeps it.
        held.push(balance.assign(2, ConnectionBalance::Exact, None));
        let last: Vec<_> = held[held.len() - 3..].iter().map(worker).collect();
        assert_eq!(last, [Some(1), Some(1), None]);
        assert_eq!(balance.serving(), [3, 3, 4]);
    }

    #[test]
    fn cpu_gives_a_connection_to_its_cpus_worker_while_the_counts_stay_close() {
        let (balance, _inboxes) = Balance::new(2);
        let mut held = Vec::new();
        // Every connection arrives on CPU 3 (worker 1's, 3 mod 2) and is accepted by worker 0:
        // worker 1 takes them while it then serves at most 2 more than worker 0 ...
        for _ in 0..3 {
            held.push(balance.assign(0, ConnectionBalance::Cpu, Some(3)));
        }
        assert_eq!(
            held.iter().map(worker).collect::<Vec<_>>(),
            [Some(1), Some(1), None]
        );
        assert_eq!(balance.serving(), [1, 2]);
        for _ in 0..61 {
            held.push(balance.assign(0, ConnectionBalance::Cpu, Some(3)));
        }
        // ... and an eighth of worker 0's count once that is 24 or more: 64 split 31 / 33.
        assert_eq!(balance.serving(), [31, 33]);
        // A CPU that is not known: the fewest, as with "exact".
        held.push(balance.assign(1, ConnectionBalance::Cpu, None));
        assert_eq!(worker(held.last().unwrap()), Some(0));
        // Worker 0's own CPU: worker 0.
        held.push(balance.assign(1, ConnectionBalance::Cpu, Some(0)));
        assert_eq!(worker(held.last().unwrap()), Some(0));
        assert_eq!(balance.serving(), [33, 33]);
    }

    #[test]
    fn kernel_keeps_every_connection_where_it_was_accepted() {
        let (balance, _inboxes) = Balance::new(2);
        let held: Vec<_> = (0..4)
            .map(|_| balance.assign(0, ConnectionBalance::Kernel, Some(1)))
            .collect();
        assert!(held.iter().all(|a| matches!(a, Assigned::Here(_))));
        assert_eq!(balance.serving(), [4, 0]);
        drop(held);
        assert_eq!(balance.serving(), [0, 0]);
    }
}
